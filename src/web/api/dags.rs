//! DAGs: the list, one DAG, its grid of recent runs, pause, and trigger.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::super::WebState;
use super::super::auth::Caller;
use super::super::error::{ApiError, ApiPath, ApiQuery, ApiResult};
use crate::dag::params::{self, Param};
use crate::dag::{Dag, LoadError};
use crate::scheduler::{plan, wake};
use crate::store::{RunSummary, TaskCell, timestamp};

/// How many recent runs the DAG list shows per DAG.
const RECENT_RUNS: u32 = 10;
/// The most runs a grid shows.
const MAX_GRID_RUNS: u32 = 100;

#[derive(Serialize)]
struct DagSummary<'a> {
    dag_id: &'a str,
    description: Option<&'a str>,
    schedule: Option<String>,
    timezone: String,
    paused: bool,
    next_run: Option<String>,
    file: String,
    task_count: usize,
    params: &'a [Param],
    recent_runs: Vec<RunSummary>,
}

fn import_errors(errors: &[LoadError]) -> Vec<Value> {
    errors
        .iter()
        .flat_map(|e| {
            e.problems.iter().map(|p| {
                json!({
                    "file": e.path.display().to_string(),
                    "line": p.line,
                    "column": p.column,
                    "message": p.message,
                })
            })
        })
        .collect()
}

fn find(state: &WebState, dag_id: &str) -> ApiResult<Arc<Dag>> {
    state
        .view
        .borrow()
        .dag(dag_id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format_args!("DAG `{dag_id}`")))
}

pub async fn list(State(state): State<WebState>) -> ApiResult<Json<Value>> {
    let view = state.view.borrow().clone();
    let ids: Vec<&str> = view.dags.iter().map(|d| d.id.as_str()).collect();
    let files: Vec<(&str, bool)> = view
        .dags
        .iter()
        .map(|d| (d.id.as_str(), d.paused))
        .collect();
    let paused = state.store.paused_dags(files).await?;
    let mut recent = state.store.recent_runs(&ids, RECENT_RUNS).await?;
    let dags: Vec<DagSummary> = view
        .dags
        .iter()
        .map(|dag| DagSummary {
            dag_id: &dag.id,
            description: dag.description.as_deref(),
            schedule: dag.schedule.as_ref().map(ToString::to_string),
            timezone: dag.timezone.to_string(),
            paused: paused.contains(&dag.id),
            next_run: view.next_runs.get(&dag.id).map(|t| timestamp::format(*t)),
            file: dag.path.display().to_string(),
            task_count: dag.tasks.len(),
            params: &dag.param_specs,
            recent_runs: recent.remove(&dag.id).unwrap_or_default(),
        })
        .collect();
    Ok(Json(json!({
        "dags": dags,
        "import_errors": import_errors(&view.errors),
    })))
}

pub async fn one(
    State(state): State<WebState>,
    ApiPath(dag_id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let dag = find(&state, &dag_id)?;
    let paused = state.store.is_paused(&dag.id, dag.paused).await?;
    let next_run = state
        .view
        .borrow()
        .next_runs
        .get(&dag.id)
        .map(|t| timestamp::format(*t));
    let tasks: Vec<Value> = dag
        .tasks
        .iter()
        .map(|t| {
            json!({
                "task_id": t.id,
                "kind": t.kind,
                "depends_on": t.depends_on,
                "trigger_rule": t.trigger_rule.as_str(),
                "retries": t.retry.retries,
                "timeout_s": t.timeout.map(|d| d.as_secs_f64()),
                "queue": t.queue,
            })
        })
        .collect();
    Ok(Json(json!({
        "dag_id": dag.id,
        "description": dag.description,
        "schedule": dag.schedule.as_ref().map(ToString::to_string),
        "timezone": dag.timezone.to_string(),
        "paused": paused,
        "next_run": next_run,
        "file": dag.path.display().to_string(),
        // A DAG file may spell out a URL with its password; the page shows it masked.
        "source": crate::redact::secrets(&dag.source),
        "params": dag.param_specs,
        "tasks": tasks,
    })))
}

#[derive(Deserialize)]
pub struct GridQuery {
    runs: Option<u32>,
}

#[derive(Serialize)]
struct GridRun {
    run_id: String,
    state: crate::store::RunState,
    run_type: crate::store::RunType,
    logical_date: String,
    started_at: Option<String>,
    ended_at: Option<String>,
    duration_ms: Option<i64>,
    tasks: HashMap<String, TaskCell>,
}

/// Recent runs × tasks, the oldest run first, as Airflow's grid draws them.
pub async fn grid(
    State(state): State<WebState>,
    ApiPath(dag_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<GridQuery>,
) -> ApiResult<Json<Value>> {
    let dag = state.view.borrow().dag(&dag_id).cloned();
    let limit = q.runs.unwrap_or(25).clamp(1, MAX_GRID_RUNS);
    let filter = crate::store::RunFilter {
        dag_id: Some(dag_id.clone()),
        ..Default::default()
    };
    let mut runs = state.store.runs_page(&filter, None, limit).await?.rows;
    if dag.is_none() && runs.is_empty() {
        return Err(ApiError::not_found(format_args!("DAG `{dag_id}`")));
    }
    runs.reverse();
    let run_ids: Vec<String> = runs.iter().map(|r| r.run_id.clone()).collect();
    let mut cells: HashMap<String, HashMap<String, TaskCell>> = HashMap::new();
    let mut seen_tasks = Vec::new();
    let mut seen = HashSet::new();
    for cell in state.store.task_cells(&run_ids).await? {
        if seen.insert(cell.task_id.clone()) {
            seen_tasks.push(cell.task_id.clone());
        }
        cells
            .entry(cell.run_id.clone())
            .or_default()
            .insert(cell.task_id.clone(), cell);
    }
    // The DAG's tasks in its order, then tasks only older runs had.
    let mut tasks: Vec<String> = dag
        .as_ref()
        .map(|d| d.tasks.iter().map(|t| t.id.clone()).collect())
        .unwrap_or_default();
    let known: HashSet<String> = tasks.iter().cloned().collect();
    tasks.extend(seen_tasks.into_iter().filter(|t| !known.contains(t)));
    let grid_runs: Vec<GridRun> = runs
        .into_iter()
        .map(|r| GridRun {
            duration_ms: r
                .started_at
                .zip(r.ended_at)
                .map(|(s, e)| (e - s).num_milliseconds()),
            tasks: cells.remove(&r.run_id).unwrap_or_default(),
            run_id: r.run_id,
            state: r.state,
            run_type: r.run_type,
            logical_date: timestamp::format(r.logical_date),
            started_at: r.started_at.map(timestamp::format),
            ended_at: r.ended_at.map(timestamp::format),
        })
        .collect();
    Ok(Json(json!({ "tasks": tasks, "runs": grid_runs })))
}

pub async fn pause(
    state: State<WebState>,
    caller: Extension<Caller>,
    dag_id: ApiPath<String>,
) -> ApiResult<Json<Value>> {
    set_paused(state, caller, dag_id, true).await
}

pub async fn unpause(
    state: State<WebState>,
    caller: Extension<Caller>,
    dag_id: ApiPath<String>,
) -> ApiResult<Json<Value>> {
    set_paused(state, caller, dag_id, false).await
}

async fn set_paused(
    State(state): State<WebState>,
    Extension(Caller(actor)): Extension<Caller>,
    ApiPath(dag_id): ApiPath<String>,
    paused: bool,
) -> ApiResult<Json<Value>> {
    let dag = find(&state, &dag_id)?;
    state.store.set_paused(&dag.id, paused, dag.paused).await?;
    let action = if paused { "pause" } else { "unpause" };
    state
        .store
        .record_action(&actor, &dag.id, None, None, action, None)
        .await?;
    tracing::info!(dag_id = %dag.id, actor = %actor.name, source = %actor.source, "{action}d by hand");
    wake(&state.config.state_dir()).await;
    Ok(Json(json!({ "dag_id": dag.id, "paused": paused })))
}

/// Unknown fields are refused: a misspelled `conf` must not run with no conf at all.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerBody {
    #[serde(default)]
    conf: Map<String, Value>,
    logical_date: Option<String>,
}

pub async fn trigger(
    State(state): State<WebState>,
    Extension(Caller(actor)): Extension<Caller>,
    ApiPath(dag_id): ApiPath<String>,
    body: Result<Json<TriggerBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Json(body) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let dag = find(&state, &dag_id)?;
    let mut fields = params::check_conf(&dag.param_specs, &body.conf);
    let logical_date = match body.logical_date.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => match plan::parse_logical_date(&dag, text) {
            Ok(date) => Some(date),
            Err(e) => {
                fields.insert("logical_date".to_string(), e);
                None
            }
        },
    };
    if !fields.is_empty() {
        return Err(ApiError::Invalid {
            message: format!("the run of `{}` was not created", dag.id),
            fields,
        });
    }
    if let Err(e) = plan::manual_run(&dag, logical_date, Map::new(), Utc::now()).check_storable() {
        return Err(ApiError::Invalid {
            message: format!("the run of `{}` was not created", dag.id),
            fields: BTreeMap::from([("logical_date".to_string(), e.to_string())]),
        });
    }
    state
        .admission
        .admit(&state.store, &dag, state.config.max_pending_runs)
        .await?;
    let run =
        crate::manual_actions::create_run(&state.store, &dag, logical_date, body.conf, &actor)
            .await?;
    wake(&state.config.state_dir()).await;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "run_id": run.run_id, "dag_id": dag.id })),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_values_must_have_their_params_type() {
        let dag = crate::dag::load_str(
            std::path::Path::new("t.yaml"),
            "id: t\nparams:\n  symbols: [BTCUSDT]\n  limit: 10\n  ratio: 0.5\n  dry_run: false\ntasks:\n  - {id: a, kind: noop}\n",
            &crate::tasks::Registry::core(),
        )
        .expect("dag loads");
        let conf: Map<String, Value> = serde_json::from_value(json!({
            "symbols": "BTCUSDT", "limit": 5, "ratio": 2, "dry_run": "yes", "other": 1
        }))
        .expect("conf");
        let errors = params::check_conf(&dag.param_specs, &conf);
        assert_eq!(
            errors.keys().collect::<Vec<_>>(),
            ["dry_run", "symbols"],
            "{errors:?}"
        );
        assert!(errors["dry_run"].contains("must be a boolean"));
    }
}
