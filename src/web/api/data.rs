//! The data page of the shipped pipelines: per symbol, hourly prices and volumes from the
//! warehouse's `fact_trades`, and the latest day loaded. Prices stay exact decimals; the
//! hourly open, high, low, close and volume are exact too.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::super::WebState;
use super::super::error::ApiResult;
use crate::decimal::Decimal;
use crate::warehouse::{FactMinute, Warehouse};

/// About a week of minutes for the four shipped symbols.
const MINUTES: u32 = 50_000;

#[derive(Default)]
struct Hour {
    open: Option<(String, Decimal)>,
    close: Option<(String, Decimal)>,
    high: Option<Decimal>,
    low: Option<Decimal>,
    volume: i128,
    trades: i64,
}

fn unavailable(reason: String) -> Json<Value> {
    Json(json!({ "available": false, "reason": reason, "symbols": [] }))
}

pub async fn trades(State(state): State<WebState>) -> ApiResult<Json<Value>> {
    let url = &state.config.data.warehouse_url;
    let warehouse = match Warehouse::open(url).await {
        Ok(w) => w,
        Err(e) => return Ok(unavailable(format!("cannot open the warehouse: {e}"))),
    };
    let minutes = match warehouse.recent_fact_minutes(MINUTES).await {
        Ok(Some(rows)) => rows,
        Ok(None) => {
            return Ok(unavailable(
                "no fact_trades in the warehouse yet (the daily ETL loads it; BigQuery is not read here)"
                    .to_string(),
            ));
        }
        Err(e) => return Ok(unavailable(format!("cannot read fact_trades: {e}"))),
    };
    Ok(Json(json!({
        "available": true,
        "reason": null,
        "symbols": hourly(minutes),
    })))
}

/// Hourly figures per symbol from minutes (newest first), oldest hour first.
fn hourly(minutes: Vec<FactMinute>) -> Vec<Value> {
    let mut symbols: BTreeMap<(String, String), BTreeMap<String, Hour>> = BTreeMap::new();
    for m in minutes {
        // "2026-11-22T04:05:00..." or "2026-11-22 04:05:00+00": the hour is the first 13.
        let Some(hour_key) = m.minute.get(..13).map(|h| h.replace(' ', "T")) else {
            continue;
        };
        let price = |text: &str| text.trim().parse::<Decimal>().ok();
        let (Some(open), Some(close), Some(low), Some(high), Some(quantity)) = (
            price(&m.open_price),
            price(&m.close_price),
            price(&m.min_price),
            price(&m.max_price),
            price(&m.total_quantity),
        ) else {
            continue;
        };
        let hour = symbols
            .entry((m.symbol, m.exchange_id))
            .or_default()
            .entry(hour_key)
            .or_default();
        // Minutes come newest first: the first seen is the close, the last the open.
        if hour.close.is_none() {
            hour.close = Some((m.minute.clone(), close));
        }
        hour.open = Some((m.minute, open));
        hour.high = Some(hour.high.map_or(high, |h| h.max(high)));
        hour.low = Some(hour.low.map_or(low, |l| l.min(low)));
        hour.volume += quantity.units();
        hour.trades += m.trade_count;
    }
    symbols
        .into_iter()
        .map(|((symbol, exchange), hours)| {
            let latest_day = hours
                .keys()
                .next_back()
                .and_then(|h| h.get(..10))
                .map(str::to_string);
            let points: Vec<Value> = hours
                .into_iter()
                .map(|(hour, h)| {
                    let text = |d: Option<Decimal>| d.map(|d| d.to_string());
                    json!({
                        "time": format!("{hour}:00:00Z"),
                        "open": text(h.open.map(|(_, p)| p)),
                        "high": text(h.high),
                        "low": text(h.low),
                        "close": text(h.close.map(|(_, p)| p)),
                        "volume": Decimal::from_units(h.volume).map(|v| v.to_string()),
                        "trades": h.trades,
                    })
                })
                .collect();
            json!({
                "symbol": symbol,
                "exchange": exchange,
                "latest_day": latest_day,
                "points": points,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(symbol: &str, minute: &str, open: &str, close: &str, qty: &str) -> FactMinute {
        FactMinute {
            symbol: symbol.to_string(),
            exchange_id: "binance".to_string(),
            minute: minute.to_string(),
            open_price: open.to_string(),
            close_price: close.to_string(),
            min_price: open.min(close).to_string(),
            max_price: open.max(close).to_string(),
            total_quantity: qty.to_string(),
            trade_count: 2,
        }
    }

    #[test]
    fn minutes_make_exact_hours() {
        let rows = vec![
            minute(
                "BTCUSDT",
                "2026-11-22T04:59:00.000Z",
                "101.5",
                "102.25",
                "0.1",
            ),
            minute(
                "BTCUSDT",
                "2026-11-22T04:00:00.000Z",
                "100.1",
                "101.5",
                "0.2",
            ),
            minute("BTCUSDT", "2026-11-22 03:10:00+00", "99", "100.1", "0.3"),
        ];
        let out = hourly(rows);
        assert_eq!(out.len(), 1);
        let points = out[0]["points"].as_array().expect("points");
        assert_eq!(points.len(), 2);
        assert_eq!(points[1]["time"], "2026-11-22T04:00:00Z");
        assert_eq!(points[1]["open"], "100.10000000");
        assert_eq!(points[1]["close"], "102.25000000");
        assert_eq!(points[1]["volume"], "0.30000000");
        assert_eq!(points[1]["trades"], 4);
        assert_eq!(out[0]["latest_day"], "2026-11-22");
    }
}
