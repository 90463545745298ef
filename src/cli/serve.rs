//! `orch serve`.

use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;
use crate::scheduler::{self, ServeOptions};

pub async fn serve(config: Config, grace: Duration) -> anyhow::Result<ExitCode> {
    scheduler::serve(config, ServeOptions { grace }).await?;
    Ok(ExitCode::SUCCESS)
}
