//! The `orch` command line: argument parsing and one thin module per command.

mod backfill;
mod dags;
mod db;
mod demo;
mod logs;
mod query;
mod run;
mod runs;
mod serve;
mod simulate;
mod stream;
mod trigger;
mod worker;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `println!` for commands that go on working while they print (`run`, `trigger`, `backfill`):
/// a reader that goes away (`orch run ... | head -1`) neither panics them nor stops the run.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
pub(crate) use say;

use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "orch",
    version,
    about = "Run YAML-defined data pipelines on a schedule, with their history in SQLite."
)]
pub struct Cli {
    /// The folder holding dags/, logs/, data/ and orch.db.
    #[arg(long, global = true, env = "ORCH_HOME", default_value = ".")]
    home: PathBuf,

    /// Format of orch's own log on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

impl LogFormat {
    /// The value as given on the command line, for the processes orch starts.
    fn as_arg(self) -> &'static str {
        match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the scheduler: cron ticks, queued runs, hot reload of DAG files.
    Serve {
        /// How long running tasks may finish after SIGTERM/Ctrl-C before they are stopped.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// A queue this server's own worker serves (repeatable).
        #[arg(long = "queue", value_name = "NAME", default_value = crate::queue::DEFAULT_QUEUE, value_parser = queue_name)]
        queues: Vec<String>,
        /// Run no worker here: only schedule (attempts run on `orch worker`s).
        #[arg(long, conflicts_with = "queues")]
        no_worker: bool,
        /// Where to serve the web UI, the API and /metrics: HOST:PORT, or `off`
        /// (default: ORCH_LISTEN, `listen:` in orch.yaml, or 127.0.0.1:8080). Any address but
        /// loopback needs a token (ORCH_API_TOKEN or ORCH_API_TOKEN_FILE).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Claim and run queued task attempts, on this machine or another sharing the metadata
    /// database, until SIGTERM or Ctrl-C.
    Worker {
        /// A queue to serve (repeatable).
        #[arg(long = "queue", value_name = "NAME", default_value = crate::queue::DEFAULT_QUEUE, value_parser = queue_name)]
        queues: Vec<String>,
        /// How long running attempts may finish after SIGTERM/Ctrl-C before they are stopped.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        grace: Duration,
    },
    /// Queue a run for the running `orch serve`; prints the run id.
    Trigger {
        #[command(flatten)]
        run: RunArgs,
        /// Wait for the run to end; exit non-zero if it failed.
        #[arg(long)]
        wait: bool,
    },
    /// The orch processes sharing the metadata database (servers, workers, runs), their
    /// queues and heartbeats, and which server schedules.
    Workers {
        /// Print JSON (a stable contract; see docs/cli.md).
        #[arg(long)]
        json: bool,
    },
    /// Execute one run of a DAG in this process, now.
    Run(RunArgs),
    /// Run a DAG for every schedule tick of a range of days (run type backfill), here, with
    /// progress.
    Backfill {
        dag_id: String,
        /// The first logical date, YYYY-MM-DD.
        #[arg(long)]
        start: chrono::NaiveDate,
        /// The last logical date, included.
        #[arg(long)]
        end: chrono::NaiveDate,
        /// Runs executed at once.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        parallel: u32,
        /// Run dates that already succeeded again, too.
        #[arg(long)]
        rerun: bool,
        /// Start a backfill of more than 1000 runs without asking.
        #[arg(long)]
        yes: bool,
    },
    /// List, check and inspect DAGs.
    #[command(subcommand)]
    Dags(DagsCommand),
    /// Inspect the run history; cancel or clear a run.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Clear or mark one task of a run.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Maintain the metadata database.
    #[command(subcommand)]
    Db(DbCommand),
    /// Print the logs of a run's task attempts.
    Logs {
        run_id: String,
        /// Only this task.
        #[arg(long)]
        task: Option<String>,
        /// Only this attempt (1-based).
        #[arg(long)]
        attempt: Option<u32>,
        /// Keep printing new output until the run ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Try the pipelines offline: the Binance simulator plus `orch serve` pointed at it.
    Demo {
        /// How long running tasks may finish after Ctrl-C before they are stopped.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        grace: Duration,
    },
    /// Run live streams.
    #[command(subcommand)]
    Stream(StreamCommand),
    /// Every live stream with its state, throughput, freshness, latency and gaps.
    Streams {
        /// Print JSON (a stable contract; see docs/cli.md).
        #[arg(long)]
        json: bool,
    },
    /// SQL over the lake's tables (binance_trades, fact_trades, ...), printed as a table, CSV
    /// or JSON, or written as Parquet.
    Query {
        /// One SELECT statement, e.g. "SELECT count(*) FROM binance_trades WHERE symbol =
        /// 'BTCUSDT' AND date = '2026-11-22'".
        sql: String,
        #[arg(long, value_enum, default_value = "table")]
        format: query::Format,
        /// Write the answer to this file instead of standard output.
        #[arg(long)]
        output: Option<std::path::PathBuf>,
    },
    /// Run a local exchange simulator (no network needed); prints its URL first.
    #[command(subcommand)]
    Simulate(SimulateCommand),
    /// Run one task attempt handed over on standard input, and report on standard output:
    /// how orch runs every attempt in a process of its own.
    #[command(hide = true)]
    Attempt,
    /// Fork a process per attempt for the worker on standard input (a Unix socket): how orch
    /// saves each attempt the start of a new binary.
    #[command(hide = true)]
    AttemptServer,
}

/// A queue name as DAG files write it.
fn queue_name(name: &str) -> Result<String, String> {
    if crate::queue::is_queue_name(name) {
        Ok(name.to_string())
    } else {
        Err(format!("queue `{name}` must match [a-z0-9_-]+"))
    }
}

#[derive(Subcommand)]
enum StreamCommand {
    /// Run one stream of the DAGs folder in the foreground until Ctrl-C or SIGTERM, which
    /// commit the pending batch before exiting.
    Run { stream_id: String },
}

#[derive(Subcommand)]
enum SimulateCommand {
    /// A Binance-compatible REST and websocket server on 127.0.0.1 with a simulated market.
    Binance {
        /// Port to listen on; 0 picks a free one.
        #[arg(long, default_value_t = 8765)]
        port: u16,
        /// Symbols to trade.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "BTCUSDT,AAVEUSDT,STXUSDT,ARBUSDT"
        )]
        symbols: Vec<String>,
        /// Average trades per second per symbol; 0 adds trades only through `POST /_sim/trades`.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Seed of the random market, for repeatable runs.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Replay recorded trades (a Parquet file of timestamp, trade_id, price, quantity,
        /// buyer_maker) for a symbol in their recorded spacing, then trade on from there.
        #[arg(long, value_name = "SYMBOL=FILE")]
        replay: Vec<String>,
        /// Request weight allowed per minute, as Binance; 0 for no limit (benchmarks).
        #[arg(long, default_value_t = crate::simulator::BINANCE_WEIGHT_LIMIT)]
        weight_limit: u32,
        /// How often the streams ping their clients, as Binance.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        ping_every: Duration,
        /// How long a stream waits for a pong before it cuts the connection, as Binance.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        pong_within: Duration,
    },
}

#[derive(Args)]
struct RunArgs {
    dag_id: String,
    /// Override a param: key=value (the value is read as JSON when it parses, else as text).
    #[arg(long = "conf", value_name = "KEY=VALUE")]
    conf: Vec<String>,
    /// The run's logical date: a date (midnight in the DAG's timezone) or an RFC 3339 time.
    #[arg(long)]
    logical_date: Option<String>,
}

#[derive(Subcommand)]
enum DagsCommand {
    /// Every DAG with its schedule and state, and every file that fails to load.
    List,
    /// Check DAG files (all of dags/ by default); exits non-zero on any error.
    Validate { files: Vec<PathBuf> },
    /// One DAG's definition and next run.
    Show { dag_id: String },
    /// Stop scheduling a DAG (persisted).
    Pause { dag_id: String },
    /// Resume scheduling a DAG.
    Unpause { dag_id: String },
}

#[derive(Subcommand)]
enum RunsCommand {
    /// The latest runs, newest first.
    List {
        #[arg(long)]
        dag: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON (a stable contract; see docs/cli.md).
        #[arg(long)]
        json: bool,
    },
    /// One run with its tasks and attempts.
    Show {
        run_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a queued or running run: its attempts are stopped and it ends failed.
    Cancel { run_id: String },
    /// Run a finished run again, every task with a fresh retry budget.
    Clear { run_id: String },
}

#[derive(Subcommand)]
enum DbCommand {
    /// Delete the finished runs (with their attempts and logs) that `retention:` in orch.yaml
    /// no longer keeps.
    Prune {
        /// Only list what would go.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum TasksCommand {
    /// Run a task of a finished run again (with `--downstream`, the tasks after it too), with a
    /// fresh retry budget; the run is queued again.
    Clear {
        run_id: String,
        task_id: String,
        #[arg(long)]
        downstream: bool,
    },
    /// Set a task of a finished run to success or failed; the run's state follows.
    Mark {
        run_id: String,
        task_id: String,
        #[arg(value_parser = ["success", "failed"])]
        state: String,
    },
}

/// Parses arguments, runs the command and turns its outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(
        cli.command,
        Command::Serve { .. }
            | Command::Worker { .. }
            | Command::Demo { .. }
            | Command::Simulate(_)
            | Command::Stream(_)
    ) {
        "info"
    } else {
        "warn"
    };
    init_tracing(cli.log_format, default_level);
    if matches!(
        cli.command,
        Command::Dags(_)
            | Command::Runs(_)
            | Command::Logs { .. }
            | Command::Streams { .. }
            | Command::Workers { .. }
            | Command::Query { .. }
    ) {
        // Commands that only print end quietly when their reader does (`orch runs list |
        // head`), as Unix tools do, instead of panicking on a broken pipe. Long-running
        // commands keep Rust's default of ignoring SIGPIPE: a peer closing a socket must not
        // kill a server.
        // SAFETY: signal(2) with SIG_DFL, before any thread writes to stdout.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    if let Command::AttemptServer = cli.command {
        // Before any runtime or thread: the server forks.
        crate::attempt::serve_fork_server(crate::registry);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            let corrupt = e.chain().any(|cause| {
                cause
                    .downcast_ref::<crate::store::StoreError>()
                    .is_some_and(crate::store::StoreError::is_corrupt_file)
            });
            if corrupt {
                eprintln!(
                    "the metadata database file is corrupt: stop every orch process of this home, \
                     then restore the file from a backup, or move it (with its -wal and -shm \
                     files) away to start a new, empty history"
                );
            }
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Attempt = cli.command {
        // Everything the attempt needs comes with it, resolved by the process that started it.
        return Ok(crate::attempt::serve_child(crate::registry).await);
    }
    let config = Config::load(&cli.home)?;
    match cli.command {
        Command::Serve {
            grace,
            queues,
            no_worker,
            listen,
        } => {
            let queues = if no_worker { Vec::new() } else { queues };
            let config = match listen {
                Some(listen) => Config {
                    listen: crate::config::parse_listen(&listen)
                        .map_err(|e| anyhow::anyhow!("--listen: {e}"))?,
                    ..config
                },
                None => config,
            };
            serve::serve(config, grace, queues, cli.log_format.as_arg()).await
        }
        Command::Worker { queues, grace } => worker::worker(&config, queues, grace).await,
        Command::Workers { json } => workers::workers(&config, json).await,
        Command::Trigger { run, wait } => trigger::trigger(&config, run, wait).await,
        Command::Run(args) => run::run(&config, args).await,
        Command::Dags(cmd) => dags::dags(&config, cmd).await,
        Command::Runs(cmd) => runs::runs(&config, cmd).await,
        Command::Tasks(cmd) => runs::tasks(&config, cmd).await,
        Command::Db(DbCommand::Prune { dry_run }) => db::prune(&config, dry_run).await,
        Command::Logs {
            run_id,
            task,
            attempt,
            follow,
        } => logs::logs(&config, &run_id, task.as_deref(), attempt, follow).await,
        Command::Query {
            sql,
            format,
            output,
        } => match query::query_under_limit(&config).await? {
            Some(code) => Ok(code),
            None => query::query(&config, &sql, format, output.as_deref()).await,
        },
        Command::Demo { grace } => demo::demo(config, grace, cli.log_format.as_arg()).await,
        Command::Backfill {
            dag_id,
            start,
            end,
            parallel,
            rerun,
            yes,
        } => {
            let parallel = usize::try_from(parallel).unwrap_or(1);
            backfill::backfill(&config, &dag_id, start, end, parallel, rerun, yes).await
        }
        Command::Stream(StreamCommand::Run { stream_id }) => stream::run(&config, &stream_id).await,
        Command::Streams { json } => stream::list(&config, json).await,
        Command::Simulate(SimulateCommand::Binance {
            port,
            symbols,
            rate,
            seed,
            replay,
            weight_limit,
            ping_every,
            pong_within,
        }) => {
            let weight_limit = (weight_limit > 0).then_some(weight_limit);
            let keepalive = crate::simulator::Keepalive {
                ping_every,
                pong_within,
            };
            simulate::binance(port, symbols, rate, seed, replay, weight_limit, keepalive).await
        }
        Command::Attempt => unreachable!("handled before the configuration is loaded"),
        Command::AttemptServer => unreachable!("handled before the runtime starts"),
    }
}

fn init_tracing(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("ORCH_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{default_level},sqlx=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The DAG named on the command line, or an error that says why it is not there.
/// Who acts from the command line, for the record of manual actions: the user, on this host.
fn cli_actor() -> crate::store::Actor {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "cli".to_string());
    crate::store::Actor {
        name: user,
        source: format!("cli on {}", crate::lease::host_name()),
    }
}

fn find_dag(
    bag: &crate::dag::DagBag,
    dag_id: &str,
) -> anyhow::Result<std::sync::Arc<crate::dag::Dag>> {
    if let Some(dag) = bag.get(dag_id) {
        return Ok(dag.clone());
    }
    if let Some(error) = bag.error_for(dag_id) {
        anyhow::bail!("DAG `{dag_id}` does not load:\n{error}");
    }
    let known: Vec<&str> = bag.dags().map(|d| d.id.as_str()).collect();
    anyhow::bail!(
        "no DAG `{dag_id}`; known DAGs: {}",
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    )
}
