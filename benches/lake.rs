//! Lake benchmark: `cargo bench --bench lake`.
//!
//! A year of raw trades in a local lake (365 days × 4 symbols, one file of [`TRADES_PER_FILE`]
//! trades per symbol and day, as the batch fetch lays them out), then `orch query` as a user
//! runs it, a new process each time:
//! - one symbol's day: the filter on `symbol` and `date` prunes the other 1,459 files;
//! - one symbol's year, and the whole lake, for comparison;
//!
//! and `lake.retention` replacing the oldest 90 days of every symbol by daily rows; then
//! `lake.compact` merging a day of [`SMALL_FILES`] small files (one per fetch) into 64 MB
//! files, with `orch query` of that day before and after.
//! Prints a Markdown table of medians of [`REPEATS`] runs for docs/benchmarks.md.

use std::process::Command;
use std::time::Instant;

use orch::exchange::Trade;
use orch::lake::raw_trades;

const BIN: &str = env!("CARGO_BIN_EXE_orch");
const SYMBOLS: [&str; 4] = ["BTCUSDT", "AAVEUSDT", "STXUSDT", "ARBUSDT"];
const DAYS: i64 = 365;
const TRADES_PER_FILE: i64 = 5_000;
const REPEATS: usize = 5;
/// Files of one symbol's day before compaction: a fetch every 8.6 s for a day.
const SMALL_FILES: i64 = 10_000;
const TRADES_PER_SMALL_FILE: i64 = 300;
/// 2026-01-01T00:00:00Z in ms.
const YEAR_START: i64 = 1_767_225_600_000;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path();
    std::fs::create_dir_all(home.join("dags")).expect("dags");
    let started = Instant::now();
    let mut bytes = 0;
    for (s, symbol) in SYMBOLS.iter().enumerate() {
        for day in 0..DAYS {
            let first_id = (s as i64) * 1_000_000_000 + day * TRADES_PER_FILE;
            let midnight = YEAR_START + day * 86_400_000;
            let trades: Vec<Trade> = (0..TRADES_PER_FILE)
                .map(|i| {
                    Trade::new(
                        first_id + i,
                        orch::decimal::Decimal::from_units(
                            100_000_000_000 + i128::from(i % 977) * 1_000_000,
                        )
                        .expect("price"),
                        orch::decimal::Decimal::from_units(1_000_000 + i128::from(i % 13) * 100)
                            .expect("qty"),
                        midnight + i * (86_400_000 / TRADES_PER_FILE),
                        i % 2 == 0,
                        true,
                    )
                    .expect("trade")
                })
                .collect();
            let date = raw_trades::utc_date(midnight);
            let key = raw_trades::file_key(
                "raw/binance_trades",
                symbol,
                &date,
                first_id,
                first_id + TRADES_PER_FILE - 1,
            );
            let path = home.join("data/lake").join(&key);
            std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
            let encoded = raw_trades::encode(&trades).expect("encode");
            bytes += encoded.len();
            std::fs::write(&path, encoded).expect("write");
        }
    }
    let files = SYMBOLS.len() as i64 * DAYS;
    eprintln!(
        "lake of {files} files, {} trades, {:.0} MB written in {:?}",
        files * TRADES_PER_FILE,
        bytes as f64 / 1e6,
        started.elapsed()
    );

    let queries = [
        (
            "one symbol's day (`WHERE symbol = 'BTCUSDT' AND date = '2026-06-01'`)",
            "SELECT count(*) AS trades, sum(qty) AS volume, min(price) AS low, max(price) AS high \
             FROM binance_trades WHERE symbol = 'BTCUSDT' AND date = '2026-06-01'",
            TRADES_PER_FILE,
        ),
        (
            "one symbol's year (`WHERE symbol = 'BTCUSDT'`)",
            "SELECT count(*) AS trades, sum(qty) AS volume, min(price) AS low, max(price) AS high \
             FROM binance_trades WHERE symbol = 'BTCUSDT'",
            TRADES_PER_FILE * DAYS,
        ),
        (
            "the whole lake",
            "SELECT count(*) AS trades, sum(qty) AS volume, min(price) AS low, max(price) AS high \
             FROM binance_trades",
            TRADES_PER_FILE * DAYS * SYMBOLS.len() as i64,
        ),
    ];
    println!(
        "| `orch query` over {files} files ({} trades), a new process each time | median of {REPEATS} |",
        files * TRADES_PER_FILE
    );
    println!("|---|---|");
    for (what, sql, expected) in queries {
        println!(
            "| {what} | {:.0} ms |",
            median_query_ms(home, sql, expected)
        );
    }

    // Retention: the first 90 days of every symbol become daily rows.
    std::fs::write(
        home.join("dags/retention.yaml"),
        "tasks:\n  - id: retention\n    kind: lake.retention\n    with: { source: raw/binance_trades, keep_days: 274 }\n",
    )
    .expect("dag");
    let (elapsed, _) = timed_orch(home, &["run", "retention", "--logical-date", "2026-12-31"]);
    let replaced = SYMBOLS.len() as i64 * 90;
    println!(
        "| `lake.retention`: {replaced} symbol-days ({} trades) replaced by daily rows | {elapsed:.1} s, {:.0} trades/s |",
        replaced * TRADES_PER_FILE,
        (replaced * TRADES_PER_FILE) as f64 / elapsed
    );
    compaction();
}

/// Seconds an `orch` command took in `home`, which must succeed, and its standard output.
fn timed_orch(home: &std::path::Path, args: &[&str]) -> (f64, String) {
    let t = Instant::now();
    let out = Command::new(BIN)
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .expect("orch");
    let elapsed = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (elapsed, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Median milliseconds of `REPEATS` runs of `orch query` answering `expected` rows counted.
fn median_query_ms(home: &std::path::Path, sql: &str, expected: i64) -> f64 {
    let mut times: Vec<f64> = (0..REPEATS)
        .map(|_| {
            let t = Instant::now();
            let out = Command::new(BIN)
                .arg("--home")
                .arg(home)
                .args(["query", sql, "--format", "csv"])
                .output()
                .expect("orch query");
            let elapsed = t.elapsed().as_secs_f64() * 1000.0;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let answer = String::from_utf8_lossy(&out.stdout).to_string();
            let count = answer
                .lines()
                .nth(1)
                .and_then(|row| row.split(',').next())
                .and_then(|n| n.parse::<i64>().ok());
            assert_eq!(count, Some(expected), "{answer}");
            elapsed
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[REPEATS / 2]
}

/// A day of `SMALL_FILES` files of one symbol, compacted into 64 MB files by `orch run`.
fn compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path();
    std::fs::create_dir_all(home.join("dags")).expect("dags");
    let day_dir = home.join("data/lake/raw/binance_trades/symbol=BTCUSDT/date=2026-06-01");
    std::fs::create_dir_all(&day_dir).expect("mkdir");
    let midnight = YEAR_START + 151 * 86_400_000;
    let mut bytes_in = 0;
    for file in 0..SMALL_FILES {
        let first_id = 5_000_000_000 + file * TRADES_PER_SMALL_FILE;
        let trades: Vec<Trade> = (0..TRADES_PER_SMALL_FILE)
            .map(|i| {
                let n = file * TRADES_PER_SMALL_FILE + i;
                Trade::new(
                    first_id + i,
                    orch::decimal::Decimal::from_units(
                        6_000_000_000_000 + i128::from(n % 100_003) * 1_000_000,
                    )
                    .expect("price"),
                    orch::decimal::Decimal::from_units(100_000 + i128::from(n % 9_973) * 100)
                        .expect("qty"),
                    midnight + n * 86_400_000 / (SMALL_FILES * TRADES_PER_SMALL_FILE),
                    n % 2 == 0,
                    true,
                )
                .expect("trade")
            })
            .collect();
        let key = raw_trades::file_key(
            "raw/binance_trades",
            "BTCUSDT",
            "2026-06-01",
            first_id,
            first_id + TRADES_PER_SMALL_FILE - 1,
        );
        let encoded = raw_trades::encode(&trades).expect("encode");
        bytes_in += encoded.len();
        std::fs::write(day_dir.join(key.rsplit('/').next().expect("name")), encoded)
            .expect("write");
    }
    let trades = SMALL_FILES * TRADES_PER_SMALL_FILE;
    let day_sql = "SELECT count(*) AS trades, sum(qty) AS volume, min(price) AS low, max(price) AS high \
                   FROM binance_trades WHERE symbol = 'BTCUSDT' AND date = '2026-06-01'";
    let query_before = median_query_ms(home, day_sql, trades);

    std::fs::write(
        home.join("dags/compact.yaml"),
        "tasks:\n  - id: compact\n    kind: lake.compact\n    with: { source: raw/binance_trades, grace: 0s }\n",
    )
    .expect("dag");
    let (elapsed, stdout) = timed_orch(home, &["run", "compact"]);
    let run_id = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("run ")?
                .split_whitespace()
                .next()
                .map(str::to_string)
        })
        .expect("run id");
    let shown = Command::new(BIN)
        .arg("--home")
        .arg(home)
        .args(["runs", "show", &run_id, "--json"])
        .output()
        .expect("runs show");
    let run: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    let peak_mb = run["tasks"][0]["attempts"][0]["peak_rss_bytes"]
        .as_f64()
        .expect("peak memory")
        / 1e6;
    let mut sizes: Vec<u64> = std::fs::read_dir(&day_dir)
        .expect("day")
        .flatten()
        .map(|e| e.metadata().expect("size").len())
        .collect();
    sizes.sort_unstable();
    let query_after = median_query_ms(home, day_sql, trades);
    println!();
    println!(
        "| `lake.compact` of one symbol's day: {SMALL_FILES} files of {TRADES_PER_SMALL_FILE} trades ({trades} trades) | |"
    );
    println!("|---|---|");
    println!(
        "| files in → out | {SMALL_FILES} files, {:.1} MB → {} files of {} MB |",
        bytes_in as f64 / 1e6,
        sizes.len(),
        sizes
            .iter()
            .map(|s| format!("{:.1}", *s as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| `orch run compact` | {elapsed:.1} s: {:.1} M trades/s, {:.0} files/s |",
        trades as f64 / elapsed / 1e6,
        SMALL_FILES as f64 / elapsed
    );
    println!("| peak memory of the attempt's process | {peak_mb:.0} MB |");
    println!(
        "| `orch query` of that day (median of {REPEATS}) | {query_before:.0} ms before, {query_after:.0} ms after |"
    );
}
