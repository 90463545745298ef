//! The shortcut between an executor and the worker of its own process.
//!
//! When this process's worker has a free slot and serves the attempt's queue, the executor
//! writes the attempt already claimed by that worker, in the same write that records what led
//! to it, and hands the claim over in memory. The worker hands the outcome back the same way,
//! and the executor's next write records it. An attempt then costs one write, not three (queue,
//! claim, report), and waits for no wake-up.
//!
//! Everything else takes the queue in the database: attempts in a pool (whose room is counted
//! there), attempts of queues this worker does not serve, and any attempt while its slots are
//! full.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

use crate::store::Claim;

/// The executor's end: reserves a slot of the local worker and hands it a claim.
#[derive(Clone)]
pub struct Handoff {
    worker: String,
    queues: Arc<[String]>,
    slots: Slots,
    claims: mpsc::UnboundedSender<Claim>,
}

/// The local worker's free slots, counted on both ends: the worker takes one per attempt it
/// claims from the database, the executor one per attempt it hands over.
#[derive(Clone, Debug)]
pub struct Slots(Arc<AtomicUsize>);

impl Slots {
    pub fn new(count: usize) -> Slots {
        Slots(Arc::new(AtomicUsize::new(count)))
    }

    /// Takes up to `wanted` free slots; returns how many it took.
    pub fn take(&self, wanted: usize) -> usize {
        let mut taken = 0;
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |free| {
                taken = free.min(wanted);
                Some(free - taken)
            });
        taken
    }

    /// Gives back `count` slots: attempts that ended, or slots taken and not used.
    pub fn give_back(&self, count: usize) {
        self.0.fetch_add(count, Ordering::SeqCst);
    }

    pub fn free(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// The worker's end: the claims handed over.
pub struct HandedOver {
    pub claims: mpsc::UnboundedReceiver<Claim>,
}

/// A handoff between an executor and the worker `worker` serving `queues` with `slots`.
pub fn handoff(worker: &str, queues: &[String], slots: Slots) -> (Handoff, HandedOver) {
    let (claims, received) = mpsc::unbounded_channel();
    let handoff = Handoff {
        worker: worker.to_string(),
        queues: queues.into(),
        slots,
        claims,
    };
    (handoff, HandedOver { claims: received })
}

impl Handoff {
    /// The worker claims are written for.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Takes a slot of the local worker for an attempt of `queue` outside any pool, if it
    /// serves that queue and has one free.
    pub fn reserve(&self, queue: &str, pooled: bool) -> bool {
        !pooled && self.queues.iter().any(|q| q == queue) && self.slots.take(1) == 1
    }

    /// Gives back a slot reserved for an attempt that was not handed over.
    pub fn release(&self) {
        self.slots.give_back(1);
    }

    /// Hands over a claim written for the local worker. When the worker is gone (stopping),
    /// the claim stays in the database, where the lost-worker check ends it.
    pub fn hand_over(&self, claim: Claim) {
        let _ = self.claims.send(claim);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_never_taken_past_zero_and_come_back() {
        let slots = Slots::new(2);
        assert_eq!(slots.take(5), 2);
        assert_eq!(slots.take(1), 0);
        slots.give_back(1);
        let (handoff, _over) = handoff("w", &["default".to_string()], slots.clone());
        assert!(
            !handoff.reserve("heavy", false),
            "a queue it does not serve"
        );
        assert!(!handoff.reserve("default", true), "a pooled attempt");
        assert!(handoff.reserve("default", false));
        assert!(!handoff.reserve("default", false), "no slot left");
        handoff.release();
        assert_eq!(slots.free(), 1);
    }
}
