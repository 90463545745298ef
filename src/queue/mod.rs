//! How attempts travel from the executor that decides them to the worker that runs them,
//! through the metadata database, on one machine or many.
//!
//! The executor writes an attempt `running` with its queue and a [`QueuedTask`]; a worker
//! serving that queue claims it ([`crate::store::Claim`], with a fencing token), runs it in a
//! child process and writes a [`Report`]; the executor waiting for it ([`Dispatch`]) records
//! the outcome and applies the task's retry policy. The executor stays the only writer of a
//! run's state; a worker writes only its claim's report.
//!
//! Wake-ups: processes wait on [`QUEUED`], [`REPORTED`] and [`CANCELLED`], which this process's writers
//! notify directly and, on PostgreSQL, `LISTEN/NOTIFY` relays from other processes
//! ([`relay_notifications`]). A wake-up that is missed costs at most [`POLL`]: idle processes
//! poll no more often than that.

mod dispatch;
mod handoff;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Notify;

use crate::attempt::{Limits, Outcome, Usage};
use crate::database::Backend;
use crate::store::timestamp;
use crate::tasks::{TaskError, TaskOutput};

pub use dispatch::{Dispatch, deliver_here};
pub use handoff::{HandedOver, Handoff, Slots, handoff};

/// The queue of tasks and DAGs that name none.
pub const DEFAULT_QUEUE: &str = "default";

/// Whether `name` may name a queue: `[a-z0-9_-]+`, at most 64 bytes (queues are listed
/// comma-separated).
pub fn is_queue_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// How long a process waits before looking at the queue again without a wake-up.
pub const POLL: Duration = Duration::from_secs(1);

/// The least time between two looks at the queue by one loop (a worker's claims, an
/// executor's reads of reports). A look after a quiet spell goes at once; under load, the
/// wake-ups of one gap share one statement, instead of each paying its own round trip (and
/// every worker its own, since a notification wakes them all).
pub const LOOK_GAP: Duration = Duration::from_millis(5);

/// Notified when an attempt is queued (in this process, or relayed from PostgreSQL).
pub static QUEUED: Notify = Notify::const_new();
/// Notified when a worker reported an attempt.
pub static REPORTED: Notify = Notify::const_new();
/// Notified when someone asked to cancel a run, or ended an attempt on its worker's behalf:
/// executors look for cancel requests of their runs, workers whether their claims still hold.
pub static CANCELLED: Notify = Notify::const_new();

/// One attempt as the executor queues it: what to run. Where (home, logs, data places, the
/// database) is the worker's own configuration, never carried in the queue, so no URL with a
/// password is written into the run history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuedTask {
    pub dag_id: String,
    pub kind: String,
    /// The rendered `with:`.
    pub with: Value,
    pub ds: String,
    pub params: Map<String, Value>,
    pub timeout: Option<Duration>,
    pub limits: Limits,
    /// The attempt log's first line ("attempt 2 of 3 of task `x` (shell)").
    pub banner: String,
}

/// How an attempt ended, as its worker reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub outcome: Outcome,
    pub usage: Usage,
    /// RFC 3339, as the run history writes times.
    pub started_at: String,
    pub ended_at: String,
    /// The end of the attempt's log, when the report is handed over in memory (a report in
    /// the database keeps it in a column of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
}

impl Report {
    pub fn new(
        result: &Result<TaskOutput, TaskError>,
        usage: Usage,
        started_at: DateTime<Utc>,
        ended_at: DateTime<Utc>,
    ) -> Report {
        Report {
            outcome: Outcome::from(result),
            usage,
            started_at: timestamp::format(started_at),
            ended_at: timestamp::format(ended_at),
            log_tail: None,
        }
    }

    /// A failure no worker reported (its worker was lost, the report was unreadable), of an
    /// attempt that started at `started_at`.
    pub fn failure(message: String, started_at: DateTime<Utc>) -> Report {
        Report {
            outcome: Outcome::Failed {
                message,
                retryable: true,
                skipped: false,
                reschedule_ms: None,
            },
            usage: Usage::default(),
            started_at: timestamp::format(started_at),
            ended_at: timestamp::format(Utc::now()),
            log_tail: None,
        }
    }

    pub fn result(&self) -> Result<TaskOutput, TaskError> {
        self.outcome.clone().into()
    }

    /// When the attempt started and ended; `fallback` for a time that does not read.
    pub fn times(&self, fallback: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let read = |s: &str| timestamp::parse(s).unwrap_or(fallback);
        (read(&self.started_at), read(&self.ended_at))
    }
}

/// How long a lost notification listener waits before connecting again.
const RELISTEN: crate::backoff::Backoff =
    crate::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));

/// The relay of each database this process listens to, by URL.
static RELAYS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, tokio::task::JoinHandle<()>>>,
> = std::sync::LazyLock::new(Default::default);

/// Relays PostgreSQL notifications of the database at `url` on the queue's channels to
/// [`QUEUED`], [`REPORTED`] and [`CANCELLED`] for as long as the process runs; on SQLite,
/// whose writers share this machine, there is nothing to relay.
///
/// One connection per process listens on all three channels. PostgreSQL signals every
/// listening connection of a database at each notification, whatever its channel, so each
/// connection more would cost the server a wake-up per notification.
pub fn relay_notifications(url: &str) {
    if Backend::of_url(url) != Some(Backend::Postgres) {
        return;
    }
    let mut relays = RELAYS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // A relay ends only with the runtime that ran it.
    if relays.get(url).is_some_and(|relay| !relay.is_finished()) {
        return;
    }
    relays.insert(url.to_string(), tokio::spawn(relay(url.to_string())));
}

async fn relay(url: String) {
    let routes: [(&str, &Notify); 3] = [
        (crate::store::QUEUED_CHANNEL, &QUEUED),
        (crate::store::REPORTED_CHANNEL, &REPORTED),
        (crate::store::CANCEL_CHANNEL, &CANCELLED),
    ];
    let channels: Vec<&str> = routes.iter().map(|(channel, _)| *channel).collect();
    let mut failures = 0;
    loop {
        match sqlx::postgres::PgListener::connect(&url).await {
            Ok(mut listener) => match listener.listen_all(channels.iter().copied()).await {
                Ok(()) => {
                    failures = 0;
                    // Whatever was sent while not listening is looked for now.
                    routes
                        .iter()
                        .for_each(|(_, notify)| notify.notify_waiters());
                    while let Ok(notification) = listener.recv().await {
                        routes
                            .iter()
                            .filter(|(channel, _)| *channel == notification.channel())
                            .for_each(|(_, notify)| notify.notify_waiters());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot listen for wake-ups"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot listen for wake-ups"),
        }
        failures += 1;
        tokio::time::sleep(RELISTEN.delay(failures)).await;
    }
}
