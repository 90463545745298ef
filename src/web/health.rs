//! `/healthz`: is the database reachable, and is the scheduler loop turning? For load
//! balancers and Docker's HEALTHCHECK; answers without credentials and shows no secret.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::json;

use super::WebState;

pub async fn healthz(State(state): State<WebState>) -> Response {
    let database = state.store.ping().await;
    let view = state.view.borrow().clone();
    let pass_age = view
        .last_pass_at
        .map(|t| (Utc::now() - t).num_milliseconds() as f64 / 1000.0);
    // The loop passes at least once a second; silence for a heartbeat timeout means it is stuck.
    let stuck_after = state.config.heartbeat_timeout.as_secs_f64();
    let scheduler_ok = pass_age.is_some_and(|age| age <= stuck_after);
    let healthy = database.is_ok() && scheduler_ok;
    let body = json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "database": match &database {
            Ok(()) => json!({ "reachable": true }),
            Err(e) => json!({ "reachable": false, "error": e.to_string() }),
        },
        "scheduler": {
            "last_pass_age_seconds": pass_age,
            "leader": view.leader,
        },
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
