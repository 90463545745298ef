//! Writes to the metadata database, one way for both backends: a write is a function of a
//! [`Tx`], which runs its statements on whichever database the store opened.
//!
//! On SQLite every write of this process goes to one thread with a connection of its own
//! ([`SqliteWriter`]). It takes every write asked meanwhile into one transaction (a group
//! commit), each in a savepoint of its own so that one write's failure undoes only itself,
//! and answers each once the transaction committed. SQLite has one writer at a time anyway:
//! writers taking turns on one thread never meet on its lock (whose busy handler sleeps, up
//! to 100 ms a try), and a burst of writes costs one commit and one thread hand-over instead
//! of one per statement. On PostgreSQL a write is a transaction of its own on the pool.

use std::borrow::Cow;
use std::sync::mpsc;
use std::task::{Context, Poll, Waker};

use futures_util::future::BoxFuture;
use sqlx::Row as _;
use tokio::sync::oneshot;

use super::{Result, StoreError};

/// A statement's text: fixed, or built by code that vouches it splices in no value.
#[derive(Debug, Clone)]
pub(crate) struct Sql(Cow<'static, str>);

impl From<&'static str> for Sql {
    fn from(text: &'static str) -> Sql {
        Sql(Cow::Borrowed(text))
    }
}

impl Sql {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// A statement built at run time. The caller has audited it: only placeholders, and
    /// names from a fixed list, are spliced in; values are always bound.
    pub(crate) fn audited(text: String) -> Sql {
        Sql(Cow::Owned(text))
    }
}

/// A value bound to a statement's `$N`. Nulls are typed: PostgreSQL checks a parameter's
/// type against its column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Param {
    Int(Option<i64>),
    Text(Option<String>),
}

impl From<i64> for Param {
    fn from(value: i64) -> Param {
        Param::Int(Some(value))
    }
}

impl From<Option<i64>> for Param {
    fn from(value: Option<i64>) -> Param {
        Param::Int(value)
    }
}

impl From<String> for Param {
    fn from(value: String) -> Param {
        Param::Text(Some(value))
    }
}

impl From<&str> for Param {
    fn from(value: &str) -> Param {
        Param::Text(Some(value.to_string()))
    }
}

impl From<&String> for Param {
    fn from(value: &String) -> Param {
        Param::Text(Some(value.clone()))
    }
}

impl From<Option<String>> for Param {
    fn from(value: Option<String>) -> Param {
        Param::Text(value)
    }
}

impl From<Option<&str>> for Param {
    fn from(value: Option<&str>) -> Param {
        Param::Text(value.map(str::to_string))
    }
}

impl From<&Option<String>> for Param {
    fn from(value: &Option<String>) -> Param {
        Param::Text(value.clone())
    }
}

/// The values of a statement's `$1`, `$2`, ... in order.
macro_rules! params {
    ($($value:expr),* $(,)?) => {
        vec![$($crate::store::write::Param::from($value)),*]
    };
}
pub(crate) use params;

/// A row read inside a write: its columns by position.
pub(crate) trait RowRead {
    fn int(&self, column: usize) -> Result<Option<i64>>;
    fn text(&self, column: usize) -> Result<Option<String>>;
}

impl RowRead for rusqlite::Row<'_> {
    fn int(&self, column: usize) -> Result<Option<i64>> {
        Ok(self.get(column)?)
    }

    fn text(&self, column: usize) -> Result<Option<String>> {
        Ok(self.get(column)?)
    }
}

impl RowRead for sqlx::any::AnyRow {
    fn int(&self, column: usize) -> Result<Option<i64>> {
        Ok(self.try_get(column)?)
    }

    fn text(&self, column: usize) -> Result<Option<String>> {
        Ok(self.try_get(column)?)
    }
}

/// A write transaction on the store's database.
pub(crate) enum Tx<'t> {
    Sqlite(&'t mut rusqlite::Connection),
    Any(&'t mut sqlx::Transaction<'static, sqlx::Any>),
}

impl Tx<'_> {
    /// Runs a statement; returns the rows it changed.
    pub(crate) async fn execute(&mut self, sql: impl Into<Sql>, params: Vec<Param>) -> Result<u64> {
        let sql = sql.into();
        match self {
            Tx::Sqlite(conn) => sqlite_execute(conn, &sql, &params),
            Tx::Any(tx) => Ok(any_query(&sql, params)
                .execute(&mut ***tx)
                .await?
                .rows_affected()),
        }
    }

    /// Runs two statements that always go together, sharing `params`: on PostgreSQL as one
    /// (the first a data-modifying `WITH`), a round trip saved on the hottest writes; in turn on
    /// SQLite, which has no data-modifying `WITH` and no round trips to save.
    pub(crate) async fn execute_pair(
        &mut self,
        first: &'static str,
        then: &'static str,
        params: Vec<Param>,
    ) -> Result<()> {
        match self {
            Tx::Sqlite(conn) => {
                sqlite_execute(conn, &Sql::from(first), &params)?;
                sqlite_execute(conn, &Sql::from(then), &params)?;
            }
            Tx::Any(_) => {
                // Audited: two fixed statements.
                let sql = Sql::audited(format!("WITH first AS ({first}) {then}"));
                self.execute(sql, params).await?;
            }
        }
        Ok(())
    }

    /// Runs a statement and reads every row it returns with `read`.
    pub(crate) async fn fetch_all<R>(
        &mut self,
        sql: impl Into<Sql>,
        params: Vec<Param>,
        read: impl Fn(&dyn RowRead) -> Result<R>,
    ) -> Result<Vec<R>> {
        let sql = sql.into();
        match self {
            Tx::Sqlite(conn) => sqlite_fetch(conn, &sql, &params, &read),
            Tx::Any(tx) => {
                let rows = any_query(&sql, params).fetch_all(&mut ***tx).await?;
                rows.iter().map(|row| read(row)).collect()
            }
        }
    }

    /// The first row a statement returns, read with `read`.
    pub(crate) async fn fetch_optional<R>(
        &mut self,
        sql: impl Into<Sql>,
        params: Vec<Param>,
        read: impl Fn(&dyn RowRead) -> Result<R>,
    ) -> Result<Option<R>> {
        Ok(self.fetch_all(sql, params, read).await?.into_iter().next())
    }

    /// Wakes the listeners of `channel` once this transaction commits: PostgreSQL's
    /// `NOTIFY`; nothing on SQLite, whose processes share one machine and poll.
    pub(crate) async fn notify(&mut self, channel: &str) -> Result<()> {
        if let Tx::Any(_) = self {
            self.execute("SELECT pg_notify($1, '')", params![channel])
                .await?;
        }
        Ok(())
    }
}

/// Runs one statement on `pool`, a transaction of its own; returns the rows it changed.
pub(crate) async fn execute_on(pool: &sqlx::AnyPool, sql: &Sql, params: Vec<Param>) -> Result<u64> {
    Ok(any_query(sql, params).execute(pool).await?.rows_affected())
}

/// Runs one statement on `pool`, a transaction of its own; reads the rows it returns.
pub(crate) async fn fetch_on<R>(
    pool: &sqlx::AnyPool,
    sql: &Sql,
    params: Vec<Param>,
    read: impl Fn(&dyn RowRead) -> Result<R>,
) -> Result<Vec<R>> {
    let rows = any_query(sql, params).fetch_all(pool).await?;
    rows.iter().map(|row| read(row)).collect()
}

/// What a write does inside its transaction.
pub(crate) type Work<T> =
    Box<dyn for<'c, 't> FnOnce(&'c mut Tx<'t>) -> BoxFuture<'c, Result<T>> + Send>;

fn any_query(
    sql: &Sql,
    params: Vec<Param>,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    // Audited: `Sql` holds only fixed text or text its builder vouched for.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.0.to_string()));
    for param in params {
        query = match param {
            Param::Int(value) => query.bind(value),
            Param::Text(value) => query.bind(value),
        };
    }
    query
}

/// Prepares `sql` (cached) and binds `$N` to `params[N - 1]`, as sqlx does for SQLite.
fn sqlite_statement<'c>(
    conn: &'c rusqlite::Connection,
    sql: &Sql,
    params: &[Param],
) -> Result<rusqlite::CachedStatement<'c>> {
    let mut statement = conn.prepare_cached(&sql.0)?;
    for index in 1..=statement.parameter_count() {
        let number = statement
            .parameter_name(index)
            .and_then(|name| name.strip_prefix('$'))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(index);
        let param = params.get(number.wrapping_sub(1)).ok_or_else(|| {
            StoreError::Sqlite(SqliteFailure {
                code: None,
                message: format!("no value for parameter ${number} of `{}`", sql.0),
            })
        })?;
        match param {
            Param::Int(value) => statement.raw_bind_parameter(index, value)?,
            Param::Text(value) => statement.raw_bind_parameter(index, value)?,
        }
    }
    Ok(statement)
}

fn sqlite_execute(conn: &rusqlite::Connection, sql: &Sql, params: &[Param]) -> Result<u64> {
    let mut statement = sqlite_statement(conn, sql, params)?;
    let mut rows = statement.raw_query();
    while rows.next()?.is_some() {}
    drop(rows);
    Ok(conn.changes())
}

fn sqlite_fetch<R>(
    conn: &rusqlite::Connection,
    sql: &Sql,
    params: &[Param],
    read: &dyn Fn(&dyn RowRead) -> Result<R>,
) -> Result<Vec<R>> {
    let mut statement = sqlite_statement(conn, sql, params)?;
    let mut rows = statement.raw_query();
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(read(row)?);
    }
    Ok(out)
}

/// An SQLite error as the writer reports it, to every write of a batch that failed as one.
#[derive(Debug, Clone)]
pub struct SqliteFailure {
    pub code: Option<rusqlite::ffi::Error>,
    pub message: String,
}

impl std::fmt::Display for SqliteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl SqliteFailure {
    /// A damaged file, or one that is not a database ([`crate::database::is_corrupt`]).
    pub fn is_corrupt(&self) -> bool {
        use rusqlite::ErrorCode::*;
        self.code
            .is_some_and(|code| matches!(code.code, DatabaseCorrupt | NotADatabase))
    }

    /// Busy, locked, an I/O error, a full disk, a file that cannot be opened: SQLite's
    /// primary codes a retry may get past.
    pub fn is_transient(&self) -> bool {
        use rusqlite::ErrorCode::*;
        self.code.is_some_and(|code| {
            matches!(
                code.code,
                DatabaseBusy | DatabaseLocked | SystemIoFailure | DiskFull | CannotOpen
            )
        })
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> StoreError {
        let code = match &error {
            rusqlite::Error::SqliteFailure(code, _) => Some(*code),
            _ => None,
        };
        StoreError::Sqlite(SqliteFailure {
            code,
            message: error.to_string(),
        })
    }
}

/// One write handed to the writer thread.
trait Job: Send {
    /// Runs it in the batch's transaction: whether it succeeded, and how to answer once the
    /// batch committed (or did not).
    fn run(self: Box<Self>, conn: &mut rusqlite::Connection) -> Done;
    /// Answers it without running it: its batch could not begin.
    fn refuse(self: Box<Self>, failure: SqliteFailure);
}

struct Done {
    ok: bool,
    /// Delivers the write's own result, or the batch's failure to commit.
    answer: Box<dyn FnOnce(Option<SqliteFailure>) + Send>,
}

struct WriteJob<T> {
    work: Work<T>,
    tell: oneshot::Sender<Result<T>>,
}

impl<T: Send + 'static> Job for WriteJob<T> {
    fn run(self: Box<Self>, conn: &mut rusqlite::Connection) -> Done {
        let WriteJob { work, tell } = *self;
        let result = run_to_end(work, conn);
        Done {
            ok: result.is_ok(),
            answer: Box::new(move |failed| {
                let _ = tell.send(match failed {
                    None => result,
                    Some(failure) => Err(StoreError::Sqlite(failure)),
                });
            }),
        }
    }

    fn refuse(self: Box<Self>, failure: SqliteFailure) {
        let _ = self.tell.send(Err(StoreError::Sqlite(failure)));
    }
}

/// The most writes one transaction takes.
const MAX_BATCH: usize = 512;

/// The thread that writes an SQLite database for this process, started by the first write
/// (many processes, such as most attempts, never write).
#[derive(Clone)]
pub(crate) struct SqliteWriter {
    path: std::sync::Arc<std::path::Path>,
    jobs: std::sync::Arc<std::sync::OnceLock<mpsc::Sender<Box<dyn Job>>>>,
}

impl SqliteWriter {
    /// The writer of the SQLite file `path`.
    pub(crate) fn new(path: std::path::PathBuf) -> SqliteWriter {
        SqliteWriter {
            path: path.into(),
            jobs: Default::default(),
        }
    }

    /// Runs `work` in the writer's next transaction; returns its result once committed.
    pub(crate) async fn write<T: Send + 'static>(&self, work: Work<T>) -> Result<T> {
        let (tell, told) = oneshot::channel();
        self.jobs()?
            .send(Box::new(WriteJob { work, tell }))
            .map_err(|_| writer_gone())?;
        told.await.map_err(|_| writer_gone())?
    }

    fn jobs(&self) -> Result<&mpsc::Sender<Box<dyn Job>>> {
        if let Some(jobs) = self.jobs.get() {
            return Ok(jobs);
        }
        let (jobs, queue) = mpsc::channel();
        let path = std::sync::Arc::clone(&self.path);
        std::thread::Builder::new()
            .name("orch-sqlite-writer".to_string())
            .spawn(move || write_batches(&path, &queue))
            .map_err(|e| {
                StoreError::Sqlite(SqliteFailure {
                    code: None,
                    message: format!("cannot start the database writer thread: {e}"),
                })
            })?;
        // Another write may have started one first: its thread serves, this one's ends at once.
        let _ = self.jobs.set(jobs);
        self.jobs.get().ok_or_else(writer_gone)
    }
}

fn writer_gone() -> StoreError {
    StoreError::Sqlite(SqliteFailure {
        code: None,
        message: "the database writer thread stopped".to_string(),
    })
}

/// Runs a write's future to its end. On SQLite nothing in it waits: every statement runs
/// on this thread as it is called, so one poll finishes it.
fn run_to_end<T>(work: Work<T>, conn: &mut rusqlite::Connection) -> Result<T> {
    let mut tx = Tx::Sqlite(conn);
    let mut future = work(&mut tx);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(result) => result,
        Poll::Pending => Err(StoreError::Sqlite(SqliteFailure {
            code: None,
            message: "a write to SQLite waited for something other than SQLite".to_string(),
        })),
    }
}

/// The writer's connection, as the metadata store's other connections are set up.
fn open(path: &std::path::Path) -> rusqlite::Result<rusqlite::Connection> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
    )?;
    conn.set_prepared_statement_cache_capacity(128);
    Ok(conn)
}

/// The writer thread: a transaction per batch of the writes waiting, until every handle to
/// it is gone. A connection that cannot be opened fails the batch, and is tried again.
fn write_batches(path: &std::path::Path, queue: &mpsc::Receiver<Box<dyn Job>>) {
    let mut opened: Option<rusqlite::Connection> = None;
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let conn = match opened.take().map_or_else(|| open(path), Ok) {
            Ok(conn) => opened.insert(conn),
            Err(e) => {
                let failure = failure_of(e);
                for job in batch {
                    job.refuse(failure.clone());
                }
                continue;
            }
        };
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let failure = failure_of(e);
            for job in batch {
                job.refuse(failure.clone());
            }
            continue;
        }
        let mut answers = Vec::with_capacity(batch.len());
        for job in batch {
            if let Err(e) = conn.execute_batch("SAVEPOINT write") {
                job.refuse(failure_of(e));
                continue;
            }
            let done = job.run(conn);
            let closed = if done.ok {
                conn.execute_batch("RELEASE write")
            } else {
                conn.execute_batch("ROLLBACK TO write; RELEASE write")
            };
            answers.push((done.answer, closed.err().map(failure_of)));
        }
        let committed = conn.execute_batch("COMMIT").map_err(failure_of);
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for (answer, own_failure) in answers {
            answer(committed.clone().err().or(own_failure));
        }
    }
}

fn failure_of(error: rusqlite::Error) -> SqliteFailure {
    match StoreError::from(error) {
        StoreError::Sqlite(failure) => failure,
        other => SqliteFailure {
            code: None,
            message: other.to_string(),
        },
    }
}
