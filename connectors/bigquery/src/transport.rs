//! The one seam between the sink and BigQuery's REST API: a [`Transport`] carries each call.
//! [`GoogleTransport`] is the real one (the official `google-cloud-bigquery-v2` clients, plus
//! the media upload of load jobs they lack, through `reqwest`); [`DiscardTransport`] contacts
//! nothing and answers every call as done (benchmarks of reading and encoding alone). It is
//! chosen once, when the sink is built, and a run with it records no state.
//!
//! Requests are JSON and converted to the official model types, which mirror the REST
//! resources field for field; responses are read back as JSON the same way. Errors come out
//! classified; the transport itself never retries (the client above it does, once).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use connector_framework::{ConnectorError, ErrorClass, Result};
use futures::StreamExt;
use google_cloud_auth::credentials::{self, CacheableResource, Credentials};
use google_cloud_bigquery_v2::client::{DatasetService, JobService, TableService};
use google_cloud_bigquery_v2::model;
use serde_json::{Value as Json, json};

use crate::chunk::Chunk;

pub const DEFAULT_ENDPOINT: &str = "https://bigquery.googleapis.com";

/// The REST calls the sink makes. `Ok(None)` means "not found"; a create of something that
/// exists is not an error.
#[async_trait]
pub trait Transport: Send + Sync + std::fmt::Debug {
    async fn get_dataset(&self, project: &str, dataset: &str) -> Result<Option<Json>>;
    async fn insert_dataset(&self, project: &str, body: Json) -> Result<()>;
    async fn get_table(&self, project: &str, dataset: &str, table: &str) -> Result<Option<Json>>;
    /// The created table's resource, or `None` when it existed already.
    async fn insert_table(&self, project: &str, dataset: &str, resource: Json) -> Result<Option<Json>>;
    async fn patch_table(&self, project: &str, dataset: &str, table: &str, patch: Json) -> Result<()>;
    /// A table that is gone already is not an error.
    async fn delete_table(&self, project: &str, dataset: &str, table: &str) -> Result<()>;
    /// Starts a job; the job resource as inserted, or `None` when a job with that id exists.
    async fn insert_job(&self, project: &str, job: Json) -> Result<Option<Json>>;
    /// Starts a load job with `data` as its media; a job with that id existing is not an error.
    async fn upload_job(&self, project: &str, job: Json, data: Chunk) -> Result<()>;
    async fn get_job(&self, project: &str, job_id: &str, location: Option<&str>) -> Result<Option<Json>>;
    async fn cancel_job(&self, project: &str, job_id: &str, location: Option<&str>) -> Result<()>;
    /// One page of a finished query's rows (`jobs.getQueryResults`).
    async fn get_query_results(
        &self,
        project: &str,
        job_id: &str,
        location: Option<&str>,
        page_token: Option<&str>,
    ) -> Result<Json>;
    /// Where calls go (for logs and state; no secret).
    fn endpoint(&self) -> &str;
}

/// How to reach real BigQuery (or an emulator at `endpoint`).
#[derive(Debug, Clone)]
pub struct GoogleOptions {
    /// An emulator's URL; anonymous credentials are used with it.
    pub endpoint: Option<String>,
    /// A service-account or authorized-user key file; default: Application Default Credentials.
    pub credentials_file: Option<PathBuf>,
}

/// BigQuery through the official clients.
#[derive(Clone)]
pub struct GoogleTransport {
    endpoint: String,
    credentials: Credentials,
    datasets: DatasetService,
    tables: TableService,
    jobs: JobService,
    http: reqwest::Client,
}

impl std::fmt::Debug for GoogleTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoogleTransport").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

fn gax_class(e: &google_cloud_gax::error::Error) -> ErrorClass {
    if e.is_io() || e.is_connect() || e.is_timeout() || e.is_transport() || e.is_exhausted() {
        return ErrorClass::Transient;
    }
    match e.http_status_code() {
        Some(429 | 500 | 502 | 503 | 504) => ErrorClass::Transient,
        Some(403) if is_rate_limit(&e.to_string()) => ErrorClass::Transient,
        Some(_) => ErrorClass::Permanent,
        None if e.is_authentication() => ErrorClass::Permanent,
        None => ErrorClass::Transient,
    }
}

pub(crate) fn is_rate_limit(message: &str) -> bool {
    message.contains("rateLimitExceeded") || message.contains("quotaExceeded") && message.contains("rate")
}

fn gax_err(e: google_cloud_gax::error::Error, what: &str) -> ConnectorError {
    let class = gax_class(&e);
    let hint = match e.http_status_code() {
        Some(401 | 403) if class == ErrorClass::Permanent => {
            "; check the credentials and that they hold the BigQuery Data Editor and Job User roles"
        }
        Some(404) if what.starts_with("get job") => {
            "; for a dataset outside the US and EU multi-regions, set bq_location to the dataset's location"
        }
        _ => "",
    };
    let status = e.http_status_code().map(|c| format!("HTTP {c}: ")).unwrap_or_default();
    ConnectorError::new(class, format!("BigQuery {what}: {status}{e}{hint}"))
}

fn status(e: &google_cloud_gax::error::Error) -> Option<u16> {
    e.http_status_code()
}

fn to_model<T: serde::de::DeserializeOwned>(v: Json) -> Result<T> {
    serde_json::from_value(v).map_err(|e| ConnectorError::permanent(format!("building a BigQuery request: {e}")))
}

fn to_json<T: serde::Serialize>(v: &T) -> Json {
    serde_json::to_value(v).unwrap_or(Json::Null)
}

/// A job the service returned, without the configuration it echoes: the client reads only its
/// reference, status and statistics, and a MERGE's echo (its statement and a parameter element
/// per tenant) was the largest thing a fleet's run held while it waited for its commits.
fn job_json(mut job: model::Job) -> Json {
    job.configuration = None;
    to_json(&job)
}

/// The official clients all take the same endpoint, credentials and retry setting: retries
/// are the client's (bounded by max_retries, classified); the official clients' own would
/// multiply them and hold a run for minutes on a target that is down.
macro_rules! service {
    ($service:ty, $endpoint:expr, $credentials:expr) => {
        <$service>::builder()
            .with_endpoint($endpoint.clone())
            .with_credentials($credentials.clone())
            .with_retry_policy(google_cloud_gax::retry_policy::NeverRetry)
            .build()
            .await
            .map_err(|e| ConnectorError::config(format!("cannot create a BigQuery client for {}: {e}", $endpoint)))?
    };
}

/// Reads the credentials: anonymous for an emulator, a key file, or Application Default
/// Credentials. The key file's content is never logged or quoted.
fn credentials(options: &GoogleOptions) -> Result<Credentials> {
    if options.endpoint.is_some() {
        return Ok(credentials::anonymous::Builder::new().build());
    }
    let Some(path) = &options.credentials_file else {
        return credentials::Builder::default().build().map_err(|e| {
            ConnectorError::config(format!(
                "no Google credentials found ({e}); run `gcloud auth application-default login`, set \
                 GOOGLE_APPLICATION_CREDENTIALS, or give bq_credentials"
            ))
        });
    };
    let key = crate::config::read_key_file(path)?;
    match key.get("type").and_then(Json::as_str) {
        Some("service_account") => credentials::service_account::Builder::new(key).build(),
        Some("authorized_user") => credentials::user_account::Builder::new(key).build(),
        _ => unreachable!("read_key_file checks the type"),
    }
    .map_err(|e| ConnectorError::config(format!("bq_credentials {}: {e}", path.display())))
}

impl GoogleTransport {
    pub async fn new(options: &GoogleOptions) -> Result<Self> {
        let endpoint = options.endpoint.clone().unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let credentials = credentials(options)?;
        let datasets = service!(DatasetService, endpoint, credentials);
        let tables = service!(TableService, endpoint, credentials);
        let jobs = service!(JobService, endpoint, credentials);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| ConnectorError::config(format!("cannot create an HTTP client: {e}")))?;
        Ok(Self { endpoint, credentials, datasets, tables, jobs, http })
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
}

#[async_trait]
impl Transport for GoogleTransport {
    async fn get_dataset(&self, project: &str, dataset: &str) -> Result<Option<Json>> {
        match self.datasets.get_dataset().set_project_id(project).set_dataset_id(dataset).send().await {
            Ok(d) => Ok(Some(to_json(&d))),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(gax_err(e, &format!("get dataset {dataset}"))),
        }
    }

    async fn insert_dataset(&self, project: &str, body: Json) -> Result<()> {
        let dataset = body["datasetReference"]["datasetId"].as_str().unwrap_or_default().to_string();
        match self
            .datasets
            .insert_dataset()
            .set_project_id(project)
            .set_dataset(to_model::<model::Dataset>(body)?)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(409) => Ok(()),
            Err(e) => Err(gax_err(e, &format!("create dataset {dataset}"))),
        }
    }

    async fn get_table(&self, project: &str, dataset: &str, table: &str) -> Result<Option<Json>> {
        match self.tables.get_table().set_project_id(project).set_dataset_id(dataset).set_table_id(table).send().await {
            Ok(t) => Ok(Some(to_json(&t))),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(gax_err(e, &format!("get table {dataset}.{table}"))),
        }
    }

    async fn insert_table(&self, project: &str, dataset: &str, resource: Json) -> Result<Option<Json>> {
        let table: model::Table = to_model(resource)?;
        match self.tables.insert_table().set_project_id(project).set_dataset_id(dataset).set_table(table).send().await {
            Ok(t) => Ok(Some(to_json(&t))),
            Err(e) if status(&e) == Some(409) => Ok(None),
            Err(e) => Err(gax_err(e, &format!("create table in {dataset}"))),
        }
    }

    async fn patch_table(&self, project: &str, dataset: &str, table: &str, patch: Json) -> Result<()> {
        let patch: model::Table = to_model(patch)?;
        self.tables
            .patch_table()
            .set_project_id(project)
            .set_dataset_id(dataset)
            .set_table_id(table)
            .set_table(patch)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| gax_err(e, &format!("change table {dataset}.{table}")))
    }

    async fn delete_table(&self, project: &str, dataset: &str, table: &str) -> Result<()> {
        match self
            .tables
            .delete_table()
            .set_project_id(project)
            .set_dataset_id(dataset)
            .set_table_id(table)
            .send()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            Err(e) => Err(gax_err(e, &format!("delete table {dataset}.{table}"))),
        }
    }

    async fn insert_job(&self, project: &str, job: Json) -> Result<Option<Json>> {
        let job: model::Job = to_model(job)?;
        match self.jobs.insert_job().set_project_id(project).set_job(job).send().await {
            Ok(j) => Ok(Some(job_json(j))),
            Err(e) if status(&e) == Some(409) => Ok(None),
            Err(e) => Err(gax_err(e, "start query job")),
        }
    }

    async fn upload_job(&self, project: &str, job: Json, data: Chunk) -> Result<()> {
        let url = format!("{}/upload/bigquery/v2/projects/{project}/jobs?uploadType=multipart", self.endpoint);
        let boundary = format!("connector_{}", uuid::Uuid::new_v4().simple());
        let head = format!(
            "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{job}\r\n--{boundary}\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let length = head.len() as u64 + data.len() + tail.len() as u64;
        // The body is streamed from the parts; the chunk is not copied (its part on disk is
        // read a piece at a time).
        let body = futures::stream::iter([Ok(bytes::Bytes::from(head))])
            .chain(data.stream())
            .chain(futures::stream::iter([Ok(bytes::Bytes::from(tail))]));
        let body = reqwest::Body::wrap_stream(body);
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
            .map_err(|e| ConnectorError::transient(format!("BigQuery load upload: {}", e.without_url())))?;
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

    async fn get_job(&self, project: &str, job_id: &str, location: Option<&str>) -> Result<Option<Json>> {
        let mut req = self.jobs.get_job().set_project_id(project).set_job_id(job_id);
        if let Some(loc) = location {
            req = req.set_location(loc);
        }
        match req.send().await {
            Ok(job) => Ok(Some(job_json(job))),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(gax_err(e, &format!("get job {job_id}"))),
        }
    }

    async fn cancel_job(&self, project: &str, job_id: &str, location: Option<&str>) -> Result<()> {
        let mut req = self.jobs.cancel_job().set_project_id(project).set_job_id(job_id);
        if let Some(loc) = location {
            req = req.set_location(loc);
        }
        req.send().await.map(|_| ()).map_err(|e| gax_err(e, &format!("cancel job {job_id}")))
    }

    async fn get_query_results(
        &self,
        project: &str,
        job_id: &str,
        location: Option<&str>,
        page_token: Option<&str>,
    ) -> Result<Json> {
        let mut req =
            self.jobs.get_query_results().set_project_id(project).set_job_id(job_id).set_max_results(50_000u32);
        if let Some(loc) = location {
            req = req.set_location(loc);
        }
        if let Some(token) = page_token {
            req = req.set_page_token(token);
        }
        req.send().await.map(|r| to_json(&r)).map_err(|e| gax_err(e, &format!("read the results of job {job_id}")))
    }

    fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

fn short(text: &str) -> String {
    let t: String = text.chars().take(500).collect();
    t.replace('\n', " ")
}

/// Contacts nothing: every table is new, every job is done at once, uploads are dropped
/// (or written to `dump_dir` to inspect the load files). For benchmarks of reading and
/// encoding alone; runs with it record no state.
#[derive(Debug, Default)]
pub struct DiscardTransport {
    pub dump_dir: Option<PathBuf>,
}

#[async_trait]
impl Transport for DiscardTransport {
    async fn get_dataset(&self, _: &str, _: &str) -> Result<Option<Json>> {
        Ok(Some(json!({})))
    }
    async fn insert_dataset(&self, _: &str, _: Json) -> Result<()> {
        Ok(())
    }
    async fn get_table(&self, _: &str, _: &str, _: &str) -> Result<Option<Json>> {
        Ok(None)
    }
    async fn insert_table(&self, _: &str, _: &str, resource: Json) -> Result<Option<Json>> {
        Ok(Some(resource))
    }
    async fn patch_table(&self, _: &str, _: &str, _: &str, _: Json) -> Result<()> {
        Ok(())
    }
    async fn delete_table(&self, _: &str, _: &str, _: &str) -> Result<()> {
        Ok(())
    }
    async fn insert_job(&self, _: &str, job: Json) -> Result<Option<Json>> {
        Ok(Some(job))
    }
    async fn upload_job(&self, _: &str, job: Json, data: Chunk) -> Result<()> {
        if let Some(dir) = &self.dump_dir {
            let id = job["jobReference"]["jobId"].as_str().unwrap_or("load");
            let path = dir.join(format!("{id}.ndjson"));
            data.to_vec()
                .and_then(|rows| std::fs::write(&path, rows))
                .map_err(|e| ConnectorError::permanent(format!("cannot write {}: {e}", path.display())))?;
        }
        Ok(())
    }
    async fn get_job(&self, _: &str, job_id: &str, _: Option<&str>) -> Result<Option<Json>> {
        Ok(Some(json!({"jobReference": {"jobId": job_id}, "status": {"state": "DONE"}})))
    }
    async fn cancel_job(&self, _: &str, _: &str, _: Option<&str>) -> Result<()> {
        Ok(())
    }
    async fn get_query_results(&self, _: &str, _: &str, _: Option<&str>, _: Option<&str>) -> Result<Json> {
        Ok(json!({"rows": []}))
    }
    fn endpoint(&self) -> &str {
        "discard"
    }
}
