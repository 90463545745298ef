//! A PostgreSQL warehouse, loaded with `COPY` (the fastest path into PostgreSQL).

use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::columns::timestamp_text;
use super::{
    Column, ColumnData, Keys, LEDGER_DDL, LEDGER_INSERT, LoadOutcome, Replacement, Scope,
    WarehouseError, column_list, create_table_sql,
};

/// Bytes of `COPY` data sent per message.
const COPY_CHUNK: usize = 1 << 20;

pub struct PostgresWarehouse {
    pool: PgPool,
}

fn sql_type(data: &ColumnData) -> String {
    match data {
        ColumnData::Int(_) => "BIGINT".to_string(),
        ColumnData::Decimal {
            precision, scale, ..
        } => format!("NUMERIC({precision}, {scale})"),
        ColumnData::TimestampMs(_) => "TIMESTAMPTZ".to_string(),
        ColumnData::Bool(_) => "BOOLEAN".to_string(),
        ColumnData::Float(_) => "DOUBLE PRECISION".to_string(),
        ColumnData::Text(_) => "TEXT".to_string(),
    }
}

/// Appends a value in `COPY ... (FORMAT text)` form.
fn push_copy_value(out: &mut String, value: Option<String>) {
    match value {
        None => out.push_str("\\N"),
        Some(text) => {
            for ch in text.chars() {
                match ch {
                    '\\' => out.push_str("\\\\"),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    other => out.push(other),
                }
            }
        }
    }
}

impl PostgresWarehouse {
    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn open(url: &str) -> Result<PostgresWarehouse, WarehouseError> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(url)
            .await
            .map_err(|source| WarehouseError::Open {
                url: crate::redact::secrets(url).into_owned(),
                source,
            })?;
        sqlx::query(LEDGER_DDL).execute(&pool).await?;
        Ok(PostgresWarehouse { pool })
    }

    /// Ledger files in `[from, to)`, compared byte by byte whatever the database's collation.
    pub async fn loaded_files(&self, from: &str, to: &str) -> Result<Vec<String>, WarehouseError> {
        Ok(sqlx::query_scalar(
            "SELECT file FROM _orch_loaded_files
             WHERE file COLLATE \"C\" >= $1 AND file COLLATE \"C\" < $2",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?)
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
        let mut tx = self.pool.begin().await.map_err(fail)?;
        // A concurrent load of the same file waits here for the first to commit, then finds
        // the file recorded.
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
        let ddl = create_table_sql(table, columns, sql_type);
        sqlx::query(AssertSqlSafe(ddl))
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        copy_rows(&mut tx, table, columns, rows)
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        Ok(LoadOutcome::Loaded { rows: rows as u64 })
    }

    /// Replaces part of each table in one transaction: the rows `scope` selects are deleted,
    /// then the frame's rows copied in; tables are created when missing.
    pub async fn replace(&self, replacements: &[Replacement]) -> Result<u64, WarehouseError> {
        let mut tx = self.pool.begin().await?;
        let mut written = 0;
        for r in replacements {
            let fail = |source| WarehouseError::Replace {
                table: r.table.clone(),
                source,
            };
            let table = &r.table;
            let ddl = create_table_sql(table, &r.columns, sql_type);
            sqlx::query(AssertSqlSafe(ddl))
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
            let delete = match &r.scope {
                Scope::TimeRange {
                    column,
                    from_ms,
                    to_ms,
                } => sqlx::query(AssertSqlSafe(format!(
                    "DELETE FROM \"{table}\" WHERE \"{column}\" >= $1::timestamptz AND \"{column}\" < $2::timestamptz"
                )))
                .bind(timestamp_text(*from_ms))
                .bind(timestamp_text(*to_ms)),
                Scope::Keys {
                    column,
                    keys: Keys::Int(values),
                } => sqlx::query(AssertSqlSafe(format!(
                    "DELETE FROM \"{table}\" WHERE \"{column}\" = ANY($1)"
                )))
                .bind(values.clone()),
                Scope::Keys {
                    column,
                    keys: Keys::Text(values),
                } => sqlx::query(AssertSqlSafe(format!(
                    "DELETE FROM \"{table}\" WHERE \"{column}\" = ANY($1)"
                )))
                .bind(values.clone()),
            };
            delete.execute(&mut *tx).await.map_err(fail)?;
            copy_rows(&mut tx, table, &r.columns, r.rows)
                .await
                .map_err(fail)?;
            written += r.rows as u64;
        }
        tx.commit().await?;
        Ok(written)
    }
}

/// `COPY ... FROM STDIN` of `rows` rows of `columns` into `table`.
async fn copy_rows(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    table: &str,
    columns: &[Column],
    rows: usize,
) -> Result<(), sqlx::Error> {
    if rows == 0 {
        return Ok(());
    }
    let names = column_list(columns);
    let mut copy = tx
        .copy_in_raw(&format!(
            "COPY \"{table}\" ({names}) FROM STDIN (FORMAT text)"
        ))
        .await?;
    let mut buffer = String::with_capacity(COPY_CHUNK + 4096);
    for row in 0..rows {
        for (i, column) in columns.iter().enumerate() {
            if i > 0 {
                buffer.push('\t');
            }
            push_copy_value(&mut buffer, column.data.text(row));
        }
        buffer.push('\n');
        if buffer.len() >= COPY_CHUNK {
            copy.send(buffer.as_bytes()).await?;
            buffer.clear();
        }
    }
    if !buffer.is_empty() {
        copy.send(buffer.as_bytes()).await?;
    }
    copy.finish().await?;
    Ok(())
}
