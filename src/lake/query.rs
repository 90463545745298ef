//! SQL over the lake's tables, by name: what `orch query` runs.
//!
//! The engine is Polars SQL: orch already builds Polars for its ETL, so SQL costs one more
//! feature, not a second query engine. Each table is a lazy scan of its Parquet files, so a
//! query reads only the columns it names, and a filter on a partition column (`symbol`,
//! `date`; `year`, `month`, `day` for the curated tables) skips the files of other partitions
//! without opening them.
//!
//! The lake may be a local folder or an object store (`s3://`, `gs://`, `az://`): Polars reads
//! the listed files where they are, with the same credentials from the environment as the
//! rest of orch, fetching only the columns and row groups a query needs.
//!
//! Tables, where their files exist:
//! - `binance_trades`, `mercado_bitcoin_trades`: the raw trades the batch fetches write,
//!   partitioned by `symbol` and `date`; `binance_stream_trades`,
//!   `mercado_bitcoin_stream_trades`, `kucoin_stream_trades`, the same from a stream's copy
//!   into the lake (`lake:` in a stream file);
//! - `binance_trades_daily`, `mercado_bitcoin_trades_daily`: the daily rows that replace raw
//!   days past their retention;
//! - `fact_trades`, `dim_time`, `dim_symbol`, `dim_exchange`, `dim_currency`: the daily ETL's
//!   star schema, partitioned by `year`, `month`, `day`, read through each day's manifest, so
//!   a day being replaced is seen whole, before or after.

use polars::prelude::*;
use polars::sql::{SQLContext, extract_table_identifiers};

use super::{Lake, LakeError};
use super::{daily_trades, raw_trades};

/// The raw and daily tables: (name, lake prefix).
const PARTITIONED_TABLES: [(&str, &str); 7] = [
    ("binance_trades", "raw/binance_trades"),
    ("mercado_bitcoin_trades", "raw/mercado_bitcoin_trades"),
    ("binance_stream_trades", "raw/binance_stream_trades"),
    (
        "mercado_bitcoin_stream_trades",
        "raw/mercado_bitcoin_stream_trades",
    ),
    ("kucoin_stream_trades", "raw/kucoin_stream_trades"),
    ("binance_trades_daily", "raw/binance_trades_daily"),
    (
        "mercado_bitcoin_trades_daily",
        "raw/mercado_bitcoin_trades_daily",
    ),
];

/// The star schema's tables, under the curated prefix.
const CURATED_TABLES: [&str; 5] = [
    "fact_trades",
    "dim_time",
    "dim_symbol",
    "dim_exchange",
    "dim_currency",
];

/// The curated prefix the daily ETL writes by default.
const CURATED_PREFIX: &str = "curated";

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error("{0}")]
    Sql(String),
}

/// A session over the lake's tables.
pub struct LakeSql {
    context: SQLContext,
    /// The tables with files, for an error that names an unknown one.
    tables: Vec<String>,
}

impl LakeSql {
    /// A session for `sql`: only the tables it names are scanned, so a query of raw trades
    /// reads no curated day's manifest.
    pub async fn open(lake: &Lake, sql: &str) -> Result<LakeSql, QueryError> {
        refuse_file_functions(sql)?;
        let named: Vec<String> = extract_table_identifiers(sql, false, true)
            .map_err(|e| QueryError::Sql(e.to_string()))?;
        let wanted = |table: &str| named.iter().any(|n| n.eq_ignore_ascii_case(table));
        let context = SQLContext::new();
        let mut tables = Vec::new();
        for (name, prefix) in PARTITIONED_TABLES {
            if !wanted(name) {
                // Named in an error only: one listing of its top folders, not of its files,
                // which an object store answers page by page.
                if !lake.list_dirs(&format!("{prefix}/")).await?.is_empty() {
                    tables.push(name.to_string());
                }
                continue;
            }
            // Files that `lake.compact` merged and has not deleted yet are left out.
            let files: Vec<String> =
                raw_trades::current_files(lake.list(&format!("{prefix}/")).await?)
                    .iter()
                    .filter(|o| o.key.ends_with(".parquet"))
                    .map(|o| lake.object_url(&o.key))
                    .collect();
            if files.is_empty() {
                continue;
            }
            tables.push(name.to_string());
            context.register(name, scan_files(files, prefix)?);
        }
        for table in CURATED_TABLES {
            let prefix = format!("{CURATED_PREFIX}/{table}/");
            if lake.list_dirs(&prefix).await?.is_empty() {
                continue;
            }
            tables.push(table.to_string());
            if wanted(table)
                && let Some(frame) = scan_curated(lake, &prefix).await?
            {
                context.register(table, frame);
            }
        }
        Ok(LakeSql { context, tables })
    }

    /// The plan of `sql`: a lazy frame, read only when collected.
    pub fn plan(&mut self, sql: &str) -> Result<LazyFrame, QueryError> {
        self.context.execute(sql).map_err(|e| {
            QueryError::Sql(format!(
                "{e} (tables: {})",
                if self.tables.is_empty() {
                    "none yet".to_string()
                } else {
                    self.tables.join(", ")
                }
            ))
        })
    }
}

/// Polars SQL's table functions, which read any file the process can (or, on an object-store
/// lake, any object its credentials can): a query names the lake's tables, never paths.
const FILE_FUNCTIONS: [&str; 5] = [
    "read_csv",
    "read_parquet",
    "read_ipc",
    "read_json",
    "read_ndjson",
];

/// Refuses `sql` when it calls a table function of [`FILE_FUNCTIONS`], however it is spelled
/// (any case, quoted): identifiers are read outside string literals and comments.
fn refuse_file_functions(sql: &str) -> Result<(), QueryError> {
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let (word, end) = match c {
            '\'' => {
                // A string literal; '' is a quote inside it.
                i += 1;
                while i < chars.len() {
                    if chars[i] == '\'' && chars.get(i + 1) == Some(&'\'') {
                        i += 2;
                    } else if chars[i] == '\'' {
                        break;
                    } else {
                        i += 1;
                    }
                }
                i += 1;
                continue;
            }
            '-' if chars.get(i + 1) == Some(&'-') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                    i += 1;
                }
                i += 2;
                continue;
            }
            '"' | '`' => {
                let close = chars[i + 1..]
                    .iter()
                    .position(|&q| q == c)
                    .map_or(chars.len(), |p| i + 1 + p);
                (chars[i + 1..close].iter().collect::<String>(), close + 1)
            }
            c if c.is_alphanumeric() || c == '_' => {
                let end = chars[i..]
                    .iter()
                    .position(|&w| !(w.is_alphanumeric() || w == '_'))
                    .map_or(chars.len(), |p| i + p);
                (chars[i..end].iter().collect::<String>(), end)
            }
            _ => {
                i += 1;
                continue;
            }
        };
        let called = chars[end.min(chars.len())..]
            .iter()
            .find(|w| !w.is_whitespace())
            == Some(&'(');
        let word = word.to_ascii_lowercase();
        if called && FILE_FUNCTIONS.contains(&word.as_str()) {
            return Err(QueryError::Sql(format!(
                "`{word}(...)` reads files by path; `orch query` reads the lake's tables by name \
                 (see `orch query --help`)"
            )));
        }
        i = end;
    }
    Ok(())
}

/// One scan of `files` (paths or object URLs), with the partition columns of their
/// `key=value` folders; dates parsed, so `WHERE date = '2026-11-22'` prunes.
fn scan_files(files: Vec<String>, prefix: &str) -> Result<LazyFrame, QueryError> {
    let args = ScanArgsParquet {
        hive_options: HiveOptions::new_enabled(),
        ..ScanArgsParquet::default()
    };
    let paths = files.into_iter().map(PlRefPath::new).collect();
    LazyFrame::scan_parquet_files(paths, args)
        .map_err(|e| QueryError::Sql(format!("{prefix}: {e}")))
}

/// A curated table under `prefix`: each day's current parts (by its manifest), with `year`,
/// `month`, `day` from the folders; `None` when no day is written.
async fn scan_curated(lake: &Lake, prefix: &str) -> Result<Option<LazyFrame>, QueryError> {
    let mut parts: Vec<String> = Vec::new();
    for year in lake.list_dirs(prefix).await? {
        for month in lake.list_dirs(&year).await? {
            for day in lake.list_dirs(&month).await? {
                let keys = daily_trades::current_parts(lake, &day)
                    .await
                    .map_err(QueryError::Sql)?;
                parts.extend(keys.iter().map(|key| lake.object_url(key)));
            }
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    scan_files(parts, prefix).map(Some)
}

#[cfg(test)]
mod tests {
    use super::refuse_file_functions;

    #[test]
    fn file_functions_are_refused_however_spelled_and_only_when_called() {
        for sql in [
            "SELECT count(*) FROM read_parquet('/etc/*.parquet')",
            "select * from READ_CSV ('/etc/passwd')",
            "SELECT * FROM \"read_parquet\"('x') JOIN fact_trades ON true",
            "SELECT * FROM binance_trades, read_ipc('/x')",
            "SELECT * FROM /* a */ read_json('/x') -- b",
        ] {
            assert!(refuse_file_functions(sql).is_err(), "{sql}");
        }
        for sql in [
            "SELECT 'read_parquet(x)' AS s FROM binance_trades",
            "SELECT read_parquet FROM t -- read_csv('/x')",
            "SELECT count(*) FROM binance_trades WHERE symbol = 'BTCUSDT'",
            "SELECT 'it''s read_csv(' FROM t",
        ] {
            assert!(refuse_file_functions(sql).is_ok(), "{sql}");
        }
    }
}
