//! Templating of task configuration, with the variable names Airflow users know.
//!
//! Every string in a task's `with:` is a minijinja template. Undefined variables are errors
//! (strict mode), and every template is checked when its DAG file is loaded, so a typo such as
//! `{{ params.greting }}` fails `orch dags validate` instead of a run.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;
use serde_json::{Map, Value};

/// The variables a template may use.
pub const VARIABLES: &[&str] = &[
    "ds",
    "ds_nodash",
    "ts",
    "logical_date",
    "data_interval_start",
    "data_interval_end",
    "run_id",
    "dag_id",
    "task_id",
    "params",
    "env",
];

/// The values of [`VARIABLES`] for one task of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunVariables {
    /// The logical date as `YYYY-MM-DD`, in the DAG's timezone.
    pub ds: String,
    pub ds_nodash: String,
    /// The logical date as RFC 3339 with the DAG timezone's offset.
    pub ts: String,
    pub logical_date: String,
    pub data_interval_start: String,
    pub data_interval_end: String,
    pub run_id: String,
    pub dag_id: String,
    pub task_id: String,
    /// The DAG's params overridden by the run's conf.
    pub params: Map<String, Value>,
    pub env: BTreeMap<String, String>,
}

impl RunVariables {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dag_id: &str,
        run_id: &str,
        task_id: &str,
        logical_date: DateTime<Utc>,
        interval: (DateTime<Utc>, DateTime<Utc>),
        timezone: Tz,
        params: Map<String, Value>,
    ) -> RunVariables {
        let local = logical_date.with_timezone(&timezone);
        let iso = |t: DateTime<Utc>| t.with_timezone(&timezone).to_rfc3339();
        RunVariables {
            ds: local.format("%Y-%m-%d").to_string(),
            ds_nodash: local.format("%Y%m%d").to_string(),
            ts: local.to_rfc3339(),
            logical_date: iso(logical_date),
            data_interval_start: iso(interval.0),
            data_interval_end: iso(interval.1),
            run_id: run_id.to_string(),
            dag_id: dag_id.to_string(),
            task_id: task_id.to_string(),
            params,
            env: std::env::vars().collect(),
        }
    }
}

fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env
    })
}

/// Checks a template's syntax and that it only uses known variables and declared params.
pub fn check(source: &str, params: &Map<String, Value>) -> Result<(), String> {
    let template = environment()
        .template_from_str(source)
        .map_err(|e| format!("bad template `{source}`: {}", describe(&e)))?;
    let mut unknown: Vec<String> = template
        .undeclared_variables(true)
        .into_iter()
        .filter(|name| {
            let root = name.split('.').next().unwrap_or(name);
            if !VARIABLES.contains(&root) {
                return true;
            }
            match name.strip_prefix("params.") {
                Some(param) => !params.contains_key(param.split('.').next().unwrap_or(param)),
                None => false,
            }
        })
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort();
    Err(format!(
        "template `{source}` uses unknown variable{} {} (known: {}; params must be declared under `params:`)",
        if unknown.len() > 1 { "s" } else { "" },
        unknown.join(", "),
        VARIABLES.join(", ")
    ))
}

/// Checks every string inside a JSON value, as [`check`] does.
pub fn check_value(value: &Value, params: &Map<String, Value>) -> Result<(), String> {
    match value {
        Value::String(s) => check(s, params),
        Value::Array(items) => items.iter().try_for_each(|v| check_value(v, params)),
        Value::Object(map) => map.values().try_for_each(|v| check_value(v, params)),
        _ => Ok(()),
    }
}

/// Renders every string inside a JSON value; other values pass through unchanged.
pub fn render_value(value: &Value, vars: &RunVariables) -> Result<Value, String> {
    let ctx = minijinja::Value::from(minijinja::value::Serde(vars));
    render_with(value, &ctx)
}

fn render_with(value: &Value, ctx: &minijinja::Value) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => Value::String(render_str(s, ctx)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_with(v, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_with(v, ctx)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Renders a template a task kind owns (see `TaskKind::own_templates`) with its own variables,
/// e.g. a table name per Hive partition `{symbol: BTCUSDT}`.
pub fn render_with_values<V: serde::Serialize>(source: &str, vars: &V) -> Result<String, String> {
    render_str(
        source,
        &minijinja::Value::from(minijinja::value::Serde(vars)),
    )
}

/// Checks the syntax of a template a task kind owns.
pub fn check_syntax(source: &str) -> Result<(), String> {
    environment()
        .template_from_str(source)
        .map(|_| ())
        .map_err(|e| format!("bad template `{source}`: {}", describe(&e)))
}

fn render_str(source: &str, ctx: &minijinja::Value) -> Result<String, String> {
    if !source.contains("{{") && !source.contains("{%") && !source.contains("{#") {
        return Ok(source.to_string());
    }
    environment()
        .render_str(source, ctx)
        .map_err(|e| format!("cannot render template `{source}`: {}", describe(&e)))
}

fn describe(error: &minijinja::Error) -> String {
    match error.detail() {
        Some(detail) => format!("{} ({detail})", error.kind()),
        None => error.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn vars() -> RunVariables {
        let start = Utc
            .with_ymd_and_hms(2026, 11, 22, 0, 0, 0)
            .single()
            .expect("time");
        let end = Utc
            .with_ymd_and_hms(2026, 11, 23, 0, 0, 0)
            .single()
            .expect("time");
        let params = json!({"greeting": "hello", "symbols": ["BTCUSDT", "ETHUSDT"]});
        let Value::Object(params) = params else {
            unreachable!()
        };
        RunVariables::new(
            "etl",
            "etl__manual__x",
            "first",
            start,
            (start, end),
            Tz::UTC,
            params,
        )
    }

    #[test]
    fn renders_airflow_variables() {
        let v = vars();
        let out = render_value(
            &json!({"cmd": "echo {{ params.greeting }} {{ ds }} {{ ds_nodash }} {{ dag_id }}.{{ task_id }}", "n": 3}),
            &v,
        )
        .expect("render");
        assert_eq!(
            out,
            json!({"cmd": "echo hello 2026-11-22 20261122 etl.first", "n": 3})
        );
        let out = render_value(&json!("{{ ts }} {{ data_interval_end }} {{ run_id }}"), &v)
            .expect("render");
        assert_eq!(
            out,
            json!("2026-11-22T00:00:00+00:00 2026-11-23T00:00:00+00:00 etl__manual__x")
        );
    }

    #[test]
    fn ds_is_the_date_in_the_dag_timezone() {
        let t = Utc
            .with_ymd_and_hms(2026, 11, 22, 23, 30, 0)
            .single()
            .expect("time");
        let tz: Tz = "Asia/Tokyo".parse().expect("tz");
        let v = RunVariables::new("d", "r", "t", t, (t, t), tz, Map::new());
        assert_eq!(v.ds, "2026-11-23");
        assert_eq!(v.ts, "2026-11-23T08:30:00+09:00");
    }

    #[test]
    fn renders_env_and_filters() {
        let mut v = vars();
        v.env.insert("ORCH_TEST_VAR".into(), "xyz".into());
        let out = render_value(
            &json!("{{ env.ORCH_TEST_VAR | upper }} {{ params.symbols | join(',') }}"),
            &v,
        )
        .expect("render");
        assert_eq!(out, json!("XYZ BTCUSDT,ETHUSDT"));
    }

    #[test]
    fn undefined_at_render_time_is_an_error() {
        let err =
            render_value(&json!("{{ env.ORCH_SURELY_UNSET_VARIABLE }}"), &vars()).unwrap_err();
        assert!(err.contains("undefined"), "{err}");
    }

    #[test]
    fn check_rejects_bad_syntax() {
        let err = check("echo {{ ds ", &Map::new()).unwrap_err();
        assert!(err.contains("bad template"), "{err}");
    }

    #[test]
    fn check_rejects_unknown_variables_and_undeclared_params() {
        let mut params = Map::new();
        params.insert("greeting".into(), json!("hi"));
        assert!(check("{{ params.greeting }} {{ ds }} {{ env.HOME }}", &params).is_ok());
        let err = check("{{ dss }}", &params).unwrap_err();
        assert!(err.contains("dss"), "{err}");
        let err = check("{{ params.greting }}", &params).unwrap_err();
        assert!(err.contains("params.greting"), "{err}");
    }
}
