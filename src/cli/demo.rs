//! `orch demo`: the shipped pipelines against the built-in Binance simulator, so a first run
//! needs no network and no credentials.

use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;
use crate::simulator::{Simulator, SimulatorOptions};

pub async fn demo(
    mut config: Config,
    grace: Duration,
    log_format: &'static str,
) -> anyhow::Result<ExitCode> {
    let simulator = Simulator::start(&SimulatorOptions {
        port: 0,
        // Binance's four, and the books behind Mercado Bitcoin's BTC-BRL and ETH-BRL.
        symbols: [
            "BTCUSDT", "AAVEUSDT", "STXUSDT", "ARBUSDT", "BTCBRL", "ETHBRL",
        ]
        .map(String::from)
        .to_vec(),
        rate: 20.0,
        seed: 1,
        replay: Vec::new(),
        weight_limit: Some(crate::simulator::BINANCE_WEIGHT_LIMIT),
        keepalive: crate::simulator::Keepalive::BINANCE,
    })
    .await?;
    config.data.binance_api_url = simulator.url();
    config.data.mercado_bitcoin_api_url = format!("{}/api/v4", simulator.url());
    config.data.mercado_bitcoin_ws_url = format!("{}/mercado_bitcoin/ws", simulator.ws_url());
    config.data.kucoin_api_url = simulator.url();
    config.data.binance_ws_url = simulator.ws_url();
    tracing::info!(
        binance = %simulator.url(),
        lake = %config.data.lake_url,
        warehouse = %config.data.warehouse_url,
        "demo: Binance simulator started; trades land in the lake and the warehouse every 5 minutes \
         (try `orch trigger binance_trades_5m --wait` from another terminal for a run now)"
    );
    let served = super::serve::serve(
        config,
        grace,
        vec![crate::queue::DEFAULT_QUEUE.to_string()],
        log_format,
    )
    .await;
    drop(simulator);
    served
}
