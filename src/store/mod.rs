//! The metadata database: run history, task attempts, pause flags, task state and the
//! reports of live streams, through sqlx.
//!
//! One [`Store`] speaks SQLite (the embedded default) and PostgreSQL, chosen by the URL's
//! scheme, through sqlx's `Any` driver: the SQL is written once in the dialect both share
//! (`$N` parameters in order of first use, text timestamps, integer flags), and each backend
//! has its own migrations under `migrations/`.
//!
//! Connections are opened by [`crate::database`] (SQLite in WAL mode, so the CLI reads while the
//! server writes), and every multi-statement write opens with `BEGIN IMMEDIATE` on SQLite: a
//! plain `BEGIN` takes the write lock late and fails with "database is locked" when two
//! writers meet.

mod actions;
mod durably;
mod lock;
mod members;
mod model;
mod pruning;
mod queue;
mod rows;
mod run_changes;
pub mod timestamp;
mod views;
pub(crate) mod write;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{AnyPool, Row};

use crate::database::{self, Backend};
use crate::redact;
use rows::{
    attempt_from_row, count, listed_runs, parse_time, run_from_row, task_instance_from_row,
};
use write::params;

pub use actions::{Actor, CANCEL_CHANNEL, Cancelled, ManualAction};
pub use durably::durably;
pub use lock::StoreLock;
pub use members::{LeaseHolder, ProcessRecord};
pub use model::{
    AttemptEnd, AttemptRecord, AttemptState, NewRun, RunRecord, RunState, RunType,
    StreamStateRecord, TaskInstanceRecord, TaskState,
};
pub use pruning::{PrunedRun, RetentionPolicy};
pub use queue::{AttemptKey, Claim, QUEUED_CHANNEL, QueuedAttempt, REPORTED_CHANNEL, WorkerReport};
pub use run_changes::{QueuedAt, RunChange};
pub use views::{
    BackfillRecord, RunCursor, RunDetail, RunFilter, RunSummary, TaskCell, TaskDetail,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the metadata database `{url}`: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("cannot migrate the metadata database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("metadata database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("metadata database: {0}")]
    Sqlite(write::SqliteFailure),
    #[error("metadata database holds an unreadable value in {what}: `{value}`")]
    Corrupt { what: &'static str, value: String },
    #[error(
        "metadata database URL `{0}` is not supported: use sqlite://PATH or postgres://USER@HOST/DB"
    )]
    UnsupportedUrl(String),
    #[error(
        "the metadata database {} was {what} while orch was using it; stopping so that no run is created or executed twice. Put the file back, or start again to begin a new history",
        path.display()
    )]
    FileGone {
        path: std::path::PathBuf,
        what: &'static str,
    },
    #[error(
        "{what} {value} is outside the dates the run history can hold (years 1 to 9999: 0001-01-01 to 9999-12-31)"
    )]
    OutOfRange { what: &'static str, value: String },
    #[error("locks need an SQLite database in a file (or PostgreSQL), not `{0}`")]
    NoLockFile(String),
    /// The task writing runs' changes together stopped (its runtime is shutting down); a
    /// write tried again starts another.
    #[error("metadata database: the writer of runs' changes stopped")]
    WriterGone,
}

impl StoreError {
    /// Whether the SQLite file itself is damaged: nothing will work until it is restored or
    /// moved away, so a server stops at once rather than retry.
    pub fn is_corrupt_file(&self) -> bool {
        match self {
            StoreError::Sql(error) | StoreError::Open { source: error, .. } => {
                database::is_corrupt(error)
            }
            StoreError::Migrate(
                sqlx::migrate::MigrateError::Execute(error)
                | sqlx::migrate::MigrateError::ExecuteMigration(error, _),
            ) => database::is_corrupt(error),
            StoreError::Sqlite(failure) => failure.is_corrupt(),
            _ => false,
        }
    }

    /// Whether the same statement may well succeed if tried again: a busy or locked SQLite
    /// file, a full disk or an I/O error, a lost or refused connection, a PostgreSQL
    /// failover, serialization failure or deadlock. Not bad SQL or a broken row.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::WriterGone => true,
            StoreError::Sql(error) | StoreError::Open { source: error, .. } => {
                database::is_transient(error)
            }
            StoreError::Sqlite(failure) => failure.is_transient(),
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A handle to the metadata database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// Reads. On SQLite, several connections: readers never wait for the writer in WAL mode.
    pool: AnyPool,
    /// Writes: on SQLite a thread of their own, on PostgreSQL the pool (see [`write`]).
    writer: Writer,
    /// One connection, opened when first used, for [`Store::ping`].
    health: AnyPool,
    /// The pages' reads ([`views`]), typed: opened when first used.
    reads: database::TypedPool,
    backend: Backend,
    /// The URL it was opened with, for attempt processes to open it too. Secret: it may hold
    /// a password.
    url: Arc<str>,
    /// The SQLite file opened, to notice it deleted or replaced ([`Store::check_file`]).
    file: Option<OpenedFile>,
    /// On PostgreSQL, the runs' changes written together ([`run_changes::RunBatches`]).
    run_batches: Option<Arc<run_changes::RunBatches>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &redact::secrets(&self.url))
            .finish_non_exhaustive()
    }
}

/// An SQLite file by its device and inode, which a file put in its place does not share.
#[derive(Clone, Debug)]
struct OpenedFile {
    path: std::path::PathBuf,
    device: u64,
    inode: u64,
}

/// Where writes go.
#[derive(Clone)]
enum Writer {
    Sqlite(write::SqliteWriter),
    Pool(AnyPool),
}

/// A run, its task instances and the record of who asked for it, as one PostgreSQL statement
/// (data-modifying `WITH`s): atomic without a transaction, so a trigger is one round trip
/// instead of five. `run` binds `$1` to `$11` as [`Store::insert`] orders them; the statement
/// returns 1 when the run was created, 0 when its id or interval was taken.
fn insert_as_one_statement(
    run: Vec<write::Param>,
    task_state: &str,
    task_ids: &[String],
    action: Option<Vec<write::Param>>,
) -> (write::Sql, Vec<write::Param>) {
    let mut values = run;
    values.push(write::Param::from(task_state));
    let state_at = values.len();
    let tuples: Vec<String> = (0_i64..)
        .zip(task_ids)
        .map(|(position, task_id)| {
            values.push(write::Param::from(task_id));
            values.push(write::Param::from(position));
            format!("(${}, ${})", values.len() - 1, values.len())
        })
        .collect();
    let record = match action {
        Some(action) => {
            // RECORD_ACTION's values but its third, the run id: the run created gives it.
            let placeholders: Vec<String> = action
                .into_iter()
                .enumerate()
                .map(|(i, value)| {
                    if i == 2 {
                        return "run.run_id".to_string();
                    }
                    values.push(value);
                    format!("${}", values.len())
                })
                .collect();
            format!(
                ", action AS (INSERT INTO manual_actions (at, dag_id, run_id, task_id, action, actor, source, detail)
                     SELECT {} FROM run)",
                placeholders.join(", ")
            )
        }
        None => String::new(),
    };
    // Audited: only `$N` placeholders are spliced in.
    let sql = write::Sql::audited(format!(
        "WITH run AS (
             INSERT INTO dag_runs (run_id, dag_id, run_type, logical_date, data_interval_start,
                 data_interval_end, conf, state, queued_at, ended_at, note)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT DO NOTHING RETURNING run_id),
         tasks AS (INSERT INTO task_instances (run_id, task_id, position, state)
             SELECT run.run_id, t.task_id, t.position, ${state_at}
             FROM run CROSS JOIN (VALUES {}) AS t (task_id, position)){record}
         SELECT COUNT(*) FROM run",
        tuples.join(", ")
    ));
    (sql, values)
}

fn backend_of(url: &str) -> Result<Backend> {
    Backend::of_url(url)
        .ok_or_else(|| StoreError::UnsupportedUrl(redact::secrets(url).into_owned()))
}

fn open_error(url: &str, source: sqlx::Error) -> StoreError {
    StoreError::Open {
        url: redact::secrets(url).into_owned(),
        source,
    }
}

impl OpenedFile {
    /// The SQLite file `url` names, as it is now; `None` for PostgreSQL or a missing file.
    fn of_url(url: &str) -> Option<OpenedFile> {
        use std::os::unix::fs::MetadataExt;
        let path = database::sqlite_path(url)?;
        let meta = std::fs::metadata(&path).ok()?;
        Some(OpenedFile {
            device: meta.dev(),
            inode: meta.ino(),
            path,
        })
    }
}

/// Runs one claim statement takes.
const RUNS_PER_CLAIM: usize = 500;

/// Task instances one `INSERT` writes: 2 values each, well within both databases' limits on
/// the values of one statement.
const INSTANCES_PER_INSERT: usize = 500;

/// A queued run a scheduler takes, with the definition it will run.
#[derive(Debug, Clone)]
pub struct RunClaim {
    pub run_id: String,
    pub dag_source: String,
    pub dag_path: String,
}

/// Rows of the run history, and the ones that could not be read, each named: one bad row
/// hides only itself, never the listing or the schedule of every other DAG.
#[derive(Debug)]
pub struct Listed<T> {
    pub rows: Vec<T>,
    pub unreadable: Vec<Unreadable>,
}

/// A row that does not read, by its key.
#[derive(Debug)]
pub struct Unreadable {
    pub id: String,
    pub error: StoreError,
}

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Store {
    /// Opens and migrates the database at `url`: `sqlite://PATH` (created if missing) or
    /// `postgres://...` (the database must exist).
    pub async fn open(url: &str) -> Result<Store> {
        let store = Store::connect_with(url, 4, 8).await?;
        match store.backend {
            Backend::Sqlite => {
                // sqlx locks PostgreSQL migrations itself, not SQLite's: two processes opening
                // a new database at once would both create its tables.
                let _lock = match database::sqlite_path(url) {
                    Some(path) => Some(lock::exclusive_file(&path, "migrations").await?),
                    None => None,
                };
                SQLITE_MIGRATOR.run(&store.pool).await?
            }
            Backend::Postgres => POSTGRES_MIGRATOR.run(&store.pool).await?,
        }
        Ok(store)
    }

    /// The database at `url`, already migrated by the process that runs this one's
    /// attempts: no migration, the few connections one attempt needs, opened on first use
    /// (many kinds never touch it).
    pub fn connect_lazy(url: &str) -> Result<Store> {
        let backend = backend_of(url)?;
        let pool = database::connect_lazy(url, backend, 2).map_err(|e| open_error(url, e))?;
        Store::with_pools(url, backend, pool)
    }

    async fn connect_with(
        url: &str,
        sqlite_connections: u32,
        postgres_connections: u32,
    ) -> Result<Store> {
        let backend = backend_of(url)?;
        let max_connections = match backend {
            Backend::Sqlite => sqlite_connections,
            Backend::Postgres => postgres_connections,
        };
        let pool = database::connect(url, backend, max_connections)
            .await
            .map_err(|e| open_error(url, e))?;
        Store::with_pools(url, backend, pool)
    }

    /// The store over `pool`, with its writer: for SQLite a thread of its own on the file
    /// the pool opened (the pool has created it).
    fn with_pools(url: &str, backend: Backend, pool: AnyPool) -> Result<Store> {
        let writer = match (backend, database::sqlite_path(url)) {
            (Backend::Sqlite, Some(path)) => Writer::Sqlite(write::SqliteWriter::new(path)),
            _ => Writer::Pool(pool.clone()),
        };
        let run_batches = matches!(writer, Writer::Pool(_)).then(|| {
            Arc::new(run_changes::RunBatches::new(
                pool.clone(),
                backend.begin_statement(),
            ))
        });
        let health = database::connect_lazy(url, backend, 1).map_err(|e| open_error(url, e))?;
        let reads =
            database::connect_typed_lazy(url, backend, 4).map_err(|e| open_error(url, e))?;
        Ok(Store {
            pool,
            writer,
            health,
            reads,
            backend,
            url: url.into(),
            file: OpenedFile::of_url(url),
            run_batches,
        })
    }

    /// The URL the database was opened with. It may hold a password: never log it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Fails when the SQLite file this store opened was deleted or replaced: the open
    /// connections would go on with the old file while new ones start a second history.
    pub fn check_file(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let Some(opened) = &self.file else {
            return Ok(());
        };
        let gone = |what| StoreError::FileGone {
            path: opened.path.clone(),
            what,
        };
        match std::fs::metadata(&opened.path) {
            Ok(meta) if meta.dev() == opened.device && meta.ino() == opened.inode => Ok(()),
            Ok(_) => Err(gone("replaced by another file")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(gone("deleted")),
            // Cannot tell (permissions, a flaky mount): the next check will.
            Err(_) => Ok(()),
        }
    }

    /// Runs one statement that changes rows; returns how many. On SQLite within the
    /// writer's next batch; on PostgreSQL as it is, a transaction of its own, with no
    /// `BEGIN` and `COMMIT` to pay for around it.
    async fn write_one(&self, sql: &'static str, params: Vec<write::Param>) -> Result<u64> {
        match &self.writer {
            Writer::Sqlite(_) => {
                self.write(Box::new(move |tx| {
                    Box::pin(async move { tx.execute(sql, params).await })
                }))
                .await
            }
            Writer::Pool(pool) => write::execute_on(pool, &sql.into(), params).await,
        }
    }

    /// The same for a statement that returns rows (`RETURNING`), read with `read`.
    async fn write_one_returning<R: Send + 'static>(
        &self,
        sql: write::Sql,
        params: Vec<write::Param>,
        read: fn(&dyn write::RowRead) -> Result<R>,
    ) -> Result<Vec<R>> {
        match &self.writer {
            Writer::Sqlite(_) => {
                self.write(Box::new(move |tx| {
                    Box::pin(async move { tx.fetch_all(sql, params, read).await })
                }))
                .await
            }
            Writer::Pool(pool) => write::fetch_on(pool, &sql, params, read).await,
        }
    }

    /// Runs `work` as one write transaction (on SQLite, within the writer's next batch).
    async fn write<T: Send + 'static>(&self, work: write::Work<T>) -> Result<T> {
        match &self.writer {
            Writer::Sqlite(writer) => writer.write(work).await,
            Writer::Pool(pool) => {
                let mut tx = pool.begin_with(self.backend.begin_statement()).await?;
                let out = work(&mut write::Tx::Any(&mut tx)).await?;
                tx.commit().await?;
                Ok(out)
            }
        }
    }

    /// Creates a run and its task instances. Returns `false`, creating nothing, when a
    /// scheduled or backfill run for the same DAG and logical date already exists.
    pub async fn insert_run(&self, run: &NewRun, task_ids: &[String]) -> Result<bool> {
        self.insert(run, task_ids, None, None).await
    }

    /// Creates a run someone asked for, and records who did in the same write: `action` (a
    /// trigger) by `actor`. Returns `false`, creating nothing, when the run's id is taken.
    pub async fn insert_run_by(
        &self,
        run: &NewRun,
        task_ids: &[String],
        actor: &Actor,
        action: &str,
    ) -> Result<bool> {
        let record = params![
            timestamp::format(Utc::now()),
            &run.dag_id,
            &run.run_id,
            None::<String>,
            action,
            &actor.name,
            &actor.source,
            None::<String>,
        ];
        self.insert(run, task_ids, None, Some(record)).await
    }

    /// Records a scheduled interval that will not run, as a run in state `skipped` with the
    /// reason, its tasks `skipped` too (so a backfill can run it again later); `false` when a
    /// run of that date exists already.
    pub async fn insert_skipped_run(
        &self,
        run: &NewRun,
        task_ids: &[String],
        note: &str,
    ) -> Result<bool> {
        self.insert(run, task_ids, Some(note), None).await
    }

    /// A new run, `queued`, or `skipped` for the reason `skipped`, with its task instances.
    /// With `action`, the `manual_actions` row that records who asked for it.
    async fn insert(
        &self,
        run: &NewRun,
        task_ids: &[String],
        skipped: Option<&str>,
        action: Option<Vec<write::Param>>,
    ) -> Result<bool> {
        run.check_storable()?;
        let (run_state, task_state, ended_at) = match skipped {
            Some(_) => ("skipped", "skipped", Some(timestamp::format(Utc::now()))),
            None => ("queued", "scheduled", None),
        };
        let values = params![
            &run.run_id,
            &run.dag_id,
            run.run_type.as_str(),
            timestamp::format(run.logical_date),
            timestamp::format(run.data_interval_start),
            timestamp::format(run.data_interval_end),
            Value::Object(run.conf.clone()).to_string(),
            run_state,
            timestamp::format(run.queued_at),
            ended_at,
            skipped,
        ];
        if let Writer::Pool(pool) = &self.writer
            && !task_ids.is_empty()
            && task_ids.len() <= INSTANCES_PER_INSERT
        {
            let (sql, values) = insert_as_one_statement(values, task_state, task_ids, action);
            let inserted = write::fetch_on(pool, &sql, values, |row| row.int(0)).await?;
            return Ok(inserted.into_iter().flatten().next() == Some(1));
        }
        let (run_id, task_ids) = (run.run_id.clone(), task_ids.to_vec());
        self.write(Box::new(move |tx| {
            Box::pin(async move {
                let inserted = tx
                    .execute(
                        "INSERT INTO dag_runs (run_id, dag_id, run_type, logical_date, data_interval_start,
                             data_interval_end, conf, state, queued_at, ended_at, note)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                         ON CONFLICT DO NOTHING",
                        values,
                    )
                    .await?
                    == 1;
                if !inserted {
                    return Ok(false);
                }
                // Many rows a statement: a round trip each would be most of a trigger's cost on
                // PostgreSQL.
                let positions = (0_i64..).zip(task_ids);
                let rows: Vec<(i64, String)> = positions.collect();
                for chunk in rows.chunks(INSTANCES_PER_INSERT) {
                    let mut values = params![&run_id, task_state];
                    let tuples: Vec<String> = chunk
                        .iter()
                        .map(|(position, task_id)| {
                            values.push(write::Param::from(task_id));
                            values.push(write::Param::from(*position));
                            format!("($1, ${}, ${}, $2)", values.len() - 1, values.len())
                        })
                        .collect();
                    // Audited: only `$N` placeholders are spliced in.
                    let sql = write::Sql::audited(format!(
                        "INSERT INTO task_instances (run_id, task_id, position, state) VALUES {}",
                        tuples.join(", ")
                    ));
                    tx.execute(sql, values).await?;
                }
                if let Some(action) = action {
                    tx.execute(actions::RECORD_ACTION, action).await?;
                }
                Ok(true)
            })
        }))
        .await
    }

    /// Takes a queued run for execution by `owner`, recording the DAG definition it runs with.
    /// Returns `false` when another process took it first.
    pub async fn claim_run(
        &self,
        run_id: &str,
        owner: &str,
        dag_source: &str,
        dag_path: &str,
    ) -> Result<bool> {
        let values = params![
            owner,
            timestamp::format(Utc::now()),
            dag_source,
            dag_path,
            run_id
        ];
        self.write(Box::new(move |tx| {
            Box::pin(async move {
                let claimed = tx
                    .execute(
                        "UPDATE dag_runs SET state = 'running', owner = $1, started_at = $2, dag_source = $3, dag_path = $4
                         WHERE run_id = $5 AND state = 'queued'",
                        values,
                    )
                    .await?;
                Ok(claimed == 1)
            })
        }))
        .await
    }

    /// Takes queued runs for execution by `owner`, each with the DAG definition it runs with,
    /// in one write. Returns the ids of those it took (another process may have taken some).
    pub async fn claim_runs(
        &self,
        owner: &str,
        claims: Vec<RunClaim>,
    ) -> Result<std::collections::HashSet<String>> {
        let (owner, now) = (owner.to_string(), timestamp::format(Utc::now()));
        // One statement per definition (a DAG's runs share it), not one per run.
        let mut by_definition: HashMap<(String, String), Vec<String>> = HashMap::new();
        for claim in claims {
            by_definition
                .entry((claim.dag_source, claim.dag_path))
                .or_default()
                .push(claim.run_id);
        }
        self.write(Box::new(move |tx| {
            Box::pin(async move {
                let mut claimed = std::collections::HashSet::new();
                for ((source, path), run_ids) in by_definition {
                    for chunk in run_ids.chunks(RUNS_PER_CLAIM) {
                        let mut values = params![&owner, &now, &source, &path];
                        let placeholders: Vec<String> = chunk
                            .iter()
                            .map(|run_id| {
                                values.push(write::Param::from(run_id));
                                format!("${}", values.len())
                            })
                            .collect();
                        // Audited: only `$N` placeholders are spliced in.
                        let sql = write::Sql::audited(format!(
                            "UPDATE dag_runs SET state = 'running', owner = $1, started_at = $2, dag_source = $3, dag_path = $4
                             WHERE state = 'queued' AND run_id IN ({}) RETURNING run_id",
                            placeholders.join(", ")
                        ));
                        let taken = tx.fetch_all(sql, values, |row| row.text(0)).await?;
                        claimed.extend(taken.into_iter().flatten());
                    }
                }
                Ok(claimed)
            })
        }))
        .await
    }

    /// The oldest `limit` queued runs, oldest first.
    pub async fn queued_runs(&self, limit: u32) -> Result<Listed<RunRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM dag_runs WHERE state = 'queued' ORDER BY queued_at, run_id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(listed_runs(&rows))
    }

    /// Queues a finished run again, every task to run anew with a fresh retry budget (see
    /// [`Store::clear_tasks`]). Returns `false` when the run is not finished.
    pub async fn requeue_run(&self, run_id: &str) -> Result<bool> {
        self.clear_tasks(run_id, None).await
    }

    /// Moves a running run whose owner died to `new_owner`. Returns `false` if someone else
    /// adopted it first.
    pub async fn adopt_run(
        &self,
        run_id: &str,
        dead_owner: Option<&str>,
        new_owner: &str,
    ) -> Result<bool> {
        let values = params![new_owner, run_id, dead_owner];
        self.write(Box::new(move |tx| {
            Box::pin(async move {
                let adopted = tx
                    .execute(
                        "UPDATE dag_runs SET owner = $1 WHERE run_id = $2 AND state = 'running' AND owner IS NOT DISTINCT FROM $3",
                        values,
                    )
                    .await?;
                Ok(adopted == 1)
            })
        }))
        .await
    }

    pub async fn finish_run(&self, run_id: &str, state: RunState) -> Result<()> {
        let values = params![state.as_str(), timestamp::format(Utc::now()), run_id];
        self.write(Box::new(move |tx| {
            Box::pin(async move {
                tx.execute(
                    "UPDATE dag_runs SET state = $1, ended_at = $2 WHERE run_id = $3",
                    values,
                )
                .await?;
                Ok(())
            })
        }))
        .await
    }

    /// Ends a run as failed with a note saying why, when no executor is left to end it (it
    /// died too often, or its DAG file is gone). What it left unfinished ends with it: its
    /// attempts still out fail with the note (their workers see their claims gone and stop
    /// them), the tasks they ran fail, and tasks not started are `upstream_failed`. A failed
    /// run never shows a task running for ever.
    pub async fn fail_run(&self, run_id: &str, note: &str) -> Result<()> {
        let now = timestamp::format(Utc::now());
        let (run_id, note) = (run_id.to_string(), note.to_string());
        self.write(Box::new(move |tx| {
            Box::pin(async move {
                let ended = tx
                    .execute(
                        "UPDATE task_attempts SET state = 'failed', ended_at = $1, error = $2,
                             spec = NULL, report = NULL, claim_token = claim_token + 1
                         WHERE run_id = $3 AND state = 'running'",
                        params![&now, &note, &run_id],
                    )
                    .await?;
                tx.execute(
                    "UPDATE task_instances SET next_retry_at = NULL, state = CASE
                         WHEN state IN ('running', 'queued', 'up_for_retry') THEN 'failed'
                         ELSE 'upstream_failed' END
                     WHERE run_id = $1 AND state IN ('scheduled', 'queued', 'running', 'up_for_retry')",
                    params![&run_id],
                )
                .await?;
                tx.execute(
                    "UPDATE dag_runs SET state = 'failed', ended_at = $1, note = $2 WHERE run_id = $3",
                    params![&now, &note, &run_id],
                )
                .await?;
                if ended > 0 {
                    tx.notify(CANCEL_CHANNEL).await?;
                }
                Ok(())
            })
        }))
        .await
    }

    pub async fn run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let row = sqlx::query("SELECT * FROM dag_runs WHERE run_id = $1")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    /// The newest runs first, optionally of one DAG.
    pub async fn runs(&self, dag_id: Option<&str>, limit: u32) -> Result<Listed<RunRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM dag_runs WHERE (CAST($1 AS TEXT) IS NULL OR dag_id = $1)
             ORDER BY queued_at DESC, run_id DESC LIMIT $2",
        )
        .bind(dag_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(listed_runs(&rows))
    }

    /// The running runs and the process that owns each, in queueing order: a look for
    /// orphans that reads two columns, however many runs a backlog holds.
    pub async fn running_owners(&self) -> Result<Vec<(String, Option<String>)>> {
        let rows = sqlx::query(
            "SELECT run_id, owner FROM dag_runs WHERE state = 'running' ORDER BY queued_at, run_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("run_id")?, row.try_get("owner")?)))
            .collect()
    }

    /// Runs in `state`, oldest first.
    pub async fn runs_in_state(&self, state: RunState) -> Result<Listed<RunRecord>> {
        let rows =
            sqlx::query("SELECT * FROM dag_runs WHERE state = $1 ORDER BY queued_at, run_id")
                .bind(state.as_str())
                .fetch_all(&self.pool)
                .await?;
        Ok(listed_runs(&rows))
    }

    /// The end of the latest scheduled run's data interval, where the next one starts. Rows
    /// whose end is not a timestamp (a corrupt row) are passed over.
    pub async fn last_scheduled_end(&self, dag_id: &str) -> Result<Option<DateTime<Utc>>> {
        let end: Option<String> = sqlx::query_scalar(
            "SELECT MAX(data_interval_end) FROM dag_runs
             WHERE dag_id = $1 AND run_type = 'scheduled'
                 AND data_interval_end LIKE '____-__-__T__:__:__.______Z'",
        )
        .bind(dag_id)
        .fetch_one(&self.pool)
        .await?;
        end.map(|s| parse_time("dag_runs.data_interval_end", &s))
            .transpose()
    }

    /// Whether a backfill or scheduled run of this date already exists, and its state.
    pub async fn run_for_date(
        &self,
        dag_id: &str,
        logical_date: DateTime<Utc>,
    ) -> Result<Option<RunRecord>> {
        let row = sqlx::query(
            "SELECT * FROM dag_runs WHERE dag_id = $1 AND logical_date = $2 AND run_type <> 'manual'",
        )
        .bind(dag_id)
        .bind(timestamp::format(logical_date))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(run_from_row).transpose()
    }

    pub async fn task_instances(&self, run_id: &str) -> Result<Vec<TaskInstanceRecord>> {
        let rows = sqlx::query(
            "SELECT task_id, state, try_number, attempt_base, next_retry_at, map_index, map_item
             FROM task_instances WHERE run_id = $1 ORDER BY position, COALESCE(map_index, -1)",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_instance_from_row).collect()
    }

    /// Every attempt of a run, by task and attempt number.
    pub async fn attempts(&self, run_id: &str) -> Result<Vec<AttemptRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            rows::attempt_columns!(),
            " FROM task_attempts WHERE run_id = $1 ORDER BY started_at, attempt"
        ))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(attempt_from_row).collect()
    }

    /// Expands mapped task `task_id` into its instances, `(id, item as JSON)` in index order:
    /// each is queued (an instance cleared before runs again, with a fresh retry budget and
    /// its attempts numbered on), instances past the end of a shorter list are dropped, and
    /// the task itself is running until its instances end.
    pub async fn expand_task(
        &self,
        run_id: &str,
        task_id: &str,
        instances: &[(String, String)],
    ) -> Result<()> {
        let (run_id, task_id, instances) =
            (run_id.to_string(), task_id.to_string(), instances.to_vec());
        self.write(Box::new(move |tx| {
            Box::pin(async move {
                let position = tx
                    .fetch_optional(
                        "SELECT position FROM task_instances WHERE run_id = $1 AND task_id = $2",
                        params![&run_id, &task_id],
                        |row| row.int(0),
                    )
                    .await?
                    .flatten()
                    .unwrap_or_default();
                let count = i64::try_from(instances.len()).unwrap_or(i64::MAX);
                for (index, (id, item)) in (0_i64..).zip(instances) {
                    tx.execute(
                        "INSERT INTO task_instances (run_id, task_id, position, state, map_index, map_item)
                         VALUES ($1, $2, $3, 'queued', $4, $5)
                         ON CONFLICT (run_id, task_id) DO UPDATE SET state = 'queued',
                             next_retry_at = NULL, attempt_base = task_instances.try_number,
                             map_item = excluded.map_item",
                        params![&run_id, id, position, index, item],
                    )
                    .await?;
                }
                let prefix = format!("{task_id}[");
                tx.execute(
                    "DELETE FROM task_instances WHERE run_id = $1 AND map_index >= $2
                         AND substr(task_id, 1, CAST($3 AS INTEGER)) = $4",
                    params![
                        &run_id,
                        count,
                        i64::try_from(prefix.len()).unwrap_or(i64::MAX),
                        prefix
                    ],
                )
                .await?;
                mapped_task_running(tx, &run_id, &task_id).await
            })
        }))
        .await
    }

    /// Records the process group an attempt's command runs in.
    pub async fn record_attempt_process(
        &self,
        run_id: &str,
        task_id: &str,
        attempt: u32,
        pgid: u32,
        start_ticks: Option<i64>,
    ) -> Result<()> {
        let values = params![
            i64::from(pgid),
            start_ticks,
            run_id,
            task_id,
            i64::from(attempt)
        ];
        self.write(Box::new(move |tx| {
            Box::pin(async move {
                tx.execute(
                    "UPDATE task_attempts SET pgid = $1, pgid_start_ticks = $2 WHERE run_id = $3 AND task_id = $4 AND attempt = $5",
                    values,
                )
                .await?;
                Ok(())
            })
        }))
        .await
    }

    /// The process group an attempt recorded, with its leader's start time.
    pub async fn attempt_process(
        &self,
        run_id: &str,
        task_id: &str,
        attempt: u32,
    ) -> Result<Option<(u32, Option<i64>)>> {
        let row = sqlx::query(
            "SELECT pgid, pgid_start_ticks FROM task_attempts
             WHERE run_id = $1 AND task_id = $2 AND attempt = $3 AND pgid IS NOT NULL",
        )
        .bind(run_id)
        .bind(task_id)
        .bind(i64::from(attempt))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let pgid: i64 = r.try_get("pgid")?;
            let pgid = u32::try_from(pgid).map_err(|_| StoreError::Corrupt {
                what: "task_attempts.pgid",
                value: pgid.to_string(),
            })?;
            Ok((pgid, r.try_get("pgid_start_ticks")?))
        })
        .transpose()
    }

    /// `orch dags pause/unpause`: sets the flag, remembering the file's `paused:` at the time
    /// (see [`Store::paused_dags`]).
    pub async fn set_paused(&self, dag_id: &str, paused: bool, file_paused: bool) -> Result<()> {
        let values = params![
            dag_id,
            i64::from(paused),
            i64::from(file_paused),
            timestamp::format(Utc::now())
        ];
        self.write(Box::new(move |tx| {
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO dag_pause (dag_id, paused, file_paused, updated_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (dag_id) DO UPDATE SET paused = excluded.paused,
                         file_paused = excluded.file_paused, updated_at = excluded.updated_at",
                    values,
                )
                .await?;
                Ok(())
            })
        }))
        .await
    }

    /// Whether a DAG is paused, given its file's `paused:`: see [`Store::paused_dags`].
    pub async fn is_paused(&self, dag_id: &str, file_paused: bool) -> Result<bool> {
        Ok(self
            .paused_dags([(dag_id, file_paused)])
            .await?
            .contains(dag_id))
    }

    /// The DAGs among `dags` (id, the file's `paused:`) that are paused. The latest change
    /// wins: a flag set by `orch dags pause/unpause` holds while the file's `paused:` is what it
    /// was then; once the file's value changes, the flag is dropped and the file decides.
    pub async fn paused_dags<'a>(
        &self,
        dags: impl IntoIterator<Item = (&'a str, bool)>,
    ) -> Result<std::collections::HashSet<String>> {
        let flags = self.pause_flags().await?;
        let mut paused = std::collections::HashSet::new();
        for (dag_id, file_paused) in dags {
            let is_paused = match flags.get(dag_id) {
                Some(flag) if flag.file_paused.is_some_and(|f| f != file_paused) => {
                    // Only the flag read here: a `dags pause` meanwhile records the new file
                    // value, and stays.
                    let values = params![dag_id, i64::from(!file_paused)];
                    self.write(Box::new(move |tx| {
                        Box::pin(async move {
                            tx.execute(
                                "DELETE FROM dag_pause WHERE dag_id = $1 AND file_paused = $2",
                                values,
                            )
                            .await?;
                            Ok(())
                        })
                    }))
                    .await?;
                    file_paused
                }
                Some(flag) => flag.paused,
                None => file_paused,
            };
            if is_paused {
                paused.insert(dag_id.to_string());
            }
        }
        Ok(paused)
    }

    /// A task kind's saved state, e.g. a watermark.
    pub async fn task_state(&self, namespace: &str, key: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM task_state WHERE namespace = $1 AND key = $2")
                .bind(namespace)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn set_task_state(&self, namespace: &str, key: &str, value: &str) -> Result<()> {
        let values = params![namespace, key, value, timestamp::format(Utc::now())];
        self.write(Box::new(move |tx| {
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO task_state (namespace, key, value, updated_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    values,
                )
                .await?;
                Ok(())
            })
        }))
        .await
    }

    /// The stable id of `symbol` on `exchange`, assigned on first use; concurrent callers
    /// agree through the table's unique key.
    pub async fn symbol_id(&self, exchange: &str, symbol: &str) -> Result<i64> {
        let values = params![exchange, symbol];
        let id = self
            .write(Box::new(move |tx| {
                Box::pin(async move {
                    tx.execute(
                        "INSERT INTO symbol_ids (exchange, symbol) VALUES ($1, $2)
                         ON CONFLICT (exchange, symbol) DO NOTHING",
                        values.clone(),
                    )
                    .await?;
                    tx.fetch_optional(
                        "SELECT symbol_id FROM symbol_ids WHERE exchange = $1 AND symbol = $2",
                        values,
                        |row| row.int(0),
                    )
                    .await
                })
            }))
            .await?;
        id.flatten().ok_or(StoreError::Corrupt {
            what: "symbol_ids.symbol_id",
            value: format!("{exchange}:{symbol}"),
        })
    }

    /// Saves a live stream's latest report (JSON) and state, as `owner` runs it.
    pub async fn save_stream_report(
        &self,
        stream_id: &str,
        owner: &str,
        state: &str,
        report: &str,
    ) -> Result<()> {
        let values = params![
            stream_id,
            owner,
            state,
            report,
            timestamp::format(Utc::now())
        ];
        self.write(Box::new(move |tx| {
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO stream_state (stream_id, owner, state, report, updated_at)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (stream_id) DO UPDATE SET owner = excluded.owner, state = excluded.state,
                         report = excluded.report, updated_at = excluded.updated_at",
                    values,
                )
                .await?;
                Ok(())
            })
        }))
        .await
    }

    /// Every stream's latest saved report.
    pub async fn stream_reports(&self) -> Result<Vec<StreamStateRecord>> {
        let rows = sqlx::query(
            "SELECT stream_id, owner, state, report, updated_at FROM stream_state ORDER BY stream_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let updated_at: String = r.try_get("updated_at")?;
                Ok(StreamStateRecord {
                    stream_id: r.try_get("stream_id")?,
                    owner: r.try_get("owner")?,
                    state: r.try_get("state")?,
                    report: r.try_get("report")?,
                    updated_at: parse_time("stream_state.updated_at", &updated_at)?,
                })
            })
            .collect()
    }

    /// The pause flags set from the command line, by DAG id.
    async fn pause_flags(&self) -> Result<HashMap<String, PauseFlag>> {
        let rows = sqlx::query("SELECT dag_id, paused, file_paused FROM dag_pause")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let flag = PauseFlag {
                    paused: r.try_get::<i64, _>("paused")? != 0,
                    file_paused: r.try_get::<Option<i64>, _>("file_paused")?.map(|p| p != 0),
                };
                Ok((r.try_get("dag_id")?, flag))
            })
            .collect()
    }
}

/// A pause set by `orch dags pause/unpause`, with the file's `paused:` at that moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PauseFlag {
    paused: bool,
    /// `None` for flags set before orch recorded it: those hold until the next command.
    file_paused: Option<bool>,
}

/// Sets mapped task `task_id` running: expanded, waiting for its instances.
async fn mapped_task_running(tx: &mut write::Tx<'_>, run_id: &str, task_id: &str) -> Result<()> {
    tx.execute(
        "UPDATE task_instances SET state = 'running', next_retry_at = NULL
         WHERE run_id = $1 AND task_id = $2",
        params![run_id, task_id],
    )
    .await?;
    Ok(())
}
