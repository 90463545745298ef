//! `orch runs list | show`, for people (tables) and scripts (`--json`, a stable contract);
//! `orch runs cancel | clear` and `orch tasks clear | mark`, recorded as done from the CLI.

use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};

use super::cli_actor;
use super::{RunsCommand, TasksCommand};
use crate::config::Config;
use crate::manual_actions::{self, CancelOutcome};
use crate::store::{ManualAction, RunDetail, RunRecord, Store, TaskState, timestamp};

/// The DAG a run belongs to, as the DAGs folder has it now.
fn loaded_dag(config: &Config, dag_id: &str) -> Option<std::sync::Arc<crate::dag::Dag>> {
    let registry = crate::registry();
    crate::dag::DagBag::load(&config.dags_dir, &registry)
        .get(dag_id)
        .cloned()
}

pub async fn tasks(config: &Config, command: TasksCommand) -> anyhow::Result<ExitCode> {
    let store = Store::open(&config.database_url).await?;
    let actor = cli_actor();
    match command {
        TasksCommand::Clear {
            run_id,
            task_id,
            downstream,
        } => {
            let run = store
                .run(&run_id)
                .await?
                .with_context(|| format!("no run `{run_id}` in the run history"))?;
            let dag = loaded_dag(config, &run.dag_id);
            let cleared = manual_actions::clear(
                &store,
                &config.state_dir(),
                dag.as_deref(),
                &run_id,
                Some(&task_id),
                downstream,
                &actor,
            )
            .await?;
            eprintln!(
                "{run_id} queued again; cleared: {}",
                cleared.unwrap_or_default().join(", ")
            );
        }
        TasksCommand::Mark {
            run_id,
            task_id,
            state,
        } => {
            let state = TaskState::parse(&state).context("state is success or failed")?;
            let run_state = manual_actions::mark(&store, &run_id, &task_id, state, &actor).await?;
            eprintln!("{run_id}: task `{task_id}` marked {state}; the run is {run_state}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn runs(config: &Config, command: RunsCommand) -> anyhow::Result<ExitCode> {
    let store = Store::open(&config.database_url).await?;
    match command {
        RunsCommand::List { dag, limit, json } => {
            let listed = store.runs(dag.as_deref(), limit).await?;
            for bad in &listed.unreadable {
                eprintln!("warning: run `{}` cannot be read: {}", bad.id, bad.error);
            }
            let runs = listed.rows;
            if json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else {
                print_table(&runs);
            }
        }
        RunsCommand::Show { run_id, json } => {
            let view = store
                .run_detail(&run_id)
                .await?
                .with_context(|| format!("no run `{run_id}` in the run history"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                let actions = store.run_actions(&run_id).await?;
                print_run(&view, &actions);
            }
        }
        RunsCommand::Cancel { run_id } => {
            let outcome =
                manual_actions::cancel(&store, &config.state_dir(), &run_id, &cli_actor()).await?;
            match outcome {
                CancelOutcome::Ended => eprintln!("{run_id} cancelled before it started"),
                CancelOutcome::Stopping => {
                    eprintln!("{run_id}: cancel requested; its attempts are being stopped")
                }
            }
        }
        RunsCommand::Clear { run_id } => {
            manual_actions::clear(
                &store,
                &config.state_dir(),
                None,
                &run_id,
                None,
                false,
                &cli_actor(),
            )
            .await?;
            eprintln!("{run_id} queued again");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn duration(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> String {
    match (start, end) {
        (Some(s), Some(e)) => format!("{:.3}s", (e - s).num_milliseconds() as f64 / 1000.0),
        (Some(s), None) => format!("{:.0}s…", (Utc::now() - s).num_seconds()),
        _ => "-".to_string(),
    }
}

fn print_table(runs: &[RunRecord]) {
    println!(
        "{:<60} {:<8} {:<9} {:<27} DURATION",
        "RUN_ID", "STATE", "TYPE", "LOGICAL_DATE"
    );
    for run in runs {
        let note = run
            .note
            .as_deref()
            .map(|n| format!("  {n}"))
            .unwrap_or_default();
        println!(
            "{:<60} {:<8} {:<9} {:<27} {}{note}",
            run.run_id,
            run.state,
            run.run_type,
            timestamp::format(run.logical_date),
            duration(run.started_at, run.ended_at)
        );
    }
}

fn print_run(view: &RunDetail, actions: &[ManualAction]) {
    let run = &view.run;
    println!("run:           {}", run.run_id);
    println!("dag:           {}", run.dag_id);
    println!("state:         {}", run.state);
    println!("type:          {}", run.run_type);
    println!("logical date:  {}", timestamp::format(run.logical_date));
    println!(
        "data interval: {} .. {}",
        timestamp::format(run.data_interval_start),
        timestamp::format(run.data_interval_end)
    );
    if !run.conf.is_empty() {
        println!(
            "conf:          {}",
            serde_json::Value::Object(run.conf.clone())
        );
    }
    println!("duration:      {}", duration(run.started_at, run.ended_at));
    if let Some(note) = &run.note {
        println!("note:          {note}");
    }
    println!();
    println!(
        "{:<32} {:<16} {:>7} {:>10} {:>8} {:>9} {:>8}  ERROR",
        "TASK", "STATE", "ATTEMPT", "DURATION", "ROWS", "PEAK_RSS", "CPU"
    );
    for task in &view.tasks {
        if task.attempts.is_empty() {
            println!(
                "{:<32} {:<16} {:>7} {:>10} {:>8} {:>9} {:>8}",
                task.task_id, task.state, "-", "-", "-", "-", "-"
            );
        }
        for a in &task.attempts {
            println!(
                "{:<32} {:<16} {:>7} {:>10} {:>8} {:>9} {:>8}  {}",
                task.task_id,
                if a.attempt as usize == task.attempts.len() {
                    task.state.to_string()
                } else {
                    a.state.to_string()
                },
                a.attempt,
                a.duration_ms.map_or("-".to_string(), |d| format!("{d}ms")),
                a.rows.map_or("-".to_string(), |r| r.to_string()),
                a.peak_rss_bytes
                    .and_then(|b| u64::try_from(b).ok())
                    .map_or("-".to_string(), crate::attempt::format_size),
                a.cpu_ms.map_or("-".to_string(), |c| format!("{c}ms")),
                a.error.as_deref().unwrap_or("")
            );
        }
    }
    if !actions.is_empty() {
        println!();
        println!("by hand:");
        for a in actions {
            println!(
                "  {}  {}{}  by {} from {}{}",
                timestamp::format(a.at),
                a.action,
                a.task_id
                    .as_deref()
                    .map(|t| format!(" {t}"))
                    .unwrap_or_default(),
                a.actor,
                a.source,
                a.detail
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            );
        }
    }
}
