//! `kind: noop`: succeeds at once. Airflow's EmptyOperator, for joins and benchmarks.

use serde::Deserialize;
use serde_json::Value;

use super::{BoxFuture, TaskContext, TaskError, TaskKind, TaskOutput, parse_with};

pub struct Noop;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoopConfig {}

impl TaskKind for Noop {
    fn name(&self) -> &'static str {
        "noop"
    }

    fn check(&self, with: &Value) -> Result<(), String> {
        parse_with::<NoopConfig>(with).map(|_| ())
    }

    fn needs_process(&self) -> bool {
        false
    }

    fn run<'a>(
        &'a self,
        _with: Value,
        _ctx: &'a TaskContext,
    ) -> BoxFuture<'a, Result<TaskOutput, TaskError>> {
        Box::pin(async { Ok(TaskOutput::default()) })
    }
}
