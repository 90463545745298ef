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

/// A symbol as the exchange's own catalog lists it: never guessed from its letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instrument {
    pub symbol: String,
    pub base_asset: String,
    pub quote_asset: String,
    /// Open for trading now.
    pub trading: bool,
    /// The price step, as the exchange writes it; `None` where its catalog does not say.
    pub price_step: Option<String>,
    /// The quantity step, as the exchange writes it.
    pub size_step: Option<String>,
}

/// What orch knows of an exchange whatever the transport: its names, and whether its trade
/// ids are consecutive per symbol (so that a jump in them is a gap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// The name in staging rows, subjects, state keys and `dim_exchange`: `binance`.
    pub id: &'static str,
    pub display_name: &'static str,
    /// Its public REST API, for `dim_exchange`.
    pub api_endpoint: &'static str,
    pub consecutive_ids: bool,
}

/// Every exchange orch speaks.
pub const EXCHANGES: [Profile; 3] = [
    Profile {
        id: "binance",
        display_name: "Binance",
        api_endpoint: binance::BinanceClient::DEFAULT_BASE_URL,
        consecutive_ids: true,
    },
    Profile {
        id: "mercado_bitcoin",
        display_name: "Mercado Bitcoin",
        api_endpoint: mercado_bitcoin::MercadoBitcoinClient::DEFAULT_BASE_URL,
        // Not documented either way.
        consecutive_ids: false,
    },
    Profile {
        id: "kucoin",
        display_name: "KuCoin",
        api_endpoint: kucoin::KucoinClient::DEFAULT_BASE_URL,
        // Sequences are shared with order-book events.
        consecutive_ids: false,
    },
];

/// The exchange named `id`, if orch speaks it.
pub fn profile(id: &str) -> Option<&'static Profile> {
    EXCHANGES.iter().find(|p| p.id == id)
}

/// An exchange's instrument catalog.
pub trait Catalog: Send + Sync {
    /// The listing of `symbols` (all of them where the exchange cannot filter); symbols it
    /// does not list are missing from the answer.
    fn instruments<'a>(
        &'a self,
        symbols: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Instrument>, ExchangeError>>;
}

/// The catalog of exchange `id`, at the configured place (`base_url` overrides it).
pub fn catalog(
    id: &str,
    data: &crate::config::DataPlaces,
    base_url: Option<&str>,
) -> Result<Box<dyn Catalog>, ExchangeError> {
    let setup = |e: String| ExchangeError {
        message: e,
        retryable: false,
    };
    Ok(match id {
        "binance" => Box::new(
            binance::BinanceClient::new(
                base_url.unwrap_or(&data.binance_api_url),
                binance::RetryPolicy::default(),
            )
            .map_err(|e| setup(e.to_string()))?,
        ),
        "mercado_bitcoin" => Box::new(
            mercado_bitcoin::MercadoBitcoinClient::new(
                base_url.unwrap_or(&data.mercado_bitcoin_api_url),
                Default::default(),
            )
            .map_err(|e| setup(e.to_string()))?,
        ),
        "kucoin" => Box::new(
            kucoin::KucoinClient::new(base_url.unwrap_or(&data.kucoin_api_url), Default::default())
                .map_err(|e| setup(e.to_string()))?,
        ),
        other => return Err(setup(format!("orch speaks no exchange `{other}`"))),
    })
}

/// Fails naming each of `symbols` that `catalog` does not list or does not trade now: a
/// stream of an unknown symbol would be accepted and silent.
pub async fn check_listed(
    catalog: &dyn Catalog,
    exchange: &str,
    symbols: &[String],
) -> Result<(), ExchangeError> {
    let listed = catalog
        .instruments(symbols)
        .await
        .map_err(|e| ExchangeError {
            message: format!("reading {exchange}'s catalog: {}", e.message),
            ..e
        })?;
    let problems: Vec<String> = symbols
        .iter()
        .filter_map(|symbol| match listed.iter().find(|i| &i.symbol == symbol) {
            None => Some(format!("{exchange} lists no symbol `{symbol}`")),
            Some(i) if !i.trading => Some(format!("{exchange} does not trade `{symbol}` now")),
            Some(_) => None,
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ExchangeError {
            message: problems.join("; "),
            retryable: false,
        })
    }
}

/// An exchange's trade id as orch can use it: positive, with room to step past it (the
/// ingest loop asks for the trades after it); `None` for any other, which its parser reports
/// as malformed.
pub fn usable_id(id: i64) -> Option<i64> {
    (1..i64::MAX).contains(&id).then_some(id)
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
