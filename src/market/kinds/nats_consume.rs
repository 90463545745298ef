//! `kind: nats.consume`: commits the trades a durable consumer of the trade bus has not
//! acknowledged yet into a staging table, then acknowledges them.
//!
//! ```yaml
//! with: { consumer: warehouse_feed, subjects: "trades.binance.>", table: raw_trades, url: nats://... }
//! ```
//!
//! Each consumer name is a durable JetStream consumer with a position of its own, so several
//! DAGs read the one exchange connection a stream keeps ([`crate::trade_bus`]). A run reads until
//! the consumer has nothing pending, committing every batch before acknowledging it: a run
//! killed between the two gets the batch again, and the staging table ignores ids it holds,
//! so every trade lands once. A message that is not a trade is reported and terminated
//! (never redelivered); the run then fails, after committing the rest.

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;

use crate::staging::{StagedTrade, Staging};
use crate::tasks::{BoxFuture, TaskContext, TaskError, TaskKind, TaskOutput, parse_with};
use crate::trade_bus::{self, TradeBus};

pub struct NatsConsume;

/// Messages asked for at a time.
const BATCH: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The durable consumer's name.
    consumer: String,
    /// The subjects it reads: every trade by default.
    #[serde(default = "default_subjects")]
    subjects: String,
    /// The staging table to commit to.
    #[serde(default = "default_table")]
    table: String,
    /// Overrides `ORCH_STAGING_URL`.
    staging: Option<String>,
    /// Overrides `ORCH_NATS_URL`.
    url: Option<String>,
}

fn default_subjects() -> String {
    format!("{}.>", trade_bus::SUBJECT_PREFIX)
}

fn default_table() -> String {
    "raw_trades".to_string()
}

impl TaskKind for NatsConsume {
    fn name(&self) -> &'static str {
        "nats.consume"
    }

    fn check(&self, with: &Value) -> Result<(), String> {
        let config: Config = parse_with(with)?;
        let name_ok = !config.consumer.is_empty()
            && config
                .consumer
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(format!(
                "`with.consumer` `{}` must be letters, digits, `_` and `-`",
                config.consumer
            ));
        }
        if !config
            .subjects
            .starts_with(&format!("{}.", trade_bus::SUBJECT_PREFIX))
        {
            return Err(format!(
                "`with.subjects` `{}` must start with `{}.`: the trade bus carries only those",
                config.subjects,
                trade_bus::SUBJECT_PREFIX
            ));
        }
        if !crate::database::is_table_name(&config.table) {
            return Err(format!(
                "`with.table` `{}` is not a table name",
                config.table
            ));
        }
        Ok(())
    }

    fn run<'a>(
        &'a self,
        with: Value,
        ctx: &'a TaskContext,
    ) -> BoxFuture<'a, Result<TaskOutput, TaskError>> {
        Box::pin(async move {
            self.check(&with).map_err(TaskError::permanent)?;
            let config: Config = parse_with(&with).map_err(TaskError::permanent)?;
            let url = config.url.as_deref().unwrap_or(&ctx.data.nats_url);
            let staging_url = config.staging.as_deref().unwrap_or(&ctx.data.staging_url);
            let staging = Staging::open(staging_url, &config.table).await?;
            let bus = TradeBus::connect(url).await?;
            let consumer = bus.consumer(&config.consumer, &config.subjects).await?;
            let (mut read, mut inserted) = (0_u64, 0_u64);
            let mut malformed: Vec<String> = Vec::new();
            loop {
                let mut batch = consumer
                    .fetch()
                    .max_messages(BATCH)
                    .messages()
                    .await
                    .map_err(|e| TaskError::transient(format!("NATS: fetching: {e}")))?;
                let mut messages = Vec::new();
                while let Some(message) = batch.next().await {
                    messages.push(
                        message.map_err(|e| TaskError::transient(format!("NATS: reading: {e}")))?,
                    );
                }
                if messages.is_empty() {
                    break;
                }
                read += messages.len() as u64;
                // Per exchange, in the order read.
                let mut trades: Vec<(String, Vec<StagedTrade>)> = Vec::new();
                let mut good = Vec::with_capacity(messages.len());
                for message in &messages {
                    match trade_bus::decode(message) {
                        Ok((exchange, trade)) => {
                            match trades.iter_mut().find(|(e, _)| *e == exchange) {
                                Some((_, list)) => list.push(trade),
                                None => trades.push((exchange, vec![trade])),
                            }
                            good.push(message);
                        }
                        Err(e) => {
                            ctx.log
                                .note(&format!("{e}; dropped from consumer `{}`", config.consumer));
                            message
                                .ack_with(async_nats::jetstream::AckKind::Term)
                                .await
                                .map_err(|e| TaskError::transient(format!("NATS: {e}")))?;
                            malformed.push(e.to_string());
                        }
                    }
                }
                let now = chrono::Utc::now().timestamp_millis();
                for (exchange, list) in &trades {
                    // Not acknowledged on failure: the batch comes again at the next run.
                    inserted += staging.insert(exchange, list, now).await?;
                }
                for message in good {
                    message
                        .ack()
                        .await
                        .map_err(|e| TaskError::transient(format!("NATS: acknowledging: {e}")))?;
                }
                bus.flush().await?;
            }
            ctx.log.note(&format!(
                "consumer `{}` ({}): {read} messages read, {inserted} new trades into {}",
                config.consumer, config.subjects, config.table
            ));
            if !malformed.is_empty() {
                return Err(TaskError::permanent(format!(
                    "{} messages were not trades (first: {}); the others are committed",
                    malformed.len(),
                    malformed[0]
                )));
            }
            Ok(TaskOutput {
                rows: Some(inserted),
                ..TaskOutput::default()
            })
        })
    }
}
