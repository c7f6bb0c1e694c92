//! `connector-run status` and `connector-run state migrate|reset`: the original tool's
//! test_status_manager.py and migrate_status_files.py.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use chrono::Utc;
use connector_framework::{Pipeline, SyncStatus};
use connector_json_state::tools;

/// The status folders of a pipeline: one, or one per target when there are several.
pub fn status_dirs(pipeline: Option<&Pipeline>, status_dir: Option<&Path>) -> Result<Vec<(String, PathBuf)>> {
    if let Some(dir) = status_dir {
        return Ok(vec![("default".into(), dir.to_path_buf())]);
    }
    let Some(p) = pipeline else {
        return Ok(vec![("default".into(), PathBuf::from("sync_status"))]);
    };
    if p.state_kind != "json" {
        return Err(anyhow!("the state tools work on the `json` state store; this pipeline uses `{}`", p.state_kind));
    }
    let described = p.describe();
    let base = described["state"]["config"]["status_dir"].as_str().unwrap_or("sync_status").to_string();
    Ok(if p.targets.len() > 1 {
        p.targets.iter().map(|t| (t.id.clone(), Path::new(&base).join(&t.id))).collect()
    } else {
        vec![("default".into(), PathBuf::from(base))]
    })
}

/// One row of the overview: a table, or a target's change stream.
#[derive(Debug, serde::Serialize)]
struct StatusRow {
    /// `table` or `stream`.
    kind: &'static str,
    target: String,
    database: String,
    table: Option<String>,
    status: String,
    mode: Option<String>,
    last_sync_time: Option<String>,
    last_success_at: Option<String>,
    /// Seconds since the last success.
    stale_seconds: Option<i64>,
    records_synced: Option<u64>,
    watermark: Option<String>,
    error: Option<String>,
    notes: Vec<String>,
    /// Streams: how far the target has applied the log, the log's head, and the lag.
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    head: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lag_seconds: Option<f64>,
}

impl StatusRow {
    /// A state file that cannot be read: shown, never skipped.
    fn corrupt(
        kind: &'static str,
        target: &str,
        database: String,
        mode: Option<&str>,
        error: &impl std::fmt::Display,
    ) -> Self {
        Self {
            kind,
            target: target.to_string(),
            database,
            table: None,
            status: "CORRUPT".into(),
            mode: mode.map(str::to_string),
            last_sync_time: None,
            last_success_at: None,
            stale_seconds: None,
            records_synced: None,
            watermark: None,
            error: Some(error.to_string()),
            notes: Vec::new(),
            position: None,
            head: None,
            lag_seconds: None,
        }
    }
}

/// A table's mode as `status` shows it: `CDC`, `SNAPSHOT 37%` while a snapshot for the
/// change stream is under way, else the sync mode.
fn mode_of(t: &connector_framework::TableState) -> String {
    if let Some(r) = t.resume.as_ref().filter(|r| r.change_position.is_some()) {
        return match r.estimated_rows.filter(|n| *n > 0) {
            Some(n) => format!("SNAPSHOT {}%", (r.rows.saturating_mul(100) / n).min(99)),
            None => "SNAPSHOT".to_string(),
        };
    }
    t.sync_mode.as_str().to_string()
}

pub fn status(dirs: &[(String, PathBuf)], json: bool) -> Result<bool> {
    let now = Utc::now().naive_utc();
    let mut rows = Vec::new();
    for (target, dir) in dirs {
        for (database, state) in tools::overview(dir).map_err(|e| anyhow!("{e}"))? {
            match state {
                Err(e) => rows.push(StatusRow::corrupt("table", target, database, None, &e)),
                Ok(state) => {
                    for (table, t) in state.tables {
                        rows.push(StatusRow {
                            kind: "table",
                            target: target.clone(),
                            database: database.clone(),
                            table: Some(table),
                            status: if t.sync_status == SyncStatus::Success { "SUCCESS" } else { "FAILED" }.into(),
                            mode: Some(mode_of(&t)),
                            last_sync_time: t.last_sync_time.map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string()),
                            last_success_at: t.last_success_at.map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string()),
                            stale_seconds: t.last_success_at.map(|d| (now - d).num_seconds()),
                            records_synced: Some(t.records_synced),
                            watermark: t.watermark.map(|w| format!("{} {}", w.column, w.value)),
                            error: t.error_message,
                            notes: t.notes,
                            position: None,
                            head: None,
                            lag_seconds: None,
                        });
                    }
                }
            }
        }
        match tools::stream_state(dir) {
            Ok(None) => {}
            Ok(Some(s)) => rows.push(StatusRow {
                kind: "stream",
                target: target.clone(),
                database: "*".into(),
                table: None,
                status: if s.status == "failed" { "FAILED".into() } else { s.status.to_uppercase() },
                mode: Some("CDC".into()),
                last_sync_time: Some(s.updated_at.format("%Y-%m-%d %H:%M:%S").to_string()),
                last_success_at: None,
                stale_seconds: Some((now - s.updated_at).num_seconds()),
                records_synced: None,
                watermark: None,
                error: s.error,
                notes: Vec::new(),
                position: s.applied.map(|p| p.to_string()),
                head: s.head.map(|p| p.to_string()),
                lag_seconds: s.lag_seconds,
            }),
            Err(e) => rows.push(StatusRow::corrupt("stream", target, "*".into(), Some("CDC"), &e)),
        }
    }
    // A streaming table is as fresh as its target's stream.
    let streams: Vec<(String, Option<i64>, Option<String>)> = rows
        .iter()
        .filter(|r| r.kind == "stream")
        .map(|r| (r.target.clone(), r.stale_seconds, r.last_sync_time.clone()))
        .collect();
    for r in rows.iter_mut().filter(|r| r.kind == "table" && r.mode.as_deref() == Some("CDC") && r.status == "SUCCESS")
    {
        if let Some((_, stale, at)) = streams.iter().find(|(t, _, _)| *t == r.target) {
            r.stale_seconds = *stale;
            r.last_sync_time = at.clone();
        }
    }
    let healthy = |r: &StatusRow| matches!(r.status.as_str(), "SUCCESS" | "STREAMING" | "STOPPED" | "STARTING");
    let unhealthy = rows.iter().any(|r| !healthy(r));
    if json {
        crate::out(&format!("{}\n", serde_json::to_string_pretty(&rows)?));
        return Ok(!unhealthy);
    }
    if rows.is_empty() {
        crate::out(&format!(
            "no state yet in {}\n",
            dirs.iter().map(|(_, d)| d.display().to_string()).collect::<Vec<_>>().join(", ")
        ));
        return Ok(true);
    }
    let multi = dirs.len() > 1;
    let name = |r: &StatusRow| {
        let t = format!("{}.{}", r.database, r.table.as_deref().unwrap_or("*"));
        if multi { format!("{t} → {}", r.target) } else { t }
    };
    let width = rows.iter().map(|r| name(r).chars().count()).max().unwrap_or(5).max(5);
    let mut text = format!(
        "{:width$}  {:8}  {:11}  {:19}  {:>10}  {:>10}  error\n",
        "table", "status", "mode", "last sync", "rows", "stale"
    );
    for r in rows.iter().filter(|r| r.kind == "table") {
        let stale = r.stale_seconds.map_or("never".to_string(), |s| {
            humantime::format_duration(std::time::Duration::from_secs(s.max(0) as u64)).to_string()
        });
        let stale: String = stale.split(' ').take(2).collect::<Vec<_>>().join(" ");
        text.push_str(&format!(
            "{:width$}  {:8}  {:11}  {:19}  {:>10}  {:>10}  {}\n",
            name(r),
            r.status,
            r.mode.as_deref().unwrap_or("-"),
            r.last_sync_time.as_deref().unwrap_or("-"),
            r.records_synced.map_or("-".to_string(), |n| n.to_string()),
            stale,
            r.error.as_deref().unwrap_or("")
        ));
        for n in &r.notes {
            text.push_str(&format!("    note: {n}\n"));
        }
    }
    for r in rows.iter().filter(|r| r.kind == "stream") {
        let target = if multi { format!(" → {}", r.target) } else { String::new() };
        text.push_str(&format!(
            "change stream{target}: {}, applied up to {}, log head {}, lag {}, updated {} s ago{}\n",
            r.status.to_lowercase(),
            r.position.as_deref().unwrap_or("nothing yet"),
            r.head.as_deref().unwrap_or("unknown"),
            r.lag_seconds.map_or("unknown".to_string(), |l| format!("{l:.1} s")),
            r.stale_seconds.unwrap_or(0),
            r.error.as_deref().map(|e| format!("; last error: {e}")).unwrap_or_default()
        ));
    }
    let tables = rows.iter().filter(|r| r.kind == "table").count();
    let failed = rows.iter().filter(|r| !healthy(r)).count();
    text.push_str(&format!("{tables} tables, {failed} not healthy\n"));
    for (_, dir) in dirs {
        let exposed = connector_json_state::exposure(dir);
        if !exposed.is_empty() {
            text.push_str(&format!(
                "warning: other users may read this state: {}; run chmod -R go-rwx {}\n",
                exposed.join(", "),
                dir.display()
            ));
        }
    }
    crate::out(&text);
    Ok(!unhealthy)
}

pub fn migrate(dirs: &[(String, PathBuf)], preview: bool) -> Result<()> {
    for (_, dir) in dirs {
        let report = tools::migrate(dir, preview).map_err(|e| anyhow!("{e}"))?;
        let mut text = format!("{}{}:\n", if preview { "preview (nothing changed) for " } else { "" }, dir.display());
        for (file, db, table) in &report.moved {
            text.push_str(&format!("  {file} → {db}.json [{table}]\n"));
        }
        for s in &report.superseded {
            text.push_str(&format!("  {s}: a newer entry exists; kept the newer one\n"));
        }
        for (file, why) in &report.problems {
            text.push_str(&format!("  {file}: left in place: {why}\n"));
        }
        if report.moved.is_empty() && report.problems.is_empty() {
            text.push_str("  nothing to migrate\n");
        } else if !preview {
            text.push_str(&format!("  old files moved to {}\n", dir.join(tools::BACKUP_DIR).display()));
        }
        crate::out(&text);
    }
    Ok(())
}

pub fn reset(dirs: &[(String, PathBuf)], database: &str, table: Option<&str>) -> Result<()> {
    for (target, dir) in dirs {
        let tables = tools::reset(dir, database, table).map_err(|e| anyhow!("{e}"))?;
        let where_ = if dirs.len() > 1 { format!(" (target {target})") } else { String::new() };
        crate::out(&format!(
            "reset {}{where_}: the next run syncs them in full\n",
            tables.iter().map(|t| format!("{database}.{t}")).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(())
}
