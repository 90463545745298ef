//! `kind: binance.historical_trades` and `kind: mercado_bitcoin.trades`: every trade since
//! the last one fetched, per symbol, into the lake as Parquet, with no gap and no duplicate
//! across retries, crashes and concurrent runs. One fetch for every exchange whose REST API
//! reads a trade history forward by id ([`TradeHistory`]); the exchanges differ only in their
//! client, their symbol spelling and where their state lives.
//!
//! ```yaml
//! with: { symbols: [BTCUSDT, AAVEUSDT], start_from_id: 123, output: raw/binance_trades }
//! with: { symbols: [BTC-BRL, ETH-BRL], output: raw/mercado_bitcoin_trades }
//! ```
//!
//! Per symbol, the fetch holds a lock of the metadata database for (lake, output, symbol), so
//! two fetches of one symbol (`orch run` beside `orch serve`, parallel backfills, two hosts on
//! one PostgreSQL) take turns. It resumes after the highest trade id the lake already holds
//! (file names carry their id range, see [`raw_trades`]) or the saved watermark, whichever is
//! higher, listing only the date partitions from the watermark's date on; the watermark is
//! saved only after the files holding those trades are written. It pages the exchange's
//! history until a page comes back short (caught up), writing a file per UTC date every
//! `file_rows` trades or `flush_every`, whichever comes first, so a long catch-up keeps its
//! progress even when its attempt times out. A file whose id range overlaps one the lake
//! holds is refused rather than written. A symbol seen for the first time starts at
//! `start_from_id`, or at the exchange's most recent trades.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use serde::Deserialize;
use serde_json::Value;

use crate::exchange::binance::{BinanceClient, RetryPolicy};
use crate::exchange::mercado_bitcoin::{self, MercadoBitcoinClient};
use crate::exchange::{Observer, Trade, TradeHistory};
use crate::lake::{Lake, raw_trades};
use crate::tasks::{
    BoxFuture, TaskContext, TaskError, TaskKind, TaskOutput, exclusive, off_runtime, parse_with,
};

/// The exchanges whose trade history a batch kind fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeTrades {
    Binance,
    MercadoBitcoin,
}

impl ExchangeTrades {
    /// Where the client goes: `with.base_url`, else the exchange's URL among the data places.
    fn client(
        self,
        base_url: Option<&str>,
        ctx: &TaskContext,
        observer: Observer,
    ) -> Result<Box<dyn TradeHistory>, TaskError> {
        Ok(match self {
            ExchangeTrades::Binance => Box::new(
                BinanceClient::new(
                    base_url.unwrap_or(&ctx.data.binance_api_url),
                    RetryPolicy::default(),
                )?
                .with_observer(observer),
            ),
            ExchangeTrades::MercadoBitcoin => Box::new(
                MercadoBitcoinClient::new(
                    base_url.unwrap_or(&ctx.data.mercado_bitcoin_api_url),
                    mercado_bitcoin::Policy::default(),
                )?
                .with_observer(observer),
            ),
        })
    }

    fn default_output(self) -> &'static str {
        match self {
            ExchangeTrades::Binance => "raw/binance_trades",
            ExchangeTrades::MercadoBitcoin => "raw/mercado_bitcoin_trades",
        }
    }

    /// Why `symbol` is not one of this exchange's REST symbols, if it is not.
    fn check_symbol(self, symbol: &str) -> Result<(), String> {
        let word = |w: &str| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        };
        match self {
            ExchangeTrades::Binance if word(symbol) => Ok(()),
            ExchangeTrades::Binance => Err(format!(
                "symbol `{symbol}` is not a Binance symbol (upper-case letters and digits, e.g. BTCUSDT)"
            )),
            ExchangeTrades::MercadoBitcoin
                if symbol
                    .split_once('-')
                    .is_some_and(|(base, quote)| word(base) && word(quote)) =>
            {
                Ok(())
            }
            ExchangeTrades::MercadoBitcoin => Err(format!(
                "symbol `{symbol}` is not a Mercado Bitcoin REST symbol (BASE-QUOTE in upper case, e.g. BTC-BRL)"
            )),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    symbols: Vec<String>,
    /// Where a symbol never fetched before starts; the most recent trades if absent.
    start_from_id: Option<i64>,
    /// The lake prefix of the raw trades; the exchange's own by default.
    output: Option<String>,
    /// Overrides the exchange's URL (`BINANCE_API_URL`, `MERCADO_BITCOIN_API_URL`).
    base_url: Option<String>,
    /// Trades per file at most; a catch-up writes (and saves its progress) every this many.
    #[serde(default = "default_file_rows")]
    file_rows: usize,
    /// A catch-up also writes what it has at least this often.
    #[serde(
        default = "default_flush_every",
        deserialize_with = "crate::tasks::duration"
    )]
    flush_every: Duration,
}

fn default_file_rows() -> usize {
    500_000
}

fn default_flush_every() -> Duration {
    Duration::from_secs(30)
}

impl TaskKind for ExchangeTrades {
    /// Also the namespace of the watermarks in the metadata database: `LAST_ID DATE` per
    /// (lake, output, symbol).
    fn name(&self) -> &'static str {
        match self {
            ExchangeTrades::Binance => "binance.historical_trades",
            ExchangeTrades::MercadoBitcoin => "mercado_bitcoin.trades",
        }
    }

    fn check(&self, with: &Value) -> Result<(), String> {
        let config: Config = parse_with(with)?;
        if config.symbols.is_empty() {
            return Err("`with.symbols` is empty".to_string());
        }
        for symbol in config.symbols.iter().filter(|s| !s.contains("{{")) {
            self.check_symbol(symbol)?;
        }
        if config.file_rows == 0 {
            return Err("`with.file_rows` must be at least 1".to_string());
        }
        if config.flush_every.is_zero() {
            return Err("`with.flush_every` must be longer than 0s".to_string());
        }
        Ok(())
    }

    fn run<'a>(
        &'a self,
        with: Value,
        ctx: &'a TaskContext,
    ) -> BoxFuture<'a, Result<TaskOutput, TaskError>> {
        Box::pin(async move {
            let config: Config = parse_with(&with).map_err(TaskError::permanent)?;
            for symbol in &config.symbols {
                self.check_symbol(symbol).map_err(TaskError::permanent)?;
            }
            let lake = Lake::open(&ctx.data.lake_url)?;
            let log = ctx.log.clone();
            let client = self.client(
                config.base_url.as_deref(),
                ctx,
                Arc::new(move |event| log.note(event)),
            )?;
            let fetch = Fetch {
                namespace: self.name(),
                output: config.output.as_deref().unwrap_or(self.default_output()),
                config: &config,
                client: client.as_ref(),
                lake: &lake,
                ctx,
            };
            ctx.log.note(&format!(
                "fetching {} from {} at {} into {}/{}",
                config.symbols.join(", "),
                client.exchange(),
                client.base_url(),
                lake.url(),
                fetch.output
            ));
            let fetches = config.symbols.iter().map(|symbol| fetch.symbol(symbol));
            let counts = try_join_all(fetches).await?;
            Ok(TaskOutput {
                rows: Some(counts.iter().sum()),
                metrics: None,
                ..TaskOutput::default()
            })
        })
    }
}

/// A symbol's saved watermark: the last id written, and the UTC date of its file.
fn parse_watermark(value: &str) -> Option<(i64, Option<String>)> {
    let mut parts = value.split_whitespace();
    let id = parts.next()?.parse().ok()?;
    Some((id, parts.next().map(str::to_string)))
}

/// One attempt's fetch: what every symbol's fetch shares.
struct Fetch<'a> {
    /// Where the watermarks live in the metadata database.
    namespace: &'static str,
    output: &'a str,
    config: &'a Config,
    client: &'a dyn TradeHistory,
    lake: &'a Lake,
    ctx: &'a TaskContext,
}

impl Fetch<'_> {
    /// Fetches one symbol up to now; returns the number of trades written.
    async fn symbol(&self, symbol: &str) -> Result<u64, TaskError> {
        let Fetch {
            namespace,
            output,
            config,
            client,
            lake,
            ctx,
        } = *self;
        let state_key = format!("{}|{output}|{symbol}", lake.url());
        let _lock = exclusive(
            ctx,
            &format!("{namespace}|{state_key}"),
            &format!("fetching {symbol} into this lake"),
        )
        .await?;
        let saved = ctx
            .store
            .task_state(namespace, &state_key)
            .await
            .map_err(|e| {
                TaskError::from(e).context(format!("{symbol}: cannot read the watermark"))
            })?
            .map(|v| {
                parse_watermark(&v).ok_or_else(|| {
                    TaskError::permanent(format!("{symbol}: unreadable saved watermark `{v}`"))
                })
            })
            .transpose()?;
        let (saved_id, saved_date) = match saved {
            Some((id, date)) => (Some(id), date),
            None => (None, None),
        };
        let known = raw_trades::symbol_files(lake, output, symbol, saved_date.as_deref())
            .await?
            .iter()
            .filter_map(|o| raw_trades::id_range(&o.key))
            .map(|(_, last)| last)
            .max();
        let mut next_id = match known.max(saved_id) {
            Some(last) => last + 1,
            None => match config.start_from_id {
                Some(id) => id,
                None => match client.recent_trades(symbol).await?.first() {
                    Some(t) => t.id,
                    None => {
                        ctx.log
                            .note(&format!("{symbol}: no trades at the exchange yet"));
                        return Ok(0);
                    }
                },
            },
        };
        if saved_id.is_some_and(|s| known.is_some_and(|l| l > s)) {
            ctx.log.note(&format!(
            "{symbol}: the lake holds trades past the saved watermark (an earlier attempt stopped after writing); resuming after id {}",
            next_id - 1
        ));
        }
        let first_id = next_id;
        let mut buffer: Vec<Trade> = Vec::new();
        let mut written: u64 = 0;
        let mut files = 0;
        let mut last_write = Instant::now();
        loop {
            let page = client.trades_after(symbol, next_id - 1).await?;
            // A full page that gave nothing new would ask for the same page again.
            let caught_up = !page.more || page.trades.is_empty();
            let page = page.trades;
            if let Some(first) = page.first()
                && first.id != next_id
            {
                ctx.log.note(&format!(
                    "{symbol}: the exchange has no trades {next_id}..{}; continuing from {}",
                    first.id - 1,
                    first.id
                ));
            }
            if let Some(last) = page.last() {
                next_id = last.id + 1;
            }
            buffer.extend(page);
            let due = buffer.len() >= config.file_rows
                || last_write.elapsed() >= config.flush_every
                || caught_up;
            if due && !buffer.is_empty() {
                let batch = std::mem::take(&mut buffer);
                let (first, last) = (batch[0].id, next_id - 1);
                let count = batch.len();
                let last_date = raw_trades::utc_date(batch[count - 1].time_ms);
                files += write_files(batch, symbol, output, lake).await?;
                written += count as u64;
                ctx.store
                    .set_task_state(namespace, &state_key, &format!("{last} {last_date}"))
                    .await
                    .map_err(|e| {
                        TaskError::from(e).context(format!(
                            "{symbol}: cannot save the watermark after id {last}"
                        ))
                    })?;
                ctx.log.note(&format!(
                    "{symbol}: committed ids {first}..={last} ({count} trades)"
                ));
                last_write = Instant::now();
            }
            if caught_up {
                break;
            }
        }
        ctx.log.note(&format!(
            "{symbol}: {written} trades in {files} files, ids {first_id}..{}",
            next_id - 1
        ));
        Ok(written)
    }
}

/// Writes `trades` (ascending ids) as one file per UTC date, in id order; returns the number
/// of files. A file whose id range overlaps one its date partition already holds is refused:
/// its trades would load twice.
async fn write_files(
    trades: Vec<Trade>,
    symbol: &str,
    output: &str,
    lake: &Lake,
) -> Result<usize, TaskError> {
    let days: Vec<Vec<Trade>> = trades
        .chunk_by(|a, b| raw_trades::utc_day(a.time_ms) == raw_trades::utc_day(b.time_ms))
        .map(<[Trade]>::to_vec)
        .collect();
    let mut files = 0;
    for day in days {
        let (Some(first), Some(last)) = (day.first(), day.last()) else {
            continue;
        };
        let (first_id, last_id) = (first.id, last.id);
        let date = raw_trades::utc_date(first.time_ms);
        let key = raw_trades::file_key(output, symbol, &date, first_id, last_id);
        let partition = key.rsplit_once('/').map_or("", |(dir, _)| dir);
        // Listed again, not taken from the fetch's first listing: a writer outside this
        // metadata database's lock (another home on the same lake) may have written since.
        let overlapping = lake
            .list(&format!("{partition}/"))
            .await?
            .into_iter()
            .find(|o| {
                raw_trades::id_range(&o.key)
                    .is_some_and(|(first, last)| first <= last_id && first_id <= last)
            });
        if let Some(existing) = overlapping {
            return Err(TaskError::permanent(format!(
                "{symbol}: refusing to write ids {first_id}..={last_id}: {} already holds some of them (another writer outside this metadata database?)",
                existing.key
            )));
        }
        let bytes = off_runtime(move || raw_trades::encode(&day))
            .await?
            .map_err(|e| TaskError::transient(format!("{symbol}: cannot encode Parquet: {e}")))?;
        lake.put(&key, bytes).await?;
        files += 1;
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_read_with_or_without_their_date() {
        assert_eq!(parse_watermark("123"), Some((123, None)));
        assert_eq!(
            parse_watermark("123 2026-11-22"),
            Some((123, Some("2026-11-22".to_string())))
        );
        assert_eq!(parse_watermark("x"), None);
    }
}
