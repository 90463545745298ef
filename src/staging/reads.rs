//! Reading staged trades back, exactly: after an id, around a gap, or over a time range, as
//! rows or as [`TradeColumns`](super::TradeColumns).

use sqlx::{AssertSqlSafe, Row};

use super::{Staging, StagingError, TradeColumns};
use crate::database::Backend;
use crate::decimal::Decimal;
use crate::exchange::Trade;
use crate::redact;

impl Staging {
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
    pub(super) async fn collect_columns(
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
