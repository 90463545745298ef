//! `orch trigger`: queue a manual run for the running scheduler.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};

use super::{RunArgs, find_dag, say};
use crate::config::Config;
use crate::dag::{Dag, DagBag, params};
use crate::manual_actions;
use crate::scheduler::{plan, wake};
use crate::store::{NewRun, RunState, Store};

/// The exit status of `orch trigger` refused for now because too many runs are pending
/// (sysexits' EX_TEMPFAIL: the same command later will do).
pub const BUSY_EXIT: u8 = 75;

/// Loads the DAG named in `args` and inserts a queued manual run for it; with `admit`, only
/// if orch can take it now (see [`manual_actions::Admission`]).
pub(super) async fn create_manual_run(
    config: &Config,
    args: &RunArgs,
    admit: bool,
) -> anyhow::Result<(Store, Arc<Dag>, NewRun)> {
    let registry = crate::registry();
    let bag = DagBag::load(&config.dags_dir, &registry);
    let dag = find_dag(&bag, &args.dag_id)?;
    let conf = plan::parse_conf(&args.conf, &dag.param_specs).map_err(|e| anyhow!(e))?;
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
    if admit {
        manual_actions::Admission::default()
            .admit(&store, &dag, config.max_pending_runs)
            .await?;
    }
    let run =
        manual_actions::create_run(&store, &dag, logical_date, conf, &super::cli_actor()).await?;
    Ok((store, dag, run))
}

pub async fn trigger(config: &Config, args: RunArgs, wait: bool) -> anyhow::Result<ExitCode> {
    let (store, dag, run) = match create_manual_run(config, &args, true).await {
        Err(e)
            if e.downcast_ref::<manual_actions::ActionError>()
                .is_some_and(|e| matches!(e, manual_actions::ActionError::Busy(_))) =>
        {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(BUSY_EXIT));
        }
        created => created?,
    };
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

/// Polls the run history until the run ends: every millisecond for its first second (reads
/// are cheap in WAL mode, and most runs a person waits on are short), then less and less often.
async fn wait_for_end(store: &Store, run_id: &str) -> anyhow::Result<RunState> {
    let started = tokio::time::Instant::now();
    loop {
        let waited = started.elapsed();
        let next = if waited < Duration::from_secs(1) {
            Duration::from_millis(1)
        } else if waited < Duration::from_secs(10) {
            Duration::from_millis(10)
        } else {
            Duration::from_millis(100)
        };
        tokio::time::sleep(next).await;
        let run = store
            .run(run_id)
            .await?
            .with_context(|| format!("run `{run_id}` disappeared from the run history"))?;
        if run.state.is_finished() {
            return Ok(run.state);
        }
    }
}
