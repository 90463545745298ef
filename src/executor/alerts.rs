//! A run's alerts: the notifiers of a task's or the run's event, sent beside the run, with
//! the end of the attempt's log; a run's end waits for them a while.

use std::time::Duration;

use super::{RunLoop, ceil_char_boundary};
use crate::notify::{Event, EventKind, Notifier};
use crate::store::AttemptKey;

impl RunLoop<'_> {
    /// Sends the alerts `kind` calls for, beside the run: the task's notifiers (and the DAG's
    /// `on_retry` for a retry), or the DAG's for the run's own end.
    pub(super) async fn alert(
        &mut self,
        kind: EventKind,
        task: Option<(usize, u32)>,
        state: &str,
        error: Option<String>,
    ) {
        self.send_alert(kind, task, state, error, None).await;
    }

    /// The alerts of an attempt's end, with the end of its log when it came with the report.
    pub(super) async fn alert_attempt(
        &mut self,
        kind: EventKind,
        task: (usize, u32),
        state: &str,
        error: Option<String>,
        log_tail: Option<String>,
    ) {
        self.send_alert(kind, Some(task), state, error, log_tail)
            .await;
    }

    async fn send_alert(
        &mut self,
        kind: EventKind,
        task: Option<(usize, u32)>,
        state: &str,
        error: Option<String>,
        known_tail: Option<String>,
    ) {
        let mut notifiers: Vec<Notifier> = Vec::new();
        match task {
            Some((i, _)) => {
                notifiers.extend_from_slice(
                    self.dag.tasks[self.slots[i].task].callbacks.for_event(kind),
                );
                if kind == EventKind::TaskRetry {
                    notifiers.extend_from_slice(&self.dag.callbacks.on_retry);
                }
            }
            None => notifiers.extend_from_slice(self.dag.callbacks.for_event(kind)),
        }
        if notifiers.is_empty() {
            return;
        }
        let task_id = task.map(|(i, _)| self.slots[i].id.clone());
        let log_tail = match (&task_id, task) {
            _ if known_tail.is_some() => known_tail.as_deref().map(alert_tail),
            (Some(task_id), Some((_, attempt))) => {
                let key = AttemptKey {
                    run_id: self.run.run_id.clone(),
                    task_id: task_id.clone(),
                    attempt,
                };
                self.exec
                    .store
                    .attempt_log_tail(&key)
                    .await
                    .ok()
                    .flatten()
                    .map(|tail| alert_tail(&tail))
            }
            _ => None,
        };
        let event = Event {
            event: kind,
            dag_id: self.dag.id.clone(),
            run_id: self.run.run_id.clone(),
            logical_date: crate::store::timestamp::format(self.run.logical_date),
            task_id,
            attempt: task.map(|(_, a)| a),
            state: state.to_string(),
            error,
            log_tail,
            link: self.exec.public_url.as_ref().map(|base| {
                let id: String =
                    url::form_urlencoded::byte_serialize(self.run.run_id.as_bytes()).collect();
                format!(
                    "{}/runs/{}",
                    base.trim_end_matches('/'),
                    id.replace('+', "%20")
                )
            }),
        };
        self.alerts.spawn(async move {
            crate::notify::deliver(&notifiers, &event).await;
        });
    }

    /// Waits for the alerts still being sent, so that `orch run` does not exit before them.
    pub(super) async fn alerts_sent(&mut self) {
        let all = async { while self.alerts.join_next().await.is_some() {} };
        if tokio::time::timeout(ALERTS_WAIT, all).await.is_err() {
            tracing::warn!(run_id = %self.run.run_id, "alerts still unsent after {}s; giving up on them", ALERTS_WAIT.as_secs());
        }
    }
}

/// How long a run's end waits for its alerts to be sent.
const ALERTS_WAIT: Duration = Duration::from_secs(120);
/// The most of an attempt's log an alert carries: its end.
const ALERT_TAIL_BYTES: usize = 2048;
/// The end of a log for an alert, from a line start, secrets masked.
fn alert_tail(tail: &str) -> String {
    let start = tail.len().saturating_sub(ALERT_TAIL_BYTES);
    let start = ceil_char_boundary(tail, start);
    let cut = &tail[start..];
    let cut = match cut.find('\n') {
        Some(n) if start > 0 => &cut[n + 1..],
        _ => cut,
    };
    crate::redact::secrets(cut).into_owned()
}
