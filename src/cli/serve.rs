//! `orch serve`.

use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;
use crate::scheduler::{self, ServeOptions};

pub async fn serve(
    config: Config,
    grace: Duration,
    log_format: &'static str,
) -> anyhow::Result<ExitCode> {
    scheduler::serve(config, ServeOptions { grace, log_format }).await?;
    Ok(ExitCode::SUCCESS)
}
