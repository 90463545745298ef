//! KuCoin's live trades against the simulator: every trade once through dropped connections,
//! expired tokens, throttled and in-band failed REST answers and a `kill -9`; an outage longer
//! than KuCoin's 100-trade history reported as a gap, with its bounds.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::stream::{assert_every_trade_once_of, stream_report, wait_until_staged_of};
use crate::support::{Home, Server, Simulator};

/// KuCoin's sequences are the simulator's ids times this (they skip numbers, as KuCoin's).
const SEQUENCE_STEP: i64 = 3;
/// The books behind KuCoin's symbols.
const BOOKS: [(&str, &str); 2] = [("BTCUSDT", "BTC-USDT"), ("ETHUSDT", "ETH-USDT")];

fn stream_yaml() -> String {
    "id: kucoin\nstream:\n  source: { kind: kucoin.trades, symbols: [BTC-USDT, ETH-USDT] }\n  sink: { table: raw_trades }\n  batch: { max_rows: 1000, max_latency: 200ms }\n  lake: { every: 1s }\n".to_string()
}

/// A simulator whose KuCoin tokens ask for a ping every second.
fn simulator(rate: u32) -> Simulator {
    Simulator::with_args(
        "BTCUSDT,ETHUSDT",
        rate,
        &["--ping-every", "1s", "--pong-within", "2s"],
    )
}

fn stream_command(home: &Home, sim: &Simulator, staging_url: &str) -> Command {
    let mut cmd = home.command(&["stream", "run", "kucoin"]);
    cmd.env("KUCOIN_API_URL", &sim.url)
        .env("ORCH_STAGING_URL", staging_url);
    cmd
}

/// The sequence of each symbol's latest simulated trade.
fn last_sequences(sim: &Simulator) -> BTreeMap<String, i64> {
    BOOKS
        .iter()
        .map(|(book, symbol)| (symbol.to_string(), sim.last_id(book) * SEQUENCE_STEP))
        .collect()
}

/// Per symbol of the stream's lake copy: trades, distinct ids, last id.
fn lake_copy(home: &Home) -> BTreeMap<String, (i64, i64, i64)> {
    let out = home.orch(&[
        "query",
        "SELECT symbol, COUNT(*) AS trades, COUNT(DISTINCT trade_id) AS ids, MAX(trade_id) AS last \
         FROM kucoin_stream_trades GROUP BY symbol",
        "--format",
        "csv",
    ]);
    if !out.status.success() {
        // No file yet: no table.
        return BTreeMap::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let number = |i: usize| fields.get(i)?.parse::<i64>().ok();
            Some((
                fields.first()?.to_string(),
                (number(1)?, number(2)?, number(3)?),
            ))
        })
        .collect()
}

fn wait_until_staged(url: &str, targets: &BTreeMap<String, i64>) -> BTreeMap<String, Vec<i64>> {
    wait_until_staged_of(url, "kucoin", targets)
}

fn assert_every_trade_once(url: &str, targets: &BTreeMap<String, i64>) {
    assert_every_trade_once_of(url, "kucoin", targets, SEQUENCE_STEP);
}

#[test]
fn every_kucoin_trade_lands_once_through_drops_expired_tokens_throttling_and_a_kill_9() {
    let home = Home::new();
    home.write_dag("kucoin", &stream_yaml());
    let url = format!("sqlite://{}", home.file("data/staging.db").display());
    // Ten trades a second: an outage of a few seconds stays inside KuCoin's last 100.
    let sim = simulator(10);
    let mut stream = Server::spawn(stream_command(&home, &sim, &url), "stream connected");
    wait_until_staged(&url, &last_sequences(&sim));
    // The stream pings as the token asked.
    sim.wait_for_streams("client pings", Duration::from_secs(10), |s| {
        s["pongs"].as_u64() >= Some(2)
    });

    // Frames the server drops (as KuCoin does to a slow reader) show in the check against
    // REST, and are taken then.
    sim.post(
        "/_sim/faults",
        &json!({"stream": [{"kind": "skip_ids", "symbol": "BTCUSDT", "count": 5}]}),
    );
    let found = stream.wait_for_log("the socket missed trades", Duration::from_secs(20));
    assert!(
        found.contains("missed=5") && found.contains("BTC-USDT"),
        "{found}"
    );
    wait_until_staged(&url, &last_sequences(&sim));

    // A cut connection: the reconnect bridges the outage from REST.
    sim.post("/_sim/faults", &json!({"stream": [{"kind": "drop"}]}));
    stream.wait_for_log("stream reconnecting", Duration::from_secs(10));
    stream.wait_for_log("stream connected", Duration::from_secs(10));
    wait_until_staged(&url, &last_sequences(&sim));

    // Expired tokens cut the connections; the next one takes a new token, through a 429, an
    // in-band failure at HTTP 200 and Cloudflare's 403.
    sim.post(
        "/_sim/faults",
        &json!({
            "rest": [{"status": 429}, {"status": 200, "code": 500000, "msg": "Internal error"}, {"status": 403}],
            "stream": [{"kind": "expire_tokens"}],
        }),
    );
    stream.wait_for_log_all(&["bullet-public", "429000"], Duration::from_secs(10));
    stream.wait_for_log_all(&["bullet-public", "code 500000"], Duration::from_secs(10));
    stream.wait_for_log_all(&["bullet-public", "Cloudflare"], Duration::from_secs(10));
    stream.wait_for_log("stream connected", Duration::from_secs(20));
    wait_until_staged(&url, &last_sequences(&sim));
    let tokens = sim.get("/_sim/stats")["streams"]["tokens_issued"]
        .as_u64()
        .expect("tokens issued");
    assert!(tokens >= 3, "a new token per connection: {tokens}");

    // kill -9 loses at most the uncommitted batch, and the restart bridges it.
    stream.kill9();
    let mut stream = Server::spawn(stream_command(&home, &sim, &url), "stream connected");
    let targets = last_sequences(&sim);
    assert_every_trade_once(&url, &targets);

    // The stream's copy in the lake, by its default table name: once checked against REST,
    // what staging holds, each trade once, the frames found missing included.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let lake = lake_copy(&home);
        let staged = wait_until_staged(&url, &targets);
        let caught_up = targets.iter().all(|(symbol, target)| {
            lake.get(symbol)
                .is_some_and(|&(_, _, last)| last >= *target)
        });
        if caught_up {
            for (symbol, &(trades, ids, last)) in &lake {
                let held = staged[symbol].iter().filter(|id| **id <= last).count() as i64;
                assert_eq!((trades, ids), (held, held), "{symbol}: the lake's copy");
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lake copy never reached {targets:?}: {lake:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    stream.signal("TERM");
    assert!(stream.wait_exit(Duration::from_secs(20)));

    // The shipped hourly DAG loads the copy into the warehouse, each trade once.
    home.write_dag(
        "kucoin_trades_hourly",
        include_str!("../../dags/kucoin_trades_hourly.yaml"),
    );
    let lake = lake_copy(&home);
    let out = home.orch(&["run", "kucoin_trades_hourly"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let warehouse = format!("sqlite://{}", home.file("data/warehouse.db").display());
    let loaded = crate::support::warehouse_ids(
        &warehouse,
        &["kucoin_trades_btc_usdt", "kucoin_trades_eth_usdt"],
    );
    for (symbol, &(trades, _, _)) in &lake {
        let table = format!("kucoin_trades_{}", symbol.to_lowercase().replace('-', "_"));
        let ids = &loaded[&table];
        let distinct: std::collections::BTreeSet<&i64> = ids.iter().collect();
        assert_eq!(
            (ids.len() as i64, distinct.len() as i64),
            (trades, trades),
            "{table}"
        );
    }
    let report = stream_report(&home, "kucoin");
    assert_eq!(report["gaps_unbridged"], 0, "{report:#}");
    assert_eq!(report["malformed_frames"], 0, "{report:#}");
}

#[test]
fn an_outage_longer_than_kucoins_history_is_reported_with_its_bounds() {
    let home = Home::new();
    home.write_dag("kucoin", &stream_yaml());
    let url = format!("sqlite://{}", home.file("data/staging.db").display());
    let sim = simulator(0);
    let mut stream = Server::spawn(stream_command(&home, &sim, &url), "stream connected");
    sim.wait_for_streams("the subscription", Duration::from_secs(10), |s| {
        s["connections_open"] == 1
    });
    for (book, _) in BOOKS {
        sim.add_trades(book, 10);
    }
    wait_until_staged(&url, &last_sequences(&sim));
    stream.signal("TERM");
    assert!(stream.wait_exit(Duration::from_secs(20)));

    // While it is down, BTC trades 250 times (KuCoin keeps 100), ETH 60 times.
    let (btc_first, btc_last) = sim.add_trades("BTCUSDT", 250);
    sim.add_trades("ETHUSDT", 60);
    let mut stream = Server::spawn(stream_command(&home, &sim, &url), "stream connected");
    let warning = stream.wait_for_log(
        "no longer reaches back to the last trade kept",
        Duration::from_secs(10),
    );
    assert!(warning.contains("BTC-USDT"), "{warning}");
    let first_available = (btc_last - 99) * SEQUENCE_STEP;
    assert!(
        warning.contains(&format!("first_available={first_available}")),
        "{warning}"
    );
    let targets = last_sequences(&sim);
    let staged = wait_until_staged(&url, &targets);
    stream.signal("TERM");
    assert!(stream.wait_exit(Duration::from_secs(20)));

    // BTC: the 150 oldest of the outage are gone for good; the rest is there once.
    let btc = &staged["BTC-USDT"];
    let lost: Vec<i64> = (btc_first..btc_last - 99)
        .map(|id| id * SEQUENCE_STEP)
        .collect();
    assert!(lost.iter().all(|s| btc.binary_search(s).is_err()));
    let bridged: Vec<i64> = (btc_last - 99..=btc_last)
        .map(|id| id * SEQUENCE_STEP)
        .collect();
    assert!(bridged.iter().all(|s| btc.binary_search(s).is_ok()));
    assert_eq!(btc.len(), 10 + 100, "{btc:?}");
    // ETH: the whole outage was within reach.
    assert_every_trade_once(
        &url,
        &BTreeMap::from([("ETH-USDT".to_string(), targets["ETH-USDT"])]),
    );
    let report = stream_report(&home, "kucoin");
    assert_eq!(report["gaps_unbridged"], 1, "{report:#}");
}
