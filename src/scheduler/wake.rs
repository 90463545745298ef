//! Waking the scheduler at once instead of at its next poll: when a run is triggered, a DAG
//! unpaused, a backfill started, or a cancel asked.
//!
//! Inside `orch serve` (its web face) a wake-up is a [`Notify`]: nothing crosses the kernel.
//! Another process (`orch trigger`, `orch runs cancel`) pokes a Unix socket in the home's
//! state folder: connecting is the whole message. Its connect never blocks: when the socket's
//! backlog is full the scheduler has wake-ups waiting already, so the poke is dropped. (A
//! blocking connect on a full backlog once stopped the server: the web handlers poking their
//! own scheduler held every runtime thread, so nothing was left to accept.) The scheduler
//! still polls, so a missed wake-up only costs latency.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::FutureExt as _;
use tokio::net::UnixListener;
use tokio::sync::Notify;

/// Wake-ups from this process, for the scheduler of this process.
static WAKE: Notify = Notify::const_new();
/// Cancel requests from this process, for the scheduler of this process.
static CANCEL: Notify = Notify::const_new();
/// Whether a scheduler runs in this process (it listens on [`WAKE`] and [`CANCEL`]).
static LISTENING: AtomicBool = AtomicBool::new(false);

fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("wake.sock")
}

/// The socket `orch runs cancel` pokes: the server's runs then look for cancel requests.
/// Apart from the wake-up socket, so that a trigger does not make every run look.
fn cancel_socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("cancel.sock")
}

/// What wakes a scheduler: its socket, and this process's own wake-ups.
pub struct WakeListener {
    listener: Option<UnixListener>,
    local: &'static Notify,
}

impl WakeListener {
    /// Binds the socket; the caller holds the serve lock, so a leftover file is stale.
    /// Without a socket the listener still hears this process's wake-ups.
    pub fn bind(state_dir: &Path) -> WakeListener {
        LISTENING.store(true, Ordering::SeqCst);
        WakeListener::bind_at(socket_path(state_dir), &WAKE)
    }

    /// Binds the socket of cancel requests (see [`cancel_requested`]).
    pub fn bind_cancel(state_dir: &Path) -> WakeListener {
        WakeListener::bind_at(cancel_socket_path(state_dir), &CANCEL)
    }

    fn bind_at(path: PathBuf, local: &'static Notify) -> WakeListener {
        let bound = match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => UnixListener::bind(&path),
        };
        let listener = bound
            .inspect_err(|e| {
                tracing::warn!(path = %path.display(), error = %e, "no wake-up socket: other orch processes reach this server within a second, not at once");
            })
            .ok();
        WakeListener { listener, local }
    }

    /// Resolves when someone wakes the scheduler; every poke already waiting is taken with
    /// it, so that a burst of them makes one pass, not one each.
    pub async fn woken(&self) {
        let Some(listener) = &self.listener else {
            return self.local.notified().await;
        };
        tokio::select! {
            () = self.local.notified() => {}
            accepted = listener.accept() => {
                if let Err(e) = accepted {
                    tracing::debug!(error = %e, "wake socket accept failed");
                }
            }
        }
        while let Some(Ok(_)) = listener.accept().now_or_never() {}
    }
}

impl Drop for WakeListener {
    fn drop(&mut self) {
        if std::ptr::eq(self.local, &WAKE) {
            LISTENING.store(false, Ordering::SeqCst);
        }
    }
}

/// Wakes the scheduler of the home whose state folder is `state_dir`. Returns `false` when
/// none is listening.
pub async fn wake(state_dir: &Path) -> bool {
    if LISTENING.load(Ordering::SeqCst) {
        WAKE.notify_one();
        return true;
    }
    poke(&socket_path(state_dir)).await
}

/// Tells a running server that a cancel was asked. Returns `false` when none is listening.
pub async fn cancel_requested(state_dir: &Path) -> bool {
    if LISTENING.load(Ordering::SeqCst) {
        CANCEL.notify_one();
        return true;
    }
    poke(&cancel_socket_path(state_dir)).await
}

/// Connects to the socket at `path` without ever waiting for room in its backlog.
async fn poke(path: &Path) -> bool {
    // tokio connects a non-blocking socket: a full backlog is `WouldBlock` at once.
    match tokio::net::UnixStream::connect(path).await {
        Ok(_) => true,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server whose backlog is full still answers a poke at once: the poke is dropped, and
    /// says a scheduler listens.
    #[tokio::test]
    async fn a_full_backlog_never_blocks_a_poke() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wake.sock");
        // A listener that never accepts: its backlog fills.
        let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let started = std::time::Instant::now();
        for _ in 0..10_000 {
            assert!(poke(&path).await, "a listening socket counts as woken");
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert!(!poke(&dir.path().join("none.sock")).await);
    }
}
