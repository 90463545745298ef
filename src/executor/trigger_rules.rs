//! Deciding whether a waiting task may run, from its upstream tasks' states.

use crate::dag::TriggerRule;
use crate::store::TaskState;

/// What a task waiting on its upstreams should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Keep waiting: the rule depends on upstreams that have not finished.
    Wait,
    /// Run it.
    Ready,
    /// It will never run; it ends in this state.
    Never(TaskState),
}

pub fn evaluate(rule: TriggerRule, upstream: &[TaskState]) -> Readiness {
    let failed = upstream
        .iter()
        .any(|s| matches!(s, TaskState::Failed | TaskState::UpstreamFailed));
    let all_done = upstream.iter().all(|s| s.is_finished());
    match rule {
        TriggerRule::AllSuccess => {
            if failed {
                Readiness::Never(TaskState::UpstreamFailed)
            } else if upstream.contains(&TaskState::Skipped) {
                Readiness::Never(TaskState::Skipped)
            } else if upstream.iter().all(|s| *s == TaskState::Success) {
                Readiness::Ready
            } else {
                Readiness::Wait
            }
        }
        TriggerRule::AllDone => {
            if all_done {
                Readiness::Ready
            } else {
                Readiness::Wait
            }
        }
        TriggerRule::OneFailed => {
            if failed {
                Readiness::Ready
            } else if all_done {
                Readiness::Never(TaskState::Skipped)
            } else {
                Readiness::Wait
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    #[test]
    fn a_task_without_upstreams_is_ready() {
        for rule in [TriggerRule::AllSuccess, TriggerRule::AllDone] {
            assert_eq!(evaluate(rule, &[]), Readiness::Ready);
        }
        // Nothing upstream can fail, so `one_failed` never fires.
        assert_eq!(
            evaluate(TriggerRule::OneFailed, &[]),
            Readiness::Never(Skipped)
        );
    }

    #[test]
    fn all_success() {
        let rule = TriggerRule::AllSuccess;
        assert_eq!(evaluate(rule, &[Success, Success]), Readiness::Ready);
        assert_eq!(evaluate(rule, &[Success, Running]), Readiness::Wait);
        assert_eq!(evaluate(rule, &[UpForRetry, Success]), Readiness::Wait);
        assert_eq!(
            evaluate(rule, &[Failed, Running]),
            Readiness::Never(UpstreamFailed)
        );
        assert_eq!(
            evaluate(rule, &[UpstreamFailed, Success]),
            Readiness::Never(UpstreamFailed)
        );
        assert_eq!(
            evaluate(rule, &[Skipped, Success]),
            Readiness::Never(Skipped)
        );
    }

    #[test]
    fn all_done() {
        let rule = TriggerRule::AllDone;
        assert_eq!(
            evaluate(rule, &[Failed, Success, Skipped, UpstreamFailed]),
            Readiness::Ready
        );
        assert_eq!(evaluate(rule, &[Failed, Queued]), Readiness::Wait);
        assert_eq!(evaluate(rule, &[UpForRetry]), Readiness::Wait);
    }

    #[test]
    fn one_failed() {
        let rule = TriggerRule::OneFailed;
        assert_eq!(evaluate(rule, &[Failed, Running]), Readiness::Ready);
        assert_eq!(evaluate(rule, &[UpstreamFailed]), Readiness::Ready);
        assert_eq!(evaluate(rule, &[Success, Running]), Readiness::Wait);
        assert_eq!(
            evaluate(rule, &[Success, Skipped]),
            Readiness::Never(Skipped)
        );
    }
}
