//! `orch workers`: the orch processes sharing the metadata database, their queues and
//! heartbeats, and which server schedules.

use std::process::ExitCode;

use chrono::Utc;
use serde::Serialize;

use crate::config::Config;
use crate::store::{ProcessRecord, Store, timestamp::serde_format};

/// `orch workers --json`.
#[derive(Serialize)]
struct WorkersView {
    /// The process holding the scheduler lease, if any holds it unexpired.
    scheduler: Option<String>,
    #[serde(serialize_with = "serde_format::optional")]
    scheduler_lease_expires_at: Option<chrono::DateTime<Utc>>,
    processes: Vec<ProcessView>,
}

#[derive(Serialize)]
struct ProcessView {
    #[serde(flatten)]
    process: ProcessRecord,
    /// `alive`, `silent` (heartbeat older than the timeout, not yet declared lost), `lost`
    /// (declared lost, or stopped).
    state: &'static str,
}

pub async fn workers(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let store = Store::open(&config.database_url).await?;
    let now = Utc::now();
    let lease = store
        .scheduler_lease()
        .await?
        .filter(|l| l.expires_at > now);
    let timeout = chrono::Duration::from_std(config.heartbeat_timeout)?;
    let processes: Vec<ProcessView> = store
        .processes()
        .await?
        .into_iter()
        .map(|process| {
            let state = if process.lost_at.is_some() {
                "lost"
            } else if now - process.heartbeat_at > timeout {
                "silent"
            } else {
                "alive"
            };
            ProcessView { process, state }
        })
        .collect();
    let view = WorkersView {
        scheduler: lease.as_ref().map(|l| l.holder.clone()),
        scheduler_lease_expires_at: lease.map(|l| l.expires_at),
        processes,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(ExitCode::SUCCESS);
    }
    match &view.scheduler {
        Some(holder) => println!("scheduler: {holder}"),
        None => println!("scheduler: none (no `orch serve` holds the lease)"),
    }
    println!();
    println!(
        "{:<8} {:<7} {:<24} {:>8} {:>10}  {:<20} PROCESS",
        "STATE", "ROLE", "HOST", "PID", "HEARTBEAT", "QUEUES"
    );
    for p in &view.processes {
        let age = (now - p.process.heartbeat_at).num_milliseconds().max(0) as f64 / 1000.0;
        println!(
            "{:<8} {:<7} {:<24} {:>8} {:>9.1}s  {:<20} {}",
            p.state,
            p.process.role,
            p.process.host,
            p.process.pid,
            age,
            p.process.queues.join(","),
            p.process.id
        );
    }
    Ok(ExitCode::SUCCESS)
}
