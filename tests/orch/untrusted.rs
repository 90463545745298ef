//! What a user can reach is untrusted: `--conf` values, the environment templates see, the
//! text saved with a run, and what orch logs.

use std::process::Command;
use std::time::Duration;

use crate::support::{Home, attempts, is_running, last_line, task_state, text, wait_for_file};

fn run(home: &Home, args: &[&str]) -> serde_json::Value {
    let out = home.orch(args);
    let run_id = text(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(!run_id.is_empty(), "no run id: {}", text(&out.stderr));
    home.run_json(&run_id)
}

fn attempt_log(run: &serde_json::Value, task: &str) -> String {
    let path = attempts(run, task)[0]["log_path"]
        .as_str()
        .expect("log path")
        .to_string();
    std::fs::read_to_string(path).expect("attempt log")
}

/// `--conf 'greeting=x; touch pwned'` once created `pwned`: values went into `sh -c` as code.
#[test]
fn conf_values_rendered_into_a_command_are_data_not_code() {
    let home = Home::new();
    home.write_dag(
        "greet",
        r#"
params: { greeting: hello }
tasks:
  - id: echo
    kind: shell
    with: { command: "echo {{ params.greeting }} {{ ds }}; printf '%s\n' \"$ORCH_PARAM_GREETING\"" }
"#,
    );
    let injected = "x; touch pwned $(touch pwned2) `touch pwned3`";
    let run = run(
        &home,
        &["run", "greet", "--conf", &format!("greeting={injected}")],
    );
    assert_eq!(run["state"], "success", "{run:#}");
    for file in ["pwned", "pwned2", "pwned3"] {
        assert!(!home.file(file).exists(), "{file} was created");
    }
    let log = attempt_log(&run, "echo");
    let printed: Vec<&str> = log.lines().filter(|l| l.starts_with("x; touch")).collect();
    assert_eq!(
        printed.len(),
        2,
        "the value arrives as it was, templated and from the environment:\n{log}"
    );
    assert!(printed[0].starts_with(injected), "{log}");
    assert_eq!(printed[1], injected, "{log}");
}

#[test]
fn templates_see_only_orch_var_environment_variables() {
    let home = Home::new();
    home.write_dag(
        "leaky",
        "tasks: [{id: a, kind: shell, with: {command: 'echo {{ env.AWS_SECRET_ACCESS_KEY }}'}}]\n",
    );
    let out = home.orch(&["dags", "validate"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("leaky.yaml:1:") && err.contains("ORCH_VAR_"),
        "{err}"
    );

    home.write_dag(
        "leaky",
        "tasks: [{id: a, kind: shell, with: {command: 'echo region={{ env.ORCH_VAR_REGION }}'}}]\n",
    );
    let out = home
        .command(&["run", "leaky"])
        .env("ORCH_VAR_REGION", "eu-west-1")
        .env("AWS_SECRET_ACCESS_KEY", "hunter2")
        .output()
        .expect("orch run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = home.run_json(text(&out.stdout).lines().next().expect("run id"));
    assert!(attempt_log(&run, "a").contains("region=eu-west-1"));
}

/// Secrets in a rendered command or an error are masked in what orch writes.
#[test]
fn secrets_are_masked_in_the_attempt_log_and_the_recorded_error() {
    let home = Home::new();
    home.write_dag(
        "secretive",
        r#"
tasks:
  - id: a
    kind: shell
    with: { command: "echo connecting >/dev/null # postgres://orch:hunter2@db/orch\necho 'token=hunter2' >&2; exit 3" }
"#,
    );
    let run = run(&home, &["run", "secretive"]);
    assert_eq!(run["state"], "failed");
    let error = attempts(&run, "a")[0]["error"].as_str().expect("error");
    assert_eq!(error, "command exited with status 3: token=***");
    let log = attempt_log(&run, "a");
    let command_line = log
        .lines()
        .find(|l| l.contains("orch] $ "))
        .expect("the command line");
    assert!(
        command_line.contains("postgres://orch:***@db/orch") && !command_line.contains("hunter2"),
        "{command_line}"
    );
    assert!(
        !log.lines()
            .filter(|l| l.contains(" orch] "))
            .any(|l| l.contains("hunter2")),
        "{log}"
    );
}

/// A run adopted after a crash ran the DAG text saved in the database: a row in a shared
/// database was a way to run code. Now a resumed run runs only the loaded DAG file, and only
/// if the run started with the same text.
#[test]
fn a_resumed_run_executes_only_a_dag_file_the_server_loaded() {
    let home = Home::new();
    home.write_dag(
        "slow",
        "tasks: [{id: t, kind: shell, with: {command: 'touch started; sleep 30.25'}}]\n",
    );
    let mut server = home.serve();
    let run_id = last_line(&home.orch(&["trigger", "slow"]));
    wait_for_file(&home.file("started"), Duration::from_secs(10));
    server.kill9();

    let tampered = "tasks: [{id: t, kind: shell, retries: 1, retry_delay: 0s, with: {command: \"touch pwned\"}}]";
    home.sql(&format!(
        "UPDATE dag_runs SET dag_source = '{tampered}' WHERE run_id = '{run_id}'"
    ));
    let _server = home.serve();
    let run = home.wait_for_run(&run_id, Duration::from_secs(20));
    assert_eq!(run["state"], "failed", "{run:#}");
    let note = run["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("differs from") && note.contains("slow.yaml as loaded now"),
        "{run:#}"
    );
    assert!(!home.file("pwned").exists(), "the saved text was executed");
    // What the run left out ends with it: its task and attempt fail with the note, and the
    // dead server's command is not left running.
    assert_eq!(task_state(&run, "t"), "failed", "{run:#}");
    let attempt = &run["tasks"][0]["attempts"][0];
    assert_eq!(attempt["state"], "failed", "{run:#}");
    assert!(
        attempt["error"]
            .as_str()
            .is_some_and(|e| e.contains("differs from")),
        "{run:#}"
    );
    let leftover = Command::new("pgrep")
        .args(["-f", "sleep 30.25"])
        .output()
        .expect("pgrep");
    let pids = text(&leftover.stdout);
    assert!(
        !pids.lines().any(|pid| is_running(pid.trim())),
        "the dead server's command still runs: {pids}"
    );
}

/// A requeued run's retries counted its earlier attempts ("attempt 3 of 2"): a rerun of a
/// failed date got no retry at all.
#[test]
fn a_rerun_gets_a_fresh_retry_budget() {
    let home = Home::new();
    home.write_dag(
        "flaky",
        r#"
defaults: { retries: 1, retry_delay: 0s }
tasks:
  - { id: a, kind: shell, with: { command: "echo $ORCH_ATTEMPT >> attempts; exit 1" } }
"#,
    );
    let backfill = |rerun: bool| {
        let mut args = vec![
            "backfill",
            "flaky",
            "--start",
            "2026-11-01",
            "--end",
            "2026-11-01",
        ];
        if rerun {
            args.push("--rerun");
        }
        let out = home.orch(&args);
        assert!(!out.status.success(), "the date fails");
    };
    backfill(false);
    backfill(true);
    let attempts = std::fs::read_to_string(home.file("attempts")).expect("attempts");
    assert_eq!(
        attempts.lines().collect::<Vec<_>>(),
        ["1", "2", "3", "4"],
        "two attempts, then two more"
    );
}
