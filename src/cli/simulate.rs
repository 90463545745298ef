//! `orch simulate binance`.

use std::process::ExitCode;

use crate::simulator::{self, SimulatorOptions};

pub async fn binance(
    port: u16,
    symbols: Vec<String>,
    rate: f64,
    seed: u64,
) -> anyhow::Result<ExitCode> {
    if !(rate.is_finite() && rate >= 0.0) {
        anyhow::bail!("--rate must be a number of trades per second, 0 or more; got {rate}");
    }
    simulator::run(SimulatorOptions {
        port,
        symbols: symbols.into_iter().map(|s| s.to_uppercase()).collect(),
        rate,
        seed,
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}
