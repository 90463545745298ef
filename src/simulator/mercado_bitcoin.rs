//! Mercado Bitcoin's public REST v4 under `/api/v4`, over the same simulated market: a book
//! `BTCBRL` is MB's market `BTC-BRL`.
//!
//! Its shapes and rules, as MB's (see the reference notes): trades as a bare array with times
//! in seconds and decimal strings; `since` inclusive (MB does not document it; a client must
//! cope with either); `/symbols` as parallel arrays; errors as `{"code": "DOMAIN|MODULE|ERROR",
//! "message"}`; with limits on, more than one request a second answers 429
//! `REQUEST_RATE_EXCEEDED`. Scripted faults without a body answer as MB would: a 429 with its
//! throttle code, a 403 with Cloudflare's HTML block page.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use axum::Json;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use serde_json::{Value, json};

use super::json_socket::{self, Protocol};
use super::{RestFault, Shared, rest};
use crate::exchange::Trade;
use crate::exchange::mercado_bitcoin::wire::{ErrorBody, Symbols, WireTrade, ws_name};

/// MB's largest page, and the page without `limit`.
const MAX_LIMIT: usize = 1000;

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(ErrorBody {
            code: code.to_string(),
            message: message.to_string(),
        }),
    )
        .into_response()
}

/// MB's throttle answer (its code as MB's error pattern gives it; MB documents no status).
fn rate_exceeded() -> Response {
    error(
        StatusCode::TOO_MANY_REQUESTS,
        "PUBLIC_DATA|GET_TRADES|REQUEST_RATE_EXCEEDED",
        "Request rate exceeded",
    )
}

/// The page Cloudflare sends when it blocks a client.
pub(crate) const CLOUDFLARE_BLOCK: &str = "<!DOCTYPE html><html><head><title>Attention Required! | Cloudflare</title></head><body><h1>Sorry, you have been blocked</h1><p>Cloudflare Ray ID: 8f1e2d3c4b5a6978</p></body></html>";

/// Applies the next scripted fault and MB's rate limit: while limits are on, at most one
/// request a second (with 50 ms of slack for the network's jitter).
async fn admit(shared: &Shared) -> Result<(), Response> {
    let (fault, throttled) = {
        let mut state = shared.lock();
        let fault = rest::take_fault(&mut state);
        let now = std::time::Instant::now();
        let throttled = state.weight_limit.is_some()
            && state
                .last_paced_request
                .is_some_and(|last| now.duration_since(last) < Duration::from_millis(950));
        if !throttled {
            state.last_paced_request = Some(now);
        }
        (fault, throttled)
    };
    if let Some(fault) = fault
        && let Some(response) = rest::scripted_answer(fault, fault_body).await
    {
        return Err(response);
    }
    if throttled {
        return Err(rate_exceeded());
    }
    Ok(())
}

/// A scripted fault's body as MB would send it: its throttle code for a 429, Cloudflare's
/// page for a 403, `msg` as it is when given.
fn fault_body(status: StatusCode, fault: &RestFault) -> Response {
    match &fault.msg {
        Some(msg) => (status, msg.clone()).into_response(),
        None if status == StatusCode::TOO_MANY_REQUESTS => rate_exceeded(),
        None if status == StatusCode::FORBIDDEN => (
            status,
            [("content-type", "text/html; charset=UTF-8")],
            CLOUDFLARE_BLOCK,
        )
            .into_response(),
        None => error(status, "API|INTERNAL_SERVER_ERROR", "Internal server error"),
    }
}

pub(crate) async fn trades(
    State(shared): State<Shared>,
    Path(symbol): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    if let Err(response) = admit(&shared).await {
        return response;
    }
    let mut state = shared.lock();
    state.stats.historical_trades_requests += 1;
    // MB's market names are case-sensitive `BASE-QUOTE`.
    let Some(book) = state.market.by_dashed_name(&symbol).map(str::to_string) else {
        return error(
            StatusCode::BAD_REQUEST,
            "PUBLIC_DATA|GET_TRADES|INVALID_BASE_QUOTE",
            "Invalid base or quote",
        );
    };
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => MAX_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "PUBLIC_DATA|GET_TRADES|LIMIT_MAX_ALLOWED",
                "Limit max allowed is 1000",
            );
        }
    };
    let trades = match params.get("since").map(|s| s.parse::<i64>()) {
        Some(Ok(since)) => state.market.from_id(&book, since, limit),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "PUBLIC_DATA|GET_TRADES|INVALID_PARAMETER",
                "Invalid since",
            );
        }
        None => state.market.recent(&book, limit),
    };
    let wire: Vec<WireTrade> = trades
        .unwrap_or_default()
        .iter()
        .map(WireTrade::from)
        .collect();
    Json(wire).into_response()
}

pub(crate) async fn symbols(
    State(shared): State<Shared>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    if let Err(response) = admit(&shared).await {
        return response;
    }
    let state = shared.lock();
    let wanted: Option<Vec<&str>> = params
        .get("symbols")
        .map(|list| list.split(',').map(str::trim).collect());
    let mut listing = Symbols::default();
    for info in state.market.symbols() {
        let name = format!("{}-{}", info.base_asset, info.quote_asset);
        if wanted.as_ref().is_some_and(|w| !w.contains(&name.as_str())) {
            continue;
        }
        listing.symbol.push(name);
        listing.base_currency.push(info.base_asset.clone());
        listing.currency.push(info.quote_asset.clone());
        listing.exchange_traded.push(true);
    }
    Json(listing).into_response()
}

/// `/mercado_bitcoin/ws`: MB's public websocket over the same market. Markets are spelt quote
/// then base (`BRLBTC`); `{"type":"subscribe","subscription":{"name":"trade","id":"BRLBTC"}}`
/// is acknowledged by `{"id":"BRLBTC","name":"trade"}` (no `type`), and refused by an error
/// frame that does not name it; `{"type":"ping"}` is answered by `{"type":"pong"}`. A trade is
/// `{"type":"trade","id":"BRLBTC","ts":<ns>,"data":{REST's fields}}`.
pub(crate) async fn websocket(State(shared): State<Shared>, upgrade: WebSocketUpgrade) -> Response {
    let markets = {
        let state = shared.lock();
        state
            .market
            .symbols()
            .filter_map(|s| {
                let name = ws_name(&format!("{}-{}", s.base_asset, s.quote_asset))?;
                Some((name, s.symbol.clone()))
            })
            .collect()
    };
    let connection = WsConnection {
        markets,
        followed: BTreeSet::new(),
    };
    upgrade.on_upgrade(move |socket| json_socket::serve(shared, socket, None, connection))
}

struct WsConnection {
    /// Every book by its websocket name.
    markets: HashMap<String, String>,
    /// Books followed.
    followed: BTreeSet<String>,
}

impl Protocol for WsConnection {
    fn trades(&self, _shared: &Shared, book: &str, trades: &[Trade]) -> Vec<String> {
        if !self.followed.contains(book) {
            return Vec::new();
        }
        let Some(name) = self
            .markets
            .iter()
            .find(|(_, b)| b.as_str() == book)
            .map(|(name, _)| name)
        else {
            return Vec::new();
        };
        trades
            .iter()
            .map(|trade| {
                json!({
                    "type": "trade",
                    "id": name,
                    "ts": i128::from(trade.time_ms) * 1_000_000,
                    "data": WireTrade::from(trade),
                })
                .to_string()
            })
            .collect()
    }

    fn answer(&mut self, text: &str) -> Option<String> {
        let error = |message: &str| Some(json!({"type": "error", "message": message}).to_string());
        let request: Value = serde_json::from_str(text).unwrap_or_default();
        match request.get("type").and_then(Value::as_str) {
            Some("ping") => Some(json!({"type": "pong"}).to_string()),
            Some("subscribe") => {
                let subscription = &request["subscription"];
                if subscription["name"] != "trade" {
                    return error("unknown subscription name");
                }
                let name = subscription["id"].as_str().unwrap_or("");
                let Some(book) = self.markets.get(name) else {
                    return error("invalid pair to subscribe");
                };
                if !self.followed.insert(book.clone()) {
                    return error("already subscribed");
                }
                Some(json!({"id": name, "name": "trade"}).to_string())
            }
            _ => error("invalid message"),
        }
    }
}
