//! `/metrics` in Prometheus' text format: this process's counters ([`crate::run_counters`]) and,
//! read at scrape time, runs queued and running, queue depths, the scheduler's pulse, the
//! streams' figures and this process's memory.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use chrono::Utc;

use super::WebState;
use super::error::ApiResult;
use crate::run_counters::{header, label};

pub async fn metrics(State(state): State<WebState>) -> ApiResult<impl IntoResponse> {
    let mut out = String::with_capacity(8192);
    crate::run_counters::render(&mut out);

    header(
        &mut out,
        "orch_runs",
        "gauge",
        "Runs queued or running now, by DAG and state.",
    );
    for (dag, run_state, n) in state.store.active_run_counts().await? {
        let _ = writeln!(
            out,
            "orch_runs{{dag_id=\"{}\",state=\"{run_state}\"}} {n}",
            label(&dag)
        );
    }
    header(
        &mut out,
        "orch_queue_depth",
        "gauge",
        "Attempts waiting in each queue for a worker.",
    );
    for (queue, n) in state.store.queue_depths().await? {
        let _ = writeln!(out, "orch_queue_depth{{queue=\"{}\"}} {n}", label(&queue));
    }

    let view = state.view.borrow().clone();
    header(
        &mut out,
        "orch_scheduler_loop_lag_seconds",
        "gauge",
        "How late the scheduler loop woke for its last timed wake-up.",
    );
    let _ = writeln!(
        out,
        "orch_scheduler_loop_lag_seconds {}",
        view.loop_lag.as_secs_f64()
    );
    if let Some(at) = view.last_pass_at {
        header(
            &mut out,
            "orch_scheduler_last_pass_age_seconds",
            "gauge",
            "Seconds since the scheduler's last pass.",
        );
        let age = (Utc::now() - at).num_milliseconds() as f64 / 1000.0;
        let _ = writeln!(out, "orch_scheduler_last_pass_age_seconds {age}");
    }
    header(
        &mut out,
        "orch_scheduler_leader",
        "gauge",
        "1 when this server holds the scheduler lease.",
    );
    let _ = writeln!(out, "orch_scheduler_leader {}", u8::from(view.leader));
    header(
        &mut out,
        "orch_dag_import_errors",
        "gauge",
        "DAG files that failed to load.",
    );
    let _ = writeln!(out, "orch_dag_import_errors {}", view.errors.len());

    stream_metrics(&state, &mut out).await?;

    if let Some(rss) = resident_memory_bytes() {
        header(
            &mut out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of this orch process.",
        );
        let _ = writeln!(out, "process_resident_memory_bytes {rss}");
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    ))
}

async fn stream_metrics(state: &WebState, out: &mut String) -> ApiResult<()> {
    let streams = state.store.stream_reports().await?;
    let reports: Vec<(String, crate::stream::stats::StreamReport)> = streams
        .into_iter()
        .filter_map(|s| Some((s.stream_id, serde_json::from_str(&s.report).ok()?)))
        .collect();
    type Figure = fn(&crate::stream::stats::StreamReport) -> Option<f64>;
    let figures: [(&str, &str, &str, Figure); 7] = [
        (
            "orch_stream_trades_committed_total",
            "counter",
            "Trades a stream committed to staging.",
            |r| Some(r.trades_committed as f64),
        ),
        (
            "orch_stream_trades_per_second",
            "gauge",
            "A stream's recent commit rate.",
            |r| Some(r.trades_per_second),
        ),
        (
            "orch_stream_lag_p99_seconds",
            "gauge",
            "99th percentile from a trade's time to its commit, recent trades.",
            |r| r.lag_p99_ms.map(|ms| ms as f64 / 1000.0),
        ),
        (
            "orch_stream_gaps_detected_total",
            "counter",
            "Gaps in trade ids a stream detected.",
            |r| Some(r.gaps_detected as f64),
        ),
        (
            "orch_stream_gap_trades_filled_total",
            "counter",
            "Trades a stream fetched to fill gaps.",
            |r| Some(r.gap_trades_filled as f64),
        ),
        (
            "orch_stream_gaps_unbridged_total",
            "counter",
            "Catch-ups where the exchange's history no longer reached back to the last trade kept.",
            |r| Some(r.gaps_unbridged as f64),
        ),
        (
            "orch_stream_reconnects_total",
            "counter",
            "A stream's reconnections.",
            |r| Some(r.reconnects as f64),
        ),
    ];
    for (name, kind, help, figure) in figures {
        header(out, name, kind, help);
        for (stream, report) in &reports {
            if let Some(value) = figure(report) {
                let _ = writeln!(out, "{name}{{stream=\"{}\"}} {value}", label(stream));
            }
        }
    }
    Ok(())
}

/// This process's resident set, from /proc (Linux); `None` elsewhere.
fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_size).ok()?)
}
