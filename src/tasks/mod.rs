//! Built-in task kinds behind one trait, and the registry that maps `kind:` names to them.
//!
//! A kind checks its `with:` configuration when a DAG file is loaded, so a mistake fails
//! `orch dags validate` rather than a run, and runs with the rendered configuration.
//! The core's kinds are in [`Registry::core`]; plug-ins (the market's kinds) add theirs with
//! [`Registry::register`], and the binary composes the two.

mod http;
mod noop;
mod shell;
mod sql;
mod wait_for;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::DataPlaces;
use crate::logs::AttemptLog;
use crate::store::Store;
use crate::template::{self, Quoting, RunVariables};

pub use http::Http;
pub use noop::Noop;
pub use shell::Shell;
pub use sql::Sql;
pub use wait_for::{SensorCondition, WaitFor};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl TaskContext {
    /// The day a day-based kind works on: its `date:` (`YYYY-MM-DD`), else the run's `ds`.
    pub(crate) fn day(&self, date: Option<&str>) -> Result<chrono::NaiveDate, String> {
        parse_day(date.unwrap_or(&self.ds))
    }
}

/// A `date:` of a day-based kind: `YYYY-MM-DD`.
fn parse_day(text: &str) -> Result<chrono::NaiveDate, String> {
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| format!("date `{text}` is not a day as YYYY-MM-DD"))
}

/// The UTC day `date` as `[from, to)` milliseconds since the epoch.
pub(crate) fn day_bounds_ms(date: chrono::NaiveDate) -> (i64, i64) {
    let from = date
        .and_time(chrono::NaiveTime::MIN)
        .and_utc()
        .timestamp_millis();
    (from, from + 86_400_000)
}

/// What one attempt of a task is given.
#[derive(Debug)]
pub struct TaskContext {
    pub dag_id: String,
    pub run_id: String,
    pub task_id: String,
    pub attempt: u32,
    /// The orch home; the working directory of shell tasks.
    pub home: PathBuf,
    /// The logical date as `YYYY-MM-DD`, for kinds that work on one day.
    pub ds: String,
    /// The DAG's params overridden by the run's conf, as data (e.g. a shell task's
    /// environment).
    pub params: serde_json::Map<String, Value>,
    pub log: Arc<AttemptLog>,
    pub processes: ProcessSink,
    /// The metadata database, for kinds that keep state across runs (watermarks).
    pub store: Store,
    pub data: DataPlaces,
}

/// Where a task reports the process groups it starts, so that orch, recovering from its own
/// crash, can kill what is left of them before retrying the task.
pub struct ProcessSink(Box<dyn Fn(u32) -> BoxFuture<'static, ()> + Send + Sync>);

impl ProcessSink {
    pub fn new(
        record: impl Fn(u32) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> ProcessSink {
        ProcessSink(Box::new(record))
    }

    /// Reports a started process group by its leader's pid; returns once it is recorded.
    pub async fn started(&self, pgid: u32) {
        (self.0)(pgid).await
    }
}

impl std::fmt::Debug for ProcessSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProcessSink")
    }
}

/// Why an attempt failed, and whether another attempt can help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    pub message: String,
    /// `false` when another attempt would fail the same way (a request the exchange refuses,
    /// an unknown symbol, a configuration that does not render): the task then fails without
    /// using its retries. Errors are retryable unless a kind knows better.
    pub retryable: bool,
    /// The task chose not to go on (a shell command's `skip_on_exit_codes`): it ends
    /// `skipped`, not `failed`, and so do the tasks that needed it to succeed.
    pub skipped: bool,
    /// Not a failure: a sensor in `reschedule` mode looked and must look again after this
    /// long, without using a retry.
    pub reschedule: Option<std::time::Duration>,
}

impl TaskError {
    /// An error a later attempt may get past; the task's retry policy decides.
    pub fn transient(message: impl Into<String>) -> TaskError {
        TaskError {
            message: message.into(),
            retryable: true,
            skipped: false,
            reschedule: None,
        }
    }

    /// An error no retry can help.
    pub fn permanent(message: impl Into<String>) -> TaskError {
        TaskError {
            message: message.into(),
            retryable: false,
            skipped: false,
            reschedule: None,
        }
    }

    /// Not a failure: the task decided to be skipped, for the reason `message`.
    pub fn skipped(message: impl Into<String>) -> TaskError {
        TaskError {
            message: message.into(),
            retryable: false,
            skipped: true,
            reschedule: None,
        }
    }

    /// Not a failure: look again after `after`, without using a retry.
    pub fn reschedule(message: impl Into<String>, after: std::time::Duration) -> TaskError {
        TaskError {
            message: message.into(),
            retryable: true,
            skipped: false,
            reschedule: Some(after),
        }
    }

    /// The same error, said of `what`: `what: message`.
    pub fn context(self, what: impl std::fmt::Display) -> TaskError {
        TaskError {
            message: format!("{what}: {}", self.message),
            ..self
        }
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for TaskError {
    fn from(message: String) -> TaskError {
        TaskError::transient(message)
    }
}

impl From<&str> for TaskError {
    fn from(message: &str) -> TaskError {
        TaskError::transient(message)
    }
}

/// Errors of the stores and clients kinds use, which know whether a retry can help: `?` on
/// one makes a task error that says so.
pub trait Transient: std::fmt::Display {
    fn is_transient(&self) -> bool;
}

impl<E: Transient> From<E> for TaskError {
    fn from(error: E) -> TaskError {
        TaskError {
            message: error.to_string(),
            retryable: error.is_transient(),
            skipped: false,
            reschedule: None,
        }
    }
}

impl Transient for crate::store::StoreError {
    fn is_transient(&self) -> bool {
        crate::store::StoreError::is_transient(self)
    }
}

/// What a successful attempt reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskOutput {
    /// Rows the task produced, recorded in the run history.
    pub rows: Option<u64>,
    /// Further figures for the run history, such as rows written per table.
    pub metrics: Option<serde_json::Map<String, serde_json::Value>>,
    /// Small values published for downstream tasks (`{{ outputs.TASK.key }}`).
    pub outputs: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The most the outputs of one attempt may take, as JSON.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// A built-in kind of task.
pub trait TaskKind: Send + Sync {
    /// The name used in `kind:`.
    fn name(&self) -> &'static str;

    /// Checks the (unrendered) `with:` configuration at load time.
    fn check(&self, with: &Value) -> Result<(), String>;

    /// Top-level `with:` keys holding templates the kind renders itself, per item, with
    /// its own variables (e.g. a table name per `symbol`); orch leaves them as written.
    fn own_templates(&self) -> &'static [&'static str] {
        &[]
    }

    /// Top-level `with:` keys holding shell code: values rendered into them are shell-quoted
    /// ([`Quoting::Shell`]), so a value never becomes a command.
    fn shell_templates(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether the kind works on the UTC day its `date:` names (the run's `ds` by default): a
    /// DAG in another timezone, whose `ds` is a local date, is refused when it loads.
    fn reads_utc_day(&self) -> bool {
        false
    }

    /// Whether an attempt of this kind runs in a process of its own. Only a kind that runs no
    /// user code, holds nothing the kernel should bound and cannot crash says no (`noop`):
    /// there a fork would cost about a millisecond of CPU and buy nothing.
    fn needs_process(&self) -> bool {
        true
    }

    /// Runs one attempt with the rendered configuration. The future may be dropped at any
    /// await point (timeout, shutdown); a kind that starts processes must stop them on drop.
    fn run<'a>(
        &'a self,
        with: Value,
        ctx: &'a TaskContext,
    ) -> BoxFuture<'a, Result<TaskOutput, TaskError>>;
}

/// The task kinds a DAG may use, by name.
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn TaskKind>>,
    /// Tests of a file's text for the files of `dags/` that a plug-in loads itself (a stream's
    /// definition): the DAG loader leaves them alone.
    foreign_files: Vec<fn(&str) -> bool>,
    /// The conditions plug-ins gave `wait_for`.
    sensor_conditions: Vec<Arc<dyn SensorCondition>>,
}

impl Registry {
    /// The kinds any orch has, whatever it orchestrates: `noop`, `shell`, `http`, `sql` and
    /// `wait_for`.
    pub fn core() -> Registry {
        let mut registry = Registry {
            kinds: BTreeMap::new(),
            foreign_files: Vec::new(),
            sensor_conditions: Vec::new(),
        };
        registry.register(Arc::new(Noop));
        registry.register(Arc::new(Shell));
        registry.register(Arc::new(WaitFor::default()));
        registry.register(Arc::new(Http));
        registry.register(Arc::new(Sql));
        registry
    }

    /// Adds `kind`, or replaces the kind of the same name.
    pub fn register(&mut self, kind: Arc<dyn TaskKind>) {
        self.kinds.insert(kind.name(), kind);
    }

    /// Gives `wait_for` one more condition to wait on.
    pub fn register_sensor_condition(&mut self, condition: Arc<dyn SensorCondition>) {
        self.sensor_conditions.push(condition);
        self.register(Arc::new(WaitFor::with(self.sensor_conditions.clone())));
    }

    /// Has the DAG loader leave the files of `dags/` whose text `is_foreign` says a plug-in
    /// loads itself.
    pub fn register_foreign_files(&mut self, is_foreign: fn(&str) -> bool) {
        self.foreign_files.push(is_foreign);
    }

    /// Whether a plug-in loads the file of `dags/` whose text is `text`, rather than the
    /// DAG loader.
    pub fn is_foreign_file(&self, text: &str) -> bool {
        self.foreign_files.iter().any(|is_foreign| is_foreign(text))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn TaskKind>> {
        self.kinds.get(name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }
}

/// Splits off the `with:` keys a kind renders itself, so orch renders and checks the rest.
pub fn split_own_templates(
    kind: Option<&dyn TaskKind>,
    with: &Value,
) -> (Value, Vec<(String, Value)>) {
    let (Some(kind), Value::Object(map)) = (kind, with) else {
        return (with.clone(), Vec::new());
    };
    let mut rest = map.clone();
    let own = kind
        .own_templates()
        .iter()
        .filter_map(|key| rest.remove(*key).map(|v| (key.to_string(), v)))
        .collect();
    (Value::Object(rest), own)
}

/// The configuration one attempt runs with: `with:` rendered for the run (shell code
/// quoted, see [`TaskKind::shell_templates`]), then checked again, since a value rendered from
/// `--conf` is what the load-time check could not see.
pub fn render(kind: &dyn TaskKind, with: &Value, vars: &RunVariables) -> Result<Value, String> {
    let (rest, own) = split_own_templates(Some(kind), with);
    let rendered = match rest {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (key, value) in map {
                let quoting = if kind.shell_templates().contains(&key.as_str()) {
                    Quoting::Shell
                } else {
                    Quoting::Plain
                };
                out.insert(key, template::render_value(&value, vars, quoting)?);
            }
            out.extend(own);
            Value::Object(out)
        }
        other => template::render_value(&other, vars, Quoting::Plain)?,
    };
    kind.check(&rendered)
        .map_err(|e| format!("the rendered configuration is invalid: {e}"))?;
    Ok(rendered)
}

/// Runs CPU-bound work (a Polars query, Parquet encoding or decoding) on tokio's blocking
/// threads, so that it never stalls the scheduler, the streams or other runs on the async
/// threads. A timeout stops waiting for it, not the work itself.
pub(crate) async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TaskError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| TaskError::transient(format!("the task's work panicked: {e}")))
}

/// Opens the database a task names: `staging`, `warehouse`, or one of orch.yaml's
/// `connections:`. Errors name it, never its URL.
pub(crate) async fn open_database(
    data: &crate::config::DataPlaces,
    name: &str,
) -> Result<sqlx::AnyConnection, TaskError> {
    use sqlx::Connection;
    let url = match name {
        "staging" => data.staging_url.clone(),
        "warehouse" => data.warehouse_url.clone(),
        other => data.connections.url(other).map_err(TaskError::permanent)?,
    };
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(&url).await.map_err(|e| {
        TaskError::transient(format!(
            "cannot open the {name} database: {}",
            crate::redact::secrets(&e.to_string())
        ))
    })
}

/// How long a kind waits for a lock another process holds before its attempt fails (and the
/// retry policy takes over).
pub(crate) const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// Takes the lock `name` of the metadata database for one writer of some data, waiting for
/// the process that holds it (noted in the attempt's log).
pub(crate) async fn exclusive(
    ctx: &TaskContext,
    name: &str,
    what: &str,
) -> Result<crate::store::StoreLock, TaskError> {
    ctx.store
        .lock(name, LOCK_WAIT, || {
            ctx.log
                .note(&format!("waiting for another process that is {what}"))
        })
        .await?
        .ok_or_else(|| {
            TaskError::transient(format!(
                "another process kept {what} for {}; try again later",
                humantime::format_duration(LOCK_WAIT)
            ))
        })
}

/// A `with:` flag that may come from a template, which renders `"true"` or `"false"`. An
/// unrendered template (the load-time check) passes; its rendered value is checked per run.
pub(crate) fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Text(String),
    }
    match Flag::deserialize(d)? {
        Flag::Bool(b) => Ok(b),
        // Jinja renders booleans as `True` and `False`.
        Flag::Text(text) => match text.trim() {
            t if t.eq_ignore_ascii_case("true") => Ok(true),
            t if t.eq_ignore_ascii_case("false") => Ok(false),
            templated if templated.contains("{{") || templated.contains("{%") => Ok(false),
            other => Err(serde::de::Error::custom(format!(
                "`{other}` is not true or false"
            ))),
        },
    }
}

/// A `with:` duration written as `30s`, `5m`, `1h30m`.
pub(crate) fn duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::time::Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("`{text}` is not a duration like 30s: {e}")))
}

/// Reads a kind's typed configuration from `with:`; an absent `with:` reads as `{}`.
pub fn parse_with<T: DeserializeOwned>(with: &Value) -> Result<T, String> {
    let value = match with {
        Value::Null => Value::Object(Default::default()),
        other => other.clone(),
    };
    serde_json::from_value(value).map_err(|e| format!("invalid `with`: {e}"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::dag::load_str;

    /// A kind a plug-in could ship: it knows its own `with:`.
    struct Shout;

    impl TaskKind for Shout {
        fn name(&self) -> &'static str {
            "test.shout"
        }

        fn check(&self, with: &Value) -> Result<(), String> {
            match with.get("word") {
                Some(Value::String(_)) => Ok(()),
                _ => Err("`word` must be a text".to_string()),
            }
        }

        fn run<'a>(
            &'a self,
            with: Value,
            _ctx: &'a TaskContext,
        ) -> BoxFuture<'a, Result<TaskOutput, TaskError>> {
            Box::pin(async move {
                let mut outputs = serde_json::Map::new();
                outputs.insert("shouted".to_string(), with["word"].clone());
                Ok(TaskOutput {
                    outputs: Some(outputs),
                    ..TaskOutput::default()
                })
            })
        }
    }

    /// `wait_for: {test_flag: NAME}`: a condition a plug-in could add.
    struct Flag;

    impl SensorCondition for Flag {
        fn key(&self) -> &'static str {
            "test_flag"
        }

        fn check(&self, value: &Value) -> Result<(), String> {
            value
                .as_str()
                .map(drop)
                .ok_or_else(|| "`test_flag` must be a name".to_string())
        }

        fn describe(&self, value: &Value) -> String {
            format!("flag {value}")
        }

        fn holds<'a>(
            &'a self,
            _value: &'a Value,
            _ctx: &'a TaskContext,
        ) -> BoxFuture<'a, Result<bool, TaskError>> {
            Box::pin(async { Ok(true) })
        }
    }

    /// The core knows only its own kinds; a kind, a sensor condition and a file type
    /// registered from outside it are used by the DAG loader as its own are, without a line of
    /// the core changed for them.
    #[test]
    fn kinds_conditions_and_files_registered_from_outside_the_core_are_used_by_the_loader() {
        let load = |yaml: &str, registry: &Registry| {
            load_str(Path::new("dags/t.yaml"), yaml, registry).map_err(|e| e.to_string())
        };
        let shout = "tasks:\n  - {id: a, kind: test.shout, with: {word: hey}}\n";
        let wait = "tasks:\n  - {id: w, kind: wait_for, with: {test_flag: ready}}\n";
        let mut registry = Registry::core();
        assert_eq!(
            registry.names(),
            ["http", "noop", "shell", "sql", "wait_for"]
        );
        let unknown = load(shout, &registry).expect_err("not registered yet");
        assert!(unknown.contains("unknown kind `test.shout`"), "{unknown}");
        let unknown = load(wait, &registry).expect_err("not registered yet");
        assert!(unknown.contains("test_flag"), "{unknown}");

        registry.register(Arc::new(Shout));
        registry.register_sensor_condition(Arc::new(Flag));
        registry.register_foreign_files(|text| text.starts_with("test_file:"));
        load(shout, &registry).expect("a registered kind loads");
        let bad = load(
            "tasks:\n  - {id: a, kind: test.shout, with: {word: 1}}\n",
            &registry,
        )
        .expect_err("the kind checks its own settings");
        assert!(bad.contains("`word` must be a text"), "{bad}");
        load(wait, &registry).expect("a registered condition loads");
        let neither = load(
            "tasks:\n  - {id: w, kind: wait_for, with: {poke_interval: 1s}}\n",
            &registry,
        )
        .expect_err("no condition");
        assert!(
            neither.contains("give exactly one condition: `dag_run`, `sql` or `test_flag`"),
            "{neither}"
        );
        assert!(registry.is_foreign_file("test_file: x\n"));
        assert!(!registry.is_foreign_file(shout));
    }
}
