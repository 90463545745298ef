//! `kind: warehouse.load_parquet`: loads lake files not loaded yet into warehouse tables.
//!
//! ```yaml
//! with: { source: raw/binance_trades, table: "trades_{{ symbol | lower }}", warehouse: postgres://... }
//! ```
//!
//! `table` is a template over the file's Hive partitions (`symbol=BTCUSDT/date=...` gives
//! `symbol` and `date`). Each file loads together with its ledger entry (one transaction in
//! SQLite and PostgreSQL, a deterministic load job id in BigQuery; see [`crate::warehouse`]),
//! so a retried or killed task loads every file exactly once. A run lists, per partition
//! folder, only the `date=` partitions from the last one it loaded whole on, and reads only
//! that range of the ledger: its cost stays flat however many files the lake holds.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Deserialize;
use serde_json::Value;

use crate::lake::{Lake, raw_trades};
use crate::redact;
use crate::tasks::{
    BoxFuture, TaskContext, TaskError, TaskKind, TaskOutput, off_runtime, parse_with,
};
use crate::template;
use crate::warehouse::{LoadOutcome, Warehouse};

pub struct WarehouseLoadParquet;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The lake prefix whose `.parquet` files to load.
    #[serde(default = "default_source")]
    source: String,
    /// Table name template over the file's partitions.
    #[serde(default = "default_table")]
    table: String,
    /// Overrides `ORCH_WAREHOUSE_URL`.
    warehouse: Option<String>,
}

fn default_source() -> String {
    "raw/binance_trades".to_string()
}

fn default_table() -> String {
    "trades_{{ symbol | lower }}".to_string()
}

/// The Hive partitions (`key=value` folders) of a lake key.
fn partitions(key: &str) -> BTreeMap<String, String> {
    key.split('/')
        .filter_map(|part| part.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl TaskKind for WarehouseLoadParquet {
    fn name(&self) -> &'static str {
        "warehouse.load_parquet"
    }

    fn check(&self, with: &Value) -> Result<(), String> {
        let config: Config = parse_with(with)?;
        template::check_syntax(&config.table)
    }

    fn own_templates(&self) -> &'static [&'static str] {
        &["table"]
    }

    fn run<'a>(
        &'a self,
        with: Value,
        ctx: &'a TaskContext,
    ) -> BoxFuture<'a, Result<TaskOutput, TaskError>> {
        Box::pin(async move {
            let config: Config = parse_with(&with).map_err(TaskError::permanent)?;
            let lake = Lake::open(&ctx.data.lake_url)?;
            let url = config
                .warehouse
                .as_deref()
                .unwrap_or(&ctx.data.warehouse_url);
            let warehouse = Warehouse::open(url).await?;
            let source = format!("{}/", config.source.trim_end_matches('/'));
            let mut per_table: BTreeMap<String, (u64, u64)> = BTreeMap::new();
            let mut pending_files = 0;
            for (dir, from) in partitions_to_scan(&lake, &source, url, ctx).await? {
                let (pending, last_listed) =
                    pending_files_of(&lake, &warehouse, &dir, from.as_deref()).await?;
                pending_files += pending.len();
                for Pending { key, only_ids } in &pending {
                    let table = template::render_with_values(&config.table, &partitions(key))
                        .map_err(|e| TaskError::permanent(format!("{key}: table name: {e}")))?;
                    let mut bytes = match lake.get(key).await {
                        Ok(bytes) => bytes,
                        // Merged away by `lake.compact` after this run listed it (past its
                        // grace): listed again, the merged file stands in for it.
                        Err(e) if e.is_not_found() => {
                            return Err(TaskError::transient(format!(
                                "{key} was listed, then gone (merged by lake.compact?); the retry lists again: {e}"
                            )));
                        }
                        Err(e) => return Err(e.into()),
                    };
                    if let Some(ranges) = only_ids {
                        ctx.log.note(&format!(
                            "{key}: merged from files partly loaded already; loading ids {}",
                            ranges
                                .iter()
                                .map(|(a, b)| format!("{a}..={b}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                        let ranges = ranges.clone();
                        bytes = off_runtime(move || raw_trades::only_ids(bytes, &ranges))
                            .await?
                            .map_err(|e| {
                                TaskError::permanent(format!("{key}: not a raw trades file: {e}"))
                            })?;
                    }
                    match warehouse.load_file(&table, key, bytes).await? {
                        LoadOutcome::Loaded { rows } => {
                            let entry = per_table.entry(table.clone()).or_default();
                            entry.0 += rows;
                            entry.1 += 1;
                            ctx.log.note(&format!("{key}: {rows} rows into {table}"));
                        }
                        LoadOutcome::AlreadyLoaded => {
                            ctx.log.note(&format!("{key}: already loaded, skipped"));
                        }
                    }
                }
                // Every file listed is loaded: the next run lists from the last date partition
                // listed on (files may still arrive in it).
                if let Some(last) = last_listed {
                    ctx.store
                        .set_task_state(STATE_NAMESPACE, &state_key(url, &dir), &last)
                        .await?;
                }
            }
            ctx.log.note(&format!(
                "{pending_files} new files under {}/{source} for {}",
                lake.url(),
                redact::secrets(url)
            ));
            for (table, (rows, files)) in &per_table {
                ctx.log
                    .note(&format!("{table}: {rows} rows from {files} files"));
            }
            Ok(TaskOutput {
                rows: Some(per_table.values().map(|(rows, _)| rows).sum()),
                metrics: None,
                ..TaskOutput::default()
            })
        })
    }
}

/// Where the loader keeps, per warehouse and partition folder (`.../symbol=BTCUSDT/`), the
/// last `date=` partition it has loaded whole.
const STATE_NAMESPACE: &str = "warehouse.load_parquet";

fn state_key(warehouse_url: &str, dir: &str) -> String {
    format!("{}|{dir}", redact::secrets(warehouse_url))
}

/// The folders below `source` to load from, each with the `date=` partition to list from:
/// the last one loaded whole, since fetches write new files into it or later ones (trade ids
/// and times only grow). `None` lists the folder whole (a first run, or no dates).
async fn partitions_to_scan(
    lake: &Lake,
    source: &str,
    warehouse_url: &str,
    ctx: &TaskContext,
) -> Result<Vec<(String, Option<String>)>, TaskError> {
    let mut dirs = Vec::new();
    for dir in lake.list_dirs(source).await? {
        let from = ctx
            .store
            .task_state(STATE_NAMESPACE, &state_key(warehouse_url, &dir))
            .await?;
        dirs.push((dir, from));
    }
    if dirs.is_empty() {
        // Files straight under the source, if any.
        dirs.push((source.to_string(), None));
    }
    Ok(dirs)
}

/// A file to load.
struct Pending {
    key: String,
    /// Only these ids (inclusive ranges): the file was merged by `lake.compact` from files of
    /// which some were loaded already.
    only_ids: Option<Vec<(i64, i64)>>,
}

/// The `.parquet` files of `dir` from the `date=` partition `from` on that the ledger does
/// not list, and the last `date=` partition (`date=2026-11-22/`) among those listed. A file
/// that `lake.compact` merged from others is not loaded for the ids its parts brought in
/// already, and files it merged away are skipped: each trade is loaded once.
async fn pending_files_of(
    lake: &Lake,
    warehouse: &Warehouse,
    dir: &str,
    from: Option<&str>,
) -> Result<(Vec<Pending>, Option<String>), TaskError> {
    let (listed, ledger_from) = match from {
        Some(from) => (
            lake.list_partitions_from(dir, Some(from)).await?,
            format!("{dir}{from}"),
        ),
        None => (lake.list(dir).await?, dir.to_string()),
    };
    // A folder replaced as a whole (a day of the star schema) holds new file names at every
    // rerun: appended file by file, its rows would load again each time.
    if let Some(manifest) = listed.iter().find(|o| o.key.ends_with("/_manifest.json")) {
        return Err(TaskError::permanent(format!(
            "{} holds a day that is replaced as a whole, not files to append: load it with warehouse.load_star_schema",
            manifest.key.trim_end_matches("_manifest.json")
        )));
    }
    let last_listed = listed
        .iter()
        .filter_map(|o| o.key.strip_prefix(dir)?.split('/').next())
        .filter(|part| part.starts_with("date="))
        .max()
        .map(|part| format!("{part}/"));
    let loaded: HashSet<String> = warehouse
        .loaded_files(dir, &ledger_from)
        .await?
        .into_iter()
        .collect();
    // The id ranges loaded, per partition folder.
    let mut loaded_ranges: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    for key in &loaded {
        if let (Some((folder, _)), Some(range)) = (key.rsplit_once('/'), raw_trades::id_range(key))
        {
            loaded_ranges.entry(folder).or_default().push(range);
        }
    }
    let mut pending = Vec::new();
    for key in raw_trades::current_files(listed).into_iter().map(|o| o.key) {
        if !key.ends_with(".parquet") || loaded.contains(&key) {
            continue;
        }
        let folder = key.rsplit_once('/').map_or("", |(folder, _)| folder);
        let covered = loaded_ranges.get(folder).map_or(&[][..], Vec::as_slice);
        let only_ids = match raw_trades::id_range(&key) {
            Some(range) if !covered.is_empty() => {
                let left = raw_trades::uncovered(range, covered);
                if left.is_empty() {
                    // Merged from files all loaded.
                    continue;
                }
                (left != [range]).then_some(left)
            }
            _ => None,
        };
        pending.push(Pending { key, only_ids });
    }
    Ok((pending, last_listed))
}
