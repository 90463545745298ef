//! Exchanges orch reads market data from, and the trade record they all produce.

pub mod binance;

use crate::decimal::Decimal;

/// One executed trade, as the exchange reported it; prices and quantities exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trade {
    /// The exchange's trade id: per symbol, strictly increasing.
    pub id: i64,
    pub price: Decimal,
    pub qty: Decimal,
    /// `price × qty` as the exchange computed it.
    pub quote_qty: Decimal,
    /// Milliseconds since the Unix epoch, UTC.
    pub time_ms: i64,
    pub is_buyer_maker: bool,
    pub is_best_match: bool,
}

/// A symbol's base and quote assets, from the exchange's own listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolInfo {
    pub symbol: String,
    pub status: String,
    pub base_asset: String,
    pub quote_asset: String,
}
