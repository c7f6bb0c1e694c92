//! One target's change stream: snapshot what it does not carry yet, stream the log from the
//! oldest position a table needs, stage each change of a carried table that is newer than
//! that table's position, apply the batch at a transaction boundary every
//! `cdc_flush_seconds`, and only then record the new position.
//!
//! ```text
//! refresh ─► snapshot runs (runner, capture_position) ─► tracked tables + their positions
//!    ▲                                                              │
//!    │ new table, schema change, purged position, error             ▼
//!    └──────── flush at a boundary ◄── batch ◄── events (reader task) ◄── open(from = min position)
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::change::{ChangeEvent, ChangeLog, ChangePosition, ChangeRequest, ChangeSeq, ChangeTable};
use crate::error::{ConnectorError, Result};
use crate::events::Event;
use crate::runner::{CdcSnapshots, RunOptions, Runner, Target, fingerprint};
use crate::schema::{TableRef, TableSchema};
use crate::sink::{ChangeTracking, TargetTable};
use crate::state::{StreamState, SyncMode, TableState};

use super::StreamReport;
use super::batch::Batch;
use super::snapshot::snapshot_reason;

/// How the stream runs.
#[derive(Debug, Clone)]
pub(super) struct StreamConfig {
    pub catch_up: bool,
    pub flush_every: Duration,
    pub stream_id: u32,
    pub tracking: ChangeTracking,
    pub heartbeat: Duration,
}

/// A table the stream carries.
#[derive(Debug, Clone)]
struct Tracked {
    schema: Arc<TableSchema>,
    excluded: Vec<String>,
    /// Changes at or before this position are in the target already.
    after: ChangePosition,
    /// A first batch should reach this far (see `CdcTableState::settled`).
    settled: Option<ChangeSeq>,
    /// Its rows are ignored until a new snapshot (a schema change was seen).
    paused: bool,
}

/// What to refresh before the stream opens again.
enum Refresh {
    All,
    Only(BTreeMap<TableRef, String>),
    Nothing,
}

/// Why a stream ended.
enum End {
    Stopped,
    CaughtUp,
    /// Tables to snapshot (with the reason) before streaming on.
    Snapshot(BTreeMap<TableRef, String>),
}

/// A table that stopped streaming, and when to try a snapshot again.
struct Halted {
    reason: String,
    retry_at: Instant,
    backoff: Duration,
}

pub(super) struct TargetStream<'a> {
    /// The pipeline's runner with this target only (its snapshot runs).
    runner: Runner,
    target: Target,
    log: Arc<dyn ChangeLog>,
    selection: &'a RunOptions,
    config: StreamConfig,
    tracked: BTreeMap<TableRef, Tracked>,
    target_tables: HashMap<String, TargetTable>,
    halted: BTreeMap<TableRef, Halted>,
    state: StreamState,
    report: StreamReport,
    /// Log events read since the last checkpoint.
    events_since_checkpoint: u64,
    /// When the stream's state was last saved.
    saved_at: Instant,
    /// Catching up: the log's head when the run started; the run ends once it is applied.
    catch_up_to: Option<ChangePosition>,
}

impl<'a> TargetStream<'a> {
    pub fn new(
        runner: &Runner,
        target: &Target,
        log: Arc<dyn ChangeLog>,
        selection: &'a RunOptions,
        config: StreamConfig,
        state: Option<StreamState>,
    ) -> Self {
        let mut one = runner.clone();
        one.targets = vec![target.clone()];
        let state = state.unwrap_or_else(|| StreamState {
            applied: None,
            applied_commit_at: None,
            applying_to: None,
            head: None,
            lag_seconds: None,
            status: "starting".into(),
            error: None,
            updated_at: Utc::now().naive_utc(),
        });
        Self {
            runner: one,
            target: target.clone(),
            log,
            selection,
            config,
            tracked: BTreeMap::new(),
            target_tables: HashMap::new(),
            halted: BTreeMap::new(),
            state,
            report: StreamReport { target: target.id.clone(), ..Default::default() },
            events_since_checkpoint: 0,
            saved_at: Instant::now(),
            catch_up_to: None,
        }
    }

    fn stopping(&self) -> bool {
        self.runner.stop.load(Ordering::SeqCst)
    }

    /// Runs until stopped (or, catching up, until the log's end as of now is applied).
    pub async fn run(mut self) -> StreamReport {
        let mut refresh = Refresh::All;
        let mut failures = 0u32;
        let policy = self.runner.settings.retry_policy();
        if self.config.catch_up {
            match self.log.status().await {
                Ok(status) => self.catch_up_to = Some(status.head),
                Err(e) => {
                    self.report.error = Some(e.to_string());
                    return self.report;
                }
            }
        }
        loop {
            if self.stopping() {
                break;
            }
            let pending = std::mem::replace(&mut refresh, Refresh::Nothing);
            let attempt = match self.refresh(pending).await {
                Ok(()) => self.stream_once().await,
                Err(e) => {
                    // A refresh that failed half way leaves no half-known tables behind: the
                    // next attempt starts from the state again.
                    self.tracked.clear();
                    self.target_tables.clear();
                    Err(e)
                }
            };
            match attempt {
                Ok(End::Stopped) | Ok(End::CaughtUp) => break,
                Ok(End::Snapshot(tables)) => {
                    failures = 0;
                    refresh = Refresh::Only(tables);
                }
                Err(e) if e.is_position_lost() => {
                    tracing::warn!(target = %self.target.id, error = %e, "the stream's position is gone; taking new snapshots");
                    match self.lost_tables().await {
                        Ok(lost) => refresh = Refresh::Only(lost),
                        Err(e2) => {
                            failures += 1;
                            self.note_error(&e2).await;
                            refresh = Refresh::All;
                        }
                    }
                }
                Err(e) => {
                    failures += 1;
                    self.note_error(&e).await;
                    if self.config.catch_up && (!e.is_transient() || failures > policy.max_retries) {
                        self.report.error = Some(e.to_string());
                        break;
                    }
                    // Transient (a restart, a dropped connection): open again from the last
                    // applied position. Permanent: wait long, the operator has been told.
                    let wait = if e.is_transient() {
                        policy.delay(failures.saturating_sub(1)).min(Duration::from_secs(60))
                    } else {
                        Duration::from_secs(300)
                    };
                    tracing::warn!(target = %self.target.id, error = %e, wait_secs = wait.as_secs_f64(), "change stream interrupted; opening it again");
                    self.sleep_unless_stopped(wait).await;
                    if self.tracked.is_empty() {
                        refresh = Refresh::All;
                    }
                }
            }
        }
        self.state.status = if self.report.error.is_some() { "failed".into() } else { "stopped".into() };
        self.state.updated_at = Utc::now().naive_utc();
        if let Err(e) = self.target.state.record_stream(self.state.clone()).await {
            tracing::warn!(target = %self.target.id, error = %e, "could not save the stream's final state");
        }
        self.report.position = self.state.applied.clone();
        self.report.lag_seconds = self.state.lag_seconds;
        self.report
    }

    async fn note_error(&mut self, e: &ConnectorError) {
        self.state.status = "failed".into();
        self.state.error = Some(e.to_string());
        self.state.updated_at = Utc::now().naive_utc();
        let _ = self.target.state.record_stream(self.state.clone()).await;
    }

    async fn sleep_unless_stopped(&self, wait: Duration) {
        let until = Instant::now() + wait;
        while Instant::now() < until && !self.stopping() {
            tokio::time::sleep(Duration::from_millis(200).min(until - Instant::now())).await;
        }
    }

    /// The selected tables: every configured database (or `--databases`) × its tables.
    async fn scope(&self) -> Result<BTreeSet<TableRef>> {
        let mut out = BTreeSet::new();
        for db in self.runner.select_databases(self.selection)? {
            match self.runner.select_tables(&db, self.selection).await {
                Ok(tables) => out.extend(tables.into_iter().map(|t| TableRef::new(&db, t))),
                // A tenant that cannot be listed (not created yet) joins when its tables appear.
                Err(e) => {
                    tracing::warn!(database = %db, error = %e, "cannot list the tables; they join the stream when they appear")
                }
            }
        }
        Ok(out)
    }

    /// Whether a table seen in the log is one this pipeline syncs.
    fn wanted(&self, table: &TableRef) -> bool {
        let db_ok = self.runner.source.databases().contains(&table.database)
            && self.selection.databases.as_ref().is_none_or(|d| d.contains(&table.database));
        let table_ok = (self.runner.tables.is_empty() || self.runner.tables.contains(&table.table))
            && self.selection.tables.as_ref().is_none_or(|t| t.contains(&table.table));
        db_ok && table_ok
    }

    /// Snapshots what needs it in the scope, then loads the scope's tables and positions.
    async fn refresh(&mut self, refresh: Refresh) -> Result<()> {
        self.refresh_at(refresh, 0).await
    }

    async fn refresh_at(&mut self, refresh: Refresh, depth: u8) -> Result<()> {
        let (scope, mut forced): (BTreeSet<TableRef>, BTreeMap<TableRef, String>) = match refresh {
            Refresh::Nothing => return Ok(()),
            Refresh::All => (self.scope().await?, BTreeMap::new()),
            Refresh::Only(tables) => (tables.keys().cloned().collect(), tables),
        };
        if scope.is_empty() {
            return Ok(());
        }
        let status = self.log.status().await?;
        // Positions the log no longer has, or another server's: those tables start over.
        for table in &scope {
            if forced.contains_key(table) {
                continue;
            }
            let prior = self.load_state(table).await?;
            let Some(cdc) = prior.as_ref().and_then(|p| p.cdc.as_ref()) else { continue };
            let after = self.position_after(&cdc.snapshot);
            if after.server != status.head.server {
                forced.insert(table.clone(), format!("the source is another server now ({})", status.head.server));
            } else if after.seq < status.oldest.seq {
                forced.insert(
                    table.clone(),
                    format!("the log before {} was purged from the server", status.oldest.coordinates),
                );
            }
        }
        // Tables the stream carries already take no snapshot (and need no target to be up).
        let mut needs: BTreeSet<TableRef> = BTreeSet::new();
        for t in &scope {
            self.tracked.remove(t);
            if let Some(h) = self.halted.get(t) {
                if h.retry_at > Instant::now() {
                    continue;
                }
                forced.entry(t.clone()).or_insert_with(|| format!("trying again after: {}", h.reason));
            }
            if forced.contains_key(t) || !self.track(t, false).await? {
                needs.insert(t.clone());
            }
        }
        // One snapshot run per table name, for the tenants that need one.
        let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in &needs {
            by_name.entry(t.table.clone()).or_default().push(t.database.clone());
        }
        for (name, dbs) in &by_name {
            if self.stopping() {
                return Ok(());
            }
            let resnapshot = forced
                .iter()
                .filter(|(t, _)| t.table == *name)
                .map(|(t, why)| ((self.target.id.clone(), t.clone()), why.clone()))
                .collect();
            let options = RunOptions {
                databases: Some(dbs.clone()),
                tables: Some(vec![name.clone()]),
                cdc: Some(CdcSnapshots { tracking: self.config.tracking, resnapshot }),
                ..self.selection.clone()
            };
            let report = self.runner.run_locked(&options).await?;
            // The report keeps each table's latest snapshot: one that failed and then worked
            // (a tenant created later) is not a failure.
            for o in report.outcomes {
                self.report.snapshots.retain(|s| (&s.database, &s.table) != (&o.database, &o.table));
                self.report.snapshots.push(o);
            }
        }
        for t in &needs {
            self.track(t, true).await?;
        }
        let names: BTreeSet<String> = scope.iter().map(|t| t.table.clone()).collect();
        let mut renew = BTreeMap::new();
        for name in &names {
            renew.append(&mut self.rebuild_target_table(name).await?);
        }
        if !renew.is_empty() && depth < 2 {
            // Once more for those: their snapshot goes into the target table as it is now.
            return Box::pin(self.refresh_at(Refresh::Only(renew), depth + 1)).await;
        }
        Ok(())
    }

    async fn load_state(&self, table: &TableRef) -> Result<Option<TableState>> {
        Ok(self.target.state.load(&table.database).await?.table(&table.table).cloned())
    }

    /// A table's own position, or the stream's when that is later (and of the same server).
    fn position_after(&self, snapshot: &ChangePosition) -> ChangePosition {
        match &self.state.applied {
            Some(a) if a.server == snapshot.server && a.seq > snapshot.seq => a.clone(),
            _ => snapshot.clone(),
        }
    }

    /// Starts carrying `table` if its state says a snapshot for this stream is in the target;
    /// whether it does. After a snapshot attempt, a table that still cannot stream is held
    /// back (and tried again later).
    async fn track(&mut self, table: &TableRef, after_snapshot: bool) -> Result<bool> {
        let Some(prior) = self.load_state(table).await? else { return Ok(false) };
        let options = self.runner.table_options.get(&table.table).cloned().unwrap_or_default();
        let discovered = self.runner.retry(&format!("discover {table}"), || self.runner.source.discover(table)).await;
        let schema = match discovered.and_then(|s| crate::runner::apply_table_options(s, &options)) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                if after_snapshot {
                    tracing::warn!(%table, error = %e, "cannot discover the table; it does not stream");
                }
                return Ok(false);
            }
        };
        if let Some(reason) = snapshot_reason(&schema, Some(&prior), None, self.config.tracking) {
            if after_snapshot && (prior.cdc.is_some() || prior.sync_status == crate::state::SyncStatus::Failed) {
                let why = prior.error_message.clone().unwrap_or(reason);
                self.halted.entry(table.clone()).or_insert_with(|| Halted {
                    reason: why,
                    retry_at: Instant::now() + Duration::from_secs(60),
                    backoff: Duration::from_secs(60),
                });
            }
            return Ok(false);
        }
        let Some(cdc) = prior.cdc else { return Ok(false) };
        self.halted.remove(table);
        self.report.stopped_tables.retain(|(t, _)| t != table);
        self.tracked.insert(
            table.clone(),
            Tracked {
                schema,
                excluded: options.exclude_columns.clone(),
                after: self.position_after(&cdc.snapshot),
                settled: cdc.settled,
                paused: false,
            },
        );
        Ok(true)
    }

    /// The target table of a table name from its tracked tenants, prepared in the target
    /// (created or evolved as needed). Returns the tenants whose state belongs to another
    /// instance of the target table (dropped and created again since): they need a snapshot.
    async fn rebuild_target_table(&mut self, name: &str) -> Result<BTreeMap<TableRef, String>> {
        let mut renew = BTreeMap::new();
        let schemas: Vec<Arc<TableSchema>> =
            self.tracked.iter().filter(|(t, _)| t.table == name).map(|(_, t)| t.schema.clone()).collect();
        if schemas.is_empty() {
            self.target_tables.remove(name);
            return Ok(renew);
        }
        let options = self.runner.table_options.get(name).cloned().unwrap_or_default();
        let unified = crate::runner::unify(name, schemas, &options, &self.runner.settings.system_columns);
        for (table, e) in unified.rejected {
            self.halt(&table, &e).await;
        }
        let Some(mut target_table) = unified.target else {
            self.target_tables.remove(name);
            return Ok(renew);
        };
        target_table.changes = Some(self.config.tracking);
        let prepared = self.target.sink.prepare(&target_table).await?;
        for w in &prepared.warnings {
            tracing::warn!(table = %name, target = %self.target.id, "{w}");
        }
        let tenants: Vec<TableRef> = self.tracked.keys().filter(|t| t.table == name).cloned().collect();
        for t in tenants {
            let stamp = self.load_state(&t).await?.and_then(|s| s.target);
            let same = match (&stamp, &prepared.generation) {
                (Some(s), Some(g)) => {
                    s.generation.as_ref() == Some(g) && s.destination == self.target.sink.destination()
                }
                (Some(s), None) => s.destination == self.target.sink.destination(),
                (None, _) => false,
            };
            if !same {
                self.tracked.remove(&t);
                renew.insert(t, "the target table is new (created, or dropped and recreated)".to_string());
            }
        }
        self.target_tables.insert(name.to_string(), target_table);
        Ok(renew)
    }

    /// Stops streaming a table: its state says why, and a later snapshot takes it up again.
    async fn halt(&mut self, table: &TableRef, error: &ConnectorError) {
        self.tracked.remove(table);
        let backoff =
            self.halted.get(table).map_or(Duration::from_secs(60), |h| (h.backoff * 2).min(Duration::from_secs(3600)));
        self.halted
            .insert(table.clone(), Halted { reason: error.to_string(), retry_at: Instant::now() + backoff, backoff });
        Event::StreamTableStopped { table: table.clone(), target: self.target.id.clone(), reason: error.to_string() }
            .emit(&self.runner.listeners);
        self.report.stopped_tables.push((table.clone(), error.to_string()));
        let prior = self.load_state(table).await.ok().flatten();
        let state = TableState::failed(&table.table, prior.as_ref(), Some(SyncMode::Cdc), error);
        if let Err(e) = self.target.state.record(&table.database, state).await {
            tracing::warn!(%table, error = %e, "could not record that the table stopped streaming");
        }
    }

    /// The tables whose positions the log does not have any more.
    async fn lost_tables(&mut self) -> Result<BTreeMap<TableRef, String>> {
        let status = self.log.status().await?;
        let mut lost = BTreeMap::new();
        for (table, t) in &self.tracked {
            if t.after.server != status.head.server || t.after.seq < status.oldest.seq {
                lost.insert(table.clone(), format!("its log position {} is gone from the server", t.after));
            }
        }
        if lost.is_empty() {
            // The server refused a position it says it has: start every table over.
            for (table, t) in &self.tracked {
                lost.insert(table.clone(), format!("the server refused the log position {}", t.after));
            }
        }
        if self.state.applied.as_ref().is_some_and(|a| a.seq < status.oldest.seq || a.server != status.head.server) {
            self.state.applied = None;
        }
        Ok(lost)
    }

    /// Where the stream starts: the oldest position a carried table needs.
    async fn start(&self) -> Result<ChangePosition> {
        match self.tracked.values().map(|t| &t.after).min_by(|a, b| a.seq.cmp(&b.seq)) {
            Some(p) => Ok(p.clone()),
            None => Ok(self.log.status().await?.head),
        }
    }

    fn request(&self, from: ChangePosition) -> Result<ChangeRequest> {
        let databases = self.runner.select_databases(self.selection)?.into_iter().collect();
        let tables = self
            .tracked
            .iter()
            .map(|(t, tr)| (t.clone(), ChangeTable { schema: tr.schema.clone(), excluded: tr.excluded.clone() }))
            .collect();
        Ok(ChangeRequest {
            from,
            databases,
            tables,
            stream_id: self.config.stream_id,
            heartbeat: self.config.heartbeat,
            stop_at_end: self.config.catch_up,
        })
    }

    /// Streams from the oldest needed position until stopped, caught up, or a table needs a
    /// snapshot.
    async fn stream_once(&mut self) -> Result<End> {
        if self.stopping() {
            return Ok(End::Stopped);
        }
        let from = self.start().await?;
        // A batch that was being applied when the last stream ended, or a snapshot read in key
        // ranges: the first time-based apply goes at least this far.
        let floor = self.tracked.values().filter_map(|t| t.settled.clone()).chain(self.state.applying_to.clone()).max();
        let request = self.request(from.clone())?;
        let stream = self.log.open(request).await?;
        tracing::info!(target = %self.target.id, from = %from, tables = self.tracked.len(), "change stream open");
        self.state.status = "streaming".into();
        self.state.error = None;
        let (tx, mut rx) = mpsc::channel::<Result<ChangeEvent>>(64);
        // The reader decodes on its own task, so decoding and staging use both cores; a full
        // channel holds it back.
        let reader = tokio::spawn(async move {
            let mut stream = stream;
            loop {
                let next = stream.next().await;
                let done = !matches!(next, Ok(Some(_)));
                let item = match next {
                    Ok(Some(ev)) => Ok(ev),
                    Ok(None) => break,
                    Err(e) => Err(e),
                };
                if tx.send(item).await.is_err() || done {
                    break;
                }
            }
            stream.close().await;
        });
        let _abort = AbortOnDrop(reader);

        let mut batch = Batch::new(self.runner.settings.batch_size);
        let mut boundary = from;
        let mut boundary_at: Option<DateTime<Utc>> = None;
        let mut in_txn = false;
        let mut cadence = Cadence::new(self.config.flush_every);
        let mut pending: BTreeMap<TableRef, String> = BTreeMap::new();
        let mut truncates: Vec<(TableRef, ChangeSeq)> = Vec::new();
        let mut stop_requested_at: Option<Instant> = None;
        let mut caught_up = false;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            let event = tokio::select! {
                ev = rx.recv() => ev,
                _ = tick.tick() => {
                    if self.stopping() {
                        let since = *stop_requested_at.get_or_insert_with(Instant::now);
                        if !in_txn {
                            self.flush(&mut batch, &boundary, boundary_at, caught_up).await?;
                            return Ok(End::Stopped);
                        }
                        if since.elapsed() > Duration::from_secs(10) {
                            // A long transaction is still arriving: leave it (and this batch)
                            // to the next run, which reads it again from the last position.
                            tracing::warn!(target = %self.target.id, "stopping inside a long transaction; the next run applies it");
                            batch.abandon(&self.target).await;
                            return Ok(End::Stopped);
                        }
                    } else if !in_txn
                        && cadence.due(batch.changes, behind(boundary_at, caught_up, self.config.flush_every))
                        && floor.as_ref().is_none_or(|f| boundary.seq >= *f)
                    {
                        self.flush(&mut batch, &boundary, boundary_at, caught_up).await?;
                        cadence.applied();
                    }
                    continue;
                }
            };
            let Some(event) = event else {
                // The end of the log (catching up).
                self.flush(&mut batch, &boundary, boundary_at, true).await?;
                return Ok(End::CaughtUp);
            };
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    batch.abandon(&self.target).await;
                    return Err(e);
                }
            };
            self.events_since_checkpoint += 1;
            self.report.events += 1;
            match event {
                ChangeEvent::Rows { table, at, changes } => {
                    in_txn = true;
                    caught_up = false;
                    let Some(t) = self.tracked.get(&table).filter(|t| !t.paused) else { continue };
                    let Some(target_table) = self.target_tables.get(&table.table) else {
                        batch.abandon(&self.target).await;
                        return Err(ConnectorError::permanent(format!(
                            "{table} streams without a target table (a bug in connector-run; nothing was applied)"
                        )));
                    };
                    let (schema, after) = (t.schema.clone(), t.after.seq.clone());
                    cadence.staging();
                    for change in changes {
                        if change.seq > after
                            && let Err(e) = batch.push(&self.target, target_table, &schema, change, at).await
                        {
                            batch.abandon(&self.target).await;
                            return Err(e);
                        }
                    }
                }
                ChangeEvent::TableSeen { table, seq } | ChangeEvent::Created { table, seq } => {
                    in_txn = true;
                    if !self.tracked.contains_key(&table) && self.wanted(&table) && seq > boundary.seq {
                        pending.entry(table).or_insert_with(|| "a new table (or tenant) in the log".into());
                    }
                }
                ChangeEvent::SchemaChanged { table, seq, detail } => {
                    in_txn = true;
                    if let Some(t) = self.tracked.get_mut(&table).filter(|t| seq > t.after.seq) {
                        t.paused = true;
                        pending.insert(table, format!("its columns changed in the log ({detail})"));
                    }
                }
                ChangeEvent::Altered { table, seq, statement } => {
                    in_txn = true;
                    let Some(t) = self.tracked.get(&table).filter(|t| seq > t.after.seq) else { continue };
                    let before = fingerprint(&t.schema);
                    let options = self.runner.table_options.get(&table.table).cloned().unwrap_or_default();
                    let now = self
                        .runner
                        .retry(&format!("discover {table}"), || self.runner.source.discover(&table))
                        .await
                        .and_then(|s| crate::runner::apply_table_options(s, &options));
                    if now.as_ref().map_or(true, |s| fingerprint(s) != before) {
                        if let Some(t) = self.tracked.get_mut(&table) {
                            t.paused = true;
                        }
                        pending.insert(table, format!("`{}` changed it", shorten(&statement)));
                    }
                }
                ChangeEvent::Unreadable { table, seq, error } => {
                    in_txn = true;
                    if self.tracked.get(&table).is_some_and(|t| seq > t.after.seq) {
                        self.halt(&table, &ConnectorError::permanent(error)).await;
                    }
                }
                ChangeEvent::Truncated { table, seq, .. } => {
                    in_txn = true;
                    if self.tracked.get(&table).is_some_and(|t| seq > t.after.seq && !t.paused) {
                        truncates.push((table, seq));
                    }
                }
                ChangeEvent::Dropped { table, seq, statement } => {
                    in_txn = true;
                    if self.tracked.get(&table).is_some_and(|t| seq > t.after.seq) {
                        let e = ConnectorError::permanent(format!(
                            "{table} was dropped or renamed in the source (`{}`); it streams again once a table of \
                             that name is back and snapshotted",
                            shorten(&statement)
                        ));
                        // Its changes before the drop are applied with the batch.
                        self.halt(&table, &e).await;
                    }
                }
                ChangeEvent::Commit { position, at } => {
                    in_txn = false;
                    caught_up = false;
                    if !truncates.is_empty() {
                        // Everything before the TRUNCATE first, then the TRUNCATE itself.
                        self.flush(&mut batch, &boundary, boundary_at, false).await?;
                        cadence.applied();
                        for (table, seq) in std::mem::take(&mut truncates) {
                            let Some(target_table) = self.target_tables.get(&table.table) else {
                                return Err(ConnectorError::permanent(format!(
                                    "{table} streams without a target table (a bug in connector-run)"
                                )));
                            };
                            match self.target.sink.truncate(target_table, &table.database, &seq).await {
                                Ok(()) => self.report.truncates += 1,
                                Err(e) if e.is_transient() => return Err(e),
                                Err(e) => self.halt(&table, &e).await,
                            }
                        }
                        boundary = position;
                        boundary_at = Some(at);
                        self.checkpoint(&boundary, boundary_at, false).await?;
                        continue;
                    }
                    boundary = position;
                    boundary_at = Some(at);
                    let retry_due: Vec<TableRef> = self
                        .halted
                        .iter()
                        .filter(|(t, h)| h.retry_at <= Instant::now() && !self.tracked.contains_key(*t))
                        .map(|(t, _)| t.clone())
                        .collect();
                    for t in retry_due {
                        let why = self.halted.get(&t).map(|h| h.reason.clone()).unwrap_or_default();
                        pending.entry(t).or_insert_with(|| format!("trying again after: {why}"));
                    }
                    if !pending.is_empty() {
                        self.flush(&mut batch, &boundary, boundary_at, false).await?;
                        return Ok(End::Snapshot(pending));
                    }
                    if self.catch_up_to.as_ref().is_some_and(|h| boundary.seq >= h.seq) {
                        // Every change committed before the run started is read: apply, end.
                        self.flush(&mut batch, &boundary, boundary_at, false).await?;
                        return Ok(End::CaughtUp);
                    }
                    if cadence.due(batch.changes, behind(boundary_at, false, self.config.flush_every))
                        && floor.as_ref().is_none_or(|f| boundary.seq >= *f)
                    {
                        self.flush(&mut batch, &boundary, boundary_at, false).await?;
                        cadence.applied();
                    }
                    if stop_requested_at.is_some() {
                        self.flush(&mut batch, &boundary, boundary_at, false).await?;
                        return Ok(End::Stopped);
                    }
                }
                ChangeEvent::Idle { position } => {
                    in_txn = false;
                    caught_up = true;
                    if position.seq >= boundary.seq {
                        boundary = position;
                    }
                    if self.catch_up_to.as_ref().is_some_and(|h| boundary.seq >= h.seq) {
                        self.flush(&mut batch, &boundary, boundary_at, true).await?;
                        return Ok(End::CaughtUp);
                    }
                    if cadence.due(batch.changes, false) {
                        self.flush(&mut batch, &boundary, boundary_at, true).await?;
                        cadence.applied();
                    }
                }
            }
        }
    }

    /// Applies the batch and records `position` as applied. A failure leaves the recorded
    /// position where it was: the next stream reads those changes again, and re-applying them
    /// changes nothing.
    async fn flush(
        &mut self,
        batch: &mut Batch,
        position: &ChangePosition,
        commit_at: Option<DateTime<Utc>>,
        caught_up: bool,
    ) -> Result<()> {
        let open = std::mem::replace(batch, Batch::new(self.runner.settings.batch_size));
        if !open.is_empty() {
            self.state.applying_to = Some(position.seq.clone());
            self.state.updated_at = Utc::now().naive_utc();
            self.target.state.record_stream(self.state.clone()).await?;
            let applied = match open.apply(&self.target, &self.target_tables, &self.runner.listeners).await {
                Ok(a) => a,
                Err(e) => {
                    if let Some(handle) = e.in_doubt() {
                        // An apply whose outcome is unknown must end before anything newer is
                        // applied, or it could land after it.
                        self.resolve(handle).await;
                    }
                    return Err(e);
                }
            };
            self.report.upserts += applied.upserts;
            self.report.deletes += applied.deletes;
            self.report.flushes += 1;
            for (table, e) in applied.refused {
                self.halt(&table, &e).await;
            }
        } else if self.state.applied.as_ref() == Some(position) && self.saved_at.elapsed() < Duration::from_secs(30) {
            // Nothing new: the state is saved again only now and then, so `status` can tell a
            // live stream from a dead one.
            return Ok(());
        }
        self.checkpoint(position, commit_at, caught_up).await
    }

    async fn resolve(&self, handle: &str) {
        let mut wait = Duration::from_secs(1);
        loop {
            match self.target.sink.resolve(handle).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(target = %self.target.id, %handle, error = %e, "an apply in doubt is not settled yet");
                    if self.stopping() {
                        return;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    /// Records that everything before `position` is applied.
    async fn checkpoint(
        &mut self,
        position: &ChangePosition,
        commit_at: Option<DateTime<Utc>>,
        caught_up: bool,
    ) -> Result<()> {
        let now = Utc::now();
        self.state.applied = Some(position.clone());
        if commit_at.is_some() {
            self.state.applied_commit_at = commit_at;
        }
        self.state.applying_to = None;
        let lag = if caught_up {
            0.0
        } else {
            self.state.applied_commit_at.map_or(0.0, |t| ((now - t).num_milliseconds() as f64 / 1000.0).max(0.0))
        };
        self.state.lag_seconds = Some(lag);
        if let Ok(status) = self.log.status().await {
            self.state.head = Some(status.head);
        }
        self.state.status = "streaming".into();
        self.state.error = None;
        self.state.updated_at = now.naive_utc();
        self.target.state.record_stream(self.state.clone()).await?;
        self.saved_at = Instant::now();
        // Tables whose own position is older now follow the stream's.
        for t in self.tracked.values_mut() {
            if t.after.seq < position.seq && t.after.server == position.server {
                t.after = position.clone();
                t.settled = None;
            }
        }
        Event::StreamCheckpointed {
            target: self.target.id.clone(),
            position: position.to_string(),
            events: std::mem::take(&mut self.events_since_checkpoint),
            lag_seconds: lag,
        }
        .emit(&self.runner.listeners);
        Ok(())
    }
}

/// When to apply. While the stream keeps up, a batch is applied once it is
/// `cdc_flush_seconds` old (a batch with nothing in it only records the position, as often).
/// While it reads a backlog (its changes are older than that), batches are applied every
/// 30 s at the least, or at 100,000 changes: an apply costs about the same whatever its size.
struct Cadence {
    every: Duration,
    last: Instant,
    /// When the open batch took its first change.
    opened: Option<Instant>,
}

impl Cadence {
    fn new(every: Duration) -> Self {
        Self { every, last: Instant::now(), opened: None }
    }

    /// A change is being staged.
    fn staging(&mut self) {
        self.opened.get_or_insert_with(Instant::now);
    }

    fn due(&self, changes: u64, behind: bool) -> bool {
        match self.opened {
            None => self.last.elapsed() >= self.every,
            Some(opened) if behind => opened.elapsed() >= self.every.max(Duration::from_secs(30)) || changes >= 100_000,
            Some(opened) => opened.elapsed() >= self.every,
        }
    }

    fn applied(&mut self) {
        self.last = Instant::now();
        self.opened = None;
    }
}

/// Whether the stream reads a backlog: the last commit it read is older than one apply
/// interval (and at least 5 s).
fn behind(last_commit: Option<DateTime<Utc>>, caught_up: bool, every: Duration) -> bool {
    let Some(at) = last_commit else { return false };
    let lag = (Utc::now() - at).to_std().unwrap_or_default();
    !caught_up && lag > every.max(Duration::from_secs(5))
}

/// A statement for a message: its first line, at most 120 characters.
fn shorten(statement: &str) -> String {
    let line = statement.lines().next().unwrap_or_default().trim();
    if line.chars().count() > 120 {
        format!("{}…", line.chars().take(120).collect::<String>())
    } else {
        line.to_string()
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
