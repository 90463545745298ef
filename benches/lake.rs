//! Lake benchmark: `cargo bench --bench lake`.
//!
//! A year of raw trades in a local lake (365 days × 4 symbols, one file of [`TRADES_PER_FILE`]
//! trades per symbol and day, as the batch fetch lays them out), then `orch query` as a user
//! runs it, a new process each time:
//! - one symbol's day: the filter on `symbol` and `date` prunes the other 1,459 files;
//! - one symbol's year, and the whole lake, for comparison;
//!
//! and `lake.retention` replacing the oldest 90 days of every symbol by daily rows.
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
        println!("| {what} | {:.0} ms |", times[REPEATS / 2]);
    }

    // Retention: the first 90 days of every symbol become daily rows.
    std::fs::write(
        home.join("dags/retention.yaml"),
        "tasks:\n  - id: retention\n    kind: lake.retention\n    with: { source: raw/binance_trades, keep_days: 274 }\n",
    )
    .expect("dag");
    let t = Instant::now();
    let out = Command::new(BIN)
        .arg("--home")
        .arg(home)
        .args(["run", "retention", "--logical-date", "2026-12-31"])
        .output()
        .expect("orch run");
    let elapsed = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replaced = SYMBOLS.len() as i64 * 90;
    println!(
        "| `lake.retention`: {replaced} symbol-days ({} trades) replaced by daily rows | {elapsed:.1} s, {:.0} trades/s |",
        replaced * TRADES_PER_FILE,
        (replaced * TRADES_PER_FILE) as f64 / elapsed
    );
}
