//! `kind: wait_for`: a sensor. It succeeds once its condition holds, looking every
//! `poke_interval` until `timeout`:
//!
//! - `dag_run`: another DAG's run for the same logical date (moved by `offset`) succeeded;
//! - `sql`: a query on the staging store or the warehouse returns a true first value;
//! - a plug-in's [`SensorCondition`] (the market's `lake_object` and `stream`).
//!
//! In `poke` mode the attempt waits, holding its worker slot. In `reschedule` mode each look is
//! one short attempt: while the condition does not hold the task waits `up_for_retry` for
//! `poke_interval`, freeing its slot, without using its retries.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::{BoxFuture, TaskContext, TaskError, TaskKind, TaskOutput, parse_with};
use crate::template;

/// The sensor kind, with the conditions plug-ins gave it beside its own.
#[derive(Default)]
pub struct WaitFor {
    conditions: Vec<Arc<dyn SensorCondition>>,
}

impl WaitFor {
    /// A sensor that also waits on `conditions`.
    pub fn with(conditions: Vec<Arc<dyn SensorCondition>>) -> WaitFor {
        WaitFor { conditions }
    }
}

/// A condition a plug-in adds to `wait_for`, under its own key of `with:`.
pub trait SensorCondition: Send + Sync {
    /// Its key in `with:`.
    fn key(&self) -> &'static str;

    /// Checks its value as written in the DAG file (templates unrendered).
    fn check(&self, value: &Value) -> Result<(), String>;

    /// What it waits for, for the log and the errors.
    fn describe(&self, value: &Value) -> String;

    /// Whether it holds now.
    fn holds<'a>(
        &'a self,
        value: &'a Value,
        ctx: &'a TaskContext,
    ) -> BoxFuture<'a, Result<bool, TaskError>>;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitConfig {
    dag_run: Option<DagRunCondition>,
    sql: Option<SqlCondition>,
    /// A plug-in's condition and its value, taken out of `with:` before the rest is read.
    #[serde(skip)]
    plugged: Option<(Arc<dyn SensorCondition>, Value)>,
    /// How often to look: `30s` by default.
    poke_interval: Option<String>,
    /// How long to wait in all before failing: `1h` by default.
    timeout: Option<String>,
    #[serde(default)]
    mode: Mode,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DagRunCondition {
    dag_id: String,
    /// The other run's logical date is this run's plus `offset` (`-1d`: the day before).
    offset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlCondition {
    /// `staging`, `warehouse`, or a name of orch.yaml's `connections:`.
    connection: String,
    query: String,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Mode {
    #[default]
    Poke,
    Reschedule,
}

/// A setting to check when the file loads: one without a template in it.
fn literal(text: &Option<String>) -> Option<&str> {
    text.as_deref().filter(|t| !t.contains("{{"))
}

const DEFAULT_POKE: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// A duration, or its default; `offset` may be negative (`-1d`).
fn duration(text: Option<&str>, default: Duration, what: &str) -> Result<Duration, String> {
    match text {
        None => Ok(default),
        Some(t) => humantime::parse_duration(t.trim())
            .map_err(|e| format!("`{what}`: bad duration `{t}`: {e} (write e.g. 30s, 5m)")),
    }
}

fn signed_duration(text: &str) -> Result<chrono::Duration, String> {
    let (negative, body) = match text.trim().strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.trim().trim_start_matches('+')),
    };
    let d = humantime::parse_duration(body)
        .map_err(|e| format!("`offset`: bad duration `{text}`: {e} (write e.g. -1d, 1h)"))?;
    let d = chrono::Duration::from_std(d).map_err(|e| format!("`offset` `{text}`: {e}"))?;
    Ok(if negative { -d } else { d })
}

impl WaitFor {
    /// Reads `with:`: the plug-ins' conditions first, then the sensor's own settings.
    fn parse(&self, with: &Value) -> Result<WaitConfig, String> {
        let mut rest = with.clone();
        let mut plugged = Vec::new();
        if let Value::Object(map) = &mut rest {
            for condition in &self.conditions {
                if let Some(value) = map.remove(condition.key()) {
                    plugged.push((Arc::clone(condition), value));
                }
            }
        }
        let mut config: WaitConfig = parse_with(&rest)?;
        let given = plugged.len()
            + usize::from(config.dag_run.is_some())
            + usize::from(config.sql.is_some());
        if given != 1 {
            let mut keys = vec!["dag_run", "sql"];
            keys.extend(self.conditions.iter().map(|c| c.key()));
            keys.sort_unstable();
            let mut quoted: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
            let last = quoted.pop().unwrap_or_default();
            return Err(format!(
                "give exactly one condition: {} or {last}",
                quoted.join(", ")
            ));
        }
        config.plugged = plugged.pop();
        config.check()?;
        Ok(config)
    }
}

impl WaitConfig {
    fn check(&self) -> Result<(), String> {
        if let Some((condition, value)) = &self.plugged {
            condition.check(value)?;
        }
        duration(literal(&self.poke_interval), DEFAULT_POKE, "poke_interval")?;
        duration(literal(&self.timeout), DEFAULT_TIMEOUT, "timeout")?;
        if let Some(offset) = self.dag_run.as_ref().and_then(|d| d.offset.as_deref())
            && !offset.contains("{{")
        {
            signed_duration(offset)?;
        }
        if let Some(sql) = &self.sql {
            if sql.connection.trim().is_empty() {
                return Err("`sql.connection` is empty".to_string());
            }
            // The query is rendered as text: a value a run's conf, an upstream task or an
            // exchange chose would become SQL. Only the values orch formats itself may go in.
            if template::reads_any(&sql.query, UNTRUSTED_IN_SQL) {
                return Err(format!(
                    "`sql.query` reads {}: a value a run or a task chose must not become SQL; use the run's dates ({{{{ ds }}}}, {{{{ data_interval_start }}}}), or a `sql` task, whose `parameters` are bound",
                    UNTRUSTED_IN_SQL.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// What it waits for, for the log and the errors.
    fn describe(&self) -> String {
        if let Some(d) = &self.dag_run {
            format!(
                "a successful run of `{}`{}",
                d.dag_id,
                d.offset
                    .as_deref()
                    .map(|o| format!(" at offset {o}"))
                    .unwrap_or_default()
            )
        } else if let Some(sql) = &self.sql {
            format!("`{}` on {} to be true", sql.query, sql.connection)
        } else if let Some((condition, value)) = &self.plugged {
            condition.describe(value)
        } else {
            "nothing".to_string()
        }
    }

    /// Whether the condition holds now.
    async fn holds(&self, ctx: &TaskContext) -> Result<bool, TaskError> {
        if let Some(d) = &self.dag_run {
            let this = ctx
                .store
                .run(&ctx.run_id)
                .await
                .map_err(|e| TaskError::transient(e.to_string()))?
                .ok_or_else(|| TaskError::permanent("this run is not in the run history"))?;
            let offset = match &d.offset {
                Some(o) => signed_duration(o).map_err(TaskError::permanent)?,
                None => chrono::Duration::zero(),
            };
            let other = ctx
                .store
                .run_for_date(&d.dag_id, this.logical_date + offset)
                .await
                .map_err(|e| TaskError::transient(e.to_string()))?;
            return Ok(other.is_some_and(|r| r.state == crate::store::RunState::Success));
        }
        if let Some(sql) = &self.sql {
            let mut conn = super::open_database(&ctx.data, &sql.connection).await?;
            return query_is_true(&mut conn, &sql.query).await;
        }
        if let Some((condition, value)) = &self.plugged {
            return condition.holds(value, ctx).await;
        }
        Ok(false)
    }
}

/// The template variables whose values orch does not format itself: a sensor's query must
/// not read them.
const UNTRUSTED_IN_SQL: &[&str] = &["params", "outputs", "env", "item"];

/// Runs `query` on `conn`; true when its first value is true, a non-zero number or a
/// non-empty text other than `false`/`0`.
async fn query_is_true(conn: &mut sqlx::AnyConnection, query: &str) -> Result<bool, TaskError> {
    use sqlx::Row;
    // The query is the DAG author's, as a `shell` command is: no run's value is spliced in
    // unless a template of the file puts it there.
    let row = sqlx::query(sqlx::AssertSqlSafe(query.to_string()))
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| TaskError::permanent(format!("the query failed: {e}")))?;
    let Some(row) = row else {
        return Ok(false);
    };
    if let Ok(v) = row.try_get::<bool, _>(0) {
        return Ok(v);
    }
    if let Ok(v) = row.try_get::<i64, _>(0) {
        return Ok(v != 0);
    }
    if let Ok(v) = row.try_get::<f64, _>(0) {
        return Ok(v != 0.0);
    }
    if let Ok(v) = row.try_get::<String, _>(0) {
        return Ok(!matches!(v.trim(), "" | "0" | "false" | "f"));
    }
    Ok(false)
}

/// When this task first started looking, across reschedules: its first attempt in this run.
async fn first_look(ctx: &TaskContext) -> DateTime<Utc> {
    ctx.store
        .attempts(&ctx.run_id)
        .await
        .ok()
        .and_then(|attempts| {
            attempts
                .iter()
                .filter(|a| a.task_id == ctx.task_id)
                .map(|a| a.started_at)
                .min()
        })
        .unwrap_or_else(Utc::now)
}

impl TaskKind for WaitFor {
    fn name(&self) -> &'static str {
        "wait_for"
    }

    fn check(&self, with: &Value) -> Result<(), String> {
        self.parse(with).map(drop)
    }

    fn run<'a>(
        &'a self,
        with: Value,
        ctx: &'a TaskContext,
    ) -> BoxFuture<'a, Result<TaskOutput, TaskError>> {
        Box::pin(async move {
            let config = self.parse(&with).map_err(TaskError::permanent)?;
            let poke = duration(
                config.poke_interval.as_deref(),
                DEFAULT_POKE,
                "poke_interval",
            )
            .map_err(TaskError::permanent)?;
            let timeout = duration(config.timeout.as_deref(), DEFAULT_TIMEOUT, "timeout")
                .map_err(TaskError::permanent)?;
            let what = config.describe();
            let since = first_look(ctx).await;
            let deadline =
                since + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
            ctx.log.note(&format!("waiting for {what}"));
            loop {
                if config.holds(ctx).await? {
                    let waited = (Utc::now() - since).num_milliseconds().max(0) as f64 / 1000.0;
                    ctx.log.note(&format!("{what}: there after {waited:.1}s"));
                    let mut metrics = serde_json::Map::new();
                    metrics.insert("waited_s".to_string(), Value::from(waited));
                    return Ok(TaskOutput {
                        rows: None,
                        metrics: Some(metrics),
                        ..TaskOutput::default()
                    });
                }
                if Utc::now() >= deadline {
                    return Err(TaskError::permanent(format!(
                        "gave up waiting for {what} after {}",
                        humantime::format_duration(timeout)
                    )));
                }
                if config.mode == Mode::Reschedule {
                    return Err(TaskError::reschedule(
                        format!("not yet: waiting for {what}"),
                        poke,
                    ));
                }
                tokio::time::sleep(poke).await;
            }
        })
    }
}
