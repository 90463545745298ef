//! Streams: each live stream's state and figures, as its process last saved them.

use axum::Json;
use axum::extract::State;
use chrono::Utc;
use serde_json::{Value, json};

use super::super::WebState;
use super::super::error::ApiResult;
use crate::store::timestamp;
use crate::stream::stats::StreamReport;

/// A report older than this is from a stream that stopped reporting.
const STALE_AFTER_SECONDS: i64 = 10;

pub async fn list(State(state): State<WebState>) -> ApiResult<Json<Value>> {
    let (defs, _) = crate::stream::load_dir(&state.config.dags_dir);
    let saved = state.store.stream_reports().await?;
    let now = Utc::now();
    let mut ids: Vec<String> = defs.iter().map(|d| d.id.clone()).collect();
    ids.extend(saved.iter().map(|s| s.stream_id.clone()));
    ids.sort();
    ids.dedup();
    let streams: Vec<Value> = ids
        .iter()
        .map(|id| {
            let symbols = defs
                .iter()
                .find(|d| &d.id == id)
                .map(|d| d.source.symbols().to_vec())
                .unwrap_or_default();
            match saved.iter().find(|s| &s.stream_id == id) {
                Some(record) => {
                    let report: Option<StreamReport> = serde_json::from_str(&record.report).ok();
                    let quiet = (now - record.updated_at).num_seconds() > STALE_AFTER_SECONDS;
                    let stream_state = if record.state != "stopped" && quiet {
                        "stale"
                    } else {
                        record.state.as_str()
                    };
                    let mut value = json!({
                        "stream_id": id,
                        "state": stream_state,
                        "updated_at": timestamp::format(record.updated_at),
                        "symbols": symbols,
                    });
                    if let (Value::Object(map), Some(Ok(Value::Object(figures)))) =
                        (&mut value, report.map(serde_json::to_value))
                    {
                        map.extend(figures);
                    }
                    value
                }
                None => json!({
                    "stream_id": id,
                    "state": "never run",
                    "updated_at": null,
                    "symbols": symbols,
                }),
            }
        })
        .collect();
    Ok(Json(json!({ "streams": streams })))
}
