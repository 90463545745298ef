//! `orch trigger`: queue a manual run for the running scheduler.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use chrono::Utc;

use super::{RunArgs, find_dag, say};
use crate::config::Config;
use crate::dag::{Dag, DagBag, params};
use crate::scheduler::{plan, wake};
use crate::store::{NewRun, RunState, Store};
use crate::tasks::Registry;

/// Loads the DAG named in `args` and inserts a queued manual run for it.
pub(super) async fn create_manual_run(
    config: &Config,
    args: &RunArgs,
) -> anyhow::Result<(Store, Arc<Dag>, NewRun)> {
    let registry = Registry::builtin();
    let bag = DagBag::load(&config.dags_dir, &registry);
    let dag = find_dag(&bag, &args.dag_id)?;
    let conf = plan::parse_conf(&args.conf).map_err(|e| anyhow!(e))?;
    let problems = params::check_conf(&dag.param_specs, &conf);
    if !problems.is_empty() {
        anyhow::bail!(
            "no run of `{}` was created: {}",
            dag.id,
            params::describe(&problems)
        );
    }
    let logical_date = args
        .logical_date
        .as_deref()
        .map(|d| plan::parse_logical_date(&dag, d))
        .transpose()
        .map_err(|e| anyhow!(e))?;
    let store = Store::open(&config.database_url).await?;
    let run = plan::manual_run(&dag, logical_date, conf, Utc::now());
    let task_ids: Vec<String> = dag.tasks.iter().map(|t| t.id.clone()).collect();
    if !store.insert_run(&run, &task_ids).await? {
        anyhow::bail!("run `{}` already exists", run.run_id);
    }
    store
        .record_action(
            &super::cli_actor(),
            &dag.id,
            Some(&run.run_id),
            None,
            "trigger",
            None,
        )
        .await?;
    Ok((store, dag, run))
}

pub async fn trigger(config: &Config, args: RunArgs, wait: bool) -> anyhow::Result<ExitCode> {
    let (store, dag, run) = create_manual_run(config, &args).await?;
    if store.is_paused(&dag.id, dag.paused).await? {
        eprintln!(
            "note: DAG `{}` is paused; the run starts once it is unpaused",
            dag.id
        );
    }
    if !wake(&config.state_dir()).await {
        eprintln!("note: no `orch serve` is running on this home; the run starts when one does");
    }
    say!("{}", run.run_id);
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let state = wait_for_end(&store, &run.run_id).await?;
    eprintln!("{} {state}", run.run_id);
    Ok(if state == RunState::Success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Polls the run history until the run ends. A short interval: reads are cheap in WAL mode.
async fn wait_for_end(store: &Store, run_id: &str) -> anyhow::Result<RunState> {
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    loop {
        interval.tick().await;
        let run = store
            .run(run_id)
            .await?
            .with_context(|| format!("run `{run_id}` disappeared from the run history"))?;
        if run.state.is_finished() {
            return Ok(run.state);
        }
    }
}
