//! Named locks shared by every orch process of one metadata database, so that two writers of
//! the same data (a fetch of one symbol into one lake, the daily tasks of one day) never run
//! at once: `orch run` beside `orch serve`, parallel backfills, several hosts on PostgreSQL.
//!
//! On PostgreSQL a lock is a session advisory lock on a connection of its own; on SQLite, whose
//! processes share one machine, an advisory lock on a file beside the database. Either way the
//! lock dies with its holder: a killed process never leaves one behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::{AnyConnection, Connection};

use super::{Result, Store, StoreError};
use crate::backoff::Backoff;
use crate::database::Backend;

/// How often a held lock is tried again.
const RETRY: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));

/// A lock held until dropped.
#[derive(Debug)]
pub struct StoreLock {
    _held: Held,
}

#[derive(Debug)]
enum Held {
    /// The session holding the advisory lock; closing it releases the lock.
    Postgres { _session: AnyConnection },
    /// The locked file; closing it releases the lock.
    File { _file: File },
}

impl Store {
    /// Takes the lock `name`, waiting up to `wait` while another process holds it; `Ok(None)`
    /// if it is still held then. `on_wait` is called once, when the lock turns out to be held.
    ///
    /// On PostgreSQL the lock holds a connection of its own, outside the pool, for as long as
    /// it is held (one per lock: a fetch of four symbols holds four).
    pub async fn lock(
        &self,
        name: &str,
        wait: Duration,
        on_wait: impl FnOnce(),
    ) -> Result<Option<StoreLock>> {
        let key = lock_key(name);
        let mut waiting = Waiting::new(wait, on_wait);
        let held = match self.backend {
            Backend::Postgres => {
                // One session for the whole wait: a waiter does not open a connection a try.
                let mut session = self.pool.acquire().await?.detach();
                loop {
                    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                        .bind(key)
                        .fetch_one(&mut session)
                        .await?;
                    if taken {
                        break Held::Postgres { _session: session };
                    }
                    if !waiting.again().await {
                        let _ = session.close().await;
                        return Ok(None);
                    }
                }
            }
            Backend::Sqlite => {
                let Some(opened) = &self.file else {
                    return Err(StoreError::NoLockFile(
                        "an in-memory SQLite database".to_string(),
                    ));
                };
                loop {
                    if let Some(file) = try_lock_file(&opened.path, &format!("{key:016x}"))? {
                        break Held::File { _file: file };
                    }
                    if !waiting.again().await {
                        return Ok(None);
                    }
                }
            }
        };
        Ok(Some(StoreLock { _held: held }))
    }
}

/// The wait for a held lock: its deadline, its first notice, its backoff.
struct Waiting<F> {
    started: Instant,
    wait: Duration,
    on_wait: Option<F>,
    tries: u32,
}

impl<F: FnOnce()> Waiting<F> {
    fn new(wait: Duration, on_wait: F) -> Self {
        Waiting {
            started: Instant::now(),
            wait,
            on_wait: Some(on_wait),
            tries: 0,
        }
    }

    /// Sleeps before the next try; `false` once the wait is over.
    async fn again(&mut self) -> bool {
        if self.started.elapsed() >= self.wait {
            return false;
        }
        if let Some(f) = self.on_wait.take() {
            f();
        }
        self.tries += 1;
        tokio::time::sleep(RETRY.delay(self.tries)).await;
        true
    }
}

/// Takes the file lock `name` beside the SQLite database `database`, if free.
fn try_lock_file(database: &Path, name: &str) -> Result<Option<File>> {
    let mut dir = database.as_os_str().to_os_string();
    dir.push(".locks");
    let io = |e: std::io::Error| StoreError::Sql(sqlx::Error::Io(e));
    std::fs::create_dir_all(&dir).map_err(io)?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(Path::new(&dir).join(format!("{name}.lock")))
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(io(e)),
    }
}

/// Waits for the file lock `name` beside the SQLite database `database`, for work every
/// process does once at most at a time (its migrations), before the store is open.
pub(super) async fn exclusive_file(database: &Path, name: &str) -> Result<File> {
    let mut waiting = Waiting::new(Duration::MAX, || {});
    loop {
        if let Some(file) = try_lock_file(database, name)? {
            return Ok(file);
        }
        waiting.again().await;
    }
}

/// A lock's number: the first 8 bytes of the SHA-256 of its name.
fn lock_key(name: &str) -> i64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let mut bytes = [0_u8; 8];
    bytes.copy_from_slice(&digest.as_ref()[..8]);
    i64::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lock_twice(url: &str) {
        let a = Store::open(url).await.expect("store");
        let b = Store::open(url).await.expect("store");
        let held = a
            .lock("fetch|lake|BTCUSDT", Duration::ZERO, || {})
            .await
            .expect("lock")
            .expect("free");
        let mut waited = false;
        let refused = b
            .lock("fetch|lake|BTCUSDT", Duration::from_millis(200), || {
                waited = true
            })
            .await
            .expect("lock");
        assert!(refused.is_none() && waited, "held by the other store");
        assert!(
            b.lock("fetch|lake|ETHBTC", Duration::ZERO, || {})
                .await
                .expect("lock")
                .is_some(),
            "another name is another lock"
        );
        drop(held);
        assert!(
            b.lock("fetch|lake|BTCUSDT", Duration::from_secs(5), || {})
                .await
                .expect("lock")
                .is_some(),
            "free once dropped"
        );
    }

    #[tokio::test]
    async fn sqlite_locks_exclude_each_other_until_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        lock_twice(&format!(
            "sqlite://{}",
            dir.path().join("orch.db").display()
        ))
        .await;
    }

    #[tokio::test]
    async fn postgres_locks_exclude_each_other_until_dropped() {
        let Some(url) = crate::database::test_postgres_url() else {
            return;
        };
        lock_twice(&url).await;
    }
}
