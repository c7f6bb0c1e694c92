//! The `ndjson` sink: `<root>/<table>/<tenant>.ndjson`, one file per tenant, replaced or
//! merged atomically per commit.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use connector_framework::{
    CommitOutcome, CommitSummary, ConnectorError, Prepared, Result, RowBatch, Sink, StageRequest, Staged,
    StagingWriter, SyncMode, SystemColumns, TargetOptions, TargetPlan, TargetTable, WriteMode,
};
use serde_json::{Map, Value as Json};

/// Writes `<root>/<table>/<tenant>.ndjson`.
#[derive(Debug)]
pub struct NdjsonSink {
    id: String,
    root: PathBuf,
    run_id: String,
    counter: AtomicU64,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> ConnectorError {
    // A full disk or a vanished mount may pass; everything else is permanent.
    let class = match e.kind() {
        std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut => connector_framework::ErrorClass::Transient,
        _ => connector_framework::ErrorClass::Permanent,
    };
    ConnectorError::new(class, format!("{what} {}: {e}", path.display()))
}

/// A file-name-safe form of a table or tenant name.
fn safe(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') { c } else { '_' }).collect()
}

impl NdjsonSink {
    pub fn new(id: &str, root: &Path, run_id: &str) -> Self {
        Self { id: id.to_string(), root: root.to_path_buf(), run_id: run_id.to_string(), counter: AtomicU64::new(0) }
    }

    fn table_dir(&self, table: &str) -> PathBuf {
        self.root.join(safe(table))
    }

    /// The file holding one tenant's rows.
    pub fn tenant_file(&self, table: &str, tenant: &str) -> PathBuf {
        self.table_dir(table).join(format!("{}.ndjson", safe(tenant)))
    }
}

struct NdjsonWriter {
    system: SystemColumns,
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    tenant: String,
    mode: SyncMode,
    write: WriteMode,
    columns: Vec<String>,
    rows: u64,
}

#[async_trait]
impl StagingWriter for NdjsonWriter {
    async fn write(&mut self, batch: &RowBatch) -> Result<()> {
        for row in &batch.rows {
            let mut obj = Map::new();
            obj.insert(self.system.tenant.clone(), Json::String(self.tenant.clone()));
            obj.insert(self.system.mode.clone(), Json::String(self.mode.as_str().into()));
            for (name, value) in self.columns.iter().zip(row) {
                obj.insert(name.clone(), value.to_json());
            }
            serde_json::to_writer(&mut self.file, &obj).map_err(|e| ConnectorError::permanent(e.to_string()))?;
            self.file.write_all(b"\n").map_err(|e| io("cannot write", &self.path, e))?;
        }
        self.rows += batch.len() as u64;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<Staged> {
        self.file.flush().map_err(|e| io("cannot write", &self.path, e))?;
        self.file.get_ref().sync_all().map_err(|e| io("cannot sync", &self.path, e))?;
        Ok(Staged {
            tenant: self.tenant.clone(),
            mode: self.mode,
            write: self.write,
            rows: self.rows,
            bytes: 0,
            types: vec!["json".into(); self.columns.len()].into(),
            columns: self.columns.clone().into(),
            handle: Some(self.path.display().to_string()),
        })
    }
}

fn read_lines(path: &Path) -> Result<Vec<Map<String, Json>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("cannot read", path, e)),
    };
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| ConnectorError::permanent(format!("{} is corrupt: {e}", path.display())))
        })
        .collect()
}

/// The identity of a row for merging: its key columns, or the whole row without sync fields.
fn row_id(row: &Map<String, Json>, key: &[String], system: &SystemColumns) -> String {
    if key.is_empty() {
        let mut r = row.clone();
        r.remove(&system.mode);
        Json::Object(r).to_string()
    } else {
        key.iter().map(|k| row.get(k).cloned().unwrap_or(Json::Null).to_string()).collect::<Vec<_>>().join("\u{1f}")
    }
}

fn write_atomic(path: &Path, rows: impl Iterator<Item = Map<String, Json>>) -> Result<()> {
    let tmp = path.with_extension("ndjson.tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| io("cannot create", &tmp, e))?);
    for r in rows {
        serde_json::to_writer(&mut f, &r).map_err(|e| ConnectorError::permanent(e.to_string()))?;
        f.write_all(b"\n").map_err(|e| io("cannot write", &tmp, e))?;
    }
    f.flush().map_err(|e| io("cannot write", &tmp, e))?;
    f.get_ref().sync_all().map_err(|e| io("cannot sync", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("cannot replace", path, e))
}

#[async_trait]
impl Sink for NdjsonSink {
    fn id(&self) -> &str {
        &self.id
    }

    /// Its folder's name: two tables whose names map to one folder are refused by the runner.
    fn target_name(&self, source: &str, options: &TargetOptions) -> String {
        safe(options.table_name(source))
    }

    fn destination(&self) -> String {
        format!("ndjson {}", self.root.display())
    }

    async fn plan(&self, table: &TargetTable) -> Result<TargetPlan> {
        let dir = self.table_dir(table.options.table_name(&table.name));
        Ok(TargetPlan {
            columns: table.columns.iter().map(|c| format!("{} json", c.name)).collect(),
            changes: if dir.exists() { Vec::new() } else { vec![format!("create folder {}", dir.display())] },
        })
    }

    async fn prepare(&self, table: &TargetTable) -> Result<Prepared> {
        let staging = self.table_dir(table.options.table_name(&table.name)).join(".staging");
        let created = !staging.exists();
        std::fs::create_dir_all(&staging).map_err(|e| io("cannot create", &staging, e))?;
        Ok(Prepared { created, ..Default::default() })
    }

    async fn stage(&self, request: StageRequest<'_>) -> Result<Box<dyn StagingWriter>> {
        if request.resume.is_some() {
            return Err(ConnectorError::permanent("the ndjson sink cannot resume staging; the table starts over"));
        }
        if request.write == WriteMode::ApplyChanges {
            return Err(ConnectorError::config(
                "the ndjson sink does not apply change streams (--cdc); use it with cursor syncs",
            ));
        }
        let (table, tenant, mode, write) = (request.table, request.tenant, request.mode, request.write);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let path = self.table_dir(table.options.table_name(&table.name)).join(".staging").join(format!(
            "{}.{}.{n}.ndjson",
            safe(&tenant.table.database),
            self.run_id
        ));
        let file = std::fs::File::create(&path).map_err(|e| io("cannot create", &path, e))?;
        Ok(Box::new(NdjsonWriter {
            system: table.system.clone(),
            path,
            file: std::io::BufWriter::new(file),
            tenant: tenant.table.database.clone(),
            mode,
            write,
            columns: tenant.columns.iter().map(|c| c.name.clone()).collect(),
            rows: 0,
        }))
    }

    async fn commit(&self, table: &TargetTable, staged: &[Staged]) -> Result<CommitOutcome> {
        for s in staged {
            let Some(handle) = &s.handle else { continue };
            let staged_path = PathBuf::from(handle);
            let target = self.tenant_file(table.options.table_name(&table.name), &s.tenant);
            match s.write {
                WriteMode::ReplaceTenant => {
                    std::fs::rename(&staged_path, &target).map_err(|e| io("cannot replace", &target, e))?;
                }
                WriteMode::Merge | WriteMode::AppendDedup | WriteMode::ApplyChanges => {
                    let mut rows: BTreeMap<String, Map<String, Json>> = BTreeMap::new();
                    for r in read_lines(&target)?.into_iter().chain(read_lines(&staged_path)?) {
                        rows.insert(row_id(&r, &table.key, &table.system), r);
                    }
                    write_atomic(&target, rows.into_values())?;
                }
            }
        }
        let summary = CommitSummary { rows_inserted: Some(staged.iter().map(|s| s.rows).sum()), ..Default::default() };
        Ok(CommitOutcome { summary, rejected: Vec::new() })
    }

    async fn discard(&self, staged: &[Staged]) {
        for s in staged {
            if let Some(h) = &s.handle {
                let _ = std::fs::remove_file(h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use connector_framework::testkit::sink_conformance;

    #[tokio::test]
    async fn passes_the_sink_conformance_checks_and_writes_what_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let sink = NdjsonSink::new("files", dir.path(), "run1");
        let steps = sink_conformance(&sink, "orders").await.unwrap();
        assert_eq!(steps.len(), 5);
        let a = read_lines(&sink.tenant_file("orders", "tenant_a")).unwrap();
        assert_eq!(a.len(), 5, "the merge updated rows in place");
        assert_eq!(a.iter().filter(|r| r["name"] == "changed").count(), 1);
        assert_eq!(read_lines(&sink.tenant_file("orders", "tenant_b")).unwrap().len(), 3);
        assert_eq!(read_lines(&sink.tenant_file("orders_keyless", "tenant_a")).unwrap().len(), 5);
        let staging: Vec<_> = std::fs::read_dir(dir.path().join("orders/.staging")).unwrap().collect();
        assert!(staging.is_empty(), "staged files are renamed or discarded");
    }
}
