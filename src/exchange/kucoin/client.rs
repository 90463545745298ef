//! A KuCoin spot REST client: every answer's envelope checked, throttling waited out.
//!
//! - An HTTP 200 can still carry a failure `code`: only `200000` is success. `429000` is
//!   throttling at any status; a code starting with 5 is KuCoin's own failure and retried;
//!   any other is [`KucoinError::Api`] (such as `900001`, symbol not exists).
//! - Throttling (429, Cloudflare's HTML 403, 503) waits the `gw-ratelimit-reset`
//!   milliseconds KuCoin sends, else backs off; timeouts, lost connections and other 5XX
//!   retry with backoff.

use std::time::Duration;

use futures_util::future::BoxFuture;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::de::DeserializeOwned;

use super::wire::{self, Bullet, Envelope, HistoryTrade, WireSymbol};
use crate::backoff::Backoff;
use crate::exchange::rest::{self, Reply};
use crate::exchange::{
    Catalog, ExchangeError, Instrument, Observer, Trade, TradeHistory, TradePage,
};

/// Trades `GET /api/v1/market/histories` gives: the last 100, no paging.
pub const HISTORY_LENGTH: usize = 100;
const MAX_BODY: usize = 16 * 1024 * 1024;
/// KuCoin's throttle code, at HTTP 429 or not.
const THROTTLED: &str = "429000";

#[derive(Debug, thiserror::Error)]
pub enum KucoinError {
    #[error("KuCoin refused {request}: HTTP {status}, code {code}: {message}")]
    Api {
        request: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("KuCoin answered {request} with HTTP {status}: {body}")]
    Http {
        request: String,
        status: u16,
        body: String,
    },
    #[error("cannot reach KuCoin for {request} after {attempts} attempts: {reason}")]
    Transport {
        request: String,
        attempts: u32,
        reason: String,
    },
    #[error("KuCoin kept throttling {request} after {attempts} attempts: {last}")]
    Throttled {
        request: String,
        attempts: u32,
        last: String,
    },
    #[error("unreadable answer from KuCoin for {request}: {reason}")]
    Decode { request: String, reason: String },
}

impl KucoinError {
    /// Whether another attempt can help: not for a refused request or an unreadable answer.
    pub fn is_transient(&self) -> bool {
        match self {
            KucoinError::Api { status, .. } | KucoinError::Http { status, .. } => {
                !(400..500).contains(status) && *status != 200
            }
            KucoinError::Decode { .. } => false,
            KucoinError::Transport { .. } | KucoinError::Throttled { .. } => true,
        }
    }
}

impl From<KucoinError> for ExchangeError {
    fn from(e: KucoinError) -> ExchangeError {
        ExchangeError {
            retryable: e.is_transient(),
            message: e.to_string(),
        }
    }
}

/// How hard the client tries.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Attempts per request for timeouts, connection errors and 5XX.
    pub max_attempts: u32,
    /// Attempts per request that end throttled.
    pub max_throttled: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    pub request_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            max_attempts: 6,
            max_throttled: 20,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A client for one KuCoin API base URL (`https://api.kucoin.com`).
#[derive(Clone)]
pub struct KucoinClient {
    http: reqwest::Client,
    base_url: String,
    policy: Policy,
    observer: Observer,
}

impl KucoinClient {
    /// KuCoin itself; `KUCOIN_API_URL` overrides it.
    pub const DEFAULT_BASE_URL: &'static str = "https://api.kucoin.com";

    pub fn new(base_url: &str, policy: Policy) -> Result<KucoinClient, KucoinError> {
        let http =
            rest::http_client(policy.request_timeout).map_err(|reason| KucoinError::Transport {
                request: "client setup".to_string(),
                attempts: 0,
                reason,
            })?;
        Ok(KucoinClient {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            policy,
            observer: std::sync::Arc::new(|event| tracing::warn!("kucoin: {event}")),
        })
    }

    pub fn with_observer(mut self, observer: Observer) -> KucoinClient {
        self.observer = observer;
        self
    }

    /// The last [`HISTORY_LENGTH`] trades of `symbol` (`BTC-USDT`), ascending by sequence.
    pub async fn histories(&self, symbol: &str) -> Result<Vec<Trade>, KucoinError> {
        let request = format!("histories {symbol}");
        let wire: Vec<HistoryTrade> = self
            .call(
                Method::Get,
                "/api/v1/market/histories",
                &[("symbol", symbol.to_string())],
                &request,
            )
            .await?;
        let mut trades = wire
            .iter()
            .map(|w| {
                w.trade().ok_or_else(|| KucoinError::Decode {
                    request: request.clone(),
                    reason: format!(
                        "trade {}: the sequence is no positive number, side `{}` is neither buy nor sell, or price × size is out of range",
                        w.sequence, w.side
                    ),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The order is not documented.
        trades.sort_by_key(|t| t.id);
        Ok(trades)
    }

    /// The catalog: every symbol KuCoin lists, with its currencies and steps.
    pub async fn symbols(&self) -> Result<Vec<WireSymbol>, KucoinError> {
        self.call(Method::Get, "/api/v2/symbols", &[], "symbols")
            .await
    }

    /// A public websocket token and the servers to use it on.
    pub async fn bullet(&self) -> Result<Bullet, KucoinError> {
        self.call(Method::Post, "/api/v1/bullet-public", &[], "bullet-public")
            .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        request: &str,
    ) -> Result<T, KucoinError> {
        let url = format!("{}{path}", self.base_url);
        let mut retries = rest::Retries::new(self.policy.max_attempts, self.backoff());
        let mut throttling = rest::Throttling::new(self.policy.max_throttled, self.backoff());
        loop {
            let reply = match method {
                Method::Get => rest::get(&self.http, &url, query, MAX_BODY).await,
                Method::Post => rest::post(&self.http, &url, MAX_BODY).await,
            };
            let failure = match reply {
                Reply::Ok { body, headers } => match self.envelope(&body, request)? {
                    Answer::Data(data) => return Ok(data),
                    Answer::Throttled(what) => Failure::Throttled(what, headers),
                    Answer::ServerFailure(what) => Failure::Retry(what),
                    Answer::Refused { code, message } => {
                        return Err(KucoinError::Api {
                            request: request.to_string(),
                            status: 200,
                            code,
                            message,
                        });
                    }
                },
                Reply::TooLarge(reason) => {
                    return Err(KucoinError::Decode {
                        request: request.to_string(),
                        reason,
                    });
                }
                Reply::Failed(reason) => Failure::Retry(reason),
                Reply::Status {
                    status,
                    headers,
                    body,
                } if matches!(
                    status,
                    StatusCode::TOO_MANY_REQUESTS
                        | StatusCode::FORBIDDEN
                        | StatusCode::SERVICE_UNAVAILABLE
                ) =>
                {
                    let code = serde_json::from_slice::<Envelope<serde_json::Value>>(&body)
                        .ok()
                        .map(|e| format!("code {}", e.code));
                    Failure::Throttled(rest::throttle_description(status, &body, code), headers)
                }
                Reply::Status { status, .. } if status.is_server_error() => {
                    Failure::Retry(format!("HTTP {}", status.as_u16()))
                }
                Reply::Status { status, body, .. } => {
                    return Err(
                        match serde_json::from_slice::<Envelope<serde_json::Value>>(&body) {
                            Ok(error) => KucoinError::Api {
                                request: request.to_string(),
                                status: status.as_u16(),
                                code: error.code,
                                message: error.msg.unwrap_or_default(),
                            },
                            Err(_) => KucoinError::Http {
                                request: request.to_string(),
                                status: status.as_u16(),
                                body: rest::preview(&body),
                            },
                        },
                    );
                }
            };
            match failure {
                Failure::Throttled(what, headers) => {
                    let asked = rate_limit_reset(&headers);
                    if !throttling
                        .wait_after(request, &what, asked, &self.observer)
                        .await
                    {
                        return Err(KucoinError::Throttled {
                            request: request.to_string(),
                            attempts: throttling.answers(),
                            last: what,
                        });
                    }
                }
                Failure::Retry(reason) => {
                    if !retries.wait_after(request, &reason, &self.observer).await {
                        return Err(KucoinError::Transport {
                            request: request.to_string(),
                            attempts: retries.attempts(),
                            reason,
                        });
                    }
                }
            }
        }
    }

    /// Reads a 2XX answer's envelope: the data, or what its code says.
    fn envelope<T: DeserializeOwned>(
        &self,
        body: &[u8],
        request: &str,
    ) -> Result<Answer<T>, KucoinError> {
        let decode = |reason: String| KucoinError::Decode {
            request: request.to_string(),
            reason,
        };
        let envelope: Envelope<serde_json::Value> = serde_json::from_slice(body)
            .map_err(|e| decode(format!("{e}; body starts {:?}", rest::preview(body))))?;
        let message = envelope.msg.unwrap_or_default();
        Ok(match envelope.code.as_str() {
            wire::OK => {
                let data = envelope
                    .data
                    .ok_or_else(|| decode("code 200000 without `data`".to_string()))?;
                Answer::Data(serde_json::from_value(data).map_err(|e| decode(e.to_string()))?)
            }
            THROTTLED => Answer::Throttled(format!("code {THROTTLED} {message}")),
            code if code.starts_with('5') => {
                Answer::ServerFailure(format!("HTTP 200 with code {code} {message}"))
            }
            code => Answer::Refused {
                code: code.to_string(),
                message,
            },
        })
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(self.policy.first_backoff, self.policy.max_backoff)
    }
}

enum Method {
    Get,
    Post,
}

/// What a 2XX answer's envelope said.
enum Answer<T> {
    Data(T),
    Throttled(String),
    ServerFailure(String),
    Refused { code: String, message: String },
}

/// A failure another try may mend.
enum Failure {
    Throttled(String, HeaderMap),
    Retry(String),
}

/// The wait KuCoin asks for: `gw-ratelimit-reset`, milliseconds to the pool's reset (the
/// SDKs read it so; unverified), else a `Retry-After` in seconds.
fn rate_limit_reset(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("gw-ratelimit-reset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
        .or_else(|| rest::retry_after(headers))
}

impl TradeHistory for KucoinClient {
    fn exchange(&self) -> &'static str {
        "kucoin"
    }

    fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The last 100 trades above `after`: KuCoin has no older history. A history that holds
    /// no trade at or below `after` (which KuCoin did send) no longer reaches back to it: the
    /// page says so.
    fn trades_after<'a>(
        &'a self,
        symbol: &'a str,
        after: i64,
    ) -> BoxFuture<'a, Result<TradePage, ExchangeError>> {
        Box::pin(async move {
            let mut trades = self.histories(symbol).await?;
            let history_cut = !trades.is_empty() && trades.iter().all(|t| t.id > after);
            trades.retain(|t| t.id > after);
            Ok(TradePage {
                trades,
                more: false,
                history_cut,
            })
        })
    }

    fn recent_trades<'a>(
        &'a self,
        symbol: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Trade>, ExchangeError>> {
        Box::pin(async move { Ok(self.histories(symbol).await?) })
    }
}

impl Catalog for KucoinClient {
    /// `/api/v2/symbols`, whole: KuCoin cannot filter it by symbol. Its `baseCurrency` is the
    /// stable one (v1's followed renames).
    fn instruments<'a>(
        &'a self,
        _symbols: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Instrument>, ExchangeError>> {
        Box::pin(async move {
            Ok(self
                .symbols()
                .await?
                .into_iter()
                .map(|s| Instrument {
                    symbol: s.symbol,
                    base_asset: s.base_currency,
                    quote_asset: s.quote_currency,
                    trading: s.enable_trading,
                    price_step: Some(s.price_increment),
                    size_step: Some(s.base_increment),
                })
                .collect())
        })
    }
}
