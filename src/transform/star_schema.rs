//! A day of trades into a star schema: `fact_trades` per symbol and minute, and the four
//! dimensions it joins, with Polars' lazy engine.
//!
//! Prices, quantities and their sums stay exact decimals; only the means (`avg_price`, the
//! plain mean of trade prices, and `vwap`) are floating point. `total_trade_value` sums each
//! trade's price × quantity with 16 fractional digits ([`trade_value`]: the columns' form of
//! [`crate::decimal::Decimal::exact_mul`]), so it equals exact decimal arithmetic for any tick
//! and step (ETHBTC's products have 9 digits). `open_price` and `close_price` are the first and
//! last trade of the minute by trade id, not by time, since ids are the exchange's own order.

use polars::prelude::*;

use super::currencies;
use crate::decimal::{PRECISION, Product};

/// A symbol as the dimensions need it: its exchange, its stable id and its assets, as the
/// exchange lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolRef {
    pub exchange_id: String,
    pub symbol: String,
    pub symbol_id: i64,
    pub base_asset: String,
    pub quote_asset: String,
}

/// Where the trades come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeRef {
    pub exchange_id: String,
    pub exchange_name: String,
    pub api_endpoint: String,
}

/// The five tables, in the order they are written and loaded.
pub struct StarSchema {
    pub dim_time: DataFrame,
    pub dim_symbol: DataFrame,
    pub dim_exchange: DataFrame,
    pub dim_currency: DataFrame,
    pub fact_trades: DataFrame,
}

impl StarSchema {
    pub fn tables(&self) -> [(&'static str, &DataFrame); 5] {
        [
            ("dim_time", &self.dim_time),
            ("dim_symbol", &self.dim_symbol),
            ("dim_exchange", &self.dim_exchange),
            ("dim_currency", &self.dim_currency),
            ("fact_trades", &self.fact_trades),
        ]
    }
}

/// The snapshot's columns the transform reads.
pub const SNAPSHOT_COLUMNS: [&str; 7] = [
    "exchange",
    "symbol",
    "trade_id",
    "price",
    "qty",
    "trade_time",
    "is_buyer_maker",
];

/// Each trade's price × quantity, in units of 10⁻¹⁶: the product of the two columns' units
/// of 10⁻⁸, which is what [`crate::decimal::Decimal::exact_mul`] computes for one trade,
/// done on whole columns. Computing it here rather than reading the snapshot's `quote_qty`
/// (the same values) keeps a 16-byte column of 10 million rows out of memory.
fn trade_value() -> Expr {
    col("price").to_physical() * col("qty").to_physical()
}

/// Builds the star schema of `trades` (a day's snapshot) for the symbols in `symbols`.
pub fn build(
    trades: LazyFrame,
    exchanges: &[ExchangeRef],
    symbols: &[SymbolRef],
) -> PolarsResult<StarSchema> {
    finish(aggregate(trades)?, exchanges, symbols)
}

/// Per exchange, symbol and minute, the figures of `fact_trades`, on the streaming engine (the
/// day in morsels, not whole columns). The caller learns from it which exchanges and symbols
/// the day holds, and how many trades.
///
/// Two passes over the trades, both streamable: the aggregates, then the prices of each
/// minute's first and last trade id joined back. Taking the price at the id's `arg_min`
/// inside the aggregation is not streamable and made Polars hold the whole day: 1.9 s and
/// 2 GB against 0.9 s and 0.9 GB for 10 million trades.
pub fn aggregate(trades: LazyFrame) -> PolarsResult<DataFrame> {
    let trades = trades.select(SNAPSHOT_COLUMNS.map(col)).with_column(
        col("trade_time")
            .dt()
            .truncate(lit("1m"))
            .alias("trade_minute"),
    );
    let minutes = trades
        .clone()
        .group_by([col("exchange"), col("symbol"), col("trade_minute")])
        .agg([
            col("price").min().alias("min_price"),
            col("price").max().alias("max_price"),
            col("price")
                .cast(DataType::Float64)
                .mean()
                .alias("avg_price"),
            col("qty").sum().alias("total_quantity"),
            trade_value().sum().alias("total_trade_value"),
            len().cast(DataType::Int64).alias("trade_count"),
            when(col("is_buyer_maker").not())
                .then(col("qty"))
                .otherwise(lit(NULL))
                .sum()
                .alias("taker_buy_quantity"),
            col("trade_id").min().alias("first_trade_id"),
            col("trade_id").max().alias("last_trade_id"),
        ])
        .collect_with_engine(Engine::Streaming)?
        .unwrap_single();
    // Ids are per exchange and symbol: (exchange, symbol, id) names one trade. `is_open`
    // tells first from last.
    let ends = |id: &str, is_open: bool| {
        minutes.clone().lazy().select([
            col("exchange"),
            col("symbol"),
            col(id).alias("trade_id"),
            lit(is_open).alias("is_open"),
        ])
    };
    let end_prices = concat(
        [ends("first_trade_id", true), ends("last_trade_id", false)],
        UnionArgs::default(),
    )?;
    let prices = trades
        .select([
            col("exchange"),
            col("symbol"),
            col("trade_id"),
            col("price"),
        ])
        .join(
            end_prices,
            [col("exchange"), col("symbol"), col("trade_id")],
            [col("exchange"), col("symbol"), col("trade_id")],
            JoinArgs::new(JoinType::Inner),
        )
        .collect_with_engine(Engine::Streaming)?
        .unwrap_single();
    let price_at = |is_open: bool, id: &str, name: &str| {
        prices
            .clone()
            .lazy()
            .filter(col("is_open").eq(lit(is_open)))
            .select([
                col("exchange"),
                col("symbol"),
                col("trade_id").alias(id),
                col("price").alias(name),
            ])
    };
    let by = |id: &str| [col("exchange"), col("symbol"), col(id)];
    let minutes = with_units_as_decimal(minutes, "total_trade_value", Product::SCALE)?;
    minutes
        .lazy()
        .join(
            price_at(true, "first_trade_id", "open_price"),
            by("first_trade_id"),
            by("first_trade_id"),
            JoinArgs::new(JoinType::Left),
        )
        .join(
            price_at(false, "last_trade_id", "close_price"),
            by("last_trade_id"),
            by("last_trade_id"),
            JoinArgs::new(JoinType::Left),
        )
        .collect()
}

/// `frame` with its integer column `name` read as units of 10⁻ˢᶜᵃˡᵉ: a `decimal(38, scale)`.
fn with_units_as_decimal(mut frame: DataFrame, name: &str, scale: u32) -> PolarsResult<DataFrame> {
    let units = frame.column(name)?.i128()?.clone();
    frame.with_column(
        units
            .into_decimal_unchecked(PRECISION, scale as usize)
            .into_series()
            .into(),
    )?;
    Ok(frame)
}

/// The five tables from the per-minute figures of [`aggregate`].
pub fn finish(
    minutes: DataFrame,
    exchanges: &[ExchangeRef],
    symbols: &[SymbolRef],
) -> PolarsResult<StarSchema> {
    let symbol_frame = df!(
        "exchange" => symbols.iter().map(|s| s.exchange_id.as_str()).collect::<Vec<_>>(),
        "symbol" => symbols.iter().map(|s| s.symbol.as_str()).collect::<Vec<_>>(),
        "symbol_id" => symbols.iter().map(|s| s.symbol_id).collect::<Vec<_>>(),
        "base_currency_id" => symbols.iter().map(|s| s.base_asset.as_str()).collect::<Vec<_>>(),
        "quote_currency_id" => symbols.iter().map(|s| s.quote_asset.as_str()).collect::<Vec<_>>(),
    )?;
    let fact_trades = minutes
        .lazy()
        .join(
            symbol_frame.clone().lazy(),
            [col("exchange"), col("symbol")],
            [col("exchange"), col("symbol")],
            JoinArgs::new(JoinType::Left),
        )
        .with_columns([
            col("exchange").cast(DataType::String).alias("exchange_id"),
            (col("total_trade_value").cast(DataType::Float64)
                / col("total_quantity").cast(DataType::Float64))
            .alias("vwap"),
        ])
        .select([
            col("symbol"),
            col("symbol_id"),
            col("trade_minute"),
            col("base_currency_id"),
            col("quote_currency_id"),
            col("exchange_id"),
            col("min_price"),
            col("max_price"),
            col("avg_price"),
            col("total_quantity"),
            col("total_trade_value"),
            col("open_price"),
            col("close_price"),
            col("vwap"),
            col("trade_count"),
            col("taker_buy_quantity"),
            col("first_trade_id"),
            col("last_trade_id"),
        ])
        .sort(
            ["exchange_id", "symbol", "trade_minute"],
            Default::default(),
        );

    let fact_trades = fact_trades.collect()?;
    // The day's minutes are the fact's: a small frame, not another pass over the trades.
    let dim_time = fact_trades
        .clone()
        .lazy()
        .select([col("trade_minute").unique().alias("time_id")])
        .with_columns([
            col("time_id")
                .dt()
                .year()
                .cast(DataType::Int32)
                .alias("year"),
            col("time_id")
                .dt()
                .month()
                .cast(DataType::Int32)
                .alias("month"),
            col("time_id").dt().day().cast(DataType::Int32).alias("day"),
            col("time_id")
                .dt()
                .hour()
                .cast(DataType::Int32)
                .alias("hour"),
            col("time_id")
                .dt()
                .minute()
                .cast(DataType::Int32)
                .alias("minute"),
            // ISO: 1 is Monday, 7 is Sunday.
            col("time_id")
                .dt()
                .weekday()
                .cast(DataType::Int32)
                .alias("day_of_week"),
        ])
        .sort(["time_id"], Default::default())
        .collect()?;

    let present = fact_trades
        .select(["exchange_id", "symbol"])?
        .unique_stable(None, UniqueKeepStrategy::First, None)?;
    let pairs: Vec<(&str, &str)> = present
        .column("exchange_id")?
        .str()?
        .iter()
        .zip(present.column("symbol")?.str()?.iter())
        .filter_map(|(exchange, symbol)| Some((exchange?, symbol?)))
        .collect();
    let mut used: Vec<&SymbolRef> = symbols
        .iter()
        .filter(|s| pairs.contains(&(s.exchange_id.as_str(), s.symbol.as_str())))
        .collect();
    used.sort_by_key(|s| s.symbol_id);
    let dim_symbol = df!(
        "symbol_id" => used.iter().map(|s| s.symbol_id).collect::<Vec<_>>(),
        "symbol" => used.iter().map(|s| s.symbol.as_str()).collect::<Vec<_>>(),
        "base_currency_id" => used.iter().map(|s| s.base_asset.as_str()).collect::<Vec<_>>(),
        "quote_currency_id" => used.iter().map(|s| s.quote_asset.as_str()).collect::<Vec<_>>(),
        "exchange_id" => used.iter().map(|s| s.exchange_id.as_str()).collect::<Vec<_>>(),
    )?;
    let mut listed: Vec<&ExchangeRef> = exchanges
        .iter()
        .filter(|e| pairs.iter().any(|(id, _)| *id == e.exchange_id))
        .collect();
    listed.sort_by(|a, b| a.exchange_id.cmp(&b.exchange_id));
    let dim_exchange = df!(
        "exchange_id" => listed.iter().map(|e| e.exchange_id.as_str()).collect::<Vec<_>>(),
        "exchange_name" => listed.iter().map(|e| e.exchange_name.as_str()).collect::<Vec<_>>(),
        "api_endpoint" => listed.iter().map(|e| e.api_endpoint.as_str()).collect::<Vec<_>>(),
    )?;
    let mut currencies: Vec<&str> = used
        .iter()
        .flat_map(|s| [s.base_asset.as_str(), s.quote_asset.as_str()])
        .collect();
    currencies.sort_unstable();
    currencies.dedup();
    let dim_currency = df!(
        "currency_id" => currencies.clone(),
        "currency_name" => currencies.iter().map(|c| currencies::name(c)).collect::<Vec<_>>(),
        "is_stablecoin" => currencies.iter().map(|c| currencies::is_stablecoin(c)).collect::<Vec<_>>(),
    )?;
    Ok(StarSchema {
        dim_time,
        dim_symbol,
        dim_exchange,
        dim_currency,
        fact_trades,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn decimals(name: &str, values: &[&str]) -> Column {
        let units: Vec<i128> = values
            .iter()
            .map(|v| {
                v.parse::<crate::decimal::Decimal>()
                    .expect("decimal")
                    .units()
            })
            .collect();
        Int128Chunked::from_vec(name.into(), units)
            .into_decimal_unchecked(38, 8)
            .into_series()
            .into()
    }

    /// 2026-11-22T00:00:00Z in ms.
    const DAY: i64 = 1_795_305_600_000;

    fn hand_built_day() -> DataFrame {
        // Rows out of id order: open and close must follow ids, not rows.
        let rows: [(&str, i64, &str, &str, i64, bool); 5] = [
            ("BTCUSDT", 101, "100.00", "1.0", 5_000, false),
            ("BTCUSDT", 103, "101.00", "1.0", 59_999, false),
            ("BTCUSDT", 102, "102.00", "2.0", 30_000, true),
            ("BTCUSDT", 104, "99.50", "0.5", 60_000, true),
            ("AAVEUSDT", 7, "180.10", "3", 10_000, false),
        ];
        let times: Vec<i64> = rows.iter().map(|r| DAY + r.4).collect();
        DataFrame::new(
            rows.len(),
            vec![
                Column::new(
                    "symbol".into(),
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                ),
                Column::new(
                    "trade_id".into(),
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                ),
                decimals("price", &rows.map(|r| r.2)),
                decimals("qty", &rows.map(|r| r.3)),
                Int64Chunked::from_vec("trade_time".into(), times)
                    .into_datetime(TimeUnit::Milliseconds, Some(TimeZone::UTC))
                    .into_series()
                    .into(),
                Column::new(
                    "is_buyer_maker".into(),
                    rows.iter().map(|r| r.5).collect::<Vec<_>>(),
                ),
            ],
        )
        .expect("frame")
    }

    /// The trades as the snapshot holds them: with their exchange, and each trade's quote
    /// quantity from the one exact multiply.
    pub(crate) fn as_snapshot(mut frame: DataFrame) -> LazyFrame {
        let units = |name: &str| -> Vec<i128> {
            let column = frame.column(name).expect(name).decimal().expect("decimal");
            column.physical().iter().map(|v| v.expect(name)).collect()
        };
        let quotes: Vec<i128> = units("price")
            .into_iter()
            .zip(units("qty"))
            .map(|(p, q)| {
                let (p, q) = (
                    crate::decimal::Decimal::from_units(p).expect("price"),
                    crate::decimal::Decimal::from_units(q).expect("qty"),
                );
                p.exact_mul(q).expect("in range").units()
            })
            .collect();
        frame
            .with_column(
                Int128Chunked::from_vec("quote_qty".into(), quotes)
                    .into_decimal_unchecked(38, 16)
                    .into_series()
                    .into(),
            )
            .expect("quote_qty");
        frame.lazy().with_column(lit("binance").alias("exchange"))
    }

    fn reference() -> (ExchangeRef, Vec<SymbolRef>) {
        let symbol = |symbol: &str, symbol_id, base: &str, quote: &str| SymbolRef {
            exchange_id: "binance".to_string(),
            symbol: symbol.to_string(),
            symbol_id,
            base_asset: base.to_string(),
            quote_asset: quote.to_string(),
        };
        (
            ExchangeRef {
                exchange_id: "binance".to_string(),
                exchange_name: "Binance".to_string(),
                api_endpoint: "https://api.binance.com".to_string(),
            },
            vec![
                symbol("BTCUSDT", 1, "BTC", "USDT"),
                symbol("AAVEUSDT", 2, "AAVE", "USDT"),
                symbol("STXFDUSD", 3, "STX", "FDUSD"),
            ],
        )
    }

    /// A column's values as text, e.g. decimals as `100.00000000`, times as
    /// `2026-11-22 00:01:00` (UTC, and in milliseconds: the time unit is checked too).
    fn texts(frame: &DataFrame, name: &str) -> Vec<String> {
        let column = frame.column(name).expect(name);
        if let DataType::Datetime(unit, zone) = column.dtype() {
            assert_eq!(
                (unit, zone),
                (&TimeUnit::Milliseconds, &Some(TimeZone::UTC)),
                "{name}"
            );
            let ms = column.cast(&DataType::Int64).expect("physical");
            return ms
                .i64()
                .expect("ms")
                .iter()
                .map(|v| {
                    v.and_then(chrono::DateTime::from_timestamp_millis)
                        .map_or("null".to_string(), |t| {
                            t.format("%Y-%m-%d %H:%M:%S").to_string()
                        })
                })
                .collect();
        }
        let text = column.cast(&DataType::String).expect("as text");
        text.str()
            .expect("text")
            .iter()
            .map(|v| v.unwrap_or("null").to_string())
            .collect()
    }

    #[test]
    fn every_value_of_a_hand_built_day() {
        let (exchange, symbols) = reference();
        let star = build(
            as_snapshot(hand_built_day()),
            std::slice::from_ref(&exchange),
            &symbols,
        )
        .expect("transform");
        let fact = &star.fact_trades;
        assert_eq!(fact.height(), 3);
        let col_text = |name| texts(fact, name);
        assert_eq!(col_text("symbol"), ["AAVEUSDT", "BTCUSDT", "BTCUSDT"]);
        assert_eq!(col_text("symbol_id"), ["2", "1", "1"]);
        assert_eq!(
            col_text("trade_minute"),
            [
                "2026-11-22 00:00:00",
                "2026-11-22 00:00:00",
                "2026-11-22 00:01:00"
            ]
        );
        assert_eq!(col_text("base_currency_id"), ["AAVE", "BTC", "BTC"]);
        assert_eq!(col_text("quote_currency_id"), ["USDT", "USDT", "USDT"]);
        assert_eq!(col_text("exchange_id"), ["binance", "binance", "binance"]);
        assert_eq!(
            col_text("min_price"),
            ["180.10000000", "100.00000000", "99.50000000"]
        );
        assert_eq!(
            col_text("max_price"),
            ["180.10000000", "102.00000000", "99.50000000"]
        );
        assert_eq!(col_text("avg_price"), ["180.1", "101.0", "99.5"]);
        assert_eq!(
            col_text("total_quantity"),
            ["3.00000000", "4.00000000", "0.50000000"]
        );
        assert_eq!(
            col_text("total_trade_value"),
            [
                "540.3000000000000000",
                "405.0000000000000000",
                "49.7500000000000000"
            ]
        );
        assert_eq!(
            col_text("open_price"),
            ["180.10000000", "100.00000000", "99.50000000"]
        );
        assert_eq!(
            col_text("close_price"),
            ["180.10000000", "101.00000000", "99.50000000"]
        );
        assert_eq!(col_text("vwap"), ["180.1", "101.25", "99.5"]);
        assert_eq!(col_text("trade_count"), ["1", "3", "1"]);
        assert_eq!(
            col_text("taker_buy_quantity"),
            ["3.00000000", "2.00000000", "0.00000000"]
        );
        assert_eq!(col_text("first_trade_id"), ["7", "101", "104"]);
        assert_eq!(col_text("last_trade_id"), ["7", "103", "104"]);

        let time = &star.dim_time;
        assert_eq!(
            texts(time, "time_id"),
            ["2026-11-22 00:00:00", "2026-11-22 00:01:00"]
        );
        for (column, expected) in [
            ("year", ["2026", "2026"]),
            ("month", ["11", "11"]),
            ("day", ["22", "22"]),
            ("hour", ["0", "0"]),
            ("minute", ["0", "1"]),
            ("day_of_week", ["7", "7"]),
        ] {
            assert_eq!(texts(time, column), expected, "{column}");
        }

        let symbol = &star.dim_symbol;
        assert_eq!(
            texts(symbol, "symbol_id"),
            ["1", "2"],
            "only the day's symbols"
        );
        assert_eq!(texts(symbol, "symbol"), ["BTCUSDT", "AAVEUSDT"]);
        assert_eq!(texts(symbol, "base_currency_id"), ["BTC", "AAVE"]);
        assert_eq!(texts(symbol, "quote_currency_id"), ["USDT", "USDT"]);
        assert_eq!(texts(symbol, "exchange_id"), ["binance", "binance"]);

        let exchange = &star.dim_exchange;
        assert_eq!(texts(exchange, "exchange_id"), ["binance"]);
        assert_eq!(texts(exchange, "exchange_name"), ["Binance"]);
        assert_eq!(texts(exchange, "api_endpoint"), ["https://api.binance.com"]);

        let currency = &star.dim_currency;
        assert_eq!(texts(currency, "currency_id"), ["AAVE", "BTC", "USDT"]);
        assert_eq!(
            texts(currency, "currency_name"),
            ["Aave", "Bitcoin", "Tether"]
        );
        assert_eq!(texts(currency, "is_stablecoin"), ["false", "false", "true"]);
    }

    /// The transform's product of whole columns is `Decimal::exact_mul`, trade by trade.
    #[test]
    fn trade_values_are_the_one_exact_multiply() {
        use crate::decimal::Decimal;
        let pairs = [
            ("0.03456000", "0.12340000"),
            ("97250.12000000", "0.00001000"),
            ("99999999.99999999", "99999999.99999999"),
            ("0.00000001", "0.00000001"),
        ];
        let prices: Vec<&str> = pairs.iter().map(|p| p.0).collect();
        let qtys: Vec<&str> = pairs.iter().map(|p| p.1).collect();
        let frame = DataFrame::new(
            pairs.len(),
            vec![decimals("price", &prices), decimals("qty", &qtys)],
        )
        .expect("frame");
        let values = frame
            .lazy()
            .select([trade_value().alias("value")])
            .collect()
            .expect("values");
        let values: Vec<i128> = values
            .column("value")
            .expect("value")
            .i128()
            .expect("units")
            .iter()
            .map(|v| v.expect("not null"))
            .collect();
        let exact: Vec<i128> = pairs
            .iter()
            .map(|(p, q)| {
                let (p, q): (Decimal, Decimal) = (p.parse().expect("p"), q.parse().expect("q"));
                p.exact_mul(q).expect("in range").units()
            })
            .collect();
        assert_eq!(values, exact);
    }

    #[test]
    fn a_day_without_trades_gives_empty_tables_with_their_columns() {
        let (exchange, symbols) = reference();
        let empty = hand_built_day().head(Some(0));
        let star = build(
            as_snapshot(empty),
            std::slice::from_ref(&exchange),
            &symbols,
        )
        .expect("transform");
        assert_eq!(star.fact_trades.height(), 0);
        assert_eq!(star.fact_trades.width(), 18);
        assert_eq!(star.dim_time.height(), 0);
        assert_eq!(star.dim_time.width(), 7);
        assert_eq!(star.dim_symbol.height(), 0);
        assert_eq!(star.dim_currency.height(), 0);
        assert_eq!(star.dim_exchange.height(), 0, "no exchange traded");
    }

    /// `fact_trades` against a plain Rust computation over the same generated day.
    #[test]
    fn a_million_trades_match_an_independent_computation() {
        use rand::{Rng, SeedableRng};
        use std::collections::BTreeMap;

        const SYMBOLS: [&str; 5] = ["BTCUSDT", "AAVEUSDT", "STXUSDT", "ETHBTC", "BNBBTC"];
        // Price tick and size step per symbol in units of 10⁻⁸: BTC-quoted pairs have ticks
        // and steps whose products need 9 to 13 fractional digits.
        const GRID: [(i128, i128); 5] = [
            (1_000_000, 1_000),
            (1_000_000, 100_000),
            (10_000, 10_000_000),
            (1_000, 10_000),
            (1, 1_000),
        ];
        const TRADES: usize = 1_000_000;
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let mut symbol = Vec::with_capacity(TRADES);
        let mut ids = Vec::with_capacity(TRADES);
        let mut prices = Vec::with_capacity(TRADES);
        let mut qtys = Vec::with_capacity(TRADES);
        let mut times = Vec::with_capacity(TRADES);
        let mut makers = Vec::with_capacity(TRADES);
        let mut next_id = [0_i64; 5];
        for _ in 0..TRADES {
            let s = rng.random_range(0..SYMBOLS.len());
            next_id[s] += 1;
            symbol.push(SYMBOLS[s]);
            // Ids interleave with time only loosely: open/close must follow ids.
            ids.push(next_id[s] * 10 + rng.random_range(0..10));
            let (tick, step) = GRID[s];
            prices.push(rng.random_range(1_i128..10_000_000) * tick);
            qtys.push(rng.random_range(1_i128..100_000) * step);
            times.push(DAY + rng.random_range(0..86_400_000_i64));
            makers.push(rng.random_bool(0.5));
        }
        let decimal = |name: &str, v: &[i128]| -> Column {
            Int128Chunked::from_vec(name.into(), v.to_vec())
                .into_decimal_unchecked(38, 8)
                .into_series()
                .into()
        };
        let frame = DataFrame::new(
            TRADES,
            vec![
                Column::new("symbol".into(), symbol.clone()),
                Column::new("trade_id".into(), ids.clone()),
                decimal("price", &prices),
                decimal("qty", &qtys),
                Int64Chunked::from_vec("trade_time".into(), times.clone())
                    .into_datetime(TimeUnit::Milliseconds, Some(TimeZone::UTC))
                    .into_series()
                    .into(),
                Column::new("is_buyer_maker".into(), makers.clone()),
            ],
        )
        .expect("frame");
        let references: Vec<SymbolRef> = SYMBOLS
            .iter()
            .enumerate()
            .map(|(i, s)| SymbolRef {
                exchange_id: "binance".to_string(),
                symbol: s.to_string(),
                symbol_id: i as i64 + 1,
                base_asset: "B".to_string(),
                quote_asset: "Q".to_string(),
            })
            .collect();
        let (exchange, _) = reference();
        let star = build(
            as_snapshot(frame),
            std::slice::from_ref(&exchange),
            &references,
        )
        .expect("transform");

        #[derive(Default)]
        struct Minute {
            min: i128,
            max: i128,
            price_sum: f64,
            qty: i128,
            value: i128,
            open: (i64, i128),
            close: (i64, i128),
            count: i64,
            taker: i128,
        }
        let mut expected: BTreeMap<(&str, i64), Minute> = BTreeMap::new();
        for i in 0..TRADES {
            let minute = times[i] - times[i].rem_euclid(60_000);
            let m = expected
                .entry((symbol[i], minute))
                .or_insert_with(|| Minute {
                    min: i128::MAX,
                    max: i128::MIN,
                    open: (i64::MAX, 0),
                    close: (i64::MIN, 0),
                    ..Minute::default()
                });
            m.min = m.min.min(prices[i]);
            m.max = m.max.max(prices[i]);
            m.price_sum += prices[i] as f64 / 1e8;
            m.qty += qtys[i];
            // Exact: units of 10⁻⁸ times units of 10⁻⁸ are units of 10⁻¹⁶.
            m.value += prices[i] * qtys[i];
            if ids[i] < m.open.0 {
                m.open = (ids[i], prices[i]);
            }
            if ids[i] > m.close.0 {
                m.close = (ids[i], prices[i]);
            }
            m.count += 1;
            if !makers[i] {
                m.taker += qtys[i];
            }
        }

        let fact = &star.fact_trades;
        assert_eq!(fact.height(), expected.len());
        let units = |name: &str| -> Vec<i128> {
            let column = fact
                .column(name)
                .expect(name)
                .decimal()
                .expect("decimal")
                .physical()
                .clone();
            column.iter().map(|v| v.expect("not null")).collect()
        };
        let floats = |name: &str| -> Vec<f64> {
            fact.column(name)
                .expect(name)
                .f64()
                .expect("f64")
                .iter()
                .map(|v| v.expect("not null"))
                .collect()
        };
        let ints = |name: &str| -> Vec<i64> {
            fact.column(name)
                .expect(name)
                .i64()
                .expect("i64")
                .iter()
                .map(|v| v.expect("not null"))
                .collect()
        };
        let symbols: Vec<String> = fact
            .column("symbol")
            .expect("symbol")
            .str()
            .expect("str")
            .iter()
            .map(|v| v.expect("not null").to_string())
            .collect();
        let minutes = fact
            .column("trade_minute")
            .expect("minute")
            .cast(&DataType::Int64)
            .expect("ms");
        let minutes: Vec<i64> = minutes
            .i64()
            .expect("ms")
            .iter()
            .map(|v| v.expect("not null"))
            .collect();
        let (min, max, qty, value) = (
            units("min_price"),
            units("max_price"),
            units("total_quantity"),
            units("total_trade_value"),
        );
        let (open, close, taker) = (
            units("open_price"),
            units("close_price"),
            units("taker_buy_quantity"),
        );
        let (avg, vwap, count) = (floats("avg_price"), floats("vwap"), ints("trade_count"));
        let close_to = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        for (row, ((symbol, minute), m)) in expected.iter().enumerate() {
            let at = format!("row {row}: {symbol} {minute}");
            assert_eq!(
                (symbols[row].as_str(), minutes[row]),
                (*symbol, *minute),
                "{at}"
            );
            assert_eq!((min[row], max[row]), (m.min, m.max), "{at}");
            assert_eq!((qty[row], value[row]), (m.qty, m.value), "{at}");
            assert_eq!((open[row], close[row]), (m.open.1, m.close.1), "{at}");
            assert_eq!((count[row], taker[row]), (m.count, m.taker), "{at}");
            assert!(
                close_to(avg[row], m.price_sum / m.count as f64),
                "{at}: avg {}",
                avg[row]
            );
            let expected_vwap = m.value as f64 / 1e8 / m.qty as f64;
            assert!(
                close_to(vwap[row], expected_vwap),
                "{at}: vwap {} vs {expected_vwap}",
                vwap[row]
            );
        }
        assert_eq!(
            star.dim_time.height(),
            expected
                .keys()
                .map(|k| k.1)
                .collect::<std::collections::BTreeSet<_>>()
                .len()
        );
    }
}
