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
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::client::KucoinClient;
use super::wire::MatchData;
use crate::exchange::live::{
    Blocked, CLOSE_TIMEOUT, CONNECT_TIMEOUT, LiveMessage, LiveTrades, ReadConnection,
};
use crate::exchange::{ExchangeError, TradeHistory};

/// Symbols in one `/market/match` topic: KuCoin's limit per subscription.
pub const SYMBOLS_PER_TOPIC: usize = 100;
/// Tokens last 24 hours and KuCoin drops connections then: renew a little before.
const RENEW_AFTER: Duration = Duration::from_secs(23 * 3600 + 50 * 60);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

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

    /// Sequences are shared with order-book events, so trades skip numbers: a jump proves
    /// nothing.
    fn consecutive_ids(&self) -> bool {
        false
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

    fn check_symbols<'a>(
        &'a self,
        symbols: &'a [String],
    ) -> BoxFuture<'a, Result<(), ExchangeError>> {
        Box::pin(async move {
            let listed = self.client.symbols().await.map_err(|e| ExchangeError {
                retryable: e.is_transient(),
                message: format!("reading KuCoin's symbols: {e}"),
            })?;
            let mut problems = Vec::new();
            for symbol in symbols {
                match listed.iter().find(|s| &s.symbol == symbol) {
                    None => problems.push(format!("KuCoin lists no symbol `{symbol}`")),
                    Some(s) if !s.enable_trading => {
                        problems.push(format!("KuCoin does not trade `{symbol}` now"))
                    }
                    Some(_) => {}
                }
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(ExchangeError {
                    retryable: false,
                    message: problems.join("; "),
                })
            }
        })
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
            let keepalive = Keepalive {
                every: Duration::from_millis(server.ping_interval.max(1_000)),
                within: Duration::from_millis(server.ping_timeout.max(1_000)),
            };
            let connect_id = self.next_id();
            let url = format!(
                "{}?token={}&connectId={connect_id}",
                server.endpoint.trim_end_matches('/'),
                bullet.token
            );
            // The token is a secret of sorts: errors name the server, not the URL.
            let endpoint = server.endpoint.clone();
            let opened = tokio::time::timeout(CONNECT_TIMEOUT, async {
                let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
                    .await
                    .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
                expect(&mut socket, "welcome").await?;
                let subscribe = json!({
                    "id": self.next_id().to_string(),
                    "type": "subscribe",
                    "topic": format!("/market/match:{}", symbols.join(",")),
                    "privateChannel": false,
                    "response": true,
                });
                socket
                    .send(Message::Text(subscribe.to_string().into()))
                    .await
                    .map_err(|e| format!("subscribing on {endpoint}: {e}"))?;
                expect(&mut socket, "ack").await?;
                Ok::<Socket, String>(socket)
            })
            .await
            .map_err(|_| format!("{endpoint}: no welcome and ack within {CONNECT_TIMEOUT:?}"))??;
            let first_ping = self.next_id();
            Ok(ReadConnection::spawn(move |outbox, closing| {
                read(opened, keepalive, silence, first_ping, outbox, closing)
            }))
        })
    }
}

/// KuCoin's keepalive, from the token's server.
#[derive(Debug, Clone, Copy)]
struct Keepalive {
    every: Duration,
    within: Duration,
}

/// Reads frames until one of type `kind`; an `error` frame or the end of the connection
/// fails.
async fn expect(socket: &mut Socket, kind: &str) -> Result<(), String> {
    while let Some(frame) = socket.next().await {
        let frame = frame.map_err(|e| format!("waiting for the {kind}: {e}"))?;
        let Message::Text(text) = frame else {
            continue;
        };
        let value: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
        match value.get("type").and_then(Value::as_str) {
            Some(found) if found == kind => return Ok(()),
            Some("error") => return Err(format!("KuCoin refused the connection: {text}")),
            _ => {}
        }
    }
    Err(format!("the connection closed before the {kind}"))
}

/// Reads the socket, pinging as KuCoin asks, until it ends or the consumer closes it.
async fn read(
    mut socket: Socket,
    keepalive: Keepalive,
    silence: Duration,
    mut ping_id: u64,
    outbox: crate::exchange::live::Outbox,
    mut closing: tokio::sync::oneshot::Receiver<()>,
) {
    let mut ping = tokio::time::interval(keepalive.every);
    ping.reset();
    // When the unanswered ping went.
    let mut awaiting_pong: Option<Instant> = None;
    let ended = loop {
        let pong_due = awaiting_pong.map(|sent| sent + keepalive.within);
        let next = tokio::select! {
            _ = &mut closing => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.close(None)).await;
                return;
            }
            _ = ping.tick() => {
                let message = json!({"id": ping_id.to_string(), "type": "ping"});
                ping_id += 1;
                if let Err(e) = socket.send(Message::Text(message.to_string().into())).await {
                    break format!("sending a ping: {e}");
                }
                awaiting_pong.get_or_insert_with(Instant::now);
                continue;
            }
            _ = tokio::time::sleep_until(pong_due.unwrap_or_else(Instant::now)), if pong_due.is_some() => {
                break format!("no pong within {:?}", keepalive.within);
            }
            next = tokio::time::timeout(silence, socket.next()) => next,
        };
        let message = match next {
            Err(_) => break format!("silent for {silence:?}"),
            Ok(None) => break "closed by the server".to_string(),
            Ok(Some(Err(e))) => break e.to_string(),
            Ok(Some(Ok(Message::Text(text)))) => {
                let message = parse(text.as_str());
                if message == Parsed::Pong {
                    awaiting_pong = None;
                }
                message.into_live()
            }
            Ok(Some(Ok(Message::Close(_)))) => break "closed by the server".to_string(),
            Ok(Some(Ok(Message::Binary(bytes)))) => LiveMessage::Malformed {
                text: String::from_utf8_lossy(&bytes).into_owned(),
                reason: "a binary frame".to_string(),
            },
            // Protocol pings are answered by tungstenite.
            Ok(Some(Ok(_))) => LiveMessage::Alive,
        };
        match outbox.pass(message) {
            Ok(()) => {}
            Err(Blocked::Full(reason)) => break reason,
            Err(Blocked::Closed) => return,
        }
    };
    outbox.end(ended).await;
}

/// What one text frame said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Live(LiveMessage),
    Pong,
}

impl Parsed {
    fn into_live(self) -> LiveMessage {
        match self {
            Parsed::Live(message) => message,
            Parsed::Pong => LiveMessage::Alive,
        }
    }
}

/// Sorts one text frame.
pub fn parse(text: &str) -> Parsed {
    let malformed = |reason: String| {
        Parsed::Live(LiveMessage::Malformed {
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
                    Some(trade) => Parsed::Live(LiveMessage::Trade {
                        symbol: wire.symbol,
                        trade,
                    }),
                    None => malformed(
                        "the sequence or time is no number, the side is neither buy nor sell, or price × size is out of range"
                            .to_string(),
                    ),
                },
                Err(e) => malformed(format!("not a match: {e}")),
            }
        }
        Some("pong") => Parsed::Pong,
        Some("welcome" | "ack" | "ping") => Parsed::Live(LiveMessage::Alive),
        Some("error") => Parsed::Live(LiveMessage::Reconnect(format!(
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
        let Parsed::Live(LiveMessage::Trade { symbol, trade }) = parse(text) else {
            panic!("a trade: {:?}", parse(text));
        };
        assert_eq!((symbol.as_str(), trade.id), ("BTC-USDT", 11067996711960577));
        assert_eq!(trade.quote_qty.to_string(), "202.5690000000000000");
        assert_eq!(parse(r#"{"id":"7","type":"pong"}"#), Parsed::Pong);
        assert_eq!(
            parse(r#"{"id":"c1","type":"welcome"}"#),
            Parsed::Live(LiveMessage::Alive)
        );
        assert!(matches!(
            parse(r#"{"type":"error","code":401,"data":"token is expired"}"#),
            Parsed::Live(LiveMessage::Reconnect(reason)) if reason.contains("token is expired")
        ));
        for bad in [
            "not json",
            r#"{"type":"message","topic":"/market/ticker:BTC-USDT","data":{}}"#,
            r#"{"type":"message","topic":"/market/match:BTC-USDT","data":{"symbol":"BTC-USDT"}}"#,
            r#"{"type":"message","topic":"/market/match:X-Y","data":{"symbol":"X-Y","sequence":"x1","price":"1","size":"1","side":"buy","time":"1","tradeId":"1","type":"match"}}"#,
        ] {
            assert!(
                matches!(parse(bad), Parsed::Live(LiveMessage::Malformed { ref text, .. }) if text == bad),
                "{bad}"
            );
        }
    }
}
