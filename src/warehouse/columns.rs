//! A Parquet frame's columns in the few shapes the warehouse stores.

use polars::prelude::*;

use super::WarehouseError;

/// One column's values, by warehouse type.
pub enum ColumnData {
    Int(Vec<Option<i64>>),
    /// Units of 10^-scale; exact.
    Decimal {
        precision: usize,
        scale: usize,
        units: Vec<Option<i128>>,
    },
    /// Milliseconds since the epoch, UTC.
    TimestampMs(Vec<Option<i64>>),
    Bool(Vec<Option<bool>>),
    /// Means and ratios: aggregates, never prices or quantities.
    Float(Vec<Option<f64>>),
    Text(Vec<Option<String>>),
}

pub struct Column {
    pub name: String,
    pub data: ColumnData,
}

impl ColumnData {
    /// A value as exact text: what SQLite stores for decimals and timestamps, and what
    /// PostgreSQL's `COPY` reads.
    pub fn text(&self, row: usize) -> Option<String> {
        match self {
            ColumnData::Int(v) => v[row].map(|x| x.to_string()),
            ColumnData::Decimal { scale, units, .. } => units[row].map(|u| decimal_text(u, *scale)),
            ColumnData::TimestampMs(v) => v[row].map(timestamp_text),
            ColumnData::Bool(v) => v[row].map(|b| if b { "true" } else { "false" }.to_string()),
            // Rust prints the shortest text that reads back to the same double.
            ColumnData::Float(v) => v[row].map(|x| x.to_string()),
            ColumnData::Text(v) => v[row].clone(),
        }
    }
}

fn decimal_text(units: i128, scale: usize) -> String {
    let sign = if units < 0 { "-" } else { "" };
    let abs = units.unsigned_abs();
    if scale == 0 {
        return format!("{sign}{abs}");
    }
    let one = 10_u128.pow(scale as u32);
    format!("{sign}{}.{:0scale$}", abs / one, abs % one)
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-22T04:00:00.123Z`.
pub fn timestamp_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

pub fn from_frame(frame: &DataFrame, file: &str) -> Result<Vec<Column>, WarehouseError> {
    frame
        .columns()
        .iter()
        .map(|column| {
            let name = column.name().to_string();
            let unsupported = || WarehouseError::UnsupportedColumn {
                file: file.to_string(),
                column: name.clone(),
                dtype: column.dtype().to_string(),
            };
            let data = match column.dtype() {
                DataType::Int64
                | DataType::Int32
                | DataType::Int16
                | DataType::Int8
                | DataType::UInt32
                | DataType::UInt16
                | DataType::UInt8 => {
                    let cast = column.cast(&DataType::Int64).map_err(|_| unsupported())?;
                    ColumnData::Int(cast.i64().map_err(|_| unsupported())?.iter().collect())
                }
                DataType::Decimal(precision, scale) => {
                    let physical = column.decimal().map_err(|_| unsupported())?.physical();
                    ColumnData::Decimal {
                        precision: *precision,
                        scale: *scale,
                        units: (0..physical.len()).map(|i| physical.get(i)).collect(),
                    }
                }
                DataType::Datetime(_, _) => {
                    let ms = column
                        .cast(&DataType::Datetime(TimeUnit::Milliseconds, None))
                        .map_err(|_| unsupported())?;
                    let physical = ms.datetime().map_err(|_| unsupported())?.physical().clone();
                    ColumnData::TimestampMs(physical.iter().collect())
                }
                DataType::Float64 | DataType::Float32 => {
                    let cast = column.cast(&DataType::Float64).map_err(|_| unsupported())?;
                    ColumnData::Float(cast.f64().map_err(|_| unsupported())?.iter().collect())
                }
                DataType::Boolean => {
                    ColumnData::Bool(column.bool().map_err(|_| unsupported())?.iter().collect())
                }
                DataType::String => ColumnData::Text(
                    column
                        .str()
                        .map_err(|_| unsupported())?
                        .iter()
                        .map(|s| s.map(str::to_string))
                        .collect(),
                ),
                _ => return Err(unsupported()),
            };
            Ok(Column { name, data })
        })
        .collect()
}
