//! The lake's upkeep: `lake.retention` replaces days past their retention by one exact row
//! per symbol and day, after a dry run that changes nothing.

use orch::exchange::Trade;
use orch::lake::raw_trades;
use polars::prelude::{DataType, PolarsResult};

use crate::support::{Home, attempts, block_on, run_id_of, text};

/// Writes three raw files of `symbol` on `date` into the home's local lake: ids from
/// `first`, 10 trades each at 100.00 + i cents and quantity 0.1, times on that date.
fn write_day(home: &Home, symbol: &str, date: &str, first: i64) -> Vec<Trade> {
    let midnight = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .expect("date")
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc()
        .timestamp_millis();
    let mut all = Vec::new();
    for file in 0..3 {
        let trades: Vec<Trade> = (0..10)
            .map(|i| {
                let n = file * 10 + i;
                Trade::new(
                    first + n,
                    format!("{}.{:02}", 100 + n / 100, n % 100)
                        .parse()
                        .expect("price"),
                    "0.1".parse().expect("qty"),
                    midnight + n * 1000,
                    n % 2 == 0,
                    true,
                )
                .expect("trade")
            })
            .collect();
        let key = raw_trades::file_key(
            "raw/binance_trades",
            symbol,
            date,
            trades[0].id,
            trades[9].id,
        );
        let path = home.file(&format!("data/lake/{key}"));
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        std::fs::write(&path, raw_trades::encode(&trades).expect("encode")).expect("write");
        all.extend(trades);
    }
    all
}

fn retention_dag(dry_run: bool) -> String {
    format!(
        "tasks:\n  - id: retention\n    kind: lake.retention\n    with: {{ source: raw/binance_trades, keep_days: 30, dry_run: {dry_run} }}\n"
    )
}

fn run_retention(home: &Home) -> serde_json::Value {
    let out = home.orch(&["run", "retention", "--logical-date", "2026-11-30"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    home.run_json(&run_id_of(&out))
}

fn parquet_names(home: &Home, dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(home.file(dir))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A column of the one-row daily file, as text.
fn daily_value(home: &Home, symbol: &str, date: &str, column: &str) -> String {
    let path = home.file(&format!(
        "data/lake/raw/binance_trades_daily/symbol={symbol}/date={date}/ohlcv.parquet"
    ));
    let bytes = bytes::Bytes::from(std::fs::read(&path).expect("daily file"));
    let frame = raw_trades::read_frame(bytes).expect("read daily");
    let value: PolarsResult<String> = (|| {
        let text = frame.column(column)?.cast(&DataType::String)?;
        Ok(text.str()?.get(0).unwrap_or_default().to_string())
    })();
    value.expect("column")
}

#[test]
fn retention_replaces_old_days_by_exact_daily_rows_after_a_dry_run() {
    let home = Home::new();
    write_day(&home, "BTCUSDT", "2026-10-01", 1_000);
    write_day(&home, "ETHUSDT", "2026-10-01", 5_000);
    write_day(&home, "BTCUSDT", "2026-10-30", 2_000);
    // 2026-10-31 is the first day of the 30 kept before 2026-11-30.
    write_day(&home, "BTCUSDT", "2026-10-31", 3_000);
    let old = "data/lake/raw/binance_trades/symbol=BTCUSDT/date=2026-10-01";
    let kept = "data/lake/raw/binance_trades/symbol=BTCUSDT/date=2026-10-31";

    home.write_dag("retention", &retention_dag(true));
    let dry = run_retention(&home);
    assert_eq!(dry["state"], "success");
    let log = std::fs::read_to_string(
        attempts(&dry, "retention")[0]["log_path"]
            .as_str()
            .expect("log"),
    )
    .expect("log");
    assert!(
        log.contains(
            "would replace 3 files (" // bytes vary with the Parquet writer
        ) && log.contains(
            "of BTCUSDT 2026-10-01 by raw/binance_trades_daily/symbol=BTCUSDT/date=2026-10-01/ohlcv.parquet"
        ),
        "{log}"
    );
    assert!(
        log.contains("would replace 3 symbol-days: 9 files"),
        "{log}"
    );
    assert_eq!(
        parquet_names(&home, old).len(),
        3,
        "a dry run changes nothing"
    );
    assert!(!home.file("data/lake/raw/binance_trades_daily").exists());

    home.write_dag("retention", &retention_dag(false));
    let real = run_retention(&home);
    assert_eq!(real["state"], "success");
    assert!(parquet_names(&home, old).is_empty(), "old day replaced");
    assert_eq!(parquet_names(&home, kept).len(), 3, "kept day untouched");
    // 30 trades at 100.00 .. 100.29, 0.1 each: exact sums.
    assert_eq!(daily_value(&home, "BTCUSDT", "2026-10-01", "trades"), "30");
    assert_eq!(
        daily_value(&home, "BTCUSDT", "2026-10-01", "open"),
        "100.00000000"
    );
    assert_eq!(
        daily_value(&home, "BTCUSDT", "2026-10-01", "high"),
        "100.29000000"
    );
    assert_eq!(
        daily_value(&home, "BTCUSDT", "2026-10-01", "close"),
        "100.29000000"
    );
    assert_eq!(
        daily_value(&home, "BTCUSDT", "2026-10-01", "volume"),
        "3.00000000"
    );
    assert_eq!(
        daily_value(&home, "BTCUSDT", "2026-10-01", "quote_volume"),
        "300.4350000000000000"
    );
    assert_eq!(
        daily_value(&home, "ETHUSDT", "2026-10-01", "first_trade_id"),
        "5000"
    );
    assert_eq!(
        daily_value(&home, "BTCUSDT", "2026-10-30", "last_trade_id"),
        "2029"
    );
}

/// A run killed after writing a day's row and before deleting its files: the next run deletes
/// what is left and keeps the row it finds, never summing up a remainder.
#[test]
fn a_day_already_summed_up_is_final_and_only_its_files_are_deleted() {
    let home = Home::new();
    let trades = write_day(&home, "BTCUSDT", "2026-10-01", 1_000);
    // The row an earlier run wrote from all 30 trades, before one of its deletes.
    let mut all = trades.clone();
    let row =
        orch::lake::daily_ohlcv::DailyOhlcv::of("BTCUSDT", "2026-10-01", &mut all).expect("row");
    let key =
        orch::lake::daily_ohlcv::file_key("raw/binance_trades_daily", "BTCUSDT", "2026-10-01");
    let path = home.file(&format!("data/lake/{key}"));
    std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
    std::fs::write(&path, row.encode().expect("encode")).expect("write");
    let old = "data/lake/raw/binance_trades/symbol=BTCUSDT/date=2026-10-01";
    let first = parquet_names(&home, old).remove(0);
    std::fs::remove_file(home.file(&format!("{old}/{first}"))).expect("one delete done");

    home.write_dag("retention", &retention_dag(false));
    let run = run_retention(&home);
    assert_eq!(run["state"], "success");
    assert!(parquet_names(&home, old).is_empty());
    assert_eq!(
        daily_value(&home, "BTCUSDT", "2026-10-01", "trades"),
        "30",
        "the row from all 30 trades, not the 20 left"
    );
}

#[test]
fn retention_refuses_to_keep_no_day() {
    let home = Home::new();
    home.write_dag(
        "retention",
        "tasks:\n  - id: retention\n    kind: lake.retention\n    with: { source: raw/binance_trades, keep_days: 0 }\n",
    );
    let out = home.orch(&["dags", "validate"]);
    assert!(!out.status.success());
    let message = text(&out.stderr) + &text(&out.stdout);
    assert!(
        message.contains("retention.yaml") && message.contains("keep_days"),
        "{message}"
    );
}

fn query(home: &Home, args: &[&str]) -> std::process::Output {
    let mut all = vec!["query"];
    all.extend_from_slice(args);
    home.orch(&all)
}

/// `orch query` reads tables by name; a filter on the date partition never opens the files of
/// other days, which a damaged file of another day proves.
#[test]
fn orch_query_answers_sql_by_table_name_and_prunes_partitions() {
    let home = Home::new();
    write_day(&home, "BTCUSDT", "2026-11-01", 1_000);
    write_day(&home, "ETHUSDT", "2026-11-01", 5_000);
    write_day(&home, "BTCUSDT", "2026-11-02", 2_000);
    let other_day = "data/lake/raw/binance_trades/symbol=BTCUSDT/date=2026-11-02";
    let damaged = parquet_names(&home, other_day).remove(0);
    std::fs::write(home.file(&format!("{other_day}/{damaged}")), b"not parquet").expect("damage");

    let sql = "SELECT symbol, count(*) AS trades, sum(qty) AS volume, max(price) AS high \
               FROM binance_trades WHERE date = '2026-11-01' GROUP BY symbol ORDER BY symbol";
    let csv = query(&home, &[sql, "--format", "csv"]);
    assert!(csv.status.success(), "{}", text(&csv.stderr));
    assert_eq!(
        text(&csv.stdout),
        "symbol,trades,volume,high\nBTCUSDT,30,3.00000000,100.29000000\nETHUSDT,30,3.00000000,100.29000000\n"
    );
    let json = query(&home, &[sql, "--format", "json"]);
    let first: serde_json::Value =
        serde_json::from_str(text(&json.stdout).lines().next().expect("a row")).expect("json");
    assert_eq!(
        first,
        serde_json::json!({"symbol": "BTCUSDT", "trades": 30, "volume": "3.00000000", "high": "100.29000000"})
    );
    let table = query(&home, &[sql]);
    let shown = text(&table.stdout);
    assert!(
        shown.contains("BTCUSDT | 30") && shown.ends_with("(2 rows)\n"),
        "{shown}"
    );

    let out_file = home.file("answer.parquet");
    let parquet = query(
        &home,
        &[
            sql,
            "--format",
            "parquet",
            "--output",
            out_file.to_str().expect("path"),
        ],
    );
    assert!(parquet.status.success(), "{}", text(&parquet.stderr));
    let frame = raw_trades::read_frame(bytes::Bytes::from(std::fs::read(&out_file).expect("file")))
        .expect("parquet answer");
    assert_eq!(frame.height(), 2);

    // Without the filter the damaged day is read, and the error says so.
    let all = query(&home, &["SELECT count(*) FROM binance_trades"]);
    assert!(!all.status.success());
    assert!(
        text(&all.stderr).contains("query failed"),
        "{}",
        text(&all.stderr)
    );

    let unknown = query(&home, &["SELECT * FROM trades_btcusdt"]);
    assert!(!unknown.status.success());
    let message = text(&unknown.stderr);
    assert!(
        message.contains("trades_btcusdt") && message.contains("binance_trades"),
        "{message}"
    );
}

/// A curated day is read through its manifest: a part left over from a replaced day (the
/// moment between a switch and its deletes, or a crash in it) is not counted.
#[test]
fn orch_query_reads_a_curated_day_through_its_manifest() {
    use polars::prelude::*;
    let home = Home::new();
    let lake = orch::lake::Lake::open(&orch::lake::Lake::default_url(home.path())).expect("lake");
    let dir = "curated/fact_trades/year=2026/month=11/day=01/";
    let part = |ids: &[i64]| {
        let mut frame = df!("trade_id" => ids).expect("frame");
        orch::lake::daily_trades::write_parquet(&mut frame).expect("parquet")
    };
    crate::support::block_on(async {
        orch::lake::daily_trades::replace_parts(&lake, dir, vec![part(&[1, 2, 3])])
            .await
            .expect("day");
        // A part the manifest does not name.
        lake.put(
            &format!("{dir}part-stale-00000.parquet"),
            part(&[1, 2, 3, 4, 5]),
        )
        .await
        .expect("stale part");
    });
    let out = query(
        &home,
        &[
            "SELECT count(*) AS n, max(day) AS day FROM fact_trades WHERE year = 2026",
            "--format",
            "csv",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "n,day\n3,1\n");
}

/// Writes `files` raw files of `per_file` trades of BTCUSDT on 2026-11-01 into the home's
/// lake, ids from `first` on; returns the next id.
fn write_small_files(home: &Home, first: i64, files: i64, per_file: i64) -> i64 {
    let dir = home.file("data/lake/raw/binance_trades/symbol=BTCUSDT/date=2026-11-01");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let midnight = 1_793_491_200_000; // 2026-11-01T00:00:00Z
    for file in 0..files {
        let trades: Vec<Trade> = (0..per_file)
            .map(|i| {
                let id = first + file * per_file + i;
                Trade::new(
                    id,
                    format!("{}.{:02}", 60_000 + id % 997, id % 100)
                        .parse()
                        .expect("price"),
                    format!("0.{:03}", 1 + id % 999).parse().expect("qty"),
                    midnight + id * 10,
                    id % 3 == 0,
                    true,
                )
                .expect("trade")
            })
            .collect();
        let key = raw_trades::file_key(
            "raw/binance_trades",
            "BTCUSDT",
            "2026-11-01",
            trades[0].id,
            trades[trades.len() - 1].id,
        );
        let name = key.rsplit('/').next().expect("name");
        std::fs::write(dir.join(name), raw_trades::encode(&trades).expect("encode"))
            .expect("write");
    }
    first + files * per_file
}

/// Row count, distinct ids, and exact sums of the raw trades, as `orch query` answers.
const CHECKSUM: &str = "SELECT count(*) AS trades, count(DISTINCT trade_id) AS ids, \
    sum(trade_id) AS id_sum, sum(price) AS prices, sum(qty) AS volume, sum(quote_qty) AS quote \
    FROM binance_trades";

fn checksum(home: &Home) -> String {
    let out = query(home, &[CHECKSUM, "--format", "csv"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// Rows, distinct ids and the sum of ids in the warehouse table of BTCUSDT.
fn warehouse_ids(home: &Home) -> (i64, i64, i64) {
    use sqlx::Connection;
    let url = format!("sqlite://{}", home.file("data/warehouse.db").display());
    block_on(async {
        let mut conn = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("warehouse");
        sqlx::query_as(
            "SELECT count(*), count(DISTINCT trade_id), sum(trade_id) FROM trades_btcusdt",
        )
        .fetch_one(&mut conn)
        .await
        .expect("count")
    })
}

const LOADER: &str = "tasks:\n  - id: load\n    kind: warehouse.load_parquet\n    with: { source: raw/binance_trades, table: \"trades_{{ symbol | lower }}\" }\n";

fn compact_dag(grace: &str) -> String {
    format!(
        "tasks:\n  - id: compact\n    kind: lake.compact\n    with: {{ source: raw/binance_trades, target_mb: 0.2, grace: {grace} }}\n"
    )
}

fn run_ok(home: &Home, dag: &str) -> serde_json::Value {
    let out = home.orch(&["run", dag]);
    assert!(out.status.success(), "{dag}: {}", text(&out.stderr));
    home.run_json(&run_id_of(&out))
}

/// 10,000 small files of one day become files near the target size while a loader and
/// `orch query` read the partition: every query sees the same rows and sums, the warehouse
/// ends with every id once (half of them loaded before the merge, from the small files), and
/// the merged-away files go only after their grace.
#[test]
fn compaction_merges_a_day_of_small_files_while_a_loader_and_queries_read() {
    let home = Home::new();
    home.write_dag("load", LOADER);
    home.write_dag("compact", &compact_dag("10m"));
    let day = "data/lake/raw/binance_trades/symbol=BTCUSDT/date=2026-11-01";
    // Half the day is fetched and loaded, then the other half is fetched.
    let next = write_small_files(&home, 1, 5_000, 5);
    run_ok(&home, "load");
    let last = write_small_files(&home, next, 5_000, 5) - 1;
    let before = checksum(&home);
    assert!(before.contains("\n50000,50000,1250025000,"), "{before}");

    let mut compaction = home.command(&["run", "compact"]).spawn().expect("compact");
    let mut loader = home.command(&["run", "load"]).spawn().expect("load");
    let mut queries = 0;
    while compaction.try_wait().expect("wait").is_none() {
        assert_eq!(checksum(&home), before, "a query while compacting");
        queries += 1;
    }
    assert!(compaction.wait().expect("compact").success());
    assert!(loader.wait().expect("load").success());
    assert!(queries > 0, "no query ran while the compaction did");
    assert_eq!(checksum(&home), before);

    // Every small file is merged into files near 200 kB (the last of the day may be smaller),
    // and the small files stay for their grace.
    let names = parquet_names(&home, day);
    let merged: Vec<(i64, i64, u64)> = names
        .iter()
        .filter_map(|name| {
            let (first, end) = raw_trades::id_range(name)?;
            let size = std::fs::metadata(home.file(&format!("{day}/{name}")))
                .expect("size")
                .len();
            (end - first >= 5).then_some((first, end, size))
        })
        .collect();
    assert!(merged.len() >= 3, "{merged:?}");
    assert_eq!(merged[0].0, 1);
    assert_eq!(merged[merged.len() - 1].1, last);
    for pair in merged.windows(2) {
        assert_eq!(pair[0].1 + 1, pair[1].0, "merged files are consecutive");
    }
    for (_, _, size) in &merged[..merged.len() - 1] {
        assert!(
            (100_000..=300_000).contains(size),
            "a merged file of {size} bytes, for a target of 200 kB: {merged:?}"
        );
    }
    assert_eq!(names.len(), 10_000 + merged.len());

    // The loader that ran meanwhile and one after it leave every id once.
    run_ok(&home, "load");
    let total: i64 = (1..=last).sum();
    assert_eq!(warehouse_ids(&home), (last, last, total));

    // Past their grace, the merged-away files are deleted; nothing else changes.
    home.write_dag("compact", &compact_dag("0s"));
    let run = run_ok(&home, "compact");
    assert_eq!(attempts(&run, "compact")[0]["rows"].as_i64(), Some(0));
    assert_eq!(parquet_names(&home, day).len(), merged.len());
    assert_eq!(checksum(&home), before);
    run_ok(&home, "load");
    assert_eq!(warehouse_ids(&home), (last, last, total));
}

/// A source above the `symbol=` folders (here the lake's `raw`) compacts each partition in
/// place: the merged file lies beside its parts, which then count as merged away.
#[test]
fn compaction_writes_beside_the_parts_whatever_the_sources_depth() {
    let home = Home::new();
    write_small_files(&home, 1, 3, 5);
    let before = checksum(&home);
    home.write_dag(
        "compact",
        "tasks:\n  - id: compact\n    kind: lake.compact\n    with: { source: raw, grace: 0s }\n",
    );
    let run = run_ok(&home, "compact");
    assert_eq!(attempts(&run, "compact")[0]["rows"].as_i64(), Some(15));
    assert_eq!(
        parquet_names(
            &home,
            "data/lake/raw/binance_trades/symbol=BTCUSDT/date=2026-11-01"
        ),
        vec!["00000000000000000001-00000000000000000015.parquet"]
    );
    assert_eq!(checksum(&home), before);
}
