//! A stream's copy of its committed trades into the lake, every few seconds, so a trade is
//! queryable with `orch query` moments after the exchange made it.
//!
//! The lake is its own ledger, as for the batch fetches: files are named by the id range
//! they hold ([`raw_trades::file_key`]), and each symbol's copy resumes after the highest id
//! its latest date partition lists. Each pass reads the staging table above that id and
//! writes one file per symbol and day, so a pass killed anywhere, or a stream restarted,
//! neither copies a trade twice nor skips one. The copies are small files by design;
//! `lake.compact` merges them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::ingest::lock;
use crate::lake::{Lake, raw_trades};
use crate::staging::Staging;

/// Where a stream of `exchange` copies to when its file does not say:
/// `raw/<exchange>_stream_trades`, beside the batch fetches' files, not among them, since
/// both would resume from the same ledger.
pub fn default_prefix(exchange: &str) -> String {
    format!("raw/{exchange}_stream_trades")
}
/// How often committed trades are copied when the file does not say.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(5);
/// Trades read from staging per symbol at a time.
const READ: i64 = 50_000;

/// Per symbol, the highest id the copy may take, for a stream whose commits can still land
/// below its newest trade (trades its checks against REST found missing): only what was
/// checked and committed. A symbol absent is not copied yet.
pub type CopyCeiling = Arc<Mutex<BTreeMap<String, i64>>>;

/// Copies one stream's committed trades of `exchange` into the lake.
pub struct LakeCopier {
    pub stream: String,
    pub exchange: &'static str,
    pub symbols: Vec<String>,
    pub staging: Staging,
    pub lake: Lake,
    pub prefix: String,
    pub every: Duration,
    /// `None` where commits follow the ids (Binance fills each gap before going on).
    pub ceiling: Option<CopyCeiling>,
}

impl LakeCopier {
    /// Copies every `every` until `stop`, then once more (the stream has committed its last
    /// batch by then).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut copied: BTreeMap<String, i64> = BTreeMap::new();
        loop {
            let stopping = *stop.borrow();
            for symbol in &self.symbols {
                if let Err(e) = self.copy_symbol(symbol, &mut copied).await {
                    // A write may have landed though it failed: the next pass reads where
                    // the copy stands from the lake again.
                    copied.remove(symbol);
                    tracing::warn!(stream = %self.stream, %symbol, error = %e, "copying to the lake failed; trying again at the next pass");
                }
            }
            if stopping {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.every) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Copies `symbol`'s trades staged since the last copy; `copied` holds the last id copied
    /// per symbol, read from the lake the first time.
    async fn copy_symbol(
        &self,
        symbol: &str,
        copied: &mut BTreeMap<String, i64>,
    ) -> Result<(), String> {
        // Where the copy stands, read from the lake after a start or a failure: then its
        // first write is checked against the files there (below).
        let mut from_lake = !copied.contains_key(symbol);
        let mut last = match copied.get(symbol) {
            Some(&last) => Some(last),
            None => self.last_in_lake(symbol).await?,
        };
        let ceiling = match &self.ceiling {
            Some(ceiling) => match lock(ceiling).get(symbol) {
                Some(&ceiling) => Some(ceiling),
                None => return Ok(()),
            },
            None => None,
        };
        loop {
            let mut trades = self
                .staging
                .trades_after(self.exchange, symbol, last.unwrap_or(i64::MIN), READ)
                .await
                .map_err(|e| e.to_string())?;
            let read = trades.len();
            if let Some(ceiling) = ceiling {
                trades.retain(|t| t.id <= ceiling);
            }
            let Some(newest) = trades.last() else {
                return Ok(());
            };
            let newest = newest.id;
            for day in trades
                .chunk_by(|a, b| raw_trades::utc_day(a.time_ms) == raw_trades::utc_day(b.time_ms))
            {
                let (Some(first), Some(end)) = (day.first(), day.last()) else {
                    continue;
                };
                let date = raw_trades::utc_date(first.time_ms);
                let key = raw_trades::file_key(&self.prefix, symbol, &date, first.id, end.id);
                if from_lake {
                    self.refuse_overlap(&key, first.id, end.id).await?;
                    from_lake = false;
                }
                let day = day.to_vec();
                let bytes = tokio::task::spawn_blocking(move || raw_trades::encode(&day))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("{key}: cannot encode Parquet: {e}"))?;
                self.lake
                    .put(&key, bytes)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            last = Some(newest);
            copied.insert(symbol.to_string(), newest);
            if (read as i64) < READ || trades.len() < read {
                return Ok(());
            }
        }
    }

    /// Fails when a file of the partition holds some of the ids `first..=last`: another
    /// writer of the same prefix (a second stream of the symbol) would make each skip or
    /// repeat the other's trades. Checked once per start, not per write: a day's folder
    /// holds thousands of small files before compaction.
    async fn refuse_overlap(&self, key: &str, first: i64, last: i64) -> Result<(), String> {
        let listed = self
            .lake
            .list(&format!("{}/", raw_trades::folder_of(key)))
            .await
            .map_err(|e| e.to_string())?;
        match listed
            .iter()
            .find(|o| raw_trades::id_range(&o.key).is_some_and(|(a, b)| a <= last && first <= b))
        {
            Some(existing) => Err(format!(
                "refusing to write ids {first}..={last}: {} already holds some of them (another stream copying the same symbol to this prefix?)",
                existing.key
            )),
            None => Ok(()),
        }
    }

    /// The highest id the lake holds of `symbol`: the files of its latest date partition
    /// name it (ids grow with time).
    async fn last_in_lake(&self, symbol: &str) -> Result<Option<i64>, String> {
        let dirs = self
            .lake
            .list_dirs(&raw_trades::symbol_prefix(&self.prefix, symbol))
            .await
            .map_err(|e| e.to_string())?;
        let Some(latest) = dirs.last() else {
            return Ok(None);
        };
        Ok(self
            .lake
            .list(latest)
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .filter_map(|o| raw_trades::id_range(&o.key))
            .map(|(_, last)| last)
            .max())
    }
}
