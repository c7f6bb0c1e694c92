//! `connector-bigquery`: writes tables to Google BigQuery, atomically per commit.
//!
//! The component, along the data flow:
//! - [`config`]: `BigQuerySinkConfig` (project, dataset, location, credentials, an optional
//!   emulator endpoint), validated without I/O, and the transport chosen when it is built.
//! - `schema`: target tables (system fields, DAY partitions, clustering, a NOT ENFORCED
//!   primary key), column names and types, and how an existing table evolves.
//! - `writer`: one tenant's rows encoded as NDJSON lines of a staging table.
//! - `stage`: the staging table every tenant of a target table shares, and its load jobs
//!   (media upload, no Cloud Storage bucket), each of one [`chunk`] of rows: in memory, or
//!   partly on disk when the run's stages are over their memory budget.
//! - `merge`: the one MERGE that applies every staged tenant of a table.
//! - [`sink`]: the `Sink` implementation that drives them.
//! - [`state_store`] (kind `bigquery` of the state role, config in `state_config`): sync state
//!   as rows of a BigQuery table, with leased run locks, for workers without a lasting disk.
//! - [`client`] over [`transport`]: the REST calls (retried, jobs exactly once, every wait
//!   bounded and logged); [`types`]: logical types → BigQuery types and values → NDJSON.

pub mod chunk;
pub mod client;
pub mod config;
mod digest;
mod merge;
mod schema;
pub mod sink;
mod stage;
mod state_config;
pub mod state_store;
pub mod transport;
pub mod types;
mod writer;

pub use config::BigQuerySinkConfig;
pub use sink::BigQuerySink;

/// Referenced by `connector-run` so the linker keeps this crate's registration.
pub fn link() {}
