//! `kind: lake.retention`: raw trades kept granular for `keep_days`, then replaced by one row
//! per symbol and day ([`DailyOhlcv`]), so a lake of years stays small and its recent days
//! stay whole.
//!
//! ```yaml
//! with: { source: raw/binance_trades, keep_days: 365, daily: raw/binance_trades_daily, dry_run: true }
//! ```
//!
//! Days before the run's date minus `keep_days` are replaced, each symbol's day on its own:
//! its files are read and summed up, the day's `ohlcv.parquet` is written, then the files are
//! deleted. A day whose `ohlcv.parquet` exists is final: a run killed between the write and
//! the deletes only deletes what is left on the next run, never sums up the remainder again.
//! `dry_run: true` lists what would be replaced and changes nothing. One retention or
//! `lake.compact` per source at a time (a lock of the metadata database); the fetches write
//! only recent days, which retention never touches while `keep_days` is at least 1. A day's
//! files that a compaction merged and has not deleted yet are summed up once.

use std::collections::BTreeMap;

use chrono::{Days, NaiveDate};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::lake::daily_ohlcv::{self, DailyOhlcv};
use crate::lake::{Lake, LakeObject, raw_trades};
use crate::tasks::{
    BoxFuture, TaskContext, TaskError, TaskKind, TaskOutput, exclusive, off_runtime, parse_with,
};

pub struct LakeRetention;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The raw trades prefix (`symbol=`/`date=` partitions).
    source: String,
    /// Days kept granular before the run's date.
    keep_days: u32,
    /// Where the daily rows go: `SOURCE_daily` by default.
    daily: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

impl Config {
    fn daily(&self) -> String {
        self.daily
            .clone()
            .unwrap_or_else(|| format!("{}_daily", self.source.trim_end_matches('/')))
    }
}

impl TaskKind for LakeRetention {
    fn name(&self) -> &'static str {
        "lake.retention"
    }

    fn check(&self, with: &Value) -> Result<(), String> {
        let config: Config = parse_with(with)?;
        if config.keep_days == 0 {
            return Err(
                "`with.keep_days` must be at least 1: today's partitions are still being written"
                    .to_string(),
            );
        }
        if config.source.trim_matches('/').is_empty() {
            return Err("`with.source` is empty: retention would walk the whole lake".to_string());
        }
        if config.daily().trim_end_matches('/') == config.source.trim_end_matches('/') {
            return Err("`with.daily` must not be `with.source`".to_string());
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
            self.check(&with).map_err(TaskError::permanent)?;
            let today = ctx.day(None).map_err(TaskError::permanent)?;
            let cutoff = today
                .checked_sub_days(Days::new(u64::from(config.keep_days)))
                .ok_or_else(|| TaskError::permanent("`with.keep_days` reaches before year 1"))?;
            let lake = Lake::open(&ctx.data.lake_url)?;
            let source = config.source.trim_end_matches('/');
            let _lock = exclusive(
                ctx,
                &upkeep_lock(&lake, source),
                &format!("compacting or applying retention to {source}"),
            )
            .await?;
            let days = days_before(lake.list(&format!("{source}/")).await?, cutoff);
            let daily = config.daily();
            ctx.log.note(&format!(
                "{} symbol-days of {}/{source} are before {cutoff} ({} days before {today}){}",
                days.len(),
                lake.url(),
                config.keep_days,
                if config.dry_run {
                    "; dry run: nothing changes"
                } else {
                    ""
                }
            ));
            let (mut replaced, mut deleted, mut freed) = (0_u64, 0_u64, 0_u64);
            for ((symbol, date), files) in days {
                let bytes: u64 = files.iter().map(|f| f.size).sum();
                let key = daily_ohlcv::file_key(&daily, &symbol, &date);
                if config.dry_run {
                    ctx.log.note(&format!(
                        "would replace {} files ({bytes} bytes) of {symbol} {date} by {key}",
                        files.len()
                    ));
                } else {
                    replace_day(&lake, &symbol, &date, &files, &key, ctx).await?;
                }
                replaced += 1;
                deleted += files.len() as u64;
                freed += bytes;
            }
            let verb = if config.dry_run {
                "would replace"
            } else {
                "replaced"
            };
            ctx.log.note(&format!(
                "{verb} {replaced} symbol-days: {deleted} files, {freed} bytes"
            ));
            let metrics = [("files", deleted), ("bytes", freed)]
                .into_iter()
                .map(|(name, n)| (name.to_string(), json!(n)))
                .collect();
            Ok(TaskOutput {
                rows: Some(replaced),
                metrics: Some(metrics),
                ..TaskOutput::default()
            })
        })
    }
}

/// The lock of the metadata database that one upkeep of a source's files holds at a time:
/// retention and compaction both rewrite its partitions.
pub(super) fn upkeep_lock(lake: &Lake, source: &str) -> String {
    format!("lake.upkeep|{}|{source}", lake.url())
}

/// The granular files of each (symbol, date) partition dated before `cutoff`.
fn days_before(
    objects: Vec<LakeObject>,
    cutoff: NaiveDate,
) -> BTreeMap<(String, String), Vec<LakeObject>> {
    let mut days: BTreeMap<(String, String), Vec<LakeObject>> = BTreeMap::new();
    for object in objects {
        if !object.key.ends_with(".parquet") {
            continue;
        }
        let symbol = object
            .key
            .split('/')
            .find_map(|part| part.strip_prefix("symbol="));
        let date = raw_trades::date_of(&object.key)
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
        if let (Some(symbol), Some(date)) = (symbol, date)
            && date < cutoff
        {
            days.entry((symbol.to_string(), date.to_string()))
                .or_default()
                .push(object);
        }
    }
    days
}

/// Sums up one symbol's day into `key` (unless that is done already), then deletes its files.
async fn replace_day(
    lake: &Lake,
    symbol: &str,
    date: &str,
    files: &[LakeObject],
    key: &str,
    ctx: &TaskContext,
) -> Result<(), TaskError> {
    let dir = key.rsplit_once('/').map_or(key, |(dir, _)| dir);
    let done = lake
        .list(&format!("{dir}/"))
        .await?
        .iter()
        .any(|o| o.key == key);
    if done {
        ctx.log.note(&format!(
            "{symbol} {date}: {key} exists (an earlier run stopped before its deletes); deleting the {} files left",
            files.len()
        ));
    } else {
        let mut trades = Vec::new();
        // Files a compaction merged and has not deleted yet hold trades twice.
        for file in &raw_trades::current_files(files.to_vec()) {
            let bytes = lake.get(&file.key).await?;
            let decoded = off_runtime(move || raw_trades::decode(bytes))
                .await?
                .map_err(|e| {
                    TaskError::permanent(format!("{}: not a raw trades file: {e}", file.key))
                })?;
            trades.extend(decoded);
        }
        let (symbol_owned, date_owned) = (symbol.to_string(), date.to_string());
        let encoded = off_runtime(move || {
            DailyOhlcv::of(&symbol_owned, &date_owned, &mut trades).map(|day| day.encode())
        })
        .await?;
        let bytes = match encoded {
            Some(Ok(bytes)) => bytes,
            Some(Err(e)) => {
                return Err(TaskError::transient(format!(
                    "{symbol} {date}: cannot encode Parquet: {e}"
                )));
            }
            None => {
                return Err(TaskError::permanent(format!(
                    "{symbol} {date}: its files hold no trades, or sums past 38 digits; left as they are"
                )));
            }
        };
        lake.put(key, bytes).await?;
    }
    for file in files {
        lake.delete(&file.key).await?;
    }
    ctx.log.note(&format!(
        "{symbol} {date}: {} files replaced by {key}",
        files.len()
    ));
    Ok(())
}
