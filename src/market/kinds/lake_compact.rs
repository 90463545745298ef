//! `kind: lake.compact`: merges the small files of each raw trades partition into files of
//! about `target_mb` (64 MB by default, snappy), so a day fetched every few seconds reads as a
//! few large files instead of thousands of small ones.
//!
//! ```yaml
//! with: { source: raw/binance_trades, target_mb: 64, grace: 10m }
//! ```
//!
//! Consecutive files of a `symbol=`/`date=` partition under half the target are read in id
//! order into a merged file, written a row group at a time, and a file is ended each time it
//! would grow past `target_mb` (at the size per row of the file being written; a small file's
//! own size is mostly its footer). A
//! merged file is named by its files' id range, `FIRST-LAST.parquet`, like any fetched file,
//! so the fetches' watermarks read it as they read theirs. Nothing is rewritten in place:
//! the new file is written whole, and its smaller files are deleted only `grace` later, by a
//! later run. Meanwhile every reader (the fetches' watermark, `warehouse.load_parquet`,
//! `lake.retention`, `orch query`) skips a file whose ids lie within a wider file of its
//! partition ([`raw_trades::split_superseded`]), so a reader counts each trade once whenever it
//! lists, and one that listed just before the merge still finds its files for `grace`.
//!
//! The warehouse loaders' ledgers stay exactly-once: a merged file whose ids were all loaded
//! from its parts is not loaded again, and one partly loaded loads only the ids not loaded
//! (see `warehouse.load_parquet`). A run killed anywhere leaves either the small files alone
//! or both, which the next run finishes.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::lake_retention;
use crate::lake::raw_trades::GrowingFile;
use crate::lake::{Lake, LakeObject, raw_trades};
use crate::tasks::{
    BoxFuture, TaskContext, TaskError, TaskKind, TaskOutput, exclusive, off_runtime, parse_with,
};
use polars::prelude::DataFrame;

pub struct LakeCompact;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The raw trades prefix (`symbol=`/`date=` partitions).
    source: String,
    /// The size a merged file grows to, in MB (10^6 bytes).
    #[serde(default = "default_target_mb")]
    target_mb: f64,
    /// How long merged-away files stay for readers that listed before the merge.
    #[serde(default = "default_grace", deserialize_with = "crate::tasks::duration")]
    grace: Duration,
}

fn default_target_mb() -> f64 {
    64.0
}

fn default_grace() -> Duration {
    Duration::from_secs(600)
}

impl Config {
    fn target_bytes(&self) -> u64 {
        (self.target_mb * 1e6) as u64
    }
}

impl TaskKind for LakeCompact {
    fn name(&self) -> &'static str {
        "lake.compact"
    }

    fn check(&self, with: &Value) -> Result<(), String> {
        let config: Config = parse_with(with)?;
        if config.source.trim_matches('/').is_empty() {
            return Err("`with.source` is empty: compaction would walk the whole lake".to_string());
        }
        if !(config.target_mb.is_finite() && config.target_mb > 0.0) {
            return Err(format!(
                "`with.target_mb` must be a positive number of MB, not {}",
                config.target_mb
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
            let lake = Lake::open(&ctx.data.lake_url)?;
            let source = config.source.trim_end_matches('/');
            let _lock = exclusive(
                ctx,
                &lake_retention::upkeep_lock(&lake, source),
                &format!("compacting or applying retention to {source}"),
            )
            .await?;
            let listed = lake.list(&format!("{source}/")).await?;
            let (current, superseded) = raw_trades::split_superseded(listed);

            let now = chrono::Utc::now();
            let grace = chrono::Duration::from_std(config.grace)
                .map_err(|_| TaskError::permanent("`with.grace` is too long"))?;
            let mut deleted = 0_u64;
            for old in &superseded {
                if old.by.modified + grace <= now {
                    lake.delete(&old.object.key).await?;
                    deleted += 1;
                }
            }
            let waiting = superseded.len() as u64 - deleted;

            let target = config.target_bytes();
            let mut merger = Merger {
                lake: &lake,
                target,
                bytes_per_row: None,
                totals: Totals::default(),
                ctx,
            };
            let mut refused: Vec<String> = Vec::new();
            for run in runs_of_small_files(&current, target) {
                let merged_away = match merger.merge_run(&run).await {
                    Ok(keys) => keys,
                    // A partition whose files break the rules stays as it is; the others
                    // are still compacted, and the run fails at the end to show it.
                    Err(e) if !e.retryable => {
                        ctx.log.note(&format!("left as it is: {}", e.message));
                        refused.push(e.message);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if config.grace.is_zero() {
                    for key in merged_away {
                        lake.delete(&key).await?;
                        deleted += 1;
                    }
                }
            }
            let totals = merger.totals;
            ctx.log.note(&format!(
                "{}/{source}: merged {} files ({} bytes) into {} files ({} bytes, {} rows); deleted {deleted} merged-away files, {waiting} wait for their grace of {}",
                lake.url(),
                totals.files_in,
                totals.bytes_in,
                totals.files_out,
                totals.bytes_out,
                totals.rows,
                humantime::format_duration(config.grace),
            ));
            if let Some(first) = refused.first() {
                return Err(TaskError::permanent(format!(
                    "{} runs of files left as they are (the others are compacted); first: {first}",
                    refused.len()
                )));
            }
            let metrics = [
                ("files_merged", totals.files_in),
                ("files_written", totals.files_out),
                ("bytes_written", totals.bytes_out),
                ("files_deleted", deleted),
            ]
            .into_iter()
            .map(|(name, n)| (name.to_string(), json!(n)))
            .collect();
            Ok(TaskOutput {
                rows: Some(totals.rows),
                metrics: Some(metrics),
                ..TaskOutput::default()
            })
        })
    }
}

#[derive(Default)]
struct Totals {
    files_in: u64,
    bytes_in: u64,
    files_out: u64,
    bytes_out: u64,
    rows: u64,
}

/// Rows a merged file's row group holds: read files are written out this many at a time.
const ROW_GROUP_ROWS: usize = 512 * 512;
/// Rows written before the size of a row in a large snappy file is taken from the file being
/// written: small files carry a footer each, so their sizes say little, and the data's own
/// spread of prices and quantities decides the rest.
const SAMPLE_ROWS: usize = 100_000;
/// More than a raw trade takes even uncompressed (66 bytes in memory): a smaller target is
/// sampled as soon as its rows might fill it.
const MAX_BYTES_PER_ROW: usize = 80;

/// Runs of two or more consecutive files of one partition, in id order, each smaller than
/// half the target: a file that large is left as it is, and splits the run.
fn runs_of_small_files(current: &[LakeObject], target: u64) -> Vec<Vec<LakeObject>> {
    let mut runs = Vec::new();
    let mut run: Vec<LakeObject> = Vec::new();
    let mut run_dir = "";
    // `current` is sorted by key: by partition, then by first id (the names are zero-padded).
    for object in current {
        if raw_trades::id_range(&object.key).is_none() {
            continue;
        }
        let dir = raw_trades::folder_of(&object.key);
        let small = object.size < target / 2;
        if dir != run_dir || !small {
            if run.len() > 1 {
                runs.push(std::mem::take(&mut run));
            }
            run.clear();
            run_dir = dir;
        }
        if small {
            run.push(object.clone());
        }
    }
    if run.len() > 1 {
        runs.push(run);
    }
    runs
}

/// Merges runs of files into files of about `target` bytes.
struct Merger<'a> {
    lake: &'a Lake,
    target: u64,
    /// What a row takes in a merged file: from the file being written, then from each file
    /// written.
    bytes_per_row: Option<f64>,
    totals: Totals,
    ctx: &'a TaskContext,
}

/// A merged file being written: the files read into it, and their rows not written yet.
struct Output {
    file: GrowingFile,
    parts: Vec<LakeObject>,
    pending: Vec<DataFrame>,
    pending_rows: usize,
}

impl Merger<'_> {
    /// Reads the run's files in order into a merged file, a row group at a time, and ends it
    /// each time it would grow past `target`; the rest ends the run. Returns the keys merged
    /// away.
    async fn merge_run(&mut self, run: &[LakeObject]) -> Result<Vec<String>, TaskError> {
        let mut merged_away = Vec::new();
        let mut output: Option<Output> = None;
        let mut previous_id = None;
        for object in run {
            let bytes = self.lake.get(&object.key).await?;
            let key = object.key.clone();
            let (frame, last_id) =
                off_runtime(move || read_checked(&key, bytes, previous_id)).await??;
            previous_id = last_id.or(previous_id);
            let mut out = match output.take() {
                Some(out) => out,
                None => Output {
                    file: GrowingFile::new(frame.schema()).map_err(write_error)?,
                    parts: Vec::new(),
                    pending: Vec::new(),
                    pending_rows: 0,
                },
            };
            out.pending_rows += frame.height();
            out.pending.push(frame);
            out.parts.push(object.clone());
            let read = out.file.rows() as usize + out.pending_rows;
            let sampling = self.bytes_per_row.is_none()
                && (read >= SAMPLE_ROWS || (read * MAX_BYTES_PER_ROW) as u64 >= self.target);
            if out.pending_rows >= ROW_GROUP_ROWS || sampling {
                out = off_runtime(move || write_pending(out)).await??;
                if self.bytes_per_row.is_none() && out.file.rows() > 0 {
                    self.bytes_per_row = Some(out.file.size() as f64 / out.file.rows() as f64);
                }
            }
            match self.bytes_per_row {
                Some(per_row)
                    if out.file.size() as f64 + out.pending_rows as f64 * per_row
                        >= self.target as f64 =>
                {
                    merged_away.extend(self.write(out).await?);
                }
                _ => output = Some(out),
            }
        }
        if let Some(out) = output {
            merged_away.extend(self.write(out).await?);
        }
        Ok(merged_away)
    }

    /// Ends the merged file and writes it beside its parts, named by their id range; a file
    /// of one part is left as it is.
    async fn write(&mut self, out: Output) -> Result<Vec<String>, TaskError> {
        let (Some(first), Some(last)) = (out.parts.first(), out.parts.last()) else {
            return Ok(Vec::new());
        };
        if out.parts.len() < 2 {
            return Ok(Vec::new());
        }
        let (Some((first_id, _)), Some((_, last_id))) = (
            raw_trades::id_range(&first.key),
            raw_trades::id_range(&last.key),
        ) else {
            return Err(TaskError::permanent("a merged file without an id range"));
        };
        // Beside its parts, whatever the source's depth.
        let key = raw_trades::file_in(raw_trades::folder_of(&first.key), first_id, last_id);
        let files = out.parts.len() as u64;
        let bytes_in: u64 = out.parts.iter().map(|p| p.size).sum();
        let keys: Vec<String> = out.parts.iter().map(|p| p.key.clone()).collect();
        let (bytes, rows) = off_runtime(move || {
            let out = write_pending(out)?;
            out.file.finish().map_err(write_error)
        })
        .await??;
        let size = bytes.len() as u64;
        self.lake.put(&key, bytes).await?;
        if rows > 0 {
            self.bytes_per_row = Some(size as f64 / rows as f64);
        }
        self.totals.files_in += files;
        self.totals.bytes_in += bytes_in;
        self.totals.files_out += 1;
        self.totals.bytes_out += size;
        self.totals.rows += rows;
        self.ctx.log.note(&format!(
            "{key}: {rows} rows, {size} bytes, from {files} files ({bytes_in} bytes)"
        ));
        Ok(keys)
    }
}

/// Writes the rows read but not written as one row group.
fn write_pending(mut out: Output) -> Result<Output, TaskError> {
    out.pending_rows = 0;
    let mut frames = std::mem::take(&mut out.pending).into_iter();
    let Some(mut group) = frames.next() else {
        return Ok(out);
    };
    for frame in frames {
        group.vstack_mut_owned(frame).map_err(write_error)?;
    }
    out.file.append(group).map_err(write_error)?;
    Ok(out)
}

/// Files of one partition that do not fit one file: no retry helps.
fn write_error(e: polars::prelude::PolarsError) -> TaskError {
    TaskError::permanent(format!(
        "cannot write the merged file (files of one partition with different columns?): {e}"
    ))
}

/// A raw trades file read, its ids checked: within its name's range and each above the last
/// (`previous`). Returns the frame and its last id.
fn read_checked(
    key: &str,
    bytes: bytes::Bytes,
    mut previous: Option<i64>,
) -> Result<(DataFrame, Option<i64>), TaskError> {
    let frame = raw_trades::read_frame(bytes)
        .map_err(|e| TaskError::permanent(format!("{key}: not a raw trades file: {e}")))?;
    let (low, high) = raw_trades::id_range(key).unwrap_or((i64::MIN, i64::MAX));
    let ids = frame
        .column("trade_id")
        .and_then(|c| c.i64().cloned())
        .map_err(|e| TaskError::permanent(format!("{key}: {e}")))?;
    for id in ids.iter() {
        let Some(id) = id else {
            return Err(TaskError::permanent(format!(
                "{key}: a trade without an id"
            )));
        };
        if id < low || id > high || previous.is_some_and(|p| id <= p) {
            return Err(TaskError::permanent(format!(
                "{key}: trade id {id} is out of order or outside the name's range; the partition is left as it is"
            )));
        }
        previous = Some(id);
    }
    Ok((frame, previous))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(symbol: &str, date: &str, first: i64, last: i64, size: u64) -> LakeObject {
        LakeObject {
            key: raw_trades::file_key("raw/t", symbol, date, first, last),
            size,
            modified: chrono::DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn runs_are_consecutive_small_files_of_one_partition() {
        let current = vec![
            object("A", "2026-11-21", 1, 10, 10),
            object("A", "2026-11-22", 11, 20, 10),
            object("A", "2026-11-22", 21, 30, 10),
            object("A", "2026-11-22", 31, 40, 60),
            object("A", "2026-11-22", 41, 50, 10),
            object("A", "2026-11-22", 51, 60, 10),
            object("A", "2026-11-22", 61, 70, 10),
            object("B", "2026-11-22", 1, 10, 10),
        ];
        let ranges: Vec<Vec<(i64, i64)>> = runs_of_small_files(&current, 100)
            .iter()
            .map(|g| {
                g.iter()
                    .filter_map(|o| raw_trades::id_range(&o.key))
                    .collect()
            })
            .collect();
        // A lone small file of a partition stays; a file of half the target splits a run.
        assert_eq!(
            ranges,
            vec![vec![(11, 20), (21, 30)], vec![(41, 50), (51, 60), (61, 70)]]
        );
    }
}
