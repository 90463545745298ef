//! Live stream benchmark: `cargo bench --bench stream`.
//!
//! Runs the stream ingest loop `orch serve` runs, in this process, against the built-in
//! simulator's combined websocket stream on loopback:
//! - **throughput**: 200,000 trades of one symbol pushed at once; trades per second from the
//!   first push to the last trade committed in the staging table, in SQLite and, when
//!   `ORCH_BENCH_POSTGRES_URL` (or `ORCH_TEST_POSTGRES_URL`) names a server, PostgreSQL;
//! - **latency** at the default batch settings (1000 rows, 500 ms): four symbols at a busy
//!   market's pace for 20 s; p50 and p99 from a trade's time to its commit, as `orch streams`
//!   reports them;
//! - **freshness**: the same four symbols with the stream's copy into the lake (`lake:`), at
//!   its default pace (every 5 s) and every second: from the moment a trade is the exchange's
//!   newest to the moment `orch query` (a new process each time, as a user runs it) returns
//!   it.
//!
//! Each throughput figure is the median of [`REPEATS`] runs into fresh tables. Prints a
//! Markdown table for docs/benchmarks.md.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orch::simulator::{Simulator, SimulatorOptions};
use orch::staging::Staging;
use orch::stream::ingest::{self, IngestPlaces};
use orch::stream::stats::StreamStats;

const TRADES: u64 = 200_000;
const REPEATS: usize = 5;
const LATENCY_RUN: Duration = Duration::from_secs(20);
const BIN: &str = env!("CARGO_BIN_EXE_orch");
/// Trades timed per freshness measurement.
const FRESHNESS_SAMPLES: usize = 20;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let postgres = std::env::var("ORCH_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("ORCH_TEST_POSTGRES_URL"))
        .ok()
        .filter(|u| !u.is_empty());
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite_url = format!("sqlite://{}", dir.path().join("staging.db").display());
    let mut rows = Vec::new();
    let sqlite = runtime.block_on(throughput(&sqlite_url));
    rows.push(format!(
        "| simulator → committed rows, one stream, SQLite staging | {:.0} trades/s | {REPEATS} × {TRADES} trades |",
        sqlite
    ));
    match &postgres {
        Some(url) => {
            let pg = runtime.block_on(throughput(url));
            rows.push(format!(
                "| simulator → committed rows, one stream, PostgreSQL staging | {:.0} trades/s | {REPEATS} × {TRADES} trades |",
                pg
            ));
        }
        None => eprintln!("PostgreSQL skipped: set ORCH_BENCH_POSTGRES_URL"),
    }
    let (p50, p99, trades) = runtime.block_on(latency(dir.path()));
    rows.push(format!(
        "| trade time → commit, 4 symbols at ~400 trades/s, default batch, p50 | {p50} ms | {trades} trades over {LATENCY_RUN:?} |"
    ));
    rows.push(format!(
        "| trade time → commit, same run, p99 | {p99} ms | |"
    ));
    for every in ["5s", "1s"] {
        let (p50, p99) = runtime.block_on(freshness(dir.path(), every));
        rows.push(format!(
            "| trade → queryable by `orch query`, lake copy every {every}: p50 / p99 | {p50:.0} / {p99:.0} ms | {FRESHNESS_SAMPLES} trades |"
        ));
    }
    println!("| measure | median | runs |");
    println!("|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

async fn simulator(symbols: &[&str], rate: f64) -> Simulator {
    Simulator::start(&SimulatorOptions {
        port: 0,
        symbols: symbols.iter().map(|s| s.to_string()).collect(),
        rate,
        seed: 1,
        replay: Vec::new(),
        weight_limit: None,
        keepalive: orch::simulator::Keepalive::BINANCE,
    })
    .await
    .expect("simulator")
}

fn stream_yaml(symbols: &str, table: &str) -> String {
    format!(
        "id: bench\nstream:\n  source: {{ kind: binance.trades, symbols: [{symbols}] }}\n  sink: {{ table: {table} }}\n"
    )
}

/// Trades per second from pushing [`TRADES`] trades to their last commit, median of runs.
async fn throughput(staging_url: &str) -> f64 {
    let mut rates = Vec::new();
    for repeat in 0..REPEATS {
        let sim = simulator(&["BTCUSDT"], 0.0).await;
        let table = format!("bench_trades_{repeat}");
        let def = orch::stream::load_str(Path::new("bench.yaml"), &stream_yaml("BTCUSDT", &table))
            .expect("stream definition");
        let staging = Staging::open(staging_url, &table).await.expect("staging");
        empty(staging_url, &table).await;
        let places = places_of(
            &sim,
            staging_url.to_string(),
            "file:///nonexistent".to_string(),
        );
        let stats = Arc::new(Mutex::new(StreamStats::default()));
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let running = {
            let stats = Arc::clone(&stats);
            tokio::spawn(async move { ingest::run(&def, &places, stats, stop).await })
        };
        wait_connected(&sim).await;
        let started = Instant::now();
        let answer: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/_sim/trades", sim.url()))
            .json(&serde_json::json!({"symbol": "BTCUSDT", "count": TRADES}))
            .send()
            .await
            .expect("push trades")
            .json()
            .await
            .expect("id range");
        let last_id = answer["last_id"].as_i64().expect("last id");
        loop {
            let last = staging
                .last_id("binance", "BTCUSDT")
                .await
                .expect("last id");
            if last.is_some_and(|id| id >= last_id) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rates.push(TRADES as f64 / started.elapsed().as_secs_f64());
        let _ = stop_tx.send(true);
        running.await.expect("join").expect("stream ran");
    }
    median(rates)
}

/// (p50 ms, p99 ms, trades committed) of a stream at default batch settings.
async fn latency(dir: &Path) -> (i64, i64, u64) {
    let symbols = ["BTCUSDT", "AAVEUSDT", "STXUSDT", "ARBUSDT"];
    let sim = simulator(&symbols, 100.0).await;
    let def = orch::stream::load_str(
        Path::new("bench.yaml"),
        &stream_yaml(&symbols.join(", "), "raw_trades"),
    )
    .expect("stream definition");
    let places = places_of(
        &sim,
        format!("sqlite://{}", dir.join("latency.db").display()),
        "file:///nonexistent".to_string(),
    );
    let stats = Arc::new(Mutex::new(StreamStats::default()));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let running = {
        let stats = Arc::clone(&stats);
        tokio::spawn(async move { ingest::run(&def, &places, stats, stop).await })
    };
    tokio::time::sleep(LATENCY_RUN).await;
    let _ = stop_tx.send(true);
    running.await.expect("join").expect("stream ran");
    let report = ingest::lock(&stats).report(chrono::Utc::now().timestamp_millis());
    (
        report.lag_p50_ms.expect("lag measured"),
        report.lag_p99_ms.expect("lag measured"),
        report.trades_committed,
    )
}

async fn wait_connected(sim: &Simulator) {
    let client = reqwest::Client::new();
    loop {
        let stats = sim_stats(&client, sim).await;
        if stats["streams"]["connections_open"] == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Empties a table left by an earlier run of the benchmark.
async fn empty(url: &str, table: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::AnyConnection::connect(url)
        .await
        .expect("open the staging store");
    sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
        .execute(&mut conn)
        .await
        .expect("empty the benchmark table");
}

/// (p50 ms, p99 ms) from a trade being the exchange's newest to `orch query` returning it,
/// with the stream copying into the lake every `every`.
async fn freshness(dir: &Path, every: &str) -> (f64, f64) {
    let symbols = ["BTCUSDT", "AAVEUSDT", "STXUSDT", "ARBUSDT"];
    let sim = simulator(&symbols, 100.0).await;
    let home = dir.join(format!("fresh_{every}"));
    std::fs::create_dir_all(&home).expect("home");
    let def = orch::stream::load_str(
        Path::new("bench.yaml"),
        &format!(
            "{}  lake: {{ every: {every} }}\n",
            stream_yaml(&symbols.join(", "), "raw_trades")
        ),
    )
    .expect("stream definition");
    let places = places_of(
        &sim,
        format!("sqlite://{}", home.join("staging.db").display()),
        format!("file://{}", home.join("data/lake").display()),
    );
    let stats = Arc::new(Mutex::new(StreamStats::default()));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(async move { ingest::run(&def, &places, stats, stop).await });
    wait_connected(&sim).await;
    let period = humantime::parse_duration(every).expect("every");
    let client = reqwest::Client::new();
    let mut latencies = Vec::new();
    for _ in 0..FRESHNESS_SAMPLES {
        let started = Instant::now();
        let stats = sim_stats(&client, &sim).await;
        let newest = stats["symbols"]["BTCUSDT"]["last_id"]
            .as_i64()
            .expect("last id");
        loop {
            let home = home.clone();
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new(BIN)
                    .arg("--home")
                    .arg(&home)
                    .args([
                        "query",
                        "SELECT max(trade_id) AS last FROM binance_stream_trades WHERE symbol = 'BTCUSDT'",
                        "--format",
                        "csv",
                    ])
                    .output()
                    .expect("orch query")
            })
            .await
            .expect("query");
            let last = String::from_utf8_lossy(&out.stdout)
                .lines()
                .nth(1)
                .and_then(|l| l.trim().parse::<i64>().ok());
            if last.is_some_and(|last| last >= newest) {
                break;
            }
        }
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        // A sample starts just after a copy; the next one waits a part of the copy's interval
        // spread evenly over it (golden-ratio steps), so samples fall anywhere in it.
        let part = (latencies.len() as f64 * 0.618_034).fract();
        tokio::time::sleep(period.mul_f64(part)).await;
    }
    let _ = stop_tx.send(true);
    running.await.expect("join").expect("stream ran");
    latencies.sort_by(f64::total_cmp);
    let p99 = latencies[((latencies.len() as f64 * 0.99) as usize).min(latencies.len() - 1)];
    (latencies[latencies.len() / 2], p99)
}

/// Where a benchmarked stream reads and writes: the simulator for every exchange.
fn places_of(sim: &Simulator, staging_url: String, lake_url: String) -> IngestPlaces {
    IngestPlaces {
        ws_url: sim.ws_url(),
        api_url: sim.url(),
        kucoin_api_url: sim.url(),
        mercado_bitcoin_api_url: format!("{}/api/v4", sim.url()),
        mercado_bitcoin_ws_url: format!("{}/mercado_bitcoin/ws", sim.ws_url()),
        staging_url,
        nats_url: orch::trade_bus::DEFAULT_URL.to_string(),
        lake_url,
    }
}

/// The simulator's counters (`GET /_sim/stats`).
async fn sim_stats(client: &reqwest::Client, sim: &Simulator) -> serde_json::Value {
    client
        .get(format!("{}/_sim/stats", sim.url()))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("stats json")
}
