//! The runner: plans each table, reads it once, stages it in every target, commits per target
//! table, and records state only after a commit.
//!
//! Per source table name (shared by all tenants):
//! discover every tenant → union schema → `Sink::prepare` → per tenant (in parallel, bounded):
//! plan → read into a bounded channel → `StagingWriter` per target → per target one
//! `Sink::commit` for all staged tenants → `StateStore::record` per tenant.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{NaiveDateTime, Utc};
use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc};

use crate::error::{ConnectorError, Result};
use crate::events::{Event, EventListener};
use crate::pipeline::{Settings, TableOptions};
use crate::report::{OutcomeStatus, RunReport, TableOutcome};
use crate::schema::{Column, KeySource, LogicalType, TableRef, TableSchema};
use crate::state::{DatabaseState, ResumePoint, SyncMode, SyncStatus, TableState, Watermark};
use crate::traits::{
    PlanOptions, ReadRange, ReadRequest, ReadSummary, Sink, Source, Staged, StagingWriter, StateStore, Strategy,
    TablePlan, TargetOptions, TargetTable,
};
use crate::value::Value;

/// Aborts a spawned task when dropped, so an abandoned attempt leaves no reader behind.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A read running in its own task, and the channel its batches arrive on. Dropping it stops
/// the read.
struct StartedRead {
    table: TableRef,
    task: AbortOnDrop<Result<ReadSummary>>,
    rx: mpsc::Receiver<crate::value::RowBatch>,
}

/// One destination: a sink and the state that tracks what it holds.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: String,
    pub sink: Arc<dyn Sink>,
    pub state: Arc<dyn StateStore>,
}

/// Command-line choices for one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub force_full: bool,
    pub dry_run: bool,
    /// Restrict to these databases (must be configured ones).
    pub databases: Option<Vec<String>>,
    /// Restrict to these tables.
    pub tables: Option<Vec<String>>,
}

/// A built pipeline, ready to run.
#[derive(Debug)]
pub struct Runner {
    pub source: Arc<dyn Source>,
    pub targets: Vec<Target>,
    pub strategy: Arc<dyn Strategy>,
    pub settings: Settings,
    pub tables: Vec<String>,
    pub table_options: BTreeMap<String, TableOptions>,
    pub listeners: Vec<Arc<dyn EventListener>>,
    /// Set to stop starting tables (SIGTERM); tables already started finish and commit.
    pub stop: Arc<std::sync::atomic::AtomicBool>,
}

/// What one tenant's read and staging produced for each target.
struct TenantResult {
    schema: Arc<TableSchema>,
    read: Option<ReadSummary>,
    elapsed: Duration,
    retries: u32,
    /// Per target id: the plan and the staged data, or why it failed.
    per_target: HashMap<String, (TablePlan, Result<Staged>)>,
    priors: HashMap<String, Option<TableState>>,
}

impl Runner {
    /// Runs every selected table of every selected database and reports each outcome.
    /// Fails as a whole only on problems no table can get past (lock held, bad selection).
    pub async fn run(&self, options: &RunOptions) -> Result<RunReport> {
        let started = Instant::now();
        let _locks = if options.dry_run {
            Vec::new()
        } else {
            let mut locks = Vec::new();
            for t in &self.targets {
                locks.push(t.state.lock().await?);
            }
            locks
        };
        let databases = self.select_databases(options)?;
        let mut by_table: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut outcomes = Vec::new();
        for db in &databases {
            match self.select_tables(db, options).await {
                Ok(tables) => {
                    for t in tables {
                        by_table.entry(t).or_default().push(db.clone());
                    }
                }
                Err(e) => outcomes.extend(self.fail_everywhere(&TableRef::new(db, "*"), None, &e, options).await),
            }
        }
        let reads = Arc::new(Semaphore::new(self.settings.concurrency));
        let not_started = std::sync::atomic::AtomicUsize::new(0);
        let mut per_table = futures::stream::iter(by_table)
            .map(|(table, dbs)| {
                let reads = reads.clone();
                let not_started = &not_started;
                async move {
                    if self.stop.load(std::sync::atomic::Ordering::SeqCst) {
                        not_started.fetch_add(dbs.len(), std::sync::atomic::Ordering::SeqCst);
                        return Vec::new();
                    }
                    self.sync_table(&table, &dbs, options, &reads).await
                }
            })
            .buffer_unordered(self.settings.concurrency);
        while let Some(mut o) = per_table.next().await {
            outcomes.append(&mut o);
        }
        drop(per_table);
        outcomes.sort_by(|a, b| (&a.database, &a.table, &a.target).cmp(&(&b.database, &b.table, &b.target)));
        Ok(RunReport {
            outcomes,
            elapsed: started.elapsed(),
            dry_run: options.dry_run,
            not_started: not_started.into_inner(),
        })
    }

    fn select_databases(&self, options: &RunOptions) -> Result<Vec<String>> {
        let configured = self.source.databases();
        let Some(wanted) = &options.databases else { return Ok(configured) };
        for w in wanted {
            if !configured.contains(w) {
                return Err(ConnectorError::config(format!(
                    "--databases: `{w}` is not in the pipeline's databases ({})",
                    configured.join(", ")
                )));
            }
        }
        Ok(configured.into_iter().filter(|d| wanted.contains(d)).collect())
    }

    async fn select_tables(&self, database: &str, options: &RunOptions) -> Result<Vec<String>> {
        let mut tables = if self.tables.is_empty() {
            self.retry(&format!("list tables of {database}"), || self.source.list_tables(database)).await?
        } else {
            self.tables.clone()
        };
        if let Some(wanted) = &options.tables {
            tables.retain(|t| wanted.contains(t));
        }
        Ok(tables)
    }

    async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.retry_counted(what, op).await.0
    }

    async fn retry_counted<T, F, Fut>(&self, what: &str, op: F) -> (Result<T>, u32)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut retries = 0;
        let out = self
            .settings
            .retry_policy()
            .run(op, |attempt, e, wait| {
                retries = attempt;
                Event::Retrying { what: what.to_string(), attempt, wait, error: e.to_string() }.emit(&self.listeners);
            })
            .await;
        (out, retries)
    }

    async fn sync_table(
        &self,
        name: &str,
        dbs: &[String],
        options: &RunOptions,
        reads: &Semaphore,
    ) -> Vec<TableOutcome> {
        let table_options = self.table_options.get(name).cloned().unwrap_or_default();
        let mut outcomes = Vec::new();
        let mut schemas = Vec::new();
        let discovered = futures::future::join_all(dbs.iter().map(|db| async move {
            let table = TableRef::new(db, name);
            let r = self.retry(&format!("discover {table}"), || self.source.discover(&table)).await;
            (table, r)
        }))
        .await;
        for (table, found) in discovered {
            match found.and_then(|s| apply_table_options(s, &table_options)) {
                Ok(schema) => schemas.push(Arc::new(schema)),
                Err(e) => outcomes.extend(self.fail_everywhere(&table, None, &e, options).await),
            }
        }
        // Tenants whose key disagrees with the others' fail alone; the table keeps its key.
        let (schemas, mismatched) = split_by_key(name, schemas);
        for (table, e) in mismatched {
            outcomes.extend(self.fail_everywhere(&table, None, &e, options).await);
        }
        if schemas.is_empty() {
            return outcomes;
        }
        let target_table = match union_target(name, &schemas, &table_options) {
            Ok(t) => t,
            Err(e) => {
                for s in &schemas {
                    outcomes.extend(self.fail_everywhere(&s.table, None, &e, options).await);
                }
                return outcomes;
            }
        };
        if options.dry_run {
            for s in &schemas {
                outcomes.extend(self.dry_run_outcomes(s, &target_table, &table_options, options).await);
            }
            return outcomes;
        }

        let mut live = Vec::new();
        for target in &self.targets {
            let prepared =
                self.retry(&format!("prepare {}:{name}", target.id), || target.sink.prepare(&target_table)).await;
            match prepared {
                Ok(()) => live.push(target),
                Err(e) => {
                    for s in &schemas {
                        outcomes.push(self.record_failure(target, &s.table, None, &e, 0, Duration::ZERO).await);
                    }
                }
            }
        }
        if live.is_empty() {
            return outcomes;
        }

        let tenants: Vec<TenantResult> = futures::stream::iter(schemas.iter().cloned())
            .map(|schema| {
                let live = &live;
                let target_table = &target_table;
                let table_options = &table_options;
                async move {
                    let _permit = reads.acquire().await;
                    self.stage_tenant(schema, target_table, live, table_options, options).await
                }
            })
            .buffer_unordered(self.settings.concurrency)
            .collect()
            .await;

        for target in live {
            let mut committed: Vec<&TenantResult> = Vec::new();
            let mut staged: Vec<Staged> = Vec::new();
            for t in &tenants {
                let Some((plan, result)) = t.per_target.get(&target.id) else { continue };
                match result {
                    Ok(s) => {
                        committed.push(t);
                        staged.push(s.clone());
                    }
                    Err(e) => {
                        outcomes.push(
                            self.record_failure(target, &t.schema.table, Some(plan.mode), e, t.retries, t.elapsed)
                                .await,
                        );
                    }
                }
            }
            if staged.is_empty() {
                continue;
            }
            let started = Instant::now();
            let (result, commit_retries) = self
                .retry_counted(&format!("commit {}:{name}", target.id), || target.sink.commit(&target_table, &staged))
                .await;
            target.sink.discard(&staged).await;
            match result {
                Ok(_) => {
                    let rows: u64 = staged.iter().map(|s| s.rows).sum();
                    Event::TableCommitted {
                        table: name.to_string(),
                        target: target.id.clone(),
                        tenants: staged.len(),
                        rows,
                        elapsed: started.elapsed(),
                    }
                    .emit(&self.listeners);
                    for t in committed {
                        let elapsed = t.elapsed + started.elapsed();
                        outcomes.push(self.record_success(target, t, elapsed, commit_retries).await);
                    }
                }
                Err(e) => {
                    for t in committed {
                        let mode = t.per_target.get(&target.id).map(|(p, _)| p.mode);
                        let elapsed = t.elapsed + started.elapsed();
                        outcomes.push(
                            self.record_failure(target, &t.schema.table, mode, &e, t.retries + commit_retries, elapsed)
                                .await,
                        );
                    }
                }
            }
        }
        outcomes
    }

    async fn load_prior(&self, target: &Target, table: &TableRef) -> Result<Option<TableState>> {
        let state: DatabaseState = target.state.load(&table.database).await?;
        Ok(state.table(&table.table).cloned())
    }

    fn plan_options(&self, options: &RunOptions, table_options: &TableOptions) -> PlanOptions {
        PlanOptions {
            force_full: options.force_full,
            lookback_minutes: self.settings.lookback_minutes,
            cursor_override: table_options.cursor_column.clone(),
            full_after_failure: self.settings.full_after_failure,
            null_cursor: self.settings.null_cursor,
        }
    }

    async fn dry_run_outcomes(
        &self,
        schema: &TableSchema,
        target_table: &TargetTable,
        table_options: &TableOptions,
        options: &RunOptions,
    ) -> Vec<TableOutcome> {
        let mut out = Vec::new();
        for target in &self.targets {
            let prior = match self.load_prior(target, &schema.table).await {
                Ok(p) => p,
                Err(e) => {
                    out.push(TableOutcome::failed(&schema.table, &target.id, None, &e));
                    continue;
                }
            };
            let plan = self.strategy.plan(schema, prior.as_ref(), &self.plan_options(options, table_options));
            let changes = match target.sink.plan_changes(target_table).await {
                Ok(c) if c.is_empty() => "none".to_string(),
                Ok(c) => c.join("; "),
                Err(e) => format!("cannot tell ({e})"),
            };
            let mut o = TableOutcome::new(&schema.table, &target.id, OutcomeStatus::Planned);
            o.mode = Some(plan.mode);
            o.detail = Some(format!(
                "{}; key: {}; cursor: {}; write: {:?}; range: {}\n    columns: {}\n    source types: {}\n    schema changes: {changes}",
                plan.reason,
                if schema.key.is_empty() { "none".to_string() } else { schema.key.join(", ") },
                plan.cursor.as_deref().unwrap_or("none"),
                plan.write,
                plan.range.describe(),
                target.sink.describe_columns(target_table).join(", "),
                schema.columns.iter().map(|c| format!("{} {}", c.name, c.source_type)).collect::<Vec<_>>().join(", "),
            ));
            out.push(o);
        }
        out
    }

    /// Reads one tenant's table once and stages it in every live target.
    async fn stage_tenant(
        &self,
        schema: Arc<TableSchema>,
        target_table: &TargetTable,
        targets: &[&Target],
        table_options: &TableOptions,
        options: &RunOptions,
    ) -> TenantResult {
        let started = Instant::now();
        let table = schema.table.clone();
        let mut per_target = HashMap::new();
        let mut priors = HashMap::new();
        let mut plans: Vec<(&Target, TablePlan)> = Vec::new();
        for target in targets {
            match self.load_prior(target, &table).await {
                Ok(prior) => {
                    let plan = self.strategy.plan(&schema, prior.as_ref(), &self.plan_options(options, table_options));
                    Event::TablePlanned {
                        table: table.clone(),
                        target: target.id.clone(),
                        mode: plan.mode,
                        reason: plan.reason.clone(),
                    }
                    .emit(&self.listeners);
                    priors.insert(target.id.clone(), prior);
                    plans.push((target, plan));
                }
                Err(e) => {
                    let plan = self.strategy.plan(&schema, None, &self.plan_options(options, table_options));
                    per_target.insert(target.id.clone(), (plan, Err(e)));
                }
            }
        }
        // One read serves every target: the widest range any of them needs.
        let range = widest_range(plans.iter().map(|(_, p)| &p.range));
        let cursor = plans.iter().find_map(|(_, p)| p.cursor.clone());
        let request =
            ReadRequest { schema: schema.clone(), range, batch_size: self.settings.batch_size, track_cursor: cursor };
        let mut retries = 0;
        let mut read = None;
        if !plans.is_empty() {
            let (result, r) = self
                .retry_counted(&format!("sync {table}"), || self.read_and_stage(&request, target_table, &plans))
                .await;
            retries = r;
            match result {
                Ok((summary, staged)) => {
                    read = Some(summary);
                    for ((target, plan), s) in plans.into_iter().zip(staged) {
                        per_target.insert(target.id.clone(), (plan, s));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for (target, plan) in plans {
                        per_target.insert(target.id.clone(), (plan, Err(ConnectorError::new(e.class(), msg.clone()))));
                    }
                }
            }
        }
        TenantResult { schema, read, elapsed: started.elapsed(), retries, per_target, priors }
    }

    /// Whether this tenant's read goes in key ranges: a full read of a table whose key is one
    /// integer column, with `chunk_rows` set.
    fn key_chunking(&self, request: &ReadRequest) -> Option<(String, u64)> {
        if self.settings.chunk_rows == 0 || request.range != ReadRange::Full || request.schema.key.len() != 1 {
            return None;
        }
        let key = request.schema.column(&request.schema.key[0])?;
        matches!(key.logical, LogicalType::Int64 | LogicalType::UInt64)
            .then(|| (key.name.clone(), self.settings.chunk_rows))
    }

    /// One attempt: staging writers (reopened where an interrupted full sync left durable
    /// ranges, else fresh), one source read fanned out to them. A source failure fails the
    /// attempt (and is retried when transient); a writer failure fails only its target.
    async fn read_and_stage(
        &self,
        request: &ReadRequest,
        target_table: &TargetTable,
        plans: &[(&Target, TablePlan)],
    ) -> Result<(ReadSummary, Vec<Result<Staged>>)> {
        let table = &request.schema.table;
        let started = Instant::now();
        let chunking = self.key_chunking(request);
        let fingerprint = schema_fingerprint(&request.schema);
        // Checkpoints written by an earlier run, or an earlier attempt of this one.
        let mut priors = Vec::new();
        for (target, _) in plans {
            priors.push(self.load_prior(target, table).await.ok().flatten());
        }
        let resume: Option<ResumePoint> = chunking.as_ref().and_then(|(key, _)| {
            let points: Vec<&ResumePoint> = priors.iter().filter_map(|p| p.as_ref()?.resume.as_ref()).collect();
            let first = (*points.first()?).clone();
            let usable = points.len() == plans.len()
                && points.iter().all(|r| r.after_key == first.after_key && r.rows == first.rows)
                && first.key == *key
                && first.schema_fingerprint == fingerprint;
            usable.then_some(first)
        });

        // A read in one pass starts now: its first rows arrive while the targets set up
        // staging, which takes a round trip or more per target.
        let early_read = chunking.is_none().then(|| self.start_read(request.clone()));
        let mut writers: Vec<Option<Box<dyn StagingWriter>>> = Vec::new();
        let mut errors: Vec<Option<ConnectorError>> = Vec::new();
        let mut resumed = resume.clone();
        if let Some(point) = &resume {
            for ((target, plan), prior) in plans.iter().zip(&priors) {
                let handle =
                    prior.as_ref().and_then(|p| p.resume.as_ref()).map(|r| r.staging.clone()).unwrap_or_default();
                match target
                    .sink
                    .resume_stage(target_table, &request.schema, plan.mode, plan.write, &handle, point.rows)
                    .await
                {
                    Ok(w) => writers.push(Some(w)),
                    Err(e) => {
                        tracing::warn!(%table, target = %target.id, error = %e, "cannot resume the interrupted full sync; starting over");
                        writers.clear();
                        resumed = None;
                        break;
                    }
                }
            }
            errors = (0..writers.len()).map(|_| None).collect();
        }
        if resumed.is_none() {
            for (target, plan) in plans {
                match target.sink.stage(target_table, &request.schema, plan.mode, plan.write).await {
                    Ok(w) => {
                        writers.push(Some(w));
                        errors.push(None);
                    }
                    Err(e) => {
                        writers.push(None);
                        errors.push(Some(e));
                    }
                }
            }
        }
        if writers.iter().all(Option::is_none) {
            // Every target refused to stage: report the first reason as the attempt's error.
            return Err(errors.into_iter().flatten().next().unwrap_or_else(|| ConnectorError::permanent("no target")));
        }

        let summary = match chunking {
            None => {
                let read = early_read.unwrap_or_else(|| self.start_read(request.clone()));
                self.consume(read, plans, &mut writers, &mut errors, started).await?
            }
            Some((key, limit)) => {
                let cursor_logical =
                    request.track_cursor.as_deref().and_then(|c| request.schema.column(c)).map(|c| c.logical.clone());
                let mut total = ReadSummary::default();
                let mut after = None;
                if let Some(point) = &resumed {
                    tracing::info!(%table, after_key = %point.after_key, rows = point.rows, "resuming an interrupted full sync");
                    total.rows = point.rows;
                    total.bytes = point.bytes;
                    total.snapshot_time = point.started;
                    total.snapshot_local_time = point.started_local;
                    total.max_cursor = point
                        .max_cursor
                        .as_deref()
                        .zip(cursor_logical.as_ref())
                        .and_then(|(s, l)| Value::from_cursor_text(s, l));
                    after = Some(point.after_key.clone());
                }
                total.window = Some(ReadRange::KeyRange { key: key.clone(), after: after.clone(), limit }.describe());
                loop {
                    let range = ReadRange::KeyRange { key: key.clone(), after: after.clone(), limit };
                    let part = self
                        .pump(ReadRequest { range, ..request.clone() }, plans, &mut writers, &mut errors, started)
                        .await?;
                    total.rows += part.rows;
                    total.bytes += part.bytes;
                    total.zero_dates_nulled += part.zero_dates_nulled;
                    if total.snapshot_time.is_none() {
                        // Later ranges are newer snapshots; the first one bounds the watermark.
                        total.snapshot_time = part.snapshot_time;
                        total.snapshot_local_time = part.snapshot_local_time;
                    }
                    if let Some(m) = part
                        .max_cursor
                        .filter(|m| total.max_cursor.as_ref().is_none_or(|t| m.cursor_text() > t.cursor_text()))
                    {
                        total.max_cursor = Some(m);
                    }
                    if part.rows < limit || part.last_key.is_none() {
                        break;
                    }
                    after = part.last_key;
                    self.checkpoint(
                        table,
                        plans,
                        &mut writers,
                        &mut errors,
                        &key,
                        after.as_deref().unwrap_or_default(),
                        &total,
                        &fingerprint,
                    )
                    .await;
                }
                total
            }
        };

        let mut out = Vec::new();
        for (i, slot) in writers.into_iter().enumerate() {
            let staged = match (slot, errors[i].take()) {
                (Some(w), _) => w.finish().await,
                (None, Some(e)) => Err(e),
                (None, None) => Err(ConnectorError::permanent("staging writer vanished")),
            };
            if let Ok(s) = &staged {
                Event::TableStaged {
                    table: table.clone(),
                    target: plans[i].0.id.clone(),
                    rows: s.rows,
                    elapsed: started.elapsed(),
                }
                .emit(&self.listeners);
            }
            out.push(staged);
        }
        Ok((summary, out))
    }

    /// Makes every range staged so far durable and records where a later run can resume.
    #[allow(clippy::too_many_arguments)]
    async fn checkpoint(
        &self,
        table: &TableRef,
        plans: &[(&Target, TablePlan)],
        writers: &mut [Option<Box<dyn StagingWriter>>],
        errors: &mut [Option<ConnectorError>],
        key: &str,
        after_key: &str,
        total: &ReadSummary,
        fingerprint: &str,
    ) {
        for (i, slot) in writers.iter_mut().enumerate() {
            let Some(w) = slot else { continue };
            if let Err(e) = w.checkpoint().await {
                errors[i] = Some(e.context(format!("{table} → {}", plans[i].0.id)));
                *slot = None;
                continue;
            }
            let Some(staging) = w.handle() else { continue };
            let target = plans[i].0;
            let prior = self.load_prior(target, table).await.ok().flatten();
            let now = Utc::now().naive_utc();
            let mut state = prior.unwrap_or_else(|| TableState {
                table_name: table.table.clone(),
                last_sync_time: None,
                sync_status: SyncStatus::Failed,
                sync_mode: SyncMode::Full,
                records_synced: 0,
                error_message: Some("first full sync in progress (or interrupted); the next run resumes it".into()),
                updated_at: now,
                watermark: None,
                last_success_at: None,
                duration_seconds: None,
                consecutive_failures: 0,
                key: None,
                resume: None,
            });
            state.updated_at = now;
            state.resume = Some(ResumePoint {
                staging,
                key: key.to_string(),
                after_key: after_key.to_string(),
                rows: total.rows,
                bytes: total.bytes,
                started: total.snapshot_time,
                started_local: total.snapshot_local_time,
                max_cursor: total.max_cursor.as_ref().and_then(Value::cursor_text),
                schema_fingerprint: fingerprint.to_string(),
            });
            if let Err(e) = target.state.record(&table.database, state).await {
                tracing::warn!(%table, target = %target.id, error = %e, "could not record a resume point");
            }
        }
    }

    /// Reads one request into every live writer.
    async fn pump(
        &self,
        request: ReadRequest,
        plans: &[(&Target, TablePlan)],
        writers: &mut [Option<Box<dyn StagingWriter>>],
        errors: &mut [Option<ConnectorError>],
        started: Instant,
    ) -> Result<ReadSummary> {
        let read = self.start_read(request);
        self.consume(read, plans, writers, errors, started).await
    }

    /// Starts reading `request` as a task of its own, so that decoding rows and encoding them
    /// for the targets use two cores.
    fn start_read(&self, request: ReadRequest) -> StartedRead {
        let table = request.schema.table.clone();
        let (tx, rx) = mpsc::channel(2);
        let source = Arc::clone(&self.source);
        StartedRead { table, task: AbortOnDrop(tokio::spawn(async move { source.read(request, tx).await })), rx }
    }

    /// Writes a started read's batches into every live writer.
    async fn consume(
        &self,
        read: StartedRead,
        plans: &[(&Target, TablePlan)],
        writers: &mut [Option<Box<dyn StagingWriter>>],
        errors: &mut [Option<ConnectorError>],
        started: Instant,
    ) -> Result<ReadSummary> {
        let StartedRead { table, task, rx } = read;
        let read = async {
            let mut task = task;
            (&mut task.0)
                .await
                .unwrap_or_else(|e| Err(ConnectorError::permanent(format!("{table}: the read task failed: {e}"))))
        };
        let consume = async {
            // Owned here, so that stopping early drops it and the reader's next send fails
            // instead of waiting on a full channel forever.
            let mut rx = rx;
            let mut rows = 0u64;
            let mut bytes = 0u64;
            let mut last_progress = Instant::now();
            while let Some(batch) = rx.recv().await {
                rows += batch.len() as u64;
                bytes += batch.bytes as u64;
                if last_progress.elapsed() >= Duration::from_secs(1) {
                    last_progress = Instant::now();
                    Event::Progress { table: table.clone(), rows, bytes, elapsed: started.elapsed() }
                        .emit(&self.listeners);
                }
                for (i, slot) in writers.iter_mut().enumerate() {
                    if let Some(w) = slot
                        && let Err(e) = w.write(&batch).await
                    {
                        errors[i] = Some(e.context(format!("{table} → {}", plans[i].0.id)));
                        *slot = None;
                    }
                }
                if writers.iter().all(Option::is_none) {
                    break;
                }
            }
            Event::RowsRead { table: table.clone(), rows, bytes }.emit(&self.listeners);
        };
        let (summary, ()) = tokio::join!(read, consume);
        match summary {
            Ok(s) => Ok(s),
            // The read stopped because no writer was left; report the writers' reason.
            Err(e) if writers.iter().all(Option::is_none) => Err(errors.iter_mut().find_map(Option::take).unwrap_or(e)),
            Err(e) => Err(e),
        }
    }

    async fn record_success(
        &self,
        target: &Target,
        t: &TenantResult,
        elapsed: Duration,
        commit_retries: u32,
    ) -> TableOutcome {
        let table = &t.schema.table;
        let (plan, staged) = match t.per_target.get(&target.id) {
            Some((plan, Ok(staged))) => (plan, staged),
            _ => unreachable!("only staged tenants are committed"),
        };
        let prior = t.priors.get(&target.id).cloned().flatten();
        let read = t.read.clone().unwrap_or_default();
        let now = Utc::now().naive_utc();
        let watermark = next_watermark(&t.schema, plan, &read, prior.as_ref().and_then(|p| p.watermark.as_ref()));
        let state = TableState {
            table_name: table.table.clone(),
            last_sync_time: read.snapshot_time.or(Some(now)),
            sync_status: SyncStatus::Success,
            sync_mode: plan.mode,
            records_synced: staged.rows,
            error_message: None,
            updated_at: now,
            watermark,
            last_success_at: Some(now),
            duration_seconds: Some(elapsed.as_secs_f64()),
            consecutive_failures: 0,
            key: Some(t.schema.key.clone()),
            resume: None,
        };
        let mut outcome = TableOutcome::new(table, &target.id, OutcomeStatus::Success);
        outcome.mode = Some(plan.mode);
        outcome.rows = staged.rows;
        outcome.bytes = read.bytes;
        outcome.seconds = elapsed.as_secs_f64();
        outcome.retries = t.retries + commit_retries;
        outcome.zero_dates_nulled = read.zero_dates_nulled;
        outcome.null_cursor_rows_skipped = read.null_cursor_rows_skipped;
        outcome.window = Some(read.window.clone().unwrap_or_else(|| plan.range.describe()));
        outcome.detail = Some(plan.reason.clone());
        if let Err(e) = target.state.record(&table.database, state).await {
            // The data is committed; only the checkpoint is missing. The next run re-reads
            // from the older watermark, which the idempotent writes absorb.
            outcome.status = OutcomeStatus::Failed;
            outcome.error = Some(format!("data committed but state not saved: {e}"));
        } else {
            Event::CheckpointCommitted { table: table.clone(), target: target.id.clone() }.emit(&self.listeners);
        }
        outcome
    }

    async fn record_failure(
        &self,
        target: &Target,
        table: &TableRef,
        mode: Option<SyncMode>,
        error: &ConnectorError,
        retries: u32,
        elapsed: Duration,
    ) -> TableOutcome {
        Event::ComponentError { table: table.clone(), target: target.id.clone(), error: error.to_string() }
            .emit(&self.listeners);
        let mut outcome = TableOutcome::failed(table, &target.id, mode, error);
        outcome.retries = retries;
        outcome.seconds = elapsed.as_secs_f64();
        if table.table == "*" {
            return outcome;
        }
        // A failure keeps the last good watermark and times: nothing already synced is lost.
        let prior = self.load_prior(target, table).await.ok().flatten();
        let now = Utc::now().naive_utc();
        let state = TableState {
            table_name: table.table.clone(),
            sync_status: SyncStatus::Failed,
            sync_mode: mode.or(prior.as_ref().map(|p| p.sync_mode)).unwrap_or(SyncMode::Full),
            error_message: Some(error.to_string()),
            updated_at: now,
            consecutive_failures: prior.as_ref().map_or(0, |p| p.consecutive_failures) + 1,
            duration_seconds: Some(elapsed.as_secs_f64()),
            records_synced: 0,
            last_sync_time: prior.as_ref().and_then(|p| p.last_sync_time),
            watermark: prior.as_ref().and_then(|p| p.watermark.clone()),
            last_success_at: prior.as_ref().and_then(|p| p.last_success_at),
            key: prior.as_ref().and_then(|p| p.key.clone()),
            resume: prior.as_ref().and_then(|p| p.resume.clone()),
        };
        if let Err(e) = target.state.record(&table.database, state).await {
            outcome.error = Some(format!("{error}; also failed to save state: {e}"));
        }
        outcome
    }

    async fn fail_everywhere(
        &self,
        table: &TableRef,
        mode: Option<SyncMode>,
        error: &ConnectorError,
        options: &RunOptions,
    ) -> Vec<TableOutcome> {
        let mut out = Vec::new();
        for target in &self.targets {
            if options.dry_run {
                out.push(TableOutcome::failed(table, &target.id, mode, error));
            } else {
                out.push(self.record_failure(target, table, mode, error, 0, Duration::ZERO).await);
            }
        }
        out
    }
}

/// Applies the per-table `primary_key` and checks `cursor_column` against the discovered
/// columns.
fn apply_table_options(mut schema: TableSchema, options: &TableOptions) -> Result<TableSchema> {
    if let Some(cursor) = &options.cursor_column {
        match schema.column(cursor) {
            None => {
                return Err(ConnectorError::config(format!(
                    "{}: table_options.cursor_column names `{cursor}`, which the table does not have",
                    schema.table
                )));
            }
            Some(c) if !crate::strategy::is_cursor_type(&c.logical) => {
                return Err(ConnectorError::config(format!(
                    "{}: table_options.cursor_column `{cursor}` is {}; a cursor must be DATE, DATETIME or TIMESTAMP",
                    schema.table, c.source_type
                )));
            }
            Some(_) => {}
        }
    }
    if options.primary_key.is_empty() {
        return Ok(schema);
    }
    let mut key = Vec::new();
    for k in &options.primary_key {
        let column = schema.column(k).ok_or_else(|| {
            ConnectorError::config(format!(
                "{}: table_options.primary_key names column `{k}`, which the table does not have",
                schema.table
            ))
        })?;
        key.push(column.name.clone());
    }
    schema.key = key;
    schema.key_source = KeySource::Configured;
    Ok(schema)
}

/// Keeps the tenants that share the most common key (the first tenant's on a tie); the others
/// fail with an error naming both keys, instead of silently turning the table keyless.
fn split_by_key(
    name: &str,
    schemas: Vec<Arc<TableSchema>>,
) -> (Vec<Arc<TableSchema>>, Vec<(TableRef, ConnectorError)>) {
    let norm = |k: &[String]| k.iter().map(|c| c.to_ascii_lowercase()).collect::<Vec<_>>();
    let mut counts: Vec<(Vec<String>, usize)> = Vec::new();
    for s in &schemas {
        let k = norm(&s.key);
        match counts.iter_mut().find(|(c, _)| *c == k) {
            Some((_, n)) => *n += 1,
            None => counts.push((k, 1)),
        }
    }
    let Some(best) = counts.iter().max_by(|a, b| a.1.cmp(&b.1).then(std::cmp::Ordering::Greater)).map(|c| c.0.clone())
    else {
        return (schemas, Vec::new());
    };
    let describe = |k: &[String]| if k.is_empty() { "no key".to_string() } else { format!("key ({})", k.join(", ")) };
    let (keep, reject): (Vec<_>, Vec<_>) = schemas.into_iter().partition(|s| norm(&s.key) == best);
    let errors = reject
        .into_iter()
        .map(|s| {
            let e = ConnectorError::permanent(format!(
                "{}: has {} but the other tenants' {name} has {}; align the schemas, or set \
                 table_options.{name}.primary_key for every tenant",
                s.table,
                describe(&s.key),
                describe(&best)
            ));
            (s.table.clone(), e)
        })
        .collect();
    (keep, errors)
}

/// The target table for all tenants: the union of their columns. Tenants must agree on the
/// type of shared columns; a mismatch names the column and the tenants.
fn union_target(name: &str, schemas: &[Arc<TableSchema>], options: &TableOptions) -> Result<TargetTable> {
    let mut columns: Vec<Column> = Vec::new();
    let mut first_seen: HashMap<String, String> = HashMap::new();
    for s in schemas {
        for c in &s.columns {
            match columns.iter_mut().find(|e| e.name.eq_ignore_ascii_case(&c.name)) {
                None => {
                    first_seen.insert(c.name.to_ascii_lowercase(), s.table.database.clone());
                    columns.push(Column { nullable: true, ..c.clone() });
                }
                Some(existing) if existing.logical == c.logical => {}
                // An explicit target type settles the disagreement; the sink converts each
                // tenant's values into it.
                Some(_) if options.column_types.keys().any(|k| k.eq_ignore_ascii_case(&c.name)) => {}
                Some(existing) => match widen(&existing.logical, &c.logical) {
                    Some(wider) => existing.logical = wider,
                    None => {
                        let other = first_seen.get(&c.name.to_ascii_lowercase()).cloned().unwrap_or_default();
                        return Err(ConnectorError::permanent(format!(
                            "{}: column `{}` is {} in {} but {} in {}; align the tenants' schemas or set \
                             column_types for this column",
                            name, c.name, existing.source_type, other, c.source_type, s.table.database
                        )));
                    }
                },
            }
        }
    }
    // Every tenant has the same key here (see split_by_key).
    let key = schemas.first().map(|s| s.key.clone()).unwrap_or_default();
    let key_nullable = schemas.iter().any(|s| s.key.iter().any(|k| s.column(k).is_none_or(|c| c.nullable)));
    Ok(TargetTable {
        name: name.to_string(),
        columns,
        key,
        key_nullable,
        options: TargetOptions {
            partition_by: options.partition_by.clone(),
            cluster_by: options.cluster_by.clone(),
            column_types: options.column_types.clone(),
        },
    })
}

/// A type that holds every value of both, where one exists without changing representation.
fn widen(a: &LogicalType, b: &LogicalType) -> Option<LogicalType> {
    use LogicalType::*;
    match (a, b) {
        (Int64, UInt64) | (UInt64, Int64) => Some(Decimal { precision: 20, scale: 0 }),
        (Float32, Float64) | (Float64, Float32) => Some(Float64),
        (Decimal { precision: p1, scale: s1 }, Decimal { precision: p2, scale: s2 }) => {
            let scale = (*s1).max(*s2);
            let int = (p1 - s1).max(p2 - s2);
            Some(Decimal { precision: int.saturating_add(scale).min(76), scale })
        }
        (DateTime { fsp: a }, DateTime { fsp: b }) => Some(DateTime { fsp: (*a).max(*b) }),
        (Timestamp { fsp: a }, Timestamp { fsp: b }) => Some(Timestamp { fsp: (*a).max(*b) }),
        (Time { fsp: a }, Time { fsp: b }) => Some(Time { fsp: (*a).max(*b) }),
        _ => None,
    }
}

/// Identifies a table's columns, types and key, so a resumed full sync notices schema changes.
fn schema_fingerprint(schema: &TableSchema) -> String {
    let text = serde_json::to_string(&(&schema.columns, &schema.key)).unwrap_or_default();
    let hash = text.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    format!("{hash:016x}")
}

/// The union of read ranges: full if any is full, else the earliest lower bound.
fn widest_range<'a>(ranges: impl Iterator<Item = &'a ReadRange>) -> ReadRange {
    let mut widest: Option<ReadRange> = None;
    for r in ranges {
        widest = Some(match (widest, r) {
            (None, r) => r.clone(),
            (Some(ReadRange::Full), _) | (_, ReadRange::Full) => ReadRange::Full,
            (Some(ReadRange::KeyRange { .. }), _) | (_, ReadRange::KeyRange { .. }) => ReadRange::Full,
            (
                Some(ReadRange::Since { cursor, from: a, include_nulls: na }),
                ReadRange::Since { from: b, include_nulls: nb, .. },
            ) => ReadRange::Since { cursor, from: if *b < a { b.clone() } else { a }, include_nulls: na || *nb },
        });
    }
    widest.unwrap_or(ReadRange::Full)
}

/// The next watermark: the highest cursor value read, never past the source's clock at
/// snapshot time, never behind the previous watermark.
fn next_watermark(
    schema: &TableSchema,
    plan: &TablePlan,
    read: &ReadSummary,
    prior: Option<&Watermark>,
) -> Option<Watermark> {
    let cursor = plan.cursor.as_ref()?;
    let column = schema.column(cursor)?;
    let (column_type, read_max) = match (&column.logical, &read.max_cursor) {
        (LogicalType::Date, Some(Value::Date(d))) => ("date", Some(d.and_hms_opt(0, 0, 0).unwrap_or_default())),
        (LogicalType::DateTime { .. }, Some(Value::DateTime(t))) => ("datetime", Some(*t)),
        (LogicalType::Timestamp { .. }, Some(Value::Timestamp(t))) => ("timestamp", Some(t.naive_utc())),
        (LogicalType::Date, _) => ("date", None),
        (LogicalType::DateTime { .. }, _) => ("datetime", None),
        (LogicalType::Timestamp { .. }, _) => ("timestamp", None),
        _ => return None,
    };
    let clock = if column_type == "timestamp" { read.snapshot_time } else { read.snapshot_local_time };
    let capped: Option<NaiveDateTime> = match (read_max, clock) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (m, _) => m,
    };
    let format = |t: NaiveDateTime| {
        if column_type == "date" {
            t.format("%Y-%m-%d").to_string()
        } else {
            t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
        }
    };
    let new = capped.map(format);
    let prior = prior.filter(|p| p.column.eq_ignore_ascii_case(cursor) && plan.mode == SyncMode::Incremental);
    let value = match (new, prior) {
        (Some(n), Some(p)) => Some(if n > p.value { n } else { p.value.clone() }),
        (Some(n), None) => Some(n),
        (None, Some(p)) => Some(p.value.clone()),
        (None, None) => None,
    }?;
    Some(Watermark { column: column.name.clone(), column_type: column_type.to_string(), value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traits::WriteMode;

    fn col(name: &str, logical: LogicalType) -> Column {
        Column { name: name.into(), source_type: format!("{logical:?}"), logical, nullable: false }
    }

    fn schema(db: &str, columns: Vec<Column>) -> Arc<TableSchema> {
        Arc::new(TableSchema {
            table: TableRef::new(db, "orders"),
            columns,
            key: vec!["id".into()],
            key_source: KeySource::PrimaryKey,
        })
    }

    #[test]
    fn union_takes_every_tenants_columns_and_widens_compatible_types() {
        let a = schema("shop1", vec![col("id", LogicalType::Int64), col("note", LogicalType::String)]);
        let b = schema("shop2", vec![col("id", LogicalType::UInt64), col("extra", LogicalType::DateTime { fsp: 3 })]);
        let t = union_target("orders", &[a, b], &TableOptions::default()).unwrap();
        let names: Vec<_> = t.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "note", "extra"]);
        assert_eq!(t.columns[0].logical, LogicalType::Decimal { precision: 20, scale: 0 });
        assert!(t.columns.iter().all(|c| c.nullable));
        assert_eq!(t.key, ["id"]);
    }

    #[test]
    fn union_rejects_incompatible_types_naming_column_and_tenants() {
        let a = schema("shop1", vec![col("id", LogicalType::Int64), col("v", LogicalType::Json)]);
        let b = schema("shop2", vec![col("id", LogicalType::Int64), col("v", LogicalType::Bytes)]);
        let e = union_target("orders", &[a, b], &TableOptions::default()).unwrap_err();
        assert!(e.message().contains("`v`") && e.message().contains("shop1") && e.message().contains("shop2"), "{e}");
    }

    #[test]
    fn watermark_is_capped_at_the_source_clock_and_never_moves_back() {
        let s =
            schema("shop1", vec![col("id", LogicalType::Int64), col("updated_at", LogicalType::DateTime { fsp: 6 })]);
        let plan = TablePlan {
            mode: SyncMode::Incremental,
            write: WriteMode::Merge,
            range: ReadRange::Full,
            cursor: Some("updated_at".into()),
            reason: String::new(),
        };
        let t = |s: &str| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").unwrap();
        let read = ReadSummary {
            max_cursor: Some(Value::DateTime(t("2030-01-01 00:00:00"))),
            snapshot_local_time: Some(t("2025-06-01 12:00:00.123456")),
            ..Default::default()
        };
        let w = next_watermark(&s, &plan, &read, None).unwrap();
        assert_eq!(w.value, "2025-06-01 12:00:00.123456");
        let prior = Watermark {
            column: "updated_at".into(),
            column_type: "datetime".into(),
            value: "2026-01-01 00:00:00.000000".into(),
        };
        let w = next_watermark(&s, &plan, &read, Some(&prior)).unwrap();
        assert_eq!(w.value, prior.value);
        let empty = ReadSummary::default();
        assert_eq!(next_watermark(&s, &plan, &empty, Some(&prior)).unwrap().value, prior.value);
    }

    #[test]
    fn widest_range_prefers_full_then_the_earliest_bound() {
        let a = ReadRange::Since { cursor: "u".into(), from: "2025-01-02".into(), include_nulls: false };
        let b = ReadRange::Since { cursor: "u".into(), from: "2025-01-01".into(), include_nulls: false };
        assert_eq!(widest_range([&a, &b].into_iter()), b);
        assert_eq!(widest_range([&a, &ReadRange::Full].into_iter()), ReadRange::Full);
    }

    #[tokio::test]
    async fn one_read_fans_out_to_every_target_and_a_failing_target_blocks_no_other() {
        use crate::testkit::{CollectingSink, MemorySource, MemoryStateStore, sample_table};
        let source = MemorySource { databases: vec!["a".into(), "b".into()], ..Default::default() };
        for db in ["a", "b"] {
            let (schema, rows) = sample_table(db, "orders", 7);
            source.add_table(schema, rows);
        }
        let good = CollectingSink::new("good");
        let bad = CollectingSink { fail_with: Some("target unreachable".into()), ..CollectingSink::new("bad") };
        let (good_state, bad_state) = (MemoryStateStore::default(), MemoryStateStore::default());
        let runner = Runner {
            source: Arc::new(source),
            targets: vec![
                Target { id: "good".into(), sink: Arc::new(good.clone()), state: Arc::new(good_state.clone()) },
                Target { id: "bad".into(), sink: Arc::new(bad), state: Arc::new(bad_state.clone()) },
            ],
            strategy: Arc::new(crate::strategy::GuideStrategy),
            settings: Settings { batch_size: 3, max_retries: 0, ..Default::default() },
            tables: vec!["orders".into()],
            table_options: BTreeMap::new(),
            listeners: Vec::new(),
            stop: Arc::default(),
        };
        let report = runner.run(&RunOptions::default()).await.unwrap();
        assert_eq!(report.outcomes.len(), 4);
        assert_eq!(good.committed_rows("orders", "a").len(), 7);
        assert_eq!(good.commits.lock().unwrap().len(), 1, "one commit per table for all tenants");
        for o in &report.outcomes {
            let ok = o.target == "good";
            assert_eq!(o.status == OutcomeStatus::Success, ok, "{o:?}");
        }
        let bad_entry = bad_state.load("a").await.unwrap().table("orders").cloned().unwrap();
        assert_eq!(bad_entry.sync_status, SyncStatus::Failed);
        assert!(bad_entry.error_message.unwrap().contains("target unreachable"));
        let good_entry = good_state.load("b").await.unwrap().table("orders").cloned().unwrap();
        assert_eq!(good_entry.sync_status, SyncStatus::Success);
        assert_eq!(good_entry.records_synced, 7);
        assert!(good_entry.watermark.is_some());

        // The next run: the good target goes incremental, the bad one (now fixed) re-reads in
        // full; one read serves both, so the good target merges the same rows again.
        let plan_good = runner.strategy.plan(
            &sample_table("a", "orders", 0).0,
            Some(&good_entry),
            &runner.plan_options(&RunOptions::default(), &TableOptions::default()),
        );
        assert_eq!(plan_good.mode, SyncMode::Incremental);
    }

    #[tokio::test]
    async fn the_testkit_conformance_checks_pass_for_the_testkit_itself() {
        use crate::testkit::{CollectingSink, MemorySource, sample_table, sink_conformance, source_conformance};
        let source = MemorySource { databases: vec!["a".into()], ..Default::default() };
        let (schema, rows) = sample_table("a", "t", 5);
        source.add_table(schema, rows);
        assert_eq!(source_conformance(&source, &TableRef::new("a", "t")).await.unwrap(), 5);
        let sink = CollectingSink::new("c");
        assert_eq!(sink_conformance(&sink, "t").await.unwrap().len(), 5);
        assert_eq!(sink.committed_rows("t", "tenant_b").len(), 3);
    }
}
