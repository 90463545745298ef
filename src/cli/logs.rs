//! `orch logs`: the log files of a run's attempts, optionally followed until the run ends.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;
use crate::store::{AttemptKey, AttemptRecord, Store};

pub async fn logs(
    config: &Config,
    run_id: &str,
    task: Option<&str>,
    attempt: Option<u32>,
    follow: bool,
) -> anyhow::Result<ExitCode> {
    let store = Store::open(&config.database_url).await?;
    store
        .run(run_id)
        .await?
        .with_context(|| format!("no run `{run_id}` in the run history"))?;
    let selected = |a: &AttemptRecord| {
        task.is_none_or(|t| a.task_id == t) && attempt.is_none_or(|n| a.attempt == n)
    };
    // Bytes already printed, by log path.
    let mut printed: HashMap<String, u64> = HashMap::new();
    let mut last_header: Option<String> = None;
    loop {
        // Read the run's state before the logs, so the last pass sees everything written.
        let finished = store
            .run(run_id)
            .await?
            .is_some_and(|r| r.state.is_finished());
        let attempts: Vec<AttemptRecord> = store
            .attempts(run_id)
            .await?
            .into_iter()
            .filter(|a| selected(a))
            .collect();
        if attempts.is_empty() && !follow {
            anyhow::bail!("no attempts match in run `{run_id}`");
        }
        let many = attempts.len() > 1 || follow;
        for a in &attempts {
            let offset = printed.entry(a.log_path.clone()).or_insert(0);
            let new = if std::path::Path::new(&a.log_path).exists() {
                read_from(&a.log_path, *offset)
            } else if *offset == 0 {
                saved_tail(&store, run_id, a).await?
            } else {
                Vec::new()
            };
            if new.is_empty() && (*offset > 0 || follow) {
                continue;
            }
            let header = format!("==> {} attempt {} ({}) <==", a.task_id, a.attempt, a.state);
            if many && last_header.as_deref() != Some(&a.log_path) {
                println!("{header}");
                last_header = Some(a.log_path.clone());
            }
            *offset += new.len() as u64;
            let mut out = std::io::stdout().lock();
            out.write_all(&new)?;
            out.flush()?;
        }
        if !follow || finished {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The end of the log of an attempt that ran on another machine, as its worker saved it in
/// the metadata database; empty while it runs, or when nothing was saved.
async fn saved_tail(store: &Store, run_id: &str, a: &AttemptRecord) -> anyhow::Result<Vec<u8>> {
    let key = AttemptKey {
        run_id: run_id.to_string(),
        task_id: a.task_id.clone(),
        attempt: a.attempt,
    };
    let Some(tail) = store.attempt_log_tail(&key).await? else {
        return Ok(Vec::new());
    };
    let worker = a.worker.as_deref().unwrap_or("another machine");
    let mut text = format!(
        "(the log is {} on {worker}; its end, as saved in the metadata database:)\n",
        a.log_path
    );
    text.push_str(&tail);
    Ok(text.into_bytes())
}

/// What the file holds past `offset`; a missing file (not yet created) reads as empty.
fn read_from(path: &str, offset: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Ok(mut file) = std::fs::File::open(path)
        && file.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = file.read_to_end(&mut bytes);
    }
    bytes
}
