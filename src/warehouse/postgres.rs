//! A PostgreSQL warehouse, loaded with `COPY` (the fastest path into PostgreSQL).

use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::{
    Column, ColumnData, LEDGER_DDL, LEDGER_INSERT, LoadOutcome, WarehouseError, column_list,
    create_table_sql,
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
    pub async fn open(url: &str) -> Result<PostgresWarehouse, WarehouseError> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(url)
            .await
            .map_err(|source| WarehouseError::Open {
                url: crate::config::redact_url(url),
                source,
            })?;
        sqlx::query(LEDGER_DDL).execute(&pool).await?;
        Ok(PostgresWarehouse { pool })
    }

    pub async fn loaded_files(&self, prefix: &str) -> Result<Vec<String>, WarehouseError> {
        Ok(
            sqlx::query_scalar("SELECT file FROM _orch_loaded_files WHERE starts_with(file, $1)")
                .bind(prefix)
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
        let names = column_list(columns);
        let mut copy = tx
            .copy_in_raw(&format!(
                "COPY \"{table}\" ({names}) FROM STDIN (FORMAT text)"
            ))
            .await
            .map_err(fail)?;
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
                copy.send(buffer.as_bytes()).await.map_err(fail)?;
                buffer.clear();
            }
        }
        if !buffer.is_empty() {
            copy.send(buffer.as_bytes()).await.map_err(fail)?;
        }
        copy.finish().await.map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        Ok(LoadOutcome::Loaded { rows: rows as u64 })
    }
}
