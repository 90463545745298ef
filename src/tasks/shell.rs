//! `kind: shell`: runs a command with `sh -c`.
//!
//! The command runs in its own process group, so a timeout or a shutdown kills everything it
//! started, not just the shell. Its stdout and stderr go line by line into the attempt's log; a
//! line `orch:rows=N` reports the task's row count, as built-in kinds do.
//!
//! Values templated into `command` are shell-quoted (see [`crate::template::Quoting`]); the
//! run's params are also in the environment, `ORCH_PARAM_<NAME>` each and `ORCH_PARAMS` as
//! JSON, for commands that would rather read them there.

use std::collections::BTreeMap;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

use super::{BoxFuture, TaskContext, TaskError, TaskKind, TaskOutput, parse_with};
use crate::process::ProcessGroup;

pub struct Shell;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShellConfig {
    command: String,
    /// Extra environment variables for the command.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Working directory, relative to the orch home; the home itself by default.
    cwd: Option<String>,
    /// Only these exit statuses are worth a retry; any other fails the task at once.
    retry_on_exit_codes: Option<Vec<i32>>,
    /// These exit statuses end the task `skipped`, not failed (and the tasks after it that
    /// need it to succeed are skipped too).
    #[serde(default)]
    skip_on_exit_codes: Vec<i32>,
}

impl TaskKind for Shell {
    fn name(&self) -> &'static str {
        "shell"
    }

    fn check(&self, with: &Value) -> Result<(), String> {
        let config: ShellConfig = parse_with(with)?;
        if config.command.trim().is_empty() {
            return Err("`with.command` is empty".to_string());
        }
        Ok(())
    }

    fn shell_templates(&self) -> &'static [&'static str] {
        &["command"]
    }

    fn run<'a>(
        &'a self,
        with: Value,
        ctx: &'a TaskContext,
    ) -> BoxFuture<'a, Result<TaskOutput, TaskError>> {
        Box::pin(async move {
            let config: ShellConfig = parse_with(&with).map_err(TaskError::permanent)?;
            run_command(&config, ctx)
                .await
                .map_err(|failure| failure.into_error(&config))
        })
    }
}

/// Why a command failed, with its exit status when it has one.
struct Failure {
    message: String,
    code: Option<i32>,
    /// No retry can help (outputs too large).
    permanent: bool,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            message,
            code: None,
            permanent: false,
        }
    }
}

impl Failure {
    /// The task's error under the exit-status rules of its configuration.
    fn into_error(self, config: &ShellConfig) -> TaskError {
        if self.permanent {
            return TaskError::permanent(self.message);
        }
        match (self.code, &config.retry_on_exit_codes) {
            (Some(code), _) if config.skip_on_exit_codes.contains(&code) => {
                TaskError::skipped(format!("skipped: {} (skip_on_exit_codes)", self.message))
            }
            (Some(code), Some(retry_on)) if !retry_on.contains(&code) => TaskError::permanent(
                format!("{} (not in retry_on_exit_codes: no retry)", self.message),
            ),
            _ => TaskError::transient(self.message),
        }
    }
}

async fn run_command(config: &ShellConfig, ctx: &TaskContext) -> Result<TaskOutput, Failure> {
    let cwd = match &config.cwd {
        Some(dir) => ctx.home.join(dir),
        None => ctx.home.clone(),
    };
    // `note` masks the secrets it shows.
    ctx.log.note(&format!("$ {}", config.command));
    // The shell waits for a line on stdin before it runs the command (then with stdin from
    // /dev/null), so the process group is in the metadata database before anything of the
    // task runs: a crash of orch at any instant leaves no process it cannot find and kill.
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"IFS= read -r _ || exit 125; exec sh -c "$0" </dev/null"#)
        .arg(&config.command)
        .current_dir(&cwd)
        .envs(&config.env)
        .env("ORCH_DAG_ID", &ctx.dag_id)
        .env("ORCH_RUN_ID", &ctx.run_id)
        .env("ORCH_TASK_ID", &ctx.task_id)
        .env("ORCH_ATTEMPT", ctx.attempt.to_string())
        .env("ORCH_DS", &ctx.ds)
        .env("ORCH_HOME", &ctx.home)
        .env("ORCH_PARAMS", Value::Object(ctx.params.clone()).to_string())
        .envs(ctx.params.iter().map(|(name, value)| {
            let value = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            (param_variable(name), value)
        }))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // If orch dies, even by SIGKILL, the shell dies with it instead of running on. The signal
    // follows the thread that spawned the child: a tokio worker, alive as long as the runtime.
    // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start `sh -c` in {}: {e}", cwd.display()))?;
    let group = ProcessGroup::new(child.id());
    if let Some(pid) = child.id() {
        ctx.processes.started(pid).await;
    }
    if let Some(mut gate) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        // A shell that already exited cannot read it; its status tells what happened.
        let _ = gate.write_all(b"go\n").await;
    }
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    let (mut out, mut err) = (StreamSummary::default(), StreamSummary::default());
    let status = {
        let reading = async {
            tokio::join!(
                read_lines(stdout, ctx, &mut out),
                read_lines(stderr, ctx, &mut err)
            )
        };
        tokio::pin!(reading);
        let mut read_all = false;
        let status = tokio::select! {
            status = child.wait() => status,
            _ = &mut reading => {
                read_all = true;
                child.wait().await
            }
        };
        // Whatever the command left running in its group would hold the pipes open and
        // outlive the task.
        group.kill();
        // A daemon that left the group (`setsid`) may still hold the pipes: the attempt ends
        // with the shell, after what is already in the pipes is read.
        if !read_all && tokio::time::timeout(DRAIN, &mut reading).await.is_err() {
            ctx.log.note(
                "the command exited, but a process it detached still holds its output; that output is not read",
            );
        }
        status
    };
    let status = status.map_err(|e| format!("cannot wait for the command: {e}"))?;
    let rows = err.rows.or(out.rows);
    if status.success() {
        let mut outputs = err.outputs;
        outputs.extend(out.outputs);
        let size = Value::Object(outputs.clone()).to_string().len();
        if size > super::MAX_OUTPUT_BYTES {
            return Err(Failure {
                message: format!(
                    "the task's outputs take {size} bytes, more than the {} an attempt may publish: put large data in the lake or a table, and publish its path",
                    super::MAX_OUTPUT_BYTES
                ),
                code: None,
                permanent: true,
            });
        }
        return Ok(TaskOutput {
            rows,
            metrics: None,
            outputs: (!outputs.is_empty()).then_some(outputs),
        });
    }
    let last = err.last_line.or(out.last_line);
    Err(Failure {
        message: describe_failure(status, last.as_deref()),
        code: status.code(),
        permanent: false,
    })
}

/// `ORCH_PARAM_` and the param's name in upper case, any character a variable name cannot
/// hold written as `_`.
fn param_variable(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("ORCH_PARAM_{name}")
}

fn describe_failure(status: ExitStatus, last_line: Option<&str>) -> String {
    use std::os::unix::process::ExitStatusExt;
    let what = match (status.code(), status.signal()) {
        (Some(code), _) => format!("command exited with status {code}"),
        (None, Some(signal)) => format!("command was killed by signal {signal}"),
        (None, None) => "command failed".to_string(),
    };
    match last_line {
        Some(line) if !line.trim().is_empty() => format!("{what}: {}", line.trim()),
        _ => what,
    }
}

/// How long output is still read after the shell exited.
const DRAIN: Duration = Duration::from_millis(500);
/// The end of the last line kept for the attempt's error.
const LAST_LINE_BYTES: usize = 4096;

#[derive(Default)]
struct StreamSummary {
    rows: Option<u64>,
    last_line: Option<String>,
    /// `orch:output key=value` lines, the last value of each key winning.
    outputs: serde_json::Map<String, Value>,
}

/// A key of `orch:output key=value`: letters, digits and `_`, as a template can name it.
fn is_output_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Copies a stream's lines into the log, noting its row count and last line in `summary` as
/// it goes, so that what was read counts even if the reading is cut short.
async fn read_lines(
    stream: Option<impl AsyncRead + Unpin>,
    ctx: &TaskContext,
    summary: &mut StreamSummary,
) {
    let Some(stream) = stream else {
        return;
    };
    let mut lines = BufReader::new(stream).split(b'\n');
    loop {
        match lines.next_segment().await {
            Ok(Some(bytes)) => {
                // Output that is not UTF-8 is kept, lossily, rather than failing the task.
                let text = String::from_utf8_lossy(&bytes);
                let line = text.strip_suffix('\r').unwrap_or(&text);
                if let Some(n) = line.trim().strip_prefix("orch:rows=") {
                    match n.trim().parse::<u64>() {
                        Ok(rows) => summary.rows = Some(rows),
                        Err(_) => ctx.log.note(&format!("ignored `{line}`: not a row count")),
                    }
                }
                if let Some(pair) = line.strip_prefix("orch:output ") {
                    match pair.split_once('=') {
                        Some((key, value)) if is_output_key(key.trim()) => {
                            summary
                                .outputs
                                .insert(key.trim().to_string(), Value::String(value.to_string()));
                        }
                        _ => ctx.log.note(&format!(
                            "ignored `{line}`: write `orch:output KEY=VALUE`, KEY of letters, digits and _"
                        )),
                    }
                }
                ctx.log.line(line);
                summary.last_line = Some(line_end(line).to_string());
            }
            Ok(None) => break,
            Err(e) => {
                ctx.log.note(&format!("cannot read command output: {e}"));
                break;
            }
        }
    }
}

/// The last [`LAST_LINE_BYTES`] of a line, at a character boundary.
fn line_end(line: &str) -> &str {
    let mut start = line.len().saturating_sub(LAST_LINE_BYTES);
    while !line.is_char_boundary(start) {
        start += 1;
    }
    &line[start..]
}
