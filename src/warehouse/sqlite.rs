//! The embedded warehouse: a SQLite file.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, QueryBuilder, Sqlite};

use super::columns::timestamp_text;
use super::{
    Column, ColumnData, Keys, LEDGER_DDL, LEDGER_INSERT, LoadOutcome, Replacement, Scope,
    WarehouseError, column_list, create_table_sql,
};

/// Bound values per INSERT statement: SQLite allows 32,766.
const VALUES_PER_STATEMENT: usize = 32_000;

pub struct SqliteWarehouse {
    pool: SqlitePool,
}

fn sql_type(data: &ColumnData) -> &'static str {
    match data {
        ColumnData::Int(_) | ColumnData::Bool(_) => "INTEGER",
        ColumnData::Float(_) => "REAL",
        // Exact decimal text and RFC 3339 times: SQLite has neither type natively.
        ColumnData::Decimal { .. } | ColumnData::TimestampMs(_) | ColumnData::Text(_) => "TEXT",
    }
}

impl SqliteWarehouse {
    pub(super) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub async fn open(url: &str) -> Result<SqliteWarehouse, WarehouseError> {
        let open_err = |source| WarehouseError::Open {
            url: crate::redact::secrets(url).into_owned(),
            source,
        };
        if let Some(path) = url.strip_prefix("sqlite://")
            && let Some(dir) = std::path::Path::new(path).parent()
        {
            let _ = std::fs::create_dir_all(dir);
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(open_err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(open_err)?;
        sqlx::query(LEDGER_DDL).execute(&pool).await?;
        Ok(SqliteWarehouse { pool })
    }

    /// Ledger files in `[from, to)`: a range of the primary key, not a scan of the ledger.
    pub async fn loaded_files(&self, from: &str, to: &str) -> Result<Vec<String>, WarehouseError> {
        Ok(
            sqlx::query_scalar(
                "SELECT file FROM _orch_loaded_files WHERE file >= ?1 AND file < ?2",
            )
            .bind(from)
            .bind(to)
            .fetch_all(&self.pool)
            .await?,
        )
    }

    pub async fn load(
        &self,
        table: &str,
        file: &str,
        columns: &[Column],
        rows: usize,
    ) -> Result<LoadOutcome, WarehouseError> {
        let fail = |source| WarehouseError::Load {
            table: table.to_string(),
            file: file.to_string(),
            source,
        };
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(fail)?;
        let recorded = sqlx::query(LEDGER_INSERT)
            .bind(file)
            .bind(table)
            .bind(rows as i64)
            .bind(crate::store::timestamp::format(chrono::Utc::now()))
            .execute(&mut *tx)
            .await
            .map_err(fail)?
            .rows_affected();
        if recorded == 0 {
            return Ok(LoadOutcome::AlreadyLoaded);
        }
        let ddl = create_table_sql(table, columns, |data| sql_type(data).to_string());
        sqlx::query(AssertSqlSafe(ddl))
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        insert_rows(&mut tx, table, columns, rows)
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        Ok(LoadOutcome::Loaded { rows: rows as u64 })
    }

    /// Replaces part of each table in one transaction: the rows `scope` selects are deleted,
    /// then the frame's rows inserted; tables are created when missing.
    pub async fn replace(&self, replacements: &[Replacement]) -> Result<u64, WarehouseError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut written = 0;
        for r in replacements {
            let fail = |source| WarehouseError::Replace {
                table: r.table.clone(),
                source,
            };
            let ddl = create_table_sql(&r.table, &r.columns, |data| sql_type(data).to_string());
            sqlx::query(AssertSqlSafe(ddl))
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
            let table = &r.table;
            match &r.scope {
                Scope::TimeRange {
                    column,
                    from_ms,
                    to_ms,
                } => {
                    // RFC 3339 texts of one format sort as the times they name.
                    sqlx::query(AssertSqlSafe(format!(
                        "DELETE FROM \"{table}\" WHERE \"{column}\" >= ? AND \"{column}\" < ?"
                    )))
                    .bind(timestamp_text(*from_ms))
                    .bind(timestamp_text(*to_ms))
                    .execute(&mut *tx)
                    .await
                    .map_err(fail)?;
                }
                Scope::Keys { column, keys } => {
                    let mut delete: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
                        "DELETE FROM \"{table}\" WHERE \"{column}\" IN ("
                    ));
                    let mut list = delete.separated(", ");
                    match keys {
                        Keys::Int(values) => values.iter().for_each(|v| {
                            list.push_bind(*v);
                        }),
                        Keys::Text(values) => values.iter().for_each(|v| {
                            list.push_bind(v.clone());
                        }),
                    }
                    list.push_unseparated(")");
                    if !keys.is_empty() {
                        delete.build().execute(&mut *tx).await.map_err(fail)?;
                    }
                }
            }
            insert_rows(&mut tx, table, &r.columns, r.rows)
                .await
                .map_err(fail)?;
            written += r.rows as u64;
        }
        tx.commit().await?;
        Ok(written)
    }
}

/// Multi-row `INSERT`s of `rows` rows of `columns` into `table`.
async fn insert_rows(
    tx: &mut sqlx::Transaction<'static, Sqlite>,
    table: &str,
    columns: &[Column],
    rows: usize,
) -> Result<(), sqlx::Error> {
    let names = column_list(columns);
    let rows_per_statement = (VALUES_PER_STATEMENT / columns.len().max(1)).max(1);
    let mut start = 0;
    while start < rows {
        let end = (start + rows_per_statement).min(rows);
        let mut insert: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("INSERT INTO \"{table}\" ({names}) "));
        insert.push_values(start..end, |mut row, i| {
            for column in columns {
                match &column.data {
                    ColumnData::Int(v) => row.push_bind(v[i]),
                    ColumnData::Bool(v) => row.push_bind(v[i]),
                    ColumnData::Float(v) => row.push_bind(v[i]),
                    other => row.push_bind(other.text(i)),
                };
            }
        });
        insert.build().execute(&mut **tx).await?;
        start = end;
    }
    Ok(())
}
