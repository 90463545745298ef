//! Where things live: the home folder, the metadata database, the DAG and log folders.
//!
//! Settings come from, in order of precedence: the environment (`ORCH_DATABASE_URL`,
//! `ORCH_DAGS_DIR`, `ORCH_LOGS_DIR`, `ORCH_PARALLELISM`, `ORCH_HEARTBEAT_TIMEOUT`, `ORCH_LAKE_URL`,
//! `ORCH_WAREHOUSE_URL`, `BINANCE_API_URL`, `MERCADO_BITCOIN_API_URL`, `ORCH_LISTEN`, `ORCH_API_TOKEN`), then `orch.yaml` in the home, then defaults under the home.
//! Relative paths are relative to the home.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone)]
pub struct Config {
    pub home: PathBuf,
    pub database_url: String,
    pub dags_dir: PathBuf,
    pub logs_dir: PathBuf,
    /// How many task attempts may run at once in one process, across all runs.
    pub parallelism: usize,
    /// Runs queued or running, across DAGs, past which new ones are refused for now.
    pub max_pending_runs: usize,
    /// The most runs one backfill may start (`max_backfill_runs:`,
    /// `ORCH_MAX_BACKFILL_RUNS`).
    pub max_backfill_runs: usize,
    /// How long a web client may take to send a request's headers before its connection is
    /// closed (`http_header_timeout:`, `ORCH_HTTP_HEADER_TIMEOUT`; 10 s).
    pub http_header_timeout: std::time::Duration,
    /// Bytes of memory one `orch query` may use (`query_memory_limit:`,
    /// `ORCH_QUERY_MEMORY_LIMIT`; half the host's memory).
    pub query_memory_limit: u64,
    /// Where data tasks read and write.
    pub data: DataPlaces,
    /// How long an orch process may go without a heartbeat before it is lost: its runs
    /// adopted, its attempts failed as "worker lost" and retried (`ORCH_HEARTBEAT_TIMEOUT`,
    /// `heartbeat_timeout:`; 30 s).
    pub heartbeat_timeout: std::time::Duration,
    /// Where `orch serve` serves the web UI, the API and metrics (`--listen`, `ORCH_LISTEN`,
    /// `listen:`; `127.0.0.1:8080`); `None` when set to `off`.
    pub listen: Option<std::net::SocketAddr>,
    /// The token the API and the sign-in form ask for (`ORCH_API_TOKEN`, or the file named by
    /// `ORCH_API_TOKEN_FILE` or `api_token_file:`). Without one, the web face serves loopback only.
    pub api_token: Option<Secret>,
    /// How much run history `orch serve` keeps (`retention:`); nothing is pruned unless set.
    pub retention: Retention,
    /// Where people reach the web UI (`ORCH_PUBLIC_URL`, `public_url:`), for links in alerts;
    /// `http://LISTEN` by default when the web face listens.
    pub public_url: Option<String>,
    /// Named slot counts shared by every DAG (`pools:`); a task names one with `pool:`.
    pub pools: std::collections::BTreeMap<String, u32>,
}

/// The most `retention.days` may say: the timestamps of the run history reach back to year 1
/// at the earliest, and a cutoff must be one of them.
pub const MAX_RETENTION_DAYS: u32 = 365_000;

/// `retention:` in orch.yaml: finished runs older than `days`, or beyond the newest
/// `runs_per_dag` of their DAG, are pruned with their logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub days: Option<u32>,
    pub runs_per_dag: Option<u32>,
}

impl Retention {
    pub fn is_set(&self) -> bool {
        self.days.is_some() || self.runs_per_dag.is_some()
    }
}

/// A secret setting: shown as `***` by `Debug`, so it never reaches a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Where the web face listens unless told otherwise: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// A `listen` setting: `HOST:PORT`, or `off`.
pub fn parse_listen(value: &str) -> Result<Option<std::net::SocketAddr>, String> {
    let value = value.trim();
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| format!("`{value}` is not an address like 127.0.0.1:8080 (or `off`)"))
}

/// Reads a token file: its first line, trimmed; an empty file is an error, not "no token".
fn read_token_file(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(format!("the token file {} is empty", path.display()));
    }
    Ok(Secret(token.to_string()))
}

/// Where data tasks keep their data, each a URL an `ORCH_*_URL` variable may override.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataPlaces {
    /// The Parquet lake (`ORCH_LAKE_URL`): `file://<home>/data/lake` by default.
    pub lake_url: String,
    /// The warehouse (`ORCH_WAREHOUSE_URL`): `sqlite://<home>/data/warehouse.db` by default.
    pub warehouse_url: String,
    /// Binance's REST API (`BINANCE_API_URL`): Binance itself by default; `orch demo` points
    /// it at its simulator.
    pub binance_api_url: String,
    /// Mercado Bitcoin's REST API v4 (`MERCADO_BITCOIN_API_URL`): MB itself by default;
    /// `orch demo` points it at its simulator.
    #[serde(default = "default_mercado_bitcoin_api_url")]
    pub mercado_bitcoin_api_url: String,
    /// Mercado Bitcoin's public websocket (`MERCADO_BITCOIN_WS_URL`):
    /// `wss://ws.mercadobitcoin.net/ws` by default.
    #[serde(default = "default_mercado_bitcoin_ws_url")]
    pub mercado_bitcoin_ws_url: String,
    /// KuCoin's REST API (`KUCOIN_API_URL`): KuCoin itself by default; `orch demo` points it
    /// at its simulator. Its websocket address comes with each connection's token.
    #[serde(default = "default_kucoin_api_url")]
    pub kucoin_api_url: String,
    /// The staging store of the live streams (`ORCH_STAGING_URL`):
    /// `sqlite://<home>/data/staging.db` by default.
    pub staging_url: String,
    /// Binance's websocket market streams (`BINANCE_WS_URL`):
    /// `wss://stream.binance.com:9443` by default.
    pub binance_ws_url: String,
    /// The NATS server whose JetStream carries published trades (`ORCH_NATS_URL`):
    /// `nats://127.0.0.1:4222` by default.
    #[serde(default = "default_nats_url")]
    pub nats_url: String,
    /// Named databases of orch.yaml's `connections:`, for the `sql` kind and sensors.
    #[serde(default)]
    pub connections: Connections,
}

fn default_nats_url() -> String {
    crate::trade_bus::DEFAULT_URL.to_string()
}

fn default_mercado_bitcoin_ws_url() -> String {
    crate::exchange::mercado_bitcoin::stream::DEFAULT_WS_URL.to_string()
}

fn default_kucoin_api_url() -> String {
    crate::exchange::kucoin::KucoinClient::DEFAULT_BASE_URL.to_string()
}

fn default_mercado_bitcoin_api_url() -> String {
    crate::exchange::mercado_bitcoin::MercadoBitcoinClient::DEFAULT_BASE_URL.to_string()
}

/// `connections:`: named databases, each a URL given in orch.yaml (`url:`), in an
/// environment variable (`url_env:`) or in a file (`url_file:`). The variable and the file
/// are read where the task runs, when it runs, so a command that needs no connection never
/// needs its secret; `Debug` shows names only.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Connections(std::collections::BTreeMap<String, ConnectionSetting>);

/// Where one connection's URL is.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSetting {
    url: Option<String>,
    url_env: Option<String>,
    url_file: Option<PathBuf>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl Connections {
    /// The URL of connection `name`, read now; the error says what is missing, never a value.
    pub fn url(&self, name: &str) -> Result<String, String> {
        let setting = self.0.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.0.keys().map(String::as_str).collect();
            format!(
                "no connection `{name}` in orch.yaml's `connections:` (known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })?;
        match (&setting.url, &setting.url_env, &setting.url_file) {
            (Some(url), None, None) => Ok(url.clone()),
            (None, Some(var), None) => std::env::var(var)
                .map_err(|_| format!("connection `{name}`: environment variable {var} is not set")),
            (None, None, Some(path)) => std::fs::read_to_string(path)
                .map(|text| text.trim().to_string())
                .map_err(|e| format!("connection `{name}`: cannot read {}: {e}", path.display())),
            _ => Err(format!(
                "connection `{name}`: give exactly one of `url`, `url_env` or `url_file`"
            )),
        }
    }

    /// The same connections, their `url_file`s made absolute under `home`.
    fn relative_to(&self, home: &Path) -> Connections {
        let mut connections = self.clone();
        for setting in connections.0.values_mut() {
            if let Some(path) = &setting.url_file
                && path.is_relative()
            {
                setting.url_file = Some(home.join(path));
            }
        }
        connections
    }

    fn check(&self) -> Result<(), String> {
        for (name, s) in &self.0 {
            let given = [s.url.is_some(), s.url_env.is_some(), s.url_file.is_some()];
            if given.iter().filter(|g| **g).count() != 1 {
                return Err(format!(
                    "`{name}`: give exactly one of `url`, `url_env` or `url_file`"
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot use home {path}: {source}")]
    Home {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("environment variable {name}=`{value}`: {message}")]
    Env {
        name: &'static str,
        value: String,
        message: String,
    },
}

/// The keys `orch.yaml` may set.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    database_url: Option<String>,
    dags_dir: Option<PathBuf>,
    logs_dir: Option<PathBuf>,
    parallelism: Option<usize>,
    max_pending_runs: Option<usize>,
    max_backfill_runs: Option<usize>,
    heartbeat_timeout: Option<String>,
    http_header_timeout: Option<String>,
    query_memory_limit: Option<String>,
    lake_url: Option<String>,
    warehouse_url: Option<String>,
    staging_url: Option<String>,
    listen: Option<String>,
    api_token_file: Option<PathBuf>,
    #[serde(default)]
    retention: Retention,
    public_url: Option<String>,
    #[serde(default)]
    pools: std::collections::BTreeMap<String, u32>,
    #[serde(default)]
    connections: Connections,
}

impl Config {
    /// Resolves the configuration for `home`, reading `orch.yaml` there if present.
    pub fn load(home: &Path) -> Result<Config, ConfigError> {
        let home = std::path::absolute(home).map_err(|source| ConfigError::Home {
            path: home.to_path_buf(),
            source,
        })?;
        let file = read_settings(&home.join("orch.yaml"))?;
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { home.join(p) };

        let database_url = env("ORCH_DATABASE_URL")
            .or(file.database_url)
            .unwrap_or_else(|| format!("sqlite://{}", home.join("orch.db").display()));
        let dags_dir = resolve(
            env("ORCH_DAGS_DIR")
                .map(PathBuf::from)
                .or(file.dags_dir)
                .unwrap_or("dags".into()),
        );
        let logs_dir = resolve(
            env("ORCH_LOGS_DIR")
                .map(PathBuf::from)
                .or(file.logs_dir)
                .unwrap_or("logs".into()),
        );
        let count =
            |name: &'static str, key: &str, in_file: Option<usize>, default: usize| match env(name)
            {
                Some(value) => match value.parse::<usize>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(ConfigError::Env {
                        name,
                        value,
                        message: "must be a whole number of at least 1".to_string(),
                    }),
                },
                None => match in_file {
                    Some(0) => Err(ConfigError::File {
                        path: home.join("orch.yaml"),
                        message: format!("{key}: must be a whole number of at least 1"),
                    }),
                    Some(n) => Ok(n),
                    None => Ok(default),
                },
            };
        let parallelism = count(
            "ORCH_PARALLELISM",
            "parallelism",
            file.parallelism,
            default_parallelism(),
        )?;
        let max_pending_runs = count(
            "ORCH_MAX_PENDING_RUNS",
            "max_pending_runs",
            file.max_pending_runs,
            DEFAULT_MAX_PENDING_RUNS,
        )?;
        let max_backfill_runs = count(
            "ORCH_MAX_BACKFILL_RUNS",
            "max_backfill_runs",
            file.max_backfill_runs,
            DEFAULT_MAX_BACKFILL_RUNS,
        )?;
        let heartbeat_timeout = match env("ORCH_HEARTBEAT_TIMEOUT") {
            Some(value) => heartbeat_timeout(&value).map_err(|message| ConfigError::Env {
                name: "ORCH_HEARTBEAT_TIMEOUT",
                value,
                message,
            })?,
            None => match &file.heartbeat_timeout {
                Some(value) => heartbeat_timeout(value).map_err(|message| ConfigError::File {
                    path: home.join("orch.yaml"),
                    message: format!("heartbeat_timeout: {message}"),
                })?,
                None => DEFAULT_HEARTBEAT_TIMEOUT,
            },
        };
        let http_header_timeout = match env("ORCH_HTTP_HEADER_TIMEOUT") {
            Some(value) => header_timeout(&value).map_err(|message| ConfigError::Env {
                name: "ORCH_HTTP_HEADER_TIMEOUT",
                value,
                message,
            })?,
            None => match &file.http_header_timeout {
                Some(value) => header_timeout(value).map_err(|message| ConfigError::File {
                    path: home.join("orch.yaml"),
                    message: format!("http_header_timeout: {message}"),
                })?,
                None => DEFAULT_HTTP_HEADER_TIMEOUT,
            },
        };
        let query_memory_limit = match env("ORCH_QUERY_MEMORY_LIMIT") {
            Some(value) => {
                crate::attempt::parse_size(&value).map_err(|message| ConfigError::Env {
                    name: "ORCH_QUERY_MEMORY_LIMIT",
                    value,
                    message,
                })?
            }
            None => match &file.query_memory_limit {
                Some(value) => {
                    crate::attempt::parse_size(value).map_err(|message| ConfigError::File {
                        path: home.join("orch.yaml"),
                        message: format!("query_memory_limit: {message}"),
                    })?
                }
                None => default_query_memory_limit(),
            },
        };
        let data = DataPlaces {
            lake_url: env("ORCH_LAKE_URL")
                .or(file.lake_url)
                .unwrap_or_else(|| crate::lake::Lake::default_url(&home)),
            warehouse_url: env("ORCH_WAREHOUSE_URL")
                .or(file.warehouse_url)
                .unwrap_or_else(|| {
                    format!(
                        "sqlite://{}",
                        home.join("data").join("warehouse.db").display()
                    )
                }),
            binance_api_url: env("BINANCE_API_URL").unwrap_or_else(|| {
                crate::exchange::binance::BinanceClient::DEFAULT_BASE_URL.to_string()
            }),
            mercado_bitcoin_api_url: env("MERCADO_BITCOIN_API_URL")
                .unwrap_or_else(default_mercado_bitcoin_api_url),
            mercado_bitcoin_ws_url: env("MERCADO_BITCOIN_WS_URL")
                .unwrap_or_else(default_mercado_bitcoin_ws_url),
            kucoin_api_url: env("KUCOIN_API_URL").unwrap_or_else(default_kucoin_api_url),
            staging_url: env("ORCH_STAGING_URL")
                .or(file.staging_url)
                .unwrap_or_else(|| crate::staging::Staging::default_url(&home)),
            binance_ws_url: env("BINANCE_WS_URL")
                .unwrap_or_else(|| crate::exchange::binance::stream::DEFAULT_BASE_URL.to_string()),
            nats_url: env("ORCH_NATS_URL").unwrap_or_else(default_nats_url),
            connections: file.connections.relative_to(&home),
        };
        let file_error = |key: &str, message: String| ConfigError::File {
            path: home.join("orch.yaml"),
            message: format!("{key}: {message}"),
        };
        let listen = match env("ORCH_LISTEN") {
            Some(value) => parse_listen(&value).map_err(|message| ConfigError::Env {
                name: "ORCH_LISTEN",
                value,
                message,
            })?,
            None => match &file.listen {
                Some(value) => parse_listen(value).map_err(|m| file_error("listen", m))?,
                None => parse_listen(DEFAULT_LISTEN).map_err(|m| file_error("listen", m))?,
            },
        };
        let api_token = match (env("ORCH_API_TOKEN"), env("ORCH_API_TOKEN_FILE")) {
            (Some(token), _) if token.trim().is_empty() => {
                return Err(ConfigError::Env {
                    name: "ORCH_API_TOKEN",
                    value: String::new(),
                    message: "is only whitespace: nobody could sign in with it; unset it to \
                              serve loopback only"
                        .to_string(),
                });
            }
            (Some(token), _) => Some(Secret(token.trim().to_string())),
            (None, Some(path)) => Some(read_token_file(&resolve(PathBuf::from(&path))).map_err(
                |message| ConfigError::Env {
                    name: "ORCH_API_TOKEN_FILE",
                    value: path,
                    message,
                },
            )?),
            (None, None) => match &file.api_token_file {
                Some(path) => Some(
                    read_token_file(&resolve(path.clone()))
                        .map_err(|m| file_error("api_token_file", m))?,
                ),
                None => None,
            },
        };
        file.connections
            .check()
            .map_err(|m| file_error("connections", m))?;
        for (name, slots) in &file.pools {
            if !crate::queue::is_queue_name(name) || *slots == 0 {
                return Err(file_error(
                    "pools",
                    format!("pool `{name}`: a name of [a-z0-9_-]+ with at least 1 slot"),
                ));
            }
        }
        if file.retention.days == Some(0) || file.retention.runs_per_dag == Some(0) {
            return Err(file_error(
                "retention",
                "`days` and `runs_per_dag` must be at least 1".to_string(),
            ));
        }
        if let Some(days) = file.retention.days.filter(|d| *d > MAX_RETENTION_DAYS) {
            return Err(file_error(
                "retention",
                format!(
                    "`days: {days}` is past the most a run history can reach back, \
                     {MAX_RETENTION_DAYS} days (about 1,000 years); leave `days` out to keep \
                     runs of any age"
                ),
            ));
        }
        Ok(Config {
            home,
            database_url,
            dags_dir,
            logs_dir,
            parallelism,
            max_pending_runs,
            max_backfill_runs,
            http_header_timeout,
            query_memory_limit,
            data,
            heartbeat_timeout,
            listen,
            api_token,
            retention: file.retention,
            pools: file.pools,
            public_url: env("ORCH_PUBLIC_URL")
                .or(file.public_url)
                .or_else(|| listen.map(|addr| format!("http://{addr}"))),
        })
    }

    /// orch's own files: locks, leases and the scheduler's wake-up socket.
    pub fn state_dir(&self) -> PathBuf {
        self.home.join(".orch")
    }
}

const DEFAULT_HEARTBEAT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Ample for any client on any network; a client trickling its headers a line at a time
/// (slowloris) holds a connection no longer.
const DEFAULT_HTTP_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Half the host's memory (at least 256 MiB): a query over a large lake has room, and a
/// runaway one (a cross join) fails with a message instead of taking the host.
fn default_query_memory_limit() -> u64 {
    // SAFETY: sysconf reads a system value and has no preconditions.
    let (pages, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let total = u64::try_from(pages)
        .unwrap_or(0)
        .saturating_mul(u64::try_from(page_size).unwrap_or(0));
    (total / 2).max(256 << 20)
}

/// A header timeout: a duration from 1 s to 10 min.
fn header_timeout(value: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(value) {
        Ok(d) if (1..=600).contains(&d.as_secs()) => Ok(d),
        Ok(_) => Err("must be from 1s to 10m".to_string()),
        Err(e) => Err(format!("not a duration like 10s: {e}")),
    }
}

/// A heartbeat timeout: a duration of at least 3 s (heartbeats go every sixth of it).
fn heartbeat_timeout(value: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(value) {
        Ok(d) if d >= std::time::Duration::from_secs(3) => Ok(d),
        Ok(_) => Err("must be at least 3s".to_string()),
        Err(e) => Err(format!("not a duration like 30s: {e}")),
    }
}

/// Runs queued or running, across DAGs, past which triggers and backfills are refused for
/// now: some minutes of work at the rates orch sustains, and far less memory than a host has.
pub const DEFAULT_MAX_PENDING_RUNS: usize = 10_000;

/// The most runs one backfill may start: a week of a 1-minute DAG, 27 years of a daily one.
/// A range is checked against it before its ticks are listed past it.
pub const DEFAULT_MAX_BACKFILL_RUNS: usize = 10_000;

/// Four attempts per CPU, as Kestra's workers take four tasks per core: most attempts wait
/// (on an API, a database, a sensor's condition) far more than they compute, and a worker
/// with one slot per CPU sat idle while its attempts waited. Heavy tasks share a pool
/// (`pools:`) to bound them instead.
fn default_parallelism() -> usize {
    4 * std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn read_settings(path: &Path) -> Result<FileSettings, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileSettings::default()),
        Err(e) => {
            return Err(ConfigError::File {
                path: path.to_path_buf(),
                message: e.to_string(),
            });
        }
    };
    if text.trim().is_empty() {
        return Ok(FileSettings::default());
    }
    serde_saphyr::from_str(&text).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        message: e.without_snippet().to_string(),
    })
}
