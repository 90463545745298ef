//! Binance's websocket trade streams: one combined-stream connection for many symbols.
//!
//! The connection answers pings by itself (tungstenite queues the pong and sends it with the
//! next read), unwraps `{"stream":..,"data":..}` messages and sorts every text frame into a
//! [`StreamMessage`]: a trade, a `serverShutdown` notice, a control answer, or something
//! malformed, which is reported with its raw text rather than ending the stream.

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;

use super::BinanceClient;
use super::wire::StreamTrade;
use crate::exchange::live::{LiveMessage, LiveTrades, ReadConnection};
use crate::exchange::websocket::{self, Frame};
use crate::exchange::{Catalog, Trade, TradeHistory};

/// Binance's market streams; `BINANCE_WS_URL` overrides it (see `config::DataPlaces`).
pub const DEFAULT_BASE_URL: &str = "wss://stream.binance.com:9443";

/// Streams per connection, Binance's limit.
pub const MAX_STREAMS_PER_CONNECTION: usize = 1024;

/// What one text frame said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamMessage {
    Trade {
        symbol: String,
        trade: Trade,
        /// When Binance sent the event, ms.
        event_time: i64,
    },
    /// `{"e":"serverShutdown"}`: the server is going away; reconnect now.
    ServerShutdown,
    /// An answer to a control message, such as the `{"result":null,"id":1}` of a subscription.
    ControlAnswer,
    /// A frame that is not any of the above, kept whole for the log.
    Malformed { text: String, reason: String },
}

/// The combined-stream URL for the trade streams of `symbols` under `base` (such as
/// `wss://stream.binance.com:9443`).
pub fn combined_url(base: &str, symbols: &[String]) -> String {
    let streams: Vec<String> = symbols
        .iter()
        .map(|s| format!("{}@trade", s.to_lowercase()))
        .collect();
    format!(
        "{}/stream?streams={}",
        base.trim_end_matches('/'),
        streams.join("/")
    )
}

impl StreamMessage {
    /// The message in every exchange's terms.
    fn into_live(self) -> LiveMessage {
        match self {
            StreamMessage::Trade { symbol, trade, .. } => LiveMessage::Trade { symbol, trade },
            StreamMessage::ServerShutdown => {
                LiveMessage::Reconnect("the server announced a shutdown".to_string())
            }
            StreamMessage::ControlAnswer => LiveMessage::Alive,
            StreamMessage::Malformed { text, reason } => LiveMessage::Malformed { text, reason },
        }
    }
}

/// Binance's live trades: combined `<symbol>@trade` streams, gaps filled from
/// `historicalTrades`.
pub struct BinanceLive {
    pub client: BinanceClient,
    /// The streams' base, such as `wss://stream.binance.com:9443`.
    pub ws_url: String,
}

/// Binance cuts connections after 24 hours; renew a little before.
const RENEW_AFTER: Duration = Duration::from_secs(23 * 3600 + 50 * 60);

impl LiveTrades for BinanceLive {
    fn exchange(&self) -> &'static str {
        "binance"
    }

    fn recheck_every(&self) -> Option<Duration> {
        None
    }

    fn symbols_per_connection(&self) -> usize {
        MAX_STREAMS_PER_CONNECTION
    }

    fn renew_after(&self) -> Duration {
        RENEW_AFTER
    }

    fn history(&self) -> &dyn TradeHistory {
        &self.client
    }

    fn catalog(&self) -> &dyn Catalog {
        &self.client
    }

    fn connect<'a>(
        &'a self,
        symbols: &'a [String],
        silence: Duration,
    ) -> BoxFuture<'a, Result<ReadConnection, String>> {
        Box::pin(async move {
            let url = combined_url(&self.ws_url, symbols);
            let socket = websocket::connect(&url, &url).await?;
            // Binance pings; tungstenite answers.
            Ok(websocket::read_on_own_task(socket, None, silence, |text| {
                Frame::Live(parse(text).into_live())
            }))
        })
    }
}

/// Sorts one text frame.
pub fn parse(text: &str) -> StreamMessage {
    let malformed = |reason: String| StreamMessage::Malformed {
        text: text.to_string(),
        reason,
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => return malformed(format!("not JSON: {e}")),
    };
    // Combined streams wrap each event; raw streams do not.
    let event = match value.get("data") {
        Some(data) if value.get("stream").is_some() => data,
        _ => &value,
    };
    if event.get("result").is_some() && event.get("id").is_some() {
        return StreamMessage::ControlAnswer;
    }
    match event.get("e").and_then(Value::as_str) {
        Some("trade") => match serde_json::from_value::<StreamTrade>(event.clone()) {
            Ok(wire) => match trade_of(&wire) {
                Some(trade) => StreamMessage::Trade {
                    symbol: wire.symbol,
                    trade,
                    event_time: wire.event_time,
                },
                None => malformed(
                    "the id is not positive, or price × quantity is out of range".to_string(),
                ),
            },
            Err(e) => malformed(format!("not a trade event: {e}")),
        },
        Some("serverShutdown") => StreamMessage::ServerShutdown,
        Some(other) => malformed(format!("unexpected event `{other}`")),
        None => malformed("no event type `e`".to_string()),
    }
}

/// The trade of an event; the stream sends no quote quantity, and [`Trade::new`] computes it
/// as the REST path does.
fn trade_of(wire: &StreamTrade) -> Option<Trade> {
    Trade::new(
        crate::exchange::usable_id(wire.id)?,
        wire.price,
        wire.qty,
        wire.trade_time,
        wire.is_buyer_maker,
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_trade_events_parse_without_order_ids() {
        let text = r#"{"stream":"bnbbtc@trade","data":{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.00100000","q":"100.00000000","T":1672515782134,"m":true,"M":true}}"#;
        let StreamMessage::Trade {
            symbol,
            trade,
            event_time,
        } = parse(text)
        else {
            panic!("a trade: {:?}", parse(text));
        };
        assert_eq!(
            (symbol.as_str(), trade.id, event_time),
            ("BNBBTC", 12345, 1672515782136)
        );
        assert_eq!(trade.price.to_string(), "0.00100000");
        assert_eq!(trade.quote_qty.to_string(), "0.1000000000000000");
        assert_eq!(trade.time_ms, 1672515782134);
        assert!(trade.is_buyer_maker);
    }

    #[test]
    fn control_answers_shutdowns_and_garbage_are_told_apart() {
        assert_eq!(
            parse(r#"{"result":null,"id":1}"#),
            StreamMessage::ControlAnswer
        );
        assert_eq!(
            parse(r#"{"e":"serverShutdown","E":1}"#),
            StreamMessage::ServerShutdown
        );
        for bad in [
            "not json",
            r#"{"e":"aggTrade","s":"BTCUSDT"}"#,
            r#"{"e":"trade","s":"BTCUSDT","t":1}"#,
            r#"{"stream":"x","data":{"e":"trade","E":1,"s":"X","t":1,"p":"1.123456789","q":"1","T":1,"m":false}}"#,
        ] {
            assert!(
                matches!(parse(bad), StreamMessage::Malformed { ref text, .. } if text == bad),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_url_names_every_symbol_in_lower_case() {
        let symbols = vec!["BTCUSDT".to_string(), "AAVEUSDT".to_string()];
        assert_eq!(
            combined_url("ws://127.0.0.1:1/", &symbols),
            "ws://127.0.0.1:1/stream?streams=btcusdt@trade/aaveusdt@trade"
        );
    }
}
