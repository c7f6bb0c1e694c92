//! One micro-batch of a target's stream: the changes read since the last apply, staged per
//! table name and tenant as they arrive (so a transaction of a million rows streams through
//! in bounded memory), then applied with one commit per target table.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::change::{ChangeMeta, ChangeOp, RowChange};
use crate::error::{ConnectorError, Result};
use crate::events::Event;
use crate::runner::Target;
use crate::schema::{TableRef, TableSchema};
use crate::sink::{StageRequest, Staged, StagingWriter, TargetTable, WriteMode};
use crate::state::SyncMode;
use crate::value::RowBatch;

/// A tenant's staged changes of one table.
struct TenantChanges {
    table: TableRef,
    writer: Box<dyn StagingWriter>,
    pending: RowBatch,
    upserts: u64,
    deletes: u64,
}

/// What an apply did, per table it failed for good.
#[derive(Debug, Default)]
pub(super) struct Applied {
    pub upserts: u64,
    pub deletes: u64,
    /// Tables whose changes the target refused for a reason retrying cannot fix: they stop
    /// streaming (a new snapshot takes them up again).
    pub refused: Vec<(TableRef, ConnectorError)>,
}

/// The open batch.
pub(super) struct Batch {
    batch_size: usize,
    /// table name → tenant → staged changes.
    tables: BTreeMap<String, BTreeMap<String, TenantChanges>>,
    pub changes: u64,
    /// Tables whose writer failed for good while staging (they stop streaming).
    pub refused: Vec<(TableRef, ConnectorError)>,
}

impl Batch {
    pub fn new(batch_size: usize) -> Self {
        Self { batch_size, tables: BTreeMap::new(), changes: 0, refused: Vec::new() }
    }

    pub fn is_empty(&self) -> bool {
        self.changes == 0 && self.refused.is_empty()
    }

    /// Stages one change of `schema`'s table for `target_table`. A transient failure fails the
    /// batch; a permanent one stops only this table (see [`Batch::refused`]).
    pub async fn push(
        &mut self,
        target: &Target,
        target_table: &TargetTable,
        schema: &Arc<TableSchema>,
        change: RowChange,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let tenant = &schema.table.database;
        if self.refused.iter().any(|(t, _)| *t == schema.table) {
            return Ok(());
        }
        let per_tenant = self.tables.entry(target_table.name.clone()).or_default();
        if !per_tenant.contains_key(tenant) {
            let request = StageRequest {
                table: target_table,
                tenant: schema,
                mode: SyncMode::Cdc,
                write: WriteMode::ApplyChanges,
                resume: None,
            };
            let writer = match target.sink.stage(request).await {
                Ok(w) => w,
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    self.refused.push((schema.table.clone(), e));
                    return Ok(());
                }
            };
            per_tenant.insert(
                tenant.clone(),
                TenantChanges {
                    table: schema.table.clone(),
                    writer,
                    pending: RowBatch::with_capacity(self.batch_size.min(1024)),
                    upserts: 0,
                    deletes: 0,
                },
            );
        }
        let Some(t) = per_tenant.get_mut(tenant) else { return Ok(()) };
        match change.op {
            ChangeOp::Upsert => t.upserts += 1,
            ChangeOp::Delete => t.deletes += 1,
        }
        t.pending.push_change(change.row, ChangeMeta { op: change.op, seq: change.seq, at });
        self.changes += 1;
        if t.pending.is_full(self.batch_size) {
            let full = std::mem::replace(&mut t.pending, RowBatch::with_capacity(self.batch_size.min(1024)));
            if let Err(e) = t.writer.write(&full).await {
                if e.is_transient() {
                    return Err(e);
                }
                let table = t.table.clone();
                per_tenant.remove(tenant);
                self.refused.push((table, e));
            }
        }
        Ok(())
    }

    /// Applies the batch: per target table, every tenant's changes in one commit.
    pub async fn apply(
        self,
        target: &Target,
        target_tables: &HashMap<String, TargetTable>,
        listeners: &[Arc<dyn crate::events::EventListener>],
    ) -> Result<Applied> {
        let mut applied = Applied { refused: self.refused, ..Default::default() };
        for (name, tenants) in self.tables {
            let Some(target_table) = target_tables.get(&name) else {
                return Err(ConnectorError::permanent(format!(
                    "changes staged for {name} have no target table (a bug in connector-run; nothing was applied)"
                )));
            };
            let started = Instant::now();
            let mut staged: Vec<Staged> = Vec::new();
            let mut counts: HashMap<String, (TableRef, u64, u64)> = HashMap::new();
            let mut failure = None;
            for (tenant, mut t) in tenants {
                let written = if t.pending.is_empty() { Ok(()) } else { t.writer.write(&t.pending).await };
                let finished = match written {
                    Ok(()) => t.writer.finish().await,
                    Err(e) => Err(e),
                };
                match finished {
                    Ok(s) => {
                        counts.insert(tenant, (t.table, t.upserts, t.deletes));
                        staged.push(s);
                    }
                    Err(e) if e.is_transient() => failure = Some(e),
                    Err(e) => applied.refused.push((t.table, e)),
                }
            }
            if let Some(e) = failure {
                target.sink.discard(&staged).await;
                return Err(e);
            }
            if staged.is_empty() {
                continue;
            }
            let results = crate::runner::commit_isolating(target, target_table, &staged).await;
            target.sink.discard(&staged).await;
            let (mut upserts, mut deletes, mut tenants_done) = (0, 0, 0);
            for (tenant, result) in results {
                let Some((table, u, d)) = counts.remove(&tenant) else { continue };
                match result {
                    Ok(()) => {
                        upserts += u;
                        deletes += d;
                        tenants_done += 1;
                    }
                    Err(e) if e.is_transient() || e.in_doubt().is_some() => return Err(e),
                    Err(e) => applied.refused.push((table, e)),
                }
            }
            applied.upserts += upserts;
            applied.deletes += deletes;
            Event::ChangesApplied {
                table: name.clone(),
                target: target.id.clone(),
                tenants: tenants_done,
                upserts,
                deletes,
                elapsed: started.elapsed(),
            }
            .emit(listeners);
        }
        Ok(applied)
    }

    /// Drops the batch without applying it (the stream starts again from its last position):
    /// the staging written so far is discarded.
    pub async fn abandon(self, target: &Target) {
        let mut staged = Vec::new();
        for (_, tenants) in self.tables {
            for (_, t) in tenants {
                if let Ok(s) = t.writer.finish().await {
                    staged.push(s);
                }
            }
        }
        target.sink.discard(&staged).await;
    }
}
