//! Reads shaped for pages and scrapes: each answers a whole screen in one or two indexed
//! queries, whatever the number of DAGs, never one query per DAG.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::rows::{
    Columns, Snapshot, attempt_columns, attempt_from_row, count, fetch_typed, listed_run, map_of,
    parse_time, run_from_row, task_state,
};
use super::timestamp::serde_format;
use super::write::{Param, Sql, params};
use super::{
    AttemptRecord, Backend, Listed, Result, RunRecord, RunState, RunType, Store, StoreError,
    TaskState, timestamp,
};

/// The columns of `dag_runs` a listing reads, as a literal for `concat!`: all but the DAG
/// file's text and path.
macro_rules! listed_columns {
    () => {
        "run_id, dag_id, run_type, logical_date, data_interval_start, data_interval_end, conf,
         state, queued_at, started_at, ended_at, note, owner, NULL AS dag_source,
         NULL AS dag_path, cancel_requested"
    };
}

/// A run as a square in a list: enough to colour it and link to it.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub state: RunState,
    pub run_type: RunType,
    #[serde(serialize_with = "serde_format::required")]
    pub logical_date: DateTime<Utc>,
}

/// Which runs a listing shows.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub dag_id: Option<String>,
    pub state: Option<RunState>,
    pub run_type: Option<RunType>,
    /// Logical dates from (inclusive) ...
    pub since: Option<DateTime<Utc>>,
    /// ... to (exclusive).
    pub until: Option<DateTime<Utc>>,
}

/// Where a page of runs ends: the next page starts after this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCursor {
    pub queued_at: String,
    pub run_id: String,
}

/// A task of one run, for a grid cell.
#[derive(Debug, Clone, Serialize)]
pub struct TaskCell {
    #[serde(skip)]
    pub run_id: String,
    #[serde(skip)]
    pub task_id: String,
    pub state: TaskState,
    pub try_number: u32,
}

/// A run with its tasks and every attempt: `orch runs show --json` and the API's run.
#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunRecord,
    pub tasks: Vec<TaskDetail>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskDetail {
    pub task_id: String,
    pub state: TaskState,
    /// For an instance of a mapped task: its index and item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map_index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<serde_json::Value>,
    pub attempts: Vec<AttemptRecord>,
}

/// A backfill started through the API, and how far it got.
#[derive(Debug, Clone, Serialize)]
pub struct BackfillRecord {
    pub backfill_id: String,
    pub dag_id: String,
    pub start_date: String,
    pub end_date: String,
    #[serde(serialize_with = "serde_format::required")]
    pub first_logical_date: DateTime<Utc>,
    #[serde(serialize_with = "serde_format::required")]
    pub last_logical_date: DateTime<Utc>,
    pub runs: i64,
    #[serde(serialize_with = "serde_format::required")]
    pub created_at: DateTime<Utc>,
    pub actor: String,
}

impl Store {
    /// The newest `per_dag` runs of each of `dag_ids`, newest first.
    pub async fn recent_runs(
        &self,
        dag_ids: &[&str],
        per_dag: u32,
    ) -> Result<HashMap<String, Vec<RunSummary>>> {
        let ids = serde_json::to_string(dag_ids).unwrap_or_else(|_| "[]".to_string());
        // One index range per DAG, read inside one statement.
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT r.dag_id, r.run_id, r.state, r.run_type, r.logical_date FROM json_each($1) d
                 JOIN dag_runs r ON r.run_id IN (
                     SELECT x.run_id FROM dag_runs x WHERE x.dag_id = d.value
                     ORDER BY x.queued_at DESC, x.run_id DESC LIMIT $2)
                 ORDER BY r.dag_id, r.queued_at DESC, r.run_id DESC"
            }
            Backend::Postgres => {
                "SELECT r.dag_id, r.run_id, r.state, r.run_type, r.logical_date
                 FROM json_array_elements_text(CAST($1 AS json)) AS d(value)
                 CROSS JOIN LATERAL (
                     SELECT x.dag_id, x.run_id, x.state, x.run_type, x.logical_date, x.queued_at
                     FROM dag_runs x WHERE x.dag_id = d.value
                     ORDER BY x.queued_at DESC, x.run_id DESC LIMIT $2) r
                 ORDER BY r.dag_id, r.queued_at DESC, r.run_id DESC"
            }
        };
        let rows = fetch_typed(
            &self.reads,
            &sql.into(),
            params![ids, i64::from(per_dag)],
            |row| -> Result<_> { Ok((row.text("dag_id")?, run_summary(row))) },
        )
        .await?;
        let mut by_dag: HashMap<String, Vec<RunSummary>> = HashMap::new();
        for row in rows {
            let (dag_id, summary) = row?;
            // A row that does not read is left out of a list of squares; `runs list` names it.
            if let Ok(summary) = summary {
                by_dag.entry(dag_id).or_default().push(summary);
            }
        }
        Ok(by_dag)
    }

    /// A page of runs matching `filter`, newest first, after `cursor`, without the DAG text
    /// each run keeps (a listing shows none, and it is most of a row's bytes).
    pub async fn runs_page(
        &self,
        filter: &RunFilter,
        cursor: Option<&RunCursor>,
        limit: u32,
    ) -> Result<Listed<RunRecord>> {
        // Only the filters given become conditions, so each query can use an index (a DAG's
        // runs: `dag_runs_by_dag`) instead of scanning the history for `$1 IS NULL OR ...`.
        let mut conditions: Vec<String> = Vec::new();
        let mut values: Vec<String> = Vec::new();
        let mut condition = |sql: &str, value: String| {
            values.push(value);
            conditions.push(sql.replace('?', &format!("${}", values.len())));
        };
        if let Some(dag_id) = &filter.dag_id {
            condition("dag_id = ?", dag_id.clone());
        }
        if let Some(state) = filter.state {
            condition("state = ?", state.as_str().to_string());
        }
        if let Some(run_type) = filter.run_type {
            condition("run_type = ?", run_type.as_str().to_string());
        }
        if let Some(since) = filter.since {
            condition("logical_date >= ?", timestamp::format(since));
        }
        if let Some(until) = filter.until {
            condition("logical_date < ?", timestamp::format(until));
        }
        if let Some(cursor) = cursor {
            values.push(cursor.queued_at.clone());
            values.push(cursor.run_id.clone());
            let (q, r) = (values.len() - 1, values.len());
            conditions.push(format!(
                "(queued_at < ${q} OR (queued_at = ${q} AND run_id < ${r}))"
            ));
        }
        let filter_sql = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT {} FROM dag_runs {filter_sql} ORDER BY queued_at DESC, run_id DESC LIMIT ${}",
            listed_columns!(),
            values.len() + 1
        );
        let mut params: Vec<Param> = values.into_iter().map(Param::from).collect();
        params.push(Param::from(i64::from(limit)));
        // Audited: `sql` is made of fixed conditions and `$N` placeholders; every value is bound.
        let read = fetch_typed(&self.reads, &Sql::audited(sql), params, |row| {
            listed_run(row)
        })
        .await?;
        let mut listed = Listed {
            rows: Vec::new(),
            unreadable: Vec::new(),
        };
        for run in read {
            match run {
                Ok(run) => listed.rows.push(run),
                Err(bad) => listed.unreadable.push(bad),
            }
        }
        Ok(listed)
    }

    /// The task instances of `run_ids`, for a grid.
    pub async fn task_cells(&self, run_ids: &[String]) -> Result<Vec<TaskCell>> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (1..=run_ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT run_id, task_id, state, try_number FROM task_instances WHERE run_id IN ({})",
            placeholders.join(", ")
        );
        let params = run_ids.iter().map(Param::from).collect();
        // Audited: `sql` varies only in its count of `$N` placeholders.
        fetch_typed(&self.reads, &Sql::audited(sql), params, |row| {
            Ok(TaskCell {
                run_id: row.text("run_id")?,
                task_id: row.text("task_id")?,
                state: task_state(row)?,
                try_number: count(row, "task_instances.try_number", "try_number")?,
            })
        })
        .await?
        .into_iter()
        .collect()
    }

    /// The state of `task_id` in the run of `dag_id` just before `logical_date` (scheduled
    /// or backfill runs): `None` when there is no earlier run, `Some(None)` when that run has
    /// no such task.
    pub async fn previous_task_state(
        &self,
        dag_id: &str,
        logical_date: DateTime<Utc>,
        task_id: &str,
    ) -> Result<Option<Option<TaskState>>> {
        let row = sqlx::query(
            "SELECT r.run_id, t.state FROM dag_runs r
             LEFT JOIN task_instances t ON t.run_id = r.run_id AND t.task_id = $3
             WHERE r.dag_id = $1 AND r.logical_date < $2 AND r.run_type <> 'manual'
             ORDER BY r.logical_date DESC LIMIT 1",
        )
        .bind(dag_id)
        .bind(timestamp::format(logical_date))
        .bind(task_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let state: Option<String> = row.try_get("state")?;
        Ok(Some(state.and_then(|s| TaskState::parse(&s))))
    }

    /// A run with its tasks and their attempts; `None` when there is no such run.
    pub async fn run_detail(&self, run_id: &str) -> Result<Option<RunDetail>> {
        // Three reads, each of only the columns shown.
        let run_sql: Sql = concat!(
            "SELECT ",
            listed_columns!(),
            " FROM dag_runs WHERE run_id = $1"
        )
        .into();
        let attempts_sql: Sql = concat!(
            "SELECT ",
            attempt_columns!(),
            " FROM task_attempts WHERE run_id = $1 ORDER BY started_at, attempt"
        )
        .into();
        let tasks_sql: Sql = "SELECT task_id, state, map_index, map_item FROM task_instances
             WHERE run_id = $1 ORDER BY position, COALESCE(map_index, -1)"
            .into();
        // One snapshot: read apart, the run could show its end and its tasks not yet theirs.
        let mut snapshot = Snapshot::begin(&self.reads).await?;
        let run = snapshot
            .fetch(&run_sql, params![run_id], |row| run_from_row(row))
            .await?;
        let tasks = snapshot
            .fetch(&tasks_sql, params![run_id], |row| {
                let (map_index, item) = map_of(row)?;
                Ok(TaskDetail {
                    task_id: row.text("task_id")?,
                    state: task_state(row)?,
                    map_index,
                    item,
                    attempts: Vec::new(),
                })
            })
            .await?;
        let attempts = snapshot
            .fetch(&attempts_sql, params![run_id], |row| attempt_from_row(row))
            .await?;
        snapshot.end().await?;
        let Some(run) = run.into_iter().next().transpose()? else {
            return Ok(None);
        };
        let mut attempts = attempts
            .into_iter()
            .collect::<Result<Vec<AttemptRecord>>>()?;
        let mut tasks = tasks.into_iter().collect::<Result<Vec<TaskDetail>>>()?;
        for task in &mut tasks {
            let (mine, others) = attempts
                .into_iter()
                .partition(|a| a.task_id == task.task_id);
            task.attempts = mine;
            attempts = others;
        }
        Ok(Some(RunDetail { run, tasks }))
    }

    /// How many runs are queued and running, by DAG: (dag, state, count).
    pub async fn active_run_counts(&self) -> Result<Vec<(String, RunState, i64)>> {
        let rows = sqlx::query(
            "SELECT dag_id, state, COUNT(*) AS n FROM dag_runs
             WHERE state IN ('queued', 'running') GROUP BY dag_id, state",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .filter_map(|row| {
                let state: String = row.try_get("state").ok()?;
                Some(Ok((
                    row.try_get("dag_id").ok()?,
                    RunState::parse(&state)?,
                    row.try_get("n").ok()?,
                )))
            })
            .collect()
    }

    /// Attempts waiting in each queue for a worker to claim them.
    pub async fn queue_depths(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT queue, COUNT(*) AS n FROM task_attempts
             WHERE state = 'running' AND queue IS NOT NULL AND worker IS NULL AND report IS NULL
             GROUP BY queue",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("queue")?, row.try_get("n")?)))
            .collect()
    }

    /// Whether the database answers, on a connection of its own: a health check must not
    /// queue behind a busy server's reads to find out.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.health).await?;
        Ok(())
    }

    pub async fn insert_backfill(&self, backfill: &BackfillRecord) -> Result<()> {
        let values = params![
            &backfill.backfill_id,
            &backfill.dag_id,
            &backfill.start_date,
            &backfill.end_date,
            timestamp::format(backfill.first_logical_date),
            timestamp::format(backfill.last_logical_date),
            backfill.runs,
            timestamp::format(backfill.created_at),
            &backfill.actor,
        ];
        self.write(Box::new(move |tx| {
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO backfills (backfill_id, dag_id, start_date, end_date, first_logical_date,
                         last_logical_date, runs, created_at, actor)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    values,
                )
                .await?;
                Ok(())
            })
        }))
        .await
    }

    /// Backfills, newest first; one when `id` is given.
    pub async fn backfills(&self, id: Option<&str>) -> Result<Vec<BackfillRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM backfills WHERE (CAST($1 AS TEXT) IS NULL OR backfill_id = $1)
             ORDER BY created_at DESC LIMIT 100",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let time = |col: &'static str| -> Result<DateTime<Utc>> {
                    parse_time(col, &row.try_get::<String, _>(col)?)
                };
                Ok(BackfillRecord {
                    backfill_id: row.try_get("backfill_id")?,
                    dag_id: row.try_get("dag_id")?,
                    start_date: row.try_get("start_date")?,
                    end_date: row.try_get("end_date")?,
                    first_logical_date: time("first_logical_date")?,
                    last_logical_date: time("last_logical_date")?,
                    runs: row.try_get("runs")?,
                    created_at: time("created_at")?,
                    actor: row.try_get("actor")?,
                })
            })
            .collect()
    }

    /// The backfill runs of `dag_id` with logical dates in `first..=last`, counted by state.
    pub async fn backfill_progress(
        &self,
        dag_id: &str,
        first: DateTime<Utc>,
        last: DateTime<Utc>,
    ) -> Result<HashMap<String, i64>> {
        let rows = sqlx::query(
            "SELECT state, COUNT(*) AS n FROM dag_runs
             WHERE dag_id = $1 AND run_type = 'backfill' AND logical_date >= $2 AND logical_date <= $3
             GROUP BY state",
        )
        .bind(dag_id)
        .bind(timestamp::format(first))
        .bind(timestamp::format(last))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("state")?, row.try_get("n")?)))
            .collect()
    }
}

fn run_summary(row: &dyn Columns) -> Result<RunSummary> {
    let state = row.text("state")?;
    let run_type = row.text("run_type")?;
    Ok(RunSummary {
        run_id: row.text("run_id")?,
        state: RunState::parse(&state).ok_or(StoreError::Corrupt {
            what: "dag_runs.state",
            value: state.clone(),
        })?,
        run_type: RunType::parse(&run_type).ok_or(StoreError::Corrupt {
            what: "dag_runs.run_type",
            value: run_type.clone(),
        })?,
        logical_date: parse_time("dag_runs.logical_date", &row.text("logical_date")?)?,
    })
}
