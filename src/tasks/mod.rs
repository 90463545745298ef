//! Built-in task kinds behind one trait, and the registry that maps `kind:` names to them.
//!
//! A kind checks its `with:` configuration when a DAG file is loaded, so a mistake fails
//! `orch dags validate` rather than a run, and runs with the rendered configuration.
//! New kinds (exchange, warehouse, ETL) register in [`Registry::builtin`].

mod noop;
mod shell;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::logs::AttemptLog;

pub use noop::Noop;
pub use shell::Shell;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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
    pub log: AttemptLog,
    pub processes: ProcessSink,
}

/// Where a task reports the process groups it starts, so that orch, recovering from its own
/// crash, can kill what is left of them before retrying the task.
pub struct ProcessSink(Box<dyn Fn(u32) + Send + Sync>);

impl ProcessSink {
    pub fn new(record: impl Fn(u32) + Send + Sync + 'static) -> ProcessSink {
        ProcessSink(Box::new(record))
    }

    /// Reports a started process group by its leader's pid.
    pub fn started(&self, pgid: u32) {
        (self.0)(pgid)
    }
}

impl std::fmt::Debug for ProcessSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProcessSink")
    }
}

/// What a successful attempt reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskOutput {
    /// Rows the task produced, recorded in the run history.
    pub rows: Option<u64>,
}

/// A built-in kind of task.
pub trait TaskKind: Send + Sync {
    /// The name used in `kind:`.
    fn name(&self) -> &'static str;

    /// Checks the (unrendered) `with:` configuration at load time.
    fn check(&self, with: &Value) -> Result<(), String>;

    /// Runs one attempt with the rendered configuration. The future may be dropped at any
    /// await point (timeout, shutdown); a kind that starts processes must stop them on drop.
    fn run<'a>(
        &'a self,
        with: Value,
        ctx: &'a TaskContext,
    ) -> BoxFuture<'a, Result<TaskOutput, String>>;
}

/// The task kinds a DAG may use, by name.
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn TaskKind>>,
}

impl Registry {
    /// Every kind that ships with orch.
    pub fn builtin() -> Registry {
        let mut registry = Registry {
            kinds: BTreeMap::new(),
        };
        registry.register(Arc::new(Noop));
        registry.register(Arc::new(Shell));
        registry
    }

    pub fn register(&mut self, kind: Arc<dyn TaskKind>) {
        self.kinds.insert(kind.name(), kind);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn TaskKind>> {
        self.kinds.get(name)
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }
}

/// Reads a kind's typed configuration from `with:`; an absent `with:` reads as `{}`.
pub fn parse_with<T: DeserializeOwned>(with: &Value) -> Result<T, String> {
    let value = match with {
        Value::Null => Value::Object(Default::default()),
        other => other.clone(),
    };
    serde_json::from_value(value).map_err(|e| format!("invalid `with`: {e}"))
}
