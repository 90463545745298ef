//! The web face of `orch serve`: the REST API, its access rules, health and metrics.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Home, Server, text};

/// A server with its web face on a free loopback port, and where to reach it.
pub struct WebServer {
    pub server: Server,
    pub addr: String,
}

/// Starts `orch serve` listening on a free port of `listen_ip`, with `env` set.
pub fn serve_web(home: &Home, listen_ip: &str, env: &[(&str, &str)]) -> WebServer {
    let mut cmd = home.command(&[
        "serve",
        "--grace",
        "5s",
        "--listen",
        &format!("{listen_ip}:0"),
    ]);
    for (name, value) in env {
        cmd.env(name, value);
    }
    let server = Server::spawn(cmd, "orch serve started");
    let line = server
        .log
        .iter()
        .find(|l| l.contains("web UI and API listening"))
        .unwrap_or_else(|| panic!("no listening line in {:#?}", server.log))
        .clone();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("address in the listening line")
        .to_string();
    WebServer { server, addr }
}

/// One HTTP/1.1 answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// The value of the cookie `name` the answer sets.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.head
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("set-cookie").then_some(v.trim())
            })
            .filter_map(|v| v.split(';').next()?.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// Sends one request with `headers` and reads the whole answer (the server closes it).
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut stream =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    // A server that stops answering fails the test instead of hanging it.
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    write!(stream, "{head}\r\n{body}").expect("send");
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .unwrap_or_else(|e| panic!("no whole answer to {method} {path} from {addr}: {e}"));
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Answer {
        status,
        head: head.to_string(),
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// A client of a server without a token: loopback, with the CSRF cookie the pages set.
struct Local {
    addr: String,
    csrf: String,
}

impl Local {
    fn new(addr: &str) -> Local {
        let page = request(addr, "GET", "/", &[], "");
        assert_eq!(page.status, 200, "{page:?}");
        let csrf = page
            .cookie("orch_csrf")
            .expect("the page sets a CSRF cookie");
        Local {
            addr: addr.to_string(),
            csrf,
        }
    }

    fn get(&self, path: &str) -> Answer {
        request(&self.addr, "GET", path, &[], "")
    }

    fn post(&self, path: &str, body: &Value) -> Answer {
        let cookie = format!("orch_csrf={}", self.csrf);
        request(
            &self.addr,
            "POST",
            path,
            &[
                ("Cookie", &cookie),
                ("X-CSRF-Token", &self.csrf),
                ("Content-Type", "application/json"),
            ],
            &body.to_string(),
        )
    }

    /// Polls the run until `done` says so.
    fn wait_run(&self, run_id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let run = self.get(&format!("/api/v1/runs/{}", encode(run_id))).json();
            if done(&run) {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {run_id} never {what}: {run:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn ended(run: &Value) -> bool {
    run["state"] == "success" || run["state"] == "failed"
}

fn task<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .find(|t| t["task_id"] == id)
        .unwrap_or_else(|| panic!("no task {id} in {run:#}"))
}

const CHAIN: &str = r#"id: web_chain
schedule: "@daily"
start_date: 2026-11-01
catchup: false
params: { limit: 10, greeting: hello }
tasks:
  - id: a
    kind: shell
    with: { command: "echo '<script>alert(1)</script>' {{ params.greeting }}" }
  - id: b
    kind: shell
    depends_on: [a]
    with: { command: "echo orch:rows=3" }
"#;

const SLEEPER: &str = r#"id: web_sleep
tasks:
  - id: nap
    kind: shell
    with: { command: "echo napping; exec sleep 37" }
"#;

#[test]
fn serving_beyond_loopback_needs_a_token() {
    let home = Home::new();
    let out = home.orch(&["serve", "--listen", "0.0.0.0:0"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("without a token") && err.contains("ORCH_API_TOKEN"),
        "{err}"
    );

    let out = home.orch(&["serve", "--listen", "nowhere"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--listen: `nowhere` is not an address"),
        "{}",
        text(&out.stderr)
    );

    // With a token the same address is served.
    let web = serve_web(&home, "0.0.0.0", &[("ORCH_API_TOKEN", "t0ken")]);
    let port = web.addr.rsplit(':').next().expect("port");
    let health = request(&format!("127.0.0.1:{port}"), "GET", "/healthz", &[], "");
    assert_eq!(health.status, 200, "{health:?}");
}

#[test]
fn tokens_sessions_csrf_and_loopback_names_decide_access() {
    let home = Home::new();
    home.write_dag("web_chain", CHAIN);
    let secret = "correct-horse-battery";
    let web = serve_web(&home, "127.0.0.1", &[("ORCH_API_TOKEN", secret)]);
    let addr = web.addr.as_str();
    let bearer = format!("Bearer {secret}");

    // No token, a wrong one, the right one.
    assert_eq!(request(addr, "GET", "/api/v1/dags", &[], "").status, 401);
    assert_eq!(
        request(
            addr,
            "GET",
            "/api/v1/dags",
            &[("Authorization", "Bearer nope")],
            ""
        )
        .status,
        401
    );
    assert_eq!(request(addr, "GET", "/metrics", &[], "").status, 401);
    let dags = request(
        addr,
        "GET",
        "/api/v1/dags",
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(dags.status, 200, "{dags:?}");
    assert_eq!(dags.json()["dags"][0]["dag_id"], "web_chain");
    // Health answers anyone, and pages send people to sign in.
    assert_eq!(request(addr, "GET", "/healthz", &[], "").status, 200);
    let page = request(addr, "GET", "/dags/web_chain", &[], "");
    assert_eq!(page.status, 303);
    assert!(
        page.head
            .contains("location: /login?next=%2Fdags%2Fweb_chain"),
        "{}",
        page.head
    );

    // A bearer request changes things without a CSRF header (no browser sends it by itself).
    let made = request(
        addr,
        "POST",
        "/api/v1/dags/web_chain/runs",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        "{}",
    );
    assert_eq!(made.status, 201, "{made:?}");

    // Signing in: a wrong token, then the right one.
    let form = "application/x-www-form-urlencoded";
    let wrong = request(
        addr,
        "POST",
        "/login",
        &[("Content-Type", form)],
        "name=ada&token=nope&next=%2F",
    );
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("Wrong token"));
    let foreign = request(
        addr,
        "POST",
        "/login",
        &[("Content-Type", form), ("Origin", "http://evil.example")],
        &format!("name=ada&token={secret}"),
    );
    assert_eq!(
        foreign.status, 403,
        "a sign-in posted from another site is refused"
    );
    let signed = request(
        addr,
        "POST",
        "/login",
        &[("Content-Type", form)],
        &format!("name=ada&token={secret}&next=%2Fdags%2Fweb_chain"),
    );
    assert_eq!(signed.status, 303, "{signed:?}");
    assert!(signed.head.contains("location: /dags/web_chain"));
    let session = signed.cookie("orch_session").expect("session cookie");
    let csrf = signed.cookie("orch_csrf").expect("csrf cookie");
    assert!(
        signed.head.contains("HttpOnly; SameSite=Strict"),
        "{}",
        signed.head
    );
    let cookies = format!("orch_session={session}; orch_csrf={csrf}");
    let who = request(addr, "GET", "/api/v1/session", &[("Cookie", &cookies)], "");
    assert_eq!(who.json()["user"], "ada");

    // A session's change needs the CSRF header, equal to its token.
    let json_type = ("Content-Type", "application/json");
    let no_csrf = request(
        addr,
        "POST",
        "/api/v1/dags/web_chain/pause",
        &[("Cookie", &cookies), json_type],
        "{}",
    );
    assert_eq!(no_csrf.status, 403, "{no_csrf:?}");
    let bad_csrf = request(
        addr,
        "POST",
        "/api/v1/dags/web_chain/pause",
        &[("Cookie", &cookies), ("X-CSRF-Token", "forged"), json_type],
        "{}",
    );
    assert_eq!(bad_csrf.status, 403);
    let paused = request(
        addr,
        "POST",
        "/api/v1/dags/web_chain/pause",
        &[("Cookie", &cookies), ("X-CSRF-Token", &csrf), json_type],
        "{}",
    );
    assert_eq!(paused.status, 200, "{paused:?}");
    assert_eq!(paused.json()["paused"], true);
    // The pause is recorded with who did it, from where.
    let actions = crate::support::block_on(async {
        let store = orch::store::Store::open(&home.database_url())
            .await
            .expect("store");
        let made_id = made.json()["run_id"].as_str().expect("run id").to_string();
        store.run_actions(&made_id).await.expect("actions")
    });
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0].action, "trigger");
    assert_eq!(actions[0].actor, "api");
    assert!(actions[0].source.starts_with("127.0.0.1:"));

    // Signing out ends the session.
    let out = request(
        addr,
        "POST",
        "/logout",
        &[("Cookie", &cookies), ("X-CSRF-Token", &csrf)],
        "",
    );
    assert_eq!(out.status, 204);
    assert_eq!(
        request(addr, "GET", "/api/v1/dags", &[("Cookie", &cookies)], "").status,
        401
    );
    // The token never reaches the log.
    let mut server = web.server;
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(20)));
    assert!(
        !server.log.join("\n").contains(secret),
        "the token is in the log"
    );
}

#[test]
fn without_a_token_only_loopback_names_and_csrf_checked_changes_pass() {
    let home = Home::new();
    home.write_dag("web_chain", CHAIN);
    let web = serve_web(&home, "127.0.0.1", &[]);
    let addr = web.addr.as_str();
    assert_eq!(request(addr, "GET", "/api/v1/dags", &[], "").status, 200);
    // A page of another site reaching 127.0.0.1 through its own name (DNS rebinding).
    let rebound = request(
        addr,
        "GET",
        "/api/v1/dags",
        &[("Host", "evil.example:8080")],
        "",
    );
    assert_eq!(rebound.status, 403);
    let blind = request(
        addr,
        "POST",
        "/api/v1/dags/web_chain/runs",
        &[("Content-Type", "application/json")],
        "{}",
    );
    assert_eq!(
        blind.status, 403,
        "a change without the CSRF header is refused"
    );
    let local = Local::new(addr);
    assert_eq!(
        local.post("/api/v1/dags/web_chain/runs", &json!({})).status,
        201
    );
    let page = local.get("/runs/x");
    assert!(
        page.head
            .to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'; script-src 'self'"),
        "{}",
        page.head
    );
}

#[test]
fn api_triggers_lists_shows_logs_clears_marks_and_backfills() {
    let home = Home::new();
    home.write_dag("web_chain", CHAIN);
    let web = serve_web(&home, "127.0.0.1", &[]);
    let api = Local::new(&web.addr);

    // A conf value of the wrong type names the param; a bad date names the field.
    let bad = api.post(
        "/api/v1/dags/web_chain/runs",
        &json!({ "conf": { "limit": "ten" }, "logical_date": "yesterday" }),
    );
    assert_eq!(bad.status, 422, "{bad:?}");
    let fields = &bad.json()["field_errors"];
    assert!(
        fields["limit"]
            .as_str()
            .expect("limit error")
            .contains("must be an integer"),
        "{fields}"
    );
    assert!(fields["logical_date"].is_string(), "{fields}");
    assert_eq!(api.post("/api/v1/dags/nope/runs", &json!({})).status, 404);

    let made = api.post(
        "/api/v1/dags/web_chain/runs",
        &json!({ "conf": { "greeting": "hi" }, "logical_date": "2026-11-20" }),
    );
    assert_eq!(made.status, 201, "{made:?}");
    let run_id = made.json()["run_id"].as_str().expect("run id").to_string();
    let run = api.wait_run(&run_id, "ended", ended);
    assert_eq!(run["state"], "success", "{run:#}");
    assert_eq!(run["conf"]["greeting"], "hi");
    assert_eq!(task(&run, "b")["attempts"][0]["rows"], 3);
    assert_eq!(run["actions"][0]["action"], "trigger");
    assert_eq!(run["actions"][0]["actor"], "local");
    // The same contract as `orch runs show --json`, plus the actions.
    let mut cli = home.run_json(&run_id);
    let mut api_run = run.clone();
    api_run.as_object_mut().expect("object").remove("actions");
    cli.as_object_mut().expect("object");
    assert_eq!(api_run, cli);

    // The log, as text, by range and followed to its end.
    let base = format!("/api/v1/runs/{}/tasks/a/attempts/1/log", encode(&run_id));
    let log = api.get(&base).json();
    assert!(
        log["text"]
            .as_str()
            .expect("text")
            .contains("<script>alert(1)</script> hi"),
        "{log}"
    );
    assert_eq!(log["finished"], true);
    let part = api.get(&format!("{base}?offset=5&limit=10")).json();
    assert_eq!(part["text"].as_str().expect("text").len(), 10);
    assert_eq!(part["next_offset"], 15);
    let follow = api.get(&format!("{base}/follow"));
    assert!(
        follow.body.contains("event: log") && follow.body.contains("event: end"),
        "{}",
        follow.body
    );
    assert!(follow.body.contains(r#""state":"success""#));
    assert_eq!(
        api.get(&format!(
            "/api/v1/runs/{}/tasks/a/attempts/9/log",
            encode(&run_id)
        ))
        .status,
        404
    );

    // The grid and the DAG.
    let grid = api.get("/api/v1/dags/web_chain/grid?runs=25").json();
    assert_eq!(grid["tasks"], json!(["a", "b"]));
    let column = grid["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .find(|r| r["run_id"] == run_id.as_str())
        .expect("our run in the grid");
    assert_eq!(column["tasks"]["b"]["state"], "success");
    let dag = api.get("/api/v1/dags/web_chain").json();
    assert_eq!(dag["tasks"][1]["depends_on"], json!(["a"]));
    assert!(
        dag["source"]
            .as_str()
            .expect("source")
            .contains("id: web_chain")
    );
    assert_eq!(dag["params"].as_array().expect("params").len(), 2);

    // Clear one task: it and its downstream run again with a fresh retry budget; `a` does not.
    let cleared = api.post(
        &format!("/api/v1/runs/{}/clear", encode(&run_id)),
        &json!({ "task_id": "b" }),
    );
    assert_eq!(cleared.status, 200, "{cleared:?}");
    let run = api.wait_run(&run_id, "ran b again", |r| {
        ended(r)
            && task(r, "b")["attempts"]
                .as_array()
                .is_some_and(|a| a.len() == 2)
    });
    assert_eq!(run["state"], "success");
    assert_eq!(
        task(&run, "a")["attempts"]
            .as_array()
            .expect("attempts")
            .len(),
        1
    );
    // Clearing a running or unknown thing is refused, with why.
    assert_eq!(api.post("/api/v1/runs/nope/clear", &json!({})).status, 404);

    // Mark a task failed: the run follows.
    let marked = api.post(
        &format!("/api/v1/runs/{}/tasks/a/mark", encode(&run_id)),
        &json!({ "state": "failed" }),
    );
    assert_eq!(marked.status, 200, "{marked:?}");
    assert_eq!(marked.json()["state"], "failed");
    assert_eq!(
        api.post(
            &format!("/api/v1/runs/{}/tasks/a/mark", encode(&run_id)),
            &json!({ "state": "running" })
        )
        .status,
        400
    );
    let run = api.get(&format!("/api/v1/runs/{}", encode(&run_id))).json();
    assert_eq!(task(&run, "a")["state"], "failed");
    let actions: Vec<&str> = run["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| a["action"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(actions, ["trigger", "clear", "mark failed"]);

    // Listing with filters and cursor paging.
    let second = api.post("/api/v1/dags/web_chain/runs", &json!({})).json()["run_id"]
        .as_str()
        .expect("id")
        .to_string();
    api.wait_run(&second, "ended", ended);
    let page1 = api
        .get("/api/v1/runs?dag_id=web_chain&run_type=manual&limit=1")
        .json();
    assert_eq!(page1["runs"][0]["run_id"], second.as_str());
    let cursor = page1["next_cursor"].as_str().expect("a next page");
    let page2 = api
        .get(&format!(
            "/api/v1/runs?dag_id=web_chain&run_type=manual&limit=1&cursor={cursor}"
        ))
        .json();
    assert_eq!(page2["runs"][0]["run_id"], run_id.as_str());
    let failed = api.get("/api/v1/runs?dag_id=web_chain&state=failed").json();
    assert_eq!(failed["runs"].as_array().expect("runs").len(), 1);
    let dated = api
        .get("/api/v1/runs?dag_id=web_chain&run_type=manual&since=2026-11-20&until=2026-11-21")
        .json();
    assert_eq!(dated["runs"].as_array().expect("runs").len(), 1);
    assert_eq!(api.get("/api/v1/runs?state=bogus").status, 400);
    // A query string that does not parse is refused in the API's JSON, naming the parameter.
    let malformed = api.get("/api/v1/runs?limit=many");
    assert_eq!(malformed.status, 400);
    let error = malformed.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("limit"), "{error}");

    // The DAG list: recent runs and the pause flag, in one answer.
    assert_eq!(
        api.post("/api/v1/dags/web_chain/pause", &json!({})).status,
        200
    );
    let list = api.get("/api/v1/dags").json();
    assert_eq!(list["dags"][0]["paused"], true);
    assert!(
        list["dags"][0]["recent_runs"]
            .as_array()
            .expect("recent")
            .len()
            >= 2
    );
    assert_eq!(
        api.post("/api/v1/dags/web_chain/unpause", &json!({}))
            .status,
        200
    );

    // A backfill through the API, and its progress.
    let backfill = api.post(
        "/api/v1/backfills",
        &json!({ "dag_id": "web_chain", "start": "2026-11-02", "end": "2026-11-03" }),
    );
    assert_eq!(backfill.status, 201, "{backfill:?}");
    let id = backfill.json()["backfill"]["backfill_id"]
        .as_str()
        .expect("id")
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let progress = api
            .get(&format!("/api/v1/backfills/{}", encode(&id)))
            .json();
        if progress["done"] == true {
            assert_eq!(progress["by_state"]["success"], 2, "{progress}");
            break;
        }
        assert!(Instant::now() < deadline, "backfill never done: {progress}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let bad = api.post(
        "/api/v1/backfills",
        &json!({ "dag_id": "web_chain", "start": "2026-11-05", "end": "2026-11-01" }),
    );
    assert_eq!(bad.status, 422);

    // Health, metrics, the OpenAPI document, streams and the data page's source.
    let health = api.get("/healthz").json();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["database"]["reachable"], true);
    let metrics = api.get("/metrics");
    assert!(metrics.head.contains("text/plain; version=0.0.4"));
    // Five attempts of `b` at least: the first run, its clear, another run, two backfilled
    // (and the scheduler's own run of yesterday).
    let counter = |name: &str| -> u64 {
        let line = metrics
            .body
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in\n{}", metrics.body));
        line.rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a count")
    };
    let b_attempts =
        counter(r#"orch_task_attempts_total{dag_id="web_chain",task_id="b",state="success"}"#);
    assert!(b_attempts >= 5, "{b_attempts}");
    assert_eq!(
        counter(r#"orch_rows_written_total{dag_id="web_chain",task_id="b"}"#),
        3 * b_attempts
    );
    for needle in [
        "orch_task_attempt_duration_seconds_bucket{dag_id=\"web_chain\",task_id=\"a\",le=\"+Inf\"}",
        "orch_scheduler_leader 1",
        "process_resident_memory_bytes ",
    ] {
        assert!(
            metrics.body.contains(needle),
            "{needle} not in\n{}",
            metrics.body
        );
    }
    let openapi = api.get("/api/v1/openapi.json").json();
    assert!(openapi["paths"]["/runs/{run_id}/cancel"]["post"].is_object());
    assert_eq!(api.get("/api/v1/streams").json(), json!({ "streams": [] }));
    assert_eq!(api.get("/api/v1/data/trades").json()["available"], false);
    assert_eq!(api.get("/api/v1/nothing").status, 404);
}

#[test]
fn cancelling_a_running_run_stops_its_attempt_at_once() {
    let home = Home::new();
    home.write_dag("web_sleep", SLEEPER);
    let web = serve_web(&home, "127.0.0.1", &[]);
    let api = Local::new(&web.addr);
    let run_id = api.post("/api/v1/dags/web_sleep/runs", &json!({})).json()["run_id"]
        .as_str()
        .expect("id")
        .to_string();
    let path = format!("/api/v1/runs/{}/tasks/nap/attempts/1/log", encode(&run_id));
    // Running: its output is there to read while it goes on.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = api.get(&path);
        if log.status == 200
            && log.json()["text"]
                .as_str()
                .is_some_and(|t| t.contains("napping"))
        {
            assert_eq!(log.json()["finished"], false);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the attempt never started: {log:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Followed live: output while it runs, then its end.
    let follow = {
        let (addr, path) = (api.addr.clone(), format!("{path}/follow"));
        std::thread::spawn(move || request(&addr, "GET", &path, &[], "").body)
    };
    let asked = Instant::now();
    let cancelled = api.post(
        &format!("/api/v1/runs/{}/cancel", encode(&run_id)),
        &json!({}),
    );
    assert_eq!(cancelled.status, 200, "{cancelled:?}");
    let run = api.wait_run(&run_id, "ended", ended);
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "the cancel took {:?}",
        asked.elapsed()
    );
    assert_eq!(run["state"], "failed");
    assert!(
        run["note"]
            .as_str()
            .expect("note")
            .starts_with("cancelled by local from 127.0.0.1:"),
        "{run:#}"
    );
    let attempt = &task(&run, "nap")["attempts"][0];
    assert!(
        attempt["error"]
            .as_str()
            .expect("error")
            .contains("cancelled by local"),
        "{attempt}"
    );
    assert_eq!(
        task(&run, "nap")["attempts"]
            .as_array()
            .expect("attempts")
            .len(),
        1,
        "a cancelled task is not retried"
    );
    // The sleep itself is gone: the worker stopped it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::process::Command::new("pgrep")
        .args(["-f", "sleep 37"])
        .status()
        .expect("pgrep")
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "the cancelled command still runs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let followed = follow.join().expect("follow");
    let (log_at, end_at) = (followed.find("event: log"), followed.find("event: end"));
    assert!(
        log_at.is_some_and(|l| end_at.is_some_and(|e| l < e)),
        "{followed}"
    );
    assert!(
        followed.contains("napping") && followed.contains(r#""state":"failed""#),
        "{followed}"
    );
    assert_eq!(
        api.post(
            &format!("/api/v1/runs/{}/cancel", encode(&run_id)),
            &json!({})
        )
        .status,
        409
    );
    assert_eq!(run["actions"][1]["action"], "cancel");
}

#[test]
fn streams_show_their_latest_report_in_the_api_and_the_metrics() {
    let home = Home::new();
    std::fs::write(
        home.file("dags/trades.yaml"),
        "id: live_trades\nstream:\n  source: { kind: binance.trades, symbols: [BTCUSDT, ARBUSDT] }\n  sink: { table: raw_trades }\n",
    )
    .expect("stream file");
    // Its exchange is a closed port: the report checked is one written as a stream process
    // writes it.
    let closed = [
        ("BINANCE_WS_URL", "ws://127.0.0.1:9"),
        ("BINANCE_API_URL", "http://127.0.0.1:9"),
    ];
    let web = serve_web(&home, "127.0.0.1", &closed);
    let report = json!({
        "trades_committed": 1234, "trades_per_second": 12.5, "last_trade_time": 1_764_000_000_000_i64,
        "lag_p50_ms": 40, "lag_p99_ms": 180, "gaps_detected": 2, "gap_trades_filled": 17,
        "malformed_frames": 0, "reconnects": 3
    });
    home.sql(&format!(
        "INSERT INTO stream_state (stream_id, owner, state, report, updated_at) VALUES ('saved_stream', 'x', 'connected', '{report}', '{}')
         ON CONFLICT (stream_id) DO NOTHING",
        orch::store::timestamp::format(chrono::Utc::now())
    ));
    let streams = request(&web.addr, "GET", "/api/v1/streams", &[], "").json();
    let all = streams["streams"].as_array().expect("streams");
    let saved = all
        .iter()
        .find(|s| s["stream_id"] == "saved_stream")
        .expect("the saved report");
    assert_eq!(saved["state"], "connected");
    assert_eq!(saved["trades_committed"], 1234);
    assert_eq!(saved["lag_p99_ms"], 180);
    assert_eq!(saved["gap_trades_filled"], 17);
    let defined = all
        .iter()
        .find(|s| s["stream_id"] == "live_trades")
        .expect("the stream file");
    assert_eq!(defined["symbols"], json!(["BTCUSDT", "ARBUSDT"]));
    let metrics = request(&web.addr, "GET", "/metrics", &[], "").body;
    for needle in [
        r#"orch_stream_trades_committed_total{stream="saved_stream"} 1234"#,
        r#"orch_stream_lag_p99_seconds{stream="saved_stream"} 0.18"#,
        r#"orch_stream_reconnects_total{stream="saved_stream"} 3"#,
    ] {
        assert!(metrics.contains(needle), "{needle} not in\n{metrics}");
    }
}

#[test]
fn the_api_lists_pages_and_draws_grids_on_postgresql() {
    let Some(home) = Home::postgres("web_api") else {
        return;
    };
    // Unscheduled here, so that only the runs made below are listed.
    home.write_dag("web_chain", &CHAIN.replace("schedule: \"@daily\"\n", ""));
    home.write_dag("web_sleep", SLEEPER);
    let web = serve_web(&home, "127.0.0.1", &[]);
    let api = Local::new(&web.addr);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let made = api.post("/api/v1/dags/web_chain/runs", &json!({}));
        assert_eq!(made.status, 201, "{made:?}");
        ids.push(made.json()["run_id"].as_str().expect("id").to_string());
    }
    for id in &ids {
        assert_eq!(api.wait_run(id, "ended", ended)["state"], "success");
    }
    // A trigger is one statement on PostgreSQL: the run, its tasks and who asked, together.
    let first = api.get(&format!("/api/v1/runs/{}", ids[0])).json();
    assert_eq!(first["actions"][0]["action"], "trigger", "{first:#}");
    assert_eq!(first["actions"][0]["actor"], "local", "{first:#}");
    assert_eq!(
        first["tasks"].as_array().map(Vec::len),
        Some(2),
        "{first:#}"
    );
    let list = api.get("/api/v1/dags").json();
    let chain = list["dags"]
        .as_array()
        .expect("dags")
        .iter()
        .find(|d| d["dag_id"] == "web_chain")
        .expect("chain");
    assert!(
        chain["recent_runs"].as_array().expect("recent").len() >= 3,
        "{chain}"
    );
    assert_eq!(
        chain["recent_runs"][0]["run_id"],
        ids[2].as_str(),
        "newest first"
    );
    let grid = api.get("/api/v1/dags/web_chain/grid?runs=2").json();
    assert_eq!(grid["runs"].as_array().expect("runs").len(), 2);
    assert_eq!(
        grid["runs"][1]["run_id"],
        ids[2].as_str(),
        "oldest first, the newest last"
    );
    assert_eq!(grid["runs"][1]["tasks"]["b"]["state"], "success");
    let page1 = api
        .get("/api/v1/runs?dag_id=web_chain&run_type=manual&limit=2")
        .json();
    let cursor = page1["next_cursor"].as_str().expect("more");
    let page2 = api
        .get(&format!(
            "/api/v1/runs?dag_id=web_chain&run_type=manual&limit=2&cursor={cursor}"
        ))
        .json();
    assert_eq!(page2["runs"][0]["run_id"], ids[0].as_str());
    // A queued run cancelled at once, on PostgreSQL's notifications.
    let sleeper = api.post("/api/v1/dags/web_sleep/runs", &json!({})).json()["run_id"]
        .as_str()
        .expect("id")
        .to_string();
    api.wait_run(&sleeper, "running", |r| {
        task(r, "nap")["state"] == "running"
    });
    assert_eq!(
        api.post(
            &format!("/api/v1/runs/{}/cancel", encode(&sleeper)),
            &json!({})
        )
        .status,
        200
    );
    let run = api.wait_run(&sleeper, "ended", ended);
    assert!(
        run["note"]
            .as_str()
            .expect("note")
            .starts_with("cancelled by local"),
        "{run:#}"
    );
}
