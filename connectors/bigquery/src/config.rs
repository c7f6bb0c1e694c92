use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use connector_framework::config::{self, lenient};
use connector_framework::{
    BuildContext, ConnectorDescriptor, ConnectorError, Factory, FieldDoc, Result, Sink, SinkConfig,
};
use serde::{Deserialize, Serialize};

use crate::client::{BqClient, ClientOptions};
use crate::sink::BigQuerySink;

/// The environment variable that points every BigQuery client at an emulator.
pub const EMULATOR_ENV: &str = "BIGQUERY_EMULATOR_HOST";

pub(crate) const FIELDS: &[FieldDoc] = &[
    FieldDoc {
        name: "id",
        ty: "string",
        required: false,
        default: "default",
        doc: "names this target in state paths and reports",
    },
    FieldDoc { name: "project", ty: "string", required: true, default: "", doc: "Google Cloud project id" },
    FieldDoc {
        name: "dataset",
        ty: "string",
        required: true,
        default: "",
        doc: "dataset holding one table per source table",
    },
    FieldDoc {
        name: "location",
        ty: "string",
        required: false,
        default: "the dataset's",
        doc: "e.g. US, EU, asia-east1",
    },
    FieldDoc {
        name: "endpoint",
        ty: "URL",
        required: false,
        default: "$BIGQUERY_EMULATOR_HOST, else Google",
        doc: "an emulator's URL; credentials are then anonymous",
    },
    FieldDoc {
        name: "credentials",
        ty: "path",
        required: false,
        default: "Application Default Credentials",
        doc: "a service-account (or authorized-user) JSON key file",
    },
    FieldDoc {
        name: "staging_dataset",
        ty: "string",
        required: false,
        default: "the dataset",
        doc: "where staging tables live (they expire after a day)",
    },
    FieldDoc {
        name: "upload_chunk_mb",
        ty: "integer",
        required: false,
        default: "16",
        doc: "MiB of rows per load job",
    },
    FieldDoc { name: "job_timeout", ty: "seconds", required: false, default: "3600", doc: "longest wait for one job" },
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
    #[serde(default = "default_job_timeout", deserialize_with = "lenient::deserialize")]
    pub job_timeout: u64,
    #[serde(default = "default_jobs", deserialize_with = "lenient::deserialize")]
    pub max_concurrent_jobs: usize,
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

/// Dataset ids: letters, digits and underscores, at most 1024.
fn validate_dataset(what: &str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 1024 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(ConnectorError::config(format!(
            "sink `bigquery`: {what} `{id}` is not a valid dataset id (letters, digits and underscores)"
        )));
    }
    Ok(())
}

impl BigQuerySinkConfig {
    pub fn validate(&mut self) -> Result<()> {
        if self.project.trim().is_empty()
            || !self.project.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':' | '_'))
        {
            return Err(ConnectorError::config(format!(
                "sink `bigquery`: bq_project/project `{}` is not a valid project id",
                self.project
            )));
        }
        validate_dataset("bq_dataset/dataset", &self.dataset)?;
        if let Some(s) = &self.staging_dataset {
            validate_dataset("staging_dataset", s)?;
        }
        if self.endpoint.as_deref().is_some_and(|e| e.trim().is_empty()) {
            self.endpoint = None;
        }
        if self.endpoint.is_none() {
            self.endpoint = std::env::var(EMULATOR_ENV)
                .ok()
                .filter(|e| !e.is_empty())
                .map(|e| if e.starts_with("http://") || e.starts_with("https://") { e } else { format!("http://{e}") });
        }
        if let Some(e) = self.endpoint.as_ref().filter(|e| !(e.starts_with("http://") || e.starts_with("https://"))) {
            return Err(ConnectorError::config(format!(
                "sink `bigquery`: bq_endpoint `{e}` must start with http:// or https://"
            )));
        }
        if !(1..=100).contains(&self.max_concurrent_jobs) {
            return Err(ConnectorError::config("sink `bigquery`: max_concurrent_jobs must be between 1 and 100"));
        }
        if !(1..=1024).contains(&self.upload_chunk_mb) {
            return Err(ConnectorError::config("sink `bigquery`: upload_chunk_mb must be between 1 and 1024"));
        }
        Ok(())
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
        let client = BqClient::new(ClientOptions {
            project: self.project.clone(),
            location: self.location.clone(),
            endpoint: self.endpoint.clone(),
            credentials_file: self.credentials.clone(),
            retry: ctx.retry,
            job_timeout: Duration::from_secs(self.job_timeout),
            max_concurrent_jobs: self.max_concurrent_jobs,
        })
        .await?;
        Ok(Arc::new(BigQuerySink::new(ctx, self, client)))
    }
}

connector_framework::inventory::submit! {
    ConnectorDescriptor {
        kind: "bigquery",
        crate_name: env!("CARGO_PKG_NAME"),
        description: "Writes tables to Google BigQuery (one table per source table, rows tagged with tenant_id)",
        details: "Target tables get the system fields tenant_id (STRING), sync_timestamp (TIMESTAMP) and \
sync_mode (STRING), DAY partitions on sync_timestamp, clustering on tenant_id and a NOT ENFORCED \
primary key (tenant_id, key...). Rows are staged per tenant through load jobs (media upload, no \
Cloud Storage bucket) and applied per table in one MERGE statement: incremental syncs upsert on \
(tenant_id, key), full syncs also delete that tenant's rows that are gone from the source, and \
tables without a key match on a _row_hash column. Other tenants are never touched. Column types: see \
`connector-run describe mysql`.",
        fields: FIELDS,
        example: r#"{"kind": "bigquery", "id": "main", "project": "my-project", "dataset": "shops", "location": "US"}"#,
        factory: Factory::Sink(parse),
    }
}
