//! KuCoin spot: the REST client (catalog, websocket tokens, the last 100 trades), the
//! websocket trade stream and the API's JSON shapes.
//!
//! Facts the code relies on (KuCoin's docs, see the reference notes): symbols are
//! `BASE-QUOTE`; every answer is an envelope whose `code` must be `200000`, even at HTTP 200;
//! REST keeps only a symbol's last 100 trades, so only the websocket can be gapless and REST
//! merely bridges a short outage; trades are keyed by their per-symbol `sequence`, which
//! increases but skips numbers; times are nanoseconds.

mod client;
pub mod stream;
pub mod wire;

pub use client::{HISTORY_LENGTH, KucoinClient, KucoinError, Policy};
pub use stream::KucoinLive;
