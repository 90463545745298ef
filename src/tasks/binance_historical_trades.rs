//! `kind: binance.historical_trades`: every trade since the last one fetched, per symbol, into
//! the lake as Parquet, with no gap and no duplicate across retries and crashes.
//!
//! ```yaml
//! with: { symbols: [BTCUSDT, AAVEUSDT], start_from_id: 123, output: raw/binance_trades }
//! ```
//!
//! Per symbol, the fetch resumes after the highest trade id the lake already holds (file names
//! carry their id range, see [`raw_trades`]) or the saved watermark, whichever is higher; the
//! watermark is saved only after the files holding those trades are written. It pages
//! `historicalTrades` with `fromId` and `limit=1000` until a page comes back short (caught up),
//! writing a file per UTC date every `file_rows` trades so a long catch-up is durable in steps.
//! A symbol seen for the first time starts at `start_from_id`, or at the exchange's most
//! recent 1000 trades.

use std::sync::Arc;

use futures_util::future::try_join_all;
use serde::Deserialize;
use serde_json::Value;

use super::{BoxFuture, TaskContext, TaskKind, TaskOutput, parse_with};
use crate::exchange::Trade;
use crate::exchange::binance::{BinanceClient, MAX_PAGE, RetryPolicy};
use crate::lake::{Lake, raw_trades};

pub struct BinanceHistoricalTrades;

/// Where watermarks live in the metadata database.
const STATE_NAMESPACE: &str = "binance.historical_trades";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    symbols: Vec<String>,
    /// Where a symbol never fetched before starts; the most recent trades if absent.
    start_from_id: Option<i64>,
    /// The lake prefix of the raw trades.
    #[serde(default = "default_output")]
    output: String,
    /// Overrides `BINANCE_API_URL`.
    base_url: Option<String>,
    /// Trades per file at most; a catch-up writes (and saves its progress) every this many.
    #[serde(default = "default_file_rows")]
    file_rows: usize,
}

fn default_output() -> String {
    "raw/binance_trades".to_string()
}

fn default_file_rows() -> usize {
    500_000
}

impl TaskKind for BinanceHistoricalTrades {
    fn name(&self) -> &'static str {
        "binance.historical_trades"
    }

    fn check(&self, with: &Value) -> Result<(), String> {
        let config: Config = parse_with(with)?;
        if config.symbols.is_empty() {
            return Err("`with.symbols` is empty".to_string());
        }
        for symbol in &config.symbols {
            let templated = symbol.contains("{{");
            if !templated
                && !symbol
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            {
                return Err(format!(
                    "symbol `{symbol}` is not a Binance symbol (upper-case letters and digits, e.g. BTCUSDT)"
                ));
            }
        }
        if config.file_rows == 0 {
            return Err("`with.file_rows` must be at least 1".to_string());
        }
        Ok(())
    }

    fn run<'a>(
        &'a self,
        with: Value,
        ctx: &'a TaskContext,
    ) -> BoxFuture<'a, Result<TaskOutput, String>> {
        Box::pin(async move {
            let config: Config = parse_with(&with)?;
            let lake = Lake::open(&ctx.data.lake_url).map_err(|e| e.to_string())?;
            let base_url = config
                .base_url
                .as_deref()
                .unwrap_or(&ctx.data.binance_api_url);
            let client =
                BinanceClient::new(base_url, RetryPolicy::default()).map_err(|e| e.to_string())?;
            let log = ctx.log.clone();
            let client = client.with_observer(Arc::new(move |event| log.note(event)));
            ctx.log.note(&format!(
                "fetching {} from {} into {}/{}",
                config.symbols.join(", "),
                client.base_url(),
                lake.url(),
                config.output
            ));
            let fetches = config
                .symbols
                .iter()
                .map(|symbol| fetch_symbol(symbol, &config, &client, &lake, ctx));
            let counts = try_join_all(fetches).await?;
            Ok(TaskOutput {
                rows: Some(counts.iter().sum()),
                metrics: None,
            })
        })
    }
}

/// Fetches one symbol up to now; returns the number of trades written.
async fn fetch_symbol(
    symbol: &str,
    config: &Config,
    client: &BinanceClient,
    lake: &Lake,
    ctx: &TaskContext,
) -> Result<u64, String> {
    let state_key = format!("{}|{}|{symbol}", lake.url(), config.output);
    let lake_last = last_id_in_lake(lake, &config.output, symbol).await?;
    let saved = ctx
        .store
        .task_state(STATE_NAMESPACE, &state_key)
        .await
        .map_err(|e| format!("{symbol}: cannot read the watermark: {e}"))?
        .map(|v| {
            v.parse::<i64>()
                .map_err(|_| format!("{symbol}: unreadable saved watermark `{v}`"))
        })
        .transpose()?;
    let mut next_id = match lake_last.max(saved) {
        Some(last) => last + 1,
        None => match config.start_from_id {
            Some(id) => id,
            None => {
                let recent = client
                    .recent_trades(symbol, MAX_PAGE)
                    .await
                    .map_err(|e| e.to_string())?;
                match recent.first() {
                    Some(t) => t.id,
                    None => {
                        ctx.log
                            .note(&format!("{symbol}: no trades at the exchange yet"));
                        return Ok(0);
                    }
                }
            }
        },
    };
    if saved.is_some_and(|s| lake_last.is_some_and(|l| l > s)) {
        ctx.log.note(&format!(
            "{symbol}: the lake holds trades past the saved watermark (an earlier attempt stopped after writing); resuming after id {}",
            next_id - 1
        ));
    }
    let first_id = next_id;
    let mut buffer: Vec<Trade> = Vec::new();
    let mut written: u64 = 0;
    let mut files = 0;
    loop {
        let page = client
            .historical_trades(symbol, next_id, MAX_PAGE)
            .await
            .map_err(|e| e.to_string())?;
        let caught_up = page.len() < MAX_PAGE as usize;
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
        if buffer.len() >= config.file_rows || (caught_up && !buffer.is_empty()) {
            files += write_files(&buffer, symbol, &config.output, lake).await?;
            let count = buffer.len();
            written += count as u64;
            let last = next_id - 1;
            ctx.store
                .set_task_state(STATE_NAMESPACE, &state_key, &last.to_string())
                .await
                .map_err(|e| format!("{symbol}: cannot save the watermark after id {last}: {e}"))?;
            ctx.log.note(&format!(
                "{symbol}: committed ids {}..={last} ({count} trades)",
                buffer.first().map_or(last, |t| t.id)
            ));
            buffer.clear();
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

/// The highest trade id any file of `symbol` in the lake holds.
async fn last_id_in_lake(lake: &Lake, output: &str, symbol: &str) -> Result<Option<i64>, String> {
    let objects = lake
        .list(&raw_trades::symbol_prefix(output, symbol))
        .await
        .map_err(|e| e.to_string())?;
    Ok(objects
        .iter()
        .filter_map(|o| raw_trades::id_range(&o.key))
        .map(|(_, last)| last)
        .max())
}

/// Writes `trades` (ascending ids) as one file per UTC date, in id order; returns the number
/// of files.
async fn write_files(
    trades: &[Trade],
    symbol: &str,
    output: &str,
    lake: &Lake,
) -> Result<usize, String> {
    let mut files = 0;
    for chunk in
        trades.chunk_by(|a, b| raw_trades::utc_day(a.time_ms) == raw_trades::utc_day(b.time_ms))
    {
        let (Some(first), Some(last)) = (chunk.first(), chunk.last()) else {
            continue;
        };
        let key = raw_trades::file_key(
            output,
            symbol,
            &raw_trades::utc_date(first.time_ms),
            first.id,
            last.id,
        );
        let bytes = raw_trades::encode(chunk)
            .map_err(|e| format!("{symbol}: cannot encode Parquet: {e}"))?;
        lake.put(&key, bytes).await.map_err(|e| e.to_string())?;
        files += 1;
    }
    Ok(files)
}
