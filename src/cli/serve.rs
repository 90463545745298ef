//! `orch serve`.

use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;
use crate::scheduler::{self, ServeOptions};

pub async fn serve(
    config: Config,
    grace: Duration,
    queues: Vec<String>,
    log_format: &'static str,
) -> anyhow::Result<ExitCode> {
    scheduler::serve(
        config,
        ServeOptions {
            grace,
            log_format,
            queues,
        },
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}
