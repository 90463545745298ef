//! A local stand-in of Google's OAuth token endpoint and the BigQuery REST API calls orch
//! makes, for the tests in `tests/orch/bigquery.rs`.
//!
//! It checks each request against the shapes of Google's API reference and answers anything
//! else with a Google-shaped error, so the tests pass only if orch speaks the API as
//! documented: a service-account JWT (RS256, verified with the test key's public half),
//! bearer tokens, `multipart/related` load job uploads, job ids and their 409s, `jobs.get`,
//! `tables.insert` (with day partitioning), and `jobs.query` / `getQueryResults` for the
//! ledger's two statements and the `DELETE`s of [`BigQueryWarehouse::replace`]. Uploaded
//! Parquet is decoded into in-memory tables, decimal columns typed by BigQuery's documented
//! `decimalTargetTypes` rule; a `WRITE_TRUNCATE` load into a partition decorator `t$YYYYMMDD`
//! replaces that day's rows.
//!
//! [`BigQueryWarehouse::replace`]: orch::warehouse::bigquery::BigQueryWarehouse::replace Switches in [`World`] script RUNNING jobs, failing
//! jobs and a lost ledger.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use orch::lake::raw_trades;
use polars::prelude::{DataType, TimeUnit};
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RsaKeyPair, UnparsedPublicKey};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Map, Value, json};

use crate::support::Home;

const PROJECT: &str = "test-project";
const DATASET: &str = "market";
/// Where the stand-in's dataset lives, and so every job in it.
const LOCATION: &str = "US";
const CLIENT_EMAIL: &str = "orch-loader@test-project.iam.gserviceaccount.com";
const KEY_ID: &str = "stand-in-key-1";
/// A throwaway RSA-2048 key generated for these tests only (`openssl genpkey`); it protects
/// nothing. The stand-in verifies JWTs with its public half.
const TEST_KEY_PEM: &str = include_str!("../../fixtures/bigquery-test-key.pem");
const BIGQUERY_SCOPE: &str = "https://www.googleapis.com/auth/bigquery";
const LEDGER: &str = "_orch_loaded_files";
/// The two statements the ledger may send, with whitespace collapsed.
const LEDGER_SELECT: &str =
    "SELECT file FROM _orch_loaded_files WHERE file >= @from AND file < @to";
const LEDGER_INSERT: &str = "INSERT INTO _orch_loaded_files (file, table_name, `rows`, loaded_at) \
     VALUES (@file, @table_name, @rows, CURRENT_TIMESTAMP())";
/// Rows per `getQueryResults` page: few, so that reading the ledger takes several pages.
pub const PAGE_ROWS: usize = 3;

/// A table: column names and BigQuery types, and rows of cells as the REST API renders them
/// (a TIMESTAMP as microseconds since the epoch).
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    pub schema: Vec<(String, String)>,
    pub rows: Vec<Vec<Option<String>>>,
    /// The TIMESTAMP column of `timePartitioning: {type: DAY}`, if the table is partitioned.
    pub partition_field: Option<String>,
}

impl Table {
    fn column(&self, name: &str) -> Option<usize> {
        self.schema.iter().position(|(n, _)| n == name)
    }
}

const DAY_MICROS: i64 = 86_400_000_000;

/// The UTC day (days since the epoch) of a TIMESTAMP cell.
fn cell_day(cell: &Option<String>) -> Option<i64> {
    cell.as_deref()
        .and_then(|micros| micros.parse::<i64>().ok())
        .map(|micros| micros.div_euclid(DAY_MICROS))
}

/// What a successful load job does when it is DONE.
struct Loaded {
    table_id: String,
    /// The day of the partition decorator: its rows are replaced (`WRITE_TRUNCATE`).
    truncated_day: Option<i64>,
    rows: Table,
}

struct LoadJob {
    reference: Value,
    configuration: Value,
    /// What the job does when it finishes: append rows to a table, or fail with a message.
    result: Result<Loaded, String>,
    /// Answers that still say RUNNING before the job is DONE.
    running_answers_left: u32,
    done: bool,
}

impl LoadJob {
    fn resource(&self) -> Value {
        let job_id = self.reference["jobId"].as_str().unwrap_or_default();
        let mut job = json!({
            "kind": "bigquery#job",
            "id": format!("{PROJECT}:{LOCATION}.{job_id}"),
            "jobReference": self.reference,
            "configuration": self.configuration,
            "status": {"state": "RUNNING"},
            "statistics": {"creationTime": "1767225600000", "load": {}},
        });
        if self.done {
            match &self.result {
                Ok(loaded) => {
                    job["status"] = json!({"state": "DONE"});
                    job["statistics"]["load"] = json!({
                        "inputFiles": "1",
                        "outputRows": loaded.rows.rows.len().to_string(),
                    });
                }
                Err(message) => {
                    let error = json!({"reason": "invalid", "message": message});
                    job["status"] =
                        json!({"state": "DONE", "errorResult": error, "errors": [error]});
                }
            }
        }
        job
    }
}

#[derive(Default)]
pub struct World {
    token_uri: String,
    /// The test key's public half, DER `RSAPublicKey`.
    public_key: Vec<u8>,
    pub issued_tokens: Vec<String>,
    tables: BTreeMap<String, Table>,
    jobs: BTreeMap<String, LoadJob>,
    /// Load job ids in the order they were created.
    pub load_job_ids: Vec<String>,
    /// Every `jobs.get`, by job id.
    pub job_gets: Vec<String>,
    /// Results of ledger queries, by query job id.
    query_results: BTreeMap<String, Vec<String>>,
    /// How many answers about a new load job say RUNNING before one says DONE.
    pub running_answers: u32,
    /// The next load job fails with this message.
    pub failing_load: Option<String>,
}

type Shared = Arc<Mutex<World>>;
type Answer = Result<axum::Json<Value>, GoogleError>;

fn lock(world: &Shared) -> MutexGuard<'_, World> {
    world
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A refused request, answered with Google's error body:
/// `{"error": {"code", "message", "errors": [{"reason"}], "status"}}`.
struct GoogleError {
    status: StatusCode,
    reason: &'static str,
    message: String,
}

impl IntoResponse for GoogleError {
    fn into_response(self) -> Response {
        let status_name = match self.status.as_u16() {
            400 => "INVALID_ARGUMENT",
            401 => "UNAUTHENTICATED",
            404 => "NOT_FOUND",
            409 => "ALREADY_EXISTS",
            _ => "UNKNOWN",
        };
        let body = json!({"error": {
            "code": self.status.as_u16(),
            "message": self.message,
            "errors": [{"message": self.message, "domain": "global", "reason": self.reason}],
            "status": status_name,
        }});
        (self.status, axum::Json(body)).into_response()
    }
}

fn google_error(
    status: StatusCode,
    reason: &'static str,
    message: impl Into<String>,
) -> GoogleError {
    GoogleError {
        status,
        reason,
        message: message.into(),
    }
}

fn invalid(message: impl Into<String>) -> GoogleError {
    google_error(StatusCode::BAD_REQUEST, "invalid", message)
}

fn not_found(message: impl Into<String>) -> GoogleError {
    google_error(StatusCode::NOT_FOUND, "notFound", message)
}

fn ok(body: Value) -> Answer {
    Ok(axum::Json(body))
}

/// The OAuth endpoint's error body.
fn oauth_error(error: &str, description: &str) -> Response {
    let body = json!({"error": error, "error_description": description});
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

fn parse_json(body: &[u8]) -> Result<Value, GoogleError> {
    serde_json::from_slice(body).map_err(|e| invalid(format!("Invalid JSON payload received. {e}")))
}

/// The object at `at`, refusing fields the API reference does not define, as Google does.
fn fields<'a>(
    value: &'a Value,
    at: &str,
    known: &[&str],
) -> Result<&'a Map<String, Value>, GoogleError> {
    let object = value.as_object().ok_or_else(|| {
        invalid(format!(
            "Invalid JSON payload received. '{at}' must be an object."
        ))
    })?;
    match object.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => Err(invalid(format!(
            "Invalid JSON payload received. Unknown name \"{key}\" at '{at}': Cannot find field."
        ))),
        None => Ok(object),
    }
}

fn is_id(id: &str, extra: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= 1024
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || extra.contains(&b))
}

fn check_dataset(project: &str, dataset: &str) -> Result<(), GoogleError> {
    if project == PROJECT && dataset == DATASET {
        Ok(())
    } else {
        Err(not_found(format!("Not found: Dataset {project}:{dataset}")))
    }
}

fn check_location(location: Option<&str>) -> Result<(), GoogleError> {
    match location {
        None | Some(LOCATION) => Ok(()),
        Some(other) => Err(not_found(format!(
            "Not found: Dataset {PROJECT}:{DATASET} was not found in location {other}"
        ))),
    }
}

fn check_parameters(params: &HashMap<String, String>, known: &[&str]) -> Result<(), GoogleError> {
    match params.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => Err(invalid(format!("Unknown query parameter `{key}`"))),
        None => Ok(()),
    }
}

impl World {
    fn authorize(&self, headers: &HeaderMap) -> Result<(), GoogleError> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match bearer {
            Some(token) if self.issued_tokens.iter().any(|t| t == token) => Ok(()),
            Some(_) => Err(google_error(
                StatusCode::UNAUTHORIZED,
                "authError",
                "Request had invalid authentication credentials. Expected OAuth 2 access token.",
            )),
            None => Err(google_error(
                StatusCode::UNAUTHORIZED,
                "required",
                "Request is missing required authentication credential.",
            )),
        }
    }

    /// The job's next answer: RUNNING while it has RUNNING answers left, then DONE, when its
    /// rows become visible.
    fn answer_job(&mut self, job_id: &str) -> Option<Value> {
        let job = self.jobs.get_mut(job_id)?;
        if job.running_answers_left > 0 {
            job.running_answers_left -= 1;
        } else if !job.done {
            job.done = true;
            if let Ok(loaded) = &job.result {
                let table = self
                    .tables
                    .entry(loaded.table_id.clone())
                    .or_insert_with(|| Table {
                        schema: loaded.rows.schema.clone(),
                        rows: Vec::new(),
                        partition_field: None,
                    });
                let field = table
                    .partition_field
                    .as_deref()
                    .and_then(|f| table.column(f));
                if let (Some(day), Some(field)) = (loaded.truncated_day, field) {
                    table.rows.retain(|row| cell_day(&row[field]) != Some(day));
                }
                table.rows.extend(loaded.rows.rows.iter().cloned());
            }
        }
        Some(job.resource())
    }

    /// What a load job of `parquet` into `table_id` (of the partition of `truncated_day`)
    /// does: Google's checks, then the rows.
    fn load_result(
        &mut self,
        table_id: &str,
        truncated_day: Option<i64>,
        decimal_targets: &[String],
        parquet: &[u8],
    ) -> Result<Loaded, String> {
        if let Some(message) = self.failing_load.take() {
            return Err(message);
        }
        let loaded = parquet_table(parquet, decimal_targets)?;
        let table = self.tables.get(table_id);
        if let Some(table) = table
            && table.schema != loaded.schema
        {
            return Err(format!(
                "Provided Schema does not match Table {PROJECT}:{DATASET}.{table_id}."
            ));
        }
        if let Some(day) = truncated_day {
            let field = table
                .and_then(|t| t.partition_field.as_deref())
                .and_then(|f| loaded.column(f))
                .ok_or_else(|| {
                    format!(
                        "Cannot load into a partition of {PROJECT}:{DATASET}.{table_id}: \
                         the table is not partitioned"
                    )
                })?;
            if loaded
                .rows
                .iter()
                .any(|row| cell_day(&row[field]) != Some(day))
            {
                return Err(format!(
                    "Some rows belong to different partitions rather than destination partition \
                     of day {day} of {table_id}"
                ));
            }
        }
        Ok(Loaded {
            table_id: table_id.to_string(),
            truncated_day,
            rows: loaded,
        })
    }
}

/// `POST /token`: Google's OAuth endpoint, JWT bearer grant only.
async fn token(State(world): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let mut world = lock(&world);
    let form_encoded = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form_encoded {
        return oauth_error("invalid_request", "Content-Type must be a form");
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return oauth_error("unsupported_grant_type", "Invalid grant_type");
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error("invalid_request", "Missing required parameter: assertion");
    };
    if let Err(description) = verify_jwt(assertion, &world.public_key, &world.token_uri) {
        return oauth_error("invalid_grant", &description);
    }
    let access_token = format!("ya29.stand-in-{}", world.issued_tokens.len() + 1);
    world.issued_tokens.push(access_token.clone());
    axum::Json(json!({"access_token": access_token, "expires_in": 3599, "token_type": "Bearer"}))
        .into_response()
}

/// Checks a service account's JWT as Google's token endpoint does.
fn verify_jwt(jwt: &str, public_key: &[u8], token_uri: &str) -> Result<(), String> {
    let segments: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = segments.as_slice() else {
        return Err("Invalid JWT: not three segments".to_string());
    };
    let decode = |segment: &str| -> Result<Vec<u8>, String> {
        URL_SAFE_NO_PAD
            .decode(segment)
            .map_err(|e| format!("Invalid JWT: {e}"))
    };
    let header: Value = serde_json::from_slice(&decode(header)?).map_err(|e| e.to_string())?;
    let claims_json: Value = serde_json::from_slice(&decode(claims)?).map_err(|e| e.to_string())?;
    if header["alg"] != "RS256" || header["kid"] != KEY_ID {
        return Err(format!("Invalid JWT header {header}"));
    }
    let scopes = claims_json["scope"].as_str().unwrap_or_default();
    if claims_json["iss"] != CLIENT_EMAIL
        || claims_json["aud"] != token_uri
        || !scopes.split(' ').any(|s| s == BIGQUERY_SCOPE)
    {
        return Err(format!("Invalid JWT claims {claims_json}"));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (iat, exp) = (
        claims_json["iat"].as_i64().unwrap_or_default(),
        claims_json["exp"].as_i64().unwrap_or_default(),
    );
    if (iat - now).abs() > 300 || exp <= now || exp - iat > 3600 {
        return Err(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim."
                .to_string(),
        );
    }
    let signed = format!("{}.{}", segments[0], segments[1]);
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public_key)
        .verify(signed.as_bytes(), &decode(signature)?)
        .map_err(|_| "Invalid JWT Signature.".to_string())
}

/// `POST /upload/bigquery/v2/projects/{project}/jobs?uploadType=multipart`: `jobs.insert` of a
/// load job with its data.
async fn insert_job(
    State(world): State<Shared>,
    Path(project): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let mut world = lock(&world);
    world.authorize(&headers)?;
    check_parameters(&params, &["uploadType"])?;
    if params.get("uploadType").map(String::as_str) != Some("multipart") {
        return Err(invalid(
            "Media upload requires uploadType=multipart or resumable",
        ));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let parts = multipart_related(content_type, &body).map_err(invalid)?;
    let [(metadata_type, metadata), (media_type, media)] = parts.as_slice() else {
        return Err(invalid(format!(
            "A multipart upload has exactly two parts, not {}",
            parts.len()
        )));
    };
    if !metadata_type
        .replace(' ', "")
        .eq_ignore_ascii_case("application/json;charset=utf-8")
    {
        return Err(invalid(format!(
            "Metadata part has Content-Type {metadata_type}"
        )));
    }
    if media_type != "application/octet-stream" {
        return Err(invalid(format!("Media part has Content-Type {media_type}")));
    }
    let job = parse_json(metadata)?;
    let request = LoadRequest::check(&job, &project)?;
    if world.jobs.contains_key(&request.job_id) {
        return Err(google_error(
            StatusCode::CONFLICT,
            "duplicate",
            format!(
                "Already Exists: Job {PROJECT}:{LOCATION}.{}",
                request.job_id
            ),
        ));
    }
    let result = world.load_result(
        &request.table_id,
        request.truncated_day,
        &request.decimal_targets,
        media,
    );
    let mut reference = job["jobReference"].clone();
    reference["location"] = json!(LOCATION);
    let load_job = LoadJob {
        reference,
        configuration: job["configuration"].clone(),
        result,
        running_answers_left: world.running_answers,
        done: false,
    };
    world.jobs.insert(request.job_id.clone(), load_job);
    world.load_job_ids.push(request.job_id.clone());
    ok(world.answer_job(&request.job_id).unwrap_or_default())
}

/// The parts of a load job the stand-in acts on, after checking the Job resource.
struct LoadRequest {
    job_id: String,
    table_id: String,
    /// The day of a partition decorator `table$YYYYMMDD`, days since the epoch.
    truncated_day: Option<i64>,
    decimal_targets: Vec<String>,
}

impl LoadRequest {
    fn check(job: &Value, project: &str) -> Result<LoadRequest, GoogleError> {
        fields(job, "job", &["jobReference", "configuration"])?;
        let reference = fields(
            &job["jobReference"],
            "job.job_reference",
            &["projectId", "jobId", "location"],
        )?;
        if reference.get("projectId").and_then(Value::as_str) != Some(project) {
            return Err(invalid(
                "jobReference.projectId must name the project of the request",
            ));
        }
        let job_id = reference
            .get("jobId")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !is_id(job_id, b"-") {
            return Err(invalid(format!("Invalid job ID \"{job_id}\"")));
        }
        check_location(reference.get("location").and_then(Value::as_str))?;
        fields(
            &job["configuration"],
            "job.configuration",
            &["load", "labels", "jobTimeoutMs"],
        )?;
        let load = &job["configuration"]["load"];
        fields(
            load,
            "job.configuration.load",
            &[
                "destinationTable",
                "sourceFormat",
                "writeDisposition",
                "createDisposition",
                "decimalTargetTypes",
                "parquetOptions",
                "schema",
                "schemaUpdateOptions",
                "autodetect",
                "timePartitioning",
                "clustering",
                "maxBadRecords",
                "ignoreUnknownValues",
                "useAvroLogicalTypes",
                "referenceFileSchemaUri",
                "hivePartitioningOptions",
                "destinationTableProperties",
            ],
        )?;
        let destination = fields(
            &load["destinationTable"],
            "job.configuration.load.destination_table",
            &["projectId", "datasetId", "tableId"],
        )?;
        let text = |key: &str| {
            destination
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        check_dataset(text("projectId"), text("datasetId"))?;
        let (table_id, decorator) = match text("tableId").split_once('$') {
            Some((table_id, decorator)) => (table_id, Some(decorator)),
            None => (text("tableId"), None),
        };
        if !is_id(table_id, b"") {
            return Err(invalid(format!("Invalid table ID \"{table_id}\"")));
        }
        let partition_day = decorator
            .map(|d| {
                chrono::NaiveDate::parse_from_str(d, "%Y%m%d")
                    .ok()
                    .filter(|_| d.len() == 8)
                    .and_then(|date| date.and_hms_opt(0, 0, 0))
                    .map(|midnight| midnight.and_utc().timestamp().div_euclid(86_400))
                    .ok_or_else(|| invalid(format!("Invalid partition decorator \"${d}\"")))
            })
            .transpose()?;
        let enumeration =
            |key: &str, default: &str, allowed: &[&str]| -> Result<String, GoogleError> {
                let value = load
                    .get(key)
                    .map_or(Some(default), Value::as_str)
                    .unwrap_or_default();
                if allowed.contains(&value) {
                    Ok(value.to_string())
                } else {
                    Err(invalid(format!(
                        "Invalid value for {key}: {value} is not a valid value"
                    )))
                }
            };
        let source_format = enumeration(
            "sourceFormat",
            "CSV",
            &[
                "CSV",
                "NEWLINE_DELIMITED_JSON",
                "AVRO",
                "DATASTORE_BACKUP",
                "PARQUET",
                "ORC",
            ],
        )?;
        let write = enumeration(
            "writeDisposition",
            "WRITE_APPEND",
            &["WRITE_APPEND", "WRITE_TRUNCATE", "WRITE_EMPTY"],
        )?;
        let create = enumeration(
            "createDisposition",
            "CREATE_IF_NEEDED",
            &["CREATE_IF_NEEDED", "CREATE_NEVER"],
        )?;
        let truncated_day = match (write.as_str(), partition_day) {
            ("WRITE_APPEND", None) => None,
            ("WRITE_TRUNCATE", Some(day)) => Some(day),
            _ => {
                return Err(invalid(format!(
                    "The stand-in loads WRITE_APPEND into a table or WRITE_TRUNCATE into a \
                     partition decorator only, not {write} into {}",
                    text("tableId")
                )));
            }
        };
        if (source_format.as_str(), create.as_str()) != ("PARQUET", "CREATE_IF_NEEDED") {
            return Err(invalid(format!(
                "The stand-in loads PARQUET with CREATE_IF_NEEDED only, \
                 not {source_format}, {create}"
            )));
        }
        let decimal_targets: Vec<String> = match load.get("decimalTargetTypes") {
            None => vec!["NUMERIC".to_string()],
            Some(Value::Array(types)) => types
                .iter()
                .map(|t| t.as_str().unwrap_or_default().to_string())
                .collect(),
            Some(other) => return Err(invalid(format!("Invalid decimalTargetTypes {other}"))),
        };
        let distinct: BTreeSet<&String> = decimal_targets.iter().collect();
        let valid_targets = decimal_targets
            .iter()
            .all(|t| ["NUMERIC", "BIGNUMERIC", "STRING"].contains(&t.as_str()));
        if !valid_targets || distinct.len() != decimal_targets.len() {
            return Err(invalid(format!(
                "Invalid decimalTargetTypes {decimal_targets:?}"
            )));
        }
        if let Some(options) = load.get("parquetOptions") {
            let options = fields(
                options,
                "job.configuration.load.parquet_options",
                &["enumAsString", "enableListInference", "mapTargetType"],
            )?;
            if options
                .get("enableListInference")
                .is_some_and(|v| !v.is_boolean())
            {
                return Err(invalid(
                    "parquetOptions.enableListInference must be a boolean",
                ));
            }
        }
        Ok(LoadRequest {
            job_id: job_id.to_string(),
            table_id: table_id.to_string(),
            truncated_day,
            decimal_targets,
        })
    }
}

/// The parts of a `multipart/related` body (RFC 2387): each part's Content-Type and content.
fn multipart_related<'a>(
    content_type: &str,
    body: &'a [u8],
) -> Result<Vec<(String, &'a [u8])>, String> {
    let (media_type, parameters) = content_type.split_once(';').unwrap_or((content_type, ""));
    if !media_type.trim().eq_ignore_ascii_case("multipart/related") {
        return Err(format!(
            "Content-Type {content_type} is not multipart/related"
        ));
    }
    let boundary = parameters
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
        .filter(|b| !b.is_empty())
        .ok_or("multipart/related without a boundary")?;
    let delimiter = format!("\r\n--{boundary}");
    let find =
        |haystack: &[u8], needle: &[u8]| haystack.windows(needle.len()).position(|w| w == needle);
    let mut rest = body
        .strip_prefix(&delimiter.as_bytes()[2..])
        .ok_or("the body does not start with the boundary")?;
    let mut parts = Vec::new();
    while !rest.starts_with(b"--") {
        rest = rest
            .strip_prefix(b"\r\n")
            .ok_or("no line break after a boundary")?;
        let headers_end =
            find(rest, b"\r\n\r\n").ok_or("a part without a blank line after its headers")?;
        let headers = String::from_utf8_lossy(&rest[..headers_end]);
        let part_type = headers
            .split("\r\n")
            .filter_map(|line| line.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-type"))
            .map(|(_, value)| value.trim().to_string())
            .ok_or("a part without Content-Type")?;
        let content = &rest[headers_end + 4..];
        let end = find(content, delimiter.as_bytes()).ok_or("a part not closed by the boundary")?;
        parts.push((part_type, &content[..end]));
        rest = &content[end + delimiter.len()..];
    }
    Ok(parts)
}

/// BigQuery's documented rule: in the order NUMERIC, BIGNUMERIC, STRING, the first listed type
/// that holds the precision and scale; if none does, the widest listed type.
fn decimal_target(precision: usize, scale: usize, listed: &[String]) -> &'static str {
    let holds = |kind: &str| match kind {
        "NUMERIC" => precision - scale <= 29 && scale <= 9,
        "BIGNUMERIC" => precision - scale <= 38 && scale <= 38,
        _ => true,
    };
    let is_listed = |kind: &str| listed.iter().any(|l| l == kind);
    ["NUMERIC", "BIGNUMERIC", "STRING"]
        .into_iter()
        .find(|kind| is_listed(kind) && holds(kind))
        .or_else(|| {
            ["STRING", "BIGNUMERIC", "NUMERIC"]
                .into_iter()
                .find(|kind| is_listed(kind))
        })
        .unwrap_or("NUMERIC")
}

/// A decimal as the REST API renders NUMERIC: no trailing zeros. A NUMERIC holds 29 integer
/// digits; a larger value fails the load, as it does in BigQuery.
fn decimal_cell(kind: &str, units: i128, scale: usize) -> Result<String, String> {
    let one = 10_u128.pow(scale as u32);
    let (whole, fraction) = (units.unsigned_abs() / one, units.unsigned_abs() % one);
    if kind == "NUMERIC" && whole >= 10_u128.pow(29) {
        return Err(format!("Invalid NUMERIC value: {whole}"));
    }
    let sign = if units < 0 { "-" } else { "" };
    let fraction = format!("{fraction:0scale$}");
    let fraction = fraction.trim_end_matches('0');
    Ok(if fraction.is_empty() {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{fraction}")
    })
}

/// Decodes an uploaded Parquet file into a table, as a load job would.
fn parquet_table(parquet: &[u8], decimal_targets: &[String]) -> Result<Table, String> {
    let read_error =
        |e: &dyn std::fmt::Display| format!("Error while reading data, error message: {e}");
    let frame =
        raw_trades::read_frame(Bytes::copy_from_slice(parquet)).map_err(|e| read_error(&e))?;
    let mut schema = Vec::new();
    let mut columns: Vec<Vec<Option<String>>> = Vec::new();
    for column in frame.columns() {
        let (kind, cells): (&str, Vec<Option<String>>) = match column.dtype() {
            DataType::Int64 | DataType::Int32 => (
                "INTEGER",
                column
                    .cast(&DataType::Int64)
                    .map_err(|e| read_error(&e))?
                    .i64()
                    .map_err(|e| read_error(&e))?
                    .iter()
                    .map(|v| v.map(|v| v.to_string()))
                    .collect(),
            ),
            DataType::Decimal(precision, scale) => {
                let kind = decimal_target(*precision, *scale, decimal_targets);
                let units = column.decimal().map_err(|e| read_error(&e))?.physical();
                let cells = (0..units.len())
                    .map(|i| {
                        units
                            .get(i)
                            .map(|u| decimal_cell(kind, u, *scale))
                            .transpose()
                    })
                    .collect::<Result<_, _>>()?;
                (kind, cells)
            }
            DataType::Datetime(unit, _) => {
                let micros = |v: i64| match unit {
                    TimeUnit::Milliseconds => v * 1000,
                    TimeUnit::Microseconds => v,
                    TimeUnit::Nanoseconds => v / 1000,
                };
                let values = column
                    .datetime()
                    .map_err(|e| read_error(&e))?
                    .physical()
                    .clone();
                let cells = values
                    .iter()
                    .map(|v| v.map(|v| micros(v).to_string()))
                    .collect();
                ("TIMESTAMP", cells)
            }
            DataType::Float64 => (
                "FLOAT",
                column
                    .f64()
                    .map_err(|e| read_error(&e))?
                    .iter()
                    .map(|v| v.map(|v| v.to_string()))
                    .collect(),
            ),
            DataType::Boolean => (
                "BOOLEAN",
                column
                    .bool()
                    .map_err(|e| read_error(&e))?
                    .iter()
                    .map(|v| v.map(|b| b.to_string()))
                    .collect(),
            ),
            DataType::String => (
                "STRING",
                column
                    .str()
                    .map_err(|e| read_error(&e))?
                    .iter()
                    .map(|v| v.map(str::to_string))
                    .collect(),
            ),
            other => return Err(format!("The stand-in does not load Parquet type {other}")),
        };
        schema.push((column.name().to_string(), kind.to_string()));
        columns.push(cells);
    }
    let rows = (0..frame.height())
        .map(|i| columns.iter().map(|cells| cells[i].clone()).collect())
        .collect();
    Ok(Table {
        schema,
        rows,
        partition_field: None,
    })
}

/// `GET /bigquery/v2/projects/{project}/jobs/{job_id}`: `jobs.get`.
async fn get_job(
    State(world): State<Shared>,
    Path((project, job_id)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Answer {
    let mut world = lock(&world);
    world.authorize(&headers)?;
    check_parameters(&params, &["location"])?;
    check_location(params.get("location").map(String::as_str))?;
    if project != PROJECT {
        return Err(not_found(format!("Not found: Project {project}")));
    }
    world.job_gets.push(job_id.clone());
    match world.answer_job(&job_id) {
        Some(job) => ok(job),
        None => Err(not_found(format!(
            "Not found: Job {PROJECT}:{LOCATION}.{job_id}"
        ))),
    }
}

/// `POST /bigquery/v2/projects/{project}/datasets/{dataset}/tables`: `tables.insert`.
async fn insert_table(
    State(world): State<Shared>,
    Path((project, dataset)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let mut world = lock(&world);
    world.authorize(&headers)?;
    check_dataset(&project, &dataset)?;
    let table = parse_json(&body)?;
    fields(
        &table,
        "table",
        &[
            "tableReference",
            "schema",
            "description",
            "friendlyName",
            "labels",
            "timePartitioning",
        ],
    )?;
    let reference = fields(
        &table["tableReference"],
        "table.table_reference",
        &["projectId", "datasetId", "tableId"],
    )?;
    let text = |key: &str| {
        reference
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    check_dataset(text("projectId"), text("datasetId"))?;
    let table_id = text("tableId").to_string();
    if !is_id(&table_id, b"") {
        return Err(invalid(format!("Invalid table ID \"{table_id}\"")));
    }
    fields(&table["schema"], "table.schema", &["fields"])?;
    let mut schema = Vec::new();
    for field in table["schema"]["fields"].as_array().into_iter().flatten() {
        fields(
            field,
            "table.schema.fields",
            &["name", "type", "mode", "description"],
        )?;
        let name = field["name"].as_str().unwrap_or_default();
        let kind = match field["type"].as_str().unwrap_or_default() {
            "STRING" => "STRING",
            "INTEGER" | "INT64" => "INTEGER",
            "FLOAT" | "FLOAT64" => "FLOAT",
            "BOOLEAN" | "BOOL" => "BOOLEAN",
            kind @ ("NUMERIC" | "BIGNUMERIC" | "TIMESTAMP" | "DATE" | "TIME" | "DATETIME"
            | "BYTES") => kind,
            other => return Err(invalid(format!("Invalid field type {other} of {name}"))),
        };
        let mode = field
            .get("mode")
            .and_then(Value::as_str)
            .unwrap_or("NULLABLE");
        if !is_id(name, b"") || !["NULLABLE", "REQUIRED", "REPEATED"].contains(&mode) {
            return Err(invalid(format!("Invalid field {field}")));
        }
        schema.push((name.to_string(), kind.to_string()));
    }
    if schema.is_empty() {
        return Err(invalid("The table needs a schema"));
    }
    let partition_field = match table.get("timePartitioning") {
        None => None,
        Some(partitioning) => {
            fields(
                partitioning,
                "table.time_partitioning",
                &["type", "field", "expirationMs"],
            )?;
            let field = partitioning["field"].as_str().unwrap_or_default();
            let is_timestamp = schema
                .iter()
                .any(|(name, kind)| name == field && kind == "TIMESTAMP");
            if partitioning["type"] != "DAY" || !is_timestamp {
                return Err(invalid(format!(
                    "The stand-in partitions by DAY on a TIMESTAMP column only, not {partitioning}"
                )));
            }
            Some(field.to_string())
        }
    };
    if world.tables.contains_key(&table_id) {
        return Err(google_error(
            StatusCode::CONFLICT,
            "duplicate",
            format!("Already Exists: Table {PROJECT}:{DATASET}.{table_id}"),
        ));
    }
    world.tables.insert(
        table_id.clone(),
        Table {
            schema,
            rows: Vec::new(),
            partition_field,
        },
    );
    let mut answer = table.clone();
    answer["kind"] = json!("bigquery#table");
    answer["id"] = json!(format!("{PROJECT}:{DATASET}.{table_id}"));
    ok(answer)
}

/// `POST /bigquery/v2/projects/{project}/queries`: `jobs.query`, for the ledger's statements.
async fn query(
    State(world): State<Shared>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let mut world = lock(&world);
    world.authorize(&headers)?;
    if project != PROJECT {
        return Err(not_found(format!("Not found: Project {project}")));
    }
    let request = parse_json(&body)?;
    fields(
        &request,
        "query_request",
        &[
            "kind",
            "query",
            "useLegacySql",
            "parameterMode",
            "queryParameters",
            "defaultDataset",
            "location",
            "timeoutMs",
            "maxResults",
            "dryRun",
            "useQueryCache",
            "labels",
            "requestId",
        ],
    )?;
    if request["useLegacySql"] != false {
        return Err(invalid("Query parameters cannot be used in legacy SQL"));
    }
    if request["parameterMode"] != "NAMED" {
        return Err(invalid("parameterMode must be NAMED for @name parameters"));
    }
    check_location(request.get("location").and_then(Value::as_str))?;
    let Some(default_dataset) = request.get("defaultDataset") else {
        return Err(invalid(format!(
            "Table name \"{LEDGER}\" missing dataset while no default dataset is set in the request."
        )));
    };
    let default_dataset = fields(
        default_dataset,
        "query_request.default_dataset",
        &["projectId", "datasetId"],
    )?;
    let text = |key: &str| {
        default_dataset
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    check_dataset(text("projectId"), text("datasetId"))?;
    // By name: the type (`ARRAY<INT64>` for arrays) and the values (one for a scalar).
    let mut parameters: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for parameter in request["queryParameters"].as_array().into_iter().flatten() {
        fields(
            parameter,
            "query_request.query_parameters",
            &["name", "parameterType", "parameterValue"],
        )?;
        let bad = || invalid(format!("Invalid query parameter {parameter}"));
        let (Some(name), Some(kind)) = (
            parameter["name"].as_str(),
            parameter["parameterType"]["type"].as_str(),
        ) else {
            return Err(bad());
        };
        let value = &parameter["parameterValue"];
        let typed = match (
            kind,
            parameter["parameterType"]["arrayType"]["type"].as_str(),
        ) {
            ("ARRAY", Some(element)) => {
                let values = value["arrayValues"]
                    .as_array()
                    .ok_or_else(bad)?
                    .iter()
                    .map(|v| v["value"].as_str().map(str::to_string).ok_or_else(bad))
                    .collect::<Result<_, _>>()?;
                (format!("ARRAY<{element}>"), values)
            }
            ("ARRAY", None) => return Err(bad()),
            (kind, _) => {
                let value = value["value"].as_str().ok_or_else(bad)?;
                (kind.to_string(), vec![value.to_string()])
            }
        };
        parameters.insert(name.to_string(), typed);
    }
    let named = |expected: &[(&str, &str)]| {
        parameters.len() == expected.len()
            && expected
                .iter()
                .all(|(name, kind)| parameters.get(*name).is_some_and(|(k, _)| k == kind))
    };
    let value = |name: &str| {
        parameters
            .get(name)
            .and_then(|(_, v)| v.first().cloned())
            .unwrap_or_default()
    };
    let sql = request["query"]
        .as_str()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let job_id = format!("job_stand_in_query_{}", world.query_results.len() + 1);
    let reference = json!({"projectId": PROJECT, "jobId": job_id, "location": LOCATION});
    if let Some((table_id, column, condition)) = delete_statement(&sql) {
        let Some(table) = world.tables.get_mut(table_id) else {
            return Err(not_found(format!(
                "Not found: Table {PROJECT}:{DATASET}.{table_id} was not found in location {LOCATION}"
            )));
        };
        let Some(index) = table.column(column) else {
            return Err(invalid(format!("Unrecognized name: {column}")));
        };
        let deleted = if condition == " IN UNNEST(@keys)"
            && (named(&[("keys", "ARRAY<INT64>")]) || named(&[("keys", "ARRAY<STRING>")]))
        {
            Deleted::Keys(
                parameters
                    .get("keys")
                    .map(|(_, keys)| keys.clone())
                    .unwrap_or_default(),
            )
        } else if condition == format!(" >= @from AND `{column}` < @to")
            && named(&[("from", "TIMESTAMP"), ("to", "TIMESTAMP")])
            && table.schema[index].1 == "TIMESTAMP"
        {
            let micros = |name: &str| {
                chrono::DateTime::parse_from_str(&value(name), "%Y-%m-%d %H:%M:%S%.f%:z")
                    .map(|t| t.timestamp_micros())
                    .map_err(|e| invalid(format!("Invalid TIMESTAMP {}: {e}", value(name))))
            };
            Deleted::Between(micros("from")?, micros("to")?)
        } else {
            return Err(invalid(format!(
                "The stand-in deletes by `IN UNNEST(@keys)` or a TIMESTAMP range only, not `{sql}` with {parameters:?}"
            )));
        };
        let before = table.rows.len();
        table.rows.retain(|row| {
            let cell = &row[index];
            let gone = match &deleted {
                Deleted::Keys(keys) => cell.as_ref().is_some_and(|c| keys.contains(c)),
                Deleted::Between(from, to) => cell
                    .as_deref()
                    .and_then(|c| c.parse::<i64>().ok())
                    .is_some_and(|t| (*from..*to).contains(&t)),
            };
            !gone
        });
        let affected = before - table.rows.len();
        world.query_results.insert(job_id, Vec::new());
        return ok(json!({
            "kind": "bigquery#queryResponse",
            "jobReference": reference,
            "jobComplete": true,
            "numDmlAffectedRows": affected.to_string(),
        }));
    }
    let Some(ledger) = world.tables.get_mut(LEDGER) else {
        return Err(not_found(format!(
            "Not found: Table {PROJECT}:{DATASET}.{LEDGER} was not found in location {LOCATION}"
        )));
    };
    if sql == LEDGER_SELECT && named(&[("from", "STRING"), ("to", "STRING")]) {
        // GoogleSQL compares STRING values by their bytes, as Rust does.
        let (from, to) = (value("from"), value("to"));
        let files = ledger
            .rows
            .iter()
            .filter_map(|row| row[0].clone())
            .filter(|file| *file >= from && *file < to)
            .collect();
        world.query_results.insert(job_id, files);
        // As when the query outlasts timeoutMs: the rows come from getQueryResults.
        ok(
            json!({"kind": "bigquery#queryResponse", "jobReference": reference, "jobComplete": false}),
        )
    } else if sql == LEDGER_INSERT
        && named(&[
            ("file", "STRING"),
            ("table_name", "STRING"),
            ("rows", "INT64"),
        ])
    {
        let rows: i64 = value("rows")
            .parse()
            .map_err(|_| invalid(format!("Invalid INT64 value {}", value("rows"))))?;
        ledger.rows.push(vec![
            Some(value("file")),
            Some(value("table_name")),
            Some(rows.to_string()),
            Some("1767225600.0".to_string()),
        ]);
        world.query_results.insert(job_id, Vec::new());
        ok(json!({
            "kind": "bigquery#queryResponse",
            "jobReference": reference,
            "jobComplete": true,
            "numDmlAffectedRows": "1",
        }))
    } else {
        Err(google_error(
            StatusCode::BAD_REQUEST,
            "invalidQuery",
            format!(
                "The stand-in knows only the ledger's statements, not `{sql}` with {parameters:?}"
            ),
        ))
    }
}

/// The rows a recognised `DELETE` removes: those holding one of the keys, or a TIMESTAMP (in
/// microseconds) in `[from, to)`.
enum Deleted {
    Keys(Vec<String>),
    Between(i64, i64),
}

/// The table, column and the rest of the condition of ``DELETE FROM `t` WHERE `c`...``.
fn delete_statement(sql: &str) -> Option<(&str, &str, &str)> {
    let (table, rest) = sql.strip_prefix("DELETE FROM `")?.split_once("` WHERE `")?;
    let (column, condition) = rest.split_once('`')?;
    Some((table, column, condition))
}

/// `GET /bigquery/v2/projects/{project}/queries/{job_id}`: `jobs.getQueryResults`, paged.
async fn query_results(
    State(world): State<Shared>,
    Path((project, job_id)): Path<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Answer {
    let world = lock(&world);
    world.authorize(&headers)?;
    check_parameters(
        &params,
        &[
            "pageToken",
            "maxResults",
            "timeoutMs",
            "location",
            "startIndex",
        ],
    )?;
    check_location(params.get("location").map(String::as_str))?;
    let Some(files) = world
        .query_results
        .get(&job_id)
        .filter(|_| project == PROJECT)
    else {
        return Err(not_found(format!(
            "Not found: Job {project}:{LOCATION}.{job_id}"
        )));
    };
    let start: usize = match params.get("pageToken") {
        Some(token) => token.parse().map_err(|_| invalid("Invalid page token"))?,
        None => 0,
    };
    let end = (start + PAGE_ROWS).min(files.len());
    let rows: Vec<Value> = files
        .get(start..end)
        .unwrap_or_default()
        .iter()
        .map(|file| json!({"f": [{"v": file}]}))
        .collect();
    let mut answer = json!({
        "kind": "bigquery#getQueryResultsResponse",
        "jobReference": {"projectId": PROJECT, "jobId": job_id, "location": LOCATION},
        "jobComplete": true,
        "schema": {"fields": [{"name": "file", "type": "STRING", "mode": "REQUIRED"}]},
        "totalRows": files.len().to_string(),
        "rows": rows,
    });
    if end < files.len() {
        answer["pageToken"] = json!(end.to_string());
    }
    ok(answer)
}

async fn unknown_call() -> GoogleError {
    not_found("The stand-in has no such method")
}

/// The stand-in, served on a loopback port by a thread with its own runtime.
pub struct StandIn {
    pub url: String,
    world: Shared,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandIn {
    pub fn start() -> StandIn {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the stand-in");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let url = format!(
            "http://{}",
            listener.local_addr().expect("stand-in address")
        );
        let der =
            PrivatePkcs8KeyDer::from_pem_slice(TEST_KEY_PEM.as_bytes()).expect("test key PEM");
        let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).expect("test key");
        let world: Shared = Arc::new(Mutex::new(World {
            token_uri: format!("{url}/token"),
            public_key: key.public().as_ref().to_vec(),
            ..World::default()
        }));
        let app = Router::new()
            .route("/token", post(token))
            .route(
                "/upload/bigquery/v2/projects/{project}/jobs",
                post(insert_job),
            )
            .route(
                "/bigquery/v2/projects/{project}/jobs/{job_id}",
                get(get_job),
            )
            .route(
                "/bigquery/v2/projects/{project}/datasets/{dataset}/tables",
                post(insert_table),
            )
            .route("/bigquery/v2/projects/{project}/queries", post(query))
            .route(
                "/bigquery/v2/projects/{project}/queries/{job_id}",
                get(query_results),
            )
            .fallback(unknown_call)
            .with_state(world.clone());
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("stand-in runtime");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("stand-in listener");
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.await;
                    })
                    .await
                    .expect("stand-in server");
            });
        });
        StandIn {
            url,
            world,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.world)
    }

    /// A service account key file for the stand-in, in the home.
    pub fn write_credentials(&self, home: &Home) -> PathBuf {
        let path = home.file("service-account.json");
        let key = json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": KEY_ID,
            "private_key": TEST_KEY_PEM,
            "client_email": CLIENT_EMAIL,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": format!("{}/token", self.url),
        });
        std::fs::write(&path, key.to_string()).expect("write the key file");
        path
    }

    pub fn table(&self, name: &str) -> Option<Table> {
        self.world().tables.get(name).cloned()
    }

    pub fn ledger_files(&self) -> Vec<String> {
        let mut files: Vec<String> = self
            .table(LEDGER)
            .map(|t| {
                t.rows
                    .into_iter()
                    .filter_map(|row| row[0].clone())
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Loses every ledger row, as if each load had been killed before its ledger insert.
    pub fn forget_ledger(&self) {
        if let Some(ledger) = self.world().tables.get_mut(LEDGER) {
            ledger.rows.clear();
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
