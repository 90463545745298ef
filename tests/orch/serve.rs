//! `orch serve` with `orch trigger`, hot reload, the single-scheduler lock and SIGTERM.

use std::time::{Duration, Instant};

use crate::support::{Home, attempts, last_line, task_state, text, wait_for_file};

const CHAIN3: &str = r#"
tasks:
  - { id: a, kind: noop }
  - { id: b, kind: shell, depends_on: [a], with: { command: "echo 'orch:rows=7'" } }
  - { id: c, kind: noop, depends_on: [b] }
"#;

#[test]
fn trigger_wait_runs_through_the_server() {
    trigger_wait_runs_through_the_server_with(&Home::new());
}

/// The scenario, on any metadata backend.
pub fn trigger_wait_runs_through_the_server_with(home: &Home) {
    home.write_dag("chain3", CHAIN3);
    home.write_dag(
        "fails",
        "tasks: [{id: x, kind: shell, with: {command: 'exit 1'}}]\n",
    );
    let _server = home.serve();

    let out = home.orch(&["trigger", "chain3", "--wait"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run_id = last_line(&out);
    let run = home.run_json(&run_id);
    assert_eq!(run["state"], "success");
    assert_eq!(attempts(&run, "b")[0]["rows"], 7);

    let out = home.orch(&["trigger", "fails", "--wait"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed run must fail `trigger --wait`"
    );
    assert!(text(&out.stderr).contains("failed"));
}

#[test]
fn trigger_without_a_server_queues_the_run_for_the_next_one() {
    let home = Home::new();
    home.write_dag("chain3", CHAIN3);
    let out = home.orch(&["trigger", "chain3"]);
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("no `orch serve` is running"));
    let run_id = last_line(&out);
    assert_eq!(home.run_json(&run_id)["state"], "queued");

    let _server = home.serve();
    assert_eq!(
        home.wait_for_run(&run_id, Duration::from_secs(20))["state"],
        "success"
    );
}

#[test]
fn a_second_server_on_the_same_home_refuses_to_start() {
    let home = Home::new();
    let _server = home.serve();
    let out = home.orch(&["serve"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("another `orch serve`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn dag_files_reload_within_two_seconds_and_a_broken_file_stops_only_its_dag() {
    let home = Home::new();
    home.write_dag("steady", CHAIN3);
    let mut server = home.serve();

    let written = Instant::now();
    home.write_dag(
        "added",
        "tasks: [{id: only, kind: shell, with: {command: 'echo v1'}}]\n",
    );
    server.wait_for_log_all(&["DAG file loaded", "added.yaml"], Duration::from_secs(5));
    assert!(
        written.elapsed() < Duration::from_millis(2500),
        "reload took {:?}",
        written.elapsed()
    );
    let out = home.orch(&["trigger", "added", "--wait"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    home.write_dag("added", "tasks: [{id: only, kind: nope}]\n");
    let line = server.wait_for_log_all(
        &["DAG file not loaded", "added.yaml"],
        Duration::from_secs(5),
    );
    assert!(line.contains("unknown kind `nope`"), "{line}");
    // The other DAGs keep running.
    let out = home.orch(&["trigger", "steady", "--wait"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    home.write_dag(
        "added",
        "tasks: [{id: only, kind: shell, with: {command: 'echo v2'}}]\n",
    );
    server.wait_for_log_all(&["DAG file fixed", "added.yaml"], Duration::from_secs(5));
    let out = home.orch(&["trigger", "added", "--wait"]);
    assert!(out.status.success());
    let run = home.run_json(&last_line(&out));
    let log = std::fs::read_to_string(
        attempts(&run, "only")[0]["log_path"]
            .as_str()
            .expect("path"),
    )
    .expect("log");
    assert!(log.contains("v2"), "{log}");

    std::fs::remove_file(home.file("dags/added.yaml")).expect("remove");
    server.wait_for_log_all(&["DAG file removed", "added.yaml"], Duration::from_secs(5));
}

#[test]
fn a_running_run_keeps_the_definition_it_started_with() {
    let home = Home::new();
    let dag = |message: &str| {
        format!(
            r#"
tasks:
  - {{ id: gate, kind: shell, with: {{ command: "touch at_gate; while [ ! -f open ]; do sleep 0.02; done" }} }}
  - {{ id: after, kind: shell, depends_on: [gate], with: {{ command: "echo {message}" }} }}
"#
        )
    };
    home.write_dag("versioned", &dag("old-definition"));
    let mut server = home.serve();
    let run_id = last_line(&home.orch(&["trigger", "versioned"]));
    wait_for_file(&home.file("at_gate"), Duration::from_secs(10));

    home.write_dag("versioned", &dag("new-definition"));
    server.wait_for_log_all(
        &["DAG file loaded", "versioned.yaml"],
        Duration::from_secs(5),
    );
    std::fs::write(home.file("open"), "").expect("open the gate");

    let run = home.wait_for_run(&run_id, Duration::from_secs(20));
    assert_eq!(run["state"], "success");
    let log = std::fs::read_to_string(
        attempts(&run, "after")[0]["log_path"]
            .as_str()
            .expect("path"),
    )
    .expect("log");
    assert!(log.contains("old-definition"), "{log}");
}

#[test]
fn sigterm_lets_running_tasks_finish_starts_nothing_new_and_the_next_server_resumes() {
    let home = Home::new();
    home.write_dag(
        "draining",
        r#"
tasks:
  - { id: long, kind: shell, with: { command: "touch started; while [ ! -f finish ]; do sleep 0.02; done; echo 'orch:rows=1'" } }
  - { id: next, kind: noop, depends_on: [long] }
"#,
    );
    let mut server = home.serve();
    let run_id = last_line(&home.orch(&["trigger", "draining"]));
    wait_for_file(&home.file("started"), Duration::from_secs(10));
    server.signal("TERM");
    server.wait_for_log("shutting down", Duration::from_secs(5));
    std::fs::write(home.file("finish"), "").expect("let the task finish");
    assert!(
        server.wait_exit(Duration::from_secs(15)),
        "serve must exit cleanly"
    );

    let run = home.run_json(&run_id);
    assert_eq!(
        run["state"], "running",
        "the run is left for the next server: {run:#}"
    );
    assert_eq!(task_state(&run, "long"), "success");
    assert_eq!(attempts(&run, "long")[0]["rows"], 1);
    assert_eq!(
        task_state(&run, "next"),
        "queued",
        "nothing new starts while draining"
    );

    let _server = home.serve();
    let run = home.wait_for_run(&run_id, Duration::from_secs(20));
    assert_eq!(run["state"], "success");
    assert_eq!(
        attempts(&run, "long").len(),
        1,
        "a finished task is not run again"
    );
}

#[test]
fn scheduled_runs_catch_up_from_start_date() {
    scheduled_runs_catch_up_from_start_date_with(&Home::new());
}

/// The scenario, on any metadata backend.
pub fn scheduled_runs_catch_up_from_start_date_with(home: &Home) {
    let start = (chrono::Utc::now() - chrono::Duration::days(3)).format("%Y-%m-%d");
    home.write_dag(
        "daily",
        &format!("schedule: '@daily'\nstart_date: {start}\ncatchup: true\nmax_active_runs: 2\ntasks: [{{id: a, kind: noop}}]\n"),
    );
    let mut server = home.serve();
    // Three complete days since start_date: three scheduled runs, one per logical date.
    let deadline = Instant::now() + Duration::from_secs(20);
    let runs = loop {
        let out = home.orch(&["runs", "list", "--dag", "daily", "--json"]);
        let runs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
        if runs.len() >= 3 && runs.iter().all(|r| r["state"] == "success") {
            break runs;
        }
        assert!(Instant::now() < deadline, "catchup incomplete: {runs:#?}");
        server.wait_for_log("run finished", Duration::from_secs(10));
    };
    assert_eq!(runs.len(), 3, "{runs:#?}");
    let mut dates: Vec<&str> = runs
        .iter()
        .map(|r| r["logical_date"].as_str().expect("date"))
        .collect();
    dates.sort();
    assert!(dates[0].starts_with(&start.to_string()), "{dates:?}");
    assert!(runs.iter().all(|r| r["run_type"] == "scheduled"));
}
