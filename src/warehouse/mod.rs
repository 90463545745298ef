//! The warehouse: tables loaded from lake files, exactly once per file.
//!
//! `ORCH_WAREHOUSE_URL` picks the backend: `sqlite://<home>/data/warehouse.db` (the embedded
//! default), `postgres://...` or `bigquery://PROJECT/DATASET[?location=EU]`. Every backend
//! keeps a ledger table `_orch_loaded_files` of the files it loaded. In SQLite and PostgreSQL
//! each load runs in one transaction that first records the file in the ledger and then
//! inserts its rows, so a retried or killed load either committed both or neither: a file is
//! never loaded twice, nor half. BigQuery has no such transaction; deterministic load job ids
//! give the same guarantee there (see [`bigquery`]).
//!
//! Tables are created from the Parquet schema when missing. Decimals stay exact: `NUMERIC(p,
//! s)` in PostgreSQL, `NUMERIC` in BigQuery, decimal text in SQLite (which has no exact
//! decimal type).

pub mod bigquery;
mod columns;
mod postgres;
mod sqlite;

use bytes::Bytes;
use polars::prelude::DataFrame;
use polars::prelude::PolarsError;

pub use bigquery::BigQueryError;
pub use columns::{Column, ColumnData, timestamp_text};

#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    #[error(
        "warehouse URL `{0}` is not supported: use sqlite://PATH, postgres://USER@HOST/DB or bigquery://PROJECT/DATASET"
    )]
    UnsupportedUrl(String),
    #[error("cannot open the warehouse `{url}`: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("warehouse table `{table}`, loading {file}: {source}")]
    Load {
        table: String,
        file: String,
        source: sqlx::Error,
    },
    #[error("{file}: not a readable Parquet file: {source}")]
    UnreadableParquet { file: String, source: PolarsError },
    #[error(
        "{file}: column `{column}` has type {dtype}, which the warehouse loader does not handle"
    )]
    UnsupportedColumn {
        file: String,
        column: String,
        dtype: String,
    },
    #[error("table name `{0}` must be lower-case letters, digits and `_`, starting with a letter")]
    BadTableName(String),
    #[error("warehouse table `{table}`: {source}")]
    Replace { table: String, source: sqlx::Error },
    #[error("warehouse table `{table}`: {detail}")]
    ReplaceRefused { table: String, detail: String },
    #[error("warehouse: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("warehouse table `{table}`, loading {file}: {source}")]
    BigQueryLoad {
        table: String,
        file: String,
        source: Box<BigQueryError>,
    },
    #[error("warehouse table `{table}`: {source}")]
    BigQueryReplace {
        table: String,
        source: Box<BigQueryError>,
    },
    #[error("warehouse: {0}")]
    BigQuery(#[from] BigQueryError),
}

impl WarehouseError {
    /// Whether another attempt can help: yes for a lost connection, a busy database or a
    /// BigQuery error that says so; not for a bad URL, an unreadable file, a bad table name or
    /// a refused statement.
    pub fn is_transient(&self) -> bool {
        match self {
            WarehouseError::Open { source, .. }
            | WarehouseError::Load { source, .. }
            | WarehouseError::Replace { source, .. }
            | WarehouseError::Sql(source) => crate::database::is_transient(source),
            WarehouseError::BigQueryLoad { source, .. }
            | WarehouseError::BigQueryReplace { source, .. } => source.is_transient(),
            WarehouseError::BigQuery(source) => source.is_transient(),
            WarehouseError::UnsupportedUrl(_)
            | WarehouseError::UnreadableParquet { .. }
            | WarehouseError::UnsupportedColumn { .. }
            | WarehouseError::BadTableName(_)
            | WarehouseError::ReplaceRefused { .. } => false,
        }
    }
}

/// Which rows of a table a [`Replacement`] replaces.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Rows whose timestamp `column` is in `[from_ms, to_ms)`: a day of a fact table.
    TimeRange {
        column: String,
        from_ms: i64,
        to_ms: i64,
    },
    /// Rows whose `column` holds one of the new rows' keys: a dimension's members.
    Keys { column: String, keys: Keys },
}

/// The key values of a [`Scope::Keys`].
#[derive(Debug, Clone)]
pub enum Keys {
    Int(Vec<i64>),
    Text(Vec<String>),
}

impl Keys {
    pub fn is_empty(&self) -> bool {
        match self {
            Keys::Int(v) => v.is_empty(),
            Keys::Text(v) => v.is_empty(),
        }
    }
}

/// New rows for part of a table.
pub struct Replacement {
    pub table: String,
    pub columns: Vec<Column>,
    pub rows: usize,
    pub scope: Scope,
    /// The rows as a frame too: BigQuery loads them as a Parquet file.
    pub frame: DataFrame,
}

impl Replacement {
    /// Replaces the rows of `frame`'s day: those with `column` in `[from_ms, to_ms)`.
    pub fn day(
        table: &str,
        frame: &DataFrame,
        column: &str,
        (from_ms, to_ms): (i64, i64),
    ) -> Result<Replacement, WarehouseError> {
        Replacement::new(
            table,
            frame,
            Scope::TimeRange {
                column: column.to_string(),
                from_ms,
                to_ms,
            },
        )
    }

    /// Replaces the rows with the same `key_column` values as `frame`'s (an upsert).
    pub fn keys(
        table: &str,
        frame: &DataFrame,
        key_column: &str,
    ) -> Result<Replacement, WarehouseError> {
        let columns = columns::from_frame(frame, table)?;
        let keys = match columns
            .iter()
            .find(|c| c.name == key_column)
            .map(|c| &c.data)
        {
            Some(ColumnData::Int(v)) => Keys::Int(v.iter().flatten().copied().collect()),
            Some(ColumnData::Text(v)) => Keys::Text(v.iter().flatten().cloned().collect()),
            _ => {
                return Err(WarehouseError::UnsupportedColumn {
                    file: table.to_string(),
                    column: key_column.to_string(),
                    dtype: "a key that is neither integer nor text".to_string(),
                });
            }
        };
        Replacement::new(
            table,
            frame,
            Scope::Keys {
                column: key_column.to_string(),
                keys,
            },
        )
    }

    fn new(table: &str, frame: &DataFrame, scope: Scope) -> Result<Replacement, WarehouseError> {
        check_table_name(table)?;
        Ok(Replacement {
            table: table.to_string(),
            columns: columns::from_frame(frame, table)?,
            rows: frame.height(),
            scope,
            frame: frame.clone(),
        })
    }
}

/// What loading one file did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadOutcome {
    Loaded {
        rows: u64,
    },
    /// The ledger already lists the file: nothing was written.
    AlreadyLoaded,
}

/// One row of `fact_trades` as text, the way both SQL backends can give it: a symbol's minute.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FactMinute {
    pub symbol: String,
    pub exchange_id: String,
    pub minute: String,
    pub open_price: String,
    pub close_price: String,
    pub min_price: String,
    pub max_price: String,
    pub total_quantity: String,
    pub trade_count: i64,
}

/// The newest minutes of `fact_trades`, every column as text (decimals stay exact).
const RECENT_FACT_MINUTES: &str =
    "SELECT symbol, exchange_id, CAST(trade_minute AS TEXT) AS minute,
         CAST(open_price AS TEXT) AS open_price, CAST(close_price AS TEXT) AS close_price,
         CAST(min_price AS TEXT) AS min_price, CAST(max_price AS TEXT) AS max_price,
         CAST(total_quantity AS TEXT) AS total_quantity, CAST(trade_count AS BIGINT) AS trade_count
     FROM fact_trades ORDER BY trade_minute DESC LIMIT $1";

/// An open warehouse.
pub enum Warehouse {
    Sqlite(sqlite::SqliteWarehouse),
    Postgres(postgres::PostgresWarehouse),
    BigQuery(Box<bigquery::BigQueryWarehouse>),
}

impl Warehouse {
    pub async fn open(url: &str) -> Result<Warehouse, WarehouseError> {
        let scheme = url.split_once(':').map(|(s, _)| s);
        match scheme {
            Some("sqlite") => Ok(Warehouse::Sqlite(sqlite::SqliteWarehouse::open(url).await?)),
            Some("postgres" | "postgresql") => Ok(Warehouse::Postgres(
                postgres::PostgresWarehouse::open(url).await?,
            )),
            Some("bigquery") => Ok(Warehouse::BigQuery(Box::new(
                bigquery::BigQueryWarehouse::open(url).await?,
            ))),
            _ => Err(WarehouseError::UnsupportedUrl(
                crate::redact::secrets(url).into_owned(),
            )),
        }
    }

    /// Files of the ledger that start with `prefix` and sort at or after `from` (which starts
    /// with `prefix`): a range of the ledger's key, so a run reads the files of the partitions
    /// it lists, not the whole ledger.
    pub async fn loaded_files(
        &self,
        prefix: &str,
        from: &str,
    ) -> Result<Vec<String>, WarehouseError> {
        let to = prefix_end(prefix);
        match self {
            Warehouse::Sqlite(w) => w.loaded_files(from, &to).await,
            Warehouse::Postgres(w) => w.loaded_files(from, &to).await,
            Warehouse::BigQuery(w) => Ok(w.loaded_files(from, &to).await?),
        }
    }

    /// Appends the rows of the Parquet file `parquet`, lake file `file`, to `table` unless the
    /// file is loaded already (by the ledger, or in BigQuery by its load job); creates the
    /// table when missing. The bytes, not a decoded frame, because BigQuery loads the file as
    /// it is.
    pub async fn load_file(
        &self,
        table: &str,
        file: &str,
        parquet: Bytes,
    ) -> Result<LoadOutcome, WarehouseError> {
        check_table_name(table)?;
        match self {
            Warehouse::Sqlite(w) => {
                let (columns, rows) = decode_off_runtime(file, parquet).await?;
                w.load(table, file, &columns, rows).await
            }
            Warehouse::Postgres(w) => {
                let (columns, rows) = decode_off_runtime(file, parquet).await?;
                w.load(table, file, &columns, rows).await
            }
            Warehouse::BigQuery(w) => w.load(table, file, parquet).await,
        }
    }

    /// The newest `limit` rows of `fact_trades`, newest first; `None` when the warehouse
    /// cannot be read this way (BigQuery) or has no such table yet.
    pub async fn recent_fact_minutes(
        &self,
        limit: u32,
    ) -> Result<Option<Vec<FactMinute>>, WarehouseError> {
        let rows = match self {
            Warehouse::Sqlite(w) => {
                sqlx::query_as(RECENT_FACT_MINUTES)
                    .bind(i64::from(limit))
                    .fetch_all(w.pool())
                    .await
            }
            Warehouse::Postgres(w) => {
                sqlx::query_as(RECENT_FACT_MINUTES)
                    .bind(i64::from(limit))
                    .fetch_all(w.pool())
                    .await
            }
            Warehouse::BigQuery(_) => return Ok(None),
        };
        match rows {
            Ok(rows) => Ok(Some(rows)),
            // No table yet: the daily ETL has not loaded a day.
            Err(sqlx::Error::Database(e))
                if e.message().contains("no such table")
                    || e.code().as_deref() == Some("42P01") =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Applies every replacement in one transaction, so readers see the old rows or the new,
    /// never a mix, and a failure leaves the old ones; returns the rows written. BigQuery has
    /// no such transaction: each day partition is replaced atomically, but not all at once
    /// (see [`bigquery::BigQueryWarehouse::replace`]).
    pub async fn replace(&self, replacements: &[Replacement]) -> Result<u64, WarehouseError> {
        match self {
            Warehouse::Sqlite(w) => w.replace(replacements).await,
            Warehouse::Postgres(w) => w.replace(replacements).await,
            Warehouse::BigQuery(w) => w.replace(replacements).await,
        }
    }
}

/// The first string after every string that starts with `prefix` (its last character one
/// higher): the end of the key range of `prefix`. Keys are paths, ASCII in practice.
fn prefix_end(prefix: &str) -> String {
    let mut end: Vec<char> = prefix.chars().collect();
    match end.pop() {
        Some(last) => {
            end.push(char::from_u32(u32::from(last) + 1).unwrap_or(char::MAX));
            end.into_iter().collect()
        }
        None => char::MAX.to_string(),
    }
}

/// The columns and row count of a Parquet file, for the backends that insert rows themselves;
/// decoded on a blocking thread, off the async runtime.
async fn decode_off_runtime(
    file: &str,
    parquet: Bytes,
) -> Result<(Vec<Column>, usize), WarehouseError> {
    let name = file.to_string();
    tokio::task::spawn_blocking(move || decode(&name, parquet))
        .await
        .map_err(|e| WarehouseError::UnreadableParquet {
            file: file.to_string(),
            source: PolarsError::ComputeError(format!("decoding panicked: {e}").into()),
        })?
}

/// The columns and row count of a Parquet file, for the backends that insert rows themselves.
fn decode(file: &str, parquet: Bytes) -> Result<(Vec<Column>, usize), WarehouseError> {
    let frame = crate::lake::raw_trades::read_frame(parquet).map_err(|source| {
        WarehouseError::UnreadableParquet {
            file: file.to_string(),
            source,
        }
    })?;
    Ok((columns::from_frame(&frame, file)?, frame.height()))
}

fn check_table_name(table: &str) -> Result<(), WarehouseError> {
    if crate::database::is_table_name(table) {
        Ok(())
    } else {
        Err(WarehouseError::BadTableName(table.to_string()))
    }
}

/// Records a file in the ledger unless it is there; zero rows affected means already loaded.
/// `$N` parameters, which SQLite accepts too.
const LEDGER_INSERT: &str = "INSERT INTO _orch_loaded_files (file, table_name, rows, loaded_at)
    VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";

/// The ledger's DDL, the same in both backends.
const LEDGER_DDL: &str = "CREATE TABLE IF NOT EXISTS _orch_loaded_files (
    file       TEXT PRIMARY KEY,
    table_name TEXT NOT NULL,
    rows       BIGINT NOT NULL,
    loaded_at  TEXT NOT NULL
)";

/// `CREATE TABLE IF NOT EXISTS` for the frame's columns, typed by the backend's `sql_type`.
fn create_table_sql(
    table: &str,
    columns: &[Column],
    sql_type: impl Fn(&ColumnData) -> String,
) -> String {
    let definitions: Vec<String> = columns
        .iter()
        .map(|c| format!("\"{}\" {}", c.name, sql_type(&c.data)))
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS \"{table}\" ({})",
        definitions.join(", ")
    )
}

/// The quoted column names, for `INSERT` and `COPY`.
fn column_list(columns: &[Column]) -> String {
    let names: Vec<String> = columns.iter().map(|c| format!("\"{}\"", c.name)).collect();
    names.join(", ")
}
