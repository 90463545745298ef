//! `orch stream run` (one live stream in the foreground) and `orch streams` (every stream with
//! its latest report, from any process).

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use chrono::Utc;
use serde::Serialize;

use crate::config::Config;
use crate::lease::{self, Lease};
use crate::store::Store;
use crate::stream::ingest::{self, IngestPlaces};
use crate::stream::reported;
use crate::stream::stats::{StreamReport, StreamStats};

/// A report older than this no longer describes a live stream.
const STALE_AFTER_SECONDS: i64 = 10;

pub async fn run(config: &Config, stream_id: &str) -> anyhow::Result<ExitCode> {
    let (streams, errors) = crate::stream::load_dir(&config.dags_dir);
    let Some(def) = streams.into_iter().find(|s| s.id == stream_id) else {
        for error in &errors {
            eprintln!("{error}");
        }
        anyhow::bail!("no stream `{stream_id}` in {}", config.dags_dir.display());
    };
    let store = Store::open(&config.database_url).await?;
    let lease = Lease::acquire(&config.state_dir()).context("cannot create the process lease")?;
    let places = IngestPlaces::of(&config.data);
    let stats = Arc::new(Mutex::new(StreamStats::default()));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    // Ctrl-C or SIGTERM stops the stream, which commits its pending batch first.
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = stop_tx.send(true);
    });
    tracing::info!(stream = %def.id, path = %def.path.display(), "stream starting");
    let result = reported::run_reported(&def, &places, &store, lease.id(), &stats, stop).await;
    let last = ingest::lock(&stats).report(Utc::now().timestamp_millis());
    tracing::info!(
        stream = %def.id,
        committed = last.trades_committed,
        gaps = last.gaps_detected,
        filled = last.gap_trades_filled,
        unbridged = last.gaps_unbridged,
        malformed = last.malformed_frames,
        reconnects = last.reconnects,
        "stream stopped"
    );
    result?;
    Ok(ExitCode::SUCCESS)
}

/// One line of `orch streams --json`.
#[derive(Serialize)]
struct StreamView {
    stream_id: String,
    /// The saved state, or `stale` when its process stopped reporting.
    state: String,
    updated_at: Option<String>,
    #[serde(flatten)]
    report: Option<StreamReport>,
}

pub async fn list(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let (defs, errors) = crate::stream::load_dir(&config.dags_dir);
    for error in &errors {
        eprintln!("{error}");
    }
    let store = Store::open(&config.database_url).await?;
    let saved = store.stream_reports().await?;
    let now = Utc::now();
    let mut ids: Vec<String> = defs.iter().map(|d| d.id.clone()).collect();
    ids.extend(saved.iter().map(|s| s.stream_id.clone()));
    ids.sort();
    ids.dedup();
    let views: Vec<StreamView> = ids
        .into_iter()
        .map(|id| match saved.iter().find(|s| s.stream_id == id) {
            Some(record) => {
                let report: Option<StreamReport> = serde_json::from_str(&record.report).ok();
                let quiet = (now - record.updated_at).num_seconds() > STALE_AFTER_SECONDS;
                // A dead owner on this host is certain; elsewhere, silence tells.
                let stale = record.state != "stopped" && (quiet || !lease::is_alive(&record.owner));
                StreamView {
                    stream_id: id,
                    state: if stale {
                        "stale".to_string()
                    } else {
                        record.state.clone()
                    },
                    updated_at: Some(crate::store::timestamp::format(record.updated_at)),
                    report,
                }
            }
            None => StreamView {
                stream_id: id,
                state: "never run".to_string(),
                updated_at: None,
                report: None,
            },
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&views)?);
    } else {
        print_table(&views);
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_table(views: &[StreamView]) {
    println!(
        "{:<24} {:<12} {:>10} {:>12} {:<24} {:>9} {:>9} {:>11} {:>10}",
        "STREAM",
        "STATE",
        "TRADES/S",
        "COMMITTED",
        "LAST TRADE",
        "LAG P50",
        "LAG P99",
        "GAPS/FILLED",
        "RECONNECTS"
    );
    for view in views {
        let dash = || "-".to_string();
        let ms = |v: Option<i64>| v.map_or_else(dash, |ms| format!("{ms} ms"));
        let (rate, committed, last, p50, p99, gaps, reconnects) = match &view.report {
            Some(r) => (
                format!("{:.1}", r.trades_per_second),
                r.trades_committed.to_string(),
                r.last_trade_time
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map_or_else(dash, |t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()),
                ms(r.lag_p50_ms),
                ms(r.lag_p99_ms),
                match r.gaps_unbridged {
                    0 => format!("{}/{}", r.gaps_detected, r.gap_trades_filled),
                    cut => format!(
                        "{}/{} ({cut} unbridged)",
                        r.gaps_detected, r.gap_trades_filled
                    ),
                },
                r.reconnects.to_string(),
            ),
            None => (dash(), dash(), dash(), dash(), dash(), dash(), dash()),
        };
        println!(
            "{:<24} {:<12} {:>10} {:>12} {:<24} {:>9} {:>9} {:>11} {:>10}",
            view.stream_id, view.state, rate, committed, last, p50, p99, gaps, reconnects
        );
    }
}
