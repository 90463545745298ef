//! Live trade streams against the simulator: every id exactly once in the staging table
//! across disconnects, `serverShutdown`, skipped ids, garbage frames and `kill -9`.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{Home, Server, Simulator, postgres_database};

pub(crate) const SYMBOLS: &str = "BTCUSDT,AAVEUSDT,STXUSDT,ARBUSDT";
/// Trades per second per symbol the simulated market makes on its own.
pub(crate) const RATE: u32 = 40;

pub(crate) fn stream_yaml() -> String {
    format!(
        "id: trades\nstream:\n  source: {{ kind: binance.trades, symbols: [{SYMBOLS}] }}\n  sink: {{ table: raw_trades }}\n  batch: {{ max_rows: 1000, max_latency: 200ms }}\n"
    )
}

pub(crate) fn stream_command(home: &Home, sim: &Simulator, staging_url: &str) -> Command {
    let mut cmd = home.command(&["stream", "run", "trades"]);
    cmd.env("BINANCE_API_URL", &sim.url)
        .env("BINANCE_WS_URL", sim.ws_url())
        .env("ORCH_STAGING_URL", staging_url);
    cmd
}

/// Staged Binance trade ids per symbol, ascending.
fn staged_ids(url: &str) -> BTreeMap<String, Vec<i64>> {
    staged_ids_of(url, "binance")
}

/// Staged trade ids of `exchange` per symbol, ascending.
fn staged_ids_of(url: &str, exchange: &str) -> BTreeMap<String, Vec<i64>> {
    use sqlx::{Connection, Row};
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            sqlx::any::install_default_drivers();
            let mut conn = sqlx::AnyConnection::connect(url)
                .await
                .expect("open the staging store");
            let rows = sqlx::query(
                "SELECT symbol, trade_id FROM raw_trades WHERE exchange = $1 ORDER BY symbol, trade_id",
            )
            .bind(exchange)
            .fetch_all(&mut conn)
            .await
            .unwrap_or_default();
            let mut ids: BTreeMap<String, Vec<i64>> = BTreeMap::new();
            for row in rows {
                let symbol: String = row.get(0);
                ids.entry(symbol).or_default().push(row.get(1));
            }
            ids
        })
}

/// Waits until the staging store holds every symbol's trades up to at least `targets`.
pub(crate) fn wait_until_staged(url: &str, targets: &BTreeMap<String, i64>, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let staged = staged_ids(url);
        let done = targets.iter().all(|(symbol, target)| {
            staged
                .get(symbol)
                .and_then(|ids| ids.last())
                .is_some_and(|last| last >= target)
        });
        if done {
            return;
        }
        let lasts: BTreeMap<&String, Option<&i64>> =
            staged.iter().map(|(s, ids)| (s, ids.last())).collect();
        assert!(
            Instant::now() < deadline,
            "staging never reached {targets:?}; it holds up to {lasts:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn last_ids(sim: &Simulator) -> BTreeMap<String, i64> {
    SYMBOLS
        .split(',')
        .map(|s| (s.to_string(), sim.last_id(s)))
        .collect()
}

/// Every symbol's staged ids are one unbroken run that reaches `targets`.
pub(crate) fn assert_every_id_once(url: &str, targets: &BTreeMap<String, i64>) {
    let staged = staged_ids(url);
    for (symbol, target) in targets {
        let ids = &staged[symbol];
        let (first, last) = (ids[0], ids[ids.len() - 1]);
        let missing: Vec<i64> = (first..=last)
            .filter(|id| ids.binary_search(id).is_err())
            .take(10)
            .collect();
        assert!(
            missing.is_empty(),
            "{symbol}: ids missing from staging: {missing:?}"
        );
        assert_eq!(ids.len() as i64, last - first + 1, "{symbol}: duplicates");
        assert!(
            last >= *target,
            "{symbol}: staged up to {last}, expected {target}"
        );
    }
}

/// How long the fault test keeps the stream going, faults and all.
const STREAM_FOR: Duration = Duration::from_secs(30);

fn faults_then_every_id_once(staging_url: &str) {
    let home = Home::new();
    home.write_dag("trades", &stream_yaml());
    let sim = Simulator::with_rate(SYMBOLS, RATE);
    let started = Instant::now();
    let mut stream = Server::spawn(stream_command(&home, &sim, staging_url), "stream connected");
    wait_until_staged(staging_url, &last_ids(&sim), Duration::from_secs(20));

    // The stream answers the server's pings.
    sim.post(
        "/_sim/faults",
        &serde_json::json!({"stream": [{"kind": "ping"}]}),
    );
    sim.wait_for_streams("a pong", Duration::from_secs(20), |s| s["pongs"] == 1);

    sim.post(
        "/_sim/faults",
        &serde_json::json!({"stream": [
            {"kind": "skip_ids", "symbol": "BTCUSDT", "count": 25},
            {"kind": "raw", "text": "{not json"},
            {"kind": "raw", "text": "{\"e\":\"aggTrade\",\"s\":\"BTCUSDT\"}"},
        ]}),
    );
    sim.wait_for_streams("25 skipped trades", Duration::from_secs(20), |s| {
        s["trades_skipped"] == 25
    });
    // The trades after the skipped ones reveal the gap mid-stream.
    wait_until_staged(staging_url, &last_ids(&sim), Duration::from_secs(20));
    sim.post(
        "/_sim/faults",
        &serde_json::json!({"stream": [{"kind": "drop"}]}),
    );
    sim.wait_for_streams("reconnect after the drop", Duration::from_secs(20), |s| {
        s["connections_opened"] == 2 && s["connections_open"] == 1
    });
    sim.post(
        "/_sim/faults",
        &serde_json::json!({"stream": [{"kind": "server_shutdown"}]}),
    );
    sim.wait_for_streams(
        "reconnect after serverShutdown",
        Duration::from_secs(20),
        |s| s["connections_opened"] == 3,
    );
    // Trading goes on to the end of the test's span; the stream keeps up with it.
    std::thread::sleep(STREAM_FOR.saturating_sub(started.elapsed()));
    let targets = last_ids(&sim);
    wait_until_staged(staging_url, &targets, Duration::from_secs(20));
    stream.signal("TERM");
    assert!(
        stream.wait_exit(Duration::from_secs(20)),
        "stream stops on SIGTERM"
    );

    assert_every_id_once(staging_url, &targets);
    let log = stream.log.join("\n");
    assert!(
        log.contains("gap in the stream"),
        "the skipped ids were noticed:\n{log}"
    );
    assert!(
        log.contains("malformed frame skipped"),
        "garbage was logged:\n{log}"
    );
    assert!(log.contains("{not json"), "with its raw text:\n{log}");
    assert!(log.contains("the server announced a shutdown"), "{log}");
}

#[test]
fn disconnects_shutdowns_skipped_ids_and_garbage_leave_every_id_once_in_sqlite() {
    let home = Home::new();
    let url = format!("sqlite://{}", home.file("staging.db").display());
    faults_then_every_id_once(&url);
}

#[test]
fn disconnects_shutdowns_skipped_ids_and_garbage_leave_every_id_once_in_postgres() {
    if let Some(url) = postgres_database("stream_staging") {
        faults_then_every_id_once(&url);
    }
}

pub(crate) fn serve_command(home: &Home, sim: &Simulator, staging_url: &str) -> Command {
    let mut cmd = home.command(&["serve", "--grace", "10s"]);
    cmd.env("BINANCE_API_URL", &sim.url)
        .env("BINANCE_WS_URL", sim.ws_url())
        .env("ORCH_STAGING_URL", staging_url);
    cmd
}

/// Waits until every symbol's staged ids of `exchange` reach `targets`; returns them.
pub(crate) fn wait_until_staged_of(
    url: &str,
    exchange: &str,
    targets: &BTreeMap<String, i64>,
) -> BTreeMap<String, Vec<i64>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let staged = staged_ids_of(url, exchange);
        if targets
            .iter()
            .all(|(symbol, target)| staged.get(symbol).and_then(|s| s.last()) >= Some(target))
        {
            return staged;
        }
        assert!(
            Instant::now() < deadline,
            "staging never reached {targets:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every trade of `exchange` from the first staged one through `targets`, once, where ids
/// go up by `step`.
pub(crate) fn assert_every_trade_once_of(
    url: &str,
    exchange: &str,
    targets: &BTreeMap<String, i64>,
    step: i64,
) {
    let staged = wait_until_staged_of(url, exchange, targets);
    for (symbol, target) in targets {
        let ids = &staged[symbol];
        let expected: Vec<i64> = (ids[0] / step..=target / step)
            .map(|id| id * step)
            .collect();
        let held: Vec<i64> = ids.iter().copied().filter(|id| id <= target).collect();
        let missing: Vec<&i64> = expected
            .iter()
            .filter(|id| held.binary_search(id).is_err())
            .take(10)
            .collect();
        assert!(missing.is_empty(), "{symbol}: ids missing: {missing:?}");
        assert_eq!(held, expected, "{symbol}: each trade once, nothing else");
    }
}

/// The saved report of stream `id`.
pub(crate) fn stream_report(home: &Home, id: &str) -> serde_json::Value {
    streams_json(home)
        .as_array()
        .and_then(|streams| streams.iter().find(|s| s["stream_id"] == id).cloned())
        .unwrap_or_else(|| panic!("no report of stream {id}"))
}

fn streams_json(home: &Home) -> serde_json::Value {
    let out = home.orch(&["streams", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("orch streams --json")
}

#[test]
fn serve_runs_streams_and_a_kill_9_then_restart_leaves_every_id_once() {
    let home = Home::new();
    home.write_dag("trades", &stream_yaml());
    let url = format!("sqlite://{}", home.file("data/staging.db").display());
    let sim = Simulator::with_rate(SYMBOLS, RATE);
    let mut serve = Server::spawn(serve_command(&home, &sim, &url), "stream connected");
    wait_until_staged(&url, &last_ids(&sim), Duration::from_secs(20));

    // `orch streams` reads the report the server saves every second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let streams = streams_json(&home);
        let report = streams[0].clone();
        if report["trades_committed"].as_u64().unwrap_or(0) > 0 && !report["lag_p99_ms"].is_null() {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "no report with trades: {streams:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(report["stream_id"], "trades");
    assert_eq!(report["state"], "connected", "{report:#}");
    assert!(report["last_trade_time"].as_i64().is_some(), "{report:#}");

    serve.kill9();
    // The stream's process gets the kernel's SIGKILL as its server dies, and is gone soon
    // after; nothing else can tell when.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dead = streams_json(&home);
        if dead[0]["state"] == "stale" {
            break;
        }
        assert!(Instant::now() < deadline, "its process is gone: {dead:#}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Trades the dead server never saw.
    for symbol in SYMBOLS.split(',') {
        sim.add_trades(symbol, 2500);
    }
    let mut serve = Server::spawn(serve_command(&home, &sim, &url), "stream connected");
    let targets = last_ids(&sim);
    wait_until_staged(&url, &targets, Duration::from_secs(30));
    serve.signal("TERM");
    assert!(serve.wait_exit(Duration::from_secs(20)));
    assert_every_id_once(&url, &targets);
    assert_eq!(streams_json(&home)[0]["state"], "stopped");
}

#[test]
fn serve_restarts_a_failed_stream_and_one_whose_file_changed() {
    let home = Home::new();
    home.write_dag("trades", &stream_yaml().replace(SYMBOLS, "BTCUSDT"));
    let url = format!("sqlite://{}", home.file("data/staging.db").display());
    let sim = Simulator::with_rate(SYMBOLS, RATE);
    // The symbol check fails once: the stream's start fails, and serve tries again.
    sim.post(
        "/_sim/faults",
        &serde_json::json!({"rest": [{"status": 400, "code": -1000, "msg": "Simulated outage."}]}),
    );
    let mut serve = Server::spawn(
        serve_command(&home, &sim, &url),
        "stream failed; restarting",
    );
    assert!(
        serve.log.join("\n").contains("Simulated outage."),
        "{:?}",
        serve.log
    );
    serve.wait_for_log("stream connected", Duration::from_secs(20));
    home.write_dag("trades", &stream_yaml());
    serve.wait_for_log(
        "stopping stream: its definition changed",
        Duration::from_secs(10),
    );
    serve.wait_for_log("starting stream", Duration::from_secs(10));
    let targets = last_ids(&sim);
    wait_until_staged(&url, &targets, Duration::from_secs(20));
    std::fs::remove_file(home.file("dags/trades.yaml")).expect("remove the stream file");
    serve.wait_for_log("stopping stream: its file is gone", Duration::from_secs(10));
    serve.signal("TERM");
    assert!(serve.wait_exit(Duration::from_secs(20)));
}

#[test]
fn an_unknown_symbol_is_refused_before_streaming() {
    let home = Home::new();
    home.write_dag(
        "trades",
        "id: trades\nstream:\n  source: { kind: binance.trades, symbols: [BTCUSDT, NOPEUSDT] }\n",
    );
    let sim = Simulator::start("BTCUSDT");
    let url = format!("sqlite://{}", home.file("data/staging.db").display());
    let out = stream_command(&home, &sim, &url)
        .output()
        .expect("orch stream run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exchangeInfo") && stderr.contains("Invalid symbol"),
        "{stderr}"
    );
}

/// A gap backfill ran while the socket was not read: pongs stopped and the exchange cut the
/// connection during long catch-ups. Now the socket is read on its own task throughout.
#[test]
fn a_long_gap_backfill_keeps_answering_pings() {
    let home = Home::new();
    home.write_dag(
        "trades",
        "id: trades\nstream:\n  source: { kind: binance.trades, symbols: [BTCUSDT] }\n  sink: { table: raw_trades }\n  batch: { max_rows: 1000, max_latency: 100ms }\n",
    );
    // Pings every 100 ms, a cut after 600 ms without a pong.
    let sim = Simulator::with_args(
        "BTCUSDT",
        0,
        &["--ping-every", "100ms", "--pong-within", "600ms"],
    );
    let staging = format!("sqlite://{}", home.file("staging.db").display());
    let mut stream = Server::spawn(stream_command(&home, &sim, &staging), "stream connected");
    let (first, _) = sim.add_trades("BTCUSDT", 5);
    wait_until_staged(
        &staging,
        &BTreeMap::from([("BTCUSDT".to_string(), first + 4)]),
        Duration::from_secs(10),
    );
    // 2,500 ids held back from the stream: three pages of backfill, each answered after
    // 400 ms, well past the pong window.
    sim.post(
        "/_sim/faults",
        &serde_json::json!({
            "stream": [{"kind": "skip_ids", "symbol": "BTCUSDT", "count": 2500}],
            "rest": [{"delay_ms": 400}, {"delay_ms": 400}, {"delay_ms": 400}],
        }),
    );
    let (_, last) = sim.add_trades("BTCUSDT", 2600);
    stream.wait_for_log("backfilled from the REST API", Duration::from_secs(20));
    let targets = BTreeMap::from([("BTCUSDT".to_string(), last)]);
    wait_until_staged(&staging, &targets, Duration::from_secs(20));
    let stats = sim.get("/_sim/stats");
    assert_eq!(
        stats["streams"]["connections_opened"], 1,
        "the connection lived through the backfill: {stats}"
    );
    assert_every_id_once(&staging, &targets);
}

/// A server that accepts TCP but never completes the websocket handshake kept a stream
/// `connecting` for good, with no log and no retry.
#[test]
fn a_handshake_that_never_completes_times_out_and_is_retried() {
    let home = Home::new();
    home.write_dag("trades", &stream_yaml());
    let sim = Simulator::start(SYMBOLS);
    let mute = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mute_url = format!("ws://{}", mute.local_addr().expect("address"));
    let _held = std::thread::spawn(move || {
        let mut sockets = Vec::new();
        for socket in mute.incoming().flatten() {
            sockets.push(socket);
        }
    });
    let staging = format!("sqlite://{}", home.file("staging.db").display());
    let mut cmd = home.command(&["stream", "run", "trades"]);
    cmd.env("BINANCE_API_URL", &sim.url)
        .env("BINANCE_WS_URL", &mute_url)
        .env("ORCH_STAGING_URL", &staging);
    let mut stream = Server::spawn(cmd, "stream starting");
    stream.wait_for_log_all(
        &["stream reconnecting", "no websocket handshake within 10s"],
        Duration::from_secs(30),
    );
}

/// A stream's copy into the lake (`lake:`) holds every staged trade once across a `kill -9`
/// and a restart, and `orch query` reads it by name.
#[test]
fn the_lake_copy_of_a_stream_holds_every_trade_once_across_a_kill_9() {
    let home = Home::new();
    home.write_dag(
        "trades",
        &format!("{}  lake: {{ every: 300ms }}\n", stream_yaml()),
    );
    let url = format!("sqlite://{}", home.file("data/staging.db").display());
    let sim = Simulator::with_rate(SYMBOLS, RATE);
    let mut stream = Server::spawn(stream_command(&home, &sim, &url), "stream connected");
    wait_until_staged(&url, &last_ids(&sim), Duration::from_secs(20));
    // Killed once every symbol has files in the lake: the restart resumes from them.
    let copied = |symbol: &str| {
        let dir = home.file(&format!(
            "data/lake/raw/binance_stream_trades/symbol={symbol}"
        ));
        std::fs::read_dir(dir)
            .map(|days| {
                days.flatten()
                    .any(|day| std::fs::read_dir(day.path()).is_ok_and(|mut f| f.next().is_some()))
            })
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !SYMBOLS.split(',').all(copied) {
        assert!(Instant::now() < deadline, "no copy in the lake");
        std::thread::sleep(Duration::from_millis(20));
    }
    stream.kill9();
    for symbol in SYMBOLS.split(',') {
        sim.add_trades(symbol, 2500);
    }
    let mut stream = Server::spawn(stream_command(&home, &sim, &url), "stream connected");
    let targets = last_ids(&sim);
    wait_until_staged(&url, &targets, Duration::from_secs(30));
    stream.signal("TERM");
    assert!(stream.wait_exit(Duration::from_secs(20)));

    let staged = staged_ids(&url);
    let expected: String = staged
        .iter()
        .map(|(symbol, ids)| {
            format!(
                "{symbol},{n},{n},{},{}\n",
                ids[0],
                ids[ids.len() - 1],
                n = ids.len()
            )
        })
        .collect();
    let out = home.orch(&[
        "query",
        "SELECT symbol, count(*) AS trades, count(DISTINCT trade_id) AS ids, \
         min(trade_id) AS first, max(trade_id) AS last \
         FROM binance_stream_trades GROUP BY symbol ORDER BY symbol",
        "--format",
        "csv",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("symbol,trades,ids,first,last\n{expected}")
    );
}
