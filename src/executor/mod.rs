//! Executing one DAG run: queueing tasks as their upstreams allow, retrying, timing out, and
//! recording every transition in the run history.
//!
//! One loop owns a run's state and is the only writer of it, so transitions never race. A
//! task's attempt is queued in the metadata database for a worker ([`crate::queue`],
//! [`crate::worker`]) and the loop waits for its report; `max_active_tasks` bounds how many
//! of a run's attempts are out at once, the workers' slots how many run at once.
//!
//! The loop's other jobs have modules of their own: expanding mapped tasks (`mapping`),
//! sending alerts (`alerts`), cancel requests and the end of a shutdown's grace
//! (`cancellation`), the trigger rules (`trigger_rules`) and the shutdown phases (`shutdown`).

mod alerts;
mod cancellation;
mod mapping;
mod shutdown;
mod trigger_rules;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::attempt::Usage;
use crate::config::Config;
use crate::dag::{Dag, for_each};
use crate::logs::{AttemptLog, attempt_log_path};
use crate::notify::EventKind;
use crate::process;
use crate::queue::{Dispatch, Handoff, QueuedTask, Report};
use crate::store::{
    AttemptEnd, AttemptKey, AttemptState, Claim, QueuedAt, RunChange, RunRecord, RunState, Store,
    StoreError, TaskState, durably,
};
use crate::tasks::{self, Registry, TaskError};
use crate::template::RunVariables;

pub use shutdown::{Phase, Shutdown, ShutdownHandle};
pub use trigger_rules::{Readiness, evaluate};

/// The error recorded for an attempt whose process disappeared without an outcome.
pub const ORPHANED: &str = "orphaned: the orch process running this attempt stopped before it finished (killed or crashed)";
pub use crate::attempt::INTERRUPTED;
/// The most of an attempt's error the run history keeps: its start and its end. The whole
/// output is in the attempt's log.
const MAX_ERROR_BYTES: usize = 4096;
/// How long a run whose shutdown grace is over still waits for the reports of its attempts
/// (a local worker stops its own within 15 s); the others stay running for the next
/// scheduler to wait for.
const ABORT_WAIT: Duration = Duration::from_secs(20);

/// Everything runs share: where to record, which kinds exist, where reports come back.
#[derive(Clone)]
pub struct Executor {
    pub store: Store,
    pub registry: Arc<Registry>,
    /// Where attempt logs go, as far as this process knows (a worker elsewhere writes its own).
    pub logs_dir: PathBuf,
    pub dispatch: Dispatch,
    /// The queue of every attempt, instead of each task's: `orch run` and `orch backfill`
    /// queue for their own worker only, so that they run here, now.
    pub private_queue: Option<String>,
    /// Where the web UI is, for the links in alerts (`public_url`).
    pub public_url: Option<String>,
    /// The worker of this process, to hand attempts straight to when it has room.
    pub handoff: Option<Handoff>,
    /// The pools orch.yaml declares and their slots: an attempt needing more slots than its
    /// pool has could never start, and fails at once instead.
    pub pools: std::collections::BTreeMap<String, u32>,
    /// Whether a `depends_on_past` task whose previous run's task failed ends the run, as
    /// `upstream_failed`, rather than wait for someone to clear that task: `orch backfill`
    /// has nobody to wait for (Airflow reports such a backfill deadlocked).
    pub failed_past_ends_run: bool,
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
    /// The executor of an orch command: the home's log folder, and workers lost after the
    /// configured heartbeat timeout.
    pub fn of_config(config: &Config, store: Store, registry: Arc<Registry>) -> Executor {
        Executor {
            dispatch: Dispatch::start(store.clone(), config.heartbeat_timeout),
            store,
            registry,
            logs_dir: config.logs_dir.clone(),
            private_queue: None,
            public_url: config.public_url.clone(),
            handoff: None,
            pools: config.pools.clone(),
            failed_past_ends_run: false,
        }
    }

    /// This executor, ending a run whose `depends_on_past` task follows a failed one
    /// ([`Executor::failed_past_ends_run`]).
    pub fn failed_past_ends_run(self) -> Executor {
        Executor {
            failed_past_ends_run: true,
            ..self
        }
    }

    /// This executor, handing attempts straight to the worker of this process while it has
    /// room ([`Handoff`]).
    pub fn with_handoff(self, handoff: Option<Handoff>) -> Executor {
        Executor { handoff, ..self }
    }

    /// This executor, queueing every attempt for this process's own worker (see
    /// [`private_queue`]).
    pub fn run_here(self, lease: &crate::lease::Lease) -> Executor {
        Executor {
            private_queue: Some(private_queue(lease)),
            ..self
        }
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
        let outcome = run_loop.drive(shutdown).await;
        run_loop.alerts_sent().await;
        outcome
    }
}

/// The queue only this process's worker serves: its lease id, which no queue name of a
/// DAG file can be (`@` is not allowed there).
pub fn private_queue(lease: &crate::lease::Lease) -> String {
    format!("@{}", lease.id())
}

/// What one attempt came back with: its report, or `None` when another process recorded it.
struct AttemptDone {
    task: usize,
    attempt: u32,
    report: Option<Report>,
}

struct RunLoop<'a> {
    exec: &'a Executor,
    dag: Arc<Dag>,
    run: &'a RunRecord,
    params: Map<String, Value>,
    events: Option<mpsc::UnboundedSender<TaskEvent>>,
    /// The task instances this loop drives, by slot: first the DAG's tasks in their order,
    /// then the instances of mapped tasks as they are expanded. Every vector below is by slot.
    slots: Vec<Slot>,
    upstream: Vec<Vec<usize>>,
    states: Vec<TaskState>,
    tries: Vec<u32>,
    /// Attempts made before the run was last queued again: retries count from there.
    bases: Vec<u32>,
    next_retry: Vec<Option<DateTime<Utc>>>,
    /// The attempts out with workers, each waiting for its report.
    in_flight: JoinSet<AttemptDone>,
    /// What is out, by tokio task id, to account for a wait that panicked.
    running: HashMap<tokio::task::Id, (usize, u32)>,
    /// Another process recorded one of this run's attempts: it drives the run now.
    taken_over: bool,
    /// Someone asked to cancel the run (who, from where), or it ran past its
    /// `dagrun_timeout`: nothing more starts, what is out is ended, and the run ends failed
    /// with this note.
    cancelled: Option<String>,
    /// Alerts being sent, beside the run: waited for once it ends.
    alerts: JoinSet<()>,
    /// For `depends_on_past` tasks: whether the previous run's task let this one go, and when
    /// to look again if not.
    past: Vec<PastCheck>,
    /// What the run's succeeded tasks published, by task id, for `{{ outputs.TASK.key }}`.
    outputs: Map<String, Value>,
    /// Why the run ended failed when no attempt of it says so (a `depends_on_past` task
    /// whose previous run's task failed, under `orch backfill`).
    note: Option<String>,
    /// Changes to the run's records not written yet: written together by [`RunLoop::flush`]
    /// before the loop waits, so that an attempt's end, the states it leads to and the next
    /// attempts are one write.
    pending: Vec<RunChange>,
    /// Attempts queued by the pending changes, waited for once they are written: by slot and
    /// attempt, with the spec of those claimed for the worker of this process.
    to_wait: Vec<(usize, u32, Option<String>)>,
}

/// One task instance of the run: a task of the DAG, or an instance of a mapped task.
struct Slot {
    /// Its task, an index into the DAG's tasks.
    task: usize,
    /// Its id in the run history: the task's, or `TASK[i]` for a mapped instance.
    id: String,
    /// Set for an instance of a mapped task.
    instance: Option<Instance>,
}

/// Where a mapped task's instance stands in its list.
struct Instance {
    /// The slot of its mapped task.
    parent: usize,
    index: usize,
    item: Value,
}

/// What the previous run lets a `depends_on_past` task do.
enum PastVerdict {
    Go,
    Wait,
    /// Never, under [`Executor::failed_past_ends_run`]: the previous run's task failed.
    Never(String),
}

/// Where a `depends_on_past` task stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum PastCheck {
    /// Not such a task, or the previous run's task succeeded or was skipped.
    Clear,
    /// Not looked at yet.
    Unknown,
    /// Waiting for the previous run's task; look again at this time.
    WaitUntil(tokio::time::Instant),
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
        let past = dag
            .tasks
            .iter()
            .map(|t| {
                if t.depends_on_past {
                    PastCheck::Unknown
                } else {
                    PastCheck::Clear
                }
            })
            .collect();
        let slots = dag
            .tasks
            .iter()
            .enumerate()
            .map(|(task, t)| Slot {
                task,
                id: t.id.clone(),
                instance: None,
            })
            .collect();
        RunLoop {
            exec,
            dag,
            run,
            params,
            events,
            slots,
            upstream,
            states: vec![TaskState::Scheduled; n],
            tries: vec![0; n],
            bases: vec![0; n],
            next_retry: vec![None; n],
            in_flight: JoinSet::new(),
            running: HashMap::new(),
            taken_over: false,
            cancelled: run.cancel_requested.clone(),
            alerts: JoinSet::new(),
            past,
            outputs: Map::new(),
            note: None,
            pending: Vec::new(),
            to_wait: Vec::new(),
        }
    }

    /// Reads the task instances; waits again for the attempts still queued or with a worker,
    /// and fails those a dead process left running without a queue.
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
        // Mapped tasks come before their instances (by position, then index).
        for ti in durably(|| store.task_instances(run_id)).await? {
            let i = match (ti.map_index, for_each::parse_instance_id(&ti.task_id)) {
                (None, _) => match index.get(&ti.task_id) {
                    Some(&i) => i,
                    None => continue,
                },
                (Some(map_index), Some((task, _))) => {
                    let Some(&parent) = index.get(task) else {
                        continue;
                    };
                    // Instances of a task not expanded yet are from before a clear: the
                    // expansion renews them.
                    if matches!(
                        self.states[parent],
                        TaskState::Scheduled | TaskState::Queued
                    ) || self.dag.tasks[parent].for_each.is_none()
                    {
                        continue;
                    }
                    let item = ti.map_item.clone().unwrap_or(Value::Null);
                    self.add_instance(
                        parent,
                        usize::try_from(map_index).unwrap_or(usize::MAX),
                        item,
                    )
                }
                (Some(_), None) => continue,
            };
            self.states[i] = ti.state;
            self.tries[i] = ti.try_number;
            self.bases[i] = ti.attempt_base.min(ti.try_number);
            self.next_retry[i] = ti.next_retry_at;
        }
        let resumed = self
            .states
            .iter()
            .any(|s| matches!(s, TaskState::Running | TaskState::Success));
        if !resumed {
            return Ok(());
        }
        let attempts = durably(|| store.attempts(run_id)).await?;
        // What succeeded tasks published, for the tasks still to run (their last success).
        for a in attempts.iter().filter(|a| a.state == AttemptState::Success) {
            if let Some(outputs) = &a.outputs {
                self.outputs.insert(a.task_id.clone(), outputs.clone());
            }
        }
        for parent in 0..self.dag.tasks.len() {
            if self.states[parent].is_finished() && self.dag.tasks[parent].for_each.is_some() {
                self.collect_outputs(parent);
            }
        }
        if !self.states.contains(&TaskState::Running) {
            return Ok(());
        }
        let now = Utc::now();
        for i in 0..self.states.len() {
            // A mapped task has no attempt of its own: its instances run.
            if self.states[i] != TaskState::Running || self.is_mapped(i) {
                continue;
            }
            let task_id = self.slots[i].id.clone();
            let attempt = self.tries[i];
            let record = attempts
                .iter()
                .find(|a| a.task_id == task_id && a.attempt == attempt);
            if record.is_some_and(|a| a.queue.is_some() && a.state == AttemptState::Running) {
                tracing::info!(run_id, task_id = %task_id, attempt, "waiting again for a queued attempt");
                self.wait_for(i, attempt);
                continue;
            }
            let started = record.map_or(now, |a| a.started_at);
            tracing::warn!(run_id, task_id = %task_id, attempt, "recovering an orphaned attempt");
            if let Some((pgid, ticks)) =
                durably(|| store.attempt_process(run_id, &task_id, attempt)).await?
            {
                process::kill_orphaned_group(pgid, ticks);
            }
            let report = Report::new(
                &Err(TaskError::transient(ORPHANED)),
                Usage::default(),
                started,
                now,
            );
            self.record_end(i, attempt, report).await?;
        }
        Ok(())
    }

    async fn drive(&mut self, mut shutdown: Shutdown) -> Result<Option<RunState>, StoreError> {
        // Armed for the whole loop, so that a cancel asked while the loop is busy is not missed.
        let cancel_asked = crate::queue::CANCELLED.notified();
        tokio::pin!(cancel_asked);
        cancel_asked.as_mut().enable();
        if self.cancelled.is_some() {
            self.end_attempts_out().await?;
        }
        // `dagrun_timeout` counts from the run's start, across a resume by another process.
        let deadline = self.dag.dagrun_timeout.map(|limit| {
            let started = self.run.started_at.unwrap_or_else(Utc::now);
            let end = started + chrono::Duration::from_std(limit).unwrap_or(chrono::Duration::MAX);
            let left = (end - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            (tokio::time::Instant::now() + left, limit)
        });
        // An SLA is checked for scheduled runs: a run finished after it is still a success.
        let mut sla_at = self
            .dag
            .sla
            .filter(|_| self.run.run_type == crate::store::RunType::Scheduled)
            .map(|sla| {
                let due = self.run.data_interval_end
                    + chrono::Duration::from_std(sla).unwrap_or(chrono::Duration::MAX);
                let left = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                (tokio::time::Instant::now() + left, sla)
            });
        loop {
            if self.taken_over {
                self.flush().await?;
                tracing::warn!(run_id = %self.run.run_id, "another orch process drives this run now; this one lets it go");
                self.in_flight.abort_all();
                return Ok(None);
            }
            self.advance().await?;
            if self.in_flight.is_empty() && self.to_wait.is_empty() {
                if self.states.iter().all(|s| s.is_finished()) {
                    return self.finish().await.map(Some);
                }
                if shutdown.phase() != Phase::Running {
                    self.flush().await?;
                    return Ok(None);
                }
            }
            if shutdown.phase() == Phase::Running && self.cancelled.is_none() {
                let room = (self.dag.max_active_tasks as usize).saturating_sub(self.running.len());
                let startable: Vec<usize> = (0..self.states.len())
                    .filter(|&i| self.states[i] == TaskState::Queued)
                    .take(room)
                    .collect();
                if !startable.is_empty() {
                    for task in startable {
                        self.start(task).await?;
                    }
                    self.flush().await?;
                    continue;
                }
            }
            self.flush().await?;
            let next_retry = self.next_retry.iter().flatten().min().copied();
            let next_past_look = self
                .past
                .iter()
                .zip(&self.states)
                .filter(|(_, s)| **s == TaskState::Scheduled)
                .filter_map(|(p, _)| match p {
                    PastCheck::WaitUntil(at) => Some(*at),
                    PastCheck::Clear | PastCheck::Unknown => None,
                })
                .min();
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
                () = tokio::time::sleep_until(deadline.map_or_else(tokio::time::Instant::now, |d| d.0)), if deadline.is_some() && self.cancelled.is_none() => {
                    let limit = deadline.map(|d| d.1).unwrap_or_default();
                    let note = format!(
                        "timed out: the run took longer than its dagrun_timeout ({})",
                        humantime::format_duration(limit)
                    );
                    tracing::warn!(run_id = %self.run.run_id, "{note}");
                    self.cancelled = Some(note);
                    self.end_attempts_out().await?;
                }
                () = tokio::time::sleep_until(sla_at.map_or_else(tokio::time::Instant::now, |s| s.0)), if sla_at.is_some() => {
                    let sla = sla_at.take().map(|s| s.1).unwrap_or_default();
                    let note = format!(
                        "not finished {} after its data interval ended (sla)",
                        humantime::format_duration(sla)
                    );
                    tracing::warn!(run_id = %self.run.run_id, "{note}");
                    self.alert(EventKind::SlaMissed, None, "running", Some(note)).await;
                }
                () = &mut cancel_asked, if self.cancelled.is_none() => {
                    cancel_asked.set(crate::queue::CANCELLED.notified());
                    cancel_asked.as_mut().enable();
                    self.check_cancel().await?;
                }
                _ = tokio::time::sleep(retry_sleep.unwrap_or(Duration::ZERO)), if retry_sleep.is_some() => {}
                () = tokio::time::sleep_until(next_past_look.unwrap_or_else(tokio::time::Instant::now)), if next_past_look.is_some() => {}
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
                TaskState::Scheduled | TaskState::Queued | TaskState::UpForRetry
                    if self.cancelled.is_some() =>
                {
                    self.next_retry[i] = None;
                    TaskState::Skipped
                }
                // An instance cleared by hand runs again once its mapped task is expanded.
                TaskState::Scheduled if self.slots[i].instance.is_some() => {
                    match self.slots[i]
                        .instance
                        .as_ref()
                        .map(|m| self.states[m.parent])
                    {
                        Some(TaskState::Running) => TaskState::Queued,
                        _ => continue,
                    }
                }
                TaskState::Running if self.is_mapped(i) => match self.mapped_state(i) {
                    Some(state) => {
                        self.collect_outputs(i);
                        state
                    }
                    None => continue,
                },
                TaskState::Scheduled => {
                    let upstream: Vec<TaskState> =
                        self.upstream[i].iter().map(|&u| self.states[u]).collect();
                    match evaluate(self.dag.tasks[self.slots[i].task].trigger_rule, &upstream) {
                        Readiness::Wait => continue,
                        Readiness::Ready => match self.past_allows(i).await? {
                            PastVerdict::Go => TaskState::Queued,
                            PastVerdict::Wait => continue,
                            PastVerdict::Never(why) => {
                                tracing::warn!(run_id = %self.run.run_id, "{why}");
                                self.note.get_or_insert(why);
                                TaskState::UpstreamFailed
                            }
                        },
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
            .map(|&(i, state)| (self.slots[i].id.clone(), state))
            .collect();
        self.pending.push(RunChange::TaskStates(rows));
        for (i, state) in changes {
            self.emit(i, state, None);
        }
        Ok(())
    }

    /// Whether task `i` may run as far as `depends_on_past` goes: the same task of the DAG's
    /// previous run succeeded or was skipped (or there is none). Looked up again every
    /// [`PAST_LOOK`] while not.
    async fn past_allows(&mut self, i: usize) -> Result<PastVerdict, StoreError> {
        let first_look = match self.past[i] {
            PastCheck::Clear => return Ok(PastVerdict::Go),
            PastCheck::WaitUntil(at) if tokio::time::Instant::now() < at => {
                return Ok(PastVerdict::Wait);
            }
            PastCheck::WaitUntil(_) => false,
            PastCheck::Unknown => true,
        };
        let store = &self.exec.store;
        let task_id = &self.slots[i].id;
        let previous =
            durably(|| store.previous_task_state(&self.dag.id, self.run.logical_date, task_id))
                .await?;
        let clear = match previous {
            None | Some(None) => true,
            Some(Some(state)) => matches!(state, TaskState::Success | TaskState::Skipped),
        };
        if clear {
            self.past[i] = PastCheck::Clear;
            return Ok(PastVerdict::Go);
        }
        if let Some(Some(state @ (TaskState::Failed | TaskState::UpstreamFailed))) = previous
            && self.exec.failed_past_ends_run
        {
            return Ok(PastVerdict::Never(format!(
                "depends_on_past: task `{task_id}` is {state} in the previous run of `{}`, so it \
                 cannot run in `{}`; mark or clear it there, then run this date again",
                self.dag.id, self.run.run_id
            )));
        }
        if first_look {
            tracing::info!(run_id = %self.run.run_id, task_id = %task_id, previous = ?previous.flatten(), "depends_on_past: waiting for the previous run's task to succeed");
        }
        self.past[i] = PastCheck::WaitUntil(tokio::time::Instant::now() + PAST_LOOK);
        Ok(PastVerdict::Wait)
    }

    /// Queues the next attempt of task `i` for a worker of its queue, and waits for it.
    async fn start(&mut self, i: usize) -> Result<(), StoreError> {
        if self.is_mapped(i) {
            return self.expand(i).await;
        }
        let task = &self.dag.tasks[self.slots[i].task];
        let task_id = &self.slots[i].id;
        let attempt = self.tries[i] + 1;
        let started_at = Utc::now();
        let path = attempt_log_path(
            &self.exec.logs_dir,
            &self.dag.id,
            &self.run.run_id,
            task_id,
            attempt,
        );
        let vars = self.variables(i);
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
        let banner = format!("{try_line} of task `{task_id}` ({})", task.kind);
        let fits = match task.pool.as_deref().map(|p| (p, self.exec.pools.get(p))) {
            Some((pool, Some(&slots))) if task.pool_slots > slots => {
                Err(TaskError::permanent(format!(
                    "it needs {} slots of pool `{pool}`, which has {slots} (orch.yaml): it could \
                     never start; lower the task's `pool_slots` or raise the pool",
                    task.pool_slots
                )))
            }
            _ => Ok(()),
        };
        let queued = fits.and(rendered).and_then(|with| {
            let queued = QueuedTask {
                dag_id: self.dag.id.clone(),
                kind: task.kind.clone(),
                with,
                ds: vars.ds,
                params: vars.params,
                timeout: task.timeout,
                limits: task.limits,
                banner: banner.clone(),
            };
            serde_json::to_string(&queued)
                .map_err(|e| TaskError::permanent(format!("cannot queue the attempt: {e}")))
        });
        let queue = self.exec.private_queue.as_deref().unwrap_or(&task.queue);
        // The worker of this process takes it at once if it has room, with no claim to write.
        let handed = match (&queued, &self.exec.handoff) {
            (Ok(_), Some(handoff)) if handoff.reserve(queue, task.pool.is_some()) => {
                Some(handoff.worker().to_string())
            }
            _ => None,
        };
        let spec = handed.as_ref().and(queued.as_ref().ok()).cloned();
        self.pending.push(RunChange::AttemptStarted {
            task_id: task_id.clone(),
            attempt,
            started_at,
            log_path: path.to_string_lossy().into_owned(),
            queued: queued.as_ref().ok().map(|spec| QueuedAt {
                queue: queue.to_string(),
                spec: spec.clone(),
                pool: task.pool.clone(),
                pool_slots: task.pool_slots,
                priority: task.priority,
            }),
            claimed_by: handed,
        });
        self.tries[i] = attempt;
        self.states[i] = TaskState::Running;
        self.emit(i, TaskState::Running, None);
        match queued {
            Ok(_) => self.to_wait.push((i, attempt, spec)),
            Err(error) => self.never_queued(i, attempt, path, &banner, error).await?,
        }
        Ok(())
    }

    /// Writes the changes pending, then waits for the attempts they queued.
    async fn flush(&mut self) -> Result<(), StoreError> {
        if !self.pending.is_empty() {
            let changes = std::mem::take(&mut self.pending);
            let written = durably(|| {
                self.exec
                    .store
                    .record_run(&self.run.run_id, changes.clone())
            })
            .await;
            if let Err(e) = written {
                // Nothing was handed over: the slots taken for it are free again.
                for _ in self.to_wait.drain(..).filter(|w| w.2.is_some()) {
                    if let Some(handoff) = &self.exec.handoff {
                        handoff.release();
                    }
                }
                return Err(e);
            }
        }
        let waiting = std::mem::take(&mut self.to_wait);
        if waiting.iter().any(|w| w.2.is_none()) {
            crate::queue::QUEUED.notify_waiters();
        }
        for (i, attempt, handed) in waiting {
            self.wait_for(i, attempt);
            if let (Some(spec), Some(handoff)) = (handed, &self.exec.handoff) {
                handoff.hand_over(Claim {
                    key: AttemptKey {
                        run_id: self.run.run_id.clone(),
                        task_id: self.slots[i].id.clone(),
                        attempt,
                    },
                    token: 1,
                    spec,
                });
            }
        }
        Ok(())
    }

    /// Ends attempt `attempt` of slot `i`, which could not be queued: the log says why here,
    /// where the run is executed.
    async fn never_queued(
        &mut self,
        i: usize,
        attempt: u32,
        path: PathBuf,
        banner: &str,
        error: TaskError,
    ) -> Result<(), StoreError> {
        let started_at = Utc::now();
        let lines = [
            banner.to_string(),
            format!("failed, and no retry can help: {error}"),
        ];
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(log) = AttemptLog::create(path) {
                lines.iter().for_each(|line| log.note(line));
            }
        })
        .await;
        let report = Report::new(&Err(error), Usage::default(), started_at, Utc::now());
        self.record_end(i, attempt, report).await
    }

    /// What slot `i`'s templates see: the run's variables, the outputs so far, and an
    /// instance's item.
    fn variables(&self, i: usize) -> RunVariables {
        let vars = RunVariables::new(
            &self.dag.id,
            &self.run.run_id,
            &self.slots[i].id,
            self.run.logical_date,
            (self.run.data_interval_start, self.run.data_interval_end),
            self.dag.timezone,
            self.params.clone(),
        );
        let instance = self.slots[i].instance.as_ref();
        RunVariables {
            outputs: self.outputs.clone(),
            item: instance.map(|m| m.item.clone()),
            map_index: instance.map(|m| m.index),
            ..vars
        }
    }

    /// Waits, beside the run loop, for the report of attempt `attempt` of task `i`.
    fn wait_for(&mut self, i: usize, attempt: u32) {
        let key = AttemptKey {
            run_id: self.run.run_id.clone(),
            task_id: self.slots[i].id.clone(),
            attempt,
        };
        let report = self.exec.dispatch.wait(key);
        let handle = self.in_flight.spawn(async move {
            AttemptDone {
                task: i,
                attempt,
                report: report.await,
            }
        });
        self.running.insert(handle.id(), (i, attempt));
    }

    async fn on_joined(
        &mut self,
        joined: Result<(tokio::task::Id, AttemptDone), tokio::task::JoinError>,
    ) -> Result<(), StoreError> {
        match joined {
            Ok((id, done)) => {
                self.running.remove(&id);
                match done.report {
                    Some(report) => self.record_end(done.task, done.attempt, report).await,
                    None => {
                        self.taken_over = true;
                        Ok(())
                    }
                }
            }
            Err(e) => {
                let Some((i, attempt)) = self.running.remove(&e.id()) else {
                    return Ok(());
                };
                let report =
                    Report::failure(format!("waiting for the attempt failed: {e}"), Utc::now());
                self.record_end(i, attempt, report).await
            }
        }
    }

    /// Records an attempt's end and decides the task's next state under its retry policy.
    async fn record_end(
        &mut self,
        i: usize,
        attempt: u32,
        report: Report,
    ) -> Result<(), StoreError> {
        let task = &self.dag.tasks[self.slots[i].task];
        let task_id = &self.slots[i].id;
        let (started_at, ended_at) = report.times(Utc::now());
        let duration_ms = (ended_at - started_at).num_milliseconds().max(0);
        let usage = report.usage;
        let mut rescheduled = false;
        let (end, state, next_retry) = match report.result() {
            Ok(out) => {
                if let Some(outputs) = &out.outputs {
                    self.outputs
                        .insert(task_id.clone(), Value::Object(outputs.clone()));
                }
                (
                    AttemptEnd {
                        state: AttemptState::Success,
                        started_at,
                        ended_at,
                        duration_ms,
                        rows: out.rows.map(|r| i64::try_from(r).unwrap_or(i64::MAX)),
                        metrics: out
                            .metrics
                            .map(|m| serde_json::Value::Object(m).to_string()),
                        outputs: out
                            .outputs
                            .map(|m| serde_json::Value::Object(m).to_string()),
                        error: None,
                        peak_rss_bytes: usage.peak_rss_bytes,
                        cpu_ms: usage.cpu_ms,
                    },
                    TaskState::Success,
                    None,
                )
            }
            Err(error) => {
                // Counted from the run's last requeue: a rerun gets a fresh retry budget. An
                // error no retry can help fails the task at once.
                let this_try = attempt.saturating_sub(self.bases[i]);
                let retry = error.retryable && task.retry.allows_retry_after(this_try);
                let next = retry.then(|| ended_at + task.retry.delay_after(this_try));
                // A sensor that must look again: later, with its retries untouched.
                let (retry, next) = match error.reschedule {
                    Some(after) => {
                        rescheduled = true;
                        self.bases[i] = attempt;
                        self.pending.push(RunChange::AttemptBase {
                            task_id: task_id.clone(),
                            attempt,
                        });
                        let after =
                            chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX);
                        (true, Some(ended_at + after))
                    }
                    None => (retry, next),
                };
                let end = AttemptEnd {
                    outputs: None,
                    state: AttemptState::Failed,
                    started_at,
                    ended_at,
                    duration_ms,
                    rows: None,
                    metrics: None,
                    error: Some(recorded_error(&error.message)),
                    peak_rss_bytes: usage.peak_rss_bytes,
                    cpu_ms: usage.cpu_ms,
                };
                let state = if error.skipped {
                    TaskState::Skipped
                } else if retry {
                    TaskState::UpForRetry
                } else {
                    TaskState::Failed
                };
                (end, state, next)
            }
        };
        self.pending.push(RunChange::AttemptEnded {
            task_id: task_id.clone(),
            attempt,
            end: end.clone(),
            task_state: state,
            next_retry_at: next_retry,
            log_tail: report.log_tail.clone(),
        });
        crate::run_counters::attempt_ended(
            &self.dag.id,
            &task.id,
            end.state,
            Duration::from_millis(u64::try_from(duration_ms).unwrap_or(0)),
            end.rows,
        );
        self.states[i] = state;
        self.next_retry[i] = next_retry;
        let kind = match state {
            TaskState::Success => Some(EventKind::TaskSucceeded),
            // A sensor looking again is not a retry worth telling anyone about.
            TaskState::UpForRetry if rescheduled => None,
            TaskState::UpForRetry => Some(EventKind::TaskRetry),
            TaskState::Failed => Some(EventKind::TaskFailed),
            _ => None,
        };
        if let Some(kind) = kind {
            self.alert_attempt(
                kind,
                (i, attempt),
                state.as_str(),
                end.error.clone(),
                report.log_tail,
            )
            .await;
        }
        self.emit(i, state, end.error);
        Ok(())
    }

    async fn finish(&mut self) -> Result<RunState, StoreError> {
        if let Some(note) = self.cancelled.clone() {
            self.pending.push(RunChange::RunEnded {
                state: RunState::Failed,
                note: Some(note.clone()),
            });
            self.flush().await?;
            crate::run_counters::run_ended(&self.dag.id, RunState::Failed);
            self.alert(EventKind::RunFailed, None, "failed", Some(note))
                .await;
            return Ok(RunState::Failed);
        }
        let failed = self
            .states
            .iter()
            .any(|s| matches!(s, TaskState::Failed | TaskState::UpstreamFailed));
        let state = if failed {
            RunState::Failed
        } else {
            RunState::Success
        };
        let note = if failed { self.note.clone() } else { None };
        self.pending.push(RunChange::RunEnded { state, note });
        self.flush().await?;
        crate::run_counters::run_ended(&self.dag.id, state);
        let kind = if failed {
            EventKind::RunFailed
        } else {
            EventKind::RunSucceeded
        };
        self.alert(kind, None, state.as_str(), None).await;
        Ok(state)
    }

    fn emit(&self, i: usize, state: TaskState, error: Option<String>) {
        if let Some(events) = &self.events {
            let _ = events.send(TaskEvent {
                task_id: self.slots[i].id.clone(),
                state,
                attempt: self.tries[i],
                error,
            });
        }
    }
}

/// How often a `depends_on_past` task looks again at the previous run.
const PAST_LOOK: Duration = Duration::from_secs(2);
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
