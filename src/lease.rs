//! Which process owns what, through advisory file locks the kernel drops when a process dies.
//!
//! A [`Lease`] marks a live executing process; runs record the lease id of their owner, so a
//! scheduler can tell a run whose process was `kill -9`ed (lock free) from one that is still
//! going (lock held), with no heartbeat and no PID-reuse guesswork. Only a lock actually
//! acquired proves an owner dead: a lease file that cannot be opened or locked (a missing
//! folder, permissions, another container's path) says nothing, and taking over a live
//! owner's run would execute its tasks twice. So a lease file outlives its process; [`sweep`]
//! removes the files of dead owners no run refers to. The [`ServeLock`] keeps a second
//! `orch serve` off a home that already has one.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Held for the life of a process that executes runs.
///
/// Its id, `PID-NANOS@HOST:LEASE_DIR`, says where the lock file lives, so any process that
/// shares the metadata database (another home on this host, or a PostgreSQL database shared
/// across hosts) can check the owner of a run without confusing it with its own leases.
#[derive(Debug)]
pub struct Lease {
    id: String,
    _file: File,
}

impl Lease {
    pub fn acquire(state_dir: &Path) -> io::Result<Lease> {
        let dir = std::path::absolute(state_dir.join("leases"))?;
        fs::create_dir_all(&dir)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let name = format!("{}-{nanos}", std::process::id());
        let path = dir.join(format!("{name}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        file.lock()?;
        Ok(Lease {
            id: format!("{name}@{}:{}", host_name(), dir.display()),
            _file: file,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Whether the process that took lease `id` may still be alive: `false` only when its lock
/// could be taken, which proves it gone.
///
/// A lease of another host cannot be checked from here and counts as alive: taking over a
/// live process's run would execute its tasks twice, while leaving a dead host's run alone
/// only delays it until that host's scheduler restarts. So does a lease whose file cannot be
/// opened or locked (another home's folder, not mounted here). An id that is not a lease id
/// at all (written by hand, or by something else) names no live process.
pub fn is_alive(id: &str) -> bool {
    liveness(id, None)
}

impl Lease {
    /// [`is_alive`], from this lease's point of view: a lease file missing from this lease's
    /// own folder, where it would be, also proves its owner gone (an orch before this one
    /// removed its file on a clean exit, leaving its unfinished runs to the next scheduler).
    pub fn owner_is_alive(&self, id: &str) -> bool {
        let own_dir = self.id.split_once('@').and_then(|(_, p)| p.split_once(':'));
        liveness(id, own_dir.map(|(_, dir)| dir))
    }
}

fn liveness(id: &str, own_dir: Option<&str>) -> bool {
    let Some((name, place)) = id.split_once('@') else {
        return false;
    };
    let Some((host, dir)) = place.split_once(':') else {
        return false;
    };
    if host != host_name() {
        return true;
    }
    let path = Path::new(dir).join(format!("{name}.lock"));
    let checked = File::open(&path)
        .map_err(TryLockError::Error)
        .and_then(|file| {
            file.try_lock()?;
            Ok(())
        });
    match checked {
        Ok(()) => false,
        Err(TryLockError::WouldBlock) => true,
        Err(TryLockError::Error(e))
            if e.kind() == io::ErrorKind::NotFound && own_dir == Some(dir) =>
        {
            false
        }
        Err(TryLockError::Error(e)) => {
            warn_once(id, &e);
            true
        }
    }
}

/// Says once per lease that it cannot be checked, rather than on every scheduling pass.
fn warn_once(id: &str, error: &io::Error) {
    static WARNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let first = {
        let mut warned = match WARNED.lock() {
            Ok(warned) => warned,
            Err(poisoned) => poisoned.into_inner(),
        };
        let first = !warned.iter().any(|w| w == id);
        if first {
            warned.push(id.to_string());
        }
        first
    };
    // Logged with the lock released: writing the log may block.
    if first {
        tracing::warn!(lease = %id, %error, "cannot check a process lease; its runs are left to it, as if it were alive");
    }
}

/// Removes the lease files in `state_dir` of processes that are gone (their lock can be taken)
/// and that no run refers to (`referenced`), as `orch serve` does when it starts and hourly.
pub fn sweep(
    state_dir: &Path,
    referenced: &std::collections::HashSet<String>,
) -> io::Result<usize> {
    let dir = std::path::absolute(state_dir.join("leases"))?;
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let prefix = format!("@{}:{}", host_name(), dir.display());
    let mut removed = 0;
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".lock"))
        else {
            continue;
        };
        if referenced.contains(&format!("{name}{prefix}")) {
            continue;
        }
        // Taking the lock proves the owner gone; it is held until the file is removed, so no
        // checker can see the file half-swept.
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if file.try_lock().is_ok() && fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether lease `id` was taken on this machine.
pub fn is_on_this_host(id: &str) -> bool {
    id.split_once('@')
        .and_then(|(_, place)| place.split_once(':'))
        .is_some_and(|(host, _)| host == host_name())
}

/// The name this machine goes by in leases and heartbeats: `ORCH_HOST` when set (to tell
/// apart containers that share a host name), else the host name.
pub fn host_name() -> String {
    if let Some(name) = std::env::var("ORCH_HOST").ok().filter(|n| !n.is_empty()) {
        return name.replace(['@', ':'], "_");
    }
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".to_string();
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).replace(['@', ':'], "_")
}

/// The one `orch serve` of a home.
#[derive(Debug)]
pub struct ServeLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeLockError {
    #[error(
        "another `orch serve` (pid {pid}) is already running on this home ({path}); \
         stop it first, or use another --home"
    )]
    Held { pid: String, path: PathBuf },
    #[error("cannot take the scheduler lock {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl ServeLock {
    pub fn acquire(state_dir: &Path) -> Result<ServeLock, ServeLockError> {
        let path = state_dir.join("serve.lock");
        let io_err = |source| ServeLockError::Io {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(state_dir).map_err(io_err)?;
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(ServeLockError::Held {
                    pid: pid.trim().to_string(),
                    path: path.clone(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_err(e)),
        }
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        write!(file, "{}", std::process::id()).map_err(io_err)?;
        Ok(ServeLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lease_is_alive_and_a_dropped_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lease = Lease::acquire(dir.path()).expect("lease");
        let id = lease.id().to_string();
        assert!(is_alive(&id));
        drop(lease);
        assert!(!is_alive(&id));
        assert!(!is_alive("never-existed"), "not a lease id");
    }

    /// A lease file that cannot be opened proves nothing: its owner may be alive elsewhere
    /// (another container with this host name, a folder not mounted here).
    #[test]
    fn only_a_lock_taken_proves_an_owner_dead() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lease = Lease::acquire(dir.path()).expect("lease");
        let id = lease.id().to_string();
        drop(lease);
        let (name, place) = id.split_once('@').expect("id");
        let (host, _) = place.split_once(':').expect("id");
        let elsewhere = format!("{name}@{host}:/nonexistent/leases");
        assert!(is_alive(&elsewhere), "a missing lease file is no proof");
        // The lease's own file stays until a sweep proves it dead and unreferenced.
        assert!(!is_alive(&id));
        let referenced = std::collections::HashSet::from([id.clone()]);
        assert_eq!(sweep(dir.path(), &referenced).expect("sweep"), 0);
        assert!(!is_alive(&id), "still provably dead");
        assert_eq!(sweep(dir.path(), &Default::default()).expect("sweep"), 1);
        let live = Lease::acquire(dir.path()).expect("lease");
        assert_eq!(sweep(dir.path(), &Default::default()).expect("sweep"), 0);
        assert!(is_alive(live.id()));
    }

    /// Missing from the checker's own folder, a lease file proves its owner gone.
    #[test]
    fn a_lease_file_missing_from_the_checkers_own_folder_proves_its_owner_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let checker = Lease::acquire(dir.path()).expect("lease");
        let (_, place) = checker.id().split_once('@').expect("id");
        let gone_here = format!("999-1@{place}");
        assert!(!checker.owner_is_alive(&gone_here));
        assert!(is_alive(&gone_here), "no proof for anyone else");
        let (host, _) = place.split_once(':').expect("id");
        assert!(checker.owner_is_alive(&format!("999-1@{host}:/nonexistent/leases")));
    }

    #[test]
    fn a_lease_of_another_host_counts_as_alive() {
        assert!(is_alive("1-2@some-other-host:/tmp/leases"));
    }

    #[test]
    fn a_second_serve_lock_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _first = ServeLock::acquire(dir.path()).expect("first lock");
        let err = ServeLock::acquire(dir.path()).unwrap_err();
        assert!(err.to_string().contains("already running"), "{err}");
    }
}
