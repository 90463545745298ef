//! Checks a day's star schema must pass before it is loaded.
//!
//! - the sum of `trade_count` equals the rows extracted;
//! - no price or quantity in the snapshot is null or not positive;
//! - `min_price <= open, close, vwap, avg <= max_price` in every fact row;
//! - every fact row joins `dim_time`, `dim_symbol` and `dim_currency` (base and quote).
//!
//! A failure names the check, how many rows broke it and the first few of them.

use polars::prelude::*;

use super::star_schema::StarSchema;

/// Rows shown per failed check.
const EXAMPLES: usize = 3;

/// Every failed check, one line each; empty when the day may be loaded.
pub fn check(star: &StarSchema, snapshot: LazyFrame, extracted: u64) -> PolarsResult<Vec<String>> {
    let mut failures = Vec::new();
    let fact = star.fact_trades.clone().lazy();

    let counted = star
        .fact_trades
        .column("trade_count")?
        .as_materialized_series()
        .sum::<i64>()?;
    if u64::try_from(counted).ok() != Some(extracted) {
        failures.push(format!(
            "trade counts: fact_trades counts {counted} trades, the snapshot holds {extracted}"
        ));
    }

    let bad_values = snapshot
        .filter(
            col("price")
                .is_null()
                .or(col("qty").is_null())
                .or(col("price").cast(DataType::Float64).lt_eq(lit(0.0)))
                .or(col("qty").cast(DataType::Float64).lt_eq(lit(0.0))),
        )
        .select([col("symbol"), col("trade_id"), col("price"), col("qty")]);
    report(
        &mut failures,
        "prices and quantities are positive",
        bad_values,
        |frame, i| {
            Ok(format!(
                "{} trade {}: price {}, qty {}",
                value(frame, "symbol", i)?,
                value(frame, "trade_id", i)?,
                value(frame, "price", i)?,
                value(frame, "qty", i)?
            ))
        },
    )?;

    let low = || col("min_price").cast(DataType::Float64);
    let high = || col("max_price").cast(DataType::Float64);
    // Means are floats: allow their last bits of rounding.
    let slack = |e: Expr| e * lit(1e-12);
    let mut outside = lit(false);
    for name in ["open_price", "close_price", "vwap", "avg_price"] {
        let v = col(name).cast(DataType::Float64);
        outside = outside
            .or(v.clone().lt(low() - slack(low())))
            .or(v.clone().gt(high() + slack(high())))
            .or(v.is_null());
    }
    let out_of_range = fact.clone().filter(outside.or(low().gt(high())));
    report(
        &mut failures,
        "min_price <= open, close, vwap, avg <= max_price",
        out_of_range,
        |frame, i| {
            Ok(format!(
                "{} {}: min {}, open {}, close {}, vwap {}, avg {}, max {}",
                value(frame, "symbol", i)?,
                value(frame, "trade_minute", i)?,
                value(frame, "min_price", i)?,
                value(frame, "open_price", i)?,
                value(frame, "close_price", i)?,
                value(frame, "vwap", i)?,
                value(frame, "avg_price", i)?,
                value(frame, "max_price", i)?
            ))
        },
    )?;

    let joins = [
        ("dim_time", &star.dim_time, "trade_minute", "time_id"),
        ("dim_symbol", &star.dim_symbol, "symbol_id", "symbol_id"),
        (
            "dim_currency",
            &star.dim_currency,
            "base_currency_id",
            "currency_id",
        ),
        (
            "dim_currency",
            &star.dim_currency,
            "quote_currency_id",
            "currency_id",
        ),
    ];
    for (dim, frame, fact_key, dim_key) in joins {
        // A left join marking the matches: an anti join needs a Polars feature orch does not
        // otherwise use.
        let members = frame
            .clone()
            .lazy()
            .select([col(dim_key).alias("_member"), lit(true).alias("_found")])
            .unique(None, UniqueKeepStrategy::Any);
        let orphans = fact
            .clone()
            .join(
                members,
                [col(fact_key)],
                [col("_member")],
                JoinArgs::new(JoinType::Left),
            )
            .filter(col("_found").is_null());
        report(
            &mut failures,
            &format!("fact_trades.{fact_key} joins {dim}.{dim_key}"),
            orphans,
            |frame, i| {
                Ok(format!(
                    "{} {}: {fact_key} {}",
                    value(frame, "symbol", i)?,
                    value(frame, "trade_minute", i)?,
                    value(frame, fact_key, i)?
                ))
            },
        )?;
    }
    Ok(failures)
}

/// Adds a failure for `check` when `broken` has rows, showing the first few.
fn report(
    failures: &mut Vec<String>,
    check: &str,
    broken: LazyFrame,
    describe: impl Fn(&DataFrame, usize) -> PolarsResult<String>,
) -> PolarsResult<()> {
    let broken = broken.collect()?;
    if broken.height() == 0 {
        return Ok(());
    }
    let examples = (0..broken.height().min(EXAMPLES))
        .map(|i| describe(&broken, i))
        .collect::<PolarsResult<Vec<_>>>()?;
    failures.push(format!(
        "{check}: {} rows break it, e.g. {}",
        broken.height(),
        examples.join("; ")
    ));
    Ok(())
}

/// One value as text; times as RFC 3339 UTC (Polars formats zoned times only with a
/// time-zone database orch does not build in).
fn value(frame: &DataFrame, column: &str, row: usize) -> PolarsResult<String> {
    let column = frame.column(column)?;
    if let DataType::Datetime(_, _) = column.dtype() {
        let ms = column.cast(&DataType::Datetime(TimeUnit::Milliseconds, None))?;
        let ms = ms.cast(&DataType::Int64)?;
        return Ok(ms
            .i64()?
            .get(row)
            .map_or("null".to_string(), crate::warehouse::timestamp_text));
    }
    Ok(column.get(row)?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::star_schema::tests::as_snapshot;
    use crate::transform::star_schema::{ExchangeRef, SymbolRef, build};

    fn day() -> (DataFrame, Vec<SymbolRef>) {
        let units = |v: &[i128]| -> Column {
            Int128Chunked::from_vec("x".into(), v.to_vec())
                .into_decimal_unchecked(38, 8)
                .into_series()
                .into()
        };
        let mut price = units(&[100_00000000, 101_00000000, 0]);
        price.rename("price".into());
        let mut qty = units(&[1_00000000, 2_00000000, 1_00000000]);
        qty.rename("qty".into());
        let frame = DataFrame::new(
            3,
            vec![
                Column::new("symbol".into(), ["BTCUSDT", "BTCUSDT", "ETHUSDT"]),
                Column::new("trade_id".into(), [1_i64, 2, 9]),
                price,
                qty,
                Int64Chunked::from_vec("trade_time".into(), vec![0, 1_000, 2_000])
                    .into_datetime(TimeUnit::Milliseconds, Some(TimeZone::UTC))
                    .into_series()
                    .into(),
                Column::new("is_buyer_maker".into(), [true, false, true]),
            ],
        )
        .expect("frame");
        let symbols = vec![SymbolRef {
            exchange_id: "binance".to_string(),
            symbol: "BTCUSDT".to_string(),
            symbol_id: 1,
            base_asset: "BTC".to_string(),
            quote_asset: "USDT".to_string(),
        }];
        (frame, symbols)
    }

    fn exchange() -> ExchangeRef {
        ExchangeRef {
            exchange_id: "binance".to_string(),
            exchange_name: "Binance".to_string(),
            api_endpoint: "https://api.binance.com".to_string(),
        }
    }

    #[test]
    fn a_clean_day_passes() {
        let (frame, symbols) = day();
        let clean = frame.head(Some(2));
        let star = build(as_snapshot(clean.clone()), &[exchange()], &symbols).expect("transform");
        let failures = check(&star, clean.lazy(), 2).expect("checks run");
        assert!(failures.is_empty(), "{failures:?}");
    }

    #[test]
    fn broken_rows_are_named() {
        // ETHUSDT has a zero price and no symbol reference; the count is off by one.
        let (frame, symbols) = day();
        let star = build(as_snapshot(frame.clone()), &[exchange()], &symbols).expect("transform");
        let failures = check(&star, frame.lazy(), 4).expect("checks run");
        let text = failures.join("\n");
        assert!(
            text.contains("fact_trades counts 3 trades, the snapshot holds 4"),
            "{text}"
        );
        assert!(
            text.contains(
                "prices and quantities are positive: 1 rows break it, e.g. \"ETHUSDT\" trade 9"
            ),
            "{text}"
        );
        assert!(
            text.contains("fact_trades.symbol_id joins dim_symbol.symbol_id: 1 rows"),
            "{text}"
        );
        assert!(
            text.contains("base_currency_id joins dim_currency"),
            "{text}"
        );
        assert_eq!(failures.len(), 5, "{text}");
    }
}
