//! Records of the run history and the states they move through.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use super::timestamp::serde_format;

/// Declares a state enum stored as snake_case text.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(s: &str) -> Option<$name> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

text_enum!(
    /// How a run came to be.
    RunType { Scheduled => "scheduled", Manual => "manual", Backfill => "backfill" }
);

text_enum!(
    RunState {
        Queued => "queued",
        Running => "running",
        Success => "success",
        Failed => "failed",
        /// Never ran: its interval came due while the DAG had `max_active_runs` runs and
        /// catchup is off, so it was dropped (the run's note says so).
        Skipped => "skipped",
    }
);

text_enum!(
    /// The state of one task in one run.
    TaskState {
        /// Waiting for its upstream tasks.
        Scheduled => "scheduled",
        /// Ready, waiting for a free worker slot.
        Queued => "queued",
        Running => "running",
        Success => "success",
        Failed => "failed",
        /// Failed, with another attempt due at `next_retry_at`.
        UpForRetry => "up_for_retry",
        /// Will not run because an upstream failed.
        UpstreamFailed => "upstream_failed",
        /// Will not run because its trigger rule cannot be met (e.g. `one_failed` and none did).
        Skipped => "skipped",
    }
);

text_enum!(
    AttemptState { Running => "running", Success => "success", Failed => "failed" }
);

impl RunState {
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            RunState::Success | RunState::Failed | RunState::Skipped
        )
    }
}

impl TaskState {
    /// A state the task will not leave in this run.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskState::Success | TaskState::Failed | TaskState::UpstreamFailed | TaskState::Skipped
        )
    }
}

/// A DAG run as `orch runs show --json` prints it (without its tasks).
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub run_id: String,
    pub dag_id: String,
    pub state: RunState,
    pub run_type: RunType,
    #[serde(serialize_with = "serde_format::required")]
    pub logical_date: DateTime<Utc>,
    #[serde(serialize_with = "serde_format::required")]
    pub data_interval_start: DateTime<Utc>,
    #[serde(serialize_with = "serde_format::required")]
    pub data_interval_end: DateTime<Utc>,
    pub conf: Map<String, Value>,
    #[serde(serialize_with = "serde_format::required")]
    pub queued_at: DateTime<Utc>,
    #[serde(serialize_with = "serde_format::optional")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "serde_format::optional")]
    pub ended_at: Option<DateTime<Utc>>,
    /// Why the run ended as it did when no task says so (skipped, refused on resume).
    pub note: Option<String>,
    #[serde(skip)]
    pub owner: Option<String>,
    #[serde(skip)]
    pub dag_source: Option<String>,
    #[serde(skip)]
    pub dag_path: Option<String>,
    /// Set when someone asked to cancel the run while it ran: who, from where.
    #[serde(skip)]
    pub cancel_requested: Option<String>,
}

/// A run about to be created.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub run_id: String,
    pub dag_id: String,
    pub run_type: RunType,
    pub logical_date: DateTime<Utc>,
    pub data_interval_start: DateTime<Utc>,
    pub data_interval_end: DateTime<Utc>,
    pub conf: Map<String, Value>,
    pub queued_at: DateTime<Utc>,
}

impl NewRun {
    /// Refuses times the run history cannot hold and read back (after 9999-12-31).
    pub fn check_storable(&self) -> Result<(), super::StoreError> {
        for (what, t) in [
            ("logical date", self.logical_date),
            ("data interval start", self.data_interval_start),
            ("data interval end", self.data_interval_end),
        ] {
            if !super::timestamp::is_storable(t) {
                return Err(super::StoreError::OutOfRange {
                    what,
                    value: t.to_rfc3339(),
                });
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct TaskInstanceRecord {
    pub task_id: String,
    pub state: TaskState,
    /// Attempts started so far.
    pub try_number: u32,
    /// Attempts made before the run was last queued again; retries count from there.
    pub attempt_base: u32,
    pub next_retry_at: Option<DateTime<Utc>>,
    /// For an instance of a mapped task (`TASK[i]`): `i`, and the item it runs for.
    pub map_index: Option<u32>,
    pub map_item: Option<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    #[serde(skip)]
    pub task_id: String,
    pub attempt: u32,
    pub state: AttemptState,
    #[serde(serialize_with = "serde_format::required")]
    pub started_at: DateTime<Utc>,
    #[serde(serialize_with = "serde_format::optional")]
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
    pub rows: Option<i64>,
    /// The task's further figures, such as rows written per table.
    pub metrics: Option<Value>,
    pub error: Option<String>,
    pub log_path: String,
    /// The attempt process's peak resident memory, bytes.
    pub peak_rss_bytes: Option<i64>,
    /// The attempt process's CPU time, user and system, milliseconds.
    pub cpu_ms: Option<i64>,
    /// What it published for downstream tasks.
    pub outputs: Option<Value>,
    /// The queue it waited in for a worker.
    pub queue: Option<String>,
    /// The process that ran it (its lease id: `PID-NANOS@HOST:DIR`).
    pub worker: Option<String>,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub struct AttemptEnd {
    pub state: AttemptState,
    /// When it really started: when a worker claimed it.
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub duration_ms: i64,
    pub rows: Option<i64>,
    /// A JSON object.
    pub metrics: Option<String>,
    /// A JSON object: the attempt's published outputs.
    pub outputs: Option<String>,
    pub error: Option<String>,
    /// From the attempt process's rusage; `None` when it ran in orch's own process.
    pub peak_rss_bytes: Option<i64>,
    pub cpu_ms: Option<i64>,
}

/// A live stream's latest report, as saved by the process running it.
#[derive(Debug, Clone)]
pub struct StreamStateRecord {
    pub stream_id: String,
    /// The lease id of the process running it.
    pub owner: String,
    pub state: String,
    /// The report as JSON (`stream::stats::StreamReport`).
    pub report: String,
    pub updated_at: DateTime<Utc>,
}
