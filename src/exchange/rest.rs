//! What every exchange's REST client does alike: send one GET, read its answer within limits,
//! and sort it into what the client's own rules (weights, throttle statuses, error bodies)
//! then decide on.

use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use super::Observer;
use crate::backoff::Backoff;
use crate::http_client::{self, BodyError};

/// The most of an error answer a client reads.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// One request's outcome.
pub enum Reply {
    /// A 2XX answer, read whole.
    Ok { headers: HeaderMap, body: Bytes },
    /// Any other status, with the start of its body.
    Status {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
    /// No answer, or one cut short: a timeout, a lost connection. Worth another try.
    Failed(String),
    /// A 2XX answer past `max_body`: no retry makes it smaller.
    TooLarge(String),
}

impl Reply {
    /// The answer's headers, when there was an answer.
    pub fn headers(&self) -> Option<&HeaderMap> {
        match self {
            Reply::Ok { headers, .. } | Reply::Status { headers, .. } => Some(headers),
            Reply::Failed(_) | Reply::TooLarge(_) => None,
        }
    }
}

/// The HTTP client of an exchange's REST client: its timeout per request, and orch's
/// `User-Agent` (Mercado Bitcoin's docs ask for one, and Cloudflare treats clients without
/// one as bots). The error says why it could not be built.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("orch/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| http_client::describe(&e))
}

/// `GET url?query`, its body read up to `max_body`.
pub async fn get(
    client: &reqwest::Client,
    url: &str,
    query: &[(&str, String)],
    max_body: usize,
) -> Reply {
    send(client.get(url).query(query), max_body).await
}

/// `POST url` with an empty body, its answer's body read up to `max_body`.
pub async fn post(client: &reqwest::Client, url: &str, max_body: usize) -> Reply {
    send(client.post(url), max_body).await
}

async fn send(request: reqwest::RequestBuilder, max_body: usize) -> Reply {
    let response = match request.send().await {
        Ok(response) => response,
        Err(e) => return Reply::Failed(http_client::describe(&e)),
    };
    let status = response.status();
    let headers = response.headers().clone();
    if status.is_success() {
        return match http_client::read_body(response, max_body).await {
            Ok(body) => Reply::Ok { headers, body },
            Err(BodyError::Broken(reason)) => Reply::Failed(reason),
            Err(too_large) => Reply::TooLarge(too_large.to_string()),
        };
    }
    let body = http_client::read_body(response, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    Reply::Status {
        status,
        headers,
        body,
    }
}

/// The `Retry-After` an answer asks for, in seconds.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// What a throttling answer was: the exchange's own error `code` when its body had one, or
/// an HTML block page (Cloudflare's, when it says so).
pub fn throttle_description(status: StatusCode, body: &[u8], code: Option<String>) -> String {
    if let Some(code) = code {
        return format!("HTTP {} {code}", status.as_u16());
    }
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    if text.contains("<html") {
        let by = if text.contains("cloudflare") {
            "Cloudflare's"
        } else {
            "an HTML"
        };
        return format!("HTTP {} with {by} block page (throttled)", status.as_u16());
    }
    format!("HTTP {} (throttled)", status.as_u16())
}

/// The start of a body, for an error message.
pub fn preview(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(200).collect()
}

/// The failures of one request that another try may mend (a connection error, a timeout, a
/// 5XX): each is waited out with the backoff and told to the observer, up to
/// `max_attempts` tries.
pub struct Retries {
    failures: u32,
    max_attempts: u32,
    backoff: Backoff,
}

impl Retries {
    pub fn new(max_attempts: u32, backoff: Backoff) -> Retries {
        Retries {
            failures: 0,
            max_attempts,
            backoff,
        }
    }

    /// Counts `failure`, then waits before the next try and returns true, or returns false
    /// when the request has had its tries ([`Retries::attempts`] says how many).
    pub async fn wait_after(&mut self, request: &str, failure: &str, observer: &Observer) -> bool {
        self.failures += 1;
        if self.failures >= self.max_attempts {
            return false;
        }
        let wait = self.backoff.delay(self.failures);
        observer(&format!(
            "{request}: {failure}; retrying in {wait:?} (attempt {})",
            self.failures
        ));
        tokio::time::sleep(wait).await;
        true
    }

    /// The tries that failed so far.
    pub fn attempts(&self) -> u32 {
        self.failures
    }
}

/// The throttle answers of one request (a 429, Cloudflare's 403, a 503): each waited out,
/// for the time the answer asks or else with the backoff, and told to the observer, up to
/// `max` answers.
pub struct Throttling {
    answers: u32,
    max: u32,
    backoff: Backoff,
}

impl Throttling {
    pub fn new(max: u32, backoff: Backoff) -> Throttling {
        Throttling {
            answers: 0,
            max,
            backoff,
        }
    }

    /// Counts the throttle answer `what`, then waits `asked` (or the backoff's delay) and
    /// returns true, or returns false once the request was throttled more than `max` times.
    pub async fn wait_after(
        &mut self,
        request: &str,
        what: &str,
        asked: Option<Duration>,
        observer: &Observer,
    ) -> bool {
        self.answers += 1;
        if self.answers > self.max {
            return false;
        }
        let wait = asked.unwrap_or_else(|| self.backoff.delay(self.answers));
        observer(&format!("{request}: {what}; waiting {wait:?}"));
        tokio::time::sleep(wait).await;
        true
    }

    /// The throttle answers so far.
    pub fn answers(&self) -> u32 {
        self.answers
    }
}
