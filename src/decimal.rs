//! Exact decimal numbers for prices, quantities and trade values: integers of 10⁻ˢ units.
//!
//! Exchanges send prices and quantities as decimal strings with at most 8 fractional digits
//! (Binance's `"4.00000100"`). Parsing them through `f64` would change their values; a
//! [`Decimal`] keeps them exact from the wire to the lake's `decimal(38, 8)` columns and the
//! warehouse's `NUMERIC`, and rejects any value it cannot hold exactly instead of rounding it.
//!
//! A trade's value, price × quantity, needs up to twice the fractional digits: on ETHBTC
//! (tick 0.00001, step 0.0001) it has 9. [`Decimal::exact_mul`] is the one multiply of orch:
//! every path that brings a trade (REST, websocket, replay) and the daily extract use it (the
//! daily transform does the same on whole columns: the product of the units), so a [`Product`]
//! (16 fractional digits, the lake's `decimal(38, 16)`) is exact for any tick and step, and the
//! same trade always gets the same value.

use std::fmt;
use std::str::FromStr;

/// Total digits of every fixed-point column orch writes, as in `decimal(38, S)`.
pub const PRECISION: usize = 38;

const MAX_UNITS: i128 = 10_i128.pow(PRECISION as u32) - 1;

/// A decimal number with exactly `S` fractional digits, at most [`PRECISION`] digits in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Fixed<const S: u32> {
    units: i128,
}

/// Prices and quantities: 8 fractional digits, as exchanges send them.
pub type Decimal = Fixed<8>;

/// The exact product of two [`Decimal`]s, such as a trade's quote quantity: 16 fractional
/// digits.
pub type Product = Fixed<16>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a decimal number with at most {scale} fractional digits: {reason}")]
pub struct DecimalError {
    text: String,
    scale: u32,
    reason: &'static str,
}

impl<const S: u32> Fixed<S> {
    /// Digits after the decimal point.
    pub const SCALE: u32 = S;
    const UNITS_PER_ONE: i128 = 10_i128.pow(S);

    /// The value in units of 10⁻ˢ, as stored in a `decimal(38, S)` column.
    pub fn units(self) -> i128 {
        self.units
    }

    pub fn from_units(units: i128) -> Option<Self> {
        (units.abs() <= MAX_UNITS).then_some(Fixed { units })
    }

    pub fn is_positive(self) -> bool {
        self.units > 0
    }
}

impl Decimal {
    /// `self × other`, exact: the product of two 8-digit fractions has at most 16 fractional
    /// digits. `None` only past 38 digits, far beyond any price times any quantity.
    pub fn exact_mul(self, other: Decimal) -> Option<Product> {
        self.units
            .checked_mul(other.units)
            .and_then(Product::from_units)
    }
}

impl<const S: u32> FromStr for Fixed<S> {
    type Err = DecimalError;

    fn from_str(text: &str) -> Result<Self, DecimalError> {
        let fail = |reason| DecimalError {
            text: text.to_string(),
            scale: S,
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
        if significant.len() > S as usize {
            return Err(fail("too many fractional digits"));
        }
        let mut units: i128 = 0;
        for b in whole.bytes() {
            units = units
                .checked_mul(10)
                .and_then(|u| u.checked_add(i128::from(b - b'0')))
                .filter(|u| *u <= MAX_UNITS / Self::UNITS_PER_ONE)
                .ok_or_else(|| fail("too large"))?;
        }
        units *= Self::UNITS_PER_ONE;
        let mut scale = Self::UNITS_PER_ONE;
        for b in significant.bytes() {
            scale /= 10;
            units += i128::from(b - b'0') * scale;
        }
        Ok(Fixed {
            units: if negative { -units } else { units },
        })
    }
}

impl<const S: u32> fmt::Display for Fixed<S> {
    /// Always with `S` fractional digits, as Binance writes prices: `4.00000100`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.units < 0 { "-" } else { "" };
        let abs = self.units.unsigned_abs();
        let one = Self::UNITS_PER_ONE as u128;
        write!(
            f,
            "{sign}{}.{:0width$}",
            abs / one,
            abs % one,
            width = S as usize
        )
    }
}

impl<const S: u32> serde::Serialize for Fixed<S> {
    fn serialize<Ser: serde::Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        s.collect_str(self)
    }
}

impl<'de, const S: u32> serde::Deserialize<'de> for Fixed<S> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Deserializes a decimal sent as a string or as a JSON number. A number is read by the
/// shortest text that gives back the same double, which is the text sent for any price with
/// up to 15 significant digits; one that needs more than [`Decimal`]'s 8 fractional digits is
/// refused, never rounded.
pub fn from_string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Sent<'a> {
        Text(std::borrow::Cow<'a, str>),
        Number(f64),
    }
    match <Sent<'de> as serde::Deserialize>::deserialize(d)? {
        Sent::Text(text) => text.parse().map_err(serde::de::Error::custom),
        Sent::Number(number) if number.is_finite() => format!("{number}")
            .parse()
            .map_err(serde::de::Error::custom),
        Sent::Number(number) => Err(serde::de::Error::custom(format!("{number} is no price"))),
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
    fn prints_with_all_digits_and_round_trips() {
        for text in ["4.00000100", "0.00000001", "-12.50000000", "98765.43210000"] {
            assert_eq!(d(text).to_string(), text);
        }
        let p: Product = "0.0042647040000001".parse().expect("product");
        assert_eq!(p.to_string(), "0.0042647040000001");
    }

    #[test]
    fn numbers_are_read_by_the_text_sent() {
        #[derive(serde::Deserialize)]
        struct Row {
            #[serde(deserialize_with = "from_string_or_number")]
            price: Decimal,
        }
        for (json, units) in [
            (r#"{"price": 520000.12}"#, 52_000_012_000_000),
            (r#"{"price": "0.1"}"#, 10_000_000),
            (r#"{"price": 0.1}"#, 10_000_000),
            (r#"{"price": 12}"#, 1_200_000_000),
        ] {
            let row: Row = serde_json::from_str(json).expect(json);
            assert_eq!(row.price.units(), units, "{json}");
        }
        assert!(serde_json::from_str::<Row>(r#"{"price": 0.123456789}"#).is_err());
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
        assert!("1.00000000000000001".parse::<Product>().is_err());
    }

    /// ETHBTC: tick 0.00001 and step 0.0001 give products with 9 fractional digits, which an
    /// 8-digit product would cut.
    #[test]
    fn products_are_exact_for_any_tick_and_step() {
        let price = d("0.03456");
        let qty = d("0.1234");
        let product = price.exact_mul(qty).expect("in range");
        assert_eq!(product.to_string(), "0.0042647040000000");
        assert_eq!(product.units(), 42_647_040_000_000);
        // The largest of each, still exact.
        let big = d("99999999.99999999")
            .exact_mul(d("99999999.99999999"))
            .expect("fits 38 digits");
        assert_eq!(big.to_string(), "9999999999999998.0000000000000001");
        // Signs multiply as numbers do.
        assert_eq!(d("-2.5").exact_mul(d("0.5")), "-1.25".parse().ok());
        assert_eq!(
            d("1000000000000000000000").exact_mul(d("1000000000000000000000")),
            None
        );
    }
}
