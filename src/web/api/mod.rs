//! The REST API, `/api/v1`: JSON in and out, described by `openapi.json`.

pub mod backfills;
pub mod dags;
pub mod data;
pub mod logs;
pub mod runs;
pub mod streams;

use axum::Json;
use axum::extract::Extension;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::json;

use super::auth::Caller;
use super::error::ApiError;

const OPENAPI: &str = include_str!("openapi.json");

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// Who the caller is, for the page header.
pub async fn session(
    axum::extract::State(state): axum::extract::State<super::WebState>,
    Extension(Caller(actor)): Extension<Caller>,
) -> impl IntoResponse {
    let auth = if state.config.api_token.is_some() {
        "token"
    } else {
        "none"
    };
    Json(json!({ "auth": auth, "user": actor.name }))
}

pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such API endpoint; see /api/v1/openapi.json".to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_document_parses_and_names_every_route() {
        let doc: serde_json::Value =
            serde_json::from_str(super::OPENAPI).expect("openapi.json is JSON");
        let paths = doc["paths"].as_object().expect("paths");
        for route in [
            "/dags",
            "/dags/{dag_id}",
            "/dags/{dag_id}/grid",
            "/dags/{dag_id}/pause",
            "/dags/{dag_id}/unpause",
            "/dags/{dag_id}/runs",
            "/runs",
            "/runs/{run_id}",
            "/runs/{run_id}/cancel",
            "/runs/{run_id}/clear",
            "/runs/{run_id}/tasks/{task_id}/mark",
            "/runs/{run_id}/tasks/{task_id}/attempts/{attempt}/log",
            "/runs/{run_id}/tasks/{task_id}/attempts/{attempt}/log/follow",
            "/streams",
            "/backfills",
            "/backfills/{backfill_id}",
            "/data/trades",
            "/session",
        ] {
            assert!(paths.contains_key(route), "openapi.json lacks {route}");
        }
    }
}
