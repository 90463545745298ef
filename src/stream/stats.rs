//! What a running stream reports: its state, throughput, freshness, latency and gaps.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Latency samples kept for the percentiles: the most recent trades only.
const LAG_SAMPLES: usize = 10_000;
/// Commits kept for the trades-per-second figure, over at most this many milliseconds.
const RATE_WINDOW_MS: i64 = 10_000;

/// The connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamState {
    #[default]
    Connecting,
    Connected,
    Reconnecting,
    Stopped,
}

impl StreamState {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Connecting => "connecting",
            StreamState::Connected => "connected",
            StreamState::Reconnecting => "reconnecting",
            StreamState::Stopped => "stopped",
        }
    }
}

/// A snapshot, as `orch streams` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamReport {
    /// Saved in its own column, and shown by `orch streams` with staleness taken into account.
    #[serde(skip)]
    pub state: StreamState,
    pub trades_committed: u64,
    pub trades_per_second: f64,
    /// Time of the newest committed trade, ms since the epoch.
    pub last_trade_time: Option<i64>,
    /// From a streamed trade's time to its commit, over the recent trades, ms.
    pub lag_p50_ms: Option<i64>,
    pub lag_p99_ms: Option<i64>,
    pub gaps_detected: u64,
    pub gap_trades_filled: u64,
    /// Catch-ups where the exchange's history no longer reached back to the last trade kept,
    /// so trades in between may be lost (KuCoin keeps its last 100).
    #[serde(default)]
    pub gaps_unbridged: u64,
    pub malformed_frames: u64,
    pub reconnects: u64,
}

/// Counters updated by the ingest loop.
#[derive(Debug)]
pub struct StreamStats {
    pub state: StreamState,
    pub trades_committed: u64,
    pub last_trade_time: Option<i64>,
    pub gaps_detected: u64,
    pub gap_trades_filled: u64,
    pub gaps_unbridged: u64,
    pub malformed_frames: u64,
    pub reconnects: u64,
    lags: VecDeque<i64>,
    /// (commit time ms, trades) of recent commits.
    commits: VecDeque<(i64, u64)>,
}

impl Default for StreamStats {
    fn default() -> StreamStats {
        StreamStats {
            state: StreamState::Connecting,
            trades_committed: 0,
            last_trade_time: None,
            gaps_detected: 0,
            gap_trades_filled: 0,
            gaps_unbridged: 0,
            malformed_frames: 0,
            reconnects: 0,
            lags: VecDeque::new(),
            commits: VecDeque::new(),
        }
    }
}

impl StreamStats {
    /// Records a commit at `now_ms` of `trades` trades, of which the streamed ones (not the
    /// backfilled) happened at `streamed_times`.
    pub fn committed(
        &mut self,
        now_ms: i64,
        trades: u64,
        newest: Option<i64>,
        streamed_times: &[i64],
    ) {
        self.trades_committed += trades;
        self.last_trade_time = self.last_trade_time.max(newest);
        for time in streamed_times {
            self.lags.push_back((now_ms - time).max(0));
        }
        while self.lags.len() > LAG_SAMPLES {
            self.lags.pop_front();
        }
        self.commits.push_back((now_ms, trades));
        while self
            .commits
            .front()
            .is_some_and(|(at, _)| now_ms - at > RATE_WINDOW_MS)
        {
            self.commits.pop_front();
        }
    }

    pub fn report(&self, now_ms: i64) -> StreamReport {
        let mut lags: Vec<i64> = self.lags.iter().copied().collect();
        lags.sort_unstable();
        let percentile = |p: f64| -> Option<i64> {
            let last = lags.len().checked_sub(1)?;
            lags.get(((last as f64) * p).round() as usize).copied()
        };
        let recent: u64 = self
            .commits
            .iter()
            .filter(|(at, _)| now_ms - at <= RATE_WINDOW_MS)
            .map(|(_, n)| n)
            .sum();
        let window_ms = self.commits.front().map_or(RATE_WINDOW_MS, |(first, _)| {
            (now_ms - first).clamp(1_000, RATE_WINDOW_MS)
        });
        StreamReport {
            state: self.state,
            trades_committed: self.trades_committed,
            trades_per_second: recent as f64 * 1000.0 / window_ms as f64,
            last_trade_time: self.last_trade_time,
            lag_p50_ms: percentile(0.50),
            lag_p99_ms: percentile(0.99),
            gaps_detected: self.gaps_detected,
            gap_trades_filled: self.gap_trades_filled,
            gaps_unbridged: self.gaps_unbridged,
            malformed_frames: self.malformed_frames,
            reconnects: self.reconnects,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_rate_come_from_recent_commits() {
        let mut stats = StreamStats::default();
        let times: Vec<i64> = (0..100).map(|i| 10_000 - i).collect();
        stats.committed(10_000, 100, Some(10_000), &times);
        stats.committed(12_000, 50, Some(11_990), &[]);
        let report = stats.report(12_000);
        assert_eq!(report.trades_committed, 150);
        assert_eq!(report.last_trade_time, Some(11_990));
        assert_eq!(report.lag_p50_ms, Some(50));
        assert_eq!(report.lag_p99_ms, Some(98));
        assert!((report.trades_per_second - 75.0).abs() < 1e-9, "{report:?}");
        assert_eq!(StreamStats::default().report(0).lag_p99_ms, None);
    }
}
