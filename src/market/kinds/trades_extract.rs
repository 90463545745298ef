//! `kind: trades.extract`: one UTC day of staged trades into a Parquet snapshot in the lake.
//!
//! ```yaml
//! with: { date: "{{ ds }}", exchange: [binance, kucoin], table: raw_trades, output: raw/trades_daily }
//! ```
//!
//! Reads the staging store's trades of each exchange listed with `trade_time` from 00:00 to
//! 24:00 UTC of `date` (the run's logical date, not "today") and writes
//! `<output>/date=YYYY-MM-DD/part-*.parquet`, replacing any earlier snapshot of that day.
//! Rows: the trades extracted.
//!
//! Before it snapshots, it checks that the day is complete in staging, per exchange and
//! symbol: the stream has committed trades past the day's end, and, where the exchange's ids
//! are consecutive per symbol (Binance), the day's ids run without a gap from the last id
//! before the day to the first one after it. Otherwise it fails naming the symbols and id
//! ranges missing, as a retryable error, after waiting up to `wait_for_complete` for the
//! stream's gap backfill to fill them. `allow_incomplete: true` snapshots whatever is there
//! (today's trades, say).

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::lake::{Lake, daily_trades};
use crate::staging::{Staging, TradeColumns};
use crate::tasks::{
    BoxFuture, TaskContext, TaskError, TaskKind, TaskOutput, exclusive, off_runtime, parse_with,
};

pub struct TradesExtract;

/// How often an incomplete day is looked at again while waiting.
const RECHECK_EVERY: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// `YYYY-MM-DD`; the run's `ds` when absent.
    date: Option<String>,
    /// One exchange or a list.
    #[serde(default = "default_exchange", deserialize_with = "one_or_many")]
    exchange: Vec<String>,
    /// The staging table.
    #[serde(default = "default_table")]
    table: String,
    /// Overrides `ORCH_STAGING_URL`.
    staging: Option<String>,
    /// The lake prefix of the daily snapshots.
    #[serde(default = "default_output")]
    output: String,
    /// Symbols the day must hold: `SYMBOL` where one exchange is listed, `EXCHANGE:SYMBOL`
    /// where several are; the symbols staged that day are checked in any case.
    #[serde(default)]
    symbols: Vec<String>,
    /// Snapshot the day even if it is not complete in staging.
    #[serde(default, deserialize_with = "crate::tasks::flag")]
    allow_incomplete: bool,
    /// How long to wait for an incomplete day to complete before failing.
    #[serde(default, deserialize_with = "crate::tasks::duration")]
    wait_for_complete: Duration,
}

fn default_exchange() -> Vec<String> {
    vec!["binance".to_string()]
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

fn default_table() -> String {
    "raw_trades".to_string()
}

pub(super) fn default_output() -> String {
    "raw/trades_daily".to_string()
}

impl TaskKind for TradesExtract {
    fn name(&self) -> &'static str {
        "trades.extract"
    }

    fn check(&self, with: &Value) -> Result<(), String> {
        let config = parse_with::<Config>(with)?;
        if let Some(unknown) = config
            .exchange
            .iter()
            .find(|e| crate::exchange::profile(e).is_none())
        {
            return Err(format!(
                "`exchange`: orch speaks no exchange `{unknown}` (binance, mercado_bitcoin, kucoin)"
            ));
        }
        for entry in &config.symbols {
            match entry.split_once(':') {
                Some((exchange, _)) if !config.exchange.iter().any(|e| e == exchange) => {
                    return Err(format!(
                        "`symbols`: `{entry}` names an exchange `exchange` does not list"
                    ));
                }
                None if config.exchange.len() > 1 => {
                    return Err(format!(
                        "`symbols`: `{entry}` must name its exchange (`EXCHANGE:{entry}`), as several are listed"
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn reads_utc_day(&self) -> bool {
        true
    }

    fn run<'a>(
        &'a self,
        with: Value,
        ctx: &'a TaskContext,
    ) -> BoxFuture<'a, Result<TaskOutput, TaskError>> {
        Box::pin(async move {
            let config: Config = parse_with(&with).map_err(TaskError::permanent)?;
            let date = ctx
                .day(config.date.as_deref())
                .map_err(TaskError::permanent)?;
            let (from_ms, to_ms) = crate::tasks::day_bounds_ms(date);
            let lake = Lake::open(&ctx.data.lake_url)?;
            let dir = daily_trades::snapshot_dir(&config.output, date);
            let _lock = exclusive(
                ctx,
                &daily_trades::day_lock(lake.url(), &config.output, date),
                &format!("writing or reading the snapshot of {date}"),
            )
            .await?;
            let url = config.staging.as_deref().unwrap_or(&ctx.data.staging_url);
            let staging = Staging::open(url, &config.table).await?;
            let started = Instant::now();
            let mut days = Vec::new();
            for exchange in &config.exchange {
                let trades = staging.trades_between(exchange, from_ms, to_ms).await?;
                days.push((exchange.clone(), trades));
            }
            if !config.allow_incomplete {
                loop {
                    let mut missing = Vec::new();
                    for (exchange, trades) in &days {
                        let day = Day {
                            exchange,
                            trades,
                            bounds: (from_ms, to_ms),
                        };
                        missing.extend(incomplete(&staging, &config, &day).await?);
                    }
                    if missing.is_empty() {
                        break;
                    }
                    let texts: Vec<&str> = missing.iter().map(|m| m.text.as_str()).collect();
                    let report = format!(
                        "the staged trades of {date} are not complete: {}",
                        texts.join("; ")
                    );
                    if started.elapsed() + RECHECK_EVERY > config.wait_for_complete {
                        return Err(TaskError::transient(report));
                    }
                    ctx.log
                        .note(&format!("{report}; looking again in {RECHECK_EVERY:?}"));
                    tokio::time::sleep(RECHECK_EVERY).await;
                    // Only ids missing inside the day change what was read; a stream not past the
                    // day's end yet needs only its neighbours looked at again.
                    for (exchange, trades) in days.iter_mut() {
                        if missing
                            .iter()
                            .any(|m| m.inside_the_day && &m.exchange == exchange)
                        {
                            *trades = staging.trades_between(exchange, from_ms, to_ms).await?;
                        }
                    }
                }
            }
            let mut rows = 0;
            for (exchange, trades) in &days {
                for (symbol, count) in trades.counts() {
                    ctx.log
                        .note(&format!("{date} {exchange} {symbol}: {count} trades"));
                }
                rows += trades.len() as u64;
            }
            let parts = off_runtime(move || {
                let mut parts = Vec::new();
                for (exchange, trades) in days {
                    // A day without trades still gets its one part, so readers find the
                    // columns; other exchanges' empty days add nothing.
                    if trades.is_empty() && !parts.is_empty() {
                        continue;
                    }
                    parts.extend(daily_trades::encode_snapshot(&exchange, trades)?);
                }
                Ok::<_, polars::prelude::PolarsError>(parts)
            })
            .await?
            .map_err(|e| TaskError::transient(format!("cannot encode the snapshot: {e}")))?;
            let files = parts.len();
            daily_trades::replace_parts(&lake, &dir, parts).await?;
            ctx.log.note(&format!(
                "{rows} trades of {date} (UTC) from {} into {}/{dir} ({files} files)",
                staging.table(),
                lake.url()
            ));
            let mut metrics = serde_json::Map::new();
            metrics.insert("rows_read".to_string(), json!(rows));
            metrics.insert("files_written".to_string(), json!(files));
            Ok(TaskOutput {
                rows: Some(rows),
                metrics: Some(metrics),
                ..TaskOutput::default()
            })
        })
    }
}

/// One thing that keeps a day from being complete.
struct Missing {
    exchange: String,
    text: String,
    /// Ids missing inside the day: reading the day again is needed to see them filled.
    inside_the_day: bool,
}

/// One exchange's staged trades of the day `[bounds.0, bounds.1)`.
struct Day<'a> {
    exchange: &'a str,
    trades: &'a TradeColumns,
    bounds: (i64, i64),
}

/// What keeps `day` from being complete in staging, per symbol: ids missing inside the day
/// or at its edges (where the exchange's ids are consecutive), or a stream that has not
/// committed trades past the day's end yet. Empty when the day is complete.
async fn incomplete(
    staging: &Staging,
    config: &Config,
    day: &Day<'_>,
) -> Result<Vec<Missing>, TaskError> {
    let Day {
        exchange,
        trades,
        bounds,
    } = *day;
    let consecutive = crate::exchange::profile(exchange).is_some_and(|p| p.consecutive_ids);
    // Named with their exchange when the snapshot takes several.
    let name = |symbol: &str| {
        if config.exchange.len() > 1 {
            format!("{exchange} {symbol}")
        } else {
            symbol.to_string()
        }
    };
    let spans = trades.id_spans();
    let mut symbols: Vec<&str> = spans.iter().map(|s| s.symbol).collect();
    for entry in &config.symbols {
        let symbol = match entry.split_once(':') {
            Some((of, symbol)) if of == exchange => symbol,
            Some(_) => continue,
            None => entry.as_str(),
        };
        if !symbols.contains(&symbol) {
            symbols.push(symbol);
        }
    }
    let mut missing = Vec::new();
    for symbol in symbols {
        let span = spans.iter().find(|s| s.symbol == symbol);
        let (before, after) = staging
            .neighbours(exchange, symbol, span.map(|s| (s.first, s.last)), bounds)
            .await?;
        let mut gaps: Vec<(i64, i64)> = Vec::new();
        let mut inside_the_day = false;
        match span {
            // Only consecutive ids tell a gap.
            _ if !consecutive => {}
            Some(span) => {
                if let Some(before) = before
                    && before + 1 < span.first
                {
                    gaps.push((before + 1, span.first - 1));
                }
                if !span.is_whole() {
                    inside_the_day = true;
                    gaps.extend(trades.id_gaps(symbol, 10));
                }
                if let Some(after) = after
                    && span.last + 1 < after
                {
                    gaps.push((span.last + 1, after - 1));
                }
            }
            None => {
                if let (Some(before), Some(after)) = (before, after)
                    && before + 1 < after
                {
                    gaps.push((before + 1, after - 1));
                }
            }
        }
        if after.is_none() {
            let last = span.map_or(String::new(), |s| {
                format!(" (its last id so far is {})", s.last)
            });
            missing.push(Missing {
                exchange: exchange.to_string(),
                text: format!(
                    "{}: the stream has not committed trades past the day's end yet{last}",
                    name(symbol)
                ),
                inside_the_day: false,
            });
        }
        if !gaps.is_empty() {
            let ranges: Vec<String> = gaps.iter().map(|(a, b)| format!("{a}..={b}")).collect();
            missing.push(Missing {
                exchange: exchange.to_string(),
                text: format!(
                    "{}: trade ids {} are missing",
                    name(symbol),
                    ranges.join(", ")
                ),
                inside_the_day,
            });
        }
    }
    Ok(missing)
}
