//! Web face benchmark: `cargo bench --bench web`.
//!
//! A home with 200 DAGs (one of 200 tasks) and 100,000 runs in its SQLite run history, served
//! by `orch serve`. Measures, over HTTP on loopback:
//! - the DAG list (`GET /api/v1/dags`) and the grid of 25 runs × 200 tasks;
//! - a `/metrics` scrape;
//! - API latency with 50 concurrent clients (`GET /api/v1/runs/{id}` and `GET /api/v1/runs`);
//! - the server's resident memory, idle with the UI on;
//! - how steady the machine's CPU was meanwhile (see `Probe`): on a shared host, the same
//!   work sometimes takes several times longer for a tenth of a second, and latency
//!   percentiles then measure the host as much as orch.
//!
//! Prints a Markdown table for docs/benchmarks.md.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_orch");
const DAGS: usize = 200;
const WIDE_TASKS: usize = 200;
const RUNS: usize = 100_000;
/// Runs of the 200-task DAG, each with its 200 task instances.
const WIDE_RUNS: usize = 100;
const REPEATS: usize = 21;
const CLIENTS: usize = 50;
const REQUESTS_PER_CLIENT: usize = 100;
/// Requests per second of all clients together, paced.
const PACED_RATES: [f64; 2] = [1_000.0, 2_000.0];
/// Paced runs at each rate: the host's slow spells come and go, so one run is not enough.
const PACED_REPEATS: usize = 3;

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path();
    std::fs::create_dir_all(home.join("dags")).expect("dags");
    let mut wide = String::from("id: dag_000\ntasks:\n  - {id: t000, kind: noop}\n");
    for t in 1..WIDE_TASKS {
        wide.push_str(&format!(
            "  - {{id: t{t:03}, kind: noop, depends_on: [t{:03}]}}\n",
            t - 1
        ));
    }
    std::fs::write(home.join("dags/dag_000.yaml"), wide).expect("write");
    for d in 1..DAGS {
        std::fs::write(
            home.join(format!("dags/dag_{d:03}.yaml")),
            format!(
                "id: dag_{d:03}\nschedule: \"0 4 * * *\"\nstart_date: 2026-11-01\ncatchup: false\npaused: true\ntasks:\n  - {{id: extract, kind: noop}}\n  - {{id: load, kind: noop, depends_on: [extract]}}\n"
            ),
        )
        .expect("write");
    }
    // Migrate, then fill the history in a few statements.
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["--home"])
        .arg(home)
        .args(["runs", "list"])
        .output()
        .expect("orch");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fill_history(&home.join("orch.db"));
    eprintln!("history of {RUNS} runs written in {:?}", started.elapsed());

    let mut server = Command::new(BIN)
        .arg("--home")
        .arg(home)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("ORCH_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve");
    let addr = listening_address(&mut server);
    let fresh_rss = rss_mb(server.id());
    // The first answers warm SQLite's page cache; a server is measured warm.
    for _ in 0..3 {
        get(&addr, "/api/v1/dags");
        get(&addr, "/api/v1/dags/dag_000/grid?runs=25");
    }
    let idle_rss = rss_mb(server.id());

    let list = timed(&addr, "/api/v1/dags");
    let grid = timed(&addr, "/api/v1/dags/dag_000/grid?runs=25");
    let grid_body = get(&addr, "/api/v1/dags/dag_000/grid?runs=25");
    assert!(grid_body.contains("\"t199\""), "the grid has every task");
    let metrics = timed(&addr, "/metrics");
    let run_page = timed(&addr, "/api/v1/runs?dag_id=dag_007&limit=50");

    // 50 clients at once, each on its own kept-alive connection as a browser or a script
    // keeps one, asking for runs and run pages: first as fast as each can (the server and
    // the 50 client threads share the 2 cores), then paced, each client sending one request
    // every few milliseconds whether or not the last was slow.
    let probe = Probe::calibrate();
    let cpu_before = cpu_seconds(server.id());
    let ((saturated, wall), saturated_slow) = probe.during(|| concurrent(&addr, None));
    let cpu_per_request = (cpu_seconds(server.id()) - cpu_before) / saturated.len() as f64;
    let paced: Vec<(f64, Vec<f64>, f64)> = PACED_RATES
        .iter()
        .flat_map(|&rate| std::iter::repeat_n(rate, PACED_REPEATS))
        .map(|rate| {
            let every = Duration::from_secs_f64(CLIENTS as f64 / rate);
            let ((latencies, _), slow) = probe.during(|| concurrent(&addr, Some(every)));
            (rate, latencies, slow)
        })
        .collect();
    let after_rss = rss_mb(server.id());
    let _ = server.kill();
    let _ = server.wait();

    println!("| measure (200 DAGs, 100,000 runs, SQLite) | median of {REPEATS} |");
    println!("|---|---|");
    println!("| `GET /api/v1/dags` (the DAG list) | {list:.1} ms |");
    println!("| `GET /api/v1/dags/dag_000/grid?runs=25` (25 runs × 200 tasks) | {grid:.1} ms |");
    println!("| `GET /metrics` | {metrics:.1} ms |");
    println!("| `GET /api/v1/runs?dag_id=…&limit=50` | {run_page:.1} ms |");
    let requests = saturated.len();
    println!(
        "| API with {CLIENTS} concurrent clients as fast as they can, {requests} requests | p50 {:.1} ms, p99 {:.1} ms, {:.0} requests/s; host slow {:.1}% |",
        percentile(&saturated, 0.50),
        percentile(&saturated, 0.99),
        requests as f64 / wall,
        saturated_slow * 100.0
    );
    println!(
        "| ... the server's CPU time per request (user + system) | {:.0} µs |",
        cpu_per_request * 1e6
    );
    for (rate, latencies, slow) in &paced {
        println!(
            "| API with {CLIENTS} concurrent clients sending {rate:.0} requests/s in all | p50 {:.1} ms, p99 {:.1} ms; host slow {:.1}% |",
            percentile(latencies, 0.50),
            percentile(latencies, 0.99),
            slow * 100.0
        );
    }
    println!(
        "| `orch serve` resident memory, idle with the UI on, before any request | {fresh_rss:.1} MB |"
    );
    println!("| ... after the first pages (SQLite's page caches warm) | {idle_rss:.1} MB |");
    println!("| ... after the load above | {after_rss:.1} MB |");
}

fn run_id(n: usize) -> String {
    format!("dag_{:03}__scheduled__run{n:06}", 1 + n % (DAGS - 1))
}

/// 100,000 finished runs spread over the 199 small DAGs, two task instances each, and 100
/// runs of the 200-task DAG with every instance: generated inside SQLite.
fn fill_history(db: &std::path::Path) {
    let sql = format!(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last})
         INSERT INTO dag_runs (run_id, dag_id, run_type, logical_date, data_interval_start,
             data_interval_end, conf, state, queued_at, started_at, ended_at)
         SELECT printf('dag_%03d__scheduled__run%06d', 1 + i % {small}, i), printf('dag_%03d', 1 + i % {small}),
             'scheduled', printf('2016-01-01T00:00:00.%06dZ', i), printf('2016-01-01T00:00:00.%06dZ', i),
             printf('2016-01-01T00:00:01.%06dZ', i), '{{}}', CASE WHEN i % 17 = 0 THEN 'failed' ELSE 'success' END,
             printf('2016-01-01T00:00:00.%06dZ', i), printf('2016-01-01T00:00:00.%06dZ', i),
             printf('2016-01-01T00:00:01.%06dZ', i)
         FROM n;
         INSERT INTO task_instances (run_id, task_id, position, state, try_number)
             SELECT run_id, 'extract', 0, 'success', 1 FROM dag_runs;
         INSERT INTO task_instances (run_id, task_id, position, state, try_number)
             SELECT run_id, 'load', 1, state, 1 FROM dag_runs;
         WITH RECURSIVE r(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM r WHERE i < {wide_last})
         INSERT INTO dag_runs (run_id, dag_id, run_type, logical_date, data_interval_start,
             data_interval_end, conf, state, queued_at, started_at, ended_at)
         SELECT printf('dag_000__manual__%03d', i), 'dag_000', 'manual', printf('2017-01-01T00:%02d:00.000000Z', i % 60),
             '2017-01-01T00:00:00.000000Z', '2017-01-01T00:00:00.000000Z', '{{}}', 'success',
             printf('2017-01-01T00:00:00.%06dZ', i), printf('2017-01-01T00:%02d:00.000000Z', i % 60),
             printf('2017-01-01T00:%02d:30.000000Z', i % 60)
         FROM r;
         WITH RECURSIVE t(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM t WHERE j < {task_last})
         INSERT INTO task_instances (run_id, task_id, position, state, try_number)
             SELECT d.run_id, printf('t%03d', t.j), t.j, 'success', 1
             FROM dag_runs d, t WHERE d.dag_id = 'dag_000';",
        last = RUNS - WIDE_RUNS - 1,
        small = DAGS - 1,
        wide_last = WIDE_RUNS - 1,
        task_last = WIDE_TASKS - 1,
    );
    execute(db, &sql);
}

fn execute(db: &std::path::Path, sql: &str) {
    use sqlx::Connection;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let url = format!("sqlite://{}", db.display());
            let mut conn = sqlx::SqliteConnection::connect(&url)
                .await
                .expect("connect");
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
                .execute(&mut conn)
                .await
                .expect("fill the history");
        });
}

fn listening_address(server: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let stderr = server.stderr.take().expect("stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("serve's log").expect("a line");
        if let Some(rest) = line.split("http://").nth(1)
            && line.contains("listening")
        {
            break rest.split('/').next().expect("address").to_string();
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    addr
}

fn get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{path}: {}",
        &answer[..answer.len().min(300)]
    );
    answer
}

/// One HTTP/1.1 connection, kept alive between requests.
struct KeptAlive {
    stream: std::io::BufReader<std::net::TcpStream>,
    addr: String,
}

impl KeptAlive {
    fn open(addr: &str) -> KeptAlive {
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        KeptAlive {
            stream: std::io::BufReader::new(stream),
            addr: addr.to_string(),
        }
    }

    fn get(&mut self, path: &str) -> String {
        use std::io::BufRead;
        let addr = &self.addr;
        write!(
            self.stream.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n"
        )
        .expect("send");
        let mut status = String::new();
        self.stream.read_line(&mut status).expect("status line");
        assert!(status.starts_with("HTTP/1.1 200"), "{path}: {status}");
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().expect("length");
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).expect("body");
        String::from_utf8(body).expect("UTF-8")
    }
}

/// The latencies, sorted, of `CLIENTS` clients making `REQUESTS_PER_CLIENT` requests each
/// at once, and the wall time in seconds. Paced, each client sends a request every `every`
/// and a latency counts from when the request was due, so a slow answer also counts against
/// the requests that waited behind it.
fn concurrent(addr: &str, every: Option<Duration>) -> (Vec<f64>, f64) {
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let addr = addr.to_string();
            std::thread::spawn(move || {
                let mut connection = KeptAlive::open(&addr);
                let mut latencies = Vec::new();
                // Clients start spread over one interval, as independent ones would.
                let first = Instant::now()
                    + every.map_or(Duration::ZERO, |e| e * c as u32 / CLIENTS as u32);
                for i in 0..REQUESTS_PER_CLIENT {
                    let n = (c * REQUESTS_PER_CLIENT + i) % RUNS;
                    let path = if i % 2 == 0 {
                        format!("/api/v1/runs/{}", run_id(n))
                    } else {
                        format!("/api/v1/runs?dag_id=dag_{:03}&limit=25", 1 + n % (DAGS - 1))
                    };
                    let due = match every {
                        Some(every) => {
                            let due = first + every * i as u32;
                            std::thread::sleep(due.saturating_duration_since(Instant::now()));
                            due
                        }
                        None => Instant::now(),
                    };
                    connection.get(&path);
                    latencies.push(due.elapsed().as_secs_f64() * 1000.0);
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<f64> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client"))
        .collect();
    let wall = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    (latencies, wall)
}

/// Watches how fast the machine's CPU runs: a thread repeats a fixed piece of work every
/// few milliseconds and times it in its own CPU time, which sharing the cores with the
/// server and the clients does not inflate. When the host runs other tenants, the same work
/// takes two to ten times longer, on both cores at once, for 0.1 to 0.2 s every second or
/// two; a server's requests then queue for reasons of the machine.
struct Probe {
    /// The work's CPU time on a quiet machine: the median of many tries.
    baseline: Duration,
}

impl Probe {
    const EVERY: Duration = Duration::from_millis(5);

    fn calibrate() -> Probe {
        let mut times: Vec<Duration> = (0..200).map(|_| Probe::work()).collect();
        times.sort();
        Probe {
            baseline: times[times.len() / 2],
        }
    }

    /// Runs `f` with the probe watching; returns its result and the share of the probe's
    /// tries that took over twice the baseline.
    fn during<T>(&self, f: impl FnOnce() -> T) -> (T, f64) {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watching = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut times = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    times.push(Probe::work());
                    std::thread::sleep(Probe::EVERY);
                }
                times
            })
        };
        let result = f();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let times = watching.join().expect("probe");
        let slow = times.iter().filter(|t| **t > self.baseline * 2).count();
        (result, slow as f64 / times.len().max(1) as f64)
    }

    /// The CPU time this thread spends on a fixed computation of about 0.2 ms.
    fn work() -> Duration {
        let before = thread_cpu_time();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut table = vec![0u64; 4096];
        for i in 0..100_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let slot = (x as usize) % table.len();
            table[slot] = table[slot].wrapping_add(i);
        }
        std::hint::black_box(&table);
        thread_cpu_time() - before
    }
}

fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// The `p` quantile of sorted latencies.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Median milliseconds of `REPEATS` requests, one at a time.
fn timed(addr: &str, path: &str) -> f64 {
    let mut times: Vec<f64> = (0..REPEATS)
        .map(|_| {
            let t = Instant::now();
            get(addr, path);
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// User and system CPU seconds the process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    // utime and stime are the 14th and 15th fields: the 12th and 13th after the name.
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    // SAFETY: sysconf only reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / per_second
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb / 1024.0
}
