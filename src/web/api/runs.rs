//! Runs: the filtered list, one run with its tasks, attempts and manual actions, and the
//! actions on it (cancel, clear, mark).

use axum::Json;
use axum::extract::{Extension, State};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::super::WebState;
use super::super::auth::Caller;
use super::super::error::{ApiError, ApiPath, ApiQuery, ApiResult};
use crate::manual_actions::{self, CancelOutcome};
use crate::store::{
    ManualAction, RunCursor, RunDetail, RunFilter, RunRecord, RunState, RunType, TaskState,
    timestamp,
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
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<RunsPage>> {
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
    let unreadable = listed
        .unreadable
        .iter()
        .map(|u| UnreadableRun {
            run_id: u.id.clone(),
            error: u.error.to_string(),
        })
        .collect();
    Ok(Json(RunsPage {
        runs: listed.rows,
        next_cursor,
        unreadable,
    }))
}

/// A page of the runs listing, serialized straight from the records: this is the API's
/// busiest answer, and a `serde_json::Value` in between doubled its cost.
#[derive(Serialize)]
pub struct RunsPage {
    runs: Vec<RunRecord>,
    next_cursor: Option<String>,
    unreadable: Vec<UnreadableRun>,
}

#[derive(Serialize)]
struct UnreadableRun {
    run_id: String,
    error: String,
}

/// The run as `orch runs show --json` prints it, with the manual actions taken on it.
pub async fn one(
    State(state): State<WebState>,
    ApiPath(run_id): ApiPath<String>,
) -> ApiResult<Json<RunPage>> {
    let (detail, actions) = tokio::try_join!(
        state.store.run_detail(&run_id),
        state.store.run_actions(&run_id)
    )?;
    let detail = detail.ok_or_else(|| ApiError::not_found(format_args!("run `{run_id}`")))?;
    Ok(Json(RunPage { detail, actions }))
}

#[derive(Serialize)]
pub struct RunPage {
    #[serde(flatten)]
    detail: RunDetail,
    actions: Vec<ManualAction>,
}

pub async fn cancel(
    State(state): State<WebState>,
    Extension(Caller(actor)): Extension<Caller>,
    ApiPath(run_id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let outcome =
        manual_actions::cancel(&state.store, &state.config.state_dir(), &run_id, &actor).await?;
    let run_state = state.store.run(&run_id).await?.map(|r| r.state);
    Ok(Json(json!({
        "run_id": run_id,
        "state": run_state,
        "cancel": match outcome {
            CancelOutcome::Ended => "done: the run had not started",
            CancelOutcome::Stopping => "requested: running attempts are being stopped",
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

pub async fn clear(
    State(state): State<WebState>,
    Extension(Caller(actor)): Extension<Caller>,
    ApiPath(run_id): ApiPath<String>,
    body: Option<Json<ClearBody>>,
) -> ApiResult<Json<Value>> {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let dag = match state.store.run(&run_id).await? {
        Some(run) => state.view.borrow().dag(&run.dag_id).cloned(),
        None => None,
    };
    let cleared = manual_actions::clear(
        &state.store,
        &state.config.state_dir(),
        dag.as_deref(),
        &run_id,
        body.task_id.as_deref(),
        body.downstream.unwrap_or(true),
        &actor,
    )
    .await?;
    Ok(Json(
        json!({ "run_id": run_id, "state": RunState::Queued, "cleared": cleared }),
    ))
}

/// Unknown fields are refused: a misspelled `conf` must not run with no conf at all.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkBody {
    state: String,
}

pub async fn mark(
    State(state): State<WebState>,
    Extension(Caller(actor)): Extension<Caller>,
    ApiPath((run_id, task_id)): ApiPath<(String, String)>,
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
    let run_state =
        manual_actions::mark(&state.store, &run_id, &task_id, new_state, &actor).await?;
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
}
