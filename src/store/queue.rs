//! The attempt queue: attempts the executor wrote `running` with a queue and a spec, claimed
//! by workers, reported back under a fencing token.
//!
//! A claim is one statement (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so that many workers
//! claim batches side by side without waiting on one another; SQLite serializes writers
//! anyway). Each claim increments the attempt's `claim_token`; a report is written only
//! with the current token, and declaring a worker lost increments it again, so the report of
//! a worker that lost its claim (a paused VM, a partition) changes nothing.

use chrono::Utc;
use sqlx::Row;

use super::write::{Param, RowRead, Sql, params};
use super::{Result, Store, StoreError, count, parse_time, timestamp};
use crate::database::Backend;

/// A worker's report of its attempt, written only while its claim holds.
const REPORT: &str = "UPDATE task_attempts SET report = $1, log_path = $2, log_tail = $3
     WHERE run_id = $4 AND task_id = $5 AND attempt = $6 AND worker = $7
         AND claim_token = $8 AND report IS NULL AND state = 'running'";

/// The channels PostgreSQL notifications travel on, so that idle workers and executors wait
/// for them rather than poll.
pub const QUEUED_CHANNEL: &str = "orch_attempt_queued";
pub const REPORTED_CHANNEL: &str = "orch_attempt_reported";

/// One attempt, by its key in the run history.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttemptKey {
    pub run_id: String,
    pub task_id: String,
    pub attempt: u32,
}

impl AttemptKey {
    fn of_row(row: &sqlx::any::AnyRow) -> Result<AttemptKey> {
        Ok(AttemptKey {
            run_id: row.try_get("run_id")?,
            task_id: row.try_get("task_id")?,
            attempt: count(row, "task_attempts.attempt", "attempt")?,
        })
    }
}

/// An attempt a worker claimed: what to run, and the token its report must carry.
#[derive(Debug, Clone)]
pub struct Claim {
    pub key: AttemptKey,
    pub token: i64,
    /// The queued spec, JSON.
    pub spec: String,
}

/// A running attempt as the executor waiting for it sees it.
#[derive(Debug, Clone)]
pub struct QueuedAttempt {
    pub key: AttemptKey,
    pub queue: String,
    /// The worker that claimed it, if any has.
    pub worker: Option<String>,
    pub token: i64,
    /// When it was queued, then when its worker claimed it.
    pub started_at: chrono::DateTime<Utc>,
    /// The worker's report, JSON, once written.
    pub report: Option<String>,
}

/// What a worker writes when its attempt ends.
#[derive(Debug, Clone)]
pub struct WorkerReport<'a> {
    /// The outcome, JSON.
    pub report: &'a str,
    /// Where the worker wrote the attempt's log, on its own disk.
    pub log_path: &'a str,
    /// The end of the log, for readers on other hosts.
    pub log_tail: &'a str,
}

impl Store {
    /// Claims up to `limit` queued attempts of `queues` for `worker`, by priority then age.
    /// Attempts in a pool are claimed one statement at a time, each only while the pool has
    /// room for its slots, so that no number of workers runs a pool past its size.
    pub async fn claim_attempts(
        &self,
        worker: &str,
        queues: &[String],
        limit: usize,
    ) -> Result<Vec<Claim>> {
        if queues.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let (mut claims, pooled_waiting) = self.claim(worker, queues, limit, false).await?;
        // Most claims find no pooled attempt waiting, and must not pay a write for one. The
        // claim on PostgreSQL says whether one waits; on SQLite a read does.
        let pooled_waiting = match pooled_waiting {
            Some(waiting) => waiting,
            None => claims.len() < limit && self.pooled_waiting(queues).await?,
        };
        if pooled_waiting {
            while claims.len() < limit {
                let (pooled, _) = self.claim(worker, queues, 1, true).await?;
                if pooled.is_empty() {
                    break;
                }
                claims.extend(pooled);
            }
        }
        Ok(claims)
    }

    /// Whether any attempt of `queues` waits for a pool.
    async fn pooled_waiting(&self, queues: &[String]) -> Result<bool> {
        let placeholders: Vec<String> = (1..=queues.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT COUNT(*) FROM task_attempts WHERE state = 'running' AND worker IS NULL
                 AND report IS NULL AND pool IS NOT NULL AND queue IN ({})",
            placeholders.join(", ")
        );
        // Audited: `sql` varies only in its count of `$N` placeholders.
        let mut query = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql));
        for queue in queues {
            query = query.bind(queue);
        }
        Ok(query.fetch_one(&self.pool).await? > 0)
    }

    /// One claim statement: of attempts outside any pool (up to `limit`), or of one pooled
    /// attempt whose pool has room. Pools not in `pools` have no limit. On PostgreSQL a claim
    /// outside pools also says whether a pooled attempt of `queues` waits (in the same
    /// statement: a round trip fewer per claim); elsewhere that is `None`, unknown.
    async fn claim(
        &self,
        worker: &str,
        queues: &[String],
        limit: usize,
        pooled: bool,
    ) -> Result<(Vec<Claim>, Option<bool>)> {
        let placeholders: Vec<String> = (0..queues.len()).map(|i| format!("${}", i + 4)).collect();
        let queue_list = placeholders.join(", ");
        let skip_locked = match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let pool_rule = if pooled {
            "AND a.pool IS NOT NULL
             AND a.pool_slots + (SELECT COALESCE(SUM(b.pool_slots), 0) FROM task_attempts b
                                 WHERE b.state = 'running' AND b.worker IS NOT NULL
                                     AND b.report IS NULL AND b.pool = a.pool)
                 <= COALESCE((SELECT p.slots FROM pools p WHERE p.name = a.pool), a.pool_slots)"
        } else {
            "AND a.pool IS NULL"
        };
        // The queue names are bound, never spliced: only their count shapes the statement.
        let update = format!(
            "UPDATE task_attempts SET worker = $1, claim_token = claim_token + 1, started_at = $2
             WHERE (run_id, task_id, attempt) IN (
                 SELECT a.run_id, a.task_id, a.attempt FROM task_attempts a
                 WHERE a.state = 'running' AND a.worker IS NULL AND a.report IS NULL
                     AND a.spec IS NOT NULL AND a.queue IN ({queue_list}) {pool_rule}
                 ORDER BY a.priority DESC, a.started_at LIMIT $3 {skip_locked})
             RETURNING run_id, task_id, attempt, claim_token, spec"
        );
        let tells_pooled = !pooled && self.backend == Backend::Postgres;
        let sql = if tells_pooled {
            // A row of nulls after the claimed ones says a pooled attempt waits.
            format!(
                "WITH claimed AS ({update})
                 SELECT run_id, task_id, attempt, claim_token, spec FROM claimed
                 UNION ALL
                 SELECT NULL, NULL, NULL, NULL, NULL WHERE EXISTS (
                     SELECT 1 FROM task_attempts
                     WHERE state = 'running' AND worker IS NULL AND report IS NULL
                         AND spec IS NOT NULL AND pool IS NOT NULL AND queue IN ({queue_list}))"
            )
        } else {
            update
        };
        // Audited: `sql` varies only in its count of `$N` placeholders and a fixed rule.
        let sql = Sql::audited(sql);
        let mut values = params![
            worker,
            timestamp::format(Utc::now()),
            i64::try_from(limit).unwrap_or(i64::MAX)
        ];
        values.extend(queues.iter().map(Param::from));
        // Two workers must not both see the same room in a pool: on PostgreSQL pooled claims
        // take turns; SQLite runs one writer at a time anyway.
        type Row = (
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<i64>,
            Option<String>,
        );
        let read: fn(&dyn RowRead) -> Result<Row> = |row| {
            Ok((
                row.text(0)?,
                row.text(1)?,
                row.int(2)?,
                row.int(3)?,
                row.text(4)?,
            ))
        };
        let rows = if pooled && self.backend == Backend::Postgres {
            self.write(Box::new(move |tx| {
                Box::pin(async move {
                    tx.execute("SELECT pg_advisory_xact_lock(7297400)", Vec::new())
                        .await?;
                    tx.fetch_all(sql, values, read).await
                })
            }))
            .await?
        } else {
            // One statement, a transaction of its own.
            self.write_one_returning(sql, values, read).await?
        };
        let pooled_waiting = tells_pooled.then(|| rows.iter().any(|row| row.0.is_none()));
        let claims = rows
            .into_iter()
            .filter_map(|(run_id, task_id, attempt, token, spec)| {
                Some((run_id?, task_id, attempt, token, spec))
            })
            .map(|(run_id, task_id, attempt, token, spec)| {
                let attempt = attempt.unwrap_or_default();
                Ok(Claim {
                    key: AttemptKey {
                        run_id,
                        task_id: task_id.unwrap_or_default(),
                        attempt: u32::try_from(attempt).map_err(|_| StoreError::Corrupt {
                            what: "task_attempts.attempt",
                            value: attempt.to_string(),
                        })?,
                    },
                    token: token.unwrap_or_default(),
                    spec: spec.unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<Claim>>>()?;
        Ok((claims, pooled_waiting))
    }

    /// Makes the pools table say what orch.yaml's `pools:` says.
    pub async fn sync_pools(&self, pools: &std::collections::BTreeMap<String, u32>) -> Result<()> {
        let pools: Vec<(String, i64)> = pools
            .iter()
            .map(|(name, slots)| (name.clone(), i64::from(*slots)))
            .collect();
        self.write(Box::new(move |tx| {
            Box::pin(async move {
                tx.execute("DELETE FROM pools", Vec::new()).await?;
                for (name, slots) in pools {
                    tx.execute(
                        "INSERT INTO pools (name, slots) VALUES ($1, $2)",
                        params![name, slots],
                    )
                    .await?;
                }
                Ok(())
            })
        }))
        .await
    }

    /// Writes a worker's report of its attempt, if its claim `token` is still current.
    /// Returns `false` when it is not: the attempt was failed as lost, and retried, meanwhile.
    pub async fn report_attempt(
        &self,
        key: &AttemptKey,
        worker: &str,
        token: i64,
        report: &WorkerReport<'_>,
    ) -> Result<bool> {
        let values = params![
            report.report,
            report.log_path,
            report.log_tail,
            &key.run_id,
            &key.task_id,
            i64::from(key.attempt),
            worker,
            token,
        ];
        match self.backend {
            Backend::Sqlite => Ok(self.write_one(REPORT, values).await? == 1),
            // One statement: the report, and the wake-up of executors elsewhere when it
            // was written.
            Backend::Postgres => {
                let sql = Sql::audited(format!(
                    "WITH written AS ({REPORT} RETURNING 1)
                     SELECT COUNT(*) FROM (SELECT pg_notify('{REPORTED_CHANNEL}', '') FROM written) n"
                ));
                let counts = self
                    .write_one_returning(sql, values, |row| row.int(0))
                    .await?;
                Ok(counts.first().copied().flatten() == Some(1))
            }
        }
    }

    /// Ends a claimed attempt with `report` on behalf of its lost worker, if the claim is
    /// still `token`; the token moves on, so the worker's own late report is refused.
    pub async fn report_lost_claim(
        &self,
        key: &AttemptKey,
        token: i64,
        report: &str,
    ) -> Result<bool> {
        let values = params![
            report,
            &key.run_id,
            &key.task_id,
            i64::from(key.attempt),
            token
        ];
        let written = self
            .write_one(
                "UPDATE task_attempts SET report = $1, claim_token = claim_token + 1
                 WHERE run_id = $2 AND task_id = $3 AND attempt = $4 AND claim_token = $5
                     AND report IS NULL AND state = 'running'",
                values,
            )
            .await?;
        Ok(written == 1)
    }

    /// Every queued attempt not yet recorded, with its claim and report; only those
    /// with a report when `reported_only`.
    pub async fn queued_attempts(&self, reported_only: bool) -> Result<Vec<QueuedAttempt>> {
        let sql = if reported_only {
            "SELECT run_id, task_id, attempt, queue, worker, claim_token, started_at, report FROM task_attempts
             WHERE state = 'running' AND queue IS NOT NULL AND report IS NOT NULL"
        } else {
            "SELECT run_id, task_id, attempt, queue, worker, claim_token, started_at, report FROM task_attempts
             WHERE state = 'running' AND queue IS NOT NULL"
        };
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let started: String = row.try_get("started_at")?;
                Ok(QueuedAttempt {
                    started_at: parse_time("task_attempts.started_at", &started)?,
                    key: AttemptKey::of_row(row)?,
                    queue: row.try_get("queue")?,
                    worker: row.try_get("worker")?,
                    token: row.try_get("claim_token")?,
                    report: row.try_get("report")?,
                })
            })
            .collect()
    }

    /// Where the attempt's log is, on its worker's disk.
    pub async fn attempt_log_path(&self, key: &AttemptKey) -> Result<Option<String>> {
        self.attempt_text(
            "SELECT log_path FROM task_attempts WHERE run_id = $1 AND task_id = $2 AND attempt = $3",
            key,
        )
        .await
    }

    /// The end of an attempt's log as its worker saved it in the database.
    pub async fn attempt_log_tail(&self, key: &AttemptKey) -> Result<Option<String>> {
        self.attempt_text(
            "SELECT log_tail FROM task_attempts WHERE run_id = $1 AND task_id = $2 AND attempt = $3",
            key,
        )
        .await
    }

    /// One text column of attempt `key`, read by `sql` (bound to the key's three parts).
    async fn attempt_text(&self, sql: &'static str, key: &AttemptKey) -> Result<Option<String>> {
        let text: Option<Option<String>> = sqlx::query_scalar(sql)
            .bind(&key.run_id)
            .bind(&key.task_id)
            .bind(i64::from(key.attempt))
            .fetch_optional(&self.pool)
            .await?;
        Ok(text.flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store_with_queued(queues: &[(&str, &str)]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("orch.db").display());
        let store = Store::open(&url).await.expect("store");
        let tasks: Vec<String> = queues.iter().map(|(t, _)| t.to_string()).collect();
        let run = crate::store::NewRun {
            run_id: "r".to_string(),
            dag_id: "d".to_string(),
            run_type: crate::store::RunType::Manual,
            logical_date: Utc::now(),
            data_interval_start: Utc::now(),
            data_interval_end: Utc::now(),
            conf: Default::default(),
            queued_at: Utc::now(),
        };
        store.insert_run(&run, &tasks).await.expect("run");
        for (task, queue) in queues {
            let started = crate::store::RunChange::AttemptStarted {
                task_id: task.to_string(),
                attempt: 1,
                started_at: Utc::now(),
                log_path: "log".to_string(),
                queued: Some(crate::store::QueuedAt {
                    queue: queue.to_string(),
                    spec: "{}".to_string(),
                    pool: None,
                    pool_slots: 1,
                    priority: 0,
                }),
                claimed_by: None,
            };
            store.record_run("r", vec![started]).await.expect("queue");
        }
        (dir, store)
    }

    fn report(text: &str) -> WorkerReport<'_> {
        WorkerReport {
            report: text,
            log_path: "log",
            log_tail: "",
        }
    }

    /// Each attempt goes to one worker, of its queue; a worker declared lost cannot report
    /// over the claim that replaced its own.
    #[tokio::test]
    async fn claims_are_exclusive_by_queue_and_fenced_by_their_token() {
        let (_dir, store) =
            store_with_queued(&[("a", "default"), ("b", "default"), ("c", "heavy")]).await;
        let default = vec!["default".to_string()];
        let first = store
            .claim_attempts("w1", &default, 1)
            .await
            .expect("claim");
        let second = store
            .claim_attempts("w2", &default, 5)
            .await
            .expect("claim");
        assert_eq!((first.len(), second.len()), (1, 1));
        assert_ne!(first[0].key, second[0].key);
        assert!(
            store
                .claim_attempts("w3", &default, 5)
                .await
                .expect("claim")
                .is_empty()
        );
        let heavy = store
            .claim_attempts("w3", &["heavy".to_string()], 5)
            .await
            .expect("claim");
        assert_eq!(heavy.len(), 1);
        assert_eq!(heavy[0].key.task_id, "c");

        let lost = &first[0];
        assert!(
            store
                .report_lost_claim(&lost.key, lost.token, "{\"lost\":1}")
                .await
                .expect("lost")
        );
        assert!(
            !store
                .report_attempt(&lost.key, "w1", lost.token, &report("{\"late\":1}"))
                .await
                .expect("late report"),
            "the lost worker's report is refused"
        );
        let kept = &second[0];
        assert!(
            !store
                .report_attempt(&kept.key, "w1", kept.token, &report("{}"))
                .await
                .expect("report"),
            "only the claiming worker reports"
        );
        assert!(
            store
                .report_attempt(&kept.key, "w2", kept.token, &report("{\"ok\":1}"))
                .await
                .expect("report")
        );
        let rows = store.queued_attempts(false).await.expect("rows");
        let of = |task: &str| {
            rows.iter()
                .find(|r| r.key.task_id == task)
                .and_then(|r| r.report.clone())
        };
        assert_eq!(of("a").as_deref(), Some("{\"lost\":1}"));
        assert_eq!(of("b").as_deref(), Some("{\"ok\":1}"));
        assert_eq!(of("c"), None);
    }
}
