//! What people do to runs by hand, from the API or the CLI: trigger, cancel, clear, mark.
//! Each checks that the run is in a state that allows it, acts through the [`Store`], and is
//! recorded with who did it and from where, in the run history and in the log.
//!
//! A trigger is refused for now ([`Busy`]) while too many runs are accepted and not finished:
//! a burst then meets a clear "try again later" instead of a server that falls behind
//! without end. Scheduled runs never wait on this: `max_active_runs` bounds them already.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::dag::Dag;
use crate::scheduler::plan;
use crate::store::{Actor, Cancelled, NewRun, RunRecord, RunState, Store, StoreError, TaskState};

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("{0}")]
    NotFound(String),
    /// The run is not in a state that allows it; the message says what would.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Busy(#[from] Busy),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Too many runs are queued or running to accept another now; the same request later will
/// do. Says which bound, and where to change it.
#[derive(Debug, thiserror::Error)]
#[error(
    "no run of `{dag_id}` was created: {pending} runs {scope} are queued or running, the most {setting} allows; orch is working through them, try again shortly"
)]
pub struct Busy {
    pub dag_id: String,
    pub pending: u64,
    /// "of this DAG" or "in all".
    pub scope: &'static str,
    /// The setting and its value, e.g. "max_pending_runs: 10000 in orch.yaml".
    pub setting: String,
}

impl Busy {
    /// When to try again: once a little of the backlog is done.
    pub const RETRY_AFTER_SECONDS: u64 = 1;
}

/// How long counts of runs queued or running stand for admission before they are read again.
const COUNTS_FRESH: std::time::Duration = std::time::Duration::from_millis(50);
/// And at least this many times as long as the last read took: counting costs more the
/// larger the backlog, and must not take the time that would work it off.
const COUNTS_SHARE: u32 = 10;

/// Admits new runs against `max_pending_runs`, one per process that takes triggers. The
/// counts of runs queued or running are read at most every [`COUNTS_FRESH`] (longer when a
/// read is slow, see [`COUNTS_SHARE`]), and the runs
/// admitted here since are added to them: under a burst a trigger does not count the whole
/// backlog again, and the bound is overshot at most by what other processes admit meanwhile.
#[derive(Default)]
pub struct Admission {
    /// Held across the read, so that triggers arriving meanwhile use its counts.
    counted: tokio::sync::Mutex<Option<Counted>>,
}

struct Counted {
    /// When to read them again.
    stale_at: std::time::Instant,
    all: u64,
    by_dag: HashMap<String, u64>,
}

impl Admission {
    /// Refuses a new run of `dag` while the runs queued or running reach its DAG's
    /// `max_pending_runs`, or `max_pending_runs` of all DAGs (orch.yaml's); else counts it in.
    pub async fn admit(&self, store: &Store, dag: &Dag, max_pending_runs: usize) -> Result<()> {
        let mut counted = self.counted.lock().await;
        let counted = match &mut *counted {
            Some(c) if std::time::Instant::now() < c.stale_at => c,
            stale => {
                let read_at = std::time::Instant::now();
                let mut by_dag: HashMap<String, u64> = HashMap::new();
                for (dag_id, _, n) in store.active_run_counts().await? {
                    *by_dag.entry(dag_id).or_default() += u64::try_from(n).unwrap_or(0);
                }
                stale.insert(Counted {
                    stale_at: read_at + COUNTS_FRESH.max(read_at.elapsed() * COUNTS_SHARE),
                    all: by_dag.values().sum(),
                    by_dag,
                })
            }
        };
        let this_dag = counted.by_dag.get(&dag.id).copied().unwrap_or(0);
        if let Some(bound) = dag.max_pending_runs
            && this_dag >= u64::from(bound)
        {
            return Err(Busy {
                dag_id: dag.id.clone(),
                pending: this_dag,
                scope: "of this DAG",
                setting: format!("its `max_pending_runs: {bound}`"),
            }
            .into());
        }
        if counted.all >= u64::try_from(max_pending_runs).unwrap_or(u64::MAX) {
            return Err(Busy {
                dag_id: dag.id.clone(),
                pending: counted.all,
                scope: "in all",
                setting: format!("`max_pending_runs: {max_pending_runs}` (orch.yaml)"),
            }
            .into());
        }
        counted.all += 1;
        *counted.by_dag.entry(dag.id.clone()).or_default() += 1;
        Ok(())
    }
}

/// Creates a manual run of `dag` for `actor`, recording who asked. Two runs created in the
/// same microsecond are two runs: the id is the queueing time, moved on by a microsecond
/// while it is taken. A trigger checks [`Admission::admit`] first and wakes the scheduler after.
pub async fn create_run(
    store: &Store,
    dag: &Dag,
    logical_date: Option<DateTime<Utc>>,
    conf: Map<String, Value>,
    actor: &Actor,
) -> Result<NewRun> {
    let task_ids: Vec<String> = dag.tasks.iter().map(|t| t.id.clone()).collect();
    let mut queued_at = Utc::now();
    for _ in 0..ID_TRIES {
        let run = plan::manual_run(dag, logical_date, conf.clone(), queued_at);
        if store
            .insert_run_by(&run, &task_ids, actor, "trigger")
            .await?
        {
            tracing::info!(dag_id = %dag.id, run_id = %run.run_id, actor = %actor.name, source = %actor.source, "run triggered by hand");
            return Ok(run);
        }
        queued_at += chrono::Duration::microseconds(1);
    }
    Err(ActionError::Conflict(format!(
        "no run of `{}` was created: {ID_TRIES} run ids in a row from {queued_at} are taken",
        dag.id
    )))
}

/// How many microseconds a trigger moves its id on before it gives up.
const ID_TRIES: usize = 1000;

type Result<T> = std::result::Result<T, ActionError>;

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It had not started: it ended at once.
    Ended,
    /// It runs: its attempts are being stopped, and it ends failed once they are.
    Stopping,
}

async fn existing_run(store: &Store, run_id: &str) -> Result<RunRecord> {
    store
        .run(run_id)
        .await?
        .ok_or_else(|| ActionError::NotFound(format!("no run `{run_id}`")))
}

async fn record(
    store: &Store,
    actor: &Actor,
    run: &RunRecord,
    task_id: Option<&str>,
    action: &str,
    detail: Option<&str>,
) -> Result<()> {
    store
        .record_action(
            actor,
            &run.dag_id,
            Some(&run.run_id),
            task_id,
            action,
            detail,
        )
        .await?;
    tracing::info!(run_id = %run.run_id, task_id = task_id.unwrap_or(""), actor = %actor.name, source = %actor.source, detail = detail.unwrap_or(""), "{action} by hand");
    Ok(())
}

/// Cancels a queued or running run. `state_dir` is the home's, whose `orch serve` is woken so
/// that it looks for the request at once.
pub async fn cancel(
    store: &Store,
    state_dir: &Path,
    run_id: &str,
    actor: &Actor,
) -> Result<CancelOutcome> {
    let run = existing_run(store, run_id).await?;
    let outcome = match store.request_cancel(run_id, actor).await? {
        Cancelled::AlreadyFinished => {
            return Err(ActionError::Conflict(format!(
                "run `{run_id}` has already ended ({}); nothing to cancel",
                run.state
            )));
        }
        Cancelled::Queued => CancelOutcome::Ended,
        Cancelled::Requested => CancelOutcome::Stopping,
    };
    crate::queue::CANCELLED.notify_waiters();
    crate::scheduler::cancel_requested(state_dir).await;
    record(store, actor, &run, None, "cancel", None).await?;
    Ok(outcome)
}

/// `task` and, when asked, every task downstream of it, in the DAG's order.
pub fn with_downstream(dag: &Dag, task: &str, downstream: bool) -> Vec<String> {
    let mut cleared: HashSet<&str> = HashSet::from([task]);
    if downstream {
        // Tasks are in topological order: one pass reaches every descendant.
        for t in &dag.tasks {
            if t.depends_on.iter().any(|d| cleared.contains(d.as_str())) {
                cleared.insert(&t.id);
            }
        }
    }
    dag.tasks
        .iter()
        .filter(|t| cleared.contains(t.id.as_str()))
        .map(|t| t.id.clone())
        .collect()
}

/// Queues a finished run again: every task (`task` `None`), or `task` and, with `downstream`,
/// the tasks downstream of it in `dag`, each with a fresh retry budget. Returns the tasks
/// cleared (`None`: all).
pub async fn clear(
    store: &Store,
    state_dir: &Path,
    dag: Option<&Dag>,
    run_id: &str,
    task: Option<&str>,
    downstream: bool,
    actor: &Actor,
) -> Result<Option<Vec<String>>> {
    let run = existing_run(store, run_id).await?;
    if !run.state.is_finished() {
        return Err(ActionError::Conflict(format!(
            "run `{run_id}` is {}; clear it once it has ended, or cancel it first",
            run.state
        )));
    }
    let (cleared, tasks) = match task {
        None => (store.requeue_run(run_id).await?, None),
        Some(task_id) => {
            let dag = dag.ok_or_else(|| {
                ActionError::Conflict(format!(
                    "DAG `{}` is not loaded, so the tasks downstream of `{task_id}` are unknown",
                    run.dag_id
                ))
            })?;
            let tasks = match crate::dag::for_each::parse_instance_id(task_id) {
                // One instance of a mapped task: it, and what is downstream of its task.
                Some((mapped, _)) => {
                    let instances = store.task_instances(run_id).await?;
                    if !instances.iter().any(|t| t.task_id == task_id) {
                        return Err(ActionError::NotFound(format!(
                            "no task instance `{task_id}` in run `{run_id}`"
                        )));
                    }
                    let mut tasks = vec![task_id.to_string()];
                    tasks.extend(
                        with_downstream(dag, mapped, downstream)
                            .into_iter()
                            .filter(|t| t != mapped),
                    );
                    tasks
                }
                None if !dag.tasks.iter().any(|t| t.id == task_id) => {
                    return Err(ActionError::NotFound(format!(
                        "no task `{task_id}` in DAG `{}`",
                        run.dag_id
                    )));
                }
                None => with_downstream(dag, task_id, downstream),
            };
            (store.clear_tasks(run_id, Some(&tasks)).await?, Some(tasks))
        }
    };
    if !cleared {
        return Err(ActionError::Conflict(format!(
            "run `{run_id}` changed meanwhile; look again"
        )));
    }
    let detail = tasks.as_ref().map(|t| t.join(", "));
    record(store, actor, &run, task, "clear", detail.as_deref()).await?;
    crate::scheduler::wake(state_dir).await;
    Ok(tasks)
}

/// Marks a task of a finished run success or failed; returns the run's state after.
pub async fn mark(
    store: &Store,
    run_id: &str,
    task_id: &str,
    state: TaskState,
    actor: &Actor,
) -> Result<RunState> {
    let run = existing_run(store, run_id).await?;
    if !run.state.is_finished() {
        return Err(ActionError::Conflict(format!(
            "run `{run_id}` is {}; mark its tasks once it has ended, or cancel it first",
            run.state
        )));
    }
    let run_state = store
        .mark_task(run_id, task_id, state)
        .await?
        .ok_or_else(|| {
            ActionError::NotFound(format!(
                "no task `{task_id}` in run `{run_id}`, or the run started again"
            ))
        })?;
    let action = format!("mark {}", state.as_str());
    record(store, actor, &run, Some(task_id), &action, None).await?;
    Ok(run_state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downstream_tasks_are_found_in_order() {
        let dag = crate::dag::load_str(
            Path::new("t.yaml"),
            "id: t\ntasks:\n  - {id: a, kind: noop}\n  - {id: b, kind: noop, depends_on: [a]}\n  - {id: c, kind: noop}\n  - {id: d, kind: noop, depends_on: [b, c]}\n",
            &crate::tasks::Registry::core(),
        )
        .expect("dag loads");
        assert_eq!(with_downstream(&dag, "b", true), ["b", "d"]);
        assert_eq!(with_downstream(&dag, "a", true), ["a", "b", "d"]);
        assert_eq!(with_downstream(&dag, "a", false), ["a"]);
    }
}
