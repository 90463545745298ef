//! A worker: claims queued attempts of the queues it serves and runs each in a child process.
//!
//! `orch worker` is one, on this machine or another; `orch serve`, `orch run` and `orch
//! backfill` run one inside. A worker runs attempts in its own home, log folder and data
//! places (its configuration, not the queue's), writes each attempt's log on its disk and the
//! log's end into the metadata database, and reports the outcome under its claim's fencing
//! token ([`crate::queue`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use chrono::Utc;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::attempt::{self, AttemptSpec, Isolation, Usage};
use crate::backoff::Backoff;
use crate::config::{Config, DataPlaces};
use crate::executor::{Executor, Phase, Shutdown, private_queue};
use crate::lease::Lease;
use crate::logs::attempt_log_path;
use crate::membership::{Membership, turned_true};
use crate::queue::{
    CANCELLED, HandedOver, Handoff, LOOK_GAP, POLL, QUEUED, QueuedTask, REPORTED, Report, Slots,
    relay_notifications,
};
use crate::store::{AttemptKey, Claim, Store, WorkerReport, durably};
use crate::tasks::{Registry, TaskError};

/// The wait after a claim that failed (the database unreachable), growing.
const CLAIM_RETRY: Backoff = Backoff::new(
    std::time::Duration::from_millis(200),
    std::time::Duration::from_secs(10),
);

/// The wait before a report the database refused is written again, growing.
const REPORT_RETRY: Backoff = Backoff::new(
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(30),
);

/// How often a running attempt's claim is checked without a wake-up: a cancel asked from
/// another process on SQLite, which has no notifications to carry it.
const CLAIM_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// What a worker runs attempts with.
pub struct Worker {
    pub store: Store,
    pub registry: Arc<Registry>,
    pub isolation: Isolation,
    pub home: PathBuf,
    pub logs_dir: PathBuf,
    pub data: DataPlaces,
    /// The queues it claims from.
    pub queues: Vec<String>,
    /// Its free slots: how many more attempts it may run at once. An executor of the same
    /// process takes one for each attempt it hands over ([`crate::queue::Handoff`]).
    pub slots: Slots,
    /// Its process's id, which its claims carry ([`crate::membership`]).
    pub id: String,
}

impl Worker {
    /// The worker of an orch command: the home's places and parallelism, every attempt in a
    /// child process of this binary.
    pub fn of_config(
        config: &Config,
        store: Store,
        registry: Arc<Registry>,
        id: &str,
        queues: Vec<String>,
    ) -> std::io::Result<Worker> {
        Ok(Worker {
            store,
            registry,
            isolation: Isolation::this_binary()?,
            home: config.home.clone(),
            logs_dir: config.logs_dir.clone(),
            data: config.data.clone(),
            queues,
            slots: Slots::new(config.parallelism),
            id: id.to_string(),
        })
    }

    /// Claims and runs attempts until `shutdown` drains (it finishes what runs, then
    /// returns) or aborts (it stops what runs, reported as interrupted), or until `lost`
    /// turns true: this process was declared lost, its attempts are already being retried
    /// elsewhere, so they are stopped at once.
    ///
    /// `handed` brings the attempts an executor of this process claimed for this worker.
    pub async fn run(
        self,
        mut shutdown: Shutdown,
        mut lost: watch::Receiver<bool>,
        mut handed: Option<HandedOver>,
    ) {
        relay_notifications(self.store.url());
        let worker = Arc::new(self);
        let mut running = JoinSet::new();
        let (stop, stopped) = watch::channel(false);
        let mut claim_failures = 0;
        // Whether the queue may hold attempts for us: false after a claim came back short,
        // true again on a wake-up or after a poll interval. Saves a write per attempt.
        let mut maybe_more = true;
        let mut last_claim = tokio::time::Instant::now()
            .checked_sub(POLL)
            .unwrap_or_else(tokio::time::Instant::now);
        loop {
            if last_claim.elapsed() >= POLL {
                maybe_more = true;
            }
            let queued = QUEUED.notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            let phase = shutdown.phase();
            if *lost.borrow() || phase == Phase::Abort {
                let _ = stop.send(true);
            }
            // Claims handed over before a stop are run like the others: they hold slots.
            while let Some(claim) = handed.as_mut().and_then(|h| h.claims.try_recv().ok()) {
                running.spawn(Arc::clone(&worker).attempt(
                    claim,
                    stopped.clone(),
                    lost.clone(),
                    true,
                ));
            }
            if (phase != Phase::Running || *lost.borrow()) && running.is_empty() {
                return;
            }
            let claiming = phase == Phase::Running && !*lost.borrow() && worker.slots.free() > 0;
            let claim_at = last_claim + LOOK_GAP;
            if claiming && maybe_more && tokio::time::Instant::now() >= claim_at {
                last_claim = tokio::time::Instant::now();
                let free = worker.slots.take(usize::MAX);
                match worker
                    .store
                    .claim_attempts(&worker.id, &worker.queues, free)
                    .await
                {
                    Ok(claims) => {
                        claim_failures = 0;
                        maybe_more = claims.len() == free;
                        worker.slots.give_back(free - claims.len());
                        for claim in claims {
                            running.spawn(Arc::clone(&worker).attempt(
                                claim,
                                stopped.clone(),
                                lost.clone(),
                                false,
                            ));
                        }
                    }
                    Err(e) => {
                        worker.slots.give_back(free);
                        claim_failures += 1;
                        let wait = CLAIM_RETRY.delay(claim_failures);
                        tracing::warn!(error = %e, ?wait, "cannot claim queued attempts; trying again");
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            Some(_) = running.join_next(), if !running.is_empty() => {
                                worker.slots.give_back(1);
                            }
                            _ = shutdown.changed() => {}
                            () = turned_true(&mut lost), if !*lost.borrow() => {}
                        }
                        continue;
                    }
                }
            }
            let has_room = claiming && worker.slots.free() > 0;
            tokio::select! {
                () = &mut queued => maybe_more = true,
                Some(claim) = next_handed(&mut handed) => {
                    running.spawn(Arc::clone(&worker).attempt(claim, stopped.clone(), lost.clone(), true));
                }
                Some(_) = running.join_next(), if !running.is_empty() => {
                    worker.slots.give_back(1);
                }
                _ = shutdown.changed() => {}
                () = turned_true(&mut lost), if !*lost.borrow() => {}
                () = tokio::time::sleep_until(last_claim + POLL), if has_room => {}
                // A claim put off to keep the gap between looks.
                () = tokio::time::sleep_until(claim_at), if has_room && maybe_more => {}
            }
        }
    }

    /// Runs one claimed attempt and reports how it ended: straight to the executor of this
    /// process that `handed` it over when it still waits, else in the database.
    async fn attempt(
        self: Arc<Self>,
        claim: Claim,
        mut stop: watch::Receiver<bool>,
        mut stop_reporting: watch::Receiver<bool>,
        handed: bool,
    ) {
        let key = &claim.key;
        let started_at = Utc::now();
        let (report, log_path, tail) = match serde_json::from_str::<QueuedTask>(&claim.spec) {
            Err(e) => {
                let error = TaskError::permanent(format!("the queued attempt cannot be read: {e}"));
                (
                    Report::new(&Err(error), Usage::default(), started_at, Utc::now()),
                    PathBuf::new(),
                    String::new(),
                )
            }
            Ok(task) => {
                let path = attempt_log_path(
                    &self.logs_dir,
                    &task.dag_id,
                    &key.run_id,
                    &key.task_id,
                    key.attempt,
                );
                let (store, key, token) = (self.store.clone(), claim.key.clone(), claim.token);
                let abort = async move {
                    tokio::select! {
                        () = turned_true(&mut stop) => {}
                        () = claim_ended(&store, &key, token) => {
                            tracing::info!(run_id = %key.run_id, task_id = %key.task_id, attempt = key.attempt, "the attempt was ended elsewhere (cancelled); stopping it");
                        }
                    }
                };
                let ended = self.run_task(task, claim.key.clone(), &path, abort).await;
                let report = Report::new(&ended.result, ended.usage, started_at, Utc::now());
                (report, path, ended.log_tail)
            }
        };
        // A handed-over attempt's executor takes the outcome at once, and records it in its
        // next write; the report below is written all the same, so that the outcome outlives
        // an executor that fails to record it (it finds the report when it resumes).
        let delivered = handed && {
            let mut in_memory = report.clone();
            in_memory.log_tail = Some(tail.clone());
            crate::queue::deliver_here(key, in_memory)
        };
        let text = match serde_json::to_string(&report) {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(error = %e, "cannot write an attempt's report");
                return;
            }
        };
        let path_text = log_path.to_string_lossy();
        let written_report = WorkerReport {
            report: &text,
            log_path: &path_text,
            log_tail: &tail,
        };
        // The outcome is not lost to a database that fails for a while: it is reported
        // until it is written, or until this worker is declared lost (its claim is void).
        let mut failures = 0;
        loop {
            let written = durably(|| {
                self.store
                    .report_attempt(key, &self.id, claim.token, &written_report)
            })
            .await;
            match written {
                Ok(true) => {
                    // A run of this process waiting for it takes it at once; others read it.
                    if !delivered && !crate::queue::deliver_here(key, report) {
                        REPORTED.notify_waiters();
                    }
                    return;
                }
                // Its executor recorded the outcome first.
                Ok(false) if delivered => return,
                Ok(false) => {
                    tracing::warn!(run_id = %key.run_id, task_id = %key.task_id, attempt = key.attempt, "this worker's claim was taken back (it was declared lost, or its run cancelled); its report is discarded");
                    return;
                }
                Err(e) => {
                    failures += 1;
                    let wait = REPORT_RETRY.delay(failures);
                    tracing::error!(run_id = %key.run_id, task_id = %key.task_id, attempt = key.attempt, error = %e, ?wait, "cannot report an attempt; trying again");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = turned_true(&mut stop_reporting) => return,
                    }
                }
            }
        }
    }

    async fn run_task(
        &self,
        task: QueuedTask,
        key: crate::store::AttemptKey,
        path: &Path,
        abort: impl Future<Output = ()>,
    ) -> attempt::Ended {
        let spec = AttemptSpec {
            dag_id: task.dag_id,
            run_id: key.run_id,
            task_id: key.task_id,
            attempt: key.attempt,
            kind: task.kind,
            with: task.with,
            home: self.home.clone(),
            ds: task.ds,
            params: task.params,
            log_path: path.to_path_buf(),
            timeout: task.timeout,
            limits: task.limits,
            database_url: self.store.url().to_string(),
            data: self.data.clone(),
            banner: task.banner,
        };
        attempt::run(spec, &self.isolation, &self.registry, &self.store, abort).await
    }
}

/// The next claim an executor of this process hands over; never, without one.
async fn next_handed(handed: &mut Option<HandedOver>) -> Option<Claim> {
    match handed {
        Some(handed) => handed.claims.recv().await,
        None => std::future::pending().await,
    }
}

/// Returns once the claim `token` of attempt `key` no longer holds: the attempt was ended by
/// someone else (a cancel of its run), so what runs is stopped. Looks when told to, and
/// every [`CLAIM_CHECK`].
async fn claim_ended(store: &Store, key: &AttemptKey, token: i64) {
    loop {
        let told = CANCELLED.notified();
        tokio::pin!(told);
        told.as_mut().enable();
        tokio::select! {
            () = &mut told => {}
            () = tokio::time::sleep(CLAIM_CHECK) => {}
        }
        match store.claim_is_current(key, token).await {
            Ok(false) => return,
            Ok(true) => {}
            Err(e) => tracing::debug!(error = %e, "cannot check an attempt's claim"),
        }
    }
}

/// A worker inside an orch command (`serve`, `run`, `backfill`, `worker`), with its process's
/// membership, which its claims name and whose heartbeat keeps them.
pub struct LocalWorker {
    membership: Membership,
    task: tokio::task::JoinHandle<()>,
    /// For an executor of this process to hand attempts straight to this worker; `None` for
    /// a process that runs no worker.
    handoff: Option<Handoff>,
}

impl LocalWorker {
    /// Registers this process as `role` and starts a worker of `queues` (none: membership
    /// only, for a scheduler that runs no worker).
    pub async fn start(
        config: &Config,
        store: &Store,
        registry: Arc<Registry>,
        lease: &Lease,
        role: &str,
        queues: Vec<String>,
        shutdown: Shutdown,
    ) -> anyhow::Result<LocalWorker> {
        let membership =
            Membership::join(store, lease, role, &queues, config.heartbeat_timeout).await?;
        let worker = Worker::of_config(config, store.clone(), registry, lease.id(), queues)
            .context("cannot find the orch binary to run attempts with")?;
        let lost = membership.lost();
        let (task, handoff) = if worker.queues.is_empty() {
            (tokio::spawn(async {}), None)
        } else {
            let (handoff, handed) =
                crate::queue::handoff(&worker.id, &worker.queues, worker.slots.clone());
            (
                tokio::spawn(worker.run(shutdown, lost, Some(handed))),
                Some(handoff),
            )
        };
        Ok(LocalWorker {
            membership,
            task,
            handoff,
        })
    }

    /// For an executor of this process to hand attempts straight to this worker.
    pub fn handoff(&self) -> Option<Handoff> {
        self.handoff.clone()
    }

    /// An executor whose attempts only this worker runs, and the worker: how `orch run` and
    /// `orch backfill` run everything here, now, whatever the tasks' queues.
    pub async fn with_own_executor(
        config: &Config,
        store: &Store,
        registry: Arc<Registry>,
        lease: &Lease,
        role: &str,
        shutdown: Shutdown,
    ) -> anyhow::Result<(Executor, LocalWorker)> {
        let queues = vec![private_queue(lease)];
        let worker = LocalWorker::start(
            config,
            store,
            Arc::clone(&registry),
            lease,
            role,
            queues,
            shutdown,
        )
        .await?;
        // Nobody clears a task while a command waits: a `depends_on_past` task behind a
        // failed one would wait for ever.
        let executor = Executor::of_config(config, store.clone(), registry)
            .run_here(lease)
            .with_handoff(worker.handoff())
            .failed_past_ends_run();
        Ok((executor, worker))
    }

    /// Turns `true` when this process was declared lost.
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.membership.lost()
    }

    /// Why it was lost ([`Membership::why_lost`]).
    pub fn why_lost(&self) -> String {
        self.membership.why_lost()
    }

    /// Waits for the worker to stop (after the shutdown it watches moved on) and marks this
    /// process stopped.
    pub async fn stop(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the worker stopped abnormally");
        }
        self.membership.leave().await;
    }
}
