//! Executing one DAG run: starting tasks as their upstreams allow, retrying, timing out, and
//! recording every transition in the run history.
//!
//! One loop owns a run's state and is the only writer of it, so transitions never race. Task
//! attempts run as tokio tasks; a global semaphore bounds how many run at once across all runs
//! (`ORCH_PARALLELISM`), `max_active_tasks` bounds one run.

mod shutdown;
mod trigger_rules;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::attempt::{self, AttemptSpec, Isolation, Usage};
use crate::backoff::Backoff;
use crate::config::{Config, DataPlaces};
use crate::dag::Dag;
use crate::logs::{AttemptLog, attempt_log_path};
use crate::process;
use crate::store::{AttemptEnd, AttemptState, RunRecord, RunState, Store, StoreError, TaskState};
use crate::tasks::{self, Registry, TaskError, TaskOutput};
use crate::template::RunVariables;

pub use shutdown::{Phase, Shutdown, ShutdownHandle};
pub use trigger_rules::{Readiness, evaluate};

/// The error recorded for an attempt whose process disappeared without an outcome.
pub const ORPHANED: &str = "orphaned: the orch process running this attempt stopped before it finished (killed or crashed)";
pub use crate::attempt::INTERRUPTED;
/// The most of an attempt's error the run history keeps: its start and its end. The whole
/// output is in the attempt's log.
const MAX_ERROR_BYTES: usize = 4096;

/// Everything runs share: where to record, which kinds exist, how many tasks may run at once.
#[derive(Clone)]
pub struct Executor {
    pub store: Store,
    pub registry: Arc<Registry>,
    pub home: PathBuf,
    pub logs_dir: PathBuf,
    pub slots: Arc<Semaphore>,
    pub data: DataPlaces,
    /// Where attempts run: child processes of orch in production.
    pub isolation: Isolation,
}

/// A task's state change, for a caller that shows progress (`orch run`).
#[derive(Debug, Clone)]
pub struct TaskEvent {
    pub task_id: String,
    pub state: TaskState,
    pub attempt: u32,
    pub error: Option<String>,
}

impl Executor {
    /// The executor of an orch command: the home's places and parallelism, and every attempt
    /// in a child process of this binary.
    pub fn of_config(
        config: &Config,
        store: Store,
        registry: Arc<Registry>,
    ) -> std::io::Result<Executor> {
        Ok(Executor {
            store,
            registry,
            home: config.home.clone(),
            logs_dir: config.logs_dir.clone(),
            slots: Arc::new(Semaphore::new(config.parallelism)),
            data: config.data.clone(),
            isolation: Isolation::this_binary()?,
        })
    }

    /// Drives `run` to its end with the definition `dag`, and returns its final state, or `None`
    /// when a shutdown stopped it first (it stays `running` and the next scheduler resumes it).
    ///
    /// Attempts left `running` by a dead process are failed as orphaned and retried per policy.
    pub async fn execute(
        &self,
        dag: Arc<Dag>,
        run: &RunRecord,
        shutdown: Shutdown,
        events: Option<mpsc::UnboundedSender<TaskEvent>>,
    ) -> Result<Option<RunState>, StoreError> {
        let mut params = dag.params.clone();
        params.extend(run.conf.clone());
        let mut run_loop = RunLoop::new(self, dag, run, params, events);
        run_loop.load().await?;
        run_loop.drive(shutdown).await
    }
}

/// What one attempt came back with.
struct AttemptDone {
    task: usize,
    attempt: u32,
    started_at: DateTime<Utc>,
    ended_at: DateTime<Utc>,
    result: Result<TaskOutput, TaskError>,
    usage: Usage,
}

struct RunLoop<'a> {
    exec: &'a Executor,
    dag: Arc<Dag>,
    run: &'a RunRecord,
    params: Map<String, Value>,
    events: Option<mpsc::UnboundedSender<TaskEvent>>,
    upstream: Vec<Vec<usize>>,
    states: Vec<TaskState>,
    tries: Vec<u32>,
    /// Attempts made before the run was last queued again: retries count from there.
    bases: Vec<u32>,
    next_retry: Vec<Option<DateTime<Utc>>>,
    in_flight: JoinSet<AttemptDone>,
    /// What is running, by tokio task id, to account for an attempt that was aborted.
    running: HashMap<tokio::task::Id, (usize, u32, DateTime<Utc>)>,
}

impl<'a> RunLoop<'a> {
    fn new(
        exec: &'a Executor,
        dag: Arc<Dag>,
        run: &'a RunRecord,
        params: Map<String, Value>,
        events: Option<mpsc::UnboundedSender<TaskEvent>>,
    ) -> Self {
        let index: HashMap<&str, usize> = dag
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.as_str(), i))
            .collect();
        let upstream = dag
            .tasks
            .iter()
            .map(|t| {
                t.depends_on
                    .iter()
                    .filter_map(|d| index.get(d.as_str()).copied())
                    .collect()
            })
            .collect();
        let n = dag.tasks.len();
        RunLoop {
            exec,
            dag,
            run,
            params,
            events,
            upstream,
            states: vec![TaskState::Scheduled; n],
            tries: vec![0; n],
            bases: vec![0; n],
            next_retry: vec![None; n],
            in_flight: JoinSet::new(),
            running: HashMap::new(),
        }
    }

    /// Reads the task instances, and fails the attempts a dead process left running.
    async fn load(&mut self) -> Result<(), StoreError> {
        let index: HashMap<String, usize> = self
            .dag
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.clone(), i))
            .collect();
        let store = &self.exec.store;
        let run_id = self.run.run_id.as_str();
        for ti in durably(|| store.task_instances(run_id)).await? {
            let Some(&i) = index.get(&ti.task_id) else {
                continue;
            };
            self.states[i] = ti.state;
            self.tries[i] = ti.try_number;
            self.bases[i] = ti.attempt_base.min(ti.try_number);
            self.next_retry[i] = ti.next_retry_at;
        }
        if !self.states.contains(&TaskState::Running) {
            return Ok(());
        }
        let attempts = durably(|| store.attempts(run_id)).await?;
        let now = Utc::now();
        for i in 0..self.states.len() {
            if self.states[i] == TaskState::Running {
                let task_id = &self.dag.tasks[i].id;
                let started = attempts
                    .iter()
                    .find(|a| &a.task_id == task_id && a.attempt == self.tries[i])
                    .map_or(now, |a| a.started_at);
                tracing::warn!(run_id = %self.run.run_id, task_id = %task_id, attempt = self.tries[i], "recovering an orphaned attempt");
                let attempt = self.tries[i];
                if let Some((pgid, ticks)) =
                    durably(|| store.attempt_process(run_id, task_id, attempt)).await?
                {
                    process::kill_orphaned_group(pgid, ticks);
                }
                let orphaned = TaskError::transient(ORPHANED);
                self.record_end(
                    i,
                    self.tries[i],
                    started,
                    Err(orphaned),
                    now,
                    Usage::default(),
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn drive(&mut self, mut shutdown: Shutdown) -> Result<Option<RunState>, StoreError> {
        loop {
            self.advance().await?;
            if self.in_flight.is_empty() {
                if self.states.iter().all(|s| s.is_finished()) {
                    return self.finish().await.map(Some);
                }
                if shutdown.phase() != Phase::Running {
                    return Ok(None);
                }
            }
            let startable = if shutdown.phase() == Phase::Running
                && self.running.len() < self.dag.max_active_tasks as usize
            {
                self.states.iter().position(|s| *s == TaskState::Queued)
            } else {
                None
            };
            let next_retry = self.next_retry.iter().flatten().min().copied();
            let retry_sleep =
                next_retry.map(|t| (t - Utc::now()).to_std().unwrap_or(Duration::ZERO));
            tokio::select! {
                biased;
                phase = shutdown.changed() => {
                    if phase == Phase::Abort {
                        self.abort().await?;
                        return Ok(None);
                    }
                }
                Some(joined) = self.in_flight.join_next_with_id(), if !self.in_flight.is_empty() => {
                    self.on_joined(joined).await?;
                }
                permit = Arc::clone(&self.exec.slots).acquire_owned(), if startable.is_some() => {
                    if let (Ok(permit), Some(task)) = (permit, startable) {
                        self.start(task, permit, shutdown.clone()).await?;
                    }
                }
                _ = tokio::time::sleep(retry_sleep.unwrap_or(Duration::ZERO)), if retry_sleep.is_some() => {}
            }
        }
    }

    /// Moves waiting tasks on: to `queued` when their trigger rule is met, to `upstream_failed`
    /// or `skipped` when it never will be, and from `up_for_retry` to `queued` when due.
    async fn advance(&mut self) -> Result<(), StoreError> {
        let now = Utc::now();
        let mut changes = Vec::new();
        // Tasks are in topological order, so one pass carries a failure all the way down.
        for i in 0..self.states.len() {
            let next = match self.states[i] {
                TaskState::Scheduled => {
                    let upstream: Vec<TaskState> =
                        self.upstream[i].iter().map(|&u| self.states[u]).collect();
                    match evaluate(self.dag.tasks[i].trigger_rule, &upstream) {
                        Readiness::Wait => continue,
                        Readiness::Ready => TaskState::Queued,
                        Readiness::Never(state) => state,
                    }
                }
                TaskState::UpForRetry if self.next_retry[i].is_none_or(|t| t <= now) => {
                    self.next_retry[i] = None;
                    TaskState::Queued
                }
                _ => continue,
            };
            self.states[i] = next;
            changes.push((i, next));
        }
        if changes.is_empty() {
            return Ok(());
        }
        let rows: Vec<(String, TaskState)> = changes
            .iter()
            .map(|&(i, state)| (self.dag.tasks[i].id.clone(), state))
            .collect();
        durably(|| self.exec.store.set_task_states(&self.run.run_id, &rows)).await?;
        for (i, state) in changes {
            self.emit(i, state, None);
        }
        Ok(())
    }

    async fn start(
        &mut self,
        i: usize,
        permit: OwnedSemaphorePermit,
        mut shutdown: Shutdown,
    ) -> Result<(), StoreError> {
        let task = &self.dag.tasks[i];
        let attempt = self.tries[i] + 1;
        let started_at = Utc::now();
        let path = attempt_log_path(
            &self.exec.logs_dir,
            &self.dag.id,
            &self.run.run_id,
            &task.id,
            attempt,
        );
        let log_path = path.to_string_lossy();
        durably(|| {
            self.exec.store.start_attempt(
                &self.run.run_id,
                &task.id,
                attempt,
                started_at,
                &log_path,
            )
        })
        .await?;
        self.tries[i] = attempt;
        self.states[i] = TaskState::Running;
        self.emit(i, TaskState::Running, None);

        let vars = RunVariables::new(
            &self.dag.id,
            &self.run.run_id,
            &task.id,
            self.run.logical_date,
            (self.run.data_interval_start, self.run.data_interval_end),
            self.dag.timezone,
            self.params.clone(),
        );
        // A configuration that does not render now will not render on a retry either.
        let rendered = match self.exec.registry.get(&task.kind) {
            Some(kind) => {
                tasks::render(kind.as_ref(), &task.with, &vars).map_err(TaskError::permanent)
            }
            None => Err(TaskError::permanent(
                "the task kind is no longer registered",
            )),
        };
        let try_line = {
            let (this_try, tries) = (attempt - self.bases[i], task.retry.retries + 1);
            if self.bases[i] == 0 {
                format!("attempt {attempt} of {tries}")
            } else {
                format!(
                    "attempt {attempt}: try {this_try} of {tries} since the run was queued again"
                )
            }
        };
        let first_line = format!("{try_line} of task `{}` ({})", task.id, task.kind);
        let spec = rendered.map(|with| AttemptSpec {
            dag_id: self.dag.id.clone(),
            run_id: self.run.run_id.clone(),
            task_id: task.id.clone(),
            attempt,
            kind: task.kind.clone(),
            with,
            home: self.exec.home.clone(),
            ds: vars.ds,
            params: vars.params,
            log_path: path.clone(),
            timeout: task.timeout,
            limits: task.limits,
            database_url: self.exec.store.url().to_string(),
            data: self.exec.data.clone(),
        });
        let exec = self.exec.clone();
        let handle = self.in_flight.spawn(async move {
            let _permit = permit;
            let (result, usage) = match AttemptLog::create(path).map(Arc::new) {
                Err(e) => (
                    Err(TaskError::transient(format!(
                        "cannot create the attempt log: {e}"
                    ))),
                    Usage::default(),
                ),
                Ok(log) => {
                    log.note(&first_line);
                    let (result, usage) = match spec {
                        Ok(spec) => {
                            // The grace period of a shutdown is over: the attempt stops now.
                            let abort = async move {
                                while shutdown.phase() != Phase::Abort {
                                    shutdown.changed().await;
                                }
                            };
                            attempt::run(
                                spec,
                                &exec.isolation,
                                &exec.registry,
                                &exec.store,
                                Arc::clone(&log),
                                abort,
                            )
                            .await
                        }
                        Err(e) => (Err(e), Usage::default()),
                    };
                    match &result {
                        Ok(out) => log.note(&format!(
                            "succeeded{}",
                            out.rows.map(|r| format!(", rows={r}")).unwrap_or_default()
                        )),
                        Err(e) if e.retryable => log.note(&format!("failed: {e}")),
                        Err(e) => log.note(&format!("failed, and no retry can help: {e}")),
                    }
                    (result, usage)
                }
            };
            AttemptDone {
                task: i,
                attempt,
                started_at,
                ended_at: Utc::now(),
                result,
                usage,
            }
        });
        self.running.insert(handle.id(), (i, attempt, started_at));
        Ok(())
    }

    async fn on_joined(
        &mut self,
        joined: Result<(tokio::task::Id, AttemptDone), tokio::task::JoinError>,
    ) -> Result<(), StoreError> {
        match joined {
            Ok((id, done)) => {
                self.running.remove(&id);
                self.record_end(
                    done.task,
                    done.attempt,
                    done.started_at,
                    done.result,
                    done.ended_at,
                    done.usage,
                )
                .await
            }
            Err(e) => {
                let Some((i, attempt, started)) = self.running.remove(&e.id()) else {
                    return Ok(());
                };
                let error = if e.is_cancelled() {
                    TaskError::transient(INTERRUPTED)
                } else {
                    TaskError::transient(format!("the task panicked: {e}"))
                };
                self.record_end(
                    i,
                    attempt,
                    started,
                    Err(error),
                    Utc::now(),
                    Usage::default(),
                )
                .await
            }
        }
    }

    /// Records an attempt's end and decides the task's next state under its retry policy.
    async fn record_end(
        &mut self,
        i: usize,
        attempt: u32,
        started_at: DateTime<Utc>,
        result: Result<TaskOutput, TaskError>,
        ended_at: DateTime<Utc>,
        usage: Usage,
    ) -> Result<(), StoreError> {
        let task = &self.dag.tasks[i];
        let duration_ms = (ended_at - started_at).num_milliseconds().max(0);
        let (end, state, next_retry) = match result {
            Ok(out) => (
                AttemptEnd {
                    state: AttemptState::Success,
                    ended_at,
                    duration_ms,
                    rows: out.rows.map(|r| i64::try_from(r).unwrap_or(i64::MAX)),
                    metrics: out
                        .metrics
                        .map(|m| serde_json::Value::Object(m).to_string()),
                    error: None,
                    peak_rss_bytes: usage.peak_rss_bytes,
                    cpu_ms: usage.cpu_ms,
                },
                TaskState::Success,
                None,
            ),
            Err(error) => {
                // Counted from the run's last requeue: a rerun gets a fresh retry budget. An
                // error no retry can help fails the task at once.
                let this_try = attempt.saturating_sub(self.bases[i]);
                let retry = error.retryable && task.retry.allows_retry_after(this_try);
                let next = retry.then(|| ended_at + task.retry.delay_after(this_try));
                let end = AttemptEnd {
                    state: AttemptState::Failed,
                    ended_at,
                    duration_ms,
                    rows: None,
                    metrics: None,
                    error: Some(recorded_error(&error.message)),
                    peak_rss_bytes: usage.peak_rss_bytes,
                    cpu_ms: usage.cpu_ms,
                };
                let state = if retry {
                    TaskState::UpForRetry
                } else {
                    TaskState::Failed
                };
                (end, state, next)
            }
        };
        durably(|| {
            self.exec.store.finish_attempt(
                &self.run.run_id,
                &task.id,
                attempt,
                &end,
                state,
                next_retry,
            )
        })
        .await?;
        self.states[i] = state;
        self.next_retry[i] = next_retry;
        self.emit(i, state, end.error);
        Ok(())
    }

    /// The grace period is over: every running attempt stops (each watches the shutdown) and
    /// is recorded as interrupted.
    async fn abort(&mut self) -> Result<(), StoreError> {
        while let Some(joined) = self.in_flight.join_next_with_id().await {
            self.on_joined(joined).await?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<RunState, StoreError> {
        let failed = self
            .states
            .iter()
            .any(|s| matches!(s, TaskState::Failed | TaskState::UpstreamFailed));
        let state = if failed {
            RunState::Failed
        } else {
            RunState::Success
        };
        durably(|| self.exec.store.finish_run(&self.run.run_id, state)).await?;
        Ok(state)
    }

    fn emit(&self, i: usize, state: TaskState, error: Option<String>) {
        if let Some(events) = &self.events {
            let _ = events.send(TaskEvent {
                task_id: self.dag.tasks[i].id.clone(),
                state,
                attempt: self.tries[i],
                error,
            });
        }
    }
}

/// How long a metadata read or write of a run is tried again before the run is given up
/// (and handed back for adoption): a minute of "database is locked", a full disk or a
/// PostgreSQL failover must not strand a run.
const STORE_RETRY_FOR: Duration = Duration::from_secs(60);
const STORE_RETRY: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));

/// Runs `op` again while it fails with a transient error, for up to [`STORE_RETRY_FOR`].
/// Every store call of a run is idempotent, so a retried write that had committed changes
/// nothing.
async fn durably<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let started = std::time::Instant::now();
    let mut failures = 0;
    loop {
        match op().await {
            Err(e) if e.is_transient() && started.elapsed() < STORE_RETRY_FOR => {
                failures += 1;
                let wait = STORE_RETRY.delay(failures);
                tracing::warn!(error = %e, ?wait, "metadata database unavailable; trying again");
                tokio::time::sleep(wait).await;
            }
            result => return result,
        }
    }
}

/// An attempt's error as the run history keeps it: secrets masked, and at most
/// [`MAX_ERROR_BYTES`], its start and its end, where a failure's last line usually is.
fn recorded_error(error: &str) -> String {
    let error = crate::redact::secrets(error);
    if error.len() <= MAX_ERROR_BYTES {
        return error.into_owned();
    }
    let head_end = floor_char_boundary(&error, MAX_ERROR_BYTES / 4);
    let tail_start = ceil_char_boundary(&error, error.len() - MAX_ERROR_BYTES * 3 / 4);
    format!(
        "{} … ({} bytes cut; the whole output is in the attempt's log) … {}",
        &error[..head_end],
        tail_start - head_end,
        &error[tail_start..]
    )
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn ceil_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at += 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_errors_are_bounded_and_keep_both_ends() {
        let long = format!(
            "command exited with status 1: {}é{}",
            "x".repeat(50_000_000),
            "the end"
        );
        let kept = recorded_error(&long);
        assert!(kept.len() <= MAX_ERROR_BYTES + 100, "{}", kept.len());
        assert!(kept.starts_with("command exited with status 1: xxx"));
        assert!(
            kept.ends_with("xxxéthe end"),
            "{}",
            &kept[kept.len() - 20..]
        );
        assert!(kept.contains("bytes cut"));
        assert_eq!(recorded_error("short"), "short");
        assert_eq!(
            recorded_error("cannot open postgres://u:pw@h/d"),
            "cannot open postgres://u:***@h/d"
        );
    }
}
