//! What the console shows, read from the state stores: one [`Cell`] per target × tenant ×
//! table with its status, the change streams, and the run history. Taken in the background
//! every few seconds and after each action, so a page is served from memory.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::NaiveDateTime;
use connector_framework::state::SyncStatus;
use connector_framework::{RunRecord, StateStore, StreamState, TableState};
use serde::Serialize;

/// One target's state, as the console reads it.
#[derive(Debug, Clone)]
pub struct StateSource {
    pub target: String,
    pub store: Arc<dyn StateStore>,
}

/// A cell's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Failed,
    Stale,
    Running,
    Cdc,
    Ok,
}

impl Status {
    pub const ALL: [Status; 5] = [Status::Ok, Status::Stale, Status::Failed, Status::Running, Status::Cdc];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Stale => "stale",
            Status::Failed => "failed",
            Status::Running => "running",
            Status::Cdc => "cdc",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// One tenant's table in one target.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub target: String,
    pub database: String,
    pub table: String,
    pub status: Status,
    /// FULL, INCREMENTAL, CDC, or SNAPSHOT while a change stream's snapshot runs.
    pub mode: String,
    pub cursor: Option<String>,
    pub watermark: Option<String>,
    pub rows: u64,
    pub last_sync: Option<NaiveDateTime>,
    pub last_success: Option<NaiveDateTime>,
    /// Minutes since the last success.
    pub stale_minutes: Option<i64>,
    pub duration_seconds: Option<f64>,
    pub error: Option<String>,
    pub consecutive_failures: u32,
    pub notes: Vec<String>,
    /// Streaming tables: the stream's lag in seconds.
    pub lag_seconds: Option<f64>,
}

/// A state that could not be read (a corrupt file): shown, never hidden.
#[derive(Debug, Clone, Serialize)]
pub struct Unreadable {
    pub target: String,
    pub database: String,
    pub error: String,
}

/// A target's change stream.
#[derive(Debug, Clone, Serialize)]
pub struct Stream {
    pub target: String,
    pub state: StreamState,
}

/// Everything the pages show, at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub taken_at: Option<NaiveDateTime>,
    pub cells: Vec<Cell>,
    pub unreadable: Vec<Unreadable>,
    pub streams: Vec<Stream>,
    /// Per target, oldest first.
    pub runs: BTreeMap<String, Vec<RunRecord>>,
    /// Errors reading a whole store.
    pub errors: Vec<String>,
}

/// Runs under way in this process, by what they cover (`None`: everything).
#[derive(Debug, Clone, Default)]
pub struct Activity {
    pub databases: Option<Vec<String>>,
    pub tables: Option<Vec<String>>,
}

impl Activity {
    pub fn covers(&self, database: &str, table: &str) -> bool {
        self.databases.as_ref().is_none_or(|d| d.iter().any(|x| x == database))
            && self.tables.as_ref().is_none_or(|t| t.iter().any(|x| x == table))
    }
}

/// The status of one table state: failed, stale past the SLO, streaming, else ok.
pub fn status_of(state: &TableState, now: NaiveDateTime, slo_minutes: i64) -> Status {
    if state.sync_status == SyncStatus::Failed {
        return Status::Failed;
    }
    if state.cdc.is_some() && state.sync_mode == connector_framework::SyncMode::Cdc {
        return Status::Cdc;
    }
    match state.last_success_at {
        Some(at) if (now - at).num_minutes() <= slo_minutes => Status::Ok,
        _ => Status::Stale,
    }
}

impl Snapshot {
    /// Reads every store. `running` marks the cells a run in this process covers.
    pub async fn take(sources: &[StateSource], slo_minutes: i64, running: &[Activity]) -> Self {
        let now = chrono::Utc::now().naive_utc();
        let mut out = Snapshot { taken_at: Some(now), ..Default::default() };
        for source in sources {
            match source.store.load_stream().await {
                Ok(Some(state)) => out.streams.push(Stream { target: source.target.clone(), state }),
                Ok(None) => {}
                Err(e) => out.errors.push(format!("target {}: change stream: {e}", source.target)),
            }
            let lag = out.streams.iter().find(|s| s.target == source.target).and_then(|s| s.state.lag_seconds);
            match source.store.load_all().await {
                Err(e) => out.errors.push(format!("target {}: {e}", source.target)),
                Ok(all) => {
                    for (database, state) in all {
                        let state = match state {
                            Ok(s) => s,
                            Err(e) => {
                                out.unreadable.push(Unreadable {
                                    target: source.target.clone(),
                                    database,
                                    error: e.to_string(),
                                });
                                continue;
                            }
                        };
                        for (table, t) in state.tables {
                            let mut status = status_of(&t, now, slo_minutes);
                            if running.iter().any(|a| a.covers(&database, &table)) {
                                status = Status::Running;
                            }
                            out.cells.push(Cell {
                                target: source.target.clone(),
                                database: database.clone(),
                                table,
                                status,
                                mode: t.shown_mode(),
                                cursor: t.watermark.as_ref().map(|w| w.column.clone()),
                                watermark: t.watermark.as_ref().map(|w| w.value.clone()),
                                rows: t.records_synced,
                                last_sync: t.last_sync_time,
                                last_success: t.last_success_at,
                                stale_minutes: t.last_success_at.map(|at| (now - at).num_minutes()),
                                duration_seconds: t.duration_seconds,
                                error: t.error_message.clone(),
                                consecutive_failures: t.consecutive_failures,
                                notes: t.notes.clone(),
                                lag_seconds: (status == Status::Cdc).then_some(lag).flatten(),
                            });
                        }
                    }
                }
            }
            match source.store.runs().await {
                Ok(runs) => {
                    out.runs.insert(source.target.clone(), runs);
                }
                Err(e) => out.errors.push(format!("target {}: run history: {e}", source.target)),
            }
        }
        out
    }

    pub fn targets(&self) -> BTreeSet<&str> {
        self.cells.iter().map(|c| c.target.as_str()).collect()
    }

    /// Cells by status, over everything.
    pub fn counts(&self) -> BTreeMap<Status, usize> {
        let mut out: BTreeMap<Status, usize> = Status::ALL.into_iter().map(|s| (s, 0)).collect();
        for c in &self.cells {
            *out.entry(c.status).or_default() += 1;
        }
        out
    }
}
