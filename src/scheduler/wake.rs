//! A Unix socket that lets `orch trigger` wake the scheduler at once instead of at its next
//! poll. Connecting is the whole message; the scheduler still polls, so a missed wake-up only
//! costs latency.

use std::io;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("wake.sock")
}

/// The socket `orch runs cancel` pokes: the server's runs then look for cancel requests.
/// Apart from the wake-up socket, so that a trigger does not make every run look.
fn cancel_socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("cancel.sock")
}

pub struct WakeListener {
    listener: UnixListener,
}

impl WakeListener {
    /// Binds the socket; the caller holds the serve lock, so a leftover file is stale.
    pub fn bind(state_dir: &Path) -> io::Result<WakeListener> {
        WakeListener::bind_at(socket_path(state_dir))
    }

    /// Binds the socket of cancel requests (see [`cancel_requested`]).
    pub fn bind_cancel(state_dir: &Path) -> io::Result<WakeListener> {
        WakeListener::bind_at(cancel_socket_path(state_dir))
    }

    fn bind_at(path: PathBuf) -> io::Result<WakeListener> {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(WakeListener {
            listener: UnixListener::bind(&path)?,
        })
    }

    /// Resolves when someone pokes the socket.
    pub async fn woken(&self) {
        if let Err(e) = self.listener.accept().await {
            tracing::debug!(error = %e, "wake socket accept failed");
        }
    }
}

/// Pokes a running scheduler. Returns `false` when none is listening.
pub fn wake(state_dir: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket_path(state_dir)).is_ok()
}

/// Tells a running server that a cancel was asked. Returns `false` when none is listening.
pub fn cancel_requested(state_dir: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(cancel_socket_path(state_dir)).is_ok()
}
