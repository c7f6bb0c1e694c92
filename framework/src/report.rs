//! The statistics report printed at the end of a run (text) and written as JSON.

use std::time::Duration;

use serde::Serialize;

use crate::error::{ConnectorError, ErrorClass};
use crate::schema::TableRef;
use crate::state::SyncMode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutcomeStatus {
    Success,
    Failed,
    /// `--dry-run`: planned, nothing written.
    Planned,
}

/// One table of one database in one target.
#[derive(Debug, Clone, Serialize)]
pub struct TableOutcome {
    pub database: String,
    pub table: String,
    pub target: String,
    pub status: OutcomeStatus,
    pub mode: Option<SyncMode>,
    pub rows: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub retries: u32,
    pub zero_dates_nulled: u64,
    pub null_cursor_rows_skipped: u64,
    /// The rows read: `all rows` or the cursor range.
    pub window: Option<String>,
    pub error: Option<String>,
    pub error_class: Option<ErrorClass>,
    /// The plan's reason (and, in dry runs, the column mapping).
    pub detail: Option<String>,
}

impl TableOutcome {
    pub fn new(table: &TableRef, target: &str, status: OutcomeStatus) -> Self {
        Self {
            database: table.database.clone(),
            table: table.table.clone(),
            target: target.to_string(),
            status,
            mode: None,
            rows: 0,
            bytes: 0,
            seconds: 0.0,
            retries: 0,
            zero_dates_nulled: 0,
            null_cursor_rows_skipped: 0,
            window: None,
            error: None,
            error_class: None,
            detail: None,
        }
    }

    pub fn failed(table: &TableRef, target: &str, mode: Option<SyncMode>, error: &ConnectorError) -> Self {
        let mut o = Self::new(table, target, OutcomeStatus::Failed);
        o.mode = mode;
        o.error = Some(error.to_string());
        o.error_class = Some(error.class());
        o
    }

    pub fn rows_per_second(&self) -> f64 {
        if self.seconds > 0.0 { self.rows as f64 / self.seconds } else { 0.0 }
    }
}

/// Everything one run did.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub outcomes: Vec<TableOutcome>,
    #[serde(serialize_with = "secs")]
    pub elapsed: Duration,
    pub dry_run: bool,
    /// Tables not started because the run was asked to stop.
    pub not_started: usize,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl RunReport {
    pub fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.status == OutcomeStatus::Failed).count()
    }

    pub fn total_rows(&self) -> u64 {
        self.outcomes.iter().filter(|o| o.status == OutcomeStatus::Success).map(|o| o.rows).sum()
    }

    /// The report as text: one line per table, then totals.
    pub fn render(&self) -> String {
        let multi_target = self.outcomes.iter().any(|o| o.target != "default");
        let mut out = String::new();
        out.push_str(if self.dry_run {
            "=== Sync plan (dry run: nothing written) ===\n"
        } else {
            "=== Sync statistics report ===\n"
        });
        let name = |o: &TableOutcome| {
            if multi_target {
                format!("{}.{} → {}", o.database, o.table, o.target)
            } else {
                format!("{}.{}", o.database, o.table)
            }
        };
        let width = self.outcomes.iter().map(|o| name(o).chars().count()).max().unwrap_or(10).max(10);
        out.push_str(&format!(
            "{:width$}  {:11}  {:>10}  {:>8}  {:>10}  {}\n",
            "table", "mode", "rows", "seconds", "rows/s", "status"
        ));
        for o in &self.outcomes {
            let status = match o.status {
                OutcomeStatus::Success => "OK".to_string(),
                OutcomeStatus::Planned => "PLANNED".to_string(),
                OutcomeStatus::Failed => format!("FAILED: {}", o.error.as_deref().unwrap_or("unknown error")),
            };
            out.push_str(&format!(
                "{:width$}  {:11}  {:>10}  {:>8.2}  {:>10.0}  {}\n",
                name(o),
                o.mode.map_or("-", |m| m.as_str()),
                o.rows,
                o.seconds,
                o.rows_per_second(),
                status
            ));
            if let Some(d) = o.detail.as_ref().filter(|_| self.dry_run) {
                out.push_str(&format!("    plan: {d}\n"));
            }
            if let Some(w) = o.window.as_ref().filter(|_| o.mode == Some(SyncMode::Incremental)) {
                out.push_str(&format!("    window: {w}\n"));
            }
            if o.null_cursor_rows_skipped > 0 {
                out.push_str(&format!(
                    "    {} rows with a NULL cursor were not read (null_cursor: report); a --full run syncs them\n",
                    o.null_cursor_rows_skipped
                ));
            }
            if o.zero_dates_nulled > 0 {
                out.push_str(&format!("    {} invalid dates written as NULL\n", o.zero_dates_nulled));
            }
        }
        if self.not_started > 0 {
            out.push_str(&format!("stopped early: {} tables not started (they run next time)\n", self.not_started));
        }
        let ok = self.outcomes.iter().filter(|o| o.status == OutcomeStatus::Success).count();
        let secs = self.elapsed.as_secs_f64();
        out.push_str(&format!(
            "total: {} tables, {} ok, {} failed, {} rows in {:.2} s ({:.0} rows/s)\n",
            self.outcomes.len(),
            ok,
            self.failed(),
            self.total_rows(),
            secs,
            if secs > 0.0 { self.total_rows() as f64 / secs } else { 0.0 }
        ));
        out
    }
}
