//! The streams as a service of the scheduling leader: `orch serve` runs the streams of the
//! DAGs folder through this, knowing only that it is a [`LeaderService`].

use std::path::PathBuf;

use anyhow::Context;

use super::supervisor::{StreamProcess, Supervisor};
use crate::config::Config;
use crate::scheduler::LeaderService;
use crate::tasks::BoxFuture;

/// The streams of one DAGs folder, each in a process of its own.
pub struct StreamService {
    supervisor: Supervisor,
    dags_dir: PathBuf,
}

impl StreamService {
    /// The streams of `config`'s DAGs folder, whose processes log as `log_format` says.
    pub fn new(config: &Config, log_format: &str) -> anyhow::Result<StreamService> {
        Ok(StreamService {
            supervisor: Supervisor::new(stream_process(config, log_format)?),
            dags_dir: config.dags_dir.clone(),
        })
    }
}

impl LeaderService for StreamService {
    /// Starts, restarts and stops streams to match the stream files of the DAGs folder.
    fn sync(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (defs, errors) = super::load_dir(&self.dags_dir);
            for error in errors {
                tracing::error!("stream file not loaded: {error}");
            }
            self.supervisor.sync(defs).await;
        })
    }

    fn stop_all(&mut self) -> BoxFuture<'static, ()> {
        Box::pin(self.supervisor.stop_all())
    }
}

/// How this server starts its streams' processes: this binary, seeing what the server sees.
fn stream_process(config: &Config, log_format: &str) -> anyhow::Result<StreamProcess> {
    let exe = std::env::current_exe().context("cannot find the orch binary to run streams with")?;
    let data = &config.data;
    let env = [
        ("ORCH_DATABASE_URL", &config.database_url),
        ("ORCH_STAGING_URL", &data.staging_url),
        ("BINANCE_API_URL", &data.binance_api_url),
        ("BINANCE_WS_URL", &data.binance_ws_url),
        ("KUCOIN_API_URL", &data.kucoin_api_url),
        ("MERCADO_BITCOIN_API_URL", &data.mercado_bitcoin_api_url),
        ("MERCADO_BITCOIN_WS_URL", &data.mercado_bitcoin_ws_url),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value.clone()))
    .chain([(
        "ORCH_DAGS_DIR".to_string(),
        config.dags_dir.to_string_lossy().into_owned(),
    )])
    .collect();
    Ok(StreamProcess {
        exe,
        args: vec![
            "--home".into(),
            config.home.clone().into_os_string(),
            "--log-format".into(),
            log_format.into(),
        ],
        env,
    })
}
