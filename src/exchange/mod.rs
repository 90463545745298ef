//! Exchanges orch reads market data from, the trade record they all produce, and what a task
//! needs of an exchange ([`TradeHistory`]), whatever its cursor, symbols and limits are.

pub mod binance;
pub mod kucoin;
pub mod live;
pub mod mercado_bitcoin;
mod rest;
pub mod websocket;

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::decimal::{Decimal, Product};

/// One executed trade, as the exchange reported it; prices and quantities exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trade {
    /// The exchange's trade id: per symbol, strictly increasing (Binance's `id`, Mercado
    /// Bitcoin's `tid`).
    pub id: i64,
    pub price: Decimal,
    pub qty: Decimal,
    /// `price × qty`, exact: always computed by [`Trade::new`], never taken from the wire.
    pub quote_qty: Product,
    /// Milliseconds since the Unix epoch, UTC (whole seconds from an exchange that gives no
    /// more).
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

/// Receives a client's notable events (waits, retries) for the task's log.
pub type Observer = Arc<dyn Fn(&str) + Send + Sync>;

/// Why an exchange call failed, and whether another attempt can help: each exchange's client
/// classifies its own answers (rate limits, refused requests, outages) into this.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ExchangeError {
    pub message: String,
    pub retryable: bool,
}

/// A page of a symbol's trade history.
#[derive(Debug, Default)]
pub struct TradePage {
    /// Ascending ids, all above the id asked after.
    pub trades: Vec<Trade>,
    /// The exchange had a full page: there may be more to ask for.
    pub more: bool,
    /// The exchange keeps too little history to reach back to the id asked after: trades
    /// between it and the first one given may be lost for good (KuCoin keeps its last 100).
    pub history_cut: bool,
}

/// An exchange's REST trade history, read forward from the last trade id kept: what a batch
/// fetch of trades needs from an exchange, whatever its cursor, symbols and limits are.
pub trait TradeHistory: Send + Sync {
    /// The exchange's name in logs and state keys: `binance`, `mercado_bitcoin`, `kucoin`.
    fn exchange(&self) -> &'static str;

    fn base_url(&self) -> &str;

    /// Trades of `symbol` with ids above `after`, ascending: one page.
    fn trades_after<'a>(
        &'a self,
        symbol: &'a str,
        after: i64,
    ) -> BoxFuture<'a, Result<TradePage, ExchangeError>>;

    /// The most recent trades, ascending: where a symbol fetched for the first time starts.
    fn recent_trades<'a>(
        &'a self,
        symbol: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Trade>, ExchangeError>>;
}
