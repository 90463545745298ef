//! Which of several `orch serve` on one database schedules: the holder of the scheduler
//! lease ([`crate::store::LeaseHolder`]), the Airflow-HA / Kestra pattern on the database
//! users already run, not a cluster protocol of our own.
//!
//! The leader renews the lease every heartbeat interval; it expires after half the heartbeat
//! timeout (15 s by default), after which a standby takes it at its next renewal: scheduling
//! resumes within 20 s of the leader's death. A holder proven dead on this host (its lease
//! lock is free) or declared lost is replaced at once. A leader that fails to renew in time
//! cannot know whether another took over, so it stops scheduling (the server exits).

use std::time::Duration;

use tokio::time::Instant;

use crate::membership;
use crate::store::{Store, StoreError};

pub struct Leadership {
    store: Store,
    /// This server's process id, which the lease names.
    id: String,
    lost_after: Duration,
    /// Until when this server's lease is known to hold, if it leads.
    holds_until: Option<Instant>,
}

/// What a renewal changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    None,
    /// This server became the leader.
    Gained {
        previous: Option<String>,
    },
    /// This server was the leader and no longer is: it must stop scheduling.
    Lost {
        why: String,
    },
}

impl Leadership {
    pub fn new(store: Store, id: &str, lost_after: Duration) -> Leadership {
        Leadership {
            store,
            id: id.to_string(),
            lost_after,
            holds_until: None,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.lost_after / 2
    }

    pub fn is_leader(&self) -> bool {
        self.holds_until.is_some_and(|t| Instant::now() < t)
    }

    /// Takes or renews the lease.
    pub async fn renew(&mut self) -> Change {
        let was_leader = self.holds_until.is_some();
        let asked_at = Instant::now();
        match self.try_take().await {
            Ok((true, previous)) => {
                self.holds_until = Some(asked_at + self.ttl());
                if was_leader {
                    Change::None
                } else {
                    Change::Gained { previous }
                }
            }
            Ok((false, _)) if was_leader => {
                self.holds_until = None;
                Change::Lost {
                    why: "another scheduler holds the lease (this one could not renew it in time)"
                        .to_string(),
                }
            }
            Ok((false, _)) => Change::None,
            Err(e) if was_leader && !self.is_leader() => {
                self.holds_until = None;
                Change::Lost {
                    why: format!("the lease could not be renewed before it expired: {e}"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the scheduler lease");
                Change::None
            }
        }
    }

    /// Whether this server holds the lease now, and who held it before.
    async fn try_take(&self) -> Result<(bool, Option<String>), StoreError> {
        let current = self.store.scheduler_lease().await?;
        let previous = current.map(|c| c.holder).filter(|h| *h != self.id);
        let dead = match &previous {
            Some(holder) => {
                let alive = membership::is_alive(&self.store, holder, self.lost_after)
                    .await
                    .unwrap_or(true);
                (!alive).then_some(holder.as_str())
            }
            None => None,
        };
        let taken = self
            .store
            .take_scheduler_lease(&self.id, self.ttl(), dead)
            .await?;
        Ok((taken, previous))
    }

    /// Gives the lease up, so that a standby takes over at once.
    pub async fn release(&mut self) {
        if self.holds_until.take().is_some()
            && let Err(e) = self.store.release_scheduler_lease(&self.id).await
        {
            tracing::warn!(error = %e, "cannot release the scheduler lease; a standby takes over when it expires");
        }
    }
}
