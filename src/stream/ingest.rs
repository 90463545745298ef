//! The ingest loop of a live trade stream: connect, read, batch, commit, fill gaps, and
//! reconnect, until asked to stop, whichever exchange ([`LiveTrades`]) it follows.
//!
//! On every (re)connection each symbol first catches up from its last staged id through the
//! exchange's REST history, so neither an outage nor a `kill -9` (which loses at most the
//! uncommitted batch) leaves a hole the exchange can still fill. Where ids are consecutive per
//! symbol (Binance), the loop also knows the next id it should see: a trade past it means the
//! stream skipped ids (a slow consumer, a server hiccup), and the missing ids are fetched
//! before the trade is taken. Where ids are not consecutive (KuCoin, Mercado Bitcoin), a lost
//! frame does not show in the stream: every few seconds the trades taken are checked against
//! the REST history, and those the socket missed are taken then. Where the history is too
//! short to reach back (KuCoin keeps 100 trades), the catch-up says so, and the gap is counted
//! and logged with its bounds. Staging inserts ignore ids already there, so overlaps write
//! nothing twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::lake_copy::{CopyCeiling, LakeCopier};
use super::stats::{StreamState, StreamStats};
use super::{Source, StreamDef};
use crate::backoff::Backoff;
use crate::exchange::Trade;
use crate::exchange::binance::stream::BinanceLive;
use crate::exchange::binance::{BinanceClient, RetryPolicy};
use crate::exchange::kucoin::{KucoinClient, KucoinLive};
use crate::exchange::live::{Incoming, LiveMessage, LiveTrades, ReadConnection};
use crate::exchange::mercado_bitcoin::{MercadoBitcoinClient, MercadoBitcoinLive};
use crate::staging::{StagedTrade, Staging};
use crate::trade_bus::{BusError, TradeBus};

/// A connection that says nothing (not even a ping) this long is presumed dead.
const SILENCE: Duration = Duration::from_secs(60);
/// Reconnects wait 0.5 s, 1 s, ... up to a minute, ±25% so that clients cut together do not
/// come back together.
const RECONNECT: Backoff =
    Backoff::new(Duration::from_millis(500), Duration::from_secs(60)).with_jitter(0.25);

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("stream `{stream}`: {message}")]
    Setup { stream: String, message: String },
    #[error("stream `{stream}`: cannot commit to the staging store: {source}")]
    Staging {
        stream: String,
        source: crate::staging::StagingError,
    },
    #[error("stream `{stream}`: cannot publish to the trade bus after {tries} tries: {source}")]
    Bus {
        stream: String,
        tries: u32,
        source: BusError,
    },
}

/// Tries of a batch's publishing before the stream stops (about two minutes with
/// [`RECONNECT`]'s waits); its trades are not committed, so the restarted stream catches up
/// and publishes them again, and JetStream drops those it had.
const PUBLISH_TRIES: u32 = 8;

/// Where a stream's trades come from and go to, resolved from the configuration.
pub struct IngestPlaces {
    pub ws_url: String,
    pub api_url: String,
    pub kucoin_api_url: String,
    pub mercado_bitcoin_api_url: String,
    pub mercado_bitcoin_ws_url: String,
    pub staging_url: String,
    pub nats_url: String,
    pub lake_url: String,
}

impl IngestPlaces {
    /// The places the configuration names.
    pub fn of(data: &crate::config::DataPlaces) -> IngestPlaces {
        IngestPlaces {
            ws_url: data.binance_ws_url.clone(),
            api_url: data.binance_api_url.clone(),
            kucoin_api_url: data.kucoin_api_url.clone(),
            mercado_bitcoin_api_url: data.mercado_bitcoin_api_url.clone(),
            mercado_bitcoin_ws_url: data.mercado_bitcoin_ws_url.clone(),
            staging_url: data.staging_url.clone(),
            nats_url: data.nats_url.clone(),
            lake_url: data.lake_url.clone(),
        }
    }
}

/// Shared with whoever reports on the stream (`orch streams`, the log).
pub type SharedStats = Arc<Mutex<StreamStats>>;

/// The value behind a mutex of the stream's, whether or not a panic poisoned it: figures
/// and marks stay usable.
pub fn lock<T>(shared: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match shared.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Runs `def` until `stop` turns true; flushes the pending batch before returning.
pub async fn run(
    def: &StreamDef,
    places: &IngestPlaces,
    stats: SharedStats,
    stop: watch::Receiver<bool>,
) -> Result<(), IngestError> {
    let setup = |message: String| IngestError::Setup {
        stream: def.id.clone(),
        message,
    };
    let symbols = def.source.symbols();
    let live = live_trades(&def.source, places).map_err(setup)?;
    let exchange = live.exchange();
    let staging_url = def
        .sink
        .url
        .clone()
        .unwrap_or_else(|| places.staging_url.clone());
    // A stream name for an unknown symbol is accepted and silent: ask the exchange first.
    crate::exchange::check_listed(live.catalog(), exchange, symbols)
        .await
        .map_err(|e| setup(e.to_string()))?;
    let staging = Staging::open(&staging_url, &def.sink.table)
        .await
        .map_err(|e| setup(e.to_string()))?;
    let bus = match &def.publish {
        Some(publish) => {
            let url = publish.url.as_deref().unwrap_or(&places.nats_url);
            Some(
                TradeBus::connect(url)
                    .await
                    .map_err(|e| setup(e.to_string()))?,
            )
        }
        None => None,
    };
    let mut last = BTreeMap::new();
    for symbol in symbols {
        if let Some(id) = staging
            .last_id(exchange, symbol)
            .await
            .map_err(|e| setup(e.to_string()))?
        {
            last.insert(symbol.clone(), id);
        }
    }
    // Where the last process's checks against REST left off, as far as can be told: what it
    // committed at least two check intervals before it stopped was checked.
    let mut rechecked = BTreeMap::new();
    if let Some(every) = live.recheck_every() {
        let window = i64::try_from(every.as_millis() * 2).unwrap_or(i64::MAX);
        for symbol in symbols {
            if let Some(start) = staging
                .recheck_from(exchange, symbol, window)
                .await
                .map_err(|e| setup(e.to_string()))?
            {
                rechecked.insert(symbol.clone(), start);
            }
        }
    }
    // Where commits can land below the newest trade (the checks against REST), the lake
    // copy takes only what was checked.
    let ceiling: Option<CopyCeiling> =
        (def.lake.is_some() && live.recheck_every().is_some()).then(|| {
            let checked = rechecked
                .iter()
                .map(|(symbol, (through, _))| (symbol.clone(), *through))
                .collect();
            Arc::new(Mutex::new(checked))
        });
    // The lake copy stops after the connections, to copy their last batches too.
    let (copy_stop_tx, copy_stop) = watch::channel(false);
    let copying = match &def.lake {
        Some(copy) => {
            let lake =
                crate::lake::Lake::open(&places.lake_url).map_err(|e| setup(e.to_string()))?;
            let copier = LakeCopier {
                stream: def.id.clone(),
                exchange,
                symbols: symbols.to_vec(),
                staging: staging.clone(),
                lake,
                prefix: copy.prefix.clone(),
                every: copy.every,
                ceiling: ceiling.clone(),
            };
            Some(tokio::spawn(copier.run(copy_stop)))
        }
        None => None,
    };
    let mut connections = Vec::new();
    for chunk in symbols.chunks(live.symbols_per_connection()) {
        let mut ingest = Ingest {
            stream: def.id.clone(),
            live: Arc::clone(&live),
            exchange,
            symbols: chunk.to_vec(),
            staging: staging.clone(),
            bus: bus.clone(),
            max_rows: def.batch.max_rows,
            max_latency: def.batch.max_latency,
            next_id: chunk
                .iter()
                .filter_map(|s| last.get(s).map(|id| (s.clone(), id + 1)))
                .collect(),
            pending: Vec::new(),
            streamed_times: Vec::new(),
            pending_since: None,
            copy_ceiling: ceiling.clone(),
            recheck_at: None,
            rechecked: rechecked
                .iter()
                .filter(|(symbol, _)| chunk.contains(symbol))
                .map(|(symbol, (through, taken))| {
                    let recheck = Recheck {
                        through: *through,
                        taken: taken.iter().copied().collect(),
                        recorded: Some(*through),
                    };
                    (symbol.clone(), recheck)
                })
                .collect(),
            stats: Arc::clone(&stats),
        };
        let stop = stop.clone();
        connections.push(async move { ingest.run(stop).await });
    }
    let results = futures_util::future::join_all(connections).await;
    if let Some(copying) = copying {
        let _ = copy_stop_tx.send(true);
        if let Err(e) = copying.await {
            tracing::warn!(stream = %def.id, error = %e, "the lake copy stopped abnormally");
        }
    }
    lock(&stats).state = StreamState::Stopped;
    results.into_iter().collect()
}

/// The exchange a stream's source follows, with the places the configuration names.
fn live_trades(source: &Source, places: &IngestPlaces) -> Result<Arc<dyn LiveTrades>, String> {
    Ok(match source {
        Source::Binance {
            ws_url, base_url, ..
        } => {
            let api_url = base_url.as_deref().unwrap_or(&places.api_url);
            Arc::new(BinanceLive {
                client: BinanceClient::new(api_url, RetryPolicy::default())
                    .map_err(|e| e.to_string())?,
                ws_url: ws_url.clone().unwrap_or_else(|| places.ws_url.clone()),
            })
        }
        Source::MercadoBitcoin {
            ws_url, base_url, ..
        } => {
            let api_url = base_url
                .as_deref()
                .unwrap_or(&places.mercado_bitcoin_api_url);
            Arc::new(MercadoBitcoinLive {
                client: MercadoBitcoinClient::new(api_url, Default::default())
                    .map_err(|e| e.to_string())?,
                ws_url: ws_url
                    .clone()
                    .unwrap_or_else(|| places.mercado_bitcoin_ws_url.clone()),
            })
        }
        Source::Kucoin { base_url, .. } => {
            let api_url = base_url.as_deref().unwrap_or(&places.kucoin_api_url);
            Arc::new(KucoinLive::new(
                KucoinClient::new(api_url, Default::default()).map_err(|e| e.to_string())?,
            ))
        }
    })
}

/// One connection's worth of symbols.
struct Ingest {
    stream: String,
    live: Arc<dyn LiveTrades>,
    exchange: &'static str,
    symbols: Vec<String>,
    staging: Staging,
    bus: Option<TradeBus>,
    max_rows: usize,
    max_latency: Duration,
    /// The next id expected per symbol; absent until the symbol's first trade or staged id.
    next_id: BTreeMap<String, i64>,
    pending: Vec<StagedTrade>,
    /// Trade times of the pending trades that came over the stream, for the latency figures.
    streamed_times: Vec<i64>,
    pending_since: Option<Instant>,
    /// Per symbol, where the exchange's stream cannot show a lost frame: how far the trades
    /// taken were checked against REST.
    rechecked: BTreeMap<String, Recheck>,
    /// Where the lake copy may go, raised after each check's commit.
    copy_ceiling: Option<CopyCeiling>,
    /// When the next check against REST is due.
    recheck_at: Option<Instant>,
    stats: SharedStats,
}

/// A symbol's check of the socket's trades against REST.
#[derive(Debug, Default)]
struct Recheck {
    /// Every trade up to this id was checked.
    through: i64,
    /// The ids taken above it.
    taken: BTreeSet<i64>,
    /// The mark last recorded in the staging store.
    recorded: Option<i64>,
}

/// Why a connection ended.
enum Ended {
    Stop,
    Reconnect(String),
    /// Renewed before the exchange's own cut: reconnect at once.
    Renew(String),
}

/// A connection that lasted this long was a working one: the next failure starts the
/// backoff over. One that fails sooner (an error frame right after the subscription, a
/// catch-up refused) backs off further each time, so that it never reconnects in a loop.
const STEADY: Duration = Duration::from_secs(30);

impl Ingest {
    async fn run(&mut self, mut stop: watch::Receiver<bool>) -> Result<(), IngestError> {
        let mut failures = 0;
        loop {
            if *stop.borrow() {
                return self.flush().await;
            }
            let connection = tokio::select! {
                connection = self.live.connect(&self.symbols, SILENCE) => connection,
                _ = stop.changed() => return self.flush().await,
            };
            let ended = match connection {
                Ok(connection) => {
                    lock(&self.stats).state = StreamState::Connected;
                    tracing::info!(stream = %self.stream, symbols = ?self.symbols, "stream connected");
                    let opened = Instant::now();
                    let ended = self.read(connection, &mut stop).await?;
                    if opened.elapsed() >= STEADY {
                        failures = 0;
                    }
                    ended
                }
                Err(e) => Ended::Reconnect(e),
            };
            match ended {
                Ended::Stop => return self.flush().await,
                Ended::Renew(reason) => {
                    self.flush().await?;
                    lock(&self.stats).reconnects += 1;
                    tracing::info!(stream = %self.stream, %reason, "stream renewing its connection");
                }
                Ended::Reconnect(reason) => {
                    self.flush().await?;
                    {
                        let mut stats = lock(&self.stats);
                        stats.state = StreamState::Reconnecting;
                        stats.reconnects += 1;
                    }
                    failures += 1;
                    let wait = RECONNECT.delay(failures);
                    tracing::warn!(stream = %self.stream, %reason, ?wait, "stream reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => return self.flush().await,
                    }
                }
            }
        }
    }

    /// Reads one connection until it ends; catches every symbol up from the REST API first.
    /// The socket is read on a task of its own the whole time, so a catch-up or a gap
    /// backfill, however long, never leaves the server's pings unanswered.
    async fn read(
        &mut self,
        mut connection: ReadConnection,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Ended, IngestError> {
        let opened = Instant::now();
        let renew_after = self.live.renew_after();
        let recheck_every = self.live.recheck_every();
        // Kept across connections: connections that never last an interval must not keep the
        // checks from running.
        let mut recheck_at = *self
            .recheck_at
            .get_or_insert_with(|| opened + recheck_every.unwrap_or(SILENCE));
        for symbol in self.symbols.clone() {
            if *stop.borrow() {
                connection.close().await;
                return Ok(Ended::Stop);
            }
            if let Some(&from) = self.next_id.get(&symbol)
                && let Err(e) = self.backfill(&symbol, from, None).await
            {
                connection.close().await;
                return Ok(Ended::Reconnect(e));
            }
        }
        loop {
            let flush_at = self
                .pending_since
                .map(|since| since + self.max_latency)
                .unwrap_or_else(|| Instant::now() + SILENCE);
            let incoming = tokio::select! {
                _ = stop.changed() => {
                    connection.close().await;
                    return Ok(Ended::Stop);
                }
                _ = tokio::time::sleep_until(flush_at), if self.pending_since.is_some() => {
                    self.flush().await?;
                    continue;
                }
                _ = tokio::time::sleep_until(recheck_at), if recheck_every.is_some() => {
                    self.recheck(stop).await?;
                    recheck_at = Instant::now() + recheck_every.unwrap_or(SILENCE);
                    self.recheck_at = Some(recheck_at);
                    continue;
                }
                _ = tokio::time::sleep_until(opened + renew_after) => {
                    connection.close().await;
                    return Ok(Ended::Renew(format!(
                        "renewing after {renew_after:?}, before {}'s cut",
                        self.exchange
                    )));
                }
                incoming = connection.next() => incoming,
            };
            let message = match incoming {
                Incoming::Ended(reason) => return Ok(Ended::Reconnect(reason)),
                Incoming::Message(message) => message,
            };
            match message {
                LiveMessage::Trade { symbol, trade } => {
                    if let Err(e) = self.take(symbol, trade).await {
                        connection.close().await;
                        return Ok(Ended::Reconnect(e));
                    }
                    if self.pending.len() >= self.max_rows {
                        self.flush().await?;
                    }
                }
                LiveMessage::Reconnect(reason) => {
                    connection.close().await;
                    return Ok(Ended::Reconnect(reason));
                }
                LiveMessage::Alive => {}
                LiveMessage::Malformed { text, reason } => {
                    lock(&self.stats).malformed_frames += 1;
                    tracing::warn!(stream = %self.stream, %reason, frame = %text, "malformed frame skipped");
                }
            }
        }
    }

    /// Takes a streamed trade, first fetching any ids the stream skipped before it.
    async fn take(&mut self, symbol: String, trade: Trade) -> Result<(), String> {
        if !self.symbols.contains(&symbol) {
            lock(&self.stats).malformed_frames += 1;
            tracing::warn!(stream = %self.stream, %symbol, "a trade of a symbol not subscribed, skipped");
            return Ok(());
        }
        match self.next_id.get(&symbol).copied() {
            Some(next) if trade.id < next => return Ok(()),
            Some(next) if trade.id > next && self.live.consecutive_ids() => {
                let missing = trade.id - next;
                tracing::info!(stream = %self.stream, %symbol, from = next, to = trade.id - 1, missing, "gap in the stream; fetching the missing trades");
                lock(&self.stats).gaps_detected += 1;
                self.backfill(&symbol, next, Some(trade.id - 1)).await?;
            }
            _ => {}
        }
        if self.pending.is_empty() {
            self.pending_since = Some(Instant::now());
        }
        self.next_id.insert(symbol.clone(), trade.id + 1);
        self.note_taken(&symbol, trade.id);
        self.streamed_times.push(trade.time_ms);
        self.pending.push(StagedTrade { symbol, trade });
        Ok(())
    }

    /// Fetches `symbol`'s trades from `from` through `until` (or until caught up) into the
    /// pending batch, committing full batches on the way.
    async fn backfill(
        &mut self,
        symbol: &str,
        from: i64,
        until: Option<i64>,
    ) -> Result<(), String> {
        let mut next = from;
        let mut filled = 0_u64;
        loop {
            let page = self
                .live
                .history()
                .trades_after(symbol, next - 1)
                .await
                .map_err(|e| format!("backfilling {symbol} from id {next}: {e}"))?;
            if page.history_cut
                && let Some(first) = page.trades.first()
            {
                lock(&self.stats).gaps_unbridged += 1;
                tracing::warn!(
                    stream = %self.stream,
                    %symbol,
                    after = next - 1,
                    first_available = first.id,
                    "the exchange's history no longer reaches back to the last trade kept: trades between the two may be lost"
                );
            }
            let short = !page.more;
            for trade in page.trades {
                if until.is_some_and(|until| trade.id > until) {
                    break;
                }
                next = trade.id + 1;
                self.note_taken(symbol, trade.id);
                filled += 1;
                if self.pending.is_empty() {
                    self.pending_since = Some(Instant::now());
                }
                self.pending.push(StagedTrade {
                    symbol: symbol.to_string(),
                    trade,
                });
            }
            self.next_id.insert(symbol.to_string(), next);
            if self.pending.len() >= self.max_rows {
                self.flush().await.map_err(|e| e.to_string())?;
            }
            if short || until.is_some_and(|until| next > until) {
                break;
            }
        }
        if filled > 0 {
            lock(&self.stats).gap_trades_filled += filled;
            tracing::info!(stream = %self.stream, %symbol, from, filled, "backfilled from the REST API");
        }
        Ok(())
    }

    /// Remembers a trade taken, for the checks against REST where the exchange has them.
    fn note_taken(&mut self, symbol: &str, id: i64) {
        if self.live.recheck_every().is_none() {
            return;
        }
        let recheck = self
            .rechecked
            .entry(symbol.to_string())
            .or_insert_with(|| Recheck {
                through: id.saturating_sub(1),
                taken: BTreeSet::new(),
                recorded: None,
            });
        if id > recheck.through {
            recheck.taken.insert(id);
        }
    }

    /// Checks each symbol's trades taken since the last check against the REST history, and
    /// takes those the socket missed. A REST failure is logged and the check tried again next
    /// time; only a failed commit ends the stream. The pending batch is committed between
    /// symbols when it is due, so a slow round of checks holds no trade back.
    async fn recheck(&mut self, stop: &watch::Receiver<bool>) -> Result<(), IngestError> {
        for symbol in self.symbols.clone() {
            // A stop is not held up by a round of checks at an exchange's pace; the next
            // process checks the rest.
            if *stop.borrow() {
                break;
            }
            if self
                .pending_since
                .is_some_and(|since| since.elapsed() >= self.max_latency)
            {
                self.flush().await?;
            }
            let (Some(recheck), Some(&next)) =
                (self.rechecked.get(&symbol), self.next_id.get(&symbol))
            else {
                continue;
            };
            let through = recheck.through;
            if next - 1 <= through {
                continue;
            }
            let page = match self.live.history().trades_after(&symbol, through).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(stream = %self.stream, %symbol, error = %e, "cannot check the streamed trades against REST; trying again later");
                    continue;
                }
            };
            if page.history_cut {
                tracing::debug!(stream = %self.stream, %symbol, after = through, "the REST history no longer reaches back to the last check; checking what it holds");
            }
            let mut checked = through;
            let mut missed = Vec::new();
            for trade in page.trades {
                // The socket has not passed it yet.
                if trade.id >= next {
                    break;
                }
                checked = trade.id;
                if !recheck.taken.contains(&trade.id) {
                    missed.push(trade);
                }
            }
            if let Some(recheck) = self.rechecked.get_mut(&symbol) {
                recheck.through = checked;
                recheck.taken.retain(|id| *id > checked);
            }
            let (Some(first), Some(last)) = (missed.first(), missed.last()) else {
                continue;
            };
            tracing::warn!(
                stream = %self.stream,
                %symbol,
                missed = missed.len(),
                first = first.id,
                last = last.id,
                "the socket missed trades, found by the check against REST; taking them"
            );
            {
                let mut stats = lock(&self.stats);
                stats.gaps_detected += 1;
                stats.gap_trades_filled += missed.len() as u64;
            }
            if self.pending.is_empty() {
                self.pending_since = Some(Instant::now());
            }
            self.pending
                .extend(missed.into_iter().map(|trade| StagedTrade {
                    symbol: symbol.clone(),
                    trade,
                }));
            if self.pending.len() >= self.max_rows {
                self.flush().await?;
            }
        }
        // What was checked is all taken; once committed, the marks can be recorded (a
        // restart resumes the checks there) and the lake copy may take it.
        self.flush().await?;
        for (symbol, recheck) in self.rechecked.iter_mut() {
            if recheck.recorded == Some(recheck.through) {
                continue;
            }
            match self
                .staging
                .set_checked_through(self.exchange, symbol, recheck.through)
                .await
            {
                Ok(()) => recheck.recorded = Some(recheck.through),
                Err(e) => {
                    tracing::warn!(stream = %self.stream, %symbol, error = %e, "cannot record how far the trades were checked; a restart checks them again")
                }
            }
        }
        if let Some(ceiling) = &self.copy_ceiling {
            let mut ceiling = lock(ceiling);
            for (symbol, recheck) in &self.rechecked {
                ceiling.insert(symbol.clone(), recheck.through);
            }
        }
        Ok(())
    }

    /// Commits the pending batch.
    async fn flush(&mut self) -> Result<(), IngestError> {
        self.pending_since = None;
        if self.pending.is_empty() {
            return Ok(());
        }
        // Published first: a batch published but not committed is fetched and published
        // again after a restart (JetStream drops the copies); one committed but not
        // published would never be.
        if let Some(bus) = &self.bus {
            let mut tries = 0;
            while let Err(source) = bus.publish(self.exchange, &self.pending).await {
                tries += 1;
                if tries >= PUBLISH_TRIES {
                    return Err(IngestError::Bus {
                        stream: self.stream.clone(),
                        tries,
                        source,
                    });
                }
                let wait = RECONNECT.delay(tries);
                tracing::warn!(stream = %self.stream, error = %source, ?wait, "publishing to the trade bus failed; trying again");
                tokio::time::sleep(wait).await;
            }
        }
        let now = chrono::Utc::now().timestamp_millis();
        self.staging
            .insert(self.exchange, &self.pending, now)
            .await
            .map_err(|source| IngestError::Staging {
                stream: self.stream.clone(),
                source,
            })?;
        let committed_at = chrono::Utc::now().timestamp_millis();
        let newest = self.pending.iter().map(|t| t.trade.time_ms).max();
        lock(&self.stats).committed(
            committed_at,
            self.pending.len() as u64,
            newest,
            &self.streamed_times,
        );
        self.pending.clear();
        self.streamed_times.clear();
        Ok(())
    }
}
