//! A BigQuery warehouse: `bigquery://PROJECT/DATASET[?location=EU]`, through the REST API.
//!
//! Each lake file goes up unchanged as a multipart media upload load job (`jobs.insert` on
//! the upload URI), appending to the table and creating it when missing. BigQuery has no
//! transaction spanning a load job and a row in the ledger table `_orch_loaded_files`, so
//! exactly-once rests on the job id instead: it is derived from `dataset/table/file`, and
//! BigQuery refuses a second job with the same id (HTTP 409). A load therefore goes:
//!
//! 1. `jobs.insert` with job id `orch_load_<sha256>_<generation>`, generation 0 first. A new
//!    job is waited for (`jobs.get`) until it is DONE; if it failed, the load fails with
//!    Google's reason and message.
//! 2. A 409 means an earlier attempt created that job: `jobs.get` tells what became of it.
//!    DONE without an error means the rows are in the table, and the load reports
//!    [`LoadOutcome::AlreadyLoaded`]; RUNNING or PENDING is waited for; DONE with an error
//!    means that attempt loaded nothing, so the next generation's job id is tried.
//! 3. Only after the job succeeded, a DML `INSERT` records the file in the ledger.
//!
//! A kill between steps 1 and 3 leaves the rows in the table and the file missing from the
//! ledger. The next run lists the file as pending, loads it again under the same job id, gets
//! the 409 and the DONE job, inserts the ledger row and reports it already loaded: nothing is
//! appended twice. The ledger stays the record of what is loaded, so a run uploads only new
//! files; the job ids only have to bridge the moment between a load and its ledger row. Two
//! loaders racing on one file could both insert its ledger row; the ledger is read as a set,
//! so that is harmless.
//!
//! Parquet decimals load with `decimalTargetTypes: ["NUMERIC", "BIGNUMERIC"]`: BigQuery takes
//! the first of NUMERIC, BIGNUMERIC that holds the precision and scale. Trade values
//! (`quote_qty`, `total_trade_value`: decimal(38, 16), price × qty exact) need BIGNUMERIC, since
//! NUMERIC keeps at most 9 fractional digits; prices and quantities (decimal(38, 8): 30
//! integer digits to NUMERIC's 29) become BIGNUMERIC too. Both hold every value exactly.
//!
//! [`BigQueryWarehouse::replace`] (the star schema's daily load) works differently, since a
//! rerun must write the day again: fresh job ids, and no ledger. A day of a fact table goes
//! into a table day-partitioned on its time column, by a load job into the partition
//! decorator `table$YYYYMMDD` with `WRITE_TRUNCATE`, which swaps the partition atomically (a
//! day without rows is a `DELETE` of the day instead). Dimension members are a `DELETE ...
//! IN UNNEST(@keys)` and then a `WRITE_APPEND` load job: two jobs, not atomic together.
//!
//! `BIGQUERY_API_URL` replaces `https://bigquery.googleapis.com` (the tests' stand-in);
//! credentials come from `GOOGLE_APPLICATION_CREDENTIALS` ([`auth`]).

mod auth;

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::{RequestBuilder, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ColumnData, Keys, LoadOutcome, Replacement, Scope, WarehouseError, timestamp_text};
use crate::backoff::Backoff;
use crate::http_client::{self, BodyError};

/// Google's API, unless `BIGQUERY_API_URL` says otherwise.
const DEFAULT_API_URL: &str = "https://bigquery.googleapis.com";

const LEDGER_TABLE: &str = "_orch_loaded_files";

/// The ledger's files under a prefix. `_orch_loaded_files` resolves through the request's
/// `defaultDataset`, so the SQL needs no quoted project or dataset names.
const LEDGER_SELECT_SQL: &str =
    "SELECT file FROM _orch_loaded_files WHERE file >= @from AND file < @to";

/// Records one loaded file. `rows` is a reserved word in GoogleSQL, hence the backticks.
const LEDGER_INSERT_SQL: &str = "INSERT INTO _orch_loaded_files (file, table_name, `rows`, loaded_at) \
     VALUES (@file, @table_name, @rows, CURRENT_TIMESTAMP())";

/// How long a load or query job may stay PENDING or RUNNING before the load gives up (the
/// task's retry then picks the same job up again).
const JOB_WAIT_LIMIT: Duration = Duration::from_secs(600);
const POLL: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
/// How long `jobs.query` and `getQueryResults` wait server-side for a query to finish.
const QUERY_WAIT_MS: u64 = 10_000;
/// A UTC day, the span of a partition that [`BigQueryWarehouse::replace`] replaces.
const DAY_MS: i64 = 86_400_000;
/// Uploads of large files may take a while; no single call should hang a task forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// The most of an answer orch reads from the API; a ledger of 100,000 files is about 10 MB.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BigQueryError {
    #[error(
        "warehouse URL `{url}`: {reason}; expected bigquery://PROJECT/DATASET[?location=LOCATION]"
    )]
    BadUrl { url: String, reason: String },
    #[error(
        "BigQuery needs credentials: set GOOGLE_APPLICATION_CREDENTIALS to a service account or authorized user JSON key file"
    )]
    NoCredentials,
    #[error("GOOGLE_APPLICATION_CREDENTIALS file {path}: {reason}")]
    BadCredentials { path: String, reason: String },
    #[error("Google token endpoint {uri} refused the credentials: HTTP {status}: {message}")]
    TokenRefused {
        uri: String,
        status: u16,
        message: String,
    },
    #[error("BigQuery {call}: {reason}")]
    Transport { call: String, reason: String },
    #[error("BigQuery {call}: HTTP {status}{}: {message}", reason_suffix(reason))]
    Api {
        call: String,
        status: u16,
        reason: Option<String>,
        message: String,
    },
    #[error("BigQuery {call}: unexpected answer: {detail}")]
    BadAnswer { call: String, detail: String },
    #[error(
        "BigQuery load job {job_id} failed{}: {message}",
        reason_suffix(reason)
    )]
    JobFailed {
        job_id: String,
        reason: Option<String>,
        message: String,
    },
    #[error("BigQuery job {job_id} was still {state} after {waited:?}")]
    JobTimeout {
        job_id: String,
        state: String,
        waited: Duration,
    },
}

fn reason_suffix(reason: &Option<String>) -> String {
    reason
        .as_ref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default()
}

impl BigQueryError {
    /// An answer that could not be read: cut off (worth another try), or too large.
    fn from_body(call: &str, error: BodyError) -> BigQueryError {
        match error {
            BodyError::Broken(reason) => BigQueryError::Transport {
                call: call.to_string(),
                reason,
            },
            too_large => BigQueryError::BadAnswer {
                call: call.to_string(),
                detail: too_large.to_string(),
            },
        }
    }

    /// Whether another attempt can help: not for missing or refused credentials, a bad URL,
    /// a refused request (a 4XX other than 408 and 429) or a failed job; yes for timeouts,
    /// lost connections, 5XX, rate limits and a job still running.
    pub fn is_transient(&self) -> bool {
        match self {
            BigQueryError::BadUrl { .. }
            | BigQueryError::NoCredentials
            | BigQueryError::BadCredentials { .. }
            | BigQueryError::BadAnswer { .. } => false,
            // Google's reasons for a job that may well succeed when run again.
            BigQueryError::JobFailed { reason, .. } => reason.as_deref().is_some_and(|r| {
                matches!(
                    r,
                    "backendError"
                        | "internalError"
                        | "jobInternalError"
                        | "rateLimitExceeded"
                        | "timeout"
                )
            }),
            BigQueryError::TokenRefused { status, .. } | BigQueryError::Api { status, .. } => {
                !(400..500).contains(status) || matches!(status, 408 | 429)
            }
            BigQueryError::Transport { .. } | BigQueryError::JobTimeout { .. } => true,
        }
    }

    fn is_conflict(&self) -> bool {
        matches!(self, BigQueryError::Api { status, .. } if *status == StatusCode::CONFLICT.as_u16())
    }
}

/// Where the data goes: the parts of a `bigquery://` URL.
#[derive(Debug, PartialEq, Eq)]
struct Destination {
    project: String,
    dataset: String,
    location: Option<String>,
}

impl Destination {
    fn parse(url: &str) -> Result<Destination, BigQueryError> {
        let bad = |reason: &str| BigQueryError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let rest = url
            .strip_prefix("bigquery://")
            .ok_or_else(|| bad("not a bigquery:// URL"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (project, dataset) = path
            .split_once('/')
            .ok_or_else(|| bad("no dataset after the project"))?;
        // Both go into request paths, so only the characters BigQuery allows in them pass.
        let project_ok = !project.is_empty()
            && project
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
        if !project_ok {
            return Err(bad(
                "the project id must be letters, digits, `-`, `.` or `:`",
            ));
        }
        let dataset_ok = !dataset.is_empty()
            && dataset
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !dataset_ok {
            return Err(bad("the dataset id must be letters, digits or `_`"));
        }
        let mut location = None;
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "location"
                    if !value.is_empty()
                        && value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
                {
                    location = Some(value.into_owned());
                }
                "location" => return Err(bad("the location must be letters, digits or `-`")),
                _ => return Err(bad(&format!("unknown parameter `{key}`"))),
            }
        }
        Ok(Destination {
            project: project.to_string(),
            dataset: dataset.to_string(),
            location,
        })
    }
}

/// The parts of a BigQuery Job resource that orch reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Job {
    status: JobStatus,
    #[serde(default)]
    statistics: JobStatistics,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobStatus {
    state: String,
    error_result: Option<ErrorProto>,
}

#[derive(Debug, Deserialize)]
struct ErrorProto {
    reason: Option<String>,
    message: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct JobStatistics {
    load: Option<LoadStatistics>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoadStatistics {
    /// An int64 as a JSON string, as the API sends 64-bit integers.
    output_rows: Option<String>,
}

/// A `jobs.query` or `jobs.getQueryResults` answer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryAnswer {
    #[serde(default)]
    job_complete: bool,
    job_reference: Option<JobReference>,
    page_token: Option<String>,
    #[serde(default)]
    rows: Vec<QueryRow>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobReference {
    job_id: String,
}

#[derive(Debug, Deserialize)]
struct QueryRow {
    f: Vec<QueryCell>,
}

#[derive(Debug, Deserialize)]
struct QueryCell {
    v: Value,
}

pub struct BigQueryWarehouse {
    http: reqwest::Client,
    /// `https://bigquery.googleapis.com` or `BIGQUERY_API_URL`, without a trailing `/`.
    api: String,
    destination: Destination,
    tokens: auth::TokenSource,
}

impl BigQueryWarehouse {
    /// Reads the credentials and creates the ledger table unless it exists.
    pub async fn open(url: &str) -> Result<BigQueryWarehouse, BigQueryError> {
        let destination = Destination::parse(url)?;
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("orch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BigQueryError::Transport {
                call: "client setup".to_string(),
                reason: http_client::describe(&e),
            })?;
        let tokens = auth::TokenSource::from_environment(http.clone())?;
        let api = std::env::var("BIGQUERY_API_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| DEFAULT_API_URL.to_string())
            .trim_end_matches('/')
            .to_string();
        let warehouse = BigQueryWarehouse {
            http,
            api,
            destination,
            tokens,
        };
        warehouse.create_ledger().await?;
        Ok(warehouse)
    }

    fn project_url(&self) -> String {
        format!(
            "{}/bigquery/v2/projects/{}",
            self.api, self.destination.project
        )
    }

    /// Creates the ledger unless it exists.
    async fn create_ledger(&self) -> Result<(), BigQueryError> {
        let field =
            |name: &str, kind: &str| json!({"name": name, "type": kind, "mode": "REQUIRED"});
        let table = json!({
            "description": "Lake files loaded by orch's warehouse.load_parquet, one row per file.",
            "schema": {"fields": [
                field("file", "STRING"),
                field("table_name", "STRING"),
                field("rows", "INT64"),
                field("loaded_at", "TIMESTAMP"),
            ]},
        });
        self.create_table(LEDGER_TABLE, table).await
    }

    /// `tables.insert` of `table` (a Table resource without its `tableReference`); 409 means
    /// it is there already.
    async fn create_table(&self, table_id: &str, mut table: Value) -> Result<(), BigQueryError> {
        let Destination {
            project, dataset, ..
        } = &self.destination;
        table["tableReference"] =
            json!({"projectId": project, "datasetId": dataset, "tableId": table_id});
        let call = format!("tables.insert of {dataset}.{table_id}");
        let request = self
            .http
            .post(format!("{}/datasets/{dataset}/tables", self.project_url()))
            .json(&table);
        match self.send(&call, request).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_conflict() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Files of the ledger in `[from, to)`, compared as GoogleSQL compares strings: by bytes.
    pub async fn loaded_files(&self, from: &str, to: &str) -> Result<Vec<String>, BigQueryError> {
        let rows = self
            .query(
                "the ledger",
                LEDGER_SELECT_SQL,
                &[scalar("from", "STRING", from), scalar("to", "STRING", to)],
            )
            .await?;
        rows.into_iter()
            .map(|row| match row.f.into_iter().next().map(|cell| cell.v) {
                Some(Value::String(file)) => Ok(file),
                other => Err(BigQueryError::BadAnswer {
                    call: "ledger query".to_string(),
                    detail: format!("a row without a file name: {other:?}"),
                }),
            })
            .collect()
    }

    /// Loads one Parquet file into `table` exactly once (see the module docs).
    pub async fn load(
        &self,
        table: &str,
        file: &str,
        parquet: Bytes,
    ) -> Result<LoadOutcome, WarehouseError> {
        let fail = |source| WarehouseError::BigQueryLoad {
            table: table.to_string(),
            file: file.to_string(),
            source: Box::new(source),
        };
        let stem = job_id_stem(&self.destination.dataset, table, file);
        let mut generation = 0_u32;
        loop {
            let job_id = format!("{stem}_{generation}");
            let (rows, outcome) = match self
                .insert_load_job(&job_id, table, "WRITE_APPEND", &parquet)
                .await
            {
                Ok(job) => {
                    let job = self.wait_until_done(&job_id, job).await.map_err(fail)?;
                    if let Some(error) = job.status.error_result {
                        return Err(fail(job_failed(&job_id, error)));
                    }
                    let rows = output_rows(&job_id, &job).map_err(fail)?;
                    (rows, LoadOutcome::Loaded { rows })
                }
                Err(e) if e.is_conflict() => {
                    let job = self.get_job(&job_id).await.map_err(fail)?;
                    let job = self.wait_until_done(&job_id, job).await.map_err(fail)?;
                    if job.status.error_result.is_some() {
                        // That attempt loaded nothing; its id is spent.
                        generation += 1;
                        continue;
                    }
                    (
                        output_rows(&job_id, &job).map_err(fail)?,
                        LoadOutcome::AlreadyLoaded,
                    )
                }
                Err(e) => return Err(fail(e)),
            };
            self.record_loaded(table, file, rows).await.map_err(fail)?;
            return Ok(outcome);
        }
    }

    /// Replaces part of each table, one after the other: a day of a fact table by a load job
    /// truncating its partition, dimension members by a DELETE and an appending load job.
    /// BigQuery has no transaction spanning jobs, so unlike SQLite and PostgreSQL this is
    /// not all or nothing: each day partition is replaced atomically, but a failure between
    /// a dimension's DELETE and its load leaves those members missing until the rerun (which
    /// the task's retry does) writes them again. Returns the rows written.
    pub async fn replace(&self, replacements: &[Replacement]) -> Result<u64, WarehouseError> {
        let mut written = 0;
        for replacement in replacements {
            self.replace_one(replacement).await?;
            written += replacement.rows as u64;
        }
        Ok(written)
    }

    async fn replace_one(&self, r: &Replacement) -> Result<(), WarehouseError> {
        let table = r.table.as_str();
        let refuse = |detail: String| WarehouseError::ReplaceRefused {
            table: table.to_string(),
            detail,
        };
        let fail = |source| WarehouseError::BigQueryReplace {
            table: table.to_string(),
            source: Box::new(source),
        };
        let fields = r
            .columns
            .iter()
            .map(|c| Ok(json!({"name": c.name, "type": bigquery_type(&c.data)?})))
            .collect::<Result<Vec<Value>, String>>()
            .map_err(refuse)?;
        let mut resource = json!({"schema": {"fields": fields}});
        let parquet = if r.rows == 0 {
            Bytes::new()
        } else {
            crate::lake::daily_trades::write_parquet(&mut r.frame.clone())
                .map_err(|e| refuse(format!("cannot write the new rows as Parquet: {e}")))?
        };
        match &r.scope {
            Scope::TimeRange {
                column,
                from_ms,
                to_ms,
            } => {
                let day = chrono::DateTime::from_timestamp_millis(*from_ms)
                    .filter(|_| from_ms.rem_euclid(DAY_MS) == 0 && to_ms - from_ms == DAY_MS)
                    .ok_or_else(|| {
                        refuse(format!(
                            "BigQuery replaces whole UTC days only, not {} to {}",
                            timestamp_text(*from_ms),
                            timestamp_text(*to_ms)
                        ))
                    })?;
                resource["timePartitioning"] = json!({"type": "DAY", "field": column});
                self.create_table(table, resource).await.map_err(fail)?;
                if r.rows == 0 {
                    // No Parquet file to truncate the partition with: delete its rows.
                    let sql = format!(
                        "DELETE FROM `{table}` WHERE `{column}` >= @from AND `{column}` < @to"
                    );
                    let bound = |name, ms| scalar(name, "TIMESTAMP", &bigquery_timestamp(ms));
                    self.query(table, &sql, &[bound("from", *from_ms), bound("to", *to_ms)])
                        .await
                        .map_err(fail)?;
                } else {
                    let partition = format!("{table}${}", day.format("%Y%m%d"));
                    self.run_load_job(&partition, "WRITE_TRUNCATE", &parquet)
                        .await
                        .map_err(fail)?;
                }
            }
            Scope::Keys { column, keys } => {
                self.create_table(table, resource).await.map_err(fail)?;
                if !keys.is_empty() {
                    let sql = format!("DELETE FROM `{table}` WHERE `{column}` IN UNNEST(@keys)");
                    let keys = match keys {
                        Keys::Int(v) => array("keys", "INT64", v.iter().map(i64::to_string)),
                        Keys::Text(v) => array("keys", "STRING", v.iter().cloned()),
                    };
                    self.query(table, &sql, &[keys]).await.map_err(fail)?;
                }
                if r.rows > 0 {
                    self.run_load_job(table, "WRITE_APPEND", &parquet)
                        .await
                        .map_err(fail)?;
                }
            }
        }
        Ok(())
    }

    /// A load job under a fresh id (a rerun must load again, unlike [`Self::load`]), waited
    /// for until DONE.
    async fn run_load_job(
        &self,
        destination: &str,
        write: &str,
        parquet: &[u8],
    ) -> Result<(), BigQueryError> {
        let job_id = format!(
            "orch_replace_{}_{:016x}",
            destination.replace('$', "_"),
            rand::random::<u64>()
        );
        let job = self
            .insert_load_job(&job_id, destination, write, parquet)
            .await?;
        let job = self.wait_until_done(&job_id, job).await?;
        match job.status.error_result {
            Some(error) => Err(job_failed(&job_id, error)),
            None => Ok(()),
        }
    }

    /// `jobs.insert` on the upload URI: the Job resource and the file in one
    /// `multipart/related` request. `table` may carry a partition decorator (`t$YYYYMMDD`);
    /// `write` is the job's `writeDisposition`.
    async fn insert_load_job(
        &self,
        job_id: &str,
        table: &str,
        write: &str,
        parquet: &[u8],
    ) -> Result<Job, BigQueryError> {
        let Destination {
            project,
            dataset,
            location,
        } = &self.destination;
        let mut job_reference = json!({"projectId": project, "jobId": job_id});
        if let Some(location) = location {
            job_reference["location"] = json!(location);
        }
        let job = json!({
            "jobReference": job_reference,
            "configuration": {"load": {
                "destinationTable": {"projectId": project, "datasetId": dataset, "tableId": table},
                "sourceFormat": "PARQUET",
                "writeDisposition": write,
                "createDisposition": "CREATE_IF_NEEDED",
                // See the module docs, and `bigquery_type` for tables orch creates.
                "decimalTargetTypes": DECIMAL_TARGET_TYPES,
                "parquetOptions": {"enableListInference": true},
            }},
        });
        let (content_type, body) = multipart_related(job.to_string().as_bytes(), parquet);
        let request = self
            .http
            .post(format!(
                "{}/upload/bigquery/v2/projects/{project}/jobs?uploadType=multipart",
                self.api
            ))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        let call = format!("jobs.insert of load job {job_id}");
        let answer = self.send(&call, request).await?;
        parse_answer(&call, answer)
    }

    async fn get_job(&self, job_id: &str) -> Result<Job, BigQueryError> {
        let call = format!("jobs.get of {job_id}");
        let mut request = self
            .http
            .get(format!("{}/jobs/{job_id}", self.project_url()));
        if let Some(location) = &self.destination.location {
            request = request.query(&[("location", location)]);
        }
        let answer = self.send(&call, request).await?;
        parse_answer(&call, answer)
    }

    /// Polls `jobs.get` with a growing delay until the job is DONE, for at most
    /// [`JOB_WAIT_LIMIT`].
    async fn wait_until_done(&self, job_id: &str, mut job: Job) -> Result<Job, BigQueryError> {
        let started = Instant::now();
        let mut polls = 0;
        while job.status.state != "DONE" {
            if started.elapsed() >= JOB_WAIT_LIMIT {
                return Err(BigQueryError::JobTimeout {
                    job_id: job_id.to_string(),
                    state: job.status.state,
                    waited: started.elapsed(),
                });
            }
            polls += 1;
            tokio::time::sleep(POLL.delay(polls)).await;
            job = self.get_job(job_id).await?;
        }
        Ok(job)
    }

    async fn record_loaded(&self, table: &str, file: &str, rows: u64) -> Result<(), BigQueryError> {
        self.query(
            "the ledger",
            LEDGER_INSERT_SQL,
            &[
                scalar("file", "STRING", file),
                scalar("table_name", "STRING", table),
                scalar("rows", "INT64", &rows.to_string()),
            ],
        )
        .await
        .map(drop)
    }

    /// Runs a GoogleSQL statement about `what` with named parameters ([`scalar`], [`array`])
    /// through `jobs.query`, following `getQueryResults` until the job is complete and every
    /// page read.
    async fn query(
        &self,
        what: &str,
        sql: &str,
        parameters: &[Value],
    ) -> Result<Vec<QueryRow>, BigQueryError> {
        let Destination {
            project,
            dataset,
            location,
        } = &self.destination;
        let mut request = json!({
            "query": sql,
            "useLegacySql": false,
            "parameterMode": "NAMED",
            "queryParameters": parameters,
            "defaultDataset": {"projectId": project, "datasetId": dataset},
            "timeoutMs": QUERY_WAIT_MS,
        });
        if let Some(location) = location {
            request["location"] = json!(location);
        }
        let call = format!("jobs.query on {what}");
        let answer = self
            .send(
                &call,
                self.http
                    .post(format!("{}/queries", self.project_url()))
                    .json(&request),
            )
            .await?;
        let mut answer: QueryAnswer = parse_answer(&call, answer)?;
        let started = Instant::now();
        let mut rows = Vec::new();
        loop {
            if answer.job_complete {
                rows.append(&mut answer.rows);
                if answer.page_token.is_none() {
                    return Ok(rows);
                }
            }
            let Some(JobReference { job_id }) = answer.job_reference else {
                return Err(BigQueryError::BadAnswer {
                    call,
                    detail: "an incomplete answer without a jobReference".to_string(),
                });
            };
            if !answer.job_complete && started.elapsed() >= JOB_WAIT_LIMIT {
                return Err(BigQueryError::JobTimeout {
                    job_id,
                    state: "RUNNING".to_string(),
                    waited: started.elapsed(),
                });
            }
            let mut parameters = vec![("timeoutMs", QUERY_WAIT_MS.to_string())];
            if let Some(token) = answer.page_token {
                parameters.push(("pageToken", token));
            }
            if let Some(location) = location {
                parameters.push(("location", location.clone()));
            }
            let results_call = format!("jobs.getQueryResults of {job_id}");
            let next = self
                .send(
                    &results_call,
                    self.http
                        .get(format!("{}/queries/{job_id}", self.project_url()))
                        .query(&parameters),
                )
                .await?;
            answer = parse_answer(&results_call, next)?;
        }
    }

    /// Sends a request with a bearer token; a non-2XX answer becomes [`BigQueryError::Api`]
    /// with Google's `error.message` and first `errors[].reason`.
    async fn send(&self, call: &str, request: RequestBuilder) -> Result<Value, BigQueryError> {
        let token = self.tokens.token().await?;
        let response =
            request
                .bearer_auth(token)
                .send()
                .await
                .map_err(|e| BigQueryError::Transport {
                    call: call.to_string(),
                    reason: http_client::describe(&e),
                })?;
        let status = response.status();
        let body = http_client::read_body(response, MAX_ANSWER)
            .await
            .map_err(|e| BigQueryError::from_body(call, e))?;
        if !status.is_success() {
            let (reason, message) = google_error(&body);
            return Err(BigQueryError::Api {
                call: call.to_string(),
                status: status.as_u16(),
                reason,
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|e| BigQueryError::BadAnswer {
            call: call.to_string(),
            detail: format!("not JSON: {e}"),
        })
    }
}

/// A named query parameter of a scalar type.
fn scalar(name: &str, kind: &str, value: &str) -> Value {
    json!({
        "name": name,
        "parameterType": {"type": kind},
        "parameterValue": {"value": value},
    })
}

/// A named query parameter: an array of `kind`, for `IN UNNEST(@name)`.
fn array(name: &str, kind: &str, values: impl Iterator<Item = String>) -> Value {
    let values: Vec<Value> = values.map(|v| json!({"value": v})).collect();
    json!({
        "name": name,
        "parameterType": {"type": "ARRAY", "arrayType": {"type": kind}},
        "parameterValue": {"arrayValues": values},
    })
}

/// A TIMESTAMP parameter's value in a form GoogleSQL reads: `2026-11-22 00:00:00.000+00:00`.
fn bigquery_timestamp(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f+00:00").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// The decimal types Parquet decimals load as; see the module docs.
const DECIMAL_TARGET_TYPES: [&str; 2] = ["NUMERIC", "BIGNUMERIC"];

/// The column type of a table created for a replacement: the type BigQuery loads the
/// frame's Parquet column as under [`DECIMAL_TARGET_TYPES`], so that the load job matches
/// the table.
fn bigquery_type(data: &ColumnData) -> Result<&'static str, String> {
    Ok(match data {
        ColumnData::Int(_) => "INTEGER",
        ColumnData::Decimal {
            precision, scale, ..
        } if precision - scale <= 29 && *scale <= 9 => "NUMERIC",
        ColumnData::Decimal {
            precision, scale, ..
        } if precision - scale <= 38 && *scale <= 38 => "BIGNUMERIC",
        ColumnData::Decimal {
            precision, scale, ..
        } => {
            return Err(format!(
                "decimal({precision}, {scale}) fits neither BigQuery's NUMERIC nor BIGNUMERIC"
            ));
        }
        ColumnData::TimestampMs(_) => "TIMESTAMP",
        ColumnData::Bool(_) => "BOOL",
        ColumnData::Float(_) => "FLOAT64",
        ColumnData::Text(_) => "STRING",
    })
}

/// `orch_load_` and the SHA-256 of `dataset/table/file` in hex: the same file into the same
/// table always gets the same job ids, whichever process loads it.
fn job_id_stem(dataset: &str, table: &str, file: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{dataset}/{table}/{file}").as_bytes(),
    );
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("orch_load_{hex}")
}

/// A `multipart/related` body of a JSON metadata part and an octet-stream media part, as
/// Google's media upload protocol wants it; returns the Content-Type with its boundary.
fn multipart_related(metadata: &[u8], media: &[u8]) -> (String, Vec<u8>) {
    // A random boundary that the file happens to contain would cut it short: draw again.
    let boundary = loop {
        let candidate = format!("orch_{:032x}", rand::random::<u128>());
        if !media
            .windows(candidate.len())
            .any(|w| w == candidate.as_bytes())
        {
            break candidate;
        }
    };
    let mut body = Vec::with_capacity(metadata.len() + media.len() + 256);
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(metadata);
    body.extend_from_slice(
        format!("\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(media);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/related; boundary={boundary}"), body)
}

fn parse_answer<T: serde::de::DeserializeOwned>(
    call: &str,
    answer: Value,
) -> Result<T, BigQueryError> {
    serde_json::from_value(answer).map_err(|e| BigQueryError::BadAnswer {
        call: call.to_string(),
        detail: e.to_string(),
    })
}

fn job_failed(job_id: &str, error: ErrorProto) -> BigQueryError {
    BigQueryError::JobFailed {
        job_id: job_id.to_string(),
        reason: error.reason,
        message: error
            .message
            .unwrap_or_else(|| "no message from BigQuery".to_string()),
    }
}

/// The rows a DONE load job wrote, from `statistics.load.outputRows`.
fn output_rows(job_id: &str, job: &Job) -> Result<u64, BigQueryError> {
    job.statistics
        .load
        .as_ref()
        .and_then(|load| load.output_rows.as_deref())
        .and_then(|rows| rows.parse().ok())
        .ok_or_else(|| BigQueryError::BadAnswer {
            call: format!("load job {job_id}"),
            detail: "a DONE job without statistics.load.outputRows".to_string(),
        })
}

/// Google's `{"error": {"message", "errors": [{"reason"}]}}`, else the start of the body.
fn google_error(body: &[u8]) -> (Option<String>, String) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().map(|v| &v["error"]);
    let message = error.and_then(|e| e["message"].as_str());
    let reason = error.and_then(|e| e["errors"][0]["reason"].as_str());
    match message {
        Some(message) => (reason.map(str::to_string), message.to_string()),
        None => {
            let text = String::from_utf8_lossy(body);
            (None, text.chars().take(300).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_names_project_dataset_and_location() {
        assert_eq!(
            Destination::parse("bigquery://my-project/market?location=EU").expect("url"),
            Destination {
                project: "my-project".to_string(),
                dataset: "market".to_string(),
                location: Some("EU".to_string()),
            }
        );
        assert_eq!(
            Destination::parse("bigquery://p/d").expect("url").location,
            None
        );
        for bad in [
            "bigquery://project",
            "bigquery://project/",
            "bigquery://project/data/set",
            "bigquery://pro ject/d",
            "bigquery://p/d?region=EU",
        ] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn job_ids_are_stable_and_differ_per_table_and_file() {
        let a = job_id_stem("market", "trades_btcusdt", "raw/x/1-2.parquet");
        assert_eq!(
            a,
            job_id_stem("market", "trades_btcusdt", "raw/x/1-2.parquet")
        );
        assert_ne!(
            a,
            job_id_stem("market", "trades_btcusdt", "raw/x/3-4.parquet")
        );
        assert_ne!(
            a,
            job_id_stem("market", "trades_ethusdt", "raw/x/1-2.parquet")
        );
        assert_eq!(a.len(), "orch_load_".len() + 64);
    }

    #[test]
    fn the_multipart_body_frames_both_parts_with_a_boundary_absent_from_the_file() {
        let (content_type, body) = multipart_related(b"{}", b"PAR1 data");
        let boundary = content_type
            .strip_prefix("multipart/related; boundary=")
            .expect("boundary");
        let text = String::from_utf8(body).expect("text");
        assert_eq!(
            text,
            format!(
                "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{{}}\r\n\
                 --{boundary}\r\nContent-Type: application/octet-stream\r\n\r\nPAR1 data\r\n\
                 --{boundary}--\r\n"
            )
        );
    }

    #[test]
    fn google_errors_give_their_message_and_reason() {
        let body = br#"{"error": {"code": 409, "message": "Already Exists: Job p:US.j",
            "errors": [{"message": "Already Exists: Job p:US.j", "reason": "duplicate"}]}}"#;
        assert_eq!(
            google_error(body),
            (
                Some("duplicate".to_string()),
                "Already Exists: Job p:US.j".to_string()
            )
        );
        assert_eq!(
            google_error(b"Bad Gateway"),
            (None, "Bad Gateway".to_string())
        );
    }
}
