//! Keeps every stream of the DAGs folder running inside `orch serve`.
//!
//! Each stream runs in its own task: its ingest loop plus a reporter that saves its figures to
//! the metadata database once a second, for `orch streams`. A stream whose loop fails (the
//! staging store unreachable, a symbol the exchange does not list) is restarted with
//! exponential backoff. [`Supervisor::sync`] applies the folder's current definitions: new
//! streams start, changed ones restart, removed ones stop; each stop commits the pending batch.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::StreamDef;
use super::ingest::{self, IngestPlaces, SharedStats};
use super::stats::{StreamState, StreamStats};
use crate::backoff::Backoff;
use crate::store::Store;

/// A failed stream restarts after 1 s, 2 s, ... up to 5 minutes.
const RESTART: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
/// How often a running stream's report is saved.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

struct Running {
    def: StreamDef,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The streams this process runs.
pub struct Supervisor {
    places: Arc<IngestPlaces>,
    store: Store,
    owner: String,
    running: BTreeMap<String, Running>,
}

impl Supervisor {
    pub fn new(places: IngestPlaces, store: Store, owner: &str) -> Supervisor {
        Supervisor {
            places: Arc::new(places),
            store,
            owner: owner.to_string(),
            running: BTreeMap::new(),
        }
    }

    /// Makes the running streams match `defs`.
    pub async fn sync(&mut self, defs: Vec<StreamDef>) {
        let wanted: BTreeMap<String, StreamDef> =
            defs.into_iter().map(|d| (d.id.clone(), d)).collect();
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(id, r)| wanted.get(*id) != Some(&r.def))
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some(running) = self.running.remove(&id) {
                let why = if wanted.contains_key(&id) {
                    "its definition changed"
                } else {
                    "its file is gone"
                };
                tracing::info!(stream = %id, "stopping stream: {why}");
                stop(running).await;
            }
        }
        for (id, def) in wanted {
            if self.running.contains_key(&id) {
                continue;
            }
            tracing::info!(stream = %id, path = %def.path.display(), "starting stream");
            let (stop_tx, stop_rx) = watch::channel(false);
            let task = tokio::spawn(supervise(
                def.clone(),
                Arc::clone(&self.places),
                self.store.clone(),
                self.owner.clone(),
                stop_rx,
            ));
            self.running.insert(
                id,
                Running {
                    def,
                    stop: stop_tx,
                    task,
                },
            );
        }
    }

    /// Stops every stream, each committing its pending batch.
    pub async fn stop_all(&mut self) {
        let running = std::mem::take(&mut self.running);
        futures_util::future::join_all(running.into_values().map(stop)).await;
    }
}

async fn stop(running: Running) {
    let _ = running.stop.send(true);
    if let Err(e) = running.task.await {
        tracing::error!(stream = %running.def.id, error = %e, "stream task ended abnormally");
    }
}

/// Runs one stream until `stop`, restarting it with backoff when it fails, and saves its
/// report every [`REPORT_EVERY`].
async fn supervise(
    def: StreamDef,
    places: Arc<IngestPlaces>,
    store: Store,
    owner: String,
    mut stop: watch::Receiver<bool>,
) {
    let stats: SharedStats = Arc::new(Mutex::new(StreamStats::default()));
    let mut failures = 0;
    loop {
        let result = run_reported(&def, &places, &store, &owner, &stats, stop.clone()).await;
        if *stop.borrow() {
            break;
        }
        match result {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::error!(stream = %def.id, error = %e, retry_in = ?RESTART.delay(failures), "stream failed; restarting");
                ingest::lock(&stats).state = StreamState::Reconnecting;
                save(&store, &def.id, &owner, &stats).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RESTART.delay(failures)) => {}
            _ = stop.changed() => break,
        }
    }
    ingest::lock(&stats).state = StreamState::Stopped;
    save(&store, &def.id, &owner, &stats).await;
}

/// Runs `def` once, until `stop` or a failure, saving its report every [`REPORT_EVERY`] and
/// when it ends; `orch serve` and `orch stream run` both run streams this way.
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
