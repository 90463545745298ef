//! Recorded trades for the simulator to replay: real prices, sizes and spacing.
//!
//! Reads the Parquet layout of public Binance trade dumps (the one in `../shared/data/binance/`):
//! `timestamp` (timestamp ms UTC), `trade_id` (int64), `price` and `quantity` (double),
//! `buyer_maker` (`"True"`/`"False"`, or a bool). The doubles were parsed from the exchange's
//! decimal strings of at most 8 fractional digits, so rounding them to 8 digits gives back
//! exactly the decimals the exchange sent.

use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, bail};
use polars::prelude::{DataFrame, DataType, ParquetReader, SerReader, TimeUnit};

use crate::decimal::Decimal;
use crate::exchange::Trade;

/// The trades of a recorded file, ascending by id; ids must be consecutive.
pub fn load(path: &Path) -> anyhow::Result<Vec<Trade>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot open replay file {}", path.display()))?;
    let frame = ParquetReader::new(file)
        .finish()
        .with_context(|| format!("{}: not a readable Parquet file", path.display()))?;
    trades(&frame).with_context(|| format!("replay file {}", path.display()))
}

fn trades(frame: &DataFrame) -> anyhow::Result<Vec<Trade>> {
    let column = |name: &str| {
        frame
            .column(name)
            .with_context(|| format!("no column `{name}`"))
    };
    // Milliseconds, whatever unit the file's timestamps are in.
    let times = match column("timestamp")?.dtype() {
        DataType::Datetime(_, _) => column("timestamp")?
            .cast(&DataType::Datetime(TimeUnit::Milliseconds, None))?
            .datetime()?
            .physical()
            .clone(),
        _ => column("timestamp")?.cast(&DataType::Int64)?.i64()?.clone(),
    };
    let ids = column("trade_id")?.cast(&DataType::Int64)?;
    let ids = ids.i64()?;
    let prices = column("price")?.cast(&DataType::Float64)?;
    let prices = prices.f64()?;
    let quantities = column("quantity")?.cast(&DataType::Float64)?;
    let quantities = quantities.f64()?;
    let makers = column("buyer_maker")?.cast(&DataType::String)?;
    let makers = makers.str()?;
    let mut trades = Vec::with_capacity(frame.height());
    for row in 0..frame.height() {
        let at = || format!("row {row}");
        let (Some(time_ms), Some(id), Some(price), Some(qty), Some(maker)) = (
            times.get(row),
            ids.get(row),
            prices.get(row),
            quantities.get(row),
            makers.get(row),
        ) else {
            bail!("{}: a value is missing", at());
        };
        let price = exact(price).with_context(|| format!("{}: price", at()))?;
        let qty = exact(qty).with_context(|| format!("{}: quantity", at()))?;
        let is_buyer_maker = match maker.to_ascii_lowercase().as_str() {
            "true" => true,
            "false" => false,
            other => bail!("{}: buyer_maker `{other}` is not True or False", at()),
        };
        if let Some(previous) = trades.last().map(|t: &Trade| t.id)
            && id != previous + 1
        {
            bail!("{}: trade id {id} does not follow {previous}", at());
        }
        trades.push(
            Trade::new(id, price, qty, time_ms, is_buyer_maker, true)
                .with_context(|| format!("{}: price × quantity is out of range", at()))?,
        );
    }
    if trades.is_empty() {
        bail!("no trades");
    }
    Ok(trades)
}

/// The decimal of at most 8 fractional digits a double was parsed from. Some dumps hold the
/// result of arithmetic (`0.00031099999999999997` for `0.000311`), which rounding undoes; below
/// 10⁷ a double has the 15 significant digits that needs.
fn exact(value: f64) -> anyhow::Result<Decimal> {
    if !(value.is_finite() && value.abs() < 1e7) {
        bail!("{value} is not a price or quantity this replay can read exactly");
    }
    Ok(Decimal::from_str(&format!("{value:.8}"))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "../shared/data/binance/btcusdt-trades-2021-01-08.parquet";

    #[test]
    fn doubles_become_the_decimals_they_were_parsed_from() {
        assert_eq!(exact(39_380.01).expect("ok").to_string(), "39380.01000000");
        assert_eq!(exact(0.000123).expect("ok").to_string(), "0.00012300");
        assert_eq!(
            exact(0.000_310_999_999_999_999_97).expect("ok").to_string(),
            "0.00031100"
        );
        assert!(exact(f64::NAN).is_err());
    }

    #[test]
    fn the_shared_sample_replays_with_consecutive_ids() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(SAMPLE);
        if !path.exists() {
            eprintln!("skipped: {} is absent", path.display());
            return;
        }
        let trades = load(&path).expect("sample loads");
        assert_eq!(trades.len(), 2001);
        assert_eq!(trades[0].id, 553_287_559);
        assert_eq!(trades[2000].id, 553_289_559);
        assert!(
            trades
                .iter()
                .all(|t| t.price.is_positive() && t.qty.is_positive())
        );
        let span = trades[2000].time_ms - trades[0].time_ms;
        assert_eq!(span, 46_077, "00:00:00.278 to 00:00:46.355");
    }

    #[test]
    fn gaps_in_ids_are_refused() {
        let frame = polars::df!(
            "timestamp" => [1_i64, 2],
            "trade_id" => [10_i64, 12],
            "price" => [1.5_f64, 1.6],
            "quantity" => [2.0_f64, 3.0],
            "buyer_maker" => ["True", "False"],
        )
        .expect("frame");
        let error = trades(&frame).expect_err("gap");
        assert!(
            error.to_string().contains("12 does not follow 10"),
            "{error}"
        );
    }
}
