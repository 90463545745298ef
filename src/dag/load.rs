//! Turning a DAG file into a validated [`Dag`], or into every problem found in it.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use chrono::NaiveDate;
use chrono_tz::Tz;
use serde_saphyr::Spanned;

use super::error::{LoadError, Problem};
use super::graph::topological_order;
use super::schedule::Schedule;
use super::spec::{DagSpec, TaskPolicySpec, TaskSpec};
use super::{Dag, RetryPolicy, Task};
use crate::tasks::Registry;
use crate::template;

/// Default concurrency limits, as in Airflow except `max_active_runs`: a data pipeline that
/// keeps a watermark must not overlap itself unless its author says so.
const DEFAULT_MAX_ACTIVE_RUNS: u32 = 1;
const DEFAULT_MAX_ACTIVE_TASKS: u32 = 16;

/// Reads and validates one DAG file.
pub fn load_file(path: &Path, registry: &Registry) -> Result<Dag, LoadError> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| LoadError::single(path, Problem::nowhere(format!("cannot read file: {e}"))))?;
    load_str(path, &source, registry)
}

/// Validates DAG YAML that was read from `path` (used for the default id and in errors).
pub fn load_str(path: &Path, source: &str, registry: &Registry) -> Result<Dag, LoadError> {
    let options = serde_saphyr::options! { strict_booleans: true };
    let spec: DagSpec = serde_saphyr::from_str_with_options(source, options).map_err(|e| {
        let message = e.without_snippet().to_string();
        let problem = match e.location() {
            Some(location) => Problem::at(location, strip_location_suffix(&message)),
            None => Problem::nowhere(message),
        };
        LoadError::single(path, problem)
    })?;
    let mut checker = Checker {
        problems: Vec::new(),
    };
    let dag = checker.dag(path, source, spec, registry);
    match dag {
        Some(dag) if checker.problems.is_empty() => Ok(dag),
        _ => Err(LoadError {
            path: path.to_path_buf(),
            problems: checker.problems,
        }),
    }
}

/// The parser appends " at line L, column C" to its messages; the location is shown in front.
fn strip_location_suffix(message: &str) -> &str {
    match message.rfind(" at line ") {
        Some(i) => &message[..i],
        None => message,
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn problem<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.problems.push(Problem::at(at.referenced, message));
    }

    fn dag(
        &mut self,
        path: &Path,
        source: &str,
        spec: DagSpec,
        registry: &Registry,
    ) -> Option<Dag> {
        let id = match &spec.id {
            Some(id) => {
                if !is_identifier(&id.value) {
                    self.problem(id, format!("DAG id `{}` must match [a-z0-9_]+", id.value));
                }
                id.value.clone()
            }
            None => {
                let stem = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default()
                    .to_string();
                if !is_identifier(&stem) {
                    self.problems.push(Problem::nowhere(format!(
                        "the file name gives DAG id `{stem}`, which must match [a-z0-9_]+; rename the file or set `id:`"
                    )));
                }
                stem
            }
        };
        let schedule = spec.schedule.as_ref().and_then(|s| {
            Schedule::parse(&s.value)
                .map_err(|e| self.problem(s, format!("schedule: {e}")))
                .ok()
        });
        let timezone = match &spec.timezone {
            Some(tz) => tz
                .value
                .parse::<Tz>()
                .map_err(|_| {
                    self.problem(
                        tz,
                        format!(
                            "unknown timezone `{}`: use an IANA name such as UTC or Europe/Berlin",
                            tz.value
                        ),
                    )
                })
                .unwrap_or(Tz::UTC),
            None => Tz::UTC,
        };
        let start_date = spec.start_date.as_ref().and_then(|d| {
            NaiveDate::parse_from_str(&d.value, "%Y-%m-%d")
                .map_err(|_| {
                    self.problem(
                        d,
                        format!("start_date `{}` is not a date like 2026-11-01", d.value),
                    )
                })
                .ok()
        });
        let max_active_runs = self.positive(
            spec.max_active_runs.as_ref(),
            "max_active_runs",
            DEFAULT_MAX_ACTIVE_RUNS,
        );
        let max_active_tasks = self.positive(
            spec.max_active_tasks.as_ref(),
            "max_active_tasks",
            DEFAULT_MAX_ACTIVE_TASKS,
        );

        if spec.tasks.value.is_empty() {
            self.problem(&spec.tasks, "a DAG needs at least one task under `tasks:`");
        }
        let mut seen = HashSet::new();
        let mut tasks = Vec::with_capacity(spec.tasks.value.len());
        for task in &spec.tasks.value {
            if !seen.insert(task.id.value.as_str()) {
                self.problem(&task.id, format!("duplicate task id `{}`", task.id.value));
                continue;
            }
            if let Some(task) = self.task(task, &spec.defaults, &spec.params, registry) {
                tasks.push(task);
            }
        }
        self.dependencies(&spec.tasks.value, &seen);
        if !self.problems.is_empty() {
            return None;
        }
        let tasks = match topological_order(tasks) {
            Ok(tasks) => tasks,
            Err(cycle) => {
                let first = spec.tasks.value.iter().find(|t| t.id.value == cycle[0]);
                let message = format!("dependency cycle: {}", cycle.join(" -> "));
                match first {
                    Some(t) => self.problem(&t.id, message),
                    None => self.problems.push(Problem::nowhere(message)),
                }
                return None;
            }
        };
        Some(Dag {
            id,
            path: path.to_path_buf(),
            source: source.to_string(),
            description: spec.description,
            schedule,
            timezone,
            start_date,
            catchup: spec.catchup,
            max_active_runs,
            max_active_tasks,
            paused: spec.paused,
            params: spec.params,
            tasks,
        })
    }

    fn positive(&mut self, value: Option<&Spanned<u32>>, name: &str, default: u32) -> u32 {
        match value {
            Some(v) if v.value == 0 => {
                self.problem(v, format!("`{name}` must be at least 1"));
                default
            }
            Some(v) => v.value,
            None => default,
        }
    }

    fn dependencies(&mut self, tasks: &[TaskSpec], known: &HashSet<&str>) {
        for task in tasks {
            for dep in &task.depends_on {
                if dep.value == task.id.value {
                    self.problem(dep, format!("task `{}` depends on itself", task.id.value));
                } else if !known.contains(dep.value.as_str()) {
                    self.problem(
                        dep,
                        format!(
                            "task `{}` depends on unknown task `{}`",
                            task.id.value, dep.value
                        ),
                    );
                }
            }
        }
    }

    fn task(
        &mut self,
        spec: &TaskSpec,
        defaults: &TaskPolicySpec,
        params: &serde_json::Map<String, serde_json::Value>,
        registry: &Registry,
    ) -> Option<Task> {
        let id = &spec.id.value;
        let before = self.problems.len();
        if !is_identifier(id) {
            self.problem(&spec.id, format!("task id `{id}` must match [a-z0-9_]+"));
        }
        let with = spec
            .with
            .as_ref()
            .map(|w| w.value.clone())
            .unwrap_or_default();
        match registry.get(&spec.kind.value) {
            None => self.problem(
                &spec.kind,
                format!(
                    "task `{id}` has unknown kind `{}`; known kinds: {}",
                    spec.kind.value,
                    registry.names().join(", ")
                ),
            ),
            Some(kind) => {
                if let Err(e) = kind.check(&with) {
                    match &spec.with {
                        Some(w) => {
                            self.problem(w, format!("task `{id}` ({}): {e}", spec.kind.value))
                        }
                        None => self.problem(
                            &spec.kind,
                            format!("task `{id}` ({}): {e}", spec.kind.value),
                        ),
                    }
                }
            }
        }
        if let Err(e) = template::check_value(&with, params) {
            match &spec.with {
                Some(w) => self.problem(w, format!("task `{id}`: {e}")),
                None => self
                    .problems
                    .push(Problem::nowhere(format!("task `{id}`: {e}"))),
            }
        }
        let delay = self.duration(
            spec.retry_delay.as_ref().or(defaults.retry_delay.as_ref()),
            "retry_delay",
        );
        let max_delay = self.duration(
            spec.max_retry_delay
                .as_ref()
                .or(defaults.max_retry_delay.as_ref()),
            "max_retry_delay",
        );
        let timeout = self.duration(
            spec.timeout.as_ref().or(defaults.timeout.as_ref()),
            "timeout",
        );
        let retry = RetryPolicy {
            retries: spec.retries.or(defaults.retries).unwrap_or(0),
            delay: delay.unwrap_or(RetryPolicy::DEFAULT_DELAY),
            backoff: spec
                .retry_backoff
                .or(defaults.retry_backoff)
                .unwrap_or_default(),
            max_delay: max_delay.unwrap_or(RetryPolicy::DEFAULT_MAX_DELAY),
        };
        if self.problems.len() > before {
            return None;
        }
        Some(Task {
            id: id.clone(),
            kind: spec.kind.value.clone(),
            depends_on: spec.depends_on.iter().map(|d| d.value.clone()).collect(),
            trigger_rule: spec
                .trigger_rule
                .or(defaults.trigger_rule)
                .unwrap_or_default(),
            retry,
            timeout,
            with,
        })
    }

    fn duration(&mut self, value: Option<&Spanned<String>>, name: &str) -> Option<Duration> {
        let value = value?;
        match humantime::parse_duration(&value.value) {
            Ok(d) if d.is_zero() && name == "timeout" => {
                self.problem(value, "`timeout` must be longer than 0s");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(
                    value,
                    format!(
                        "bad duration `{}` for `{name}`: {e} (write e.g. 30s, 5m, 1h30m)",
                        value.value
                    ),
                );
                None
            }
        }
    }
}
