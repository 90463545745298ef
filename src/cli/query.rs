//! `orch query`: SQL over the lake's tables, printed as a table, CSV or JSON, or written as
//! Parquet.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use polars::prelude::*;

use crate::config::Config;
use crate::lake::Lake;
use crate::lake::query::LakeSql;

/// How `orch query` gives its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, for people.
    Table,
    /// RFC 4180: a header line, then one line per row.
    Csv,
    /// One JSON object per row, one per line; decimals as strings, exact.
    Json,
    /// One Parquet file (needs `--output`).
    Parquet,
}

/// Set in the environment of the process that runs a query under its memory limit.
const LIMITED: &str = "ORCH_QUERY_UNDER_LIMIT";

/// Runs the query in a child process of this binary whose private memory is capped at
/// `query_memory_limit`: an allocation past it ends only the child, and the answer says
/// which limit it met, instead of an abort and a backtrace (or the host's memory taken).
/// The child writes the answer itself; the caller is the child when [`LIMITED`] is set.
pub async fn query_under_limit(config: &Config) -> anyhow::Result<Option<ExitCode>> {
    use std::os::unix::process::ExitStatusExt;
    if std::env::var_os(LIMITED).is_some() {
        return Ok(None);
    }
    let limit = config.query_memory_limit;
    let exe = std::env::current_exe().context("cannot find the orch binary")?;
    let mut command = tokio::process::Command::new(exe);
    command
        .args(std::env::args_os().skip(1))
        .env(LIMITED, "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::piped());
    let limits = crate::attempt::Limits {
        memory: Some(limit),
        cpu_seconds: None,
    };
    // SAFETY: the closure only calls setrlimit(2), async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(move || limits.apply_to_this_process());
    }
    // Not `output()`, which would capture the answer too.
    let out = command
        .spawn()
        .context("cannot start the query's process")?
        .wait_with_output()
        .await
        .context("the query's process")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let out_of_memory =
        stderr.contains("memory allocation of") || out.status.signal() == Some(libc::SIGKILL);
    if out_of_memory {
        anyhow::bail!(
            "the query needed more memory than its limit of {} (`query_memory_limit` in \
             orch.yaml, or ORCH_QUERY_MEMORY_LIMIT): narrow it (a filter on `symbol` or \
             `date`, fewer columns, no cross join) or raise the limit",
            crate::attempt::format_size(limit)
        );
    }
    eprint!("{stderr}");
    Ok(Some(match out.status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    }))
}

pub async fn query(
    config: &Config,
    sql: &str,
    format: Format,
    output: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    if format == Format::Parquet && output.is_none() {
        anyhow::bail!("--format parquet writes a file: give it with --output FILE");
    }
    let lake = Lake::open(&config.data.lake_url)?;
    let mut session = LakeSql::open(&lake, sql).await?;
    let plan = session.plan(sql)?;
    let mut frame = tokio::task::spawn_blocking(move || plan.collect())
        .await
        .context("the query stopped")?
        .map_err(|e| anyhow::anyhow!("the query failed: {e}"))?;
    let mut out: Box<dyn Write> = match output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    match format {
        Format::Table => write_table(&frame, &mut out)?,
        Format::Csv => write_csv(&frame, &mut out)?,
        Format::Json => write_json(&frame, &mut out)?,
        Format::Parquet => out.write_all(&crate::lake::daily_trades::write_parquet(&mut frame)?)?,
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// A value as text: decimals with all their digits, times in RFC 3339, nulls empty.
fn text(value: &AnyValue) -> Option<String> {
    match value {
        AnyValue::Null => None,
        AnyValue::String(s) => Some((*s).to_string()),
        AnyValue::StringOwned(s) => Some(s.to_string()),
        other => Some(other.to_string()),
    }
}

/// Aligned columns with a header, every row and every column: a query's answer, not a
/// preview.
fn write_table(frame: &DataFrame, out: &mut dyn Write) -> anyhow::Result<()> {
    let names: Vec<String> = frame
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    let mut rows: Vec<Vec<String>> = Vec::with_capacity(frame.height());
    for i in 0..frame.height() {
        let row = frame.get_row(i)?;
        rows.push(row.0.iter().map(|v| text(v).unwrap_or_default()).collect());
    }
    let widths: Vec<usize> = (0..names.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([names[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join(" | ")
            .trim_end()
            .to_string()
    };
    writeln!(out, "{}", line(&names))?;
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    writeln!(out, "{}", rule.join("-+-"))?;
    for row in &rows {
        writeln!(out, "{}", line(row))?;
    }
    writeln!(out, "({} rows)", rows.len())?;
    Ok(())
}

fn write_csv(frame: &DataFrame, out: &mut dyn Write) -> anyhow::Result<()> {
    let quote = |field: &str| {
        if field.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", field.replace('"', "\"\""))
        } else {
            field.to_string()
        }
    };
    let header: Vec<String> = frame
        .get_column_names()
        .iter()
        .map(|name| quote(name.as_str()))
        .collect();
    writeln!(out, "{}", header.join(","))?;
    for i in 0..frame.height() {
        let row = frame.get_row(i)?;
        let fields: Vec<String> = row
            .0
            .iter()
            .map(|value| text(value).map(|t| quote(&t)).unwrap_or_default())
            .collect();
        writeln!(out, "{}", fields.join(","))?;
    }
    Ok(())
}

fn write_json(frame: &DataFrame, out: &mut dyn Write) -> anyhow::Result<()> {
    let names = frame.get_column_names();
    for i in 0..frame.height() {
        let row = frame.get_row(i)?;
        let object: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .zip(row.0.iter())
            .map(|(name, value)| {
                let json = match value {
                    AnyValue::Null => serde_json::Value::Null,
                    AnyValue::Boolean(b) => serde_json::Value::Bool(*b),
                    AnyValue::Int8(_)
                    | AnyValue::Int16(_)
                    | AnyValue::Int32(_)
                    | AnyValue::Int64(_)
                    | AnyValue::UInt8(_)
                    | AnyValue::UInt16(_)
                    | AnyValue::UInt32(_)
                    | AnyValue::UInt64(_) => value
                        .to_string()
                        .parse::<serde_json::Number>()
                        .map(serde_json::Value::Number)
                        .unwrap_or(serde_json::Value::Null),
                    AnyValue::Float32(_) | AnyValue::Float64(_) => value
                        .extract::<f64>()
                        .and_then(serde_json::Number::from_f64)
                        .map(serde_json::Value::Number)
                        .unwrap_or(serde_json::Value::Null),
                    // Decimals, dates and times as text: exact, and as SQL shows them.
                    other => text(other).map_or(serde_json::Value::Null, serde_json::Value::String),
                };
                (name.to_string(), json)
            })
            .collect();
        writeln!(out, "{}", serde_json::Value::Object(object))?;
    }
    Ok(())
}
