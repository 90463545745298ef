//! The simulator's HTTP endpoints: Binance's REST API, its websocket streams and the `/_sim/`
//! control API.

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{FaultScript, RestFault, Shared, SimState, kucoin, mercado_bitcoin, stream};
use crate::exchange::binance::wire::{ErrorBody, ExchangeInfo, WireFilter, WireSymbol, WireTrade};

pub(crate) fn router(shared: Shared) -> Router {
    Router::new()
        .route("/api/v3/historicalTrades", get(historical_trades))
        .route("/api/v3/trades", get(recent_trades))
        .route("/api/v3/exchangeInfo", get(exchange_info))
        .route("/api/v4/symbols", get(mercado_bitcoin::symbols))
        .route("/api/v4/{symbol}/trades", get(mercado_bitcoin::trades))
        .route("/mercado_bitcoin/ws", get(mercado_bitcoin::websocket))
        .route("/api/v1/bullet-public", post(kucoin::bullet_public))
        .route("/api/v1/market/histories", get(kucoin::histories))
        .route("/api/v2/symbols", get(kucoin::symbols))
        .route("/kucoin/ws", get(kucoin::websocket))
        .route("/ws", get(stream::raw_none))
        .route("/ws/{stream}", get(stream::raw_one))
        .route("/stream", get(stream::combined))
        .route("/_sim/trades", post(add_trades))
        .route("/_sim/faults", post(add_faults))
        .route("/_sim/stats", get(stats))
        .with_state(shared)
}

type Params = Query<HashMap<String, String>>;

/// A Binance error answer.
fn error(status: StatusCode, code: i64, msg: &str) -> Response {
    ApiError::new(status, code, msg).into_response()
}

/// An error answer in Binance's shape, before it becomes a response.
struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, code: i64, msg: &str) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                code,
                msg: msg.to_string(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// The next scripted fault, counted with the request it answers.
pub(crate) fn take_fault(state: &mut SimState) -> Option<RestFault> {
    state.stats.requests += 1;
    let fault = state.faults.pop_front();
    if fault.is_some() {
        state.stats.faults_served += 1;
    }
    fault
}

/// A scripted fault's answer, once its delay has passed; `None` for a fault that only slows
/// the answer down. `body` shapes the error as the API answering it would.
pub(crate) async fn scripted_answer(
    fault: RestFault,
    body: impl FnOnce(StatusCode, &RestFault) -> Response,
) -> Option<Response> {
    if fault.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(fault.delay_ms)).await;
    }
    if fault.status == 200 {
        return None;
    }
    let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = body(status, &fault);
    if let Some(seconds) = fault.retry_after
        && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
    {
        response.headers_mut().insert("retry-after", value);
    }
    Some(response)
}

/// A scripted fault's body in Binance's shape.
fn binance_fault_body(status: StatusCode, fault: &RestFault) -> Response {
    match (fault.code, &fault.msg) {
        (Some(code), msg) => error(status, code, msg.as_deref().unwrap_or("Simulated error.")),
        (None, Some(msg)) => (status, msg.clone()).into_response(),
        (None, None) if status.as_u16() == 429 => error(
            status,
            -1003,
            "Too much request weight used; current limit is 6000 request weight per 1 MINUTE.",
        ),
        (None, None) if status.as_u16() == 418 => error(
            status,
            -1003,
            "Way too much request weight used; IP banned until later.",
        ),
        (None, None) => (status, "simulated server error").into_response(),
    }
}

/// Applies the next scripted fault and the weight accounting; returns the answer to send
/// instead of the real one, if any, and the weight used this minute (none when the
/// simulator runs without a weight limit).
async fn admit(shared: &Shared, weight: u32) -> Result<Option<u32>, Response> {
    let (fault, used, limit) = {
        let mut state = shared.lock();
        let fault = take_fault(&mut state);
        let minute = chrono::Utc::now().timestamp().div_euclid(60);
        if state.weight.0 != minute {
            state.weight = (minute, 0);
        }
        state.weight.1 += weight;
        let limit = state.weight_limit;
        (fault, limit.map(|_| state.weight.1), limit)
    };
    if let Some(fault) = fault
        && let Some(response) = scripted_answer(fault, binance_fault_body).await
    {
        return Err(with_weight(response, used));
    }
    if let (Some(used), Some(limit)) = (used, limit)
        && used > limit
    {
        let into_minute = chrono::Utc::now().timestamp().rem_euclid(60);
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            -1003,
            &format!(
                "Too much request weight used; current limit is {limit} request weight per 1 MINUTE."
            ),
        );
        response.headers_mut().insert(
            "retry-after",
            HeaderValue::from(u64::try_from(60 - into_minute).unwrap_or(60)),
        );
        return Err(with_weight(response, Some(used)));
    }
    Ok(used)
}

fn with_weight(mut response: Response, used: Option<u32>) -> Response {
    if let Some(used) = used {
        response
            .headers_mut()
            .insert("x-mbx-used-weight-1m", HeaderValue::from(used));
    }
    response
}

fn invalid_symbol() -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, -1121, "Invalid symbol.")
}

fn invalid_parameter(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        -1130,
        &format!("Data sent for parameter '{name}' is not valid."),
    )
}

/// `limit`: default 500, at most 1000, as Binance.
fn limit(params: &HashMap<String, String>) -> Result<usize, ApiError> {
    match params.get("limit") {
        None => Ok(500),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(n),
            _ => Err(invalid_parameter("limit")),
        },
    }
}

fn symbol(params: &HashMap<String, String>) -> Result<String, ApiError> {
    params.get("symbol").cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            -1102,
            "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
        )
    })
}

/// Answers a Binance endpoint costing `weight`: scripted faults and the weight limit first,
/// then `answer`, with the weight used this minute in the header either way.
async fn weighted<T: Serialize>(
    shared: &Shared,
    weight: u32,
    answer: impl FnOnce(&mut SimState) -> Result<T, ApiError>,
) -> Response {
    let used = match admit(shared, weight).await {
        Ok(used) => used,
        Err(response) => return response,
    };
    let response = match answer(&mut shared.lock()) {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    };
    with_weight(response, used)
}

/// `trades`, and `historicalTrades` when `from_id` is allowed: with `fromId`, trades from that
/// id on; without, the most recent ones.
fn trades_page(
    state: &SimState,
    params: &HashMap<String, String>,
    from_id_allowed: bool,
) -> Result<Vec<WireTrade>, ApiError> {
    let symbol = symbol(params)?;
    let limit = limit(params)?;
    let trades = match params.get("fromId").filter(|_| from_id_allowed) {
        Some(text) => {
            let from_id = text
                .parse::<i64>()
                .map_err(|_| invalid_parameter("fromId"))?;
            state.market.from_id(&symbol, from_id, limit)
        }
        None => state.market.recent(&symbol, limit),
    };
    let trades = trades.ok_or_else(invalid_symbol)?;
    Ok(trades.iter().map(WireTrade::from).collect())
}

async fn historical_trades(State(shared): State<Shared>, Query(params): Params) -> Response {
    weighted(&shared, 25, |state| {
        state.stats.historical_trades_requests += 1;
        trades_page(state, &params, true)
    })
    .await
}

async fn recent_trades(State(shared): State<Shared>, Query(params): Params) -> Response {
    weighted(&shared, 25, |state| trades_page(state, &params, false)).await
}

async fn exchange_info(State(shared): State<Shared>, Query(params): Params) -> Response {
    weighted(&shared, 20, |state| {
        let wanted: Option<Vec<String>> = match (params.get("symbols"), params.get("symbol")) {
            (Some(list), _) => {
                Some(serde_json::from_str(list).map_err(|_| invalid_parameter("symbols"))?)
            }
            (None, Some(one)) => Some(vec![one.clone()]),
            (None, None) => None,
        };
        let infos = match wanted {
            Some(symbols) => symbols
                .iter()
                .map(|s| state.market.info(s).cloned().ok_or_else(invalid_symbol))
                .collect::<Result<Vec<_>, _>>()?,
            None => state.market.symbols().cloned().collect(),
        };
        Ok(ExchangeInfo {
            symbols: infos
                .into_iter()
                .map(|i| WireSymbol {
                    status: if i.trading { "TRADING" } else { "BREAK" }.to_string(),
                    filters: vec![
                        WireFilter {
                            filter_type: "PRICE_FILTER".to_string(),
                            tick_size: i.price_step,
                            step_size: None,
                        },
                        WireFilter {
                            filter_type: "LOT_SIZE".to_string(),
                            tick_size: None,
                            step_size: i.size_step,
                        },
                    ],
                    symbol: i.symbol,
                    base_asset: i.base_asset,
                    quote_asset: i.quote_asset,
                    base_asset_precision: 8,
                    quote_asset_precision: 8,
                })
                .collect(),
        })
    })
    .await
}

#[derive(Deserialize)]
struct AddTrades {
    symbol: String,
    count: usize,
}

async fn add_trades(State(shared): State<Shared>, Json(body): Json<AddTrades>) -> Response {
    let now = chrono::Utc::now().timestamp_millis();
    let mut state = shared.lock();
    match state.add_trades(&body.symbol, body.count, now) {
        Some((first_id, last_id)) => {
            Json(json!({"first_id": first_id, "last_id": last_id})).into_response()
        }
        None => invalid_symbol().into_response(),
    }
}

async fn add_faults(State(shared): State<Shared>, Json(script): Json<FaultScript>) -> Response {
    let mut state = shared.lock();
    state.faults.extend(script.rest);
    for fault in script.stream {
        state.apply(fault);
    }
    Json(json!({"queued": state.faults.len()})).into_response()
}

async fn stats(State(shared): State<Shared>) -> Response {
    let state = shared.lock();
    let symbols: serde_json::Map<String, serde_json::Value> = state
        .market
        .symbols()
        .map(|s| {
            let range = state.market.id_range(&s.symbol);
            (
                s.symbol.clone(),
                json!({"first_id": range.map(|r| r.0), "last_id": range.map(|r| r.1)}),
            )
        })
        .collect();
    let mut headers = HeaderMap::new();
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    (
        headers,
        Json(json!({"stats": state.stats, "streams": state.stream_stats, "symbols": symbols})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use crate::exchange::binance::{BinanceClient, RetryPolicy};
    use crate::simulator::{BINANCE_WEIGHT_LIMIT, Keepalive, Simulator, SimulatorOptions};

    /// Binance's client against the simulator's `exchangeInfo`: here, beside the simulator,
    /// since the exchanges do not depend on it.
    #[tokio::test]
    async fn exchange_info_reads_assets_and_names_an_unknown_symbol() {
        let simulator = Simulator::start(&SimulatorOptions {
            port: 0,
            symbols: vec!["AAVEUSDT".to_string(), "BTCFDUSD".to_string()],
            rate: 0.0,
            seed: 1,
            replay: Vec::new(),
            weight_limit: Some(BINANCE_WEIGHT_LIMIT),
            keepalive: Keepalive::BINANCE,
        })
        .await
        .expect("simulator");
        let client = BinanceClient::new(&simulator.url(), RetryPolicy::default()).expect("client");
        let infos = client
            .exchange_info(&["AAVEUSDT".to_string(), "BTCFDUSD".to_string()])
            .await
            .expect("exchangeInfo");
        let assets: Vec<(&str, &str)> = infos
            .iter()
            .map(|i| (i.base_asset.as_str(), i.quote_asset.as_str()))
            .collect();
        assert_eq!(assets, [("AAVE", "USDT"), ("BTC", "FDUSD")]);

        let err = client
            .exchange_info(&["NOSUCHUSDT".to_string()])
            .await
            .expect_err("unknown symbol");
        let message = err.to_string();
        assert!(
            message.contains("NOSUCHUSDT") && message.contains("-1121"),
            "{message}"
        );
    }
}
