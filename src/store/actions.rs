//! What people do by hand to runs: cancel, clear, mark, each recorded with who and from where.
//!
//! The process executing a run stays the only writer of its task states while it runs: a
//! cancel of a running run is a request ([`Store::request_cancel`]) that executor acts on;
//! clearing and marking apply to finished runs only, which nobody executes.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::timestamp::{self, serde_format};
use super::write::params;
use super::{AttemptKey, Result, RunState, Store, TaskState, parse_time};
use crate::dag::for_each;

/// The channel a cancel request is announced on (PostgreSQL), for the process executing it.
pub const CANCEL_CHANNEL: &str = "orch_cancel";

/// Records a manual action: at, DAG, run, task, action, actor, source, detail.
pub(super) const RECORD_ACTION: &str =
    "INSERT INTO manual_actions (at, dag_id, run_id, task_id, action, actor, source, detail)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// Who did something by hand, and from where.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The name given at sign-in, `api` for a bearer token, `local` on loopback without one,
    /// or the user running a CLI command.
    pub name: String,
    /// The peer address of the request, or `cli`.
    pub source: String,
}

/// One recorded manual action.
#[derive(Debug, Clone, Serialize)]
pub struct ManualAction {
    #[serde(serialize_with = "serde_format::required")]
    pub at: DateTime<Utc>,
    pub dag_id: String,
    pub run_id: Option<String>,
    pub task_id: Option<String>,
    pub action: String,
    pub actor: String,
    pub source: String,
    pub detail: Option<String>,
}

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The run was still queued: it ended failed at once.
    Queued,
    /// The run is running: the process executing it stops its attempts and ends it.
    Requested,
    /// The run had already ended.
    AlreadyFinished,
}

impl Store {
    /// Records a manual action in the audit trail.
    pub async fn record_action(
        &self,
        actor: &Actor,
        dag_id: &str,
        run_id: Option<&str>,
        task_id: Option<&str>,
        action: &str,
        detail: Option<&str>,
    ) -> Result<()> {
        let values = params![
            timestamp::format(Utc::now()),
            dag_id,
            run_id,
            task_id,
            action,
            &actor.name,
            &actor.source,
            detail,
        ];
        self.write(Box::new(move |tx| {
            Box::pin(async move {
                tx.execute(RECORD_ACTION, values).await?;
                Ok(())
            })
        }))
        .await
    }

    /// The manual actions on a run, oldest first.
    pub async fn run_actions(&self, run_id: &str) -> Result<Vec<ManualAction>> {
        let rows = sqlx::query(
            "SELECT at, dag_id, run_id, task_id, action, actor, source, detail
             FROM manual_actions WHERE run_id = $1 ORDER BY id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let at: String = row.try_get("at")?;
                Ok(ManualAction {
                    at: parse_time("manual_actions.at", &at)?,
                    dag_id: row.try_get("dag_id")?,
                    run_id: row.try_get("run_id")?,
                    task_id: row.try_get("task_id")?,
                    action: row.try_get("action")?,
                    actor: row.try_get("actor")?,
                    source: row.try_get("source")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }

    /// Cancels a run: a queued one ends failed at once, its tasks skipped; a running one is
    /// marked for its executor, which stops the attempts and ends it (see
    /// [`Store::cancel_request`]).
    pub async fn request_cancel(&self, run_id: &str, actor: &Actor) -> Result<Cancelled> {
        let note = format!("cancelled by {} from {}", actor.name, actor.source);
        let (run_id, now) = (run_id.to_string(), timestamp::format(Utc::now()));
        self.write(Box::new(move |tx| {
            Box::pin(async move {
                let queued = tx
                    .execute(
                        "UPDATE dag_runs SET state = 'failed', ended_at = $1, note = $2
                         WHERE run_id = $3 AND state = 'queued'",
                        params![now, &note, &run_id],
                    )
                    .await?
                    == 1;
                if queued {
                    tx.execute(
                        "UPDATE task_instances SET state = 'skipped', next_retry_at = NULL
                         WHERE run_id = $1 AND state NOT IN ('success', 'failed', 'upstream_failed', 'skipped')",
                        params![&run_id],
                    )
                    .await?;
                    return Ok(Cancelled::Queued);
                }
                let requested = tx
                    .execute(
                        "UPDATE dag_runs SET cancel_requested = $1 WHERE run_id = $2 AND state = 'running'",
                        params![note, &run_id],
                    )
                    .await?
                    == 1;
                if requested {
                    tx.notify(CANCEL_CHANNEL).await?;
                    Ok(Cancelled::Requested)
                } else {
                    Ok(Cancelled::AlreadyFinished)
                }
            })
        }))
        .await
    }

    /// Why a running run is to be cancelled, if someone asked ("cancelled by NAME from WHERE").
    pub async fn cancel_request(&self, run_id: &str) -> Result<Option<String>> {
        let note: Option<Option<String>> =
            sqlx::query_scalar("SELECT cancel_requested FROM dag_runs WHERE run_id = $1")
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(note.flatten())
    }

    /// Ends a queued attempt with `report` on behalf of whoever holds it, moving its claim
    /// token on: its worker's own report is refused, and the worker stops the attempt.
    pub async fn end_attempt(&self, key: &AttemptKey, report: &str) -> Result<bool> {
        let values = params![report, &key.run_id, &key.task_id, i64::from(key.attempt)];
        self.write(Box::new(move |tx| {
            Box::pin(async move {
                let ended = tx
                    .execute(
                        "UPDATE task_attempts SET report = $1, claim_token = claim_token + 1
                         WHERE run_id = $2 AND task_id = $3 AND attempt = $4
                             AND state = 'running' AND report IS NULL AND queue IS NOT NULL",
                        values,
                    )
                    .await?
                    == 1;
                if ended {
                    tx.notify(super::REPORTED_CHANNEL).await?;
                    tx.notify(CANCEL_CHANNEL).await?;
                }
                Ok(ended)
            })
        }))
        .await
    }

    /// Whether a worker's claim of an attempt is still current: not ended by someone else.
    pub async fn claim_is_current(&self, key: &AttemptKey, token: i64) -> Result<bool> {
        let current: Option<i64> = sqlx::query_scalar(
            "SELECT claim_token FROM task_attempts
             WHERE run_id = $1 AND task_id = $2 AND attempt = $3 AND state = 'running' AND report IS NULL",
        )
        .bind(&key.run_id)
        .bind(&key.task_id)
        .bind(i64::from(key.attempt))
        .fetch_optional(&self.pool)
        .await?;
        Ok(current == Some(token))
    }

    /// Queues a finished run (success, failed or skipped) again with `task_ids` (every task
    /// when `None`) to run anew, each with a fresh retry budget; the other tasks keep their
    /// states, and attempts go on being numbered. Returns `false` when the run is not
    /// finished (nothing changed).
    pub async fn clear_tasks(&self, run_id: &str, task_ids: Option<&[String]>) -> Result<bool> {
        let (run_id, task_ids) = (run_id.to_string(), task_ids.map(<[String]>::to_vec));
        self.write(Box::new(move |tx| {
            Box::pin(async move {
                let requeued = tx
                    .execute(
                        "UPDATE dag_runs SET state = 'queued', owner = NULL, started_at = NULL, ended_at = NULL,
                             note = NULL, cancel_requested = NULL
                         WHERE run_id = $1 AND state IN ('success', 'failed', 'skipped')",
                        params![&run_id],
                    )
                    .await?
                    == 1;
                if !requeued {
                    return Ok(false);
                }
                let reset = "UPDATE task_instances SET state = 'scheduled', next_retry_at = NULL,
                                 attempt_base = try_number
                             WHERE run_id = $1 AND (CAST($2 AS TEXT) IS NULL OR task_id = $2)";
                match task_ids {
                    None => {
                        tx.execute(reset, params![&run_id, None::<String>]).await?;
                    }
                    Some(task_ids) => {
                        for task_id in task_ids {
                            tx.execute(reset, params![&run_id, &task_id]).await?;
                            // A cleared instance's mapped task waits for it again, still
                            // expanded.
                            if let Some((mapped, _)) = for_each::parse_instance_id(&task_id) {
                                super::mapped_task_running(tx, &run_id, mapped).await?;
                            }
                        }
                    }
                }
                Ok(true)
            })
        }))
        .await
    }

    /// Sets a task of a finished run to `state` (success or failed) and the run's state to
    /// what its tasks now say. Returns the run's new state, or `None` when the run is not
    /// finished or has no such task.
    pub async fn mark_task(
        &self,
        run_id: &str,
        task_id: &str,
        state: TaskState,
    ) -> Result<Option<RunState>> {
        let (run_id, task_id) = (run_id.to_string(), task_id.to_string());
        self.write(Box::new(move |tx| {
            Box::pin(async move {
                let run_state = tx
                    .fetch_optional(
                        "SELECT state FROM dag_runs WHERE run_id = $1",
                        params![&run_id],
                        |row| row.text(0),
                    )
                    .await?
                    .flatten();
                let finished = run_state
                    .as_deref()
                    .and_then(RunState::parse)
                    .is_some_and(RunState::is_finished);
                if !finished {
                    return Ok(None);
                }
                let marked = tx
                    .execute(
                        "UPDATE task_instances SET state = $1, next_retry_at = NULL WHERE run_id = $2 AND task_id = $3",
                        params![state.as_str(), &run_id, &task_id],
                    )
                    .await?
                    == 1;
                if !marked {
                    return Ok(None);
                }
                // An instance's mapped task sums up its instances' states again.
                if let Some((mapped, _)) = for_each::parse_instance_id(&task_id) {
                    let prefix = format!("{mapped}[");
                    let states = tx
                        .fetch_all(
                            "SELECT state FROM task_instances WHERE run_id = $1 AND map_index IS NOT NULL
                                 AND substr(task_id, 1, CAST($2 AS INTEGER)) = $3",
                            params![
                                &run_id,
                                i64::try_from(prefix.len()).unwrap_or(i64::MAX),
                                prefix
                            ],
                            |row| row.text(0),
                        )
                        .await?;
                    let states: Vec<TaskState> = states
                        .iter()
                        .flatten()
                        .filter_map(|s| TaskState::parse(s))
                        .collect();
                    if let Some(summed) = for_each::summed_state(&states) {
                        tx.execute(
                            "UPDATE task_instances SET state = $1 WHERE run_id = $2 AND task_id = $3",
                            params![summed.as_str(), &run_id, mapped],
                        )
                        .await?;
                    }
                }
                let states = tx
                    .fetch_all(
                        "SELECT state FROM task_instances WHERE run_id = $1",
                        params![&run_id],
                        |row| row.text(0),
                    )
                    .await?;
                let failed = states.iter().flatten().any(|s| {
                    matches!(
                        TaskState::parse(s),
                        Some(TaskState::Failed | TaskState::UpstreamFailed)
                    )
                });
                let new_state = if failed {
                    RunState::Failed
                } else {
                    RunState::Success
                };
                tx.execute(
                    "UPDATE dag_runs SET state = $1 WHERE run_id = $2",
                    params![new_state.as_str(), &run_id],
                )
                .await?;
                Ok(Some(new_state))
            })
        }))
        .await
    }
}
