//! The Binance batch pipeline against the simulator: every trade id exactly once in the lake
//! and the warehouse, across pages, rate limits, errors and `kill -9`.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use orch::lake::raw_trades;

use crate::support::{
    Home, Simulator, assert_exactly_once, attempts, block_on, ids_by_symbol, kill_run_when_logged,
    parquet_files, postgres_database, s3_bucket, text, warehouse_ids,
};

const SYMBOLS: &str = "BTCUSDT,AAVEUSDT,STXUSDT,ARBUSDT";

/// The pipeline as shipped, pointed at the simulator; `extra` goes into the fetch's `with`.
fn pipeline(sim: &Simulator, symbols: &str, extra: &str) -> String {
    format!(
        r#"
defaults: {{ retries: 0 }}
tasks:
  - id: get_data_binance
    kind: binance.historical_trades
    with: {{ symbols: [{symbols}], base_url: "{}" {extra} }}
  - id: load_parquet_to_bigquery
    kind: warehouse.load_parquet
    depends_on: [get_data_binance]
"#,
        sim.url
    )
}

/// Every trade id in the local lake per symbol, sorted.
fn lake_ids(home: &Home) -> BTreeMap<String, Vec<i64>> {
    ids_by_symbol(parquet_files(&home.file("data/lake/raw/binance_trades")))
}

fn run_ok(home: &Home, env: &[(&str, &str)]) -> serde_json::Value {
    let out = home
        .command(&["run", "trades"])
        .envs(env.iter().copied())
        .output()
        .expect("orch run");
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let run_id = text(&out.stdout)
        .lines()
        .next()
        .expect("run id")
        .to_string();
    home.run_json(&run_id)
}

/// 5,000 trades per symbol between two runs (five pages each) all land, once, in the lake
/// and in the warehouse at `warehouse_url`.
fn two_runs_fetch_every_trade(home: &Home, warehouse_url: &str) {
    let sim = Simulator::start(SYMBOLS);
    home.write_dag("trades", &pipeline(&sim, SYMBOLS, ""));
    let env = [("ORCH_WAREHOUSE_URL", warehouse_url)];
    let first = run_ok(home, &env);
    let starts: BTreeMap<String, i64> = lake_ids(home)
        .into_iter()
        .map(|(symbol, ids)| (symbol, ids[0]))
        .collect();
    assert_eq!(starts.len(), 4, "every symbol fetched: {first:#}");

    for symbol in SYMBOLS.split(',') {
        sim.add_trades(symbol, 5000);
    }
    let second = run_ok(home, &env);
    let fetched = attempts(&second, "get_data_binance")[0]["rows"].as_i64();
    assert_eq!(fetched, Some(4 * 5000), "{second:#}");
    let loaded = attempts(&second, "load_parquet_to_bigquery")[0]["rows"].as_i64();
    assert_eq!(loaded, Some(4 * 5000), "{second:#}");

    let lake = lake_ids(home);
    let tables: Vec<String> = SYMBOLS
        .split(',')
        .map(|s| format!("trades_{}", s.to_lowercase()))
        .collect();
    let table_refs: Vec<&str> = tables.iter().map(String::as_str).collect();
    let warehouse = warehouse_ids(warehouse_url, &table_refs);
    for symbol in SYMBOLS.split(',') {
        let last = sim.last_id(symbol);
        assert_exactly_once(
            &format!("lake {symbol}"),
            &lake[symbol],
            starts[symbol],
            last,
        );
        let table = format!("trades_{}", symbol.to_lowercase());
        assert_exactly_once(
            &format!("warehouse {table}"),
            &warehouse[&table],
            starts[symbol],
            last,
        );
    }
}

#[test]
fn every_trade_across_pages_lands_once_in_the_lake_and_the_sqlite_warehouse() {
    let home = Home::new();
    let url = format!("sqlite://{}", home.file("data/warehouse.db").display());
    two_runs_fetch_every_trade(&home, &url);
}

#[test]
fn every_trade_lands_once_in_a_postgres_warehouse() {
    if let Some(url) = postgres_database("binance_warehouse") {
        two_runs_fetch_every_trade(&Home::new(), &url);
    }
}

/// Every object under `lake/raw/binance_trades` in an S3 bucket, read back with object_store.
fn s3_lake_files(endpoint: &str, bucket: &str) -> Vec<(String, bytes::Bytes)> {
    use futures_util::TryStreamExt;
    use object_store::{ObjectStore, ObjectStoreExt};
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_access_key_id("orch-test")
        .with_secret_access_key("orch-test")
        .build()
        .expect("S3 client");
    block_on(async {
        let prefix = object_store::path::Path::from("lake/raw/binance_trades");
        let objects: Vec<_> = store
            .list(Some(&prefix))
            .try_collect()
            .await
            .expect("list the bucket");
        let mut files = Vec::new();
        for object in objects {
            let key = object.location.to_string();
            assert!(key.ends_with(".parquet"), "only whole Parquet files: {key}");
            let bytes = store
                .get(&object.location)
                .await
                .expect("get")
                .bytes()
                .await
                .expect("read");
            files.push((key, bytes));
        }
        files
    })
}

#[test]
fn every_trade_lands_once_in_an_s3_lake() {
    let Some((endpoint, bucket)) = s3_bucket("s3_lake") else {
        return;
    };
    let home = Home::new();
    let sim = Simulator::start(SYMBOLS);
    home.write_dag("trades", &pipeline(&sim, SYMBOLS, ""));
    let lake_url = format!("s3://{bucket}/lake");
    let env = [
        ("ORCH_LAKE_URL", lake_url.as_str()),
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "orch-test"),
        ("AWS_SECRET_ACCESS_KEY", "orch-test"),
        ("AWS_REGION", "us-east-1"),
    ];
    run_ok(&home, &env);
    let starts: BTreeMap<String, i64> = ids_by_symbol(s3_lake_files(&endpoint, &bucket))
        .into_iter()
        .map(|(symbol, ids)| (symbol, ids[0]))
        .collect();
    assert_eq!(starts.len(), 4, "every symbol fetched into the bucket");
    for symbol in SYMBOLS.split(',') {
        sim.add_trades(symbol, 1500);
    }
    let second = run_ok(&home, &env);
    assert_eq!(
        attempts(&second, "load_parquet_to_bigquery")[0]["rows"].as_i64(),
        Some(4 * 1500),
        "the loader read the new files from S3: {second:#}"
    );
    let lake = ids_by_symbol(s3_lake_files(&endpoint, &bucket));
    let warehouse_url = format!("sqlite://{}", home.file("data/warehouse.db").display());
    let tables: Vec<String> = SYMBOLS
        .split(',')
        .map(|s| format!("trades_{}", s.to_lowercase()))
        .collect();
    let table_refs: Vec<&str> = tables.iter().map(String::as_str).collect();
    let warehouse = warehouse_ids(&warehouse_url, &table_refs);
    for symbol in SYMBOLS.split(',') {
        let last = sim.last_id(symbol);
        assert_exactly_once(
            &format!("S3 lake {symbol}"),
            &lake[symbol],
            starts[symbol],
            last,
        );
        let table = format!("trades_{}", symbol.to_lowercase());
        assert_exactly_once(
            &format!("warehouse {table}"),
            &warehouse[&table],
            starts[symbol],
            last,
        );
    }

    // orch query reads the bucket where it is, pruning to one symbol.
    let out = home
        .command(&[
            "query",
            "SELECT COUNT(*) AS trades, COUNT(DISTINCT trade_id) AS ids, MIN(trade_id) AS first, MAX(trade_id) AS last \
             FROM binance_trades WHERE symbol = 'AAVEUSDT'",
            "--format",
            "csv",
        ])
        .envs(env.iter().copied())
        .output()
        .expect("orch query");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ids = &lake["AAVEUSDT"];
    assert_eq!(
        text(&out.stdout),
        format!(
            "trades,ids,first,last\n{},{},{},{}\n",
            ids.len(),
            ids.len(),
            ids[0],
            ids[ids.len() - 1]
        )
    );
}

#[test]
fn a_storm_of_429_and_418_is_ridden_out_without_a_failed_run() {
    let home = Home::new();
    let sim = Simulator::start("BTCUSDT");
    home.write_dag("trades", &pipeline(&sim, "BTCUSDT", ""));
    sim.add_trades("BTCUSDT", 2500);
    sim.post(
        "/_sim/faults",
        &serde_json::json!({"rest": [
            {"status": 429, "retry_after": 1},
            {"status": 429, "retry_after": 1},
            {"status": 418, "retry_after": 1},
            {"status": 503},
            {"status": 502}
        ]}),
    );
    let run = run_ok(&home, &[]);
    let fetch = &attempts(&run, "get_data_binance")[0];
    assert_eq!(
        attempts(&run, "get_data_binance").len(),
        1,
        "no task retry needed"
    );
    let log = std::fs::read_to_string(fetch["log_path"].as_str().expect("log")).expect("log");
    assert!(log.contains("HTTP 418"), "{log}");
    assert!(log.contains("HTTP 429"), "{log}");
    assert!(log.contains("HTTP 503"), "{log}");
    let ids = &lake_ids(&home)["BTCUSDT"];
    assert_exactly_once("lake", ids, ids[0], sim.last_id("BTCUSDT"));
}

/// The exchange refuses the request (HTTP 400): a retry cannot help, so none is made, even
/// with retries left.
#[test]
fn an_unknown_symbol_fails_with_the_exchange_message_and_no_retry() {
    let home = Home::new();
    let sim = Simulator::start("BTCUSDT");
    home.write_dag(
        "trades",
        &pipeline(&sim, "NOSUCHUSDT", "").replace(
            "defaults: { retries: 0 }",
            "defaults: { retries: 2, retry_delay: 0s }",
        ),
    );
    let out = home.orch(&["run", "trades"]);
    assert!(!out.status.success());
    let run_id = text(&out.stdout)
        .lines()
        .next()
        .expect("run id")
        .to_string();
    let run = home.run_json(&run_id);
    let error = attempts(&run, "get_data_binance")[0]["error"]
        .as_str()
        .expect("error")
        .to_string();
    assert!(
        error.contains("NOSUCHUSDT")
            && error.contains("-1121")
            && error.contains("Invalid symbol."),
        "{error}"
    );
    assert_eq!(
        attempts(&run, "get_data_binance").len(),
        1,
        "not retried: {run:#}"
    );
}

#[test]
fn kill_9_during_the_fetch_and_during_the_load_then_rerun_leaves_every_id_once() {
    let home = Home::new();
    let sim = Simulator::start("BTCUSDT");
    // Small files, so the fetch commits in steps and the load has many files to go through;
    // slow answers, so the kill lands mid-fetch.
    let start = sim.add_trades("BTCUSDT", 1).0;
    home.write_dag(
        "trades",
        &pipeline(
            &sim,
            "BTCUSDT",
            &format!(", file_rows: 2000, start_from_id: {start}"),
        ),
    );
    sim.add_trades("BTCUSDT", 30_000);
    let slow: Vec<serde_json::Value> = (0..40)
        .map(|_| serde_json::json!({"status": 200, "delay_ms": 40}))
        .collect();
    sim.post("/_sim/faults", &serde_json::json!({"rest": slow}));

    kill_run_when_logged(&home, "get_data_binance", "committed ids");
    let partial = lake_ids(&home);
    let held = partial.get("BTCUSDT").map_or(0, Vec::len);
    assert!(
        held > 0 && held < 30_001,
        "the kill landed mid-fetch ({held} trades held)"
    );

    // The rerun finishes the fetch; kill it again once the load has loaded a file.
    kill_run_when_logged(
        &home,
        "load_parquet_to_bigquery",
        "rows into trades_btcusdt",
    );

    let run = run_ok(&home, &[]);
    assert_eq!(run["state"], "success");
    let last = sim.last_id("BTCUSDT");
    assert_exactly_once("lake", &lake_ids(&home)["BTCUSDT"], start, last);
    let url = format!("sqlite://{}", home.file("data/warehouse.db").display());
    let warehouse = warehouse_ids(&url, &["trades_btcusdt"]);
    assert_exactly_once("warehouse", &warehouse["trades_btcusdt"], start, last);
}

/// Two `orch run`s of the shipped 5-minute DAG and a backfill of it at once, while the
/// market trades: they once wrote overlapping files that all loaded (duplicate rows). Now a
/// fetch of a symbol waits for the other's lock, and every id lands once.
#[test]
fn two_runs_and_a_backfill_at_once_land_every_trade_id_once() {
    let home = Home::new();
    home.write_dag(
        "binance_trades_5m",
        include_str!("../../dags/binance_trades_5m.yaml"),
    );
    // No request-weight limit: 288 backfill runs would otherwise wait minutes for it.
    let sim = Simulator::with_args(SYMBOLS, 0, &["--weight-limit", "0"]);
    let sim_url = sim.url.clone();
    let start = |args: &[&str]| {
        home.command(args)
            .env("BINANCE_API_URL", &sim_url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("orch")
    };
    let runs = [
        start(&["run", "binance_trades_5m"]),
        start(&["run", "binance_trades_5m"]),
        start(&[
            "backfill",
            "binance_trades_5m",
            "--start",
            "2026-11-20",
            "--end",
            "2026-11-20",
            "--parallel",
            "4",
        ]),
    ];
    // The market trades while they run.
    for _ in 0..20 {
        for symbol in SYMBOLS.split(',') {
            sim.add_trades(symbol, 700);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for run in runs {
        let out = run.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "stdout:\n{}\nstderr:\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    // One more run takes what the market made after the others were done.
    let out = home
        .command(&["run", "binance_trades_5m"])
        .env("BINANCE_API_URL", &sim.url)
        .output()
        .expect("orch run");
    assert!(out.status.success(), "{}", text(&out.stderr));

    let lake = lake_ids(&home);
    let tables: Vec<String> = SYMBOLS
        .split(',')
        .map(|s| format!("trades_{}", s.to_lowercase()))
        .collect();
    let table_refs: Vec<&str> = tables.iter().map(String::as_str).collect();
    let url = format!("sqlite://{}", home.file("data/warehouse.db").display());
    let warehouse = warehouse_ids(&url, &table_refs);
    for symbol in SYMBOLS.split(',') {
        let ids = &lake[symbol];
        let last = sim.last_id(symbol);
        assert_exactly_once(&format!("lake {symbol}"), ids, ids[0], last);
        let table = format!("trades_{}", symbol.to_lowercase());
        assert_exactly_once(
            &format!("warehouse {table}"),
            &warehouse[&table],
            ids[0],
            last,
        );
    }
}

/// A catch-up wrote a file only every 500,000 trades: one longer than the task's timeout
/// threw its work away on every attempt. Now it also writes every `flush_every`, and the next
/// attempt goes on from there.
#[test]
fn a_catch_up_that_times_out_keeps_what_it_fetched() {
    let home = Home::new();
    let sim = Simulator::start("BTCUSDT");
    let start = sim.add_trades("BTCUSDT", 1).0;
    sim.add_trades("BTCUSDT", 6_000);
    home.write_dag(
        "trades",
        &format!(
            r#"
tasks:
  - id: fetch
    kind: binance.historical_trades
    timeout: 2s
    retries: 1
    retry_delay: 0s
    with: {{ symbols: [BTCUSDT], start_from_id: {start}, base_url: "{}", flush_every: 300ms }}
"#,
            sim.url
        ),
    );
    // Pages of 1,000 trades answered every 700 ms: seven pages take longer than the timeout.
    let slow: Vec<serde_json::Value> = (0..4)
        .map(|_| serde_json::json!({"status": 200, "delay_ms": 700}))
        .collect();
    sim.post("/_sim/faults", &serde_json::json!({"rest": slow}));
    let run = run_ok(&home, &[]);
    let fetch = attempts(&run, "fetch");
    assert_eq!(fetch.len(), 2, "{run:#}");
    assert!(
        fetch[0]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("timed out")),
        "{run:#}"
    );
    let second_fetched = fetch[1]["rows"].as_i64().expect("rows");
    assert!(
        second_fetched < 6_001,
        "the retry went on from the first attempt's files: it fetched {second_fetched}"
    );
    assert_exactly_once(
        "lake",
        &lake_ids(&home)["BTCUSDT"],
        start,
        sim.last_id("BTCUSDT"),
    );
}

/// A file whose ids overlap one the lake holds (another writer outside this metadata
/// database's lock) would load its trades twice: it is refused.
#[test]
fn a_file_overlapping_what_the_lake_holds_is_refused() {
    let home = Home::new();
    let sim = Simulator::start("BTCUSDT");
    let (start, _) = sim.add_trades("BTCUSDT", 500);
    home.write_dag(
        "trades",
        &pipeline(&sim, "BTCUSDT", &format!(", start_from_id: {start}")),
    );
    // While the fetch waits for its page, another writer puts a file of some of its ids.
    sim.post(
        "/_sim/faults",
        &serde_json::json!({"rest": [{"status": 200, "delay_ms": 1500}]}),
    );
    let child = home
        .command(&["run", "trades"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("orch run");
    std::thread::sleep(Duration::from_millis(500));
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let foreign = home.file(&format!(
        "data/lake/raw/binance_trades/symbol=BTCUSDT/date={today}/{}",
        raw_trades::file_key("", "x", "y", start + 10, start + 20)
            .rsplit('/')
            .next()
            .expect("name")
    ));
    std::fs::create_dir_all(foreign.parent().expect("folder")).expect("mkdir");
    std::fs::write(&foreign, b"").expect("a foreign file");
    let out = child.wait_with_output().expect("wait");
    assert!(!out.status.success());
    let run = home.run_json(text(&out.stdout).lines().next().expect("run id"));
    let error = attempts(&run, "get_data_binance")[0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("refusing to write ids") && error.contains("already holds some of them"),
        "{error}"
    );
}
