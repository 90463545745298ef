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
    /// Writes that failed in all, and the first one's error: the log says so at its end.
    lost_in_all: AtomicU64,
    first_loss: std::sync::OnceLock<String>,
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
            lost_in_all: AtomicU64::new(0),
            first_loss: std::sync::OnceLock::new(),
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
            self.lost_in_all.fetch_add(1, Ordering::Relaxed);
            let _ = self.first_loss.set(e.to_string());
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

    /// Ends the log with how the attempt ended (`ending`) and returns its last `tail_bytes`,
    /// for the run history. Output that could not be written (a full disk) is marked: in the
    /// file where it was cut, when it takes the line, and in the returned end in any case.
    pub fn finish(&self, ending: &str, tail_bytes: u64) -> String {
        let lost = self.lost_in_all.load(Ordering::Relaxed);
        let marker = self.first_loss.get().map(|error| {
            format!(
                "[{} orch] {lost} writes of this attempt's output were lost, not written to its log ({error}): it is cut where they were\n",
                timestamp::format(Utc::now())
            )
        });
        if let Some(marker) = &marker {
            // On a line of its own, wherever the output was cut.
            self.write(format!("\n{marker}"));
        }
        self.note(ending);
        let mut tail = read_tail(&self.path, tail_bytes);
        if let Some(marker) = marker
            && !tail.contains(&marker)
        {
            tail.push_str(&format!("\n{marker}"));
            tail.push_str(&format!(
                "[{} orch] {}\n",
                timestamp::format(Utc::now()),
                redact::secrets(ending)
            ));
        }
        tail
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
        // Its tail is read from a file with nothing in it (`/dev/full` reads zeros for ever).
        let dir = tempfile::tempdir().expect("tempdir");
        let log = AttemptLog::writing_to(dir.path().join("never-written.log"), file);
        for i in 0..10_000 {
            log.line(&format!("line {i}"));
        }
        assert_eq!(
            log.unreported(),
            9_999,
            "one warning, the other lines counted for the next"
        );
        // The end kept for the run history says what was lost, and why, though the file
        // took nothing.
        let tail = log.finish("succeeded", 4096);
        assert!(
            tail.contains("10000 writes of this attempt's output were lost")
                && tail.contains("No space left on device")
                && tail.trim_end().ends_with("succeeded"),
            "{tail}"
        );
    }

    /// A log cut by a full disk that has room again ends with a line saying so, after the
    /// cut line.
    #[test]
    fn output_lost_is_marked_in_the_log_where_it_was_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("attempt.log");
        let log = AttemptLog::create(path.clone()).expect("log");
        log.line("before");
        let _ = log
            .first_loss
            .set("No space left on device (os error 28)".to_string());
        log.lost_in_all.store(3, Ordering::Relaxed);
        (&log.file).write_all(b"half a li").expect("write");
        let tail = log.finish("failed: exit 1", 4096);
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(tail, text, "the marker made it into the file");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "before");
        assert_eq!(lines[1], "half a li");
        assert!(
            lines[2].contains("3 writes of this attempt's output were lost"),
            "{text}"
        );
        assert!(lines[3].ends_with("failed: exit 1"), "{text}");
    }
}
