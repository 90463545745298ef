//! The staging table's shape: created when missing, and an older table's `quote_qty` widened
//! in place.

use sqlx::AssertSqlSafe;

use super::{Staging, StagingError};
use crate::database::Backend;
use crate::decimal::Product;

impl Staging {
    pub(super) async fn create_table(&self) -> Result<(), StagingError> {
        let (decimal, product, boolean) = match self.backend {
            Backend::Sqlite => ("TEXT", "TEXT", "INTEGER"),
            Backend::Postgres => ("NUMERIC(38, 8)", "NUMERIC(38, 16)", "BOOLEAN"),
        };
        let table = &self.table;
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {table} (
                exchange       TEXT NOT NULL,
                symbol         TEXT NOT NULL,
                trade_id       BIGINT NOT NULL,
                price          {decimal} NOT NULL,
                qty            {decimal} NOT NULL,
                quote_qty      {product} NOT NULL,
                trade_time     BIGINT NOT NULL,
                is_buyer_maker {boolean} NOT NULL,
                ingested_at    BIGINT NOT NULL,
                PRIMARY KEY (exchange, symbol, trade_id)
            );
            CREATE INDEX IF NOT EXISTS {table}_by_time ON {table} (trade_time);
            CREATE TABLE IF NOT EXISTS {table}_checked (
                exchange TEXT NOT NULL,
                symbol   TEXT NOT NULL,
                through  BIGINT NOT NULL,
                PRIMARY KEY (exchange, symbol)
            )"
        );
        sqlx::raw_sql(AssertSqlSafe(ddl))
            .execute(&self.pool)
            .await
            .map_err(self.sql_error())?;
        if self.backend == Backend::Postgres {
            self.widen_quote_qty().await?;
        }
        Ok(())
    }

    /// Tables made before `quote_qty` kept 16 fractional digits held `NUMERIC(38, 8)`, which
    /// cut price × qty on pairs such as ETHBTC: widen the column once, recomputing every value
    /// exactly from the price and quantity it came from.
    ///
    /// The table is rewritten once, under an exclusive lock that holds writers off until it is
    /// done; processes opening it at once take turns (a transaction-scoped advisory lock), and
    /// the second finds the column widened.
    pub(super) async fn widen_quote_qty(&self) -> Result<(), StagingError> {
        let scale_sql = "SELECT numeric_scale FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = $1 AND column_name = 'quote_qty'";
        let narrow = |scale: Option<Option<i32>>| {
            scale
                .flatten()
                .is_some_and(|scale| scale < Product::SCALE as i32)
        };
        let scale = sqlx::query_scalar(scale_sql)
            .bind(self.table.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(self.sql_error())?;
        if !narrow(scale) {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(self.sql_error())?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("orch staging widen {}", self.table))
            .execute(&mut *tx)
            .await
            .map_err(self.sql_error())?;
        let scale = sqlx::query_scalar(scale_sql)
            .bind(self.table.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(self.sql_error())?;
        if narrow(scale) {
            tracing::warn!(table = %self.table, "widening quote_qty to NUMERIC(38, 16), recomputed as price × qty; writers wait until it is done");
            let sql = format!(
                "ALTER TABLE {} ALTER COLUMN quote_qty TYPE NUMERIC(38, 16) USING price * qty",
                self.table
            );
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await
                .map_err(self.sql_error())?;
        }
        tx.commit().await.map_err(self.sql_error())?;
        Ok(())
    }
}
