//! `kind: trades.star_schema`: a day's trade snapshot into `dim_time`, `dim_symbol`,
//! `dim_exchange`, `dim_currency` and `fact_trades` (see [`crate::transform::star_schema`]).
//!
//! ```yaml
//! with: { date: "{{ ds }}", source: raw/trades_daily, output: curated }
//! ```
//!
//! Writes `<output>/<table>/year=YYYY/month=MM/day=DD/part-*.parquet` for each table,
//! replacing an earlier run's aside, then switching (see [`daily_trades`]), under a lock per
//! day. The Polars work runs on blocking threads, off the async runtime. Symbol ids come from the metadata store (assigned once, stable
//! across runs and days); base and quote assets from Binance's exchangeInfo, cached in the
//! metadata store, never guessed from the symbol's letters. Rows: the `fact_trades` rows.

use polars::prelude::DataType;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    BoxFuture, TaskContext, TaskError, TaskKind, TaskOutput, exclusive, off_runtime, parse_with,
};
use crate::exchange::binance::{BinanceClient, RetryPolicy};
use crate::lake::{Lake, daily_trades};
use crate::transform::star_schema::{self, ExchangeRef, SymbolRef};

pub struct TradesStarSchema;

/// Where base and quote assets are cached: `BASE QUOTE` by symbol.
const ASSETS_NAMESPACE: &str = "binance.exchange_info.assets";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// `YYYY-MM-DD`; the run's `ds` when absent.
    date: Option<String>,
    /// The lake prefix of the daily snapshots.
    #[serde(default = "super::trades_extract::default_output")]
    source: String,
    /// The lake prefix of the curated tables.
    #[serde(default = "default_output")]
    output: String,
    /// Overrides `BINANCE_API_URL` for exchangeInfo.
    base_url: Option<String>,
}

pub(super) fn default_output() -> String {
    "curated".to_string()
}

impl TaskKind for TradesStarSchema {
    fn name(&self) -> &'static str {
        "trades.star_schema"
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
            let lake = Lake::open(&ctx.data.lake_url)?;
            let _writing = exclusive(
                ctx,
                &daily_trades::day_lock(lake.url(), &config.output, date),
                &format!("writing or reading the star schema of {date}"),
            )
            .await?;
            // The snapshot must not be replaced while it is read.
            let _reading = exclusive(
                ctx,
                &daily_trades::day_lock(lake.url(), &config.source, date),
                &format!("writing or reading the snapshot of {date}"),
            )
            .await?;
            let dir = daily_trades::snapshot_dir(&config.source, date);
            let snapshot = daily_trades::scan_parts(&lake, &dir).await?.ok_or_else(|| {
                TaskError::transient(format!(
                    "no snapshot of {date} under {}/{dir}: run trades.extract for that day first",
                    lake.url()
                ))
            })?;
            let place = format!("{}/{dir}", lake.url());
            let failed = |e: polars::prelude::PolarsError| {
                super::polars_error(e).context(format!("{place}: transform failed"))
            };
            // The one pass over the trades; it also tells which exchanges and symbols the day
            // holds, and how many trades.
            let minutes = off_runtime(move || star_schema::aggregate(snapshot))
                .await?
                .map_err(failed)?;
            let rows_read: i64 = minutes
                .column("trade_count")
                .and_then(|c| c.as_materialized_series().sum::<i64>())
                .map_err(failed)?;
            let exchanges = distinct(&minutes, "exchange")?;
            if exchanges.iter().any(|e| e != "binance") {
                return Err(TaskError::permanent(format!(
                    "{}/{dir}: exchanges {exchanges:?}: only binance is supported",
                    lake.url()
                )));
            }
            let symbols = distinct(&minutes, "symbol")?;
            let base_url = config
                .base_url
                .as_deref()
                .unwrap_or(&ctx.data.binance_api_url);
            let references = symbol_refs(&symbols, base_url, ctx).await?;
            let exchange = ExchangeRef {
                exchange_id: "binance".to_string(),
                exchange_name: "Binance".to_string(),
                api_endpoint: BinanceClient::DEFAULT_BASE_URL.to_string(),
            };
            let (star, encoded) = off_runtime(move || {
                let star = star_schema::finish(minutes, &exchange, &references)?;
                let encoded = star
                    .tables()
                    .into_iter()
                    .map(|(table, frame)| {
                        let mut frame = frame.clone();
                        daily_trades::write_parquet(&mut frame).map(|bytes| (table, bytes))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, polars::prelude::PolarsError>((star, encoded))
            })
            .await?
            .map_err(failed)?;
            let mut metrics = serde_json::Map::new();
            metrics.insert("rows_read".to_string(), json!(rows_read));
            for ((table, frame), (_, bytes)) in star.tables().into_iter().zip(encoded) {
                let out = daily_trades::curated_dir(&config.output, table, date);
                daily_trades::replace_parts(&lake, &out, vec![bytes]).await?;
                ctx.log.note(&format!(
                    "{table}: {} rows into {}/{out}",
                    frame.height(),
                    lake.url()
                ));
                metrics.insert(format!("rows_{table}"), json!(frame.height()));
            }
            Ok(TaskOutput {
                rows: Some(star.fact_trades.height() as u64),
                metrics: Some(metrics),
                ..TaskOutput::default()
            })
        })
    }
}

/// The distinct values of a string column, sorted.
fn distinct(frame: &polars::prelude::DataFrame, name: &str) -> Result<Vec<String>, TaskError> {
    let unusable = |e: polars::prelude::PolarsError| {
        TaskError::permanent(format!("the snapshot has no usable `{name}` column: {e}"))
    };
    let column = frame
        .column(name)
        .and_then(|c| c.cast(&DataType::String))
        .map_err(unusable)?;
    let mut values: Vec<String> = column
        .str()
        .map_err(unusable)?
        .iter()
        .flatten()
        .map(str::to_string)
        .collect();
    values.sort_unstable();
    values.dedup();
    Ok(values)
}

/// Each symbol's stable id and assets: ids from the metadata store, assets from its cache,
/// or from exchangeInfo for symbols not seen before.
async fn symbol_refs(
    symbols: &[String],
    base_url: &str,
    ctx: &TaskContext,
) -> Result<Vec<SymbolRef>, TaskError> {
    let mut cached = Vec::new();
    let mut unknown = Vec::new();
    for symbol in symbols {
        let assets = ctx
            .store
            .task_state(ASSETS_NAMESPACE, symbol)
            .await?
            .and_then(|v| {
                v.split_once(' ')
                    .map(|(b, q)| (b.to_string(), q.to_string()))
            });
        match assets {
            Some(assets) => cached.push((symbol.clone(), assets)),
            None => unknown.push(symbol.clone()),
        }
    }
    if !unknown.is_empty() {
        let client = BinanceClient::new(base_url, RetryPolicy::default())?;
        let infos = client.exchange_info(&unknown).await.map_err(|e| {
            TaskError::from(e).context(format!("base and quote assets of {unknown:?}"))
        })?;
        for info in infos {
            ctx.store
                .set_task_state(
                    ASSETS_NAMESPACE,
                    &info.symbol,
                    &format!("{} {}", info.base_asset, info.quote_asset),
                )
                .await?;
            ctx.log.note(&format!(
                "{}: base {}, quote {} (exchangeInfo)",
                info.symbol, info.base_asset, info.quote_asset
            ));
            cached.push((info.symbol, (info.base_asset, info.quote_asset)));
        }
    }
    let mut references = Vec::new();
    for symbol in symbols {
        let Some((_, (base, quote))) = cached.iter().find(|(s, _)| s == symbol) else {
            return Err(TaskError::permanent(format!(
                "{symbol}: exchangeInfo does not list it"
            )));
        };
        let symbol_id = ctx.store.symbol_id("binance", symbol).await?;
        references.push(SymbolRef {
            symbol: symbol.clone(),
            symbol_id,
            base_asset: base.clone(),
            quote_asset: quote.clone(),
        });
    }
    Ok(references)
}
