//! The same scenarios with the metadata database in PostgreSQL (`ORCH_DATABASE_URL`).

use crate::support::Home;
use crate::{inspect, recovery, run, serve};

#[test]
fn postgres_retry_chain() {
    if let Some(home) = Home::postgres("retry_chain") {
        run::a_failing_then_succeeding_task_is_retried_and_the_run_succeeds_with(&home);
    }
}

#[test]
fn postgres_trigger_wait() {
    if let Some(home) = Home::postgres("trigger_wait") {
        serve::trigger_wait_runs_through_the_server_with(&home);
    }
}

#[test]
fn postgres_catchup() {
    if let Some(home) = Home::postgres("catchup") {
        serve::scheduled_runs_catch_up_from_start_date_with(&home);
    }
}

#[test]
fn postgres_kill_9_recovery() {
    if let Some(home) = Home::postgres("kill_9_recovery") {
        recovery::after_kill_9_the_next_server_fails_the_orphaned_attempt_and_retries_it_with(
            &home,
        );
    }
}

#[test]
fn postgres_pause_flags() {
    if let Some(home) = Home::postgres("pause_flags") {
        inspect::dags_list_show_and_pause_with(&home);
    }
}
