//! `orch run`: one run in the foreground.

use crate::support::{Home, attempts, is_running, task_state, text};

const CHAIN: &str = r#"
params: { greeting: hello, fail_until: 2 }
defaults: { retries: 2, retry_delay: 0s }
tasks:
  - id: first
    kind: shell
    with: { command: "echo {{ params.greeting }} {{ ds }}; echo 'orch:rows=42'" }
  - id: flaky
    kind: shell
    depends_on: [first]
    with:
      command: |
        n=$(cat tries 2>/dev/null || echo 0); n=$((n+1)); echo $n > tries
        echo "try $n"
        test $n -ge {{ params.fail_until }}
  - id: last
    kind: noop
    depends_on: [flaky]
"#;

#[test]
fn a_failing_then_succeeding_task_is_retried_and_the_run_succeeds() {
    a_failing_then_succeeding_task_is_retried_and_the_run_succeeds_with(&Home::new());
}

/// The scenario, on any metadata backend.
pub fn a_failing_then_succeeding_task_is_retried_and_the_run_succeeds_with(home: &Home) {
    home.write_dag("chain", CHAIN);
    let out = home.orch(&["run", "chain", "--logical-date", "2026-11-20"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );

    let run_id = stdout.lines().next().expect("run id first").to_string();
    assert!(run_id.starts_with("chain__manual__"), "{run_id}");
    assert!(
        stdout.contains("flaky up_for_retry (attempt 1)"),
        "{stdout}"
    );
    assert!(stdout.contains("flaky success (attempt 2)"), "{stdout}");

    let run = home.run_json(&run_id);
    assert_eq!(run["state"], "success");
    assert_eq!(run["run_type"], "manual");
    assert_eq!(run["logical_date"], "2026-11-20T00:00:00.000000Z");
    assert_eq!(run["data_interval_end"], "2026-11-21T00:00:00.000000Z");

    let first = attempts(&run, "first");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["rows"], 42);
    let log =
        std::fs::read_to_string(first[0]["log_path"].as_str().expect("log path")).expect("log");
    assert!(log.contains("hello 2026-11-20"), "{log}");

    let flaky = attempts(&run, "flaky");
    assert_eq!(flaky.len(), 2, "{run:#}");
    assert_eq!(flaky[0]["state"], "failed");
    assert_eq!(flaky[0]["error"], "command exited with status 1: try 1");
    assert_eq!(flaky[1]["state"], "success");
    for a in flaky {
        assert!(a["duration_ms"].as_i64().is_some_and(|d| d >= 0));
        assert!(
            a["started_at"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z') && t.len() == 27)
        );
    }
    assert!(
        flaky[0]["log_path"]
            .as_str()
            .expect("log path")
            .ends_with(&format!("logs/chain/{run_id}/flaky/1.log"))
    );
    assert_eq!(task_state(&run, "last"), "success");
}

#[test]
fn a_failure_fails_the_run_marks_downstream_and_runs_cleanup() {
    let home = Home::new();
    home.write_dag(
        "broken",
        r#"
tasks:
  - { id: boom, kind: shell, with: { command: "echo about to fail >&2; exit 3" } }
  - { id: after, kind: noop, depends_on: [boom] }
  - { id: after_after, kind: noop, depends_on: [after] }
  - { id: cleanup, kind: shell, depends_on: [after], trigger_rule: all_done, with: { command: "echo cleaning" } }
  - { id: alert, kind: noop, depends_on: [boom], trigger_rule: one_failed }
  - { id: on_success, kind: noop, depends_on: [cleanup], trigger_rule: one_failed }
"#,
    );
    let out = home.orch(&["run", "broken"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let run_id = text(&out.stdout)
        .lines()
        .next()
        .expect("run id")
        .to_string();
    let run = home.run_json(&run_id);
    assert_eq!(run["state"], "failed");
    assert_eq!(task_state(&run, "boom"), "failed");
    assert_eq!(
        attempts(&run, "boom")[0]["error"],
        "command exited with status 3: about to fail"
    );
    assert_eq!(task_state(&run, "after"), "upstream_failed");
    assert_eq!(task_state(&run, "after_after"), "upstream_failed");
    assert_eq!(task_state(&run, "cleanup"), "success");
    assert_eq!(task_state(&run, "alert"), "success");
    assert_eq!(task_state(&run, "on_success"), "skipped");
}

#[test]
fn a_timeout_fails_the_attempt_and_kills_the_whole_process_group() {
    let home = Home::new();
    home.write_dag(
        "slow",
        r#"
tasks:
  - id: hang
    kind: shell
    timeout: 300ms
    with: { command: "sleep 37.25 & echo $! > child.pid; wait" }
"#,
    );
    let out = home.orch(&["run", "slow"]);
    assert_eq!(out.status.code(), Some(1));
    let run_id = text(&out.stdout)
        .lines()
        .next()
        .expect("run id")
        .to_string();
    let run = home.run_json(&run_id);
    assert_eq!(
        attempts(&run, "hang")[0]["error"],
        "timed out after 300ms: stopped by SIGTERM"
    );
    let pid = std::fs::read_to_string(home.file("child.pid")).expect("child pid");
    // The background sleep was in the task's process group, so it is gone too.
    assert!(
        !is_running(pid.trim()),
        "the timed-out task's child {pid} is still running"
    );
}

#[test]
fn conf_overrides_params_and_templates_see_the_run() {
    let home = Home::new();
    home.write_dag(
        "templated",
        r#"
schedule: "0 4 * * *"
params: { symbol: BTCUSDT }
tasks:
  - id: show
    kind: shell
    with:
      command: "echo {{ params.symbol | lower }} {{ ds }} {{ data_interval_start }} {{ dag_id }} {{ task_id }} $GREETING"
      env: { GREETING: "{{ params.symbol }}!" }
"#,
    );
    let out = home.orch(&[
        "run",
        "templated",
        "--conf",
        "symbol=ETHUSDT",
        "--logical-date",
        "2026-11-21T04:00:00Z",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run_id = text(&out.stdout)
        .lines()
        .next()
        .expect("run id")
        .to_string();
    let run = home.run_json(&run_id);
    assert_eq!(run["conf"]["symbol"], "ETHUSDT");
    assert_eq!(run["data_interval_end"], "2026-11-22T04:00:00.000000Z");
    let log = std::fs::read_to_string(
        attempts(&run, "show")[0]["log_path"]
            .as_str()
            .expect("path"),
    )
    .expect("log");
    assert!(
        log.contains("ethusdt 2026-11-21 2026-11-21T04:00:00+00:00 templated show ETHUSDT!"),
        "{log}"
    );
}

#[test]
fn an_invalid_dag_is_refused_with_its_file_and_line() {
    let home = Home::new();
    home.write_dag("bad", "tasks:\n  - id: a\n    kind: nope\n");
    let out = home.orch(&["run", "bad"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.yaml:3:11: task `a` has unknown kind `nope`; known kinds: binance.historical_trades, http, lake.compact, lake.retention, mercado_bitcoin.trades, nats.consume, noop, shell, sql"),
        "{err}"
    );
}

/// `orch run ... | head -1` panicked on its next line; the run must end as it would have.
#[test]
fn a_run_whose_reader_goes_away_finishes_without_a_panic() {
    use std::process::Stdio;
    let home = Home::new();
    home.write_dag(
        "two",
        "tasks:\n  - { id: a, kind: shell, with: { command: 'sleep 0.2' } }\n  - { id: b, kind: noop, depends_on: [a] }\n",
    );
    let mut child = home
        .command(&["run", "two"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("orch run");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0_u8; 1];
    std::io::Read::read_exact(&mut stdout, &mut first).expect("the run id starts");
    drop(stdout);
    let out = child.wait_with_output().expect("wait");
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let runs = home.orch(&["runs", "list", "--json"]);
    let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).expect("json");
    assert_eq!(runs[0]["state"], "success");
}

#[test]
fn run_refuses_wait_which_only_trigger_has() {
    let home = Home::new();
    home.write_dag("d", "tasks: [{id: a, kind: noop}]\n");
    let out = home.orch(&["run", "d", "--wait"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--wait"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&home.orch(&["runs", "list"]).stdout).lines().count() <= 1,
        "no run was made"
    );
}

#[test]
fn typed_params_are_checked_before_a_run_is_created_and_when_the_file_loads() {
    let home = Home::new();
    home.write_dag(
        "typed",
        r#"id: typed
params:
  limit: { type: integer, default: 10, min: 1, max: 100 }
  day: { type: date, required: true }
  mode: { type: enum, values: [full, incremental], default: incremental }
  symbol: { type: string, pattern: "^[A-Z]+USDT$", default: BTCUSDT }
tasks:
  - id: show
    kind: shell
    with: { command: "echo {{ params.day }} {{ params.limit }} {{ params.mode }} {{ params.symbol }}" }
"#,
    );
    let refused = home.orch(&["run", "typed", "--conf", "limit=0", "--conf", "symbol=btc"]);
    assert!(!refused.status.success());
    let err = text(&refused.stderr);
    assert!(err.contains("no run of `typed` was created"), "{err}");
    assert!(err.contains("param `day` is required"), "{err}");
    assert!(
        err.contains("param `limit` must be at least 1 (min), got 0"),
        "{err}"
    );
    assert!(
        err.contains("param `symbol` must match the pattern `^[A-Z]+USDT$`"),
        "{err}"
    );
    let runs = home.orch(&["runs", "list", "--json"]);
    assert_eq!(text(&runs.stdout).trim(), "[]", "no run was created");

    let out = home.orch(&[
        "run",
        "typed",
        "--conf",
        "day=2026-11-20",
        "--conf",
        "mode=full",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run_id = crate::support::run_id_of(&out);
    let log = text(&home.orch(&["logs", &run_id]).stdout);
    assert!(log.contains("2026-11-20 10 full BTCUSDT"), "{log}");

    // A declaration that breaks its own rule fails validation with its place.
    home.write_dag(
        "broken_params",
        "id: broken_params\nparams:\n  limit: { type: integer, default: 0, min: 1 }\ntasks:\n  - {id: a, kind: noop}\n",
    );
    let out = home.orch(&["dags", "validate"]);
    assert!(!out.status.success());
    let err = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        err.contains("broken_params.yaml:3:10: param `limit`: its default breaks its own rule: must be at least 1 (min), got 0"),
        "{err}"
    );
}

#[test]
fn exit_codes_decide_retries_and_skips_and_a_run_past_its_timeout_is_stopped() {
    let home = Home::new();
    home.write_dag(
        "codes",
        r#"id: codes
tasks:
  - id: gate
    kind: shell
    with: { command: "echo nothing new today; exit 99", skip_on_exit_codes: [99] }
  - id: load
    kind: shell
    depends_on: [gate]
    with: { command: "echo loading" }
  - id: report
    kind: shell
    depends_on: [gate]
    trigger_rule: all_done
    with: { command: "echo reported" }
  - id: picky
    kind: shell
    retries: 3
    retry_delay: 0s
    with: { command: "exit 2", retry_on_exit_codes: [75] }
  - id: temporary
    kind: shell
    retries: 1
    retry_delay: 0s
    retry_jitter: 0.5
    with: { command: "test -f {{ params.marker }} || { touch {{ params.marker }}; exit 75; }", retry_on_exit_codes: [75] }
params: { marker: marker.txt }
"#,
    );
    let out = home.orch(&[
        "run",
        "codes",
        "--conf",
        &format!("marker={}", home.file("marker.txt").display()),
    ]);
    let run_id = crate::support::run_id_of(&out);
    let run = home.run_json(&run_id);
    assert_eq!(task_state(&run, "gate"), "skipped", "{run:#}");
    let why = attempts(&run, "gate")[0]["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        why.starts_with("skipped: command exited with status 99")
            && why.ends_with("(skip_on_exit_codes)"),
        "{why}"
    );
    assert_eq!(
        task_state(&run, "load"),
        "skipped",
        "a skip skips what needs it"
    );
    assert_eq!(task_state(&run, "report"), "success");
    assert_eq!(task_state(&run, "picky"), "failed");
    assert_eq!(
        attempts(&run, "picky").len(),
        1,
        "an exit status not listed is not retried"
    );
    assert!(
        attempts(&run, "picky")[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("not in retry_on_exit_codes")
    );
    assert_eq!(task_state(&run, "temporary"), "success");
    assert_eq!(
        attempts(&run, "temporary").len(),
        2,
        "a listed exit status is retried"
    );
    assert_eq!(run["state"], "failed", "picky failed");

    home.write_dag(
        "slow",
        "id: slow\ndagrun_timeout: 1s\ntasks:\n  - {id: nap, kind: shell, retries: 2, with: {command: 'exec sleep 43'}}\n",
    );
    let started = std::time::Instant::now();
    let out = home.orch(&["run", "slow"]);
    assert!(!out.status.success());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "stopped at its timeout, not after the nap"
    );
    let run_id = crate::support::run_id_of(&out);
    let run = home.run_json(&run_id);
    assert_eq!(run["state"], "failed");
    assert_eq!(
        run["note"],
        "timed out: the run took longer than its dagrun_timeout (1s)"
    );
    assert_eq!(attempts(&run, "nap").len(), 1, "no retry after the timeout");
    assert!(!is_running_command("sleep 43"), "the nap was stopped");

    home.write_dag(
        "bad_jitter",
        "id: bad_jitter\ndagrun_timeout: 0s\ntasks:\n  - {id: a, kind: noop, retry_jitter: 2}\n",
    );
    let out = home.orch(&["dags", "validate"]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        all.contains("bad_jitter.yaml:2:17: `dagrun_timeout` must be longer than 0s"),
        "{all}"
    );
    assert!(
        all.contains("`retry_jitter` must be a fraction from 0 to 1"),
        "{all}"
    );
}

fn is_running_command(pattern: &str) -> bool {
    std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .status()
        .expect("pgrep")
        .success()
}

#[test]
fn depends_on_past_ends_a_backfill_behind_a_failed_day_and_the_next_backfill_goes_on() {
    let home = Home::new();
    home.write_dag(
        "daily_past",
        "id: daily_past\nschedule: '@daily'\nstart_date: 2026-11-20\nmax_active_runs: 3\ntasks:\n  - {id: load, kind: shell, depends_on_past: true, with: {command: 'test {{ ds }} != 2026-11-20'}}\n",
    );
    let backfill = || {
        home.command(&[
            "backfill",
            "daily_past",
            "--start",
            "2026-11-20",
            "--end",
            "2026-11-22",
            "--parallel",
            "3",
        ])
        .output()
        .expect("orch backfill")
    };
    let first = "daily_past__backfill__2026-11-20T00:00:00Z";
    let second = "daily_past__backfill__2026-11-21T00:00:00Z";
    // Nobody would clear the first day while the command waits: the days behind it end at
    // once, saying why, instead of waiting for ever (Airflow calls it a backfill deadlock).
    let out = backfill();
    assert!(!out.status.success());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        stdout.contains("0 of 3 dates succeeded"),
        "{stdout}\n{stderr}"
    );
    for day in ["2026-11-21", "2026-11-22"] {
        let run = home.run_json(&format!("daily_past__backfill__{day}T00:00:00Z"));
        assert_eq!(run["state"], "failed", "{run:#}");
        assert_eq!(task_state(&run, "load"), "upstream_failed", "{run:#}");
        assert!(attempts(&run, "load").is_empty(), "{run:#}");
        let note = run["note"].as_str().unwrap_or_default();
        assert!(
            note.contains("depends_on_past") && note.contains("previous run"),
            "{run:#}"
        );
    }
    // Someone fixes the first day by hand; the next backfill runs the others, in order.
    let out = home.orch(&["tasks", "mark", first, "load", "success"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = backfill();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    for day in ["2026-11-21", "2026-11-22"] {
        let run = home.run_json(&format!("daily_past__backfill__{day}T00:00:00Z"));
        assert_eq!(run["state"], "success", "{run:#}");
    }
    let (second_run, third_run) = (
        home.run_json(second),
        home.run_json("daily_past__backfill__2026-11-22T00:00:00Z"),
    );
    let last = |run: &serde_json::Value| attempts(run, "load").last().cloned().unwrap_or_default();
    assert!(
        last(&second_run)["ended_at"].as_str() <= last(&third_run)["started_at"].as_str(),
        "day 22 waited for day 21"
    );
}

#[test]
fn tasks_publish_outputs_that_downstream_templates_read_even_after_a_clear() {
    let home = Home::new();
    home.write_dag(
        "outputs",
        r#"id: outputs
tasks:
  - id: extract
    kind: shell
    with: { command: "echo 'orch:output day=2026-11-20'; echo 'orch:output path=raw/x y.parquet'; echo 'orch:output bad key=1'" }
  - id: load
    kind: shell
    depends_on: [extract]
    with: { command: "echo loading {{ outputs.extract.path }} for {{ outputs.extract.day }}" }
  - id: big
    kind: shell
    retries: 2
    retry_delay: 0s
    with: { command: "printf 'orch:output blob='; head -c 70000 /dev/zero | tr '\\0' x; echo" }
"#,
    );
    let out = home.orch(&["run", "outputs"]);
    let run_id = crate::support::run_id_of(&out);
    let run = home.run_json(&run_id);
    let published = &attempts(&run, "extract")[0]["outputs"];
    assert_eq!(published["day"], "2026-11-20");
    assert_eq!(published["path"], "raw/x y.parquet");
    assert!(published.get("bad key").is_none());
    let logs = text(&home.orch(&["logs", &run_id, "--task", "load"]).stdout);
    assert!(
        logs.contains("loading raw/x y.parquet for 2026-11-20"),
        "{logs}"
    );
    assert!(
        logs.contains("$ echo loading 'raw/x y.parquet' for 2026-11-20"),
        "values stay data: {logs}"
    );
    let extract_log = text(&home.orch(&["logs", &run_id, "--task", "extract"]).stdout);
    assert!(
        extract_log.contains("ignored `orch:output bad key=1`"),
        "{extract_log}"
    );
    assert_eq!(task_state(&run, "big"), "failed");
    assert_eq!(attempts(&run, "big").len(), 1, "too large is not retried");
    assert!(
        attempts(&run, "big")[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("more than the 65536 an attempt may publish")
    );

    // A cleared task reads what its upstream published before.
    let out = home.orch(&["tasks", "clear", &run_id, "load"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut serve = home.serve();
    let run = home.wait_for_run(&run_id, std::time::Duration::from_secs(20));
    assert_eq!(attempts(&run, "load").len(), 2);
    assert_eq!(task_state(&run, "load"), "success", "{run:#}");
    serve.signal("TERM");
    assert!(serve.wait_exit(std::time::Duration::from_secs(20)));
    let logs = text(&home.orch(&["logs", &run_id, "--task", "load"]).stdout);
    assert_eq!(
        logs.matches("loading raw/x y.parquet for 2026-11-20")
            .count(),
        2,
        "{logs}"
    );
}
