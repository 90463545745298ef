//! KuCoin's public websocket trades: a token first, then the `/market/match` topic.
//!
//! Each connection asks `bullet-public` for a fresh token and the server to use it on (the
//! address may change, so it is never hard-coded), waits for the `welcome`, subscribes its
//! symbols in one topic and waits for the `ack`. KuCoin expects the client's JSON `ping`
//! every `pingInterval` and counts the link dead without one; orch likewise ends the
//! connection when a `pong` does not come within `pingTimeout`. Tokens last 24 hours and
//! connections are cut then: every reconnect, and the renewal a little before, takes a new
//! token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use super::client::KucoinClient;
use super::wire::MatchData;
use crate::exchange::live::{LiveMessage, LiveTrades, ReadConnection};
use crate::exchange::websocket::{self, CONNECT_TIMEOUT, Frame, JsonPings, Socket};
use crate::exchange::{Catalog, TradeHistory};

/// Symbols in one `/market/match` topic: KuCoin's limit per subscription.
pub const SYMBOLS_PER_TOPIC: usize = 100;
/// How often the socket's trades are checked against the last 100 over REST: a frame the
/// server dropped (it drops them for a client that reads slowly) is found and taken then, as
/// long as it is still among the 100.
const RECHECK_EVERY: Duration = Duration::from_secs(5);
/// Tokens last 24 hours and KuCoin drops connections then: renew a little before.
const RENEW_AFTER: Duration = Duration::from_secs(23 * 3600 + 50 * 60);

/// KuCoin's live trades, bridged after each reconnect by its last 100 trades over REST.
pub struct KucoinLive {
    client: KucoinClient,
    /// Numbers the `connectId`s and the client's messages.
    next_id: AtomicU64,
}

impl KucoinLive {
    pub fn new(client: KucoinClient) -> KucoinLive {
        KucoinLive {
            client,
            next_id: AtomicU64::new(1),
        }
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

impl LiveTrades for KucoinLive {
    fn exchange(&self) -> &'static str {
        "kucoin"
    }

    fn recheck_every(&self) -> Option<Duration> {
        Some(RECHECK_EVERY)
    }

    fn symbols_per_connection(&self) -> usize {
        SYMBOLS_PER_TOPIC
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
            let bullet = self
                .client
                .bullet()
                .await
                .map_err(|e| format!("asking for a websocket token: {e}"))?;
            let server = bullet
                .instance_servers
                .first()
                .ok_or("KuCoin's token came with no server to connect to")?;
            let pings = JsonPings {
                every: Duration::from_millis(server.ping_interval.max(1_000)),
                within: Duration::from_millis(server.ping_timeout.max(1_000)),
                ping,
            };
            // The token and id as query values, encoded whatever KuCoin sends.
            let mut url = url::Url::parse(&server.endpoint)
                .map_err(|e| format!("KuCoin's websocket address `{}`: {e}", server.endpoint))?;
            url.query_pairs_mut()
                .append_pair("token", &bullet.token)
                .append_pair("connectId", &self.next_id().to_string());
            // The token is a secret of sorts: errors name the server, not the URL.
            let endpoint = server.endpoint.as_str();
            let subscribe = json!({
                "id": self.next_id().to_string(),
                "type": "subscribe",
                "topic": format!("/market/match:{}", symbols.join(",")),
                "privateChannel": false,
                "response": true,
            });
            let mut socket = websocket::connect(url.as_str(), endpoint).await?;
            tokio::time::timeout(CONNECT_TIMEOUT, async {
                expect(&mut socket, "welcome").await?;
                websocket::send(&mut socket, subscribe.to_string()).await?;
                expect(&mut socket, "ack").await
            })
            .await
            .map_err(|_| format!("{endpoint}: no welcome and ack within {CONNECT_TIMEOUT:?}"))??;
            Ok(websocket::read_on_own_task(
                socket,
                Some(pings),
                silence,
                parse,
            ))
        })
    }
}

/// KuCoin's ping: `{"id": "7", "type": "ping"}`.
fn ping(id: u64) -> String {
    json!({"id": id.to_string(), "type": "ping"}).to_string()
}

/// Waits for the frame of type `kind`; an `error` frame refuses the connection.
async fn expect(socket: &mut Socket, kind: &str) -> Result<(), String> {
    websocket::wait_for(socket, &format!("the {kind}"), |text| {
        let value: Value = serde_json::from_str(text).unwrap_or_default();
        match value.get("type").and_then(Value::as_str) {
            Some(found) if found == kind => Ok(true),
            Some("error") => Err(format!("KuCoin refused the connection: {text}")),
            _ => Ok(false),
        }
    })
    .await
}

/// Sorts one text frame.
pub fn parse(text: &str) -> Frame {
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
        Some("message") => {
            let topic = value.get("topic").and_then(Value::as_str).unwrap_or("");
            if !topic.starts_with("/market/match:") {
                return malformed(format!("a message of topic `{topic}`"));
            }
            let Some(data) = value.get("data") else {
                return malformed("a message without `data`".to_string());
            };
            match serde_json::from_value::<MatchData>(data.clone()) {
                Ok(wire) => match wire.trade() {
                    Some(trade) => Frame::Live(LiveMessage::Trade {
                        symbol: wire.symbol,
                        trade,
                    }),
                    None => malformed(
                        "the sequence or time is no positive number, the side is neither buy nor sell, or price × size is out of range"
                            .to_string(),
                    ),
                },
                Err(e) => malformed(format!("not a match: {e}")),
            }
        }
        Some("pong") => Frame::Pong,
        Some("welcome" | "ack" | "ping") => Frame::Live(LiveMessage::Alive),
        Some("error") => Frame::Live(LiveMessage::Reconnect(format!(
            "KuCoin sent an error: {text}"
        ))),
        Some(other) => malformed(format!("unexpected type `{other}`")),
        None => malformed("no `type`".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_pongs_errors_and_garbage_are_told_apart() {
        let text = r#"{"topic":"/market/match:BTC-USDT","type":"message","subject":"trade.l3match","data":{"makerOrderId":"a","price":"67523","sequence":"11067996711960577","side":"buy","size":"0.003","symbol":"BTC-USDT","takerOrderId":"b","time":"1729843222921000000","tradeId":"11067996711960577","type":"match"}}"#;
        let Frame::Live(LiveMessage::Trade { symbol, trade }) = parse(text) else {
            panic!("a trade: {:?}", parse(text));
        };
        assert_eq!((symbol.as_str(), trade.id), ("BTC-USDT", 11067996711960577));
        assert_eq!(trade.quote_qty.to_string(), "202.5690000000000000");
        assert_eq!(parse(r#"{"id":"7","type":"pong"}"#), Frame::Pong);
        assert_eq!(
            parse(r#"{"id":"c1","type":"welcome"}"#),
            Frame::Live(LiveMessage::Alive)
        );
        assert!(matches!(
            parse(r#"{"type":"error","code":401,"data":"token is expired"}"#),
            Frame::Live(LiveMessage::Reconnect(reason)) if reason.contains("token is expired")
        ));
        for bad in [
            "not json",
            r#"{"type":"message","topic":"/market/ticker:BTC-USDT","data":{}}"#,
            r#"{"type":"message","topic":"/market/match:BTC-USDT","data":{"symbol":"BTC-USDT"}}"#,
            r#"{"type":"message","topic":"/market/match:X-Y","data":{"symbol":"X-Y","sequence":"x1","price":"1","size":"1","side":"buy","time":"1","tradeId":"1","type":"match"}}"#,
        ] {
            assert!(
                matches!(parse(bad), Frame::Live(LiveMessage::Malformed { ref text, .. }) if text == bad),
                "{bad}"
            );
        }
    }
}
