//! Exact trade values where price × quantity needs more than 8 fractional digits (ETHBTC: tick
//! 0.00001, step 0.0001): the websocket stream, its REST gap backfill, the REST fetch, the lake
//! and the warehouse all hold price × qty exactly, and a trade has the same value whichever
//! path brought it.

use std::collections::BTreeMap;
use std::time::Duration;

use orch::decimal::{Decimal, Product};
use orch::lake::raw_trades;

use crate::support::{Home, Server, Simulator, block_on, parquet_files, text};

/// `trade_id, price, qty, quote_qty` of every row of `table`, decimals read back exactly.
fn rows(url: &str, table: &str) -> BTreeMap<i64, (Decimal, Decimal, Product)> {
    use sqlx::{Connection, Row};
    block_on(async {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(url).await.expect("open");
        let sql = format!("SELECT trade_id, price, qty, quote_qty FROM {table}");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut conn)
            .await
            .expect("query")
            .iter()
            .map(|row| {
                let text = |i: usize| row.get::<String, _>(i);
                (
                    row.get::<i64, _>(0),
                    (
                        text(1).parse().expect("price"),
                        text(2).parse().expect("qty"),
                        text(3).parse().expect("quote_qty"),
                    ),
                )
            })
            .collect()
    })
}

/// Every trade of the local lake's raw ETHBTC files.
fn lake_rows(home: &Home) -> BTreeMap<i64, (Decimal, Decimal, Product)> {
    let mut out = BTreeMap::new();
    for (_, bytes) in parquet_files(&home.file("data/lake/raw/binance_trades/symbol=ETHBTC")) {
        for t in raw_trades::decode(bytes).expect("decode") {
            out.insert(t.id, (t.price, t.qty, t.quote_qty));
        }
    }
    out
}

/// Every row's quote quantity is its price times its quantity, computed here in plain
/// integers; returns how many needed more than 8 fractional digits.
fn assert_exact(what: &str, rows: &BTreeMap<i64, (Decimal, Decimal, Product)>) -> usize {
    assert!(!rows.is_empty(), "{what}: no rows");
    let mut fine = 0;
    for (id, (price, qty, quote)) in rows {
        assert_eq!(
            quote.units(),
            price.units() * qty.units(),
            "{what}: trade {id}: {price} × {qty} is not {quote}"
        );
        if quote.units() % 100_000_000 != 0 {
            fine += 1;
        }
    }
    fine
}

#[test]
fn ethbtc_values_are_exact_and_the_same_on_every_path() {
    let home = Home::new();
    let sim = Simulator::start("ETHBTC");
    let staging = format!("sqlite://{}", home.file("data/staging.db").display());
    let warehouse = format!("sqlite://{}", home.file("data/warehouse.db").display());

    // The websocket stream, with ids held back so that part comes through the REST backfill.
    home.write_dag(
        "trades_stream",
        "stream:\n  source: { kind: binance.trades, symbols: [ETHBTC] }\n  sink: { table: raw_trades }\n  batch: { max_rows: 100, max_latency: 100ms }\n",
    );
    let mut stream_cmd = home.command(&["stream", "run", "trades_stream"]);
    stream_cmd
        .env("BINANCE_API_URL", &sim.url)
        .env("BINANCE_WS_URL", sim.ws_url())
        .env("ORCH_STAGING_URL", &staging);
    let mut stream = Server::spawn(stream_cmd, "stream connected");
    let wait_staged = |count: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while rows(&staging, "raw_trades").len() < count {
            assert!(
                std::time::Instant::now() < deadline,
                "the stream did not stage {count} trades"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (first, _) = sim.add_trades("ETHBTC", 10);
    wait_staged(10);
    sim.post(
        "/_sim/faults",
        &serde_json::json!({"stream": [{"kind": "skip_ids", "symbol": "ETHBTC", "count": 40}]}),
    );
    let (_, last) = sim.add_trades("ETHBTC", 590);
    stream.wait_for_log("backfilled from the REST API", Duration::from_secs(20));
    wait_staged(600);
    stream.signal("TERM");
    assert!(stream.wait_exit(Duration::from_secs(20)));
    let staged = rows(&staging, "raw_trades");
    assert_eq!(
        staged.keys().copied().collect::<Vec<_>>(),
        (first..=last).collect::<Vec<_>>()
    );

    // The REST fetch of the same trades into the lake, and on into the warehouse.
    home.write_dag(
        "trades",
        &format!(
            "defaults: {{ retries: 0 }}\ntasks:\n  - id: fetch\n    kind: binance.historical_trades\n    with: {{ symbols: [ETHBTC], start_from_id: {first}, base_url: \"{}\" }}\n  - id: load\n    kind: warehouse.load_parquet\n    depends_on: [fetch]\n",
            sim.url
        ),
    );
    let out = home
        .command(&["run", "trades"])
        .env("ORCH_WAREHOUSE_URL", &warehouse)
        .output()
        .expect("orch run");
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let lake = lake_rows(&home);
    let loaded = rows(&warehouse, "trades_ethbtc");

    let fine = assert_exact("staging", &staged);
    assert!(fine > 100, "ETHBTC products need 9+ digits: {fine} did");
    assert_exact("lake", &lake);
    assert_exact("warehouse", &loaded);
    assert_eq!(
        lake, staged,
        "the stream and the REST fetch agree on every trade"
    );
    assert_eq!(loaded, lake, "the warehouse holds the lake's values");
}
