//! Cron schedules and the data intervals between their ticks.
//!
//! Ticks are computed in the DAG's timezone by `croner` (which walks DST changes correctly) and
//! stored in UTC. A run's data interval spans two consecutive ticks; the run is due when its
//! interval has ended, as in Airflow.

use std::fmt;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// `[start, end)` of the data a run processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataInterval {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// A parsed cron expression (5 fields, or 6 with seconds first) or one of the `@hourly`-style
/// aliases.
#[derive(Clone)]
pub struct Schedule {
    expression: String,
    cron: Cron,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Schedule").field(&self.expression).finish()
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expression)
    }
}

impl Schedule {
    /// Parses standard 5-field cron (minute hour day-of-month month day-of-week), 6 fields
    /// with a leading second for pipelines that poll faster than once a minute
    /// (`*/15 * * * * *`), or an alias: `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.
    pub fn parse(expression: &str) -> Result<Schedule, String> {
        let trimmed = expression.trim();
        if !trimmed.starts_with('@') && !(5..=6).contains(&trimmed.split_whitespace().count()) {
            return Err(format!(
                "invalid cron expression `{expression}`: expected 5 fields (minute hour day-of-month month day-of-week), 6 with a leading second, or an alias like @daily"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(trimmed)
            .map_err(|e| format!("invalid cron expression `{expression}`: {e}"))?;
        Ok(Schedule {
            expression: trimmed.to_string(),
            cron,
        })
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        self.find(t, tz, false, true)
    }

    /// The first tick at or after `t`.
    pub fn at_or_after(&self, t: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        self.find(t, tz, true, true)
    }

    /// The last tick at or before `t`.
    pub fn at_or_before(&self, t: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        self.find(t, tz, true, false)
    }

    /// The last tick strictly before `t`.
    pub fn before(&self, t: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        self.find(t, tz, false, false)
    }

    /// The latest interval that has fully ended at `now`: between the two most recent ticks.
    pub fn latest_complete_interval(&self, now: DateTime<Utc>, tz: Tz) -> DataInterval {
        let end = self.at_or_before(now, tz).unwrap_or(now);
        let start = self.before(end, tz).unwrap_or(end);
        DataInterval { start, end }
    }

    fn find(
        &self,
        t: DateTime<Utc>,
        tz: Tz,
        inclusive: bool,
        forward: bool,
    ) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&tz);
        let found = if forward {
            self.cron.find_next_occurrence(&local, inclusive)
        } else {
            self.cron.find_previous_occurrence(&local, inclusive)
        };
        found.ok().map(|d| d.with_timezone(&Utc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .expect("valid test time")
    }

    #[test]
    fn six_fields_tick_by_the_second() {
        let s = Schedule::parse("*/15 * * * * *").expect("six fields");
        let t = utc(2026, 11, 30, 10, 0);
        let next = s.next_after(t, chrono_tz::UTC).expect("next");
        assert_eq!((next - t).num_seconds(), 15);
        let interval =
            s.latest_complete_interval(t + chrono::Duration::seconds(20), chrono_tz::UTC);
        assert_eq!((interval.end - interval.start).num_seconds(), 15);
    }

    #[test]
    fn parses_five_fields_and_aliases() {
        assert!(Schedule::parse("*/5 * * * *").is_ok());
        assert!(Schedule::parse("0 4 * * *").is_ok());
        assert!(Schedule::parse("@daily").is_ok());
        assert!(Schedule::parse("@hourly").is_ok());
        assert!(Schedule::parse("@weekly").is_ok());
    }

    #[test]
    fn rejects_seven_fields_and_garbage() {
        let seven = Schedule::parse("0 0 */5 * * * *").unwrap_err();
        assert!(seven.contains("expected 5 fields"), "{seven}");
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(Schedule::parse("61 * * * * *").is_err(), "second 61");
        assert!(Schedule::parse("every day").is_err());
    }

    #[test]
    fn latest_complete_interval_of_a_daily_schedule_is_yesterday() {
        let s = Schedule::parse("0 4 * * *").expect("cron");
        let i = s.latest_complete_interval(utc(2026, 11, 23, 10, 0), Tz::UTC);
        assert_eq!(i.start, utc(2026, 11, 22, 4, 0));
        assert_eq!(i.end, utc(2026, 11, 23, 4, 0));
    }

    #[test]
    fn a_tick_exactly_now_completes_an_interval() {
        let s = Schedule::parse("*/5 * * * *").expect("cron");
        let i = s.latest_complete_interval(utc(2026, 11, 23, 10, 5), Tz::UTC);
        assert_eq!(i.start, utc(2026, 11, 23, 10, 0));
        assert_eq!(i.end, utc(2026, 11, 23, 10, 5));
    }

    /// On 2026-10-25 Europe/Berlin falls back from 03:00 CEST to 02:00 CET: the hour from
    /// 02:00 to 03:00 happens twice.
    #[test]
    fn ticks_are_distinct_and_ordered_across_the_dst_fall_back() {
        let tz: Tz = "Europe/Berlin".parse().expect("tz");
        let day_start = utc(2026, 10, 24, 22, 0); // midnight CEST
        let day_end = utc(2026, 10, 25, 23, 0); // midnight CET
        let ticks = |expression: &str| {
            let s = Schedule::parse(expression).expect("cron");
            let mut ticks = Vec::new();
            let mut next = s.at_or_after(day_start, tz);
            while let Some(t) = next.filter(|t| *t < day_end) {
                ticks.push(t);
                next = s.next_after(t, tz);
            }
            ticks
        };
        // Hourly: 25 hours that day, each an hour after the one before, none twice.
        let hourly = ticks("0 * * * *");
        assert_eq!(hourly.len(), 25, "{hourly:?}");
        assert!(
            hourly
                .windows(2)
                .all(|w| w[1] - w[0] == chrono::Duration::hours(1))
        );
        // A daily time inside the repeated hour runs once, so one data interval per day.
        let daily = ticks("30 2 * * *");
        assert_eq!(daily.len(), 1, "{daily:?}");
        let interval = Schedule::parse("30 2 * * *")
            .expect("cron")
            .latest_complete_interval(utc(2026, 10, 26, 12, 0), tz);
        assert_eq!(interval.end - interval.start, chrono::Duration::hours(25));
    }

    #[test]
    fn ticks_follow_the_timezone_across_dst() {
        // 02:30 local does not exist in Europe/Berlin on 2026-03-29; 03:00 daily stays at 03:00
        // local, so the UTC tick moves from 02:00 to 01:00.
        let s = Schedule::parse("0 3 * * *").expect("cron");
        let tz: Tz = "Europe/Berlin".parse().expect("tz");
        let before = s.next_after(utc(2026, 3, 28, 0, 0), tz).expect("tick");
        let after = s.next_after(utc(2026, 3, 29, 0, 0), tz).expect("tick");
        assert_eq!(before, utc(2026, 3, 28, 2, 0));
        assert_eq!(after, utc(2026, 3, 29, 1, 0));
    }
}
