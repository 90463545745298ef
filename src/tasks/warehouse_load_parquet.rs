//! `kind: warehouse.load_parquet`: loads lake files not loaded yet into warehouse tables.
//!
//! ```yaml
//! with: { source: raw/binance_trades, table: "trades_{{ symbol | lower }}", warehouse: postgres://... }
//! ```
//!
//! `table` is a template over the file's Hive partitions (`symbol=BTCUSDT/date=...` gives
//! `symbol` and `date`). Each file loads together with its ledger entry (one transaction in
//! SQLite and PostgreSQL, a deterministic load job id in BigQuery; see [`crate::warehouse`]),
//! so a retried or killed task loads every file exactly once.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;
use serde_json::Value;

use super::{BoxFuture, TaskContext, TaskKind, TaskOutput, parse_with};
use crate::lake::Lake;
use crate::redact;
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
    ) -> BoxFuture<'a, Result<TaskOutput, String>> {
        Box::pin(async move {
            let config: Config = parse_with(&with)?;
            let lake = Lake::open(&ctx.data.lake_url).map_err(|e| e.to_string())?;
            let url = config
                .warehouse
                .as_deref()
                .unwrap_or(&ctx.data.warehouse_url);
            let warehouse = Warehouse::open(url).await.map_err(|e| e.to_string())?;
            let source = format!("{}/", config.source.trim_end_matches('/'));
            let loaded: HashSet<String> = warehouse
                .loaded_files(&source)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .collect();
            let pending: Vec<String> = lake
                .list(&source)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|o| o.key)
                .filter(|k| k.ends_with(".parquet") && !loaded.contains(k))
                .collect();
            ctx.log.note(&format!(
                "{} new files under {}/{source} for {}",
                pending.len(),
                lake.url(),
                redact::secrets(url)
            ));
            let mut per_table: BTreeMap<String, (u64, u64)> = BTreeMap::new();
            for key in &pending {
                let table = template::render_with_values(&config.table, &partitions(key))
                    .map_err(|e| format!("{key}: table name: {e}"))?;
                let bytes = lake.get(key).await.map_err(|e| e.to_string())?;
                match warehouse
                    .load_file(&table, key, bytes)
                    .await
                    .map_err(|e| e.to_string())?
                {
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
            for (table, (rows, files)) in &per_table {
                ctx.log
                    .note(&format!("{table}: {rows} rows from {files} files"));
            }
            Ok(TaskOutput {
                rows: Some(per_table.values().map(|(rows, _)| rows).sum()),
                metrics: None,
            })
        })
    }
}
