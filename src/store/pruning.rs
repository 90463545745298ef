//! Pruning the run history: finished runs past a retention policy go, with their tasks,
//! attempts and manual actions. Queued and running runs stay, and so does each DAG's newest
//! scheduled run, whose interval is where the schedule goes on from: without it, a DAG with
//! catchup would run its whole history again.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::write::{Param, Sql};
use super::{Result, Store, timestamp};

/// How much history to keep; a run goes when it breaks either rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionPolicy {
    /// Finished runs queued before this time go.
    pub before: Option<DateTime<Utc>>,
    /// Only the newest this many finished runs of each DAG stay.
    pub runs_per_dag: Option<u32>,
}

/// A run the policy prunes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunedRun {
    pub run_id: String,
    pub dag_id: String,
}

/// Runs deleted per transaction: a long prune never holds the write lock for long.
const BATCH: usize = 500;

impl Store {
    /// The runs `policy` prunes, oldest first.
    pub async fn runs_to_prune(&self, policy: &RetentionPolicy) -> Result<Vec<PrunedRun>> {
        if policy.before.is_none() && policy.runs_per_dag.is_none() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT run_id, dag_id FROM (
                 SELECT run_id, dag_id, state, run_type, queued_at,
                     ROW_NUMBER() OVER (PARTITION BY dag_id ORDER BY queued_at DESC, run_id DESC) AS newest,
                     ROW_NUMBER() OVER (PARTITION BY dag_id, run_type
                                        ORDER BY data_interval_end DESC, run_id DESC) AS newest_of_type
                 FROM dag_runs) r
             WHERE state IN ('success', 'failed', 'skipped')
               AND NOT (run_type = 'scheduled' AND newest_of_type = 1)
               AND ((CAST($1 AS TEXT) IS NOT NULL AND queued_at < $1) OR ($2 > 0 AND newest > $2))
             ORDER BY queued_at, run_id",
        )
        .bind(policy.before.map(timestamp::format))
        .bind(i64::from(policy.runs_per_dag.unwrap_or(0)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(PrunedRun {
                    run_id: row.try_get("run_id")?,
                    dag_id: row.try_get("dag_id")?,
                })
            })
            .collect()
    }

    /// Deletes `runs` with their task instances, attempts and manual actions, a batch per
    /// transaction; returns how many runs went.
    pub async fn delete_runs(&self, runs: &[PrunedRun]) -> Result<u64> {
        let mut deleted = 0;
        for batch in runs.chunks(BATCH) {
            let placeholders: Vec<String> = (1..=batch.len()).map(|i| format!("${i}")).collect();
            let list = placeholders.join(", ");
            let ids: Vec<Param> = batch.iter().map(|run| Param::from(&run.run_id)).collect();
            deleted += self
                .write(Box::new(move |tx| {
                    Box::pin(async move {
                        for table in ["task_attempts", "task_instances", "manual_actions"] {
                            // Only the rows of runs still finished: one queued again meanwhile
                            // keeps its. Audited: the table is one of three names above; the
                            // list is placeholders.
                            let sql = format!(
                                "DELETE FROM {table} WHERE run_id IN (SELECT run_id FROM dag_runs
                                     WHERE run_id IN ({list}) AND state IN ('success', 'failed', 'skipped'))"
                            );
                            tx.execute(Sql::audited(sql), ids.clone()).await?;
                        }
                        // Only finished runs: one that was queued again meanwhile stays.
                        let sql = format!(
                            "DELETE FROM dag_runs WHERE run_id IN ({list}) AND state IN ('success', 'failed', 'skipped')"
                        );
                        tx.execute(Sql::audited(sql), ids).await
                    })
                }))
                .await?;
        }
        Ok(deleted)
    }
}
