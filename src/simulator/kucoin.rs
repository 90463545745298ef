//! KuCoin's public spot API over the same simulated market: a book `BTCUSDT` is KuCoin's
//! symbol `BTC-USDT`.
//!
//! - REST: `POST /api/v1/bullet-public` (a token valid until expired, and this server's
//!   websocket address with the keepalive), `GET /api/v1/market/histories` (the last 100
//!   trades, `time` a number in nanoseconds), `GET /api/v2/symbols`. Every answer is an
//!   envelope; an unknown symbol is `900001` at HTTP 200, as KuCoin answers it.
//! - Scripted faults answer as KuCoin would: a 200 with a `code` is an in-band failure, a
//!   bare 429 is `429000` with a `gw-ratelimit-reset`, a bare 403 Cloudflare's HTML page.
//! - Websocket `/kucoin/ws?token=..&connectId=..`: a `welcome`, `subscribe` of
//!   `/market/match:A,B` answered by an `ack`, `ping` by `pong`; a connection whose client
//!   sends no ping for the interval and the timeout together is cut, as KuCoin does. An
//!   unknown or expired token is refused with a 401. The `expire_tokens` stream fault expires
//!   every token given so far and cuts the connections using them, as KuCoin's 24-hour cut.
//! - A trade's `sequence` is its market id times [`SEQUENCE_STEP`]: sequences skip numbers,
//!   as KuCoin's, which order-book events share.

use std::collections::{BTreeSet, HashMap};

use axum::Json;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::json_socket::{self, Protocol};
use super::{RestFault, Shared, mercado_bitcoin::CLOUDFLARE_BLOCK, rest};
use crate::exchange::Trade;
use crate::exchange::kucoin::wire::{
    self, Bullet, Envelope, HistoryTrade, InstanceServer, MatchData, WireSymbol,
};

/// How far apart consecutive trades' sequences are.
pub const SEQUENCE_STEP: i64 = 3;

/// Tokens given, and whether each is still good.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    issued: u64,
    valid: HashMap<String, bool>,
}

fn envelope_error(status: StatusCode, code: &str, msg: &str) -> Response {
    (
        status,
        Json(Envelope::<Value> {
            code: code.to_string(),
            data: None,
            msg: Some(msg.to_string()),
        }),
    )
        .into_response()
}

fn data<T: serde::Serialize>(data: T) -> Response {
    Json(Envelope {
        code: wire::OK.to_string(),
        data: Some(data),
        msg: None,
    })
    .into_response()
}

/// A scripted fault's answer in KuCoin's shapes.
fn fault_body(status: StatusCode, fault: &RestFault) -> Response {
    match (&fault.code, &fault.msg) {
        (Some(code), msg) => envelope_error(
            status,
            &code.to_string(),
            msg.as_deref().unwrap_or("Simulated error"),
        ),
        (None, Some(msg)) => (status, msg.clone()).into_response(),
        (None, None) if status == StatusCode::TOO_MANY_REQUESTS => {
            let mut response = envelope_error(status, "429000", "Too Many Requests");
            let reset_ms = fault.retry_after.map_or(200, |s| s * 1000);
            if let Ok(value) = HeaderValue::from_str(&reset_ms.to_string()) {
                response.headers_mut().insert("gw-ratelimit-reset", value);
            }
            response
        }
        (None, None) if status == StatusCode::FORBIDDEN => (
            status,
            [("content-type", "text/html; charset=UTF-8")],
            CLOUDFLARE_BLOCK,
        )
            .into_response(),
        (None, None) => envelope_error(status, "500000", "Internal Server Error"),
    }
}

/// Applies the next scripted fault.
async fn admit(shared: &Shared) -> Result<(), Response> {
    let fault = rest::take_fault(&mut shared.lock());
    match fault {
        // A failure code at HTTP 200: KuCoin's in-band errors.
        Some(fault) if fault.status == 200 && fault.code.is_some() => {
            Err(fault_body(StatusCode::OK, &fault))
        }
        Some(fault) => match rest::scripted_answer(fault, fault_body).await {
            Some(response) => Err(response),
            None => Ok(()),
        },
        None => Ok(()),
    }
}

/// KuCoin's name of a book: `BTC-USDT`.
fn dashed(shared: &Shared, book: &str) -> Option<String> {
    let state = shared.lock();
    let info = state.market.info(book)?;
    Some(format!("{}-{}", info.base_asset, info.quote_asset))
}

fn match_data(symbol: &str, trade: &Trade) -> MatchData {
    let sequence = (trade.id * SEQUENCE_STEP).to_string();
    MatchData {
        symbol: symbol.to_string(),
        price: trade.price,
        size: trade.qty,
        side: wire::side_of(trade).to_string(),
        time: (i128::from(trade.time_ms) * 1_000_000).to_string(),
        trade_id: sequence.clone(),
        sequence,
        kind: "match".to_string(),
    }
}

pub(crate) async fn histories(
    State(shared): State<Shared>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    if let Err(response) = admit(&shared).await {
        return response;
    }
    let mut state = shared.lock();
    state.stats.historical_trades_requests += 1;
    let Some(symbol) = params.get("symbol") else {
        return envelope_error(StatusCode::OK, "400100", "symbol is required");
    };
    let Some(book) = state.market.by_dashed_name(symbol).map(str::to_string) else {
        return envelope_error(StatusCode::OK, "900001", "symbol not exists");
    };
    let trades: Vec<HistoryTrade> = state
        .market
        .recent(&book, crate::exchange::kucoin::HISTORY_LENGTH)
        .unwrap_or_default()
        .iter()
        .map(|t| HistoryTrade {
            sequence: (t.id * SEQUENCE_STEP).to_string(),
            price: t.price,
            size: t.qty,
            side: wire::side_of(t).to_string(),
            time: t.time_ms * 1_000_000,
        })
        .collect();
    data(trades)
}

pub(crate) async fn symbols(State(shared): State<Shared>) -> Response {
    if let Err(response) = admit(&shared).await {
        return response;
    }
    let state = shared.lock();
    let listing: Vec<WireSymbol> = state
        .market
        .symbols()
        .map(|info| {
            let name = format!("{}-{}", info.base_asset, info.quote_asset);
            WireSymbol {
                symbol: name.clone(),
                name,
                base_currency: info.base_asset.clone(),
                quote_currency: info.quote_asset.clone(),
                enable_trading: info.trading,
                price_increment: info.price_step.clone().unwrap_or_default(),
                base_increment: info.size_step.clone().unwrap_or_default(),
            }
        })
        .collect();
    data(listing)
}

pub(crate) async fn bullet_public(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(response) = admit(&shared).await {
        return response;
    }
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let mut state = shared.lock();
    state.kucoin_tokens.issued += 1;
    let token = format!("sim-token-{}", state.kucoin_tokens.issued);
    state.kucoin_tokens.valid.insert(token.clone(), true);
    state.stream_stats.tokens_issued += 1;
    let keepalive = state.keepalive;
    data(Bullet {
        token,
        instance_servers: vec![InstanceServer {
            endpoint: format!("ws://{host}/kucoin/ws"),
            encrypt: false,
            protocol: "websocket".to_string(),
            ping_interval: keepalive.ping_every.as_millis() as u64,
            ping_timeout: keepalive.pong_within.as_millis() as u64,
        }],
    })
}

pub(crate) async fn websocket(
    State(shared): State<Shared>,
    Query(params): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let token = params.get("token").cloned().unwrap_or_default();
    let valid = shared.lock().kucoin_tokens.valid.get(&token) == Some(&true);
    if !valid {
        return envelope_error(
            StatusCode::UNAUTHORIZED,
            "401",
            "token is invalid or expired",
        );
    }
    let connect_id = params.get("connectId").cloned().unwrap_or_default();
    let welcome = json!({"id": connect_id, "type": "welcome"}).to_string();
    let kucoin = Kucoin {
        token,
        followed: BTreeSet::new(),
    };
    upgrade.on_upgrade(move |socket| json_socket::serve(shared, socket, Some(welcome), kucoin))
}

/// A KuCoin connection: `/market/match` subscriptions, pings answered.
struct Kucoin {
    token: String,
    /// Books followed, by their KuCoin names.
    followed: BTreeSet<String>,
}

impl Protocol for Kucoin {
    fn trades(&self, shared: &Shared, book: &str, trades: &[Trade]) -> Vec<String> {
        let Some(name) = dashed(shared, book).filter(|name| self.followed.contains(name)) else {
            return Vec::new();
        };
        trades
            .iter()
            .map(|trade| {
                json!({
                    "topic": format!("/market/match:{name}"),
                    "type": "message",
                    "subject": "trade.l3match",
                    "data": match_data(&name, trade),
                })
                .to_string()
            })
            .collect()
    }

    fn answer(&mut self, text: &str) -> Option<String> {
        let request: Value = serde_json::from_str(text).unwrap_or_default();
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        let answer = match request.get("type").and_then(Value::as_str) {
            Some("ping") => json!({"id": id, "type": "pong"}),
            Some(kind @ ("subscribe" | "unsubscribe")) => {
                let topic = request.get("topic").and_then(Value::as_str).unwrap_or("");
                let Some(list) = topic.strip_prefix("/market/match:") else {
                    return Some(
                        json!({"id": id, "type": "error", "code": 404, "data": format!("topic {topic} is not found")})
                            .to_string(),
                    );
                };
                for symbol in list.split(',').filter(|s| !s.is_empty()) {
                    if kind == "subscribe" {
                        self.followed.insert(symbol.to_string());
                    } else {
                        self.followed.remove(symbol);
                    }
                }
                if request.get("response").and_then(Value::as_bool) != Some(true) {
                    return None;
                }
                json!({"id": id, "type": "ack"})
            }
            _ => json!({"id": id, "type": "error", "code": 400, "data": "unknown message type"}),
        };
        Some(answer.to_string())
    }

    fn expired(&self, shared: &Shared) -> bool {
        shared.lock().kucoin_tokens.valid.get(&self.token) != Some(&true)
    }
}

/// Expires every token given so far.
pub(crate) fn expire_tokens(tokens: &mut Tokens) {
    for valid in tokens.valid.values_mut() {
        *valid = false;
    }
}
