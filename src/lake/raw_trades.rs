//! Raw trades in the lake: Hive-partitioned Parquet, one file per fetched id range.
//!
//! `<prefix>/symbol=BTCUSDT/date=2026-11-22/00000000012345678900-00000000012345679999.parquet`
//!
//! The file name carries the first and last trade id it holds, zero-padded so names sort by
//! id. That makes the lake its own ledger: the highest last id listed under a symbol is where
//! the next fetch starts, whatever the metadata database says, so a crash between writing a
//! file and recording the watermark neither refetches (duplicates) nor skips (gaps) a trade.
//! Columns: `trade_id` int64, `price`, `qty` decimal(38, 8), `quote_qty` decimal(38, 16) (price
//! × qty, exact), `trade_time` timestamp(ms, UTC), `is_buyer_maker`, `is_best_match` bool;
//! snappy-compressed.

use std::io::Cursor;

use bytes::Bytes;
use chrono::DateTime;
use polars::prelude::*;

use super::{Lake, LakeError, LakeObject};
use crate::decimal::{Decimal, Fixed, PRECISION};
use crate::exchange::Trade;

/// Where a file of trades of `symbol` on `date` (`YYYY-MM-DD`) with ids `first..=last` goes.
pub fn file_key(prefix: &str, symbol: &str, date: &str, first: i64, last: i64) -> String {
    format!(
        "{}/symbol={symbol}/date={date}/{first:020}-{last:020}.parquet",
        prefix.trim_end_matches('/')
    )
}

/// The id range a file key names, if it is one of ours.
pub fn id_range(key: &str) -> Option<(i64, i64)> {
    let name = key.rsplit('/').next()?.strip_suffix(".parquet")?;
    let (first, last) = name.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// The partition prefix of one symbol.
pub fn symbol_prefix(prefix: &str, symbol: &str) -> String {
    format!("{}/symbol={symbol}/", prefix.trim_end_matches('/'))
}

/// The `date=` partition of a key, `YYYY-MM-DD`.
pub fn date_of(key: &str) -> Option<&str> {
    key.split('/').find_map(|part| part.strip_prefix("date="))
}

/// The files of `symbol` in date partitions from `from_date` (`YYYY-MM-DD`) on, or in all of
/// them, sorted by key. With a date, a run lists a few partitions, not a year of files.
pub async fn symbol_files(
    lake: &Lake,
    prefix: &str,
    symbol: &str,
    from_date: Option<&str>,
) -> Result<Vec<LakeObject>, LakeError> {
    let from = from_date.map(|date| format!("date={date}/"));
    lake.list_partitions_from(&symbol_prefix(prefix, symbol), from.as_deref())
        .await
}

/// Days since the Unix epoch of a trade time in milliseconds: which date partition it is in.
pub fn utc_day(time_ms: i64) -> i64 {
    time_ms.div_euclid(86_400_000)
}

/// The UTC date (`YYYY-MM-DD`) of a trade time in milliseconds.
pub fn utc_date(time_ms: i64) -> String {
    DateTime::from_timestamp_millis(time_ms)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "1970-01-01".to_string())
}

pub(crate) fn decimal_series<const S: u32>(
    name: &str,
    values: impl Iterator<Item = Fixed<S>>,
) -> Series {
    Int128Chunked::from_iter_values(name.into(), values.map(Fixed::units))
        .into_decimal_unchecked(PRECISION, S as usize)
        .into_series()
}

/// The trades as one Parquet file.
pub fn encode(trades: &[Trade]) -> PolarsResult<Bytes> {
    let columns = vec![
        Int64Chunked::from_iter_values("trade_id".into(), trades.iter().map(|t| t.id))
            .into_series()
            .into(),
        decimal_series("price", trades.iter().map(|t| t.price)).into(),
        decimal_series("qty", trades.iter().map(|t| t.qty)).into(),
        decimal_series("quote_qty", trades.iter().map(|t| t.quote_qty)).into(),
        Int64Chunked::from_iter_values("trade_time".into(), trades.iter().map(|t| t.time_ms))
            .into_datetime(TimeUnit::Milliseconds, Some(TimeZone::UTC))
            .into_series()
            .into(),
        BooleanChunked::from_iter_values(
            "is_buyer_maker".into(),
            trades.iter().map(|t| t.is_buyer_maker),
        )
        .into_series()
        .into(),
        BooleanChunked::from_iter_values(
            "is_best_match".into(),
            trades.iter().map(|t| t.is_best_match),
        )
        .into_series()
        .into(),
    ];
    let mut frame = DataFrame::new(trades.len(), columns)?;
    let mut buffer = Vec::new();
    ParquetWriter::new(&mut buffer)
        .with_compression(ParquetCompression::Snappy)
        .finish(&mut frame)?;
    Ok(Bytes::from(buffer))
}

/// Reads a Parquet file into a frame.
pub fn read_frame(bytes: Bytes) -> PolarsResult<DataFrame> {
    ParquetReader::new(Cursor::new(bytes)).finish()
}

/// Reads a raw trades file back into trades (tests and reconciliation).
pub fn decode(bytes: Bytes) -> PolarsResult<Vec<Trade>> {
    let frame = read_frame(bytes)?;
    let ids = frame.column("trade_id")?.i64()?;
    let prices: Vec<Decimal> = decimals(&frame, "price")?;
    let qtys: Vec<Decimal> = decimals(&frame, "qty")?;
    let times = frame.column("trade_time")?.datetime()?.physical().clone();
    let makers = frame.column("is_buyer_maker")?.bool()?;
    let best = frame.column("is_best_match")?.bool()?;
    (0..frame.height())
        .map(|i| {
            let missing = || polars_err!(ComputeError: "null in row {}", i);
            Trade::new(
                ids.get(i).ok_or_else(missing)?,
                prices[i],
                qtys[i],
                times.get(i).ok_or_else(missing)?,
                makers.get(i).ok_or_else(missing)?,
                best.get(i).ok_or_else(missing)?,
            )
            .ok_or_else(|| polars_err!(ComputeError: "price × qty out of range in row {}", i))
        })
        .collect()
}

/// A decimal column's values at the scale `S` it must have.
fn decimals<const S: u32>(frame: &DataFrame, name: &str) -> PolarsResult<Vec<Fixed<S>>> {
    let column = frame.column(name)?.decimal()?;
    polars_ensure!(
        column.scale() == S as usize,
        ComputeError: "`{}` has scale {}, not {}", name, column.scale(), S
    );
    let physical = column.physical();
    (0..physical.len())
        .map(|i| {
            physical
                .get(i)
                .and_then(Fixed::from_units)
                .ok_or_else(|| polars_err!(ComputeError: "null or oversized value in `{}`", name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trades_survive_a_round_trip_through_parquet_exactly() {
        let trade = |id, price: &str, qty: &str, time_ms, maker| {
            Trade::new(
                id,
                price.parse().expect("price"),
                qty.parse().expect("qty"),
                time_ms,
                maker,
                true,
            )
            .expect("trade")
        };
        let trades = vec![
            trade(28457, "4.00000100", "12.00000000", 1_499_865_549_590, true),
            trade(
                28458,
                "97250.12000000",
                "0.00001000",
                1_499_865_549_591,
                false,
            ),
            // ETHBTC: a 9-digit product.
            trade(28459, "0.03456000", "0.12340000", 1_499_865_549_592, false),
        ];
        let bytes = encode(&trades).expect("encode");
        assert_eq!(decode(bytes.clone()).expect("decode"), trades);
        let frame = read_frame(bytes).expect("frame");
        assert_eq!(
            frame.column("price").expect("price").dtype(),
            &DataType::Decimal(38, 8)
        );
        assert_eq!(
            frame.column("quote_qty").expect("quote_qty").dtype(),
            &DataType::Decimal(38, 16)
        );
        assert_eq!(
            decimals::<16>(&frame, "quote_qty").expect("quotes")[2].to_string(),
            "0.0042647040000000"
        );
    }

    #[test]
    fn file_names_carry_and_sort_by_id_range() {
        let a = file_key("raw/binance_trades", "BTCUSDT", "2026-11-22", 999, 1500);
        let b = file_key("raw/binance_trades", "BTCUSDT", "2026-11-22", 1501, 10_000);
        assert!(a < b);
        assert_eq!(id_range(&a), Some((999, 1500)));
        assert_eq!(utc_date(1_763_769_600_000), "2025-11-22");
    }
}
