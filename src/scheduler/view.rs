//! What a scheduler shows the web face: the DAGs it loaded, the files that failed, when each
//! DAG runs next, and its own pulse. Published after every pass through a `watch`, so pages
//! read it without touching the DAG folder or asking the database per DAG.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::dag::{Dag, LoadError};

#[derive(Debug, Default)]
pub struct SchedulerView {
    /// The loaded DAGs, by id.
    pub dags: Vec<Arc<Dag>>,
    /// The DAG files that failed to load, each with its problems.
    pub errors: Vec<LoadError>,
    /// When each scheduled, unpaused DAG's next run comes due (known to the leader only).
    pub next_runs: HashMap<String, DateTime<Utc>>,
    /// When the last scheduling pass ended, or the server started; `None` before it started.
    pub last_pass_at: Option<DateTime<Utc>>,
    /// How late the loop woke for its last timed wake-up.
    pub loop_lag: Duration,
    /// Whether this server holds the scheduler lease.
    pub leader: bool,
    /// Runs queued or running as of the last pass (known to the leader only).
    pub pending_runs: Option<u64>,
}

impl SchedulerView {
    pub fn dag(&self, dag_id: &str) -> Option<&Arc<Dag>> {
        self.dags
            .binary_search_by(|d| d.id.as_str().cmp(dag_id))
            .ok()
            .map(|i| &self.dags[i])
    }
}

/// Where a scheduler publishes its view; receivers always see the latest.
pub type ViewSender = watch::Sender<Arc<SchedulerView>>;
pub type ViewReceiver = watch::Receiver<Arc<SchedulerView>>;

/// A channel holding an empty view until the scheduler publishes.
pub fn channel() -> (ViewSender, ViewReceiver) {
    watch::channel(Arc::default())
}
