//! Bad input and faults a hostile or unlucky user finds (the third round): each is refused
//! with a clear error naming what and where, within a bound, and loses nothing stored.

use std::time::{Duration, Instant};

use crate::support::{Home, text};
use crate::web::{request, serve_web};

const TOKEN: &str = "hostile-test-token";

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// A backfill over ten thousand years of an every-minute DAG is refused at once: its ticks
/// are not listed past the bound, and the server goes on answering.
#[test]
fn a_backfill_over_a_huge_range_is_refused_at_once_through_the_api() {
    let home = Home::new();
    home.write_dag(
        "sec",
        "schedule: '* * * * *'\nstart_date: 2026-11-01\ncatchup: false\npaused: true\ntasks: [{id: a, kind: noop}]\n",
    );
    let web = serve_web(&home, "127.0.0.1", &[("ORCH_API_TOKEN", TOKEN)]);
    let auth = bearer();
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let started = Instant::now();
    let answer = request(
        &web.addr,
        "POST",
        "/api/v1/backfills",
        &headers,
        r#"{"dag_id":"sec","start":"0001-01-01","end":"9999-12-31"}"#,
    );
    let took = started.elapsed();
    assert_eq!(answer.status, 422, "{answer:?}");
    let error = answer.json();
    let why = error["field_errors"]["end"].as_str().unwrap_or_default();
    assert!(
        why.contains("more than 10000 runs") && why.contains("max_backfill_runs"),
        "{error:#}"
    );
    // Bounded work (10,001 ticks at most), not billions: well within a second even in a
    // debug build on a busy machine. docs/benchmarks.md has the release figure.
    assert!(took < Duration::from_secs(1), "answered in {took:?}");
    let health = request(&web.addr, "GET", "/healthz", &[], "");
    assert_eq!(health.status, 200, "{health:?}");
    // No run was made.
    let runs = request(
        &web.addr,
        "GET",
        "/api/v1/runs",
        &[("Authorization", auth.as_str())],
        "",
    );
    assert_eq!(
        runs.json()["runs"].as_array().map(Vec::len),
        Some(0),
        "{runs:?}"
    );
}

/// `orch backfill` refuses such a range before asking for `--yes`, and the bound is a
/// setting.
#[test]
fn orch_backfill_refuses_a_range_past_max_backfill_runs_before_asking() {
    let home = Home::new();
    home.write_dag(
        "sec",
        "schedule: '* * * * *'\nstart_date: 2026-11-01\ntasks: [{id: a, kind: noop}]\n",
    );
    let started = Instant::now();
    let out = home.orch(&[
        "backfill",
        "sec",
        "--start",
        "0001-01-01",
        "--end",
        "9999-12-31",
        "--yes",
    ]);
    let took = started.elapsed();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("more than 10000 runs") && err.contains("split the range"),
        "{err}"
    );
    assert!(took < Duration::from_secs(5), "refused in {took:?}");

    // Two days of minutes: 2,880 runs, past a bound of 2,000 set in the environment.
    let out = home
        .command(&[
            "backfill",
            "sec",
            "--start",
            "2026-11-01",
            "--end",
            "2026-11-02",
            "--yes",
        ])
        .env("ORCH_MAX_BACKFILL_RUNS", "2000")
        .output()
        .expect("orch backfill");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("more than 2000 runs"), "{err}");
    let runs = home.orch(&["runs", "list", "--json"]);
    let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).expect("runs json");
    assert_eq!(
        runs.as_array().map(Vec::len),
        Some(0),
        "nothing was started: {runs}"
    );
}

/// A retention of a hundred million days is refused naming orch.yaml, instead of a panic in
/// `orch db prune` (and a silent one in `orch serve`); the largest accepted prunes nothing.
#[test]
fn a_retention_past_any_date_is_refused_naming_the_setting() {
    let home = Home::new();
    std::fs::write(home.file("orch.yaml"), "retention: {days: 100000000}\n").expect("orch.yaml");
    let out = home.orch(&["db", "prune"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("orch.yaml") && err.contains("retention") && err.contains("365000 days"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    std::fs::write(home.file("orch.yaml"), "retention: {days: 365000}\n").expect("orch.yaml");
    let out = home.orch(&["db", "prune"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A task needing more slots than its pool has could never start: `dags validate` says so,
/// naming the file and the task, and a run fails it at once with the reason instead of
/// showing it running for ever.
#[test]
fn a_task_needing_more_slots_than_its_pool_has_is_refused_not_left_waiting() {
    let home = Home::new();
    std::fs::write(home.file("orch.yaml"), "pools: { heavy: 2 }\n").expect("orch.yaml");
    home.write_dag(
        "greedy",
        "tasks:\n  - {id: big, kind: noop, pool: heavy, pool_slots: 3}\n  - {id: after, kind: noop, depends_on: [big]}\n",
    );
    let out = home.orch(&["dags", "validate"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("greedy.yaml")
            && err.contains("task `big`")
            && err.contains("pool `heavy` has (2"),
        "{err}"
    );

    let started = Instant::now();
    let out = home.orch(&["run", "greedy"]);
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(20));
    let run_id = crate::support::run_id_of(&out);
    let run = home.run_json(&run_id);
    assert_eq!(run["state"], "failed", "{run:#}");
    let error = crate::support::attempts(&run, "big")[0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("needs 3 slots of pool `heavy`, which has 2"),
        "{run:#}"
    );
}

/// SIGTERM stops `orch serve` within its grace even while an attempt runs on another
/// worker and others wait in a queue nobody serves: the shipped compose file and Kubernetes
/// manifest give it the grace plus 10 s before SIGKILL.
#[test]
fn sigterm_stops_serve_within_the_grace_with_remote_and_queued_attempts() {
    let home = Home::new();
    home.write_dag(
        "spread",
        r#"
tasks:
  - { id: remote, kind: shell, queue: heavy, with: { command: "touch started; sleep 40" } }
  - { id: stuck, kind: noop, queue: nobody }
"#,
    );
    let mut server = crate::support::Server::spawn(
        home.command(&["serve", "--no-worker", "--grace", "3s"]),
        "orch serve started",
    );
    let _worker = crate::support::Server::spawn(
        home.command(&["worker", "--queue", "heavy", "--grace", "3s"]),
        "orch worker started",
    );
    let out = home.orch(&["trigger", "spread"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    crate::support::wait_for_file(&home.file("started"), Duration::from_secs(20));
    let signalled = Instant::now();
    server.signal("TERM");
    assert!(
        server.wait_exit(Duration::from_secs(5)),
        "{:#?}",
        server.log
    );
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");
}

/// A client sending its headers a line at a time (slowloris) loses its connection once the
/// header timeout passes, instead of holding it, and a file descriptor, for ever.
#[test]
fn a_client_trickling_its_headers_is_cut_off_at_the_header_timeout() {
    use std::io::{Read, Write};
    let home = Home::new();
    let web = serve_web(&home, "127.0.0.1", &[("ORCH_HTTP_HEADER_TIMEOUT", "2s")]);
    let mut stream = std::net::TcpStream::connect(&web.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(250)))
        .expect("read timeout");
    let started = Instant::now();
    let _ = stream.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n", web.addr).as_bytes());
    let mut line = 0;
    let closed_after = loop {
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "the connection was still open after 8 s of trickled headers"
        );
        // One more header line, as a slow client would; the server may have closed already.
        line += 1;
        let _ = stream.write_all(format!("X-Trickle-{line}: x\r\n").as_bytes());
        let mut buffer = [0u8; 512];
        match stream.read(&mut buffer) {
            // Closed, with or without a last answer.
            Ok(0) => break started.elapsed(),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => break started.elapsed(),
        }
    };
    assert!(
        closed_after >= Duration::from_millis(1500),
        "closed after {closed_after:?}"
    );
    // A client that sends its request at once is served as ever.
    let health = request(&web.addr, "GET", "/healthz", &[], "");
    assert_eq!(health.status, 200, "{health:?}");
}

/// A misspelled field of a request body is refused, naming it, instead of ignored: a
/// `config` that was meant as `conf` must not run the DAG past its params' checks.
#[test]
fn misspelled_request_fields_are_refused_naming_them() {
    let home = Home::new();
    home.write_dag(
        "limited",
        "params:\n  limit: {type: integer, default: 5, max: 10}\ntasks: [{id: a, kind: noop}]\n",
    );
    let web = serve_web(&home, "127.0.0.1", &[("ORCH_API_TOKEN", TOKEN)]);
    let auth = bearer();
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    for (path, body, field) in [
        (
            "/api/v1/dags/limited/runs",
            r#"{"config": {"limit": 999}}"#,
            "config",
        ),
        (
            "/api/v1/dags/limited/runs",
            r#"{"logicaldate": "2026-11-01"}"#,
            "logicaldate",
        ),
        (
            "/api/v1/backfills",
            r#"{"dag_id": "limited", "start": "2026-11-01", "end": "2026-11-01", "confs": {}}"#,
            "confs",
        ),
    ] {
        let answer = request(&web.addr, "POST", path, &headers, body);
        assert_eq!(answer.status, 400, "{body}: {answer:?}");
        let error = answer.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            error.contains(&format!("unknown field `{field}`")),
            "{body}: {error}"
        );
    }
    let runs = request(
        &web.addr,
        "GET",
        "/api/v1/runs",
        &[("Authorization", auth.as_str())],
        "",
    );
    assert_eq!(
        runs.json()["runs"].as_array().map(Vec::len),
        Some(0),
        "{runs:?}"
    );
    // The right spelling still works, and its params are checked.
    let answer = request(
        &web.addr,
        "POST",
        "/api/v1/dags/limited/runs",
        &headers,
        r#"{"conf": {"limit": 999}}"#,
    );
    assert_eq!(answer.status, 422, "{answer:?}");
}

/// A path parameter that does not parse (an attempt number that is not a number) gets the
/// API's JSON error, as documented, not axum's plain text.
#[test]
fn a_bad_path_parameter_gets_a_json_error() {
    let home = Home::new();
    home.write_dag("plain", "tasks: [{id: a, kind: noop}]\n");
    let web = serve_web(&home, "127.0.0.1", &[("ORCH_API_TOKEN", TOKEN)]);
    let auth = bearer();
    let answer = request(
        &web.addr,
        "GET",
        "/api/v1/runs/r/tasks/a/attempts/x/log",
        &[("Authorization", auth.as_str())],
        "",
    );
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(
        answer
            .head
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{answer:?}"
    );
    let error = answer.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("Cannot parse"), "{error}");
}

/// A number-like value of a string param is the text it spells: the declared type decides
/// how `--conf` reads it.
#[test]
fn a_number_like_value_of_a_string_param_is_text() {
    let home = Home::new();
    home.write_dag(
        "greet",
        "params:\n  greeting: {type: string, default: hello}\ntasks: [{id: say, kind: shell, with: {command: 'test {{ params.greeting }} = 123'}}]\n",
    );
    let out = home.orch(&["run", "greet", "--conf", "greeting=123"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Small ones: a CR/LF in the sign-in's `next` is a redirect home, not a 500; a token of
/// whitespace is refused at start, since nobody could sign in with it; a logical date before
/// year 1 is refused as such, not as "past the last date".
#[test]
fn a_crlf_next_a_blank_token_and_year_zero_are_refused_clearly() {
    let home = Home::new();
    home.write_dag("plain", "tasks: [{id: a, kind: noop}]\n");
    let web = serve_web(&home, "127.0.0.1", &[("ORCH_API_TOKEN", TOKEN)]);
    let signed = request(
        &web.addr,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &format!("name=ada&token={TOKEN}&next=%2Fruns%0D%0ASet-Cookie%3A%20x%3D1"),
    );
    assert_eq!(signed.status, 303, "{signed:?}");
    assert!(
        signed.head.contains("location: /\r\n") || signed.head.ends_with("location: /"),
        "{signed:?}"
    );
    assert!(!signed.head.contains("x=1"), "{signed:?}");

    let out = home
        .command(&["serve", "--listen", "127.0.0.1:0"])
        .env("ORCH_API_TOKEN", "   ")
        .output()
        .expect("orch serve");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("ORCH_API_TOKEN") && err.contains("whitespace"),
        "{err}"
    );

    let out = home.orch(&["trigger", "plain", "--logical-date", "0000-01-01"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("years 1 to 9999"), "{err}");
}

/// The served OpenAPI document describes params as `/dags` really answers them: every key
/// and every type of a param that uses them all is in its `Param` schema.
#[test]
fn the_openapi_param_schema_matches_real_dag_answers() {
    let home = Home::new();
    home.write_dag(
        "typed",
        r#"
params:
  s: {type: string, default: x, pattern: "[a-z]+", description: text}
  i: {type: integer, default: 3, min: 1, max: 9}
  n: {type: number, default: 1.5}
  b: {type: boolean, default: true}
  d: {type: date}
  e: {type: enum, values: [a, b], default: a}
  l: {type: list, default: []}
  o: {type: object, default: {}}
tasks: [{id: a, kind: noop}]
"#,
    );
    let web = serve_web(&home, "127.0.0.1", &[("ORCH_API_TOKEN", TOKEN)]);
    let auth = bearer();
    let get = |path: &str| {
        request(
            &web.addr,
            "GET",
            path,
            &[("Authorization", auth.as_str())],
            "",
        )
        .json()
    };
    let document = get("/api/v1/openapi.json");
    let schema = &document["components"]["schemas"]["Param"];
    let properties = schema["properties"].as_object().expect("Param properties");
    let types: Vec<&str> = properties["type"]["enum"]
        .as_array()
        .expect("type enum")
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    let dag = get("/api/v1/dags/typed");
    let params = dag["params"].as_array().expect("params");
    assert_eq!(params.len(), 8, "{dag:#}");
    for param in params {
        for (key, _) in param.as_object().expect("a param object") {
            assert!(
                properties.contains_key(key),
                "`{key}` of {param} is not in the schema"
            );
        }
        for required in schema["required"].as_array().expect("required") {
            let required = required.as_str().unwrap_or_default();
            assert!(param.get(required).is_some(), "{param} lacks `{required}`");
        }
        let kind = param["type"].as_str().unwrap_or_default();
        assert!(
            types.contains(&kind),
            "type `{kind}` is not in the schema's {types:?}"
        );
    }
}

/// `orch query` names the lake's tables; a table function reading a path is refused, naming
/// it, whatever its case or quoting.
#[test]
fn orch_query_refuses_table_functions_that_read_paths() {
    let home = Home::new();
    for sql in [
        "SELECT count(*) FROM read_parquet('/etc/*.parquet')",
        "SELECT * FROM \"READ_CSV\"('/etc/passwd')",
    ] {
        let out = home.orch(&["query", sql]);
        assert!(!out.status.success(), "{sql}");
        let err = text(&out.stderr);
        assert!(err.contains("reads files by path"), "{sql}: {err}");
    }
}

/// A metadata database whose pages were overwritten stops `orch serve` at once, saying the
/// file is corrupt and what to do, instead of retrying for 30 s; a command says the same.
#[test]
fn a_corrupt_metadata_database_is_named_at_once() {
    use std::io::{Seek, Write};
    let home = Home::new();
    home.write_dag("plain", "tasks: [{id: a, kind: noop}]\n");
    for _ in 0..30 {
        assert!(home.orch(&["run", "plain"]).status.success());
    }
    // Every page after the first (the schema) overwritten, as a bad disk would.
    let path = home.file("orch.db");
    let length = std::fs::metadata(&path).expect("orch.db").len();
    assert!(length > 8192, "a history of several pages: {length} bytes");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    file.seek(std::io::SeekFrom::Start(4096)).expect("seek");
    file.write_all(&vec![
        0xA5;
        usize::try_from(length - 4096).unwrap_or_default()
    ])
    .expect("overwrite");
    drop(file);

    let started = Instant::now();
    let out = home.orch(&["runs", "list"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("metadata database file is corrupt"), "{err}");

    let mut server = home
        .command(&["serve", "--listen", "off"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("orch serve");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = server.kill();
            panic!("orch serve still runs on a corrupt database after 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut log = String::new();
    std::io::Read::read_to_string(&mut server.stderr.take().expect("stderr"), &mut log)
        .expect("read the log");
    assert!(log.contains("metadata database file is corrupt"), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

/// `orch query` runs under `query_memory_limit`: a cross join past it fails with a message
/// naming the limit, not an abort with a backtrace, and a query within it answers.
#[test]
fn orch_query_stays_within_its_memory_limit() {
    let home = Home::new();
    let sim = crate::support::Simulator::start("BTCUSDT");
    sim.add_trades("BTCUSDT", 3_000);
    home.write_dag(
        "trades",
        &format!(
            "tasks:\n  - {{id: fetch, kind: binance.historical_trades, with: {{symbols: [BTCUSDT], base_url: \"{}\"}}}}\n",
            sim.url
        ),
    );
    let out = home.orch(&["run", "trades"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let query = |sql: &str| {
        home.command(&["query", sql, "--format", "csv"])
            .env("ORCH_QUERY_MEMORY_LIMIT", "300MiB")
            .output()
            .expect("orch query")
    };
    let small = query("SELECT count(*) AS n FROM binance_trades");
    assert!(small.status.success(), "{}", text(&small.stderr));
    let count: i64 = text(&small.stdout)
        .lines()
        .nth(1)
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_default();
    assert!(count >= 1_000, "{}", text(&small.stdout));

    let huge = query(
        "SELECT a.price, b.qty, c.trade_id FROM binance_trades a \
         CROSS JOIN binance_trades b CROSS JOIN binance_trades c",
    );
    assert!(!huge.status.success());
    let err = text(&huge.stderr);
    assert!(
        err.contains("needed more memory than its limit of 300MiB")
            && err.contains("query_memory_limit"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

/// A server that cannot write its heartbeat (here a lock held on its database file; a full
/// disk alike) stops with the database's own error, not saying that another orch process
/// declared it lost when none exists.
#[test]
fn a_server_that_cannot_heartbeat_stops_saying_why() {
    let home = Home::new();
    home.write_dag("plain", "tasks: [{id: a, kind: noop}]\n");
    let mut command = home.command(&["serve", "--listen", "off"]);
    command.env("ORCH_HEARTBEAT_TIMEOUT", "3s");
    let mut server = crate::support::Server::spawn(command, "orch serve started");
    let holder = rusqlite::Connection::open(home.file("orch.db")).expect("open orch.db");
    holder
        .execute_batch("BEGIN EXCLUSIVE")
        .expect("take the write lock");
    // Writes wait out SQLite's busy timeout (30 s) before they fail.
    assert!(
        !server.wait_exit(Duration::from_secs(90)),
        "{:#?}",
        server.log
    );
    let log = server.log.join("\n");
    assert!(
        log.contains("could not write its heartbeat") && log.contains("locked"),
        "{log}"
    );
    assert!(!log.contains("declared lost by another"), "{log}");
    drop(holder);
}
