//! The `bigquery` sink's config: keys, validation (no I/O), and building the sink with its
//! transport.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use connector_framework::config::{self, Problem, lenient};
use connector_framework::{
    BuildContext, ConnectorDescriptor, ConnectorError, Factory, FieldDoc, Result, Sink, SinkConfig, TableOptions,
};
use serde::{Deserialize, Serialize};

use crate::client::{BqClient, ClientOptions};
use crate::sink::BigQuerySink;
use crate::transport::{DiscardTransport, GoogleOptions, GoogleTransport, Transport};

/// Target types a `column_types` override may name.
pub const OVERRIDE_TYPES: &[&str] = &[
    "STRING",
    "INT64",
    "NUMERIC",
    "BIGNUMERIC",
    "FLOAT64",
    "BOOL",
    "BYTES",
    "DATE",
    "DATETIME",
    "TIMESTAMP",
    "TIME",
    "JSON",
    "GEOGRAPHY",
];

/// The environment variable that points every BigQuery client at an emulator.
pub const EMULATOR_ENV: &str = "BIGQUERY_EMULATOR_HOST";

/// Keys the sink and the `bigquery` state store share.
pub(crate) const PROJECT: FieldDoc =
    FieldDoc { name: "project", ty: "string", required: true, default: "", doc: "Google Cloud project id" };
pub(crate) const LOCATION: FieldDoc = FieldDoc {
    name: "location",
    ty: "string",
    required: false,
    default: "the dataset's",
    doc: "e.g. US, EU, asia-east1",
};
pub(crate) const ENDPOINT: FieldDoc = FieldDoc {
    name: "endpoint",
    ty: "URL",
    required: false,
    default: "$BIGQUERY_EMULATOR_HOST, else Google",
    doc: "an emulator's URL; credentials are then anonymous",
};
pub(crate) const CREDENTIALS: FieldDoc = FieldDoc {
    name: "credentials",
    ty: "path",
    required: false,
    default: "Application Default Credentials",
    doc: "a service-account (or authorized-user) JSON key file",
};

pub(crate) const FIELDS: &[FieldDoc] = &[
    FieldDoc {
        name: "id",
        ty: "string",
        required: false,
        default: "default",
        doc: "names this target in state paths and reports",
    },
    PROJECT,
    FieldDoc {
        name: "dataset",
        ty: "string",
        required: true,
        default: "",
        doc: "dataset holding one table per source table",
    },
    LOCATION,
    ENDPOINT,
    CREDENTIALS,
    FieldDoc {
        name: "staging_dataset",
        ty: "string",
        required: false,
        default: "the dataset",
        doc: "where staging tables live (they expire after 7 days if a run dies before dropping them)",
    },
    FieldDoc {
        name: "upload_chunk_mb",
        ty: "integer",
        required: false,
        default: "16",
        doc: "MiB of rows per load job (1-1024); raise it for a table of more than 1,500 chunks in one run (BigQuery's loads per table per day)",
    },
    FieldDoc {
        name: "staging_memory_mb",
        ty: "integer",
        required: false,
        default: "2 x upload_chunk_mb (at most 32) + 4",
        doc: "MiB of staged rows the run's tables hold in memory between them (2-65536); beyond it, a table holding more than an equal share moves its rows to disk (TMPDIR) until its load job",
    },
    FieldDoc {
        name: "job_timeout",
        ty: "seconds",
        required: false,
        default: "3600",
        doc: "longest wait for one BigQuery job; a job still running then fails its table (waits are logged every 30 s)",
    },
    FieldDoc {
        name: "max_concurrent_jobs",
        ty: "integer",
        required: false,
        default: "8",
        doc: "BigQuery load and query jobs in flight at once (MySQL reads are bounded by pool_size)",
    },
];

/// Config of the `bigquery` sink.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BigQuerySinkConfig {
    #[serde(default)]
    pub id: Option<String>,
    pub project: String,
    pub dataset: String,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    #[serde(default)]
    pub staging_dataset: Option<String>,
    #[serde(default = "default_chunk", deserialize_with = "lenient::deserialize")]
    pub upload_chunk_mb: usize,
    #[serde(default, deserialize_with = "lenient::option::deserialize")]
    pub staging_memory_mb: Option<usize>,
    #[serde(default = "default_job_timeout", deserialize_with = "lenient::deserialize")]
    pub job_timeout: u64,
    #[serde(default = "default_jobs", deserialize_with = "lenient::deserialize")]
    pub max_concurrent_jobs: usize,
    /// The endpoint came from `BIGQUERY_EMULATOR_HOST`, not the config (logged at start).
    #[serde(skip)]
    pub endpoint_from_env: bool,
}

fn default_jobs() -> usize {
    8
}

fn default_chunk() -> usize {
    16
}
fn default_job_timeout() -> u64 {
    3600
}

/// Dataset ids (and the state table's): letters, digits and underscores, at most 1024.
pub(crate) fn dataset_problem(key: &str, id: &str) -> Option<Problem> {
    let what = if key == "table" { "table" } else { "dataset" };
    (id.is_empty() || id.len() > 1024 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then(|| Problem::at(key, format!("`{id}` is not a {what} id (letters, digits and underscores)")))
}

/// A project id that is not one.
pub(crate) fn project_problem(project: &str) -> Option<Problem> {
    (project.trim().is_empty()
        || !project.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_')))
    .then(|| Problem::at("project", format!("`{project}` is not a Google Cloud project id")))
}

/// The endpoint as given, else `BIGQUERY_EMULATOR_HOST` (with `http://` added when it has no
/// scheme); whether it came from there; and a problem when it is no URL.
pub(crate) fn resolve_endpoint(endpoint: &mut Option<String>) -> (bool, Option<Problem>) {
    if endpoint.as_deref().is_some_and(|e| e.trim().is_empty()) {
        *endpoint = None;
    }
    let mut from_env = false;
    if endpoint.is_none() {
        from_env = std::env::var(EMULATOR_ENV).is_ok_and(|e| !e.is_empty());
        *endpoint = std::env::var(EMULATOR_ENV)
            .ok()
            .filter(|e| !e.is_empty())
            .map(|e| if e.starts_with("http://") || e.starts_with("https://") { e } else { format!("http://{e}") });
    }
    let problem = endpoint
        .as_ref()
        .filter(|e| !(e.starts_with("http://") || e.starts_with("https://")))
        .map(|e| Problem::at("endpoint", format!("`{e}` must start with http:// or https://")));
    (from_env, problem)
}

impl BigQuerySinkConfig {
    /// Checks the config without touching the network; every mistake, each with its key.
    pub fn validate(&mut self) -> Result<()> {
        let mut problems = Vec::new();
        problems.extend(project_problem(&self.project));
        problems.extend(dataset_problem("dataset", &self.dataset));
        if let Some(s) = &self.staging_dataset {
            problems.extend(dataset_problem("staging_dataset", s));
        }
        let (from_env, problem) = resolve_endpoint(&mut self.endpoint);
        self.endpoint_from_env = from_env;
        problems.extend(problem);
        if !(1..=100).contains(&self.max_concurrent_jobs) {
            problems.push(Problem::at(
                "max_concurrent_jobs",
                format!("between 1 and 100, got {}", self.max_concurrent_jobs),
            ));
        }
        if !(1..=1024).contains(&self.upload_chunk_mb) {
            problems.push(Problem::at("upload_chunk_mb", format!("between 1 and 1024, got {}", self.upload_chunk_mb)));
        }
        if let Some(mb) = self.staging_memory_mb
            && !(2..=65_536).contains(&mb)
        {
            problems.push(Problem::at("staging_memory_mb", format!("between 2 and 65536, got {mb}")));
        }
        if !(1..=86_400).contains(&self.job_timeout) {
            problems.push(Problem::at("job_timeout", format!("between 1 and 86400 seconds, got {}", self.job_timeout)));
        }
        if problems.is_empty() { Ok(()) } else { Err(ConnectorError::config_problems("sink `bigquery`", problems)) }
    }

    /// The memory the run's stages may hold in staged rows. By default two chunks (of at most
    /// 16 MiB) and a margin: a table alone keeps whole chunks in memory (one filling, one
    /// uploading). Rows over it wait on disk, so bigger chunks (fewer load jobs for a huge
    /// table) cost no memory.
    pub fn staging_memory_bytes(&self) -> usize {
        self.staging_memory_mb.unwrap_or(2 * self.upload_chunk_mb.min(16) + 4) * 1024 * 1024
    }

    /// Where this sink writes, for state and logs (no secret): endpoint, project and dataset.
    pub fn destination(&self) -> String {
        format!(
            "bigquery {} {}.{}",
            self.endpoint.as_deref().unwrap_or(crate::transport::DEFAULT_ENDPOINT).trim_end_matches('/'),
            self.project,
            self.dataset
        )
    }
}

/// Reads a key file for `bq_credentials`: it must exist, be readable and be a service-account
/// or authorized-user JSON key. Its content is never quoted in errors.
pub(crate) fn read_key_file(path: &std::path::Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConnectorError::config(format!("bq_credentials: cannot read {}: {}", path.display(), e.kind())))?;
    let key: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        ConnectorError::config(format!(
            "bq_credentials: {} is not a JSON key file (line {}, column {})",
            path.display(),
            e.line(),
            e.column()
        ))
    })?;
    // What in a key file is secret never appears in a message, whatever a library echoes.
    for field in ["private_key", "private_key_id", "client_secret", "refresh_token"] {
        if let Some(value) = key.get(field).and_then(serde_json::Value::as_str) {
            connector_framework::secrets::register(value);
        }
    }
    match key.get("type").and_then(serde_json::Value::as_str) {
        Some("service_account" | "authorized_user") => Ok(key),
        _ => Err(ConnectorError::config(format!(
            "bq_credentials: {} is not a service_account or authorized_user key file (its \"type\" field); \
             download a key from the Google Cloud console",
            path.display()
        ))),
    }
}

fn parse(raw: &serde_json::Value) -> Result<Box<dyn SinkConfig>> {
    let mut c: BigQuerySinkConfig = config::parse("sink `bigquery`", raw, FIELDS)?;
    c.validate()?;
    Ok(Box::new(c))
}

#[async_trait]
impl SinkConfig for BigQuerySinkConfig {
    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Sink>> {
        let transport: Arc<dyn Transport> = if ctx.discard_writes {
            tracing::warn!(target = %ctx.target_id, "benchmark mode: load files are encoded and discarded; nothing reaches BigQuery and no state is written");
            Arc::new(DiscardTransport::default())
        } else {
            if self.endpoint_from_env {
                tracing::warn!(target = %ctx.target_id, endpoint = ?self.endpoint, "the BigQuery endpoint comes from {EMULATOR_ENV}");
            }
            let options = GoogleOptions { endpoint: self.endpoint.clone(), credentials_file: self.credentials.clone() };
            Arc::new(GoogleTransport::new(&options).await?)
        };
        let client = BqClient::new(
            ClientOptions {
                project: self.project.clone(),
                location: self.location.clone(),
                retry: ctx.retry,
                job_timeout: Duration::from_secs(self.job_timeout),
                max_concurrent_jobs: self.max_concurrent_jobs,
            },
            transport,
        );
        Ok(Arc::new(BigQuerySink::new(ctx, self, client)))
    }

    fn validate_table_options(&self, table: &str, options: &TableOptions) -> Result<()> {
        if options.cluster_by.as_ref().is_some_and(|c| c.len() > 4) {
            return Err(ConnectorError::config(format!(
                "table_options.{table}.cluster_by: BigQuery clusters by at most 4 columns"
            )));
        }
        for (column, ty) in &options.column_types {
            if !OVERRIDE_TYPES.contains(&ty.to_ascii_uppercase().as_str()) {
                let hint = config::closest(&ty.to_ascii_uppercase(), OVERRIDE_TYPES.iter().copied())
                    .map(|n| format!("did you mean `{n}`? "))
                    .unwrap_or_default();
                return Err(ConnectorError::config(format!(
                    "table_options.{table}.column_types.{column}: unknown type `{ty}`; {hint}valid types: {}",
                    OVERRIDE_TYPES.join(", ")
                )));
            }
        }
        Ok(())
    }

    fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    fn default_id(&self) -> Option<String> {
        let clean = |s: &str| {
            s.chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
                .collect::<String>()
        };
        Some(format!("{}.{}", clean(&self.project), clean(&self.dataset)))
    }
}

connector_framework::inventory::submit! {
    ConnectorDescriptor {
        kind: "bigquery",
        crate_name: env!("CARGO_PKG_NAME"),
        description: "Writes tables to Google BigQuery (one table per source table, rows tagged with tenant_id)",
        details: "Target tables get the system fields tenant_id (STRING), sync_timestamp (TIMESTAMP) and \
sync_mode (STRING) (names set by system_columns), DAY partitions on sync_timestamp, clustering on tenant_id \
and a NOT ENFORCED primary key (tenant_id, key...). Column names are kept as they are where BigQuery's \
flexible column names allow (spaces, dashes, letters of any script); other characters become _. Rows are \
staged in one staging table per target table through load jobs (media upload, no Cloud Storage bucket) \
and applied per table in one MERGE statement: incremental syncs upsert on (tenant_id, key), full syncs \
also delete that tenant's rows that are gone from the source, and tables without a key match on a \
_row_hash column. Other tenants are never touched.",
        types: crate::types::BIGQUERY_TYPES,
        fields: FIELDS,
        example: r#"{"kind": "bigquery", "id": "main", "project": "my-project", "dataset": "shops", "location": "US"}"#,
        factory: Factory::Sink(parse),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_documented_keys_are_the_configs_keys() {
        let d = connector_framework::registry::find(connector_framework::registry::Role::Sink, "bigquery").unwrap();
        connector_framework::testkit::documented_fields_match(d).unwrap();
    }

    #[test]
    fn the_staging_memory_defaults_to_two_chunks_of_at_most_16_mib_and_is_checked() {
        let config = |extra: serde_json::Value| {
            let mut c = serde_json::json!({"project": "p", "dataset": "d"});
            c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            serde_json::from_value::<super::BigQuerySinkConfig>(c).unwrap()
        };
        const MIB: usize = 1024 * 1024;
        assert_eq!(config(serde_json::json!({})).staging_memory_bytes(), 36 * MIB);
        assert_eq!(config(serde_json::json!({"upload_chunk_mb": 4})).staging_memory_bytes(), 12 * MIB);
        let big_chunks = config(serde_json::json!({"upload_chunk_mb": 512}));
        assert_eq!(big_chunks.staging_memory_bytes(), 36 * MIB, "bigger chunks wait on disk, not in memory");
        assert_eq!(config(serde_json::json!({"staging_memory_mb": "8"})).staging_memory_bytes(), 8 * MIB);
        let e = config(serde_json::json!({"staging_memory_mb": 1})).validate().unwrap_err().to_string();
        assert!(e.contains("staging_memory_mb") && e.contains("between 2 and 65536, got 1"), "{e}");
    }
}
