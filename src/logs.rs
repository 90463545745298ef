//! Per-attempt log files: `logs/<dag>/<run_id>/<task>/<attempt>.log`.
//!
//! Each attempt writes its own file, so a retry never interleaves with the attempt before it and
//! `orch logs` can show any attempt on its own. Writes are unbuffered so `orch logs --follow`
//! sees a line as soon as the task prints it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::Utc;

use crate::store::timestamp;

/// Where the log of one attempt lives under the logs directory.
pub fn attempt_log_path(
    logs_dir: &Path,
    dag_id: &str,
    run_id: &str,
    task_id: &str,
    attempt: u32,
) -> PathBuf {
    logs_dir
        .join(dag_id)
        .join(run_id)
        .join(task_id)
        .join(format!("{attempt}.log"))
}

/// The open log file of a running attempt.
#[derive(Debug)]
pub struct AttemptLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AttemptLog {
    /// Creates the file (and its directories); an existing file is appended to, so a resumed
    /// attempt number never loses what was written before.
    pub fn create(path: PathBuf) -> io::Result<AttemptLog> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(AttemptLog {
            path,
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one line of task output as it was printed.
    pub fn line(&self, text: &str) {
        self.write(format!("{text}\n"));
    }

    /// Writes a timestamped line from orch itself, e.g. the start and the end of the attempt.
    pub fn note(&self, text: &str) {
        self.write(format!("[{} orch] {text}\n", timestamp::format(Utc::now())));
    }

    fn write(&self, text: String) {
        let mut file = match self.file.lock() {
            Ok(file) => file,
            Err(poisoned) => poisoned.into_inner(),
        };
        // A full disk must not fail the task itself; the error reaches the server log instead.
        if let Err(e) = file.write_all(text.as_bytes()) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write task log");
        }
    }
}
