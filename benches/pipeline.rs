//! Batch pipeline throughput: `cargo bench --bench pipeline`.
//!
//! Runs the shipped tasks as `orch run` does (executor, SQLite run history, attempt logs)
//! against the built-in simulator with no request-weight limit, so the figures are orch's own
//! and not Binance's 6000-weight budget:
//! - `binance.historical_trades`: 1,000,000 trades of one symbol from the simulator's REST
//!   `historicalTrades` pages to committed Parquet in the local lake, trades per second;
//! - `warehouse.load_parquet`: the same files into SQLite, and into PostgreSQL when
//!   `ORCH_BENCH_POSTGRES_URL` (or `ORCH_TEST_POSTGRES_URL`) names a server, rows per second.
//!
//! Rates are rows over the attempt's recorded duration; each figure is the median of
//! [`REPEATS`] runs, each into a fresh home. Prints a Markdown table for docs/benchmarks.md.
//!
//! Then the overhead of one run of the 5-minute pipeline (fetch and load of four symbols, a
//! few new trades each) as the lake grows to [`LAKE_SIZES`] files (a year of 5-minute files
//! for four symbols is about 100,000), all in the warehouse's ledger: the first run after the
//! files appeared, which lists every partition once, then the median of [`REPEATS`] later runs,
//! which list only from the partitions of their last position.

use std::path::Path;
use std::sync::Arc;

use orch::dag::load_str;
use orch::executor::{Executor, ShutdownHandle};
use orch::scheduler::plan;
use orch::simulator::{Simulator, SimulatorOptions};
use orch::store::{RunState, Store};

const TRADES: u64 = 1_000_000;
const REPEATS: usize = 5;
/// Files in the lake (and the ledger) for the overhead figures.
const LAKE_SIZES: [usize; 3] = [1_000, 10_000, 100_000];
const LAKE_SYMBOLS: [&str; 4] = ["BTCUSDT", "AAVEUSDT", "STXUSDT", "ARBUSDT"];

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let postgres = std::env::var("ORCH_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("ORCH_TEST_POSTGRES_URL"))
        .ok()
        .filter(|u| !u.is_empty());
    let figures = runtime.block_on(measure(postgres.as_deref()));
    println!("| measure | median | runs |");
    println!("|---|---|---|");
    for (what, rates) in figures {
        println!(
            "| {what} | {:.0} rows/s | {} × {TRADES} rows |",
            median(rates),
            REPEATS
        );
    }
    if postgres.is_none() {
        eprintln!("PostgreSQL skipped: set ORCH_BENCH_POSTGRES_URL (e.g. $(bash .ci/postgres))");
    }
    println!();
    println!("| files in the lake and the ledger | first run | later runs (median) |");
    println!("|---|---|---|");
    for files in LAKE_SIZES {
        let (first, later) = runtime.block_on(lake_overhead(files));
        println!("| {files} | {first:.0} ms | {:.0} ms |", median(later));
    }
}

/// One run of the 5-minute pipeline in a home whose lake and ledger hold `files` files: the
/// first run's milliseconds, then [`REPEATS`] later ones', each fetching 100 new trades a symbol.
async fn lake_overhead(files: usize) -> (f64, Vec<f64>) {
    let simulator = simulator(&LAKE_SYMBOLS).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let warehouse = format!(
        "sqlite://{}",
        dir.path().join("data/warehouse.db").display()
    );
    seed_lake(dir.path(), &warehouse, files).await;
    let yaml = format!(
        "tasks:\n  - {{id: fetch, kind: binance.historical_trades, with: {{symbols: [{}], base_url: \"{}\"}}}}\n  - {{id: load, kind: warehouse.load_parquet, depends_on: [fetch]}}\n",
        LAKE_SYMBOLS.join(", "),
        simulator.url()
    );
    let store = Store::open(&format!(
        "sqlite://{}",
        dir.path().join("orch.db").display()
    ))
    .await
    .expect("store");
    let client = reqwest::Client::new();
    let mut times = Vec::new();
    for _ in 0..=REPEATS {
        for symbol in LAKE_SYMBOLS {
            client
                .post(format!("{}/_sim/trades", simulator.url()))
                .json(&serde_json::json!({"symbol": symbol, "count": 100}))
                .send()
                .await
                .expect("add trades");
        }
        let started = std::time::Instant::now();
        execute(dir.path(), &store, &yaml).await;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let first = times.remove(0);
    (first, times)
}

/// `files` empty files named as the fetch names them, spread over the four symbols and a year
/// of dates before today, each recorded in the warehouse's ledger as loaded: the fetch and the
/// loader only ever list them.
async fn seed_lake(home: &Path, warehouse: &str, files: usize) {
    use sqlx::Connection;
    let lake = home.join("data/lake/raw/binance_trades");
    let today = chrono::Utc::now().date_naive();
    let per_symbol = files / LAKE_SYMBOLS.len();
    let mut keys = Vec::with_capacity(files);
    for symbol in LAKE_SYMBOLS {
        for i in 0..per_symbol {
            let days_back = 365 - (i * 365 / per_symbol) as u64;
            let date = today - chrono::Days::new(days_back);
            let (first, last) = (i as i64 * 10 + 1, i as i64 * 10 + 10);
            let key = orch::lake::raw_trades::file_key(
                "raw/binance_trades",
                symbol,
                &date.to_string(),
                first,
                last,
            );
            let path = lake.join(key.trim_start_matches("raw/binance_trades/"));
            std::fs::create_dir_all(path.parent().expect("folder")).expect("mkdir");
            std::fs::write(&path, b"").expect("file");
            keys.push((key, symbol));
        }
    }
    let path = home.join("data/warehouse.db");
    std::fs::create_dir_all(path.parent().expect("folder")).expect("mkdir");
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&format!("{warehouse}?mode=rwc"))
        .await
        .expect("warehouse");
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS _orch_loaded_files (file TEXT PRIMARY KEY,
             table_name TEXT NOT NULL, rows BIGINT NOT NULL, loaded_at TEXT NOT NULL)",
    )
    .execute(&mut conn)
    .await
    .expect("ledger");
    let mut tx = conn.begin().await.expect("begin");
    for (key, symbol) in keys {
        sqlx::query("INSERT INTO _orch_loaded_files VALUES ($1, $2, 10, '2026-01-01T00:00:00Z')")
            .bind(key)
            .bind(format!("trades_{}", symbol.to_lowercase()))
            .execute(&mut *tx)
            .await
            .expect("ledger row");
    }
    tx.commit().await.expect("commit");
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

async fn measure(postgres: Option<&str>) -> Vec<(&'static str, Vec<f64>)> {
    let simulator = simulator(&["BTCUSDT"]).await;
    let added: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/_sim/trades", simulator.url()))
        .json(&serde_json::json!({"symbol": "BTCUSDT", "count": TRADES}))
        .send()
        .await
        .expect("add trades")
        .json()
        .await
        .expect("trade range");
    let first_id = added["first_id"].as_i64().expect("first id");

    let mut fetch = Vec::new();
    let mut sqlite = Vec::new();
    let mut pg = Vec::new();
    for _ in 0..REPEATS {
        let dir = tempfile::tempdir().expect("temp dir");
        if let Some(url) = postgres {
            drop_tables(url).await;
        }
        let pg_task = postgres.map_or(String::new(), |url| {
            format!(
                "  - {{id: load_postgres, kind: warehouse.load_parquet, depends_on: [load_sqlite], with: {{warehouse: \"{url}\"}}}}\n"
            )
        });
        let yaml = format!(
            "tasks:\n  - {{id: fetch, kind: binance.historical_trades, with: {{symbols: [BTCUSDT], start_from_id: {first_id}, base_url: \"{}\"}}}}\n  - {{id: load_sqlite, kind: warehouse.load_parquet, depends_on: [fetch]}}\n{pg_task}",
            simulator.url()
        );
        let rates = run(dir.path(), &yaml).await;
        for (task, rate) in rates {
            match task.as_str() {
                "fetch" => fetch.push(rate),
                "load_sqlite" => sqlite.push(rate),
                _ => pg.push(rate),
            }
        }
    }
    let mut figures = vec![
        ("simulator → committed Parquet, one symbol", fetch),
        ("lake → SQLite warehouse", sqlite),
    ];
    if postgres.is_some() {
        figures.push(("lake → PostgreSQL warehouse (COPY)", pg));
    }
    figures
}

/// Runs the DAG once in a fresh home; returns each task's rows per second.
async fn run(dir: &Path, yaml: &str) -> Vec<(String, f64)> {
    let store = Store::open(&format!("sqlite://{}", dir.join("orch.db").display()))
        .await
        .expect("store");
    let run_id = execute(dir, &store, yaml).await;
    let attempts = store.attempts(&run_id).await.expect("attempts");
    attempts
        .iter()
        .map(|a| {
            let rows = a.rows.expect("rows reported") as f64;
            assert_eq!(rows as u64, TRADES, "{} moved every trade", a.task_id);
            let seconds = a.duration_ms.expect("duration") as f64 / 1000.0;
            (a.task_id.clone(), rows / seconds)
        })
        .collect()
}

/// Runs the DAG once in the home `dir`, as `orch run` does; returns the run id.
async fn execute(dir: &Path, store: &Store, yaml: &str) -> String {
    let registry = orch::registry();
    let dag = Arc::new(load_str(Path::new("bench.yaml"), yaml, &registry).expect("bench DAG"));
    let registry = Arc::new(registry);
    let lease = orch::lease::Lease::acquire(dir).expect("lease");
    let executor = Executor {
        store: store.clone(),
        registry: Arc::clone(&registry),
        logs_dir: dir.join("logs"),
        dispatch: orch::queue::Dispatch::start(store.clone(), std::time::Duration::from_secs(30)),
        private_queue: Some("bench".to_string()),
        public_url: None,
        handoff: None,
        pools: Default::default(),
        failed_past_ends_run: false,
    };
    let worker = orch::worker::Worker {
        store: store.clone(),
        registry,
        isolation: orch::attempt::Isolation::child_processes(env!("CARGO_BIN_EXE_orch").into()),
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
        slots: orch::queue::Slots::new(2),
        id: lease.id().to_string(),
    };
    let (_stop, worker_shutdown) = ShutdownHandle::new();
    let (handoff, handed) = orch::queue::handoff(&worker.id, &worker.queues, worker.slots.clone());
    let executor = executor.with_handoff(Some(handoff));
    tokio::spawn(worker.run(
        worker_shutdown,
        tokio::sync::watch::channel(false).1,
        Some(handed),
    ));
    let run = plan::manual_run(&dag, None, Default::default(), chrono::Utc::now());
    let ids: Vec<String> = dag.tasks.iter().map(|t| t.id.clone()).collect();
    store.insert_run(&run, &ids).await.expect("insert run");
    store
        .claim_run(&run.run_id, "bench", &dag.source, "bench.yaml")
        .await
        .expect("claim");
    let record = store.run(&run.run_id).await.expect("run").expect("exists");
    let (_handle, shutdown) = ShutdownHandle::new();
    let state = executor
        .execute(Arc::clone(&dag), &record, shutdown, None)
        .await
        .expect("execute");
    if state != Some(RunState::Success) {
        let attempts = store.attempts(&run.run_id).await.expect("attempts");
        panic!("the benchmark's run failed: {attempts:#?}");
    }
    run.run_id
}

/// The simulator for `symbols`, with no background trades and no request-weight limit.
async fn simulator(symbols: &[&str]) -> Simulator {
    Simulator::start(&SimulatorOptions {
        port: 0,
        symbols: symbols.iter().map(|s| s.to_string()).collect(),
        rate: 0.0,
        seed: 1,
        replay: Vec::new(),
        weight_limit: None,
        keepalive: orch::simulator::Keepalive::BINANCE,
    })
    .await
    .expect("simulator")
}

async fn drop_tables(url: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to PostgreSQL");
    sqlx::raw_sql("DROP TABLE IF EXISTS trades_btcusdt; DROP TABLE IF EXISTS _orch_loaded_files")
        .execute(&mut conn)
        .await
        .expect("drop the benchmark's tables");
}
