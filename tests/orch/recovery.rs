//! Crash safety: `kill -9` of `orch serve` in the middle of a run.

use std::time::Duration;

use crate::support::{Home, attempts, is_running, last_line, task_state, wait_for_file};

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
