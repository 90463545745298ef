//! `orch simulate binance`: a local Binance-compatible server for tests, demos and benchmarks.
//!
//! It serves the REST endpoints orch uses (`historicalTrades`, `trades`, `exchangeInfo`) with
//! Binance's shapes, weights, headers and error bodies, and the websocket trade streams
//! ([`stream`]), over a simulated market ([`market`]) or a replay of recorded trades
//! ([`replay`]). It also serves Mercado Bitcoin's REST v4 under `/api/v4`
//! ([`mercado_bitcoin`]): a book `BTCBRL` is MB's market `BTC-BRL`; and KuCoin's public spot
//! API with its websocket ([`kucoin`]): a book `BTCUSDT` is KuCoin's `BTC-USDT`. Tests drive
//! it through a small control API under `/_sim/`:
//!
//! - `POST /_sim/trades {"symbol": "BTCUSDT", "count": 5000}` adds trades now and returns
//!   their id range, so a test knows exactly which ids must land;
//! - `POST /_sim/faults {"rest": [{"status": 429, "retry_after": 1}, {"status": 503}]}` makes
//!   the next REST requests fail in that order (also `418`, any status with an error body
//!   `{"status": 400, "code": -1121, "msg": "..."}`, and `"delay_ms"` for a slow answer; a
//!   Mercado Bitcoin request answers a bare 429 with MB's throttle code, a bare 403 with
//!   Cloudflare's HTML block page, and sends `msg` as the body as it is);
//!   `{"stream": [{"kind": "drop"}, {"kind": "server_shutdown"}, {"kind": "ping"},
//!   {"kind": "raw", "text": "..."}, {"kind": "skip_ids", "symbol": "BTCUSDT", "count": 5},
//!   {"kind": "expire_tokens"}]}` acts on the open stream connections at once (a KuCoin
//!   request answers a fault with a `code` and status 200 as KuCoin's in-band failure);
//! - `GET /_sim/stats` returns the requests served and each symbol's id range.

mod json_socket;
mod kucoin;
mod market;
mod mercado_bitcoin;
mod replay;
mod rest;
mod stream;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use rand::Rng;
use serde::{Deserialize, Serialize};

pub use market::Market;
pub use stream::{StreamFault, StreamStats};

use crate::exchange::Trade;
use stream::StreamEvent;

/// Binance's request weight limit per minute per IP.
pub const BINANCE_WEIGHT_LIMIT: u32 = 6000;

/// How the simulator runs.
#[derive(Debug, Clone)]
pub struct SimulatorOptions {
    /// 0 picks a free port.
    pub port: u16,
    pub symbols: Vec<String>,
    /// Average trades per second per symbol generated in the background; 0 for none (tests
    /// add trades through the control API).
    pub rate: f64,
    pub seed: u64,
    /// Recorded trades to replay, per symbol (see [`replay`]).
    pub replay: Vec<(String, PathBuf)>,
    /// Request weight allowed per minute, as Binance's 6000; `None` for no limit (and no
    /// `X-MBX-USED-WEIGHT-1M` header), so benchmarks measure orch rather than the budget.
    pub weight_limit: Option<u32>,
    /// How the streams check that their clients are alive.
    pub keepalive: Keepalive,
}

/// A ping every `ping_every`; a connection without a pong for `pong_within` is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub ping_every: Duration,
    pub pong_within: Duration,
}

impl Keepalive {
    /// Binance's: a ping every 20 s, a cut after a minute without a pong.
    pub const BINANCE: Keepalive = Keepalive {
        ping_every: Duration::from_secs(20),
        pong_within: Duration::from_secs(60),
    };
}

/// A scripted failure of the next REST request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestFault {
    /// The HTTP status to answer with; 200 with `delay_ms` only slows the answer down.
    #[serde(default = "ok_status")]
    pub status: u16,
    /// Seconds for the `Retry-After` header (429 and 418).
    pub retry_after: Option<u64>,
    /// Error body `{"code", "msg"}` to send.
    pub code: Option<i64>,
    pub msg: Option<String>,
    /// Wait this long before answering.
    #[serde(default)]
    pub delay_ms: u64,
}

fn ok_status() -> u16 {
    200
}

/// Faults queued through `POST /_sim/faults`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultScript {
    #[serde(default)]
    pub rest: Vec<RestFault>,
    #[serde(default)]
    pub stream: Vec<StreamFault>,
}

/// Counters reported by `GET /_sim/stats`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub requests: u64,
    pub historical_trades_requests: u64,
    pub faults_served: u64,
}

pub(crate) struct SimState {
    pub market: Market,
    pub faults: VecDeque<RestFault>,
    pub stats: Stats,
    /// Request weight used in the current minute: (minute, weight).
    pub weight: (i64, u32),
    pub weight_limit: Option<u32>,
    pub streams: tokio::sync::broadcast::Sender<StreamEvent>,
    pub stream_stats: StreamStats,
    /// Trades still to keep off the streams, per symbol; `None` for every symbol.
    pub skip: HashMap<Option<String>, u64>,
    pub keepalive: Keepalive,
    /// When the last request of an API limited by requests a second was let through.
    pub last_paced_request: Option<std::time::Instant>,
    pub kucoin_tokens: kucoin::Tokens,
}

impl SimState {
    /// Adds `count` trades to `symbol` now and sends them on the streams.
    pub fn add_trades(&mut self, symbol: &str, count: usize, now_ms: i64) -> Option<(i64, i64)> {
        let range = self.market.generate(symbol, count, now_ms)?;
        self.publish(symbol, range);
        Some(range)
    }

    /// One tick of the background market: recorded trades that are due, else `count` new ones.
    fn tick(&mut self, count: usize, now_ms: i64) {
        let symbols: Vec<String> = self.market.symbols().map(|s| s.symbol.clone()).collect();
        for symbol in &symbols {
            let range = if self.market.is_replaying(symbol) {
                self.market.release_due(symbol, now_ms)
            } else if count > 0 {
                self.market.generate(symbol, count, now_ms)
            } else {
                None
            };
            if let Some(range) = range {
                self.publish(symbol, range);
            }
        }
    }

    /// Sends the trades of `symbol` with ids in `first..=last` to the open streams, less those
    /// a `skip_ids` fault holds back.
    fn publish(&mut self, symbol: &str, (first, last): (i64, i64)) {
        let count = usize::try_from(last - first + 1).unwrap_or(0);
        let mut trades = self
            .market
            .from_id(symbol, first, count)
            .unwrap_or_default();
        for key in [Some(symbol.to_string()), None] {
            if let Some(left) = self.skip.get_mut(&key) {
                let skipped = trades
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                trades.drain(..skipped);
                *left -= skipped as u64;
                self.stream_stats.trades_skipped += skipped as u64;
                if *left == 0 {
                    self.skip.remove(&key);
                }
            }
        }
        if !trades.is_empty() {
            // No receiver is no error: nobody is listening yet.
            let _ = self.streams.send(StreamEvent::Trades {
                symbol: symbol.to_string(),
                trades: trades.into(),
            });
        }
    }

    fn apply(&mut self, fault: StreamFault) {
        let event = match fault {
            StreamFault::Drop => StreamEvent::Drop,
            StreamFault::ServerShutdown => StreamEvent::ServerShutdown,
            StreamFault::Ping => StreamEvent::Ping,
            StreamFault::Raw { text } => StreamEvent::Raw(text),
            StreamFault::SkipIds { symbol, count } => {
                *self.skip.entry(symbol).or_default() += count;
                return;
            }
            StreamFault::ExpireTokens => {
                kucoin::expire_tokens(&mut self.kucoin_tokens);
                StreamEvent::ExpireTokens
            }
        };
        let _ = self.streams.send(event);
    }
}

/// The shared state behind every handler.
#[derive(Clone)]
pub(crate) struct Shared(Arc<Mutex<SimState>>);

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, SimState> {
        match self.0.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

/// A running simulator.
pub struct Simulator {
    pub addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
    generator: Option<tokio::task::JoinHandle<()>>,
}

impl Simulator {
    /// Binds to 127.0.0.1 and starts serving in the background.
    pub async fn start(options: &SimulatorOptions) -> anyhow::Result<Simulator> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.port))
            .await
            .with_context(|| format!("cannot listen on 127.0.0.1:{}", options.port))?;
        let addr = listener.local_addr()?;
        let mut symbols = options.symbols.clone();
        let mut recorded: Vec<(String, Vec<Trade>)> = Vec::new();
        for (symbol, path) in &options.replay {
            recorded.push((symbol.clone(), replay::load(path)?));
            if !symbols.contains(symbol) {
                symbols.push(symbol.clone());
            }
        }
        let mut market = Market::new(&symbols, options.seed);
        // Some history, so the first fetch of a symbol has trades to start from.
        let now = chrono::Utc::now().timestamp_millis();
        for symbol in &symbols {
            market.generate(symbol, 1000, now);
        }
        for (symbol, trades) in recorded {
            market.replay(&symbol, trades);
        }
        let replaying = !options.replay.is_empty();
        let shared = Shared(Arc::new(Mutex::new(SimState {
            market,
            faults: VecDeque::new(),
            stats: Stats::default(),
            weight: (0, 0),
            weight_limit: options.weight_limit,
            // Room for a few seconds of a busy market per lagging connection.
            streams: tokio::sync::broadcast::channel(4096).0,
            stream_stats: StreamStats::default(),
            skip: HashMap::new(),
            keepalive: options.keepalive,
            last_paced_request: None,
            kucoin_tokens: kucoin::Tokens::default(),
        })));
        let generator = (options.rate > 0.0 || replaying).then(|| {
            let shared = shared.clone();
            let rate = options.rate;
            tokio::spawn(generate_forever(shared, rate))
        });
        let app = rest::router(shared);
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "simulator stopped");
            }
        });
        Ok(Simulator {
            addr,
            server,
            generator,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The base of its websocket streams, as `BINANCE_WS_URL` takes it.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.server.abort();
        if let Some(generator) = &self.generator {
            generator.abort();
        }
    }
}

/// Adds trades ten times a second at `rate` per symbol on average, in bursts as real markets
/// trade: most ticks are quiet, some carry several times the average. Replayed symbols release
/// their recorded trades on the same ticks instead.
async fn generate_forever(shared: Shared, rate: f64) {
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let mut carry = 0.0_f64;
    loop {
        ticker.tick().await;
        let mut state = shared.lock();
        let now = chrono::Utc::now().timestamp_millis();
        let burst = {
            let mut rng = rand::rng();
            if rng.random_bool(0.1) {
                rng.random_range(2.0..6.0)
            } else {
                rng.random_range(0.3..1.0)
            }
        };
        carry += rate / 10.0 * burst;
        let count = carry as usize;
        carry -= count as f64;
        state.tick(count, now);
    }
}

/// `orch simulate binance`: serves until Ctrl-C or SIGTERM.
pub async fn run(options: SimulatorOptions) -> anyhow::Result<()> {
    let simulator = Simulator::start(&options).await?;
    // The first line of stdout is the URL, for scripts and tests that asked for port 0.
    println!("{}", simulator.url());
    tracing::info!(url = %simulator.url(), symbols = ?options.symbols, rate = options.rate, "Binance simulator listening");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
