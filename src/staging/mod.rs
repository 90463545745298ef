//! The staging store: raw trades as the live streams receive them, before any transform.
//!
//! `ORCH_STAGING_URL` picks the database: `sqlite://<home>/data/staging.db` (the embedded
//! default) or `postgres://...`. A table such as `raw_trades` holds one row per
//! `(exchange, symbol, trade_id)`, its primary key: ids are per symbol, so keying on the id
//! alone would merge symbols. Inserts are batched and `ON CONFLICT DO NOTHING`, so a replayed
//! batch or a backfill overlapping the stream writes nothing twice. Prices and quantities stay
//! exact: `NUMERIC(38, 8)` in PostgreSQL (`NUMERIC(38, 16)` for `quote_qty`, price × qty),
//! decimal text in SQLite; times are milliseconds since the epoch, UTC.

mod checks;
mod columns;
mod reads;
mod schema;

use sqlx::{AnyPool, AssertSqlSafe};

pub use columns::{IdSpan, TradeColumns};

use crate::database::{self, Backend};
use crate::exchange::Trade;
use crate::redact;

#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("staging URL `{0}` is not supported: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    #[error("cannot open the staging store `{url}`: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error(
        "staging table name `{0}` must be lower-case letters, digits and `_`, starting with a letter"
    )]
    BadTableName(String),
    #[error("staging table `{table}`: {source}")]
    Sql { table: String, source: sqlx::Error },
    #[error("staging table `{table}`: {message}")]
    Read { table: String, message: String },
    #[error("staging table `{table}` holds an unreadable {column} `{value}`")]
    Corrupt {
        table: String,
        column: &'static str,
        value: String,
    },
}

impl StagingError {
    /// Whether another attempt can help: yes for a lost connection or a busy database, not for
    /// a bad URL or table name or a corrupt value.
    pub fn is_transient(&self) -> bool {
        match self {
            StagingError::Open { source, .. } | StagingError::Sql { source, .. } => {
                crate::database::is_transient(source)
            }
            StagingError::Read { .. } => true,
            StagingError::UnsupportedUrl(_)
            | StagingError::BadTableName(_)
            | StagingError::Corrupt { .. } => false,
        }
    }
}

/// Rows per INSERT: 9 values each stays under SQLite's 32,766 bound parameters.
const ROWS_PER_STATEMENT: usize = 1000;

/// One trade of one symbol, ready to stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedTrade {
    pub symbol: String,
    pub trade: Trade,
}

/// A staging table; cheap to clone.
#[derive(Clone, Debug)]
pub struct Staging {
    pool: AnyPool,
    backend: Backend,
    table: String,
    url: String,
}

impl Staging {
    /// The default staging database of a home.
    pub fn default_url(home: &std::path::Path) -> String {
        format!(
            "sqlite://{}",
            home.join("data").join("staging.db").display()
        )
    }

    /// Opens the database at `url` and creates `table` (and its time index) when missing.
    pub async fn open(url: &str, table: &str) -> Result<Staging, StagingError> {
        if !database::is_table_name(table) {
            return Err(StagingError::BadTableName(table.to_string()));
        }
        let backend = Backend::of_url(url)
            .ok_or_else(|| StagingError::UnsupportedUrl(redact::secrets(url).into_owned()))?;
        let pool =
            database::connect(url, backend, 2)
                .await
                .map_err(|source| StagingError::Open {
                    url: redact::secrets(url).into_owned(),
                    source,
                })?;
        let staging = Staging {
            pool,
            backend,
            table: table.to_string(),
            url: url.to_string(),
        };
        staging.create_table().await?;
        Ok(staging)
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn sql_error(&self) -> impl FnOnce(sqlx::Error) -> StagingError + '_ {
        move |source| StagingError::Sql {
            table: self.table.clone(),
            source,
        }
    }

    /// Stages `trades` of `exchange` in one transaction; returns how many were new (the
    /// others were staged before and are left as they are).
    pub async fn insert(
        &self,
        exchange: &str,
        trades: &[StagedTrade],
        ingested_at_ms: i64,
    ) -> Result<u64, StagingError> {
        let mut tx = self.pool.begin().await.map_err(self.sql_error())?;
        let mut inserted = 0;
        for chunk in trades.chunks(ROWS_PER_STATEMENT) {
            let sql = self.insert_sql(chunk.len());
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for row in chunk {
                let t = &row.trade;
                query = query
                    .bind(exchange)
                    .bind(row.symbol.as_str())
                    .bind(t.id)
                    .bind(t.price.to_string())
                    .bind(t.qty.to_string())
                    .bind(t.quote_qty.to_string())
                    .bind(t.time_ms)
                    .bind(t.is_buyer_maker)
                    .bind(ingested_at_ms);
            }
            inserted += query
                .execute(&mut *tx)
                .await
                .map_err(self.sql_error())?
                .rows_affected();
        }
        tx.commit().await.map_err(self.sql_error())?;
        Ok(inserted)
    }

    /// `INSERT ... VALUES (...), (...) ON CONFLICT DO NOTHING` for `rows` rows. SQLite gets
    /// anonymous `?` parameters: sqlx resolves each numbered one by a search through the
    /// statement's parameter names, which made a 1,000-row statement cost 14 times ten
    /// 100-row ones. PostgreSQL reads the decimal texts as `NUMERIC`.
    fn insert_sql(&self, rows: usize) -> String {
        let mut sql = format!(
            "INSERT INTO {} (exchange, symbol, trade_id, price, qty, quote_qty, trade_time, \
             is_buyer_maker, ingested_at) VALUES ",
            self.table
        );
        for row in 0..rows {
            if row > 0 {
                sql.push_str(", ");
            }
            match self.backend {
                Backend::Sqlite => sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                Backend::Postgres => {
                    let n = row * 9;
                    sql.push_str(&format!(
                        "(${}, ${}, ${}, ${}::numeric, ${}::numeric, ${}::numeric, ${}, ${}, ${})",
                        n + 1,
                        n + 2,
                        n + 3,
                        n + 4,
                        n + 5,
                        n + 6,
                        n + 7,
                        n + 8,
                        n + 9
                    ));
                }
            }
        }
        sql.push_str(" ON CONFLICT DO NOTHING");
        sql
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decimal::Decimal;

    fn trade(id: i64, price: &str, time_ms: i64) -> StagedTrade {
        let price: Decimal = price.parse().expect("price");
        let qty: Decimal = "0.00123000".parse().expect("qty");
        StagedTrade {
            symbol: "BTCUSDT".to_string(),
            trade: Trade::new(id, price, qty, time_ms, id % 2 == 0, true).expect("trade"),
        }
    }

    #[tokio::test]
    async fn sqlite_batches_are_idempotent_and_read_back_exactly() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("data/staging.db").display());
        batches_are_idempotent_and_read_back_exactly(&url, "raw_trades").await;
    }

    /// On the server `.ci/postgres` starts, in a table of its own; skipped without one.
    #[tokio::test]
    async fn postgres_batches_are_idempotent_and_read_back_exactly() {
        let Some(url) = crate::database::test_postgres_url() else {
            return;
        };
        let table = format!("staging_test_{}", std::process::id());
        batches_are_idempotent_and_read_back_exactly(&url, &table).await;
        let staging = Staging::open(&url, &table).await.expect("open");
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP TABLE {table}; DROP TABLE {table}_checked"
        )))
        .execute(&staging.pool)
        .await
        .expect("drop the test tables");
    }

    /// A restarted stream's checks resume from the recorded mark, or, without one, from what
    /// was committed well before the newest commit.
    #[tokio::test]
    async fn checks_resume_from_the_recorded_mark_else_from_old_enough_commits() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("staging.db").display());
        let staging = Staging::open(&url, "raw_trades").await.expect("open");
        assert_eq!(
            staging
                .recheck_from("kucoin", "BTCUSDT", 10_000)
                .await
                .expect("read"),
            None
        );
        // Ids 3, 6, 9 committed at 0 ms; 12, 15 at 30,000 ms.
        let early: Vec<StagedTrade> = [3, 6, 9].map(|id| trade(id, "1.5", id)).to_vec();
        let late: Vec<StagedTrade> = [12, 15].map(|id| trade(id, "1.5", id)).to_vec();
        staging.insert("kucoin", &early, 0).await.expect("insert");
        staging
            .insert("kucoin", &late, 30_000)
            .await
            .expect("insert");
        assert_eq!(
            staging
                .recheck_from("kucoin", "BTCUSDT", 10_000)
                .await
                .expect("read"),
            Some((9, vec![12, 15])),
            "without a mark: the last id committed 10 s before the newest commit"
        );
        staging
            .set_checked_through("kucoin", "BTCUSDT", 12)
            .await
            .expect("record");
        assert_eq!(
            staging
                .recheck_from("kucoin", "BTCUSDT", 10_000)
                .await
                .expect("read"),
            Some((12, vec![15]))
        );
    }

    /// A table made when `quote_qty` was `NUMERIC(38, 8)` is widened on open, each value
    /// recomputed from its price and quantity.
    #[tokio::test]
    async fn postgres_quote_qty_of_an_older_table_is_widened_and_recomputed() {
        let Some(url) = crate::database::test_postgres_url() else {
            return;
        };
        let table = format!("staging_old_{}", std::process::id());
        let pool = database::connect(&url, Backend::Postgres, 1)
            .await
            .expect("connect");
        let ddl = format!(
            "DROP TABLE IF EXISTS {table};
             CREATE TABLE {table} (exchange TEXT NOT NULL, symbol TEXT NOT NULL,
                 trade_id BIGINT NOT NULL, price NUMERIC(38, 8) NOT NULL,
                 qty NUMERIC(38, 8) NOT NULL, quote_qty NUMERIC(38, 8) NOT NULL,
                 trade_time BIGINT NOT NULL, is_buyer_maker BOOLEAN NOT NULL,
                 ingested_at BIGINT NOT NULL, PRIMARY KEY (exchange, symbol, trade_id));
             INSERT INTO {table} VALUES
                 ('binance', 'ETHBTC', 1, 0.03456, 0.1234, 0.00426470, 5, false, 5)"
        );
        sqlx::raw_sql(AssertSqlSafe(ddl))
            .execute(&pool)
            .await
            .expect("an old table");
        Staging::open(&url, &table).await.expect("open");
        let quote: String = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT quote_qty::text FROM {table}"
        )))
        .fetch_one(&pool)
        .await
        .expect("read");
        assert_eq!(quote, "0.0042647040000000");
        sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE {table}")))
            .execute(&pool)
            .await
            .expect("drop the test table");
    }

    async fn batches_are_idempotent_and_read_back_exactly(url: &str, table: &str) {
        let staging = Staging::open(url, table).await.expect("open");
        let batch = vec![
            trade(10, "97250.01", 1_000),
            trade(11, "97250.02", 2_000),
            trade(12, "0.00000001", 86_400_000),
        ];
        assert_eq!(
            staging.insert("binance", &batch, 5).await.expect("insert"),
            3
        );
        // A replayed batch overlapping the first writes only what is new.
        let overlap = vec![
            trade(12, "0.00000001", 86_400_000),
            trade(13, "1", 86_400_001),
        ];
        assert_eq!(
            staging
                .insert("binance", &overlap, 6)
                .await
                .expect("insert"),
            1
        );
        assert_eq!(
            staging
                .last_id("binance", "BTCUSDT")
                .await
                .expect("last id"),
            Some(13)
        );
        assert_eq!(
            staging
                .last_id("binance", "ETHUSDT")
                .await
                .expect("last id"),
            None
        );
        let day = staging
            .trades_between("binance", 0, 86_400_000)
            .await
            .expect("read");
        let units = |t: &StagedTrade| {
            (
                t.trade.price.units(),
                t.trade.qty.units(),
                t.trade.quote_qty.units(),
            )
        };
        assert_eq!(day.symbols, ["BTCUSDT"]);
        assert_eq!(day.symbol, [0, 0]);
        assert_eq!(day.trade_id, [10, 11], "the first day only, in time order");
        assert_eq!(
            (0..2)
                .map(|i| (day.price[i], day.qty[i], day.quote_qty[i]))
                .collect::<Vec<_>>(),
            batch[..2].iter().map(units).collect::<Vec<_>>(),
            "exact"
        );
        assert_eq!(day.trade_time, [1_000, 2_000]);
        assert_eq!(day.is_buyer_maker, [true, false]);
        assert_eq!(day.counts(), [("BTCUSDT", 2)]);
        assert!(matches!(
            Staging::open(url, "Raw-Trades").await,
            Err(StagingError::BadTableName(_))
        ));
    }
}
