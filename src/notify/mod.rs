//! Alerts: what a DAG file asks to be told when a run or a task fails, succeeds or retries
//! (`on_failure`, `on_success`, `on_retry`), or a run misses its SLA (`on_sla_miss`), and the
//! notifiers that tell it: a `webhook` (JSON POST, or a Slack-compatible body), an `email`
//! (SMTP over TLS) or a `command` (the event in its environment).
//!
//! A notifier that fails is tried again a few times, then logged; it never changes the run.
//! Event values reach a command only through environment variables, never its text.

mod command;
mod email;
mod webhook;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;

/// The notifiers of one DAG or task, by event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Callbacks {
    pub on_failure: Vec<Notifier>,
    pub on_success: Vec<Notifier>,
    pub on_retry: Vec<Notifier>,
    /// A run not finished `sla` after its data interval ended (DAG level only).
    pub on_sla_miss: Vec<Notifier>,
}

impl Callbacks {
    pub fn for_event(&self, kind: EventKind) -> &[Notifier] {
        match kind {
            EventKind::TaskFailed | EventKind::RunFailed => &self.on_failure,
            EventKind::TaskSucceeded | EventKind::RunSucceeded => &self.on_success,
            EventKind::TaskRetry => &self.on_retry,
            EventKind::SlaMissed => &self.on_sla_miss,
        }
    }
}

/// One way to tell, as a DAG file writes it: `- webhook: {...}`, `- email: {...}` or
/// `- command: "..."`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Notifier {
    Webhook(webhook::Webhook),
    Email(email::Email),
    /// A shell command, run with `sh -c`; the event is in `ORCH_EVENT_*` variables.
    Command(String),
}

impl Notifier {
    /// Checks what the file says, when it loads.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Notifier::Webhook(w) => w.check(),
            Notifier::Email(e) => e.check(),
            Notifier::Command(c) if c.trim().is_empty() => {
                Err("a `command` notifier needs a command".to_string())
            }
            Notifier::Command(_) => Ok(()),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Notifier::Webhook(_) => "webhook",
            Notifier::Email(_) => "email",
            Notifier::Command(_) => "command",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    TaskFailed,
    TaskRetry,
    TaskSucceeded,
    RunFailed,
    RunSucceeded,
    SlaMissed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::TaskFailed => "task_failed",
            EventKind::TaskRetry => "task_retry",
            EventKind::TaskSucceeded => "task_succeeded",
            EventKind::RunFailed => "run_failed",
            EventKind::RunSucceeded => "run_succeeded",
            EventKind::SlaMissed => "sla_missed",
        }
    }
}

/// What happened, as every notifier tells it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub event: EventKind,
    pub dag_id: String,
    pub run_id: String,
    pub logical_date: String,
    pub task_id: Option<String>,
    pub attempt: Option<u32>,
    /// The run's or the task's state after the event.
    pub state: String,
    pub error: Option<String>,
    /// The end of the attempt's log, secrets masked.
    pub log_tail: Option<String>,
    /// The run's page in the web UI, when orch knows where it is served.
    pub link: Option<String>,
}

impl Event {
    /// One line for people: "task `load` of `daily` failed (attempt 2): ...".
    pub fn summary(&self) -> String {
        let what = match &self.task_id {
            Some(task) => format!("task `{task}` of run `{}`", self.run_id),
            None => format!("run `{}`", self.run_id),
        };
        let verb = match self.event {
            EventKind::TaskFailed | EventKind::RunFailed => "failed",
            EventKind::TaskRetry => "failed and will be retried",
            EventKind::TaskSucceeded | EventKind::RunSucceeded => "succeeded",
            EventKind::SlaMissed => "has not finished within its SLA",
        };
        let attempt = self
            .attempt
            .map(|a| format!(" (attempt {a})"))
            .unwrap_or_default();
        let error = self
            .error
            .as_deref()
            .map(|e| format!(": {}", e.lines().last().unwrap_or(e)))
            .unwrap_or_default();
        let link = self
            .link
            .as_deref()
            .map(|l| format!(" {l}"))
            .unwrap_or_default();
        format!(
            "orch: {what} of DAG `{}` {verb}{attempt}{error}{link}",
            self.dag_id
        )
    }
}

/// Tries per notifier before it is given up (logged).
const TRIES: u32 = 3;
const RETRY: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));

/// Tells every notifier of `notifiers` about `event`, each tried [`TRIES`] times; failures
/// are logged and never returned: an alert must not change what it reports.
pub async fn deliver(notifiers: &[Notifier], event: &Event) {
    for notifier in notifiers {
        let mut tries = 0;
        loop {
            tries += 1;
            let outcome = match notifier {
                Notifier::Webhook(w) => w.send(event).await,
                Notifier::Email(e) => e.send(event).await,
                Notifier::Command(c) => command::run(c, event).await,
            };
            match outcome {
                Ok(()) => {
                    tracing::info!(notifier = notifier.name(), event = event.event.as_str(), run_id = %event.run_id, task_id = event.task_id.as_deref().unwrap_or(""), "alert sent");
                    break;
                }
                Err(e) if tries < TRIES => {
                    tracing::warn!(notifier = notifier.name(), error = %e, tries, "alert not sent; trying again");
                    tokio::time::sleep(RETRY.delay(tries)).await;
                }
                Err(e) => {
                    tracing::error!(notifier = notifier.name(), event = event.event.as_str(), run_id = %event.run_id, error = %e, "alert not sent; giving up");
                    break;
                }
            }
        }
    }
}
