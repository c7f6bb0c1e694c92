//! A kit for testing connectors and pipelines without servers: an in-memory [`MemorySource`],
//! a [`CollectingSink`] that records what it is given, a [`MemoryStateStore`], and conformance
//! checks that any source or sink can run ([`source_conformance`], [`sink_conformance`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::NaiveDateTime;

use crate::error::{ConnectorError, Result};
use crate::schema::{Column, KeySource, LogicalType, TableRef, TableSchema};
use crate::state::{DatabaseState, SyncMode, TableState};
use crate::traits::{
    BatchSender, CommitSummary, ReadRange, ReadRequest, ReadSummary, Sink, Source, Staged, StagingWriter, StateLock,
    StateStore, TargetOptions, TargetTable, WriteMode,
};
use crate::value::{Row, RowBatch, Value};

/// Schema and rows per table.
pub type MemoryTables = BTreeMap<TableRef, (TableSchema, Vec<Row>)>;

/// Tables held in memory, one per `database.table`.
#[derive(Debug, Default, Clone)]
pub struct MemorySource {
    pub databases: Vec<String>,
    pub tables: Arc<Mutex<MemoryTables>>,
}

impl MemorySource {
    pub fn add_table(&self, schema: TableSchema, rows: Vec<Row>) {
        self.tables.lock().unwrap_or_else(|p| p.into_inner()).insert(schema.table.clone(), (schema, rows));
    }
}

fn cursor_text(v: &Value) -> Option<String> {
    match v {
        Value::DateTime(t) => Some(t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()),
        Value::Timestamp(t) => Some(t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string()),
        Value::Date(d) => Some(d.format("%Y-%m-%d").to_string()),
        _ => None,
    }
}

#[async_trait]
impl Source for MemorySource {
    fn databases(&self) -> Vec<String> {
        self.databases.clone()
    }

    async fn list_tables(&self, database: &str) -> Result<Vec<String>> {
        let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        Ok(tables.keys().filter(|t| t.database == database).map(|t| t.table.clone()).collect())
    }

    async fn discover(&self, table: &TableRef) -> Result<TableSchema> {
        let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        tables
            .get(table)
            .map(|(s, _)| s.clone())
            .ok_or_else(|| ConnectorError::permanent(format!("table {table} does not exist")))
    }

    async fn read(&self, request: ReadRequest, output: BatchSender) -> Result<ReadSummary> {
        let mut rows = {
            let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
            tables.get(&request.schema.table).map(|(_, r)| r.clone()).unwrap_or_default()
        };
        let key_of = |row: &Row, i: usize| match &row[i] {
            Value::Int(k) => *k as i128,
            Value::UInt(k) => *k as i128,
            _ => 0,
        };
        let mut last_key = None;
        if let ReadRange::KeyRange { key, after, limit } = &request.range {
            let i = request.schema.column_index(key).unwrap_or(0);
            rows.sort_by_key(|r| key_of(r, i));
            let after: Option<i128> = after.as_deref().and_then(|a| a.parse().ok());
            rows.retain(|r| after.is_none_or(|a| key_of(r, i) > a));
            rows.truncate(usize::try_from(*limit).unwrap_or(usize::MAX));
            last_key = rows.last().map(|r| key_of(r, i).to_string());
        }
        let cursor = request.track_cursor.as_deref().and_then(|c| request.schema.column_index(c));
        let mut summary = ReadSummary {
            snapshot_time: Some(chrono::Utc::now().naive_utc()),
            snapshot_local_time: Some(chrono::Utc::now().naive_utc()),
            ..Default::default()
        };
        let mut batch = RowBatch::with_capacity(request.batch_size);
        for row in rows {
            if let ReadRange::Since { cursor: name, from, include_nulls } = &request.range {
                let i = request.schema.column_index(name).unwrap_or(0);
                match cursor_text(&row[i]) {
                    Some(t) if t.as_str() >= from.as_str() => {}
                    None if *include_nulls => {}
                    _ => continue,
                }
            }
            if let Some(i) = cursor {
                let newer = summary.max_cursor.as_ref().and_then(cursor_text) < cursor_text(&row[i]);
                if newer {
                    summary.max_cursor = Some(row[i].clone());
                }
            }
            summary.rows += 1;
            batch.push(row);
            if batch.is_full(request.batch_size) {
                summary.bytes += batch.bytes as u64;
                let full = std::mem::replace(&mut batch, RowBatch::with_capacity(request.batch_size));
                output.send(full).await.map_err(|_| ConnectorError::permanent("receiver dropped"))?;
            }
        }
        if !batch.is_empty() {
            summary.bytes += batch.bytes as u64;
            output.send(batch).await.map_err(|_| ConnectorError::permanent("receiver dropped"))?;
        }
        summary.last_key = last_key;
        Ok(summary)
    }
}

/// One commit a [`CollectingSink`] received.
#[derive(Debug, Clone)]
pub struct Commit {
    pub table: String,
    pub tenants: Vec<(String, WriteMode, Vec<Row>)>,
}

/// Records everything it is asked to write; `fail_with` makes every call fail (to test
/// isolation of failing targets).
#[derive(Debug, Default, Clone)]
pub struct CollectingSink {
    pub id: String,
    pub fail_with: Option<String>,
    pub staged: Arc<Mutex<HashMap<String, Vec<Row>>>>,
    pub commits: Arc<Mutex<Vec<Commit>>>,
}

impl CollectingSink {
    pub fn new(id: &str) -> Self {
        Self { id: id.to_string(), ..Default::default() }
    }

    fn check(&self) -> Result<()> {
        match &self.fail_with {
            Some(msg) => Err(ConnectorError::permanent(msg.clone())),
            None => Ok(()),
        }
    }

    /// Every row committed for `tenant` in `table`, in commit order.
    pub fn committed_rows(&self, table: &str, tenant: &str) -> Vec<Row> {
        let commits = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        commits
            .iter()
            .filter(|c| c.table == table)
            .flat_map(|c| c.tenants.iter().filter(|t| t.0 == tenant).flat_map(|t| t.2.clone()))
            .collect()
    }
}

struct CollectingWriter {
    key: String,
    tenant: String,
    mode: SyncMode,
    write: WriteMode,
    columns: Vec<String>,
    rows: Vec<Row>,
    staged: Arc<Mutex<HashMap<String, Vec<Row>>>>,
}

#[async_trait]
impl StagingWriter for CollectingWriter {
    async fn write(&mut self, batch: &RowBatch) -> Result<()> {
        self.rows.extend(batch.rows.iter().cloned());
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<Staged> {
        let rows = self.rows.len() as u64;
        self.staged.lock().unwrap_or_else(|p| p.into_inner()).insert(self.key.clone(), self.rows);
        Ok(Staged {
            tenant: self.tenant,
            mode: self.mode,
            write: self.write,
            rows,
            bytes: 0,
            types: vec![String::new(); self.columns.len()],
            columns: self.columns,
            handle: Some(self.key),
        })
    }
}

#[async_trait]
impl Sink for CollectingSink {
    fn id(&self) -> &str {
        &self.id
    }

    fn describe_columns(&self, table: &TargetTable) -> Vec<String> {
        table.columns.iter().map(|c| c.name.clone()).collect()
    }

    async fn plan_changes(&self, _table: &TargetTable) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    async fn prepare(&self, _table: &TargetTable) -> Result<()> {
        self.check()
    }

    async fn stage(
        &self,
        table: &TargetTable,
        tenant: &TableSchema,
        mode: SyncMode,
        write: WriteMode,
    ) -> Result<Box<dyn StagingWriter>> {
        self.check()?;
        Ok(Box::new(CollectingWriter {
            key: format!("{}/{}/{}", table.name, tenant.table.database, uuid_like()),
            tenant: tenant.table.database.clone(),
            mode,
            write,
            columns: tenant.columns.iter().map(|c| c.name.clone()).collect(),
            rows: Vec::new(),
            staged: self.staged.clone(),
        }))
    }

    async fn commit(&self, table: &TargetTable, staged: &[Staged]) -> Result<CommitSummary> {
        self.check()?;
        let mut store = self.staged.lock().unwrap_or_else(|p| p.into_inner());
        let tenants = staged
            .iter()
            .map(|s| (s.tenant.clone(), s.write, s.handle.as_ref().and_then(|h| store.remove(h)).unwrap_or_default()))
            .collect();
        self.commits.lock().unwrap_or_else(|p| p.into_inner()).push(Commit { table: table.name.clone(), tenants });
        Ok(CommitSummary::default())
    }

    async fn discard(&self, staged: &[Staged]) {
        let mut store = self.staged.lock().unwrap_or_else(|p| p.into_inner());
        for s in staged {
            if let Some(h) = &s.handle {
                store.remove(h);
            }
        }
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// State in memory.
#[derive(Debug, Default, Clone)]
pub struct MemoryStateStore {
    pub databases: Arc<Mutex<HashMap<String, DatabaseState>>>,
}

#[derive(Debug)]
struct NoLock;
impl StateLock for NoLock {}

#[async_trait]
impl StateStore for MemoryStateStore {
    async fn lock(&self) -> Result<Box<dyn StateLock>> {
        Ok(Box::new(NoLock))
    }
    async fn load(&self, database: &str) -> Result<DatabaseState> {
        let dbs = self.databases.lock().unwrap_or_else(|p| p.into_inner());
        Ok(dbs
            .get(database)
            .cloned()
            .unwrap_or_else(|| DatabaseState { database: database.into(), ..Default::default() }))
    }
    async fn record(&self, database: &str, state: TableState) -> Result<()> {
        let mut dbs = self.databases.lock().unwrap_or_else(|p| p.into_inner());
        let db = dbs
            .entry(database.to_string())
            .or_insert_with(|| DatabaseState { database: database.into(), ..Default::default() });
        db.tables.insert(state.table_name.clone(), state);
        Ok(())
    }
    fn location(&self) -> String {
        "memory".into()
    }
}

/// A small keyed table (`id`, `name`, `updated_at`) for conformance checks and tests.
pub fn sample_table(database: &str, table: &str, rows: usize) -> (TableSchema, Vec<Row>) {
    let schema = TableSchema {
        table: TableRef::new(database, table),
        columns: vec![
            Column { name: "id".into(), source_type: "bigint".into(), logical: LogicalType::Int64, nullable: false },
            Column {
                name: "name".into(),
                source_type: "varchar(20)".into(),
                logical: LogicalType::String,
                nullable: true,
            },
            Column {
                name: "updated_at".into(),
                source_type: "datetime(6)".into(),
                logical: LogicalType::DateTime { fsp: 6 },
                nullable: false,
            },
        ],
        key: vec!["id".into()],
        key_source: KeySource::PrimaryKey,
    };
    let base = NaiveDateTime::parse_from_str("2025-01-01 00:00:00", "%Y-%m-%d %H:%M:%S").unwrap_or_default();
    let rows = (0..rows)
        .map(|i| {
            vec![
                Value::Int(i as i64),
                if i % 3 == 0 { Value::Null } else { Value::String(format!("name {i} é😀")) },
                Value::DateTime(base + chrono::TimeDelta::seconds(i as i64)),
            ]
        })
        .collect();
    (schema, rows)
}

/// Checks a source against the [`Source`] contract on one of its tables: it discovers the
/// table, reads every row in batches no larger than asked, each row as wide as the schema, and
/// reports the rows it sent.
pub async fn source_conformance(source: &dyn Source, table: &TableRef) -> Result<u64> {
    let schema = Arc::new(source.discover(table).await?);
    if schema.columns.is_empty() {
        return Err(ConnectorError::permanent(format!("{table}: discovered no columns")));
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let request = ReadRequest { schema: schema.clone(), range: ReadRange::Full, batch_size: 2, track_cursor: None };
    let reader = source.read(request, tx);
    let collect = async {
        let mut rows = 0u64;
        while let Some(batch) = rx.recv().await {
            if batch.len() > 2 || batch.is_empty() {
                return Err(ConnectorError::permanent(format!(
                    "{table}: a batch of {} rows for batch_size 2",
                    batch.len()
                )));
            }
            if let Some(r) = batch.rows.iter().find(|r| r.len() != schema.columns.len()) {
                return Err(ConnectorError::permanent(format!(
                    "{table}: a row of {} values for {} columns",
                    r.len(),
                    schema.columns.len()
                )));
            }
            rows += batch.len() as u64;
        }
        Ok(rows)
    };
    let (summary, rows) = tokio::join!(reader, collect);
    let (summary, rows) = (summary?, rows?);
    if summary.rows != rows {
        return Err(ConnectorError::permanent(format!("{table}: reported {} rows but sent {rows}", summary.rows)));
    }
    Ok(rows)
}

/// Checks a sink against the [`Sink`] contract: it prepares a table, stages and commits a full
/// sync of two tenants, an incremental merge, a keyless append, and discards a staging it will
/// not commit. Returns the names of the steps it ran; the caller checks the sink's own output.
pub async fn sink_conformance(sink: &dyn Sink, table: &str) -> Result<Vec<&'static str>> {
    let mut steps = Vec::new();
    let (schema_a, rows_a) = sample_table("tenant_a", table, 5);
    let (schema_b, rows_b) = sample_table("tenant_b", table, 3);
    let target = TargetTable {
        name: table.to_string(),
        columns: schema_a.columns.clone(),
        key: schema_a.key.clone(),
        key_nullable: false,
        options: TargetOptions::default(),
    };
    sink.prepare(&target).await?;
    sink.prepare(&target).await?;
    steps.push("prepare twice");

    let mut staged = Vec::new();
    for (schema, rows) in [(&schema_a, &rows_a), (&schema_b, &rows_b)] {
        let mut w = sink.stage(&target, schema, SyncMode::Full, WriteMode::ReplaceTenant).await?;
        w.write(&RowBatch { rows: rows.clone(), bytes: 0 }).await?;
        let s = w.finish().await?;
        if s.rows != rows.len() as u64 || s.tenant != schema.table.database {
            return Err(ConnectorError::permanent(format!(
                "staged {} rows of {}, wrote {}",
                s.rows,
                s.tenant,
                rows.len()
            )));
        }
        staged.push(s);
    }
    sink.commit(&target, &staged).await?;
    sink.discard(&staged).await;
    steps.push("full sync of two tenants");

    let mut w = sink.stage(&target, &schema_a, SyncMode::Incremental, WriteMode::Merge).await?;
    let mut changed = rows_a[..2].to_vec();
    changed[0][1] = Value::String("changed".into());
    w.write(&RowBatch { rows: changed, bytes: 0 }).await?;
    let s = w.finish().await?;
    sink.commit(&target, std::slice::from_ref(&s)).await?;
    sink.discard(std::slice::from_ref(&s)).await;
    steps.push("incremental merge");

    let keyless = TargetTable { name: format!("{table}_keyless"), key: Vec::new(), ..target.clone() };
    let mut keyless_schema = schema_a.clone();
    keyless_schema.key.clear();
    sink.prepare(&keyless).await?;
    let mut w = sink.stage(&keyless, &keyless_schema, SyncMode::Incremental, WriteMode::AppendDedup).await?;
    w.write(&RowBatch { rows: rows_a.clone(), bytes: 0 }).await?;
    let s = w.finish().await?;
    sink.commit(&keyless, std::slice::from_ref(&s)).await?;
    sink.discard(std::slice::from_ref(&s)).await;
    steps.push("keyless append");

    let mut w = sink.stage(&target, &schema_b, SyncMode::Full, WriteMode::ReplaceTenant).await?;
    w.write(&RowBatch { rows: rows_b.clone(), bytes: 0 }).await?;
    let s = w.finish().await?;
    sink.discard(std::slice::from_ref(&s)).await;
    steps.push("discard");
    Ok(steps)
}
