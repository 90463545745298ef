//! What a run's executor records as the run moves on, written together: an attempt's end,
//! the task states it leads to, the attempts it starts and the run's own end are one
//! transaction, not one each.

use chrono::{DateTime, Utc};

use super::write::{Tx, params};
use super::{
    AttemptEnd, QUEUED_CHANNEL, Result, RunState, Store, StoreError, TaskState, timestamp,
};

/// One change to a run's records.
#[derive(Debug, Clone)]
pub enum RunChange {
    /// Task instances move to these states.
    TaskStates(Vec<(String, TaskState)>),
    /// An attempt starts: its row, and its task instance running. With a queue, it waits
    /// there for a worker to claim it.
    AttemptStarted {
        task_id: String,
        attempt: u32,
        started_at: DateTime<Utc>,
        log_path: String,
        queued: Option<QueuedAt>,
        /// The worker it is handed to, claimed in this write (token 1): the executor's own
        /// process's ([`crate::queue::Handoff`]).
        claimed_by: Option<String>,
    },
    /// An attempt ended, and its task instance is now `task_state`.
    AttemptEnded {
        task_id: String,
        attempt: u32,
        end: AttemptEnd,
        task_state: TaskState,
        next_retry_at: Option<DateTime<Utc>>,
        /// The end of its log, when its report came in memory rather than in this row.
        log_tail: Option<String>,
    },
    /// A task's retries count from after `attempt` on: a sensor's rescheduled looks use none.
    AttemptBase { task_id: String, attempt: u32 },
    /// The run ended, with a note saying why when no task failed to say so.
    RunEnded {
        state: RunState,
        note: Option<String>,
    },
}

/// Where a queued attempt waits, and what it takes: its queue, its spec (JSON), its pool's
/// slots, its priority.
#[derive(Debug, Clone)]
pub struct QueuedAt {
    pub queue: String,
    pub spec: String,
    pub pool: Option<String>,
    pub pool_slots: u32,
    pub priority: i32,
}

impl Store {
    /// Records `changes` of run `run_id`, in order, in one transaction. Each change may be
    /// written again (a retried write) without changing what the first wrote.
    pub async fn record_run(&self, run_id: &str, changes: Vec<RunChange>) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let run_id = run_id.to_string();
        let changes = without_superseded_states(changes);
        if let Some(batches) = &self.run_batches {
            return batches.write(run_id, changes).await;
        }
        self.write(Box::new(move |tx| {
            Box::pin(async move {
                let mut queued = false;
                for change in changes {
                    queued |= matches!(
                        &change,
                        RunChange::AttemptStarted {
                            queued: Some(_),
                            ..
                        }
                    );
                    apply(tx, &run_id, change).await?;
                }
                if queued {
                    tx.notify(QUEUED_CHANNEL).await?;
                }
                Ok(())
            })
        }))
        .await
    }
}

/// The runs' changes of a PostgreSQL store, written together: what the runs of this process
/// asked to write while the last batch was being written goes in one transaction, with one
/// notification, rather than a transaction (BEGIN and COMMIT round trips, a commit record)
/// each. SQLite's writer thread does the same for every write ([`super::write`]).
///
/// Two batches are written at a time, each on a connection of the pool: one is collected
/// while the other commits. A batch that fails is written again a run at a time, so that a
/// bad write fails only its own run.
pub(super) struct RunBatches {
    pool: sqlx::AnyPool,
    begin: &'static str,
    /// The writers' queue, started on first use in the runtime of that use.
    started: std::sync::Mutex<Option<Started>>,
}

struct Started {
    jobs: tokio::sync::mpsc::UnboundedSender<BatchJob>,
    writers: Vec<tokio::task::JoinHandle<()>>,
}

struct BatchJob {
    run_id: String,
    changes: Vec<RunChange>,
    tell: tokio::sync::oneshot::Sender<Result<()>>,
}

type Jobs = std::sync::Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<BatchJob>>>;

/// The most runs' changes one batch takes.
const MAX_BATCH: usize = 64;
/// Batches written at a time.
const BATCH_WRITERS: usize = 2;

impl RunBatches {
    pub(super) fn new(pool: sqlx::AnyPool, begin: &'static str) -> RunBatches {
        RunBatches {
            pool,
            begin,
            started: std::sync::Mutex::new(None),
        }
    }

    async fn write(&self, run_id: String, changes: Vec<RunChange>) -> Result<()> {
        let (tell, told) = tokio::sync::oneshot::channel();
        self.jobs()
            .send(BatchJob {
                run_id,
                changes,
                tell,
            })
            .map_err(|_| StoreError::WriterGone)?;
        told.await.map_err(|_| StoreError::WriterGone)?
    }

    /// The writers' queue; started again when the runtime that ran them is gone.
    fn jobs(&self) -> tokio::sync::mpsc::UnboundedSender<BatchJob> {
        let mut started = self
            .started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(started) = started
            .as_ref()
            .filter(|s| s.writers.iter().all(|w| !w.is_finished()))
        {
            return started.jobs.clone();
        }
        let (jobs, queue) = tokio::sync::mpsc::unbounded_channel();
        let queue: Jobs = std::sync::Arc::new(tokio::sync::Mutex::new(queue));
        let writers = (0..BATCH_WRITERS)
            .map(|_| {
                tokio::spawn(write_batches(
                    self.pool.clone(),
                    self.begin,
                    std::sync::Arc::clone(&queue),
                ))
            })
            .collect();
        *started = Some(Started {
            jobs: jobs.clone(),
            writers,
        });
        jobs
    }
}

async fn write_batches(pool: sqlx::AnyPool, begin: &'static str, queue: Jobs) {
    loop {
        let batch = {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            batch
        };
        if batch.len() > 1 {
            let all: Vec<(&str, &[RunChange])> = batch
                .iter()
                .map(|job| (job.run_id.as_str(), job.changes.as_slice()))
                .collect();
            if write_together(&pool, begin, &all).await.is_ok() {
                for job in batch {
                    let _ = job.tell.send(Ok(()));
                }
                continue;
            }
        }
        for job in batch {
            let written =
                write_together(&pool, begin, &[(job.run_id.as_str(), &job.changes)]).await;
            let _ = job.tell.send(written);
        }
    }
}

/// Writes runs' changes in one transaction, with one notification for the attempts queued.
async fn write_together(
    pool: &sqlx::AnyPool,
    begin: &'static str,
    runs: &[(&str, &[RunChange])],
) -> Result<()> {
    let mut tx = pool.begin_with(begin).await?;
    let mut queued = false;
    {
        let mut write = Tx::Any(&mut tx);
        for (run_id, changes) in runs {
            for change in changes.iter() {
                queued |= matches!(
                    change,
                    RunChange::AttemptStarted {
                        queued: Some(_),
                        ..
                    }
                );
                apply(&mut write, run_id, change.clone()).await?;
            }
        }
        if queued {
            write.notify(QUEUED_CHANNEL).await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Drops the state a task moves to when an attempt of it starts later in the same write,
/// which sets the task `running` anyway: a task queued and started at once is one statement.
fn without_superseded_states(changes: Vec<RunChange>) -> Vec<RunChange> {
    let mut started_after: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut kept: Vec<RunChange> = Vec::with_capacity(changes.len());
    for change in changes.into_iter().rev() {
        match change {
            RunChange::AttemptStarted { ref task_id, .. } => {
                started_after.insert(task_id.clone());
                kept.push(change);
            }
            RunChange::TaskStates(states) => {
                let states: Vec<(String, TaskState)> = states
                    .into_iter()
                    .filter(|(task_id, _)| !started_after.contains(task_id))
                    .collect();
                if !states.is_empty() {
                    kept.push(RunChange::TaskStates(states));
                }
            }
            other => kept.push(other),
        }
    }
    kept.reverse();
    kept
}

async fn apply(tx: &mut Tx<'_>, run_id: &str, change: RunChange) -> Result<()> {
    match change {
        RunChange::TaskStates(states) => {
            for (task_id, state) in states {
                tx.execute(
                    "UPDATE task_instances SET state = $1 WHERE run_id = $2 AND task_id = $3",
                    params![state.as_str(), run_id, task_id],
                )
                .await?;
            }
        }
        RunChange::AttemptStarted {
            task_id,
            attempt,
            started_at,
            log_path,
            queued,
            claimed_by,
        } => {
            let (pool_slots, priority) = queued
                .as_ref()
                .map_or((1, 0), |q| (q.pool_slots, q.priority));
            let (queue, spec, pool) = match queued {
                Some(q) => (Some(q.queue), Some(q.spec), q.pool),
                None => (None, None, None),
            };
            let token: i64 = if claimed_by.is_some() { 1 } else { 0 };
            tx.execute_pair(
                "INSERT INTO task_attempts (run_id, task_id, attempt, state, started_at, log_path, queue,
                     spec, pool, pool_slots, priority, worker, claim_token)
                 VALUES ($1, $2, $3, 'running', $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (run_id, task_id, attempt) DO NOTHING",
                "UPDATE task_instances SET state = 'running', try_number = $3, next_retry_at = NULL
                 WHERE run_id = $1 AND task_id = $2",
                params![
                    run_id,
                    &task_id,
                    i64::from(attempt),
                    timestamp::format(started_at),
                    log_path,
                    queue,
                    spec,
                    pool,
                    i64::from(pool_slots),
                    i64::from(priority),
                    claimed_by,
                    token,
                ],
            )
            .await?;
        }
        RunChange::AttemptEnded {
            task_id,
            attempt,
            end,
            task_state,
            next_retry_at,
            log_tail,
        } => {
            tx.execute_pair(
                "UPDATE task_attempts SET state = $1, ended_at = $2, duration_ms = $3, rows = $4, error = $5,
                     metrics = $9, peak_rss_bytes = $10, cpu_ms = $11, started_at = $12,
                     outputs = $13, spec = NULL, report = NULL, log_tail = COALESCE($14, log_tail)
                 WHERE run_id = $6 AND task_id = $7 AND attempt = $8",
                "UPDATE task_instances SET state = $15, next_retry_at = $16 WHERE run_id = $6 AND task_id = $7",
                params![
                    end.state.as_str(),
                    timestamp::format(end.ended_at),
                    end.duration_ms,
                    end.rows,
                    end.error,
                    run_id,
                    &task_id,
                    i64::from(attempt),
                    end.metrics,
                    end.peak_rss_bytes,
                    end.cpu_ms,
                    timestamp::format(end.started_at),
                    end.outputs,
                    log_tail,
                    task_state.as_str(),
                    next_retry_at.map(timestamp::format),
                ],
            )
            .await?;
        }
        RunChange::AttemptBase { task_id, attempt } => {
            tx.execute(
                "UPDATE task_instances SET attempt_base = $1 WHERE run_id = $2 AND task_id = $3",
                params![i64::from(attempt), run_id, task_id],
            )
            .await?;
        }
        RunChange::RunEnded { state, note } => {
            tx.execute(
                "UPDATE dag_runs SET state = $1, ended_at = $2, note = COALESCE($3, note) WHERE run_id = $4",
                params![
                    state.as_str(),
                    timestamp::format(Utc::now()),
                    note,
                    run_id
                ],
            )
            .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(task_id: &str) -> RunChange {
        RunChange::AttemptStarted {
            task_id: task_id.to_string(),
            attempt: 1,
            started_at: Utc::now(),
            log_path: String::new(),
            queued: None,
            claimed_by: None,
        }
    }

    /// A task queued and started in one write is written once; states not superseded, and
    /// states set after a start, stay in their order.
    #[test]
    fn a_state_superseded_by_a_later_start_is_dropped() {
        let changes = vec![
            RunChange::TaskStates(vec![
                ("a".to_string(), TaskState::Queued),
                ("b".to_string(), TaskState::UpstreamFailed),
            ]),
            started("a"),
            RunChange::TaskStates(vec![("a".to_string(), TaskState::Skipped)]),
        ];
        let kept = without_superseded_states(changes);
        let shape: Vec<String> = kept
            .iter()
            .map(|change| match change {
                RunChange::TaskStates(states) => format!("{states:?}"),
                RunChange::AttemptStarted { task_id, .. } => format!("start {task_id}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            shape,
            [
                r#"[("b", UpstreamFailed)]"#,
                "start a",
                r#"[("a", Skipped)]"#
            ]
        );
    }
}
