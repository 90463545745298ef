//! Running one attempt of a task, in a process of its own.
//!
//! The executor decides *when* an attempt runs; a worker runs it through this module. In
//! production every attempt runs in a child process ([`child`]), forked from a preloaded orch
//! ([`fork_server`]) or, failing that, started as `orch attempt`: a
//! Polars transform that runs out of memory, a panic in a data kind or a task stuck in CPU-bound
//! work then takes down only that process, never the scheduler, the streams or other runs; a
//! timeout stops it with SIGTERM, then SIGKILL; the kernel enforces its [`Limits`]; and its
//! peak memory and CPU time come back from `wait4` as its [`Usage`]. Library users without an
//! orch binary (unit tests, some benchmarks) run attempts in their own process instead.
//!
//! The [`AttemptSpec`] is everything an attempt needs, serializable so that it can cross into
//! the child on its standard input, never on its command line (it holds the database URLs).

mod child;
mod fork_server;
mod limits;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::DataPlaces;
use crate::logs::AttemptLog;
use crate::process;
use crate::store::Store;
use crate::tasks::{ProcessSink, Registry, TaskContext, TaskError, TaskOutput};

pub use child::serve_child;
pub use fork_server::{ForkServer, serve as serve_fork_server};
pub use limits::{Limits, format_size, parse_size};

/// One attempt of one task, as the executor hands it over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttemptSpec {
    pub dag_id: String,
    pub run_id: String,
    pub task_id: String,
    pub attempt: u32,
    /// The task kind, a key of the registry.
    pub kind: String,
    /// The rendered `with:`.
    pub with: Value,
    pub home: PathBuf,
    pub ds: String,
    pub params: Map<String, Value>,
    pub log_path: PathBuf,
    pub timeout: Option<Duration>,
    pub limits: Limits,
    /// The metadata database, which the attempt opens itself in a child process.
    pub database_url: String,
    pub data: DataPlaces,
    /// The log's first line ("attempt 2 of 3 of task `x` (shell)").
    pub banner: String,
}

/// What an attempt cost, when it ran in a process of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// The process's largest resident set, bytes.
    pub peak_rss_bytes: Option<i64>,
    /// User and system CPU time, milliseconds.
    pub cpu_ms: Option<i64>,
}

/// How attempts run.
#[derive(Debug, Clone)]
pub enum Isolation {
    /// Each in a child process of the orch binary `exe`: forked from its fork server
    /// (`exe attempt-server`), or, should that fail, started as `exe attempt`.
    ChildProcess { exe: PathBuf, forks: ForkServer },
    /// In this process: for library users without an orch binary.
    InProcess,
}

impl Isolation {
    /// Child processes of the running orch binary.
    pub fn this_binary() -> std::io::Result<Isolation> {
        Ok(Isolation::child_processes(std::env::current_exe()?))
    }

    /// Child processes of the orch binary `exe`.
    pub fn child_processes(exe: PathBuf) -> Isolation {
        Isolation::ChildProcess {
            exe,
            forks: ForkServer::default(),
        }
    }
}

/// The error recorded for an attempt cut off by a shutdown's grace period.
pub const INTERRUPTED: &str = "interrupted: orch shut down before the attempt finished";

/// How much of the end of an attempt's log is kept with its report, for readers on other
/// hosts and for alerts.
pub const LOG_TAIL_BYTES: u64 = 64 * 1024;

/// What running an attempt gives: how it ended, what it cost, and the end of its log.
pub struct Ended {
    pub result: Result<TaskOutput, TaskError>,
    pub usage: Usage,
    pub log_tail: String,
}

/// Runs the attempt `spec`: its log begins with the spec's banner and ends with how it
/// ended. When `abort` resolves (a shutdown's grace period is over), the attempt is stopped
/// and fails as [`INTERRUPTED`].
///
/// In a child process the child writes its log itself, so that the worker touches no file
/// for an attempt that ends normally; in this process (always for a kind that needs no
/// process of its own, see [`crate::tasks::TaskKind::needs_process`]) the log's files are
/// opened off the runtime's threads.
pub async fn run(
    spec: AttemptSpec,
    isolation: &Isolation,
    registry: &Registry,
    store: &Store,
    abort: impl Future<Output = ()>,
) -> Ended {
    let needs_process = registry
        .get(&spec.kind)
        .is_none_or(|kind| kind.needs_process());
    match isolation {
        Isolation::ChildProcess { exe, forks } if needs_process => {
            child::run(exe, forks, &spec, store, abort).await
        }
        _ => {
            let (path, banner) = (spec.log_path.clone(), spec.banner.clone());
            let opened = blocking(move || {
                let log = AttemptLog::create(path)?;
                log.note(&banner);
                Ok(Arc::new(log))
            })
            .await;
            let log = match opened {
                Ok(log) => log,
                Err(e) => {
                    let error = format!(
                        "cannot create the attempt log {}: {e}",
                        spec.log_path.display()
                    );
                    return Ended {
                        result: Err(TaskError::transient(error)),
                        usage: Usage::default(),
                        log_tail: String::new(),
                    };
                }
            };
            let result = tokio::select! {
                result = run_here(spec, registry, store, Arc::clone(&log)) => result,
                () = abort => Err(TaskError::transient(INTERRUPTED)),
            };
            let ending = ending_note(&result);
            let log_tail = blocking(move || Ok(log.finish(&ending, LOG_TAIL_BYTES)))
                .await
                .unwrap_or_default();
            Ended {
                result,
                usage: Usage::default(),
                log_tail,
            }
        }
    }
}

/// The log's last line: how the attempt ended.
pub fn ending_note(result: &Result<TaskOutput, TaskError>) -> String {
    match result {
        Ok(out) => format!(
            "succeeded{}",
            out.rows.map(|r| format!(", rows={r}")).unwrap_or_default()
        ),
        Err(e) if e.retryable => format!("failed: {e}"),
        Err(e) => format!("failed, and no retry can help: {e}"),
    }
}

/// Runs file work off the runtime's threads: a slow disk makes it wait, and nothing else.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// Runs the attempt in this process: the kind with its context, within the timeout.
pub async fn run_here(
    spec: AttemptSpec,
    registry: &Registry,
    store: &Store,
    log: Arc<AttemptLog>,
) -> Result<TaskOutput, TaskError> {
    let kind = registry.get(&spec.kind).cloned().ok_or_else(|| {
        TaskError::permanent(format!("the task kind `{}` is not registered", spec.kind))
    })?;
    let ctx = TaskContext {
        processes: process_sink(store, &spec),
        dag_id: spec.dag_id,
        run_id: spec.run_id,
        task_id: spec.task_id,
        attempt: spec.attempt,
        home: spec.home,
        ds: spec.ds,
        params: spec.params,
        log,
        store: store.clone(),
        data: spec.data,
    };
    let run = kind.run(spec.with, &ctx);
    match spec.timeout {
        None => run.await,
        Some(limit) => tokio::time::timeout(limit, run).await.unwrap_or_else(|_| {
            Err(TaskError::transient(format!(
                "timed out after {}",
                humantime::format_duration(limit)
            )))
        }),
    }
}

/// Records the process groups the attempt's kind starts, so that a scheduler recovering from
/// a crash can kill what is left of them.
fn process_sink(store: &Store, spec: &AttemptSpec) -> ProcessSink {
    let (store, run_id, task_id, attempt) = (
        store.clone(),
        spec.run_id.clone(),
        spec.task_id.clone(),
        spec.attempt,
    );
    ProcessSink::new(move |pgid| {
        let ticks = process::start_ticks(pgid);
        let (store, run_id, task_id) = (store.clone(), run_id.clone(), task_id.clone());
        Box::pin(async move {
            if let Err(e) = store
                .record_attempt_process(&run_id, &task_id, attempt, pgid, ticks)
                .await
            {
                tracing::warn!(run_id, task_id, error = %e, "cannot record the task's process group");
            }
        })
    })
}

/// How an attempt ended, as data: what the child process reports on its standard output,
/// and what a worker reports through the queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Outcome {
    Succeeded {
        rows: Option<u64>,
        metrics: Option<Map<String, Value>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outputs: Option<Map<String, Value>>,
    },
    Failed {
        message: String,
        retryable: bool,
        /// The task ends skipped rather than failed.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        skipped: bool,
        /// A sensor looks again after this many milliseconds, without using a retry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reschedule_ms: Option<u64>,
    },
}

impl From<&Result<TaskOutput, TaskError>> for Outcome {
    fn from(result: &Result<TaskOutput, TaskError>) -> Outcome {
        match result {
            Ok(out) => Outcome::Succeeded {
                rows: out.rows,
                metrics: out.metrics.clone(),
                outputs: out.outputs.clone(),
            },
            Err(e) => Outcome::Failed {
                message: e.message.clone(),
                retryable: e.retryable,
                skipped: e.skipped,
                reschedule_ms: e
                    .reschedule
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            },
        }
    }
}

impl From<Outcome> for Result<TaskOutput, TaskError> {
    fn from(report: Outcome) -> Result<TaskOutput, TaskError> {
        match report {
            Outcome::Succeeded {
                rows,
                metrics,
                outputs,
            } => Ok(TaskOutput {
                rows,
                metrics,
                outputs,
            }),
            Outcome::Failed {
                message,
                retryable,
                skipped,
                reschedule_ms,
            } => Err(TaskError {
                message,
                retryable,
                skipped,
                reschedule: reschedule_ms.map(std::time::Duration::from_millis),
            }),
        }
    }
}
