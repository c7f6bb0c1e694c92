//! `connector-bigquery`: writes tables to Google BigQuery, atomically per commit.
//!
//! - [`BigQuerySinkConfig`]: project, dataset, location, credentials and an optional emulator
//!   endpoint.
//! - [`BigQuerySink`]: creates and evolves target tables (system fields `tenant_id`,
//!   `sync_timestamp`, `sync_mode`; DAY partitions; clustering; a NOT ENFORCED primary key),
//!   stages each tenant's rows in a staging table through load jobs with media upload (no
//!   Cloud Storage bucket), then applies every staged tenant of a table in one atomic MERGE.
//! - [`types`]: logical types → BigQuery types and the NDJSON encoding of values.
//! - [`client`]: the REST calls, through the official `google-cloud-bigquery-v2` clients plus
//!   the media upload they lack.

pub mod client;
mod config;
mod sink;
pub mod types;

pub use config::BigQuerySinkConfig;
pub use sink::BigQuerySink;

/// Referenced by `connector-run` so the linker keeps this crate's registration.
pub fn link() {}
