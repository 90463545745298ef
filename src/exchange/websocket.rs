//! What every exchange's websocket does alike: connect within a time limit, then read on a
//! task of its own, sending the JSON pings an exchange asks of its clients (KuCoin, Mercado
//! Bitcoin) or leaving protocol pings to tungstenite (Binance).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::live::{Blocked, CLOSE_TIMEOUT, LiveMessage, Outbox, ReadConnection};

/// The longest a connection may take, TCP and TLS and websocket handshake together; the
/// exchanges' own handshakes (a welcome, acknowledged subscriptions) get as long again.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a websocket to `url` within [`CONNECT_TIMEOUT`]: a server that accepts and never
/// answers must not hold a stream `connecting` for good.
/// Errors name `shown_as` rather than the URL, which may carry a token.
pub async fn connect(url: &str, shown_as: &str) -> Result<Socket, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(url)).await {
        Err(_) => Err(format!(
            "cannot connect to {shown_as}: no websocket handshake within {CONNECT_TIMEOUT:?}"
        )),
        Ok(Err(e)) => Err(format!("cannot connect to {shown_as}: {e}")),
        Ok(Ok((socket, _))) => Ok(socket),
    }
}

/// Reads text frames until `wanted` says one is the awaited answer (`Ok(true)`), or refuses
/// it (`Err`): a welcome, a subscription's acknowledgement.
pub async fn wait_for(
    socket: &mut Socket,
    what: &str,
    wanted: impl Fn(&str) -> Result<bool, String>,
) -> Result<(), String> {
    loop {
        let text = next_text(socket)
            .await
            .map_err(|e| format!("waiting for {what}: {e}"))?;
        if wanted(&text)? {
            return Ok(());
        }
    }
}

/// Sends `text` as a text frame.
pub async fn send(socket: &mut Socket, text: String) -> Result<(), String> {
    socket
        .send(Message::Text(text.into()))
        .await
        .map_err(|e| format!("sending on the websocket: {e}"))
}

/// The next text frame, passing over the others; `Err` when the connection fails or closes.
pub async fn next_text(socket: &mut Socket) -> Result<String, String> {
    while let Some(frame) = socket.next().await {
        match frame.map_err(|e| e.to_string())? {
            Message::Text(text) => return Ok(text.to_string()),
            Message::Close(_) => break,
            _ => {}
        }
    }
    Err("the connection closed".to_string())
}

/// An exchange's application-level keepalive: a JSON ping every `every`, the link dead when
/// its pong takes longer than `within`.
#[derive(Debug, Clone, Copy)]
pub struct JsonPings {
    pub every: Duration,
    pub within: Duration,
    /// The ping's text, given a number to tell pings apart.
    pub ping: fn(u64) -> String,
}

/// What a text frame said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Live(LiveMessage),
    /// The answer to a [`JsonPings`] ping.
    Pong,
}

/// Reads `socket` on a task of its own (see [`ReadConnection`]), sorting text frames with
/// `parse` and sending `pings` when given. The connection ends when the server closes it, on
/// an error, when a pong is late, or after `silence` without a frame from the server (its
/// pings included); with JSON pings, the late pong is what tells a dead link.
pub fn read_on_own_task(
    socket: Socket,
    pings: Option<JsonPings>,
    silence: Duration,
    parse: impl Fn(&str) -> Frame + Send + 'static,
) -> ReadConnection {
    ReadConnection::spawn(move |outbox, closing| {
        read(socket, pings, silence, parse, outbox, closing)
    })
}

async fn read(
    mut socket: Socket,
    pings: Option<JsonPings>,
    silence: Duration,
    parse: impl Fn(&str) -> Frame,
    outbox: Outbox,
    mut closing: tokio::sync::oneshot::Receiver<()>,
) {
    // Without JSON pings the timer never fires: a day is as good as never.
    let every = pings.map_or(Duration::from_secs(86_400), |p| p.every);
    let mut ping = tokio::time::interval(every);
    ping.reset();
    let mut pings_sent = 0_u64;
    // When the unanswered ping went.
    let mut awaiting_pong: Option<Instant> = None;
    let ended = loop {
        let pong_due = awaiting_pong.zip(pings).map(|(sent, p)| sent + p.within);
        let next = tokio::select! {
            _ = &mut closing => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.close(None)).await;
                return;
            }
            _ = ping.tick(), if pings.is_some() => {
                let Some(pings) = pings else { continue };
                pings_sent += 1;
                if let Err(e) = send(&mut socket, (pings.ping)(pings_sent)).await {
                    break e;
                }
                awaiting_pong.get_or_insert_with(Instant::now);
                continue;
            }
            _ = tokio::time::sleep_until(pong_due.unwrap_or_else(Instant::now)), if pong_due.is_some() => {
                break format!("no pong within {:?}", pings.map(|p| p.within).unwrap_or_default());
            }
            next = tokio::time::timeout(silence, socket.next()) => next,
        };
        let message = match next {
            Err(_) => break format!("silent for {silence:?}"),
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => break "closed by the server".to_string(),
            Ok(Some(Err(e))) => break e.to_string(),
            Ok(Some(Ok(Message::Text(text)))) => match parse(text.as_str()) {
                Frame::Live(message) => message,
                Frame::Pong => {
                    awaiting_pong = None;
                    LiveMessage::Alive
                }
            },
            Ok(Some(Ok(Message::Binary(bytes)))) => LiveMessage::Malformed {
                text: String::from_utf8_lossy(&bytes).into_owned(),
                reason: "a binary frame".to_string(),
            },
            // Protocol pings are answered by tungstenite (it queues the pong and sends it
            // with the next read).
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
