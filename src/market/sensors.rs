//! The market's conditions for `wait_for`: `lake_object` (an object or a partition exists in
//! the lake) and `stream` (a live stream has committed trades past a time).

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::tasks::{BoxFuture, SensorCondition, TaskContext, TaskError, parse_with};

/// `lake_object: PATH`: an object, or a partition's folder, under the lake.
pub struct LakeObject;

impl SensorCondition for LakeObject {
    fn key(&self) -> &'static str {
        "lake_object"
    }

    fn check(&self, value: &Value) -> Result<(), String> {
        path(value).map(drop)
    }

    fn describe(&self, value: &Value) -> String {
        format!("`{}` in the lake", path(value).unwrap_or_default())
    }

    fn holds<'a>(
        &'a self,
        value: &'a Value,
        ctx: &'a TaskContext,
    ) -> BoxFuture<'a, Result<bool, TaskError>> {
        Box::pin(async move {
            let path = path(value).map_err(TaskError::permanent)?;
            let lake = crate::lake::Lake::open(&ctx.data.lake_url)
                .map_err(|e| TaskError::permanent(e.to_string()))?;
            let found = lake
                .list(path.trim_start_matches('/'))
                .await
                .map_err(|e| TaskError::transient(e.to_string()))?;
            Ok(!found.is_empty())
        })
    }
}

fn path(value: &Value) -> Result<String, String> {
    value
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "invalid `with`: `lake_object` must be a path".to_string())
}

/// `stream: {stream_id, committed_past}`: the stream has committed trades up to that time.
pub struct StreamCommitted;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamCondition {
    stream_id: String,
    /// An RFC 3339 time, e.g. `{{ data_interval_end }}`.
    committed_past: String,
}

fn stream_condition(value: &Value) -> Result<StreamCondition, String> {
    parse_with::<StreamCondition>(value).map_err(|e| e.replacen("`with`", "`with.stream`", 1))
}

impl SensorCondition for StreamCommitted {
    fn key(&self) -> &'static str {
        "stream"
    }

    fn check(&self, value: &Value) -> Result<(), String> {
        stream_condition(value).map(drop)
    }

    fn describe(&self, value: &Value) -> String {
        match stream_condition(value) {
            Ok(s) => format!(
                "stream `{}` to commit past {}",
                s.stream_id, s.committed_past
            ),
            Err(e) => e,
        }
    }

    fn holds<'a>(
        &'a self,
        value: &'a Value,
        ctx: &'a TaskContext,
    ) -> BoxFuture<'a, Result<bool, TaskError>> {
        Box::pin(async move {
            let s = stream_condition(value).map_err(TaskError::permanent)?;
            let past = DateTime::parse_from_rfc3339(s.committed_past.trim())
                .map_err(|e| {
                    TaskError::permanent(format!(
                        "`committed_past` `{}` is not an RFC 3339 time: {e}",
                        s.committed_past
                    ))
                })?
                .with_timezone(&Utc);
            let reports = ctx
                .store
                .stream_reports()
                .await
                .map_err(|e| TaskError::transient(e.to_string()))?;
            let committed = reports
                .iter()
                .find(|r| r.stream_id == s.stream_id)
                .and_then(|r| {
                    serde_json::from_str::<crate::stream::stats::StreamReport>(&r.report).ok()
                })
                .and_then(|r| r.last_trade_time);
            Ok(committed.is_some_and(|ms| ms >= past.timestamp_millis()))
        })
    }
}
