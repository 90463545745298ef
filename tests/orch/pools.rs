//! `pools:`: slots shared across DAGs, taken in priority order.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::support::{Home, Server, attempts, last_line, task_state, text};

fn time(value: &serde_json::Value) -> DateTime<Utc> {
    value
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("a time: {value}"))
}

#[test]
fn a_pool_holds_two_dags_to_its_size_and_frees_slots_by_priority() {
    let home = Home::new();
    std::fs::write(home.file("orch.yaml"), "pools: { api: 2, solo: 1 }\n").expect("orch.yaml");
    for dag in ["pool_a", "pool_b"] {
        home.write_dag(
            dag,
            &format!(
                "id: {dag}\ntasks:\n  - {{id: t1, kind: shell, pool: api, with: {{command: 'sleep 0.3'}}}}\n  - {{id: t2, kind: shell, pool: api, with: {{command: 'sleep 0.3'}}}}\n  - {{id: t3, kind: shell, pool: api, with: {{command: 'sleep 0.3'}}}}\n"
            ),
        );
    }
    home.write_dag(
        "blocker",
        "id: blocker\ntasks:\n  - {id: hold, kind: shell, pool: solo, with: {command: 'sleep 1'}}\n",
    );
    for (dag, priority) in [("low", 0), ("high", 10)] {
        home.write_dag(
            dag,
            &format!(
                "id: {dag}\ntasks:\n  - {{id: go, kind: noop, pool: solo, priority: {priority}}}\n"
            ),
        );
    }
    let _serve = home.serve();

    // Six tasks of two DAGs at once, with 4 worker slots: never more than 2 in the pool.
    let runs: Vec<String> = ["pool_a", "pool_b"]
        .iter()
        .map(|dag| last_line(&home.orch(&["trigger", dag])))
        .collect();
    let mut spans = Vec::new();
    for run_id in &runs {
        let run = home.wait_for_run(run_id, Duration::from_secs(30));
        assert_eq!(run["state"], "success", "{run:#}");
        for task in ["t1", "t2", "t3"] {
            let a = &attempts(&run, task)[0];
            spans.push((time(&a["started_at"]), time(&a["ended_at"])));
        }
    }
    assert_eq!(
        most_at_once(&spans),
        2,
        "the pool of 2 was used fully and never exceeded: {spans:?}"
    );

    // While the one slot is held, a low then a high priority task wait; the high goes first.
    let blocker = last_line(&home.orch(&["trigger", "blocker"]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while task_state(&home.run_json(&blocker), "hold") != "running" {
        assert!(Instant::now() < deadline, "the blocker never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let low = last_line(&home.orch(&["trigger", "low"]));
    let high = last_line(&home.orch(&["trigger", "high"]));
    let low_run = home.wait_for_run(&low, Duration::from_secs(30));
    let high_run = home.wait_for_run(&high, Duration::from_secs(30));
    let blocked = home.run_json(&blocker);
    let freed = time(&attempts(&blocked, "hold")[0]["ended_at"]);
    let (low_at, high_at) = (
        time(&attempts(&low_run, "go")[0]["started_at"]),
        time(&attempts(&high_run, "go")[0]["started_at"]),
    );
    assert!(
        high_at >= freed && low_at >= freed,
        "both waited for the slot"
    );
    assert!(
        high_at <= low_at,
        "priority 10 went before priority 0: {high_at} vs {low_at}"
    );
}

/// The most attempts whose (start, end) spans overlap at any start.
fn most_at_once(spans: &[(DateTime<Utc>, DateTime<Utc>)]) -> usize {
    spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Three workers on PostgreSQL race for the slots of one pool: pooled claims take turns, so
/// the pool's size holds across processes, not only within one.
#[test]
fn workers_on_postgres_never_take_more_than_a_pools_slots() {
    let Some(home) = Home::postgres("pool_race") else {
        return;
    };
    std::fs::write(home.file("orch.yaml"), "pools: { api: 2 }\n").expect("orch.yaml");
    let mut yaml = String::from("id: racing\nmax_active_tasks: 12\ntasks:\n");
    for t in 0..12 {
        yaml.push_str(&format!(
            "  - {{id: t{t}, kind: shell, pool: api, with: {{command: 'sleep 0.2'}}}}\n"
        ));
    }
    home.write_dag("racing", &yaml);
    let _serve = Server::spawn(
        home.command(&["serve", "--no-worker"]),
        "orch serve started",
    );
    let homes: Vec<Home> = (0..3).map(|_| Home::sharing_database(&home)).collect();
    let _workers: Vec<Server> = homes
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let mut cmd = h.command(&["worker"]);
            cmd.env("ORCH_HOST", format!("worker-{i}"))
                .env("ORCH_PARALLELISM", "4");
            Server::spawn(cmd, "orch worker started")
        })
        .collect();
    let run_id = last_line(&home.orch(&["trigger", "racing"]));
    let run = home.wait_for_run(&run_id, Duration::from_secs(60));
    assert_eq!(run["state"], "success", "{run:#}");
    // Each task's successful attempt, once every one has its end written.
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans: Vec<_> = loop {
        let run = home.run_json(&run_id);
        let ended: Option<Vec<_>> = (0..12)
            .map(|t| {
                attempts(&run, &format!("t{t}"))
                    .iter()
                    .find(|a| a["state"] == "success" && a["ended_at"].is_string())
                    .map(|a| (time(&a["started_at"]), time(&a["ended_at"])))
            })
            .collect();
        if let Some(spans) = ended {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "attempts without an end: {run:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        most_at_once(&spans),
        2,
        "12 slots of workers, 2 in the pool: {spans:?}"
    );
}

#[test]
fn a_bad_pool_is_refused() {
    let home = Home::new();
    std::fs::write(home.file("orch.yaml"), "pools: { api: 0 }\n").expect("orch.yaml");
    let out = home.orch(&["serve"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("pools: pool `api`: a name of [a-z0-9_-]+ with at least 1 slot"),
        "{}",
        text(&out.stderr)
    );
}
