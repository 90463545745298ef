//! `orch backfill DAG --start D --end D [--parallel N] [--rerun]`: one run per logical date,
//! executed here, with progress and a summary.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use futures_util::StreamExt;

use super::{find_dag, say};
use crate::config::Config;
use crate::dag::{Dag, DagBag};
use crate::executor::{Executor, Phase, ShutdownHandle};
use crate::lease::Lease;
use crate::scheduler::plan;
use crate::store::{RunState, RunType, Store};
use crate::worker::LocalWorker;

/// How one date of the backfill ended.
enum Outcome {
    Done(RunState),
    /// Already successful and `--rerun` not given.
    Skipped,
    /// Another process (an `orch serve`) runs it; this one waited for its end.
    RanElsewhere(RunState),
    Error(String),
}

struct DateResult {
    date: DateTime<Utc>,
    run_id: String,
    outcome: Outcome,
    seconds: f64,
    /// For a failed run: which task failed and why, or the run's note.
    why: Option<String>,
}

/// A backfill of more runs than this asks first, or needs `--yes`.
const CONFIRM_ABOVE: usize = 1000;

/// Whether the user, asked on a terminal, agrees to start `runs` runs; without a terminal to
/// ask on, a refusal saying to pass `--yes`.
fn confirmed(dag_id: &str, runs: usize) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "this backfill of `{dag_id}` would start {runs} runs (more than {CONFIRM_ABOVE}); pass --yes to start them"
        );
    }
    eprint!("this backfill of `{dag_id}` starts {runs} runs; go on? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

#[allow(clippy::too_many_arguments)]
pub async fn backfill(
    config: &Config,
    dag_id: &str,
    start: NaiveDate,
    end: NaiveDate,
    parallel: usize,
    rerun: bool,
    yes: bool,
) -> anyhow::Result<ExitCode> {
    if start > end {
        anyhow::bail!("--start {start} is after --end {end}");
    }
    let registry = Arc::new(crate::registry());
    let bag = DagBag::load(&config.dags_dir, &registry);
    let dag = find_dag(&bag, dag_id)?;
    let store = Store::open(&config.database_url).await?;
    let lease = Lease::acquire(&config.state_dir()).context("cannot create the process lease")?;
    let dates = dag
        .backfill_dates(start, end, config.max_backfill_runs)
        .map_err(|too_many| {
            anyhow::anyhow!(
                "the backfill of `{}` from {start} to {end} would start {too_many}",
                dag.id
            )
        })?;
    if dates.is_empty() {
        anyhow::bail!(
            "DAG `{}` has no schedule tick from {start} to {end}",
            dag.id
        );
    }
    if dates.len() > CONFIRM_ABOVE && !yes && !confirmed(&dag.id, dates.len())? {
        anyhow::bail!("backfill not started");
    }
    let (shutdown, watch) = ShutdownHandle::new();
    let (executor, worker) =
        LocalWorker::with_own_executor(config, &store, registry, &lease, "backfill", watch.clone())
            .await?;
    let executor = Arc::new(executor);
    let mut progress = Progress::new(dates.len());
    progress.draw();
    let created = Arc::new(tokio::sync::watch::Sender::new(0));
    let runs =
        futures_util::stream::iter(dates.into_iter().enumerate().map(|(index, logical_date)| {
            let turn = CreationTurn {
                index,
                created: Arc::clone(&created),
            };
            let (dag, store, executor, watch) = (
                Arc::clone(&dag),
                store.clone(),
                Arc::clone(&executor),
                watch.clone(),
            );
            let owner = lease.id().to_string();
            async move {
                let started = Instant::now();
                let (run_id, outcome) = match backfill_date(
                    &dag,
                    logical_date,
                    turn,
                    &store,
                    &executor,
                    &owner,
                    watch,
                    rerun,
                )
                .await
                {
                    Ok(done) => done,
                    Err(e) => (String::new(), Outcome::Error(format!("{e:#}"))),
                };
                let failed = matches!(
                    outcome,
                    Outcome::Done(RunState::Failed) | Outcome::RanElsewhere(RunState::Failed)
                );
                let why = if failed {
                    why_failed(&store, &run_id).await
                } else {
                    None
                };
                DateResult {
                    date: logical_date,
                    run_id,
                    outcome,
                    seconds: started.elapsed().as_secs_f64(),
                    why,
                }
            }
        }))
        .buffer_unordered(parallel);
    tokio::pin!(runs);
    let mut results = Vec::new();
    loop {
        tokio::select! {
            next = runs.next() => match next {
                Some(result) => {
                    progress.finished(&result);
                    results.push(result);
                }
                None => break,
            },
            _ = tokio::signal::ctrl_c() => {
                eprintln!("\ninterrupted: stopping the running dates");
                shutdown.set(Phase::Abort);
            }
        }
    }
    progress.clear();
    shutdown.set(Phase::Draining);
    worker.stop().await;
    results.sort_by_key(|r| r.date);
    print_summary(&results);
    let failed = results.iter().any(|r| {
        !matches!(
            r.outcome,
            Outcome::Done(RunState::Success)
                | Outcome::Skipped
                | Outcome::RanElsewhere(RunState::Success)
        )
    });
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// A date's turn to create its run, once the date before it has created its own: with
/// `--parallel`, a day's `depends_on_past` must find the day before's run, not miss it
/// because that run's row came a moment later.
struct CreationTurn {
    index: usize,
    /// How many dates, in order, have created their runs (or given up).
    created: Arc<tokio::sync::watch::Sender<usize>>,
}

impl CreationTurn {
    async fn wait(&self) {
        let mut created = self.created.subscribe();
        // The sender lives as long as any turn: waiting cannot fail.
        let _ = created.wait_for(|&n| n >= self.index).await;
    }
}

impl Drop for CreationTurn {
    /// The next date's turn comes whether this one created its run or failed to.
    fn drop(&mut self) {
        let next = self.index + 1;
        self.created.send_modify(|n| *n = (*n).max(next));
    }
}

/// Creates (or requeues) the backfill run of `logical_date` in its turn and executes it; a
/// scheduled run of the same logical date is the same run.
#[allow(clippy::too_many_arguments)]
async fn backfill_date(
    dag: &Arc<Dag>,
    logical_date: DateTime<Utc>,
    turn: CreationTurn,
    store: &Store,
    executor: &Executor,
    owner: &str,
    watch: crate::executor::Shutdown,
    rerun: bool,
) -> anyhow::Result<(String, Outcome)> {
    turn.wait().await;
    let run_id = match store.run_for_date(&dag.id, logical_date).await? {
        Some(existing) => {
            let finished = existing.state.is_finished();
            if existing.state == RunState::Success && !rerun {
                return Ok((existing.run_id, Outcome::Skipped));
            }
            if finished && !store.requeue_run(&existing.run_id).await? {
                anyhow::bail!("run `{}` changed while being requeued", existing.run_id);
            }
            existing.run_id
        }
        None => {
            let interval = dag.interval_from(logical_date);
            let run = plan::new_run(
                dag,
                RunType::Backfill,
                interval,
                Default::default(),
                Utc::now(),
            );
            let task_ids: Vec<String> = dag.tasks.iter().map(|t| t.id.clone()).collect();
            store.insert_run(&run, &task_ids).await?;
            run.run_id
        }
    };
    drop(turn);
    let path = dag.path.to_string_lossy();
    if !store.claim_run(&run_id, owner, &dag.source, &path).await? {
        // A running `orch serve` took it: wait for its end rather than run it twice.
        loop {
            let run = store.run(&run_id).await?.context("the run vanished")?;
            if run.state.is_finished() {
                return Ok((run_id, Outcome::RanElsewhere(run.state)));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let record = store.run(&run_id).await?.context("the run vanished")?;
    let state = executor
        .execute(Arc::clone(dag), &record, watch, None)
        .await?;
    let state = match state {
        Some(state) => state,
        None => {
            store.finish_run(&run_id, RunState::Failed).await?;
            RunState::Failed
        }
    };
    Ok((run_id, Outcome::Done(state)))
}

/// Why run `run_id` failed, in a line: its last failed attempt's task and error, else its
/// note.
async fn why_failed(store: &Store, run_id: &str) -> Option<String> {
    let attempts = store.attempts(run_id).await.ok()?;
    let failed = attempts
        .iter()
        .rev()
        .find(|a| a.state == crate::store::AttemptState::Failed);
    match failed {
        Some(attempt) => Some(format!(
            "{}: {}",
            attempt.task_id,
            attempt.error.as_deref().unwrap_or("failed")
        )),
        None => store.run(run_id).await.ok()??.note,
    }
}

/// A bar redrawn in place on a terminal; a plain line per finished date otherwise.
struct Progress {
    total: usize,
    done: usize,
    failed: usize,
    tty: bool,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            done: 0,
            failed: 0,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn finished(&mut self, result: &DateResult) {
        self.done += 1;
        let (word, ok) = describe(&result.outcome);
        if !ok {
            self.failed += 1;
        }
        if self.tty {
            self.draw();
        } else {
            let why = result
                .why
                .as_deref()
                .map(|why| format!(": {}", why.lines().next().unwrap_or_default()))
                .unwrap_or_default();
            eprintln!(
                "[{}/{}] {} {word} ({:.1} s){why}",
                self.done,
                self.total,
                logical(result.date),
                result.seconds
            );
        }
    }

    fn draw(&self) {
        if !self.tty {
            return;
        }
        const WIDTH: usize = 30;
        let filled = (self.done * WIDTH).checked_div(self.total).unwrap_or(WIDTH);
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r[{}{}] {}/{} dates, {} failed",
            "#".repeat(filled),
            "-".repeat(WIDTH - filled),
            self.done,
            self.total,
            self.failed
        );
        let _ = err.flush();
    }

    fn clear(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

/// A logical date as the summary shows it: `2026-11-20T04:00:00Z`.
fn logical(date: DateTime<Utc>) -> String {
    date.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A word for the outcome, and whether it counts as a success.
fn describe(outcome: &Outcome) -> (String, bool) {
    match outcome {
        Outcome::Done(state) => (state.to_string(), *state == RunState::Success),
        Outcome::Skipped => ("skipped (already successful)".to_string(), true),
        Outcome::RanElsewhere(state) => (
            format!("{state} (run by another process)"),
            *state == RunState::Success,
        ),
        Outcome::Error(e) => (format!("error: {e}"), false),
    }
}

fn print_summary(results: &[DateResult]) {
    say!(
        "{:<20} {:<40} {:>9}  OUTCOME",
        "LOGICAL_DATE",
        "RUN",
        "SECONDS"
    );
    for r in results {
        let (word, _) = describe(&r.outcome);
        say!(
            "{:<20} {:<40} {:>9.1}  {word}",
            logical(r.date),
            r.run_id,
            r.seconds
        );
    }
    let ok = results.iter().filter(|r| describe(&r.outcome).1).count();
    say!("{ok} of {} dates succeeded", results.len());
}
