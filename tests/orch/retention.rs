//! `retention:`: pruning the run history and its logs, by hand and by `orch serve`.

use std::time::Duration;

use crate::support::{Home, text};

/// `SELECT COUNT(*)` of a table of the home's metadata database.
fn count(home: &Home, table: &str) -> i64 {
    crate::support::block_on(async {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&home.database_url())
            .await
            .expect("connect");
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(&mut conn)
            .await
            .expect("count")
    })
}

/// `n` finished runs of `dag` of `run_type`, the i-th queued `i * step` ago, each with one
/// task instance and one attempt.
fn history(home: &Home, dag: &str, run_type: &str, n: u32, step: &str, first: u32) {
    let last = first + n - 1;
    // The i-th run's time, `i * step` minutes ago, as the history writes times.
    let times = if home.database_url().starts_with("postgres") {
        format!(
            "SELECT i, to_char((now() AT TIME ZONE 'UTC') - i * {step} * interval '1 minute',
                 'YYYY-MM-DD\"T\"HH24:MI:SS.000000\"Z\"') AS t FROM generate_series({first}, {last}) AS i"
        )
    } else {
        format!(
            "WITH RECURSIVE k(i) AS (SELECT {first} UNION ALL SELECT i + 1 FROM k WHERE i < {last})
             SELECT i, strftime('%Y-%m-%dT%H:%M:%S.000000Z', 'now', '-' || (i * {step}) || ' minutes') AS t FROM k"
        )
    };
    home.sql(&format!(
        "INSERT INTO dag_runs (run_id, dag_id, run_type, logical_date, data_interval_start,
             data_interval_end, conf, state, queued_at, started_at, ended_at)
         SELECT '{dag}__{run_type}__' || i, '{dag}', '{run_type}', t, t, t, '{{}}', 'success', t, t, t
         FROM ({times}) AS times;
         INSERT INTO task_instances (run_id, task_id, position, state, try_number)
             SELECT run_id, 't', 0, 'success', 1 FROM dag_runs WHERE dag_id = '{dag}' AND run_id NOT IN (SELECT run_id FROM task_instances);
         INSERT INTO task_attempts (run_id, task_id, attempt, state, started_at, log_path)
             SELECT run_id, 't', 1, 'success', queued_at, 'x' FROM dag_runs WHERE dag_id = '{dag}' AND run_id NOT IN (SELECT run_id FROM task_attempts);",
    ));
}

#[test]
fn retention_prunes_a_long_history_but_keeps_running_runs_and_the_schedules_place() {
    retention_prunes_with(&Home::new());
}

#[test]
fn retention_prunes_a_long_history_on_postgres() {
    if let Some(home) = Home::postgres("retention") {
        retention_prunes_with(&home);
    }
}

fn retention_prunes_with(home: &Home) {
    std::fs::write(
        home.file("orch.yaml"),
        "retention: { days: 30, runs_per_dag: 100 }\n",
    )
    .expect("orch.yaml");
    assert!(
        home.orch(&["runs", "list"]).status.success(),
        "the database is created"
    );
    // 5,000 hourly scheduled runs, 5,000 manual runs ten minutes apart, and one scheduled run
    // of a year ago: the only run of its DAG, where its schedule goes on from.
    history(home, "hourly", "scheduled", 5_000, "60", 0);
    history(home, "often", "manual", 5_000, "10", 0);
    history(home, "yearly", "scheduled", 1, "525600", 1);
    // The oldest run of all is still running: it stays.
    home.sql("UPDATE dag_runs SET state = 'running' WHERE run_id = 'hourly__scheduled__4999'");
    home.sql(
        "INSERT INTO manual_actions (at, dag_id, run_id, action, actor, source)
         VALUES ('2026-01-01T00:00:00.000000Z', 'often', 'often__manual__4000', 'trigger', 'ada', 'cli'),
                ('2026-01-01T00:00:00.000000Z', 'often', 'often__manual__5', 'trigger', 'ada', 'cli')",
    );
    let old_logs = home.file("logs/often/often__manual__4000/t");
    let new_logs = home.file("logs/often/often__manual__5/t");
    for dir in [&old_logs, &new_logs] {
        std::fs::create_dir_all(dir).expect("log dir");
        std::fs::write(dir.join("1.log"), "output\n").expect("log");
    }
    assert_eq!(count(home, "dag_runs"), 10_001);

    let dry = home.orch(&["db", "prune", "--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let listed = text(&dry.stdout).lines().count();
    assert_eq!(listed, 10_001 - 202, "{}", text(&dry.stderr));
    assert!(text(&dry.stderr).contains("would delete 9799 runs"));
    assert_eq!(count(home, "dag_runs"), 10_001, "a dry run deletes nothing");

    let out = home.orch(&["db", "prune"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("deleted 9799 runs and 1 log folders"),
        "{}",
        text(&out.stderr)
    );
    // The newest 100 of each DAG, the running run, and the year-old scheduled run.
    assert_eq!(count(home, "dag_runs"), 202);
    assert_eq!(count(home, "task_instances"), 202);
    assert_eq!(count(home, "task_attempts"), 202);
    assert_eq!(count(home, "manual_actions"), 1);
    assert!(!old_logs.exists() && new_logs.exists());
    let shown = home.orch(&["runs", "show", "yearly__scheduled__1"]);
    assert!(shown.status.success(), "the schedule's place is kept");

    // `orch serve` applies the policy itself when it starts, then daily.
    history(home, "often", "manual", 50, "60", 100_000);
    let mut serve = home.serve();
    // It may have pruned before it said it started.
    let pruned = "retention: pruned the run history";
    let line = match serve.log.iter().find(|l| l.contains(pruned)) {
        Some(line) => line.clone(),
        None => serve.wait_for_log(pruned, Duration::from_secs(20)),
    };
    assert!(line.contains("runs=50"), "{line}");
    assert_eq!(count(home, "dag_runs"), 202);
}

#[test]
fn a_zero_retention_is_refused() {
    let home = Home::new();
    std::fs::write(home.file("orch.yaml"), "retention: { days: 0 }\n").expect("orch.yaml");
    let out = home.orch(&["db", "prune"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("retention: `days` and `runs_per_dag` must be at least 1"),
        "{}",
        text(&out.stderr)
    );
}
