//! What this process's executors counted, for `/metrics`: runs and attempts ended, attempt
//! durations and rows written, by DAG and task. Counters start at zero with the process, as
//! Prometheus expects of counters; the database's current figures (runs queued or running,
//! queue depth) are read at scrape time instead.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

use crate::store::{AttemptState, RunState};

/// Upper bounds of the attempt duration histogram, seconds: from a fork (ms) to a long load.
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 1800.0,
];

#[derive(Default)]
struct Recorded {
    runs: BTreeMap<(String, &'static str), u64>,
    attempts: BTreeMap<(String, String, &'static str), u64>,
    durations: BTreeMap<(String, String), Histogram>,
    rows: BTreeMap<(String, String), u64>,
}

#[derive(Default)]
struct Histogram {
    /// Counts per bucket of [`DURATION_BUCKETS`], not cumulative.
    buckets: [u64; DURATION_BUCKETS.len()],
    count: u64,
    sum: f64,
}

static RECORDED: LazyLock<Mutex<Recorded>> = LazyLock::new(Mutex::default);

fn recorded() -> std::sync::MutexGuard<'static, Recorded> {
    RECORDED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts an attempt that ended.
pub fn attempt_ended(
    dag_id: &str,
    task_id: &str,
    state: AttemptState,
    duration: Duration,
    rows: Option<i64>,
) {
    let mut r = recorded();
    let key = (dag_id.to_string(), task_id.to_string());
    *r.attempts
        .entry((key.0.clone(), key.1.clone(), state.as_str()))
        .or_default() += 1;
    let seconds = duration.as_secs_f64();
    let histogram = r.durations.entry(key.clone()).or_default();
    histogram.count += 1;
    histogram.sum += seconds;
    if let Some(i) = DURATION_BUCKETS.iter().position(|&b| seconds <= b) {
        histogram.buckets[i] += 1;
    }
    if let Some(rows) = rows.and_then(|r| u64::try_from(r).ok()) {
        *r.rows.entry(key).or_default() += rows;
    }
}

/// Counts a run that ended.
pub fn run_ended(dag_id: &str, state: RunState) {
    *recorded()
        .runs
        .entry((dag_id.to_string(), state.as_str()))
        .or_default() += 1;
}

/// Writes the counters in Prometheus' text format.
pub fn render(out: &mut String) {
    let r = recorded();
    header(
        out,
        "orch_runs_ended_total",
        "counter",
        "Runs this process executed to their end, by DAG and final state.",
    );
    for ((dag, state), n) in &r.runs {
        let _ = writeln!(
            out,
            "orch_runs_ended_total{{dag_id=\"{}\",state=\"{state}\"}} {n}",
            label(dag)
        );
    }
    header(
        out,
        "orch_task_attempts_total",
        "counter",
        "Task attempts this process recorded, by DAG, task and outcome.",
    );
    for ((dag, task, state), n) in &r.attempts {
        let _ = writeln!(
            out,
            "orch_task_attempts_total{{dag_id=\"{}\",task_id=\"{}\",state=\"{state}\"}} {n}",
            label(dag),
            label(task)
        );
    }
    header(
        out,
        "orch_task_attempt_duration_seconds",
        "histogram",
        "How long task attempts took, by DAG and task.",
    );
    for ((dag, task), h) in &r.durations {
        let labels = format!("dag_id=\"{}\",task_id=\"{}\"", label(dag), label(task));
        let mut cumulative = 0;
        for (bound, n) in DURATION_BUCKETS.iter().zip(h.buckets) {
            cumulative += n;
            let _ = writeln!(
                out,
                "orch_task_attempt_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "orch_task_attempt_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            out,
            "orch_task_attempt_duration_seconds_sum{{{labels}}} {}",
            h.sum
        );
        let _ = writeln!(
            out,
            "orch_task_attempt_duration_seconds_count{{{labels}}} {}",
            h.count
        );
    }
    header(
        out,
        "orch_rows_written_total",
        "counter",
        "Rows task attempts reported writing, by DAG and task.",
    );
    for ((dag, task), n) in &r.rows {
        let _ = writeln!(
            out,
            "orch_rows_written_total{{dag_id=\"{}\",task_id=\"{}\"}} {n}",
            label(dag),
            label(task)
        );
    }
}

/// A metric's `# HELP` and `# TYPE` lines.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value escaped as the text format asks: backslash, double quote and newline.
pub fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn attempts_fill_cumulative_buckets() {
        attempt_ended(
            "metrics_test_dag",
            "t",
            AttemptState::Success,
            Duration::from_millis(30),
            Some(7),
        );
        let mut out = String::new();
        render(&mut out);
        assert!(out.contains("orch_task_attempts_total{dag_id=\"metrics_test_dag\",task_id=\"t\",state=\"success\"} 1"), "{out}");
        assert!(out.contains("orch_task_attempt_duration_seconds_bucket{dag_id=\"metrics_test_dag\",task_id=\"t\",le=\"0.025\"} 0"));
        assert!(out.contains("orch_task_attempt_duration_seconds_bucket{dag_id=\"metrics_test_dag\",task_id=\"t\",le=\"0.05\"} 1"));
        assert!(
            out.contains("orch_rows_written_total{dag_id=\"metrics_test_dag\",task_id=\"t\"} 7")
        );
    }
}
