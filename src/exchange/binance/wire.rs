//! The JSON shapes of Binance's spot REST API, shared by the client and the simulator.

use serde::{Deserialize, Serialize};

use crate::decimal::{Decimal, Product};
use crate::exchange::{Instrument, Trade};

/// An element of `historicalTrades` and `trades`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireTrade {
    pub id: i64,
    pub price: Decimal,
    pub qty: Decimal,
    /// Sent by Binance, never read (so neither parsed nor able to fail a page):
    /// [`WireTrade::trade`] computes price × qty itself, as every other path does. The
    /// simulator writes it.
    #[serde(skip_deserializing)]
    pub quote_qty: Product,
    pub time: i64,
    pub is_buyer_maker: bool,
    pub is_best_match: bool,
}

impl WireTrade {
    /// The trade; `None` when price × qty is out of range.
    pub fn trade(&self) -> Option<Trade> {
        Trade::new(
            crate::exchange::usable_id(self.id)?,
            self.price,
            self.qty,
            self.time,
            self.is_buyer_maker,
            self.is_best_match,
        )
    }
}

impl From<&Trade> for WireTrade {
    fn from(t: &Trade) -> WireTrade {
        WireTrade {
            id: t.id,
            price: t.price,
            qty: t.qty,
            quote_qty: t.quote_qty,
            time: t.time_ms,
            is_buyer_maker: t.is_buyer_maker,
            is_best_match: t.is_best_match,
        }
    }
}

/// The error body of every failed request: `{"code":-1121,"msg":"Invalid symbol."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: i64,
    pub msg: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExchangeInfo {
    pub symbols: Vec<WireSymbol>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireSymbol {
    pub symbol: String,
    pub status: String,
    pub base_asset: String,
    pub quote_asset: String,
    pub base_asset_precision: u32,
    pub quote_asset_precision: u32,
    /// `PRICE_FILTER` carries the tick, `LOT_SIZE` the step; other filters are passed over.
    #[serde(default)]
    pub filters: Vec<WireFilter>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireFilter {
    pub filter_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick_size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_size: Option<String>,
}

impl From<WireSymbol> for Instrument {
    fn from(w: WireSymbol) -> Instrument {
        let filter = |kind: &str| w.filters.iter().find(|f| f.filter_type == kind);
        Instrument {
            price_step: filter("PRICE_FILTER").and_then(|f| f.tick_size.clone()),
            size_step: filter("LOT_SIZE").and_then(|f| f.step_size.clone()),
            trading: w.status == "TRADING",
            symbol: w.symbol,
            base_asset: w.base_asset,
            quote_asset: w.quote_asset,
        }
    }
}

/// A trade event of the `<symbol>@trade` websocket stream:
/// `{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}`.
///
/// `b` and `a` (order ids) are gone since 2024-06-18 and `M` is to be ignored, so neither is
/// required.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamTrade {
    #[serde(rename = "e")]
    pub event: String,
    /// When the event was sent, ms.
    #[serde(rename = "E")]
    pub event_time: i64,
    #[serde(rename = "s")]
    pub symbol: String,
    #[serde(rename = "t")]
    pub id: i64,
    #[serde(rename = "p")]
    pub price: Decimal,
    #[serde(rename = "q")]
    pub qty: Decimal,
    /// When the trade happened, ms.
    #[serde(rename = "T")]
    pub trade_time: i64,
    #[serde(rename = "m")]
    pub is_buyer_maker: bool,
    /// Sent, meaningless: read only so it is not required.
    #[serde(rename = "M", default)]
    pub ignore: bool,
}

impl StreamTrade {
    pub fn new(symbol: &str, trade: &Trade, event_time: i64) -> StreamTrade {
        StreamTrade {
            event: "trade".to_string(),
            event_time,
            symbol: symbol.to_string(),
            id: trade.id,
            price: trade.price,
            qty: trade.qty,
            trade_time: trade.time_ms,
            is_buyer_maker: trade.is_buyer_maker,
            ignore: true,
        }
    }
}

/// A message of a combined stream: `{"stream":"btcusdt@trade","data":{...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Combined<T> {
    pub stream: String,
    pub data: T,
}
