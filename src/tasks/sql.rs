//! `kind: sql`: one statement on the staging store or the warehouse (SQLite or PostgreSQL).
//!
//! The statement is used exactly as written in the DAG file, never rendered: values a run
//! brings (its date, its `--conf`) reach it only as bound `parameters` (`$1`, `$2`, ...), so a
//! value never becomes SQL.

use serde::Deserialize;
use serde_json::Value;

use super::{BoxFuture, TaskContext, TaskError, TaskKind, TaskOutput, parse_with};

pub struct Sql;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlConfig {
    /// `staging`, `warehouse`, or a name of orch.yaml's `connections:`.
    connection: String,
    statement: String,
    /// Bound to `$1`, `$2`, ... in order; templates, rendered per run.
    #[serde(default)]
    parameters: Vec<Value>,
}

impl SqlConfig {
    fn check(&self) -> Result<(), String> {
        if self.connection.trim().is_empty() {
            return Err(
                "`connection` is empty: `staging`, `warehouse` or a name of `connections:`"
                    .to_string(),
            );
        }
        if self.statement.trim().is_empty() {
            return Err("`statement` is empty".to_string());
        }
        if ["{{", "{%"].iter().any(|t| self.statement.contains(t)) {
            return Err(
                "`statement` is not a template: put run values in `parameters` and write $1, $2, ... where they go"
                    .to_string(),
            );
        }
        Ok(())
    }
}

impl TaskKind for Sql {
    fn name(&self) -> &'static str {
        "sql"
    }

    fn check(&self, with: &Value) -> Result<(), String> {
        parse_with::<SqlConfig>(with)?.check()
    }

    /// The statement is never rendered (see the module's docs).
    fn own_templates(&self) -> &'static [&'static str] {
        &["statement"]
    }

    fn run<'a>(
        &'a self,
        with: Value,
        ctx: &'a TaskContext,
    ) -> BoxFuture<'a, Result<TaskOutput, TaskError>> {
        Box::pin(async move {
            let config: SqlConfig = parse_with(&with).map_err(TaskError::permanent)?;
            config.check().map_err(TaskError::permanent)?;
            let mut conn = super::open_database(&ctx.data, &config.connection).await?;
            ctx.log.note(&format!(
                "{}: {} with {} parameters",
                config.connection,
                config.statement.trim(),
                config.parameters.len()
            ));
            // Audited: the statement is the DAG file's text, unrendered; values are bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(config.statement.clone()));
            for value in &config.parameters {
                query = match value {
                    Value::Null => query.bind(None::<String>),
                    Value::Bool(b) => query.bind(*b),
                    Value::Number(n) if n.is_i64() => query.bind(n.as_i64().unwrap_or(0)),
                    Value::Number(n) => query.bind(n.as_f64().unwrap_or(0.0)),
                    Value::String(s) => query.bind(s.clone()),
                    other => query.bind(other.to_string()),
                };
            }
            let done = query.execute(&mut conn).await.map_err(|e| {
                let message = format!("the statement failed: {e}");
                if crate::database::is_transient(&e) {
                    TaskError::transient(message)
                } else {
                    TaskError::permanent(message)
                }
            })?;
            ctx.log
                .note(&format!("{} rows affected", done.rows_affected()));
            Ok(TaskOutput {
                rows: Some(done.rows_affected()),
                metrics: None,
                ..TaskOutput::default()
            })
        })
    }
}
