//! The one timestamp format of the run history and the `--json` output: RFC 3339, UTC,
//! microseconds, e.g. `2026-11-22T04:00:00.000000Z`. Fixed width, so it also sorts as text.

use chrono::{DateTime, SecondsFormat, Utc};

pub fn format(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Whether `t` formats as a four-digit year, which [`parse`] reads back and which sorts as
/// text: years 1 to 9999.
pub fn is_storable(t: DateTime<Utc>) -> bool {
    use chrono::Datelike;
    (1..=9999).contains(&t.year())
}

pub fn parse(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc))
}

/// Serde helpers so records serialize their times in this format.
pub mod serde_format {
    use chrono::{DateTime, Utc};
    use serde::Serializer;

    pub fn required<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*t))
    }

    pub fn optional<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::format(*t)),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn round_trips_with_microseconds() {
        let t = Utc
            .timestamp_opt(1_795_000_000, 123_456_000)
            .single()
            .expect("time");
        let s = format(t);
        assert_eq!(s, "2026-11-18T11:06:40.123456Z");
        assert_eq!(parse(&s).expect("parse"), t);
    }
}
