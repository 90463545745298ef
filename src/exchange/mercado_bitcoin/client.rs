//! A Mercado Bitcoin REST v4 client that keeps to the public 1 request/s per endpoint and
//! rides out throttling instead of failing a run.
//!
//! - Requests are spaced by [`Policy::min_interval`] (1 s: MB's documented public limit).
//! - MB documents no throttle status: 429, 403 and 503 are read as throttling (a Cloudflare
//!   block comes as an HTML 403 page, not JSON) and waited out with backoff, or the
//!   `Retry-After` when one is sent.
//! - Timeouts, connection errors and other 5XX retry with exponential backoff.
//! - Any other error answer becomes [`MercadoBitcoinError::Api`] with MB's `DOMAIN|MODULE|ERROR`
//!   code, e.g. `PUBLIC_DATA|GET_TRADES|INVALID_BASE_QUOTE`.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::wire::{ErrorBody, Symbols, WireTrade};
use crate::backoff::Backoff;
use crate::exchange::rest::{self, Reply};
use crate::exchange::{
    Catalog, ExchangeError, Instrument, Observer, Trade, TradeHistory, TradePage,
};
use futures_util::future::BoxFuture;

/// The most trades one page returns (`limit`, "Max 1000").
pub const MAX_PAGE: u32 = 1000;
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MercadoBitcoinError {
    #[error("Mercado Bitcoin refused {request}: HTTP {status}, {code}: {message}")]
    Api {
        request: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("Mercado Bitcoin answered {request} with HTTP {status}: {body}")]
    Http {
        request: String,
        status: u16,
        body: String,
    },
    #[error("cannot reach Mercado Bitcoin for {request} after {attempts} attempts: {reason}")]
    Transport {
        request: String,
        attempts: u32,
        reason: String,
    },
    #[error("Mercado Bitcoin kept throttling {request} after {attempts} attempts: {last}")]
    Throttled {
        request: String,
        attempts: u32,
        last: String,
    },
    #[error("unreadable answer from Mercado Bitcoin for {request}: {reason}")]
    Decode { request: String, reason: String },
}

impl MercadoBitcoinError {
    /// Whether another attempt can help: not for a refused request or an unreadable answer.
    pub fn is_transient(&self) -> bool {
        match self {
            MercadoBitcoinError::Api { status, .. } | MercadoBitcoinError::Http { status, .. } => {
                !(400..500).contains(status)
            }
            MercadoBitcoinError::Decode { .. } => false,
            MercadoBitcoinError::Transport { .. } | MercadoBitcoinError::Throttled { .. } => true,
        }
    }
}

impl From<MercadoBitcoinError> for ExchangeError {
    fn from(e: MercadoBitcoinError) -> ExchangeError {
        ExchangeError {
            retryable: e.is_transient(),
            message: e.to_string(),
        }
    }
}

/// How hard the client tries, and how fast it may ask.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Attempts per request for timeouts, connection errors and 5XX.
    pub max_attempts: u32,
    /// Attempts per request that end throttled (429, 403, 503).
    pub max_throttled: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    pub request_timeout: Duration,
    /// The least time between two requests of this client.
    pub min_interval: Duration,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            max_attempts: 6,
            max_throttled: 20,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            min_interval: Duration::from_secs(1),
        }
    }
}

/// A client for one Mercado Bitcoin API base URL (`https://api.mercadobitcoin.net/api/v4`);
/// clones share the request pacing.
#[derive(Clone)]
pub struct MercadoBitcoinClient {
    http: reqwest::Client,
    base_url: String,
    policy: Policy,
    /// When the next request may go.
    next_request: Arc<Mutex<Instant>>,
    observer: Observer,
}

impl MercadoBitcoinClient {
    /// Mercado Bitcoin itself; `MERCADO_BITCOIN_API_URL` overrides it.
    pub const DEFAULT_BASE_URL: &'static str = "https://api.mercadobitcoin.net/api/v4";

    pub fn new(
        base_url: &str,
        policy: Policy,
    ) -> Result<MercadoBitcoinClient, MercadoBitcoinError> {
        let http = rest::http_client(policy.request_timeout).map_err(|reason| {
            MercadoBitcoinError::Transport {
                request: "client setup".to_string(),
                attempts: 0,
                reason,
            }
        })?;
        Ok(MercadoBitcoinClient {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            policy,
            next_request: Arc::new(Mutex::new(Instant::now())),
            observer: Arc::new(|event| tracing::warn!("mercado bitcoin: {event}")),
        })
    }

    pub fn with_observer(mut self, observer: Observer) -> MercadoBitcoinClient {
        self.observer = observer;
        self
    }

    /// Up to [`MAX_PAGE`] trades of `symbol` (`BTC-BRL`) from `since` on, or the most recent
    /// ones without it, in the order MB sends them; and whether the page was full.
    pub async fn trades(
        &self,
        symbol: &str,
        since: Option<i64>,
    ) -> Result<(Vec<Trade>, bool), MercadoBitcoinError> {
        let request = match since {
            Some(since) => format!("trades {symbol} since={since}"),
            None => format!("trades {symbol}"),
        };
        let mut query = vec![("limit", MAX_PAGE.to_string())];
        if let Some(since) = since {
            query.push(("since", since.to_string()));
        }
        let wire: Vec<WireTrade> = self
            .get(&format!("/{symbol}/trades"), &query, &request)
            .await?;
        let full = wire.len() >= MAX_PAGE as usize;
        let trades = wire
            .iter()
            .map(|w| {
                w.trade().ok_or_else(|| MercadoBitcoinError::Decode {
                    request: request.clone(),
                    reason: format!(
                        "trade {}: the tid is not positive, side `{}` is neither buy nor sell, or price × amount is out of range",
                        w.tid, w.side
                    ),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((trades, full))
    }

    /// The catalog of `symbols` (of every market without any), as parallel arrays.
    pub async fn symbols(&self, symbols: &[String]) -> Result<Symbols, MercadoBitcoinError> {
        let query: Vec<(&str, String)> = if symbols.is_empty() {
            Vec::new()
        } else {
            vec![("symbols", symbols.join(","))]
        };
        self.get("/symbols", &query, "symbols").await
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        request: &str,
    ) -> Result<T, MercadoBitcoinError> {
        let url = format!("{}{path}", self.base_url);
        let mut retries = rest::Retries::new(self.policy.max_attempts, self.backoff());
        let mut throttling = rest::Throttling::new(self.policy.max_throttled, self.backoff());
        loop {
            self.take_turn().await;
            let failure = match rest::get(&self.http, &url, query, MAX_BODY).await {
                Reply::Ok { body, .. } => {
                    return serde_json::from_slice(&body).map_err(|e| {
                        MercadoBitcoinError::Decode {
                            request: request.to_string(),
                            reason: format!("{e}; body starts {:?}", rest::preview(&body)),
                        }
                    });
                }
                Reply::TooLarge(reason) => {
                    return Err(MercadoBitcoinError::Decode {
                        request: request.to_string(),
                        reason,
                    });
                }
                Reply::Failed(reason) => reason,
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
                    let code = serde_json::from_slice::<ErrorBody>(&body)
                        .ok()
                        .map(|e| e.code);
                    let what = rest::throttle_description(status, &body, code);
                    let asked = rest::retry_after(&headers);
                    if !throttling
                        .wait_after(request, &what, asked, &self.observer)
                        .await
                    {
                        return Err(MercadoBitcoinError::Throttled {
                            request: request.to_string(),
                            attempts: throttling.answers(),
                            last: what,
                        });
                    }
                    continue;
                }
                Reply::Status { status, .. } if status.is_server_error() => {
                    format!("HTTP {}", status.as_u16())
                }
                Reply::Status { status, body, .. } => {
                    return Err(match serde_json::from_slice::<ErrorBody>(&body) {
                        Ok(error) => MercadoBitcoinError::Api {
                            request: request.to_string(),
                            status: status.as_u16(),
                            code: error.code,
                            message: error.message,
                        },
                        Err(_) => MercadoBitcoinError::Http {
                            request: request.to_string(),
                            status: status.as_u16(),
                            body: rest::preview(&body),
                        },
                    });
                }
            };
            if !retries.wait_after(request, &failure, &self.observer).await {
                return Err(MercadoBitcoinError::Transport {
                    request: request.to_string(),
                    attempts: retries.attempts(),
                    reason: failure,
                });
            }
        }
    }

    /// Waits until this client may send its next request.
    async fn take_turn(&self) {
        let mut next = self.next_request.lock().await;
        tokio::time::sleep_until(*next).await;
        *next = Instant::now() + self.policy.min_interval;
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(self.policy.first_backoff, self.policy.max_backoff)
    }
}

impl TradeHistory for MercadoBitcoinClient {
    fn exchange(&self) -> &'static str {
        "mercado_bitcoin"
    }

    fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `since=after`, whose inclusiveness MB does not document: trades at or below `after`
    /// are dropped, so either reading resumes exactly. Sorted by id, as the order is not
    /// documented either.
    fn trades_after<'a>(
        &'a self,
        symbol: &'a str,
        after: i64,
    ) -> BoxFuture<'a, Result<TradePage, ExchangeError>> {
        Box::pin(async move {
            let (mut trades, full) = self.trades(symbol, Some(after)).await?;
            trades.retain(|t| t.id > after);
            trades.sort_by_key(|t| t.id);
            Ok(TradePage {
                trades,
                more: full,
                history_cut: false,
            })
        })
    }

    fn recent_trades<'a>(
        &'a self,
        symbol: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Trade>, ExchangeError>> {
        Box::pin(async move {
            let (mut trades, _) = self.trades(symbol, None).await?;
            trades.sort_by_key(|t| t.id);
            Ok(trades)
        })
    }
}

impl Catalog for MercadoBitcoinClient {
    /// `/symbols?symbols=...`, MB's parallel arrays read row by row; MB lists no steps there
    /// that orch reads.
    fn instruments<'a>(
        &'a self,
        symbols: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Instrument>, ExchangeError>> {
        Box::pin(async move {
            let listing = self.symbols(symbols).await?;
            Ok(listing
                .symbol
                .iter()
                .enumerate()
                .filter_map(|(i, symbol)| {
                    Some(Instrument {
                        symbol: symbol.clone(),
                        base_asset: listing.base_currency.get(i)?.clone(),
                        quote_asset: listing.currency.get(i)?.clone(),
                        trading: listing.exchange_traded.get(i).copied().unwrap_or(true),
                        price_step: None,
                        size_step: None,
                    })
                })
                .collect())
        })
    }
}
