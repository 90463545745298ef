//! Ending a run early: a cancel request ends the attempts out with workers; past the grace of
//! a shutdown, the attempts still out are stopped and their reports recorded.

use chrono::Utc;

use super::{ABORT_WAIT, RunLoop};
use crate::attempt::Usage;
use crate::queue::Report;
use crate::store::{AttemptKey, AttemptState, StoreError, durably};
use crate::tasks::TaskError;

impl RunLoop<'_> {
    /// The grace period is over: workers stop their attempts (this process's own worker
    /// watches the same shutdown) and report them interrupted. Reports that come within
    /// [`ABORT_WAIT`] are recorded; the other attempts stay running, for the next scheduler
    /// to wait for.
    pub(super) async fn abort(&mut self) -> Result<(), StoreError> {
        let deadline = tokio::time::sleep(ABORT_WAIT);
        tokio::pin!(deadline);
        while !self.in_flight.is_empty() {
            tokio::select! {
                Some(joined) = self.in_flight.join_next_with_id() => self.on_joined(joined).await?,
                () = &mut deadline => break,
            }
        }
        self.in_flight.abort_all();
        self.flush().await
    }

    /// Looks whether someone asked to cancel this run, and if so ends what is out.
    pub(super) async fn check_cancel(&mut self) -> Result<(), StoreError> {
        let store = &self.exec.store;
        let run_id = self.run.run_id.as_str();
        if let Some(note) = durably(|| store.cancel_request(run_id)).await? {
            tracing::warn!(run_id, "{note}");
            self.cancelled = Some(note);
            self.end_attempts_out().await?;
        }
        Ok(())
    }

    /// Ends the attempts out with workers as failed by the cancel, beyond any retry; their
    /// workers see their claims gone and stop them. The reports come back as usual.
    pub(super) async fn end_attempts_out(&mut self) -> Result<(), StoreError> {
        let Some(note) = self.cancelled.clone() else {
            return Ok(());
        };
        // Attempts started but not yet written must be seen, and ended, too.
        self.flush().await?;
        let store = &self.exec.store;
        let run_id = self.run.run_id.as_str();
        let attempts = durably(|| store.attempts(run_id)).await?;
        for attempt in attempts
            .iter()
            .filter(|a| a.state == AttemptState::Running && a.queue.is_some())
        {
            let report = Report::new(
                &Err(TaskError::permanent(note.clone())),
                Usage::default(),
                attempt.started_at,
                Utc::now(),
            );
            let Ok(text) = serde_json::to_string(&report) else {
                continue;
            };
            let key = AttemptKey {
                run_id: run_id.to_string(),
                task_id: attempt.task_id.clone(),
                attempt: attempt.attempt,
            };
            if durably(|| store.end_attempt(&key, &text)).await? {
                // Taken here at once: the worker's own report of the attempt it is about to
                // stop then finds no one waiting, and its claim is void in the database.
                crate::queue::deliver_here(&key, report);
            }
        }
        crate::queue::REPORTED.notify_waiters();
        crate::queue::CANCELLED.notify_waiters();
        Ok(())
    }
}
