//! The YAML shape of a DAG file, as written by users. Unknown keys are errors, and values that
//! later checks may reject carry their source location.

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{RetryBackoff, TriggerRule};
use crate::notify::Notifier;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DagSpec {
    pub id: Option<Spanned<String>>,
    pub description: Option<String>,
    pub schedule: Option<Spanned<String>>,
    pub timezone: Option<Spanned<String>>,
    pub start_date: Option<Spanned<String>>,
    #[serde(default)]
    pub catchup: bool,
    pub max_active_runs: Option<Spanned<u32>>,
    pub max_active_tasks: Option<Spanned<u32>>,
    /// Runs of the DAG queued or running past which a trigger is refused for now (429).
    pub max_pending_runs: Option<Spanned<u32>>,
    /// How long a run may take before it is stopped and fails.
    pub dagrun_timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub paused: bool,
    /// Each a default, or a declaration with a `type` ([`super::params`]).
    #[serde(default)]
    pub params: std::collections::BTreeMap<String, Spanned<serde_json::Value>>,
    /// The queue of the DAG's tasks that name none.
    pub queue: Option<Spanned<String>>,
    #[serde(default)]
    pub defaults: TaskPolicySpec,
    /// Told when a run fails.
    pub on_failure: Option<Spanned<Vec<Notifier>>>,
    /// Told when a run succeeds.
    pub on_success: Option<Spanned<Vec<Notifier>>>,
    /// Told when any task fails and will be retried.
    pub on_retry: Option<Spanned<Vec<Notifier>>>,
    /// How long after its data interval ends a run should be finished.
    pub sla: Option<Spanned<String>>,
    /// Told when a run misses its `sla`.
    pub on_sla_miss: Option<Spanned<Vec<Notifier>>>,
    pub tasks: Spanned<Vec<TaskSpec>>,
}

/// Settings a task inherits from the DAG's `defaults` and may override.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskPolicySpec {
    pub retries: Option<u32>,
    pub retry_delay: Option<Spanned<String>>,
    pub retry_backoff: Option<RetryBackoff>,
    pub max_retry_delay: Option<Spanned<String>>,
    pub retry_jitter: Option<Spanned<f64>>,
    pub timeout: Option<Spanned<String>>,
    pub trigger_rule: Option<TriggerRule>,
    pub limits: Option<LimitsSpec>,
    pub depends_on_past: Option<bool>,
}

/// `limits:` of a task or of the defaults; a task's keys override the defaults' one by one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// A size: `2GiB`, `512MiB`, `1GB`.
    pub memory: Option<Spanned<String>>,
    pub cpu_seconds: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub id: Spanned<String>,
    pub kind: Spanned<String>,
    #[serde(default)]
    pub depends_on: Vec<Spanned<String>>,
    pub retries: Option<u32>,
    pub retry_delay: Option<Spanned<String>>,
    pub retry_backoff: Option<RetryBackoff>,
    pub max_retry_delay: Option<Spanned<String>>,
    pub retry_jitter: Option<Spanned<f64>>,
    pub timeout: Option<Spanned<String>>,
    pub trigger_rule: Option<TriggerRule>,
    pub limits: Option<LimitsSpec>,
    /// Wait until this task succeeded in the DAG's previous run.
    pub depends_on_past: Option<bool>,
    /// The workers that may run it: those serving this queue.
    pub queue: Option<Spanned<String>>,
    /// A pool of orch.yaml's `pools:` whose slots its attempts take.
    pub pool: Option<Spanned<String>>,
    pub pool_slots: Option<Spanned<u32>>,
    pub priority: Option<i32>,
    pub with: Option<Spanned<serde_json::Value>>,
    /// Run one instance of the task per item: a list, or a template giving one.
    pub for_each: Option<Spanned<serde_json::Value>>,
    pub on_failure: Option<Spanned<Vec<Notifier>>>,
    pub on_success: Option<Spanned<Vec<Notifier>>>,
    pub on_retry: Option<Spanned<Vec<Notifier>>>,
}
