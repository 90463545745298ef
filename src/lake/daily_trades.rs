//! A day's snapshot of staged trades, and the curated tables built from it.
//!
//! - snapshot: `<prefix>/date=YYYY-MM-DD/part-<generation>-00000.parquet`, ... with columns `exchange`,
//!   `symbol` (string), `trade_id` (int64), `price`, `qty` (decimal(38, 8)), `quote_qty`
//!   (decimal(38, 16), price × qty exact),
//!   `trade_time` (timestamp ms UTC), `is_buyer_maker` (bool); snappy-compressed;
//! - curated: `<prefix>/<table>/year=YYYY/month=MM/day=DD/part-<generation>-00000.parquet`.
//!
//! A day is replaced aside, then switched: a rerun writes its parts under new names
//! (`part-<generation>-00000.parquet`), then the folder's `_manifest.json`, which names the
//! parts that make the day, then deletes the parts it no longer names. Object stores have no
//! rename of a folder, but a put of one object is atomic, so a reader that follows the
//! manifest ([`scan_parts`]) sees the old day or the new day, never a mix, whenever a writer
//! is killed. (Readers that glob `*.parquet` see both for the moment between the switch and
//! the deletes, or until the next write after a crash in that moment.) One writer per folder:
//! the daily tasks take a lock per day.

use std::io::Cursor;

use bytes::Bytes;
use chrono::{Datelike, NaiveDate};
use polars::prelude::*;

use super::{Lake, LakeError};
use crate::decimal::{Decimal, PRECISION, Product};
use crate::staging::TradeColumns;

/// Rows per snapshot part: a few hundred MB of memory to write, tens of MB on disk.
pub const PART_ROWS: usize = 5_000_000;

/// The name of the lock a writer, or a reader that must not see a day replaced under it,
/// holds on the day `date` of the tables under `prefix` in the lake `lake_url` (see
/// `crate::store::Store::lock`). Take them in the order warehouse, curated, snapshot.
pub fn day_lock(lake_url: &str, prefix: &str, date: NaiveDate) -> String {
    format!(
        "lake-day|{lake_url}|{}|{date}",
        prefix.trim_end_matches('/')
    )
}

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

/// The object naming the parts that make a folder's current day.
const MANIFEST: &str = "_manifest.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct Manifest {
    /// File names within the folder, in order.
    parts: Vec<String>,
}

/// Makes `parts` the day of `dir`: written aside under a new generation, switched in by the
/// manifest, then the parts of earlier generations are deleted.
pub async fn replace_parts(lake: &Lake, dir: &str, parts: Vec<Bytes>) -> Result<(), LakeError> {
    let generation = chrono::Utc::now().format("%Y%m%dT%H%M%S%.9fZ").to_string();
    let names: Vec<String> = (0..parts.len())
        .map(|i| format!("part-{generation}-{i:05}.parquet"))
        .collect();
    for (name, bytes) in names.iter().zip(parts) {
        lake.put(&format!("{dir}{name}"), bytes).await?;
    }
    let manifest = serde_json::to_vec(&Manifest {
        parts: names.clone(),
    })
    .unwrap_or_default();
    lake.put(&format!("{dir}{MANIFEST}"), Bytes::from(manifest))
        .await?;
    for object in lake.list(dir).await? {
        let name = object.key.rsplit('/').next().unwrap_or_default();
        if name.ends_with(".parquet") && !names.iter().any(|n| n == name) {
            lake.delete(&object.key).await?;
        }
    }
    Ok(())
}

/// The keys of the parts that make the day of `dir`, in order: those its manifest names, or,
/// in a folder written before manifests, every `.parquet` file.
pub async fn current_parts(lake: &Lake, dir: &str) -> Result<Vec<String>, String> {
    let objects = lake.list(dir).await.map_err(|e| e.to_string())?;
    let manifest_key = format!("{dir}{MANIFEST}");
    if objects.iter().any(|o| o.key == manifest_key) {
        let bytes = lake.get(&manifest_key).await.map_err(|e| e.to_string())?;
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}/{manifest_key}: unreadable: {e}", lake.url()))?;
        return Ok(manifest
            .parts
            .iter()
            .map(|name| format!("{dir}{name}"))
            .collect());
    }
    let mut keys: Vec<String> = objects
        .into_iter()
        .map(|o| o.key)
        .filter(|k| k.ends_with(".parquet"))
        .collect();
    keys.sort();
    Ok(keys)
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
    let keys = current_parts(lake, dir).await?;
    if keys.is_empty() {
        return Ok(None);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn part(value: i64) -> Bytes {
        let mut frame = df!("v" => [value]).expect("frame");
        write_parquet(&mut frame).expect("parquet")
    }

    async fn day(lake: &Lake, dir: &str) -> Vec<i64> {
        let frame = scan_parts(lake, dir)
            .await
            .expect("scan")
            .expect("parts")
            .collect()
            .expect("read");
        frame
            .column("v")
            .expect("v")
            .i64()
            .expect("i64")
            .iter()
            .flatten()
            .collect()
    }

    /// A writer killed after writing the first of its parts once left the folder holding one
    /// new part and the old day's others: a mix. Now readers see the old day until the switch.
    #[tokio::test(flavor = "multi_thread")]
    async fn readers_see_the_old_day_or_the_new_never_a_mix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open(&format!("file://{}", dir.path().display())).expect("lake");
        let day_dir = "curated/fact_trades/year=2026/month=11/day=22/";
        replace_parts(&lake, day_dir, vec![part(1), part(2)])
            .await
            .expect("first day");
        assert_eq!(day(&lake, day_dir).await, [1, 2]);

        // A rerun killed after its first part: written aside, not switched.
        lake.put(
            &format!("{day_dir}part-20991231T000000.000000000Z-00000.parquet"),
            part(3),
        )
        .await
        .expect("put");
        assert_eq!(day(&lake, day_dir).await, [1, 2], "the old day whole");

        replace_parts(&lake, day_dir, vec![part(4)])
            .await
            .expect("second day");
        assert_eq!(day(&lake, day_dir).await, [4], "the new day whole");
        let files: Vec<String> = lake
            .list(day_dir)
            .await
            .expect("list")
            .into_iter()
            .map(|o| o.key)
            .filter(|k| k.ends_with(".parquet"))
            .collect();
        assert_eq!(files.len(), 1, "earlier generations are deleted: {files:?}");
    }

    /// A folder written before manifests reads as all its parts.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_folder_without_a_manifest_is_read_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::open(&format!("file://{}", dir.path().display())).expect("lake");
        lake.put(
            "raw/trades_daily/date=2026-11-22/part-00000.parquet",
            part(7),
        )
        .await
        .expect("put");
        assert_eq!(day(&lake, "raw/trades_daily/date=2026-11-22/").await, [7]);
    }
}
