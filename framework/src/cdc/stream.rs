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
//!
//! This file holds the loop over the log's events; `refresh.rs` decides which tables the
//! stream carries and from where, `apply.rs` applies a batch and records the position.

use std::collections::{BTreeMap, HashMap};
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

mod apply;
mod refresh;

use apply::{Cadence, behind};

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
        let state = state.unwrap_or_else(|| StreamState::new("starting", Utc::now().naive_utc()));
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
                    if self.stopping() {
                        // Stopped while waiting out the error: the run ends on it, as failed.
                        self.report.error = Some(e.to_string());
                        break;
                    }
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

    /// Where the stream starts: the oldest position a carried table needs.
    async fn start(&self) -> Result<ChangePosition> {
        match self.tracked.values().map(|t| &t.after).min_by(|a, b| a.seq.cmp(&b.seq)) {
            Some(p) => Ok(p.clone()),
            None => Ok(self.log.status().await?.head),
        }
    }

    fn request(&self, from: ChangePosition) -> Result<ChangeRequest> {
        // run_cdc resolved the tenants (patterns included) into the selection.
        let databases = self.selection.databases.clone().unwrap_or_default().into_iter().collect();
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
                    let now = crate::runner::discover_configured(&self.runner, &table).await;
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
