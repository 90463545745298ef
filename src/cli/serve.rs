//! `orch serve`: the scheduler, its worker, and the web face beside them.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;
use crate::scheduler::{self, ServeOptions, view};
use crate::store::Store;
use crate::web::{self, WebState};

pub async fn serve(
    config: Config,
    grace: Duration,
    queues: Vec<String>,
    log_format: &'static str,
) -> anyhow::Result<ExitCode> {
    if let Some(addr) = config.listen {
        web::check_exposure(addr, config.api_token.is_some())?;
    }
    let (view, watched) = view::channel();
    let store = Store::open(&config.database_url).await?;
    // Bound before scheduling starts, so that a refused address stops the server at once.
    let web = match config.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the web UI and API (set --listen, ORCH_LISTEN or `listen:` to another address, or `off`)"))?;
            let state = WebState::new(Arc::new(config.clone()), store.clone(), watched);
            let local = listener.local_addr().unwrap_or(addr);
            tracing::info!(url = %format!("http://{local}/"), token = config.api_token.is_some(), "web UI and API listening");
            Some(tokio::spawn(web::serve(listener, state)))
        }
        None => None,
    };
    let pruning = config.retention.is_set().then(|| {
        tokio::spawn(crate::history_pruning::every_day(
            store.clone(),
            config.logs_dir.clone(),
            config.retention,
        ))
    });
    let services = crate::market::leader_services(&config, log_format)?;
    let outcome = scheduler::serve(
        config,
        ServeOptions {
            grace,
            queues,
            view,
            store,
            registry: Arc::new(crate::registry()),
            services,
        },
    )
    .await;
    for task in [web, pruning].into_iter().flatten() {
        task.abort();
    }
    outcome?;
    Ok(ExitCode::SUCCESS)
}
