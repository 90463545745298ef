//! `orch worker`: claims and runs queued attempts until SIGTERM or Ctrl-C.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;
use crate::executor::{Phase, ShutdownHandle};
use crate::lease::Lease;
use crate::store::Store;
use crate::worker::LocalWorker;

pub async fn worker(
    config: &Config,
    queues: Vec<String>,
    grace: Duration,
) -> anyhow::Result<ExitCode> {
    let store = Store::open(&config.database_url).await?;
    let lease = Lease::acquire(&config.state_dir()).context("cannot create the process lease")?;
    let (shutdown, watch) = ShutdownHandle::new();
    let registry = Arc::new(crate::registry());
    let worker = LocalWorker::start(
        config,
        &store,
        registry,
        &lease,
        "worker",
        queues.clone(),
        watch,
    )
    .await?;
    tracing::info!(queues = %queues.join(","), slots = config.parallelism, process = %lease.id(), "orch worker started");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    let mut lost = worker.lost();
    let declared_lost = tokio::select! {
        _ = tokio::signal::ctrl_c() => false,
        _ = terminate.recv() => false,
        () = crate::membership::turned_true(&mut lost) => true,
    };
    if declared_lost {
        let why = worker.why_lost();
        worker.stop().await;
        anyhow::bail!("{why}; this worker's attempts are retried elsewhere");
    }
    tracing::info!(grace = %humantime::format_duration(grace), "stopping: running attempts may finish");
    shutdown.set(Phase::Draining);
    let stopping = worker.stop();
    tokio::pin!(stopping);
    tokio::select! {
        () = &mut stopping => {}
        () = tokio::time::sleep(grace) => {
            shutdown.set(Phase::Abort);
            stopping.await;
        }
    }
    tracing::info!("orch worker stopped");
    Ok(ExitCode::SUCCESS)
}
