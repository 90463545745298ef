//! `kind: warehouse.load_star_schema`: a day of the curated star schema into the warehouse.
//!
//! ```yaml
//! with: { date: "{{ ds }}", source: curated, snapshot: raw/trades_daily, warehouse: postgres://... }
//! ```
//!
//! Reads the day's five tables and checks them against the snapshot
//! ([`crate::transform::quality`]); a failed check fails the task, naming the rows, and loads
//! nothing. Otherwise, in one transaction, it replaces the day's rows of `fact_trades` (by
//! `trade_minute`) and `dim_time` (by `time_id`) and upserts the dimension members
//! (`dim_symbol`, `dim_exchange`, `dim_currency` by id): rerunning a day never duplicates, and
//! a failed load leaves the old day intact. Rows: the rows written.

use polars::prelude::{DataType, len};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{BoxFuture, TaskContext, TaskKind, TaskOutput, day_bounds_ms, parse_with};
use crate::lake::{Lake, daily_trades};
use crate::redact;
use crate::transform::{quality, star_schema::StarSchema};
use crate::warehouse::{Replacement, Warehouse};

pub struct WarehouseLoadStarSchema;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// `YYYY-MM-DD`; the run's `ds` when absent.
    date: Option<String>,
    /// The lake prefix of the curated tables.
    #[serde(default = "super::trades_star_schema::default_output")]
    source: String,
    /// The lake prefix of the daily snapshots, for the quality checks.
    #[serde(default = "super::trades_extract::default_output")]
    snapshot: String,
    /// Overrides `ORCH_WAREHOUSE_URL`.
    warehouse: Option<String>,
}

impl TaskKind for WarehouseLoadStarSchema {
    fn name(&self) -> &'static str {
        "warehouse.load_star_schema"
    }

    fn check(&self, with: &Value) -> Result<(), String> {
        parse_with::<Config>(with).map(|_| ())
    }

    fn run<'a>(
        &'a self,
        with: Value,
        ctx: &'a TaskContext,
    ) -> BoxFuture<'a, Result<TaskOutput, String>> {
        Box::pin(async move {
            let config: Config = parse_with(&with)?;
            let date = ctx.day(config.date.as_deref())?;
            let lake = Lake::open(&ctx.data.lake_url).map_err(|e| e.to_string())?;
            let read = |table: &'static str| {
                let dir = daily_trades::curated_dir(&config.source, table, date);
                let lake = lake.clone();
                async move {
                    let scan = daily_trades::scan_parts(&lake, &dir).await?.ok_or_else(|| {
                        format!(
                            "no {table} for {date} under {}/{dir}: run trades.star_schema for that day first",
                            lake.url()
                        )
                    })?;
                    scan.collect()
                        .map_err(|e| format!("{}/{dir}: {e}", lake.url()))
                }
            };
            let star = StarSchema {
                dim_time: read("dim_time").await?,
                dim_symbol: read("dim_symbol").await?,
                dim_exchange: read("dim_exchange").await?,
                dim_currency: read("dim_currency").await?,
                fact_trades: read("fact_trades").await?,
            };
            let snapshot_dir = daily_trades::snapshot_dir(&config.snapshot, date);
            let snapshot = daily_trades::scan_parts(&lake, &snapshot_dir)
                .await?
                .ok_or_else(|| {
                    format!("no snapshot of {date} under {}/{snapshot_dir}", lake.url())
                })?;
            let extracted = snapshot
                .clone()
                .select([len().cast(DataType::Int64)])
                .collect()
                .and_then(|f| f.columns()[0].as_materialized_series().sum::<i64>())
                .map_err(|e| format!("{}/{snapshot_dir}: {e}", lake.url()))?;
            let extracted = u64::try_from(extracted).unwrap_or(0);
            let failures = quality::check(&star, snapshot, extracted)
                .map_err(|e| format!("the quality checks could not run: {e}"))?;
            if !failures.is_empty() {
                for failure in &failures {
                    ctx.log.note(&format!("quality check failed: {failure}"));
                }
                return Err(format!(
                    "{} quality checks failed for {date}; nothing was loaded: {}",
                    failures.len(),
                    failures.join(" | ")
                ));
            }
            ctx.log.note(&format!(
                "{date}: every quality check passed ({extracted} trades)"
            ));
            let day = day_bounds_ms(date);
            let fail = |e: crate::warehouse::WarehouseError| e.to_string();
            let replacements = vec![
                Replacement::day("dim_time", &star.dim_time, "time_id", day).map_err(fail)?,
                Replacement::keys("dim_symbol", &star.dim_symbol, "symbol_id").map_err(fail)?,
                Replacement::keys("dim_exchange", &star.dim_exchange, "exchange_id")
                    .map_err(fail)?,
                Replacement::keys("dim_currency", &star.dim_currency, "currency_id")
                    .map_err(fail)?,
                Replacement::day("fact_trades", &star.fact_trades, "trade_minute", day)
                    .map_err(fail)?,
            ];
            let url = config
                .warehouse
                .as_deref()
                .unwrap_or(&ctx.data.warehouse_url);
            let warehouse = Warehouse::open(url).await.map_err(fail)?;
            let written = warehouse.replace(&replacements).await.map_err(fail)?;
            let mut metrics = serde_json::Map::new();
            metrics.insert("rows_read".to_string(), json!(extracted));
            for replacement in &replacements {
                ctx.log.note(&format!(
                    "{}: {} rows of {date} into {}",
                    replacement.table,
                    replacement.rows,
                    redact::secrets(url)
                ));
                metrics.insert(
                    format!("rows_{}", replacement.table),
                    json!(replacement.rows),
                );
            }
            Ok(TaskOutput {
                rows: Some(written),
                metrics: Some(metrics),
            })
        })
    }
}
