//! The BigQuery warehouse through the real binary: the Binance pipeline with
//! `ORCH_WAREHOUSE_URL=bigquery://...` against a local stand-in of Google's APIs
//! ([`stand_in`]), for exactly-once loads, lost ledger rows, RUNNING and failed load jobs, and
//! missing credentials; and the shipped `daily_binance_etl` replacing a day there.

mod stand_in;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use orch::decimal::{Decimal, Product};
use orch::exchange::Trade;
use orch::lake::raw_trades;
use serde_json::Value;

use crate::etl;
use crate::support::{Home, Simulator, attempts, text};
use stand_in::{PAGE_ROWS, StandIn};

const WAREHOUSE_URL: &str = "bigquery://test-project/market";
const LOAD_TASK: &str = "load_parquet_to_bigquery";

/// A home with the Binance pipeline, the simulator, the stand-in and a key file for it.
struct Setup {
    home: Home,
    sim: Simulator,
    bigquery: StandIn,
    credentials: PathBuf,
}

impl Setup {
    /// `extra` goes into the fetch's `with`.
    fn new(symbols: &str, extra: &str) -> Setup {
        let home = Home::new();
        let sim = Simulator::start(symbols);
        let bigquery = StandIn::start();
        let credentials = bigquery.write_credentials(&home);
        home.write_dag(
            "trades",
            &format!(
                r#"
defaults: {{ retries: 0 }}
tasks:
  - id: get_data_binance
    kind: binance.historical_trades
    with: {{ symbols: [{symbols}], base_url: "{}" {extra} }}
  - id: {LOAD_TASK}
    kind: warehouse.load_parquet
    depends_on: [get_data_binance]
"#,
                sim.url
            ),
        );
        Setup {
            home,
            sim,
            bigquery,
            credentials,
        }
    }

    /// `orch run trades` into the stand-in with the key file `credentials` (none: the
    /// variable unset); returns the run as `runs show --json` gives it.
    fn run_with(&self, credentials: Option<&Path>) -> Value {
        let mut command = self.home.command(&["run", "trades"]);
        command
            .env("ORCH_WAREHOUSE_URL", WAREHOUSE_URL)
            .env("BIGQUERY_API_URL", &self.bigquery.url);
        match credentials {
            Some(path) => command.env("GOOGLE_APPLICATION_CREDENTIALS", path),
            None => command.env_remove("GOOGLE_APPLICATION_CREDENTIALS"),
        };
        let out = command.output().expect("orch run");
        let run_id = text(&out.stdout)
            .lines()
            .next()
            .unwrap_or_else(|| panic!("no run id; stderr:\n{}", text(&out.stderr)))
            .to_string();
        self.home.run_json(&run_id)
    }

    fn run(&self) -> Value {
        self.run_with(Some(&self.credentials))
    }

    fn run_ok(&self) -> Value {
        let run = self.run();
        assert_eq!(run["state"], "success", "{run:#}");
        run
    }

    /// Every trade in the lake per symbol.
    fn lake_trades(&self) -> BTreeMap<String, Vec<Trade>> {
        let mut trades: BTreeMap<String, Vec<Trade>> = BTreeMap::new();
        for key in self.lake_files() {
            let symbol = key
                .split("symbol=")
                .nth(1)
                .and_then(|rest| rest.split('/').next())
                .expect("symbol partition")
                .to_string();
            let bytes =
                std::fs::read(self.home.file(&format!("data/lake/{key}"))).expect("read lake file");
            let decoded = raw_trades::decode(bytes.into()).expect("decode lake file");
            trades.entry(symbol).or_default().extend(decoded);
        }
        trades
    }

    /// The lake's file keys, sorted.
    fn lake_files(&self) -> Vec<String> {
        let lake = self.home.file("data/lake");
        let mut files = Vec::new();
        let mut stack = vec![lake.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "parquet") {
                    let key = path.strip_prefix(&lake).expect("under the lake");
                    files.push(key.to_string_lossy().into_owned());
                }
            }
        }
        files.sort();
        files
    }

    /// Asserts that the table of each symbol holds every lake trade exactly once, with its
    /// price and quantities exact in BIGNUMERIC columns.
    fn assert_tables_match_the_lake(&self) {
        let lake = self.lake_trades();
        assert!(!lake.is_empty(), "nothing fetched");
        for (symbol, trades) in lake {
            let name = format!("trades_{}", symbol.to_lowercase());
            let table = self
                .bigquery
                .table(&name)
                .unwrap_or_else(|| panic!("no table {name}"));
            let kinds: Vec<(&str, &str)> = table
                .schema
                .iter()
                .map(|(n, k)| (n.as_str(), k.as_str()))
                .collect();
            assert_eq!(
                kinds,
                [
                    ("trade_id", "INTEGER"),
                    ("price", "BIGNUMERIC"),
                    ("qty", "BIGNUMERIC"),
                    ("quote_qty", "BIGNUMERIC"),
                    ("trade_time", "TIMESTAMP"),
                    ("is_buyer_maker", "BOOLEAN"),
                    ("is_best_match", "BOOLEAN"),
                ]
            );
            let cell = |row: &[Option<String>], i: usize| row[i].clone().expect("no nulls");
            let mut loaded: Vec<(i64, [i128; 3])> = table
                .rows
                .iter()
                .map(|row| {
                    let decimal = |i| cell(row, i).parse::<Decimal>().expect("exact decimal");
                    let quote = cell(row, 3).parse::<Product>().expect("exact product");
                    let id = cell(row, 0).parse().expect("trade id");
                    (id, [decimal(1).units(), decimal(2).units(), quote.units()])
                })
                .collect();
            loaded.sort_by_key(|(id, _)| *id);
            let mut expected: Vec<(i64, [i128; 3])> = trades
                .iter()
                .map(|t| {
                    let units = [t.price.units(), t.qty.units(), t.quote_qty.units()];
                    (t.id, units)
                })
                .collect();
            expected.sort_by_key(|(id, _)| *id);
            let first = expected[0].0;
            let last = self.sim.last_id(&symbol);
            let ids: Vec<i64> = loaded.iter().map(|(id, _)| *id).collect();
            assert_eq!(
                ids,
                (first..=last).collect::<Vec<_>>(),
                "{name}: every id once"
            );
            assert!(loaded == expected, "{name}: values differ from the lake");
        }
    }
}

fn load_error(run: &Value) -> String {
    attempts(run, LOAD_TASK)[0]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {run:#}"))
        .to_string()
}

fn load_log(run: &Value) -> String {
    let path = attempts(run, LOAD_TASK)[0]["log_path"]
        .as_str()
        .expect("log path");
    std::fs::read_to_string(path).expect("attempt log")
}

#[test]
fn bigquery_every_trade_lands_once_as_bignumeric_and_a_rerun_loads_nothing() {
    let setup = Setup::new("BTCUSDT,AAVEUSDT", ", file_rows: 1000");
    setup.run_ok();
    for symbol in ["BTCUSDT", "AAVEUSDT"] {
        setup.sim.add_trades(symbol, 2500);
    }
    let second = setup.run_ok();
    assert_eq!(
        attempts(&second, LOAD_TASK)[0]["rows"].as_i64(),
        Some(5000),
        "{second:#}"
    );
    setup.assert_tables_match_the_lake();
    assert_eq!(setup.bigquery.ledger_files(), setup.lake_files());

    let jobs = setup.bigquery.world().load_job_ids.len();
    assert_eq!(jobs, setup.lake_files().len(), "one load job per file");
    let third = setup.run_ok();
    assert_eq!(
        attempts(&third, LOAD_TASK)[0]["rows"].as_i64(),
        Some(0),
        "{third:#}"
    );
    assert!(
        load_log(&third).contains("0 new files"),
        "{}",
        load_log(&third)
    );
    let world = setup.bigquery.world();
    assert_eq!(
        world.load_job_ids.len(),
        jobs,
        "no load job in the third run"
    );
    assert_eq!(
        world.issued_tokens.len(),
        3,
        "one token per run, reused for its calls"
    );
}

#[test]
fn bigquery_a_lost_ledger_row_is_recovered_through_the_job_id_without_a_second_append() {
    // A file per page of 1000 trades: four files, more than a page of ledger query results.
    let setup = Setup::new("BTCUSDT", ", file_rows: 1000");
    setup.run_ok();
    setup.sim.add_trades("BTCUSDT", 3000);
    setup.run_ok();
    let files = setup.bigquery.ledger_files();
    assert!(files.len() > PAGE_ROWS, "{files:?}");
    let table_before = setup.bigquery.table("trades_btcusdt").expect("table");
    let jobs_before = setup.bigquery.world().load_job_ids.clone();

    setup.bigquery.forget_ledger();
    let run = setup.run_ok();
    let log = load_log(&run);
    assert_eq!(
        log.matches("already loaded, skipped").count(),
        files.len(),
        "{log}"
    );
    assert_eq!(attempts(&run, LOAD_TASK)[0]["rows"].as_i64(), Some(0));
    assert_eq!(setup.bigquery.table("trades_btcusdt"), Some(table_before));
    let world = setup.bigquery.world();
    assert_eq!(
        world.load_job_ids, jobs_before,
        "the same job ids, refused with 409"
    );
    assert!(jobs_before.iter().all(|id| world.job_gets.contains(id)));
    drop(world);
    assert_eq!(
        setup.bigquery.ledger_files(),
        files,
        "the ledger rows are back"
    );
    setup.assert_tables_match_the_lake();
}

#[test]
fn bigquery_a_load_job_still_running_is_waited_for() {
    let setup = Setup::new("BTCUSDT", "");
    // The insert and the first jobs.get answer RUNNING; the second jobs.get answers DONE.
    setup.bigquery.world().running_answers = 2;
    let run = setup.run_ok();
    let world = setup.bigquery.world();
    assert!(!world.load_job_ids.is_empty());
    for job_id in &world.load_job_ids {
        let gets = world.job_gets.iter().filter(|id| *id == job_id).count();
        assert_eq!(gets, 2, "{job_id} polled until DONE");
    }
    drop(world);
    let rows = setup
        .bigquery
        .table("trades_btcusdt")
        .expect("table")
        .rows
        .len();
    assert_eq!(
        attempts(&run, LOAD_TASK)[0]["rows"].as_u64(),
        Some(rows as u64)
    );
    setup.assert_tables_match_the_lake();
}

#[test]
fn bigquery_a_failed_load_job_fails_the_task_with_googles_message_and_the_retry_uses_a_new_job_id()
{
    let setup = Setup::new("BTCUSDT", "");
    let message = "Error while reading data, error message: the stand-in refuses this file";
    setup.bigquery.world().failing_load = Some(message.to_string());
    let failed = setup.run();
    assert_eq!(failed["state"], "failed", "{failed:#}");
    let error = load_error(&failed);
    for needle in [message, "(invalid)", "trades_btcusdt", "orch_load_"] {
        assert!(error.contains(needle), "`{needle}` missing from: {error}");
    }
    let files = setup.lake_files();
    assert!(
        files.iter().any(|f| error.contains(f.as_str())),
        "no file named: {error}"
    );
    let first_job = setup.bigquery.world().load_job_ids[0].clone();
    assert!(
        first_job.ends_with("_0") && error.contains(&first_job),
        "{error}"
    );
    assert!(
        setup
            .bigquery
            .table("trades_btcusdt")
            .is_none_or(|t| t.rows.is_empty())
    );

    setup.run_ok();
    let world = setup.bigquery.world();
    let retried = first_job.replace("_0", "_1");
    assert!(
        world.load_job_ids.contains(&retried),
        "{:?}",
        world.load_job_ids
    );
    drop(world);
    setup.assert_tables_match_the_lake();
}

#[test]
fn bigquery_missing_credentials_fail_the_load_with_a_clear_error() {
    let setup = Setup::new("BTCUSDT", "");
    let unset = setup.run_with(None);
    assert_eq!(unset["state"], "failed");
    let error = load_error(&unset);
    assert!(error.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{error}");

    let missing = setup.home.file("no-such-key.json");
    let unreadable = setup.run_with(Some(&missing));
    let error = load_error(&unreadable);
    assert!(
        error.contains("GOOGLE_APPLICATION_CREDENTIALS")
            && error.contains(&*missing.to_string_lossy()),
        "{error}"
    );
    assert!(setup.bigquery.world().issued_tokens.is_empty());
}

#[test]
fn bigquery_the_daily_etl_replaces_its_day_partition_and_a_rerun_doubles_nothing() {
    let home = Home::new();
    home.write_dag("daily_binance_etl", &etl::shipped());
    let sim = Simulator::start("BTCUSDT,AAVEUSDT,BTCFDUSD");
    let bigquery = StandIn::start();
    let credentials = bigquery.write_credentials(&home);
    let credentials = credentials.to_string_lossy();
    let staging = format!("sqlite://{}", home.file("data/staging.db").display());
    let trades = etl::stage(&staging, &["BTCUSDT", "AAVEUSDT", "BTCFDUSD"], 500);
    let env = [
        ("ORCH_STAGING_URL", staging.as_str()),
        ("ORCH_WAREHOUSE_URL", WAREHOUSE_URL),
        ("BIGQUERY_API_URL", bigquery.url.as_str()),
        ("GOOGLE_APPLICATION_CREDENTIALS", &*credentials),
    ];
    let run = etl::run_day(&home, &sim, &env, "2026-11-22");
    let facts = attempts(&run, "transform")[0]["metrics"]["rows_fact_trades"]
        .as_u64()
        .expect("fact rows");

    let fact = bigquery.table("fact_trades").expect("fact_trades");
    assert_eq!(fact.rows.len() as u64, facts);
    assert_eq!(fact.partition_field.as_deref(), Some("trade_minute"));
    let kind = |name: &str| {
        fact.schema
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, k)| k.as_str())
            .unwrap_or_else(|| panic!("no column {name}"))
    };
    for decimal in [
        "min_price",
        "max_price",
        "total_quantity",
        "total_trade_value",
        "open_price",
        "close_price",
        "taker_buy_quantity",
    ] {
        assert_eq!(kind(decimal), "BIGNUMERIC", "{decimal}");
    }
    assert_eq!(kind("trade_minute"), "TIMESTAMP");
    assert_eq!(kind("vwap"), "FLOAT");
    let column = |name: &str| {
        fact.schema
            .iter()
            .position(|(n, _)| n == name)
            .expect("column")
    };
    let (minute, count) = (column("trade_minute"), column("trade_count"));
    let cell = |row: &[Option<String>], i: usize| -> i64 {
        row[i]
            .as_deref()
            .and_then(|v| v.parse().ok())
            .expect("an integer cell")
    };
    // 2026-11-22 in microseconds: every row is of the day.
    let day = 1_795_305_600_000_000_i64;
    assert!(
        fact.rows
            .iter()
            .all(|row| (day..day + 86_400_000_000).contains(&cell(row, minute)))
    );
    let counted: i64 = fact.rows.iter().map(|row| cell(row, count)).sum();
    assert_eq!(counted, trades as i64);
    let dimension_rows = |table: &str| bigquery.table(table).map(|t| t.rows.len());
    assert_eq!(dimension_rows("dim_symbol"), Some(3));
    assert_eq!(dimension_rows("dim_exchange"), Some(1));
    assert_eq!(dimension_rows("dim_currency"), Some(4));
    let tables = [
        "dim_time",
        "dim_symbol",
        "dim_exchange",
        "dim_currency",
        "fact_trades",
    ];
    let snapshot = || tables.map(|t| bigquery.table(t));

    // The rerun replaces the partition and the members: nothing doubles.
    let before = snapshot();
    etl::run_day(&home, &sim, &env, "2026-11-22");
    assert!(snapshot() == before, "the rerun changed the warehouse");
    let jobs = bigquery.world().load_job_ids.clone();
    let distinct: std::collections::BTreeSet<&String> = jobs.iter().collect();
    assert_eq!(
        (jobs.len(), distinct.len()),
        (10, 10),
        "a fresh load job per table and run: {jobs:?}"
    );

    // A day without trades empties its own partition only.
    etl::run_day(&home, &sim, &env, "2026-11-20");
    assert!(snapshot() == before, "the empty day touched another day");
}
