//! Which orch processes are alive, on this host and on others.
//!
//! A process that executes runs or attempts proves itself alive two ways: to processes of its
//! own host by its lease's file lock ([`crate::lease`], instant and certain once the lock is
//! free), and to every process sharing the metadata database by a heartbeat there
//! ([`Membership`]). A process whose heartbeat is older than `lost_after` (30 s by default)
//! is declared lost: its runs are adopted, its attempts failed as "worker lost" and retried.
//! A process that finds itself declared lost stops at once, since others have taken its work
//! over; so does one that cannot heartbeat for `lost_after` (it cannot tell whether it has been).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::lease::{self, Lease};
use crate::store::{Store, StoreError};

/// The interval between heartbeats: a sixth of `lost_after`, so that a process must miss
/// five in a row to be lost.
pub fn heartbeat_interval(lost_after: Duration) -> Duration {
    lost_after / 6
}

/// This process's registration, heartbeating until dropped or [`Membership::leave`]n.
pub struct Membership {
    store: Store,
    id: String,
    lost: watch::Receiver<bool>,
    /// Why it turned lost, for the message it stops with.
    why_lost: Arc<OnceLock<String>>,
    heartbeat: JoinHandle<()>,
}

impl Membership {
    /// Registers this process (`role`: serve, worker, run, backfill; the queues its worker
    /// serves) under its lease id, and starts heartbeating.
    pub async fn join(
        store: &Store,
        lease: &Lease,
        role: &str,
        queues: &[String],
        lost_after: Duration,
    ) -> Result<Membership, StoreError> {
        let id = lease.id().to_string();
        store
            .register_process(&id, role, &lease::host_name(), queues)
            .await?;
        let (tx, lost) = watch::channel(false);
        let why_lost = Arc::new(OnceLock::new());
        let heartbeat = tokio::spawn(beat(
            store.clone(),
            id.clone(),
            lost_after,
            tx,
            Arc::clone(&why_lost),
        ));
        Ok(Membership {
            store: store.clone(),
            id,
            lost,
            why_lost,
            heartbeat,
        })
    }

    /// Turns `true` when this process was declared lost, or could not heartbeat for
    /// `lost_after`: it must stop working at once.
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Why [`Membership::lost`] turned `true`: declared lost by another process, or unable
    /// to write its heartbeat (with the database's error: a full disk says so).
    pub fn why_lost(&self) -> String {
        self.why_lost
            .get()
            .cloned()
            .unwrap_or_else(|| "this process was declared lost".to_string())
    }

    /// Marks this process stopped, so that others take its unfinished runs at once.
    pub async fn leave(self) {
        self.heartbeat.abort();
        if let Err(e) = self.store.unregister_process(&self.id).await {
            tracing::warn!(error = %e, "cannot mark this process stopped in the metadata database");
        }
    }
}

/// Resolves once `flag` turns true; never if its sender goes away first (a stopped heartbeat
/// says nothing by itself: it says `true` before it stops).
pub async fn turned_true(flag: &mut watch::Receiver<bool>) {
    if flag.wait_for(|set| *set).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

async fn beat(
    store: Store,
    id: String,
    lost_after: Duration,
    lost: watch::Sender<bool>,
    why_lost: Arc<OnceLock<String>>,
) {
    let mut last_beat = Instant::now();
    let mut ticks = tokio::time::interval(heartbeat_interval(lost_after));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match store.heartbeat(&id).await {
            Ok(true) => last_beat = Instant::now(),
            Ok(false) => {
                let why = format!(
                    "this process was declared lost by another orch process (no heartbeat for {})",
                    humantime::format_duration(lost_after)
                );
                tracing::error!(process = %id, "{why}; stopping its work, which others have taken over");
                let _ = why_lost.set(why);
                let _ = lost.send(true);
                return;
            }
            Err(e) if last_beat.elapsed() >= lost_after => {
                let why = format!(
                    "this process could not write its heartbeat for {} ({e}), so other \
                     processes may have taken its work over",
                    humantime::format_duration(lost_after)
                );
                tracing::error!(process = %id, "{why}; stopping it");
                let _ = why_lost.set(why);
                let _ = lost.send(true);
                return;
            }
            Err(e) => tracing::warn!(error = %e, "cannot write this process's heartbeat"),
        }
    }
}

/// Whether process `id` may still be alive. `false` when its lease lock on this host was
/// taken (proof), or when its heartbeat stopped `lost_after` ago or it stopped cleanly; the
/// verdict is written, so the process itself learns it. A process that never registered
/// (an orch before heartbeats) counts as alive unless its lease proves otherwise.
pub async fn is_alive(store: &Store, id: &str, lost_after: Duration) -> Result<bool, StoreError> {
    let proven_dead = !lease::is_alive(id);
    let Some(process) = store.process(id).await? else {
        return Ok(!proven_dead);
    };
    if process.lost_at.is_some() {
        return Ok(false);
    }
    Ok(!store.declare_lost(id, lost_after, proven_dead).await?)
}
