//! Scheduler overhead benchmark: `cargo bench --bench orchestrator`.
//!
//! Measures, with the run history written to SQLite as in production:
//! - the gap between one task's end and the next task's start in a 100-task chain of `noop`s,
//!   with each attempt in its own process (as orch runs them) and in the executor's process:
//!   the difference is what the child-process model costs per task;
//! - the wall time of a DAG that fans out to 1,000 `noop` tasks, and of one `noop` task mapped
//!   over 1,000 items with `for_each:` (the same work, expanded at run time);
//! - the wall time from `orch trigger --wait` to the run's success for a 3-task chain through a
//!   running `orch serve`, and the same span as the run history records it;
//!
//! The chains and fan-outs fork a process for every `noop` attempt, as for every other kind
//! (orch's own `noop` runs no code and skips the process): they measure isolation's cost.
//! - the resident memory of an idle `orch serve`.
//!
//! Prints a Markdown table for docs/benchmarks.md.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orch::attempt::Isolation;
use orch::dag::{Dag, load_str};
use orch::executor::{Executor, ShutdownHandle};
use orch::lease::Lease;
use orch::queue::Dispatch;
use orch::scheduler::plan;
use orch::store::{RunState, Store};
use orch::tasks::{BoxFuture, Registry, TaskContext, TaskError, TaskKind, TaskOutput};
use orch::worker::Worker;

const REPEATS: usize = 7;
const BIN: &str = env!("CARGO_BIN_EXE_orch");

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let chain = runtime.block_on(chain_gaps(child_processes()));
    let in_process = runtime.block_on(chain_gaps(Isolation::InProcess));
    let (fan_out, mapped) = runtime.block_on(fan_out_wall_times());
    let serve = serve_trigger_and_memory();

    println!("| measure | median | runs |");
    println!("|---|---|---|");
    println!(
        "| gap between tasks, 100-task noop chain, each attempt in its own process | {:.3} ms | {} chains, {} gaps |",
        chain.0, REPEATS, chain.1
    );
    println!(
        "| wall time of one 100-task chain run, each attempt in its own process | {:.1} ms | {REPEATS} |",
        chain.2
    );
    println!(
        "| wall time of one 100-task chain run, attempts in the executor's process | {:.1} ms | {REPEATS} |",
        in_process.2
    );
    println!(
        "| cost of the child process per task (difference of the two, / 100) | {:.2} ms | |",
        (chain.2 - in_process.2) / 100.0
    );
    println!(
        "| wall time, 1,000-task fan-out | {:.1} ms | {REPEATS} |",
        fan_out
    );
    println!(
        "| wall time, one task mapped over 1,000 items (`for_each`) | {:.1} ms | {REPEATS} |",
        mapped
    );
    println!(
        "| `orch trigger --wait` to success, 3-task chain via `orch serve` | {:.1} ms | {} |",
        serve.trigger_wall_ms, serve.samples
    );
    println!(
        "| queued to success in the run history, same runs | {:.1} ms | {} |",
        serve.queued_to_end_ms, serve.samples
    );
    println!(
        "| idle `orch serve` resident memory | {:.1} MB | after start-up |",
        serve.idle_rss_mb
    );
    println!(
        "| `orch serve` resident memory after the trigger runs | {:.1} MB | |",
        serve.after_rss_mb
    );
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// A fresh home with its store, an executor as `orch serve` builds it, and a worker of the
/// executor's queue running attempts as `isolation` says.
struct Bench {
    store: Store,
    executor: Executor,
    _lease: Lease,
    _stop: ShutdownHandle,
}

async fn setup(dir: &Path, isolation: Isolation) -> Bench {
    let url = format!("sqlite://{}", dir.join("orch.db").display());
    let store = Store::open(&url).await.expect("store");
    // `orch serve`'s default: four slots per CPU.
    let parallelism = 4 * std::thread::available_parallelism().map_or(2, |n| n.get());
    let registry = Arc::new(noop_in_its_own_process());
    let lease = Lease::acquire(dir).expect("lease");
    let executor = Executor {
        store: store.clone(),
        registry: Arc::clone(&registry),
        logs_dir: dir.join("logs"),
        dispatch: Dispatch::start(store.clone(), Duration::from_secs(30)),
        private_queue: Some("bench".to_string()),
        public_url: None,
        handoff: None,
        pools: Default::default(),
        failed_past_ends_run: false,
    };
    let worker = Worker {
        store: store.clone(),
        registry,
        isolation,
        home: dir.to_path_buf(),
        logs_dir: dir.join("logs"),
        data: orch::config::DataPlaces {
            lake_url: orch::lake::Lake::default_url(dir),
            warehouse_url: format!("sqlite://{}", dir.join("data/warehouse.db").display()),
            binance_api_url: "http://127.0.0.1:9".to_string(),
            mercado_bitcoin_api_url: String::new(),
            kucoin_api_url: String::new(),
            mercado_bitcoin_ws_url: String::new(),
            staging_url: orch::staging::Staging::default_url(dir),
            binance_ws_url: "ws://127.0.0.1:9".to_string(),
            nats_url: "nats://127.0.0.1:9".to_string(),
            connections: Default::default(),
        },
        queues: vec!["bench".to_string()],
        slots: orch::queue::Slots::new(parallelism),
        id: lease.id().to_string(),
    };
    let (stop, shutdown) = ShutdownHandle::new();
    // As `orch serve` runs them: the executor hands attempts straight to its worker.
    let (handoff, handed) = orch::queue::handoff(&worker.id, &worker.queues, worker.slots.clone());
    let executor = executor.with_handoff(Some(handoff));
    tokio::spawn(worker.run(shutdown, tokio::sync::watch::channel(false).1, Some(handed)));
    Bench {
        store,
        executor,
        _lease: lease,
        _stop: stop,
    }
}

/// Creates, claims and executes one manual run; returns its wall time in ms.
async fn execute_once(store: &Store, executor: &Executor, dag: &Arc<Dag>) -> (String, f64) {
    let run = plan::manual_run(dag, None, Default::default(), chrono::Utc::now());
    let ids: Vec<String> = dag.tasks.iter().map(|t| t.id.clone()).collect();
    let started = Instant::now();
    store.insert_run(&run, &ids).await.expect("insert run");
    store
        .claim_run(&run.run_id, "bench", &dag.source, "bench.yaml")
        .await
        .expect("claim");
    let record = store
        .run(&run.run_id)
        .await
        .expect("read run")
        .expect("run exists");
    let (_handle, shutdown) = ShutdownHandle::new();
    let state = executor
        .execute(Arc::clone(dag), &record, shutdown, None)
        .await
        .expect("execute");
    assert_eq!(state, Some(RunState::Success));
    (run.run_id, started.elapsed().as_secs_f64() * 1000.0)
}

fn dag(yaml: &str) -> Arc<Dag> {
    Arc::new(load_str(Path::new("bench.yaml"), yaml, &orch::registry()).expect("bench DAG"))
}

/// The built-in kinds, but `noop` forks a process for each attempt as the other kinds do
/// (orch's own `noop` needs none, and skips it): the measures are of isolation's cost. The
/// child process runs the built-in `noop`.
fn noop_in_its_own_process() -> Registry {
    struct Forked(Arc<dyn TaskKind>);
    impl TaskKind for Forked {
        fn name(&self) -> &'static str {
            self.0.name()
        }
        fn check(&self, with: &serde_json::Value) -> Result<(), String> {
            self.0.check(with)
        }
        fn needs_process(&self) -> bool {
            true
        }
        fn run<'a>(
            &'a self,
            with: serde_json::Value,
            ctx: &'a TaskContext,
        ) -> BoxFuture<'a, Result<TaskOutput, TaskError>> {
            self.0.run(with, ctx)
        }
    }
    let mut registry = orch::registry();
    let noop = Arc::clone(registry.get("noop").expect("noop is built in"));
    registry.register(Arc::new(Forked(noop)));
    registry
}

/// Each attempt in a child process of the orch binary, as the commands run them.
fn child_processes() -> Isolation {
    Isolation::child_processes(BIN.into())
}

/// Median gap (ms), number of gaps, median chain wall time (ms).
async fn chain_gaps(isolation: Isolation) -> (f64, usize, f64) {
    let mut yaml = String::from("tasks:\n  - {id: t0, kind: noop}\n");
    for i in 1..100 {
        yaml.push_str(&format!(
            "  - {{id: t{i}, kind: noop, depends_on: [t{}]}}\n",
            i - 1
        ));
    }
    let dag = dag(&yaml);
    let dir = tempfile::tempdir().expect("tempdir");
    let bench = setup(dir.path(), isolation).await;
    let (store, executor) = (&bench.store, &bench.executor);
    let mut gaps = Vec::new();
    let mut walls = Vec::new();
    for _ in 0..REPEATS {
        let (run_id, wall) = execute_once(store, executor, &dag).await;
        walls.push(wall);
        let attempts = store.attempts(&run_id).await.expect("attempts");
        for i in 1..100 {
            let prev = attempts
                .iter()
                .find(|a| a.task_id == format!("t{}", i - 1))
                .expect("prev");
            let next = attempts
                .iter()
                .find(|a| a.task_id == format!("t{i}"))
                .expect("next");
            let gap = next.started_at - prev.ended_at.expect("ended");
            gaps.push(gap.num_microseconds().unwrap_or_default() as f64 / 1000.0);
        }
    }
    let count = gaps.len();
    (median(gaps), count, median(walls))
}

/// The wall times of a 1,000-task fan-out and of one task mapped over 1,000 items, run in
/// turn in one home so that both meet the same filesystem and database.
async fn fan_out_wall_times() -> (f64, f64) {
    let mut yaml = String::from("max_active_tasks: 1000\ntasks:\n  - {id: root, kind: noop}\n");
    for i in 0..1000 {
        yaml.push_str(&format!(
            "  - {{id: leaf{i}, kind: noop, depends_on: [root]}}\n"
        ));
    }
    let fan_out = dag(&yaml);
    let items: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    let mapped = dag(&format!(
        "id: mapped\nmax_active_tasks: 1000\ntasks:\n  - {{id: root, kind: noop}}\n  - {{id: leaf, kind: noop, depends_on: [root], for_each: [{}]}}\n",
        items.join(", ")
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let bench = setup(dir.path(), child_processes()).await;
    let (store, executor) = (&bench.store, &bench.executor);
    let (mut fan_out_walls, mut mapped_walls) = (Vec::new(), Vec::new());
    for _ in 0..REPEATS {
        fan_out_walls.push(execute_once(store, executor, &fan_out).await.1);
        mapped_walls.push(execute_once(store, executor, &mapped).await.1);
    }
    (median(fan_out_walls), median(mapped_walls))
}

struct ServeFigures {
    trigger_wall_ms: f64,
    queued_to_end_ms: f64,
    samples: usize,
    idle_rss_mb: f64,
    after_rss_mb: f64,
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb / 1024.0
}

fn serve_trigger_and_memory() -> ServeFigures {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("dags")).expect("dags");
    std::fs::write(
        dir.path().join("dags/chain3.yaml"),
        "tasks:\n  - {id: a, kind: noop}\n  - {id: b, kind: noop, depends_on: [a]}\n  - {id: c, kind: noop, depends_on: [b]}\n",
    )
    .expect("dag");
    let orch = |args: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.arg("--home").arg(dir.path()).args(args);
        cmd
    };
    let mut server = orch(&["serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start orch serve");
    // Let start-up settle (migrations, first pass) before reading an idle figure.
    std::thread::sleep(Duration::from_secs(3));
    let idle_rss_mb = rss_mb(server.id());

    let samples = 20;
    let mut walls = Vec::new();
    let mut spans = Vec::new();
    for _ in 0..samples {
        let started = Instant::now();
        let out = orch(&["trigger", "chain3", "--wait"])
            .output()
            .expect("trigger");
        walls.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let run_id = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("run id")
            .to_string();
        let show = orch(&["runs", "show", &run_id, "--json"])
            .output()
            .expect("show");
        let run: serde_json::Value = serde_json::from_slice(&show.stdout).expect("json");
        let time = |k: &str| {
            chrono::DateTime::parse_from_rfc3339(run[k].as_str().expect("time")).expect("rfc3339")
        };
        spans.push(
            (time("ended_at") - time("queued_at"))
                .num_microseconds()
                .unwrap_or_default() as f64
                / 1000.0,
        );
    }
    let after_rss_mb = rss_mb(server.id());
    let _ = server.kill();
    let _ = server.wait();
    ServeFigures {
        trigger_wall_ms: median(walls),
        queued_to_end_ms: median(spans),
        samples,
        idle_rss_mb,
        after_rss_mb,
    }
}
