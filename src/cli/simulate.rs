//! `orch simulate binance`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::simulator::{self, Keepalive, SimulatorOptions};

pub async fn binance(
    port: u16,
    symbols: Vec<String>,
    rate: f64,
    seed: u64,
    replay: Vec<String>,
    weight_limit: Option<u32>,
    keepalive: Keepalive,
) -> anyhow::Result<ExitCode> {
    if !(rate.is_finite() && rate >= 0.0) {
        anyhow::bail!("--rate must be a number of trades per second, 0 or more; got {rate}");
    }
    let replay = replay
        .iter()
        .map(|arg| match arg.split_once('=') {
            Some((symbol, file)) if !symbol.is_empty() && !file.is_empty() => {
                Ok((symbol.to_uppercase(), PathBuf::from(file)))
            }
            _ => Err(anyhow::anyhow!(
                "--replay takes SYMBOL=FILE, e.g. BTCUSDT=trades.parquet; got `{arg}`"
            )),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    simulator::run(SimulatorOptions {
        port,
        symbols: symbols.into_iter().map(|s| s.to_uppercase()).collect(),
        rate,
        seed,
        replay,
        weight_limit,
        keepalive,
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}
