//! `on_failure`, `on_success` and `on_retry`: webhooks caught by a local receiver, commands
//! writing what they were told to a file.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::support::{Home, text};

/// One request the receiver got.
#[derive(Debug)]
pub struct Caught {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// An HTTP server on loopback that answers 500 to its first `failures` requests, then 200,
/// and hands every request over.
fn receiver(failures: usize) -> (String, mpsc::Receiver<Caught>) {
    receiver_answering(failures, "")
}

/// The same, answering `answer` as its 200s' JSON body.
pub fn receiver_answering(
    failures: usize,
    answer: &'static str,
) -> (String, mpsc::Receiver<Caught>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            reader.read_line(&mut line).expect("request line");
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut headers = Vec::new();
            let mut length = 0;
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).expect("header");
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((k, v)) = header.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).expect("body");
            let (status, answer) = if n < failures {
                ("500 Internal Server Error", "")
            } else {
                ("200 OK", answer)
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
            let caught = Caught {
                path,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            };
            if tx.send(caught).is_err() {
                break;
            }
        }
    });
    (addr, rx)
}

#[test]
fn failures_retries_and_successes_reach_webhooks_and_commands_and_never_change_the_run() {
    let home = Home::new();
    // The first request fails: the alert is sent again.
    let (addr, caught) = receiver(1);
    let events = home.file("events.txt");
    let log_event = format!(
        r#"printf '%s|%s|%s|%s\n' "$ORCH_EVENT" "$ORCH_TASK_ID" "$ORCH_STATE" "$ORCH_LINK" >> '{}'"#,
        events.display()
    );
    home.write_dag(
        "alerting",
        &format!(
            r#"id: alerting
on_failure:
  - webhook: {{ url: "http://{addr}/run", headers: {{ X-Token: "env:ORCH_TEST_HOOK_TOKEN" }} }}
  - command: {cmd:?}
  - webhook: {{ url: "http://127.0.0.1:9/nobody-listens" }}
on_retry:
  - webhook: {{ url: "http://{addr}/retry", slack: true }}
tasks:
  - id: flaky
    kind: shell
    retries: 1
    retry_delay: 1s
    with: {{ command: "echo 'password=hunter2 and $(whoami)'; echo boom >&2; exit 3" }}
    on_failure:
      - command: {cmd:?}
      - webhook: {{ url: "http://{addr}/task" }}
"#,
            cmd = log_event
        ),
    );
    home.write_dag(
        "alerting_ok",
        &format!("id: alerting_ok\non_success:\n  - command: {log_event:?}\ntasks:\n  - {{id: fine, kind: noop}}\n"),
    );

    let out = home
        .command(&["run", "alerting"])
        .env("ORCH_TEST_HOOK_TOKEN", "tok-123")
        .env("ORCH_PUBLIC_URL", "http://orch.example:8080/")
        .output()
        .expect("orch run");
    assert!(!out.status.success(), "the run fails as its task does");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("alert not sent; giving up"),
        "a notifier that never answers is logged: {stderr}"
    );
    let run_id = stderr
        .lines()
        .chain(text(&out.stdout).lines())
        .find_map(|l| {
            l.strip_prefix("run ")
                .and_then(|r| r.split_whitespace().next())
        })
        .expect("the run id")
        .to_string();
    assert_eq!(
        home.run_json(&run_id)["state"],
        "failed",
        "alerts change nothing"
    );

    // Everything was sent before `orch run` returned.
    let mut got: Vec<Caught> = Vec::new();
    while let Ok(c) = caught.recv_timeout(Duration::from_millis(200)) {
        got.push(c);
    }
    // The task's and the run's alerts go out side by side: in either order.
    let mut paths: Vec<&str> = got.iter().map(|c| c.path.as_str()).collect();
    paths[2..].sort_unstable();
    assert_eq!(
        paths,
        ["/retry", "/retry", "/run", "/task"],
        "the first /retry got a 500 and was sent again"
    );
    let task_at = got.iter().position(|c| c.path == "/task").expect("/task");
    let run_at = got.iter().position(|c| c.path == "/run").expect("/run");
    let slack: Value = serde_json::from_str(&got[1].body).expect("JSON");
    let text_line = slack["text"].as_str().expect("a Slack text");
    assert!(
        text_line.contains("task `flaky`") && text_line.contains("will be retried (attempt 1)"),
        "{text_line}"
    );
    let task: Value = serde_json::from_str(&got[task_at].body).expect("JSON");
    assert_eq!(task["event"], "task_failed");
    assert_eq!(task["attempt"], 2);
    assert!(
        task["error"].as_str().expect("error").contains("status 3"),
        "{task}"
    );
    let tail = task["log_tail"].as_str().expect("a log tail");
    assert!(
        tail.contains("boom") && tail.contains("password=***"),
        "{tail}"
    );
    assert!(!got[task_at].body.contains("hunter2"), "secrets are masked");
    let run: Value = serde_json::from_str(&got[run_at].body).expect("JSON");
    assert_eq!(run["event"], "run_failed");
    assert_eq!(
        run["link"],
        format!(
            "http://orch.example:8080/runs/{}",
            run_id.replace(':', "%3A").replace('+', "%2B")
        )
    );
    assert!(
        got[run_at]
            .headers
            .contains(&("x-token".to_string(), "tok-123".to_string())),
        "{:?}",
        got[run_at].headers
    );

    let out = home.orch(&["run", "alerting_ok"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = std::fs::read_to_string(&events).expect("events file");
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[0].starts_with("task_failed|flaky|failed|"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("run_failed||failed|http://orch.example:8080/runs/"),
        "{lines:?}"
    );
    assert!(lines[2].starts_with("run_succeeded||success|"), "{lines:?}");
}

#[test]
fn a_bad_notifier_fails_validation_with_its_place() {
    let home = Home::new();
    home.write_dag(
        "bad_url",
        "id: bad_url\non_failure:\n  - webhook: { url: \"ftp://x\" }\ntasks:\n  - {id: a, kind: noop}\n",
    );
    home.write_dag(
        "bad_kind",
        "id: bad_kind\ntasks:\n  - id: a\n    kind: noop\n    on_retry:\n      - pager: { to: me }\n",
    );
    let out = home.orch(&["dags", "validate"]);
    assert!(!out.status.success());
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        all.contains("bad_url.yaml:3:3: on_failure: webhook url `ftp://x` must be http or https"),
        "{all}"
    );
    assert!(
        all.contains(
            "bad_kind.yaml:6:9: unknown variant `pager`, expected one of webhook, email, command"
        ),
        "{all}"
    );
}

#[test]
fn a_scheduled_run_past_its_sla_tells_on_sla_miss_and_goes_on() {
    let home = Home::new();
    let events = home.file("sla.txt");
    home.write_dag(
        "late",
        &format!(
            "id: late\nschedule: '* * * * *'\nstart_date: 2026-11-01\ncatchup: false\nsla: 1s\non_sla_miss:\n  - command: {:?}\ntasks:\n  - {{id: slow, kind: shell, with: {{command: 'sleep 2'}}}}\n",
            format!(
                r#"printf '%s|%s|%s\n' "$ORCH_EVENT" "$ORCH_STATE" "$ORCH_ERROR" >> '{}'"#,
                events.display()
            )
        ),
    );
    let mut serve = home.serve();
    // The latest minute's run starts at once; it ends more than 1 s after its interval did.
    let line = serve.wait_for_log(
        "not finished 1s after its data interval ended",
        Duration::from_secs(30),
    );
    let run_id = line
        .split("run_id=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("run id in the log")
        .to_string();
    let run = home.wait_for_run(&run_id, Duration::from_secs(30));
    assert_eq!(run["state"], "success", "an SLA miss does not fail the run");
    crate::support::wait_for_file(&events, Duration::from_secs(10));
    let told = std::fs::read_to_string(&events).expect("events");
    assert!(
        told.starts_with("sla_missed|running|not finished 1s after its data interval ended (sla)"),
        "{told}"
    );

    home.write_dag(
        "sla_alone",
        "id: sla_alone\nsla: 1h\ntasks:\n  - {id: a, kind: noop}\n",
    );
    let out = home.orch(&["dags", "validate"]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains("`sla` and `on_sla_miss` go together"), "{all}");
}
