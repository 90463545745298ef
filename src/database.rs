//! Opening the SQL databases orch keeps (the metadata store, the staging store) one way:
//! sqlx's `Any` driver over SQLite or PostgreSQL, chosen by the URL's scheme, and for the
//! hottest reads a pool of the one driver the URL names ([`TypedPool`]).
//!
//! SQLite runs in WAL mode with a busy timeout, so readers in other processes never block the
//! writer, and its file (and folder) is created when missing. A file that is not an SQLite
//! database is refused at once, naming it, rather than after the pool's retries time out.
//!
//! A connection that comes back to the pool still inside a transaction (a `COMMIT` that failed
//! on a full disk, after which SQLite had already rolled back and the `ROLLBACK` failed too) is
//! closed rather than reused: reused, it would refuse every later `BEGIN` ("attempted to call
//! begin_with at non-zero transaction depth") long after the disk had room again.
//!
//! A connection is pinged before use only when it sat idle for a while ([`IDLE_BEFORE_PING`]):
//! sqlx pings every connection it hands out by default, a round trip per statement that, under
//! load, cost the database about as much as the statements themselves.

use std::path::{Path, PathBuf};

use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::pool::PoolOptions;
use sqlx::{AnyPool, Connection, Executor};

/// How long a connection may sit in the pool and still be handed out without a ping first: one
/// in steady use is known to work (a broken one fails its statement, which says whether a
/// retry helps, see [`is_transient`]), one that sat idle may have been cut meanwhile.
pub const IDLE_BEFORE_PING: Duration = Duration::from_secs(1);

/// `options`, pinging a connection before use only when it sat idle [`IDLE_BEFORE_PING`].
fn pinged_when_idle<DB: sqlx::Database>(options: PoolOptions<DB>) -> PoolOptions<DB> {
    options
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= IDLE_BEFORE_PING {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// Which database a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// `sqlite:` or `postgres:`/`postgresql:`; `None` for anything else.
    pub fn of_url(url: &str) -> Option<Backend> {
        match url.split_once(':').map(|(scheme, _)| scheme) {
            Some("sqlite") => Some(Backend::Sqlite),
            Some("postgres" | "postgresql") => Some(Backend::Postgres),
            _ => None,
        }
    }

    /// How a write transaction opens: SQLite must take its write lock up front, or two
    /// writers meeting fail with "database is locked".
    pub fn begin_statement(self) -> &'static str {
        match self {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        }
    }
}

/// A pool of at most `max_connections` to `url`, connected now, so that a bad URL or file
/// fails here.
pub async fn connect(
    url: &str,
    backend: Backend,
    max_connections: u32,
) -> Result<AnyPool, sqlx::Error> {
    let (options, url) = pool_options(url, backend, max_connections, true)?;
    if backend == Backend::Sqlite {
        // The pool retries a connection whose set-up fails until its acquire timeout (30 s):
        // a damaged file would give the same error 14 times over. One connection first says
        // it at once.
        let mut first = sqlx::AnyConnection::connect(&url).await?;
        first.execute(SQLITE_PRAGMAS).await?;
        first.close().await?;
    }
    options.connect(&url).await
}

/// What every SQLite connection sets first.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
    PRAGMA busy_timeout = 30000; PRAGMA foreign_keys = ON;";

/// The same pool, connecting only when first used: for an attempt process, whose task kind
/// may never touch the database (a `noop`, a shell command), so that it does not pay for a
/// connection it does not use. The database is one a [`connect`] opened already, so its file
/// is not checked again.
pub fn connect_lazy(
    url: &str,
    backend: Backend,
    max_connections: u32,
) -> Result<AnyPool, sqlx::Error> {
    let (options, url) = pool_options(url, backend, max_connections, false)?;
    options.connect_lazy(&url)
}

/// A pool of one driver, not `Any`: rows are read where they arrive, with no conversion of
/// every value into an owned copy. For the reads the web face makes on every page.
#[derive(Clone, Debug)]
pub enum TypedPool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// A typed pool of at most `max_connections` to the database `url` names, which a
/// [`connect`] opened already, connecting when first used: most processes never read a page.
pub fn connect_typed_lazy(
    url: &str,
    backend: Backend,
    max_connections: u32,
) -> Result<TypedPool, sqlx::Error> {
    match backend {
        Backend::Sqlite => {
            let options = match sqlite_path(url) {
                Some(path) => sqlx::sqlite::SqliteConnectOptions::new().filename(path),
                None => url.parse::<sqlx::sqlite::SqliteConnectOptions>()?,
            };
            // The file is in WAL mode already ([`connect`] set it); readers only wait.
            let options = options.busy_timeout(std::time::Duration::from_secs(30));
            Ok(TypedPool::Sqlite(
                pinged_when_idle(sqlx::sqlite::SqlitePoolOptions::new())
                    .max_connections(max_connections)
                    .connect_lazy_with(options),
            ))
        }
        Backend::Postgres => Ok(TypedPool::Postgres(
            pinged_when_idle(sqlx::postgres::PgPoolOptions::new())
                .max_connections(max_connections)
                .connect_lazy(url)?,
        )),
    }
}

fn pool_options(
    url: &str,
    backend: Backend,
    max_connections: u32,
    check_file: bool,
) -> Result<(AnyPoolOptions, String), sqlx::Error> {
    sqlx::any::install_default_drivers();
    let options = pinged_when_idle(AnyPoolOptions::new())
        .max_connections(max_connections)
        .after_release(|conn, _| {
            Box::pin(async move {
                if !conn.is_in_transaction() {
                    return Ok(true);
                }
                // A dropped transaction queues its rollback: run it, then look again.
                conn.ping().await?;
                Ok(!conn.is_in_transaction())
            })
        });
    match backend {
        Backend::Sqlite => {
            if let Some(path) = sqlite_path(url).filter(|_| check_file) {
                check_sqlite_file(&path)?;
                if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                    // A failure surfaces as the connection's own error just below.
                    let _ = std::fs::create_dir_all(dir);
                }
            }
            let options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(SQLITE_PRAGMAS).await?;
                    Ok(())
                })
            });
            Ok((options, with_create_mode(url)))
        }
        Backend::Postgres => Ok((options, url.to_string())),
    }
}

/// Whether a statement that failed with `error` may well succeed if tried again: a busy or
/// locked SQLite file, a full disk or an I/O error, a lost or refused connection, a PostgreSQL
/// failover, serialization failure or deadlock. Not bad SQL or a constraint.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(e) => e.kind() != std::io::ErrorKind::InvalidData,
        sqlx::Error::PoolTimedOut
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| transient_code(&code)),
        _ => false,
    }
}

/// Whether `error` says the SQLite file is damaged or is not a database at all (SQLite's
/// `CORRUPT` and `NOTADB`): no retry can help, and every later statement may fail the same way.
pub fn is_corrupt(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<i64>().ok())
            .is_some_and(|code| matches!(code & 0xff, 11 | 26)),
        _ => false,
    }
}

/// PostgreSQL SQLSTATEs (five characters: connection exceptions, serialization failure,
/// deadlock, insufficient resources, operator intervention, lock not available) and SQLite
/// result codes (a number of at most four digits: busy, locked, I/O error, full, cannot open;
/// extended codes carry the primary one in their low byte) that a retry may get past.
fn transient_code(code: &str) -> bool {
    if code.len() == 5 {
        return code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("57P")
            || matches!(code, "40001" | "40P01" | "55P03");
    }
    code.parse::<i64>()
        .is_ok_and(|sqlite| matches!(sqlite & 0xff, 5 | 6 | 10 | 13 | 14))
}

/// The file of a `sqlite://PATH[?options]` URL.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://")?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Every SQLite database file begins with these 16 bytes.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Refuses a file that exists, is not empty and does not begin as an SQLite database does.
fn check_sqlite_file(path: &Path) -> Result<(), sqlx::Error> {
    use std::io::Read;
    let mut head = Vec::with_capacity(16);
    let read = std::fs::File::open(path).and_then(|f| f.take(16).read_to_end(&mut head));
    if read.is_err() || head.is_empty() || head.as_slice() == SQLITE_HEADER {
        // Missing (created on connect), empty (a new database) or fine; an unreadable file
        // gets SQLite's own error.
        return Ok(());
    }
    Err(sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "{} is not an SQLite database (it begins with {:?}); move it away or point the URL elsewhere",
            path.display(),
            String::from_utf8_lossy(&head)
        ),
    )))
}

/// Asks SQLite to create the file when missing, unless the URL says otherwise.
fn with_create_mode(url: &str) -> String {
    if url.contains("mode=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// The PostgreSQL server the unit tests may use (`ORCH_TEST_POSTGRES_URL`, which
/// `.ci/postgres` prints); `None`, the test skipped with a printed reason, without one, except
/// under CI (`CI` set), where a missing server fails the test.
#[cfg(test)]
pub(crate) fn test_postgres_url() -> Option<String> {
    let url = std::env::var("ORCH_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if url.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide ORCH_TEST_POSTGRES_URL (see .ci/postgres)"
        );
        eprintln!("skipped: ORCH_TEST_POSTGRES_URL is not set");
    }
    url
}

/// Whether `name` is a table name orch may put into SQL unquoted: lower-case letters, digits
/// and `_`, starting with a letter, at most 63 bytes (PostgreSQL's limit).
pub fn is_table_name(name: &str) -> bool {
    name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && name.len() <= 63
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_their_backend_and_sqlite_files_are_created() {
        assert_eq!(Backend::of_url("sqlite:///x.db"), Some(Backend::Sqlite));
        assert_eq!(
            Backend::of_url("postgresql://h/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::of_url("mysql://h/db"), None);
        assert_eq!(
            with_create_mode("sqlite:///a.db"),
            "sqlite:///a.db?mode=rwc"
        );
        assert_eq!(
            with_create_mode("sqlite:///a.db?x=1"),
            "sqlite:///a.db?x=1&mode=rwc"
        );
        assert_eq!(
            with_create_mode("sqlite:///a.db?mode=ro"),
            "sqlite:///a.db?mode=ro"
        );
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_is_named_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("orch.db");
        std::fs::write(&path, "this is a text file, not a database").expect("write");
        let started = std::time::Instant::now();
        let err = connect(&format!("sqlite://{}", path.display()), Backend::Sqlite, 1)
            .await
            .expect_err("refused");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let message = err.to_string();
        assert!(
            message.contains(&path.display().to_string())
                && message.contains("is not an SQLite database"),
            "{message}"
        );
    }

    /// SQLite rolls a transaction back by itself on some errors (a full disk); sqlx's own
    /// `ROLLBACK` then fails and leaves the connection counting a transaction. That connection
    /// must not serve the next `BEGIN`.
    #[tokio::test]
    async fn a_connection_left_inside_a_transaction_is_not_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let pool = connect(&url, Backend::Sqlite, 1).await.expect("pool");
        {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.expect("begin");
            // SQLite ends the transaction under sqlx's feet, as it does on SQLITE_FULL.
            sqlx::raw_sql("ROLLBACK")
                .execute(&mut *tx)
                .await
                .expect("rollback");
        }
        for _ in 0..3 {
            let tx = pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .expect("a later write transaction begins");
            tx.commit().await.expect("commit");
        }
    }

    #[test]
    fn transient_codes_of_each_backend_are_told_apart() {
        for transient in [
            "5", "6", "261", "517", "10", "3338", "13", "40001", "08006", "57P01", "53300", "40P01",
        ] {
            assert!(transient_code(transient), "{transient}");
        }
        // 42501 (insufficient privilege) ends in the low byte of SQLite's "busy".
        for permanent in ["1", "19", "2067", "42501", "23505", "42P01"] {
            assert!(!transient_code(permanent), "{permanent}");
        }
    }

    #[test]
    fn table_names_are_plain_identifiers() {
        assert!(is_table_name("trades_btcusdt"));
        for bad in ["", "1x", "Trades", "a-b", "a;drop", &"x".repeat(64)] {
            assert!(!is_table_name(bad), "{bad}");
        }
    }
}
