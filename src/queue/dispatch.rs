//! The executor's side of the queue: waiting for the reports of queued attempts, and ending
//! those whose worker was lost.
//!
//! One loop per process serves every run it executes: it reads the running attempts when a
//! report is announced (or every [`POLL`] while it waits for any), hands each report to the
//! run waiting for it, and checks the liveness of the workers holding its claims once per
//! heartbeat interval. A lost worker's attempt is ended with "worker lost" under the claim's
//! fencing token, so that the worker's own report, should it come back, is refused.
//!
//! A worker of the same process hands its report straight to the run waiting for it
//! ([`deliver_here`]) once written, and the loop reads only what other processes reported.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{LOOK_GAP, POLL, REPORTED, Report};
use crate::membership::{self, heartbeat_interval};
use crate::store::{AttemptKey, QueuedAttempt, Store};

type Waiting = Mutex<HashMap<AttemptKey, oneshot::Sender<Option<Report>>>>;

/// The runs of this process waiting for reports, by attempt.
static WAITING: std::sync::LazyLock<Waiting> = std::sync::LazyLock::new(Waiting::default);

/// Where runs wait for their attempts' reports; cheap to clone.
#[derive(Clone)]
pub struct Dispatch {
    waiting: &'static Waiting,
    submitted: Arc<Notify>,
    _loop: Arc<AbortOnDrop>,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Dispatch {
    /// Starts waiting for reports in `store`; workers silent for `lost_after` are lost.
    pub fn start(store: Store, lost_after: Duration) -> Dispatch {
        super::relay_notifications(store.url());
        let waiting: &'static Waiting = &WAITING;
        let submitted = Arc::new(Notify::new());
        let task = tokio::spawn(watch(store, lost_after, waiting, Arc::clone(&submitted)));
        Dispatch {
            waiting,
            submitted,
            _loop: Arc::new(AbortOnDrop(task)),
        }
    }

    /// Waits for the report of the queued attempt `key`, from now on: the report resolves
    /// to it, or to `None` when the attempt is no longer running because another orch
    /// process recorded it (this one no longer owns its run).
    pub fn wait(&self, key: AttemptKey) -> impl Future<Output = Option<Report>> + use<> {
        let (tx, rx) = oneshot::channel();
        lock(self.waiting).insert(key, tx);
        self.submitted.notify_one();
        async move { rx.await.unwrap_or(None) }
    }
}

/// Hands the report of attempt `key`, just written by a worker of this process, to the run
/// of this process waiting for it. Returns `false` when no run here waits for it (its
/// executor is elsewhere, and reads it from the database).
pub fn deliver_here(key: &AttemptKey, report: Report) -> bool {
    let waiter = lock(&WAITING).remove(key);
    match waiter {
        Some(tx) => {
            let _ = tx.send(Some(report));
            true
        }
        None => false,
    }
}

fn lock(
    waiting: &Waiting,
) -> std::sync::MutexGuard<'_, HashMap<AttemptKey, oneshot::Sender<Option<Report>>>> {
    waiting.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn watch(
    store: Store,
    lost_after: Duration,
    waiting: &'static Waiting,
    submitted: Arc<Notify>,
) {
    let mut next_check = Instant::now();
    let mut unserved = HashSet::new();
    let mut last_read: Option<Instant> = None;
    loop {
        // Wake-ups missed while waiting out the gap are covered: the read comes after them.
        if let Some(at) = last_read {
            tokio::time::sleep_until(at + LOOK_GAP).await;
        }
        let reported = REPORTED.notified();
        let newly = submitted.notified();
        tokio::pin!(reported, newly);
        reported.as_mut().enable();
        newly.as_mut().enable();
        lock(waiting).retain(|_, tx| !tx.is_closed());
        let any = !lock(waiting).is_empty();
        if any {
            let check_workers = Instant::now() >= next_check;
            if check_workers {
                next_check = Instant::now() + heartbeat_interval(lost_after);
            }
            // Taken before the read: each of these attempts was written before it was waited
            // for. Between worker checks only the reports are read: a run of a thousand queued
            // attempts must not read them all back at every report.
            let asked: Vec<AttemptKey> = if check_workers {
                lock(waiting).keys().cloned().collect()
            } else {
                Vec::new()
            };
            last_read = Some(Instant::now());
            match store.queued_attempts(!check_workers).await {
                Ok(rows) => {
                    if check_workers {
                        warn_unserved(&store, waiting, &rows, lost_after, &mut unserved).await;
                    }
                    deliver(&store, waiting, &asked, rows, check_workers, lost_after).await
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the reports of queued attempts"),
            }
        }
        tokio::select! {
            () = &mut reported => {}
            () = &mut newly => {}
            () = tokio::time::sleep(POLL), if any => {}
        }
    }
}

/// Says once per queue that attempts this process waits for have sat in it unclaimed for
/// `lost_after` while no live process serves it: the run would wait for ever, unexplained.
async fn warn_unserved(
    store: &Store,
    waiting: &Waiting,
    rows: &[QueuedAttempt],
    lost_after: Duration,
    warned: &mut HashSet<String>,
) {
    let now = chrono::Utc::now();
    let lost_after_chrono = chrono::Duration::from_std(lost_after).unwrap_or(chrono::Duration::MAX);
    let stuck: HashSet<&str> = rows
        .iter()
        .filter(|r| r.worker.is_none() && r.report.is_none())
        .filter(|r| now - r.started_at > lost_after_chrono)
        .filter(|r| lock(waiting).contains_key(&r.key))
        .map(|r| r.queue.as_str())
        .collect();
    if stuck.is_empty() {
        warned.clear();
        return;
    }
    let processes = match store.processes().await {
        Ok(processes) => processes,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the workers");
            return;
        }
    };
    let served: HashSet<&str> = processes
        .iter()
        .filter(|p| p.lost_at.is_none() && now - p.heartbeat_at <= lost_after_chrono)
        .flat_map(|p| p.queues.iter().map(String::as_str))
        .collect();
    warned.retain(|q| stuck.contains(q.as_str()) && !served.contains(q.as_str()));
    for queue in stuck.difference(&served) {
        if warned.insert(queue.to_string()) {
            tracing::warn!(
                queue,
                "attempts have waited in this queue for more than {} and no live worker serves it; start `orch worker --queue {queue}`, or `orch serve --queue {queue}`",
                humantime::format_duration(lost_after)
            );
        }
    }
}

/// Hands out the reports among `rows`, and ends the claims of lost workers.
async fn deliver(
    store: &Store,
    waiting: &Waiting,
    asked: &[AttemptKey],
    rows: Vec<QueuedAttempt>,
    check_workers: bool,
    lost_after: Duration,
) {
    let mut alive: HashMap<String, bool> = HashMap::new();
    let mut present = std::collections::HashSet::new();
    for row in rows {
        if !lock(waiting).contains_key(&row.key) {
            continue;
        }
        present.insert(row.key.clone());
        let report = match (&row.report, &row.worker) {
            (Some(text), _) => Some(serde_json::from_str::<Report>(text).unwrap_or_else(|e| {
                Report::failure(
                    format!("the worker's report cannot be read: {e}"),
                    row.started_at,
                )
            })),
            (None, Some(worker)) if check_workers => {
                lost_worker_report(store, &row, worker, &mut alive, lost_after).await
            }
            (None, _) => None,
        };
        let waiter = report.and_then(|report| Some((lock(waiting).remove(&row.key)?, report)));
        if let Some((tx, report)) = waiter {
            let _ = tx.send(Some(report));
        }
    }
    // An attempt no longer running was recorded by another executor: nothing comes for it.
    // (`asked` is empty unless every queued attempt was read.)
    for key in asked.iter().filter(|k| !present.contains(*k)) {
        let waiter = lock(waiting).remove(key);
        if let Some(tx) = waiter {
            let _ = tx.send(None);
        }
    }
}

/// Ends `row`'s claim when its worker is lost, and returns the report written for it.
async fn lost_worker_report(
    store: &Store,
    row: &QueuedAttempt,
    worker: &str,
    alive: &mut HashMap<String, bool>,
    lost_after: Duration,
) -> Option<Report> {
    let is_alive = match alive.get(worker) {
        Some(known) => *known,
        None => {
            let known = membership::is_alive(store, worker, lost_after)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(worker, error = %e, "cannot check whether a worker is alive");
                    true
                });
            alive.insert(worker.to_string(), known);
            known
        }
    };
    if is_alive {
        return None;
    }
    // The attempt may have ended and its outcome failed to be written (a full disk): its
    // log says so when it is on this host.
    let logged = match ending_in_log(store, &row.key, worker).await {
        Some(ending) => format!(
            "; its log ends with `{ending}`, an outcome it could not record (see that process's own log: a full disk, a database out of reach)"
        ),
        None => String::new(),
    };
    let report = Report::failure(
        format!(
            "worker lost: {worker} stopped heartbeating (none for {}) before it recorded this attempt's outcome{logged}; it is retried by its task's policy",
            humantime::format_duration(lost_after)
        ),
        row.started_at,
    );
    let text = serde_json::to_string(&report).ok()?;
    match store.report_lost_claim(&row.key, row.token, &text).await {
        Ok(true) => {
            tracing::warn!(run_id = %row.key.run_id, task_id = %row.key.task_id, attempt = row.key.attempt, worker, "worker lost; failing its attempt");
            kill_leftovers(store, &row.key, worker).await;
            Some(report)
        }
        // Reported or taken over meanwhile: the next pass reads what was written.
        Ok(false) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot fail a lost worker's attempt");
            None
        }
    }
}

/// How the attempt's log says it ended, when its lost worker was on this host and got as far
/// as the log's last line.
async fn ending_in_log(store: &Store, key: &AttemptKey, worker: &str) -> Option<String> {
    if !crate::lease::is_on_this_host(worker) {
        return None;
    }
    let path = store.attempt_log_path(key).await.ok().flatten()?;
    let tail = tokio::task::spawn_blocking(move || {
        crate::logs::read_tail(std::path::Path::new(&path), ENDING_BYTES)
    })
    .await
    .ok()?;
    logged_ending(&tail).map(str::to_string)
}

/// Enough of a log's end for its last line.
const ENDING_BYTES: u64 = 4096;

/// The outcome a log's last line gives, when it is orch's note of an attempt's end.
fn logged_ending(tail: &str) -> Option<&str> {
    let note = tail.lines().last()?.split_once(" orch] ")?.1;
    (note.starts_with("succeeded") || note.starts_with("failed")).then_some(note)
}

/// Kills what a lost worker of this host left of its attempt's command (its process group,
/// if still the same process).
async fn kill_leftovers(store: &Store, key: &AttemptKey, worker: &str) {
    if !crate::lease::is_on_this_host(worker) {
        return;
    }
    if let Ok(Some((pgid, ticks))) = store
        .attempt_process(&key.run_id, &key.task_id, key.attempt)
        .await
    {
        crate::process::kill_orphaned_group(pgid, ticks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_ending_with_orchs_note_gives_the_outcome() {
        let done = "output\n[2026-12-07T21:00:00.000000Z orch] succeeded, rows=3\n";
        assert_eq!(logged_ending(done), Some("succeeded, rows=3"));
        let cut =
            "[2026-12-07T21:00:00.000000Z orch] attempt 1 of 1 of task `t` (shell)\nhalf a li";
        assert_eq!(logged_ending(cut), None);
        assert_eq!(logged_ending(""), None);
    }
}
