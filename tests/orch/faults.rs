//! Bad input and faults never stop the scheduler or lose what is stored: impossible dates, a
//! corrupt row, a deleted or corrupt database, a dying executor, a detached daemon, a huge
//! error, a DAG file that is not text or links outside the folder.

use std::time::Duration;

use crate::support::{Home, attempts, last_line, text, wait_for_file};

const QUICK: &str = "tasks: [{id: a, kind: noop}]\n";

#[test]
fn a_logical_date_the_history_cannot_hold_is_refused() {
    let home = Home::new();
    home.write_dag("d", QUICK);
    let out = home.orch(&["trigger", "d", "--logical-date", "9999-12-31"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("10000-01-01") && err.contains("9999-12-31"),
        "{err}"
    );
    let out = home.orch(&["runs", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A row with a value orch cannot read (written by hand, by an older bug, by a broken disk)
/// once made every pass fail and `runs list` error out.
#[test]
fn one_unreadable_run_stops_neither_scheduling_nor_listing() {
    let home = Home::new();
    home.write_dag("d", QUICK);
    home.write_dag("other", QUICK);
    // Creates the history, and a run to copy.
    assert!(home.orch(&["run", "d"]).status.success());
    home.sql(
        "INSERT INTO dag_runs (run_id, dag_id, run_type, logical_date, data_interval_start,
             data_interval_end, conf, state, queued_at)
         VALUES ('d__scheduled__bad', 'd', 'scheduled', '9999-12-31T00:00:00.000000Z',
             '9999-12-31T00:00:00.000000Z', '+10000-01-01T00:00:00.000000Z', '{}', 'queued',
             '2026-11-22T00:00:00.000000Z')",
    );
    let out = home.orch(&["runs", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("d__scheduled__bad"),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("d__manual__"));

    let mut server = home.serve();
    let run_id = last_line(&home.orch(&["trigger", "other"]));
    let run = home.wait_for_run(&run_id, Duration::from_secs(20));
    assert_eq!(run["state"], "success");
    server.wait_for_log("cannot be read", Duration::from_secs(5));
}

/// Deleting orch.db under a running scheduler split the history in two.
#[test]
fn a_scheduler_whose_database_file_is_deleted_stops_with_a_clear_error() {
    let home = Home::new();
    home.write_dag("d", QUICK);
    let mut server = home.serve();
    std::fs::remove_file(home.file("orch.db")).expect("delete orch.db");
    assert!(
        !server.wait_exit(Duration::from_secs(20)),
        "serve exits with an error"
    );
    let log = server.log.join("\n");
    // Deleted, or already replaced by the empty file a new connection created.
    assert!(
        log.contains("orch.db was deleted while orch was using it")
            || log.contains("orch.db was replaced by another file while orch was using it"),
        "{log}"
    );
}

#[test]
fn a_database_file_that_is_not_a_database_is_named_at_once() {
    let home = Home::new();
    std::fs::write(home.file("orch.db"), "not a database at all, just text").expect("write");
    let started = std::time::Instant::now();
    let out = home.orch(&["runs", "list"]);
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no pool timeout"
    );
    let err = text(&out.stderr);
    assert!(err.contains("orch.db is not an SQLite database"), "{err}");
}

/// A run whose executor stopped on a database error stayed `running` under its live owner
/// until a restart. Now it is resumed by its own scheduler once the database works again.
#[test]
fn a_run_whose_executor_dies_is_resumed_by_its_scheduler() {
    let home = Home::new();
    home.write_dag(
        "d",
        r#"
defaults: { retries: 1, retry_delay: 0s }
tasks:
  - { id: a, kind: shell, with: { command: "touch a.$ORCH_ATTEMPT; while [ ! -e go ]; do sleep 0.05; done" } }
  - { id: b, kind: noop, depends_on: [a] }
"#,
    );
    let mut server = home.serve();
    let run_id = last_line(&home.orch(&["trigger", "d"]));
    wait_for_file(&home.file("a.1"), Duration::from_secs(10));
    // The worker reports the attempt, but its end cannot be recorded in the task's state:
    // not a transient error, so the executor dies.
    home.sql("ALTER TABLE task_instances RENAME TO task_instances_away");
    std::fs::write(home.file("go"), "").expect("go");
    server.wait_for_log("a run's executor stopped", Duration::from_secs(20));
    home.sql("ALTER TABLE task_instances_away RENAME TO task_instances");
    let run = home.wait_for_run(&run_id, Duration::from_secs(30));
    assert_eq!(run["state"], "success", "{run:#}");
    server.wait_for_log(
        "resuming a run whose executor stopped",
        Duration::from_secs(5),
    );
}

/// A worker whose report the database refuses keeps it and writes it once it can: the
/// outcome of an attempt that ran is neither lost nor bought with a second run.
#[test]
fn a_report_the_database_refuses_is_written_once_it_can_be() {
    let home = Home::new();
    home.write_dag(
        "d",
        r#"
defaults: { retries: 1, retry_delay: 0s }
tasks:
  - { id: a, kind: shell, with: { command: "touch a.$ORCH_ATTEMPT; while [ ! -e go ]; do sleep 0.05; done; echo 'orch:rows=3'" } }
"#,
    );
    let mut server = home.serve();
    let run_id = last_line(&home.orch(&["trigger", "d"]));
    wait_for_file(&home.file("a.1"), Duration::from_secs(10));
    home.sql("ALTER TABLE task_attempts RENAME TO task_attempts_away");
    std::fs::write(home.file("go"), "").expect("go");
    server.wait_for_log(
        "cannot report an attempt; trying again",
        Duration::from_secs(20),
    );
    home.sql("ALTER TABLE task_attempts_away RENAME TO task_attempts");
    let run = home.wait_for_run(&run_id, Duration::from_secs(30));
    assert_eq!(run["state"], "success", "{run:#}");
    let a = attempts(&run, "a");
    assert_eq!(a.len(), 1, "{run:#}");
    assert_eq!(a[0]["rows"], 3);
    assert!(!home.file("a.2").exists(), "the attempt ran once");
}

/// A shell that exited while a daemon it detached still held its output kept the attempt
/// open until the daemon died (and recorded a timeout).
#[test]
fn an_attempt_ends_when_its_shell_exits_even_if_a_detached_daemon_holds_its_output() {
    let home = Home::new();
    home.write_dag(
        "d",
        r#"
tasks:
  - id: a
    kind: shell
    timeout: 20s
    with: { command: "setsid sh -c 'echo $$ > daemon.pid; sleep 30' & while [ ! -s daemon.pid ]; do sleep 0.05; done; echo started; echo 'orch:rows=2'" }
"#,
    );
    let out = home.orch(&["run", "d"]);
    wait_for_file(&home.file("daemon.pid"), Duration::from_secs(10));
    let daemon = std::fs::read_to_string(home.file("daemon.pid")).expect("daemon pid");
    let killed = std::process::Command::new("kill")
        .arg(daemon.trim())
        .status()
        .expect("kill");
    assert!(killed.success(), "the daemon was still running");
    assert!(out.status.success(), "{}", text(&out.stdout));
    let run = home.run_json(text(&out.stdout).lines().next().expect("run id"));
    let attempt = &attempts(&run, "a")[0];
    assert_eq!(attempt["state"], "success", "{run:#}");
    assert_eq!(attempt["rows"], 2);
}

/// A 50 MB stderr line went whole into orch.db, again on each retry.
#[test]
fn an_attempts_recorded_error_is_a_bounded_head_and_tail() {
    let home = Home::new();
    home.write_dag(
        "d",
        r#"
tasks:
  - { id: a, kind: shell, with: { command: "head -c 5000000 /dev/zero | tr '\\0' x >&2; echo ' the end' >&2; exit 1" } }
"#,
    );
    let out = home.orch(&["run", "d"]);
    assert!(!out.status.success());
    let run = home.run_json(text(&out.stdout).lines().next().expect("run id"));
    let error = attempts(&run, "a")[0]["error"].as_str().expect("error");
    assert!(error.len() < 5000, "{} bytes kept", error.len());
    assert!(
        error.starts_with("command exited with status 1: xxx"),
        "{error}"
    );
    assert!(error.ends_with("xxx the end"), "{error}");
}

/// A DAG file that is not UTF-8 was invisible: not listed, not reported, and a loaded DAG
/// rewritten with one bad byte kept running its old definition.
#[test]
fn a_dag_file_that_is_not_utf8_is_reported_and_unloaded() {
    let home = Home::new();
    home.write_dag("d", QUICK);
    let mut server = home.serve();
    std::fs::write(
        home.file("dags/d.yaml"),
        b"tasks: [{id: a, kind: noop}]\n# caf\xe9\n",
    )
    .expect("write");
    server.wait_for_log_all(&["d.yaml", "not UTF-8"], Duration::from_secs(10));
    let out = home.orch(&["trigger", "d"]);
    assert!(!out.status.success(), "the DAG is unloaded");
    assert!(
        text(&out.stderr).contains("not UTF-8"),
        "{}",
        text(&out.stderr)
    );
    let out = home.orch(&["dags", "validate"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("d.yaml: not UTF-8 text"));
}

/// A link in dags/ to a file outside it could echo that file's content in load errors.
#[test]
fn a_dag_file_linking_outside_the_folder_is_refused_without_its_content() {
    let home = Home::new();
    let outside = home.file("secret.txt");
    std::fs::write(&outside, "tasks: [{id: a, kind: hunter2}]\n").expect("write");
    std::os::unix::fs::symlink(&outside, home.file("dags/linked.yaml")).expect("symlink");
    let out = home.orch(&["dags", "validate"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("outside the DAGs folder"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}
