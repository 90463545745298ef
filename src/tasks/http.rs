//! `kind: http`: one HTTP request, with the status it must answer and, optionally, where in
//! its JSON answer the rows are counted.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{BoxFuture, TaskContext, TaskError, TaskKind, TaskOutput, parse_with};

pub struct Http;

/// The most of an answer read.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// The most of an answer written to the attempt's log.
const LOGGED_BODY: usize = 4096;
/// The prefix of a header value read from orch's environment. Only `ORCH_VAR_*` variables,
/// as in templates: a run's `--conf` must not be able to send any secret of the server.
const ENV_PREFIX: &str = "env:";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpConfig {
    url: String,
    #[serde(default = "get")]
    method: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// A JSON value sent as JSON, or a string sent as it is.
    body: Option<Value>,
    /// The statuses that count as success; any 2xx by default.
    expect_status: Option<Vec<u16>>,
    /// A dot path into the JSON answer (`data.items`): an array there counts its rows, a
    /// number there is the row count.
    rows_json_path: Option<String>,
    /// How long the request may take; 60s by default.
    timeout: Option<String>,
}

fn get() -> String {
    "GET".to_string()
}

impl HttpConfig {
    fn check(&self, rendered: bool) -> Result<(), String> {
        if rendered {
            let url = url::Url::parse(&self.url)
                .map_err(|e| format!("`url` `{}`: {e}", crate::redact::secrets(&self.url)))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err("`url` must be http or https".to_string());
            }
        }
        reqwest::Method::from_bytes(self.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("`method` `{}` is not an HTTP method", self.method))?;
        for (name, value) in &self.headers {
            if let Some(var) = value.strip_prefix(ENV_PREFIX)
                && !var.starts_with("ORCH_VAR_")
            {
                return Err(format!(
                    "header `{name}`: only ORCH_VAR_* variables can be read (`env:ORCH_VAR_TOKEN`)"
                ));
            }
        }
        if let Some(t) = self.timeout.as_deref().filter(|t| !t.contains("{{")) {
            humantime::parse_duration(t).map_err(|e| format!("`timeout` `{t}`: {e}"))?;
        }
        Ok(())
    }
}

/// The value at a dot path of `value`.
fn at_path<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.')
        .filter(|p| !p.is_empty())
        .try_fold(value, |v, key| match v {
            Value::Object(map) => map.get(key),
            Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
}

impl TaskKind for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn check(&self, with: &Value) -> Result<(), String> {
        let config: HttpConfig = parse_with(with)?;
        let rendered = !config.url.contains("{{");
        config.check(rendered)
    }

    fn run<'a>(
        &'a self,
        with: Value,
        ctx: &'a TaskContext,
    ) -> BoxFuture<'a, Result<TaskOutput, TaskError>> {
        Box::pin(async move {
            let config: HttpConfig = parse_with(&with).map_err(TaskError::permanent)?;
            config.check(true).map_err(TaskError::permanent)?;
            let method = reqwest::Method::from_bytes(config.method.to_ascii_uppercase().as_bytes())
                .map_err(|e| TaskError::permanent(e.to_string()))?;
            let timeout = config
                .timeout
                .as_deref()
                .map(humantime::parse_duration)
                .transpose()
                .map_err(|e| TaskError::permanent(e.to_string()))?
                .unwrap_or(Duration::from_secs(60));
            let mut request = reqwest::Client::new()
                .request(method.clone(), &config.url)
                .timeout(timeout);
            for (name, value) in &config.headers {
                let value = match value.strip_prefix(ENV_PREFIX) {
                    Some(var) => std::env::var(var).map_err(|_| {
                        TaskError::permanent(format!(
                            "header `{name}`: environment variable {var} is not set"
                        ))
                    })?,
                    None => value.clone(),
                };
                request = request.header(name, value);
            }
            request = match &config.body {
                None => request,
                Some(Value::String(text)) => request.body(text.clone()),
                Some(json) => request.json(json),
            };
            let url = crate::redact::secrets(&config.url).into_owned();
            ctx.log.note(&format!("{method} {url}"));
            let answer = request.send().await.map_err(|e| {
                TaskError::transient(format!(
                    "{method} {url}: {}",
                    crate::redact::secrets(&crate::http_client::describe(&e))
                ))
            })?;
            let status = answer.status();
            let body = crate::http_client::read_body(answer, MAX_BODY)
                .await
                .map_err(|e| TaskError::transient(format!("{method} {url}: {e}")))?;
            let text = String::from_utf8_lossy(&body);
            let shown: String = text.chars().take(LOGGED_BODY).collect();
            ctx.log.note(&format!(
                "{} {}",
                status.as_u16(),
                crate::redact::secrets(&shown)
            ));
            let expected = match &config.expect_status {
                Some(list) => list.contains(&status.as_u16()),
                None => status.is_success(),
            };
            if !expected {
                let message = format!("{method} {url} answered {status}");
                // The server's trouble, or too many requests, may pass; a 4xx will not.
                return Err(if status.is_server_error() || status.as_u16() == 429 {
                    TaskError::transient(message)
                } else {
                    TaskError::permanent(message)
                });
            }
            let rows = match &config.rows_json_path {
                None => None,
                Some(path) => {
                    let json: Value = serde_json::from_slice(&body).map_err(|e| {
                        TaskError::permanent(format!("the answer is not JSON: {e}"))
                    })?;
                    match at_path(&json, path) {
                        Some(Value::Array(items)) => Some(items.len() as u64),
                        Some(Value::Number(n)) => n.as_u64(),
                        _ => {
                            return Err(TaskError::permanent(format!(
                                "no array or count at `{path}` in the answer"
                            )));
                        }
                    }
                }
            };
            Ok(TaskOutput {
                rows,
                metrics: None,
                ..TaskOutput::default()
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dot_paths_reach_into_objects_and_arrays() {
        let v = json!({"data": {"items": [1, 2, 3], "pages": [{"n": 7}]}});
        assert_eq!(at_path(&v, "data.items"), Some(&json!([1, 2, 3])));
        assert_eq!(at_path(&v, "data.pages.0.n"), Some(&json!(7)));
        assert_eq!(at_path(&v, "data.nope"), None);
    }

    #[test]
    fn only_orch_var_variables_reach_headers() {
        let config: HttpConfig = serde_json::from_value(json!({
            "url": "https://x.example", "headers": {"Authorization": "env:AWS_SECRET_ACCESS_KEY"}
        }))
        .expect("config");
        assert!(config.check(true).unwrap_err().contains("only ORCH_VAR_"));
    }
}
