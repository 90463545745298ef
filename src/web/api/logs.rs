//! Attempt logs: a byte range, and a live follow of a running attempt as server-sent events.
//!
//! Text that looks secret (URL passwords, `password=`-style pairs, bearer tokens) is masked
//! before it is sent. Logs are read from the log folder of this server; an attempt that ran on another host is
//! shown from the end of its log saved in the database once it has ended.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::WebState;
use super::super::error::{ApiError, ApiPath, ApiQuery, ApiResult};
use crate::store::{AttemptKey, AttemptRecord, AttemptState};

/// The most one range request returns.
const MAX_RANGE: u64 = 1024 * 1024;
/// How often a followed log is looked at for new output.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

#[derive(Deserialize)]
pub struct RangeQuery {
    offset: Option<u64>,
    limit: Option<u64>,
}

async fn attempt(state: &WebState, key: &AttemptKey) -> ApiResult<AttemptRecord> {
    state
        .store
        .attempts(&key.run_id)
        .await?
        .into_iter()
        .find(|a| a.task_id == key.task_id && a.attempt == key.attempt)
        .ok_or_else(|| {
            ApiError::not_found(format_args!(
                "attempt {} of task `{}` in run `{}`",
                key.attempt, key.task_id, key.run_id
            ))
        })
}

/// The attempt's log file, if it is in this server's log folder: the path recorded in the
/// database is never followed out of it.
fn local_log(state: &WebState, record: &AttemptRecord) -> Option<PathBuf> {
    let logs = std::fs::canonicalize(&state.config.logs_dir).ok()?;
    let path = std::fs::canonicalize(&record.log_path).ok()?;
    path.starts_with(&logs).then_some(path)
}

/// Up to `limit` bytes of `path` from `offset`, cut at a character boundary: (text, bytes
/// read, file size).
fn read_range(path: &FsPath, offset: u64, limit: u64) -> std::io::Result<(String, u64, u64)> {
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    if offset >= size {
        return Ok((String::new(), 0, size));
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.take(limit.min(MAX_RANGE)).read_to_end(&mut bytes)?;
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text.to_string(),
        // A character cut at the end of the range is read whole by the next request.
        Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => {
            bytes.truncate(e.valid_up_to());
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
    };
    Ok((text, bytes.len() as u64, size))
}

pub async fn range(
    State(state): State<WebState>,
    ApiPath((run_id, task_id, attempt_no)): ApiPath<(String, String, u32)>,
    ApiQuery(q): ApiQuery<RangeQuery>,
) -> ApiResult<Json<Value>> {
    let key = AttemptKey {
        run_id,
        task_id,
        attempt: attempt_no,
    };
    let record = attempt(&state, &key).await?;
    let offset = q.offset.unwrap_or(0);
    let limit = q.limit.unwrap_or(64 * 1024).clamp(1, MAX_RANGE);
    let finished = record.state != AttemptState::Running;
    let (text, read, size, source) = match local_log(&state, &record) {
        Some(path) => {
            let (text, read, size) = read_range(&path, offset, limit)
                .map_err(|e| ApiError::Internal(format!("cannot read the attempt's log: {e}")))?;
            (text, read, size, "file")
        }
        None => {
            let tail = state
                .store
                .attempt_log_tail(&key)
                .await?
                .unwrap_or_default();
            let bytes = tail.as_bytes();
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let text = String::from_utf8_lossy(&bytes[start..]).into_owned();
            (
                text,
                (bytes.len() - start) as u64,
                bytes.len() as u64,
                "database",
            )
        }
    };
    Ok(Json(json!({
        "offset": offset,
        "next_offset": offset + read,
        "size": size,
        "text": crate::redact::secrets(&text),
        "finished": finished,
        "source": source,
    })))
}

#[derive(Deserialize)]
pub struct FollowQuery {
    offset: Option<u64>,
}

struct Follow {
    state: WebState,
    key: AttemptKey,
    offset: u64,
    done: bool,
}

/// Server-sent events: `log` with each new piece of output, then `end` with the attempt's
/// outcome.
pub async fn follow(
    State(state): State<WebState>,
    ApiPath((run_id, task_id, attempt_no)): ApiPath<(String, String, u32)>,
    ApiQuery(q): ApiQuery<FollowQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>> {
    let key = AttemptKey {
        run_id,
        task_id,
        attempt: attempt_no,
    };
    attempt(&state, &key).await?;
    let start = Follow {
        state,
        key,
        offset: q.offset.unwrap_or(0),
        done: false,
    };
    let events = futures_util::stream::unfold(start, |mut f| async move {
        if f.done {
            return None;
        }
        loop {
            let record = match attempt(&f.state, &f.key).await {
                Ok(record) => record,
                Err(e) => {
                    f.done = true;
                    let data = json!({ "error": e.to_string() }).to_string();
                    return Some((Ok(Event::default().event("end").data(data)), f));
                }
            };
            let running = record.state == AttemptState::Running;
            if let Some(path) = local_log(&f.state, &record)
                && let Ok((text, read, _)) = read_range(&path, f.offset, MAX_RANGE)
                && read > 0
            {
                f.offset += read;
                let text = crate::redact::secrets(&text);
                let data = json!({ "text": text, "next_offset": f.offset }).to_string();
                return Some((Ok(Event::default().event("log").data(data)), f));
            }
            if !running {
                f.done = true;
                let data = json!({ "state": record.state, "next_offset": f.offset }).to_string();
                return Some((Ok(Event::default().event("end").data(data)), f));
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
