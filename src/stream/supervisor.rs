//! Keeps every stream of the DAGs folder running under `orch serve`, each in a process of its
//! own (`orch stream run ID`), so that a task's crash, an out-of-memory kill or a restart of
//! one stream never interrupts another's ingestion.
//!
//! A stream process that exits without being asked to (a failure, a crash) is started again
//! with exponential backoff. [`Supervisor::sync`] applies the folder's current definitions:
//! new streams start, changed ones restart, removed ones stop. A stop is a SIGTERM, on which
//! the stream commits its pending batch and exits.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::StreamDef;
use crate::backoff::Backoff;

/// A failed stream restarts after 1 s, 2 s, ... up to 5 minutes.
const RESTART: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
/// How long a stream may take to commit its batch and exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// How to start a stream's process: this orch binary, with the home, log format and
/// places of the server that supervises it.
#[derive(Debug, Clone)]
pub struct StreamProcess {
    pub exe: PathBuf,
    /// Arguments before `stream run ID`: `--home`, `--log-format`.
    pub args: Vec<OsString>,
    /// Variables that make the child resolve what the server resolved (a demo's simulator,
    /// a database URL from the environment or from `orch.yaml`).
    pub env: Vec<(String, String)>,
}

impl StreamProcess {
    fn command(&self, stream_id: &str) -> Command {
        let mut command = Command::new(&self.exe);
        command
            .args(&self.args)
            .args(["stream", "run", stream_id])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its log is the server's log.
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        // If the server dies, even by SIGKILL, its streams die with it rather than run on
        // unsupervised beside the next server's. The signal follows the spawning thread: a
        // tokio worker, alive as long as the runtime.
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        command
    }
}

struct Running {
    def: StreamDef,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The streams this server runs.
pub struct Supervisor {
    process: Arc<StreamProcess>,
    running: BTreeMap<String, Running>,
}

impl Supervisor {
    pub fn new(process: StreamProcess) -> Supervisor {
        Supervisor {
            process: Arc::new(process),
            running: BTreeMap::new(),
        }
    }

    /// Makes the running streams match `defs`.
    pub async fn sync(&mut self, defs: Vec<StreamDef>) {
        let wanted: BTreeMap<String, StreamDef> =
            defs.into_iter().map(|d| (d.id.clone(), d)).collect();
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(id, r)| wanted.get(*id) != Some(&r.def))
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some(running) = self.running.remove(&id) {
                let why = if wanted.contains_key(&id) {
                    "its definition changed"
                } else {
                    "its file is gone"
                };
                tracing::info!(stream = %id, "stopping stream: {why}");
                stop(running).await;
            }
        }
        for (id, def) in wanted {
            if self.running.contains_key(&id) {
                continue;
            }
            tracing::info!(stream = %id, path = %def.path.display(), "starting stream");
            let (stop_tx, stop_rx) = watch::channel(false);
            let task = tokio::spawn(supervise(id.clone(), Arc::clone(&self.process), stop_rx));
            self.running.insert(
                id,
                Running {
                    def,
                    stop: stop_tx,
                    task,
                },
            );
        }
    }

    /// Stops every stream, each committing its pending batch.
    pub fn stop_all(&mut self) -> impl Future<Output = ()> + Send + use<> {
        let running = std::mem::take(&mut self.running);
        async move {
            futures_util::future::join_all(running.into_values().map(stop)).await;
        }
    }
}

async fn stop(running: Running) {
    let _ = running.stop.send(true);
    if let Err(e) = running.task.await {
        tracing::error!(stream = %running.def.id, error = %e, "stream supervisor ended abnormally");
    }
}

/// Runs the stream's process until `stop`, starting it again with backoff when it exits.
async fn supervise(id: String, process: Arc<StreamProcess>, mut stop: watch::Receiver<bool>) {
    let mut failures = 0;
    loop {
        let outcome = match process.command(&id).spawn() {
            Ok(mut child) => {
                tokio::select! {
                    status = child.wait() => Some(status),
                    _ = stop.changed() => {
                        terminate(&id, &mut child).await;
                        None
                    }
                }
            }
            Err(e) => Some(Err(e)),
        };
        let Some(status) = outcome else {
            break;
        };
        match status {
            Ok(status) if status.success() => {
                // It stopped by itself (a SIGTERM from someone else): start it again, but
                // never in a tight loop.
                failures = 1;
                tracing::warn!(stream = %id, "stream process exited; restarting");
            }
            Ok(status) => {
                failures += 1;
                tracing::error!(stream = %id, %status, retry_in = ?RESTART.delay(failures), "stream failed; restarting");
            }
            Err(e) => {
                failures += 1;
                tracing::error!(stream = %id, error = %e, retry_in = ?RESTART.delay(failures), "cannot start the stream's process; trying again");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RESTART.delay(failures)) => {}
            _ = stop.changed() => break,
        }
    }
}

/// SIGTERM, on which the stream commits its batch and exits; SIGKILL after [`STOP_GRACE`].
async fn terminate(id: &str, child: &mut Child) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        // SAFETY: kill(2) on our own child, not yet reaped (we hold its handle).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(Ok(status)) if !status.success() => {
            tracing::warn!(stream = %id, %status, "stream process ended badly on stop");
        }
        Ok(_) => {}
        Err(_) => {
            tracing::error!(stream = %id, "stream process did not stop in {STOP_GRACE:?}; killing it");
            let _ = child.kill().await;
        }
    }
}
