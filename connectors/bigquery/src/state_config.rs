//! The `bigquery` state store's config: where the state table lives, validated without I/O,
//! and the store built with its own client.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use connector_framework::config::{self, Problem, lenient};
use connector_framework::{
    BuildContext, ConnectorDescriptor, ConnectorError, Factory, FieldDoc, Result, StateConfig, StateStore,
};
use serde::{Deserialize, Serialize};

use crate::client::{BqClient, ClientOptions};
use crate::config::{CREDENTIALS, ENDPOINT, LOCATION, PROJECT, dataset_problem, project_problem, resolve_endpoint};
use crate::state_store::BigQueryStateStore;
use crate::transport::{GoogleOptions, GoogleTransport};

pub(crate) const FIELDS: &[FieldDoc] = &[
    PROJECT,
    FieldDoc {
        name: "dataset",
        ty: "string",
        required: true,
        default: "",
        doc: "dataset holding the state table and its lock table",
    },
    FieldDoc {
        name: "table",
        ty: "string",
        required: false,
        default: "_connector_state",
        doc: "the state table (one row per tenant × table × target); its locks are in <table>_locks",
    },
    LOCATION,
    ENDPOINT,
    CREDENTIALS,
    FieldDoc {
        name: "lock_lease_seconds",
        ty: "seconds",
        required: false,
        default: "300",
        doc: "a run's lock is renewed every third of this; a worker that died holds its share this long at most",
    },
];

/// Config of the `bigquery` state store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BigQueryStateConfig {
    pub project: String,
    pub dataset: String,
    #[serde(default = "default_table")]
    pub table: String,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    #[serde(default = "default_lease", deserialize_with = "lenient::deserialize")]
    pub lock_lease_seconds: u64,
}

fn default_table() -> String {
    "_connector_state".into()
}

fn default_lease() -> u64 {
    300
}

impl BigQueryStateConfig {
    fn validate(&mut self) -> Result<()> {
        let mut problems = Vec::new();
        problems.extend(project_problem(&self.project));
        problems.extend(dataset_problem("dataset", &self.dataset));
        // The lock table's id adds `_locks`: the state table's stays within BigQuery's 1,024.
        problems.extend(
            dataset_problem("table", &self.table)
                .or_else(|| (self.table.len() > 1000).then(|| Problem::at("table", "at most 1000 characters"))),
        );
        let (_, problem) = resolve_endpoint(&mut self.endpoint);
        problems.extend(problem);
        if !(5..=86_400).contains(&self.lock_lease_seconds) {
            problems.push(Problem::at(
                "lock_lease_seconds",
                format!("between 5 and 86400 seconds, got {}", self.lock_lease_seconds),
            ));
        }
        if problems.is_empty() { Ok(()) } else { Err(ConnectorError::config_problems("state `bigquery`", problems)) }
    }
}

fn parse(raw: &serde_json::Value) -> Result<Box<dyn StateConfig>> {
    let mut c: BigQueryStateConfig = config::parse("state `bigquery`", raw, FIELDS)?;
    c.validate()?;
    Ok(Box::new(c))
}

#[async_trait]
impl StateConfig for BigQueryStateConfig {
    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn StateStore>> {
        let options = GoogleOptions { endpoint: self.endpoint.clone(), credentials_file: self.credentials.clone() };
        let transport = Arc::new(GoogleTransport::new(&options).await?);
        let client = BqClient::new(
            ClientOptions {
                project: self.project.clone(),
                location: self.location.clone(),
                // State writes race other workers' on one table: a few more tries than a sink's.
                retry: connector_framework::RetryPolicy {
                    max_retries: ctx.retry.max_retries.max(6),
                    base_delay: ctx.retry.base_delay.min(Duration::from_secs(1)),
                    max_delay: Duration::from_secs(30),
                },
                job_timeout: Duration::from_secs(600),
                max_concurrent_jobs: 2,
            },
            transport,
        );
        let scope = ctx.state_subdir.clone().unwrap_or_else(|| "default".into());
        Ok(Arc::new(BigQueryStateStore::new(
            client,
            &self.dataset,
            &self.table,
            &scope,
            Duration::from_secs(self.lock_lease_seconds),
        )))
    }
}

connector_framework::inventory::submit! {
    ConnectorDescriptor {
        kind: "bigquery",
        crate_name: env!("CARGO_PKG_NAME"),
        description: "Sync state as rows of a BigQuery table, for workers without a lasting disk",
        details: "One row per tenant × table × target in <dataset>.<table> (default _connector_state), holding \
the same fields as the json store's entries; each commit's tenants are written by one MERGE, atomically. \
A run's lock is a row of <table>_locks with an owner and a lease, renewed while the run lasts and deleted \
at its end: a whole run excludes every other, sharded workers (--shard I/N) exclude only their own share. \
A worker that dies holds its lock until the lease runs out (lock_lease_seconds); --wait-lock waits for it.",
        fields: FIELDS,
        example: r#"{"kind": "bigquery", "project": "my-project", "dataset": "shops"}"#,
        types: &[],
        factory: Factory::State(parse),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_documented_keys_are_the_configs_keys() {
        let d = connector_framework::registry::find(connector_framework::registry::Role::State, "bigquery").unwrap();
        connector_framework::testkit::documented_fields_match(d).unwrap();
    }
}
