//! One read, every target: a [`Fanout`] sends each batch to the staging writer of every
//! target still accepting rows, and drops the one that fails (that target alone fails the
//! tenant's table; the others go on), as Vector's `Fanout` does for its sinks.

use crate::error::{ConnectorError, Result};
use crate::sink::{Staged, StagingWriter};
use crate::strategy::TablePlan;
use crate::value::RowBatch;

use super::Target;

/// One target's share of a tenant's read.
pub(super) struct Slot<'a> {
    pub target: &'a Target,
    pub plan: TablePlan,
    /// The writer, or why this target stopped taking rows.
    writer: std::result::Result<Box<dyn StagingWriter>, ConnectorError>,
}

/// The targets one tenant's read goes to.
pub(super) struct Fanout<'a> {
    slots: Vec<Slot<'a>>,
    /// Where the rows come from, for error messages (`shop1.orders`).
    table: String,
}

impl<'a> Fanout<'a> {
    pub fn new(table: String) -> Self {
        Self { slots: Vec::new(), table }
    }

    /// Adds a target with its writer (or the reason it has none).
    pub fn push(&mut self, target: &'a Target, plan: TablePlan, writer: Result<Box<dyn StagingWriter>>) {
        self.slots.push(Slot { target, plan, writer });
    }

    /// Whether no target takes rows any more.
    pub fn is_dead(&self) -> bool {
        self.slots.iter().all(|s| s.writer.is_err())
    }

    /// The first reason a target stopped, for an attempt that no target survived.
    pub fn first_error(&self) -> ConnectorError {
        self.slots
            .iter()
            .find_map(|s| s.writer.as_ref().err().map(ConnectorError::duplicate))
            .unwrap_or_else(|| ConnectorError::permanent(format!("{}: no target to write to", self.table)))
    }

    fn fail(table: &str, slot: &mut Slot<'_>, e: ConnectorError) {
        slot.writer = Err(e.context(format!("{table} → {}", slot.target.id)));
    }

    /// Sends a batch to every live writer.
    pub async fn write(&mut self, batch: &RowBatch) {
        for slot in &mut self.slots {
            if let Ok(w) = &mut slot.writer
                && let Err(e) = w.write(batch).await
            {
                Self::fail(&self.table, slot, e);
            }
        }
    }

    /// Makes every live writer's rows durable; returns the resumable `(target, handle)` pairs
    /// of the writers that checkpointed.
    pub async fn checkpoint(&mut self) -> Vec<(&'a Target, String)> {
        let mut done = Vec::new();
        for slot in &mut self.slots {
            let Ok(w) = &mut slot.writer else { continue };
            match w.checkpoint().await {
                Ok(()) => {
                    if let Some(handle) = w.handle() {
                        done.push((slot.target, handle));
                    }
                }
                Err(e) => Self::fail(&self.table, slot, e),
            }
        }
        done
    }

    /// Ends every writer: per target, its plan and what it staged (or why it failed).
    pub async fn finish(self) -> Vec<(&'a Target, TablePlan, Result<Staged>)> {
        let mut out = Vec::new();
        for slot in self.slots {
            let staged = match slot.writer {
                Ok(w) => w.finish().await,
                Err(e) => Err(e),
            };
            out.push((slot.target, slot.plan, staged));
        }
        out
    }
}
