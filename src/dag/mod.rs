//! DAGs: the model, YAML loading and validation, schedules, and the directory of DAG files.
//!
//! A DAG file is parsed into [`spec`] types that mirror the YAML, then checked and turned into a
//! [`Dag`], the immutable definition the scheduler and executor work from. A run keeps the `Dag`
//! it started with, so editing a file never changes a run that is already going.

mod bag;
mod error;
pub mod for_each;
mod graph;
mod load;
pub mod params;
mod schedule;
mod spec;

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::attempt::Limits;

pub use bag::DagBag;
pub(crate) use bag::{dag_files, read_folder_file};
pub use error::{LoadError, Problem};
pub use for_each::ForEach;
pub use load::{load_file, load_str};
pub use schedule::{DataInterval, Schedule};

/// A validated DAG definition.
#[derive(Debug, Clone)]
pub struct Dag {
    pub id: String,
    /// The file it was loaded from.
    pub path: PathBuf,
    /// The YAML text, kept with each run so the run can be resumed with the same definition.
    pub source: String,
    pub description: Option<String>,
    pub schedule: Option<Schedule>,
    pub timezone: Tz,
    pub start_date: Option<NaiveDate>,
    pub catchup: bool,
    pub max_active_runs: u32,
    pub max_active_tasks: u32,
    /// Runs queued or running past which a trigger is refused for now (`max_pending_runs`);
    /// `None`: only orch.yaml's bound for all DAGs applies.
    pub max_pending_runs: Option<u32>,
    /// A run still going after this long is stopped and fails (`dagrun_timeout`).
    pub dagrun_timeout: Option<Duration>,
    /// A run not finished this long after its data interval ended misses its SLA
    /// (`on_sla_miss` is told; the run goes on).
    pub sla: Option<Duration>,
    /// The default from the file; `orch dags pause` overrides it in the metadata database.
    pub paused: bool,
    /// What templates see before a run's conf: each param's default (`null` where none).
    pub params: serde_json::Map<String, serde_json::Value>,
    /// The params as declared, with their types and rules, by name.
    pub param_specs: Vec<params::Param>,
    /// Who is told when a run fails or succeeds, or any task will be retried.
    pub callbacks: crate::notify::Callbacks,
    /// Tasks in a topological order: every task comes after all of its upstreams.
    pub tasks: Vec<Task>,
}

/// One node of a DAG.
#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    /// The built-in task kind, a key of the task registry.
    pub kind: String,
    pub depends_on: Vec<String>,
    pub trigger_rule: TriggerRule,
    pub retry: RetryPolicy,
    /// Per-attempt time limit; an attempt that exceeds it fails.
    pub timeout: Option<Duration>,
    /// What the kernel lets each attempt use.
    pub limits: Limits,
    /// The queue its attempts wait in for a worker that serves it.
    pub queue: String,
    /// The pool whose slots its attempts take (orch.yaml's `pools:`), and how many.
    pub pool: Option<String>,
    pub pool_slots: u32,
    /// Among attempts waiting in a queue or for a pool, higher goes first.
    pub priority: i32,
    /// Runs only once the same task succeeded (or was skipped) in the DAG's previous run.
    pub depends_on_past: bool,
    /// The kind's configuration. Every string in it is a template rendered at run time.
    pub with: serde_json::Value,
    /// Expands into one instance per item when ready (`for_each:`).
    pub for_each: Option<ForEach>,
    /// Who is told when this task fails, succeeds or will be retried.
    pub callbacks: crate::notify::Callbacks,
}

/// When a task may run, given the final states of its upstream tasks (Airflow's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerRule {
    /// Every upstream succeeded.
    #[default]
    AllSuccess,
    /// Every upstream finished, whatever its state.
    AllDone,
    /// At least one upstream failed.
    OneFailed,
}

impl TriggerRule {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerRule::AllSuccess => "all_success",
            TriggerRule::AllDone => "all_done",
            TriggerRule::OneFailed => "one_failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryBackoff {
    /// Every retry waits `retry_delay`.
    #[default]
    Fixed,
    /// Retry n waits `retry_delay * 2^(n-1)`, capped at `max_retry_delay`.
    Exponential,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; a task makes at most `retries + 1` attempts.
    pub retries: u32,
    pub delay: Duration,
    pub backoff: RetryBackoff,
    pub max_delay: Duration,
    /// Each wait is spread by up to this fraction either way (`retry_jitter: 0.2`: ±20%), so
    /// that tasks that failed together do not retry together.
    pub jitter: f64,
}

impl RetryPolicy {
    pub const DEFAULT_DELAY: Duration = Duration::from_secs(300);
    pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(3600);

    /// How long to wait before the attempt after `failed_attempt` (1-based).
    pub fn delay_after(&self, failed_attempt: u32) -> Duration {
        let max = match self.backoff {
            RetryBackoff::Fixed => self.delay,
            RetryBackoff::Exponential => self.max_delay,
        };
        crate::backoff::Backoff::new(self.delay, max)
            .with_jitter(self.jitter)
            .delay(failed_attempt)
    }

    /// Whether another attempt follows a failure of attempt `attempt` (1-based).
    pub fn allows_retry_after(&self, attempt: u32) -> bool {
        attempt <= self.retries
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 0,
            delay: Self::DEFAULT_DELAY,
            backoff: RetryBackoff::Fixed,
            max_delay: Self::DEFAULT_MAX_DELAY,
            jitter: 0.0,
        }
    }
}

impl Dag {
    /// What this DAG's tasks ask of orch.yaml's `pools:` (name, slots) that it cannot give:
    /// a task needing more slots than its pool has could never start. One line per task,
    /// naming the file and the task.
    pub fn pool_problems(&self, pools: &std::collections::BTreeMap<String, u32>) -> Vec<String> {
        self.tasks
            .iter()
            .filter_map(|task| {
                let pool = task.pool.as_deref()?;
                let slots = *pools.get(pool)?;
                (task.pool_slots > slots).then(|| {
                    format!(
                        "{}: task `{}`: pool_slots {} is more than pool `{pool}` has ({slots} in \
                         orch.yaml): it could never start",
                        self.path.display(),
                        task.id,
                        task.pool_slots
                    )
                })
            })
            .collect()
    }

    pub fn task(&self, id: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.id == id)
    }

    /// The data interval of a manual run without an explicit logical date: the latest complete
    /// schedule interval before `now` (Airflow's rule), or `[now, now]` for an unscheduled DAG.
    pub fn manual_interval(&self, now: DateTime<Utc>) -> DataInterval {
        match &self.schedule {
            Some(schedule) => schedule.latest_complete_interval(now, self.timezone),
            None => DataInterval {
                start: now,
                end: now,
            },
        }
    }

    /// The data interval of a run whose logical date is given: from it to the next schedule
    /// tick after it, or one day for an unscheduled DAG.
    pub fn interval_from(&self, logical_date: DateTime<Utc>) -> DataInterval {
        let end = match &self.schedule {
            Some(schedule) => schedule.next_after(logical_date, self.timezone),
            None => None,
        };
        DataInterval {
            start: logical_date,
            end: end.unwrap_or(logical_date + chrono::Duration::days(1)),
        }
    }

    /// The next interval the scheduler should create a run for, if it is complete at `now`.
    ///
    /// `last_end` is the end of the latest scheduled run's interval. Without catchup only the
    /// latest complete interval is run; with catchup every interval since `start_date` (or since
    /// the last run) is, one after the other.
    pub fn next_scheduled_interval(
        &self,
        last_end: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Option<DataInterval> {
        let interval = self.next_interval_candidate(last_end, now)?;
        (interval.end <= now).then_some(interval)
    }

    /// The first interval start at or after `end`: where the schedule goes on after a run
    /// whose interval ended at `end`, had nothing been skipped.
    pub fn next_start_after(&self, end: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.as_ref()?.at_or_after(end, self.timezone)
    }

    /// When the scheduler has to look again: the end of the next interval to be run.
    pub fn next_due(
        &self,
        last_end: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        self.next_interval_candidate(last_end, now).map(|i| i.end)
    }

    fn next_interval_candidate(
        &self,
        last_end: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Option<DataInterval> {
        let schedule = self.schedule.as_ref()?;
        let tz = self.timezone;
        let earliest = last_end.or_else(|| self.start_instant());
        let mut start = earliest.and_then(|e| schedule.at_or_after(e, tz));
        if !self.catchup || start.is_none() {
            let latest = schedule.latest_complete_interval(now, tz).start;
            start = Some(start.map_or(latest, |s| s.max(latest)));
        }
        let start = start?;
        let end = schedule.next_after(start, tz)?;
        Some(DataInterval { start, end })
    }

    /// The logical dates a backfill of the days `first..=last` (in the DAG's timezone) runs:
    /// every schedule tick in those days, so that each run is the one the scheduler would have
    /// made (the same `ds`, data interval and run row); midnight of each day for a DAG without
    /// a schedule.
    ///
    /// At most `limit` of them: past that, [`TooManyRuns`], found after `limit + 1` ticks
    /// whatever the range (an every-minute DAG over ten thousand years would list billions).
    pub fn backfill_dates(
        &self,
        first: NaiveDate,
        last: NaiveDate,
        limit: usize,
    ) -> Result<Vec<DateTime<Utc>>, TooManyRuns> {
        let midnight = |day: NaiveDate| {
            day.and_hms_opt(0, 0, 0)
                .and_then(|t| t.and_local_timezone(self.timezone).earliest())
                .map(|t| t.with_timezone(&Utc))
        };
        let bounded = |dates: Vec<DateTime<Utc>>| {
            if dates.len() > limit {
                Err(TooManyRuns { limit })
            } else {
                Ok(dates)
            }
        };
        let days = first.iter_days().take_while(|d| *d <= last);
        let Some(schedule) = &self.schedule else {
            return bounded(
                days.filter_map(midnight)
                    .take(limit.saturating_add(1))
                    .collect(),
            );
        };
        let (Some(from), Some(to)) = (midnight(first), last.succ_opt().and_then(midnight)) else {
            return Ok(Vec::new());
        };
        let mut dates = Vec::new();
        let mut next = schedule.at_or_after(from, self.timezone);
        while let Some(tick) = next.filter(|t| *t < to) {
            dates.push(tick);
            if dates.len() > limit {
                break;
            }
            next = schedule.next_after(tick, self.timezone);
        }
        bounded(dates)
    }

    /// `start_date` as an instant: midnight of that day in the DAG's timezone.
    fn start_instant(&self) -> Option<DateTime<Utc>> {
        let midnight = self.start_date?.and_hms_opt(0, 0, 0)?;
        midnight
            .and_local_timezone(self.timezone)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// A backfill's range holds more schedule ticks than one backfill may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyRuns {
    pub limit: usize,
}

impl std::fmt::Display for TooManyRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "more than {} runs, the most one backfill may start (`max_backfill_runs` in orch.yaml, \
             ORCH_MAX_BACKFILL_RUNS): split the range",
            self.limit
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_backoff_waits_the_same_every_time() {
        let policy = RetryPolicy {
            retries: 3,
            delay: Duration::from_secs(30),
            ..RetryPolicy::default()
        };
        assert_eq!(policy.delay_after(1), Duration::from_secs(30));
        assert_eq!(policy.delay_after(3), Duration::from_secs(30));
    }

    #[test]
    fn exponential_backoff_doubles_and_is_capped() {
        let policy = RetryPolicy {
            retries: 20,
            delay: Duration::from_secs(10),
            backoff: RetryBackoff::Exponential,
            max_delay: Duration::from_secs(60),
            jitter: 0.0,
        };
        let delays: Vec<u64> = (1..=5).map(|n| policy.delay_after(n).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 60, 60]);
        // Far past any sane count, still the cap and no overflow.
        assert_eq!(policy.delay_after(500), Duration::from_secs(60));
    }

    #[test]
    fn jitter_spreads_retries_within_its_fraction() {
        let policy = RetryPolicy {
            retries: 3,
            delay: Duration::from_secs(100),
            jitter: 0.2,
            ..RetryPolicy::default()
        };
        let delays: Vec<Duration> = (0..200).map(|_| policy.delay_after(1)).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_secs(80) && *d <= Duration::from_secs(120))
        );
        assert!(delays.iter().any(|d| *d != delays[0]), "the waits differ");
    }

    #[test]
    fn retries_count_after_the_first_attempt() {
        let policy = RetryPolicy {
            retries: 2,
            ..RetryPolicy::default()
        };
        assert!(policy.allows_retry_after(1));
        assert!(policy.allows_retry_after(2));
        assert!(!policy.allows_retry_after(3));
    }
}
