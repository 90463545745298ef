//! The orch processes sharing one metadata database, and the lease of its one scheduler.
//!
//! Every process that executes runs or attempts has a row with a heartbeat; a row whose
//! heartbeat stopped is declared lost once (`lost_at`), after which its own heartbeat fails
//! and it stops. The scheduler lease is a single row its holder renews: times are written by
//! the processes' clocks, which must agree to within a few seconds (NTP), as with every
//! heartbeat-based scheduler.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::timestamp::{self, serde_format};
use super::write::params;
use super::{Result, Store, parse_time};

/// One orch process, as it registered itself.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessRecord {
    pub id: String,
    pub role: String,
    pub host: String,
    pub pid: i64,
    /// The queues its worker serves; empty when it runs no worker.
    pub queues: Vec<String>,
    #[serde(serialize_with = "serde_format::required")]
    pub started_at: DateTime<Utc>,
    #[serde(serialize_with = "serde_format::required")]
    pub heartbeat_at: DateTime<Utc>,
    #[serde(serialize_with = "serde_format::optional")]
    pub lost_at: Option<DateTime<Utc>>,
}

/// Who holds the scheduler lease, and until when.
#[derive(Debug, Clone)]
pub struct LeaseHolder {
    pub holder: String,
    pub expires_at: DateTime<Utc>,
}

const SCHEDULER_LEASE: &str = "scheduler";

impl Store {
    /// Registers (or registers again) process `id` with a fresh heartbeat.
    pub async fn register_process(
        &self,
        id: &str,
        role: &str,
        host: &str,
        queues: &[String],
    ) -> Result<()> {
        let now = timestamp::format(Utc::now());
        let queues = (!queues.is_empty()).then(|| queues.join(","));
        let values = params![id, role, host, i64::from(std::process::id()), queues, now];
        self.write(Box::new(move |tx| {
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO orch_processes (id, role, host, pid, queues, started_at, heartbeat_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $6)
                     ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, lost_at = NULL",
                    values,
                )
                .await?;
                Ok(())
            })
        }))
        .await
    }

    /// Renews process `id`'s heartbeat. `false` when it was declared lost (or its row is
    /// gone): the process must stop, others have taken over its work.
    pub async fn heartbeat(&self, id: &str) -> Result<bool> {
        let renewed = self
            .write_one(
                "UPDATE orch_processes SET heartbeat_at = $1 WHERE id = $2 AND lost_at IS NULL",
                params![timestamp::format(Utc::now()), id],
            )
            .await?;
        Ok(renewed == 1)
    }

    /// Marks process `id` stopped (cleanly, so that others need not wait out its heartbeat),
    /// and forgets processes stopped more than a day ago.
    pub async fn unregister_process(&self, id: &str) -> Result<()> {
        let now = Utc::now();
        let stopped = params![timestamp::format(now), id];
        let forgotten = params![timestamp::format(now - chrono::Duration::days(1))];
        self.write(Box::new(move |tx| {
            Box::pin(async move {
                tx.execute(
                    "UPDATE orch_processes SET lost_at = $1 WHERE id = $2",
                    stopped,
                )
                .await?;
                tx.execute("DELETE FROM orch_processes WHERE lost_at < $1", forgotten)
                    .await?;
                Ok(())
            })
        }))
        .await
    }

    pub async fn process(&self, id: &str) -> Result<Option<ProcessRecord>> {
        let row = sqlx::query("SELECT * FROM orch_processes WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(process_from_row).transpose()
    }

    /// Every registered process, by start.
    pub async fn processes(&self) -> Result<Vec<ProcessRecord>> {
        let rows = sqlx::query("SELECT * FROM orch_processes ORDER BY started_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(process_from_row).collect()
    }

    /// Declares process `id` lost if its last heartbeat is older than `lost_after`, or if
    /// `proven_dead` (its lock was taken on this host). Returns whether it is lost now.
    pub async fn declare_lost(
        &self,
        id: &str,
        lost_after: Duration,
        proven_dead: bool,
    ) -> Result<bool> {
        let now = Utc::now();
        let stale_before = if proven_dead {
            // Any heartbeat at all is older than a second from now.
            now + chrono::Duration::seconds(1)
        } else {
            now - chrono::Duration::from_std(lost_after).unwrap_or(chrono::Duration::MAX)
        };
        let values = params![timestamp::format(now), id, timestamp::format(stale_before)];
        let id = id.to_string();
        self.write(Box::new(move |tx| {
            Box::pin(async move {
                tx.execute(
                    "UPDATE orch_processes SET lost_at = $1
                     WHERE id = $2 AND lost_at IS NULL AND heartbeat_at < $3",
                    values,
                )
                .await?;
                let lost = tx
                    .fetch_optional(
                        "SELECT lost_at FROM orch_processes WHERE id = $1",
                        params![id],
                        |row| row.text(0),
                    )
                    .await?;
                Ok(matches!(lost, Some(Some(_))))
            })
        }))
        .await
    }

    /// Takes or renews the scheduler lease for `holder` until `ttl` from now: granted when
    /// it is free, expired, already `holder`'s, or held by `dead_holder` (proven dead).
    /// Returns whether `holder` holds it now.
    pub async fn take_scheduler_lease(
        &self,
        holder: &str,
        ttl: Duration,
        dead_holder: Option<&str>,
    ) -> Result<bool> {
        let now = Utc::now();
        let expires = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let values = params![
            SCHEDULER_LEASE,
            holder,
            timestamp::format(now),
            timestamp::format(expires),
            dead_holder.unwrap_or("")
        ];
        let taken = self
            .write(Box::new(move |tx| {
                Box::pin(async move {
                    tx.fetch_optional(
                        "INSERT INTO scheduler_lease (name, holder, acquired_at, expires_at)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (name) DO UPDATE SET
                             holder = excluded.holder,
                             expires_at = excluded.expires_at,
                             acquired_at = CASE WHEN scheduler_lease.holder = excluded.holder
                                 THEN scheduler_lease.acquired_at ELSE excluded.acquired_at END
                         WHERE scheduler_lease.holder = excluded.holder
                             OR scheduler_lease.expires_at < excluded.acquired_at
                             OR scheduler_lease.holder = $5
                         RETURNING holder",
                        values,
                        |row| row.text(0),
                    )
                    .await
                })
            }))
            .await?
            .flatten();
        Ok(taken.as_deref() == Some(holder))
    }

    /// Gives the scheduler lease up, so that a standby takes over at once.
    pub async fn release_scheduler_lease(&self, holder: &str) -> Result<()> {
        let values = params![SCHEDULER_LEASE, holder];
        self.write(Box::new(move |tx| {
            Box::pin(async move {
                tx.execute(
                    "DELETE FROM scheduler_lease WHERE name = $1 AND holder = $2",
                    values,
                )
                .await?;
                Ok(())
            })
        }))
        .await
    }

    pub async fn scheduler_lease(&self) -> Result<Option<LeaseHolder>> {
        let row = sqlx::query("SELECT * FROM scheduler_lease WHERE name = $1")
            .bind(SCHEDULER_LEASE)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            let expires: String = row.try_get("expires_at")?;
            Ok(LeaseHolder {
                holder: row.try_get("holder")?,
                expires_at: parse_time("scheduler_lease.expires_at", &expires)?,
            })
        })
        .transpose()
    }
}

fn process_from_row(row: &sqlx::any::AnyRow) -> Result<ProcessRecord> {
    let started: String = row.try_get("started_at")?;
    let heartbeat: String = row.try_get("heartbeat_at")?;
    let lost: Option<String> = row.try_get("lost_at")?;
    let queues: Option<String> = row.try_get("queues")?;
    Ok(ProcessRecord {
        id: row.try_get("id")?,
        role: row.try_get("role")?,
        host: row.try_get("host")?,
        pid: row.try_get("pid")?,
        queues: queues
            .map(|q| q.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
        started_at: parse_time("orch_processes.started_at", &started)?,
        heartbeat_at: parse_time("orch_processes.heartbeat_at", &heartbeat)?,
        lost_at: lost
            .map(|s| parse_time("orch_processes.lost_at", &s))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("orch.db").display());
        (dir, Store::open(&url).await.expect("store"))
    }

    #[tokio::test]
    async fn one_holder_at_a_time_until_it_expires_or_is_proven_dead() {
        let (_dir, store) = store().await;
        let ttl = Duration::from_millis(300);
        assert!(store.take_scheduler_lease("a", ttl, None).await.expect("a"));
        assert!(!store.take_scheduler_lease("b", ttl, None).await.expect("b"));
        assert!(
            store
                .take_scheduler_lease("a", ttl, None)
                .await
                .expect("renew")
        );
        assert!(
            store
                .take_scheduler_lease("b", ttl, Some("a"))
                .await
                .expect("b"),
            "a holder proven dead is replaced at once"
        );
        assert!(!store.take_scheduler_lease("a", ttl, None).await.expect("a"));
        tokio::time::sleep(ttl * 2).await;
        assert!(
            store.take_scheduler_lease("a", ttl, None).await.expect("a"),
            "an expired lease is free"
        );
        store.release_scheduler_lease("a").await.expect("release");
        assert!(store.scheduler_lease().await.expect("read").is_none());
    }

    #[tokio::test]
    async fn a_process_declared_lost_cannot_heartbeat() {
        let (_dir, store) = store().await;
        store
            .register_process("p", "worker", "h", &["default".to_string()])
            .await
            .expect("register");
        assert!(store.heartbeat("p").await.expect("beat"));
        let long = Duration::from_secs(60);
        assert!(!store.declare_lost("p", long, false).await.expect("fresh"));
        assert!(store.declare_lost("p", long, true).await.expect("proven"));
        assert!(!store.heartbeat("p").await.expect("beat"), "lost");
        let listed = store.processes().await.expect("list");
        assert_eq!(listed[0].queues, ["default"]);
        assert!(listed[0].lost_at.is_some());
    }
}
