//! The trade bus against a real NATS server (Debian's `nats-server`, which `.ci/run`
//! installs): one stream publishes, two durable consumers read, and the broker is killed and
//! restarted mid-stream; every trade reaches both consumers once, and JetStream holds each
//! trade once however often it was published.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::stream::{RATE, SYMBOLS, last_ids, stream_command, stream_yaml, wait_until_staged};
use crate::support::{Home, Server, Simulator, block_on, run_id_of, text};

/// A `nats-server` with JetStream on a port of its own, its store in a folder that outlives
/// a restart.
struct Nats {
    child: Child,
    port: u16,
    store: PathBuf,
}

impl Nats {
    /// `None`, with a message, where `nats-server` is not installed.
    fn start(store: PathBuf) -> Option<Nats> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Nats::spawn(port, &store)?;
        let nats = Nats { child, port, store };
        nats.wait_ready();
        Some(nats)
    }

    fn spawn(port: u16, store: &std::path::Path) -> Option<Child> {
        Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI must provide nats-server (`.ci/run` installs Debian's): {e}"
                );
                eprintln!("skipped: cannot start nats-server ({e}); `.ci/run` installs it");
            })
            .ok()
    }

    /// Waits until the server accepts connections.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `kill -9`, then the same server again on the same port and store.
    fn kill9_and_restart(&mut self, down_for: Duration) {
        self.child.kill().expect("kill nats-server");
        self.child.wait().expect("reap nats-server");
        std::thread::sleep(down_for);
        self.child = Nats::spawn(self.port, &self.store).expect("restart nats-server");
        self.wait_ready();
    }

    /// How many messages JetStream holds in the trades' stream.
    fn stored_messages(&self) -> u64 {
        let url = self.url();
        block_on(async move {
            let client = async_nats::connect(url).await.expect("connect");
            let jetstream = async_nats::jetstream::new(client);
            let mut stream = jetstream
                .get_stream(orch::trade_bus::STREAM)
                .await
                .expect("stream");
            stream.info().await.expect("info").state.messages
        })
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ids of a staging table, per symbol, ascending.
fn ids_in(url: &str, table: &str) -> BTreeMap<String, Vec<i64>> {
    use sqlx::{Connection, Row};
    block_on(async {
        let mut conn = sqlx::SqliteConnection::connect(url).await.expect("staging");
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT symbol, trade_id FROM {table} WHERE exchange = 'binance' ORDER BY symbol, trade_id"
        )))
        .fetch_all(&mut conn)
        .await
        .expect("ids");
        let mut ids: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for row in rows {
            ids.entry(row.get::<String, _>(0))
                .or_default()
                .push(row.get(1));
        }
        ids
    })
}

fn consume(home: &Home, dag: &str) -> i64 {
    let out = home.orch(&["run", dag]);
    assert!(out.status.success(), "{dag}: {}", text(&out.stderr));
    let run = home.run_json(&run_id_of(&out));
    run["tasks"][0]["attempts"][0]["rows"]
        .as_i64()
        .expect("rows")
}

#[test]
fn a_stream_publishes_each_trade_once_and_two_consumers_read_all_across_a_broker_restart() {
    let home = Home::new();
    let Some(mut nats) = Nats::start(home.file("nats")) else {
        return;
    };
    let sim = Simulator::with_rate(SYMBOLS, RATE);
    let url = nats.url();
    home.write_dag(
        "trades",
        &format!("{}  publish: {{ url: \"{url}\" }}\n", stream_yaml()),
    );
    for name in ["copy_a", "copy_b"] {
        home.write_dag(
            name,
            &format!(
                "tasks:\n  - id: consume\n    kind: nats.consume\n    with: {{ consumer: {name}, table: {name}, url: \"{url}\" }}\n"
            ),
        );
    }
    let staging = format!("sqlite://{}", home.file("data/staging.db").display());
    let mut stream = Server::spawn(stream_command(&home, &sim, &staging), "stream connected");
    wait_until_staged(&staging, &last_ids(&sim), Duration::from_secs(30));

    // One consumer reads mid-stream; then the broker dies for longer than a publish waits for
    // its acknowledgement (5 s), and comes back, while trades go on.
    assert!(consume(&home, "copy_a") > 0);
    nats.kill9_and_restart(Duration::from_secs(6));
    wait_until_staged(&staging, &last_ids(&sim), Duration::from_secs(60));
    stream.signal("TERM");
    assert!(
        stream.wait_exit(Duration::from_secs(30)),
        "{}",
        stream.log.join("\n")
    );

    // Both consumers read to the end: the rest for one, everything for the other.
    consume(&home, "copy_a");
    consume(&home, "copy_b");
    let staged = ids_in(&staging, "raw_trades");
    let total: usize = staged.values().map(Vec::len).sum();
    assert_eq!(staged.len(), SYMBOLS.split(',').count());
    assert_eq!(ids_in(&staging, "copy_a"), staged, "consumer a");
    assert_eq!(ids_in(&staging, "copy_b"), staged, "consumer b");
    assert_eq!(
        nats.stored_messages(),
        total as u64,
        "JetStream holds each trade once"
    );
    // The broker was down longer than JetStream's acknowledgement wait: the stream
    // published a batch again, and JetStream kept one copy of each trade.
    let log = stream.log.join("\n");
    assert!(
        log.contains("publishing to the trade bus failed; trying again"),
        "{log}"
    );
    // Nothing left: another run reads nothing new.
    assert_eq!(consume(&home, "copy_b"), 0);
}
