//! `for_each:`: a task mapped over a list at run time, each instance on its own.

use std::time::Duration;

use crate::support::{Home, attempts, run_id_of, task_state, text};

#[test]
fn mapped_instances_run_retry_and_clear_on_their_own() {
    mapped_instances_run_retry_and_clear_on_their_own_with(&Home::new());
}

#[test]
fn mapped_instances_run_retry_and_clear_on_their_own_on_postgres() {
    if let Some(home) = Home::postgres("mapping") {
        mapped_instances_run_retry_and_clear_on_their_own_with(&home);
    }
}

fn mapped_instances_run_retry_and_clear_on_their_own_with(home: &Home) {
    let marker = home.file("stx-failed-once");
    home.write_dag(
        "per_symbol",
        &format!(
            r#"id: per_symbol
params:
  symbols:
    type: list
    default: [BTCUSDT, AAVEUSDT, STXUSDT, ARBUSDT]
tasks:
  - id: fetch
    kind: shell
    for_each: "{{{{ params.symbols }}}}"
    retries: 1
    retry_delay: 0s
    with:
      command: |
        echo "fetching {{{{ item }}}} as instance {{{{ map_index }}}}"
        if [ {{{{ item }}}} = STXUSDT ] && [ ! -e {marker} ]; then touch {marker}; echo "429 from the exchange" >&2; exit 1; fi
        echo "orch:output rows={{{{ map_index }}}}0"
  - id: list_days
    kind: shell
    with: {{ command: "echo 'orch:output days=2026-11-20, 2026-11-21'" }}
  - id: per_day
    kind: shell
    depends_on: [list_days]
    for_each: "{{{{ outputs.list_days.days }}}}"
    with: {{ command: "echo day {{{{ item }}}}" }}
  - id: report
    kind: shell
    depends_on: [fetch, per_day]
    with: {{ command: "echo third {{{{ outputs.fetch[2].rows }}}} of {{{{ outputs.fetch | length }}}}" }}
"#,
            marker = marker.display()
        ),
    );
    let out = home.orch(&["run", "per_symbol"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run_id = run_id_of(&out);
    let run = home.run_json(&run_id);
    assert_eq!(run["state"], "success", "{run:#}");
    assert_eq!(task_state(&run, "fetch"), "success");
    assert!(
        attempts(&run, "fetch").is_empty(),
        "the mapped task runs nothing itself"
    );
    let symbols = ["BTCUSDT", "AAVEUSDT", "STXUSDT", "ARBUSDT"];
    for (index, symbol) in symbols.iter().enumerate() {
        let id = format!("fetch[{index}]");
        let task = run["tasks"]
            .as_array()
            .and_then(|tasks| tasks.iter().find(|t| t["task_id"] == id.as_str()))
            .unwrap_or_else(|| panic!("no {id} in {run:#}"));
        assert_eq!(task["map_index"], index);
        assert_eq!(task["item"], *symbol);
        assert_eq!(task["state"], "success");
        let tries = attempts(&run, &id).len();
        assert_eq!(
            tries,
            if *symbol == "STXUSDT" { 2 } else { 1 },
            "{id} retried alone"
        );
    }
    let stx = &attempts(&run, "fetch[2]")[0];
    assert!(stx["error"].as_str().unwrap_or("").contains("429"), "{stx}");
    let logs = text(&home.orch(&["logs", &run_id, "--task", "fetch[2]"]).stdout);
    let tries = logs
        .lines()
        .filter(|l| *l == "fetching STXUSDT as instance 2");
    assert_eq!(tries.count(), 2, "{logs}");
    assert_eq!(task_state(&run, "per_day[1]"), "success");
    let day = text(&home.orch(&["logs", &run_id, "--task", "per_day[1]"]).stdout);
    assert!(day.contains("day 2026-11-21"), "{day}");
    let report = text(&home.orch(&["logs", &run_id, "--task", "report"]).stdout);
    assert!(report.contains("third 20 of 4"), "{report}");
    let shown = text(&home.orch(&["runs", "show", &run_id]).stdout);
    assert!(shown.contains("fetch[3]"), "{shown}");

    // One instance cleared: it alone runs again, then what is downstream of its task.
    let out = home.orch(&["tasks", "clear", &run_id, "fetch[1]", "--downstream"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut serve = home.serve();
    let run = home.wait_for_run(&run_id, Duration::from_secs(30));
    serve.signal("TERM");
    assert!(serve.wait_exit(Duration::from_secs(20)));
    assert_eq!(run["state"], "success", "{run:#}");
    assert_eq!(attempts(&run, "fetch[1]").len(), 2);
    assert_eq!(attempts(&run, "fetch[0]").len(), 1);
    assert_eq!(attempts(&run, "fetch[2]").len(), 2);
    assert_eq!(attempts(&run, "per_day[0]").len(), 1);
    assert_eq!(attempts(&run, "report").len(), 2);

    // Marking an instance sums its mapped task up again.
    let out = home.orch(&["tasks", "mark", &run_id, "fetch[3]", "failed"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = home.run_json(&run_id);
    assert_eq!(task_state(&run, "fetch"), "failed", "{run:#}");
    assert_eq!(run["state"], "failed");
}

#[test]
fn an_empty_list_skips_a_mapped_task_and_a_bad_one_fails_it() {
    let home = Home::new();
    home.write_dag(
        "mapped",
        r#"id: mapped
params:
  symbols: { type: list, default: [] }
  bad: "{not json"
tasks:
  - id: fetch
    kind: shell
    for_each: "{{ params.symbols }}"
    with: { command: "echo {{ item }}" }
  - id: after
    kind: shell
    depends_on: [fetch]
    with: { command: "echo after" }
  - id: broken
    kind: shell
    for_each: "{{ params.bad | length }}"
    retries: 3
    with: { command: "echo {{ item }}" }
"#,
    );
    let out = home.orch(&["run", "mapped"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let run = home.run_json(&run_id_of(&out));
    assert_eq!(task_state(&run, "fetch"), "skipped", "{run:#}");
    assert_eq!(task_state(&run, "after"), "skipped");
    assert_eq!(task_state(&run, "broken"), "failed");
    let failed = attempts(&run, "broken");
    assert_eq!(failed.len(), 1, "no retry can help: {run:#}");
    let error = failed[0]["error"].as_str().unwrap_or("");
    assert!(error.contains("gave 9, not a list"), "{error}");
}

#[test]
fn mapping_mistakes_are_refused_when_the_file_loads() {
    let home = Home::new();
    for (yaml, expected) in [
        (
            "tasks:\n  - id: a\n    kind: shell\n    with: { command: \"echo {{ item }}\" }\n",
            "bad.yaml:4:11: task `a` reads `item` or `map_index`, which only a task with `for_each:` has",
        ),
        (
            "tasks:\n  - id: a\n    kind: shell\n    for_each: 3\n    with: { command: \"echo {{ item }}\" }\n",
            "bad.yaml:4:15: task `a`: `for_each` must be a list, or a template giving one",
        ),
        (
            "tasks:\n  - id: a\n    kind: shell\n    for_each: []\n    with: { command: \"echo {{ item }}\" }\n",
            "bad.yaml:4:15: task `a`: `for_each` is an empty list",
        ),
        (
            "tasks:\n  - id: a\n    kind: shell\n    for_each: \"{{ params.nope }}\"\n    with: { command: \"echo {{ item }}\" }\n",
            "bad.yaml:4:15: task `a`: `for_each`: template `{{ params.nope }}` uses unknown variable params.nope",
        ),
    ] {
        home.write_dag("bad", yaml);
        let out = home.orch(&["dags", "validate"]);
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains(expected), "{yaml}\n{err}");
    }
}
