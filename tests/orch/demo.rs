//! `orch demo`, the README's first command: offline, the shipped DAGs and stream against the
//! built-in simulator.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Home, Server};

#[test]
fn the_demo_lands_trades_in_the_lake_the_warehouse_and_the_staging_table() {
    let home = Home::new();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dags");
    for entry in std::fs::read_dir(shipped).expect("shipped dags").flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(stem) = name.strip_suffix(".yaml") {
            let text = std::fs::read_to_string(entry.path()).expect("read dag");
            home.write_dag(stem, &text);
        }
    }
    let mut demo = Server::spawn(
        home.command(&["demo", "--grace", "5s"]),
        "orch serve started",
    );
    demo.wait_for_log("stream connected", Duration::from_secs(20));

    // The 5-minute DAG's latest interval runs at once, the 15-second one's within 15 s; the
    // daily ETL's too, on yesterday.
    let first_finished_run = |dag: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = home.orch(&["runs", "list", "--dag", dag, "--json"]);
            let runs: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            if let Some(run) = runs.as_array().and_then(|r| {
                r.iter()
                    .find(|run| matches!(run["state"].as_str(), Some("success" | "failed")))
            }) {
                return run.clone();
            }
            assert!(Instant::now() < deadline, "no finished {dag} run: {runs:#}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let batch_run = first_finished_run("binance_trades_5m");
    assert_eq!(batch_run["state"], "success", "{batch_run:#}");
    assert!(home.file("data/lake/raw/binance_trades").is_dir());
    assert!(home.file("data/warehouse.db").is_file());
    let mercado_bitcoin_run = first_finished_run("mercado_bitcoin_trades_15s");
    assert_eq!(
        mercado_bitcoin_run["state"], "success",
        "{mercado_bitcoin_run:#}"
    );
    assert!(
        home.file("data/lake/raw/mercado_bitcoin_trades/symbol=BTC-BRL")
            .is_dir()
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = home.orch(&["streams", "--json"]);
        let streams: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        // Binance's, Mercado Bitcoin's and KuCoin's shipped streams, from the simulator.
        let committed = |id: &str| {
            streams.as_array().is_some_and(|all| {
                all.iter().any(|s| {
                    s["stream_id"] == id && s["trades_committed"].as_u64().unwrap_or(0) > 0
                })
            })
        };
        if [
            "binance_trade_stream",
            "mercado_bitcoin_trade_stream",
            "kucoin_trade_stream",
        ]
        .iter()
        .all(|id| committed(id))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no trades streamed: {streams:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    demo.signal("TERM");
    assert!(
        demo.wait_exit(Duration::from_secs(30)),
        "the demo stops on SIGTERM"
    );
}
