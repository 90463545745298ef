//! `orch serve`: the long-running scheduler.
//!
//! A small loop over `croner` ticks rather than a cron-job library: each pass creates the runs
//! that are due (catchup included; a unique index makes a run per logical date at most once),
//! starts queued runs within `max_active_runs`, adopts runs whose process died, and reloads DAG
//! files that changed. It sleeps until the next tick, a wake-up from `orch trigger`, the end of
//! a run, or one second, whichever comes first.

pub mod plan;
mod wake;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::Map;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::dag::{Dag, DagBag, load_str};
use crate::executor::{Executor, Phase, ShutdownHandle};
use crate::lease::{self, Lease, ServeLock};
use crate::store::{RunRecord, RunState, RunType, Store, StoreError};
use crate::stream::ingest::IngestPlaces;
use crate::stream::supervisor::Supervisor;
use crate::tasks::Registry;

pub use wake::wake;

/// How often DAG files are re-read; the issue asks for reloads within 2 seconds.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

pub struct ServeOptions {
    /// How long running tasks may go on after SIGTERM or Ctrl-C before they are stopped.
    pub grace: Duration,
}

type RunOutcome = (String, Result<Option<RunState>, StoreError>);

struct Scheduler {
    store: Store,
    registry: Arc<Registry>,
    executor: Executor,
    bag: DagBag,
    lease: Lease,
    shutdown: ShutdownHandle,
    runs: JoinSet<RunOutcome>,
    /// Run ids this process executes now.
    active: HashSet<String>,
    /// Queued runs already reported as waiting for a missing DAG, to warn once.
    reported_missing: HashSet<String>,
    streams: Supervisor,
    dags_dir: std::path::PathBuf,
}

/// Runs the scheduler until SIGTERM or Ctrl-C.
pub async fn serve(config: Config, options: ServeOptions) -> anyhow::Result<()> {
    let state_dir = config.state_dir();
    let _lock = ServeLock::acquire(&state_dir)?;
    let store = Store::open(&config.database_url).await?;
    let lease = Lease::acquire(&state_dir).context("cannot create the process lease")?;
    let wake = match wake::WakeListener::bind(&state_dir) {
        Ok(listener) => Some(listener),
        Err(e) => {
            tracing::warn!(error = %e, "no wake-up socket; triggered runs start within a second");
            None
        }
    };
    let registry = Arc::new(Registry::builtin());
    let bag = DagBag::load(&config.dags_dir, &registry);
    for error in bag.errors() {
        tracing::error!("DAG file not loaded: {error}");
    }
    let (shutdown, _) = ShutdownHandle::new();
    let executor = Executor {
        store: store.clone(),
        registry: Arc::clone(&registry),
        home: config.home.clone(),
        logs_dir: config.logs_dir.clone(),
        slots: Arc::new(Semaphore::new(config.parallelism)),
        data: config.data.clone(),
    };
    tracing::info!(
        home = %config.home.display(),
        dags = bag.dags().count(),
        broken_files = bag.errors().count(),
        parallelism = config.parallelism,
        "orch serve started"
    );
    let streams = Supervisor::new(IngestPlaces::of(&config.data), store.clone(), lease.id());
    let mut scheduler = Scheduler {
        store,
        registry,
        executor,
        bag,
        lease,
        shutdown,
        runs: JoinSet::new(),
        active: HashSet::new(),
        reported_missing: HashSet::new(),
        streams,
        dags_dir: config.dags_dir.clone(),
    };
    scheduler.sync_streams().await;
    scheduler.run(wake.as_ref()).await?;
    scheduler.streams.stop_all().await;
    scheduler.stop(options.grace).await;
    tracing::info!("orch serve stopped");
    Ok(())
}

impl Scheduler {
    async fn run(&mut self, wake: Option<&wake::WakeListener>) -> anyhow::Result<()> {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot listen for SIGTERM")?;
        let mut next_reload = tokio::time::Instant::now() + RELOAD_INTERVAL;
        loop {
            let next_tick = match self.pass().await {
                Ok(next) => next,
                Err(e) => {
                    // A locked or briefly unavailable database must not kill the scheduler.
                    tracing::error!(error = %e, "scheduling pass failed; retrying");
                    None
                }
            };
            let until_tick = next_tick
                .and_then(|t| (t - Utc::now()).to_std().ok())
                .map(|d| tokio::time::Instant::now() + d);
            let wake_at = until_tick.map_or(next_reload, |t| t.min(next_reload));
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = terminate.recv() => return Ok(()),
                _ = async { match wake { Some(w) => w.woken().await, None => std::future::pending().await } } => {}
                Some(done) = self.runs.join_next(), if !self.runs.is_empty() => self.on_run_end(done),
                _ = tokio::time::sleep_until(wake_at) => {}
            }
            if tokio::time::Instant::now() >= next_reload {
                if self.reload() {
                    self.sync_streams().await;
                }
                next_reload = tokio::time::Instant::now() + RELOAD_INTERVAL;
            }
        }
    }

    /// Starts, restarts and stops streams to match the stream files of the DAGs folder.
    async fn sync_streams(&mut self) {
        let (defs, errors) = crate::stream::load_dir(&self.dags_dir);
        for error in errors {
            tracing::error!("stream file not loaded: {error}");
        }
        self.streams.sync(defs).await;
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
                // A stream file: `sync_streams` reports it.
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
        if self.shutdown.phase() != Phase::Running {
            return Ok(None);
        }
        let paused = self.paused_dags().await?;
        let running = self.store.runs_in_state(RunState::Running).await?;
        let queued = self.store.runs_in_state(RunState::Queued).await?;
        let mut active_by_dag: HashMap<String, u32> = HashMap::new();
        for run in running.iter().chain(&queued) {
            *active_by_dag.entry(run.dag_id.clone()).or_default() += 1;
        }
        let next_tick = self
            .create_scheduled_runs(&paused, &mut active_by_dag)
            .await?;
        self.adopt_orphans(&running).await?;
        self.start_queued(&paused).await?;
        Ok(next_tick)
    }

    async fn paused_dags(&self) -> Result<HashSet<String>, StoreError> {
        let overrides = self.store.pause_overrides().await?;
        Ok(self
            .bag
            .dags()
            .filter(|d| overrides.get(&d.id).copied().unwrap_or(d.paused))
            .map(|d| d.id.clone())
            .collect())
    }

    /// Creates the runs of every interval that has ended, within `max_active_runs`.
    async fn create_scheduled_runs(
        &mut self,
        paused: &HashSet<String>,
        active_by_dag: &mut HashMap<String, u32>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let now = Utc::now();
        let mut next_tick: Option<DateTime<Utc>> = None;
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
            let mut last_end = self.store.last_scheduled_end(&dag.id).await?;
            let active = active_by_dag.entry(dag.id.clone()).or_default();
            while *active < dag.max_active_runs {
                let Some(interval) = dag.next_scheduled_interval(last_end, now) else {
                    break;
                };
                let run = plan::new_run(&dag, RunType::Scheduled, interval, Map::new(), now);
                let task_ids: Vec<String> = dag.tasks.iter().map(|t| t.id.clone()).collect();
                if self.store.insert_run(&run, &task_ids).await? {
                    tracing::info!(dag_id = %dag.id, run_id = %run.run_id, "scheduled run created");
                    *active += 1;
                }
                // An existing run (e.g. a backfill of that date) counts as done for the schedule.
                last_end = Some(interval.end);
            }
            if let Some(due) = dag.next_due(last_end, now) {
                next_tick = Some(next_tick.map_or(due, |t| t.min(due)));
            }
        }
        Ok(next_tick)
    }

    /// Resumes runs whose executing process died (`kill -9`, crash, power loss).
    async fn adopt_orphans(&mut self, running: &[RunRecord]) -> Result<(), StoreError> {
        for run in running {
            if self.active.contains(&run.run_id) {
                continue;
            }
            if let Some(owner) = &run.owner
                && (owner == self.lease.id() || lease::is_alive(owner))
            {
                continue;
            }
            if !self
                .store
                .adopt_run(&run.run_id, run.owner.as_deref(), self.lease.id())
                .await?
            {
                continue;
            }
            let Some(dag) = self.definition_of(run) else {
                tracing::error!(run_id = %run.run_id, dag_id = %run.dag_id, "cannot resume run: its DAG definition no longer loads; marking it failed");
                self.store.finish_run(&run.run_id, RunState::Failed).await?;
                continue;
            };
            tracing::warn!(run_id = %run.run_id, previous_owner = ?run.owner, "resuming a run whose process stopped");
            self.spawn(dag, run.clone());
        }
        Ok(())
    }

    /// The definition a run started with, else the current one.
    fn definition_of(&self, run: &RunRecord) -> Option<Arc<Dag>> {
        if let Some(source) = &run.dag_source {
            let path = run.dag_path.as_deref().unwrap_or("dag.yaml");
            match load_str(Path::new(path), source, &self.registry) {
                Ok(dag) => return Some(Arc::new(dag)),
                Err(e) => {
                    tracing::warn!(run_id = %run.run_id, "the run's saved definition no longer loads: {e}")
                }
            }
        }
        self.bag.get(&run.dag_id).cloned()
    }

    async fn start_queued(&mut self, paused: &HashSet<String>) -> Result<(), StoreError> {
        let queued = self.store.runs_in_state(RunState::Queued).await?;
        if queued.is_empty() {
            return Ok(());
        }
        let mut running_by_dag: HashMap<String, u32> = HashMap::new();
        for run in self.store.runs_in_state(RunState::Running).await? {
            *running_by_dag.entry(run.dag_id).or_default() += 1;
        }
        for run in queued {
            let Some(dag) = self.bag.get(&run.dag_id).cloned() else {
                if self.reported_missing.insert(run.run_id.clone()) {
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
            let path = dag.path.to_string_lossy();
            if self
                .store
                .claim_run(&run.run_id, self.lease.id(), &dag.source, &path)
                .await?
            {
                *running += 1;
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
        self.runs.spawn(async move {
            let outcome = executor.execute(dag, &run, shutdown, None).await;
            (run.run_id, outcome)
        });
    }

    fn on_run_end(&mut self, joined: Result<RunOutcome, tokio::task::JoinError>) {
        match joined {
            Ok((run_id, outcome)) => {
                self.active.remove(&run_id);
                match outcome {
                    Ok(Some(state)) => {
                        tracing::info!(run_id = %run_id, state = %state, "run finished")
                    }
                    Ok(None) => {
                        tracing::info!(run_id = %run_id, "run left to resume after restart")
                    }
                    Err(e) => {
                        tracing::error!(run_id = %run_id, error = %e, "run stopped on a database error; it resumes on restart")
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "a run's executor panicked"),
        }
    }

    /// Drains: no new attempts; running ones get `grace` to finish, then are stopped.
    async fn stop(&mut self, grace: Duration) {
        tracing::info!(running_runs = self.runs.len(), grace = %humantime::format_duration(grace), "shutting down");
        self.shutdown.set(Phase::Draining);
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        while !self.runs.is_empty() {
            tokio::select! {
                Some(done) = self.runs.join_next() => self.on_run_end(done),
                _ = &mut deadline => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        self.shutdown.set(Phase::Abort);
        while let Some(done) = self.runs.join_next().await {
            self.on_run_end(done);
        }
    }
}
