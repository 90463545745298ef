//! Live streams: long-running ingestion declared in YAML next to the DAGs.
//!
//! ```yaml
//! id: binance_trade_stream
//! stream:
//!   source: { kind: binance.trades, symbols: [BTCUSDT, AAVEUSDT, STXUSDT, ARBUSDT] }
//!   # or { kind: kucoin.trades, symbols: [BTC-USDT, ETH-USDT] }
//!   # or { kind: mercado_bitcoin.trades, symbols: [BTC-BRL, ETH-BRL] }
//!   sink: { table: raw_trades }          # in the staging store
//!   batch: { max_rows: 1000, max_latency: 500ms }
//!   publish: { url: nats://127.0.0.1:4222 }  # optional: also to NATS JetStream
//!   lake: { every: 5s }  # optional: also to the lake, raw/<exchange>_stream_trades
//! ```
//!
//! A file is a stream, not a DAG, when its top level has `stream:`. [`ingest`] keeps the
//! source's connection open and commits its trades to the staging store in batches, filling
//! every gap in the trade ids from the exchange's REST API, and with `publish:` sends each
//! batch to the trade bus ([`crate::trade_bus`]) before committing it; with `lake:`, [`lake_copy`]
//! copies what is committed into the lake every few seconds; [`stats`] measures it;
//! [`reported`] runs one stream in a process, saving its report; [`supervisor`] keeps the
//! folder's streams running under `orch serve`, each in a process of its own.

pub mod ingest;
pub mod lake_copy;
pub mod reported;
pub mod service;
pub mod stats;
pub mod supervisor;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::dag::{LoadError, Problem};

/// A validated stream definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamDef {
    pub id: String,
    pub path: PathBuf,
    pub description: Option<String>,
    pub source: Source,
    pub sink: Sink,
    pub batch: Batch,
    /// Also publish every trade to the trade bus.
    pub publish: Option<Publish>,
    /// Also copy committed trades into the lake.
    pub lake: Option<LakeCopy>,
}

/// Where and how often a stream copies its committed trades into the lake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeCopy {
    /// The lake prefix of the raw files (`symbol=`/`date=` partitions).
    pub prefix: String,
    pub every: Duration,
}

/// The trade bus a stream publishes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// The NATS server; `ORCH_NATS_URL` when absent.
    pub url: Option<String>,
}

/// Where trades come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Binance's `<symbol>@trade` streams.
    Binance {
        symbols: Vec<String>,
        /// Overrides `BINANCE_WS_URL`.
        ws_url: Option<String>,
        /// Overrides `BINANCE_API_URL` (validation and gap backfill).
        base_url: Option<String>,
    },
    /// Mercado Bitcoin's websocket `trade` subscriptions, markets as its REST writes them
    /// (`BTC-BRL`).
    MercadoBitcoin {
        symbols: Vec<String>,
        /// Overrides `MERCADO_BITCOIN_WS_URL`.
        ws_url: Option<String>,
        /// Overrides `MERCADO_BITCOIN_API_URL` (catalog and catch-up).
        base_url: Option<String>,
    },
    /// KuCoin's `/market/match` topic, symbols as KuCoin writes them (`BTC-USDT`).
    Kucoin {
        symbols: Vec<String>,
        /// Overrides `KUCOIN_API_URL` (token, catalog, and the REST bridge); the websocket's
        /// address comes with each token.
        base_url: Option<String>,
    },
}

impl Source {
    /// The exchange it follows, as staging rows name it.
    pub fn exchange(&self) -> &'static str {
        match self {
            Source::Binance { .. } => "binance",
            Source::MercadoBitcoin { .. } => "mercado_bitcoin",
            Source::Kucoin { .. } => "kucoin",
        }
    }

    /// The symbols it streams.
    pub fn symbols(&self) -> &[String] {
        match self {
            Source::Binance { symbols, .. }
            | Source::MercadoBitcoin { symbols, .. }
            | Source::Kucoin { symbols, .. } => symbols,
        }
    }
}

/// The staging table trades go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sink {
    pub table: String,
    /// Overrides `ORCH_STAGING_URL`.
    pub url: Option<String>,
}

/// When a batch is committed: at `max_rows`, or once its oldest trade waited `max_latency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub max_rows: usize,
    pub max_latency: Duration,
}

impl Default for Batch {
    fn default() -> Batch {
        Batch {
            max_rows: 1000,
            max_latency: Duration::from_millis(500),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    id: Option<String>,
    description: Option<String>,
    stream: StreamSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamSpec {
    source: SourceSpec,
    #[serde(default)]
    sink: SinkSpec,
    #[serde(default)]
    batch: BatchSpec,
    publish: Option<PublishSpec>,
    lake: Option<LakeSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LakeSpec {
    prefix: Option<String>,
    every: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishSpec {
    url: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
enum SourceSpec {
    #[serde(rename = "binance.trades")]
    Binance {
        symbols: Vec<String>,
        ws_url: Option<String>,
        base_url: Option<String>,
    },
    #[serde(rename = "mercado_bitcoin.trades")]
    MercadoBitcoin {
        symbols: Vec<String>,
        ws_url: Option<String>,
        base_url: Option<String>,
    },
    #[serde(rename = "kucoin.trades")]
    Kucoin {
        symbols: Vec<String>,
        base_url: Option<String>,
    },
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SinkSpec {
    table: Option<String>,
    url: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BatchSpec {
    max_rows: Option<usize>,
    max_latency: Option<String>,
}

/// Whether a YAML file defines a stream rather than a DAG: a top-level `stream:` key.
pub fn is_stream_file(source: &str) -> bool {
    source
        .lines()
        .any(|line| line.starts_with("stream:") || line.starts_with("stream :"))
}

/// Reads and validates a stream file.
pub fn load_str(path: &Path, source: &str) -> Result<StreamDef, LoadError> {
    let fail = |message: String| LoadError::single(path, Problem::nowhere(message));
    let spec: FileSpec = serde_saphyr::from_str(source).map_err(|e| {
        let message = e.without_snippet().to_string();
        match e.location() {
            Some(location) => LoadError::single(path, Problem::at(location, message)),
            None => fail(message),
        }
    })?;
    let id = match spec.id {
        Some(id) => id,
        None => path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string(),
    };
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(fail(format!(
            "stream id `{id}` must be lower-case letters, digits and `_`"
        )));
    }
    let source = match spec.stream.source {
        SourceSpec::Binance {
            symbols,
            ws_url,
            base_url,
        } => Source::Binance {
            symbols: symbol_list(symbols, |s| s.bytes().all(|b| b.is_ascii_alphanumeric()))
                .map_err(|symbol| {
                    fail(format!(
                        "source: symbol `{symbol}` must be letters and digits, as BTCUSDT"
                    ))
                })?,
            ws_url,
            base_url,
        },
        SourceSpec::MercadoBitcoin {
            symbols,
            ws_url,
            base_url,
        } => Source::MercadoBitcoin {
            symbols: symbol_list(symbols, is_dashed_pair).map_err(|symbol| {
                fail(format!(
                    "source: market `{symbol}` must be BASE-QUOTE in letters and digits, as BTC-BRL"
                ))
            })?,
            ws_url,
            base_url,
        },
        SourceSpec::Kucoin { symbols, base_url } => Source::Kucoin {
            symbols: symbol_list(symbols, is_dashed_pair).map_err(|symbol| {
                fail(format!(
                    "source: symbol `{symbol}` must be BASE-QUOTE in letters and digits, as BTC-USDT"
                ))
            })?,
            base_url,
        },
    };
    if source.symbols().is_empty() {
        return Err(fail("source: `symbols` lists no symbol".to_string()));
    }
    let defaults = Batch::default();
    let max_rows = spec.stream.batch.max_rows.unwrap_or(defaults.max_rows);
    if max_rows == 0 {
        return Err(fail("batch: `max_rows` must be at least 1".to_string()));
    }
    let max_latency = match spec.stream.batch.max_latency {
        Some(text) => humantime::parse_duration(&text)
            .map_err(|e| fail(format!("batch: `max_latency` `{text}`: {e}")))?,
        None => defaults.max_latency,
    };
    let lake = match spec.stream.lake {
        Some(lake) => {
            let every = match lake.every {
                Some(text) => humantime::parse_duration(&text)
                    .map_err(|e| fail(format!("lake: `every` `{text}`: {e}")))?,
                None => lake_copy::DEFAULT_EVERY,
            };
            if every.is_zero() {
                return Err(fail("lake: `every` must be more than 0s".to_string()));
            }
            let prefix = lake
                .prefix
                .unwrap_or_else(|| lake_copy::default_prefix(source.exchange()));
            if prefix.trim_matches('/').is_empty() || prefix.contains("..") {
                return Err(fail(format!(
                    "lake: `prefix` `{prefix}` is not a lake folder"
                )));
            }
            Some(LakeCopy {
                prefix: prefix.trim_matches('/').to_string(),
                every,
            })
        }
        None => None,
    };
    Ok(StreamDef {
        id,
        path: path.to_path_buf(),
        description: spec.description,
        source,
        sink: Sink {
            table: spec
                .stream
                .sink
                .table
                .unwrap_or_else(|| "raw_trades".to_string()),
            url: spec.stream.sink.url,
        },
        batch: Batch {
            max_rows,
            max_latency,
        },
        publish: spec.stream.publish.map(|p| Publish { url: p.url }),
        lake,
    })
}

/// `BASE-QUOTE`, each letters and digits: Mercado Bitcoin's and KuCoin's spelling.
fn is_dashed_pair(symbol: &str) -> bool {
    symbol.split_once('-').is_some_and(|(base, quote)| {
        [base, quote]
            .iter()
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()))
    })
}

/// The symbols in upper case, each once and in their order; the first that `valid` refuses
/// is the error.
fn symbol_list(symbols: Vec<String>, valid: impl Fn(&str) -> bool) -> Result<Vec<String>, String> {
    let mut upper: Vec<String> = Vec::new();
    for symbol in symbols {
        if !valid(&symbol) {
            return Err(symbol);
        }
        let symbol = symbol.to_uppercase();
        if !upper.contains(&symbol) {
            upper.push(symbol);
        }
    }
    Ok(upper)
}

/// Every stream file in `dir`, loaded; files that fail come back as errors.
pub fn load_dir(dir: &Path) -> (Vec<StreamDef>, Vec<LoadError>) {
    let mut streams = Vec::new();
    let mut errors = Vec::new();
    // Files that cannot be read, or are refused, are reported by the DAG bag.
    for path in crate::dag::dag_files(dir).unwrap_or_default() {
        let Ok(Ok(text)) = crate::dag::read_folder_file(dir, &path) else {
            continue;
        };
        if is_stream_file(&text) {
            match load_str(&path, &text) {
                Ok(stream) => streams.push(stream),
                Err(e) => errors.push(e),
            }
        }
    }
    (streams, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_shape_loads_with_defaults() {
        let yaml = "id: trades\nstream:\n  source: { kind: binance.trades, symbols: [btcusdt, AAVEUSDT] }\n";
        let stream = load_str(Path::new("dags/trades.yaml"), yaml).expect("loads");
        assert_eq!(stream.id, "trades");
        assert_eq!(
            stream.source,
            Source::Binance {
                symbols: vec!["BTCUSDT".to_string(), "AAVEUSDT".to_string()],
                ws_url: None,
                base_url: None
            }
        );
        assert_eq!(stream.sink.table, "raw_trades");
        assert_eq!(stream.batch, Batch::default());
        assert_eq!(stream.publish, None);
        assert_eq!(stream.lake, None);
        assert!(is_stream_file(yaml));
        let published = format!("{yaml}  publish: {{ url: nats://bus:4222 }}\n");
        let stream = load_str(Path::new("dags/trades.yaml"), &published).expect("loads");
        assert_eq!(
            stream.publish,
            Some(Publish {
                url: Some("nats://bus:4222".to_string())
            })
        );
        assert!(!is_stream_file("tasks:\n  - id: a\n    kind: noop\n"));
        let kucoin = "stream:\n  source: { kind: kucoin.trades, symbols: [btc-usdt, ETH-USDT] }\n";
        let stream = load_str(Path::new("dags/kucoin.yaml"), kucoin).expect("loads");
        assert_eq!(
            stream.source,
            Source::Kucoin {
                symbols: vec!["BTC-USDT".to_string(), "ETH-USDT".to_string()],
                base_url: None
            }
        );
    }

    #[test]
    fn mistakes_are_named_with_their_place() {
        let cases = [
            (
                "stream:\n  source: { kind: binance.trades, symbols: [] }\n",
                "lists no symbol",
            ),
            (
                "stream:\n  source: { kind: binance.trades, symbols: [BTC-USDT] }\n",
                "`BTC-USDT`",
            ),
            (
                "stream:\n  source: { kind: kucoin.trades, symbols: [BTCUSDT] }\n",
                "`BTCUSDT` must be BASE-QUOTE",
            ),
            (
                "stream:\n  source: { kind: kucoin.trades, symbols: [] }\n",
                "lists no symbol",
            ),
            (
                "stream:\n  source: { kind: kraken.trades, symbols: [X] }\n",
                "kraken.trades",
            ),
            (
                "stream:\n  source: { kind: binance.trades, symbols: [X] }\n  batch: { max_latency: soon }\n",
                "max_latency",
            ),
            (
                "stream:\n  source: { kind: binance.trades, symbols: [X] }\n  batch: { max_rows: 0 }\n",
                "max_rows",
            ),
        ];
        for (yaml, needle) in cases {
            let error = load_str(Path::new("dags/s.yaml"), yaml).expect_err(yaml);
            let text = error.to_string();
            assert!(text.starts_with("dags/s.yaml"), "{text}");
            assert!(text.contains(needle), "{needle} in {text}");
        }
    }
}
