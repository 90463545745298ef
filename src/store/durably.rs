//! Riding out a metadata database that is briefly unavailable.

use std::time::Duration;

use super::StoreError;
use crate::backoff::Backoff;

/// How long a metadata read or write is tried again before the caller gives up (a run is
/// handed back for adoption, a worker's report left to the lost-worker check): a minute of
/// "database is locked", a full disk or a PostgreSQL failover must not strand a run.
const RETRY_FOR: Duration = Duration::from_secs(60);
const RETRY: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));

/// Runs `op` again while it fails with a transient error, for up to a minute. Callers pass
/// only idempotent operations, so a retried write that had committed changes nothing.
pub async fn durably<T, F, Fut>(mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let started = std::time::Instant::now();
    let mut failures = 0;
    loop {
        match op().await {
            Err(e) if e.is_transient() && started.elapsed() < RETRY_FOR => {
                failures += 1;
                let wait = RETRY.delay(failures);
                tracing::warn!(error = %e, ?wait, "metadata database unavailable; trying again");
                tokio::time::sleep(wait).await;
            }
            result => return result,
        }
    }
}
