//! The JSON shapes of Binance's spot REST API, shared by the client and the simulator.

use serde::{Deserialize, Serialize};

use crate::decimal::Decimal;
use crate::exchange::{SymbolInfo, Trade};

/// An element of `historicalTrades` and `trades`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireTrade {
    pub id: i64,
    pub price: Decimal,
    pub qty: Decimal,
    pub quote_qty: Decimal,
    pub time: i64,
    pub is_buyer_maker: bool,
    pub is_best_match: bool,
}

impl From<WireTrade> for Trade {
    fn from(w: WireTrade) -> Trade {
        Trade {
            id: w.id,
            price: w.price,
            qty: w.qty,
            quote_qty: w.quote_qty,
            time_ms: w.time,
            is_buyer_maker: w.is_buyer_maker,
            is_best_match: w.is_best_match,
        }
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
}

impl From<WireSymbol> for SymbolInfo {
    fn from(w: WireSymbol) -> SymbolInfo {
        SymbolInfo {
            symbol: w.symbol,
            status: w.status,
            base_asset: w.base_asset,
            quote_asset: w.quote_asset,
        }
    }
}
