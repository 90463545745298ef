//! Sustained throughput: `cargo bench --bench throughput`.
//!
//! Runs of a 2-task DAG (`noop` then `noop`, each attempt in its own process as always) arrive
//! at a fixed rate through real `orch serve` and `orch worker` processes: the benchmark writes
//! each run into the history and wakes the scheduler, as `orch trigger` does, then reads back
//! every run's queued-to-success span. Rates climb step by step; a rate is sustained when
//! every run of its step ended and the p99 span stayed under 1 s. Setups:
//! - SQLite, one `orch serve` with its own worker;
//! - PostgreSQL (`ORCH_TEST_POSTGRES_URL`, as the tests use), one `orch serve --no-worker`
//!   and 1, 2 and 4 `orch worker` processes.
//!
//! Prints a Markdown table for docs/benchmarks.md.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orch::dag::{Dag, load_str};
use orch::scheduler::plan;
use orch::store::{RunState, Store};
use orch::tasks::Registry;

const BIN: &str = env!("CARGO_BIN_EXE_orch");
const DAG: &str = "max_active_runs: 10000\nmax_active_tasks: 2\ntasks:\n  - {id: a, kind: noop}\n  - {id: b, kind: noop, depends_on: [a]}\n";
/// Runs per minute tried, in order, until one is not sustained.
const RATES: [u32; 8] = [1_000, 2_000, 4_000, 6_000, 8_000, 10_000, 15_000, 20_000];
const STEP: Duration = Duration::from_secs(20);
const P99_LIMIT_MS: f64 = 1000.0;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!("| setup | runs/min offered | runs | p50 queued→success | p99 | sustained |");
    println!("|---|---|---|---|---|---|");
    runtime.block_on(setup("SQLite, `orch serve` with its worker", None, 0));
    match std::env::var("ORCH_TEST_POSTGRES_URL") {
        Ok(admin) if !admin.is_empty() => {
            for workers in [1, 2, 4] {
                let url = runtime.block_on(fresh_database(&admin, workers));
                let label = format!("PostgreSQL, `orch serve` + {workers} `orch worker`");
                runtime.block_on(setup(&label, Some(url), workers));
            }
        }
        _ => eprintln!("ORCH_TEST_POSTGRES_URL is not set: PostgreSQL setups skipped"),
    }
}

/// One setup: its processes, then the rate steps.
async fn setup(label: &str, database_url: Option<String>, workers: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let homes: Vec<PathBuf> = (0..=workers)
        .map(|i| {
            let home = dir.path().join(format!("home{i}"));
            std::fs::create_dir_all(home.join("dags")).expect("dags");
            std::fs::write(home.join("dags/two.yaml"), DAG).expect("dag");
            home
        })
        .collect();
    let url = database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", homes[0].join("orch.db").display()));
    let serve_args: &[&str] = if workers == 0 {
        &["serve"]
    } else {
        &["serve", "--no-worker"]
    };
    let mut processes = vec![start(&homes[0], &url, serve_args)];
    for home in &homes[1..] {
        processes.push(start(home, &url, &["worker"]));
    }
    let store = Store::open(&url).await.expect("store");
    let dag = Arc::new(load_str(Path::new("two.yaml"), DAG, &Registry::builtin()).expect("dag"));
    wait_for_leader(&store).await;
    let state_dir = homes[0].join(".orch");
    for rate in RATES {
        let (runs, p50, p99, all_ended) = step(&store, &dag, &state_dir, rate).await;
        let sustained = all_ended && p99 <= P99_LIMIT_MS;
        println!(
            "| {label} | {rate} | {runs} | {p50:.0} ms | {p99:.0} ms | {} |",
            if sustained { "yes" } else { "no" }
        );
        if !sustained {
            break;
        }
    }
    for mut p in processes {
        let _ = p.kill();
        let _ = p.wait();
    }
}

fn start(home: &Path, url: &str, args: &[&str]) -> Child {
    Command::new(BIN)
        .arg("--home")
        .arg(home)
        .args(args)
        .env("ORCH_DATABASE_URL", url)
        .env("ORCH_PARALLELISM", "4")
        .env("ORCH_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start orch")
}

async fn wait_for_leader(store: &Store) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.scheduler_lease().await.ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "no scheduler took the lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Offers `rate` runs a minute for [`STEP`]; returns the runs, the p50 and p99 spans (ms),
/// and whether every run ended within 10 s of the step.
async fn step(
    store: &Store,
    dag: &Arc<Dag>,
    state_dir: &Path,
    rate: u32,
) -> (usize, f64, f64, bool) {
    let every = Duration::from_secs(60) / rate;
    let task_ids: Vec<String> = dag.tasks.iter().map(|t| t.id.clone()).collect();
    let started = Instant::now();
    let mut ids = Vec::new();
    let mut next = tokio::time::Instant::now();
    while started.elapsed() < STEP {
        let run = plan::manual_run(dag, None, Default::default(), chrono::Utc::now());
        store.insert_run(&run, &task_ids).await.expect("insert run");
        orch::scheduler::wake(state_dir).await;
        ids.push(run.run_id);
        next += every;
        tokio::time::sleep_until(next).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut spans = Vec::new();
    let mut all_ended = true;
    for id in &ids {
        loop {
            let run = store.run(id).await.expect("read").expect("run");
            if run.state == RunState::Success {
                let ended = run.ended_at.expect("ended");
                spans.push(
                    (ended - run.queued_at)
                        .num_microseconds()
                        .unwrap_or_default() as f64
                        / 1000.0,
                );
                break;
            }
            if Instant::now() > deadline {
                all_ended = false;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !all_ended {
            break;
        }
    }
    // Let the next step start from an empty queue.
    drain(store, deadline + Duration::from_secs(60)).await;
    spans.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        spans
            .get(((spans.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    (ids.len(), pct(0.5), pct(0.99), all_ended)
}

async fn drain(store: &Store, until: Instant) {
    loop {
        let queued = store
            .runs_in_state(RunState::Queued)
            .await
            .expect("runs")
            .rows
            .len();
        let running = store
            .runs_in_state(RunState::Running)
            .await
            .expect("runs")
            .rows
            .len();
        if queued + running == 0 || Instant::now() > until {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A new database on the benchmark's PostgreSQL server.
async fn fresh_database(admin: &str, n: usize) -> String {
    use sqlx::Connection;
    let name = format!("orch_bench_throughput_{n}_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .expect("PostgreSQL");
    for statement in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(&mut conn)
            .await
            .expect("create the benchmark's database");
    }
    let server = admin.rsplit_once('/').map_or(admin, |(s, _)| s);
    format!("{server}/{name}")
}
