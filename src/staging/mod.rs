//! The staging store: raw trades as the live streams receive them, before any transform.
//!
//! `ORCH_STAGING_URL` picks the database: `sqlite://<home>/data/staging.db` (the embedded
//! default) or `postgres://...`. A table such as `raw_trades` holds one row per
//! `(exchange, symbol, trade_id)`, its primary key: ids are per symbol, so keying on the id
//! alone would merge symbols. Inserts are batched and `ON CONFLICT DO NOTHING`, so a replayed
//! batch or a backfill overlapping the stream writes nothing twice. Prices and quantities stay
//! exact: `NUMERIC(38, 8)` in PostgreSQL (`NUMERIC(38, 16)` for `quote_qty`, price × qty),
//! decimal text in SQLite; times are milliseconds since the epoch, UTC.

use sqlx::{AnyPool, AssertSqlSafe, Row};

use crate::database::{self, Backend};
use crate::decimal::{Decimal, Product};
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

    async fn create_table(&self) -> Result<(), StagingError> {
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
    async fn widen_quote_qty(&self) -> Result<(), StagingError> {
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

    /// The highest staged trade id of `symbol`, if any: one probe of the primary key.
    pub async fn last_id(&self, exchange: &str, symbol: &str) -> Result<Option<i64>, StagingError> {
        let sql = format!(
            "SELECT MAX(trade_id) FROM {} WHERE exchange = $1 AND symbol = $2",
            self.table
        );
        sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(exchange)
            .bind(symbol)
            .fetch_one(&self.pool)
            .await
            .map_err(self.sql_error())
    }

    /// Records that `symbol`'s trades up to id `through` are all committed and were checked
    /// against the exchange's REST history (a stream whose socket cannot show a lost frame).
    pub async fn set_checked_through(
        &self,
        exchange: &str,
        symbol: &str,
        through: i64,
    ) -> Result<(), StagingError> {
        let sql = format!(
            "INSERT INTO {}_checked (exchange, symbol, through) VALUES ($1, $2, $3)
             ON CONFLICT (exchange, symbol) DO UPDATE SET through = excluded.through",
            self.table
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(exchange)
            .bind(symbol)
            .bind(through)
            .execute(&self.pool)
            .await
            .map_err(self.sql_error())?;
        Ok(())
    }

    /// Where checking `symbol`'s staged trades against the exchange resumes after a restart,
    /// and the ids staged above it (at most 100,000): the mark the last checks recorded; for a
    /// symbol without one (staged by an older orch), the highest id committed at least
    /// `window_ms` before the newest commit. `None` when nothing is staged.
    pub async fn recheck_from(
        &self,
        exchange: &str,
        symbol: &str,
        window_ms: i64,
    ) -> Result<Option<(i64, Vec<i64>)>, StagingError> {
        let sql = format!(
            "SELECT through FROM {}_checked WHERE exchange = $1 AND symbol = $2",
            self.table
        );
        let recorded: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(exchange)
            .bind(symbol)
            .fetch_optional(&self.pool)
            .await
            .map_err(self.sql_error())?;
        let from = match recorded {
            Some(through) => through,
            None => match self
                .committed_before_newest(exchange, symbol, window_ms)
                .await?
            {
                Some(from) => from,
                None => return Ok(None),
            },
        };
        let sql = format!(
            "SELECT trade_id FROM {} WHERE exchange = $1 AND symbol = $2 AND trade_id > $3
             ORDER BY trade_id LIMIT 100000",
            self.table
        );
        let above: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(exchange)
            .bind(symbol)
            .bind(from)
            .fetch_all(&self.pool)
            .await
            .map_err(self.sql_error())?;
        Ok(Some((from, above)))
    }

    /// The highest id of `symbol` committed at least `window_ms` before its newest commit,
    /// from its newest 10,000 ids read backwards along the primary key (below the oldest of
    /// them when all are recent); `None` when nothing is staged.
    async fn committed_before_newest(
        &self,
        exchange: &str,
        symbol: &str,
        window_ms: i64,
    ) -> Result<Option<i64>, StagingError> {
        let sql = format!(
            "SELECT trade_id, ingested_at FROM {} WHERE exchange = $1 AND symbol = $2
             ORDER BY trade_id DESC LIMIT 10000",
            self.table
        );
        let rows: Vec<(i64, i64)> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(exchange)
            .bind(symbol)
            .fetch_all(&self.pool)
            .await
            .map_err(self.sql_error())?;
        let Some(newest) = rows.iter().map(|(_, at)| *at).max() else {
            return Ok(None);
        };
        Ok(Some(
            match rows.iter().find(|(_, at)| *at < newest - window_ms) {
                Some((id, _)) => *id,
                None => rows.last().map_or(0, |(id, _)| id - 1),
            },
        ))
    }

    /// Up to `limit` of `symbol`'s staged trades with ids above `after`, in id order. The
    /// staging table keeps no `is_best_match`; it comes back true, as every Binance spot
    /// trade streamed is.
    pub async fn trades_after(
        &self,
        exchange: &str,
        symbol: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Trade>, StagingError> {
        let sql = format!(
            "SELECT trade_id, CAST(price AS TEXT), CAST(qty AS TEXT), trade_time,
                 CASE WHEN is_buyer_maker THEN 1 ELSE 0 END
             FROM {} WHERE exchange = $1 AND symbol = $2 AND trade_id > $3
             ORDER BY trade_id LIMIT $4",
            self.table
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(exchange)
            .bind(symbol)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(self.sql_error())?;
        rows.iter()
            .map(|row| {
                let get_text = |i: usize| -> Result<String, StagingError> {
                    row.try_get::<String, _>(i).map_err(self.sql_error())
                };
                let id: i64 = row.try_get(0).map_err(self.sql_error())?;
                let price = parse_decimal(&get_text(1)?, &self.table, "price")?;
                let qty = parse_decimal(&get_text(2)?, &self.table, "qty")?;
                let time_ms: i64 = row.try_get(3).map_err(self.sql_error())?;
                let maker: i64 = row.try_get(4).map_err(self.sql_error())?;
                Trade::new(id, price, qty, time_ms, maker != 0, true).ok_or_else(|| {
                    StagingError::Corrupt {
                        table: self.table.clone(),
                        column: "qty",
                        value: format!("{price} × {qty} out of range (trade {id})"),
                    }
                })
            })
            .collect()
    }

    /// The ids of `symbol`'s last staged trade before the day `[from_ms, to_ms)` and first one
    /// after it: what tells whether the day's trades join up with their neighbours, and whether
    /// the stream has gone past the day yet. With the day's first and last ids known, both are
    /// one probe of the primary key (ids grow with time); without, a walk of the symbol's ids.
    pub async fn neighbours(
        &self,
        exchange: &str,
        symbol: &str,
        day_ids: Option<(i64, i64)>,
        (from_ms, to_ms): (i64, i64),
    ) -> Result<(Option<i64>, Option<i64>), StagingError> {
        let table = &self.table;
        let (before, after) = match day_ids {
            Some(_) => (
                format!(
                    "SELECT MAX(trade_id) FROM {table} WHERE exchange = $1 AND symbol = $2 AND trade_id < $3"
                ),
                format!(
                    "SELECT MIN(trade_id) FROM {table} WHERE exchange = $1 AND symbol = $2 AND trade_id > $3"
                ),
            ),
            None => (
                format!(
                    "SELECT MAX(trade_id) FROM {table} WHERE exchange = $1 AND symbol = $2 AND trade_time < $3"
                ),
                format!(
                    "SELECT MIN(trade_id) FROM {table} WHERE exchange = $1 AND symbol = $2 AND trade_time >= $3"
                ),
            ),
        };
        let (before_bound, after_bound) = day_ids.unwrap_or((from_ms, to_ms));
        let probe = |sql: String, bound: i64| async move {
            sqlx::query_scalar::<_, Option<i64>>(AssertSqlSafe(sql))
                .bind(exchange)
                .bind(symbol)
                .bind(bound)
                .fetch_one(&self.pool)
                .await
                .map_err(self.sql_error())
        };
        Ok((
            probe(before, before_bound).await?,
            probe(after, after_bound).await?,
        ))
    }

    /// The staged trades of `exchange` with `trade_time` in `[from_ms, to_ms)`, in time
    /// order, streamed into columns (a day of a busy exchange is millions of rows).
    ///
    /// It reads through the backend's own driver rather than `Any`, which copies every value
    /// into an owned one first. SQLite is read with rusqlite, in place: sqlx hands each row
    /// across a thread with its values copied, 27 s for a day of 10 million trades. SQLite is
    /// told to walk the time index: without statistics it would pick the primary key and
    /// sort the whole day in a temporary tree.
    pub async fn trades_between(
        &self,
        exchange: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<TradeColumns, StagingError> {
        use sqlx::Connection;
        let table = &self.table;
        let open_err = |source| StagingError::Open {
            url: redact::secrets(&self.url).into_owned(),
            source,
        };
        match self.backend {
            Backend::Sqlite => {
                let path = self
                    .url
                    .strip_prefix("sqlite://")
                    .map(|rest| rest.split('?').next().unwrap_or(rest).to_string())
                    .unwrap_or_default();
                let (table, exchange) = (table.clone(), exchange.to_string());
                tokio::task::spawn_blocking(move || {
                    sqlite_trades_between(&path, &table, &exchange, from_ms, to_ms)
                })
                .await
                .map_err(|e| StagingError::Read {
                    table: self.table.clone(),
                    message: e.to_string(),
                })?
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url)
                    .await
                    .map_err(open_err)?;
                let sql = format!(
                    "SELECT symbol, trade_id, price::text, qty::text, trade_time, is_buyer_maker
                     FROM {table} WHERE exchange = $1 AND trade_time >= $2 AND trade_time < $3
                     ORDER BY trade_time"
                );
                let rows = sqlx::query(AssertSqlSafe(sql))
                    .bind(exchange)
                    .bind(from_ms)
                    .bind(to_ms)
                    .fetch(&mut conn);
                self.collect_columns(rows).await
            }
        }
    }

    /// Turns PostgreSQL rows of (symbol, trade_id, price, qty, trade_time, is_buyer_maker),
    /// decimals as text, into columns.
    async fn collect_columns(
        &self,
        mut rows: impl futures_util::Stream<Item = Result<sqlx::postgres::PgRow, sqlx::Error>> + Unpin,
    ) -> Result<TradeColumns, StagingError> {
        use futures_util::TryStreamExt;
        let mut columns = TradeColumns::default();
        while let Some(row) = rows.try_next().await.map_err(self.sql_error())? {
            let decimal = |i: usize, column: &'static str| -> Result<Decimal, StagingError> {
                let text: &str = row.try_get(i).map_err(self.sql_error())?;
                parse_decimal(text, &self.table, column)
            };
            let symbol: &str = row.try_get(0).map_err(self.sql_error())?;
            let trade_id: i64 = row.try_get(1).map_err(self.sql_error())?;
            columns.push(
                &self.table,
                symbol,
                trade_id,
                decimal(2, "price")?,
                decimal(3, "qty")?,
                row.try_get(4).map_err(self.sql_error())?,
                row.try_get(5).map_err(self.sql_error())?,
            )?;
        }
        Ok(columns)
    }
}

/// The SQLite side of [`Staging::trades_between`]: one read-only connection, one statement
/// walking the time index, values parsed where they lie.
fn sqlite_trades_between(
    path: &str,
    table: &str,
    exchange: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<TradeColumns, StagingError> {
    use rusqlite::OpenFlags;
    let fail = |e: rusqlite::Error| StagingError::Read {
        table: table.to_string(),
        message: e.to_string(),
    };
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(fail)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(fail)?;
    let mut statement = conn
        .prepare(&format!(
            "SELECT symbol, trade_id, price, qty, trade_time, is_buyer_maker
             FROM {table} INDEXED BY {table}_by_time
             WHERE exchange = ?1 AND trade_time >= ?2 AND trade_time < ?3"
        ))
        .map_err(fail)?;
    let mut rows = statement
        .query(rusqlite::params![exchange, from_ms, to_ms])
        .map_err(fail)?;
    let mut columns = TradeColumns::default();
    while let Some(row) = rows.next().map_err(fail)? {
        let text = |i: usize| -> Result<&str, StagingError> {
            row.get_ref(i)
                .and_then(|v| v.as_str().map_err(rusqlite::Error::from))
                .map_err(fail)
        };
        columns.push(
            table,
            text(0)?,
            row.get(1).map_err(fail)?,
            parse_decimal(text(2)?, table, "price")?,
            parse_decimal(text(3)?, table, "qty")?,
            row.get(4).map_err(fail)?,
            row.get(5).map_err(fail)?,
        )?;
    }
    Ok(columns)
}

/// A staged decimal text, or an error naming the table, column and value.
fn parse_decimal(text: &str, table: &str, column: &'static str) -> Result<Decimal, StagingError> {
    text.parse().map_err(|_| StagingError::Corrupt {
        table: table.to_string(),
        column,
        value: text.to_string(),
    })
}

/// One symbol's trades in a [`TradeColumns`]: how many, and the lowest and highest id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdSpan<'a> {
    pub symbol: &'a str,
    pub count: u64,
    pub first: i64,
    pub last: i64,
}

impl IdSpan<'_> {
    /// Ids are consecutive per symbol and unique in staging: the span is whole exactly when it
    /// holds as many trades as ids.
    pub fn is_whole(&self) -> bool {
        i128::from(self.last) - i128::from(self.first) + 1 == i128::from(self.count)
    }
}

/// Staged trades column by column; prices and quantities in units of 10⁻⁸, quote quantities
/// in units of 10⁻¹⁶.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TradeColumns {
    /// The distinct symbols, in order of first appearance; `symbol` indexes into it.
    pub symbols: Vec<String>,
    pub symbol: Vec<u32>,
    pub trade_id: Vec<i64>,
    pub price: Vec<i128>,
    pub qty: Vec<i128>,
    pub quote_qty: Vec<i128>,
    /// Milliseconds since the epoch, UTC.
    pub trade_time: Vec<i64>,
    pub is_buyer_maker: Vec<bool>,
}

impl TradeColumns {
    /// Appends one staged trade. Its quote quantity is computed here by the one exact
    /// multiply, not read back: rows staged before it kept 16 digits held a cut value.
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        table: &str,
        symbol: &str,
        trade_id: i64,
        price: Decimal,
        qty: Decimal,
        trade_time: i64,
        is_buyer_maker: bool,
    ) -> Result<(), StagingError> {
        let quote = price.exact_mul(qty).ok_or_else(|| StagingError::Corrupt {
            table: table.to_string(),
            column: "price × qty",
            value: format!("{price} × {qty} (trade {symbol} {trade_id})"),
        })?;
        self.push_symbol(symbol);
        self.trade_id.push(trade_id);
        self.price.push(price.units());
        self.qty.push(qty.units());
        self.quote_qty.push(quote.units());
        self.trade_time.push(trade_time);
        self.is_buyer_maker.push(is_buyer_maker);
        Ok(())
    }
}

impl TradeColumns {
    pub fn len(&self) -> usize {
        self.trade_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.trade_id.is_empty()
    }

    fn push_symbol(&mut self, symbol: &str) {
        // A day holds a handful of symbols; the last one seen is nearly always the next.
        let code = match self.symbols.iter().rposition(|s| s == symbol) {
            Some(code) => code,
            None => {
                self.symbols.push(symbol.to_string());
                self.symbols.len() - 1
            }
        };
        self.symbol.push(u32::try_from(code).unwrap_or(u32::MAX));
    }

    /// Per symbol, its trade count and lowest and highest id, in order of first appearance.
    pub fn id_spans(&self) -> Vec<IdSpan<'_>> {
        let mut spans: Vec<Option<(u64, i64, i64)>> = vec![None; self.symbols.len()];
        for (&code, &id) in self.symbol.iter().zip(&self.trade_id) {
            if let Some(span) = spans.get_mut(code as usize) {
                *span = Some(match *span {
                    None => (1, id, id),
                    Some((count, low, high)) => (count + 1, low.min(id), high.max(id)),
                });
            }
        }
        self.symbols
            .iter()
            .zip(spans)
            .filter_map(|(symbol, span)| {
                span.map(|(count, first, last)| IdSpan {
                    symbol,
                    count,
                    first,
                    last,
                })
            })
            .collect()
    }

    /// The ids missing between `symbol`'s lowest and highest id, as ranges, at most `limit`.
    pub fn id_gaps(&self, symbol: &str, limit: usize) -> Vec<(i64, i64)> {
        let Some(code) = self.symbols.iter().position(|s| s == symbol) else {
            return Vec::new();
        };
        let mut ids: Vec<i64> = self
            .symbol
            .iter()
            .zip(&self.trade_id)
            .filter(|(c, _)| **c as usize == code)
            .map(|(_, id)| *id)
            .collect();
        ids.sort_unstable();
        ids.windows(2)
            .filter(|w| w[1] > w[0] + 1)
            .map(|w| (w[0] + 1, w[1] - 1))
            .take(limit)
            .collect()
    }

    /// Rows per symbol, for the log.
    pub fn counts(&self) -> Vec<(&str, u64)> {
        let mut counts = vec![0_u64; self.symbols.len()];
        for &code in &self.symbol {
            if let Some(count) = counts.get_mut(code as usize) {
                *count += 1;
            }
        }
        self.symbols
            .iter()
            .map(String::as_str)
            .zip(counts)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
