//! The loop of a simulated websocket whose clients keep it alive with JSON pings (KuCoin,
//! Mercado Bitcoin): trades of the followed books out, the client's messages answered, and a
//! cut when the client sent nothing for `ping_every` plus `pong_within`, as those exchanges
//! cut a silent client. What differs, frame shapes and subscriptions, is a [`Protocol`].

use axum::extract::ws::{Message, WebSocket};
use tokio::sync::broadcast;

use super::Shared;
use super::stream::StreamEvent;
use crate::exchange::Trade;

/// One exchange's frames.
pub(crate) trait Protocol: Send {
    /// The frames for new trades of `book`, if the connection follows it.
    fn trades(&self, shared: &Shared, book: &str, trades: &[Trade]) -> Vec<String>;

    /// The answer to a client's text, if any.
    fn answer(&mut self, text: &str) -> Option<String>;

    /// Whether the connection is cut once tokens expire.
    fn expired(&self, _shared: &Shared) -> bool {
        false
    }
}

/// Serves one connection until either side ends it; `first` is sent on opening.
pub(crate) async fn serve(
    shared: Shared,
    mut socket: WebSocket,
    first: Option<String>,
    mut protocol: impl Protocol,
) {
    let mut events = {
        let mut state = shared.lock();
        state.stream_stats.connections_opened += 1;
        state.stream_stats.connections_open += 1;
        state.streams.subscribe()
    };
    let reason = run(&shared, &mut socket, &mut events, first, &mut protocol).await;
    shared.lock().stream_stats.connections_open -= 1;
    tracing::debug!(reason, "simulator websocket connection ended");
}

async fn run(
    shared: &Shared,
    socket: &mut WebSocket,
    events: &mut broadcast::Receiver<StreamEvent>,
    first: Option<String>,
    protocol: &mut impl Protocol,
) -> &'static str {
    if let Some(first) = first
        && socket.send(Message::Text(first.into())).await.is_err()
    {
        return "send failed";
    }
    let keepalive = shared.lock().keepalive;
    let mut check = tokio::time::interval(keepalive.ping_every);
    check.reset();
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            event = events.recv() => {
                let frames = match event {
                    Ok(StreamEvent::Trades { symbol, trades }) => protocol.trades(shared, &symbol, &trades),
                    Ok(StreamEvent::Drop) => return "dropped on request",
                    Ok(StreamEvent::ExpireTokens) if protocol.expired(shared) => {
                        let _ = socket.send(Message::Close(None)).await;
                        return "token expired";
                    }
                    Ok(StreamEvent::Raw(text)) => vec![text],
                    // Binance's own events.
                    Ok(StreamEvent::ServerShutdown | StreamEvent::Ping | StreamEvent::ExpireTokens) => Vec::new(),
                    // A slow reader misses events, as a slow exchange client would.
                    Err(broadcast::error::RecvError::Lagged(_)) => Vec::new(),
                    Err(broadcast::error::RecvError::Closed) => return "simulator stopped",
                };
                let sent = frames.len() as u64;
                for frame in frames {
                    if socket.send(Message::Text(frame.into())).await.is_err() {
                        return "send failed";
                    }
                }
                if sent > 0 {
                    shared.lock().stream_stats.trades_sent += sent;
                }
            }
            _ = check.tick() => {
                if last_heard.elapsed() > keepalive.ping_every + keepalive.pong_within {
                    let _ = socket.send(Message::Close(None)).await;
                    return "nothing from the client in time";
                }
            }
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => {
                    last_heard = tokio::time::Instant::now();
                    if text.contains("\"ping\"") {
                        shared.lock().stream_stats.pongs += 1;
                    }
                    if let Some(answer) = protocol.answer(text.as_str())
                        && socket.send(Message::Text(answer.into())).await.is_err()
                    {
                        return "send failed";
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return "closed by the client",
                Some(Ok(_)) => {}
            },
        }
    }
}
