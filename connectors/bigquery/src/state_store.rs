//! State as rows of a BigQuery table, for workers whose disk does not outlive them (Kubernetes
//! Jobs, Cloud Run Jobs): one row per tenant × table × target (`scope`), the change stream's
//! state in a row of its own, and run locks as leased rows of `<table>_locks`.
//!
//! - Writes: each batch of outcomes is one MERGE (atomic: all its rows or none), so a run
//!   that dies leaves every tenant's row as its last commit wrote it, as the JSON files do.
//! - Reads: a locked run is the only writer of its tenants, so the rows are read once, at the
//!   first load, and kept up to date in memory by this store's own writes.
//! - Locks: acquire-then-check. A run upserts its lock row (taking it over when its lease ran
//!   out), then looks for a live row of another owner that conflicts ([`LockScope::conflicts_with`]);
//!   finding one, it withdraws. Of two runs that race, the later check sees the other's row,
//!   so two conflicting runs never both hold. A task renews the lease while the run lasts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use connector_framework::history::HISTORY_RUNS;
use connector_framework::{
    ConnectorError, DatabaseState, LockScope, Result, RunRecord, Shard, StateLock, StateStore, StreamState, TableState,
};
use serde_json::{Value as Json, json};
use tokio::sync::Mutex;

use crate::client::BqClient;
use crate::digest::strings_param;
use crate::merge::qualified;

/// Outcomes per MERGE: BigQuery takes requests up to 10 MB; a batch stays well below.
const BATCH_BYTES: usize = 4 << 20;

/// Every database's state as read, one that could not be parsed an error of its own.
type Cache = BTreeMap<String, std::result::Result<DatabaseState, String>>;

#[derive(Debug)]
pub struct BigQueryStateStore {
    client: BqClient,
    dataset: String,
    table: String,
    scope: String,
    lease: Duration,
    /// Identifies this process's lock rows: host, process and a random part.
    owner: String,
    ready: tokio::sync::OnceCell<()>,
    cache: Mutex<Option<Cache>>,
    calls: AtomicU64,
}

impl BigQueryStateStore {
    pub fn new(client: BqClient, dataset: &str, table: &str, scope: &str, lease: Duration) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let random = uuid::Uuid::new_v4().simple().to_string();
        Self {
            client,
            dataset: dataset.into(),
            table: table.into(),
            scope: scope.into(),
            lease,
            owner: format!("{}:{}:{}", host.trim(), std::process::id(), &random[..8]),
            ready: tokio::sync::OnceCell::new(),
            cache: Mutex::new(None),
            calls: AtomicU64::new(0),
        }
    }

    fn state_table(&self) -> String {
        qualified(self.client.project(), &self.dataset, &self.table)
    }

    fn lock_table(&self) -> String {
        qualified(self.client.project(), &self.dataset, &format!("{}_locks", self.table))
    }

    /// A job id of its own for every statement (a retry adds its attempt).
    fn job_id(&self, what: &str) -> String {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let clean: String = self.owner.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        format!("state_{what}_{clean}_{n}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
    }

    /// The dataset and both tables, created when missing (once per process).
    async fn ensure(&self) -> Result<()> {
        self.ready
            .get_or_try_init(|| async {
                self.client.ensure_dataset(&self.dataset).await?;
                let field = |name: &str, ty: &str| json!({"name": name, "type": ty, "mode": "NULLABLE"});
                let tables = [
                    (
                        self.table.clone(),
                        vec![
                            field("scope", "STRING"),
                            field("kind", "STRING"),
                            field("database", "STRING"),
                            field("table_name", "STRING"),
                            field("state", "STRING"),
                            field("updated_at", "TIMESTAMP"),
                        ],
                    ),
                    (
                        format!("{}_locks", self.table),
                        vec![field("name", "STRING"), field("owner", "STRING"), field("expires_at", "TIMESTAMP")],
                    ),
                ];
                for (id, fields) in tables {
                    if self.client.get_table(&self.dataset, &id).await?.is_none() {
                        let resource = json!({
                            "tableReference": {"projectId": self.client.project(), "datasetId": self.dataset, "tableId": id},
                            "schema": {"fields": fields},
                            "description": "connector-run sync state (docs/deploy.md)",
                        });
                        // Another worker may have created it meanwhile: that is as good.
                        if let Err(e) = self.client.create_table(&self.dataset, resource).await
                            && self.client.get_table(&self.dataset, &id).await?.is_none()
                        {
                            return Err(e);
                        }
                    }
                }
                Ok::<(), ConnectorError>(())
            })
            .await
            .map(|_| ())
    }

    fn param(name: &str, ty: &str, value: &str) -> Json {
        json!({"name": name, "parameterType": {"type": ty}, "parameterValue": {"value": value}})
    }

    /// Runs a statement that returns no rows.
    async fn execute(&self, sql: &str, params: Json, what: &str) -> Result<()> {
        self.ensure().await?;
        self.client.query(sql, params, &self.job_id(what), what).await.map(|_| ())
    }

    async fn select(&self, sql: &str, params: Json, what: &str) -> Result<Vec<Vec<Option<String>>>> {
        self.ensure().await?;
        Ok(self.client.query_rows(sql, params, &self.job_id(what), what).await?.0)
    }

    /// Every table row of this scope, read from BigQuery.
    async fn read_all(&self) -> Result<Cache> {
        let sql = format!(
            "SELECT `database`, table_name, state FROM {} WHERE scope = @scope AND kind = 'table'",
            self.state_table()
        );
        let rows = self.select(&sql, json!([Self::param("scope", "STRING", &self.scope)]), "read").await?;
        let mut cache: Cache = BTreeMap::new();
        for row in rows {
            let cell = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
            let (database, table) = (cell(0), cell(1));
            let entry = cache
                .entry(database.clone())
                .or_insert_with(|| Ok(DatabaseState { database: database.clone(), ..Default::default() }));
            match serde_json::from_str::<TableState>(&cell(2)) {
                Ok(state) => {
                    if let Ok(db) = entry {
                        db.tables.insert(table, state);
                    }
                }
                Err(e) => {
                    *entry = Err(format!(
                        "the state row of {database}.{table} in {} is corrupt ({e}); it was left untouched. \
                         Delete that row to make the table sync in full",
                        self.location()
                    ))
                }
            }
        }
        Ok(cache)
    }

    /// The cached rows, read on first use.
    async fn cached<T>(&self, f: impl FnOnce(&mut Cache) -> T) -> Result<T> {
        let mut guard = self.cache.lock().await;
        if guard.is_none() {
            *guard = Some(self.read_all().await?);
        }
        Ok(f(guard.as_mut().unwrap_or_else(|| unreachable!("filled above"))))
    }

    /// One MERGE of these outcomes (all or none).
    async fn merge_batch(&self, records: &[(String, TableState)]) -> Result<()> {
        let mut rows = Vec::with_capacity(records.len());
        for (database, state) in records {
            let text = serde_json::to_string(state).map_err(|e| ConnectorError::permanent(e.to_string()))?;
            rows.push(json!([database, state.table_name, text]).to_string());
        }
        let sql = format!(
            "MERGE {} T USING (SELECT JSON_VALUE(r, '$[0]') AS db, JSON_VALUE(r, '$[1]') AS tn, \
             JSON_VALUE(r, '$[2]') AS st FROM UNNEST(@rows) AS r) S \
             ON T.scope = @scope AND T.kind = 'table' AND T.`database` = S.db AND T.table_name = S.tn \
             WHEN MATCHED THEN UPDATE SET state = S.st, updated_at = CURRENT_TIMESTAMP() \
             WHEN NOT MATCHED THEN INSERT (scope, kind, `database`, table_name, state, updated_at) \
             VALUES (@scope, 'table', S.db, S.tn, S.st, CURRENT_TIMESTAMP())",
            self.state_table()
        );
        let params = json!([Self::param("scope", "STRING", &self.scope), strings_param("rows", &rows)]);
        self.execute(&sql, params, "write").await
    }

    /// A lock row's name: the store's scope (each target's state is locked on its own), then
    /// the lock scope (`default/whole`, `main/shard-1-of-3`).
    fn lock_name(&self, scope: LockScope) -> String {
        format!("{}/{}", self.scope, scope.name())
    }

    /// The live lock rows of other owners in this store's scope: (name without the scope, owner).
    async fn other_locks(&self) -> Result<Vec<(String, String)>> {
        let sql = format!(
            "SELECT name, owner FROM {} WHERE expires_at > CURRENT_TIMESTAMP() AND owner != @owner \
             AND STARTS_WITH(name, @prefix)",
            self.lock_table()
        );
        let prefix = format!("{}/", self.scope);
        let params = json!([Self::param("owner", "STRING", &self.owner), Self::param("prefix", "STRING", &prefix)]);
        let rows = self.select(&sql, params, "locks").await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let name = r.first().cloned().flatten().unwrap_or_default();
                (
                    name.strip_prefix(&prefix).unwrap_or(&name).to_string(),
                    r.get(1).cloned().flatten().unwrap_or_default(),
                )
            })
            .collect())
    }

    /// One attempt at the lock: `Ok(None)` when taken, `Ok(Some(holder))` when another run
    /// holds a conflicting one.
    async fn try_lock(&self, scope: LockScope) -> Result<Option<String>> {
        let name = self.lock_name(scope);
        let take = format!(
            "MERGE {} T USING (SELECT @name AS name) S ON T.name = S.name \
             WHEN MATCHED AND (T.expires_at <= CURRENT_TIMESTAMP() OR T.owner = @owner) THEN \
             UPDATE SET owner = @owner, expires_at = TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL @lease SECOND) \
             WHEN NOT MATCHED THEN INSERT (name, owner, expires_at) \
             VALUES (@name, @owner, TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL @lease SECOND))",
            self.lock_table()
        );
        let params = json!([
            Self::param("name", "STRING", &name),
            Self::param("owner", "STRING", &self.owner),
            Self::param("lease", "INT64", &self.lease.as_secs().to_string()),
        ]);
        self.execute(&take, params, "lock").await?;
        let others = match self.other_locks().await {
            Ok(o) => o,
            Err(e) => {
                // Unchecked, the row must not stay: it would keep the share from everyone.
                let _ = self.delete_lock(&name).await;
                return Err(e);
            }
        };
        let own = scope.name();
        let conflicting = others
            .into_iter()
            .find(|(other, _)| other == &own || parse_lock_name(other).is_none_or(|o| scope.conflicts_with(&o)));
        match conflicting {
            None => Ok(None),
            Some((other, holder)) => {
                self.delete_lock(&name).await?;
                Ok(Some(format!("{holder} holds `{other}`")))
            }
        }
    }

    async fn delete_lock(&self, name: &str) -> Result<()> {
        let sql = format!("DELETE FROM {} WHERE name = @name AND owner = @owner", self.lock_table());
        let params = json!([Self::param("name", "STRING", name), Self::param("owner", "STRING", &self.owner)]);
        self.execute(&sql, params, "unlock").await
    }

    /// Extends the lease; `false` when the row is no longer this owner's (the lease ran out and
    /// another run took the share).
    async fn renew_lock(&self, name: &str) -> Result<bool> {
        let sql = format!(
            "UPDATE {} SET expires_at = TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL @lease SECOND) \
             WHERE name = @name AND owner = @owner",
            self.lock_table()
        );
        let params = json!([
            Self::param("name", "STRING", name),
            Self::param("owner", "STRING", &self.owner),
            Self::param("lease", "INT64", &self.lease.as_secs().to_string()),
        ]);
        self.ensure().await?;
        let outcome = self.client.query(&sql, params, &self.job_id("renew"), "renew").await?;
        Ok(outcome.statistic(&["query", "numDmlAffectedRows"]).is_none_or(|n| n > 0))
    }

    /// A copy for the lock's renewal task (same owner, same client).
    fn handle(&self) -> Self {
        Self {
            client: self.client.clone(),
            dataset: self.dataset.clone(),
            table: self.table.clone(),
            scope: self.scope.clone(),
            lease: self.lease,
            owner: self.owner.clone(),
            ready: self.ready.clone(),
            cache: Mutex::new(None),
            calls: AtomicU64::new(self.calls.load(Ordering::Relaxed) + 1_000_000),
        }
    }
}

/// `whole` or `shard-I-of-N` back into a scope.
fn parse_lock_name(name: &str) -> Option<LockScope> {
    if name == "whole" {
        return Some(LockScope::Whole);
    }
    let rest = name.strip_prefix("shard-")?;
    let (i, n) = rest.split_once("-of-")?;
    Some(LockScope::Shard(Shard { index: i.parse().ok()?, count: n.parse().ok()? }))
}

/// A held lock: its renewal task, and the store to delete its row with.
#[derive(Debug)]
struct LeaseLock {
    store: Arc<BigQueryStateStore>,
    name: String,
    renewal: tokio::task::JoinHandle<()>,
}

#[async_trait]
impl StateLock for LeaseLock {
    async fn release(self: Box<Self>) {
        self.renewal.abort();
        if let Err(e) = self.store.delete_lock(&self.name).await {
            tracing::warn!(lock = %self.name, error = %e, "cannot delete the lock row; it lapses when its lease runs out");
        }
    }
}

impl Drop for LeaseLock {
    fn drop(&mut self) {
        self.renewal.abort();
    }
}

#[async_trait]
impl StateStore for BigQueryStateStore {
    async fn lock(&self, scope: LockScope, wait: Option<Duration>) -> Result<Box<dyn StateLock>> {
        let deadline = wait.map(|w| tokio::time::Instant::now() + w);
        let mut logged = false;
        loop {
            let holder = match self.try_lock(scope).await? {
                None => break,
                Some(holder) => holder,
            };
            if deadline.is_some_and(|d| tokio::time::Instant::now() < d) {
                if !logged {
                    tracing::info!(state = %self.location(), %holder, "another run holds the lock; waiting (--wait-lock)");
                    logged = true;
                }
                // Jittered, so two conflicting waiters do not withdraw in step for ever.
                let jitter = u64::from(uuid::Uuid::new_v4().as_u128() as u16) % 2000;
                tokio::time::sleep(Duration::from_millis(1000 + jitter)).await;
                continue;
            }
            return Err(ConnectorError::config(format!(
                "another connector-run is already syncing these tenants with the state in {} ({holder}; its lease \
                 lasts {} s after its last renewal); wait for it to finish{}",
                self.location(),
                self.lease.as_secs(),
                if wait.is_some() { ", or wait longer with --wait-lock" } else { ", or pass --wait-lock" }
            )));
        }
        // Held now: whatever was read before (by a caller, or while waiting) may be stale.
        *self.cache.lock().await = None;
        let name = self.lock_name(scope);
        let store = Arc::new(self.handle());
        let renewing = store.clone();
        let every = self.lease / 3;
        let lock_name = name.clone();
        let renewal = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match renewing.renew_lock(&lock_name).await {
                    Ok(true) => {}
                    Ok(false) => tracing::error!(
                        lock = %lock_name,
                        "the run lock's lease ran out and another run took it: this run's state writes may now race \
                         it; raise lock_lease_seconds"
                    ),
                    Err(e) => tracing::warn!(lock = %lock_name, error = %e, "cannot renew the run lock's lease"),
                }
            }
        });
        Ok(Box::new(LeaseLock { store, name, renewal }))
    }

    async fn load(&self, database: &str) -> Result<DatabaseState> {
        self.cached(|cache| match cache.get(database) {
            None => Ok(DatabaseState { database: database.into(), ..Default::default() }),
            Some(Ok(db)) => Ok(db.clone()),
            Some(Err(e)) => Err(ConnectorError::permanent(e.clone())),
        })
        .await?
    }

    async fn databases(&self) -> Result<Vec<String>> {
        self.cached(|cache| cache.keys().cloned().collect()).await
    }

    /// Read fresh from BigQuery (the console and the state tools see other workers' writes),
    /// and kept as this store's copy.
    async fn load_all(&self) -> Result<Vec<(String, Result<DatabaseState>)>> {
        let fresh = self.read_all().await?;
        let out =
            fresh.iter().map(|(name, db)| (name.clone(), db.clone().map_err(ConnectorError::permanent))).collect();
        *self.cache.lock().await = Some(fresh);
        Ok(out)
    }

    async fn record(&self, database: &str, state: TableState) -> Result<()> {
        self.record_many(vec![(database.to_string(), state)]).await.pop().unwrap_or(Ok(()))
    }

    /// Each call is a MERGE into one table (whose DML BigQuery queues): a table's tenants go
    /// in one, split only by `BATCH_BYTES`.
    fn record_batch(&self) -> usize {
        usize::MAX
    }

    async fn record_many(&self, records: Vec<(String, TableState)>) -> Vec<Result<()>> {
        // A database whose rows could not be read is never written over.
        let corrupt: Vec<Option<String>> = match self
            .cached(|cache| {
                records.iter().map(|(d, _)| cache.get(d).and_then(|e| e.as_ref().err().cloned())).collect::<Vec<_>>()
            })
            .await
        {
            Ok(c) => c,
            Err(e) => return records.iter().map(|_| Err(e.duplicate())).collect(),
        };
        let mut results: Vec<Result<()>> = Vec::with_capacity(records.len());
        let mut batch: Vec<usize> = Vec::new();
        let mut bytes = 0;
        let mut batches = Vec::new();
        for (i, (_, state)) in records.iter().enumerate() {
            if let Some(e) = &corrupt[i] {
                results.push(Err(ConnectorError::permanent(e.clone())));
                continue;
            }
            results.push(Ok(()));
            bytes += serde_json::to_string(state).map(|t| t.len()).unwrap_or(0) + 64;
            batch.push(i);
            if bytes > BATCH_BYTES {
                batches.push(std::mem::take(&mut batch));
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        for indexes in batches {
            let rows: Vec<(String, TableState)> = indexes.iter().map(|i| records[*i].clone()).collect();
            match self.merge_batch(&rows).await {
                Ok(()) => {
                    let mut guard = self.cache.lock().await;
                    if let Some(cache) = guard.as_mut() {
                        for (database, state) in rows {
                            let entry = cache
                                .entry(database.clone())
                                .or_insert_with(|| Ok(DatabaseState { database, ..Default::default() }));
                            if let Ok(db) = entry {
                                db.tables.insert(state.table_name.clone(), state);
                            }
                        }
                    }
                }
                Err(e) => indexes.iter().for_each(|i| results[*i] = Err(e.duplicate())),
            }
        }
        results
    }

    async fn forget(&self, database: &str, table: Option<&str>) -> Result<Vec<String>> {
        let known = self.read_all().await?;
        let tables: Vec<String> = match known.get(database) {
            Some(Ok(db)) => db.tables.keys().filter(|t| table.is_none_or(|w| w == *t)).cloned().collect(),
            Some(Err(_)) => table.map(|t| vec![t.to_string()]).unwrap_or_default(),
            None => Vec::new(),
        };
        let mut sql = format!(
            "DELETE FROM {} WHERE scope = @scope AND kind = 'table' AND `database` = @database",
            self.state_table()
        );
        let mut params = vec![Self::param("scope", "STRING", &self.scope), Self::param("database", "STRING", database)];
        if let Some(t) = table {
            sql.push_str(" AND table_name = @table");
            params.push(Self::param("table", "STRING", t));
        }
        self.execute(&sql, Json::Array(params), "forget").await?;
        let mut guard = self.cache.lock().await;
        if let Some(cache) = guard.as_mut() {
            match table {
                None => {
                    cache.remove(database);
                }
                Some(t) => {
                    if let Some(Ok(db)) = cache.get_mut(database) {
                        db.tables.remove(t);
                    }
                }
            }
        }
        Ok(tables)
    }

    /// Each read is three queries (tables, stream, history), each billed at least 10 MB.
    fn poll_interval(&self) -> Duration {
        Duration::from_secs(60)
    }

    fn location(&self) -> String {
        format!(
            "bigquery {} {}.{}.{} (scope {})",
            self.client.endpoint().trim_end_matches('/'),
            self.client.project(),
            self.dataset,
            self.table,
            self.scope
        )
    }

    async fn record_run(&self, run: RunRecord) -> Result<()> {
        let text = serde_json::to_string(&run).map_err(|e| ConnectorError::permanent(e.to_string()))?;
        let table = self.state_table();
        // The run, and the runs beyond the last HISTORY_RUNS gone, in one script.
        // One transaction: a retry after a lost race (another shard's write) adds the run once.
        let sql = format!(
            "BEGIN TRANSACTION;\n\
             INSERT INTO {table} (scope, kind, `database`, table_name, state, updated_at) \
             VALUES (@scope, 'run', '', '', @state, CURRENT_TIMESTAMP());\n\
             DELETE FROM {table} WHERE scope = @scope AND kind = 'run' AND updated_at < (\
             SELECT MIN(updated_at) FROM (SELECT updated_at FROM {table} WHERE scope = @scope AND kind = 'run' \
             ORDER BY updated_at DESC LIMIT {HISTORY_RUNS}));\n\
             COMMIT TRANSACTION;"
        );
        let params = json!([Self::param("scope", "STRING", &self.scope), Self::param("state", "STRING", &text)]);
        self.execute(&sql, params, "history").await
    }

    async fn runs(&self) -> Result<Vec<RunRecord>> {
        let sql = format!(
            "SELECT state FROM {} WHERE scope = @scope AND kind = 'run' ORDER BY updated_at DESC LIMIT {HISTORY_RUNS}",
            self.state_table()
        );
        let rows = self.select(&sql, json!([Self::param("scope", "STRING", &self.scope)]), "history").await?;
        let mut runs: Vec<RunRecord> = rows
            .iter()
            .filter_map(|r| r.first().cloned().flatten())
            .filter_map(|t| serde_json::from_str(&t).ok())
            .collect();
        runs.reverse();
        Ok(runs)
    }

    async fn load_stream(&self) -> Result<Option<StreamState>> {
        let sql = format!("SELECT state FROM {} WHERE scope = @scope AND kind = 'stream'", self.state_table());
        let rows = self.select(&sql, json!([Self::param("scope", "STRING", &self.scope)]), "stream").await?;
        match rows.first().and_then(|r| r.first().cloned().flatten()) {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                ConnectorError::permanent(format!(
                    "the change stream's state row in {} is corrupt ({e}); it was left untouched",
                    self.location()
                ))
            }),
        }
    }

    async fn record_stream(&self, state: StreamState) -> Result<()> {
        let text = serde_json::to_string(&state).map_err(|e| ConnectorError::permanent(e.to_string()))?;
        let sql = format!(
            "MERGE {} T USING (SELECT @state AS st) S ON T.scope = @scope AND T.kind = 'stream' \
             WHEN MATCHED THEN UPDATE SET state = S.st, updated_at = CURRENT_TIMESTAMP() \
             WHEN NOT MATCHED THEN INSERT (scope, kind, `database`, table_name, state, updated_at) \
             VALUES (@scope, 'stream', '', '', S.st, CURRENT_TIMESTAMP())",
            self.state_table()
        );
        let params = json!([Self::param("scope", "STRING", &self.scope), Self::param("state", "STRING", &text)]);
        self.execute(&sql, params, "stream").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_names_read_back_as_their_scopes() {
        for scope in [LockScope::Whole, LockScope::Shard(Shard { index: 2, count: 5 })] {
            assert_eq!(parse_lock_name(&scope.name()), Some(scope));
        }
        assert_eq!(parse_lock_name("shard-x-of-2"), None);
    }
}
