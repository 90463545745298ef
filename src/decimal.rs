//! Exact decimal numbers for prices and quantities: integers of 10⁻⁸ units.
//!
//! Exchanges send prices and quantities as decimal strings with at most 8 fractional digits
//! (Binance's `"4.00000100"`). Parsing them through `f64` would change their values; this type
//! keeps them exact from the wire to the lake's `decimal(38, 8)` columns and the warehouse's
//! `NUMERIC`, and rejects any value it cannot hold exactly instead of rounding it.

use std::fmt;
use std::str::FromStr;

/// Digits after the decimal point.
pub const SCALE: u32 = 8;
/// Total digits, as in the lake's `decimal(38, 8)` columns.
pub const PRECISION: usize = 38;

const UNITS_PER_ONE: i128 = 10_i128.pow(SCALE);
const MAX_UNITS: i128 = 10_i128.pow(PRECISION as u32) - 1;

/// A decimal number with exactly [`SCALE`] fractional digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Decimal {
    units: i128,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a decimal number with at most {SCALE} fractional digits: {reason}")]
pub struct DecimalError {
    text: String,
    reason: &'static str,
}

impl Decimal {
    /// The value in units of 10⁻⁸, as stored in a `decimal(38, 8)` column.
    pub fn units(self) -> i128 {
        self.units
    }

    pub fn from_units(units: i128) -> Option<Decimal> {
        (units.abs() <= MAX_UNITS).then_some(Decimal { units })
    }

    pub fn is_positive(self) -> bool {
        self.units > 0
    }
}

impl FromStr for Decimal {
    type Err = DecimalError;

    fn from_str(text: &str) -> Result<Decimal, DecimalError> {
        let fail = |reason| DecimalError {
            text: text.to_string(),
            reason,
        };
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        if whole.is_empty() && fraction.is_empty() {
            return Err(fail("no digits"));
        }
        if !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
        {
            return Err(fail("not a plain decimal"));
        }
        let significant = fraction.trim_end_matches('0');
        if significant.len() > SCALE as usize {
            return Err(fail("too many fractional digits"));
        }
        let mut units: i128 = 0;
        for b in whole.bytes() {
            units = units
                .checked_mul(10)
                .and_then(|u| u.checked_add(i128::from(b - b'0')))
                .filter(|u| *u <= MAX_UNITS / UNITS_PER_ONE)
                .ok_or_else(|| fail("too large"))?;
        }
        units *= UNITS_PER_ONE;
        let mut scale = UNITS_PER_ONE;
        for b in significant.bytes() {
            scale /= 10;
            units += i128::from(b - b'0') * scale;
        }
        Ok(Decimal {
            units: if negative { -units } else { units },
        })
    }
}

impl fmt::Display for Decimal {
    /// Always with [`SCALE`] fractional digits, as Binance writes them: `4.00000100`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.units < 0 { "-" } else { "" };
        let abs = self.units.unsigned_abs();
        let one = UNITS_PER_ONE as u128;
        write!(f, "{sign}{}.{:08}", abs / one, abs % one)
    }
}

impl serde::Serialize for Decimal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Decimal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> Decimal {
        text.parse().expect(text)
    }

    #[test]
    fn parses_exchange_strings_exactly() {
        assert_eq!(d("4.00000100").units(), 400_000_100);
        assert_eq!(d("48.000012").units(), 4_800_001_200);
        assert_eq!(d("0.1").units(), 10_000_000);
        assert_eq!(d("12").units(), 1_200_000_000);
        assert_eq!(d("-0.00000001").units(), -1);
        assert_eq!(d(".5").units(), 50_000_000);
        assert_eq!(
            d("1.500000000000").units(),
            150_000_000,
            "trailing zeros are fine"
        );
    }

    #[test]
    fn prints_with_eight_digits_and_round_trips() {
        for text in ["4.00000100", "0.00000001", "-12.50000000", "98765.43210000"] {
            assert_eq!(d(text).to_string(), text);
        }
    }

    #[test]
    fn refuses_what_it_cannot_hold_exactly() {
        for bad in ["", ".", "1.000000001", "1e5", "NaN", "1,5", "--1", "1.2.3"] {
            assert!(bad.parse::<Decimal>().is_err(), "{bad:?} was accepted");
        }
        assert!(
            "1000000000000000000000000000000"
                .parse::<Decimal>()
                .is_err()
        );
    }
}
