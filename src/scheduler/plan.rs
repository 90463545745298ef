//! Creating runs: their ids, logical dates and data intervals.

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Map, Value};

use crate::dag::params::{Param, ParamType};
use crate::dag::{Dag, DataInterval};
use crate::store::{NewRun, RunType};

/// Run ids are unique across DAGs so `orch runs show RUN_ID` needs nothing else:
/// `<dag>__<type>__<time>`, the time being the logical date for scheduled and backfill runs
/// (one per date) and the queueing time, to the microsecond, for manual runs (any number).
pub fn run_id(
    dag_id: &str,
    run_type: RunType,
    logical_date: DateTime<Utc>,
    queued_at: DateTime<Utc>,
) -> String {
    match run_type {
        RunType::Manual => format!(
            "{dag_id}__manual__{}",
            queued_at.format("%Y-%m-%dT%H:%M:%S%.6fZ")
        ),
        other => format!(
            "{dag_id}__{other}__{}",
            logical_date.format("%Y-%m-%dT%H:%M:%SZ")
        ),
    }
}

pub fn new_run(
    dag: &Dag,
    run_type: RunType,
    interval: DataInterval,
    conf: Map<String, Value>,
    now: DateTime<Utc>,
) -> NewRun {
    NewRun {
        run_id: run_id(&dag.id, run_type, interval.start, now),
        dag_id: dag.id.clone(),
        run_type,
        logical_date: interval.start,
        data_interval_start: interval.start,
        data_interval_end: interval.end,
        conf,
        queued_at: now,
    }
}

/// The run `orch trigger` and `orch run` create: for `logical_date` if given, else for the
/// latest complete interval.
pub fn manual_run(
    dag: &Dag,
    logical_date: Option<DateTime<Utc>>,
    conf: Map<String, Value>,
    now: DateTime<Utc>,
) -> NewRun {
    let interval = match logical_date {
        Some(date) => dag.interval_from(date),
        None => dag.manual_interval(now),
    };
    new_run(dag, RunType::Manual, interval, conf, now)
}

/// Parses `--logical-date`: a date (midnight in the DAG's timezone) or an RFC 3339 time.
pub fn parse_logical_date(dag: &Dag, text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        format!("logical date `{text}` is neither a date like 2026-11-22 nor an RFC 3339 time")
    })?;
    date.and_hms_opt(0, 0, 0)
        .and_then(|t| t.and_local_timezone(dag.timezone).earliest())
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| format!("midnight of {text} does not exist in {}", dag.timezone))
}

/// Parses `--conf key=value`.
///
/// A value is read as its declared param's type says: text for a `string` or `date` param
/// (`greeting=123` is the text "123"), the one of an `enum` param's values it spells, and
/// otherwise JSON when it parses, else text.
pub fn parse_conf(pairs: &[String], specs: &[Param]) -> Result<Map<String, Value>, String> {
    let mut conf = Map::new();
    for pair in pairs {
        let (key, text) = pair
            .split_once('=')
            .ok_or_else(|| format!("--conf `{pair}` is not key=value"))?;
        if key.is_empty() {
            return Err(format!("--conf `{pair}` has an empty key"));
        }
        let as_text = Value::String(text.to_string());
        let as_json = serde_json::from_str(text).ok();
        let value = match specs.iter().find(|p| p.name == key).map(|p| (p.kind, p)) {
            Some((ParamType::String | ParamType::Date, _)) => as_text,
            Some((ParamType::Enum, spec)) if spec.values.contains(&as_text) => as_text,
            _ => as_json.unwrap_or(as_text),
        };
        conf.insert(key.to_string(), value);
    }
    Ok(conf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dag::load_str;
    use crate::tasks::Registry;
    use chrono::TimeZone;
    use serde_json::json;
    use std::path::Path;

    fn dag(yaml: &str) -> Dag {
        load_str(Path::new("d.yaml"), yaml, &Registry::core()).expect("valid dag")
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .expect("time")
    }

    const DAILY: &str = "schedule: '0 4 * * *'\ntasks: [{id: a, kind: noop}]\n";

    #[test]
    fn a_manual_run_at_ten_processes_yesterday() {
        let d = dag(DAILY);
        let run = manual_run(&d, None, Map::new(), utc(2026, 11, 23, 10, 0));
        assert_eq!(run.logical_date, utc(2026, 11, 22, 4, 0));
        assert_eq!(run.data_interval_end, utc(2026, 11, 23, 4, 0));
        assert_eq!(run.run_id, "d__manual__2026-11-23T10:00:00.000000Z");
    }

    #[test]
    fn an_explicit_logical_date_runs_to_the_next_tick() {
        let d = dag(DAILY);
        let date = parse_logical_date(&d, "2026-11-01").expect("date");
        let run = manual_run(&d, Some(date), Map::new(), utc(2026, 11, 23, 10, 0));
        assert_eq!(run.logical_date, utc(2026, 11, 1, 0, 0));
        assert_eq!(run.data_interval_end, utc(2026, 11, 1, 4, 0));
    }

    #[test]
    fn an_unscheduled_dag_gets_one_day() {
        let d = dag("tasks: [{id: a, kind: noop}]\n");
        let date = parse_logical_date(&d, "2026-11-01").expect("date");
        let run = manual_run(&d, Some(date), Map::new(), utc(2026, 11, 23, 10, 0));
        assert_eq!(run.data_interval_end, utc(2026, 11, 2, 0, 0));
    }

    #[test]
    fn catchup_walks_every_interval_since_start_date() {
        let d = dag(
            "schedule: '@daily'\nstart_date: 2026-11-20\ncatchup: true\ntasks: [{id: a, kind: noop}]\n",
        );
        let now = utc(2026, 11, 23, 10, 0);
        let mut last = None;
        let mut starts = Vec::new();
        while let Some(i) = d.next_scheduled_interval(last, now) {
            starts.push(i.start);
            last = Some(i.end);
        }
        assert_eq!(
            starts,
            vec![
                utc(2026, 11, 20, 0, 0),
                utc(2026, 11, 21, 0, 0),
                utc(2026, 11, 22, 0, 0)
            ]
        );
        assert_eq!(d.next_due(last, now), Some(utc(2026, 11, 24, 0, 0)));
    }

    #[test]
    fn without_catchup_only_the_latest_interval_runs() {
        let d = dag("schedule: '@daily'\nstart_date: 2026-11-01\ntasks: [{id: a, kind: noop}]\n");
        let now = utc(2026, 11, 23, 10, 0);
        let first = d.next_scheduled_interval(None, now).expect("due");
        assert_eq!(first.start, utc(2026, 11, 22, 0, 0));
        assert_eq!(d.next_scheduled_interval(Some(first.end), now), None);
        // A scheduler that was down for days resumes at the latest interval, not the missed ones.
        let later = utc(2026, 11, 26, 1, 0);
        assert_eq!(
            d.next_scheduled_interval(Some(first.end), later)
                .map(|i| i.start),
            Some(utc(2026, 11, 25, 0, 0))
        );
    }

    #[test]
    fn a_future_start_date_schedules_nothing_yet() {
        let d = dag(
            "schedule: '@daily'\nstart_date: 2027-01-01\ncatchup: true\ntasks: [{id: a, kind: noop}]\n",
        );
        assert_eq!(
            d.next_scheduled_interval(None, utc(2026, 11, 23, 10, 0)),
            None
        );
        assert_eq!(
            d.next_due(None, utc(2026, 11, 23, 10, 0)),
            Some(utc(2027, 1, 2, 0, 0))
        );
    }

    #[test]
    fn conf_values_parse_as_json_or_stay_strings() {
        let conf = parse_conf(
            &[
                "n=5".into(),
                "s=hello".into(),
                "d=2026-11-01".into(),
                "l=[1,2]".into(),
            ],
            &[],
        )
        .expect("conf");
        assert_eq!(
            Value::Object(conf),
            json!({"n": 5, "s": "hello", "d": "2026-11-01", "l": [1, 2]})
        );
        assert!(parse_conf(&["novalue".into()], &[]).is_err());
    }

    #[test]
    fn conf_values_are_read_as_their_declared_param_type() {
        let d = dag(
            "params:\n  greeting: {type: string}\n  day: {type: date}\n  n: {type: integer}\n  level: {type: enum, values: [1, \"2\"]}\ntasks: [{id: a, kind: noop}]\n",
        );
        let conf = parse_conf(
            &[
                "greeting=123".into(),
                "day=2026-11-01".into(),
                "n=7".into(),
                "level=2".into(),
                "other=true".into(),
            ],
            &d.param_specs,
        )
        .expect("conf");
        assert_eq!(
            Value::Object(conf.clone()),
            json!({"greeting": "123", "day": "2026-11-01", "n": 7, "level": "2", "other": true})
        );
        assert!(crate::dag::params::check_conf(&d.param_specs, &conf).is_empty());
    }
}
