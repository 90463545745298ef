//! Sustained throughput through the REST API: `cargo bench --bench throughput`.
//!
//! Runs of a 2-task DAG are triggered with `POST /api/v1/dags/tp/runs` at a fixed rate by up
//! to 32 concurrent clients on keep-alive connections, against real `orch serve` and `orch
//! worker` processes. A run's span is from the time its trigger was due by the schedule to
//! the end the run history records: when all 32 clients wait for answers, the requests due
//! meanwhile go late, and their lateness counts.
//!
//! For each setup the rate climbs (`ORCH_BENCH_STEP_SECS`, default 30 s a step) until the p99
//! span passes 1 s or a run does not end: the knee. Then the target rate is held for
//! `ORCH_BENCH_SUSTAIN_SECS` (default 300 s); `ORCH_BENCH_RATES` (comma-separated runs/min)
//! replaces the ladder. Setups (`ORCH_BENCH_SETUPS`, comma-separated,
//! default all):
//! - `sqlite-noop`, `sqlite-shell`: SQLite, one `orch serve` with its own worker;
//! - `postgres-noop`, `postgres-shell`: PostgreSQL (`ORCH_TEST_POSTGRES_URL`), `orch serve
//!   --no-worker` and two `orch worker`s.
//!
//! `noop` tasks run no command; `shell` tasks run `true` through the shell. Every attempt runs
//! in its own process either way. Prints Markdown tables for docs/benchmarks.md.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use orch::store::{RunState, Store};
use tokio::sync::Semaphore;

const BIN: &str = env!("CARGO_BIN_EXE_orch");
const TOKEN: &str = "throughput-bench-token";
const CLIENTS: usize = 32;
const P99_LIMIT_MS: f64 = 1000.0;

struct Setup {
    name: &'static str,
    postgres: bool,
    shell: bool,
    /// The rates tried, runs per minute, in order.
    rates: &'static [u32],
    /// The rate held for the sustained measure.
    target: u32,
}

const SETUPS: [Setup; 4] = [
    Setup {
        name: "sqlite-noop",
        postgres: false,
        shell: false,
        rates: &[5_000, 10_000, 15_000, 20_000, 25_000, 30_000, 40_000],
        target: 10_000,
    },
    Setup {
        name: "sqlite-shell",
        postgres: false,
        shell: true,
        rates: &[2_500, 5_000, 7_500, 10_000, 15_000, 20_000, 25_000, 30_000],
        target: 10_000,
    },
    Setup {
        name: "postgres-noop",
        postgres: true,
        shell: false,
        rates: &[5_000, 7_500, 10_000, 15_000, 20_000, 25_000, 30_000, 40_000],
        target: 20_000,
    },
    Setup {
        name: "postgres-shell",
        postgres: true,
        shell: true,
        rates: &[2_500, 5_000, 7_500, 10_000, 15_000, 20_000, 25_000, 30_000],
        target: 20_000,
    },
];

fn seconds(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let step = seconds("ORCH_BENCH_STEP_SECS", 30);
    let sustain = seconds("ORCH_BENCH_SUSTAIN_SECS", 300);
    let wanted: Option<Vec<String>> = std::env::var("ORCH_BENCH_SETUPS")
        .ok()
        .map(|v| v.split(',').map(str::to_string).collect());
    let postgres = std::env::var("ORCH_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty());
    println!(
        "| setup | runs/min offered | seconds | runs accepted | 429 | p50 trigger→end | p99 | max | sustained |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for setup in &SETUPS {
        if wanted
            .as_ref()
            .is_some_and(|w| !w.iter().any(|n| n == setup.name))
        {
            continue;
        }
        let database = match (setup.postgres, &postgres) {
            (false, _) => None,
            (true, Some(admin)) => Some(runtime.block_on(fresh_database(admin, setup.name))),
            (true, None) => {
                eprintln!("ORCH_TEST_POSTGRES_URL is not set: {} skipped", setup.name);
                continue;
            }
        };
        runtime.block_on(run_setup(setup, database, step, sustain));
    }
}

/// One setup's processes, its rate ladder up to the knee, then the target held.
async fn run_setup(setup: &Setup, database_url: Option<String>, step: Duration, sustain: Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let workers = if setup.postgres { 2 } else { 0 };
    let task = if setup.shell {
        "kind: shell, with: {command: 'true'}"
    } else {
        "kind: noop"
    };
    let dag = format!(
        "max_active_runs: 100000\ntasks:\n  - {{id: a, {task}}}\n  - {{id: b, {task}, depends_on: [a]}}\n"
    );
    let homes: Vec<PathBuf> = (0..=workers)
        .map(|i| {
            let home = dir.path().join(format!("home{i}"));
            std::fs::create_dir_all(home.join("dags")).expect("dags");
            std::fs::write(home.join("dags/tp.yaml"), &dag).expect("dag");
            home
        })
        .collect();
    let url = database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", homes[0].join("orch.db").display()));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let serve_args: Vec<&str> = if workers == 0 {
        vec!["serve", "--listen", &listen]
    } else {
        vec!["serve", "--no-worker", "--listen", &listen]
    };
    let mut processes = vec![start(&homes[0], &url, &serve_args)];
    for home in &homes[1..] {
        processes.push(start(home, &url, &["worker"]));
    }
    let store = Store::open(&url).await.expect("store");
    let base = format!("http://{listen}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    wait_until_up(&client, &base).await;
    let mut knee = None;
    let rates: Vec<u32> = std::env::var("ORCH_BENCH_RATES")
        .ok()
        .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
        .unwrap_or_else(|| setup.rates.to_vec());
    for rate in rates {
        let result = offer(&client, &base, &store, rate, step).await;
        result.print(setup.name, rate, step);
        if !result.sustained() {
            knee = Some(rate);
            break;
        }
    }
    // `ORCH_BENCH_SUSTAIN_SECS=0` measures the ladder alone.
    if !sustain.is_zero() {
        let result = offer(&client, &base, &store, setup.target, sustain).await;
        result.print(setup.name, setup.target, sustain);
    }
    eprintln!(
        "{}: the knee (p99 past 1 s) is at {}",
        setup.name,
        knee.map_or("beyond the rates tried".to_string(), |k| format!(
            "{k} runs/min"
        ))
    );
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
        .env("ORCH_API_TOKEN", TOKEN)
        .env("ORCH_MAX_PENDING_RUNS", "100000")
        .env("ORCH_LOG", "error")
        .env_remove("ORCH_PARALLELISM")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start orch")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn wait_until_up(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(answer) = client.get(format!("{base}/healthz")).send().await
            && answer.status().is_success()
        {
            return;
        }
        assert!(Instant::now() < deadline, "orch serve did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one offered rate gave.
struct Offered {
    accepted: usize,
    refused: usize,
    failed_requests: usize,
    /// Trigger-to-end spans of the accepted runs that succeeded, milliseconds, sorted.
    spans: Vec<f64>,
    /// Accepted runs that did not succeed within the wait.
    not_ended: usize,
}

impl Offered {
    fn percentile(&self, p: f64) -> f64 {
        let at = ((self.spans.len() as f64 * p).ceil() as usize).saturating_sub(1);
        self.spans.get(at).copied().unwrap_or(f64::NAN)
    }

    fn sustained(&self) -> bool {
        self.not_ended == 0
            && self.failed_requests == 0
            && self.refused == 0
            && self.percentile(0.99) <= P99_LIMIT_MS
    }

    fn print(&self, setup: &str, rate: u32, over: Duration) {
        println!(
            "| {setup} | {rate} | {} | {} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {} |",
            over.as_secs(),
            self.accepted,
            self.refused,
            self.percentile(0.5),
            self.percentile(0.99),
            self.spans.last().copied().unwrap_or(f64::NAN),
            if self.sustained() { "yes" } else { "no" }
        );
    }
}

/// Offers `rate` runs a minute for `over`, then waits for the accepted runs to end (at most
/// 30 s after the last trigger) and reads their spans.
async fn offer(
    client: &reqwest::Client,
    base: &str,
    store: &Store,
    rate: u32,
    over: Duration,
) -> Offered {
    let every = Duration::from_secs(60) / rate;
    let slots = Arc::new(Semaphore::new(CLIENTS));
    let mut requests = tokio::task::JoinSet::new();
    let started = tokio::time::Instant::now();
    let started_wall = Utc::now();
    let mut due = started;
    while due - started < over {
        tokio::time::sleep_until(due).await;
        // By the schedule, not when a client was free to send it: a server that answers
        // slowly must not slow the offered rate down and hide the wait (coordinated omission).
        let due_wall = started_wall + chrono::Duration::from_std(due - started).unwrap_or_default();
        let slot = Arc::clone(&slots).acquire_owned().await.expect("semaphore");
        let (client, url) = (client.clone(), format!("{base}/api/v1/dags/tp/runs"));
        requests.spawn(async move {
            let answer = client
                .post(url)
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await;
            drop(slot);
            let answer = match answer {
                Ok(answer) => answer,
                Err(_) => return Answer::Failed,
            };
            match answer.status().as_u16() {
                201 => match answer.json::<serde_json::Value>().await {
                    Ok(body) => match body["run_id"].as_str() {
                        Some(id) => Answer::Created(id.to_string(), due_wall),
                        None => Answer::Failed,
                    },
                    Err(_) => Answer::Failed,
                },
                429 => Answer::Refused,
                _ => Answer::Failed,
            }
        });
        due += every;
    }
    let mut created = Vec::new();
    let (mut refused, mut failed_requests) = (0, 0);
    while let Some(answer) = requests.join_next().await {
        match answer.unwrap_or(Answer::Failed) {
            Answer::Created(id, at) => created.push((id, at)),
            Answer::Refused => refused += 1,
            Answer::Failed => failed_requests += 1,
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut spans = Vec::new();
    let mut not_ended = 0;
    for (id, due_at) in &created {
        loop {
            let run = store.run(id).await.ok().flatten();
            match run {
                Some(run) if run.state == RunState::Success => {
                    let ended = run.ended_at.unwrap_or_else(Utc::now);
                    spans.push(millis(*due_at, ended));
                    break;
                }
                Some(run) if run.state.is_finished() => {
                    not_ended += 1;
                    break;
                }
                _ if Instant::now() > deadline => {
                    not_ended += 1;
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    spans.sort_by(|a, b| a.total_cmp(b));
    drain(store).await;
    Offered {
        accepted: created.len(),
        refused,
        failed_requests,
        spans,
        not_ended,
    }
}

enum Answer {
    Created(String, DateTime<Utc>),
    Refused,
    Failed,
}

fn millis(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or_default() as f64 / 1000.0
}

/// Waits (up to two minutes) for no run to be queued or running, so that the next step
/// starts from an empty queue.
async fn drain(store: &Store) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let pending: i64 = store
            .active_run_counts()
            .await
            .map(|counts| counts.iter().map(|(_, _, n)| n).sum())
            .unwrap_or(0);
        if pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A new database on the benchmark's PostgreSQL server.
async fn fresh_database(admin: &str, setup: &str) -> String {
    use sqlx::Connection;
    let name = format!(
        "orch_bench_{}_{}",
        setup.replace('-', "_"),
        std::process::id()
    );
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
