//! Daily ETL benchmark: `cargo bench --bench etl`.
//!
//! Stages one UTC day of 10,000,000 generated trades (four symbols, the simulator's price walk
//! and lot sizes, spread over the day) in a SQLite staging table, then runs each stage of
//! `daily_binance_etl` as its own `orch run` process, so each has its own wall time and peak
//! memory (the child's maximum resident set, from `wait4`):
//! - extract: staging → Parquet snapshot in the lake, after checking the day is complete;
//! - transform: snapshot → the five star-schema tables, written to the lake;
//! - load: the tables into SQLite, and into PostgreSQL when `ORCH_BENCH_POSTGRES_URL` (or
//!   `ORCH_TEST_POSTGRES_URL`) names a server.
//!
//! Each stage runs [`REPEATS`] times; the table shows the medians of the task's recorded
//! duration, the process's wall time and its peak memory. The simulator serves exchangeInfo.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use orch::simulator::{Market, Simulator, SimulatorOptions};
use orch::staging::{StagedTrade, Staging};

const TRADES: usize = 10_000_000;
const SYMBOLS: [&str; 4] = ["BTCUSDT", "AAVEUSDT", "STXUSDT", "ARBUSDT"];
const REPEATS: usize = 3;
const BIN: &str = env!("CARGO_BIN_EXE_orch");
/// 2026-11-22T00:00:00Z in ms.
const DAY: i64 = 1_795_305_600_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let postgres = std::env::var("ORCH_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("ORCH_TEST_POSTGRES_URL"))
        .ok()
        .filter(|u| !u.is_empty());
    let home = tempfile::tempdir().expect("temp dir");
    let home = home.path();
    let staging_url = format!("sqlite://{}", home.join("data/staging.db").display());
    let staged = Instant::now();
    runtime.block_on(stage(&staging_url));
    eprintln!(
        "staged {TRADES} trades in {:.1} s",
        staged.elapsed().as_secs_f64()
    );
    let simulator = runtime
        .block_on(Simulator::start(&SimulatorOptions {
            port: 0,
            symbols: SYMBOLS.map(String::from).to_vec(),
            rate: 0.0,
            seed: 1,
            replay: Vec::new(),
            weight_limit: None,
            keepalive: orch::simulator::Keepalive::BINANCE,
        }))
        .expect("simulator");

    std::fs::create_dir_all(home.join("dags")).expect("dags folder");
    let mut stages = vec![
        (
            "extract from SQLite staging",
            "trades.extract",
            String::new(),
        ),
        (
            "transform + write the five tables",
            "trades.star_schema",
            String::new(),
        ),
        (
            "load into SQLite",
            "warehouse.load_star_schema",
            format!(
                ", warehouse: \"sqlite://{}\"",
                home.join("data/warehouse.db").display()
            ),
        ),
    ];
    if let Some(url) = &postgres {
        stages.push((
            "load into PostgreSQL",
            "warehouse.load_star_schema",
            format!(", warehouse: \"{url}\""),
        ));
    }
    println!("| stage, 10,000,000 trades | task duration | process wall time | peak memory |");
    println!("|---|---|---|---|");
    for (name, kind, extra) in stages {
        let dag = format!(
            "tasks:\n  - {{ id: stage, kind: {kind}, with: {{ date: \"2026-11-22\"{extra} }} }}\n"
        );
        std::fs::write(home.join("dags/stage.yaml"), dag).expect("write DAG");
        let mut durations = Vec::new();
        let mut walls = Vec::new();
        let mut peaks = Vec::new();
        for _ in 0..REPEATS {
            let (duration_ms, wall_ms, peak_mb) = run_stage(home, &staging_url, &simulator.url());
            durations.push(duration_ms);
            walls.push(wall_ms);
            peaks.push(peak_mb);
        }
        println!(
            "| {name} | {:.2} s | {:.2} s | {:.0} MB |",
            median(durations) / 1000.0,
            median(walls) / 1000.0,
            median(peaks)
        );
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Fills the staging table with a day of trades, in batches as the streams commit them.
async fn stage(url: &str) {
    let staging = Staging::open(url, "raw_trades").await.expect("staging");
    let symbols: Vec<String> = SYMBOLS.map(String::from).to_vec();
    let mut market = Market::new(&symbols, 7);
    let per_symbol = TRADES / SYMBOLS.len();
    const CHUNK: usize = 50_000;
    let mut done = 0;
    while done < per_symbol {
        let count = CHUNK.min(per_symbol - done);
        let mut batch = Vec::with_capacity(count * SYMBOLS.len());
        for symbol in SYMBOLS {
            let (first, _) = market.generate(symbol, count, 0).expect("known symbol");
            let trades = market.from_id(symbol, first, count).expect("known symbol");
            for (i, mut trade) in trades.into_iter().enumerate() {
                // Spread evenly over the day, in id order.
                trade.time_ms = DAY + ((done + i) as i64 * 86_400_000) / per_symbol as i64;
                batch.push(StagedTrade {
                    symbol: symbol.to_string(),
                    trade,
                });
            }
        }
        for part in batch.chunks(1000) {
            staging.insert("binance", part, 0).await.expect("stage");
        }
        done += count;
    }
    // The next trade of each symbol, just after midnight: the stream is past the day, which the
    // extract checks before it takes the day.
    let mut after = Vec::new();
    for symbol in SYMBOLS {
        let (first, _) = market.generate(symbol, 1, 0).expect("known symbol");
        for mut trade in market.from_id(symbol, first, 1).expect("known symbol") {
            trade.time_ms = DAY + 86_400_000;
            after.push(StagedTrade {
                symbol: symbol.to_string(),
                trade,
            });
        }
    }
    staging.insert("binance", &after, 0).await.expect("stage");
}

/// Runs the `stage` DAG once: (task duration ms, process wall ms, peak RSS MB).
fn run_stage(home: &Path, staging_url: &str, api_url: &str) -> (f64, f64, f64) {
    let started = Instant::now();
    #[expect(
        clippy::zombie_processes,
        reason = "reaped by wait4, which also gives its peak memory"
    )]
    let child = Command::new(BIN)
        .args(["--home"])
        .arg(home)
        .args(["run", "stage", "--logical-date", "2026-11-22"])
        .env("ORCH_STAGING_URL", staging_url)
        .env("BINANCE_API_URL", api_url)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("orch run");
    let pid = i32::try_from(child.id()).expect("pid");
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; the pointers are to live locals.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4");
    let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the stage failed"
    );
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout {
        use std::io::Read;
        out.read_to_string(&mut stdout).expect("stdout");
    }
    let run_id = stdout.lines().next().expect("run id").to_string();
    let show = Command::new(BIN)
        .args(["--home"])
        .arg(home)
        .args(["runs", "show", &run_id, "--json"])
        .output()
        .expect("orch runs show");
    let run: serde_json::Value = serde_json::from_slice(&show.stdout).expect("run JSON");
    let duration_ms = run["tasks"][0]["attempts"][0]["duration_ms"]
        .as_f64()
        .expect("duration");
    // ru_maxrss is in kilobytes on Linux.
    (duration_ms, wall_ms, usage.ru_maxrss as f64 / 1024.0)
}
