//! Backfills: one queued run per schedule tick of a date range, executed by the scheduler
//! within the DAG's `max_active_runs`, and their progress.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use chrono::{NaiveDate, Utc};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::super::WebState;
use super::super::auth::Caller;
use super::super::error::{ApiError, ApiPath, ApiResult};
use crate::scheduler::{plan, wake};
use crate::store::{BackfillRecord, RunType};

/// Unknown fields are refused: a misspelled `conf` must not run with no conf at all.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    dag_id: String,
    /// First day, `YYYY-MM-DD`, in the DAG's timezone.
    start: String,
    /// Last day, inclusive.
    end: String,
    #[serde(default)]
    conf: Map<String, Value>,
    /// Queue again the runs of these dates that already ended.
    #[serde(default)]
    rerun: bool,
}

fn day(field: &str, text: &str) -> Result<NaiveDate, (String, String)> {
    NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d").map_err(|_| {
        (
            field.to_string(),
            format!("`{text}` is not a date like 2026-11-22"),
        )
    })
}

pub async fn create(
    State(state): State<WebState>,
    Extension(Caller(actor)): Extension<Caller>,
    body: Result<Json<CreateBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let dag = state
        .view
        .borrow()
        .dag(&body.dag_id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format_args!("DAG `{}`", body.dag_id)))?;
    let invalid = |fields: Vec<(String, String)>| ApiError::Invalid {
        message: format!("the backfill of `{}` was not started", dag.id),
        fields: fields.into_iter().collect(),
    };
    let (start, end) = match (day("start", &body.start), day("end", &body.end)) {
        (Ok(s), Ok(e)) if s <= e => (s, e),
        (Ok(_), Ok(_)) => {
            return Err(invalid(vec![(
                "end".to_string(),
                "is before start".to_string(),
            )]));
        }
        (s, e) => return Err(invalid([s.err(), e.err()].into_iter().flatten().collect())),
    };
    let problems = crate::dag::params::check_conf(&dag.param_specs, &body.conf);
    if !problems.is_empty() {
        return Err(invalid(problems.into_iter().collect()));
    }
    let dates = dag
        .backfill_dates(start, end, state.config.max_backfill_runs)
        .map_err(|too_many| invalid(vec![("end".to_string(), too_many.to_string())]))?;
    if dates.is_empty() {
        let why = format!(
            "DAG `{}` has no schedule tick from {start} to {end}",
            dag.id
        );
        return Err(invalid(vec![("end".to_string(), why)]));
    }
    state
        .admission
        .admit(&state.store, &dag, state.config.max_pending_runs)
        .await?;
    let task_ids: Vec<String> = dag.tasks.iter().map(|t| t.id.clone()).collect();
    let now = Utc::now();
    let (mut created, mut requeued, mut existing) = (0, 0, 0);
    for date in &dates {
        let run = plan::new_run(
            &dag,
            RunType::Backfill,
            dag.interval_from(*date),
            body.conf.clone(),
            now,
        );
        if state.store.insert_run(&run, &task_ids).await? {
            created += 1;
            continue;
        }
        match state.store.run_for_date(&dag.id, *date).await? {
            Some(old) if body.rerun && old.state.is_finished() => {
                if state.store.requeue_run(&old.run_id).await? {
                    requeued += 1;
                }
            }
            _ => existing += 1,
        }
    }
    let backfill = BackfillRecord {
        backfill_id: format!(
            "{}__backfill__{start}__{end}__{}",
            dag.id,
            now.timestamp_micros()
        ),
        dag_id: dag.id.clone(),
        start_date: start.to_string(),
        end_date: end.to_string(),
        first_logical_date: dates[0],
        last_logical_date: dates[dates.len() - 1],
        runs: i64::try_from(dates.len()).unwrap_or(i64::MAX),
        created_at: now,
        actor: actor.name.clone(),
    };
    state.store.insert_backfill(&backfill).await?;
    let detail = format!(
        "{start}..{end}: {created} created, {requeued} queued again, {existing} left as they were"
    );
    state
        .store
        .record_action(&actor, &dag.id, None, None, "backfill", Some(&detail))
        .await?;
    tracing::info!(dag_id = %dag.id, actor = %actor.name, source = %actor.source, "backfill started by hand: {detail}");
    wake(&state.config.state_dir()).await;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "backfill": backfill,
            "created": created,
            "requeued": requeued,
            "existing": existing,
        })),
    ))
}

async fn with_progress(state: &WebState, backfill: BackfillRecord) -> ApiResult<Value> {
    let by_state: HashMap<String, i64> = state
        .store
        .backfill_progress(
            &backfill.dag_id,
            backfill.first_logical_date,
            backfill.last_logical_date,
        )
        .await?;
    let finished: i64 = ["success", "failed", "skipped"]
        .iter()
        .filter_map(|s| by_state.get(*s))
        .sum();
    Ok(json!({
        "backfill": backfill,
        "by_state": by_state,
        "finished": finished,
        "done": finished >= backfill.runs,
    }))
}

pub async fn list(State(state): State<WebState>) -> ApiResult<Json<Value>> {
    let mut out = Vec::new();
    for backfill in state.store.backfills(None).await? {
        out.push(with_progress(&state, backfill).await?);
    }
    Ok(Json(json!({ "backfills": out })))
}

pub async fn one(
    State(state): State<WebState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let backfill = state
        .store
        .backfills(Some(&id))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(format_args!("backfill `{id}`")))?;
    Ok(Json(with_progress(&state, backfill).await?))
}
