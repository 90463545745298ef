//! The simulator's websocket market streams, as Binance serves them.
//!
//! - raw: `/ws/<symbol>@trade` sends bare trade events; `/ws` starts with no stream;
//! - combined: `/stream?streams=btcusdt@trade/aaveusdt@trade` wraps each event as
//!   `{"stream":..,"data":..}`;
//! - `SUBSCRIBE`, `UNSUBSCRIBE` and `LIST_SUBSCRIPTIONS` control messages, answered with their id;
//! - a ping every 20 s and a cut when no pong came for a minute (`--ping-every`,
//!   `--pong-within`).
//!
//! A stream name for an unknown symbol is accepted and stays silent, as on Binance. Every
//! connection follows one broadcast of [`StreamEvent`]s, which also carries the faults tests
//! inject: a dropped connection, a `serverShutdown` event, a ping now, or any raw text.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::Shared;
use crate::exchange::Trade;
use crate::exchange::binance::wire::{Combined, StreamTrade};

/// What every open connection hears.
#[derive(Debug, Clone)]
pub(crate) enum StreamEvent {
    Trades {
        symbol: String,
        trades: Arc<[Trade]>,
    },
    /// Close every connection at once, without a close frame, as a network cut does.
    Drop,
    /// Send `{"e":"serverShutdown","E":...}`.
    ServerShutdown,
    /// Send a ping now.
    Ping,
    /// Send this text frame as it is.
    Raw(String),
    /// KuCoin's tokens given so far expired: cut the connections using them.
    ExpireTokens,
}

/// A fault applied to the open stream connections at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StreamFault {
    Drop,
    ServerShutdown,
    Ping,
    Raw {
        text: String,
    },
    /// The next `count` trades of `symbol` (of every symbol when absent) are kept for REST but
    /// never sent on a stream.
    SkipIds {
        symbol: Option<String>,
        count: u64,
    },
    /// Every KuCoin token given so far expires, and the connections using them are cut.
    ExpireTokens,
}

/// Stream counters for `GET /_sim/stats`.
#[derive(Debug, Default, Clone, serde::Serialize, Deserialize)]
pub struct StreamStats {
    pub connections_opened: u64,
    pub connections_open: u64,
    pub trades_sent: u64,
    pub trades_skipped: u64,
    /// Pongs from Binance clients, pings from KuCoin clients: keepalives received.
    pub pongs: u64,
    /// KuCoin websocket tokens given.
    pub tokens_issued: u64,
}

/// `/ws/{stream}`: one raw stream.
pub(crate) async fn raw_one(
    State(shared): State<Shared>,
    Path(stream): Path<String>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let streams = BTreeSet::from([stream]);
    upgrade.on_upgrade(move |socket| serve(shared, socket, streams, false))
}

/// `/ws`: a raw connection that subscribes later.
pub(crate) async fn raw_none(State(shared): State<Shared>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| serve(shared, socket, BTreeSet::new(), false))
}

/// `/stream?streams=a@trade/b@trade`.
pub(crate) async fn combined(
    State(shared): State<Shared>,
    Query(params): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let streams = params
        .get("streams")
        .map(|list| {
            list.split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    upgrade.on_upgrade(move |socket| serve(shared, socket, streams, true))
}

/// Why a connection ended, for the log.
enum End {
    ClientClosed,
    Dropped,
    NoPong,
    SendFailed,
}

async fn serve(shared: Shared, mut socket: WebSocket, streams: BTreeSet<String>, combined: bool) {
    let mut events = {
        let mut state = shared.lock();
        state.stream_stats.connections_opened += 1;
        state.stream_stats.connections_open += 1;
        state.streams.subscribe()
    };
    let mut connection = Connection {
        shared: shared.clone(),
        streams,
        combined,
    };
    let end = connection.run(&mut socket, &mut events).await;
    shared.lock().stream_stats.connections_open -= 1;
    let reason = match end {
        End::ClientClosed => "closed by the client",
        End::SendFailed => "send failed",
        End::Dropped => "dropped on request",
        End::NoPong => {
            let _ = socket.send(Message::Close(None)).await;
            "no pong in time"
        }
    };
    tracing::debug!(reason, "simulator stream connection ended");
}

struct Connection {
    shared: Shared,
    streams: BTreeSet<String>,
    combined: bool,
}

impl Connection {
    async fn run(
        &mut self,
        socket: &mut WebSocket,
        events: &mut broadcast::Receiver<StreamEvent>,
    ) -> End {
        let keepalive = self.shared.lock().keepalive;
        let mut ping = tokio::time::interval(keepalive.ping_every);
        ping.reset();
        let mut last_pong = tokio::time::Instant::now();
        loop {
            tokio::select! {
                event = events.recv() => {
                    let frames = match event {
                        Ok(StreamEvent::Trades { symbol, trades }) => self.trade_frames(&symbol, &trades),
                        Ok(StreamEvent::Drop) => return End::Dropped,
                        Ok(StreamEvent::ServerShutdown) => vec![Message::Text(
                            json!({"e": "serverShutdown", "E": now_ms()}).to_string().into(),
                        )],
                        Ok(StreamEvent::Ping) => vec![Message::Ping(now_ms().to_string().into())],
                        Ok(StreamEvent::Raw(text)) => vec![Message::Text(text.into())],
                        Ok(StreamEvent::ExpireTokens) => Vec::new(),
                        // A slow reader misses events, as a slow Binance consumer would.
                        Err(broadcast::error::RecvError::Lagged(_)) => Vec::new(),
                        Err(broadcast::error::RecvError::Closed) => return End::Dropped,
                    };
                    for frame in frames {
                        if socket.send(frame).await.is_err() {
                            return End::SendFailed;
                        }
                    }
                }
                _ = ping.tick() => {
                    if last_pong.elapsed() > keepalive.pong_within {
                        return End::NoPong;
                    }
                    if socket.send(Message::Ping(now_ms().to_string().into())).await.is_err() {
                        return End::SendFailed;
                    }
                }
                message = socket.recv() => match message {
                    Some(Ok(Message::Pong(_))) => {
                        last_pong = tokio::time::Instant::now();
                        self.shared.lock().stream_stats.pongs += 1;
                    }
                    Some(Ok(Message::Text(text))) => {
                        let answer = self.control(text.as_str());
                        if socket.send(Message::Text(answer.to_string().into())).await.is_err() {
                            return End::SendFailed;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return End::ClientClosed,
                    Some(Ok(_)) => {}
                },
            }
        }
    }

    /// The frames for new trades of `symbol`, if this connection follows its trade stream.
    fn trade_frames(&self, symbol: &str, trades: &[Trade]) -> Vec<Message> {
        let stream = format!("{}@trade", symbol.to_lowercase());
        if !self.streams.contains(&stream) {
            return Vec::new();
        }
        let now = now_ms();
        let frames: Vec<Message> = trades
            .iter()
            .map(|trade| {
                let event = StreamTrade::new(symbol, trade, now);
                let text = if self.combined {
                    serde_json::to_string(&Combined {
                        stream: stream.clone(),
                        data: event,
                    })
                } else {
                    serde_json::to_string(&event)
                };
                Message::Text(text.unwrap_or_default().into())
            })
            .collect();
        self.shared.lock().stream_stats.trades_sent += frames.len() as u64;
        frames
    }

    /// Answers a control message.
    fn control(&mut self, text: &str) -> Value {
        #[derive(Deserialize)]
        struct Request {
            method: String,
            #[serde(default)]
            params: Vec<String>,
            id: Value,
        }
        let request: Request = match serde_json::from_str(text) {
            Ok(request) => request,
            Err(e) => {
                return json!({"error": {"code": 3, "msg": format!("Invalid JSON: {e}")}, "id": null});
            }
        };
        match request.method.as_str() {
            "SUBSCRIBE" => {
                self.streams.extend(request.params);
                json!({"result": null, "id": request.id})
            }
            "UNSUBSCRIBE" => {
                for stream in &request.params {
                    self.streams.remove(stream);
                }
                json!({"result": null, "id": request.id})
            }
            "LIST_SUBSCRIPTIONS" => json!({"result": self.streams, "id": request.id}),
            other => json!({
                "error": {"code": 2, "msg": format!("Invalid request: unknown method `{other}`")},
                "id": request.id,
            }),
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Frame;

    use super::*;
    use crate::simulator::{Simulator, SimulatorOptions};

    type Client = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    async fn simulator() -> Simulator {
        Simulator::start(&SimulatorOptions {
            port: 0,
            symbols: vec!["BTCUSDT".to_string(), "STXUSDT".to_string()],
            rate: 0.0,
            seed: 3,
            replay: Vec::new(),
            weight_limit: Some(crate::simulator::BINANCE_WEIGHT_LIMIT),
            keepalive: crate::simulator::Keepalive::BINANCE,
        })
        .await
        .expect("simulator starts")
    }

    async fn connect(sim: &Simulator, path: &str) -> Client {
        let url = format!("ws://{}{path}", sim.addr);
        tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("websocket connects")
            .0
    }

    async fn control(sim: &Simulator, path: &str, body: Value) -> Value {
        reqwest::Client::new()
            .post(format!("{}{path}", sim.url()))
            .json(&body)
            .send()
            .await
            .expect("control request")
            .json()
            .await
            .expect("control answer")
    }

    /// The next text frame, answering pings on the way; `None` when the server closed.
    async fn next_text(client: &mut Client) -> Option<String> {
        let read = async {
            while let Some(frame) = client.next().await {
                match frame {
                    Ok(Frame::Text(text)) => return Some(text.to_string()),
                    Ok(Frame::Close(_)) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
            None
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("a frame within 10 s")
    }

    async fn add(sim: &Simulator, symbol: &str, count: u64) -> (i64, i64) {
        let answer = control(
            sim,
            "/_sim/trades",
            json!({"symbol": symbol, "count": count}),
        )
        .await;
        (
            answer["first_id"].as_i64().expect("first id"),
            answer["last_id"].as_i64().expect("last id"),
        )
    }

    /// Waits until the simulator's stream counters satisfy `done`; returns them.
    async fn stats_until(sim: &Simulator, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..500 {
            let stats: Value = reqwest::get(format!("{}/_sim/stats", sim.url()))
                .await
                .expect("stats")
                .json()
                .await
                .expect("stats json");
            if done(&stats["streams"]) {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the simulator never reported {what}");
    }

    /// Waits until the simulator counts `open` connections, so no event is sent before one
    /// is listening.
    async fn until_open(sim: &Simulator, open: u64) {
        stats_until(sim, "the open connections", |s| {
            s["connections_open"] == open
        })
        .await;
    }

    #[tokio::test]
    async fn combined_stream_wraps_every_trade_of_its_symbols_only() {
        let sim = simulator().await;
        let mut client = connect(&sim, "/stream?streams=btcusdt@trade").await;
        until_open(&sim, 1).await;
        add(&sim, "STXUSDT", 5).await;
        let (first, last) = add(&sim, "BTCUSDT", 50).await;
        for id in first..=last {
            let text = next_text(&mut client).await.expect("a trade");
            let message: Combined<StreamTrade> = serde_json::from_str(&text).expect("shape");
            assert_eq!(message.stream, "btcusdt@trade");
            assert_eq!(
                (message.data.event.as_str(), message.data.symbol.as_str()),
                ("trade", "BTCUSDT")
            );
            assert_eq!(message.data.id, id, "consecutive, and no STXUSDT trade");
            assert!(message.data.price.is_positive() && message.data.qty.is_positive());
            assert!(
                text.contains(r#""p":""#),
                "prices are decimal strings: {text}"
            );
        }
    }

    #[tokio::test]
    async fn raw_stream_subscribes_by_control_message_and_skips_on_request() {
        let sim = simulator().await;
        let mut client = connect(&sim, "/ws").await;
        let subscribe = json!({"method": "SUBSCRIBE", "params": ["stxusdt@trade"], "id": 7});
        client
            .send(Frame::Text(subscribe.to_string().into()))
            .await
            .expect("send");
        let ack: Value =
            serde_json::from_str(&next_text(&mut client).await.expect("ack")).expect("json");
        assert_eq!(ack, json!({"result": null, "id": 7}));
        control(
            &sim,
            "/_sim/faults",
            json!({"stream": [{"kind": "skip_ids", "symbol": "STXUSDT", "count": 3}]}),
        )
        .await;
        let (first, last) = add(&sim, "STXUSDT", 10).await;
        for id in first + 3..=last {
            let event: StreamTrade =
                serde_json::from_str(&next_text(&mut client).await.expect("trade"))
                    .expect("bare event");
            assert_eq!(event.id, id, "the first three ids are held back");
        }
        let list = json!({"method": "LIST_SUBSCRIPTIONS", "id": 8});
        client
            .send(Frame::Text(list.to_string().into()))
            .await
            .expect("send");
        let answer: Value =
            serde_json::from_str(&next_text(&mut client).await.expect("list")).expect("json");
        assert_eq!(answer, json!({"result": ["stxusdt@trade"], "id": 8}));
    }

    #[tokio::test]
    async fn faults_reach_open_connections() {
        let sim = simulator().await;
        let mut client = connect(&sim, "/ws/btcusdt@trade").await;
        until_open(&sim, 1).await;
        control(
            &sim,
            "/_sim/faults",
            json!({"stream": [{"kind": "ping"}, {"kind": "raw", "text": "not json"}]}),
        )
        .await;
        // Reading on past the ping sends the client's pong.
        assert_eq!(next_text(&mut client).await.as_deref(), Some("not json"));
        stats_until(&sim, "a pong", |s| s["pongs"] == 1).await;
        control(
            &sim,
            "/_sim/faults",
            json!({"stream": [{"kind": "server_shutdown"}, {"kind": "drop"}]}),
        )
        .await;
        let shutdown: Value =
            serde_json::from_str(&next_text(&mut client).await.expect("event")).expect("json");
        assert_eq!(shutdown["e"], "serverShutdown");
        assert_eq!(
            next_text(&mut client).await,
            None,
            "then the connection is cut"
        );
        until_open(&sim, 0).await;
    }
}
