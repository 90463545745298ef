//! Binance spot: the REST client, the websocket trade streams and the API's JSON shapes.
//!
//! Facts the code relies on (Binance's spot API docs): `historicalTrades` with `fromId` returns
//! up to 1000 trades with ids `>= fromId`, ascending; trade ids are per symbol and strictly
//! increasing; prices and quantities are decimal strings; each request costs weight against
//! 6000 per minute and IP.

mod client;
pub mod stream;
pub mod wire;

pub use client::{BinanceClient, BinanceError, MAX_PAGE, RetryPolicy};
