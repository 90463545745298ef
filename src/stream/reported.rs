//! Running one stream in this process (`orch stream run`), with its report saved to the
//! metadata database once a second for `orch streams`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::StreamDef;
use super::ingest::{self, IngestPlaces, SharedStats};
use crate::store::Store;

/// How often a running stream's report is saved.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Runs `def` once, until `stop` or a failure, saving its report every [`REPORT_EVERY`] and
/// when it ends.
pub async fn run_reported(
    def: &StreamDef,
    places: &IngestPlaces,
    store: &Store,
    owner: &str,
    stats: &SharedStats,
    stop: watch::Receiver<bool>,
) -> Result<(), ingest::IngestError> {
    let run = ingest::run(def, places, Arc::clone(stats), stop);
    tokio::pin!(run);
    let mut report = tokio::time::interval(REPORT_EVERY);
    let result = loop {
        tokio::select! {
            result = &mut run => break result,
            _ = report.tick() => save(store, &def.id, owner, stats).await,
        }
    };
    save(store, &def.id, owner, stats).await;
    result
}

/// Saves the stream's current report for `orch streams`.
async fn save(store: &Store, stream_id: &str, owner: &str, stats: &SharedStats) {
    let report = ingest::lock(stats).report(chrono::Utc::now().timestamp_millis());
    let json = serde_json::to_string(&report).unwrap_or_default();
    if let Err(e) = store
        .save_stream_report(stream_id, owner, report.state.as_str(), &json)
        .await
    {
        tracing::warn!(stream = %stream_id, error = %e, "cannot save the stream's report");
    }
}
