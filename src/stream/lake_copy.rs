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
use std::time::Duration;

use tokio::sync::watch;

use crate::lake::{Lake, raw_trades};
use crate::staging::Staging;

/// Where a stream's copy goes when its file does not say: beside the batch fetches' files,
/// not among them, since both would resume from the same ledger.
pub const DEFAULT_PREFIX: &str = "raw/binance_stream_trades";
/// How often committed trades are copied when the file does not say.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(5);
/// Trades read from staging per symbol at a time.
const READ: i64 = 50_000;

/// Copies one stream's committed trades of `exchange` into the lake.
pub struct LakeCopier {
    pub stream: String,
    pub exchange: &'static str,
    pub symbols: Vec<String>,
    pub staging: Staging,
    pub lake: Lake,
    pub prefix: String,
    pub every: Duration,
}

impl LakeCopier {
    /// Copies every `every` until `stop`, then once more (the stream has committed its last
    /// batch by then).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut copied: BTreeMap<String, i64> = BTreeMap::new();
        loop {
            let stopping = *stop.borrow();
            if let Err(e) = self.pass(&mut copied).await {
                tracing::warn!(stream = %self.stream, error = %e, "copying to the lake failed; trying again at the next pass");
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

    /// One pass over every symbol; `copied` holds the last id copied per symbol, read from
    /// the lake the first time.
    async fn pass(&self, copied: &mut BTreeMap<String, i64>) -> Result<(), String> {
        for symbol in &self.symbols {
            let mut last = match copied.get(symbol) {
                Some(&last) => Some(last),
                None => self.last_in_lake(symbol).await?,
            };
            loop {
                let trades = self
                    .staging
                    .trades_after(self.exchange, symbol, last.unwrap_or(i64::MIN), READ)
                    .await
                    .map_err(|e| e.to_string())?;
                let Some(newest) = trades.last() else { break };
                let newest = newest.id;
                for day in trades.chunk_by(|a, b| {
                    raw_trades::utc_day(a.time_ms) == raw_trades::utc_day(b.time_ms)
                }) {
                    let (Some(first), Some(end)) = (day.first(), day.last()) else {
                        continue;
                    };
                    let date = raw_trades::utc_date(first.time_ms);
                    let key = raw_trades::file_key(&self.prefix, symbol, &date, first.id, end.id);
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
                copied.insert(symbol.clone(), newest);
                if (trades.len() as i64) < READ {
                    break;
                }
            }
        }
        Ok(())
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
