//! The Mercado Bitcoin batch pipeline against the simulator's MB REST v4: every trade id
//! exactly once in the lake and the warehouse, with whole-second times shared by thousands of
//! trades, through MB's throttling, Cloudflare's block pages and `kill -9`.

use std::collections::BTreeMap;

use crate::support::{
    Home, Simulator, assert_exactly_once, attempts, ids_by_symbol, kill_run_when_logged,
    parquet_files, text, warehouse_ids,
};

/// The shipped DAG, pointed at the simulator; `extra` goes into the fetch's `with`.
fn pipeline(sim: &Simulator, symbols: &str, extra: &str) -> String {
    include_str!("../../dags/mercado_bitcoin_trades_15s.yaml")
        .replace("id: mercado_bitcoin_trades_15s", "id: trades")
        .replace(
            "defaults: { retries: 3, retry_delay: 5s, retry_backoff: exponential, timeout: 2m }",
            "defaults: { retries: 0 }",
        )
        .replace(
            "with: { symbols: [BTC-BRL, ETH-BRL] }",
            &format!(
                "with: {{ symbols: [{symbols}], base_url: \"{}/api/v4\" {extra} }}",
                sim.url
            ),
        )
}

fn lake_ids(home: &Home) -> BTreeMap<String, Vec<i64>> {
    ids_by_symbol(parquet_files(
        &home.file("data/lake/raw/mercado_bitcoin_trades"),
    ))
}

fn run(home: &Home) -> serde_json::Value {
    let out = home.orch(&["run", "trades"]);
    let run_id = text(&out.stdout)
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no run id: {}", text(&out.stderr)))
        .to_string();
    home.run_json(&run_id)
}

fn log_of(run: &serde_json::Value, task: &str) -> String {
    let attempt = &attempts(run, task)[0];
    std::fs::read_to_string(attempt["log_path"].as_str().expect("log path")).expect("log")
}

/// Two markets, each starting at its latest page of trades, then 2,500 trades each within a second or
/// two (MB's `date` is whole seconds, so thousands share one), fetched in pages by
/// `since=tid` through a 429 with MB's throttle code, Cloudflare's HTML 403 and a 503, then
/// 1,500 more: every id once in the lake and in each market's warehouse table, in one
/// attempt each run.
#[test]
fn every_trade_lands_once_through_throttling_and_cloudflare_blocks() {
    let home = Home::new();
    let sim = Simulator::start("BTCBRL,ETHBRL");
    // A first run starts each market at its most recent page of trades.
    home.write_dag("trades", &pipeline(&sim, "BTC-BRL, ETH-BRL", ""));
    assert_eq!(run(&home)["state"], "success");
    let started = lake_ids(&home);
    let (start, eth_start) = (started["BTC-BRL"][0], started["ETH-BRL"][0]);
    assert_eq!(started["BTC-BRL"].last(), Some(&sim.last_id("BTCBRL")));
    sim.add_trades("BTCBRL", 2500);
    sim.add_trades("ETHBRL", 2500);
    sim.post(
        "/_sim/faults",
        &serde_json::json!({"rest": [{"status": 429}, {"status": 403}, {"status": 503}]}),
    );

    let first = run(&home);
    assert_eq!(first["state"], "success", "{first:#}");
    assert_eq!(attempts(&first, "get_data_mercado_bitcoin").len(), 1);
    let log = log_of(&first, "get_data_mercado_bitcoin");
    assert!(log.contains("REQUEST_RATE_EXCEEDED"), "{log}");
    assert!(log.contains("Cloudflare's block page"), "{log}");
    assert!(log.contains("HTTP 503"), "{log}");

    sim.add_trades("BTCBRL", 1500);
    sim.add_trades("ETHBRL", 1500);
    let second = run(&home);
    assert_eq!(second["state"], "success", "{second:#}");

    let lake = lake_ids(&home);
    let btc_last = sim.last_id("BTCBRL");
    let eth_last = sim.last_id("ETHBRL");
    assert_exactly_once("lake BTC-BRL", &lake["BTC-BRL"], start, btc_last);
    assert_exactly_once("lake ETH-BRL", &lake["ETH-BRL"], eth_start, eth_last);
    let url = format!("sqlite://{}", home.file("data/warehouse.db").display());
    let warehouse = warehouse_ids(&url, &["mb_trades_btc_brl", "mb_trades_eth_brl"]);
    assert_exactly_once(
        "warehouse BTC-BRL",
        &warehouse["mb_trades_btc_brl"],
        start,
        btc_last,
    );
    assert_exactly_once(
        "warehouse ETH-BRL",
        &warehouse["mb_trades_eth_brl"],
        eth_start,
        eth_last,
    );

    // Whole seconds on the wire, whole seconds in the lake: no invented milliseconds.
    for (key, bytes) in parquet_files(&home.file("data/lake/raw/mercado_bitcoin_trades")) {
        let trades = orch::lake::raw_trades::decode(bytes).expect("decode");
        assert!(
            trades.iter().all(|t| t.time_ms % 1000 == 0),
            "{key} holds a time finer than MB's seconds"
        );
    }
}

/// `kill -9` once the fetch has committed a file, then a rerun: every id once.
#[test]
fn kill_9_during_the_fetch_then_rerun_leaves_every_id_once() {
    let home = Home::new();
    let sim = Simulator::start("BTCBRL");
    let start = sim.add_trades("BTCBRL", 1).0;
    home.write_dag(
        "trades",
        &pipeline(
            &sim,
            "BTC-BRL",
            &format!(", start_from_id: {start}, file_rows: 1000"),
        ),
    );
    sim.add_trades("BTCBRL", 6000);

    kill_run_when_logged(&home, "get_data_mercado_bitcoin", "committed ids");
    let held = lake_ids(&home).get("BTC-BRL").map_or(0, Vec::len);
    assert!(
        held > 0 && held < 6001,
        "the kill landed mid-fetch ({held} trades held)"
    );

    let rerun = run(&home);
    assert_eq!(rerun["state"], "success", "{rerun:#}");
    let last = sim.last_id("BTCBRL");
    assert_exactly_once("lake", &lake_ids(&home)["BTC-BRL"], start, last);
    let url = format!("sqlite://{}", home.file("data/warehouse.db").display());
    let warehouse = warehouse_ids(&url, &["mb_trades_btc_brl"]);
    assert_exactly_once("warehouse", &warehouse["mb_trades_btc_brl"], start, last);
}

/// A market MB does not have is refused with MB's own code, and not retried; a symbol in
/// Binance's spelling is refused when the file loads.
#[test]
fn an_unknown_market_fails_with_the_exchange_code_and_a_bad_spelling_at_load() {
    let home = Home::new();
    let sim = Simulator::start("BTCBRL");
    home.write_dag(
        "trades",
        &pipeline(&sim, "DOGE-BRL", "").replace(
            "defaults: { retries: 0 }",
            "defaults: { retries: 2, retry_delay: 0s }",
        ),
    );
    let failed = run(&home);
    assert_eq!(failed["state"], "failed");
    let fetches = attempts(&failed, "get_data_mercado_bitcoin");
    assert_eq!(fetches.len(), 1, "not retried: {failed:#}");
    let error = fetches[0]["error"].as_str().expect("error");
    assert!(
        error.contains("DOGE-BRL") && error.contains("INVALID_BASE_QUOTE"),
        "{error}"
    );

    home.write_dag("trades", &pipeline(&sim, "BTCBRL", ""));
    let out = home.orch(&["dags", "validate"]);
    assert!(!out.status.success());
    let message = text(&out.stderr) + &text(&out.stdout);
    assert!(
        message.contains("trades.yaml") && message.contains("BTC-BRL"),
        "{message}"
    );
}

/// The books behind the streamed markets.
const STREAMED: [(&str, &str); 2] = [("BTCBRL", "BTC-BRL"), ("ETHBRL", "ETH-BRL")];

fn stream_command(home: &Home, sim: &Simulator, staging_url: &str) -> std::process::Command {
    let mut cmd = home.command(&["stream", "run", "mb"]);
    cmd.env("MERCADO_BITCOIN_API_URL", format!("{}/api/v4", sim.url))
        .env(
            "MERCADO_BITCOIN_WS_URL",
            format!("{}/mercado_bitcoin/ws", sim.ws_url()),
        )
        .env("ORCH_STAGING_URL", staging_url);
    cmd
}

fn last_tids(sim: &Simulator) -> BTreeMap<String, i64> {
    STREAMED
        .iter()
        .map(|(book, market)| (market.to_string(), sim.last_id(book)))
        .collect()
}

#[test]
fn the_stream_keeps_every_trade_once_through_drops_lost_frames_throttling_and_a_kill_9() {
    use std::time::Duration;

    use crate::stream::{assert_every_trade_once_of, stream_report, wait_until_staged_of};
    use crate::support::Server;

    let home = Home::new();
    home.write_dag(
        "mb",
        "stream:\n  source: { kind: mercado_bitcoin.trades, symbols: [BTC-BRL, ETH-BRL] }\n  batch: { max_latency: 200ms }\n",
    );
    let url = format!("sqlite://{}", home.file("data/staging.db").display());
    // Forty trades a second per market, in whole-second times: many share one.
    let sim = Simulator::with_rate("BTCBRL,ETHBRL", 40);
    let mut stream = Server::spawn(stream_command(&home, &sim, &url), "stream connected");
    wait_until_staged_of(&url, "mercado_bitcoin", &last_tids(&sim));

    // Frames the socket never sends: MB has no sequence to tell, so the check against REST
    // `since=` finds them.
    sim.post(
        "/_sim/faults",
        &serde_json::json!({"stream": [{"kind": "skip_ids", "symbol": "BTCBRL", "count": 30}]}),
    );
    let found = stream.wait_for_log("the socket missed trades", Duration::from_secs(30));
    assert!(
        found.contains("missed=30") && found.contains("BTC-BRL"),
        "{found}"
    );
    wait_until_staged_of(&url, "mercado_bitcoin", &last_tids(&sim));

    // A cut: the reconnect catches up from REST through MB's throttle answer and Cloudflare's
    // block page.
    sim.post(
        "/_sim/faults",
        &serde_json::json!({"rest": [{"status": 429}, {"status": 403}], "stream": [{"kind": "drop"}]}),
    );
    stream.wait_for_log("Cloudflare", Duration::from_secs(20));
    wait_until_staged_of(&url, "mercado_bitcoin", &last_tids(&sim));

    // Frames lost just before a kill -9, the trades after them committed: the restarted
    // process checks what its predecessor had no time to.
    sim.post(
        "/_sim/faults",
        &serde_json::json!({"stream": [{"kind": "skip_ids", "symbol": "ETHBRL", "count": 20}]}),
    );
    sim.wait_for_streams("skipped trades", Duration::from_secs(10), |s| {
        s["trades_skipped"].as_u64() >= Some(50)
    });
    wait_until_staged_of(&url, "mercado_bitcoin", &last_tids(&sim));
    stream.kill9();
    let mut stream = Server::spawn(stream_command(&home, &sim, &url), "stream connected");
    let found = stream.wait_for_log("the socket missed trades", Duration::from_secs(30));
    assert!(
        found.contains("missed=20") && found.contains("ETH-BRL"),
        "{found}"
    );
    let targets = last_tids(&sim);
    assert_every_trade_once_of(&url, "mercado_bitcoin", &targets, 1);
    stream.signal("TERM");
    assert!(stream.wait_exit(Duration::from_secs(20)));
    let report = stream_report(&home, "mb");
    assert_eq!(report["malformed_frames"], 0, "{report:#}");
}
