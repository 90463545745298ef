//! Opening the SQL databases orch keeps (the metadata store, the staging store) one way:
//! sqlx's `Any` driver over SQLite or PostgreSQL, chosen by the URL's scheme.
//!
//! SQLite runs in WAL mode with a busy timeout, so readers in other processes never block the
//! writer, and its file (and folder) is created when missing.

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};

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

/// A pool of at most `max_connections` to `url`.
pub async fn connect(
    url: &str,
    backend: Backend,
    max_connections: u32,
) -> Result<AnyPool, sqlx::Error> {
    sqlx::any::install_default_drivers();
    match backend {
        Backend::Sqlite => {
            if let Some(dir) = url
                .strip_prefix("sqlite://")
                .map(|rest| rest.split('?').next().unwrap_or(rest))
                .and_then(|path| std::path::Path::new(path).parent())
                .filter(|dir| !dir.as_os_str().is_empty())
            {
                // A failure surfaces as the connection's own error just below.
                let _ = std::fs::create_dir_all(dir);
            }
            AnyPoolOptions::new()
                .max_connections(max_connections)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
                             PRAGMA busy_timeout = 30000; PRAGMA foreign_keys = ON;",
                        )
                        .await?;
                        Ok(())
                    })
                })
                .connect(&with_create_mode(url))
                .await
        }
        Backend::Postgres => {
            AnyPoolOptions::new()
                .max_connections(max_connections)
                .connect(url)
                .await
        }
    }
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

    #[test]
    fn table_names_are_plain_identifiers() {
        assert!(is_table_name("trades_btcusdt"));
        for bad in ["", "1x", "Trades", "a-b", "a;drop", &"x".repeat(64)] {
            assert!(!is_table_name(bad), "{bad}");
        }
    }
}
