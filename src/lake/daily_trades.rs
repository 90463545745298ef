//! A day's snapshot of staged trades, and the curated tables built from it.
//!
//! - snapshot: `<prefix>/date=YYYY-MM-DD/part-00000.parquet`, ... with columns `exchange`,
//!   `symbol` (string), `trade_id` (int64), `price`, `qty` (decimal(38, 8)), `quote_qty`
//!   (decimal(38, 16), price × qty exact),
//!   `trade_time` (timestamp ms UTC), `is_buyer_maker` (bool); snappy-compressed;
//! - curated: `<prefix>/<table>/year=YYYY/month=MM/day=DD/part-00000.parquet`.
//!
//! Part names are fixed per day, so a rerun overwrites the parts it writes and then deletes
//! any part past them: the day's folder ends up holding exactly the new snapshot.

use std::io::Cursor;

use bytes::Bytes;
use chrono::{Datelike, NaiveDate};
use polars::prelude::*;

use super::{Lake, LakeError};
use crate::decimal::{Decimal, PRECISION, Product};
use crate::staging::TradeColumns;

/// Rows per snapshot part: a few hundred MB of memory to write, tens of MB on disk.
pub const PART_ROWS: usize = 5_000_000;

/// The folder of a day's snapshot.
pub fn snapshot_dir(prefix: &str, date: NaiveDate) -> String {
    format!("{}/date={date}/", prefix.trim_end_matches('/'))
}

/// The folder of a day's partition of a curated table.
pub fn curated_dir(prefix: &str, table: &str, date: NaiveDate) -> String {
    format!(
        "{}/{table}/year={:04}/month={:02}/day={:02}/",
        prefix.trim_end_matches('/'),
        date.year(),
        date.month(),
        date.day()
    )
}

pub fn part_name(part: usize) -> String {
    format!("part-{part:05}.parquet")
}

/// Writes `parts` as the only `part-*.parquet` files of `dir`: each is put whole, then the
/// parts an earlier, longer write left behind are deleted.
pub async fn replace_parts(lake: &Lake, dir: &str, parts: Vec<Bytes>) -> Result<(), LakeError> {
    let count = parts.len();
    for (i, bytes) in parts.into_iter().enumerate() {
        lake.put(&format!("{dir}{}", part_name(i)), bytes).await?;
    }
    let keep: Vec<String> = (0..count)
        .map(|i| format!("{dir}{}", part_name(i)))
        .collect();
    for object in lake.list(dir).await? {
        let is_part = object
            .key
            .rsplit('/')
            .next()
            .is_some_and(|name| name.starts_with("part-") && name.ends_with(".parquet"));
        if is_part && !keep.contains(&object.key) {
            lake.delete(&object.key).await?;
        }
    }
    Ok(())
}

/// The snapshot of `exchange`'s trades as Parquet parts of at most [`PART_ROWS`] rows; one
/// empty part for a day without trades, so readers still find the columns. The columns move
/// into the parts rather than being copied: a day is hundreds of MB.
pub fn encode_snapshot(exchange: &str, mut trades: TradeColumns) -> PolarsResult<Vec<Bytes>> {
    let mut parts = Vec::new();
    loop {
        let rows = trades.len().min(PART_ROWS);
        let part = TradeColumns {
            symbols: trades.symbols.clone(),
            symbol: take_front(&mut trades.symbol, rows),
            trade_id: take_front(&mut trades.trade_id, rows),
            price: take_front(&mut trades.price, rows),
            qty: take_front(&mut trades.qty, rows),
            quote_qty: take_front(&mut trades.quote_qty, rows),
            trade_time: take_front(&mut trades.trade_time, rows),
            is_buyer_maker: take_front(&mut trades.is_buyer_maker, rows),
        };
        parts.push(encode_part(exchange, part)?);
        if trades.is_empty() {
            return Ok(parts);
        }
    }
}

/// The first `n` items of `v`, leaving the rest in `v`; no copy when `n` is all of it.
fn take_front<T>(v: &mut Vec<T>, n: usize) -> Vec<T> {
    let rest = v.split_off(n.min(v.len()));
    std::mem::replace(v, rest)
}

fn encode_part(exchange: &str, trades: TradeColumns) -> PolarsResult<Bytes> {
    let height = trades.len();
    let decimal = |name: &str, units: Vec<i128>, scale: u32| -> Column {
        Int128Chunked::from_vec(name.into(), units)
            .into_decimal_unchecked(PRECISION, scale as usize)
            .into_series()
            .into()
    };
    let symbols: StringChunked = trades
        .symbol
        .iter()
        .map(|&code| trades.symbols.get(code as usize).map(String::as_str))
        .collect();
    let columns = vec![
        Column::new_scalar(
            "exchange".into(),
            Scalar::from(PlSmallStr::from(exchange)),
            height,
        ),
        symbols.with_name("symbol".into()).into_series().into(),
        Int64Chunked::from_vec("trade_id".into(), trades.trade_id)
            .into_series()
            .into(),
        decimal("price", trades.price, Decimal::SCALE),
        decimal("qty", trades.qty, Decimal::SCALE),
        decimal("quote_qty", trades.quote_qty, Product::SCALE),
        Int64Chunked::from_vec("trade_time".into(), trades.trade_time)
            .into_datetime(TimeUnit::Milliseconds, Some(TimeZone::UTC))
            .into_series()
            .into(),
        BooleanChunked::from_iter_values(
            "is_buyer_maker".into(),
            trades.is_buyer_maker.into_iter(),
        )
        .into_series()
        .into(),
    ];
    let mut frame = DataFrame::new(height, columns)?;
    write_parquet(&mut frame)
}

/// Rows per Parquet row group: a reader can stream a file a group at a time.
const ROW_GROUP_ROWS: usize = 1_000_000;

/// A frame as one snappy-compressed Parquet file.
pub fn write_parquet(frame: &mut DataFrame) -> PolarsResult<Bytes> {
    let mut buffer = Vec::new();
    ParquetWriter::new(&mut buffer)
        .with_compression(ParquetCompression::Snappy)
        .with_row_group_size(Some(ROW_GROUP_ROWS))
        .finish(frame)?;
    Ok(Bytes::from(buffer))
}

/// Every part of a folder as one lazy frame, so a query reads only the columns it uses; each
/// part's footer is checked first, so one that does not read is named. Parts of a `file://`
/// lake are scanned from their files; others are fetched and scanned from memory. `None`
/// when the folder holds no part.
pub async fn scan_parts(lake: &Lake, dir: &str) -> Result<Option<LazyFrame>, String> {
    let mut keys: Vec<String> = lake
        .list(dir)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.ends_with(".parquet"))
        .collect();
    if keys.is_empty() {
        return Ok(None);
    }
    keys.sort();
    let unreadable = |key: &str, e: &dyn std::fmt::Display| {
        format!("{}/{key}: not a readable Parquet file: {e}", lake.url())
    };
    let sources = if keys.iter().all(|k| lake.local_path(k).is_some()) {
        let mut files = Vec::with_capacity(keys.len());
        for key in &keys {
            let path = lake.local_path(key).unwrap_or_default();
            let file = std::fs::File::open(&path).map_err(|e| unreadable(key, &e))?;
            ParquetReader::new(file.try_clone().map_err(|e| unreadable(key, &e))?)
                .num_rows()
                .map_err(|e| unreadable(key, &e))?;
            files.push(file);
        }
        ScanSources::Files(files.into())
    } else {
        let mut buffers = Vec::with_capacity(keys.len());
        for key in &keys {
            let bytes = lake.get(key).await.map_err(|e| e.to_string())?;
            ParquetReader::new(Cursor::new(bytes.clone()))
                .num_rows()
                .map_err(|e| unreadable(key, &e))?;
            buffers.push(polars_buffer::Buffer::from_owner(bytes));
        }
        ScanSources::Buffers(buffers.into())
    };
    let args = ScanArgsParquet {
        // The partition values are in the folder names orch chose, not needed as columns.
        hive_options: HiveOptions {
            enabled: Some(false),
            ..HiveOptions::default()
        },
        ..ScanArgsParquet::default()
    };
    LazyFrame::scan_parquet_sources(sources, args)
        .map(Some)
        .map_err(|e| format!("{}/{dir}: {e}", lake.url()))
}
