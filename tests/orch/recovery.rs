//! Crash safety: `kill -9` of `orch serve` in the middle of a run.

use std::time::Duration;

use crate::support::{Home, attempts, is_running, last_line, task_state, text, wait_for_file};

#[test]
fn after_kill_9_the_next_server_fails_the_orphaned_attempt_and_retries_it() {
    after_kill_9_the_next_server_fails_the_orphaned_attempt_and_retries_it_with(&Home::new());
}

/// The scenario, on any metadata backend.
pub fn after_kill_9_the_next_server_fails_the_orphaned_attempt_and_retries_it_with(home: &Home) {
    home.write_dag(
        "crashy",
        r#"
defaults: { retries: 1, retry_delay: 0s }
tasks:
  - { id: before, kind: noop }
  - id: work
    kind: shell
    depends_on: [before]
    with:
      command: |
        echo "$ORCH_ATTEMPT" >> attempts
        if [ "$ORCH_ATTEMPT" = 1 ]; then
          sleep 41.75 &
          echo $! > orphan.pid
          touch started
          wait
        fi
        echo 'orch:rows=5'
  - { id: after, kind: noop, depends_on: [work] }
"#,
    );
    let mut server = home.serve();
    let run_id = last_line(&home.orch(&["trigger", "crashy"]));
    wait_for_file(&home.file("started"), Duration::from_secs(10));
    server.kill9();

    let orphan = std::fs::read_to_string(home.file("orphan.pid")).expect("orphan pid");
    let run = home.run_json(&run_id);
    assert_eq!(run["state"], "running");
    assert_eq!(task_state(&run, "work"), "running");

    let _server = home.serve();
    let run = home.wait_for_run(&run_id, Duration::from_secs(30));
    assert_eq!(run["state"], "success", "{run:#}");
    let work = attempts(&run, "work");
    assert_eq!(work.len(), 2, "{run:#}");
    assert_eq!(work[0]["state"], "failed");
    assert!(
        work[0]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("worker lost")),
        "{run:#}"
    );
    assert_eq!(work[1]["state"], "success");
    assert_eq!(work[1]["rows"], 5);
    assert_eq!(
        attempts(&run, "before").len(),
        1,
        "finished tasks are not run again"
    );
    assert_eq!(task_state(&run, "after"), "success");
    assert_eq!(
        std::fs::read_to_string(home.file("attempts")).expect("attempts"),
        "1\n2\n"
    );
    assert!(
        !is_running(orphan.trim()),
        "the orphaned attempt's process {orphan} survived"
    );
}

#[test]
fn an_orphan_without_retries_left_fails_the_run_instead_of_running_forever() {
    let home = Home::new();
    home.write_dag(
        "fragile",
        r#"
tasks:
  - { id: work, kind: shell, with: { command: "touch started; sleep 43.5" } }
  - { id: after, kind: noop, depends_on: [work] }
"#,
    );
    let mut server = home.serve();
    let run_id = last_line(&home.orch(&["trigger", "fragile"]));
    wait_for_file(&home.file("started"), Duration::from_secs(10));
    server.kill9();

    let _server = home.serve();
    let run = home.wait_for_run(&run_id, Duration::from_secs(30));
    assert_eq!(run["state"], "failed", "{run:#}");
    assert_eq!(task_state(&run, "work"), "failed", "{run:#}");
    assert_eq!(task_state(&run, "after"), "upstream_failed", "{run:#}");
    // The orphan was found as such: by the worker's death, not by its executor giving up.
    let error = run["tasks"][0]["attempts"][0]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("worker lost") || error.contains("orphaned"),
        "{run:#}"
    );
}

/// A server that stopped after its attempt's log ended, but before the outcome reached the
/// run history (a full disk refuses the report as it refuses the heartbeat): the next server
/// fails the attempt as `worker lost`, saying the outcome was not recorded and quoting the
/// log's last line. Here the command prints orch's end line itself, then the server dies.
#[test]
fn a_lost_workers_attempt_quotes_the_end_its_log_gives() {
    let home = Home::new();
    home.write_dag(
        "ended_unrecorded",
        r#"
tasks:
  - { id: work, kind: shell, with: { command: "echo '[2026-12-07T21:00:00.000000Z orch] succeeded, rows=3'; touch started; sleep 41.5" } }
"#,
    );
    let mut server = home.serve();
    let run_id = last_line(&home.orch(&["trigger", "ended_unrecorded"]));
    wait_for_file(&home.file("started"), Duration::from_secs(10));
    // The line is in the log file before the server dies.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !text(&home.orch(&["logs", &run_id, "--task", "work"]).stdout)
        .contains("succeeded, rows=3")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the line never reached the log"
        );
    }
    server.kill9();

    let _server = home.serve();
    let run = home.wait_for_run(&run_id, Duration::from_secs(30));
    let error = run["tasks"][0]["attempts"][0]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        error.contains("worker lost")
            && error.contains("before it recorded this attempt's outcome")
            && error.contains("its log ends with `succeeded, rows=3`"),
        "{run:#}"
    );
}
