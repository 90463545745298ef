//! Running the built `orch` binary against a temporary home.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_orch");

/// A temporary orch home with a `dags/` folder, and its metadata database: SQLite in the
/// home by default, or a fresh PostgreSQL database ([`Home::postgres`]).
pub struct Home {
    dir: tempfile::TempDir,
    database_url: Option<String>,
}

impl Home {
    pub fn new() -> Home {
        let dir = tempfile::Builder::new()
            .prefix("orch")
            .tempdir()
            .expect("temp home");
        std::fs::create_dir_all(dir.path().join("dags")).expect("dags dir");
        Home {
            dir,
            database_url: None,
        }
    }

    /// A home whose metadata lives in a new, empty database on the PostgreSQL server named by
    /// `ORCH_TEST_POSTGRES_URL` (`.ci/postgres` starts one). Without that variable the test is
    /// skipped with a printed reason, except under CI (`CI` set), where it fails.
    pub fn postgres(test: &str) -> Option<Home> {
        let mut home = Home::new();
        home.database_url = Some(postgres_database(test)?);
        Some(home)
    }

    /// Another home on the same metadata database, as another host's would be.
    pub fn sharing_database(other: &Home) -> Home {
        let mut home = Home::new();
        home.database_url = Some(other.database_url());
        home
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    pub fn write_dag(&self, name: &str, yaml: &str) {
        // Write then rename, as an editor does, so a reload never sees half a file.
        let tmp = self.file(&format!("dags/.{name}.tmp"));
        std::fs::write(&tmp, yaml).expect("write dag");
        std::fs::rename(&tmp, self.file(&format!("dags/{name}.yaml"))).expect("rename dag");
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--home").arg(self.path()).args(args);
        match &self.database_url {
            Some(url) => cmd.env("ORCH_DATABASE_URL", url),
            None => cmd.env_remove("ORCH_DATABASE_URL"),
        };
        cmd.env_remove("ORCH_DAGS_DIR")
            .env_remove("ORCH_LAKE_URL")
            .env_remove("ORCH_WAREHOUSE_URL")
            .env_remove("BINANCE_API_URL")
            .env_remove("ORCH_LOGS_DIR")
            .env_remove("ORCH_API_TOKEN")
            .env_remove("ORCH_API_TOKEN_FILE")
            // Many servers run at once: the web face only where a test asks for it.
            .env("ORCH_LISTEN", "off")
            .env("ORCH_PARALLELISM", "4");
        cmd
    }

    pub fn orch(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run orch")
    }

    /// `orch runs show RUN_ID --json`.
    pub fn run_json(&self, run_id: &str) -> Value {
        let out = self.orch(&["runs", "show", run_id, "--json"]);
        assert!(
            out.status.success(),
            "runs show failed: {}",
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("runs show --json is JSON")
    }

    /// Waits until the run has ended, polling its state through the CLI.
    pub fn wait_for_run(&self, run_id: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let run = self.run_json(run_id);
            if run["state"] == "success" || run["state"] == "failed" {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {run_id} did not end in {limit:?}: {run:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The metadata database's URL, as the commands use it.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.file("orch.db").display()))
    }

    /// Runs SQL statements against the metadata database, as an intruder or a broken disk
    /// would change it.
    pub fn sql(&self, statements: &str) {
        sql(&self.database_url(), statements);
    }

    pub fn serve(&self) -> Server {
        Server::start(self.command(&["serve", "--grace", "10s"]))
    }
}

/// A new, empty database on the PostgreSQL server named by `ORCH_TEST_POSTGRES_URL`
/// (`.ci/postgres` starts one). Without that variable the test is skipped with a printed
/// reason, except under CI (`CI` set), where it fails.
pub fn postgres_database(test: &str) -> Option<String> {
    let Some(admin_url) = std::env::var("ORCH_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide ORCH_TEST_POSTGRES_URL (see .ci/postgres)"
        );
        eprintln!(
            "skipping {test}: ORCH_TEST_POSTGRES_URL is not set; start a server with \
             `export ORCH_TEST_POSTGRES_URL=$(bash .ci/postgres)`"
        );
        return None;
    };
    Some(fresh_postgres_database(&admin_url, test))
}

/// The endpoint of the S3-compatible server named by `ORCH_TEST_S3_ENDPOINT` (`.ci/s3` starts
/// one), with a new empty bucket named after the test; `None` (the test skipped with a printed
/// reason) without that variable, except under CI, where it fails.
pub fn s3_bucket(test: &str) -> Option<(String, String)> {
    let Some(endpoint) = std::env::var("ORCH_TEST_S3_ENDPOINT")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide ORCH_TEST_S3_ENDPOINT (see .ci/s3)"
        );
        eprintln!(
            "skipping {test}: ORCH_TEST_S3_ENDPOINT is not set; start a server with \
             `export ORCH_TEST_S3_ENDPOINT=$(bash .ci/s3)`"
        );
        return None;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let bucket = format!("orch-{}-{nanos}", test.replace('_', "-"));
    let status = http(&endpoint, "PUT", &format!("/{bucket}"), "").0;
    assert_eq!(status, 200, "create bucket {bucket} on {endpoint}");
    Some((endpoint, bucket))
}

/// A minimal HTTP/1.1 exchange for control APIs and test servers: (status, body).
pub fn http(base: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut stream =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status in {head}"));
    (status, body.to_string())
}

/// Creates a database named after the test on the server at `admin_url`, dropping any
/// left by an earlier run of the same test; returns its URL.
fn fresh_postgres_database(admin_url: &str, test: &str) -> String {
    use sqlx::Connection;
    let name = format!("orch_test_{test}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut conn = sqlx::PgConnection::connect(admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {admin_url}: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await
        .expect("drop test database");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
    });
    let (server, _) = admin_url
        .rsplit_once('/')
        .expect("ORCH_TEST_POSTGRES_URL ends in /DATABASE");
    format!("{server}/{name}")
}

/// Runs SQL statements against the database at `url`.
pub fn sql(url: &str, statements: &str) {
    use sqlx::Connection;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            sqlx::any::install_default_drivers();
            let mut conn = sqlx::AnyConnection::connect(url)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
            sqlx::raw_sql(sqlx::AssertSqlSafe(statements.to_string()))
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{statements}: {e}"));
        });
}

/// Runs a future to its end on a runtime of its own, for the tests' direct database reads.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// Every `.parquet` file below `dir` in a local lake, as (path, content).
pub fn parquet_files(dir: &Path) -> Vec<(String, bytes::Bytes)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                let bytes = std::fs::read(&path).expect("read lake file");
                files.push((path.to_string_lossy().into_owned(), bytes.into()));
            }
        }
    }
    files
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The last line of stdout: where `orch trigger` prints the run id.
pub fn last_line(out: &Output) -> String {
    text(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The run id of `orch run`'s last line, `run RUN_ID STATE`.
pub fn run_id_of(out: &Output) -> String {
    last_line(out)
        .split_whitespace()
        .nth(1)
        .expect("run RUN_ID STATE")
        .to_string()
}

/// Waits for a file to appear, as the signal that a task reached a given point.
pub fn wait_for_file(path: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear in {limit:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `orch serve` whose log lines can be awaited.
pub struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

impl Server {
    fn start(cmd: Command) -> Server {
        Server::spawn(cmd, "orch serve started")
    }

    /// Starts a long-running `orch` command and waits until its log says `ready`.
    pub fn spawn(mut cmd: Command, ready: &str) -> Server {
        let mut child = cmd
            .env("ORCH_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start orch");
        let stderr = child.stderr.take().expect("orch stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child,
            lines,
            log: Vec::new(),
        };
        server.wait_for_log(ready, Duration::from_secs(20));
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a log line containing every one of `needles`; returns it.
    pub fn wait_for_log_all(&mut self, needles: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if needles.iter().all(|n| line.contains(n)) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line with {needles:?} within {limit:?}; log so far:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    pub fn wait_for_log(&mut self, needle: &str, limit: Duration) -> String {
        self.wait_for_log_all(&[needle], limit)
    }

    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9 serve");
        self.child.wait().expect("reap serve");
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; returns whether it exited successfully.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Keep the rest of the log for assertions.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.log.push(line);
                }
                return status.success();
            }
            assert!(Instant::now() < deadline, "serve did not exit in {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The attempts of one task in a `runs show --json` object.
pub fn attempts<'a>(run: &'a Value, task_id: &str) -> &'a Vec<Value> {
    let task = run["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["task_id"] == task_id)
        .unwrap_or_else(|| panic!("no task {task_id} in {run:#}"));
    task["attempts"].as_array().expect("attempts")
}

pub fn task_state(run: &Value, task_id: &str) -> String {
    run["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["task_id"] == task_id)
        .and_then(|t| t["state"].as_str())
        .unwrap_or_else(|| panic!("no task {task_id} in {run:#}"))
        .to_string()
}

/// Whether a process is alive (a zombie waiting to be reaped is not).
pub fn is_running(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

/// A running `orch simulate binance` on a free loopback port, with no background trades.
pub struct Simulator {
    child: Child,
    pub url: String,
}

impl Simulator {
    pub fn start(symbols: &str) -> Simulator {
        Simulator::with_rate(symbols, 0)
    }

    /// A simulator whose market trades `rate` times a second per symbol on its own.
    pub fn with_rate(symbols: &str, rate: u32) -> Simulator {
        Simulator::with_args(symbols, rate, &[])
    }

    /// A simulator started with further `orch simulate binance` options.
    pub fn with_args(symbols: &str, rate: u32, extra: &[&str]) -> Simulator {
        let rate = rate.to_string();
        let mut child = Command::new(BIN)
            .args([
                "simulate",
                "binance",
                "--port",
                "0",
                "--rate",
                &rate,
                "--symbols",
                symbols,
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start simulator");
        let stdout = child.stdout.take().expect("simulator stdout");
        let mut url = String::new();
        BufReader::new(stdout)
            .read_line(&mut url)
            .expect("simulator URL");
        Simulator {
            child,
            url: url.trim().to_string(),
        }
    }

    /// POSTs JSON to the simulator's control API; returns the JSON answer.
    pub fn post(&self, path: &str, body: &Value) -> Value {
        self.request("POST", path, Some(body))
    }

    pub fn get(&self, path: &str) -> Value {
        self.request("GET", path, None)
    }

    /// Adds `count` trades of `symbol`; returns their (first, last) ids.
    pub fn add_trades(&self, symbol: &str, count: u64) -> (i64, i64) {
        let answer = self.post(
            "/_sim/trades",
            &serde_json::json!({"symbol": symbol, "count": count}),
        );
        (
            answer["first_id"].as_i64().expect("first_id"),
            answer["last_id"].as_i64().expect("last_id"),
        )
    }

    /// The base URL of its websocket streams.
    pub fn ws_url(&self) -> String {
        self.url.replacen("http://", "ws://", 1)
    }

    /// Polls the simulator's stream counters until `done` holds for them.
    pub fn wait_for_streams(&self, what: &str, limit: Duration, done: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            let stats = self.get("/_sim/stats");
            if done(&stats["streams"]) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "simulator: no {what} within {limit:?}: {stats}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last trade id the simulator holds for `symbol`.
    pub fn last_id(&self, symbol: &str) -> i64 {
        self.get("/_sim/stats")["symbols"][symbol]["last_id"]
            .as_i64()
            .expect("last id")
    }

    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, answer) = http(&self.url, method, path, &body);
        assert_eq!(status, 200, "{method} {path}: {answer}");
        serde_json::from_str(&answer).expect("JSON answer")
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Trade ids per `symbol=` partition of lake files given as (key, content), sorted.
pub fn ids_by_symbol(files: Vec<(String, bytes::Bytes)>) -> BTreeMap<String, Vec<i64>> {
    let mut ids: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (key, bytes) in files {
        let symbol = key
            .split("symbol=")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("no symbol partition in {key}"))
            .to_string();
        let trades = orch::lake::raw_trades::decode(bytes).expect("decode lake file");
        ids.entry(symbol)
            .or_default()
            .extend(trades.iter().map(|t| t.id));
    }
    for list in ids.values_mut() {
        list.sort_unstable();
    }
    ids
}

/// Asserts `ids` is exactly `first..=last`, each once.
pub fn assert_exactly_once(what: &str, ids: &[i64], first: i64, last: i64) {
    let expected: Vec<i64> = (first..=last).collect();
    if ids != expected.as_slice() {
        let dupes = ids.windows(2).filter(|w| w[0] == w[1]).count();
        panic!(
            "{what}: {} ids, expected {} ({first}..={last}); duplicates: {dupes}; first {:?}, last {:?}",
            ids.len(),
            expected.len(),
            ids.first(),
            ids.last()
        );
    }
}

/// Trade ids per warehouse table, sorted.
pub fn warehouse_ids(url: &str, tables: &[&str]) -> BTreeMap<String, Vec<i64>> {
    use sqlx::Connection;
    block_on(async {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(url)
            .await
            .expect("open warehouse");
        let mut out = BTreeMap::new();
        for table in tables {
            let sql = format!("SELECT trade_id FROM {table} ORDER BY trade_id");
            let ids: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_all(&mut conn)
                .await
                .expect("query warehouse");
            out.insert(table.to_string(), ids);
        }
        out
    })
}

/// Starts `orch run trades`, waits until its log of `task` shows `needle`, then `kill -9`s it.
pub fn kill_run_when_logged(home: &Home, task: &str, needle: &str) {
    let mut child = home
        .command(&["run", "trades"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("orch run");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let logs = home.file("logs/trades");
        let seen = walk_logs(&logs, task)
            .iter()
            .any(|log| log.contains(needle));
        if seen {
            break;
        }
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the run ended before its log showed `{needle}`"
        );
        assert!(Instant::now() < deadline, "no `{needle}` in the {task} log");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");
}

fn walk_logs(dir: &std::path::Path, task: &str) -> Vec<String> {
    let mut out = Vec::new();
    for run in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for attempt in std::fs::read_dir(run.path().join(task))
            .into_iter()
            .flatten()
            .flatten()
        {
            out.push(std::fs::read_to_string(attempt.path()).unwrap_or_default());
        }
    }
    out
}
