//! Keeping the run history and the logs from growing for ever: `retention:` in orch.yaml,
//! applied by `orch serve` once a day and by `orch db prune`.

use std::path::Path;

use chrono::Utc;

use crate::config::Retention;
use crate::store::{PrunedRun, RetentionPolicy, Store, StoreError};

/// What a prune did, or would do.
#[derive(Debug, Default)]
pub struct Pruned {
    /// The runs that go (or went), oldest first.
    pub runs: Vec<PrunedRun>,
    /// Runs deleted; 0 on a dry run.
    pub deleted: u64,
    /// Log folders removed.
    pub log_folders: u64,
}

/// How often `orch serve` prunes.
const EVERY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Prunes now and then once a day, for as long as the server runs.
pub async fn every_day(store: Store, logs_dir: std::path::PathBuf, retention: Retention) {
    let mut ticks = tokio::time::interval(EVERY);
    loop {
        ticks.tick().await;
        match prune(&store, &logs_dir, &retention, false).await {
            Ok(pruned) if pruned.deleted > 0 => tracing::info!(
                runs = pruned.deleted,
                log_folders = pruned.log_folders,
                days = retention.days,
                runs_per_dag = retention.runs_per_dag,
                "retention: pruned the run history"
            ),
            Ok(_) => tracing::debug!("retention: nothing to prune"),
            Err(e) => {
                tracing::warn!(error = %e, "retention: cannot prune the run history; trying again tomorrow")
            }
        }
    }
}

/// Applies `retention` to the run history in `store` and the logs under `logs_dir`; with
/// `dry_run`, only says what would go.
pub async fn prune(
    store: &Store,
    logs_dir: &Path,
    retention: &Retention,
    dry_run: bool,
) -> Result<Pruned, StoreError> {
    let policy = RetentionPolicy {
        // A cutoff before the earliest time there is (a `days` the configuration did not
        // check) prunes nothing by age.
        before: retention.days.and_then(|days| {
            Utc::now().checked_sub_signed(chrono::Duration::try_days(i64::from(days))?)
        }),
        runs_per_dag: retention.runs_per_dag,
    };
    let runs = store.runs_to_prune(&policy).await?;
    if dry_run || runs.is_empty() {
        return Ok(Pruned {
            runs,
            ..Pruned::default()
        });
    }
    let deleted = store.delete_runs(&runs).await?;
    let mut log_folders = 0;
    for run in &runs {
        // `logs/<dag>/<run_id>/`: run ids and DAG ids hold no `/`, so this stays inside.
        let folder = logs_dir.join(&run.dag_id).join(&run.run_id);
        if folder.starts_with(logs_dir) && std::fs::remove_dir_all(&folder).is_ok() {
            log_folders += 1;
        }
    }
    Ok(Pruned {
        runs,
        deleted,
        log_folders,
    })
}
