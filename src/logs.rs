//! Per-attempt log files: `logs/<dag>/<run_id>/<task>/<attempt>.log`.
//!
//! Each attempt writes its own file, so a retry never interleaves with the attempt before it and
//! `orch logs` can show any attempt on its own. Writes are unbuffered so `orch logs --follow`
//! sees a line as soon as the task prints it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
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
///
/// Each line goes out in one `write(2)` to a file opened for appending, so writers (the
/// attempt's own process and the worker that started it) never interleave within a line and
/// need no lock. Writing is a system call: the worker calls it off the runtime's threads.
#[derive(Debug)]
pub struct AttemptLog {
    path: PathBuf,
    file: File,
    /// Writes that failed since the last warning.
    lost: AtomicU64,
    /// When the last warning went out, as milliseconds since `opened`; `u64::MAX` for never.
    warned_at_ms: AtomicU64,
    opened: Instant,
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
            file,
            lost: AtomicU64::new(0),
            warned_at_ms: AtomicU64::new(u64::MAX),
            opened: Instant::now(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Another descriptor of the file, for an attempt process to write its standard error to.
    pub fn descriptor(&self) -> io::Result<std::os::fd::OwnedFd> {
        Ok(self.file.try_clone()?.into())
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
        // A full disk must not fail the task itself; the error reaches the server log instead,
        // once every WARN_EVERY rather than once a line.
        if let Err(e) = (&self.file).write_all(text.as_bytes()) {
            let lost = self.lost.fetch_add(1, Ordering::Relaxed) + 1;
            let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            let warned = self.warned_at_ms.load(Ordering::Relaxed);
            let due =
                warned == u64::MAX || now.saturating_sub(warned) >= WARN_EVERY.as_millis() as u64;
            if due
                && self
                    .warned_at_ms
                    .compare_exchange(warned, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                self.lost.fetch_sub(lost, Ordering::Relaxed);
                tracing::warn!(path = %self.path.display(), error = %e, lines_lost = lost, "cannot write task log");
            }
        }
    }

    /// Writes that failed and were not reported yet.
    #[cfg(test)]
    fn unreported(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

/// The last `max` bytes of the file at `path`, from a line start where possible; empty if
/// it cannot be read.
pub fn read_tail(path: &Path, max: u64) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    match (start > 0, text.find('\n')) {
        (true, Some(newline)) => text[newline + 1..].to_string(),
        _ => text.into_owned(),
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
