//! `kind: wait_for`: sensors waiting for another DAG's run, a table, the lake and a stream.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{Home, attempts, last_line, run_id_of, task_state, text};

#[test]
fn a_rescheduling_sensor_waits_for_another_dags_run_without_holding_a_slot() {
    let home = Home::new();
    home.write_dag(
        "upstream_daily",
        "id: upstream_daily\nschedule: '@daily'\nstart_date: 2026-11-01\npaused: true\ntasks:\n  - {id: produce, kind: noop}\n",
    );
    home.write_dag(
        "downstream_daily",
        r#"id: downstream_daily
tasks:
  - id: wait
    kind: wait_for
    with: { dag_run: { dag_id: upstream_daily }, poke_interval: 200ms, timeout: 60s, mode: reschedule }
  - { id: after, kind: noop, depends_on: [wait] }
"#,
    );
    let _serve = home.serve();
    let out = home.orch(&[
        "trigger",
        "downstream_daily",
        "--logical-date",
        "2026-11-20",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run_id = last_line(&out);
    // It looks, finds nothing, and waits between looks: several short attempts.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let run = home.run_json(&run_id);
        if attempts(&run, "wait").len() >= 3 {
            assert_eq!(run["state"], "running");
            let first = &attempts(&run, "wait")[0];
            assert!(
                first["error"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("not yet: waiting for a successful run of `upstream_daily`"),
                "{first}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sensor did not look again: {run:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The day it waits for runs: the sensor lets the run go on.
    let backfill = home.orch(&[
        "backfill",
        "upstream_daily",
        "--start",
        "2026-11-20",
        "--end",
        "2026-11-20",
    ]);
    assert!(backfill.status.success(), "{}", text(&backfill.stderr));
    let run = home.wait_for_run(&run_id, Duration::from_secs(20));
    assert_eq!(run["state"], "success", "{run:#}");
    assert_eq!(task_state(&run, "after"), "success");
    let looks = attempts(&run, "wait").len();
    assert!(
        looks >= 4,
        "{looks} looks, more than its retries (0) allow: reschedules use none"
    );
}

#[test]
fn poking_sensors_wait_for_a_table_a_stream_and_give_up_at_their_timeout() {
    let home = Home::new();
    let warehouse = format!("sqlite://{}", home.file("warehouse.db").display());
    crate::support::sql(
        &format!("{warehouse}?mode=rwc"),
        "CREATE TABLE loads (day TEXT)",
    );
    home.write_dag(
        "table_sensor",
        r#"id: table_sensor
tasks:
  - id: wait
    kind: wait_for
    with: { sql: { connection: warehouse, query: "SELECT COUNT(*) FROM loads WHERE day = '{{ ds }}'" }, poke_interval: 100ms, timeout: 30s }
"#,
    );
    let child = home
        .command(&["run", "table_sensor", "--logical-date", "2026-11-20"])
        .env("ORCH_WAREHOUSE_URL", &warehouse)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("orch run");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let runs = text(&home.orch(&["runs", "list", "--json"]).stdout);
        if runs.contains("\"running\"") {
            break;
        }
        assert!(Instant::now() < deadline, "the run never started: {runs}");
        std::thread::sleep(Duration::from_millis(50));
    }
    crate::support::sql(&warehouse, "INSERT INTO loads VALUES ('2026-11-20')");
    let out = child.wait_with_output().expect("orch run ends");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run_id = run_id_of(&out);
    let run = home.run_json(&run_id);
    assert_eq!(
        attempts(&run, "wait").len(),
        1,
        "poke mode waits within one attempt"
    );
    assert!(
        attempts(&run, "wait")[0]["metrics"]["waited_s"]
            .as_f64()
            .is_some()
    );

    // A stream that has committed past the run's end.
    home.write_dag(
        "stream_sensor",
        "id: stream_sensor\ntasks:\n  - id: wait\n    kind: wait_for\n    with: { stream: { stream_id: trades, committed_past: '{{ data_interval_end }}' }, poke_interval: 100ms, timeout: 5s }\n",
    );
    home.sql(
        "INSERT INTO stream_state (stream_id, owner, state, report, updated_at) VALUES
         ('trades', 'x', 'connected', '{\"trades_committed\":1,\"trades_per_second\":0,\"last_trade_time\":4102444800000,\"lag_p50_ms\":null,\"lag_p99_ms\":null,\"gaps_detected\":0,\"gap_trades_filled\":0,\"malformed_frames\":0,\"reconnects\":0}', '2026-11-20T00:00:00.000000Z')",
    );
    let out = home.orch(&["run", "stream_sensor", "--logical-date", "2026-11-20"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A lake object that never comes: the sensor gives up at its timeout, for good.
    home.write_dag(
        "lake_sensor",
        "id: lake_sensor\ntasks:\n  - id: wait\n    kind: wait_for\n    retries: 2\n    with: { lake_object: 'raw/never/{{ ds }}', poke_interval: 100ms, timeout: 1s }\n",
    );
    let out = home.orch(&["run", "lake_sensor"]);
    assert!(!out.status.success());
    let run_id = run_id_of(&out);
    let run = home.run_json(&run_id);
    let wait = attempts(&run, "wait");
    assert_eq!(wait.len(), 1, "giving up is not retried");
    assert!(
        wait[0]["error"]
            .as_str()
            .unwrap_or("")
            .starts_with("gave up waiting for `raw/never/"),
        "{run:#}"
    );

    // Two conditions, or none, fail validation.
    home.write_dag(
        "bad_sensor",
        "id: bad_sensor\ntasks:\n  - id: wait\n    kind: wait_for\n    with: { lake_object: x, stream: { stream_id: s, committed_past: x } }\n",
    );
    let out = home.orch(&["dags", "validate"]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains("give exactly one condition"), "{all}");

    // A run's conf must not become SQL: a query reading params is refused with its place.
    home.write_dag(
        "bad_sensor",
        "id: bad_sensor\nparams: { day: '2026-11-20' }\ntasks:\n  - id: wait\n    kind: wait_for\n    with: { sql: { connection: warehouse, query: \"SELECT 1 WHERE '{{ params.day }}' <> ''\" } }\n",
    );
    let out = home.orch(&["dags", "validate"]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        all.contains("bad_sensor.yaml:6:11: task `wait` (wait_for): `sql.query` reads params"),
        "{all}"
    );
}
