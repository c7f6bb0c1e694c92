//! The statistics report printed at the end of a run (text) and written as JSON.

use std::time::Duration;

use serde::Serialize;

use crate::error::{ConnectorError, ErrorClass};
use crate::schema::TableRef;
use crate::state::SyncMode;
use crate::tenants::TenantChanges;

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
    /// Values written as NULL by the source's policy, by what they were (`invalid dates`).
    pub nulled_values: std::collections::BTreeMap<String, u64>,
    /// Rows whose cursor was later than the source's clock (kept out of the watermark).
    pub future_cursor_rows: u64,
    pub null_cursor_rows_skipped: u64,
    /// Rows the window read again that the target already held as they are: not sent.
    pub unchanged_rows_skipped: u64,
    /// The rows read: `all rows` or the cursor range.
    pub window: Option<String>,
    pub error: Option<String>,
    pub error_class: Option<ErrorClass>,
    /// The plan's reason.
    pub detail: Option<String>,
    /// What the operator should know (an insert-time cursor, …).
    pub warnings: Vec<String>,
    /// `--dry-run`: the whole plan (boxed: a fleet's run holds an outcome per tenant and
    /// table, nearly all without one).
    pub plan: Option<Box<PlanDetail>>,
}

/// What a dry run would do with one table of one tenant in one target.
#[derive(Debug, Clone, Serialize)]
pub struct PlanDetail {
    pub reason: String,
    pub key: Vec<String>,
    pub cursor: Option<String>,
    /// How rows are written, in words.
    pub write: String,
    /// Which rows are read, in words.
    pub range: String,
    /// `column TYPE` in the target.
    pub columns: Vec<String>,
    /// `column source type`.
    pub source_types: Vec<String>,
    /// Schema changes the target needs.
    pub changes: Vec<String>,
    /// Source columns never read (`exclude_columns`).
    pub excluded: Vec<String>,
    /// `source → target` column names (`rename_columns`).
    pub renamed: Vec<String>,
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
            nulled_values: Default::default(),
            future_cursor_rows: 0,
            null_cursor_rows_skipped: 0,
            unchanged_rows_skipped: 0,
            window: None,
            error: None,
            error_class: None,
            detail: None,
            warnings: Vec::new(),
            plan: None,
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
    #[serde(serialize_with = "crate::events::secs")]
    pub elapsed: Duration,
    pub dry_run: bool,
    /// Tables not started because the run was asked to stop.
    pub not_started: usize,
    /// What the delete detection after the sync did (`delete_detection: verify`), a line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deletes_detected: Vec<String>,
    /// Tenants that appeared or disappeared since the state was written (a tenant list with
    /// patterns), and what was done about those gone.
    #[serde(skip_serializing_if = "TenantChanges::is_empty")]
    pub tenants: TenantChanges,
    /// This worker's share of the tenants (`--shard`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
}

impl RunReport {
    pub fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.status == OutcomeStatus::Failed).count()
    }

    pub fn total_rows(&self) -> u64 {
        self.outcomes.iter().filter(|o| o.status == OutcomeStatus::Success).map(|o| o.rows).sum()
    }

    /// The report as text: one line per table, then totals (a dry run: its plan instead).
    pub fn render(&self) -> String {
        let mut text = String::new();
        self.render_to(|piece| text.push_str(piece));
        text
    }

    /// The report as text, given to `emit` in pieces of whole lines (a table's at a time), so
    /// that a caller can write it out as it goes: a fleet's report is megabytes.
    pub fn render_to(&self, mut emit: impl FnMut(&str)) {
        if self.dry_run {
            return emit(&self.render_plan());
        }
        let mut out = String::from("=== Sync statistics report ===\n");
        out.push_str(&self.render_tenants());
        let with_target = self.names_targets();
        let width =
            self.outcomes.iter().map(|o| Self::name(o, with_target).chars().count()).max().unwrap_or(10).max(10);
        out.push_str(&format!(
            "{:width$}  {:11}  {:>10}  {:>8}  {:>10}  {}\n",
            "table", "mode", "rows", "seconds", "rows/s", "status"
        ));
        for o in &self.outcomes {
            emit(&out);
            out.clear();
            let status = match o.status {
                OutcomeStatus::Success => "OK".to_string(),
                OutcomeStatus::Planned => "PLANNED".to_string(),
                OutcomeStatus::Failed => format!("FAILED: {}", o.error.as_deref().unwrap_or("unknown error")),
            };
            out.push_str(&format!(
                "{:width$}  {:11}  {:>10}  {:>8.2}  {:>10.0}  {}\n",
                Self::name(o, with_target),
                o.mode.map_or("-", |m| m.as_str()),
                o.rows,
                o.seconds,
                o.rows_per_second(),
                status
            ));
            if let Some(w) = o.window.as_ref().filter(|_| o.mode == Some(SyncMode::Incremental)) {
                out.push_str(&format!("    window: {w}\n"));
            }
            if o.mode == Some(SyncMode::Full)
                && let Some(reason) = o.detail.as_ref().filter(|d| *d != "first sync" && *d != "--full given")
            {
                out.push_str(&format!("    full because {reason}\n"));
            }
            for w in &o.warnings {
                out.push_str(&format!("    note: {w}\n"));
            }
            if o.null_cursor_rows_skipped > 0 {
                let rows = plural(o.null_cursor_rows_skipped as usize, "row", "rows");
                out.push_str(&format!(
                    "    {rows} with a NULL cursor {} not read (null_cursor: report); a --full run syncs them\n",
                    if o.null_cursor_rows_skipped == 1 { "was" } else { "were" }
                ));
            }
            if o.unchanged_rows_skipped > 0 {
                let (rows, was) = if o.unchanged_rows_skipped == 1 { ("row", "was") } else { ("rows", "were") };
                out.push_str(&format!(
                    "    {} {rows} read again in the window {was} already in the target unchanged: not sent\n",
                    o.unchanged_rows_skipped
                ));
            }
            if o.future_cursor_rows > 0 {
                let (rows, have) = if o.future_cursor_rows == 1 { ("row", "has") } else { ("rows", "have") };
                out.push_str(&format!(
                    "    {} {rows} {have} a cursor later than the source's clock; synced, and the watermark stays at \
                     the clock\n",
                    o.future_cursor_rows
                ));
            }
            for (what, n) in &o.nulled_values {
                out.push_str(&format!("    {n} {what} written as NULL\n"));
            }
        }
        for line in &self.deletes_detected {
            out.push_str(&format!("delete detection: {line}\n"));
        }
        if self.not_started > 0 {
            out.push_str(&format!(
                "stopped early: {} not started (they run next time)\n",
                plural(self.not_started, "table", "tables")
            ));
        }
        let ok = self.outcomes.iter().filter(|o| o.status == OutcomeStatus::Success).count();
        let secs = self.elapsed.as_secs_f64();
        out.push_str(&format!(
            "total: {}, {} ok, {} failed, {} in {:.2} s ({:.0} rows/s)\n",
            plural(self.outcomes.len(), "table", "tables"),
            ok,
            self.failed(),
            plural(self.total_rows() as usize, "row", "rows"),
            secs,
            if secs > 0.0 { self.total_rows() as f64 / secs } else { 0.0 }
        ));
        emit(&out);
    }

    /// The shard and the tenants that came and went, a line each (nothing when neither).
    fn render_tenants(&self) -> String {
        let mut out = String::new();
        if let Some(shard) = &self.shard {
            out.push_str(&format!("shard {shard}: this worker's share of the tenants\n"));
        }
        let t = &self.tenants;
        if self.dry_run {
            out.push_str(&format!(
                "tenants: {} present, {} new, {} gone{}\n",
                t.present.len(),
                t.new.len(),
                t.gone.len(),
                if t.present.is_empty() { String::new() } else { format!(" (present: {})", t.present.join(", ")) }
            ));
        }
        if !t.new.is_empty() {
            out.push_str(&format!(
                "new {}: {} (synced in full, after the others)\n",
                if t.new.len() == 1 { "tenant" } else { "tenants" },
                t.new.join(", ")
            ));
        }
        if !t.gone.is_empty() {
            let kept = if t.dropped.is_empty() && !self.dry_run {
                " (their rows stay in the targets; drop_missing_tenants: true deletes them)"
            } else {
                ""
            };
            out.push_str(&format!(
                "{} no longer on the server: {}{kept}\n",
                if t.gone.len() == 1 { "tenant" } else { "tenants" },
                t.gone.join(", ")
            ));
        }
        for d in &t.dropped {
            match &d.outcome {
                Ok(n) => out.push_str(&format!(
                    "dropped tenant {} from {}: {} deleted, its state forgotten\n",
                    d.tenant,
                    d.target,
                    plural(*n as usize, "row", "rows")
                )),
                Err(e) => out.push_str(&format!("dropping tenant {} from {} FAILED: {e}\n", d.tenant, d.target)),
            }
        }
        out
    }

    /// Whether lines name their target: asked once per report (per line, it made rendering a
    /// fleet's 20,000 lines quadratic).
    fn names_targets(&self) -> bool {
        self.outcomes.iter().any(|o| o.target != "default")
    }

    /// How a line names its table: with its target when the run had several (or a named one).
    fn name(o: &TableOutcome, with_target: bool) -> String {
        if with_target {
            format!("{}.{} → {}", o.database, o.table, o.target)
        } else {
            format!("{}.{}", o.database, o.table)
        }
    }

    /// A dry run: per table what would be read, how it would be written and what the target
    /// would need, then how many tables go each way.
    fn render_plan(&self) -> String {
        let mut out = String::from("=== Sync plan (dry run: nothing written) ===\n");
        out.push_str(&self.render_tenants());
        let with_target = self.names_targets();
        let (mut full, mut incremental, mut failed) = (0, 0, 0);
        for o in &self.outcomes {
            let name = Self::name(o, with_target);
            let Some(p) = &o.plan else {
                failed += 1;
                out.push_str(&format!("{name}: cannot sync: {}\n", o.error.as_deref().unwrap_or("unknown error")));
                continue;
            };
            match o.mode {
                Some(SyncMode::Incremental) => incremental += 1,
                _ => full += 1,
            }
            out.push_str(&format!("{name}: {} ({})\n", o.mode.map_or("-", |m| m.as_str()), p.reason));
            out.push_str(&format!("    range: {}\n", p.range));
            out.push_str(&format!(
                "    key: {}; cursor: {}; writes: {}\n",
                if p.key.is_empty() { "none".to_string() } else { p.key.join(", ") },
                p.cursor.as_deref().unwrap_or("none"),
                p.write
            ));
            out.push_str(&format!("    columns: {}\n", p.columns.join(", ")));
            out.push_str(&format!("    source types: {}\n", p.source_types.join(", ")));
            if !p.excluded.is_empty() {
                out.push_str(&format!("    never read (exclude_columns): {}\n", p.excluded.join(", ")));
            }
            if !p.renamed.is_empty() {
                out.push_str(&format!("    renamed (rename_columns): {}\n", p.renamed.join(", ")));
            }
            out.push_str(&format!("    schema changes: {}\n", p.changes.join("; ")));
            for w in &o.warnings {
                out.push_str(&format!("    note: {w}\n"));
            }
        }
        out.push_str(&format!(
            "plan: {}: {full} full, {incremental} incremental{}\n",
            plural(self.outcomes.len(), "table", "tables"),
            if failed > 0 { format!(", {failed} cannot sync") } else { String::new() }
        ));
        out
    }
}

/// `1 table`, `2 tables`.
pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
