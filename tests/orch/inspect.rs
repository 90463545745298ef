//! `orch dags`, `orch runs` and `orch logs`.

use std::time::Duration;

use crate::support::{Home, last_line, text};

#[test]
fn dags_validate_reports_every_error_with_file_line_and_column() {
    let home = Home::new();
    home.write_dag("good", "tasks: [{id: a, kind: noop}]\n");
    home.write_dag(
        "bad",
        "schedule: '61 * * * *'\ntimezone: Mars/Base\ntasks:\n  - {id: a, kind: noop, depends_on: [zz]}\n",
    );
    let out = home.orch(&["dags", "validate"]);
    assert_eq!(out.status.code(), Some(1));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stdout.contains("good.yaml (good, 1 tasks)"), "{stdout}");
    assert!(
        stderr.contains("bad.yaml:1:11: schedule: invalid cron expression `61 * * * *`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("bad.yaml:2:11: unknown timezone `Mars/Base`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("bad.yaml:4:38: task `a` depends on unknown task `zz`"),
        "{stderr}"
    );

    let good = home.file("dags/good.yaml");
    let out = home.orch(&["dags", "validate", good.to_str().expect("utf-8 path")]);
    assert!(out.status.success());
}

#[test]
fn dags_list_show_and_pause() {
    dags_list_show_and_pause_with(&Home::new());
}

/// The scenario, on any metadata backend.
pub fn dags_list_show_and_pause_with(home: &Home) {
    home.write_dag(
        "hourly",
        "schedule: '@hourly'\ntasks: [{id: a, kind: noop}]\n",
    );
    home.write_dag("broken", "tasks: 3\n");
    let out = home.orch(&["dags", "list"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("hourly") && stdout.contains("@hourly"),
        "{stdout}"
    );
    assert!(
        stdout.contains("broken: ") && stdout.contains("broken.yaml:1:8"),
        "{stdout}"
    );

    let out = home.orch(&["dags", "show", "hourly"]);
    assert!(
        text(&out.stdout).contains("next run due:"),
        "{}",
        text(&out.stdout)
    );

    assert!(home.orch(&["dags", "pause", "hourly"]).status.success());
    let stdout = text(&home.orch(&["dags", "list"]).stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("hourly"))
        .expect("hourly listed");
    assert!(line.contains(" yes "), "{line}");
    assert!(home.orch(&["dags", "unpause", "hourly"]).status.success());
    let stdout = text(&home.orch(&["dags", "list"]).stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("hourly"))
        .expect("hourly listed");
    assert!(line.contains(" no "), "{line}");

    let out = home.orch(&["dags", "pause", "nosuch"]);
    assert!(
        text(&out.stderr).contains("no DAG `nosuch`; known DAGs: hourly"),
        "{}",
        text(&out.stderr)
    );
}

/// The paused state a command set, or the file's `paused:`: the later change wins.
#[test]
fn the_latest_of_dags_pause_and_the_files_paused_wins() {
    let home = Home::new();
    let paused = |home: &Home| {
        let stdout = text(&home.orch(&["dags", "list"]).stdout);
        let line = stdout
            .lines()
            .find(|l| l.starts_with("d "))
            .unwrap_or_else(|| panic!("d listed: {stdout}"))
            .to_string();
        line.contains(" yes ")
    };
    home.write_dag("d", "paused: true\ntasks: [{id: a, kind: noop}]\n");
    assert!(paused(&home));
    assert!(home.orch(&["dags", "unpause", "d"]).status.success());
    assert!(!paused(&home), "the command is later than the file");
    // An unrelated edit keeps the command's choice.
    home.write_dag(
        "d",
        "paused: true\ndescription: edited\ntasks: [{id: a, kind: noop}]\n",
    );
    assert!(!paused(&home));
    // A change of the file's own `paused:` is later than the command.
    home.write_dag("d", "paused: false\ntasks: [{id: a, kind: noop}]\n");
    assert!(!paused(&home));
    home.write_dag("d", "paused: true\ntasks: [{id: a, kind: noop}]\n");
    assert!(paused(&home), "the file changed after the command");
}

#[test]
fn a_zero_parallelism_in_orch_yaml_is_an_error() {
    let home = Home::new();
    std::fs::write(home.file("orch.yaml"), "parallelism: 0\n").expect("write");
    let out = home
        .command(&["dags", "list"])
        .env_remove("ORCH_PARALLELISM")
        .output()
        .expect("orch");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("orch.yaml") && err.contains("parallelism") && err.contains("at least 1"),
        "{err}"
    );
}

#[test]
fn a_paused_dag_holds_triggered_runs_until_unpaused() {
    let home = Home::new();
    home.write_dag("held", "paused: true\ntasks: [{id: a, kind: noop}]\n");
    let mut server = home.serve();
    let out = home.orch(&["trigger", "held"]);
    assert!(text(&out.stderr).contains("is paused"));
    let run_id = last_line(&out);
    assert_eq!(home.run_json(&run_id)["state"], "queued");
    assert!(home.orch(&["dags", "unpause", "held"]).status.success());
    server.wait_for_log_all(&["run finished", &run_id], Duration::from_secs(10));
    assert_eq!(home.run_json(&run_id)["state"], "success");
}

#[test]
fn runs_list_json_and_logs() {
    let home = Home::new();
    home.write_dag(
        "talk",
        "tasks:\n  - {id: a, kind: shell, with: {command: 'echo from-a'}}\n  - {id: b, kind: shell, depends_on: [a], with: {command: 'echo from-b >&2'}}\n",
    );
    let run_id = text(&home.orch(&["run", "talk"]).stdout)
        .lines()
        .next()
        .expect("id")
        .to_string();
    let out = home.orch(&["runs", "list", "--json"]);
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json list");
    assert_eq!(runs.len(), 1);
    for key in [
        "run_id",
        "dag_id",
        "state",
        "run_type",
        "logical_date",
        "data_interval_start",
        "data_interval_end",
        "conf",
        "queued_at",
        "started_at",
        "ended_at",
    ] {
        assert!(runs[0].get(key).is_some(), "missing {key} in {:#}", runs[0]);
    }
    assert_eq!(runs[0]["run_id"], run_id);

    let all = text(&home.orch(&["logs", &run_id]).stdout);
    assert!(
        all.contains("==> a attempt 1 (success) <==") && all.contains("from-a"),
        "{all}"
    );
    assert!(all.contains("from-b"), "{all}");
    let only_b = text(
        &home
            .orch(&["logs", &run_id, "--task", "b", "--attempt", "1"])
            .stdout,
    );
    assert!(
        only_b.contains("from-b") && !only_b.contains("from-a"),
        "{only_b}"
    );
    let follow = home.orch(&["logs", &run_id, "--follow"]);
    assert!(follow.status.success() && text(&follow.stdout).contains("from-b"));

    let out = home.orch(&["runs", "show", "nope"]);
    assert!(text(&out.stderr).contains("no run `nope`"));
}

#[test]
fn a_listing_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    use std::process::Stdio;
    let home = Home::new();
    // Enough runs that the table outgrows the pipe's buffer before the reader goes.
    home.write_dag("quick", "tasks:\n  - { id: a, kind: noop }\n");
    for _ in 0..3 {
        assert!(home.orch(&["run", "quick"]).status.success());
    }
    let mut child = home
        .command(&["dags", "list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("orch dags list");
    // The reader leaves at once, as `| head -0` does.
    drop(child.stdout.take());
    let status = child.wait().expect("wait");
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut stderr).expect("stderr");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        status.success() || std::os::unix::process::ExitStatusExt::signal(&status) == Some(13),
        "ends by SIGPIPE or normally, not by a panic: {status:?}"
    );
}

#[test]
fn runs_cancel_and_clear_and_tasks_clear_and_mark_from_the_cli() {
    let home = Home::new();
    home.write_dag(
        "cli_chain",
        "id: cli_chain\ntasks:\n  - {id: a, kind: shell, with: {command: 'echo a'}}\n  - {id: b, kind: shell, depends_on: [a], with: {command: 'echo b'}}\n  - {id: c, kind: shell, depends_on: [b], with: {command: 'echo c'}}\n",
    );
    home.write_dag(
        "cli_sleep",
        "id: cli_sleep\ntasks:\n  - {id: nap, kind: shell, with: {command: 'exec sleep 41'}}\n",
    );
    let _serve = home.serve();
    let out = home.orch(&["trigger", "cli_chain", "--wait"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run_id = last_line(&out);
    let attempts = |run: &serde_json::Value, task: &str| crate::support::attempts(run, task).len();

    // One task and those after it, then the whole run, each queued again and run.
    let out = home
        .command(&["tasks", "clear", &run_id, "b", "--downstream"])
        .env("USER", "ada")
        .output()
        .expect("orch");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cleared: b, c"),
        "{}",
        text(&out.stderr)
    );
    let run = home.wait_for_run(&run_id, Duration::from_secs(20));
    assert_eq!(run["state"], "success");
    assert_eq!(
        (
            attempts(&run, "a"),
            attempts(&run, "b"),
            attempts(&run, "c")
        ),
        (1, 2, 2)
    );
    assert!(home.orch(&["runs", "clear", &run_id]).status.success());
    let run = home.wait_for_run(&run_id, Duration::from_secs(20));
    assert_eq!(
        (
            attempts(&run, "a"),
            attempts(&run, "b"),
            attempts(&run, "c")
        ),
        (2, 3, 3)
    );

    // Mark: the run follows its tasks.
    let out = home.orch(&["tasks", "mark", &run_id, "a", "failed"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(home.run_json(&run_id)["state"], "failed");
    let out = home.orch(&["tasks", "mark", &run_id, "nope", "success"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no task `nope`"),
        "{}",
        text(&out.stderr)
    );

    // Who did what, from where, in `runs show`.
    let shown = text(&home.orch(&["runs", "show", &run_id]).stdout);
    let host = orch::lease::host_name();
    assert!(
        shown.contains(&format!("clear b  by ada from cli on {host} (b, c)")),
        "{shown}"
    );
    assert!(shown.contains("mark failed a  by "), "{shown}");
    assert!(
        shown.contains("  trigger  by "),
        "the CLI's trigger is recorded too: {shown}"
    );

    // Cancel a running run: its command is stopped, the run ends failed with who asked.
    let out = home.orch(&["trigger", "cli_sleep"]);
    let sleeper = last_line(&out);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while crate::support::task_state(&home.run_json(&sleeper), "nap") != "running" {
        assert!(
            std::time::Instant::now() < deadline,
            "the nap never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = home
        .command(&["runs", "cancel", &sleeper])
        .env("USER", "ada")
        .output()
        .expect("orch");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = home.wait_for_run(&sleeper, Duration::from_secs(15));
    assert_eq!(run["state"], "failed");
    assert!(
        run["note"]
            .as_str()
            .unwrap_or("")
            .starts_with("cancelled by ada from cli on"),
        "{run:#}"
    );
    let again = home.orch(&["runs", "cancel", &sleeper]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("has already ended"),
        "{}",
        text(&again.stderr)
    );
}
