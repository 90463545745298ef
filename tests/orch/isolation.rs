//! Every attempt in a process of its own: a crash, a kernel limit or a timeout fails only that
//! attempt, with its cause, while the scheduler, the streams and other runs go on; and each
//! attempt's peak memory and CPU time land in the run history.

use std::time::Duration;

use serde_json::Value;

use crate::etl::{shipped, stage};
use crate::stream::{
    RATE, SYMBOLS, assert_every_id_once, last_ids, serve_command, stream_yaml, wait_until_staged,
};
use crate::support::{Home, Server, Simulator, attempts, is_running, task_state, text};

/// The attempt's usage as recorded: a peak resident set (at least the few MB of orch itself)
/// and a CPU time.
fn assert_usage_recorded(attempt: &Value) {
    let peak = attempt["peak_rss_bytes"].as_i64().unwrap_or_default();
    assert!(peak > 1 << 20, "peak_rss_bytes of {attempt:#}");
    assert!(
        attempt["cpu_ms"].as_i64().is_some(),
        "cpu_ms of {attempt:#}"
    );
}

#[test]
fn a_crashed_or_killed_attempt_fails_with_its_cause_and_is_retried_alone() {
    let home = Home::new();
    // $PPID of a shell command is the attempt's own orch process.
    home.write_dag(
        "crashes",
        r#"
tasks:
  - id: aborted_once
    kind: shell
    retries: 1
    retry_delay: 0s
    with: { command: "[ -e aborted ] || { touch aborted; kill -ABRT $PPID; sleep 37; }; echo recovered" }
  - id: killed
    kind: shell
    with: { command: "sleep 37.75 & echo $! > sleeper.pid; kill -KILL $PPID; wait" }
  - id: over_cpu
    kind: shell
    limits: { cpu_seconds: 1 }
    with: { command: "while :; do :; done" }
  - id: fine
    kind: shell
    with: { command: "echo fine" }
"#,
    );
    let out = home.orch(&["run", "crashes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let run_id = text(&out.stdout)
        .lines()
        .next()
        .expect("run id")
        .to_string();
    let run = home.run_json(&run_id);

    let aborted = attempts(&run, "aborted_once");
    assert_eq!(
        aborted[0]["error"], "killed by signal 6 (SIGABRT)",
        "{run:#}"
    );
    assert_eq!(
        aborted[1]["state"], "success",
        "retried by its policy: {run:#}"
    );
    assert_eq!(task_state(&run, "aborted_once"), "success");

    let killed = &attempts(&run, "killed")[0];
    let error = killed["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("killed: SIGKILL from outside orch"),
        "{error}"
    );
    let sleeper = std::fs::read_to_string(home.file("sleeper.pid")).expect("sleeper pid");
    assert!(
        !is_running(sleeper.trim()),
        "the killed attempt's command {sleeper} is still running"
    );

    // The kernel stops the task's command at its CPU limit.
    let over_cpu = &attempts(&run, "over_cpu")[0];
    let error = over_cpu["error"].as_str().unwrap_or_default();
    assert!(error.contains("signal 24"), "SIGXCPU: {error}");

    assert_eq!(task_state(&run, "fine"), "success");
    for task in ["aborted_once", "killed", "over_cpu", "fine"] {
        for attempt in attempts(&run, task) {
            assert_usage_recorded(attempt);
        }
    }
    let fine = &attempts(&run, "fine")[0];
    assert!(
        fine["peak_rss_bytes"].as_i64() < Some(1 << 30),
        "an echo in under 1 GiB: {fine:#}"
    );
}

/// The day the ETL reads: enough trades that the star schema needs more than [`LIMIT`].
const TRADES_IN_THE_DAY: i64 = 900_000;
/// Above what an attempt process needs to start (about 60 MiB of private memory), well
/// under what the transform of [`TRADES_IN_THE_DAY`] needs.
const LIMIT: &str = "96MiB";

#[test]
fn a_task_past_its_memory_limit_fails_alone_while_a_stream_and_other_runs_go_on() {
    let home = Home::new();
    home.write_dag("trades", &stream_yaml());
    let limited = shipped().replace(
        "kind: trades.star_schema",
        &format!("kind: trades.star_schema\n    limits: {{ memory: {LIMIT} }}"),
    );
    home.write_dag("daily_binance_etl", &limited);
    home.write_dag(
        "chain",
        "tasks:\n  - { id: a, kind: shell, with: { command: 'echo a' } }\n  - { id: b, kind: noop, depends_on: [a] }\n",
    );
    // The stream's symbols, and ETHBTC for the day the ETL reads.
    let sim = Simulator::with_rate(&format!("{SYMBOLS},ETHBTC"), RATE);
    let staging = format!("sqlite://{}", home.file("data/staging.db").display());
    stage(&staging, &["ETHBTC"], TRADES_IN_THE_DAY);
    let mut serve = Server::spawn(serve_command(&home, &sim, &staging), "stream connected");

    let trigger = |dag: &'static str, extra: &'static [&'static str]| {
        let mut command = home.command(&[&["trigger", dag, "--wait"][..], extra].concat());
        std::thread::spawn(move || command.output().expect("orch trigger --wait"))
    };
    let etl = trigger("daily_binance_etl", &["--logical-date", "2026-11-22"]);
    let chains: Vec<_> = (0..3).map(|_| trigger("chain", &[])).collect();

    let etl = etl.join().expect("trigger thread");
    assert_eq!(etl.status.code(), Some(1), "{}", text(&etl.stderr));
    let run = home.run_json(text(&etl.stdout).lines().next().expect("run id"));
    assert_eq!(task_state(&run, "extract"), "success", "{run:#}");
    let transform = &attempts(&run, "transform")[0];
    let error = transform["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("killed: out of memory (memory allocation of")
            && error.ends_with(&format!("limit {LIMIT})")),
        "{error}"
    );
    assert_usage_recorded(transform);
    assert_eq!(task_state(&run, "load"), "upstream_failed");
    for chain in chains {
        let out = chain.join().expect("trigger thread");
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    // The stream went on through it all, on its first connection.
    let targets = last_ids(&sim);
    wait_until_staged(&staging, &targets, Duration::from_secs(30));
    serve.signal("TERM");
    assert!(serve.wait_exit(Duration::from_secs(20)));
    assert_every_id_once(&staging, &targets);
    let connections = serve
        .log
        .iter()
        .filter(|line| line.contains("stream connected"))
        .count();
    assert_eq!(connections, 1, "{}", serve.log.join("\n"));
}

/// The pids of `parent`'s child processes whose command line holds `needle`.
fn children_with(parent: u32, needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(parent) && text(&cmdline).replace('\0', " ").contains(needle) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn a_killed_stream_process_is_restarted_and_loses_no_trade() {
    let home = Home::new();
    home.write_dag("trades", &stream_yaml());
    let sim = Simulator::with_rate(SYMBOLS, RATE);
    let staging = format!("sqlite://{}", home.file("data/staging.db").display());
    let mut serve = Server::spawn(serve_command(&home, &sim, &staging), "stream connected");
    let streams = children_with(serve.pid(), "stream run trades");
    assert_eq!(streams.len(), 1, "one process for the stream: {streams:?}");

    let killed = std::process::Command::new("kill")
        .args(["-KILL", &streams[0].to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    serve.wait_for_log("stream failed; restarting", Duration::from_secs(10));
    serve.wait_for_log("stream connected", Duration::from_secs(20));
    let again = children_with(serve.pid(), "stream run trades");
    assert_eq!(again.len(), 1, "{again:?}");
    assert_ne!(again, streams, "a new process");

    // What the market traded while no process listened is fetched again.
    let targets = last_ids(&sim);
    wait_until_staged(&staging, &targets, Duration::from_secs(30));
    serve.signal("TERM");
    assert!(serve.wait_exit(Duration::from_secs(20)));
    assert_every_id_once(&staging, &targets);
}

#[test]
fn a_shutdown_past_its_grace_interrupts_the_attempt_and_kills_its_commands() {
    let home = Home::new();
    home.write_dag(
        "long",
        "tasks:\n  - { id: wait, kind: shell, with: { command: 'sleep 37.5 & echo $! > sleeper.pid; wait' } }\n",
    );
    let mut server = Server::spawn(
        home.command(&["serve", "--grace", "200ms"]),
        "orch serve started",
    );
    let run_id = crate::support::last_line(&home.orch(&["trigger", "long"]));
    crate::support::wait_for_file(&home.file("sleeper.pid"), Duration::from_secs(10));
    server.signal("TERM");
    assert!(server.wait_exit(Duration::from_secs(20)));

    let run = home.run_json(&run_id);
    let attempt = &attempts(&run, "wait")[0];
    assert_eq!(
        attempt["error"], "interrupted: orch shut down before the attempt finished",
        "{run:#}"
    );
    assert_usage_recorded(attempt);
    let sleeper = std::fs::read_to_string(home.file("sleeper.pid")).expect("sleeper pid");
    assert!(
        !is_running(sleeper.trim()),
        "the interrupted attempt's command {sleeper} is still running"
    );
}
