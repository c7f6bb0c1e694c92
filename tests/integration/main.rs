//! End-to-end tests of `connector-run` against a real MariaDB server and the local BigQuery
//! emulator (started on demand by `support`). Run through `scripts/test.sh`, which makes sure
//! both are installed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

/// Binlog CDC: snapshots under writers, every change kind, DDL, crashes, purges, restarts,
/// new tenants, several targets, and refused servers.
mod cdc;
/// The command line: list, describe, validate, config errors, secrets, the run lock.
mod cli;
/// The web console: pages, API, actions and their rules over real runs; alerts; a real browser.
mod console;
/// Several targets from one read, and the example connector crate.
mod fanout;
/// Faults injected for real: killed connections, 503/429 answers, an emulator restart.
mod faults;
/// Fleets that grow: tenant patterns, new and gone tenants, sharded workers, state in BigQuery.
mod fleets;
/// Full syncs: values, tenant isolation, state files, failures, dry runs.
mod full_sync;
/// Incremental syncs: concurrent writers, late commits, cursor edge cases, crashes, tables
/// without a key.
mod incremental;
/// Operations: --every, SIGTERM, metrics, status and the state tools.
mod ops;
/// PostgreSQL as a second source: both fleet layouts, writers, resumes, every type, TLS.
mod postgres;
/// Schema changes between runs and tenants on different schema versions.
mod schema;
/// TLS in every mode, privileges, secrets in nothing a run leaves, private files.
mod security;
/// DATETIME cursors and time zones: application zones, future-dated rows, clock changes.
mod timezones;
/// Every column type with edge values, and the zero-date policy.
mod types;
/// verify: equal on every type, each kind of difference found by key, repairs.
mod verify;
