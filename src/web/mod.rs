//! The web face of `orch serve`: the REST API under `/api/v1` (described by
//! `/api/v1/openapi.json`), the UI's pages and assets, `/healthz` and `/metrics`.
//!
//! Handlers are thin: they check the request, call the [`Store`] or the scheduler's
//! [`view`](crate::scheduler::view), and shape JSON. Access is decided once, in [`auth`]:
//! loopback without a token, a bearer token or a signed-in session otherwise, and a CSRF check
//! on every request that changes something.

mod api;
mod assets;
mod auth;
mod error;
mod health;
mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use crate::config::Config;
use crate::scheduler::view::ViewReceiver;
use crate::store::Store;

pub use auth::Sessions;
pub use error::ApiError;

/// What every handler reads.
#[derive(Clone)]
pub struct WebState {
    pub config: Arc<Config>,
    pub store: Store,
    pub view: ViewReceiver,
    pub sessions: Arc<Sessions>,
    pub registry: Arc<crate::tasks::Registry>,
    /// Triggers' admission against `max_pending_runs`.
    pub admission: Arc<crate::manual_actions::Admission>,
}

impl WebState {
    pub fn new(config: Arc<Config>, store: Store, view: ViewReceiver) -> WebState {
        WebState {
            sessions: Arc::new(Sessions::new(config.api_token.clone())),
            config,
            store,
            view,
            registry: Arc::new(crate::registry()),
            admission: Arc::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to serve the web UI and API on {addr} without a token: anyone who can reach it could trigger and cancel runs. Set ORCH_API_TOKEN (or ORCH_API_TOKEN_FILE, or `api_token_file:` in orch.yaml), or listen on loopback (127.0.0.1:8080)"
)]
pub struct Exposed {
    addr: SocketAddr,
}

/// Refuses an address other hosts can reach unless a token guards it.
pub fn check_exposure(addr: SocketAddr, has_token: bool) -> Result<(), Exposed> {
    if addr.ip().is_loopback() || has_token {
        Ok(())
    } else {
        Err(Exposed { addr })
    }
}

/// Every route: the API, the pages, health and metrics.
pub fn router(state: WebState) -> Router {
    let api = Router::new()
        .route("/openapi.json", get(api::openapi))
        .route("/session", get(api::session))
        .route("/dags", get(api::dags::list))
        .route("/dags/{dag_id}", get(api::dags::one))
        .route("/dags/{dag_id}/grid", get(api::dags::grid))
        .route("/dags/{dag_id}/pause", post(api::dags::pause))
        .route("/dags/{dag_id}/unpause", post(api::dags::unpause))
        .route("/dags/{dag_id}/runs", post(api::dags::trigger))
        .route("/runs", get(api::runs::list))
        .route("/runs/{run_id}", get(api::runs::one))
        .route("/runs/{run_id}/cancel", post(api::runs::cancel))
        .route("/runs/{run_id}/clear", post(api::runs::clear))
        .route("/runs/{run_id}/tasks/{task_id}/mark", post(api::runs::mark))
        .route(
            "/runs/{run_id}/tasks/{task_id}/attempts/{attempt}/log",
            get(api::logs::range),
        )
        .route(
            "/runs/{run_id}/tasks/{task_id}/attempts/{attempt}/log/follow",
            get(api::logs::follow),
        )
        .route("/streams", get(api::streams::list))
        .route(
            "/backfills",
            get(api::backfills::list).post(api::backfills::create),
        )
        .route("/backfills/{backfill_id}", get(api::backfills::one))
        .route("/data/trades", get(api::data::trades))
        .fallback(api::not_found);
    let pages = Router::new()
        .route("/", get(assets::page))
        .route("/dags/{*rest}", get(assets::page))
        .route("/runs/{*rest}", get(assets::page))
        .route("/streams", get(assets::page))
        .route("/data", get(assets::page))
        .route("/assets/{file}", get(assets::asset))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout));
    Router::new()
        .nest("/api/v1", api)
        .merge(pages)
        .route("/metrics", get(metrics::metrics))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
        // Load balancers and Docker's HEALTHCHECK ask without credentials.
        .route("/healthz", get(health::healthz))
        .layer(axum::middleware::from_fn(assets::security_headers))
        .with_state(state)
}

/// Serves until the task is aborted. Each connection must send a request's headers within
/// `header_timeout` (axum's own server sets no limit: a client trickling a header line at a
/// time held its connection for ever).
pub async fn serve(listener: tokio::net::TcpListener, state: WebState) {
    let header_timeout = state.config.http_header_timeout;
    let app = router(state);
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: wait for connections to close.
                tracing::warn!(error = %e, "cannot accept a web connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |mut request: axum::http::Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(remote));
                    tower::ServiceExt::oneshot(app.clone(), request.map(axum::body::Body::new))
                },
            );
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = connection.await {
                tracing::debug!(%remote, error = %e, "web connection ended");
            }
        });
    }
}
