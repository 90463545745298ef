//! `kind: trades.star_schema`: a day's trade snapshot into `dim_time`, `dim_symbol`,
//! `dim_exchange`, `dim_currency` and `fact_trades` (see [`crate::transform::star_schema`]).
//!
//! ```yaml
//! with: { date: "{{ ds }}", source: raw/trades_daily, output: curated }
//! ```
//!
//! Writes `<output>/<table>/year=YYYY/month=MM/day=DD/part-*.parquet` for each table,
//! replacing an earlier run's aside, then switching (see [`daily_trades`]), under a lock per
//! day. The Polars work runs on blocking threads, off the async runtime. One build takes
//! every exchange the snapshot holds: `dim_exchange` lists each, and a symbol is keyed by its
//! exchange and name. Symbol ids come from the metadata store (assigned once per exchange and
//! symbol, stable across runs and days); base and quote assets from each exchange's own
//! catalog (Binance's exchangeInfo, Mercado Bitcoin's `/symbols`, KuCoin's `/api/v2/symbols`),
//! cached in the metadata store, never guessed from the symbol's letters. Rows: the
//! `fact_trades` rows.

use polars::prelude::{ChunkCompareEq, DataType};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::exchange;
use crate::lake::{Lake, daily_trades};
use crate::tasks::{
    BoxFuture, TaskContext, TaskError, TaskKind, TaskOutput, exclusive, off_runtime, parse_with,
};
use crate::transform::star_schema::{self, ExchangeRef, SymbolRef};

pub struct TradesStarSchema;

/// Where an exchange's base and quote assets are cached: `BASE QUOTE` by symbol (the name
/// Binance's cache always had).
fn assets_namespace(exchange: &str) -> String {
    format!("{exchange}.exchange_info.assets")
}

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
    /// Overrides `BINANCE_API_URL` for exchangeInfo (the other exchanges' catalogs are read
    /// where the configuration says).
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
            let mut exchanges = Vec::new();
            let mut references = Vec::new();
            for id in distinct(&minutes, "exchange", None)? {
                let Some(profile) = exchange::profile(&id) else {
                    return Err(TaskError::permanent(format!(
                        "{}/{dir}: trades of exchange `{id}`, which orch does not speak",
                        lake.url()
                    )));
                };
                let symbols = distinct(&minutes, "symbol", Some(("exchange", &id)))?;
                let base_url = config.base_url.as_deref().filter(|_| id == "binance");
                references.extend(symbol_refs(profile.id, &symbols, base_url, ctx).await?);
                exchanges.push(ExchangeRef {
                    exchange_id: profile.id.to_string(),
                    exchange_name: profile.display_name.to_string(),
                    api_endpoint: profile.api_endpoint.to_string(),
                });
            }
            let (star, encoded) = off_runtime(move || {
                let star = star_schema::finish(minutes, &exchanges, &references)?;
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

/// The distinct values of a string column, sorted; of the rows where column `where_.0`
/// equals `where_.1` only, when given.
fn distinct(
    frame: &polars::prelude::DataFrame,
    name: &str,
    where_: Option<(&str, &str)>,
) -> Result<Vec<String>, TaskError> {
    let unusable = |e: polars::prelude::PolarsError| {
        TaskError::permanent(format!("the snapshot has no usable `{name}` column: {e}"))
    };
    let rows = match where_ {
        Some((column, value)) => {
            let mask = frame
                .column(column)
                .and_then(|c| c.cast(&DataType::String))
                .and_then(|c| c.str().map(|s| s.equal(value)))
                .map_err(unusable)?;
            frame.filter(&mask).map_err(unusable)?
        }
        None => frame.clone(),
    };
    let column = rows
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
/// or from the exchange's catalog for symbols not seen before.
async fn symbol_refs(
    exchange: &str,
    symbols: &[String],
    base_url: Option<&str>,
    ctx: &TaskContext,
) -> Result<Vec<SymbolRef>, TaskError> {
    let namespace = assets_namespace(exchange);
    let mut cached = Vec::new();
    let mut unknown = Vec::new();
    for symbol in symbols {
        let assets = ctx
            .store
            .task_state(&namespace, symbol)
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
        let catalog = exchange::catalog(exchange, &ctx.data, base_url)?;
        let listed = catalog.instruments(&unknown).await.map_err(|e| {
            TaskError::from(e).context(format!("base and quote assets of {exchange} {unknown:?}"))
        })?;
        for instrument in listed.into_iter().filter(|i| unknown.contains(&i.symbol)) {
            ctx.store
                .set_task_state(
                    &namespace,
                    &instrument.symbol,
                    &format!("{} {}", instrument.base_asset, instrument.quote_asset),
                )
                .await?;
            ctx.log.note(&format!(
                "{exchange} {}: base {}, quote {} (its catalog)",
                instrument.symbol, instrument.base_asset, instrument.quote_asset
            ));
            cached.push((
                instrument.symbol,
                (instrument.base_asset, instrument.quote_asset),
            ));
        }
    }
    let mut references = Vec::new();
    for symbol in symbols {
        let Some((_, (base, quote))) = cached.iter().find(|(s, _)| s == symbol) else {
            return Err(TaskError::permanent(format!(
                "{exchange} {symbol}: the exchange's catalog does not list it"
            )));
        };
        let symbol_id = ctx.store.symbol_id(exchange, symbol).await?;
        references.push(SymbolRef {
            exchange_id: exchange.to_string(),
            symbol: symbol.clone(),
            symbol_id,
            base_asset: base.clone(),
            quote_asset: quote.clone(),
        });
    }
    Ok(references)
}
