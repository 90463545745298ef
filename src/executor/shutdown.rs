//! The two steps of a graceful stop: drain (start nothing new), then abort (stop what runs).

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    /// Start no new attempts; let running ones finish.
    Draining,
    /// The grace period is over: stop running attempts now.
    Abort,
}

/// Sends phase changes to every run.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    tx: watch::Sender<Phase>,
}

/// What a run watches.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<Phase>,
}

impl ShutdownHandle {
    pub fn new() -> (ShutdownHandle, Shutdown) {
        let (tx, rx) = watch::channel(Phase::Running);
        (ShutdownHandle { tx }, Shutdown { rx })
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }

    /// Moves to `phase` unless already past it.
    pub fn set(&self, phase: Phase) {
        self.tx.send_if_modified(|current| {
            let advance = phase > *current;
            if advance {
                *current = phase;
            }
            advance
        });
    }

    pub fn phase(&self) -> Phase {
        *self.tx.borrow()
    }
}

impl Shutdown {
    pub fn phase(&self) -> Phase {
        *self.rx.borrow()
    }

    /// Resolves at the next phase change (never, if every handle is gone).
    pub async fn changed(&mut self) -> Phase {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        *self.rx.borrow_and_update()
    }
}
