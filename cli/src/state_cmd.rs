//! `connector-run status` and `connector-run state migrate|reset`: the original tool's
//! test_status_manager.py and migrate_status_files.py, over any state store (JSON files or
//! BigQuery rows), and `state migrate --to` to move state from one store to the other.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use chrono::Utc;
use connector_framework::{BuildContext, LockScope, Pipeline, StateStore, SyncStatus};
use connector_json_state::{JsonStateStore, tools};

/// One target's state: its store, and its folder when the store is the JSON one.
#[derive(Debug, Clone)]
pub struct StateHandle {
    pub target: String,
    pub store: Arc<dyn StateStore>,
    pub dir: Option<PathBuf>,
}

/// The status folders of a pipeline with JSON state: one, or one per target when there are
/// several.
pub fn status_dirs(pipeline: Option<&Pipeline>, status_dir: Option<&Path>) -> Result<Vec<(String, PathBuf)>> {
    if let Some(dir) = status_dir {
        return Ok(vec![("default".into(), dir.to_path_buf())]);
    }
    let Some(p) = pipeline else {
        return Ok(vec![("default".into(), PathBuf::from("sync_status"))]);
    };
    if p.state_kind != "json" {
        return Err(anyhow!(
            "this works on the `json` state store's files; this pipeline keeps its state in `{}`",
            p.state_kind
        ));
    }
    let described = p.describe();
    let base = described["state"]["config"]["status_dir"].as_str().unwrap_or("sync_status").to_string();
    Ok(if p.targets.len() > 1 {
        p.targets.iter().map(|t| (t.id.clone(), Path::new(&base).join(&t.id))).collect()
    } else {
        vec![("default".into(), PathBuf::from(base))]
    })
}

/// Every target's state store: built from the pipeline (any kind), or the JSON files of
/// `status_dir` (default `sync_status`).
pub async fn state_handles(pipeline: Option<&Pipeline>, status_dir: Option<&Path>) -> Result<Vec<StateHandle>> {
    match pipeline {
        Some(p) if status_dir.is_none() && p.state_kind != "json" => {
            let mut out = Vec::new();
            for t in &p.targets {
                let ctx = BuildContext {
                    run_id: crate::new_run_id(),
                    target_id: t.id.clone(),
                    state_subdir: (p.targets.len() > 1).then(|| t.id.clone()),
                    retry: p.settings.retry_policy(),
                    discard_writes: false,
                };
                let store = p.state.build(&ctx).await.map_err(|e| anyhow!("state: {e}"))?;
                out.push(StateHandle { target: t.id.clone(), store, dir: None });
            }
            Ok(out)
        }
        _ => Ok(status_dirs(pipeline, status_dir)?
            .into_iter()
            .map(|(target, dir)| StateHandle { target, store: Arc::new(JsonStateStore::new(&dir)), dir: Some(dir) })
            .collect()),
    }
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
    /// A tenant as the server shows it now (`NEW`, `PRESENT`, `GONE`).
    fn tenant(database: &str, status: &str) -> Self {
        Self {
            kind: "tenant",
            status: status.into(),
            error: None,
            ..Self::corrupt("tenant", "*", database.into(), None, &"")
        }
    }

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

pub async fn status(
    handles: &[StateHandle],
    tenants: Option<&connector_framework::TenantChanges>,
    json: bool,
) -> Result<bool> {
    let now = Utc::now().naive_utc();
    let mut rows = Vec::new();
    if let Some(t) = tenants {
        for (list, status) in [(&t.new, "NEW"), (&t.present, "PRESENT"), (&t.gone, "GONE")] {
            rows.extend(list.iter().map(|database| StatusRow::tenant(database, status)));
        }
    }
    for StateHandle { target, store, .. } in handles {
        for (database, state) in store.load_all().await.map_err(|e| anyhow!("{e}"))? {
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
                            mode: Some(t.shown_mode()),
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
        match store.load_stream().await {
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
    let healthy = |r: &StatusRow| {
        matches!(r.status.as_str(), "SUCCESS" | "STREAMING" | "STOPPED" | "STARTING" | "NEW" | "PRESENT" | "GONE")
    };
    let unhealthy = rows.iter().any(|r| !healthy(r));
    if json {
        crate::out(&format!("{}\n", serde_json::to_string_pretty(&rows)?));
        return Ok(!unhealthy);
    }
    if rows.iter().all(|r| r.kind == "tenant") && tenants.is_none_or(|t| t.present.is_empty() && t.gone.is_empty()) {
        crate::out(&format!(
            "no state yet in {}\n",
            handles.iter().map(|h| h.store.location()).collect::<Vec<_>>().join(", ")
        ));
        return Ok(true);
    }
    let multi = handles.len() > 1;
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
    if let Some(t) = tenants {
        let names = |l: &Vec<String>| if l.is_empty() { String::new() } else { format!(" ({})", l.join(", ")) };
        text.push_str(&format!(
            "tenants on the server: {} present, {} new{}, {} gone{}\n",
            t.present.len(),
            t.new.len(),
            names(&t.new),
            t.gone.len(),
            names(&t.gone)
        ));
    }
    let tables = rows.iter().filter(|r| r.kind == "table").count();
    let failed = rows.iter().filter(|r| !healthy(r)).count();
    text.push_str(&format!("{tables} tables, {failed} not healthy\n"));
    for dir in handles.iter().filter_map(|h| h.dir.as_ref()) {
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

/// Makes the next run sync these tables in full: their watermarks, keys and resume points are
/// removed (the rest of their state stays), under the whole state's lock. Returns what it did.
pub async fn reset(handles: &[StateHandle], database: &str, table: Option<&str>) -> Result<String> {
    let mut text = String::new();
    for h in handles {
        let lock = h.store.lock(LockScope::Whole, None).await.map_err(|e| anyhow!("{e}"))?;
        let current = h.store.load(database).await.map_err(|e| anyhow!("{e}"));
        let mut changed = Vec::new();
        if let Ok(current) = &current {
            if let Some(t) = table.filter(|t| !current.tables.contains_key(*t)) {
                lock.release().await;
                return Err(anyhow!(
                    "{database}.{t} has no state in {}; it will sync in full on its first run anyway",
                    h.store.location()
                ));
            }
            for (name, state) in current.tables.iter().filter(|(n, _)| table.is_none_or(|t| t == *n)) {
                let mut state = state.clone();
                state.watermark = None;
                state.key = None;
                // An interrupted full sync's staging may be days old: start over.
                state.resume = None;
                changed.push((name.clone(), state));
            }
        }
        let records: Vec<(String, connector_framework::TableState)> =
            changed.iter().map(|(_, s)| (database.to_string(), s.clone())).collect();
        let written = h.store.record_many(records).await;
        lock.release().await;
        current?;
        for r in written {
            r.map_err(|e| anyhow!("{e}"))?;
        }
        let where_ = if handles.len() > 1 { format!(" (target {})", h.target) } else { String::new() };
        text.push_str(&format!(
            "reset {}{where_}: the next run syncs them in full\n",
            changed.iter().map(|(t, _)| format!("{database}.{t}")).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(text)
}

/// Copies every tenant's state (and the change stream's) from one store to another, target by
/// target, holding both stores' locks; the source is left as it was. Then point the pipeline
/// at the new store (`state_store`).
pub async fn copy_state(from: &[StateHandle], to: &[StateHandle], preview: bool) -> Result<()> {
    for (src, dst) in from.iter().zip(to) {
        let src_lock = src.store.lock(LockScope::Whole, None).await.map_err(|e| anyhow!("{e}"))?;
        let dst_lock = match dst.store.lock(LockScope::Whole, None).await {
            Ok(l) => l,
            Err(e) => {
                src_lock.release().await;
                return Err(anyhow!("{e}"));
            }
        };
        let outcome = copy_one(src, dst, preview).await;
        dst_lock.release().await;
        src_lock.release().await;
        crate::out(&outcome?);
    }
    Ok(())
}

async fn copy_one(src: &StateHandle, dst: &StateHandle, preview: bool) -> Result<String> {
    let mut records = Vec::new();
    let mut databases = 0;
    for (database, state) in src.store.load_all().await.map_err(|e| anyhow!("{e}"))? {
        let state = state.map_err(|e| anyhow!("{database}: {e}; nothing was copied"))?;
        databases += 1;
        records.extend(state.tables.into_values().map(|t| (database.clone(), t)));
    }
    let stream = src.store.load_stream().await.map_err(|e| anyhow!("{e}"))?;
    let runs = src.store.runs().await.map_err(|e| anyhow!("{e}"))?;
    let (tables, run_count) = (records.len(), runs.len());
    if !preview {
        for r in dst.store.record_many(records).await {
            r.map_err(|e| anyhow!("{e}"))?;
        }
        if let Some(stream) = stream.clone() {
            dst.store.record_stream(stream).await.map_err(|e| anyhow!("{e}"))?;
        }
        for run in runs {
            dst.store.record_run(run).await.map_err(|e| anyhow!("{e}"))?;
        }
    }
    Ok(format!(
        "{}{} → {}: {databases} databases, {tables} tables, {run_count} runs of history{}\n",
        if preview { "preview (nothing copied): " } else { "copied " },
        src.store.location(),
        dst.store.location(),
        if stream.is_some() { ", and the change stream's position" } else { "" }
    ))
}

/// The same pipeline file with its state in `kind` instead: the flat form's `state_store`, or
/// the general form's `state` (a `bigquery` state takes the first sink's project, dataset,
/// location, endpoint and credentials; a `json` one `status_dir`).
pub fn with_state_kind(raw: &serde_json::Value, kind: &str, status_dir: Option<&Path>) -> Result<serde_json::Value> {
    let mut value = raw.clone();
    let object = value.as_object_mut().context("the pipeline is not a JSON object")?;
    let general = object.contains_key("source") || object.contains_key("sinks");
    if !general {
        object.insert("state_store".into(), serde_json::json!(kind));
        object.remove("status_dir");
        if let (Some(dir), "json") = (status_dir, kind) {
            object.insert("status_dir".into(), serde_json::json!(dir));
        }
        return Ok(value);
    }
    let mut state = serde_json::Map::new();
    state.insert("kind".into(), serde_json::json!(kind));
    match kind {
        "bigquery" => {
            let sink = object.get("sinks").and_then(|s| s.get(0)).cloned().unwrap_or_default();
            for key in ["project", "dataset", "location", "endpoint", "credentials"] {
                if let Some(v) = sink.get(key) {
                    state.insert(key.into(), v.clone());
                }
            }
        }
        _ => {
            if let Some(dir) = status_dir {
                state.insert("status_dir".into(), serde_json::json!(dir));
            }
        }
    }
    object.insert("state".into(), serde_json::Value::Object(state));
    Ok(value)
}
