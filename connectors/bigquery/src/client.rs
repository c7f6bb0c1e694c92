//! The BigQuery calls the sink makes, over one [`Transport`]: retried when transient (bounded,
//! jittered), jobs run exactly once under deterministic ids, every wait on a job bounded by
//! `job_timeout` and logged at least every 30 s, and every job call made in the dataset's
//! location.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use connector_framework::{ConnectorError, ErrorClass, Result, RetryPolicy};
use serde_json::value::RawValue;
use serde_json::{Value as Json, json};

use crate::chunk::Chunk;
use crate::transport::Transport;

/// How a waiting job is reported while it runs.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(30);

/// How the client behaves.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub project: String,
    /// The dataset's location (`bq_location`); learned from the dataset when not given.
    pub location: Option<String>,
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

/// What a dataset is set up with, as far as the sink cares.
#[derive(Debug, Clone, Default)]
pub struct DatasetInfo {
    pub location: Option<String>,
    pub default_table_expiration_ms: Option<String>,
    pub default_partition_expiration_ms: Option<String>,
}

/// One connection to a BigQuery project.
#[derive(Clone)]
pub struct BqClient {
    pub options: ClientOptions,
    transport: Arc<dyn Transport>,
    /// The location for job calls: `bq_location`, else the dataset's, once known.
    location: Arc<RwLock<Option<String>>>,
    job_slots: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for BqClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BqClient")
            .field("project", &self.options.project)
            .field("endpoint", &self.transport.endpoint())
            .finish()
    }
}

/// Job failures that a retry can get past: the service's own, and a DML statement or
/// transaction that lost a race with another one on the same table ("Could not serialize access
/// to table … due to concurrent update", "Transaction is aborted due to concurrent update"),
/// which BigQuery reports as `invalidQuery` — sharded workers and their state MERGEs meet it
/// (confluentinc/kafka-connect-bigquery#239, estuary/connectors#111). A failed job changed
/// nothing, and the retry runs under a new job id.
fn job_error_class(reason: &str, message: &str) -> ErrorClass {
    match reason {
        "backendError" | "internalError" | "rateLimitExceeded" | "jobBackendError" | "jobInternalError" => {
            ErrorClass::Transient
        }
        _ if message.contains("due to concurrent update") => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

/// A job id and the location it runs in, as one handle (`id@location`).
pub fn job_handle(job_id: &str, location: Option<&str>) -> String {
    match location {
        Some(l) => format!("{job_id}@{l}"),
        None => job_id.to_string(),
    }
}

/// A job's configuration as the text it is sent as, kept for the job's retries. A MERGE's
/// parameters hold an element per tenant; as JSON values (a map per element) they took many
/// times their text, and were the largest thing a fleet's run kept while its tables' commits
/// waited on their jobs.
fn held_configuration(configuration: Json) -> Result<Box<RawValue>> {
    serde_json::value::to_raw_value(&configuration).map_err(job_not_built)
}

/// A job's configuration that did not go to or from its text (a bug, never the data's fault).
fn job_not_built(e: serde_json::Error) -> ConnectorError {
    ConnectorError::permanent(format!("building a BigQuery job: {e}"))
}

/// The error for a job whose state BigQuery did not tell after every retry: its outcome is
/// unknown, so it is in doubt (`handle`) and the table fails this run.
fn job_unreachable(error: ConnectorError, job_id: &str, what: &str, location: Option<&str>) -> ConnectorError {
    ConnectorError::permanent(format!(
        "the state of BigQuery job {job_id} ({what}) could not be learned: {}; this table failed and the next run \
         settles the job (waits for it or cancels it) before writing the table again",
        error.message()
    ))
    .with_in_doubt(job_handle(job_id, location))
}

fn parse_job_handle(handle: &str) -> (&str, Option<&str>) {
    match handle.split_once('@') {
        Some((id, loc)) => (id, Some(loc)),
        None => (handle, None),
    }
}

/// The error of a wait that ended without the job's outcome: it ran out of time, or BigQuery
/// stopped answering about the job. The error carries the job's handle as in doubt.
struct InDoubt(ConnectorError);

impl BqClient {
    pub fn new(options: ClientOptions, transport: Arc<dyn Transport>) -> Self {
        let location = Arc::new(RwLock::new(options.location.clone()));
        let job_slots = Arc::new(tokio::sync::Semaphore::new(options.max_concurrent_jobs.max(1)));
        Self { options, transport, location, job_slots }
    }

    pub fn project(&self) -> &str {
        &self.options.project
    }

    pub fn endpoint(&self) -> &str {
        self.transport.endpoint()
    }

    /// The location job calls use.
    pub fn location(&self) -> Option<String> {
        self.location.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn learn_location(&self, location: Option<&str>) {
        let Some(loc) = location.filter(|l| !l.is_empty()) else { return };
        let mut current = self.location.write().unwrap_or_else(|p| p.into_inner());
        if current.is_none() {
            *current = Some(loc.to_string());
        }
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

    /// Whether BigQuery answers about `dataset` (present or not), with two quick retries
    /// instead of the configured ones: see `Sink::probe`.
    pub async fn probe(&self, dataset: &str) -> Result<()> {
        let quick =
            RetryPolicy { max_retries: 2, base_delay: Duration::from_secs(1), max_delay: Duration::from_secs(2) };
        quick.run(|| self.transport.get_dataset(self.project(), dataset), |_, _, _| {}).await.map(|_| ())
    }

    /// Creates the dataset when missing; returns its settings (and learns its location, which
    /// every later job call then names).
    pub async fn ensure_dataset(&self, dataset: &str) -> Result<DatasetInfo> {
        let found = self.retry(|| self.transport.get_dataset(self.project(), dataset)).await?;
        let resource = match found {
            Some(d) => d,
            None => {
                let mut body = json!({"datasetReference": {"projectId": self.project(), "datasetId": dataset}});
                if let Some(loc) = &self.options.location {
                    body["location"] = json!(loc);
                }
                let inserted = self.retry(|| self.transport.insert_dataset(self.project(), body.clone())).await;
                match (inserted, self.retry(|| self.transport.get_dataset(self.project(), dataset)).await) {
                    // Another worker created it at the same moment: BigQuery answers 409 (taken
                    // as success), the emulator fails the second commit; either way it exists.
                    (Err(e), Ok(Some(d))) => {
                        tracing::info!(%dataset, error = %e, "the dataset was created meanwhile by another worker");
                        d
                    }
                    (Err(e), _) => return Err(e),
                    (Ok(()), now) => now?.unwrap_or_default(),
                }
            }
        };
        let text = |key: &str| {
            resource.get(key).and_then(|v| v.as_str().map(str::to_string).or_else(|| v.as_i64().map(|n| n.to_string())))
        };
        let info = DatasetInfo {
            location: text("location"),
            default_table_expiration_ms: text("defaultTableExpirationMs").filter(|v| v != "0"),
            default_partition_expiration_ms: text("defaultPartitionExpirationMs").filter(|v| v != "0"),
        };
        self.learn_location(info.location.as_deref());
        Ok(info)
    }

    /// The table resource as JSON, or `None` when it does not exist.
    pub async fn get_table(&self, dataset: &str, table: &str) -> Result<Option<Json>> {
        self.retry(|| self.transport.get_table(self.project(), dataset, table)).await
    }

    /// Creates a table from its REST resource and returns the table as it now exists (an
    /// existing table is not an error: it is returned as it is).
    pub async fn create_table(&self, dataset: &str, resource: Json) -> Result<Json> {
        let table = resource["tableReference"]["tableId"].as_str().unwrap_or_default().to_string();
        match self.retry(|| self.transport.insert_table(self.project(), dataset, resource.clone())).await? {
            Some(created) => Ok(created),
            None => self.get_table(dataset, &table).await?.ok_or_else(|| {
                ConnectorError::transient(format!("BigQuery table {dataset}.{table} exists and then did not"))
            }),
        }
    }

    /// Creates a table that another writer (a sharded worker) may be creating at the same
    /// moment: `None` when it exists after all, created by someone else (BigQuery answers 409;
    /// the emulator fails the second commit), so the caller takes it as an existing table.
    pub async fn create_table_if_absent(&self, dataset: &str, resource: Json) -> Result<Option<Json>> {
        let table = resource["tableReference"]["tableId"].as_str().unwrap_or_default().to_string();
        match self.retry(|| self.transport.insert_table(self.project(), dataset, resource.clone())).await {
            Ok(Some(created)) => Ok(Some(created)),
            Ok(None) => Ok(None),
            Err(e) => match self.get_table(dataset, &table).await {
                Ok(Some(_)) => {
                    tracing::info!(table = %table, error = %e, "the table was created meanwhile by another writer");
                    Ok(None)
                }
                _ => Err(e),
            },
        }
    }

    /// Replaces the table's schema (used to add NULLABLE columns).
    pub async fn patch_schema(&self, dataset: &str, table: &str, fields: Json) -> Result<()> {
        let patch = json!({"schema": {"fields": fields}});
        self.retry(|| self.transport.patch_table(self.project(), dataset, table, patch.clone())).await
    }

    pub async fn delete_table(&self, dataset: &str, table: &str) -> Result<()> {
        self.transport.delete_table(self.project(), dataset, table).await
    }

    /// Runs a query job (a script may hold a transaction) and waits for it. `job_id` makes
    /// retries idempotent: a job that already ran is not run again. A wait that runs out of
    /// time leaves the job in doubt: the error carries its handle (see [`BqClient::resolve`]).
    pub async fn query(&self, sql: &str, parameters: Json, job_id: &str, what: &str) -> Result<JobOutcome> {
        let mut query = json!({"query": sql, "useLegacySql": false});
        if parameters.as_array().is_some_and(|p| !p.is_empty()) {
            query["parameterMode"] = json!("NAMED");
            query["queryParameters"] = parameters;
        }
        tracing::debug!(job_id, sql, "BigQuery query");
        let configuration = held_configuration(json!({"query": query}))?;
        self.run_job(job_id, what, |id| {
            let job = self.job_resource(&id, &configuration);
            async move {
                if let Some(inserted) = self.transport.insert_job(self.project(), job?).await? {
                    self.learn_location(inserted["jobReference"]["location"].as_str());
                }
                Ok(())
            }
        })
        .await
    }

    /// Starts a load job with `data` (NDJSON) as its media and waits for it. Resending after a
    /// lost answer finds the job by its id (409) instead of loading twice.
    pub async fn load(&self, load_config: Json, data: Chunk, job_id: &str, what: &str) -> Result<JobOutcome> {
        let configuration = held_configuration(json!({"load": load_config}))?;
        self.run_job(job_id, what, |id| {
            let job = self.job_resource(&id, &configuration);
            let data = data.clone();
            async move { self.transport.upload_job(self.project(), job?, data).await }
        })
        .await
    }

    /// The job resource an attempt sends: its id and location, and the configuration made into
    /// JSON again for this attempt only.
    fn job_resource(&self, job_id: &str, configuration: &RawValue) -> Result<Json> {
        let configuration: Json = serde_json::from_str(configuration.get()).map_err(job_not_built)?;
        let mut reference = json!({"projectId": self.project(), "jobId": job_id});
        if let Some(loc) = self.location() {
            reference["location"] = json!(loc);
        }
        Ok(json!({"jobReference": reference, "configuration": configuration}))
    }

    /// Runs a job exactly once under ids `{base_id}_{n}`. After a transient failure it looks the
    /// job up: one still running is waited for, one that succeeded is taken, one that failed is
    /// started again under the next id, and one never created is started again under the same
    /// id. A job whose fate cannot be learned is an error, never a second start; so is a job
    /// still running at `job_timeout` (it is in doubt, and said so).
    async fn run_job<F, Fut>(&self, base_id: &str, what: &str, start: F) -> Result<JobOutcome>
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
                Ok(()) => self.wait_job(&id, what).await,
                Err(e) => Ok(Err(e)),
            };
            let error = match result {
                Err(InDoubt(e)) => return Err(e),
                Ok(Ok(outcome)) => return Ok(outcome),
                Ok(Err(e)) if e.is_transient() && retries < policy.max_retries => e,
                Ok(Err(e)) => return Err(e),
            };
            let wait = policy.delay(retries);
            retries += 1;
            tracing::warn!(job = %id, %what, attempt = retries, wait_secs = wait.as_secs_f64(), error = %error, "BigQuery job failed; retrying");
            tokio::time::sleep(wait).await;
            // The lookup is retried too: the service that just failed the job may still be
            // unreachable for a while, and without the job's fate nothing may be started again.
            let location = self.location();
            let looked_up = self.retry(|| self.transport.get_job(self.project(), &id, location.as_deref())).await;
            // Unanswered, the failed start may still have created the job: it is in doubt.
            match looked_up.map_err(|e| job_unreachable(e, &id, what, location.as_deref()))? {
                None => {}
                Some(job) if job["status"]["state"] != "DONE" => {}
                Some(job) if job["status"].get("errorResult").is_none_or(Json::is_null) => {
                    return Ok(JobOutcome { job });
                }
                Some(_) => attempt += 1,
            }
        }
    }

    /// Polls a job until it is done (a failed job becomes an error classified by its reason),
    /// logging what it waits for at least every 30 s. At `job_timeout` it gives up with an
    /// error that names the job and leaves it in doubt.
    async fn wait_job(&self, job_id: &str, what: &str) -> std::result::Result<Result<JobOutcome>, InDoubt> {
        let started = Instant::now();
        let mut last_log = Instant::now();
        let mut wait = Duration::from_millis(100);
        loop {
            let location = self.location();
            let job = match self.retry(|| self.transport.get_job(self.project(), job_id, location.as_deref())).await {
                Ok(Some(job)) => job,
                Ok(None) => {
                    return Ok(Err(ConnectorError::permanent(format!(
                        "BigQuery job {job_id} ({what}) is not known to BigQuery{}",
                        if location.is_none() { "; set bq_location to the dataset's location" } else { "" }
                    ))));
                }
                // The job may still run and land later: never retried in this run, resolved
                // (cancelled or waited for) by the next one before the table is written again.
                Err(e) => return Err(InDoubt(job_unreachable(e, job_id, what, location.as_deref()))),
            };
            self.learn_location(job["jobReference"]["location"].as_str());
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
                    return Ok(Err(ConnectorError::new(
                        job_error_class(reason, message),
                        format!("BigQuery job {job_id} ({what}) failed ({reason}): {message} {}", details.join("; "))
                            .trim_end()
                            .to_string(),
                    )));
                }
                return Ok(Ok(JobOutcome { job }));
            }
            let elapsed = started.elapsed();
            if elapsed >= self.options.job_timeout {
                let handle = job_handle(job_id, self.location().as_deref());
                // Not retried in this run: another wait would take as long. The next run retries.
                return Err(InDoubt(
                    ConnectorError::permanent(format!(
                        "BigQuery job {job_id} ({what}) is still {} after job_timeout {} s; this table failed and \
                         the next run retries it once the job has ended. If BigQuery is only slow, raise \
                         job_timeout; see the job with `bq show -j {job_id}`",
                        job["status"]["state"].as_str().unwrap_or("running").to_ascii_lowercase(),
                        self.options.job_timeout.as_secs()
                    ))
                    .with_in_doubt(handle),
                ));
            }
            if last_log.elapsed() >= WAIT_LOG_EVERY {
                last_log = Instant::now();
                tracing::info!(job = %job_id, %what, waited_secs = elapsed.as_secs(), timeout_secs = self.options.job_timeout.as_secs(),
                    state = job["status"]["state"].as_str().unwrap_or("?"), "waiting for a BigQuery job");
            }
            tokio::time::sleep(
                wait.min(self.options.job_timeout.saturating_sub(elapsed)).max(Duration::from_millis(10)),
            )
            .await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }

    /// Runs a query and reads every row of its result, each cell as text (`None`: NULL).
    /// Returns the rows and the bytes the query billed.
    pub async fn query_rows(
        &self,
        sql: &str,
        parameters: Json,
        job_id: &str,
        what: &str,
    ) -> Result<(Vec<Vec<Option<String>>>, Option<u64>)> {
        let mut rows = Vec::new();
        let billed = self.query_pages(sql, parameters, job_id, what, |page| rows.extend(page)).await?;
        Ok((rows, billed))
    }

    /// Runs a query and hands its result to `on_page` a page at a time (memory stays bounded
    /// by a page), each cell as text. Returns the bytes the query billed.
    pub async fn query_pages(
        &self,
        sql: &str,
        parameters: Json,
        job_id: &str,
        what: &str,
        mut on_page: impl FnMut(Vec<Vec<Option<String>>>),
    ) -> Result<Option<u64>> {
        let outcome = self.query(sql, parameters, job_id, what).await?;
        let billed = outcome.statistic(&["query", "totalBytesBilled"]);
        let id = outcome.job["jobReference"]["jobId"].as_str().unwrap_or(job_id).to_string();
        let location = outcome.job["jobReference"]["location"].as_str().map(str::to_string).or_else(|| self.location());
        let mut token: Option<String> = None;
        loop {
            let page = self
                .retry(|| self.transport.get_query_results(self.project(), &id, location.as_deref(), token.as_deref()))
                .await?;
            let mut rows = Vec::new();
            for row in page["rows"].as_array().into_iter().flatten() {
                let cells = row["f"].as_array().map(|cells| {
                    cells
                        .iter()
                        .map(|c| match &c["v"] {
                            Json::Null => None,
                            Json::String(s) => Some(s.clone()),
                            other => Some(other.to_string()),
                        })
                        .collect()
                });
                rows.push(cells.unwrap_or_default());
            }
            on_page(rows);
            match page["pageToken"].as_str().filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t.to_string()),
                None => break,
            }
        }
        Ok(billed)
    }

    /// Settles a job in doubt (`handle` from a timed-out wait): a job still running is
    /// cancelled and waited for, up to `job_timeout`. `Ok` once it has ended, whatever its
    /// outcome (a MERGE that ended either applied atomically or not at all).
    pub async fn resolve(&self, handle: &str) -> Result<()> {
        let (job_id, location) = parse_job_handle(handle);
        let location = location.map(str::to_string).or_else(|| self.location());
        let started = Instant::now();
        let mut cancelled = false;
        loop {
            match self.retry(|| self.transport.get_job(self.project(), job_id, location.as_deref())).await? {
                None => return Ok(()),
                Some(job) if job["status"]["state"] == "DONE" => {
                    tracing::info!(job = %job_id, "the job in doubt has ended");
                    return Ok(());
                }
                Some(_) if !cancelled => {
                    tracing::warn!(job = %job_id, "an earlier job is still running; cancelling it before writing the table again");
                    self.retry(|| self.transport.cancel_job(self.project(), job_id, location.as_deref())).await?;
                    cancelled = true;
                }
                Some(job) if started.elapsed() >= self.options.job_timeout => {
                    return Err(ConnectorError::transient(format!(
                        "BigQuery job {job_id} from an earlier run is still {} after it was cancelled; the table is not \
                         written until it has ended (so it cannot land after a newer write). Check it with `bq show \
                         -j {job_id}`",
                        job["status"]["state"].as_str().unwrap_or("running").to_ascii_lowercase()
                    ))
                    .with_in_doubt(handle));
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::sync::Mutex;

    /// A transport that records every call and answers `get_job` from a script: the job's
    /// state for each lookup (the last one repeats).
    #[derive(Debug, Default)]
    pub(crate) struct Scripted {
        pub calls: Mutex<Vec<String>>,
        pub states: Mutex<Vec<&'static str>>,
        /// Fields a created table gets from its dataset (e.g. an inherited expiration).
        pub created_with: Json,
        /// The dataset is missing until an `insert_dataset`, which fails (another worker
        /// created it at the same moment, as the emulator reports that).
        pub dataset_race: bool,
    }

    #[async_trait]
    impl Transport for Scripted {
        async fn get_dataset(&self, _: &str, d: &str) -> Result<Option<Json>> {
            let mut calls = self.calls.lock().unwrap();
            calls.push(format!("get_dataset {d}"));
            if self.dataset_race && !calls.iter().any(|c| c.starts_with("insert_dataset")) {
                return Ok(None);
            }
            Ok(Some(json!({"location": "asia-east1", "defaultTableExpirationMs": "5184000000"})))
        }
        async fn insert_dataset(&self, _: &str, _: Json) -> Result<()> {
            self.calls.lock().unwrap().push("insert_dataset".into());
            match self.dataset_race {
                true => Err(ConnectorError::permanent("HTTP 400: Failed to commit DuckLake transaction")),
                false => Ok(()),
            }
        }
        async fn get_table(&self, _: &str, _: &str, _: &str) -> Result<Option<Json>> {
            Ok(None)
        }
        async fn insert_table(&self, _: &str, _: &str, mut r: Json) -> Result<Option<Json>> {
            json_merge(&mut r, &self.created_with);
            Ok(Some(r))
        }
        async fn patch_table(&self, _: &str, _: &str, _: &str, _: Json) -> Result<()> {
            Ok(())
        }
        async fn delete_table(&self, _: &str, _: &str, _: &str) -> Result<()> {
            Ok(())
        }
        async fn insert_job(&self, _: &str, job: Json) -> Result<Option<Json>> {
            self.calls.lock().unwrap().push(format!("insert_job location={}", job["jobReference"]["location"]));
            if let Some(sql) = job["configuration"]["query"]["query"].as_str() {
                self.calls.lock().unwrap().push(format!("query {sql}"));
            }
            Ok(Some(job))
        }
        async fn upload_job(&self, _: &str, _: Json, _: crate::chunk::Chunk) -> Result<()> {
            Ok(())
        }
        async fn get_job(&self, _: &str, id: &str, location: Option<&str>) -> Result<Option<Json>> {
            self.calls.lock().unwrap().push(format!("get_job location={location:?}"));
            let mut states = self.states.lock().unwrap();
            let state = if states.len() > 1 { states.remove(0) } else { states.first().copied().unwrap_or("DONE") };
            if state == "UNREACHABLE" {
                return Err(ConnectorError::transient("connection refused"));
            }
            if state == "CONFLICT" {
                let error = json!({"reason": "invalidQuery", "message": "Transaction is aborted due to concurrent update against table p.d._connector_state"});
                return Ok(Some(
                    json!({"jobReference": {"jobId": id}, "status": {"state": "DONE", "errorResult": error}}),
                ));
            }
            Ok(Some(json!({"jobReference": {"jobId": id}, "status": {"state": state}})))
        }
        async fn cancel_job(&self, _: &str, id: &str, _: Option<&str>) -> Result<()> {
            self.calls.lock().unwrap().push(format!("cancel_job {id}"));
            Ok(())
        }
        async fn get_query_results(&self, _: &str, _: &str, _: Option<&str>, _: Option<&str>) -> Result<Json> {
            Ok(json!({"rows": []}))
        }
        fn endpoint(&self) -> &str {
            "scripted"
        }
    }

    fn json_merge(into: &mut Json, from: &Json) {
        if let (Some(into), Some(from)) = (into.as_object_mut(), from.as_object()) {
            for (k, v) in from {
                match into.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => json_merge(existing, v),
                    _ => {
                        into.insert(k.clone(), v.clone());
                    }
                }
            }
        }
    }

    pub(crate) fn client(transport: Arc<Scripted>, timeout: Duration) -> BqClient {
        let options = ClientOptions {
            project: "p".into(),
            location: None,
            retry: RetryPolicy { max_retries: 0, ..Default::default() },
            job_timeout: timeout,
            max_concurrent_jobs: 2,
        };
        BqClient::new(options, transport)
    }

    #[tokio::test]
    async fn a_dataset_another_worker_created_at_the_same_moment_is_used() {
        let t = Arc::new(Scripted { dataset_race: true, ..Default::default() });
        let info = client(t.clone(), Duration::from_secs(5)).ensure_dataset("shops").await.expect("the dataset exists");
        assert_eq!(info.location.as_deref(), Some("asia-east1"));
        assert_eq!(*t.calls.lock().unwrap(), ["get_dataset shops", "insert_dataset", "get_dataset shops"]);
    }

    #[tokio::test]
    async fn every_job_call_names_the_location_learned_from_the_dataset() {
        let t = Arc::new(Scripted::default());
        let c = client(t.clone(), Duration::from_secs(5));
        let info = c.ensure_dataset("d").await.unwrap();
        assert_eq!(info.default_table_expiration_ms.as_deref(), Some("5184000000"));
        c.query("SELECT 1", json!([]), "q1", "a test query").await.unwrap();
        let calls = t.calls.lock().unwrap().clone();
        assert!(calls.contains(&"insert_job location=\"asia-east1\"".to_string()), "{calls:?}");
        assert!(calls.contains(&"get_job location=Some(\"asia-east1\")".to_string()), "{calls:?}");
    }

    #[tokio::test]
    async fn a_job_still_running_at_job_timeout_fails_in_doubt_naming_it() {
        let t = Arc::new(Scripted { states: Mutex::new(vec!["RUNNING"]), ..Default::default() });
        let c = client(t.clone(), Duration::from_millis(300));
        let e = c.query("MERGE ...", json!([]), "commit_x", "MERGE of 3 tenants into orders").await.unwrap_err();
        assert!(
            e.message().contains(
                "BigQuery job commit_x_0 (MERGE of 3 tenants into orders) is still running after job_timeout"
            ),
            "{e}"
        );
        assert_eq!(e.in_doubt(), Some("commit_x_0"), "the job is left in doubt, for the next run to resolve");
        let inserts = t.calls.lock().unwrap().iter().filter(|c| c.starts_with("insert_job")).count();
        assert_eq!(inserts, 1, "a timed-out job is never started a second time");
    }

    #[tokio::test]
    async fn a_job_whose_state_cannot_be_learned_fails_in_doubt_and_is_not_started_again() {
        let t = Arc::new(Scripted { states: Mutex::new(vec!["RUNNING", "UNREACHABLE"]), ..Default::default() });
        let c = client(t.clone(), Duration::from_secs(10));
        let e = c.query("MERGE ...", json!([]), "commit_z", "MERGE of 2 tenants into users").await.unwrap_err();
        assert!(e.message().contains("state of BigQuery job commit_z_0 (MERGE of 2 tenants into users)"), "{e}");
        assert_eq!(e.in_doubt(), Some("commit_z_0"), "the next run must settle the job before writing again");
        let inserts = t.calls.lock().unwrap().iter().filter(|c| c.starts_with("insert_job")).count();
        assert_eq!(inserts, 1, "a job in doubt is never started a second time");
    }

    #[tokio::test]
    async fn a_job_in_doubt_is_cancelled_and_waited_for_before_the_table_is_written_again() {
        let t = Arc::new(Scripted { states: Mutex::new(vec!["RUNNING", "RUNNING", "DONE"]), ..Default::default() });
        let c = client(t.clone(), Duration::from_secs(10));
        c.resolve("commit_x_0@EU").await.unwrap();
        let calls = t.calls.lock().unwrap().clone();
        assert!(calls.contains(&"cancel_job commit_x_0".to_string()), "{calls:?}");
        assert!(calls.contains(&"get_job location=Some(\"EU\")".to_string()), "{calls:?}");

        let stuck = Arc::new(Scripted { states: Mutex::new(vec!["RUNNING"]), ..Default::default() });
        let c = client(stuck, Duration::from_millis(600));
        let e = c.resolve("commit_y_0").await.unwrap_err();
        assert!(
            e.message().contains("still running after it was cancelled") && e.in_doubt() == Some("commit_y_0"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_dml_that_lost_a_race_on_its_table_runs_again_under_a_new_job_id() {
        // The job fails on a concurrent update; the lookup after the wait sees it failed; the
        // retry under the next id succeeds.
        let t = Arc::new(Scripted { states: Mutex::new(vec!["CONFLICT", "CONFLICT", "DONE"]), ..Default::default() });
        let options = ClientOptions {
            project: "p".into(),
            location: None,
            retry: RetryPolicy {
                max_retries: 2,
                base_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(5),
            },
            job_timeout: Duration::from_secs(5),
            max_concurrent_jobs: 1,
        };
        let c = BqClient::new(options, t.clone());
        let outcome = c.query("MERGE ...", json!([]), "state_x", "state of 30 tenants").await.unwrap();
        assert_eq!(outcome.job["jobReference"]["jobId"], "state_x_1");
        let inserts = t.calls.lock().unwrap().iter().filter(|c| c.starts_with("insert_job")).count();
        assert_eq!(inserts, 2);
        assert_eq!(job_error_class("invalidQuery", "Syntax error: Unexpected keyword"), ErrorClass::Permanent);
    }
}
