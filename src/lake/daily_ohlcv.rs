//! A day of one symbol's raw trades summed up as one row: what the lake keeps of a day once
//! its trades are past their retention.
//!
//! `<prefix>/symbol=BTCUSDT/date=2025-11-22/ohlcv.parquet`, one row with `symbol`, `date`,
//! `open`, `high`, `low`, `close` (decimal(38, 8)), `volume` (the sum of quantities,
//! decimal(38, 8)), `quote_volume` (the sum of price × quantity, decimal(38, 16)), `trades`,
//! `first_trade_id`, `last_trade_id` (int64), `first_trade_time`, `last_trade_time`
//! (timestamp ms UTC). Every figure is exact: sums of the decimals' units, never floats.

use bytes::Bytes;
use polars::prelude::*;

use super::raw_trades::decimal_series;
use crate::decimal::{Decimal, Product};
use crate::exchange::Trade;

/// One symbol's day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyOhlcv {
    pub symbol: String,
    /// `YYYY-MM-DD`.
    pub date: String,
    pub open: Decimal,
    pub high: Decimal,
    pub low: Decimal,
    pub close: Decimal,
    pub volume: Decimal,
    pub quote_volume: Product,
    pub trades: i64,
    pub first_trade_id: i64,
    pub last_trade_id: i64,
    pub first_trade_time_ms: i64,
    pub last_trade_time_ms: i64,
}

/// The key of a symbol's day under `prefix`.
pub fn file_key(prefix: &str, symbol: &str, date: &str) -> String {
    format!(
        "{}/symbol={symbol}/date={date}/ohlcv.parquet",
        prefix.trim_end_matches('/')
    )
}

impl DailyOhlcv {
    /// The day of `trades` (any order; one id counted once); `None` for no trades, or sums
    /// past 38 digits.
    pub fn of(symbol: &str, date: &str, trades: &mut Vec<Trade>) -> Option<DailyOhlcv> {
        trades.sort_by_key(|t| t.id);
        trades.dedup_by_key(|t| t.id);
        let (first, last) = (trades.first()?, trades.last()?);
        let mut volume: i128 = 0;
        let mut quote_volume: i128 = 0;
        for t in trades.iter() {
            volume = volume.checked_add(t.qty.units())?;
            quote_volume = quote_volume.checked_add(t.quote_qty.units())?;
        }
        Some(DailyOhlcv {
            symbol: symbol.to_string(),
            date: date.to_string(),
            open: first.price,
            high: trades.iter().map(|t| t.price).max()?,
            low: trades.iter().map(|t| t.price).min()?,
            close: last.price,
            volume: Decimal::from_units(volume)?,
            quote_volume: Product::from_units(quote_volume)?,
            trades: i64::try_from(trades.len()).ok()?,
            first_trade_id: first.id,
            last_trade_id: last.id,
            first_trade_time_ms: first.time_ms,
            last_trade_time_ms: last.time_ms,
        })
    }

    /// The row as a one-row Parquet file.
    pub fn encode(&self) -> PolarsResult<Bytes> {
        let int = |name: &str, value: i64| {
            Int64Chunked::from_iter_values(name.into(), [value].into_iter())
        };
        let time = |name: &str, ms: i64| {
            int(name, ms)
                .into_datetime(TimeUnit::Milliseconds, Some(TimeZone::UTC))
                .into_series()
                .into()
        };
        let columns = vec![
            StringChunked::from_iter_values("symbol".into(), [self.symbol.as_str()].into_iter())
                .into_series()
                .into(),
            StringChunked::from_iter_values("date".into(), [self.date.as_str()].into_iter())
                .into_series()
                .into(),
            decimal_series("open", [self.open].into_iter()).into(),
            decimal_series("high", [self.high].into_iter()).into(),
            decimal_series("low", [self.low].into_iter()).into(),
            decimal_series("close", [self.close].into_iter()).into(),
            decimal_series("volume", [self.volume].into_iter()).into(),
            decimal_series("quote_volume", [self.quote_volume].into_iter()).into(),
            int("trades", self.trades).into_series().into(),
            int("first_trade_id", self.first_trade_id)
                .into_series()
                .into(),
            int("last_trade_id", self.last_trade_id)
                .into_series()
                .into(),
            time("first_trade_time", self.first_trade_time_ms),
            time("last_trade_time", self.last_trade_time_ms),
        ];
        let mut frame = DataFrame::new(1, columns)?;
        super::daily_trades::write_parquet(&mut frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trade(id: i64, price: &str, qty: &str, time_ms: i64) -> Trade {
        Trade::new(
            id,
            price.parse().expect("price"),
            qty.parse().expect("qty"),
            time_ms,
            false,
            true,
        )
        .expect("trade")
    }

    #[test]
    fn a_day_sums_up_exactly_whatever_the_order_and_repeats() {
        let mut trades = vec![
            trade(12, "100.10", "0.3", 3_000),
            trade(10, "100.00", "0.1", 1_000),
            trade(11, "100.50", "0.2", 2_000),
            trade(11, "100.50", "0.2", 2_000),
            trade(13, "99.90", "0.00000001", 4_000),
        ];
        let day = DailyOhlcv::of("BTCUSDT", "2025-11-22", &mut trades).expect("day");
        assert_eq!(day.open.to_string(), "100.00000000");
        assert_eq!(day.high.to_string(), "100.50000000");
        assert_eq!(day.low.to_string(), "99.90000000");
        assert_eq!(day.close.to_string(), "99.90000000");
        assert_eq!(day.volume.to_string(), "0.60000001");
        // 10.00 + 20.10 + 30.03 + 0.000000999
        assert_eq!(day.quote_volume.to_string(), "60.1300009990000000");
        assert_eq!(day.trades, 4);
        assert_eq!((day.first_trade_id, day.last_trade_id), (10, 13));
        assert_eq!(
            (day.first_trade_time_ms, day.last_trade_time_ms),
            (1_000, 4_000)
        );
        assert!(DailyOhlcv::of("BTCUSDT", "2025-11-22", &mut Vec::new()).is_none());
    }
}
