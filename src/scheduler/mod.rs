//! `orch serve`: the long-running scheduler.
//!
//! A small loop over `croner` ticks rather than a cron-job library: each pass creates the runs
//! that are due (catchup included; a unique index makes a run per logical date at most once),
//! starts queued runs within `max_active_runs`, adopts runs whose process died, and reloads DAG
//! files that changed. It sleeps until the next tick, a wake-up from `orch trigger`, the end of
//! a run, or one second, whichever comes first.
//!
//! Several servers may share one PostgreSQL database: only the [`leader`] schedules and runs
//! the plug-ins' [`LeaderService`]s (the market's live streams); every server runs its local
//! worker.

mod leader;
pub mod plan;
pub mod view;
mod wake;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::Map;
use tokio::task::JoinSet;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::dag::{Dag, DagBag};
use crate::executor::{Executor, Phase, ShutdownHandle};
use crate::lease::{self, Lease, ServeLock};
use crate::membership;
use crate::store::{
    AttemptState, Listed, RunClaim, RunRecord, RunState, RunType, Store, StoreError,
};
use crate::tasks::{BoxFuture, Registry};
use crate::worker::LocalWorker;
use leader::Leadership;

pub use wake::{cancel_requested, wake};

/// How often DAG files are re-read; the issue asks for reloads within 2 seconds.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// How often the lease files of stopped processes are removed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

pub struct ServeOptions {
    /// How long running tasks may go on after SIGTERM or Ctrl-C before they are stopped.
    pub grace: Duration,
    /// The queues the server's own worker serves; none: it runs no worker.
    pub queues: Vec<String>,
    /// Where the scheduler publishes what the web face shows.
    pub view: view::ViewSender,
    /// The metadata database, opened (and migrated) by the caller, whose web face shares it.
    pub store: Store,
    /// The task kinds DAGs may use, which the binary composed.
    pub registry: Arc<Registry>,
    /// What the plug-ins run on the leader.
    pub services: Vec<Box<dyn LeaderService>>,
}

/// A long-running service a plug-in runs on the scheduling leader only (the market's live
/// streams, each a process of its own). The scheduler does not know what it runs: it keeps it
/// in step with the DAGs folder and stops it with itself.
pub trait LeaderService: Send {
    /// Brings what the service runs in line with the DAGs folder: when this server becomes
    /// the leader, and after a file of the folder changed.
    fn sync(&mut self) -> BoxFuture<'_, ()>;

    /// Stops everything the service runs, within the server's grace.
    fn stop_all(&mut self) -> BoxFuture<'static, ()>;
}

type RunOutcome = (String, Result<Option<RunState>, StoreError>);

/// A run whose executor died here waits this long, growing, before it is resumed.
const RESUME: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
/// After this many deaths of its executor a run is failed rather than resumed again.
const MAX_EXECUTOR_DEATHS: u32 = 5;

/// A run to resume after its executor died.
struct Resume {
    at: tokio::time::Instant,
    deaths: u32,
    why: String,
}

struct Scheduler {
    store: Store,
    registry: Arc<Registry>,
    executor: Executor,
    bag: DagBag,
    lease: Lease,
    shutdown: ShutdownHandle,
    runs: JoinSet<RunOutcome>,
    /// The run each executor task drives, to know which run a panicked task left behind.
    run_of_task: HashMap<tokio::task::Id, String>,
    /// Run ids this process executes now.
    active: HashSet<String>,
    /// Runs whose executor died here (a database error it could not ride out, a panic):
    /// when each may be resumed, how many times it died, and why last.
    resume_after: HashMap<String, Resume>,
    /// What was already reported once: queued runs waiting for a missing DAG, unreadable
    /// rows, and a DAG's scheduling error.
    reported: HashSet<String>,
    services: Vec<Box<dyn LeaderService>>,
    leadership: Leadership,
    lost_after: Duration,
    view: view::ViewSender,
    /// When each DAG's next run is due, as of the last pass.
    next_due: HashMap<String, DateTime<Utc>>,
    /// How late the loop woke for its last timed wake-up.
    loop_lag: Duration,
    /// When the running runs are next read to adopt those whose process died.
    next_orphan_look: tokio::time::Instant,
    /// When the metadata database's file is next checked for being deleted or replaced.
    next_file_check: tokio::time::Instant,
    /// Runs queued or running, as of the last pass.
    pending_runs: Option<u64>,
}

/// How often a server checks that its SQLite file is still the one it opened.
const FILE_CHECK: Duration = Duration::from_secs(1);

/// The most queued runs one pass starts: a burst is taken in bites, each pass short.
const START_PER_PASS: u32 = 500;
/// The least time between two scheduling passes. A pass after a quiet spell goes at once;
/// under a burst, the triggers and run ends of a few milliseconds share one pass (three
/// reads) instead of each paying for its own.
const PASS_GAP: Duration = Duration::from_millis(10);
/// And at least this many times as long as the last pass took: a pass counts the runs
/// queued and running, which costs more the larger a backlog grows, and must not take the
/// time that would work the backlog off.
const PASS_SHARE: u32 = 5;

/// Runs the scheduler until SIGTERM or Ctrl-C (or until it loses the scheduler lease).
pub async fn serve(config: Config, options: ServeOptions) -> anyhow::Result<()> {
    let state_dir = config.state_dir();
    let _lock = ServeLock::acquire(&state_dir)?;
    let store = options.store.clone();
    let lease = Lease::acquire(&state_dir).context("cannot create the process lease")?;
    let wake = wake::WakeListener::bind(&state_dir);
    let registry = options.registry.clone();
    let bag = DagBag::load(&config.dags_dir, &registry);
    for error in bag.errors() {
        tracing::error!("DAG file not loaded: {error}");
    }
    store.sync_pools(&config.pools).await?;
    for dag in bag.dags() {
        for problem in dag.pool_problems(&config.pools) {
            tracing::error!("{problem}; its attempts fail at once");
        }
        for task in &dag.tasks {
            if let Some(pool) = task
                .pool
                .as_deref()
                .filter(|p| !config.pools.contains_key(*p))
            {
                tracing::warn!(dag_id = %dag.id, task_id = %task.id, pool, "the task names a pool that orch.yaml's `pools:` does not declare: it runs without that limit");
            }
        }
    }
    let (shutdown, _) = ShutdownHandle::new();
    let worker = LocalWorker::start(
        &config,
        &store,
        Arc::clone(&registry),
        &lease,
        "serve",
        options.queues.clone(),
        shutdown.subscribe(),
    )
    .await?;
    let executor = Executor::of_config(&config, store.clone(), Arc::clone(&registry))
        .with_handoff(worker.handoff());
    let mut scheduler = Scheduler {
        leadership: Leadership::new(store.clone(), lease.id(), config.heartbeat_timeout),
        lost_after: config.heartbeat_timeout,
        store,
        registry,
        executor,
        bag,
        lease,
        shutdown,
        runs: JoinSet::new(),
        run_of_task: HashMap::new(),
        active: HashSet::new(),
        resume_after: HashMap::new(),
        reported: HashSet::new(),
        services: options.services,
        view: options.view,
        next_due: HashMap::new(),
        loop_lag: Duration::ZERO,
        next_orphan_look: tokio::time::Instant::now(),
        next_file_check: tokio::time::Instant::now(),
        pending_runs: None,
    };
    scheduler.publish();
    tracing::info!(
        home = %config.home.display(),
        dags = scheduler.bag.dags().count(),
        broken_files = scheduler.bag.errors().count(),
        parallelism = config.parallelism,
        queues = %options.queues.join(","),
        process = %scheduler.lease.id(),
        "orch serve started"
    );
    scheduler.sweep_leases(&state_dir).await;
    let mut lost = worker.lost();
    let outcome = tokio::select! {
        outcome = scheduler.run(&wake, &state_dir) => outcome,
        () = membership::turned_true(&mut lost) => Err(anyhow::anyhow!("{}; this server stops so that no work runs twice", worker.why_lost())),
    };
    // Everything stops by the end of the grace, however much is queued or running: what has
    // not ended by then stays `running` for the next scheduler to resume.
    let grace = if outcome.is_ok() {
        options.grace
    } else {
        Duration::ZERO
    };
    let stop_by = tokio::time::Instant::now() + grace;
    let services_stopped =
        futures_util::future::join_all(scheduler.services.iter_mut().map(|s| s.stop_all()));
    let (services_in_time, ()) = tokio::join!(
        tokio::time::timeout_at(stop_by + PARTING, services_stopped),
        scheduler.stop(stop_by, grace)
    );
    if services_in_time.is_err() {
        tracing::warn!(
            "a service (a stream) did not stop in time; its process is killed with this one"
        );
    }
    // The few writes that tell others this process is gone get a moment past the grace.
    let parting = stop_by + PARTING;
    if tokio::time::timeout_at(parting, scheduler.leadership.release())
        .await
        .is_err()
    {
        tracing::warn!("the scheduler lease was not released in time; it expires by itself");
    }
    if tokio::time::timeout_at(parting, worker.stop())
        .await
        .is_err()
    {
        tracing::warn!("the worker did not stop in time; its attempts are stopped with it");
    }
    tracing::info!("orch serve stopped");
    outcome
}

/// How long past the grace the last writes of a stopping server may take.
const PARTING: Duration = Duration::from_secs(1);

/// Creates the runs of `dag`'s intervals that have ended, within `max_active_runs` (`active`
/// counts its queued and running runs); returns when the next interval ends.
///
/// With catchup off, an interval that comes due while the DAG is full will never run: it is
/// recorded as a `skipped` run saying why, rather than dropped without a trace.
async fn schedule_dag(
    store: &Store,
    dag: &Dag,
    active: &mut u32,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let mut last_end = store.last_scheduled_end(&dag.id).await?;
    let task_ids: Vec<String> = dag.tasks.iter().map(|t| t.id.clone()).collect();
    while let Some(interval) = dag.next_scheduled_interval(last_end, now) {
        if let Some(first) = last_end.and_then(|end| dag.next_start_after(end))
            && first < interval.start
        {
            tracing::info!(dag_id = %dag.id, from = %first, to = %interval.start, "catchup is off: the intervals in between are not run");
        }
        let run = plan::new_run(dag, RunType::Scheduled, interval, Map::new(), now);
        if *active < dag.max_active_runs {
            if store.insert_run(&run, &task_ids).await? {
                tracing::info!(dag_id = %dag.id, run_id = %run.run_id, "scheduled run created");
                *active += 1;
            }
        } else if dag.catchup {
            // Created once a run ends.
            break;
        } else {
            let note = format!(
                "skipped: due while the DAG had {active} active runs (max_active_runs: {}), and catchup is off",
                dag.max_active_runs
            );
            if store.insert_skipped_run(&run, &task_ids, &note).await? {
                tracing::warn!(dag_id = %dag.id, run_id = %run.run_id, max_active_runs = dag.max_active_runs, "interval skipped: the DAG is at max_active_runs and catchup is off");
            }
        }
        // An existing run (e.g. a backfill of that date) counts as done for the schedule.
        last_end = Some(interval.end);
    }
    Ok(dag.next_due(last_end, now))
}

impl Scheduler {
    async fn run(&mut self, wake: &wake::WakeListener, state_dir: &Path) -> anyhow::Result<()> {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot listen for SIGTERM")?;
        let mut next_reload = tokio::time::Instant::now() + RELOAD_INTERVAL;
        let cancels = wake::WakeListener::bind_cancel(state_dir);
        let mut next_sweep = tokio::time::Instant::now() + SWEEP_INTERVAL;
        let mut next_renewal = tokio::time::Instant::now();
        let mut next_pass: Option<tokio::time::Instant> = None;
        loop {
            // Wake-ups not listened for meanwhile are served by the pass that follows.
            let pass_at = next_pass;
            while let Some(pass_at) = pass_at.filter(|&at| tokio::time::Instant::now() < at) {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                    _ = terminate.recv() => return Ok(()),
                    Some(done) = self.runs.join_next_with_id(), if !self.runs.is_empty() => self.on_run_end(done),
                    () = tokio::time::sleep_until(pass_at) => {}
                }
            }
            let pass_started = tokio::time::Instant::now();
            if tokio::time::Instant::now() >= next_sweep {
                self.sweep_leases(state_dir).await;
                next_sweep = tokio::time::Instant::now() + SWEEP_INTERVAL;
            }
            if tokio::time::Instant::now() >= next_renewal {
                self.renew_leadership().await?;
                next_renewal =
                    tokio::time::Instant::now() + membership::heartbeat_interval(self.lost_after);
            }
            let next_tick = match self.pass().await {
                Ok(next) => next,
                // Two histories would run everything twice: stop.
                Err(e @ StoreError::FileGone { .. }) => return Err(e.into()),
                // Every pass would fail the same way, for ever.
                Err(e) if e.is_corrupt_file() => return Err(e.into()),
                Err(e) => {
                    // A locked or briefly unavailable database must not kill the scheduler.
                    tracing::error!(error = %e, "scheduling pass failed; retrying");
                    None
                }
            };
            self.publish();
            next_pass = Some(pass_started + PASS_GAP.max(pass_started.elapsed() * PASS_SHARE));
            let until_tick = next_tick
                .and_then(|t| (t - Utc::now()).to_std().ok())
                .map(|d| tokio::time::Instant::now() + d);
            let wake_at = until_tick
                .map_or(next_reload, |t| t.min(next_reload))
                .min(next_renewal);
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = terminate.recv() => return Ok(()),
                () = wake.woken() => {}
                () = cancels.woken() => {
                    // `orch runs cancel` asked: the runs look for their requests.
                    crate::queue::CANCELLED.notify_waiters();
                }
                Some(done) = self.runs.join_next_with_id(), if !self.runs.is_empty() => self.on_run_end(done),
                _ = tokio::time::sleep_until(wake_at) => {
                    self.loop_lag = tokio::time::Instant::now().saturating_duration_since(wake_at);
                }
            }
            if tokio::time::Instant::now() >= next_reload {
                if self.reload() && self.leadership.is_leader() {
                    self.sync_services().await;
                }
                next_reload = tokio::time::Instant::now() + RELOAD_INTERVAL;
            }
        }
    }

    /// Publishes what the web face shows, as of this pass.
    fn publish(&self) {
        let view = view::SchedulerView {
            dags: self.bag.dags().cloned().collect(),
            errors: self.bag.errors().cloned().collect(),
            next_runs: self.next_due.clone(),
            last_pass_at: Some(Utc::now()),
            loop_lag: self.loop_lag,
            leader: self.leadership.is_leader(),
            pending_runs: self.pending_runs,
        };
        self.view.send_replace(Arc::new(view));
    }

    /// Takes or renews the scheduler lease; the leader runs the services. Fails when this
    /// server lost the lease it held: another may be scheduling already.
    async fn renew_leadership(&mut self) -> anyhow::Result<()> {
        match self.leadership.renew().await {
            leader::Change::None => Ok(()),
            leader::Change::Gained { previous } => {
                match previous {
                    Some(previous) => {
                        tracing::warn!(%previous, "this server is now the scheduling leader, taking over from another")
                    }
                    None => tracing::info!("this server is now the scheduling leader"),
                }
                self.sync_services().await;
                Ok(())
            }
            leader::Change::Lost { why } => {
                anyhow::bail!(
                    "this server lost the scheduler lease ({why}); it stops so that only one scheduler runs"
                )
            }
        }
    }

    /// Whether the process that owns a run may still be alive: its lease on this host, its
    /// heartbeat for any host.
    async fn owner_is_alive(&self, owner: &str) -> bool {
        if !self.lease.owner_is_alive(owner) {
            return false;
        }
        membership::is_alive(&self.store, owner, self.lost_after)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(owner, error = %e, "cannot check whether a run's owner is alive");
                true
            })
    }

    /// Removes the lease files of processes that are gone and own no running run.
    async fn sweep_leases(&self, state_dir: &Path) {
        let owners: HashSet<String> = match self.store.running_owners().await {
            Ok(running) => running.into_iter().filter_map(|(_, owner)| owner).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot sweep process leases");
                return;
            }
        };
        // A folder read and a file lock per lease: off the runtime's threads.
        let state_dir = state_dir.to_path_buf();
        let swept = tokio::task::spawn_blocking(move || lease::sweep(&state_dir, &owners))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match swept {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "swept the leases of stopped processes"),
            Err(e) => tracing::warn!(error = %e, "cannot sweep process leases"),
        }
    }

    /// Brings the services in line with the DAGs folder.
    async fn sync_services(&mut self) {
        for service in &mut self.services {
            service.sync().await;
        }
    }

    /// Re-reads changed DAG files; returns whether any YAML file of the folder changed.
    fn reload(&mut self) -> bool {
        let before: HashMap<_, _> = self
            .bag
            .errors()
            .map(|e| (e.path.clone(), e.to_string()))
            .collect();
        let changes = self.bag.refresh(&self.registry);
        if changes.is_empty() {
            return false;
        }
        for path in &changes.changed_files {
            match self.bag.errors().find(|e| &e.path == path) {
                Some(error) => tracing::error!("DAG file not loaded: {error}"),
                None if before.contains_key(path) => {
                    tracing::info!(path = %path.display(), "DAG file fixed and reloaded")
                }
                None if self.bag.dags().any(|d| &d.path == path) => {
                    tracing::info!(path = %path.display(), "DAG file loaded")
                }
                // A plug-in's file (a stream's): its service reports it.
                None => {}
            }
        }
        for path in &changes.removed_files {
            tracing::info!(path = %path.display(), "DAG file removed");
        }
        true
    }

    /// One scheduling pass. Returns when the next cron tick is due.
    async fn pass(&mut self) -> Result<Option<DateTime<Utc>>, StoreError> {
        // Every server checks, once a second, off the runtime's threads: two histories
        // would run everything twice.
        if tokio::time::Instant::now() >= self.next_file_check {
            self.next_file_check = tokio::time::Instant::now() + FILE_CHECK;
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.check_file())
                .await
                .unwrap_or(Ok(()))?;
        }
        if self.shutdown.phase() != Phase::Running || !self.leadership.is_leader() {
            return Ok(None);
        }
        // Counts, not rows: a pass under a burst must not read back every run in flight. The
        // three reads go out at once.
        let (paused, counts, queued) = tokio::try_join!(
            self.paused_dags(),
            self.store.active_run_counts(),
            self.store.queued_runs(START_PER_PASS)
        )?;
        let mut active_by_dag: HashMap<String, u32> = HashMap::new();
        let mut running_by_dag: HashMap<String, u32> = HashMap::new();
        for (dag, state, count) in counts {
            let count = u32::try_from(count).unwrap_or(u32::MAX);
            *active_by_dag.entry(dag.clone()).or_default() += count;
            if state == RunState::Running {
                *running_by_dag.entry(dag).or_default() += count;
            }
        }
        self.pending_runs = Some(active_by_dag.values().map(|&n| u64::from(n)).sum());
        let before: u32 = active_by_dag.values().sum();
        let next_tick = self
            .create_scheduled_runs(&paused, &mut active_by_dag)
            .await?;
        // Runs the schedule just created start in this pass too.
        let queued = if active_by_dag.values().sum::<u32>() > before {
            self.store.queued_runs(START_PER_PASS).await?
        } else {
            queued
        };
        let now = tokio::time::Instant::now();
        let resume_due = self.resume_after.values().any(|r| r.at <= now);
        if now >= self.next_orphan_look || resume_due {
            self.next_orphan_look = now + membership::heartbeat_interval(self.lost_after);
            let running = self.store.running_owners().await?;
            self.adopt_orphans(&running).await?;
        }
        let queued = self.readable(queued);
        self.start_queued(&paused, queued, &mut running_by_dag)
            .await?;
        Ok(next_tick)
    }

    /// The runs that read; each unreadable row is logged once and otherwise left alone.
    fn readable(&mut self, listed: Listed<RunRecord>) -> Vec<RunRecord> {
        for bad in listed.unreadable {
            if self.reported.insert(format!("unreadable {}", bad.id)) {
                tracing::error!(run_id = %bad.id, error = %bad.error, "a run in the history cannot be read; it is left alone");
            }
        }
        listed.rows
    }

    async fn paused_dags(&self) -> Result<HashSet<String>, StoreError> {
        self.store
            .paused_dags(self.bag.dags().map(|d| (d.id.as_str(), d.paused)))
            .await
    }

    /// Creates the runs of every interval that has ended, within `max_active_runs`.
    async fn create_scheduled_runs(
        &mut self,
        paused: &HashSet<String>,
        active_by_dag: &mut HashMap<String, u32>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let now = Utc::now();
        let mut next_tick: Option<DateTime<Utc>> = None;
        self.next_due.clear();
        let dags: Vec<Arc<Dag>> = self
            .bag
            .dags()
            .filter(|d| d.schedule.is_some())
            .cloned()
            .collect();
        for dag in dags {
            if paused.contains(&dag.id) {
                continue;
            }
            let active = active_by_dag.entry(dag.id.clone()).or_default();
            // One DAG's trouble (a row it cannot read) must not stop the others.
            match schedule_dag(&self.store, &dag, active, now).await {
                Ok(Some(due)) => {
                    self.next_due.insert(dag.id.clone(), due);
                    next_tick = Some(next_tick.map_or(due, |t| t.min(due)));
                }
                Ok(None) => {}
                Err(e) => {
                    if self.reported.insert(format!("schedule {} {e}", dag.id)) {
                        tracing::error!(dag_id = %dag.id, error = %e, "cannot schedule this DAG");
                    }
                }
            }
        }
        Ok(next_tick)
    }

    /// Resumes runs whose executing process died (`kill -9`, crash, power loss), and runs of
    /// this process whose executor died (after a backoff).
    async fn adopt_orphans(
        &mut self,
        running: &[(String, Option<String>)],
    ) -> Result<(), StoreError> {
        let now = tokio::time::Instant::now();
        // Runs ended or taken elsewhere meanwhile are no longer this process's to resume.
        let running_ids: HashSet<&str> = running.iter().map(|(id, _)| id.as_str()).collect();
        self.resume_after
            .retain(|run_id, _| running_ids.contains(run_id.as_str()));
        for (run_id, owner) in running {
            if self.active.contains(run_id) {
                continue;
            }
            let mine = owner.as_deref() == Some(self.lease.id());
            if mine {
                match self.resume_after.get(run_id) {
                    Some(resume) if resume.deaths >= MAX_EXECUTOR_DEATHS => {
                        let note = format!(
                            "its executor stopped {} times; last: {}",
                            resume.deaths, resume.why
                        );
                        tracing::error!(run_id = %run_id, "{note}; marking the run failed");
                        self.store.fail_run(run_id, &note).await?;
                        self.resume_after.remove(run_id);
                        continue;
                    }
                    Some(resume) if now < resume.at => continue,
                    _ => {}
                }
            } else {
                if let Some(owner) = owner
                    && self.owner_is_alive(owner).await
                {
                    continue;
                }
                if !self
                    .store
                    .adopt_run(run_id, owner.as_deref(), self.lease.id())
                    .await?
                {
                    continue;
                }
            }
            // Only a run to resume is read whole.
            let run = match self.store.run(run_id).await {
                Ok(Some(run)) => run,
                Ok(None) => continue,
                Err(e) => {
                    if self.reported.insert(format!("unreadable {run_id}")) {
                        tracing::error!(run_id = %run_id, error = %e, "a run in the history cannot be read; it is left alone");
                    }
                    continue;
                }
            };
            let run = &run;
            match self.definition_of(run) {
                Ok(dag) => {
                    tracing::warn!(run_id = %run.run_id, previous_owner = ?run.owner, "resuming a run whose executor stopped");
                    self.spawn(dag, run.clone());
                }
                Err(why) => {
                    tracing::error!(run_id = %run.run_id, dag_id = %run.dag_id, "{why}; marking the run failed");
                    self.kill_leftovers(&run.run_id).await?;
                    self.store.fail_run(&run.run_id, &why).await?;
                }
            }
        }
        Ok(())
    }

    /// Kills what the dead processes of an adopted run left of its attempts' commands on
    /// this host: an attempt run in its executor's process, or by a worker now gone. A live
    /// worker's attempts are left to it: it stops them when their claims end.
    async fn kill_leftovers(&self, run_id: &str) -> Result<(), StoreError> {
        let attempts = self.store.attempts(run_id).await?;
        for a in attempts.iter().filter(|a| a.state == AttemptState::Running) {
            let gone = a
                .worker
                .as_deref()
                .is_none_or(|w| lease::is_on_this_host(w) && !lease::is_alive(w));
            if !gone {
                continue;
            }
            if let Some((pgid, ticks)) = self
                .store
                .attempt_process(run_id, &a.task_id, a.attempt)
                .await?
            {
                crate::process::kill_orphaned_group(pgid, ticks);
            }
        }
        Ok(())
    }

    /// The definition a resumed run executes: the DAG file this scheduler loaded, and only if
    /// the run started with exactly its text. The text saved with the run is never executed
    /// by itself: a row in a shared database must not be a way to run code.
    fn definition_of(&self, run: &RunRecord) -> Result<Arc<Dag>, String> {
        let Some(dag) = self.bag.get(&run.dag_id) else {
            return Err(format!(
                "cannot resume run `{}`: no loaded DAG file defines `{}`",
                run.run_id, run.dag_id
            ));
        };
        match &run.dag_source {
            Some(source) if *source != dag.source => Err(format!(
                "cannot resume run `{}`: the DAG text saved with it differs from {} as loaded now (the file changed since the run started, or the row was altered), and orch only runs DAG files it loaded; trigger the DAG again",
                run.run_id,
                dag.path.display()
            )),
            _ => Ok(Arc::clone(dag)),
        }
    }

    /// Starts the oldest queued runs that their DAGs' `max_active_runs` lets start, taking
    /// them all in one write.
    async fn start_queued(
        &mut self,
        paused: &HashSet<String>,
        queued: Vec<RunRecord>,
        running_by_dag: &mut HashMap<String, u32>,
    ) -> Result<(), StoreError> {
        let mut starting: Vec<(Arc<Dag>, RunRecord)> = Vec::new();
        for run in queued {
            let Some(dag) = self.bag.get(&run.dag_id).cloned() else {
                if self.reported.insert(format!("missing {}", run.run_id)) {
                    let why = self
                        .bag
                        .error_for(&run.dag_id)
                        .map_or("no DAG file defines it".to_string(), |e| e.to_string());
                    tracing::warn!(run_id = %run.run_id, dag_id = %run.dag_id, "queued run waits for its DAG: {why}");
                }
                continue;
            };
            if paused.contains(&dag.id) {
                continue;
            }
            let running = running_by_dag.entry(dag.id.clone()).or_default();
            if *running >= dag.max_active_runs {
                continue;
            }
            *running += 1;
            starting.push((dag, run));
        }
        if starting.is_empty() {
            return Ok(());
        }
        let claims: Vec<RunClaim> = starting
            .iter()
            .map(|(dag, run)| RunClaim {
                run_id: run.run_id.clone(),
                dag_source: dag.source.clone(),
                dag_path: dag.path.to_string_lossy().into_owned(),
            })
            .collect();
        let claimed = self.store.claim_runs(self.lease.id(), claims).await?;
        for (dag, run) in starting {
            if claimed.contains(&run.run_id) {
                tracing::info!(run_id = %run.run_id, dag_id = %dag.id, run_type = %run.run_type, "run started");
                self.spawn(dag, run);
            }
        }
        Ok(())
    }

    fn spawn(&mut self, dag: Arc<Dag>, run: RunRecord) {
        let executor = self.executor.clone();
        let shutdown = self.shutdown.subscribe();
        self.active.insert(run.run_id.clone());
        let run_id = run.run_id.clone();
        let task = self.runs.spawn(async move {
            let outcome = executor.execute(dag, &run, shutdown, None).await;
            (run.run_id, outcome)
        });
        self.run_of_task.insert(task.id(), run_id);
    }

    fn on_run_end(
        &mut self,
        joined: Result<(tokio::task::Id, RunOutcome), tokio::task::JoinError>,
    ) {
        let (task, outcome) = match joined {
            Ok((task, (_, outcome))) => (task, outcome.map_err(|e| e.to_string())),
            Err(e) => (e.id(), Err(format!("its executor panicked: {e}"))),
        };
        let Some(run_id) = self.run_of_task.remove(&task) else {
            return;
        };
        self.active.remove(&run_id);
        match outcome {
            Ok(Some(state)) => {
                self.resume_after.remove(&run_id);
                tracing::info!(run_id = %run_id, state = %state, "run finished");
            }
            Ok(None) => tracing::info!(run_id = %run_id, "run left to resume after restart"),
            Err(why) => {
                // The run is still `running` under this process's lease: nobody else may take
                // it, so this process resumes it itself, after a growing wait.
                let deaths = self.resume_after.get(&run_id).map_or(0, |r| r.deaths) + 1;
                let wait = RESUME.delay(deaths);
                tracing::error!(run_id = %run_id, error = %why, resume_in = ?wait, "a run's executor stopped; resuming the run");
                self.resume_after.insert(
                    run_id,
                    Resume {
                        at: tokio::time::Instant::now() + wait,
                        deaths,
                        why,
                    },
                );
            }
        }
    }

    /// Drains: no new attempts, and running ones have until a little before `stop_by` to
    /// finish; then they are stopped, and their reports waited for until `stop_by`. Runs not
    /// ended then stay `running` for the next scheduler.
    async fn stop(&mut self, stop_by: tokio::time::Instant, grace: Duration) {
        tracing::info!(running_runs = self.runs.len(), grace = %humantime::format_duration(grace), "shutting down");
        self.shutdown.set(Phase::Draining);
        // Time for stopped attempts to report: a third of the grace, at most ABORT_TIME.
        let abort_at = stop_by - (grace / 3).min(ABORT_TIME);
        while !self.runs.is_empty() {
            tokio::select! {
                Some(done) = self.runs.join_next_with_id() => self.on_run_end(done),
                () = tokio::time::sleep_until(abort_at) => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        self.shutdown.set(Phase::Abort);
        while !self.runs.is_empty() {
            tokio::select! {
                Some(done) = self.runs.join_next_with_id() => self.on_run_end(done),
                () = tokio::time::sleep_until(stop_by) => {
                    tracing::warn!(runs = self.runs.len(), "the grace is over: runs still waiting for their attempts are left to the next scheduler");
                    self.runs.abort_all();
                    break;
                }
            }
        }
    }
}

/// The most of the grace kept for stopping attempts and recording how they ended.
const ABORT_TIME: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("orch.db").display());
        let store = Store::open(&url).await.expect("store");
        (dir, store)
    }

    fn dag(catchup: bool) -> Dag {
        let yaml = format!(
            "schedule: '*/5 * * * *'\ncatchup: {catchup}\nmax_active_runs: 1\ntasks: [{{id: a, kind: noop}}]\n"
        );
        crate::dag::load_str(Path::new("d.yaml"), &yaml, &Registry::core()).expect("dag")
    }

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, h, m, 0)
            .single()
            .expect("time")
    }

    /// With catchup off, an interval that comes due while the DAG is full is recorded as a
    /// skipped run with the reason, and the schedule goes on after it.
    #[tokio::test]
    async fn an_interval_due_while_full_is_recorded_as_skipped_without_catchup() {
        let (_dir, store) = store().await;
        let dag = dag(false);
        let mut active = 1;
        schedule_dag(&store, &dag, &mut active, at(10, 7))
            .await
            .expect("schedule");
        let skipped = store
            .runs_in_state(RunState::Skipped)
            .await
            .expect("runs")
            .rows;
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].data_interval_start, at(10, 0));
        let note = skipped[0].note.as_deref().unwrap_or_default();
        assert!(
            note.contains("max_active_runs: 1") && note.contains("catchup is off"),
            "{note}"
        );
        let mut active = 0;
        schedule_dag(&store, &dag, &mut active, at(10, 12))
            .await
            .expect("schedule");
        let queued = store
            .runs_in_state(RunState::Queued)
            .await
            .expect("runs")
            .rows;
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].data_interval_start, at(10, 5));
    }

    /// With catchup on, the interval waits for room instead.
    #[tokio::test]
    async fn an_interval_due_while_full_waits_with_catchup() {
        let (_dir, store) = store().await;
        let dag = dag(true);
        let mut active = 1;
        schedule_dag(&store, &dag, &mut active, at(10, 7))
            .await
            .expect("schedule");
        let listed = store.runs(None, 10).await.expect("runs");
        assert!(listed.rows.is_empty(), "{:?}", listed.rows);
    }
}
