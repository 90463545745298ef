//! `webhook`: the event POSTed as JSON, or as `{"text": ...}` for Slack's incoming webhooks.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::Event;

/// How long one POST may take.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub url: String,
    /// Send Slack's shape, `{"text": "..."}`, instead of the event.
    #[serde(default)]
    pub slack: bool,
    /// Extra headers; a value `env:NAME` is read from the environment of orch, so a token
    /// need not be written in the DAG file.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl Webhook {
    pub fn check(&self) -> Result<(), String> {
        let url = url::Url::parse(&self.url)
            .map_err(|e| format!("webhook url `{}`: {e}", crate::redact::secrets(&self.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "webhook url `{}` must be http or https",
                crate::redact::secrets(&self.url)
            ));
        }
        Ok(())
    }

    pub async fn send(&self, event: &Event) -> Result<(), String> {
        let body = if self.slack {
            serde_json::json!({ "text": event.summary() })
        } else {
            serde_json::to_value(event).map_err(|e| e.to_string())?
        };
        let mut request = reqwest::Client::new()
            .post(&self.url)
            .timeout(TIMEOUT)
            .json(&body);
        for (name, value) in &self.headers {
            let value = match value.strip_prefix("env:") {
                Some(var) => std::env::var(var)
                    .map_err(|_| format!("header {name}: environment variable {var} is not set"))?,
                None => value.clone(),
            };
            request = request.header(name, value);
        }
        let answer = request
            .send()
            .await
            .map_err(|e| crate::redact::secrets(&crate::http_client::describe(&e)).into_owned())?;
        if answer.status().is_success() {
            Ok(())
        } else {
            Err(format!(
                "{} answered {}",
                crate::redact::secrets(&self.url),
                answer.status()
            ))
        }
    }
}
