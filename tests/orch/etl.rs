//! `daily_binance_etl` as shipped: a UTC day of staged trades into the star schema in the lake
//! and the warehouse, rerun without duplicates, an empty day, a corrupted snapshot, and a
//! failed quality check that loads nothing.

use std::collections::BTreeMap;

use orch::decimal::{Decimal, Product};
use orch::exchange::Trade;
use orch::staging::{StagedTrade, Staging};
use serde_json::Value;

use crate::support::{Home, Simulator, attempts, block_on, postgres_database, text};

const SHIPPED: &str = include_str!("../../dags/daily_binance_etl.yaml");

/// The shipped DAG without its 5-minute retry, so a failure fails the test at once.
pub(crate) fn shipped() -> String {
    let no_retry = SHIPPED.replace("retries: 3, retry_delay: 10m", "retries: 0");
    assert_ne!(
        no_retry, SHIPPED,
        "the shipped DAG retries three times, 10 minutes apart"
    );
    no_retry
}
/// 2026-11-22T00:00:00Z in ms.
const DAY: i64 = 1_795_305_600_000;

/// Stages `per_symbol` trades a symbol across the day of 2026-11-22, plus one trade just
/// before and one just after it that the day must not include; returns the day's count.
pub(crate) fn stage(url: &str, symbols: &[&str], per_symbol: i64) -> u64 {
    insert(url, &staged_rows(symbols, per_symbol, DAY, 1))
}

/// `per_day` trades a symbol across each of `days` days from `first_day` (ms), with
/// consecutive ids across the days, plus one trade just before the first day and one just
/// after the last: a complete span of days, as a stream with gap backfill stages it.
fn staged_rows(symbols: &[&str], per_day: i64, first_day: i64, days: i64) -> Vec<StagedTrade> {
    let mut rows = Vec::new();
    for (s, symbol) in symbols.iter().enumerate() {
        let base_price = 1_000_000_000_i128 * (s as i128 + 1);
        let mut next_id = 1;
        let mut push = |time_ms: i64| {
            let id = next_id;
            next_id += 1;
            // A tick of 0.00001 and a step of 0.0001, as on ETHBTC: price × qty needs up
            // to 13 fractional digits.
            let price = base_price + i128::from(id % 7) * 1_000;
            let qty = 1_000_000 + i128::from(id % 5) * 10_000;
            rows.push(StagedTrade {
                symbol: symbol.to_string(),
                trade: Trade::new(
                    id,
                    Decimal::from_units(price).expect("price"),
                    Decimal::from_units(qty).expect("qty"),
                    time_ms,
                    id % 3 == 0,
                    true,
                )
                .expect("trade"),
            });
        };
        push(first_day - 1);
        for day in 0..days {
            let start = first_day + day * 86_400_000;
            for i in 0..per_day {
                push(start + i * (86_400_000 / per_day));
            }
        }
        push(first_day + days * 86_400_000);
    }
    rows
}

/// Stages `rows`; returns how many fall inside their days (all but one before and one after
/// them, per symbol).
fn insert(url: &str, rows: &[StagedTrade]) -> u64 {
    insert_of(url, "binance", rows)
}

/// Stages `rows` as trades of `exchange`; returns how many fall inside their days.
fn insert_of(url: &str, exchange: &str, rows: &[StagedTrade]) -> u64 {
    let symbols: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r.symbol.as_str()).collect();
    block_on(async {
        let staging = Staging::open(url, "raw_trades").await.expect("staging");
        staging
            .insert(exchange, rows, 0)
            .await
            .expect("stage trades");
    });
    (rows.len() - 2 * symbols.len()) as u64
}

pub(crate) fn run_day(home: &Home, sim: &Simulator, env: &[(&str, &str)], date: &str) -> Value {
    let out = home
        .command(&["run", "daily_binance_etl", "--logical-date", date])
        .env("BINANCE_API_URL", &sim.url)
        .envs(env.iter().copied())
        .output()
        .expect("orch run");
    let run_id = text(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let run = home.run_json(&run_id);
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}\n{run:#}",
        text(&out.stdout),
        text(&out.stderr)
    );
    run
}

/// `SELECT ...` of one row of integers from the warehouse.
fn query_ints(url: &str, sql: &str) -> Vec<i64> {
    use sqlx::{Connection, Row};
    block_on(async {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(url)
            .await
            .expect("open warehouse");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        (0..row.len())
            .map(|i| {
                row.try_get::<i64, _>(i)
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            })
            .collect()
    })
}

fn warehouse_counts(url: &str) -> BTreeMap<&'static str, i64> {
    [
        "dim_time",
        "dim_symbol",
        "dim_exchange",
        "dim_currency",
        "fact_trades",
    ]
    .into_iter()
    .map(|t| (t, query_ints(url, &format!("SELECT COUNT(*) FROM {t}"))[0]))
    .collect()
}

/// Each fact row's `total_trade_value`, read back as an exact decimal, sorted.
fn trade_values(url: &str) -> Vec<i128> {
    use sqlx::{Connection, Row};
    let mut values: Vec<i128> = block_on(async {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(url).await.expect("open");
        sqlx::query("SELECT CAST(total_trade_value AS TEXT) FROM fact_trades")
            .fetch_all(&mut conn)
            .await
            .expect("query")
            .iter()
            .map(|row| {
                let text: String = row.get(0);
                text.parse::<Product>().expect("exact decimal").units()
            })
            .collect()
    });
    values.sort_unstable();
    values
}

/// The day's `total_trade_value`s computed here: per symbol and minute, the sum of price ×
/// qty in plain integers (units of 10⁻⁸ times units of 10⁻⁸ are units of 10⁻¹⁶), sorted.
fn exact_trade_values(staged: &[StagedTrade]) -> Vec<i128> {
    let mut sums: BTreeMap<(&str, i64), i128> = BTreeMap::new();
    for row in staged {
        let t = &row.trade;
        if (DAY..DAY + 86_400_000).contains(&t.time_ms) {
            *sums
                .entry((row.symbol.as_str(), t.time_ms / 60_000))
                .or_default() += t.price.units() * t.qty.units();
        }
    }
    let mut values: Vec<i128> = sums.into_values().collect();
    values.sort_unstable();
    values
}

fn a_day_end_to_end(warehouse_url: &str) {
    let home = Home::new();
    home.write_dag("daily_binance_etl", &shipped());
    let sim = Simulator::start("BTCUSDT,AAVEUSDT,BTCFDUSD");
    let staging = format!("sqlite://{}", home.file("data/staging.db").display());
    let staged = staged_rows(&["BTCUSDT", "AAVEUSDT", "BTCFDUSD"], 2_000, DAY, 1);
    let trades = insert(&staging, &staged);
    let env = [
        ("ORCH_STAGING_URL", staging.as_str()),
        ("ORCH_WAREHOUSE_URL", warehouse_url),
    ];
    let run = run_day(&home, &sim, &env, "2026-11-22");

    let extract = &attempts(&run, "extract")[0];
    assert_eq!(
        extract["rows"], trades,
        "the whole UTC day and nothing else: {run:#}"
    );
    assert_eq!(extract["metrics"]["rows_read"], trades);
    let transform = &attempts(&run, "transform")[0];
    assert_eq!(transform["metrics"]["rows_read"], trades);
    let load = &attempts(&run, "load")[0];
    let facts = transform["metrics"]["rows_fact_trades"]
        .as_i64()
        .expect("fact rows");
    assert_eq!(load["metrics"]["rows_fact_trades"], facts);

    let counts = warehouse_counts(warehouse_url);
    assert_eq!(counts["fact_trades"], facts);
    assert_eq!(
        trade_values(warehouse_url),
        exact_trade_values(&staged),
        "total_trade_value is exact decimal arithmetic"
    );
    assert_eq!(counts["dim_symbol"], 3);
    assert_eq!(counts["dim_exchange"], 1);
    assert_eq!(
        counts["dim_currency"], 4,
        "AAVE, BTC, FDUSD, USDT: {counts:?}"
    );
    assert_eq!(
        query_ints(
            warehouse_url,
            "SELECT CAST(SUM(trade_count) AS BIGINT) FROM fact_trades"
        )[0],
        trades as i64
    );
    assert_eq!(
        query_ints(
            warehouse_url,
            "SELECT COUNT(*) FROM dim_currency WHERE currency_id = 'FDUSD' AND is_stablecoin"
        )[0],
        1,
        "FDUSD comes from exchangeInfo, not a suffix guess"
    );
    let ids = |url: &str| {
        query_ints(
            url,
            "SELECT MIN(symbol_id), MAX(symbol_id), CAST(SUM(symbol_id) AS BIGINT) FROM dim_symbol",
        )
    };
    let first_ids = ids(warehouse_url);

    // A rerun replaces the day: the same rows, the same symbol ids.
    run_day(&home, &sim, &env, "2026-11-22");
    assert_eq!(
        warehouse_counts(warehouse_url),
        counts,
        "rerun changes nothing"
    );
    assert_eq!(ids(warehouse_url), first_ids, "symbol ids are stable");

    // A day without trades: empty partitions, the other day untouched.
    let empty = run_day(&home, &sim, &env, "2026-11-20");
    assert_eq!(attempts(&empty, "extract")[0]["rows"], 0);
    assert_eq!(attempts(&empty, "transform")[0]["rows"], 0);
    assert!(
        home.file("data/lake/curated/fact_trades/year=2026/month=11/day=20/_manifest.json")
            .exists()
    );
    assert_eq!(warehouse_counts(warehouse_url), counts);

    // The data page draws the day from fact_trades: every trade in its hours, exact prices.
    assert!(
        home.orch(&["dags", "pause", "daily_binance_etl"])
            .status
            .success()
    );
    let web = crate::web::serve_web(&home, "127.0.0.1", &env);
    let page = crate::web::request(&web.addr, "GET", "/api/v1/data/trades", &[], "").json();
    assert_eq!(page["available"], true, "{page}");
    let symbols = page["symbols"].as_array().expect("symbols");
    assert_eq!(symbols.len(), 3, "{page}");
    let mut shown = 0;
    for symbol in symbols {
        assert_eq!(symbol["latest_day"], "2026-11-22");
        assert_eq!(symbol["exchange"], "binance");
        for point in symbol["points"].as_array().expect("points") {
            shown += point["trades"].as_i64().expect("trades");
            let (low, high) = (
                point["low"].as_str().expect("low"),
                point["high"].as_str().expect("high"),
            );
            assert!(low.parse::<f64>().expect("low") <= high.parse::<f64>().expect("high"));
            assert!(
                point["volume"].as_str().expect("volume").contains('.'),
                "a decimal string: {point}"
            );
        }
    }
    assert_eq!(
        shown, trades as i64,
        "every trade of the day in the hourly points"
    );
}

#[test]
fn a_day_of_three_exchanges_is_one_star_schema_with_each_exchanges_catalog() {
    let home = Home::new();
    home.write_dag("daily_binance_etl", &shipped());
    // Binance's BTCUSDT and AAVEUSDT; KuCoin's BTC-USDT and Mercado Bitcoin's BTC-BRL are the
    // same simulated books under their own catalogs.
    let sim = Simulator::start("BTCUSDT,AAVEUSDT,BTCBRL");
    let staging = format!("sqlite://{}", home.file("data/staging.db").display());
    let mut trades = insert(
        &staging,
        &staged_rows(&["BTCUSDT", "AAVEUSDT"], 500, DAY, 1),
    );
    // KuCoin's sequences skip numbers: no gap for the extract to wait for.
    let mut kucoin = staged_rows(&["BTC-USDT"], 300, DAY, 1);
    for row in &mut kucoin {
        row.trade.id *= 3;
    }
    trades += insert_of(&staging, "kucoin", &kucoin);
    trades += insert_of(
        &staging,
        "mercado_bitcoin",
        &staged_rows(&["BTC-BRL"], 200, DAY, 1),
    );
    let warehouse = format!("sqlite://{}", home.file("data/warehouse.db").display());
    let mercado_bitcoin = format!("{}/api/v4", sim.url);
    let env = [
        ("ORCH_STAGING_URL", staging.as_str()),
        ("ORCH_WAREHOUSE_URL", warehouse.as_str()),
        ("KUCOIN_API_URL", sim.url.as_str()),
        ("MERCADO_BITCOIN_API_URL", mercado_bitcoin.as_str()),
    ];
    let run = run_day(&home, &sim, &env, "2026-11-22");
    assert_eq!(attempts(&run, "extract")[0]["rows"], trades, "{run:#}");

    let counts = warehouse_counts(&warehouse);
    assert_eq!(counts["dim_exchange"], 3, "{counts:?}");
    assert_eq!(counts["dim_symbol"], 4, "{counts:?}");
    assert_eq!(
        counts["dim_currency"], 4,
        "AAVE, BRL, BTC, USDT: {counts:?}"
    );
    assert_eq!(
        query_ints(
            &warehouse,
            "SELECT CAST(SUM(trade_count) AS BIGINT), COUNT(DISTINCT exchange_id) FROM fact_trades"
        ),
        vec![trades as i64, 3]
    );
    // Each exchange's symbol is its own, with its assets from its own catalog.
    assert_eq!(
        query_ints(
            &warehouse,
            "SELECT COUNT(*), COUNT(DISTINCT symbol_id) FROM dim_symbol
             WHERE base_currency_id = 'BTC' AND quote_currency_id IN ('USDT', 'BRL')"
        ),
        vec![3, 3]
    );
    assert_eq!(
        query_ints(
            &warehouse,
            "SELECT COUNT(*) FROM dim_symbol WHERE exchange_id = 'mercado_bitcoin'
             AND symbol = 'BTC-BRL' AND quote_currency_id = 'BRL'"
        )[0],
        1
    );
    assert_eq!(
        query_ints(
            &warehouse,
            "SELECT COUNT(*) FROM fact_trades f JOIN dim_symbol s ON s.symbol_id = f.symbol_id
             WHERE s.exchange_id <> f.exchange_id"
        )[0],
        0,
        "every fact row names its symbol's exchange"
    );
}

#[test]
fn a_day_lands_once_in_the_lake_and_the_sqlite_warehouse() {
    let home = Home::new();
    let url = format!("sqlite://{}", home.file("warehouse.db").display());
    a_day_end_to_end(&url);
}

#[test]
fn a_day_lands_once_in_a_postgres_warehouse() {
    if let Some(url) = postgres_database("daily_etl") {
        a_day_end_to_end(&url);
    }
}

#[test]
fn a_corrupted_snapshot_fails_the_transform_naming_the_file() {
    let home = Home::new();
    let sim = Simulator::start("BTCUSDT");
    let part = home.file("data/lake/raw/trades_daily/date=2026-11-22/part-00000.parquet");
    std::fs::create_dir_all(part.parent().expect("folder")).expect("mkdir");
    std::fs::write(&part, b"PAR1 this is not parquet").expect("write");
    home.write_dag(
        "t",
        "tasks:\n  - { id: transform, kind: trades.star_schema, with: { date: \"{{ ds }}\" } }\n",
    );
    let out = home
        .command(&["run", "t", "--logical-date", "2026-11-22"])
        .env("BINANCE_API_URL", &sim.url)
        .output()
        .expect("orch run");
    assert!(!out.status.success());
    let run_id = text(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let run = home.run_json(&run_id);
    let error = attempts(&run, "transform")[0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("date=2026-11-22/part-00000.parquet")
            && error.contains("not a readable Parquet file"),
        "{error}"
    );
}

#[test]
fn a_failed_quality_check_names_the_rows_and_loads_nothing() {
    let home = Home::new();
    home.write_dag("daily_binance_etl", &shipped());
    let sim = Simulator::start("BTCUSDT");
    let staging = format!("sqlite://{}", home.file("data/staging.db").display());
    stage(&staging, &["BTCUSDT"], 100);
    let warehouse = format!("sqlite://{}", home.file("data/warehouse.db").display());
    let env = [("ORCH_STAGING_URL", staging.as_str())];
    run_day(&home, &sim, &env, "2026-11-22");
    let before = warehouse_counts(&warehouse);

    // A trade of quantity zero on the same day.
    block_on(async {
        let staging = Staging::open(&staging, "raw_trades")
            .await
            .expect("staging");
        let bad = StagedTrade {
            symbol: "BTCUSDT".to_string(),
            trade: Trade::new(
                1_000_000,
                Decimal::from_units(1).expect("price"),
                Decimal::from_units(0).expect("qty"),
                DAY + 3_600_000,
                false,
                true,
            )
            .expect("trade"),
        };
        staging.insert("binance", &[bad], 0).await.expect("stage");
    });
    // Its id is outside the day's run of ids: only a run that allows an incomplete day gets
    // as far as the quality checks.
    let out = home
        .command(&[
            "run",
            "daily_binance_etl",
            "--logical-date",
            "2026-11-22",
            "--conf",
            "allow_incomplete=true",
        ])
        .env("BINANCE_API_URL", &sim.url)
        .envs(env)
        .output()
        .expect("orch run");
    assert!(!out.status.success());
    let run_id = text(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let run = home.run_json(&run_id);
    let load = attempts(&run, "load");
    let error = load[load.len() - 1]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("prices and quantities are positive: 1 rows break it")
            && error.contains("trade 1000000"),
        "{error}"
    );
    assert_eq!(warehouse_counts(&warehouse), before, "nothing loaded");
}

#[test]
fn a_backfill_runs_each_date_once_and_skips_successful_dates_unless_rerun() {
    let home = Home::new();
    // One retry at once: two dates run side by side here, and a date that fails once for a
    // reason a retry gets past (seen only under the whole suite's load; `orch backfill` now
    // prints why) must still run once in the end, which is what this test is about.
    let dag = shipped().replace("retries: 0", "retries: 1, retry_delay: 0s");
    assert_ne!(dag, shipped());
    home.write_dag("daily_binance_etl", &dag);
    let sim = Simulator::start("BTCUSDT,AAVEUSDT");
    let staging = format!("sqlite://{}", home.file("data/staging.db").display());
    let warehouse = format!("sqlite://{}", home.file("data/warehouse.db").display());
    let first_day = DAY - 2 * 86_400_000;
    let total = insert(
        &staging,
        &staged_rows(&["BTCUSDT", "AAVEUSDT"], 500, first_day, 3),
    );
    let backfill = |extra: &[&str]| {
        let mut args = vec![
            "backfill",
            "daily_binance_etl",
            "--start",
            "2026-11-20",
            "--end",
            "2026-11-22",
            "--parallel",
            "2",
        ];
        args.extend_from_slice(extra);
        let out = home
            .command(&args)
            .env("BINANCE_API_URL", &sim.url)
            .env("ORCH_STAGING_URL", &staging)
            .output()
            .expect("orch backfill");
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let (ok, stdout, stderr) = backfill(&[]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("3 of 3 dates succeeded"), "{stdout}");
    assert_eq!(
        stderr.matches("] 2026-11-2").count(),
        3,
        "a line per date: {stderr}"
    );
    // The schedule's own ticks, 04:00 UTC: the runs the scheduler would have made, with the
    // same ds and data interval.
    for date in ["2026-11-20", "2026-11-21", "2026-11-22"] {
        let run_id = format!("daily_binance_etl__backfill__{date}T04:00:00Z");
        assert!(stdout.contains(&run_id), "{stdout}");
        let run = home.run_json(&run_id);
        assert_eq!(
            run["data_interval_start"],
            format!("{date}T04:00:00.000000Z"),
            "{run:#}"
        );
    }
    let counts = warehouse_counts(&warehouse);
    assert_eq!(
        query_ints(
            &warehouse,
            "SELECT CAST(SUM(trade_count) AS BIGINT) FROM fact_trades"
        )[0],
        total as i64,
        "{stdout}\n{stderr}"
    );

    let (ok, again, errors) = backfill(&[]);
    assert!(ok, "{again}\n{errors}");
    assert_eq!(
        again.matches("skipped (already successful)").count(),
        3,
        "{again}"
    );
    let (ok, rerun, errors) = backfill(&["--rerun"]);
    assert!(ok, "{rerun}\n{errors}");
    assert!(rerun.contains("3 of 3 dates succeeded"), "{rerun}");
    assert_eq!(
        warehouse_counts(&warehouse),
        counts,
        "reruns change nothing"
    );
    let runs = home.orch(&["runs", "list", "--json"]);
    let runs: Value = serde_json::from_slice(&runs.stdout).expect("runs json");
    assert_eq!(
        runs.as_array().map(Vec::len),
        Some(3),
        "one run per date, rerun in place: {runs:#}"
    );
}

/// A backfill of thousands of runs (a 5-minute DAG over days) needs `--yes` when nobody can
/// be asked; `--parallel 0` would start nothing and is refused.
#[test]
fn a_huge_backfill_needs_yes_and_parallel_zero_is_refused() {
    let home = Home::new();
    home.write_dag(
        "every5",
        "schedule: '*/5 * * * *'\ntasks: [{id: a, kind: noop}]\n",
    );
    let out = home.orch(&[
        "backfill",
        "every5",
        "--start",
        "2026-11-01",
        "--end",
        "2026-11-05",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("1440 runs") && err.contains("--yes"), "{err}");
    let out = home.orch(&[
        "backfill",
        "every5",
        "--start",
        "2026-11-01",
        "--end",
        "2026-11-01",
        "--parallel",
        "0",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--parallel"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&home.orch(&["runs", "list"]).stdout).lines().count() <= 1,
        "no run was made"
    );
}

/// The extract took whatever staging held at 04:00. Now a day with ids missing, or whose
/// stream has not gone past its end, fails naming what is missing, and a retry once staging
/// caught up extracts the whole day.
#[test]
fn an_incomplete_day_fails_naming_the_missing_ids_until_staging_catches_up() {
    let home = Home::new();
    home.write_dag("daily_binance_etl", &shipped());
    let sim = Simulator::start("BTCUSDT,AAVEUSDT");
    let staging = format!("sqlite://{}", home.file("data/staging.db").display());
    let all = staged_rows(&["BTCUSDT", "AAVEUSDT"], 100, DAY, 1);
    // BTCUSDT loses ids 40..=44 (a gap the stream's backfill has not filled yet); AAVEUSDT
    // loses its trade after the day (the stream is not past midnight yet).
    let held_back: Vec<StagedTrade> = all
        .iter()
        .filter(|r| {
            (r.symbol == "BTCUSDT" && (40..=44).contains(&r.trade.id))
                || (r.symbol == "AAVEUSDT" && r.trade.time_ms >= DAY + 86_400_000)
        })
        .cloned()
        .collect();
    let first: Vec<StagedTrade> = all
        .iter()
        .filter(|r| !held_back.contains(r))
        .cloned()
        .collect();
    insert(&staging, &first);
    let env = [("ORCH_STAGING_URL", staging.as_str())];
    let out = home
        .command(&["run", "daily_binance_etl", "--logical-date", "2026-11-22"])
        .env("BINANCE_API_URL", &sim.url)
        .envs(env)
        .output()
        .expect("orch run");
    assert!(!out.status.success());
    let run = home.run_json(text(&out.stdout).lines().next().expect("run id"));
    let error = attempts(&run, "extract")[0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("BTCUSDT: trade ids 40..=44 are missing")
            && error.contains("AAVEUSDT: the stream has not committed trades past the day's end"),
        "{error}"
    );
    assert!(
        !home
            .file("data/lake/raw/trades_daily/date=2026-11-22")
            .exists(),
        "nothing was snapshot"
    );

    insert(&staging, &held_back);
    let run = run_day(&home, &sim, &env, "2026-11-22");
    assert_eq!(attempts(&run, "extract")[0]["rows"], 200, "{run:#}");
}
