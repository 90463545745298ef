//! `orch run`: execute one run in this process, printing task states as they change.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::mpsc;

use super::trigger::create_manual_run;
use super::{RunArgs, say};
use crate::config::Config;
use crate::executor::{Phase, ShutdownHandle, TaskEvent};
use crate::lease::Lease;
use crate::store::RunState;
use crate::worker::LocalWorker;

pub async fn run(config: &Config, args: RunArgs) -> anyhow::Result<ExitCode> {
    let (store, dag, new_run) = create_manual_run(config, &args, false).await?;
    let lease = Lease::acquire(&config.state_dir()).context("cannot create the process lease")?;
    let path = dag.path.to_string_lossy();
    if !store
        .claim_run(&new_run.run_id, lease.id(), &dag.source, &path)
        .await?
    {
        anyhow::bail!(
            "run `{}` was taken by a running `orch serve`",
            new_run.run_id
        );
    }
    let run = store
        .run(&new_run.run_id)
        .await?
        .context("the run vanished right after it was created")?;
    say!("{}", run.run_id);

    let registry = Arc::new(crate::registry());
    let (shutdown, watch) = ShutdownHandle::new();
    let (executor, worker) =
        LocalWorker::with_own_executor(config, &store, registry, &lease, "run", watch.clone())
            .await?;
    let (events_tx, mut events) = mpsc::unbounded_channel::<TaskEvent>();
    let printer = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            print_event(&event);
        }
    });
    let execution = executor.execute(dag, &run, watch, Some(events_tx));
    tokio::pin!(execution);
    let outcome = tokio::select! {
        outcome = &mut execution => outcome?,
        _ = tokio::signal::ctrl_c() => {
            // Interactive: Ctrl-C stops the run now, as a failure.
            shutdown.set(Phase::Abort);
            execution.await?;
            None
        }
    };
    let _ = printer.await;
    shutdown.set(Phase::Draining);
    worker.stop().await;
    let state = match outcome {
        Some(state) => state,
        None => {
            store.finish_run(&run.run_id, RunState::Failed).await?;
            RunState::Failed
        }
    };
    say!("run {} {state}", run.run_id);
    Ok(if state == RunState::Success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_event(event: &TaskEvent) {
    let attempt = if event.attempt > 0 {
        format!(" (attempt {})", event.attempt)
    } else {
        String::new()
    };
    match &event.error {
        Some(error) => say!("{} {}{attempt}: {error}", event.task_id, event.state),
        None => say!("{} {}{attempt}", event.task_id, event.state),
    }
}
