//! Exchanges orch reads market data from, and the trade record they all produce.

pub mod binance;

use crate::decimal::{Decimal, Product};

/// One executed trade, as the exchange reported it; prices and quantities exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trade {
    /// The exchange's trade id: per symbol, strictly increasing.
    pub id: i64,
    pub price: Decimal,
    pub qty: Decimal,
    /// `price × qty`, exact: always computed by [`Trade::new`], never taken from the wire.
    pub quote_qty: Product,
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

impl Trade {
    /// A trade, with its quote quantity computed by the one exact multiply, so the same trade
    /// has the same value whichever path brought it; `None` if price × qty overflows.
    pub fn new(
        id: i64,
        price: Decimal,
        qty: Decimal,
        time_ms: i64,
        is_buyer_maker: bool,
        is_best_match: bool,
    ) -> Option<Trade> {
        Some(Trade {
            id,
            price,
            qty,
            quote_qty: price.exact_mul(qty)?,
            time_ms,
            is_buyer_maker,
            is_best_match,
        })
    }
}
