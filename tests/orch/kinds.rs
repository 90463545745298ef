//! The `http` and `sql` task kinds.

use std::time::Duration;

use serde_json::Value;

use crate::alerts::receiver_answering;
use crate::support::{Home, attempts, run_id_of, task_state, text};

#[test]
fn http_tasks_send_retry_on_server_errors_and_count_rows_in_the_answer() {
    let home = Home::new();
    let (addr, caught) = receiver_answering(1, r#"{"data": {"items": [1, 2, 3]}}"#);
    home.write_dag(
        "calls",
        &format!(
            r#"id: calls
params: {{ day: "2026-11-20" }}
tasks:
  - id: load
    kind: http
    retries: 1
    retry_delay: 0s
    with:
      method: POST
      url: "http://{addr}/load?day={{{{ params.day }}}}"
      headers: {{ Authorization: "env:ORCH_VAR_API_TOKEN" }}
      body: {{ day: "{{{{ params.day }}}}", full: true }}
      rows_json_path: data.items
  - id: strict
    kind: http
    depends_on: [load]
    retries: 3
    retry_delay: 0s
    with: {{ url: "http://{addr}/strict", expect_status: [204] }}
"#
        ),
    );
    let out = home
        .command(&["run", "calls"])
        .env("ORCH_VAR_API_TOKEN", "Bearer t0k")
        .output()
        .expect("orch run");
    let run = home.run_json(&run_id_of(&out));
    assert_eq!(task_state(&run, "load"), "success", "{run:#}");
    assert_eq!(attempts(&run, "load").len(), 2, "a 500 is retried");
    assert!(
        attempts(&run, "load")[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("answered 500")
    );
    assert_eq!(attempts(&run, "load")[1]["rows"], 3);
    assert_eq!(task_state(&run, "strict"), "failed");
    assert_eq!(
        attempts(&run, "strict").len(),
        1,
        "an unexpected 200 is not retried"
    );

    let mut got = Vec::new();
    while let Ok(c) = caught.recv_timeout(Duration::from_millis(200)) {
        got.push(c);
    }
    let load = got
        .iter()
        .rfind(|c| c.path.starts_with("/load"))
        .expect("the load request");
    assert_eq!(load.path, "/load?day=2026-11-20");
    assert!(
        load.headers
            .contains(&("authorization".to_string(), "Bearer t0k".to_string()))
    );
    let body: Value = serde_json::from_str(&load.body).expect("JSON body");
    assert_eq!(body["day"], "2026-11-20");
    assert_eq!(body["full"], true);
    let log = text(
        &home
            .orch(&["logs", run["run_id"].as_str().unwrap_or("")])
            .stdout,
    );
    assert!(!log.contains("t0k"), "the header's secret is not logged");
}

#[test]
fn sql_tasks_bind_run_values_and_never_run_them_as_sql() {
    let home = Home::new();
    let warehouse = format!("sqlite://{}", home.file("warehouse.db").display());
    crate::support::sql(
        &format!("{warehouse}?mode=rwc"),
        "CREATE TABLE loads (day TEXT, n INTEGER);
         INSERT INTO loads VALUES ('2026-11-20', 1), ('2026-11-20', 2), ('2026-11-21', 3);",
    );
    home.write_dag(
        "cleanup",
        r#"id: cleanup
params: { day: "2026-11-20" }
tasks:
  - id: delete_day
    kind: sql
    with:
      connection: warehouse
      statement: "DELETE FROM loads WHERE day = $1"
      parameters: ["{{ params.day }}"]
"#,
    );
    // A value that would be SQL if it were spliced in is only a value.
    let out = home
        .command(&["run", "cleanup", "--conf", "day=x' OR '1'='1"])
        .env("ORCH_WAREHOUSE_URL", &warehouse)
        .output()
        .expect("orch run");
    let run = home.run_json(&run_id_of(&out));
    assert_eq!(task_state(&run, "delete_day"), "success");
    assert_eq!(
        attempts(&run, "delete_day")[0]["rows"],
        0,
        "nothing matched that day"
    );
    let out = home
        .command(&["run", "cleanup"])
        .env("ORCH_WAREHOUSE_URL", &warehouse)
        .output()
        .expect("orch run");
    let run = home.run_json(&run_id_of(&out));
    assert_eq!(attempts(&run, "delete_day")[0]["rows"], 2);

    home.write_dag(
        "templated_sql",
        "id: templated_sql\ntasks:\n  - id: a\n    kind: sql\n    with: { connection: warehouse, statement: \"DELETE FROM loads WHERE day = '{{ ds }}'\" }\n",
    );
    let out = home.orch(&["dags", "validate"]);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains("`statement` is not a template"), "{all}");
}

#[test]
fn sql_tasks_reach_named_connections_whose_urls_stay_out_of_the_files() {
    let home = Home::new();
    let db = home.file("analytics.db");
    let url = format!("sqlite://{}", db.display());
    crate::support::sql(
        &format!("{url}?mode=rwc"),
        "CREATE TABLE events (n INTEGER); INSERT INTO events VALUES (1), (2);",
    );
    std::fs::write(
        home.file("orch.yaml"),
        "connections:\n  analytics: { url_env: ORCH_TEST_ANALYTICS_URL }\n  from_file: { url_file: analytics.url }\n",
    )
    .expect("orch.yaml");
    std::fs::write(home.file("analytics.url"), format!("{url}\n")).expect("url file");
    home.write_dag(
        "analytics",
        "id: analytics\ntasks:\n  - {id: purge, kind: sql, with: {connection: analytics, statement: 'DELETE FROM events WHERE n = $1', parameters: [1]}}\n  - {id: count, kind: wait_for, depends_on: [purge], with: {sql: {connection: from_file, query: 'SELECT COUNT(*) = 1 FROM events'}, poke_interval: 100ms, timeout: 5s}}\n",
    );
    // Without its variable the task says which is missing; other commands do not care.
    let out = home.orch(&["run", "analytics"]);
    let run = home.run_json(&run_id_of(&out));
    let error = attempts(&run, "purge")[0]["error"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(
        error,
        "connection `analytics`: environment variable ORCH_TEST_ANALYTICS_URL is not set"
    );
    assert!(home.orch(&["runs", "list"]).status.success());

    let out = home
        .command(&["run", "analytics"])
        .env("ORCH_TEST_ANALYTICS_URL", &url)
        .output()
        .expect("orch run");
    let run = home.run_json(&run_id_of(&out));
    assert_eq!(run["state"], "success", "{run:#}");
    assert_eq!(attempts(&run, "purge")[0]["rows"], 1);

    std::fs::write(
        home.file("orch.yaml"),
        "connections:\n  both: { url: x, url_env: Y }\n",
    )
    .expect("orch.yaml");
    let out = home.orch(&["runs", "list"]);
    assert!(
        text(&out.stderr)
            .contains("connections: `both`: give exactly one of `url`, `url_env` or `url_file`"),
        "{}",
        text(&out.stderr)
    );
}
