//! Gap bookkeeping: the newest id staged per symbol, and the mark up to which a symbol's ids
//! were checked whole, from which the next check resumes.

use sqlx::AssertSqlSafe;

use super::{Staging, StagingError};

impl Staging {
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
    pub(super) async fn committed_before_newest(
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
}
