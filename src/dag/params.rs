//! Typed params: what a run's conf may set. Declared in the DAG file, checked when it loads (a
//! default must obey its own rules) and before a run is created (`--conf`, the API, the
//! trigger form), with errors that name the param and the rule.
//!
//! ```yaml
//! params:
//!   greeting: hello                  # a default; its type is the default's
//!   limit: { type: integer, default: 100, min: 1, max: 1000 }
//!   day: { type: date, required: true, description: The UTC day to load }
//!   mode: { type: enum, values: [full, incremental], default: incremental }
//!   symbol: { type: string, pattern: "^[A-Z]+USDT$", default: BTCUSDT }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The types a param may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    String,
    Integer,
    Number,
    Boolean,
    /// A day, `YYYY-MM-DD`.
    Date,
    /// One of `values`.
    Enum,
    List,
    Object,
}

impl ParamType {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
            ParamType::Date => "date",
            ParamType::Enum => "enum",
            ParamType::List => "list",
            ParamType::Object => "object",
        }
    }

    /// The type a plain default implies.
    fn of(value: &Value) -> ParamType {
        match value {
            Value::Bool(_) => ParamType::Boolean,
            Value::Number(n) if n.is_i64() || n.is_u64() => ParamType::Integer,
            Value::Number(_) => ParamType::Number,
            Value::Array(_) => ParamType::List,
            Value::Object(_) => ParamType::Object,
            Value::String(_) | Value::Null => ParamType::String,
        }
    }
}

/// One declared param.
#[derive(Debug, Clone, Serialize)]
pub struct Param {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ParamType,
    pub default: Option<Value>,
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<Value>,
    pub description: Option<String>,
    #[serde(skip)]
    regex: Option<regex_lite::Regex>,
}

/// A declaration as written: a mapping with a `type`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Declaration {
    #[serde(rename = "type")]
    kind: ParamType,
    default: Option<Value>,
    #[serde(default)]
    required: bool,
    min: Option<f64>,
    max: Option<f64>,
    pattern: Option<String>,
    values: Option<Vec<Value>>,
    description: Option<String>,
}

impl Param {
    /// Reads a param of a DAG file: a mapping with `type:` declares it, anything else is its
    /// default.
    pub fn from_yaml(name: &str, value: &Value) -> Result<Param, String> {
        let declared = matches!(value, Value::Object(map) if map.contains_key("type"));
        if !declared {
            return Ok(Param {
                name: name.to_string(),
                kind: ParamType::of(value),
                default: Some(value.clone()),
                required: false,
                min: None,
                max: None,
                pattern: None,
                values: Vec::new(),
                description: None,
                regex: None,
            });
        }
        let d: Declaration = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
        let regex = match &d.pattern {
            Some(p) => Some(
                regex_lite::Regex::new(p)
                    .map_err(|e| format!("pattern `{p}` is not valid: {e}"))?,
            ),
            None => None,
        };
        if d.pattern.is_some() && d.kind != ParamType::String {
            return Err("`pattern` applies to a string".to_string());
        }
        if (d.min.is_some() || d.max.is_some())
            && !matches!(d.kind, ParamType::Integer | ParamType::Number)
        {
            return Err("`min` and `max` apply to an integer or a number".to_string());
        }
        let values = d.values.unwrap_or_default();
        if d.kind == ParamType::Enum && values.is_empty() {
            return Err("an enum needs its `values`".to_string());
        }
        if d.kind != ParamType::Enum && !values.is_empty() {
            return Err("`values` applies to an enum".to_string());
        }
        let param = Param {
            name: name.to_string(),
            kind: d.kind,
            default: d.default,
            required: d.required,
            min: d.min,
            max: d.max,
            pattern: d.pattern,
            values,
            description: d.description,
            regex,
        };
        if let Some(default) = &param.default {
            param
                .check(default)
                .map_err(|rule| format!("its default breaks its own rule: {rule}"))?;
        }
        Ok(param)
    }

    /// Whether `value` fits this param; the error names the rule it breaks.
    pub fn check(&self, value: &Value) -> Result<(), String> {
        let fits = match (self.kind, value) {
            (ParamType::String, Value::String(_)) => true,
            (ParamType::Integer, Value::Number(n)) => n.is_i64() || n.is_u64(),
            (ParamType::Number, Value::Number(_)) => true,
            (ParamType::Boolean, Value::Bool(_)) => true,
            (ParamType::Date, Value::String(s)) => {
                chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
            }
            (ParamType::Enum, v) => self.values.contains(v),
            (ParamType::List, Value::Array(_)) => true,
            (ParamType::Object, Value::Object(_)) => true,
            _ => false,
        };
        if !fits {
            return Err(match self.kind {
                ParamType::Date => format!("must be a date like 2026-11-22, got {value}"),
                ParamType::Enum => format!(
                    "must be one of {}, got {value}",
                    Value::Array(self.values.clone())
                ),
                kind => format!("must be {} {}, got {value}", article(kind), kind.as_str()),
            });
        }
        if let Some(n) = value.as_f64() {
            if let Some(min) = self.min.filter(|&min| n < min) {
                return Err(format!("must be at least {min} (min), got {value}"));
            }
            if let Some(max) = self.max.filter(|&max| n > max) {
                return Err(format!("must be at most {max} (max), got {value}"));
            }
        }
        if let (Some(regex), Some(pattern), Some(text)) =
            (&self.regex, &self.pattern, value.as_str())
            && !regex.is_match(text)
        {
            return Err(format!("must match the pattern `{pattern}`, got {value}"));
        }
        Ok(())
    }
}

fn article(kind: ParamType) -> &'static str {
    match kind {
        ParamType::Integer | ParamType::Object | ParamType::Enum => "an",
        _ => "a",
    }
}

/// The problems of `conf` against `params`, by param: a value that breaks its param's rule, a
/// required param with no value. Conf keys no param declares pass, as Airflow lets them.
pub fn check_conf(params: &[Param], conf: &Map<String, Value>) -> BTreeMap<String, String> {
    let mut problems = BTreeMap::new();
    for param in params {
        match conf.get(&param.name) {
            Some(value) => {
                if let Err(rule) = param.check(value) {
                    problems.insert(param.name.clone(), rule);
                }
            }
            None if param.required && param.default.is_none() => {
                problems.insert(
                    param.name.clone(),
                    "is required: give it a value".to_string(),
                );
            }
            None => {}
        }
    }
    problems
}

/// The problems of `check_conf` as one message: `param `limit`: must be at least 1 ...`.
pub fn describe(problems: &BTreeMap<String, String>) -> String {
    problems
        .iter()
        .map(|(name, rule)| format!("param `{name}` {rule}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The values templates see before a run's conf: each default, `null` where none.
pub fn defaults(params: &[Param]) -> Map<String, Value> {
    params
        .iter()
        .map(|p| (p.name.clone(), p.default.clone().unwrap_or(Value::Null)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn param(name: &str, yaml: Value) -> Param {
        Param::from_yaml(name, &yaml).expect("a valid param")
    }

    #[test]
    fn plain_defaults_imply_their_type() {
        assert_eq!(param("a", json!(10)).kind, ParamType::Integer);
        assert_eq!(param("b", json!("x")).kind, ParamType::String);
        assert_eq!(param("c", json!({"k": 1})).kind, ParamType::Object);
        assert_eq!(param("d", json!([1])).kind, ParamType::List);
    }

    #[test]
    fn rules_are_checked_and_named() {
        let limit = param(
            "limit",
            json!({"type": "integer", "default": 10, "min": 1, "max": 100}),
        );
        assert!(limit.check(&json!(5)).is_ok());
        assert_eq!(
            limit.check(&json!(0)).unwrap_err(),
            "must be at least 1 (min), got 0"
        );
        assert!(limit.check(&json!(101)).unwrap_err().contains("(max)"));
        assert!(
            limit
                .check(&json!(1.5))
                .unwrap_err()
                .contains("must be an integer")
        );
        let day = param("day", json!({"type": "date", "required": true}));
        assert!(day.check(&json!("2026-11-22")).is_ok());
        assert!(
            day.check(&json!("22/11/2026"))
                .unwrap_err()
                .contains("a date like")
        );
        let mode = param(
            "mode",
            json!({"type": "enum", "values": ["full", "incremental"]}),
        );
        assert!(mode.check(&json!("full")).is_ok());
        assert!(
            mode.check(&json!("half"))
                .unwrap_err()
                .contains("one of [\"full\",\"incremental\"]")
        );
        let symbol = param(
            "symbol",
            json!({"type": "string", "pattern": "^[A-Z]+USDT$"}),
        );
        assert!(symbol.check(&json!("BTCUSDT")).is_ok());
        assert!(symbol.check(&json!("btc")).unwrap_err().contains("pattern"));

        let problems = check_conf(&[limit, day], &Map::new());
        assert_eq!(problems.len(), 1);
        assert_eq!(problems["day"], "is required: give it a value");
    }

    #[test]
    fn bad_declarations_are_refused() {
        let refused = |yaml: Value| Param::from_yaml("p", &yaml).unwrap_err();
        assert!(
            refused(json!({"type": "integer", "default": 0, "min": 1}))
                .contains("its default breaks")
        );
        assert!(refused(json!({"type": "enum"})).contains("needs its `values`"));
        assert!(refused(json!({"type": "string", "pattern": "("})).contains("not valid"));
        assert!(
            refused(json!({"type": "integer", "pattern": "x"})).contains("applies to a string")
        );
        assert!(refused(json!({"type": "text"})).contains("unknown variant"));
        assert!(refused(json!({"type": "string", "maximum": 3})).contains("unknown field"));
    }
}
