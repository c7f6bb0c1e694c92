//! `--cdc`: keeps every target in step with the source's change log.
//!
//! ```text
//! check the log's settings and grants ─► lock every target's state
//!   per target, concurrently (a target that is down does not hold the others back):
//!     snapshot the tables its stream does not carry (the runner's full sync at a log position)
//!     stream the log from the oldest position a table needs                  stream.rs
//!     stage changes newer than each table's position as they arrive          batch.rs
//!     every cdc_flush_seconds, at a transaction boundary: one commit per
//!     target table, then the position is recorded                           stream.rs
//!   SIGTERM: apply what was read, record, exit; --catch-up: stop at the log's end
//! ```
//!
//! The guarantees rest on three things: positions are recorded only after the target
//! committed, at transaction boundaries; every row in the target carries the log position of
//! the change (or snapshot) that wrote it, and a change applies only over an older one; and a
//! table's snapshot and its position come from the same consistent read (see
//! `docs/cdc.md`).

mod batch;
mod snapshot;
mod stream;

use std::time::Duration;

use serde::Serialize;

use crate::change::ChangePosition;
use crate::error::{ConnectorError, Result};
use crate::report::{OutcomeStatus, TableOutcome};
use crate::runner::{RunOptions, Runner};
use crate::schema::TableRef;
use crate::sink::ChangeTracking;

pub use snapshot::{snapshot_plan, snapshot_reason};
use stream::{StreamConfig, TargetStream};

/// Command-line choices for `--cdc`.
#[derive(Debug, Clone, Default)]
pub struct CdcOptions {
    /// Stop once every change committed before the start is applied (`--catch-up`).
    pub catch_up: bool,
}

/// What one target's stream did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamReport {
    pub target: String,
    /// Tables snapshotted (and any that failed to be).
    pub snapshots: Vec<TableOutcome>,
    /// Log events read.
    pub events: u64,
    pub upserts: u64,
    pub deletes: u64,
    pub truncates: u64,
    /// Batches applied.
    pub flushes: u64,
    /// Tables that stopped streaming, with the reason.
    pub stopped_tables: Vec<(TableRef, String)>,
    /// How far the target has applied the log.
    pub position: Option<ChangePosition>,
    pub lag_seconds: Option<f64>,
    /// Why the stream gave up (`--catch-up` only; a continuous stream retries).
    pub error: Option<String>,
}

/// What `--cdc` did, per target.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CdcReport {
    pub targets: Vec<StreamReport>,
}

impl CdcReport {
    /// Whether anything failed: a stream that gave up, a snapshot or a table that stopped.
    pub fn failed(&self) -> bool {
        self.targets.iter().any(|t| {
            t.error.is_some()
                || !t.stopped_tables.is_empty()
                || t.snapshots.iter().any(|o| o.status == OutcomeStatus::Failed)
        })
    }

    /// The report for people.
    pub fn render(&self) -> String {
        let mut out = String::from("=== Change stream report ===\n");
        for t in &self.targets {
            let snapshots_ok = t.snapshots.iter().filter(|o| o.status == OutcomeStatus::Success).count();
            let snapshot_rows: u64 = t.snapshots.iter().map(|o| o.rows).sum();
            out.push_str(&format!(
                "target {}: {} snapshot{} ({} rows), {} log events, {} upserts, {} deletes, {} truncates in {} appl{}\n",
                t.target,
                snapshots_ok,
                if snapshots_ok == 1 { "" } else { "s" },
                snapshot_rows,
                t.events,
                t.upserts,
                t.deletes,
                t.truncates,
                t.flushes,
                if t.flushes == 1 { "y" } else { "ies" },
            ));
            match &t.position {
                Some(p) => out.push_str(&format!(
                    "    applied up to {p}{}\n",
                    t.lag_seconds.map(|l| format!(", lag {l:.1} s")).unwrap_or_default()
                )),
                None => out.push_str("    no position applied yet\n"),
            }
            for o in t.snapshots.iter().filter(|o| o.status == OutcomeStatus::Failed) {
                out.push_str(&format!(
                    "    snapshot of {}.{} failed: {}\n",
                    o.database,
                    o.table,
                    o.error.as_deref().unwrap_or("unknown error")
                ));
            }
            for (table, why) in &t.stopped_tables {
                out.push_str(&format!("    {table} stopped streaming: {why}\n"));
            }
            if let Some(e) = &t.error {
                out.push_str(&format!("    the stream stopped: {e}\n"));
            }
        }
        out
    }
}

impl Runner {
    /// Streams the source's change log into every target until `stop` is set (or, with
    /// `catch_up`, until the log's end as of the start is applied).
    pub async fn run_cdc(&self, options: &RunOptions, cdc: &CdcOptions) -> Result<CdcReport> {
        let log = self.source.change_log().ok_or_else(|| {
            ConnectorError::config("--cdc: this pipeline's source has no change log that connector-run can stream")
        })?;
        if options.shard.is_some() {
            return Err(ConnectorError::config(
                "--cdc with --shard: a change stream reads the whole server's log, so one stream serves all \
                 tenants; run one --cdc process without --shard",
            ));
        }
        // The tenants are resolved once: a tenant created while the stream runs joins when the
        // stream is started again.
        let databases = self.select_databases(options).await?;
        let options = &RunOptions { databases: Some(databases), ..options.clone() };
        self.preflight(true).await?;
        log.check().await?;
        let locks = self.lock(options).await?;
        let settings = &self.settings;
        let tracking = ChangeTracking { deletes: settings.cdc_deletes };
        let flush_every = Duration::from_secs_f64(settings.cdc_flush_seconds);
        let mut streams = Vec::new();
        for (i, target) in self.targets.iter().enumerate() {
            let config = StreamConfig {
                catch_up: cdc.catch_up,
                flush_every,
                stream_id: settings.cdc_server_id.wrapping_add(i as u32).max(1),
                tracking,
                heartbeat: flush_every.clamp(Duration::from_secs(1), Duration::from_secs(5)),
            };
            let state = match target.state.load_stream().await {
                Ok(s) => s,
                Err(e) => {
                    crate::runner::release(locks).await;
                    return Err(e);
                }
            };
            streams.push(TargetStream::new(self, target, log.clone(), options, config, state));
        }
        let targets = futures::future::join_all(streams.into_iter().map(TargetStream::run)).await;
        crate::runner::release(locks).await;
        Ok(CdcReport { targets })
    }
}
