//! The pages' models, computed from a [`Snapshot`] on each request: the overview grid (one row
//! per table name, one column per tenant of the current page, filtered and sorted on the server)
//! and a table's page. Pure functions, so a 50,000-cell fleet costs milliseconds.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::snapshot::{Cell, Snapshot, Status};

/// Tenants per page of the overview: 50 table names × 40 tenants stays a light page.
pub const TENANTS_PER_PAGE: usize = 40;

/// The overview's query string.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct OverviewQuery {
    /// Tenants whose name contains this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Tables whose name contains this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Only cells in this status (`ok`, `stale`, `failed`, `running`, `cdc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `name` (default) or `problems` (most failed and stale first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort: Option<String>,
    /// From 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CellView {
    pub status: &'static str,
    /// The tooltip: mode, rows, last success, error.
    pub title: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub table: String,
    /// Over every tenant that passes the filters (not only this page).
    pub failed: usize,
    pub stale: usize,
    pub ok: usize,
    pub running: usize,
    pub cdc: usize,
    /// One per tenant of the page, `None` where the tenant has no such table (or it is
    /// filtered out).
    pub cells: Vec<Option<CellView>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub query: OverviewQuery,
    pub target: String,
    pub targets: Vec<String>,
    /// Every cell of the target, by status (the page's filters do not change these).
    pub counts: Vec<(&'static str, usize)>,
    pub tables: usize,
    pub tenants: usize,
    /// Tenants that pass the filters, and those on this page.
    pub matching_tenants: usize,
    pub page_tenants: Vec<String>,
    pub page: usize,
    pub pages: usize,
    pub rows: Vec<Row>,
}

fn contains(hay: &str, needle: Option<&String>) -> bool {
    needle.is_none_or(|n| n.is_empty() || hay.to_lowercase().contains(&n.to_lowercase()))
}

/// Whether a cell passes the query's tenant, table and status filters (the target is chosen
/// apart: the overview shows one, the API any).
pub fn cell_matches(c: &Cell, query: &OverviewQuery) -> bool {
    contains(&c.database, query.tenant.as_ref())
        && contains(&c.table, query.table.as_ref())
        && query.status.as_deref().and_then(Status::parse).is_none_or(|s| c.status == s)
}

fn title(c: &Cell) -> String {
    let mut t = format!("{}.{}: {} {}, {} rows", c.database, c.table, c.status.as_str(), c.mode, c.rows);
    if let Some(at) = c.last_success {
        t.push_str(&format!(", last success {}", at.format("%Y-%m-%d %H:%M")));
    }
    if let Some(lag) = c.lag_seconds {
        t.push_str(&format!(", lag {lag:.0} s"));
    }
    if let Some(e) = &c.error {
        t.push_str(&format!(": {e}"));
    }
    t
}

/// The overview of `snapshot` for `query`.
pub fn overview(snapshot: &Snapshot, query: &OverviewQuery) -> Overview {
    let targets: Vec<String> = snapshot.targets().into_iter().map(str::to_string).collect();
    let target = query
        .target
        .clone()
        .filter(|t| targets.contains(t))
        .or_else(|| targets.first().cloned())
        .unwrap_or_else(|| "default".into());
    let of_target: Vec<&Cell> = snapshot.cells.iter().filter(|c| c.target == target).collect();
    let mut counts: BTreeMap<Status, usize> = Status::ALL.into_iter().map(|s| (s, 0)).collect();
    for c in &of_target {
        *counts.entry(c.status).or_default() += 1;
    }
    let all_tables: BTreeSet<&str> = of_target.iter().map(|c| c.table.as_str()).collect();
    let all_tenants: BTreeSet<&str> = of_target.iter().map(|c| c.database.as_str()).collect();
    let matching: Vec<&Cell> = of_target.into_iter().filter(|c| cell_matches(c, query)).collect();
    // Tenants: with problems first when asked, else by name.
    let mut problems: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &matching {
        let p = problems.entry(c.database.as_str()).or_default();
        if matches!(c.status, Status::Failed | Status::Stale) {
            *p += 1;
        }
    }
    let mut tenants: Vec<&str> = problems.keys().copied().collect();
    let by_problems = query.sort.as_deref() == Some("problems");
    if by_problems {
        tenants.sort_by(|a, b| problems[b].cmp(&problems[a]).then(a.cmp(b)));
    }
    let pages = tenants.len().div_ceil(TENANTS_PER_PAGE).max(1);
    let page = query.page.unwrap_or(1).clamp(1, pages);
    let page_tenants: Vec<&str> =
        tenants.iter().skip((page - 1) * TENANTS_PER_PAGE).take(TENANTS_PER_PAGE).copied().collect();
    let column: BTreeMap<&str, usize> = page_tenants.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut rows: BTreeMap<&str, Row> = BTreeMap::new();
    for c in &matching {
        let row = rows.entry(c.table.as_str()).or_insert_with(|| Row {
            table: c.table.clone(),
            failed: 0,
            stale: 0,
            ok: 0,
            running: 0,
            cdc: 0,
            cells: vec![None; page_tenants.len()],
        });
        match c.status {
            Status::Failed => row.failed += 1,
            Status::Stale => row.stale += 1,
            Status::Ok => row.ok += 1,
            Status::Running => row.running += 1,
            Status::Cdc => row.cdc += 1,
        }
        if let Some(i) = column.get(c.database.as_str()) {
            row.cells[*i] = Some(CellView { status: c.status.as_str(), title: title(c) });
        }
    }
    let mut rows: Vec<Row> = rows.into_values().collect();
    if by_problems {
        rows.sort_by(|a, b| (b.failed, b.stale).cmp(&(a.failed, a.stale)).then(a.table.cmp(&b.table)));
    }
    Overview {
        query: query.clone(),
        target,
        targets,
        counts: counts.into_iter().map(|(s, n)| (s.as_str(), n)).collect(),
        tables: all_tables.len(),
        tenants: all_tenants.len(),
        matching_tenants: tenants.len(),
        page_tenants: page_tenants.into_iter().map(str::to_string).collect(),
        page,
        pages,
        rows,
    }
}

/// One table name's page: its tenants in one target, and its runs.
#[derive(Debug, Clone, Serialize)]
pub struct TablePage {
    pub table: String,
    pub target: String,
    pub targets: Vec<String>,
    pub cells: Vec<Cell>,
    pub counts: Vec<(&'static str, usize)>,
    /// The last runs that touched the table, newest first.
    pub runs: Vec<RunPoint>,
    /// The chart, as SVG path data over a 600 × 120 box: rows and seconds per run.
    pub chart: Chart,
}

/// One run of one table name.
#[derive(Debug, Clone, Serialize)]
pub struct RunPoint {
    pub started: String,
    pub rows: u64,
    pub seconds: f64,
    /// Tenants that failed.
    pub failed: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Chart {
    pub rows_path: String,
    pub seconds_path: String,
    pub max_rows: u64,
    pub max_seconds: f64,
    pub runs: usize,
}

/// Runs in the chart: the last ones.
pub const CHART_RUNS: usize = 100;

pub fn table_page(snapshot: &Snapshot, table: &str, target: Option<&str>) -> Option<TablePage> {
    let targets: Vec<String> = snapshot.targets().into_iter().map(str::to_string).collect();
    let target = target.map(str::to_string).filter(|t| targets.contains(t)).or_else(|| targets.first().cloned())?;
    let cells: Vec<Cell> = snapshot.cells.iter().filter(|c| c.table == table && c.target == target).cloned().collect();
    if cells.is_empty() {
        return None;
    }
    let mut counts: BTreeMap<Status, usize> = Status::ALL.into_iter().map(|s| (s, 0)).collect();
    for c in &cells {
        *counts.entry(c.status).or_default() += 1;
    }
    let runs: Vec<RunPoint> = snapshot
        .runs
        .get(&target)
        .map(|runs| {
            runs.iter()
                .filter_map(|r| {
                    let t = r.tables.get(table)?;
                    Some(RunPoint {
                        started: r.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        rows: t.rows,
                        seconds: t.seconds,
                        failed: t.failed,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let recent = &runs[runs.len().saturating_sub(CHART_RUNS)..];
    Some(TablePage {
        table: table.to_string(),
        target,
        targets,
        counts: counts.into_iter().map(|(s, n)| (s.as_str(), n)).collect(),
        chart: chart(recent),
        runs: runs.iter().rev().take(20).cloned().collect(),
        cells,
    })
}

/// Two polylines (rows, seconds), each scaled to its own maximum.
fn chart(runs: &[RunPoint]) -> Chart {
    let (w, h) = (600.0, 120.0);
    let max_rows = runs.iter().map(|r| r.rows).max().unwrap_or(0);
    let max_seconds = runs.iter().map(|r| r.seconds).fold(0.0, f64::max);
    let step = if runs.len() > 1 { w / (runs.len() - 1) as f64 } else { 0.0 };
    let path = |values: Vec<f64>, max: f64| {
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let y = if max > 0.0 { h - v / max * h } else { h };
                format!("{}{:.1},{:.1}", if i == 0 { "M" } else { " L" }, i as f64 * step, y)
            })
            .collect::<String>()
    };
    Chart {
        rows_path: path(runs.iter().map(|r| r.rows as f64).collect(), max_rows as f64),
        seconds_path: path(runs.iter().map(|r| r.seconds).collect(), max_seconds),
        max_rows,
        max_seconds,
        runs: runs.len(),
    }
}
