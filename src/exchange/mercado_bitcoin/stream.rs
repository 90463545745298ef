//! Mercado Bitcoin's public websocket trades, gaps filled from REST by `since=<tid>`.
//!
//! One socket serves every market. Markets are spelt quote then base there (`BRLBTC` for
//! `BTC-BRL`), subscribed one frame at a time, `{"type":"subscribe","subscription":
//! {"name":"trade","id":"BRLBTC"}}`, each awaited: MB's acks carry no `type` and its errors
//! never name the subscription they refuse. The socket sends no sequence, no snapshot and
//! nothing at all for a quiet market, so orch sends MB's JSON `ping` every 15 s (the link dead
//! when its `pong` takes 10 s) and, after every connection, catches each market up from its
//! last kept `tid` through REST: trades that came over the socket before its subscriptions
//! were all acknowledged are fetched that way too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use super::client::MercadoBitcoinClient;
use super::wire::{WireTrade, ws_name};
use crate::exchange::live::{LiveMessage, LiveTrades, ReadConnection};
use crate::exchange::websocket::{self, CONNECT_TIMEOUT, Frame, JsonPings, Socket};
use crate::exchange::{Catalog, TradeHistory};

/// Mercado Bitcoin's public websocket; `MERCADO_BITCOIN_WS_URL` overrides it.
pub const DEFAULT_WS_URL: &str = "wss://ws.mercadobitcoin.net/ws";
/// Subscriptions per connection: MB documents no limit (401 were seen to work).
const SYMBOLS_PER_CONNECTION: usize = 100;
/// How often the socket's trades are checked against REST `since=`: MB's socket has no
/// sequence, so a lost frame shows only there. One request per market each time, at MB's one
/// a second: past about a dozen markets, a round of checks takes longer than the interval,
/// and the checks simply follow each other.
const RECHECK_EVERY: Duration = Duration::from_secs(15);
/// MB documents no cut; a daily renewal keeps a connection from aging unnoticed.
const RENEW_AFTER: Duration = Duration::from_secs(24 * 3600);
const PINGS: JsonPings = JsonPings {
    every: Duration::from_secs(15),
    within: Duration::from_secs(10),
    ping,
};

fn ping(_: u64) -> String {
    json!({"type": "ping"}).to_string()
}

/// Mercado Bitcoin's live trades.
pub struct MercadoBitcoinLive {
    pub client: MercadoBitcoinClient,
    pub ws_url: String,
}

impl LiveTrades for MercadoBitcoinLive {
    fn exchange(&self) -> &'static str {
        "mercado_bitcoin"
    }

    fn recheck_every(&self) -> Option<Duration> {
        Some(RECHECK_EVERY)
    }

    fn symbols_per_connection(&self) -> usize {
        SYMBOLS_PER_CONNECTION
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
            // The socket's names back to the markets' (`BRLBTC` to `BTC-BRL`).
            let mut markets = HashMap::new();
            for symbol in symbols {
                let name =
                    ws_name(symbol).ok_or_else(|| format!("`{symbol}` is not BASE-QUOTE"))?;
                markets.insert(name, symbol.clone());
            }
            let mut socket = websocket::connect(&self.ws_url, &self.ws_url).await?;
            tokio::time::timeout(CONNECT_TIMEOUT, async {
                for name in symbols.iter().filter_map(|s| ws_name(s)) {
                    let subscribe =
                        json!({"type": "subscribe", "subscription": {"name": "trade", "id": name}});
                    websocket::send(&mut socket, subscribe.to_string()).await?;
                    acknowledged(&mut socket, &name).await?;
                }
                Ok::<(), String>(())
            })
            .await
            .map_err(|_| {
                format!(
                    "{}: subscriptions not acknowledged within {CONNECT_TIMEOUT:?}",
                    self.ws_url
                )
            })??;
            let markets = Arc::new(markets);
            Ok(websocket::read_on_own_task(
                socket,
                Some(PINGS),
                silence,
                move |text| parse(text, &markets),
            ))
        })
    }
}

/// Waits for the acknowledgement of the subscription to `name`; MB's error frames fail it.
/// Other frames (trades of markets subscribed before) are passed over: the catch-up after
/// connecting fetches them from REST.
async fn acknowledged(socket: &mut Socket, name: &str) -> Result<(), String> {
    websocket::wait_for(socket, &format!("the subscription to {name}"), |text| {
        let value: Value = serde_json::from_str(text).unwrap_or_default();
        match value.get("type").and_then(Value::as_str) {
            None => Ok(value.get("id").and_then(Value::as_str) == Some(name)),
            Some("error") => Err(format!(
                "Mercado Bitcoin refused the subscription to {name}: {text}"
            )),
            _ => Ok(false),
        }
    })
    .await
}

/// Sorts one text frame; `markets` maps the socket's names to the markets'.
pub fn parse(text: &str, markets: &HashMap<String, String>) -> Frame {
    let malformed = |reason: String| {
        Frame::Live(LiveMessage::Malformed {
            text: text.to_string(),
            reason,
        })
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => return malformed(format!("not JSON: {e}")),
    };
    match value.get("type").and_then(Value::as_str) {
        Some("trade") => {
            let name = value.get("id").and_then(Value::as_str).unwrap_or("");
            let Some(symbol) = markets.get(name) else {
                return malformed(format!("a trade of `{name}`, not subscribed"));
            };
            let Some(data) = value.get("data") else {
                return malformed("a trade without `data`".to_string());
            };
            match serde_json::from_value::<WireTrade>(data.clone()) {
                Ok(wire) => match wire.trade() {
                    Some(trade) => Frame::Live(LiveMessage::Trade {
                        symbol: symbol.clone(),
                        trade,
                    }),
                    None => malformed(
                        "the tid is not positive, the side is neither buy nor sell, or price × amount is out of range"
                            .to_string(),
                    ),
                },
                Err(e) => malformed(format!("not a trade: {e}")),
            }
        }
        Some("pong") => Frame::Pong,
        Some("error") => Frame::Live(LiveMessage::Reconnect(format!(
            "Mercado Bitcoin sent an error: {text}"
        ))),
        // Acknowledgements carry no type.
        None if value.get("name").is_some() => Frame::Live(LiveMessage::Alive),
        Some(other) => malformed(format!("unexpected type `{other}`")),
        None => malformed("no `type`".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn markets() -> HashMap<String, String> {
        HashMap::from([("BRLBTC".to_string(), "BTC-BRL".to_string())])
    }

    #[test]
    fn trades_are_named_by_their_market_with_seconds_times() {
        let text = r#"{"type":"trade","id":"BRLBTC","ts":1729843222921000000,"data":{"tid":9001,"date":1729843222,"type":"sell","price":"520000.5","amount":0.0021}}"#;
        let Frame::Live(LiveMessage::Trade { symbol, trade }) = parse(text, &markets()) else {
            panic!("a trade: {:?}", parse(text, &markets()));
        };
        assert_eq!((symbol.as_str(), trade.id), ("BTC-BRL", 9001));
        assert_eq!(trade.time_ms, 1_729_843_222_000);
        assert_eq!(trade.qty.to_string(), "0.00210000");
        assert_eq!(trade.quote_qty.to_string(), "1092.0010500000000000");
        assert!(trade.is_buyer_maker, "the taker sold");
    }

    #[test]
    fn pongs_acks_errors_and_garbage_are_told_apart() {
        assert_eq!(parse(r#"{"type":"pong"}"#, &markets()), Frame::Pong);
        assert_eq!(
            parse(r#"{"id":"BRLBTC","name":"trade"}"#, &markets()),
            Frame::Live(LiveMessage::Alive)
        );
        assert!(matches!(
            parse(
                r#"{"type":"error","message":"already subscribed"}"#,
                &markets()
            ),
            Frame::Live(LiveMessage::Reconnect(_))
        ));
        for bad in [
            "not json",
            r#"{"type":"trade","id":"BRLETH","data":{"tid":1,"date":1,"type":"buy","price":"1","amount":"1"}}"#,
            r#"{"type":"trade","id":"BRLBTC","data":{"tid":1,"date":1,"type":"hold","price":"1","amount":"1"}}"#,
            r#"{"type":"ticker","id":"BRLBTC","data":{}}"#,
        ] {
            assert!(
                matches!(parse(bad, &markets()), Frame::Live(LiveMessage::Malformed { ref text, .. }) if text == bad),
                "{bad}"
            );
        }
    }
}
