//! Runs: the filtered list, one run with its tasks, attempts and manual actions, and the
//! actions on it (cancel, clear, mark).

use std::collections::HashSet;

use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::WebState;
use super::super::auth::Caller;
use super::super::error::{ApiError, ApiResult};
use crate::dag::Dag;
use crate::scheduler::wake;
use crate::store::{
    Actor, Cancelled, RunCursor, RunFilter, RunRecord, RunState, RunType, TaskState, timestamp,
};

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;

#[derive(Deserialize)]
pub struct ListQuery {
    dag_id: Option<String>,
    state: Option<String>,
    run_type: Option<String>,
    /// Logical dates from this time (RFC 3339 or a date), inclusive.
    since: Option<String>,
    /// ... to this one, exclusive.
    until: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

fn parse_time(what: &str, text: &str) -> ApiResult<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{what} `{text}` is neither a date like 2026-11-22 nor an RFC 3339 time"
            ))
        })
}

fn encode_cursor(run: &RunRecord) -> String {
    let text = format!("{}\n{}", timestamp::format(run.queued_at), run.run_id);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn decode_cursor(text: &str) -> ApiResult<RunCursor> {
    let bad = || ApiError::BadRequest(format!("cursor `{text}` is not one this API gave"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (queued_at, run_id) = text.split_once('\n').ok_or_else(bad)?;
    Ok(RunCursor {
        queued_at: queued_at.to_string(),
        run_id: run_id.to_string(),
    })
}

pub async fn list(
    State(state): State<WebState>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let filter = RunFilter {
        dag_id: q.dag_id.filter(|d| !d.is_empty()),
        state: match q.state.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => Some(RunState::parse(s).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "state `{s}` is not one of queued, running, success, failed, skipped"
                ))
            })?),
            None => None,
        },
        run_type: match q.run_type.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => Some(RunType::parse(s).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "run_type `{s}` is not one of scheduled, manual, backfill"
                ))
            })?),
            None => None,
        },
        since: q
            .since
            .as_deref()
            .map(|t| parse_time("since", t))
            .transpose()?,
        until: q
            .until
            .as_deref()
            .map(|t| parse_time("until", t))
            .transpose()?,
    };
    let cursor = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let listed = state
        .store
        .runs_page(&filter, cursor.as_ref(), limit)
        .await?;
    let next_cursor = (listed.rows.len() == limit as usize)
        .then(|| listed.rows.last().map(encode_cursor))
        .flatten();
    let unreadable: Vec<Value> = listed
        .unreadable
        .iter()
        .map(|u| json!({ "run_id": u.id, "error": u.error.to_string() }))
        .collect();
    Ok(Json(json!({
        "runs": listed.rows,
        "next_cursor": next_cursor,
        "unreadable": unreadable,
    })))
}

/// The run as `orch runs show --json` prints it, with the manual actions taken on it.
pub async fn one(
    State(state): State<WebState>,
    Path(run_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let (detail, actions) = tokio::try_join!(
        state.store.run_detail(&run_id),
        state.store.run_actions(&run_id)
    )?;
    let detail = detail.ok_or_else(|| ApiError::not_found(format_args!("run `{run_id}`")))?;
    let mut value = serde_json::to_value(&detail)
        .map_err(|e| ApiError::Internal(format!("cannot show the run: {e}")))?;
    if let Value::Object(map) = &mut value {
        map.insert("actions".to_string(), json!(actions));
    }
    Ok(Json(value))
}

async fn existing_run(state: &WebState, run_id: &str) -> ApiResult<RunRecord> {
    state
        .store
        .run(run_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format_args!("run `{run_id}`")))
}

async fn record(
    state: &WebState,
    actor: &Actor,
    run: &RunRecord,
    task_id: Option<&str>,
    action: &str,
    detail: Option<&str>,
) -> ApiResult<()> {
    state
        .store
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

pub async fn cancel(
    State(state): State<WebState>,
    Extension(Caller(actor)): Extension<Caller>,
    Path(run_id): Path<String>,
) -> ApiResult<Json<Value>> {
    let run = existing_run(&state, &run_id).await?;
    let outcome = state.store.request_cancel(&run_id, &actor).await?;
    if outcome == Cancelled::AlreadyFinished {
        return Err(ApiError::Conflict(format!(
            "run `{run_id}` has already ended ({}); nothing to cancel",
            run.state
        )));
    }
    crate::queue::CANCELLED.notify_waiters();
    record(&state, &actor, &run, None, "cancel", None).await?;
    let state_now = existing_run(&state, &run_id).await?.state;
    Ok(Json(json!({
        "run_id": run_id,
        "state": state_now,
        "cancel": match outcome {
            Cancelled::Queued => "done: the run had not started",
            _ => "requested: running attempts are being stopped",
        },
    })))
}

#[derive(Deserialize, Default)]
pub struct ClearBody {
    /// Clear this task (and, unless `downstream` is false, every task downstream of it);
    /// without it, the whole run.
    task_id: Option<String>,
    downstream: Option<bool>,
}

/// `task` and, when asked, every task downstream of it, in the DAG's order.
fn with_downstream(dag: &Dag, task: &str, downstream: bool) -> Vec<String> {
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

pub async fn clear(
    State(state): State<WebState>,
    Extension(Caller(actor)): Extension<Caller>,
    Path(run_id): Path<String>,
    body: Option<Json<ClearBody>>,
) -> ApiResult<Json<Value>> {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let run = existing_run(&state, &run_id).await?;
    if !run.state.is_finished() {
        return Err(ApiError::Conflict(format!(
            "run `{run_id}` is {}; clear it once it has ended, or cancel it first",
            run.state
        )));
    }
    let (cleared, detail) = match &body.task_id {
        None => (state.store.requeue_run(&run_id).await?, None),
        Some(task_id) => {
            let dag = state.view.borrow().dag(&run.dag_id).cloned().ok_or_else(|| {
                ApiError::Conflict(format!(
                    "DAG `{}` is not loaded, so the tasks downstream of `{task_id}` are unknown",
                    run.dag_id
                ))
            })?;
            if !dag.tasks.iter().any(|t| &t.id == task_id) {
                return Err(ApiError::not_found(format_args!(
                    "task `{task_id}` in DAG `{}`",
                    run.dag_id
                )));
            }
            let tasks = with_downstream(&dag, task_id, body.downstream.unwrap_or(true));
            let cleared = state.store.clear_tasks(&run_id, &tasks).await?;
            (cleared, Some(tasks.join(", ")))
        }
    };
    if !cleared {
        return Err(ApiError::Conflict(format!(
            "run `{run_id}` changed meanwhile; look again"
        )));
    }
    record(
        &state,
        &actor,
        &run,
        body.task_id.as_deref(),
        "clear",
        detail.as_deref(),
    )
    .await?;
    wake(&state.config.state_dir());
    Ok(Json(
        json!({ "run_id": run_id, "state": RunState::Queued, "cleared": detail }),
    ))
}

#[derive(Deserialize)]
pub struct MarkBody {
    state: String,
}

pub async fn mark(
    State(state): State<WebState>,
    Extension(Caller(actor)): Extension<Caller>,
    Path((run_id, task_id)): Path<(String, String)>,
    body: Result<Json<MarkBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let new_state = match body.state.as_str() {
        "success" => TaskState::Success,
        "failed" => TaskState::Failed,
        other => {
            return Err(ApiError::BadRequest(format!(
                "state `{other}`: a task can be marked success or failed"
            )));
        }
    };
    let run = existing_run(&state, &run_id).await?;
    if !run.state.is_finished() {
        return Err(ApiError::Conflict(format!(
            "run `{run_id}` is {}; mark its tasks once it has ended, or cancel it first",
            run.state
        )));
    }
    let run_state = state
        .store
        .mark_task(&run_id, &task_id, new_state)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no task `{task_id}` in run `{run_id}`, or the run started again"
            ))
        })?;
    record(
        &state,
        &actor,
        &run,
        Some(&task_id),
        &format!("mark {}", new_state.as_str()),
        None,
    )
    .await?;
    Ok(Json(json!({ "run_id": run_id, "state": run_state })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode("2026-11-22T04:00:00.000000Z\nd__manual__x");
        let cursor = decode_cursor(&text).expect("decodes");
        assert_eq!(cursor.run_id, "d__manual__x");
        assert!(decode_cursor("not base64!").is_err());
    }

    #[test]
    fn downstream_tasks_are_found_in_order() {
        let dag = crate::dag::load_str(
            std::path::Path::new("t.yaml"),
            "id: t\ntasks:\n  - {id: a, kind: noop}\n  - {id: b, kind: noop, depends_on: [a]}\n  - {id: c, kind: noop}\n  - {id: d, kind: noop, depends_on: [b, c]}\n",
            &crate::tasks::Registry::builtin(),
        )
        .expect("dag loads");
        assert_eq!(with_downstream(&dag, "b", true), ["b", "d"]);
        assert_eq!(with_downstream(&dag, "a", true), ["a", "b", "d"]);
        assert_eq!(with_downstream(&dag, "a", false), ["a"]);
    }
}
