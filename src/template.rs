//! Templating of task configuration, with the variable names Airflow users know.
//!
//! Every string in a task's `with:` is a minijinja template. Undefined variables are errors
//! (strict mode), and every template is checked when its DAG file is loaded, so a typo such as
//! `{{ params.greting }}` fails `orch dags validate` instead of a run.
//!
//! Rendered values are data, never code: a run's `--conf` (or any form or API later) must not
//! be able to run a command. Templates that are shell code render with [`Quoting::Shell`],
//! which quotes every value it writes (`x; touch pwned` becomes `'x; touch pwned'`); `| safe`
//! writes a value as it is, for an author who means it. Templates see only the environment
//! variables named `ORCH_VAR_*`, not the server's secrets.

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
    "outputs",
    "item",
    "map_index",
];

/// The variables only a mapped task's instances have (`for_each:`).
pub const MAPPED_VARIABLES: &[&str] = &["item", "map_index"];

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
    /// The environment variables templates may read: those named [`ENV_PREFIX`]`*`.
    pub env: BTreeMap<String, String>,
    /// What the run's finished tasks published, by task id.
    pub outputs: Map<String, Value>,
    /// A mapped instance's item and its index in the list (`for_each:`); absent elsewhere, so
    /// that another task reading them fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map_index: Option<usize>,
}

/// The prefix of the environment variables templates may read as `env.NAME`.
pub const ENV_PREFIX: &str = "ORCH_VAR_";

/// How a template writes the values it renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    /// As they are: configuration that is data (a date, a table name, an environment value).
    Plain,
    /// Shell-quoted, unless marked `| safe`: a template that `sh -c` runs.
    Shell,
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
            env: std::env::vars()
                .filter(|(name, _)| name.starts_with(ENV_PREFIX))
                .collect(),
            outputs: Map::new(),
            item: None,
            map_index: None,
        }
    }
}

fn environment(quoting: Quoting) -> &'static Environment<'static> {
    static PLAIN: OnceLock<Environment<'static>> = OnceLock::new();
    static SHELL: OnceLock<Environment<'static>> = OnceLock::new();
    let new = |quoting| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        if quoting == Quoting::Shell {
            env.set_formatter(|out, _state, value| {
                let text = value.to_string();
                if value.is_safe() {
                    out.write_str(&text)?;
                } else {
                    out.write_str(&shell_quote(&text))?;
                }
                Ok(())
            });
        }
        env
    };
    match quoting {
        Quoting::Plain => PLAIN.get_or_init(|| new(Quoting::Plain)),
        Quoting::Shell => SHELL.get_or_init(|| new(Quoting::Shell)),
    }
}

/// `text` as one shell word: as it is when it holds only characters no shell treats
/// specially, else in single quotes (a `'` inside written as `'\''`).
pub fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Checks a template's syntax and that it only uses known variables and declared params.
pub fn check(source: &str, params: &Map<String, Value>) -> Result<(), String> {
    let template = environment(Quoting::Plain)
        .template_from_str(source)
        .map_err(|e| format!("bad template `{source}`: {}", describe(&e)))?;
    let variables = template.undeclared_variables(true);
    let mut hidden: Vec<&str> = variables
        .iter()
        .filter_map(|name| name.strip_prefix("env."))
        .map(|name| name.split('.').next().unwrap_or(name))
        .filter(|name| !name.starts_with(ENV_PREFIX))
        .collect();
    if !hidden.is_empty() {
        hidden.sort_unstable();
        return Err(format!(
            "template `{source}` reads env.{}: templates see only environment variables named {ENV_PREFIX}*, so that no server secret reaches a command or a log",
            hidden.join(", env.")
        ));
    }
    let mut unknown: Vec<String> = variables
        .into_iter()
        .filter(|name| {
            let root = name.split('.').next().unwrap_or(name);
            if !VARIABLES.contains(&root) || name == "env" {
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

/// Whether the template `source` reads any of the variables `names` (`ds`, `params`, ...).
pub fn reads_any(source: &str, names: &[&str]) -> bool {
    environment(Quoting::Plain)
        .template_from_str(source)
        .is_ok_and(|template| {
            template
                .undeclared_variables(false)
                .iter()
                .any(|v| names.contains(&v.as_str()))
        })
}

/// Whether any string inside a JSON value reads any of the variables `names`.
pub fn value_reads_any(value: &Value, names: &[&str]) -> bool {
    match value {
        Value::String(s) => reads_any(s, names),
        Value::Array(items) => items.iter().any(|v| value_reads_any(v, names)),
        Value::Object(map) => map.values().any(|v| value_reads_any(v, names)),
        _ => false,
    }
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
pub fn render_value(value: &Value, vars: &RunVariables, quoting: Quoting) -> Result<Value, String> {
    let ctx = minijinja::Value::from(minijinja::value::Serde(vars));
    render_with(value, &ctx, quoting)
}

fn render_with(value: &Value, ctx: &minijinja::Value, quoting: Quoting) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => Value::String(render_str(s, ctx, quoting)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_with(v, ctx, quoting))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_with(v, ctx, quoting)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// The value of a template: for a template that is one `{{ expression }}`, the expression's
/// value with its type (a list stays a list); for any other text, the rendered string.
pub fn evaluate(source: &str, vars: &RunVariables) -> Result<Value, String> {
    let ctx = minijinja::Value::from(minijinja::value::Serde(vars));
    let trimmed = source.trim();
    let expression = trimmed
        .strip_prefix("{{")
        .and_then(|rest| rest.strip_suffix("}}"))
        .filter(|inner| !inner.contains("{{") && !inner.contains("}}"));
    let Some(expression) = expression else {
        return render_str(source, &ctx, Quoting::Plain).map(Value::String);
    };
    let value = environment(Quoting::Plain)
        .compile_expression_owned(expression.trim().to_string())
        .and_then(|compiled| compiled.eval(ctx))
        .map_err(|e| format!("cannot evaluate `{source}`: {}", describe(&e)))?;
    serde_json::to_value(&value).map_err(|e| format!("cannot evaluate `{source}`: {e}"))
}

/// Renders a template a task kind owns (see `TaskKind::own_templates`) with its own variables,
/// e.g. a table name per Hive partition `{symbol: BTCUSDT}`.
pub fn render_with_values<V: serde::Serialize>(source: &str, vars: &V) -> Result<String, String> {
    render_str(
        source,
        &minijinja::Value::from(minijinja::value::Serde(vars)),
        Quoting::Plain,
    )
}

/// Checks the syntax of a template a task kind owns.
pub fn check_syntax(source: &str) -> Result<(), String> {
    environment(Quoting::Plain)
        .template_from_str(source)
        .map(|_| ())
        .map_err(|e| format!("bad template `{source}`: {}", describe(&e)))
}

fn render_str(source: &str, ctx: &minijinja::Value, quoting: Quoting) -> Result<String, String> {
    if !source.contains("{{") && !source.contains("{%") && !source.contains("{#") {
        return Ok(source.to_string());
    }
    environment(quoting)
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
            Quoting::Plain,
        )
        .expect("render");
        assert_eq!(
            out,
            json!({"cmd": "echo hello 2026-11-22 20261122 etl.first", "n": 3})
        );
        let out = render_value(
            &json!("{{ ts }} {{ data_interval_end }} {{ run_id }}"),
            &v,
            Quoting::Plain,
        )
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
        v.env.insert("ORCH_VAR_TEST".into(), "xyz".into());
        let out = render_value(
            &json!("{{ env.ORCH_VAR_TEST | upper }} {{ params.symbols | join(',') }}"),
            &v,
            Quoting::Plain,
        )
        .expect("render");
        assert_eq!(out, json!("XYZ BTCUSDT,ETHUSDT"));
    }

    #[test]
    fn undefined_at_render_time_is_an_error() {
        let err = render_value(
            &json!("{{ env.ORCH_VAR_SURELY_UNSET }}"),
            &vars(),
            Quoting::Plain,
        )
        .unwrap_err();
        assert!(err.contains("undefined"), "{err}");
    }

    /// A value that would end the command and start another is one quoted word; `| safe`
    /// is the author's explicit way around it.
    #[test]
    fn shell_templates_quote_every_value() {
        let mut v = vars();
        v.params
            .insert("greeting".into(), json!("x; touch pwned $(id) `id` 'q'"));
        let cmd = |source: &str| {
            render_value(&json!(source), &v, Quoting::Shell)
                .expect("render")
                .as_str()
                .expect("text")
                .to_string()
        };
        assert_eq!(
            cmd("echo {{ params.greeting }} {{ ds }}"),
            r#"echo 'x; touch pwned $(id) `id` '\''q'\''' 2026-11-22"#
        );
        assert_eq!(
            cmd("echo {{ params.symbols | join(' ') }}"),
            "echo 'BTCUSDT ETHUSDT'"
        );
        assert_eq!(cmd("{{ 'ls -l' | safe }}"), "ls -l");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd("printf '%s' {{ params.greeting }}"))
            .output()
            .expect("sh");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "x; touch pwned $(id) `id` 'q'",
            "the shell reads the value back as it was"
        );
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("BTCUSDT,ETHUSDT"), "BTCUSDT,ETHUSDT");
    }

    #[test]
    fn templates_see_only_orch_var_environment_variables() {
        // SAFETY: this test's own variables; no other test reads them.
        unsafe {
            std::env::set_var("ORCH_VAR_REGION_TEMPLATE_TEST", "eu");
            std::env::set_var("SECRET_TEMPLATE_TEST", "hunter2");
        }
        let v = vars();
        assert_eq!(
            v.env
                .get("ORCH_VAR_REGION_TEMPLATE_TEST")
                .map(String::as_str),
            Some("eu")
        );
        assert!(!v.env.contains_key("SECRET_TEMPLATE_TEST"));
        assert!(v.env.keys().all(|k| k.starts_with(ENV_PREFIX)));
        let err = check(
            "{{ env.HOME }} {{ env.AWS_SECRET_ACCESS_KEY }}",
            &Map::new(),
        )
        .unwrap_err();
        assert!(
            err.contains("env.AWS_SECRET_ACCESS_KEY, env.HOME") && err.contains("ORCH_VAR_*"),
            "{err}"
        );
        assert!(check("{{ env.ORCH_VAR_REGION }}", &Map::new()).is_ok());
        assert!(
            check("{{ env }}", &Map::new()).is_err(),
            "not the whole map"
        );
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
        assert!(
            check(
                "{{ params.greeting }} {{ ds }} {{ env.ORCH_VAR_X }}",
                &params
            )
            .is_ok()
        );
        let err = check("{{ dss }}", &params).unwrap_err();
        assert!(err.contains("dss"), "{err}");
        let err = check("{{ params.greting }}", &params).unwrap_err();
        assert!(err.contains("params.greting"), "{err}");
    }
}
