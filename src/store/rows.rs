//! Rows into records, one decoder per record whatever the driver: the `Any` pool most reads
//! use, and the typed pools of the hot pages ([`TypedPool`]), which skip `Any`'s conversion
//! of every value into an owned copy and read only the columns a page shows.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::Row as _;

use super::write::{Param, Sql};
use super::{
    AttemptRecord, AttemptState, Listed, Result, RunRecord, RunState, RunType, StoreError,
    TaskInstanceRecord, TaskState, Unreadable, timestamp,
};
use crate::database::TypedPool;

/// A row of any driver, read by column name.
pub(crate) trait Columns {
    fn text(&self, column: &str) -> Result<String>;
    fn opt_text(&self, column: &str) -> Result<Option<String>>;
    fn int(&self, column: &str) -> Result<i64>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>>;
}

macro_rules! columns_of {
    ($row:ty) => {
        impl Columns for $row {
            fn text(&self, column: &str) -> Result<String> {
                Ok(self.try_get(column)?)
            }
            fn opt_text(&self, column: &str) -> Result<Option<String>> {
                Ok(self.try_get(column)?)
            }
            fn int(&self, column: &str) -> Result<i64> {
                Ok(self.try_get(column)?)
            }
            fn opt_int(&self, column: &str) -> Result<Option<i64>> {
                Ok(self.try_get(column)?)
            }
        }
    };
}

columns_of!(sqlx::any::AnyRow);
columns_of!(sqlx::sqlite::SqliteRow);

/// PostgreSQL's typed rows tell `INTEGER` from `BIGINT`; the history has both.
impl Columns for sqlx::postgres::PgRow {
    fn text(&self, column: &str) -> Result<String> {
        Ok(self.try_get(column)?)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>> {
        Ok(self.try_get(column)?)
    }
    fn int(&self, column: &str) -> Result<i64> {
        match self.try_get::<i64, _>(column) {
            Ok(value) => Ok(value),
            Err(_) => Ok(i64::from(self.try_get::<i32, _>(column)?)),
        }
    }
    fn opt_int(&self, column: &str) -> Result<Option<i64>> {
        match self.try_get::<Option<i64>, _>(column) {
            Ok(value) => Ok(value),
            Err(_) => Ok(self.try_get::<Option<i32>, _>(column)?.map(i64::from)),
        }
    }
}

/// A query on a typed driver: `sql` with `params` bound.
macro_rules! typed_query {
    ($sql:expr, $params:expr) => {{
        // Audited: `Sql` holds only fixed text or text its builder vouched for.
        let mut query = sqlx::query(sqlx::AssertSqlSafe($sql.as_str()));
        for param in $params {
            query = match param {
                Param::Int(value) => query.bind(value),
                Param::Text(value) => query.bind(value),
            };
        }
        query
    }};
}

/// Runs `sql` with `params` on a typed pool and decodes each row with `decode`.
pub(crate) async fn fetch_typed<T>(
    pool: &TypedPool,
    sql: &Sql,
    params: Vec<Param>,
    decode: impl Fn(&dyn Columns) -> T,
) -> Result<Vec<T>> {
    Ok(match pool {
        TypedPool::Sqlite(pool) => typed_query!(sql, params)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| decode(row))
            .collect(),
        TypedPool::Postgres(pool) => typed_query!(sql, params)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| decode(row))
            .collect(),
    })
}

/// Reads that all see the database as of one moment, for a record read in several queries:
/// a run and its tasks read apart, while its end commits, show a run ended whose task is
/// still running.
pub(crate) enum Snapshot {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl Snapshot {
    /// A read transaction: on SQLite its first read fixes what the others see (WAL); on
    /// PostgreSQL `REPEATABLE READ` does, where the default gives each statement its own.
    pub(crate) async fn begin(pool: &TypedPool) -> Result<Snapshot> {
        Ok(match pool {
            TypedPool::Sqlite(pool) => Snapshot::Sqlite(pool.begin().await?),
            TypedPool::Postgres(pool) => Snapshot::Postgres(
                pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?,
            ),
        })
    }

    /// Runs `sql` with `params` in the snapshot and decodes each row with `decode`.
    pub(crate) async fn fetch<T>(
        &mut self,
        sql: &Sql,
        params: Vec<Param>,
        decode: impl Fn(&dyn Columns) -> T,
    ) -> Result<Vec<T>> {
        Ok(match self {
            Snapshot::Sqlite(tx) => typed_query!(sql, params)
                .fetch_all(&mut **tx)
                .await?
                .iter()
                .map(|row| decode(row))
                .collect(),
            Snapshot::Postgres(tx) => typed_query!(sql, params)
                .fetch_all(&mut **tx)
                .await?
                .iter()
                .map(|row| decode(row))
                .collect(),
        })
    }

    /// Ends the read transaction, handing its connection back clean.
    pub(crate) async fn end(self) -> Result<()> {
        match self {
            Snapshot::Sqlite(tx) => tx.rollback().await?,
            Snapshot::Postgres(tx) => tx.rollback().await?,
        }
        Ok(())
    }
}

pub(super) fn parse_time(what: &'static str, s: &str) -> Result<DateTime<Utc>> {
    timestamp::parse(s).map_err(|_| StoreError::Corrupt {
        what,
        value: s.to_string(),
    })
}

/// A small non-negative integer column (attempt numbers, indexes).
pub(super) fn count<R: Columns + ?Sized>(row: &R, what: &'static str, column: &str) -> Result<u32> {
    let value = row.int(column)?;
    u32::try_from(value).map_err(|_| StoreError::Corrupt {
        what,
        value: value.to_string(),
    })
}

fn state_of<T>(what: &'static str, text: String, parse: impl Fn(&str) -> Option<T>) -> Result<T> {
    parse(&text).ok_or(StoreError::Corrupt { what, value: text })
}

/// Runs from rows, setting aside the ones that do not read.
pub(super) fn listed_runs<R: Columns>(rows: &[R]) -> Listed<RunRecord> {
    let mut listed = Listed {
        rows: Vec::new(),
        unreadable: Vec::new(),
    };
    for row in rows {
        match listed_run(row) {
            Ok(run) => listed.rows.push(run),
            Err(bad) => listed.unreadable.push(bad),
        }
    }
    listed
}

/// A run of a listing, or the key of a row that does not read.
pub(super) fn listed_run<R: Columns + ?Sized>(
    row: &R,
) -> std::result::Result<RunRecord, Unreadable> {
    run_from_row(row).map_err(|error| Unreadable {
        id: row.text("run_id").unwrap_or_else(|_| "?".to_string()),
        error,
    })
}

pub(super) fn run_from_row<R: Columns + ?Sized>(row: &R) -> Result<RunRecord> {
    let time = |col: &'static str| -> Result<DateTime<Utc>> { parse_time(col, &row.text(col)?) };
    let optional_time = |col: &'static str| -> Result<Option<DateTime<Utc>>> {
        row.opt_text(col)?.map(|s| parse_time(col, &s)).transpose()
    };
    let conf = row.text("conf")?;
    let conf: Map<String, Value> =
        serde_json::from_str(&conf).map_err(|_| StoreError::Corrupt {
            what: "dag_runs.conf",
            value: conf.clone(),
        })?;
    Ok(RunRecord {
        run_id: row.text("run_id")?,
        dag_id: row.text("dag_id")?,
        state: state_of("dag_runs.state", row.text("state")?, RunState::parse)?,
        run_type: state_of("dag_runs.run_type", row.text("run_type")?, RunType::parse)?,
        logical_date: time("logical_date")?,
        data_interval_start: time("data_interval_start")?,
        data_interval_end: time("data_interval_end")?,
        conf,
        queued_at: time("queued_at")?,
        started_at: optional_time("started_at")?,
        ended_at: optional_time("ended_at")?,
        note: row.opt_text("note")?,
        owner: row.opt_text("owner")?,
        dag_source: row.opt_text("dag_source")?,
        dag_path: row.opt_text("dag_path")?,
        cancel_requested: row.opt_text("cancel_requested")?,
    })
}

/// The columns of `task_attempts` an [`AttemptRecord`] reads, as a literal for `concat!`:
/// not the spec, report or log tail a worker and an alert read, most of a row's bytes.
macro_rules! attempt_columns {
    () => {
        "task_id, attempt, state, started_at, ended_at, duration_ms, rows, metrics, error,
         log_path, peak_rss_bytes, cpu_ms, outputs, queue, worker"
    };
}
pub(super) use attempt_columns;

pub(super) fn attempt_from_row<R: Columns + ?Sized>(row: &R) -> Result<AttemptRecord> {
    let json = |column: &str| -> Result<Option<Value>> {
        Ok(row
            .opt_text(column)?
            .and_then(|text| serde_json::from_str(&text).ok()))
    };
    Ok(AttemptRecord {
        task_id: row.text("task_id")?,
        attempt: count(row, "task_attempts.attempt", "attempt")?,
        state: state_of(
            "task_attempts.state",
            row.text("state")?,
            AttemptState::parse,
        )?,
        started_at: parse_time("task_attempts.started_at", &row.text("started_at")?)?,
        ended_at: row
            .opt_text("ended_at")?
            .map(|s| parse_time("task_attempts.ended_at", &s))
            .transpose()?,
        duration_ms: row.opt_int("duration_ms")?,
        rows: row.opt_int("rows")?,
        metrics: json("metrics")?,
        error: row.opt_text("error")?,
        log_path: row.text("log_path")?,
        peak_rss_bytes: row.opt_int("peak_rss_bytes")?,
        cpu_ms: row.opt_int("cpu_ms")?,
        outputs: json("outputs")?,
        queue: row.opt_text("queue")?,
        worker: row.opt_text("worker")?,
    })
}

pub(super) fn task_state<R: Columns + ?Sized>(row: &R) -> Result<TaskState> {
    state_of("task_instances.state", row.text("state")?, TaskState::parse)
}

/// A mapped instance's index and item; `None`s for a task that is not one.
pub(super) fn map_of<R: Columns + ?Sized>(row: &R) -> Result<(Option<u32>, Option<Value>)> {
    let index = row
        .opt_int("map_index")?
        .map(|i| {
            u32::try_from(i).map_err(|_| StoreError::Corrupt {
                what: "task_instances.map_index",
                value: i.to_string(),
            })
        })
        .transpose()?;
    let item = row
        .opt_text("map_item")?
        .map(|text| {
            serde_json::from_str(&text).map_err(|_| StoreError::Corrupt {
                what: "task_instances.map_item",
                value: text,
            })
        })
        .transpose()?;
    Ok((index, item))
}

pub(super) fn task_instance_from_row<R: Columns + ?Sized>(row: &R) -> Result<TaskInstanceRecord> {
    let (map_index, map_item) = map_of(row)?;
    Ok(TaskInstanceRecord {
        task_id: row.text("task_id")?,
        state: task_state(row)?,
        try_number: count(row, "task_instances.try_number", "try_number")?,
        attempt_base: count(row, "task_instances.attempt_base", "attempt_base")?,
        next_retry_at: row
            .opt_text("next_retry_at")?
            .map(|s| parse_time("task_instances.next_retry_at", &s))
            .transpose()?,
        map_index,
        map_item,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewRun, RunChange, Store};

    /// What a run's page reads in several queries agrees with itself while the run ends:
    /// a write committed between two reads of a snapshot is seen by neither.
    #[tokio::test]
    async fn a_snapshot_does_not_see_a_write_committed_between_its_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("orch.db").display());
        let store = Store::open(&url).await.expect("store");
        let run = NewRun {
            run_id: "r".to_string(),
            dag_id: "d".to_string(),
            run_type: RunType::Manual,
            logical_date: Utc::now(),
            data_interval_start: Utc::now(),
            data_interval_end: Utc::now(),
            conf: Default::default(),
            queued_at: Utc::now(),
        };
        store
            .insert_run(&run, &["work".to_string()])
            .await
            .expect("run");
        let run_state: Sql = "SELECT state FROM dag_runs WHERE run_id = 'r'".into();
        let task_state: Sql = "SELECT state FROM task_instances WHERE run_id = 'r'".into();

        let mut snapshot = Snapshot::begin(&store.reads).await.expect("begin");
        let before = snapshot
            .fetch(&run_state, Vec::new(), |row| row.text("state"))
            .await
            .expect("read");
        store
            .record_run(
                "r",
                vec![
                    RunChange::TaskStates(vec![("work".to_string(), TaskState::Failed)]),
                    RunChange::RunEnded {
                        state: RunState::Failed,
                        note: None,
                    },
                ],
            )
            .await
            .expect("end the run");
        let task = snapshot
            .fetch(&task_state, Vec::new(), |row| row.text("state"))
            .await
            .expect("read");
        snapshot.end().await.expect("end");
        assert_eq!(
            before
                .into_iter()
                .next()
                .transpose()
                .expect("state")
                .as_deref(),
            Some("queued")
        );
        assert_eq!(
            task.into_iter()
                .next()
                .transpose()
                .expect("state")
                .as_deref(),
            Some("scheduled")
        );

        let detail = store.run_detail("r").await.expect("detail").expect("run");
        assert_eq!(detail.run.state, RunState::Failed);
        assert_eq!(detail.tasks[0].state, TaskState::Failed);
    }
}
