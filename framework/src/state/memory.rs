//! State held in memory: for tests, and as the write side of [`super::ScratchState`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{ConnectorError, Result};
use crate::state::{DatabaseState, LockScope, StateLock, StateStore, StreamState, TableState};

/// State in memory, with a lock that refuses (or waits for) a second holder.
#[derive(Debug, Default, Clone)]
pub struct MemoryStateStore {
    pub databases: Arc<Mutex<HashMap<String, DatabaseState>>>,
    pub stream: Arc<Mutex<Option<StreamState>>>,
    /// What [`StateStore::record_batch`] says (`None`: the trait's default).
    pub record_batch: Option<usize>,
    /// How many records each [`StateStore::record_many`] call brought, in order.
    pub batches: Arc<Mutex<Vec<usize>>>,
    locked: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug)]
struct MemoryLock(#[allow(dead_code)] tokio::sync::OwnedMutexGuard<()>);
impl StateLock for MemoryLock {}

#[async_trait]
impl StateStore for MemoryStateStore {
    /// One lock for every scope: a test's runs never share a memory store.
    async fn lock(&self, _scope: LockScope, wait: Option<Duration>) -> Result<Box<dyn StateLock>> {
        let busy = || ConnectorError::config("another run holds the lock of this memory state");
        let guard = match wait {
            None => self.locked.clone().try_lock_owned().map_err(|_| busy())?,
            Some(w) => tokio::time::timeout(w, self.locked.clone().lock_owned()).await.map_err(|_| busy())?,
        };
        Ok(Box::new(MemoryLock(guard)))
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
    fn record_batch(&self) -> usize {
        self.record_batch.unwrap_or(crate::state::DEFAULT_RECORD_BATCH)
    }
    async fn record_many(&self, records: Vec<(String, TableState)>) -> Vec<Result<()>> {
        self.batches.lock().unwrap_or_else(|p| p.into_inner()).push(records.len());
        let mut out = Vec::with_capacity(records.len());
        for (database, state) in records {
            out.push(self.record(&database, state).await);
        }
        out
    }
    async fn databases(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self.databases.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        names.sort();
        Ok(names)
    }
    async fn forget(&self, database: &str, table: Option<&str>) -> Result<Vec<String>> {
        let mut dbs = self.databases.lock().unwrap_or_else(|p| p.into_inner());
        Ok(match table {
            None => dbs.remove(database).map(|d| d.tables.into_keys().collect()).unwrap_or_default(),
            Some(t) => {
                dbs.get_mut(database).and_then(|d| d.tables.remove(t)).map(|_| vec![t.to_string()]).unwrap_or_default()
            }
        })
    }
    fn location(&self) -> String {
        "memory".into()
    }
    async fn load_stream(&self) -> Result<Option<StreamState>> {
        Ok(self.stream.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
    async fn record_stream(&self, state: StreamState) -> Result<()> {
        *self.stream.lock().unwrap_or_else(|p| p.into_inner()) = Some(state);
        Ok(())
    }
}
