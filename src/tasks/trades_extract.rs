//! `kind: trades.extract`: one UTC day of staged trades into a Parquet snapshot in the lake.
//!
//! ```yaml
//! with: { date: "{{ ds }}", exchange: binance, table: raw_trades, output: raw/trades_daily }
//! ```
//!
//! Reads the staging store's trades with `trade_time` from 00:00 to 24:00 UTC of `date` (the
//! run's logical date, not "today") and writes `<output>/date=YYYY-MM-DD/part-*.parquet`,
//! replacing any earlier snapshot of that day. Rows: the trades extracted.

use serde::Deserialize;
use serde_json::{Value, json};

use super::{BoxFuture, TaskContext, TaskKind, TaskOutput, parse_with};
use crate::lake::{Lake, daily_trades};
use crate::staging::Staging;

pub struct TradesExtract;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// `YYYY-MM-DD`; the run's `ds` when absent.
    date: Option<String>,
    #[serde(default = "default_exchange")]
    exchange: String,
    /// The staging table.
    #[serde(default = "default_table")]
    table: String,
    /// Overrides `ORCH_STAGING_URL`.
    staging: Option<String>,
    /// The lake prefix of the daily snapshots.
    #[serde(default = "default_output")]
    output: String,
}

fn default_exchange() -> String {
    "binance".to_string()
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
            let (from_ms, to_ms) = super::day_bounds_ms(date);
            let url = config.staging.as_deref().unwrap_or(&ctx.data.staging_url);
            let staging = Staging::open(url, &config.table)
                .await
                .map_err(|e| e.to_string())?;
            let trades = staging
                .trades_between(&config.exchange, from_ms, to_ms)
                .await
                .map_err(|e| e.to_string())?;
            for (symbol, count) in trades.counts() {
                ctx.log.note(&format!("{date} {symbol}: {count} trades"));
            }
            let rows = trades.len() as u64;
            let parts = daily_trades::encode_snapshot(&config.exchange, trades)
                .map_err(|e| format!("cannot encode the snapshot: {e}"))?;
            let lake = Lake::open(&ctx.data.lake_url).map_err(|e| e.to_string())?;
            let dir = daily_trades::snapshot_dir(&config.output, date);
            let files = parts.len();
            daily_trades::replace_parts(&lake, &dir, parts)
                .await
                .map_err(|e| e.to_string())?;
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
            })
        })
    }
}
