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
use super::spec::{DagSpec, LimitsSpec, TaskSpec};
use super::{Dag, ForEach, RetryPolicy, Task, for_each, params};
use crate::attempt::{Limits, parse_size};
use crate::notify::{Callbacks, Notifier};
use crate::queue;
use crate::tasks::{self, Registry};
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

/// Whether `tz` is UTC all year (UTC, Etc/UTC, GMT, ...).
fn is_utc(tz: Tz) -> bool {
    use chrono::{Offset, TimeZone};
    [(2026, 1, 15), (2026, 7, 15)].iter().all(|&(y, m, d)| {
        NaiveDate::from_ymd_opt(y, m, d)
            .and_then(|day| day.and_hms_opt(12, 0, 0))
            .is_some_and(|noon| tz.offset_from_utc_datetime(&noon).fix().local_minus_utc() == 0)
    })
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
        let max_pending_runs = spec
            .max_pending_runs
            .as_ref()
            .map(|v| self.positive(Some(v), "max_pending_runs", 1));

        let mut param_specs = Vec::with_capacity(spec.params.len());
        for (name, value) in &spec.params {
            match params::Param::from_yaml(name, &value.value) {
                Ok(param) => param_specs.push(param),
                Err(e) => self.problem(value, format!("param `{name}`: {e}")),
            }
        }
        let param_defaults = params::defaults(&param_specs);
        let dagrun_timeout = self.duration(spec.dagrun_timeout.as_ref(), "dagrun_timeout");
        let mut callbacks = self.callbacks(&spec.on_failure, &spec.on_success, &spec.on_retry);
        callbacks.on_sla_miss = self.notifiers(&spec.on_sla_miss, "on_sla_miss");
        let sla = self.duration(spec.sla.as_ref(), "sla");
        if sla.is_some() != spec.on_sla_miss.is_some() {
            let message =
                "`sla` and `on_sla_miss` go together: an SLA nobody hears of does nothing";
            match spec.sla.as_ref() {
                Some(at) => self.problem(at, message),
                None => self.problems.push(Problem::nowhere(message)),
            }
        }

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
            if let Some(task) = self.task(task, &spec, registry, timezone, &param_defaults) {
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
            max_pending_runs,
            paused: spec.paused,
            params: param_defaults,
            param_specs,
            callbacks,
            dagrun_timeout,
            sla,
            tasks,
        })
    }

    /// The notifiers of `on_failure`, `on_success` and `on_retry`, each checked.
    fn callbacks(
        &mut self,
        on_failure: &Option<Spanned<Vec<Notifier>>>,
        on_success: &Option<Spanned<Vec<Notifier>>>,
        on_retry: &Option<Spanned<Vec<Notifier>>>,
    ) -> Callbacks {
        Callbacks {
            on_failure: self.notifiers(on_failure, "on_failure"),
            on_success: self.notifiers(on_success, "on_success"),
            on_retry: self.notifiers(on_retry, "on_retry"),
            on_sla_miss: Vec::new(),
        }
    }

    /// One list of notifiers, each checked.
    fn notifiers(&mut self, list: &Option<Spanned<Vec<Notifier>>>, key: &str) -> Vec<Notifier> {
        let Some(list) = list else {
            return Vec::new();
        };
        for notifier in &list.value {
            if let Err(e) = notifier.check() {
                self.problem(list, format!("{key}: {e}"));
            }
        }
        list.value.clone()
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
        dag: &DagSpec,
        registry: &Registry,
        timezone: Tz,
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<Task> {
        let defaults = &dag.defaults;
        let id = &spec.id.value;
        let before = self.problems.len();
        let queue = spec.queue.as_ref().or(dag.queue.as_ref());
        if let Some(q) = queue
            && !queue::is_queue_name(&q.value)
        {
            self.problem(q, format!("queue `{}` must match [a-z0-9_-]+", q.value));
        }
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
                // A run's dates and times render in the DAG's timezone.
                let local = [
                    "ds",
                    "ds_nodash",
                    "ts",
                    "logical_date",
                    "data_interval_start",
                    "data_interval_end",
                ];
                let date = with.get("date").and_then(|d| d.as_str());
                if kind.reads_utc_day()
                    && !is_utc(timezone)
                    && date.is_none_or(|d| template::reads_any(d, &local))
                {
                    self.problem(
                        &spec.kind,
                        format!(
                            "task `{id}` ({}) works on the UTC day its `date:` names, {{{{ ds }}}} by default, but this DAG's ds is a date in {timezone}, so it would read another day than its data interval: set `timezone: UTC`, or give `date:` as a UTC day",
                            spec.kind.value
                        ),
                    );
                }
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
        let (orch_rendered, _) =
            tasks::split_own_templates(registry.get(&spec.kind.value).map(|k| k.as_ref()), &with);
        if let Err(e) = template::check_value(&orch_rendered, params) {
            match &spec.with {
                Some(w) => self.problem(w, format!("task `{id}`: {e}")),
                None => self
                    .problems
                    .push(Problem::nowhere(format!("task `{id}`: {e}"))),
            }
        }
        let for_each = self.for_each(spec, &orch_rendered, params);
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
        let limits = self.limits(spec.limits.as_ref(), defaults.limits.as_ref());
        let retry = RetryPolicy {
            retries: spec.retries.or(defaults.retries).unwrap_or(0),
            delay: delay.unwrap_or(RetryPolicy::DEFAULT_DELAY),
            backoff: spec
                .retry_backoff
                .or(defaults.retry_backoff)
                .unwrap_or_default(),
            max_delay: max_delay.unwrap_or(RetryPolicy::DEFAULT_MAX_DELAY),
            jitter: match spec
                .retry_jitter
                .as_ref()
                .or(defaults.retry_jitter.as_ref())
            {
                Some(j) if !(0.0..=1.0).contains(&j.value) => {
                    self.problem(j, "`retry_jitter` must be a fraction from 0 to 1, like 0.2");
                    0.0
                }
                Some(j) => j.value,
                None => 0.0,
            },
        };
        let callbacks = self.callbacks(&spec.on_failure, &spec.on_success, &spec.on_retry);
        if let Some(pool) = &spec.pool
            && !queue::is_queue_name(&pool.value)
        {
            self.problem(
                pool,
                format!("pool `{}` must match [a-z0-9_-]+", pool.value),
            );
        }
        let pool_slots = self.positive(spec.pool_slots.as_ref(), "pool_slots", 1);
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
            limits,
            queue: queue.map_or(queue::DEFAULT_QUEUE.to_string(), |q| q.value.clone()),
            with,
            for_each,
            callbacks,
            pool: spec.pool.as_ref().map(|p| p.value.clone()),
            pool_slots,
            priority: spec.priority.unwrap_or(0),
            depends_on_past: spec
                .depends_on_past
                .or(defaults.depends_on_past)
                .unwrap_or(false),
        })
    }

    /// The task's `for_each:`: a non-empty list, or one template (checked like `with:`'s). Only
    /// a mapped task's templates may read `item` and `map_index`.
    fn for_each(
        &mut self,
        spec: &TaskSpec,
        with: &serde_json::Value,
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<ForEach> {
        let id = &spec.id.value;
        let Some(for_each) = &spec.for_each else {
            if template::value_reads_any(with, template::MAPPED_VARIABLES) {
                let message = format!(
                    "task `{id}` reads `item` or `map_index`, which only a task with `for_each:` has"
                );
                match &spec.with {
                    Some(w) => self.problem(w, message),
                    None => self.problem(&spec.kind, message),
                }
            }
            return None;
        };
        match &for_each.value {
            serde_json::Value::Array(items) if items.is_empty() => {
                self.problem(
                    for_each,
                    format!("task `{id}`: `for_each` is an empty list"),
                );
                None
            }
            serde_json::Value::Array(items) if items.len() > for_each::MAX_ITEMS => {
                self.problem(
                    for_each,
                    format!(
                        "task `{id}`: `for_each` lists {} items; a task maps over at most {}",
                        items.len(),
                        for_each::MAX_ITEMS
                    ),
                );
                None
            }
            serde_json::Value::Array(items) => Some(ForEach::Items(items.clone())),
            serde_json::Value::String(source) if source.contains("{{") => {
                match template::check(source, params) {
                    Ok(()) if template::reads_any(source, template::MAPPED_VARIABLES) => {
                        self.problem(
                            for_each,
                            format!("task `{id}`: `for_each` cannot read `item` or `map_index`"),
                        );
                        None
                    }
                    Ok(()) => Some(ForEach::Template(source.clone())),
                    Err(e) => {
                        self.problem(for_each, format!("task `{id}`: `for_each`: {e}"));
                        None
                    }
                }
            }
            _ => {
                self.problem(
                    for_each,
                    format!(
                        "task `{id}`: `for_each` must be a list, or a template giving one such as `{{{{ params.symbols }}}}`"
                    ),
                );
                None
            }
        }
    }

    /// The task's `limits:` over the defaults', key by key.
    fn limits(&mut self, task: Option<&LimitsSpec>, defaults: Option<&LimitsSpec>) -> Limits {
        let memory = task
            .and_then(|l| l.memory.as_ref())
            .or_else(|| defaults.and_then(|l| l.memory.as_ref()));
        let cpu_seconds = task
            .and_then(|l| l.cpu_seconds.as_ref())
            .or_else(|| defaults.and_then(|l| l.cpu_seconds.as_ref()));
        let memory = memory.and_then(|m| match parse_size(&m.value) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.problem(
                    m,
                    format!("bad size `{}` for `limits.memory`: {e}", m.value),
                );
                None
            }
        });
        let cpu_seconds = cpu_seconds.and_then(|c| {
            if c.value == 0 {
                self.problem(c, "`limits.cpu_seconds` must be more than 0");
                None
            } else {
                Some(c.value)
            }
        });
        Limits {
            memory,
            cpu_seconds,
        }
    }

    fn duration(&mut self, value: Option<&Spanned<String>>, name: &str) -> Option<Duration> {
        let value = value?;
        match humantime::parse_duration(&value.value) {
            Ok(d) if d.is_zero() && (name == "timeout" || name == "dagrun_timeout") => {
                self.problem(value, format!("`{name}` must be longer than 0s"));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::{RetryBackoff, TriggerRule};

    fn load(yaml: &str) -> Result<Dag, LoadError> {
        load_str(Path::new("dags/t.yaml"), yaml, &crate::registry())
    }

    /// The single problem of a file that should have exactly one.
    fn problem(yaml: &str) -> Problem {
        let err = load(yaml).expect_err("the DAG should be rejected");
        assert_eq!(err.problems.len(), 1, "{err}");
        err.problems[0].clone()
    }

    fn assert_problem(yaml: &str, line: u64, column: u64, needle: &str) {
        let p = problem(yaml);
        assert_eq!((p.line, p.column), (Some(line), Some(column)), "{p:?}");
        assert!(
            p.message.contains(needle),
            "`{}` does not mention `{needle}`",
            p.message
        );
    }

    #[test]
    fn a_full_dag_loads_with_defaults_and_overrides() {
        let dag = load(
            r#"
id: example_chain
description: Three shell steps
schedule: "*/5 * * * *"
timezone: Europe/Berlin
start_date: 2026-11-01
catchup: true
max_active_runs: 2
params: { greeting: hello }
defaults: { retries: 1, retry_delay: 5m, retry_backoff: exponential, timeout: 30m }
tasks:
  - id: cleanup
    kind: shell
    depends_on: [second]
    trigger_rule: all_done
    with: { command: "echo done" }
  - id: first
    kind: shell
    with: { command: "echo {{ params.greeting }} {{ ds }}" }
  - id: second
    kind: noop
    depends_on: [first]
    retries: 3
    retry_delay: 10s
"#,
        )
        .expect("valid DAG");
        assert_eq!(dag.id, "example_chain");
        assert_eq!(dag.timezone, chrono_tz::Europe::Berlin);
        assert!(dag.catchup);
        assert_eq!(
            (dag.max_active_runs, dag.max_active_tasks),
            (2, DEFAULT_MAX_ACTIVE_TASKS)
        );
        let order: Vec<&str> = dag.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(
            order,
            ["first", "second", "cleanup"],
            "upstreams come first"
        );
        let second = dag.task("second").expect("second");
        assert_eq!(second.retry.retries, 3);
        assert_eq!(second.retry.delay, Duration::from_secs(10));
        assert_eq!(second.retry.backoff, RetryBackoff::Exponential);
        assert_eq!(second.timeout, Some(Duration::from_secs(1800)));
        assert_eq!(
            dag.task("cleanup").expect("cleanup").trigger_rule,
            TriggerRule::AllDone
        );
        assert_eq!(
            dag.task("first").expect("first").trigger_rule,
            TriggerRule::AllSuccess
        );
    }

    #[test]
    fn the_id_defaults_to_the_file_stem() {
        assert_eq!(load("tasks: [{id: a, kind: noop}]").expect("valid").id, "t");
    }

    #[test]
    fn yaml_syntax_error() {
        assert_problem(
            "tasks:\n  - id: a\n    kind: noop\n   x: [\n",
            4,
            4,
            "did not find expected",
        );
    }

    #[test]
    fn unknown_key() {
        assert_problem(
            "tasks:\n  - id: a\n    kind: noop\n    retires: 3\n",
            4,
            5,
            "unknown field `retires`",
        );
        assert_problem(
            "shedule: '@daily'\ntasks: [{id: a, kind: noop}]\n",
            1,
            1,
            "unknown field `shedule`",
        );
    }

    #[test]
    fn duplicate_yaml_key() {
        let p = problem("tasks: [{id: a, kind: noop}]\ntasks: [{id: b, kind: noop}]\n");
        assert!(p.message.contains("duplicate"), "{p:?}");
    }

    #[test]
    fn missing_field() {
        assert_problem("schedule: '@daily'\n", 1, 1, "missing field `tasks`");
    }

    #[test]
    fn yaml_1_1_booleans_are_rejected() {
        assert_problem(
            "catchup: yes\ntasks: [{id: a, kind: noop}]\n",
            1,
            10,
            "boolean",
        );
    }

    #[test]
    fn duplicate_task_id() {
        assert_problem(
            "tasks:\n  - {id: a, kind: noop}\n  - {id: a, kind: noop}\n",
            3,
            10,
            "duplicate task id `a`",
        );
    }

    #[test]
    fn unknown_dependency() {
        assert_problem(
            "tasks:\n  - {id: a, kind: noop, depends_on: [b]}\n",
            2,
            38,
            "task `a` depends on unknown task `b`",
        );
    }

    #[test]
    fn cycle_is_named() {
        let p = problem(
            "tasks:\n  - {id: a, kind: noop, depends_on: [c]}\n  - {id: b, kind: noop, depends_on: [a]}\n  - {id: c, kind: noop, depends_on: [b]}\n",
        );
        assert!(p.message.contains("dependency cycle: "), "{p:?}");
        for id in ["a", "b", "c"] {
            assert!(p.message.contains(id), "{p:?}");
        }
        assert_problem(
            "tasks:\n  - {id: a, kind: noop, depends_on: [a]}\n",
            2,
            38,
            "depends on itself",
        );
    }

    #[test]
    fn limits_merge_over_the_defaults_key_by_key() {
        let dag = load(
            "defaults: { limits: { memory: 2GiB, cpu_seconds: 600 } }\ntasks:\n  - {id: a, kind: noop}\n  - {id: b, kind: noop, limits: { memory: 512MiB }}\n",
        )
        .expect("valid");
        let limits = |id: &str| dag.tasks.iter().find(|t| t.id == id).expect(id).limits;
        assert_eq!(
            limits("a"),
            Limits {
                memory: Some(2 << 30),
                cpu_seconds: Some(600)
            }
        );
        assert_eq!(
            limits("b"),
            Limits {
                memory: Some(512 << 20),
                cpu_seconds: Some(600)
            }
        );
        assert_problem(
            "tasks:\n  - {id: a, kind: noop, limits: { memory: 2 furlongs }}\n",
            2,
            43,
            "bad size `2 furlongs` for `limits.memory`: unknown unit `furlongs`",
        );
        assert_problem(
            "tasks:\n  - {id: a, kind: noop, limits: { cpu_seconds: 0 }}\n",
            2,
            48,
            "`limits.cpu_seconds` must be more than 0",
        );
    }

    #[test]
    fn bad_cron() {
        assert_problem(
            "schedule: '*/5 * * *'\ntasks: [{id: a, kind: noop}]\n",
            1,
            11,
            "expected 5 fields",
        );
        assert_problem(
            "schedule: '0 25 * * *'\ntasks: [{id: a, kind: noop}]\n",
            1,
            11,
            "invalid cron",
        );
    }

    #[test]
    fn bad_timezone() {
        assert_problem(
            "timezone: Mars/Base\ntasks: [{id: a, kind: noop}]\n",
            1,
            11,
            "unknown timezone `Mars/Base`",
        );
    }

    #[test]
    fn bad_duration() {
        assert_problem(
            "defaults: {retry_delay: 5 parsecs}\ntasks: [{id: a, kind: noop}]\n",
            1,
            25,
            "bad duration `5 parsecs` for `retry_delay`",
        );
        assert_problem(
            "tasks: [{id: a, kind: noop, timeout: 0s}]\n",
            1,
            38,
            "`timeout` must be longer than 0s",
        );
    }

    #[test]
    fn bad_start_date() {
        assert_problem(
            "start_date: 2026-13-01\ntasks: [{id: a, kind: noop}]\n",
            1,
            13,
            "start_date",
        );
    }

    #[test]
    fn bad_template() {
        assert_problem(
            "tasks:\n  - id: a\n    kind: shell\n    with: {command: 'echo {{ ds '}\n",
            4,
            11,
            "bad template",
        );
        assert_problem(
            "tasks:\n  - id: a\n    kind: shell\n    with: {command: 'echo {{ params.nope }}'}\n",
            4,
            11,
            "unknown variable params.nope",
        );
    }

    /// `ds` of a Tokyo DAG is a Tokyo date; a day-based kind reads the UTC day of that name.
    #[test]
    fn a_day_based_kind_in_a_non_utc_dag_is_refused_unless_its_date_is_given() {
        assert_problem(
            "timezone: Asia/Tokyo\nschedule: '0 4 * * *'\ntasks: [{id: extract, kind: trades.extract}]\n",
            3,
            29,
            "this DAG's ds is a date in Asia/Tokyo",
        );
        assert_problem(
            "timezone: Europe/Berlin\ntasks: [{id: t, kind: trades.star_schema, with: {date: '{{ ds }}'}}]\n",
            2,
            23,
            "set `timezone: UTC`",
        );
        assert!(
            load("timezone: Asia/Tokyo\ntasks: [{id: t, kind: trades.extract, with: {date: '2026-11-01'}}]\n").is_ok()
        );
        assert!(load("timezone: Etc/UTC\ntasks: [{id: t, kind: trades.extract}]\n").is_ok());
    }

    #[test]
    fn unknown_kind_lists_the_known_ones() {
        assert_problem(
            "tasks: [{id: a, kind: sh}]\n",
            1,
            23,
            "unknown kind `sh`; known kinds: binance.historical_trades, http, lake.compact, lake.retention, mercado_bitcoin.trades, nats.consume, noop, shell, sql, trades.extract, trades.star_schema, wait_for, warehouse.load_parquet, warehouse.load_star_schema",
        );
    }

    #[test]
    fn bad_kind_configuration() {
        assert_problem(
            "tasks: [{id: a, kind: shell}]\n",
            1,
            23,
            "missing field `command`",
        );
        assert_problem(
            "tasks: [{id: a, kind: noop, with: {x: 1}}]\n",
            1,
            35,
            "unknown field `x`",
        );
    }

    #[test]
    fn bad_ids_and_limits() {
        assert_problem(
            "id: Bad-Id\ntasks: [{id: a, kind: noop}]\n",
            1,
            5,
            "must match [a-z0-9_]+",
        );
        assert_problem("tasks: [{id: A, kind: noop}]\n", 1, 14, "task id `A`");
        assert_problem(
            "max_active_runs: 0\ntasks: [{id: a, kind: noop}]\n",
            1,
            18,
            "at least 1",
        );
        assert_problem("tasks: []\n", 1, 8, "at least one task");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err =
            load("schedule: nope\ntimezone: Nowhere\ntasks: [{id: a, kind: x, depends_on: [b]}]\n")
                .expect_err("invalid");
        assert_eq!(err.problems.len(), 4, "{err}");
        assert!(
            err.to_string().starts_with("dags/t.yaml:1:11: schedule:"),
            "{err}"
        );
    }
}
