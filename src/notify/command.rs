//! `command`: a shell command told about the event through its environment
//! (`ORCH_EVENT`, `ORCH_EVENT_JSON`, `ORCH_DAG_ID`, ...), never through its text.

use std::time::Duration;

use super::Event;

/// How long a command may run before it is killed and counted as failed.
const TIMEOUT: Duration = Duration::from_secs(60);

pub async fn run(command: &str, event: &Event) -> Result<(), String> {
    let json = serde_json::to_string(event).map_err(|e| e.to_string())?;
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut child = tokio::process::Command::new("sh");
    child
        .arg("-c")
        .arg(command)
        .env("ORCH_EVENT", event.event.as_str())
        .env("ORCH_EVENT_JSON", json)
        .env("ORCH_EVENT_SUMMARY", event.summary())
        .env("ORCH_DAG_ID", &event.dag_id)
        .env("ORCH_RUN_ID", &event.run_id)
        .env("ORCH_TASK_ID", text(&event.task_id))
        .env(
            "ORCH_ATTEMPT",
            event.attempt.map(|a| a.to_string()).unwrap_or_default(),
        )
        .env("ORCH_STATE", &event.state)
        .env("ORCH_ERROR", text(&event.error))
        .env("ORCH_LINK", text(&event.link))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(TIMEOUT, child.output())
        .await
        .map_err(|_| format!("the command ran longer than {}s", TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot run the command: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!(
            "the command exited with {}: {}",
            output.status,
            crate::redact::secrets(stderr.trim())
        ))
    }
}
