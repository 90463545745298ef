//! `/healthz`: can this server take work? For load balancers and Docker's HEALTHCHECK;
//! answers without credentials, within about 100 ms whatever the load, and shows no secret.
//!
//! Unhealthy (503, each reason named) when the metadata database does not answer in time or
//! at all, when the scheduler loop stopped turning, or when the runs queued or running reach
//! `max_pending_runs` (triggers get 429 until some are done).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::json;

use super::WebState;

/// How long the database may take to answer a ping before the server counts as overloaded.
const PING_LIMIT: Duration = Duration::from_millis(80);

pub async fn healthz(State(state): State<WebState>) -> Response {
    let ping = tokio::time::timeout(PING_LIMIT, state.store.ping()).await;
    let view = state.view.borrow().clone();
    let mut reasons = Vec::new();
    let database = match &ping {
        Ok(Ok(())) => json!({ "reachable": true }),
        Ok(Err(e)) => {
            reasons.push(format!("the metadata database cannot be reached: {e}"));
            json!({ "reachable": false, "error": e.to_string() })
        }
        Err(_) => {
            let why = format!(
                "overloaded: the metadata database did not answer within {} ms",
                PING_LIMIT.as_millis()
            );
            reasons.push(why.clone());
            json!({ "reachable": false, "error": why })
        }
    };
    let pass_age = view
        .last_pass_at
        .map(|t| (Utc::now() - t).num_milliseconds() as f64 / 1000.0);
    // The loop passes at least once a second; silence for a heartbeat timeout means it is stuck.
    let stuck_after = state.config.heartbeat_timeout.as_secs_f64();
    if !pass_age.is_some_and(|age| age <= stuck_after) {
        reasons.push(match pass_age {
            Some(age) => format!("the scheduler loop has not passed for {age:.0} s"),
            None => "the scheduler loop has not started".to_string(),
        });
    }
    let bound = state.config.max_pending_runs;
    if let Some(pending) = view.pending_runs
        && pending >= u64::try_from(bound).unwrap_or(u64::MAX)
    {
        reasons.push(format!(
            "overloaded: {pending} runs are queued or running, the most max_pending_runs ({bound}) allows; triggers are refused with 429 until some are done"
        ));
    }
    let healthy = reasons.is_empty();
    let body = json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "reasons": reasons,
        "database": database,
        "scheduler": {
            "last_pass_age_seconds": pass_age,
            "leader": view.leader,
            "pending_runs": view.pending_runs,
            "max_pending_runs": bound,
        },
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}
