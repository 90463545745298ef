//! The trade bus: NATS JetStream between one exchange connection and many consumers.
//!
//! A stream with `publish:` sends each trade to the subject `trades.<exchange>.<SYMBOL>` of
//! the JetStream stream `ORCH_TRADES` (file storage, created when missing), with the message
//! id `<exchange>:<SYMBOL>:<trade id>`: JetStream drops a message whose id it has seen within
//! [`DUPLICATE_WINDOW`], so a batch published again after a lost acknowledgement, a broker
//! restart or a stream restart within that window is stored once. A copy published later
//! (a stream down longer) is stored again; consumers commit by trade id, so it lands once. Consumers (`kind: nats.consume`) read through
//! durable pull consumers, each at its own pace, and acknowledge only what they committed.
//!
//! The payload is JSON with prices and quantities as decimal strings, exact:
//! `{"exchange":"binance","symbol":"BTCUSDT","trade_id":1,"price":"97250.12","qty":"0.001",
//! "time_ms":1764547200000,"is_buyer_maker":true,"is_best_match":true}`.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use serde::{Deserialize, Serialize};

use crate::exchange::Trade;
use crate::staging::StagedTrade;

/// Where NATS listens when `ORCH_NATS_URL` does not say.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";
/// The JetStream stream that holds published trades.
pub const STREAM: &str = "ORCH_TRADES";
/// Subjects start with this: `trades.binance.BTCUSDT`.
pub const SUBJECT_PREFIX: &str = "trades";
/// How long JetStream remembers message ids to drop a republished trade: longer than a
/// stream's restart and catch-up.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("NATS at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("NATS: {0}")]
    Nats(String),
    #[error("message {subject} #{sequence}: {message}")]
    Malformed {
        subject: String,
        sequence: u64,
        message: String,
    },
}

impl BusError {
    /// Whether another attempt can help: yes for the server's trouble, not for a message
    /// that is not a trade.
    pub fn is_transient(&self) -> bool {
        !matches!(self, BusError::Malformed { .. })
    }
}

/// A connection to the bus; cheap to clone.
#[derive(Clone)]
pub struct TradeBus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
}

/// One trade as it travels on the bus.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    exchange: String,
    symbol: String,
    trade_id: i64,
    price: String,
    qty: String,
    time_ms: i64,
    is_buyer_maker: bool,
    is_best_match: bool,
}

impl TradeBus {
    /// Connects and makes sure the trades' JetStream stream exists.
    pub async fn connect(url: &str) -> Result<TradeBus, BusError> {
        let shown = crate::redact::secrets(url).into_owned();
        let client = async_nats::connect(url)
            .await
            .map_err(|e| BusError::Connect {
                url: shown.clone(),
                message: e.to_string(),
            })?;
        let jetstream = jetstream::new(client.clone());
        jetstream
            .get_or_create_stream(stream::Config {
                name: STREAM.to_string(),
                subjects: vec![format!("{SUBJECT_PREFIX}.>")],
                storage: stream::StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                ..stream::Config::default()
            })
            .await
            .map_err(|e| BusError::Connect {
                url: shown,
                message: format!("cannot open the JetStream stream {STREAM}: {e}"),
            })?;
        Ok(TradeBus { client, jetstream })
    }

    /// The subject of an exchange's symbol.
    pub fn subject(exchange: &str, symbol: &str) -> String {
        format!("{SUBJECT_PREFIX}.{exchange}.{symbol}")
    }

    /// Publishes the trades and waits until JetStream has stored every one (or dropped it as
    /// a duplicate). On an error some may be stored: publish the same trades again.
    pub async fn publish(&self, exchange: &str, trades: &[StagedTrade]) -> Result<(), BusError> {
        let mut acks = Vec::with_capacity(trades.len());
        for staged in trades {
            let t = &staged.trade;
            let wire = Wire {
                exchange: exchange.to_string(),
                symbol: staged.symbol.clone(),
                trade_id: t.id,
                price: t.price.to_string(),
                qty: t.qty.to_string(),
                time_ms: t.time_ms,
                is_buyer_maker: t.is_buyer_maker,
                is_best_match: t.is_best_match,
            };
            let payload = serde_json::to_vec(&wire).map_err(|e| BusError::Nats(e.to_string()))?;
            let message = jetstream::message::PublishMessage::build()
                .payload(payload.into())
                .message_id(format!("{exchange}:{}:{}", staged.symbol, t.id));
            let ack = self
                .jetstream
                .send_publish(Self::subject(exchange, &staged.symbol), message)
                .await
                .map_err(|e| BusError::Nats(format!("publishing: {e}")))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await
                .map_err(|e| BusError::Nats(format!("waiting for JetStream to store: {e}")))?;
        }
        Ok(())
    }

    /// The durable pull consumer `name` of the subjects `filter` (`trades.binance.>`),
    /// created when missing; it starts at the stream's first message.
    pub async fn consumer(
        &self,
        name: &str,
        filter: &str,
    ) -> Result<consumer::Consumer<consumer::pull::Config>, BusError> {
        let stream = self
            .jetstream
            .get_stream(STREAM)
            .await
            .map_err(|e| BusError::Nats(format!("stream {STREAM}: {e}")))?;
        stream
            .get_or_create_consumer(
                name,
                consumer::pull::Config {
                    durable_name: Some(name.to_string()),
                    filter_subject: filter.to_string(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..consumer::pull::Config::default()
                },
            )
            .await
            .map_err(|e| BusError::Nats(format!("consumer `{name}`: {e}")))
    }

    /// Waits until every acknowledgement sent so far has left for the server.
    pub async fn flush(&self) -> Result<(), BusError> {
        self.client
            .flush()
            .await
            .map_err(|e| BusError::Nats(format!("flushing acknowledgements: {e}")))
    }
}

/// A trade read off the bus: its exchange and the trade.
pub fn decode(message: &jetstream::Message) -> Result<(String, StagedTrade), BusError> {
    let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
    let malformed = |message_text: String| BusError::Malformed {
        subject: message.subject.to_string(),
        sequence,
        message: message_text,
    };
    let wire: Wire = serde_json::from_slice(&message.payload)
        .map_err(|e| malformed(format!("not a trade: {e}")))?;
    if message.subject.as_str() != TradeBus::subject(&wire.exchange, &wire.symbol) {
        return Err(malformed(format!(
            "a trade of {} {} on another subject",
            wire.exchange, wire.symbol
        )));
    }
    let price = wire
        .price
        .parse()
        .map_err(|e| malformed(format!("price `{}`: {e}", wire.price)))?;
    let qty = wire
        .qty
        .parse()
        .map_err(|e| malformed(format!("qty `{}`: {e}", wire.qty)))?;
    let trade = Trade::new(
        wire.trade_id,
        price,
        qty,
        wire.time_ms,
        wire.is_buyer_maker,
        wire.is_best_match,
    )
    .ok_or_else(|| malformed("price × qty out of range".to_string()))?;
    Ok((
        wire.exchange,
        StagedTrade {
            symbol: wire.symbol,
            trade,
        },
    ))
}
