//! The history of runs, per target: what each run did per table name (rows, seconds, tenants,
//! failures). Every run records it in its state store (runs by cron too), bounded to the last
//! [`HISTORY_RUNS`]; the console draws its charts from it.

use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};

use crate::report::{OutcomeStatus, RunReport};

/// Runs a store keeps.
pub const HISTORY_RUNS: usize = 500;

/// One run, as one target saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// When the run started (UTC).
    pub started_at: NaiveDateTime,
    pub seconds: f64,
    pub rows: u64,
    /// Tenant × table pairs that failed.
    pub failed: usize,
    /// Per table name.
    pub tables: BTreeMap<String, TableRun>,
}

/// One table name in one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableRun {
    pub rows: u64,
    /// The longest tenant's seconds (tenants run side by side).
    pub seconds: f64,
    pub tenants: usize,
    pub failed: usize,
}

impl RunRecord {
    /// What `report` did for `target`, `None` when it did nothing there.
    pub fn of(report: &RunReport, target: &str, started_at: NaiveDateTime) -> Option<Self> {
        let mut tables: BTreeMap<String, TableRun> = BTreeMap::new();
        for o in report.outcomes.iter().filter(|o| o.target == target && o.status != OutcomeStatus::Planned) {
            let t = tables.entry(o.table.clone()).or_default();
            t.tenants += 1;
            if o.status == OutcomeStatus::Failed {
                t.failed += 1;
            } else {
                t.rows += o.rows;
            }
            t.seconds = t.seconds.max(o.seconds);
        }
        if tables.is_empty() {
            return None;
        }
        Some(Self {
            started_at,
            seconds: report.elapsed.as_secs_f64(),
            rows: tables.values().map(|t| t.rows).sum(),
            failed: tables.values().map(|t| t.failed).sum(),
            tables,
        })
    }
}
