//! A state store that reads another one and keeps every write in memory.
//!
//! Benchmark runs (`--bench-discard-uploads`) send nothing to their targets, so they must never
//! advance the state those targets' real runs rely on. They get this store instead of the
//! configured one, chosen once when the pipeline is built: it starts from the real state (so
//! an incremental benchmark reads what a real incremental run would) and nothing it is given
//! reaches the real store, whatever path records it (outcomes, resume points, stream positions).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{DatabaseState, LockScope, MemoryStateStore, StateLock, StateStore, StreamState, TableState};
use crate::error::Result;

/// Reads `real`, writes to memory (see the module doc).
#[derive(Debug)]
pub struct ScratchState {
    real: Arc<dyn StateStore>,
    written: MemoryStateStore,
}

impl ScratchState {
    pub fn over(real: Arc<dyn StateStore>) -> Self {
        Self { real, written: MemoryStateStore::default() }
    }
}

#[async_trait]
impl StateStore for ScratchState {
    /// Only the in-memory lock: the real one guards writes this store never makes.
    async fn lock(&self, scope: LockScope, wait: Option<Duration>) -> Result<Box<dyn StateLock>> {
        self.written.lock(scope, wait).await
    }
    async fn databases(&self) -> Result<Vec<String>> {
        let mut names = self.real.databases().await?;
        names.extend(self.written.databases().await?);
        names.sort();
        names.dedup();
        Ok(names)
    }
    /// Forgets nothing real: only what this store was given.
    async fn forget(&self, database: &str, table: Option<&str>) -> Result<Vec<String>> {
        self.written.forget(database, table).await
    }
    async fn load(&self, database: &str) -> Result<DatabaseState> {
        let mut state = self.real.load(database).await?;
        state.tables.extend(self.written.load(database).await?.tables);
        Ok(state)
    }
    async fn load_table(&self, database: &str, table: &str) -> Result<Option<TableState>> {
        match self.written.load_table(database, table).await? {
            Some(state) => Ok(Some(state)),
            None => self.real.load_table(database, table).await,
        }
    }
    async fn record(&self, database: &str, state: TableState) -> Result<()> {
        self.written.record(database, state).await
    }
    fn location(&self) -> String {
        format!("{} (read only: this run's state is kept in memory)", self.real.location())
    }
    async fn load_stream(&self) -> Result<Option<StreamState>> {
        match self.written.load_stream().await? {
            Some(stream) => Ok(Some(stream)),
            None => self.real.load_stream().await,
        }
    }
    async fn record_stream(&self, state: StreamState) -> Result<()> {
        self.written.record_stream(state).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::SyncStatus;

    #[tokio::test]
    async fn reads_the_real_state_and_never_writes_it() {
        let real = MemoryStateStore::default();
        let mut first = TableState::in_progress("orders");
        first.sync_status = SyncStatus::Success;
        real.record("shop1", first).await.unwrap();
        let scratch = ScratchState::over(Arc::new(real.clone()));
        assert_eq!(scratch.load("shop1").await.unwrap().tables["orders"].sync_status, SyncStatus::Success);

        scratch.record("shop1", TableState::in_progress("orders")).await.unwrap();
        scratch.record("shop1", TableState::in_progress("users")).await.unwrap();
        scratch.record_stream(StreamState::new("streaming", chrono::NaiveDateTime::default())).await.unwrap();
        let seen = scratch.load("shop1").await.unwrap();
        assert_eq!(seen.tables["orders"].sync_status, SyncStatus::Failed, "its own writes are read back");
        assert!(seen.tables.contains_key("users"));
        assert!(scratch.load_stream().await.unwrap().is_some());

        let untouched = real.load("shop1").await.unwrap();
        assert_eq!(untouched.tables["orders"].sync_status, SyncStatus::Success);
        assert!(!untouched.tables.contains_key("users"));
        assert!(real.load_stream().await.unwrap().is_none(), "no position reaches the real store");
        let _held = real.lock(LockScope::Whole, None).await.unwrap();
        scratch.lock(LockScope::Whole, None).await.expect("the real lock is not taken");
    }
}
