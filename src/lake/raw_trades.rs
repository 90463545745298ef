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
    file_in(
        &format!(
            "{}/symbol={symbol}/date={date}",
            prefix.trim_end_matches('/')
        ),
        first,
        last,
    )
}

/// The key of a file of ids `first..=last` in the partition folder `dir`.
pub fn file_in(dir: &str, first: i64, last: i64) -> String {
    format!("{dir}/{first:020}-{last:020}.parquet")
}

/// The partition folder of a key: all but its file name.
pub fn folder_of(key: &str) -> &str {
    key.rsplit_once('/').map_or("", |(dir, _)| dir)
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
    encode_frame(&mut DataFrame::new(trades.len(), columns)?)
}

/// A frame of raw trades as one snappy Parquet file.
pub fn encode_frame(frame: &mut DataFrame) -> PolarsResult<Bytes> {
    let mut buffer = Vec::new();
    ParquetWriter::new(&mut buffer)
        .with_compression(ParquetCompression::Snappy)
        .finish(frame)?;
    Ok(Bytes::from(buffer))
}

/// A raw trades file written a row group at a time, so that merging thousands of small files
/// holds one row group's rows in memory rather than the whole file's twice.
pub struct GrowingFile {
    writer: polars::io::parquet::write::BatchedWriter<SharedBuffer>,
    buffer: SharedBuffer,
    rows: u64,
}

/// The bytes written so far, readable while the writer holds them.
#[derive(Clone, Default)]
struct SharedBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl SharedBuffer {
    fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        match self.0.lock() {
            Ok(bytes) => bytes,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl std::io::Write for SharedBuffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.bytes().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl GrowingFile {
    /// A snappy file of rows of `schema`.
    pub fn new(schema: &Schema) -> PolarsResult<GrowingFile> {
        let buffer = SharedBuffer::default();
        let writer = ParquetWriter::new(buffer.clone())
            .with_compression(ParquetCompression::Snappy)
            .batched(schema)?;
        Ok(GrowingFile {
            writer,
            buffer,
            rows: 0,
        })
    }

    /// Appends `frame` as one row group.
    pub fn append(&mut self, mut frame: DataFrame) -> PolarsResult<()> {
        if frame.height() == 0 {
            return Ok(());
        }
        frame.rechunk_mut_par();
        self.writer.write_batch(&frame)?;
        self.rows += frame.height() as u64;
        Ok(())
    }

    /// The bytes written so far.
    pub fn size(&self) -> usize {
        self.buffer.bytes().len()
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The whole file, footer included, and its rows.
    pub fn finish(self) -> PolarsResult<(Bytes, u64)> {
        self.writer.finish()?;
        let bytes = std::mem::take(&mut *self.buffer.bytes());
        Ok((Bytes::from(bytes), self.rows))
    }
}

/// A file whose id range lies within another file's of the same partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superseded {
    pub object: LakeObject,
    /// The wider file, which holds every trade of `object`.
    pub by: LakeObject,
}

/// Splits listed files into those a reader reads and those superseded. `lake.compact` writes
/// one wider file from several and deletes them only after a grace period, so for a while a
/// partition holds both; a reader that skips files within another file's id range counts
/// each trade once, whenever it lists. Files without an id range pass through.
pub fn split_superseded(mut objects: Vec<LakeObject>) -> (Vec<LakeObject>, Vec<Superseded>) {
    // Per partition folder, by first id, the widest first.
    objects.sort_by_key(|o| {
        let dir = o
            .key
            .rsplit_once('/')
            .map_or("", |(dir, _)| dir)
            .to_string();
        let (first, last) = id_range(&o.key).unwrap_or((i64::MIN, i64::MIN));
        (dir, first, std::cmp::Reverse(last))
    });
    let mut current: Vec<LakeObject> = Vec::with_capacity(objects.len());
    let mut superseded = Vec::new();
    let mut widest: Option<(String, i64, LakeObject)> = None;
    for object in objects {
        let dir = folder_of(&object.key);
        let Some((_, last)) = id_range(&object.key) else {
            current.push(object);
            continue;
        };
        match &widest {
            Some((d, widest_last, by)) if d == dir && *widest_last >= last => {
                superseded.push(Superseded {
                    object,
                    by: by.clone(),
                });
            }
            _ => {
                widest = Some((dir.to_string(), last, object.clone()));
                current.push(object);
            }
        }
    }
    current.sort_by(|a, b| a.key.cmp(&b.key));
    (current, superseded)
}

/// The parts of `range` (inclusive) that no range of `covered` holds, in order.
pub fn uncovered(range: (i64, i64), covered: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut covered: Vec<(i64, i64)> = covered
        .iter()
        .copied()
        .filter(|&(first, last)| first <= range.1 && last >= range.0)
        .collect();
    covered.sort_unstable();
    let mut left = Vec::new();
    let mut next = range.0;
    for (first, last) in covered {
        if first > next {
            left.push((next, first - 1));
        }
        if last >= next {
            match last.checked_add(1) {
                Some(after) => next = after,
                None => return left,
            }
        }
    }
    if next <= range.1 {
        left.push((next, range.1));
    }
    left
}

/// A raw trades file with only the trades whose ids lie in `ranges` (inclusive).
pub fn only_ids(bytes: Bytes, ranges: &[(i64, i64)]) -> PolarsResult<Bytes> {
    let frame = read_frame(bytes)?;
    let ids = frame.column("trade_id")?.i64()?;
    let keep: BooleanChunked = ids
        .iter()
        .map(|id| id.is_some_and(|id| ranges.iter().any(|&(a, b)| a <= id && id <= b)))
        .collect();
    encode_frame(&mut frame.filter(&keep)?)
}

/// The files a reader reads: see [`split_superseded`].
pub fn current_files(objects: Vec<LakeObject>) -> Vec<LakeObject> {
    split_superseded(objects).0
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
    fn uncovered_ranges_are_what_no_loaded_file_holds() {
        assert_eq!(uncovered((1, 100), &[]), vec![(1, 100)]);
        assert_eq!(uncovered((1, 100), &[(1, 100)]), vec![]);
        assert_eq!(
            uncovered((1, 100), &[(1, 40), (61, 80)]),
            vec![(41, 60), (81, 100)]
        );
        assert_eq!(
            uncovered((1, 100), &[(0, 5), (3, 10), (200, 300)]),
            vec![(11, 100)]
        );
    }

    #[test]
    fn files_within_a_wider_file_of_their_partition_are_superseded() {
        let object = |symbol: &str, first, last| LakeObject {
            key: file_key("raw/t", symbol, "2026-11-22", first, last),
            size: 1,
            modified: DateTime::UNIX_EPOCH,
        };
        let listed = vec![
            object("A", 1, 100),
            object("A", 101, 200),
            object("A", 201, 300),
            object("A", 1, 200),
            object("A", 301, 310),
            // Another symbol's file of the same ids is not covered.
            object("B", 50, 60),
            LakeObject {
                key: "raw/t/symbol=A/date=2026-11-22/ohlcv.parquet".to_string(),
                size: 1,
                modified: DateTime::UNIX_EPOCH,
            },
        ];
        let (current, superseded) = split_superseded(listed);
        let names: Vec<(i64, i64)> = current.iter().filter_map(|o| id_range(&o.key)).collect();
        assert_eq!(names, vec![(1, 200), (201, 300), (301, 310), (50, 60)]);
        assert!(current.iter().any(|o| o.key.ends_with("ohlcv.parquet")));
        let gone: Vec<((i64, i64), (i64, i64))> = superseded
            .iter()
            .filter_map(|s| Some((id_range(&s.object.key)?, id_range(&s.by.key)?)))
            .collect();
        assert_eq!(gone, vec![((1, 100), (1, 200)), ((101, 200), (1, 200))]);
    }

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
