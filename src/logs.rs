//! Per-attempt log files: `logs/<dag>/<run_id>/<task>/<attempt>.log`.
//!
//! Each attempt writes its own file, so a retry never interleaves with the attempt before it and
//! `orch logs` can show any attempt on its own. Writes are unbuffered so `orch logs --follow`
//! sees a line as soon as the task prints it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::redact;
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

/// How often a log that cannot be written says so in orch's own log.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The open log file of a running attempt.
#[derive(Debug)]
pub struct AttemptLog {
    path: PathBuf,
    file: Mutex<LogFile>,
}

#[derive(Debug)]
struct LogFile {
    file: File,
    /// Writes that failed since the last warning.
    lost: u64,
    warned_at: Option<Instant>,
}

impl AttemptLog {
    /// Creates the file (and its directories); an existing file is appended to, so a resumed
    /// attempt number never loses what was written before.
    pub fn create(path: PathBuf) -> io::Result<AttemptLog> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(AttemptLog::writing_to(path, file))
    }

    fn writing_to(path: PathBuf, file: File) -> AttemptLog {
        AttemptLog {
            path,
            file: Mutex::new(LogFile {
                file,
                lost: 0,
                warned_at: None,
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one line of task output as it was printed.
    pub fn line(&self, text: &str) {
        self.write(format!("{text}\n"));
    }

    /// Writes a timestamped line from orch itself, e.g. the start and the end of the attempt,
    /// with any secret it shows masked.
    pub fn note(&self, text: &str) {
        self.write(format!(
            "[{} orch] {}\n",
            timestamp::format(Utc::now()),
            redact::secrets(text)
        ));
    }

    fn write(&self, text: String) {
        let mut log = match self.file.lock() {
            Ok(log) => log,
            Err(poisoned) => poisoned.into_inner(),
        };
        // A full disk must not fail the task itself; the error reaches the server log instead,
        // once every WARN_EVERY rather than once a line.
        if let Err(e) = log.file.write_all(text.as_bytes()) {
            log.lost += 1;
            let due = log.warned_at.is_none_or(|at| at.elapsed() >= WARN_EVERY);
            if due {
                tracing::warn!(path = %self.path.display(), error = %e, lines_lost = log.lost, "cannot write task log");
                log.lost = 0;
                log.warned_at = Some(Instant::now());
            }
        }
    }

    /// Writes that failed and were not reported yet.
    #[cfg(test)]
    fn unreported(&self) -> u64 {
        self.file.lock().map_or(0, |log| log.lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/dev/full` fails every write with ENOSPC, as a full disk does.
    #[test]
    fn a_full_disk_is_reported_once_not_once_a_line() {
        let file = OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let log = AttemptLog::writing_to(PathBuf::from("/dev/full"), file);
        for i in 0..10_000 {
            log.line(&format!("line {i}"));
        }
        assert_eq!(
            log.unreported(),
            9_999,
            "one warning, the other lines counted for the next"
        );
    }
}
