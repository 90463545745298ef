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

use polars::prelude::{DataFrame, DataType, LazyFrame, len};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::lake::{Lake, daily_trades};
use crate::redact;
use crate::tasks::{
    BoxFuture, TaskContext, TaskError, TaskKind, TaskOutput, day_bounds_ms, exclusive, off_runtime,
    parse_with,
};
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
            let url = config
                .warehouse
                .as_deref()
                .unwrap_or(&ctx.data.warehouse_url);
            let _loading = exclusive(
                ctx,
                &format!("warehouse.load_star_schema|{}|{date}", redact::secrets(url)),
                &format!("loading the star schema of {date}"),
            )
            .await?;
            let lake = Lake::open(&ctx.data.lake_url)?;
            // Neither the tables nor the snapshot may be replaced while they are read.
            let _curated = exclusive(
                ctx,
                &daily_trades::day_lock(lake.url(), &config.source, date),
                &format!("writing or reading the star schema of {date}"),
            )
            .await?;
            let _snapshot = exclusive(
                ctx,
                &daily_trades::day_lock(lake.url(), &config.snapshot, date),
                &format!("writing or reading the snapshot of {date}"),
            )
            .await?;
            let mut scans = Vec::new();
            for table in [
                "dim_time",
                "dim_symbol",
                "dim_exchange",
                "dim_currency",
                "fact_trades",
            ] {
                let dir = daily_trades::curated_dir(&config.source, table, date);
                let scan = daily_trades::scan_parts(&lake, &dir).await?.ok_or_else(|| {
                    TaskError::transient(format!(
                        "no {table} for {date} under {}/{dir}: run trades.star_schema for that day first",
                        lake.url()
                    ))
                })?;
                scans.push((format!("{}/{dir}", lake.url()), scan));
            }
            let snapshot_dir = daily_trades::snapshot_dir(&config.snapshot, date);
            let snapshot_place = format!("{}/{snapshot_dir}", lake.url());
            let snapshot = daily_trades::scan_parts(&lake, &snapshot_dir)
                .await?
                .ok_or_else(|| {
                    TaskError::transient(format!("no snapshot of {date} under {snapshot_place}"))
                })?;
            // Reading the tables, the checks and the rows' conversion: CPU work, off the
            // async runtime.
            let checked =
                off_runtime(move || check_and_prepare(scans, snapshot, &snapshot_place, date))
                    .await??;
            let (replacements, extracted) = match checked {
                Checked::Failed(failures) => {
                    for failure in &failures {
                        ctx.log.note(&format!("quality check failed: {failure}"));
                    }
                    return Err(TaskError::permanent(format!(
                        "{} quality checks failed for {date}; nothing was loaded: {}",
                        failures.len(),
                        failures.join(" | ")
                    )));
                }
                Checked::Passed {
                    replacements,
                    extracted,
                } => (replacements, extracted),
            };
            ctx.log.note(&format!(
                "{date}: every quality check passed ({extracted} trades)"
            ));
            let warehouse = Warehouse::open(url).await?;
            let written = warehouse.replace(&replacements).await?;
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
                ..TaskOutput::default()
            })
        })
    }
}

/// What the checks of a day found.
enum Checked {
    Failed(Vec<String>),
    Passed {
        replacements: Vec<Replacement>,
        extracted: u64,
    },
}

/// Reads the day's five tables (each `(place, scan)`, in [`StarSchema::tables`] order),
/// checks them against the snapshot and turns them into the warehouse's replacements.
fn check_and_prepare(
    scans: Vec<(String, LazyFrame)>,
    snapshot: LazyFrame,
    snapshot_place: &str,
    date: chrono::NaiveDate,
) -> Result<Checked, TaskError> {
    let mut frames = Vec::new();
    for (place, scan) in scans {
        frames.push(
            scan.collect()
                .map_err(|e| super::polars_error(e).context(&place))?,
        );
    }
    let [
        dim_time,
        dim_symbol,
        dim_exchange,
        dim_currency,
        fact_trades,
    ]: [DataFrame; 5] = frames
        .try_into()
        .map_err(|_| TaskError::permanent("five tables expected".to_string()))?;
    let star = StarSchema {
        dim_time,
        dim_symbol,
        dim_exchange,
        dim_currency,
        fact_trades,
    };
    let extracted = snapshot
        .clone()
        .select([len().cast(DataType::Int64)])
        .collect()
        .and_then(|f| f.columns()[0].as_materialized_series().sum::<i64>())
        .map_err(|e| super::polars_error(e).context(snapshot_place))?;
    let extracted = u64::try_from(extracted).unwrap_or(0);
    let failures = quality::check(&star, snapshot, extracted)
        .map_err(|e| TaskError::permanent(format!("the quality checks could not run: {e}")))?;
    if !failures.is_empty() {
        return Ok(Checked::Failed(failures));
    }
    let day = day_bounds_ms(date);
    let replacements = vec![
        Replacement::day("dim_time", &star.dim_time, "time_id", day)?,
        Replacement::keys("dim_symbol", &star.dim_symbol, "symbol_id")?,
        Replacement::keys("dim_exchange", &star.dim_exchange, "exchange_id")?,
        Replacement::keys("dim_currency", &star.dim_currency, "currency_id")?,
        Replacement::day("fact_trades", &star.fact_trades, "trade_minute", day)?,
    ];
    Ok(Checked::Passed {
        replacements,
        extracted,
    })
}
