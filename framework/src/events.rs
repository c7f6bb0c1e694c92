//! Typed telemetry events. The runner emits these instead of ad-hoc log lines; each event
//! logs through `tracing` with structured fields and is handed to any registered listeners
//! (progress display, metrics).

use std::sync::Arc;
use std::time::Duration;

use crate::schema::TableRef;
use crate::state::SyncMode;

#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    TablePlanned {
        table: TableRef,
        target: String,
        mode: SyncMode,
        reason: String,
    },
    RowsRead {
        table: TableRef,
        rows: u64,
        bytes: u64,
    },
    /// Emitted about once a second while a table is read.
    ReadProgressed {
        table: TableRef,
        rows: u64,
        bytes: u64,
        #[serde(serialize_with = "secs")]
        elapsed: Duration,
    },
    TableStaged {
        table: TableRef,
        target: String,
        rows: u64,
        #[serde(serialize_with = "secs")]
        elapsed: Duration,
    },
    TableCommitted {
        table: String,
        target: String,
        tenants: usize,
        rows: u64,
        #[serde(serialize_with = "secs")]
        elapsed: Duration,
    },
    CheckpointCommitted {
        table: TableRef,
        target: String,
    },
    RetryScheduled {
        what: String,
        attempt: u32,
        #[serde(serialize_with = "secs")]
        wait: Duration,
        error: String,
    },
    ComponentError {
        table: TableRef,
        target: String,
        error: String,
    },
    /// A change stream applied a batch to one target table.
    ChangesApplied {
        table: String,
        target: String,
        tenants: usize,
        upserts: u64,
        deletes: u64,
        #[serde(serialize_with = "secs")]
        elapsed: Duration,
    },
    /// A change stream recorded how far it has applied the log.
    StreamCheckpointed {
        target: String,
        position: String,
        /// Log events read since the previous checkpoint.
        events: u64,
        /// Seconds between the last applied commit in the source and now (0 when caught up).
        lag_seconds: f64,
    },
    /// A table stopped streaming (dropped, renamed, or refused by the target); a new snapshot
    /// takes it up again.
    StreamTableStopped {
        table: TableRef,
        target: String,
        reason: String,
    },
}

impl Event {
    /// Logs the event and passes it to the listeners.
    pub fn emit(self, listeners: &[Arc<dyn EventListener>]) {
        match &self {
            Event::TablePlanned { table, target, mode, reason } => {
                tracing::info!(%table, %target, %mode, %reason, "planned");
            }
            Event::RowsRead { table, rows, bytes } => tracing::debug!(%table, rows, bytes, "rows read"),
            Event::ReadProgressed { .. } => {}
            Event::TableStaged { table, target, rows, elapsed } => {
                tracing::info!(%table, %target, rows, secs = elapsed.as_secs_f64(), "staged");
            }
            Event::TableCommitted { table, target, tenants, rows, elapsed } => {
                tracing::info!(%table, %target, tenants, rows, secs = elapsed.as_secs_f64(), "committed");
            }
            Event::CheckpointCommitted { table, target } => tracing::debug!(%table, %target, "state saved"),
            Event::RetryScheduled { what, attempt, wait, error } => {
                tracing::warn!(%what, attempt, wait_secs = wait.as_secs_f64(), %error, "retrying after a transient error");
            }
            Event::ComponentError { table, target, error } => tracing::error!(%table, %target, %error, "table failed"),
            Event::ChangesApplied { table, target, tenants, upserts, deletes, elapsed } => {
                tracing::info!(%table, %target, tenants, upserts, deletes, secs = elapsed.as_secs_f64(), "changes applied");
            }
            Event::StreamCheckpointed { target, position, events, lag_seconds } => {
                tracing::info!(%target, %position, events, lag_seconds, "stream position saved");
            }
            Event::StreamTableStopped { table, target, reason } => {
                tracing::warn!(%table, %target, %reason, "table stopped streaming");
            }
        }
        for l in listeners {
            l.on_event(&self);
        }
    }
}

/// Durations as seconds in JSON.
pub(crate) fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Receives every event (progress bars, metrics).
pub trait EventListener: Send + Sync + std::fmt::Debug {
    fn on_event(&self, event: &Event);
}
