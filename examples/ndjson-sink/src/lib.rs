//! `connector-ndjson`: an example connector crate. It writes every table as newline-delimited
//! JSON files, one per tenant, into a local folder (or a mounted bucket), and depends on
//! nothing but `connector-framework`: it is the template for connectors written outside this
//! repository (see `docs/writing-a-connector.md`).
//!
//! Layout: `<path>/<table>/<tenant>.ndjson`, one JSON object per row with `tenant_id`,
//! `sync_mode` and the row's columns. A full sync replaces a tenant's file with an atomic
//! rename; an incremental sync merges rows by key (tables without a key: by whole row) into a
//! new file that replaces the old one. Staged files live in `<path>/<table>/.staging/`.

mod config;
mod sink;

pub use config::NdjsonSinkConfig;
pub use sink::NdjsonSink;

/// Referenced by `connector-run` so the linker keeps this crate's registration.
pub fn link() {}
