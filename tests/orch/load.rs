//! `orch serve` under a burst of API triggers: every trigger is answered (created, or 429 to
//! come back later), every accepted run ends, the health check answers throughout, and a
//! SIGTERM with a backlog queued stops the server within its grace, the backlog then run by
//! the next server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{Home, block_on};
use crate::web::serve_web;

const TOKEN: &str = "burst-token-0123456789";
const DAG: &str = "max_active_runs: 100000\ntasks:\n  - {id: a, kind: noop}\n  - {id: b, kind: noop, depends_on: [a]}\n";
/// How long a request may go unanswered before it counts as not answered.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);

/// What one trigger got back.
#[derive(Debug, Clone, PartialEq)]
enum Answered {
    Created(String),
    /// 429, with its Retry-After.
    Busy(Option<String>),
    Other(u16, String),
    Unanswered(String),
}

/// One POST of a trigger, on a connection of its own.
fn trigger(addr: &str) -> Answered {
    let mut stream = match TcpStream::connect(addr) {
        Ok(stream) => stream,
        Err(e) => return Answered::Unanswered(format!("connect: {e}")),
    };
    let _ = stream.set_read_timeout(Some(ANSWER_LIMIT));
    let body = "{}";
    let sent = write!(
        stream,
        "POST /api/v1/dags/tp/runs HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = sent {
        return Answered::Unanswered(format!("send: {e}"));
    }
    let mut answer = String::new();
    if let Err(e) = stream.read_to_string(&mut answer) {
        return Answered::Unanswered(format!("read: {e}"));
    }
    let Some((head, body)) = answer.split_once("\r\n\r\n") else {
        return Answered::Unanswered(format!("not an HTTP answer: {answer:?}"));
    };
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    match status {
        201 => {
            let run: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            match run["run_id"].as_str() {
                Some(id) => Answered::Created(id.to_string()),
                None => Answered::Other(status, body.to_string()),
            }
        }
        429 => Answered::Busy(header("retry-after")),
        other => Answered::Other(other, body.to_string()),
    }
}

/// Sends `count` triggers spread evenly over `over` (all at once for zero) from `clients`
/// threads; returns every answer.
fn burst(addr: &str, count: usize, over: Duration, clients: usize) -> Vec<Answered> {
    let started = Instant::now();
    let next = Arc::new(Mutex::new(0usize));
    let answers = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (addr, next, answers) = (addr.to_string(), next.clone(), answers.clone());
            std::thread::spawn(move || {
                loop {
                    let i = {
                        let mut next = next.lock().expect("lock");
                        let i = *next;
                        *next += 1;
                        i
                    };
                    if i >= count {
                        return;
                    }
                    // Paced: each trigger at its time, whether or not the last was answered.
                    let due = started + over.mul_f64(i as f64 / count as f64);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    let answer = trigger(&addr);
                    answers.lock().expect("lock").push(answer);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("client thread");
    }
    Arc::try_unwrap(answers)
        .expect("all clients done")
        .into_inner()
        .expect("lock")
}

/// Asks `/healthz` every 100 ms until stopped; returns the slowest answer, and what went
/// wrong, if anything.
fn watch_health(
    addr: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Duration, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut slowest, mut problems) = (Duration::ZERO, Vec::new());
        while !stop.load(Ordering::SeqCst) {
            let asked = Instant::now();
            let answered = TcpStream::connect(&addr).and_then(|mut stream| {
                stream.set_read_timeout(Some(Duration::from_secs(1)))?;
                write!(
                    stream,
                    "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
                )?;
                let mut answer = String::new();
                stream.read_to_string(&mut answer)?;
                Ok(answer)
            });
            let took = asked.elapsed();
            slowest = slowest.max(took);
            match answered {
                Ok(answer)
                    if answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 503") => {
                }
                Ok(answer) => problems.push(format!("unexpected answer: {answer:?}")),
                Err(e) => problems.push(format!("no answer within 1 s: {e}")),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (slowest, problems)
    })
}

/// The state of every run in the home's history.
fn run_states(home: &Home) -> std::collections::HashMap<String, String> {
    block_on(async {
        let store = orch::store::Store::open(&home.database_url())
            .await
            .expect("store");
        let mut states = std::collections::HashMap::new();
        for state in ["queued", "running", "success", "failed"] {
            let state = orch::store::RunState::parse(state).expect("state");
            for run in store.runs_in_state(state).await.expect("runs").rows {
                states.insert(run.run_id, run.state.to_string());
            }
        }
        states
    })
}

/// Waits until every run of `ids` has ended; returns how long it took.
fn wait_until_ended(home: &Home, ids: &[String], limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let states = run_states(home);
        let open: Vec<&String> = ids
            .iter()
            .filter(|id| {
                !matches!(
                    states.get(*id).map(String::as_str),
                    Some("success" | "failed")
                )
            })
            .collect();
        if open.is_empty() {
            let failed: Vec<&String> = ids.iter().filter(|id| states[*id] != "success").collect();
            assert!(failed.is_empty(), "accepted runs that failed: {failed:?}");
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{} of {} accepted runs had not ended after {limit:?}, e.g. {:?}",
            open.len(),
            ids.len(),
            &open[..open.len().min(3)]
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn created(answers: &[Answered]) -> Vec<String> {
    answers
        .iter()
        .filter_map(|a| match a {
            Answered::Created(id) => Some(id.clone()),
            _ => None,
        })
        .collect()
}

/// 3,000 triggers in 20 s against a server bounded at 300 runs in flight: each is answered,
/// a refusal says when to come back, accepted runs all succeed within a minute, and the
/// health check answers within a second throughout. Then a backlog is queued and SIGTERM
/// stops the server within its grace; the next server runs that backlog, losing no run.
#[test]
fn a_burst_of_triggers_is_answered_completed_and_stopped_within_the_grace() {
    let home = Home::new();
    home.write_dag("tp", DAG);
    std::fs::write(home.file("orch.yaml"), "max_pending_runs: 300\n").expect("orch.yaml");
    let mut web = serve_web(&home, "127.0.0.1", &[("ORCH_API_TOKEN", TOKEN)]);
    let addr = web.addr.clone();
    let stop_health = Arc::new(AtomicBool::new(false));
    let health = watch_health(addr.clone(), stop_health.clone());

    let answers = burst(&addr, 3_000, Duration::from_secs(20), 16);
    let unanswered: Vec<&Answered> = answers
        .iter()
        .filter(|a| matches!(a, Answered::Unanswered(_) | Answered::Other(..)))
        .collect();
    assert!(
        unanswered.is_empty(),
        "{} triggers not answered as expected, e.g. {:?}",
        unanswered.len(),
        &unanswered[..unanswered.len().min(3)]
    );
    let accepted = created(&answers);
    let refused: Vec<&Answered> = answers
        .iter()
        .filter(|a| matches!(a, Answered::Busy(_)))
        .collect();
    assert!(
        accepted.len() >= 300,
        "only {} triggers were accepted",
        accepted.len()
    );
    assert!(
        refused
            .iter()
            .all(|a| *a == &Answered::Busy(Some("1".to_string()))),
        "a 429 without Retry-After: {:?}",
        refused
            .iter()
            .find(|a| **a != &Answered::Busy(Some("1".to_string())))
    );
    eprintln!(
        "{} triggers: {} accepted, {} refused for now",
        answers.len(),
        accepted.len(),
        refused.len()
    );
    let unique: std::collections::HashSet<&String> = accepted.iter().collect();
    assert_eq!(
        unique.len(),
        accepted.len(),
        "two triggers got the same run id"
    );
    wait_until_ended(&home, &accepted, Duration::from_secs(60));

    // A backlog as large as the bound allows, then SIGTERM at once.
    let backlog = created(&burst(&addr, 600, Duration::ZERO, 16));
    assert!(
        !backlog.is_empty(),
        "no run of the second burst was accepted"
    );
    stop_health.store(true, Ordering::SeqCst);
    let (slowest, problems) = health.join().expect("health thread");
    assert!(problems.is_empty(), "/healthz failed: {problems:?}");
    assert!(
        slowest < Duration::from_secs(1),
        "/healthz took {slowest:?}"
    );
    web.server.signal("TERM");
    let asked = Instant::now();
    // serve_web's servers have a grace of 5 s; the last writes and the exit take the rest.
    web.server.wait_exit(Duration::from_secs(7));
    assert!(
        asked.elapsed() < Duration::from_secs(7),
        "stopped after {:?}",
        asked.elapsed()
    );

    // The next server takes over what the first left: every accepted run succeeds.
    let _next = serve_web(&home, "127.0.0.1", &[("ORCH_API_TOKEN", TOKEN)]);
    wait_until_ended(&home, &backlog, Duration::from_secs(60));
}
