//! What a run's executor records as the run moves on, written together: an attempt's end,
//! the task states it leads to, the attempts it starts and the run's own end are one
//! transaction, not one each.

use chrono::{DateTime, Utc};

use super::write::{Tx, params};
use super::{AttemptEnd, QUEUED_CHANNEL, Result, RunState, Store, TaskState, timestamp};

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
            tx.execute(
                "INSERT INTO task_attempts (run_id, task_id, attempt, state, started_at, log_path, queue,
                     spec, pool, pool_slots, priority, worker, claim_token)
                 VALUES ($1, $2, $3, 'running', $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (run_id, task_id, attempt) DO NOTHING",
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
            tx.execute(
                "UPDATE task_instances SET state = 'running', try_number = $1, next_retry_at = NULL
                 WHERE run_id = $2 AND task_id = $3",
                params![i64::from(attempt), run_id, task_id],
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
            tx.execute(
                "UPDATE task_attempts SET state = $1, ended_at = $2, duration_ms = $3, rows = $4, error = $5,
                     metrics = $9, peak_rss_bytes = $10, cpu_ms = $11, started_at = $12,
                     outputs = $13, spec = NULL, report = NULL, log_tail = COALESCE($14, log_tail)
                 WHERE run_id = $6 AND task_id = $7 AND attempt = $8",
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
                ],
            )
            .await?;
            tx.execute(
                "UPDATE task_instances SET state = $1, next_retry_at = $2 WHERE run_id = $3 AND task_id = $4",
                params![
                    task_state.as_str(),
                    next_retry_at.map(timestamp::format),
                    run_id,
                    task_id
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
