//! Mercado Bitcoin (Brazil): the public REST API v4's trades and symbols, the public
//! websocket's trades, and the JSON shapes the simulator serves.
//!
//! Facts the code relies on (MB's API v4 reference; see also the simulator): markets are
//! `BASE-QUOTE` (`BTC-BRL`, case-sensitive); `GET /{symbol}/trades?since=<tid>&limit=1000`
//! pages trades by id, with times in whole seconds and decimal strings; whether `since` is
//! inclusive, and the order of a page, are not documented, so the client assumes neither;
//! every public endpoint allows one request a second; the hosts sit behind Cloudflare, whose
//! blocks are HTML pages.

mod client;
pub mod stream;
pub mod wire;

pub use client::{MAX_PAGE, MercadoBitcoinClient, MercadoBitcoinError, Policy};
pub use stream::MercadoBitcoinLive;
