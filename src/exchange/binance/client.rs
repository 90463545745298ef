//! A Binance spot REST client that stays inside the request-weight budget and rides out rate
//! limits, bans and server errors instead of failing a run.
//!
//! - Before each request it checks the weight used this minute (from the last
//!   `X-MBX-USED-WEIGHT-1M` header) and waits for the next minute rather than cross the limit.
//! - HTTP 429 and 418 wait for `Retry-After`, then retry; a ban longer than
//!   [`RetryPolicy::max_retry_after`] fails with a clear error rather than hang a task.
//! - Timeouts (before or during the body), connection errors and 5XX retry with exponential
//!   backoff; an answer past 16 MiB is refused before it is read whole.
//! - Any other error answer becomes [`BinanceError::Api`] naming the request, the code and the
//!   message, e.g. `historicalTrades NOSUCH: code -1121: Invalid symbol.`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use super::super::rest::{self, Reply};
use super::wire::{ErrorBody, ExchangeInfo, WireTrade};
use crate::backoff::Backoff;
use crate::exchange::{
    Catalog, ExchangeError, Instrument, Observer, Trade, TradeHistory, TradePage,
};

/// Binance's request-weight limit per minute and IP.
pub const WEIGHT_LIMIT_PER_MINUTE: u32 = 6000;
/// Weight of `historicalTrades` and `trades`.
const TRADES_WEIGHT: u32 = 25;
const EXCHANGE_INFO_WEIGHT: u32 = 20;
/// The most trades one `historicalTrades` page returns.
pub const MAX_PAGE: u32 = 1000;
/// The most of an answer the client reads: a page of 1000 trades is about 150 KB.
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BinanceError {
    #[error("Binance refused {request}: HTTP {status}, code {code}: {msg}")]
    Api {
        request: String,
        status: u16,
        code: i64,
        msg: String,
    },
    #[error("Binance answered {request} with HTTP {status}: {body}")]
    Http {
        request: String,
        status: u16,
        body: String,
    },
    #[error("cannot reach Binance for {request} after {attempts} attempts: {reason}")]
    Transport {
        request: String,
        attempts: u32,
        reason: String,
    },
    #[error(
        "Binance asks to wait {retry_after:?} before {request} (HTTP {status}), longer than \
         orch waits ({max:?}); the IP may be banned"
    )]
    WaitTooLong {
        request: String,
        status: u16,
        retry_after: Duration,
        max: Duration,
    },
    #[error("Binance kept failing {request} after {attempts} attempts: last HTTP {status}")]
    GaveUp {
        request: String,
        attempts: u32,
        status: u16,
    },
    #[error("unreadable answer from Binance for {request}: {reason}")]
    Decode { request: String, reason: String },
}

impl BinanceError {
    /// Whether another attempt can help: not for a refused request (a 4XX other than 429 and
    /// 418: an unknown symbol, a bad parameter, a WAF block) or an answer orch cannot read;
    /// yes for timeouts, lost connections, 5XX and rate limits.
    pub fn is_transient(&self) -> bool {
        match self {
            BinanceError::Api { status, .. } | BinanceError::Http { status, .. } => {
                !(400..500).contains(status) || matches!(status, 408 | 418 | 429)
            }
            BinanceError::Decode { .. } => false,
            BinanceError::Transport { .. }
            | BinanceError::WaitTooLong { .. }
            | BinanceError::GaveUp { .. } => true,
        }
    }
}

/// How hard the client tries before it gives up.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per request for timeouts, connection errors and 5XX.
    pub max_attempts: u32,
    /// Attempts per request that end in 429/418, each waiting its `Retry-After`.
    pub max_rate_limited: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// The longest `Retry-After` the client sleeps through.
    pub max_retry_after: Duration,
    pub request_timeout: Duration,
    /// The weight the client lets itself use per minute, below Binance's limit so other
    /// processes on the same IP keep some room.
    pub weight_budget: u32,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 6,
            max_rate_limited: 30,
            first_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
            weight_budget: WEIGHT_LIMIT_PER_MINUTE * 9 / 10,
        }
    }
}

/// A client for one Binance REST base URL; cheap to clone, clones share the weight budget.
#[derive(Clone)]
pub struct BinanceClient {
    http: reqwest::Client,
    base_url: String,
    policy: RetryPolicy,
    used: Arc<Mutex<UsedWeight>>,
    observer: Observer,
}

/// The weight Binance last reported as used, and the minute it applies to.
#[derive(Debug, Default)]
struct UsedWeight {
    minute: i64,
    weight: u32,
}

impl BinanceClient {
    /// Binance itself; `BINANCE_API_URL` overrides it (see `config::DataPlaces`).
    pub const DEFAULT_BASE_URL: &'static str = "https://api.binance.com";

    pub fn new(base_url: &str, policy: RetryPolicy) -> Result<BinanceClient, BinanceError> {
        let http = rest::http_client(policy.request_timeout).map_err(|reason| {
            BinanceError::Transport {
                request: "client setup".to_string(),
                attempts: 0,
                reason,
            }
        })?;
        Ok(BinanceClient {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            policy,
            used: Arc::default(),
            observer: Arc::new(|event| tracing::warn!("binance: {event}")),
        })
    }

    pub fn with_observer(mut self, observer: Observer) -> BinanceClient {
        self.observer = observer;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Up to `limit` trades of `symbol` with ids from `from_id` on, ascending.
    pub async fn historical_trades(
        &self,
        symbol: &str,
        from_id: i64,
        limit: u32,
    ) -> Result<Vec<Trade>, BinanceError> {
        let request = format!("historicalTrades {symbol} fromId={from_id}");
        let query = [
            ("symbol", symbol.to_string()),
            ("fromId", from_id.to_string()),
            ("limit", limit.min(MAX_PAGE).to_string()),
        ];
        let trades: Vec<WireTrade> = self
            .get("/api/v3/historicalTrades", &query, TRADES_WEIGHT, &request)
            .await?;
        trades_of(&request, &trades)
    }

    /// The most recent `limit` trades of `symbol`, ascending.
    pub async fn recent_trades(
        &self,
        symbol: &str,
        limit: u32,
    ) -> Result<Vec<Trade>, BinanceError> {
        let request = format!("trades {symbol}");
        let query = [
            ("symbol", symbol.to_string()),
            ("limit", limit.min(MAX_PAGE).to_string()),
        ];
        let trades: Vec<WireTrade> = self
            .get("/api/v3/trades", &query, TRADES_WEIGHT, &request)
            .await?;
        trades_of(&request, &trades)
    }

    /// The listing of `symbols`; an unknown symbol fails with Binance's message.
    pub async fn exchange_info(&self, symbols: &[String]) -> Result<Vec<Instrument>, BinanceError> {
        let list = serde_json::to_string(symbols).map_err(|e| BinanceError::Decode {
            request: "exchangeInfo".to_string(),
            reason: e.to_string(),
        })?;
        let request = format!("exchangeInfo {}", symbols.join(","));
        let info: ExchangeInfo = self
            .get(
                "/api/v3/exchangeInfo",
                &[("symbols", list)],
                EXCHANGE_INFO_WEIGHT,
                &request,
            )
            .await?;
        Ok(info.symbols.into_iter().map(Instrument::from).collect())
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        weight: u32,
        request: &str,
    ) -> Result<T, BinanceError> {
        let url = format!("{}{path}", self.base_url);
        let mut retries = rest::Retries::new(self.policy.max_attempts, self.backoff());
        let mut rate_limited = 0;
        loop {
            self.wait_for_weight(weight).await;
            let reply = rest::get(&self.http, &url, query, MAX_BODY).await;
            if let Some(headers) = reply.headers() {
                self.note_used_weight(headers);
            }
            // A connection error, a timeout (before or during the body) or a 5XX: retried.
            let failure = match reply {
                Reply::Ok { body, .. } => {
                    return serde_json::from_slice(&body).map_err(|e| BinanceError::Decode {
                        request: request.to_string(),
                        reason: format!("{e}; body starts {:?}", rest::preview(&body)),
                    });
                }
                Reply::TooLarge(reason) => {
                    return Err(BinanceError::Decode {
                        request: request.to_string(),
                        reason,
                    });
                }
                Reply::Failed(reason) => reason,
                Reply::Status {
                    status, headers, ..
                } if status == StatusCode::TOO_MANY_REQUESTS || status.as_u16() == 418 => {
                    rate_limited += 1;
                    let retry_after =
                        rest::retry_after(&headers).unwrap_or(Duration::from_secs(60));
                    if retry_after > self.policy.max_retry_after {
                        return Err(BinanceError::WaitTooLong {
                            request: request.to_string(),
                            status: status.as_u16(),
                            retry_after,
                            max: self.policy.max_retry_after,
                        });
                    }
                    if rate_limited > self.policy.max_rate_limited {
                        return Err(BinanceError::GaveUp {
                            request: request.to_string(),
                            attempts: rate_limited,
                            status: status.as_u16(),
                        });
                    }
                    (self.observer)(&format!(
                        "{request}: HTTP {} (rate limited); waiting {retry_after:?} as Retry-After asks",
                        status.as_u16()
                    ));
                    tokio::time::sleep(retry_after).await;
                    continue;
                }
                Reply::Status { status, .. } if status.is_server_error() => {
                    let failure = format!("HTTP {}", status.as_u16());
                    if !retries.wait_after(request, &failure, &self.observer).await {
                        return Err(BinanceError::GaveUp {
                            request: request.to_string(),
                            attempts: retries.attempts(),
                            status: status.as_u16(),
                        });
                    }
                    continue;
                }
                Reply::Status { status, body, .. } => {
                    return Err(match serde_json::from_slice::<ErrorBody>(&body) {
                        Ok(error) => BinanceError::Api {
                            request: request.to_string(),
                            status: status.as_u16(),
                            code: error.code,
                            msg: error.msg,
                        },
                        Err(_) => BinanceError::Http {
                            request: request.to_string(),
                            status: status.as_u16(),
                            body: rest::preview(&body),
                        },
                    });
                }
            };
            if !retries.wait_after(request, &failure, &self.observer).await {
                return Err(BinanceError::Transport {
                    request: request.to_string(),
                    attempts: retries.attempts(),
                    reason: failure,
                });
            }
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(self.policy.first_backoff, self.policy.max_backoff)
    }

    /// Sleeps into the next minute when this request would cross the weight budget.
    async fn wait_for_weight(&self, weight: u32) {
        let (now, wait) = {
            let used = match self.used.lock() {
                Ok(used) => used,
                Err(poisoned) => poisoned.into_inner(),
            };
            let now = chrono::Utc::now();
            let minute = now.timestamp().div_euclid(60);
            let used_now = if used.minute == minute {
                used.weight
            } else {
                0
            };
            if used_now + weight <= self.policy.weight_budget {
                return;
            }
            let into_minute = now.timestamp_millis().rem_euclid(60_000) as u64;
            (now, Duration::from_millis(60_000 - into_minute + 250))
        };
        (self.observer)(&format!(
            "request weight budget of {} for this minute used up; waiting {wait:?} (at {now})",
            self.policy.weight_budget
        ));
        tokio::time::sleep(wait).await;
    }

    fn note_used_weight(&self, headers: &reqwest::header::HeaderMap) {
        let Some(weight) = headers
            .get("x-mbx-used-weight-1m")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u32>().ok())
        else {
            return;
        };
        let minute = chrono::Utc::now().timestamp().div_euclid(60);
        let mut used = match self.used.lock() {
            Ok(used) => used,
            Err(poisoned) => poisoned.into_inner(),
        };
        *used = UsedWeight { minute, weight };
    }
}

impl From<BinanceError> for ExchangeError {
    fn from(e: BinanceError) -> ExchangeError {
        ExchangeError {
            retryable: e.is_transient(),
            message: e.to_string(),
        }
    }
}

impl TradeHistory for BinanceClient {
    fn exchange(&self) -> &'static str {
        "binance"
    }

    fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `historicalTrades` with `fromId=after + 1`.
    fn trades_after<'a>(
        &'a self,
        symbol: &'a str,
        after: i64,
    ) -> futures_util::future::BoxFuture<'a, Result<TradePage, ExchangeError>> {
        Box::pin(async move {
            let trades = self.historical_trades(symbol, after + 1, MAX_PAGE).await?;
            Ok(TradePage {
                more: trades.len() >= MAX_PAGE as usize,
                trades,
                history_cut: false,
            })
        })
    }

    fn recent_trades<'a>(
        &'a self,
        symbol: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Vec<Trade>, ExchangeError>> {
        Box::pin(async move { Ok(BinanceClient::recent_trades(self, symbol, MAX_PAGE).await?) })
    }
}

impl Catalog for BinanceClient {
    /// `exchangeInfo` of just these symbols.
    fn instruments<'a>(
        &'a self,
        symbols: &'a [String],
    ) -> futures_util::future::BoxFuture<'a, Result<Vec<Instrument>, ExchangeError>> {
        Box::pin(async move { Ok(self.exchange_info(symbols).await?) })
    }
}

/// The trades of a page; a price × quantity out of range names the trade.
fn trades_of(request: &str, wire: &[WireTrade]) -> Result<Vec<Trade>, BinanceError> {
    wire.iter()
        .map(|w| {
            w.trade().ok_or_else(|| BinanceError::Decode {
                request: request.to_string(),
                reason: format!(
                    "trade {}: the id is not positive, or price × quantity is out of range",
                    w.id
                ),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that starts and then stalls is retried as a transient failure, and the error
    /// says the request timed out rather than that the answer was unreadable.
    #[tokio::test]
    async fn a_body_that_stalls_is_retried_and_reported_as_a_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let requests = Arc::new(Mutex::new(0));
        let counted = Arc::clone(&requests);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                *counted.lock().expect("count") += 1;
                let mut request = [0_u8; 2048];
                let _ = socket.read(&mut request).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n[{\"id\":")
                    .await;
                held.push(socket);
            }
        });
        let policy = RetryPolicy {
            max_attempts: 2,
            first_backoff: Duration::from_millis(10),
            request_timeout: Duration::from_millis(300),
            ..RetryPolicy::default()
        };
        let client = BinanceClient::new(&format!("http://{address}"), policy).expect("client");
        let err = client
            .historical_trades("BTCUSDT", 1, 1000)
            .await
            .expect_err("the body never comes");
        assert!(err.is_transient(), "{err}");
        let message = err.to_string();
        assert!(message.contains("timed out"), "{message}");
        assert_eq!(*requests.lock().expect("count"), 2, "retried");
    }
}
