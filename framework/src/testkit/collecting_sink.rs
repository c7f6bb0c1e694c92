//! A sink that records what it is given, for runner tests: staging with checkpoints and
//! resume, atomic commits, and switches to make it fail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::error::{ConnectorError, Result};
use crate::sink::{
    CommitOutcome, CommitSummary, Prepared, Sink, StageRequest, Staged, StagingWriter, TargetPlan, TargetTable,
    WriteMode,
};
use crate::state::SyncMode;
use crate::value::{Row, RowBatch};

/// One commit a [`CollectingSink`] received.
#[derive(Debug, Clone)]
pub struct Commit {
    pub table: String,
    pub tenants: Vec<(String, WriteMode, Vec<Row>)>,
}

/// Records everything it is asked to write. `fail_with` makes every call fail (to test
/// isolation of failing targets); `fail_commit_of` fails any commit that includes that tenant
/// (to test that one tenant's bad data fails that tenant alone); `generation` is what
/// `prepare` reports.
#[derive(Debug, Default, Clone)]
pub struct CollectingSink {
    pub id: String,
    pub fail_with: Option<String>,
    pub fail_commit_of: Option<String>,
    pub generation: Arc<Mutex<Option<String>>>,
    /// Rows made durable per staging handle (by `checkpoint` or `finish`).
    pub staged: Arc<Mutex<HashMap<String, Vec<Row>>>>,
    pub commits: Arc<Mutex<Vec<Commit>>>,
    /// Resumes asked for: (handle, rows).
    pub resumes: Arc<Mutex<Vec<(String, u64)>>>,
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
    handle: String,
    tenant: String,
    mode: SyncMode,
    write: WriteMode,
    columns: Vec<String>,
    /// Rows written and not yet made durable.
    pending: Vec<Row>,
    /// Rows made durable (carried over from a resumed writer, then checkpointed ones).
    durable: Vec<Row>,
    staged: Arc<Mutex<HashMap<String, Vec<Row>>>>,
}

impl CollectingWriter {
    fn persist(&mut self) {
        self.durable.append(&mut self.pending);
        self.staged.lock().unwrap_or_else(|p| p.into_inner()).insert(self.handle.clone(), self.durable.clone());
    }
}

#[async_trait]
impl StagingWriter for CollectingWriter {
    async fn write(&mut self, batch: &RowBatch) -> Result<()> {
        self.pending.extend(batch.rows.iter().cloned());
        Ok(())
    }

    async fn checkpoint(&mut self) -> Result<()> {
        self.persist();
        Ok(())
    }

    fn handle(&self) -> Option<String> {
        Some(self.handle.clone())
    }

    async fn finish(mut self: Box<Self>) -> Result<Staged> {
        self.persist();
        Ok(Staged {
            tenant: self.tenant.clone(),
            mode: self.mode,
            write: self.write,
            rows: self.durable.len() as u64,
            bytes: 0,
            types: vec![String::new(); self.columns.len()].into(),
            columns: self.columns.clone().into(),
            handle: Some(self.handle.clone()),
        })
    }
}

fn next_number() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[async_trait]
impl Sink for CollectingSink {
    fn id(&self) -> &str {
        &self.id
    }

    /// Removes the tenant's rows from every commit of these tables; returns how many.
    async fn drop_tenant(
        &self,
        tenant: &str,
        tables: &[String],
        _system: &crate::system::SystemColumns,
    ) -> Result<u64> {
        self.check()?;
        let mut removed = 0;
        let mut commits = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        for c in commits.iter_mut().filter(|c| tables.contains(&c.table)) {
            for t in c.tenants.iter_mut().filter(|t| t.0 == tenant) {
                removed += t.2.len() as u64;
                t.2.clear();
            }
        }
        Ok(removed)
    }

    fn destination(&self) -> String {
        format!("collecting {}", self.id)
    }

    async fn plan(&self, table: &TargetTable) -> Result<TargetPlan> {
        Ok(TargetPlan { columns: table.columns.iter().map(|c| c.name.clone()).collect(), changes: Vec::new() })
    }

    async fn prepare(&self, _table: &TargetTable) -> Result<Prepared> {
        self.check()?;
        let generation = self.generation.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(Prepared { generation, ..Default::default() })
    }

    async fn stage(&self, request: StageRequest<'_>) -> Result<Box<dyn StagingWriter>> {
        self.check()?;
        let durable = match request.resume {
            None => Vec::new(),
            Some(r) => {
                self.resumes.lock().unwrap_or_else(|p| p.into_inner()).push((r.handle.to_string(), r.rows));
                let staged = self.staged.lock().unwrap_or_else(|p| p.into_inner());
                let Some(rows) = staged.get(r.handle) else {
                    return Err(ConnectorError::permanent(format!("staging {} is gone", r.handle)));
                };
                // Only what the interrupted writer had checkpointed counts.
                rows.iter().take(usize::try_from(r.rows).unwrap_or(usize::MAX)).cloned().collect()
            }
        };
        Ok(Box::new(CollectingWriter {
            handle: format!("{}/{}/{}", request.table.name, request.tenant.table.database, next_number()),
            tenant: request.tenant.table.database.clone(),
            mode: request.mode,
            write: request.write,
            columns: request.tenant.columns.iter().map(|c| c.name.clone()).collect(),
            pending: Vec::new(),
            durable,
            staged: self.staged.clone(),
        }))
    }

    async fn commit(&self, table: &TargetTable, staged: &[Staged]) -> Result<CommitOutcome> {
        self.check()?;
        if let Some(bad) = self.fail_commit_of.as_ref().filter(|t| staged.iter().any(|s| &s.tenant == *t)) {
            return Err(ConnectorError::permanent(format!("a value of {bad} cannot be stored")));
        }
        let store = self.staged.lock().unwrap_or_else(|p| p.into_inner());
        let tenants = staged
            .iter()
            .map(|s| {
                (s.tenant.clone(), s.write, s.handle.as_ref().and_then(|h| store.get(h).cloned()).unwrap_or_default())
            })
            .collect();
        self.commits.lock().unwrap_or_else(|p| p.into_inner()).push(Commit { table: table.name.clone(), tenants });
        Ok(CommitOutcome { summary: CommitSummary::default(), rejected: Vec::new() })
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
