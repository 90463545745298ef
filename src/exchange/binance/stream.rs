//! Binance's websocket trade streams: one combined-stream connection for many symbols.
//!
//! The connection answers pings by itself (tungstenite queues the pong and sends it with the
//! next read), unwraps `{"stream":..,"data":..}` messages and sorts every text frame into a
//! [`StreamMessage`]: a trade, a `serverShutdown` notice, a control answer, or something
//! malformed, which is reported with its raw text rather than ending the stream.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::wire::StreamTrade;
use crate::exchange::Trade;

/// Binance's market streams; `BINANCE_WS_URL` overrides it (see `config::DataPlaces`).
pub const DEFAULT_BASE_URL: &str = "wss://stream.binance.com:9443";

/// Streams per connection, Binance's limit.
pub const MAX_STREAMS_PER_CONNECTION: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("cannot connect to {url}: no websocket handshake within {after:?}")]
    ConnectTimeout { url: String, after: Duration },
    #[error("websocket {url}: {source}")]
    Read {
        url: String,
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
}

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
    /// A ping or a pong: the connection is alive (tungstenite answers pings by itself).
    Heartbeat,
}

/// What a connection read on its own task passes on.
#[derive(Debug)]
pub enum Incoming {
    Message(StreamMessage),
    /// The connection is over: closed, failed or silent, and why.
    Ended(String),
}

/// Messages a connection read on its own task holds for its consumer at most.
const QUEUED_MESSAGES: usize = 200_000;
/// How long closing a connection politely may take before it is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection read on a task of its own, see [`TradeStream::read_on_own_task`].
pub struct ReadConnection {
    messages: mpsc::Receiver<Incoming>,
    close: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl ReadConnection {
    /// The next message, or why the connection ended.
    pub async fn next(&mut self) -> Incoming {
        self.messages
            .recv()
            .await
            .unwrap_or_else(|| Incoming::Ended("the connection's reader stopped".to_string()))
    }

    /// Closes the connection politely, as when renewing it or stopping.
    pub async fn close(mut self) {
        if let Some(close) = self.close.take() {
            let _ = close.send(());
        }
        // A dead peer must not hold up a stop or a renewal; dropping aborts the reader.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT * 2, &mut self.task).await;
    }
}

impl Drop for ReadConnection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An open combined-stream connection.
pub struct TradeStream {
    socket: Socket,
    url: String,
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

/// The longest a connection may take, TCP and TLS and websocket handshake together: a
/// server that accepts and never answers must not hold a stream `connecting` for good.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl TradeStream {
    pub async fn connect(base: &str, symbols: &[String]) -> Result<TradeStream, StreamError> {
        let url = combined_url(base, symbols);
        let connected = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        .map_err(|_| StreamError::ConnectTimeout {
            url: url.clone(),
            after: CONNECT_TIMEOUT,
        })?;
        let (socket, _) = connected.map_err(|e| StreamError::Connect {
            url: url.clone(),
            source: Box::new(e),
        })?;
        Ok(TradeStream { socket, url })
    }

    /// Reads the connection on a task of its own, so that frames are taken off the socket
    /// and pings answered while the consumer is busy (a long gap backfill): a socket left
    /// unread stops answering pings, and the exchange drops it. The connection ends when the
    /// server closes it, on an error, or after `silence` without a frame, pings included.
    pub fn read_on_own_task(mut self, silence: Duration) -> ReadConnection {
        let (sender, messages) = mpsc::channel(QUEUED_MESSAGES);
        let (close, mut closing) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let ended = loop {
                let next = tokio::select! {
                    _ = &mut closing => {
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.close()).await;
                        return;
                    }
                    next = tokio::time::timeout(silence, self.next()) => next,
                };
                let message = match next {
                    Err(_) => break format!("silent for {silence:?}"),
                    Ok(None) => break "closed by the server".to_string(),
                    Ok(Some(Err(e))) => break e.to_string(),
                    Ok(Some(Ok(message))) => message,
                };
                match sender.try_send(Incoming::Message(message)) {
                    Ok(()) => {}
                    // The consumer is far behind (a very long backfill): reading on would only
                    // grow the queue, while a reconnect catches up from the REST API.
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        break format!(
                            "{QUEUED_MESSAGES} messages wait to be taken; reconnecting to catch up from the REST API"
                        );
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            };
            let _ = sender.send(Incoming::Ended(ended)).await;
        });
        ReadConnection {
            messages,
            close: Some(close),
            task,
        }
    }

    /// The next message; `None` once the server closed the connection.
    pub async fn next(&mut self) -> Option<Result<StreamMessage, StreamError>> {
        loop {
            let frame = match self.socket.next().await? {
                Ok(frame) => frame,
                Err(e) => {
                    return Some(Err(StreamError::Read {
                        url: self.url.clone(),
                        source: Box::new(e),
                    }));
                }
            };
            match frame {
                Message::Text(text) => return Some(Ok(parse(text.as_str()))),
                Message::Binary(bytes) => {
                    return Some(Ok(StreamMessage::Malformed {
                        text: String::from_utf8_lossy(&bytes).into_owned(),
                        reason: "a binary frame".to_string(),
                    }));
                }
                Message::Close(_) => return None,
                // Pings are answered by tungstenite.
                Message::Ping(_) | Message::Pong(_) => return Some(Ok(StreamMessage::Heartbeat)),
                Message::Frame(_) => {}
            }
        }
    }

    /// Closes the connection politely, as when renewing it.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
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
                None => malformed("price × quantity is out of range".to_string()),
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
        wire.id,
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
