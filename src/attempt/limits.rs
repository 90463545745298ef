//! Per-task resource limits, enforced by the kernel on the attempt's process.
//!
//! This machine's kind of host (cgroup v1 or no delegated cgroup v2 subtree) cannot give each
//! attempt a cgroup, so the limits are rlimits, which every Linux honours: `memory` caps the
//! process's private writable memory (`RLIMIT_DATA`: heap, anonymous maps, thread stacks; not
//! the page cache or mapped files), so an allocation past it fails and the attempt aborts with
//! "out of memory"; `cpu_seconds` caps its CPU time (`RLIMIT_CPU`: SIGXCPU at the limit,
//! SIGKILL five seconds of CPU later).

use serde::{Deserialize, Serialize};

/// The limits of one task's attempts; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Bytes of private writable memory.
    pub memory: Option<u64>,
    /// Seconds of CPU time, user and system.
    pub cpu_seconds: Option<u64>,
}

/// The CPU seconds between SIGXCPU and SIGKILL, for a process that ignores the first.
const CPU_KILL_AFTER: u64 = 5;

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        self.memory.is_none() && self.cpu_seconds.is_none()
    }

    /// Sets the limits on the calling process. Runs between fork and exec, so it only makes
    /// async-signal-safe calls and allocates nothing.
    pub fn apply_to_this_process(&self) -> std::io::Result<()> {
        if let Some(bytes) = self.memory {
            set(libc::RLIMIT_DATA, bytes, bytes)?;
        }
        if let Some(seconds) = self.cpu_seconds {
            set(
                libc::RLIMIT_CPU,
                seconds,
                seconds.saturating_add(CPU_KILL_AFTER),
            )?;
        }
        Ok(())
    }

    /// The limits as a message about an attempt that ran into one shows them.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(bytes) = self.memory {
            parts.push(format!("memory {}", format_size(bytes)));
        }
        if let Some(seconds) = self.cpu_seconds {
            parts.push(format!("cpu_seconds {seconds}"));
        }
        parts.join(", ")
    }
}

fn set(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit(2) reads the struct we pass and nothing else.
    if unsafe { libc::setrlimit(resource, &limit) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Parses a size as written in a DAG file: `2GiB`, `512MiB`, `1.5GB`, `64kB`, or bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim());
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "tb" | "t" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` (write e.g. 512MiB, 2GiB, 1GB)"
            ));
        }
    };
    let bytes = scaled(number, multiplier);
    match bytes {
        Some(0) => Err("a size must be more than 0 bytes".to_string()),
        Some(bytes) => Ok(bytes),
        None => Err(format!(
            "`{text}` is not a size (write e.g. 512MiB, 2GiB, 1GB)"
        )),
    }
}

/// `number` (digits, perhaps a fraction) times `multiplier`, exactly in integers: 1.5GiB is one
/// GiB and 5/10 of one, without float rounding. `None` when it is not a number or overflows.
fn scaled(number: &str, multiplier: u64) -> Option<u64> {
    match number.split_once('.') {
        None => number.parse::<u64>().ok()?.checked_mul(multiplier),
        Some((whole, fraction)) => {
            let whole = whole.parse::<u64>().ok()?;
            let digits = u32::try_from(fraction.len()).ok().filter(|&d| d <= 9)?;
            let fraction: u64 = fraction.parse().ok()?;
            let part = fraction.checked_mul(multiplier)? / 10u64.pow(digits);
            whole.checked_mul(multiplier)?.checked_add(part)
        }
    }
}

/// A size as a person reads it: the largest binary unit that keeps it whole, or one decimal.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, size) in UNITS {
        if bytes >= size {
            return if bytes.is_multiple_of(size) {
                format!("{}{name}", bytes / size)
            } else {
                format!("{:.1}{name}", bytes as f64 / size as f64)
            };
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("64 kB"), Ok(64_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(
            parse_size("2 furlongs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_size("0MiB").unwrap_err().contains("more than 0"));
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn sizes_print_in_the_unit_that_keeps_them_whole() {
        assert_eq!(format_size(2 << 30), "2GiB");
        assert_eq!(format_size(3 << 29), "1.5GiB");
        assert_eq!(format_size(100), "100B");
    }
}
