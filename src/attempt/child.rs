//! Both ends of an attempt in a child process: the parent starts `orch attempt`, hands it the
//! [`AttemptSpec`] on its standard input, copies its standard error into the attempt's log, and
//! reads its [`Outcome`] from its standard output; the child ([`serve_child`]) runs the
//! kind and reports.
//!
//! The parent is the one that knows the attempt's fate when the child cannot say it: a crash,
//! a panic, a kill by the kernel for memory or CPU, a timeout. It reaps the child with
//! `wait4(2)` to learn its exit status and resource usage in one call.

use std::collections::VecDeque;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::os::fd::AsFd as _;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use tokio::net::unix::pipe;

use super::fork_server::{self, ForkServer};
use serde::{Deserialize, Serialize};

use super::{AttemptSpec, Ended, LOG_TAIL_BYTES, Outcome, Usage, run_here};
use crate::logs::AttemptLog;
use crate::process;
use crate::store::Store;
use crate::tasks::{Registry, TaskError, TaskOutput};

/// How long a timed-out attempt may stop by itself after SIGTERM before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(10);
/// The same after a shutdown's grace period, which already gave the attempt its time.
const ABORT_GRACE: Duration = Duration::from_secs(5);
/// The most of a report read from a child: rows and metrics, never data.
const MAX_REPORT_BYTES: u64 = 1 << 20;
/// The last lines of the attempt's log read to explain a crash.
const TAIL_LINES: usize = 20;
/// The most of the end of the log read for those lines.
const TAIL_BYTES: u64 = 16 * 1024;
/// How long the child's report is still read after it exited, for a process it started that
/// holds the pipe open.
const DRAIN: Duration = Duration::from_millis(500);
/// The prefix of the line the child's panic hook prints, to tell a panic's message from
/// other output.
const PANIC_PREFIX: &str = "orch attempt panicked: ";

/// Runs `spec` in a child process of `exe` (forked by `forks`, else started anew) and returns
/// how it ended. The child writes its log itself; only when it cannot say how it ended (a
/// crash, a timeout) does this side read the log's end and write the last line.
pub(super) async fn run(
    exe: &Path,
    forks: &ForkServer,
    spec: &AttemptSpec,
    store: &Store,
    abort: impl Future<Output = ()>,
) -> Ended {
    let input = serde_json::to_vec(spec).unwrap_or_default();
    let child = match fork(forks, exe, input.clone()).await {
        Ok(child) => Ok(child),
        Err(e) => {
            tracing::warn!(error = %e, "the attempt server cannot fork; starting the attempt process anew");
            spawn(exe, spec)
        }
    };
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            let result = Err(TaskError::transient(format!(
                "cannot start the attempt process `{} attempt`: {e}",
                exe.display()
            )));
            return end_in_log(spec, result, Usage::default()).await;
        }
    };
    let group = Group {
        pid: child.pid,
        reaped: Arc::clone(&child.reaped),
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A child that already died cannot read it; its status says why.
        let _ = stdin.write_all(&input).await;
    }
    let stdout = child.stdout.take();
    let mut report = Vec::new();
    let reading = async {
        if let Some(out) = stdout {
            let _ = out.take(MAX_REPORT_BYTES).read_to_end(&mut report).await;
        }
    };
    let mut reading = Box::pin(reading);

    let mut waiting = child.wait;
    let mut stop = Stop::None;
    let mut read_all = false;
    let deadline = spec.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut kill_at = None;
    let mut abort = std::pin::pin!(abort);
    let exited = loop {
        let term_at = deadline.filter(|_| stop == Stop::None);
        tokio::select! {
            exited = &mut waiting => break exited,
            () = &mut reading, if !read_all => read_all = true,
            () = &mut abort, if stop == Stop::None => {
                group.signal(libc::SIGTERM);
                stop = Stop::Interrupted;
                kill_at = Some(tokio::time::Instant::now() + ABORT_GRACE);
            }
            () = sleep_until(term_at), if term_at.is_some() => {
                group.signal(libc::SIGTERM);
                stop = Stop::TimedOut;
                kill_at = Some(tokio::time::Instant::now() + TERM_GRACE);
            }
            () = sleep_until(kill_at), if kill_at.is_some() => {
                group.signal(libc::SIGKILL);
                stop = match stop {
                    Stop::TimedOut => Stop::TimedOutKilled,
                    other => other,
                };
                kill_at = None;
            }
        }
    };
    // Whatever the attempt left running in its group would outlive it.
    group.signal(libc::SIGKILL);
    let held = !read_all && tokio::time::timeout(DRAIN, &mut reading).await.is_err();
    drop(reading);
    let (status, usage) = match exited {
        Ok(Ok(ended)) => ended,
        Ok(Err(e)) => {
            let error = format!("cannot wait for the attempt process: {e}");
            return end_in_log(spec, Err(TaskError::transient(error)), Usage::default()).await;
        }
        Err(e) => {
            let error = format!("the thread waiting for the attempt process failed: {e}");
            return end_in_log(spec, Err(TaskError::transient(error)), Usage::default()).await;
        }
    };
    if status.signal().is_some() {
        // Killed before it could clean up: the shell commands it started are in groups of
        // their own, recorded in the metadata database.
        kill_recorded_group(store, spec).await;
    }
    let report: Option<ChildReport> = serde_json::from_slice(&report).ok();
    match report {
        Some(report) if status.code() == Some(0) && stop == Stop::None && !held => Ended {
            result: report.outcome.into(),
            usage,
            log_tail: report.log_tail,
        },
        report => {
            let spec = spec.clone();
            let ended = tokio::task::spawn_blocking(move || {
                let log = AttemptLog::create(spec.log_path.clone());
                if held && let Ok(log) = &log {
                    log.note(
                        "the attempt process exited, but a process it started still holds its output",
                    );
                }
                let lines = last_lines(&spec.log_path);
                let outcome = report.map(|r| r.outcome);
                let result = outcome_of(&spec, status, stop, outcome, &lines, &usage);
                if let Ok(log) = &log {
                    log.note(&super::ending_note(&result));
                }
                let log_tail = crate::logs::read_tail(&spec.log_path, LOG_TAIL_BYTES);
                Ended {
                    result,
                    usage,
                    log_tail,
                }
            });
            ended.await.unwrap_or_else(|e| Ended {
                result: Err(TaskError::transient(format!(
                    "cannot read how the attempt process ended: {e}"
                ))),
                usage,
                log_tail: String::new(),
            })
        }
    }
}

/// Ends an attempt whose process never told how it went: the log's last line says why.
async fn end_in_log(
    spec: &AttemptSpec,
    result: Result<TaskOutput, TaskError>,
    usage: Usage,
) -> Ended {
    let (path, banner, ending) = (
        spec.log_path.clone(),
        spec.banner.clone(),
        super::ending_note(&result),
    );
    let log_tail = tokio::task::spawn_blocking(move || {
        if let Ok(log) = AttemptLog::create(path.clone()) {
            log.note(&banner);
            log.note(&ending);
        }
        crate::logs::read_tail(&path, LOG_TAIL_BYTES)
    })
    .await
    .unwrap_or_default();
    Ended {
        result,
        usage,
        log_tail,
    }
}

/// The last lines of the attempt's log, where the process's standard error went too.
fn last_lines(path: &Path) -> VecDeque<String> {
    let text = crate::logs::read_tail(path, TAIL_BYTES);
    let mut lines: VecDeque<String> = text.lines().map(str::to_string).collect();
    while lines.len() > TAIL_LINES {
        lines.pop_front();
    }
    lines
}

/// What the attempt process prints on its standard output: how it ended, and the end of its
/// log (which it wrote, so that its worker need not read the file).
#[derive(Debug, Serialize, Deserialize)]
struct ChildReport {
    outcome: Outcome,
    #[serde(default)]
    log_tail: String,
}

/// Whether and how the parent stopped the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    None,
    /// Past its timeout: SIGTERM.
    TimedOut,
    /// Past its timeout, and still there [`TERM_GRACE`] after SIGTERM: SIGKILL.
    TimedOutKilled,
    /// A shutdown's grace period is over: SIGTERM, and SIGKILL after [`ABORT_GRACE`].
    Interrupted,
}

/// How a child process ended, as `wait4(2)` tells it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Status(pub(super) libc::c_int);

impl Status {
    fn code(self) -> Option<i32> {
        libc::WIFEXITED(self.0).then(|| libc::WEXITSTATUS(self.0))
    }

    fn signal(self) -> Option<i32> {
        libc::WIFSIGNALED(self.0).then(|| libc::WTERMSIG(self.0))
    }
}

/// The attempt's outcome from everything known about how the child ended.
fn outcome_of(
    spec: &AttemptSpec,
    status: Status,
    stop: Stop,
    report: Option<Outcome>,
    stderr_tail: &VecDeque<String>,
    usage: &Usage,
) -> Result<TaskOutput, TaskError> {
    if stop == Stop::Interrupted {
        return Err(TaskError::transient(super::INTERRUPTED));
    }
    if stop != Stop::None {
        let limit = spec
            .timeout
            .map(|t| humantime::format_duration(t).to_string())
            .unwrap_or_default();
        let how = if stop == Stop::TimedOutKilled {
            format!(
                "SIGTERM, then SIGKILL after {}",
                humantime::format_duration(TERM_GRACE)
            )
        } else {
            "stopped by SIGTERM".to_string()
        };
        return Err(TaskError::transient(format!(
            "timed out after {limit}: {how}"
        )));
    }
    if let (Some(0), Some(report)) = (status.code(), report) {
        return report.into();
    }
    let last_line = || {
        stderr_tail
            .iter()
            .rev()
            .find(|line| !line.trim().is_empty())
            .map(|line| line.trim().to_string())
    };
    let out_of_memory = stderr_tail
        .iter()
        .rev()
        .find(|line| line.starts_with("memory allocation of "));
    let limits = &spec.limits;
    let message = match (status.code(), status.signal()) {
        (_, Some(libc::SIGABRT)) if out_of_memory.is_some() => format!(
            "killed: out of memory ({}{})",
            out_of_memory.map(|l| l.trim()).unwrap_or_default(),
            limits
                .memory
                .map(|m| format!("; limit {}", super::limits::format_size(m)))
                .unwrap_or_default()
        ),
        (_, Some(libc::SIGXCPU)) => format!(
            "killed: CPU time limit reached (cpu_seconds {})",
            limits.cpu_seconds.unwrap_or_default()
        ),
        (_, Some(libc::SIGKILL))
            if limits.cpu_seconds.is_some_and(|s| {
                usage.cpu_ms.unwrap_or_default() >= i64::try_from(s * 1000).unwrap_or(i64::MAX)
            }) =>
        {
            format!(
                "killed: CPU time limit reached (cpu_seconds {})",
                limits.cpu_seconds.unwrap_or_default()
            )
        }
        (_, Some(libc::SIGKILL)) => {
            "killed: SIGKILL from outside orch (the kernel's OOM killer when memory runs out)"
                .to_string()
        }
        (_, Some(signal)) => format!("killed by signal {signal} ({})", signal_name(signal)),
        (Some(101), _) => {
            let panic = stderr_tail
                .iter()
                .rev()
                .find_map(|line| line.strip_prefix(PANIC_PREFIX));
            format!(
                "exit 101 (panic: {})",
                panic.map_or_else(|| last_line().unwrap_or_default(), str::to_string)
            )
        }
        (Some(0), None) => "the attempt process exited without reporting an outcome".to_string(),
        (Some(code), _) => match last_line() {
            Some(line) => format!("exit {code}: {line}"),
            None => format!("exit {code}"),
        },
        (None, None) => "the attempt process ended in an unknown way".to_string(),
    };
    Err(TaskError::transient(message))
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGABRT => "SIGABRT",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGHUP => "SIGHUP",
        libc::SIGPIPE => "SIGPIPE",
        _ => "see signal(7)",
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A started child process: its pipes, and a task that learns its end.
struct Child {
    pid: i32,
    reaped: Arc<AtomicBool>,
    stdin: Option<pipe::Sender>,
    stdout: Option<pipe::Receiver>,
    wait: tokio::task::JoinHandle<std::io::Result<(Status, Usage)>>,
}

/// Forks the attempt process from the fork server, with `input` on its standard input. Its
/// standard error is this process's until it opens its log and puts the log in its place.
async fn fork(forks: &ForkServer, exe: &Path, input: Vec<u8>) -> std::io::Result<Child> {
    let (stdin_theirs, stdin) = fork_server::pipe()?;
    let (stdout, stdout_theirs) = fork_server::pipe()?;
    let stderr_theirs = std::io::stderr().as_fd().try_clone_to_owned()?;
    // Written while the fork is asked for, so that the spec waits in the pipe for the child.
    // Ends once written, or when the pipe's other end is gone (the child died, or never was).
    let mut stdin = pipe::Sender::from_owned_fd(stdin)?;
    tokio::spawn(async move {
        let _ = stdin.write_all(&input).await;
    });
    let forked = forks
        .fork(exe, [stdin_theirs, stdout_theirs, stderr_theirs])
        .await?;
    let reaped = Arc::new(AtomicBool::new(false));
    let wait = {
        let reaped = Arc::clone(&reaped);
        tokio::spawn(async move {
            let ended = forked
                .exit
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("the attempt server stopped")));
            reaped.store(true, Ordering::SeqCst);
            ended
        })
    };
    Ok(Child {
        pid: forked.pid,
        reaped,
        stdin: None,
        stdout: Some(pipe::Receiver::from_owned_fd(stdout)?),
        wait,
    })
}

/// Starts `exe attempt` in a process group of its own, with the task's limits, dying with this
/// process's thread that started it (a tokio worker, alive as long as the runtime).
fn spawn(exe: &Path, spec: &AttemptSpec) -> std::io::Result<Child> {
    let mut command = std::process::Command::new(exe);
    command
        .arg("attempt")
        .current_dir(&spec.home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    let limits = spec.limits;
    // SAFETY: prctl(2) and setrlimit(2) are async-signal-safe and allocate nothing.
    unsafe {
        command.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            limits.apply_to_this_process()
        });
    }
    let mut child = command.spawn()?;
    let pid = i32::try_from(child.id()).map_err(std::io::Error::other)?;
    let stdin = child
        .stdin
        .take()
        .map(|p| pipe::Sender::from_owned_fd(p.into()))
        .transpose()?;
    let stdout = child
        .stdout
        .take()
        .map(|p| pipe::Receiver::from_owned_fd(p.into()))
        .transpose()?;
    let reaped = Arc::new(AtomicBool::new(false));
    let wait = {
        let reaped = Arc::clone(&reaped);
        tokio::task::spawn_blocking(move || {
            let result = wait4(pid);
            reaped.store(true, Ordering::SeqCst);
            result
        })
    };
    Ok(Child {
        pid,
        reaped,
        stdin,
        stdout,
        wait,
    })
}

/// Waits for the child `pid` to end; its status and what it used.
fn wait4(pid: i32) -> std::io::Result<(Status, Usage)> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data that wait4 fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4(2) writes only into the two values we own.
        let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if waited == pid {
            break;
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    let millis = |t: libc::timeval| t.tv_sec * 1000 + t.tv_usec / 1000;
    Ok((
        Status(status),
        Usage {
            // Linux reports the peak resident set in KiB.
            peak_rss_bytes: Some(usage.ru_maxrss.saturating_mul(1024)),
            cpu_ms: Some(millis(usage.ru_utime) + millis(usage.ru_stime)),
        },
    ))
}

/// The child's process group, killed when the attempt is dropped (shutdown's abort) and
/// signalled on timeout; never once the child is reaped, when its pid may name another.
struct Group {
    pid: i32,
    reaped: Arc<AtomicBool>,
}

impl Group {
    fn signal(&self, signal: i32) {
        if !self.reaped.load(Ordering::SeqCst) {
            // SAFETY: kill(2) with a negative pid signals a process group.
            unsafe {
                libc::kill(-self.pid, signal);
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

async fn kill_recorded_group(store: &Store, spec: &AttemptSpec) {
    match store
        .attempt_process(&spec.run_id, &spec.task_id, spec.attempt)
        .await
    {
        Ok(Some((pgid, ticks))) => process::kill_orphaned_group(pgid, ticks),
        Ok(None) => {}
        Err(e) => tracing::warn!(run_id = %spec.run_id, task_id = %spec.task_id, error = %e,
            "cannot look up the process group a killed attempt started"),
    }
}

/// The child's side: `orch attempt`. Reads the spec from standard input, runs it, prints the
/// report on standard output and exits; a SIGTERM stops the attempt (its commands are
/// killed) and is reported as such. `registry` gives the task kinds the binary composed: a
/// function, not a value, since a forked child must build what it uses after the fork.
pub async fn serve_child(registry: fn() -> Registry) -> std::process::ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("{PANIC_PREFIX}{message}{location}");
    }));
    let report = match read_spec() {
        Err(message) => ChildReport {
            outcome: Outcome::Failed {
                message,
                retryable: false,
                skipped: false,
                reschedule_ms: None,
            },
            log_tail: String::new(),
        },
        Ok(spec) => run_spec(spec, registry).await,
    };
    let mut stdout = std::io::stdout().lock();
    let written = serde_json::to_writer(&mut stdout, &report)
        .map_err(std::io::Error::from)
        .and_then(|()| stdout.flush());
    // Exit now: the runtime would wait for blocking work a cancelled attempt left running.
    std::process::exit(if written.is_ok() { 0 } else { 1 })
}

fn read_spec() -> Result<AttemptSpec, String> {
    use std::io::Read as _;
    let mut input = Vec::with_capacity(16 * 1024);
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("cannot read the attempt on standard input: {e}"))?;
    serde_json::from_slice(&input)
        .map_err(|e| format!("the attempt on standard input does not read: {e}"))
}

/// Runs the attempt in this process, writing its log: the banner, what it prints (its
/// standard error goes to the log too, a panic's message included), and how it ended.
async fn run_spec(spec: AttemptSpec, registry: fn() -> Registry) -> ChildReport {
    let log = match AttemptLog::create(spec.log_path.clone()) {
        Ok(log) => Arc::new(log),
        Err(e) => {
            let error = TaskError::transient(format!(
                "cannot open the attempt log {}: {e}",
                spec.log_path.display()
            ));
            return ChildReport {
                outcome: Outcome::from(&Err(error)),
                log_tail: String::new(),
            };
        }
    };
    if let Ok(fd) = log.descriptor() {
        // SAFETY: dup2 onto standard error, which this process owns; `fd` stays open until
        // dropped after.
        unsafe {
            libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::STDERR_FILENO);
        }
    }
    log.note(&spec.banner);
    let result = run_kind(spec, Arc::clone(&log), registry).await;
    let log_tail = log.finish(&super::ending_note(&result), LOG_TAIL_BYTES);
    ChildReport {
        outcome: Outcome::from(&result),
        log_tail,
    }
}

async fn run_kind(
    mut spec: AttemptSpec,
    log: Arc<AttemptLog>,
    registry: fn() -> Registry,
) -> Result<TaskOutput, TaskError> {
    // A forked child applies these itself (a started one has them from its parent already).
    spec.limits
        .apply_to_this_process()
        .map_err(|e| TaskError::transient(format!("cannot set the attempt's limits: {e}")))?;
    std::env::set_current_dir(&spec.home).map_err(|e| {
        TaskError::transient(format!(
            "cannot enter the home {}: {e}",
            spec.home.display()
        ))
    })?;
    let store = Store::connect_lazy(&spec.database_url)
        .map_err(|e| TaskError::transient(format!("cannot open the metadata database: {e}")))?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| TaskError::transient(format!("cannot handle SIGTERM: {e}")))?;
    // The parent enforces the timeout, with SIGTERM.
    spec.timeout = None;
    let registry = registry();
    tokio::select! {
        result = run_here(spec, &registry, &store, log) => result,
        _ = terminate.recv() => Err(TaskError::transient("stopped by SIGTERM")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(timeout: Option<Duration>, limits: super::super::Limits) -> AttemptSpec {
        AttemptSpec {
            dag_id: "d".into(),
            run_id: "r".into(),
            task_id: "t".into(),
            attempt: 1,
            kind: "noop".into(),
            with: serde_json::Value::Null,
            home: "/".into(),
            ds: "2026-11-29".into(),
            params: Default::default(),
            log_path: "/dev/null".into(),
            timeout,
            limits,
            database_url: "sqlite://orch.db".into(),
            data: crate::config::DataPlaces {
                lake_url: String::new(),
                warehouse_url: String::new(),
                binance_api_url: String::new(),
                mercado_bitcoin_api_url: String::new(),
                kucoin_api_url: String::new(),
                mercado_bitcoin_ws_url: String::new(),
                staging_url: String::new(),
                binance_ws_url: String::new(),
                nats_url: String::new(),
                connections: Default::default(),
            },
            banner: String::new(),
        }
    }

    /// A wait status as the kernel encodes it.
    fn exited(code: i32) -> Status {
        Status(code << 8)
    }

    fn signalled(signal: i32) -> Status {
        Status(signal)
    }

    fn error(
        spec: &AttemptSpec,
        status: Status,
        stop: Stop,
        stderr: &[&str],
        usage: Usage,
    ) -> String {
        let tail = stderr.iter().map(|s| s.to_string()).collect();
        match outcome_of(spec, status, stop, None, &tail, &usage) {
            Err(e) => e.message,
            Ok(out) => panic!("succeeded: {out:?}"),
        }
    }

    #[test]
    fn a_panic_is_told_by_its_message() {
        let spec = spec(None, Default::default());
        let stderr = [
            "some output",
            &format!("{PANIC_PREFIX}index out of bounds at src/x.rs:3"),
            "note: run with `RUST_BACKTRACE=1`",
        ];
        assert_eq!(
            error(&spec, exited(101), Stop::None, &stderr, Usage::default()),
            "exit 101 (panic: index out of bounds at src/x.rs:3)"
        );
    }

    #[test]
    fn a_timeout_says_how_the_attempt_was_stopped() {
        let spec = spec(Some(Duration::from_secs(240)), Default::default());
        assert_eq!(
            error(
                &spec,
                signalled(libc::SIGKILL),
                Stop::TimedOutKilled,
                &[],
                Usage::default()
            ),
            "timed out after 4m: SIGTERM, then SIGKILL after 10s"
        );
        assert_eq!(
            error(&spec, exited(0), Stop::TimedOut, &[], Usage::default()),
            "timed out after 4m: stopped by SIGTERM"
        );
        assert_eq!(
            error(&spec, exited(0), Stop::Interrupted, &[], Usage::default()),
            super::super::INTERRUPTED
        );
    }

    #[test]
    fn kernel_limits_are_named() {
        let limits = super::super::Limits {
            memory: Some(512 << 20),
            cpu_seconds: Some(2),
        };
        let spec = spec(None, limits);
        assert_eq!(
            error(
                &spec,
                signalled(libc::SIGABRT),
                Stop::None,
                &["memory allocation of 4096 bytes failed"],
                Usage::default()
            ),
            "killed: out of memory (memory allocation of 4096 bytes failed; limit 512MiB)"
        );
        assert_eq!(
            error(
                &spec,
                signalled(libc::SIGXCPU),
                Stop::None,
                &[],
                Usage::default()
            ),
            "killed: CPU time limit reached (cpu_seconds 2)"
        );
        let spent = Usage {
            peak_rss_bytes: None,
            cpu_ms: Some(7_000),
        };
        assert_eq!(
            error(&spec, signalled(libc::SIGKILL), Stop::None, &[], spent),
            "killed: CPU time limit reached (cpu_seconds 2)"
        );
        assert!(
            error(
                &spec,
                signalled(libc::SIGKILL),
                Stop::None,
                &[],
                Usage::default()
            )
            .starts_with("killed: SIGKILL from outside orch")
        );
    }

    #[test]
    fn other_exits_keep_the_last_line_of_standard_error() {
        let spec = spec(None, Default::default());
        assert_eq!(
            error(
                &spec,
                exited(2),
                Stop::None,
                &["error: bad", ""],
                Usage::default()
            ),
            "exit 2: error: bad"
        );
        assert_eq!(
            error(&spec, exited(0), Stop::None, &[], Usage::default()),
            "the attempt process exited without reporting an outcome"
        );
    }
}
