//! The websocket side of an exchange: what a live stream needs of it ([`LiveTrades`]), and
//! the connection every exchange's socket becomes once it is read on a task of its own
//! ([`ReadConnection`]), so the ingest loop is the same whichever exchange it follows.

use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{Catalog, Trade, TradeHistory};

/// Messages a connection read on its own task holds for its consumer at most.
const QUEUED_MESSAGES: usize = 200_000;
/// How long closing a connection politely may take before it is dropped.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What one frame said, in every exchange's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveMessage {
    Trade {
        symbol: String,
        trade: Trade,
    },
    /// The server asked its clients to connect again (Binance's `serverShutdown`).
    Reconnect(String),
    /// A ping, a pong, a welcome or a control answer: the connection is alive.
    Alive,
    /// A frame that is not any of the above, kept whole for the log.
    Malformed {
        text: String,
        reason: String,
    },
}

/// What a connection read on its own task passes on.
#[derive(Debug)]
pub enum Incoming {
    Message(LiveMessage),
    /// The connection is over: closed, failed or silent, and why.
    Ended(String),
}

/// An exchange's live trades: how to check symbols, open a connection for some of them, and
/// fill what a connection missed.
pub trait LiveTrades: Send + Sync {
    /// The exchange's name in staging rows, subjects and logs: `binance`, `kucoin`.
    fn exchange(&self) -> &'static str;

    /// Whether trade ids are consecutive per symbol, so that a jump in them is a gap to fetch
    /// (Binance). Otherwise (KuCoin's sequences skip numbers) only the checks against REST
    /// and a reconnect's catch-up fill what was missed.
    fn consecutive_ids(&self) -> bool {
        super::profile(self.exchange()).is_some_and(|p| p.consecutive_ids)
    }

    /// How often the trades a connection passed are checked against the REST history, for
    /// an exchange whose stream cannot show a lost frame (its ids are not consecutive): what
    /// the socket missed is taken then. `None` where a jump in the ids shows every loss.
    fn recheck_every(&self) -> Option<Duration>;

    /// The most symbols one connection follows.
    fn symbols_per_connection(&self) -> usize;

    /// A connection is renewed this long after it opened, before the exchange cuts it.
    fn renew_after(&self) -> Duration;

    /// The REST history that fills gaps and catches up after a reconnect.
    fn history(&self) -> &dyn TradeHistory;

    /// The instrument catalog, to check the symbols against before streaming.
    fn catalog(&self) -> &dyn Catalog;

    /// Opens a connection following the trades of `symbols`, read on a task of its own; it
    /// ends after `silence` without a frame.
    fn connect<'a>(
        &'a self,
        symbols: &'a [String],
        silence: Duration,
    ) -> BoxFuture<'a, Result<ReadConnection, String>>;
}

/// A connection read on a task of its own, so that frames are taken off the socket and
/// keepalives answered while the consumer is busy (a long gap backfill): a socket left unread
/// stops answering pings, and the exchange drops it.
pub struct ReadConnection {
    messages: mpsc::Receiver<Incoming>,
    close: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// The reading task's side of a [`ReadConnection`].
pub struct Outbox(mpsc::Sender<Incoming>);

/// Why the reading task must stop passing messages on.
pub enum Blocked {
    /// The consumer is far behind: the reason to end the connection with.
    Full(String),
    /// The consumer is gone.
    Closed,
}

impl Outbox {
    /// Passes `message` on without waiting.
    pub fn pass(&self, message: LiveMessage) -> Result<(), Blocked> {
        match self.0.try_send(Incoming::Message(message)) {
            Ok(()) => Ok(()),
            // The consumer is far behind (a very long backfill): reading on would only grow
            // the queue, while a reconnect catches up from the REST API.
            Err(mpsc::error::TrySendError::Full(_)) => Err(Blocked::Full(format!(
                "{QUEUED_MESSAGES} messages wait to be taken; reconnecting to catch up from the REST API"
            ))),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Blocked::Closed),
        }
    }

    /// Tells the consumer the connection is over, and why.
    pub async fn end(self, reason: String) {
        let _ = self.0.send(Incoming::Ended(reason)).await;
    }
}

impl ReadConnection {
    /// Runs `read` on a task of its own; it gets the outbox to pass messages to, and a signal
    /// that fires when the consumer asks the connection to close.
    pub fn spawn<F, Fut>(read: F) -> ReadConnection
    where
        F: FnOnce(Outbox, oneshot::Receiver<()>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (sender, messages) = mpsc::channel(QUEUED_MESSAGES);
        let (close, closing) = oneshot::channel::<()>();
        let task = tokio::spawn(read(Outbox(sender), closing));
        ReadConnection {
            messages,
            close: Some(close),
            task,
        }
    }

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
