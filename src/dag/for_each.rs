//! Dynamic task mapping (`for_each:`): one task expanded at run time into an instance per item
//! of a list, such as one fetch per symbol.
//!
//! The list is known only when the task is ready (it may come from a param or an upstream
//! task's output), so the executor expands it then. Instance `i` of task `fetch` is the task
//! instance `fetch[i]`, with its own state, retries and logs; its templates read the item as
//! `{{ item }}` and its place as `{{ map_index }}`.

use serde_json::Value;

use crate::store::TaskState;
use crate::template::{self, RunVariables};

/// The most instances one mapped task may expand into in a run.
pub const MAX_ITEMS: usize = 10_000;

/// Where a mapped task's items come from.
#[derive(Debug, Clone, PartialEq)]
pub enum ForEach {
    /// Written in the DAG file.
    Items(Vec<Value>),
    /// A template evaluated when the task is ready: `{{ params.symbols }}`,
    /// `{{ outputs.list_symbols.symbols }}`.
    Template(String),
}

impl ForEach {
    /// The items of this run. A template may give a list, or text: a JSON array, or items
    /// separated by commas or new lines (what `orch:output symbols=a,b,c` publishes).
    pub fn items(&self, vars: &RunVariables) -> Result<Vec<Value>, String> {
        let items = match self {
            ForEach::Items(items) => items.clone(),
            ForEach::Template(source) => match template::evaluate(source, vars)? {
                Value::Array(items) => items,
                Value::String(text) => split_text(&text)
                    .map_err(|e| format!("`for_each: {source}` gave text that {e}"))?,
                Value::Null => {
                    return Err(format!(
                        "`for_each: {source}` gave nothing (null), not a list"
                    ));
                }
                other => {
                    return Err(format!(
                        "`for_each: {source}` gave {other}, not a list (or text with one item per line or comma)"
                    ));
                }
            },
        };
        if items.len() > MAX_ITEMS {
            return Err(format!(
                "`for_each` gave {} items; a task maps over at most {MAX_ITEMS}",
                items.len()
            ));
        }
        Ok(items)
    }
}

/// Items written as text: a JSON array, or strings between commas or new lines (blank ones
/// dropped).
fn split_text(text: &str) -> Result<Vec<Value>, String> {
    let trimmed = text.trim();
    if trimmed.starts_with('[') {
        return match serde_json::from_str::<Value>(trimmed) {
            Ok(Value::Array(items)) => Ok(items),
            Ok(_) | Err(_) => Err(format!(
                "starts with `[` but is not a JSON array: {trimmed}"
            )),
        };
    }
    Ok(trimmed
        .split([',', '\n'])
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| Value::String(item.to_string()))
        .collect())
}

/// The state a mapped task ends in once all its instances have: failed if any failed,
/// skipped if all were skipped, else success. `None` while any is still going.
pub fn summed_state(instances: &[TaskState]) -> Option<TaskState> {
    if !instances.iter().all(|s| s.is_finished()) {
        return None;
    }
    Some(
        if instances
            .iter()
            .any(|s| matches!(s, TaskState::Failed | TaskState::UpstreamFailed))
        {
            TaskState::Failed
        } else if instances.iter().all(|s| *s == TaskState::Skipped) {
            TaskState::Skipped
        } else {
            TaskState::Success
        },
    )
}

/// The id of instance `index` of mapped task `task`: `task[index]`.
pub fn instance_id(task: &str, index: usize) -> String {
    format!("{task}[{index}]")
}

/// The mapped task and index of an instance id (`fetch[3]` → `("fetch", 3)`); `None` for the
/// id of a task itself (task ids have no brackets).
pub fn parse_instance_id(id: &str) -> Option<(&str, usize)> {
    let (task, rest) = id.split_once('[')?;
    let index = rest.strip_suffix(']')?.parse().ok()?;
    Some((task, index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(params: Value, outputs: Value) -> RunVariables {
        let mut vars = RunVariables::new(
            "d",
            "r",
            "t",
            chrono::Utc::now(),
            (chrono::Utc::now(), chrono::Utc::now()),
            chrono_tz::UTC,
            params.as_object().cloned().unwrap_or_default(),
        );
        vars.outputs = outputs.as_object().cloned().unwrap_or_default();
        vars
    }

    #[test]
    fn items_come_from_a_literal_a_param_or_an_output() {
        let v = vars(
            json!({"symbols": ["BTCUSDT", "ETHUSDT"]}),
            json!({"list": {"csv": "A, B,,C\n", "json": "[1, 2]", "n": "7"}}),
        );
        let literal = ForEach::Items(vec![json!("X"), json!({"s": 1})]);
        assert_eq!(literal.items(&v).unwrap(), [json!("X"), json!({"s": 1})]);
        let param = ForEach::Template("{{ params.symbols }}".into());
        assert_eq!(
            param.items(&v).unwrap(),
            [json!("BTCUSDT"), json!("ETHUSDT")]
        );
        let csv = ForEach::Template("{{ outputs.list.csv }}".into());
        assert_eq!(csv.items(&v).unwrap(), [json!("A"), json!("B"), json!("C")]);
        let array = ForEach::Template("{{ outputs.list.json }}".into());
        assert_eq!(array.items(&v).unwrap(), [json!(1), json!(2)]);
        let text = ForEach::Template("{{ outputs.list.n }}".into());
        assert_eq!(text.items(&v).unwrap(), [json!("7")]);
    }

    #[test]
    fn what_is_not_a_list_is_refused_with_the_template_named() {
        let v = vars(json!({"n": 3, "bad": "[1,"}), json!({}));
        let number = ForEach::Template("{{ params.n }}".into());
        let e = number.items(&v).unwrap_err();
        assert!(
            e.contains("{{ params.n }}") && e.contains("not a list"),
            "{e}"
        );
        let broken = ForEach::Template("{{ params.bad }}".into());
        assert!(broken.items(&v).unwrap_err().contains("not a JSON array"));
        let missing = ForEach::Template("{{ outputs.nope.x }}".into());
        assert!(missing.items(&v).is_err());
        let many = ForEach::Items(vec![json!(1); MAX_ITEMS + 1]);
        assert!(many.items(&v).unwrap_err().contains("at most"));
    }

    #[test]
    fn a_mapped_task_sums_up_its_instances() {
        use TaskState::*;
        assert_eq!(summed_state(&[Success, Running]), None);
        assert_eq!(summed_state(&[Success, Skipped]), Some(Success));
        assert_eq!(summed_state(&[Success, Failed, Skipped]), Some(Failed));
        assert_eq!(summed_state(&[Skipped, Skipped]), Some(Skipped));
    }

    #[test]
    fn instance_ids_round_trip() {
        assert_eq!(instance_id("fetch", 3), "fetch[3]");
        assert_eq!(parse_instance_id("fetch[3]"), Some(("fetch", 3)));
        assert_eq!(parse_instance_id("fetch"), None);
        assert_eq!(parse_instance_id("fetch[x]"), None);
    }
}
