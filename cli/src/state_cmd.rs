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

/// One row of the overview.
#[derive(Debug, serde::Serialize)]
struct StatusRow {
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
}

pub fn status(dirs: &[(String, PathBuf)], json: bool) -> Result<bool> {
    let now = Utc::now().naive_utc();
    let mut rows = Vec::new();
    for (target, dir) in dirs {
        for (database, state) in tools::overview(dir).map_err(|e| anyhow!("{e}"))? {
            match state {
                Err(e) => rows.push(StatusRow {
                    target: target.clone(),
                    database,
                    table: None,
                    status: "CORRUPT".into(),
                    mode: None,
                    last_sync_time: None,
                    last_success_at: None,
                    stale_seconds: None,
                    records_synced: None,
                    watermark: None,
                    error: Some(e.to_string()),
                    notes: Vec::new(),
                }),
                Ok(state) => {
                    for (table, t) in state.tables {
                        rows.push(StatusRow {
                            target: target.clone(),
                            database: database.clone(),
                            table: Some(table),
                            status: if t.sync_status == SyncStatus::Success { "SUCCESS" } else { "FAILED" }.into(),
                            mode: Some(t.sync_mode.as_str().into()),
                            last_sync_time: t.last_sync_time.map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string()),
                            last_success_at: t.last_success_at.map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string()),
                            stale_seconds: t.last_success_at.map(|d| (now - d).num_seconds()),
                            records_synced: Some(t.records_synced),
                            watermark: t.watermark.map(|w| format!("{} {}", w.column, w.value)),
                            error: t.error_message,
                            notes: t.notes,
                        });
                    }
                }
            }
        }
    }
    let unhealthy = rows.iter().any(|r| r.status != "SUCCESS");
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
    for r in &rows {
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
    let failed = rows.iter().filter(|r| r.status != "SUCCESS").count();
    text.push_str(&format!("{} tables, {} not healthy\n", rows.len(), failed));
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
