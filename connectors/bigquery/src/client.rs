//! BigQuery REST calls: datasets, tables and jobs through the official
//! `google-cloud-bigquery-v2` clients, and the media upload of load jobs (which those clients
//! do not offer) through `reqwest` with the same credentials.
//!
//! Requests are built as JSON and converted to the official model types, which mirror the REST
//! resources field for field; responses are read back as JSON the same way.

use std::time::Duration;

use connector_framework::{ConnectorError, ErrorClass, Result, RetryPolicy};
use google_cloud_auth::credentials::{self, CacheableResource, Credentials};
use google_cloud_bigquery_v2::client::{DatasetService, JobService, TableService};
use google_cloud_bigquery_v2::model;
use serde_json::{Value as Json, json};

const DEFAULT_ENDPOINT: &str = "https://bigquery.googleapis.com";

/// How to reach BigQuery.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub project: String,
    pub location: Option<String>,
    /// An emulator's URL; anonymous credentials are used with it.
    pub endpoint: Option<String>,
    /// A service-account or authorized-user key file; default: Application Default Credentials.
    pub credentials_file: Option<std::path::PathBuf>,
    pub retry: RetryPolicy,
    /// Longest wait for one job.
    pub job_timeout: Duration,
    /// Jobs in flight at once.
    pub max_concurrent_jobs: usize,
}

/// A finished job's resource.
#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub job: Json,
}

impl JobOutcome {
    pub fn statistic(&self, path: &[&str]) -> Option<u64> {
        let mut v = &self.job["statistics"];
        for p in path {
            v = &v[*p];
        }
        v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_u64())
    }
}

/// One authenticated connection to a BigQuery project.
#[derive(Clone)]
pub struct BqClient {
    pub options: ClientOptions,
    endpoint: String,
    credentials: Credentials,
    datasets: DatasetService,
    tables: TableService,
    jobs: JobService,
    http: reqwest::Client,
    job_slots: std::sync::Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for BqClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BqClient").field("project", &self.options.project).field("endpoint", &self.endpoint).finish()
    }
}

fn gax_class(e: &google_cloud_gax::error::Error) -> ErrorClass {
    if e.is_io() || e.is_connect() || e.is_timeout() || e.is_transport() || e.is_exhausted() {
        return ErrorClass::Transient;
    }
    match e.http_status_code() {
        Some(429 | 500 | 502 | 503 | 504) => ErrorClass::Transient,
        Some(403) if is_rate_limit(&e.to_string()) => ErrorClass::Transient,
        Some(401 | 403) => ErrorClass::Permanent,
        Some(_) => ErrorClass::Permanent,
        None if e.is_authentication() => ErrorClass::Permanent,
        None => ErrorClass::Transient,
    }
}

fn is_rate_limit(message: &str) -> bool {
    message.contains("rateLimitExceeded") || message.contains("quotaExceeded") && message.contains("rate")
}

fn gax_err(e: google_cloud_gax::error::Error, what: &str) -> ConnectorError {
    let class = gax_class(&e);
    let hint = match e.http_status_code() {
        Some(401 | 403) if class == ErrorClass::Permanent => {
            "; check the credentials and that they hold the BigQuery Data Editor and Job User roles"
        }
        _ => "",
    };
    let status = e.http_status_code().map(|c| format!("HTTP {c}: ")).unwrap_or_default();
    ConnectorError::new(class, format!("BigQuery {what}: {status}{e}{hint}"))
}

fn is_not_found(e: &google_cloud_gax::error::Error) -> bool {
    e.http_status_code() == Some(404)
}

fn is_conflict(e: &google_cloud_gax::error::Error) -> bool {
    e.http_status_code() == Some(409)
}

fn to_model<T: serde::de::DeserializeOwned>(v: Json) -> Result<T> {
    serde_json::from_value(v).map_err(|e| ConnectorError::permanent(format!("building a BigQuery request: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> Json {
    serde_json::to_value(v).unwrap_or(Json::Null)
}

/// Job failure reasons that a retry can get past.
fn job_error_class(reason: &str) -> ErrorClass {
    match reason {
        "backendError" | "internalError" | "rateLimitExceeded" | "jobBackendError" | "jobInternalError" => {
            ErrorClass::Transient
        }
        _ => ErrorClass::Permanent,
    }
}

impl BqClient {
    pub async fn new(options: ClientOptions) -> Result<Self> {
        let endpoint = options.endpoint.clone().unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let credentials = if options.endpoint.is_some() {
            credentials::anonymous::Builder::new().build()
        } else if let Some(path) = &options.credentials_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConnectorError::config(format!("bq_credentials: cannot read {}: {e}", path.display())))?;
            let key: Json = serde_json::from_str(&text).map_err(|e| {
                ConnectorError::config(format!("bq_credentials: {} is not a JSON key file: {e}", path.display()))
            })?;
            match key.get("type").and_then(Json::as_str) {
                Some("service_account") => credentials::service_account::Builder::new(key).build(),
                Some("authorized_user") => credentials::user_account::Builder::new(key).build(),
                other => {
                    return Err(ConnectorError::config(format!(
                        "bq_credentials: {} has type {other:?}; expected a service_account or authorized_user key",
                        path.display()
                    )));
                }
            }
            .map_err(|e| ConnectorError::config(format!("bq_credentials: {e}")))?
        } else {
            credentials::Builder::default().build().map_err(|e| {
                ConnectorError::config(format!(
                    "no Google credentials found ({e}); run `gcloud auth application-default login`, set \
                     GOOGLE_APPLICATION_CREDENTIALS, or give bq_credentials"
                ))
            })?
        };
        let build_err = |e: google_cloud_gax::client_builder::Error| {
            ConnectorError::config(format!("cannot create a BigQuery client for {endpoint}: {e}"))
        };
        let datasets = DatasetService::builder()
            .with_endpoint(endpoint.clone())
            .with_credentials(credentials.clone())
            // Retries are ours (bounded by max_retries, classified); the client's own would
            // multiply them and hold a run for minutes on a target that is down.
            .with_retry_policy(google_cloud_gax::retry_policy::NeverRetry)
            .build()
            .await
            .map_err(build_err)?;
        let tables = TableService::builder()
            .with_endpoint(endpoint.clone())
            .with_credentials(credentials.clone())
            // Retries are ours (bounded by max_retries, classified); the client's own would
            // multiply them and hold a run for minutes on a target that is down.
            .with_retry_policy(google_cloud_gax::retry_policy::NeverRetry)
            .build()
            .await
            .map_err(build_err)?;
        let jobs = JobService::builder()
            .with_endpoint(endpoint.clone())
            .with_credentials(credentials.clone())
            // Retries are ours (bounded by max_retries, classified); the client's own would
            // multiply them and hold a run for minutes on a target that is down.
            .with_retry_policy(google_cloud_gax::retry_policy::NeverRetry)
            .build()
            .await
            .map_err(build_err)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| ConnectorError::config(format!("cannot create an HTTP client: {e}")))?;
        let job_slots = std::sync::Arc::new(tokio::sync::Semaphore::new(options.max_concurrent_jobs.max(1)));
        Ok(Self { options, endpoint, credentials, datasets, tables, jobs, http, job_slots })
    }

    pub fn project(&self) -> &str {
        &self.options.project
    }

    async fn retry<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.options
            .retry
            .run(op, |attempt, e, wait| {
                tracing::warn!(attempt, wait_secs = wait.as_secs_f64(), error = %e, "BigQuery call failed; retrying");
            })
            .await
    }

    /// Creates the dataset when missing.
    pub async fn ensure_dataset(&self, dataset: &str) -> Result<()> {
        self.retry(|| async {
            match self.datasets.get_dataset().set_project_id(self.project()).set_dataset_id(dataset).send().await {
                Ok(_) => return Ok(()),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(gax_err(e, &format!("get dataset {dataset}"))),
            }
            let mut body = json!({"datasetReference": {"projectId": self.project(), "datasetId": dataset}});
            if let Some(loc) = &self.options.location {
                body["location"] = json!(loc);
            }
            match self
                .datasets
                .insert_dataset()
                .set_project_id(self.project())
                .set_dataset(to_model::<model::Dataset>(body)?)
                .send()
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if is_conflict(&e) => Ok(()),
                Err(e) => Err(gax_err(e, &format!("create dataset {dataset}"))),
            }
        })
        .await
    }

    /// The table resource as JSON, or `None` when it does not exist.
    pub async fn get_table(&self, dataset: &str, table: &str) -> Result<Option<Json>> {
        self.retry(|| async {
            match self
                .tables
                .get_table()
                .set_project_id(self.project())
                .set_dataset_id(dataset)
                .set_table_id(table)
                .send()
                .await
            {
                Ok(t) => Ok(Some(to_json(&t))),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(gax_err(e, &format!("get table {dataset}.{table}"))),
            }
        })
        .await
    }

    /// Creates a table from its REST resource; an existing table is not an error.
    pub async fn create_table(&self, dataset: &str, resource: Json) -> Result<()> {
        let table: model::Table = to_model(resource)?;
        self.retry(|| async {
            match self
                .tables
                .insert_table()
                .set_project_id(self.project())
                .set_dataset_id(dataset)
                .set_table(table.clone())
                .send()
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if is_conflict(&e) => Ok(()),
                Err(e) => Err(gax_err(e, &format!("create table in {dataset}"))),
            }
        })
        .await
    }

    /// Replaces the table's schema (used to add NULLABLE columns).
    pub async fn patch_schema(&self, dataset: &str, table: &str, fields: Json) -> Result<()> {
        let patch: model::Table = to_model(json!({"schema": {"fields": fields}}))?;
        self.retry(|| async {
            self.tables
                .patch_table()
                .set_project_id(self.project())
                .set_dataset_id(dataset)
                .set_table_id(table)
                .set_table(patch.clone())
                .send()
                .await
                .map(|_| ())
                .map_err(|e| gax_err(e, &format!("add columns to {dataset}.{table}")))
        })
        .await
    }

    pub async fn delete_table(&self, dataset: &str, table: &str) -> Result<()> {
        match self
            .tables
            .delete_table()
            .set_project_id(self.project())
            .set_dataset_id(dataset)
            .set_table_id(table)
            .send()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(gax_err(e, &format!("delete table {dataset}.{table}"))),
        }
    }

    /// Runs a query job (a script may hold a transaction) and waits for it.
    /// `job_id` makes retries idempotent: a job that already ran is not run again.
    pub async fn query(&self, sql: &str, parameters: Json, job_id: &str) -> Result<JobOutcome> {
        let mut query = json!({"query": sql, "useLegacySql": false});
        if parameters.as_array().is_some_and(|p| !p.is_empty()) {
            query["parameterMode"] = json!("NAMED");
            query["queryParameters"] = parameters;
        }
        tracing::debug!(job_id, sql, "BigQuery query");
        let configuration = json!({"query": query});
        self.run_job(job_id, |id| {
            let job = self.job_resource(&id, configuration.clone());
            async move {
                let model_job: model::Job = to_model(job)?;
                match self.jobs.insert_job().set_project_id(self.project()).set_job(model_job).send().await {
                    Ok(_) => Ok(()),
                    Err(e) if is_conflict(&e) => Ok(()),
                    Err(e) => Err(gax_err(e, "start query job")),
                }
            }
        })
        .await
    }

    /// Runs a job exactly once under ids `{base_id}_{n}`. After a transient failure it looks the
    /// job up: one still running is waited for, one that succeeded is taken, one that failed is
    /// started again under the next id, and one never created is started again under the same
    /// id. A job whose fate cannot be learned is an error, never a second start.
    pub async fn run_job<F, Fut>(&self, base_id: &str, start: F) -> Result<JobOutcome>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<()>>,
    {
        let _slot = self.job_slots.acquire().await.map_err(|_| ConnectorError::permanent("job slots closed"))?;
        let policy = self.options.retry;
        let (mut attempt, mut retries) = (0u32, 0u32);
        loop {
            let id = format!("{base_id}_{attempt}");
            let result = match start(id.clone()).await {
                Ok(()) => self.wait_job(&id).await,
                Err(e) => Err(e),
            };
            let error = match result {
                Ok(outcome) => return Ok(outcome),
                Err(e) if e.is_transient() && retries < policy.max_retries => e,
                Err(e) => return Err(e),
            };
            let wait = policy.delay(retries);
            retries += 1;
            tracing::warn!(job = %id, attempt = retries, wait_secs = wait.as_secs_f64(), error = %error, "BigQuery job failed; retrying");
            tokio::time::sleep(wait).await;
            // The lookup is retried too: the service that just failed the job may still be
            // unreachable for a while, and without the job's fate nothing may be started again.
            match self.retry(|| self.find_job(&id)).await? {
                None => {}
                Some(job) if job["status"]["state"] != "DONE" => {}
                Some(job) if job["status"].get("errorResult").is_none_or(Json::is_null) => {
                    return Ok(JobOutcome { job });
                }
                Some(_) => attempt += 1,
            }
        }
    }

    fn job_resource(&self, job_id: &str, configuration: Json) -> Json {
        let mut reference = json!({"projectId": self.project(), "jobId": job_id});
        if let Some(loc) = &self.options.location {
            reference["location"] = json!(loc);
        }
        json!({"jobReference": reference, "configuration": configuration})
    }

    /// Starts a load job with `data` (NDJSON) as its media and waits for it. Resending after a
    /// lost answer finds the job by its id (409) instead of loading twice.
    pub async fn load(&self, load_config: Json, data: bytes::Bytes, job_id: &str) -> Result<JobOutcome> {
        let configuration = json!({"load": load_config});
        self.run_job(job_id, |id| {
            let job = self.job_resource(&id, configuration.clone());
            let data = data.clone();
            async move { self.upload(job, data).await }
        })
        .await
    }

    /// Starts a load job with `data` as its media; a job that already exists (409) is fine.
    async fn upload(&self, job: Json, data: bytes::Bytes) -> Result<()> {
        let url = format!("{}/upload/bigquery/v2/projects/{}/jobs?uploadType=multipart", self.endpoint, self.project());
        let boundary = format!("connector_{}", uuid::Uuid::new_v4().simple());
        let head = format!(
            "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{job}\r\n--{boundary}\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let length = head.len() + data.len() + tail.len();
        // The body is streamed from the three parts; the chunk itself is not copied.
        let parts: Vec<Result<bytes::Bytes, std::io::Error>> =
            vec![Ok(bytes::Bytes::from(head)), Ok(data), Ok(bytes::Bytes::from(tail))];
        let body = reqwest::Body::wrap_stream(futures::stream::iter(parts));
        let headers = self.auth_headers().await?;
        let response = self
            .http
            .post(&url)
            .headers(headers)
            .header("Content-Type", format!("multipart/related; boundary={boundary}"))
            .header("Content-Length", length)
            .body(body)
            .send()
            .await
            .map_err(|e| ConnectorError::transient(format!("BigQuery load upload: {e}")))?;
        let status = response.status();
        if status.is_success() || status.as_u16() == 409 {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let class = match status.as_u16() {
            429 | 500..=599 => ErrorClass::Transient,
            403 if is_rate_limit(&text) => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        };
        Err(ConnectorError::new(class, format!("BigQuery load upload: HTTP {status}: {}", short(&text))))
    }

    async fn auth_headers(&self) -> Result<http::HeaderMap> {
        match self.credentials.headers(http::Extensions::new()).await {
            Ok(CacheableResource::New { data, .. }) => Ok(data),
            Ok(CacheableResource::NotModified) => Ok(http::HeaderMap::new()),
            Err(e) => Err(ConnectorError::new(
                if e.is_transient() { ErrorClass::Transient } else { ErrorClass::Permanent },
                format!("Google credentials: {e}"),
            )),
        }
    }

    /// The job resource, or `None` when no job has that id.
    pub async fn find_job(&self, job_id: &str) -> Result<Option<Json>> {
        let mut req = self.jobs.get_job().set_project_id(self.project()).set_job_id(job_id);
        if let Some(loc) = &self.options.location {
            req = req.set_location(loc);
        }
        match req.send().await {
            Ok(job) => Ok(Some(to_json(&job))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(gax_err(e, &format!("get job {job_id}"))),
        }
    }

    /// Polls a job until it is done; a failed job becomes an error classified by its reason.
    pub async fn wait_job(&self, job_id: &str) -> Result<JobOutcome> {
        let started = std::time::Instant::now();
        let mut wait = Duration::from_millis(100);
        loop {
            let job = self
                .retry(|| async {
                    let mut req = self.jobs.get_job().set_project_id(self.project()).set_job_id(job_id);
                    if let Some(loc) = &self.options.location {
                        req = req.set_location(loc);
                    }
                    req.send().await.map_err(|e| gax_err(e, &format!("get job {job_id}")))
                })
                .await?;
            let job = to_json(&job);
            if job["status"]["state"] == "DONE" {
                if let Some(err) = job["status"].get("errorResult").filter(|e| !e.is_null()) {
                    let reason = err["reason"].as_str().unwrap_or("unknown");
                    let message = err["message"].as_str().unwrap_or("");
                    let details: Vec<String> = job["status"]["errors"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|e| e["message"].as_str())
                                .filter(|m| *m != message)
                                .take(3)
                                .map(str::to_string)
                                .collect()
                        })
                        .unwrap_or_default();
                    return Err(ConnectorError::new(
                        job_error_class(reason),
                        format!("BigQuery job {job_id} failed ({reason}): {message} {}", details.join("; ")),
                    ));
                }
                return Ok(JobOutcome { job });
            }
            if started.elapsed() > self.options.job_timeout {
                return Err(ConnectorError::transient(format!(
                    "BigQuery job {job_id} still not done after {} s",
                    self.options.job_timeout.as_secs()
                )));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }
}

fn short(text: &str) -> String {
    let t: String = text.chars().take(500).collect();
    t.replace('\n', " ")
}
