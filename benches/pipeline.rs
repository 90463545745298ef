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

use std::path::Path;
use std::sync::Arc;

use orch::dag::load_str;
use orch::executor::{Executor, ShutdownHandle};
use orch::scheduler::plan;
use orch::simulator::{Simulator, SimulatorOptions};
use orch::store::{RunState, Store};
use orch::tasks::Registry;

const TRADES: u64 = 1_000_000;
const REPEATS: usize = 5;

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
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

async fn measure(postgres: Option<&str>) -> Vec<(&'static str, Vec<f64>)> {
    let simulator = Simulator::start(&SimulatorOptions {
        port: 0,
        symbols: vec!["BTCUSDT".to_string()],
        rate: 0.0,
        seed: 1,
        replay: Vec::new(),
        weight_limit: None,
        keepalive: orch::simulator::Keepalive::BINANCE,
    })
    .await
    .expect("simulator");
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
    let registry = Registry::builtin();
    let dag = Arc::new(load_str(Path::new("bench.yaml"), yaml, &registry).expect("bench DAG"));
    let executor = Executor {
        store: store.clone(),
        registry: Arc::new(registry),
        home: dir.to_path_buf(),
        logs_dir: dir.join("logs"),
        slots: Arc::new(tokio::sync::Semaphore::new(2)),
        data: orch::config::DataPlaces {
            lake_url: orch::lake::Lake::default_url(dir),
            warehouse_url: format!("sqlite://{}", dir.join("data/warehouse.db").display()),
            binance_api_url: "http://127.0.0.1:9".to_string(),
            staging_url: orch::staging::Staging::default_url(dir),
            binance_ws_url: "ws://127.0.0.1:9".to_string(),
        },
    };
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
    let attempts = store.attempts(&run.run_id).await.expect("attempts");
    assert_eq!(state, Some(RunState::Success), "{attempts:#?}");
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
