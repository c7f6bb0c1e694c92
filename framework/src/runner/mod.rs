//! The runner: connects the stages of a run and holds no sync logic of its own.
//!
//! ```text
//! check the selection ─► lock every target's state ─► list tables ─► group by table name
//!   per table name (in parallel, `concurrency`):              table.rs
//!     discover every tenant → union schema                    unify.rs
//!     prepare each target, resolve writes in doubt            table.rs
//!     per tenant (bounded by one read semaphore):
//!        plan per target                                      plan.rs
//!        read once ─► fan out to every target's writer        read.rs, fanout.rs
//!          (big full syncs: key ranges + resume points)       resume.rs
//!     per target: one commit of every staged tenant           table.rs
//!     record each outcome                                     record.rs
//! ```

mod fanout;
mod plan;
mod read;
mod record;
mod resume;
mod table;
mod tenants;
mod unify;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::error::{ConnectorError, Result};
use crate::events::{Event, EventListener};
use crate::pipeline::{Settings, TableOptions};
use crate::report::{RunReport, TableOutcome};
use crate::schema::TableRef;
use crate::sink::{Sink, TargetOptions};
use crate::source::Source;
use crate::state::{LockScope, StateStore};
use crate::strategy::Strategy;

pub(crate) use table::commit_isolating;
pub use unify::fingerprint;
pub(crate) use unify::{discover_and_unify, discover_configured, unify};

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
    /// Wait this long for another run's lock instead of failing at once.
    pub wait_lock: Option<Duration>,
    /// This worker's share of the tenants (`--shard I/N`); `None` takes them all.
    pub shard: Option<crate::tenants::Shard>,
    /// Snapshots for a change stream (`--cdc`): instead of the strategy's plan, every table a
    /// target's stream does not carry yet is read in full at a captured log position.
    pub cdc: Option<CdcSnapshots>,
}

/// What a run that snapshots tables for a change stream needs to know.
#[derive(Debug, Clone)]
pub struct CdcSnapshots {
    pub tracking: crate::sink::ChangeTracking,
    /// (target id, table) → why it needs a new snapshot although its state says it streams
    /// (its position was purged from the log, it was dropped and created again, …).
    pub resnapshot: HashMap<(String, TableRef), String>,
}

/// A built pipeline, ready to run.
#[derive(Debug, Clone)]
pub struct Runner {
    pub source: Arc<dyn Source>,
    pub targets: Vec<Target>,
    pub strategy: Arc<dyn Strategy>,
    pub settings: Settings,
    pub tables: Vec<String>,
    pub table_options: BTreeMap<String, TableOptions>,
    pub listeners: Vec<Arc<dyn EventListener>>,
    /// Set to stop starting tables (SIGTERM); tables already started finish and commit.
    pub stop: Arc<AtomicBool>,
}

/// What one run shares between its tables.
struct RunContext<'a> {
    runner: &'a Runner,
    options: &'a RunOptions,
    /// Bounds the tenant reads in flight over all tables.
    reads: Semaphore,
    /// Bounds the tables being read and staged; a table that is committing (waiting on its
    /// target) holds no permit, so the next tables read meanwhile.
    staging: Semaphore,
    /// Held by the table handing out its tenants' reads (`table::sync_table`).
    dispatch: tokio::sync::Mutex<()>,
    /// Targets found unreachable in this run (after their retries), with the reason: the
    /// rest of the run skips them at once instead of waiting on them table after table.
    down: std::sync::Mutex<HashMap<String, String>>,
}

impl RunContext<'_> {
    /// Marks `target` unreachable when `error` is transient: it outlasted the retries.
    fn note_failure(&self, target: &Target, error: &ConnectorError) {
        if error.is_transient() {
            let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
            down.entry(target.id.clone()).or_insert_with(|| error.to_string());
        }
    }

    /// Asks every target at once whether it answers ([`crate::sink::Sink::probe`]); those
    /// that do not are down for the whole run.
    async fn probe_targets(&self) {
        let probes = self.runner.targets.iter().map(|t| async move { (t, t.sink.probe().await) });
        for (target, result) in futures::future::join_all(probes).await {
            if let Err(e) = result {
                tracing::warn!(target = %target.id, error = %e, "target does not answer; skipped for this run");
                let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
                down.insert(target.id.clone(), format!("it did not answer at the start of the run: {e}"));
            }
        }
    }

    /// Why `target` is skipped, when it is.
    fn skip_reason(&self, target: &Target) -> Option<ConnectorError> {
        let down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        down.get(&target.id).map(|why| {
            ConnectorError::transient(format!(
                "target `{}` was unreachable earlier in this run, so it was skipped ({why}); the next run \
                 catches it up",
                target.id
            ))
        })
    }

    fn listeners(&self) -> &[Arc<dyn EventListener>] {
        &self.runner.listeners
    }

    /// Writes state, unless this is a dry run. (A benchmark writes into a
    /// [`crate::state::ScratchState`] its pipeline was built with, never the real store.)
    fn records(&self) -> bool {
        !self.options.dry_run
    }
}

impl Runner {
    /// Runs every selected table of every selected database and reports each outcome.
    /// Fails as a whole only on problems no table can get past (lock held, bad selection); a
    /// run that cannot start writes nothing.
    pub async fn run(&self, options: &RunOptions) -> Result<RunReport> {
        // A bad --databases fails before the lock is taken; the tenants themselves are resolved
        // once, under the lock (a pattern's listing of the server is not done twice).
        if options.databases.is_some() {
            self.select_databases(options).await?;
        }
        self.preflight(false).await?;
        let started_at = chrono::Utc::now().naive_utc();
        let locks = if options.dry_run { Vec::new() } else { self.lock(options).await? };
        let report = self.run_locked(options).await;
        if let Ok(report) = report.as_ref()
            && !options.dry_run
        {
            self.record_history(report, started_at).await;
        }
        release(locks).await;
        report
    }

    /// Adds the run to each target's history (a failure to is logged: the run itself is done).
    async fn record_history(&self, report: &RunReport, started_at: chrono::NaiveDateTime) {
        for target in &self.targets {
            if let Some(run) = crate::history::RunRecord::of(report, &target.id, started_at)
                && let Err(e) = target.state.record_run(run).await
            {
                tracing::warn!(target = %target.id, error = %e, "cannot add the run to the history");
            }
        }
    }

    /// The source's checks before anything is read or written, logged; an error stops the run.
    pub async fn preflight(&self, change_stream: bool) -> Result<crate::source::Preflight> {
        let found = self.source.preflight(change_stream).await?;
        for note in &found.notes {
            tracing::info!("{note}");
        }
        for warning in &found.warnings {
            tracing::warn!("{warning}");
        }
        Ok(found)
    }

    /// `delete_detection: verify`: the keys of every tenant × table this run synced compared
    /// with the target, and the rows gone from the source deleted there (under the repair
    /// guard); the run holds the lock already.
    async fn detect_deletes(&self, report: &mut RunReport) {
        let synced: Vec<&TableOutcome> =
            report.outcomes.iter().filter(|o| o.status == crate::report::OutcomeStatus::Success).collect();
        if synced.is_empty() {
            return;
        }
        let mut databases: Vec<String> = synced.iter().map(|o| o.database.clone()).collect();
        let mut tables: Vec<String> = synced.iter().map(|o| o.table.clone()).collect();
        databases.sort();
        databases.dedup();
        tables.sort();
        tables.dedup();
        let only: std::collections::BTreeSet<(String, String, String)> =
            synced.iter().map(|o| (o.database.clone(), o.table.clone(), o.target.clone())).collect();
        let options = crate::verify::VerifyOptions {
            databases: Some(databases),
            tables: Some(tables),
            keys_only: true,
            repair_extra_only: true,
            repair_only: Some(only.clone()),
            ..Default::default()
        };
        match self.verify(&options).await {
            Ok(found) => {
                for v in found
                    .tables
                    .iter()
                    .filter(|v| synced.iter().any(|o| o.database == v.database && o.table == v.table))
                {
                    let name = format!("{}.{} → {}", v.database, v.table, v.target);
                    match (&v.repaired, &v.error) {
                        (_, Some(e)) => report.deletes_detected.push(format!("{name}: not checked: {e}")),
                        (Some(r), _) if r.refused.is_some() || r.error.is_some() => {
                            report.deletes_detected.push(format!(
                                "{name}: {} rows gone from the source were not deleted: {}",
                                v.differences.extra.len(),
                                r.refused.as_deref().or(r.error.as_deref()).unwrap_or_default()
                            ))
                        }
                        (Some(r), _) => report.deletes_detected.push(format!(
                            "{name}: {} deleted in the source removed{}",
                            crate::report::plural(v.differences.rows_removed() as usize, "row", "rows"),
                            if r.equal_after { "" } else { " (keys still differ: run verify)" }
                        )),
                        (None, _) => {}
                    }
                }
            }
            Err(e) => report.deletes_detected.push(format!("not run: {e}")),
        }
    }

    /// Takes every target's run lock.
    pub(crate) async fn lock(&self, options: &RunOptions) -> Result<Vec<Box<dyn crate::state::StateLock>>> {
        let scope = options.shard.map_or(LockScope::Whole, LockScope::Shard);
        let mut locks = Vec::new();
        for t in &self.targets {
            match t.state.lock(scope, options.wait_lock).await {
                Ok(lock) => locks.push(lock),
                Err(e) => {
                    release(locks).await;
                    return Err(e);
                }
            }
        }
        Ok(locks)
    }

    /// A run by a caller that holds the locks already.
    pub(crate) async fn run_locked(&self, options: &RunOptions) -> Result<RunReport> {
        let started = Instant::now();
        let databases = self.select_databases(options).await?;
        let mut tenants = self.tenant_changes(&databases, options).await;
        if self.settings.drop_missing_tenants && !options.dry_run {
            self.drop_gone(&mut tenants).await;
        }
        let ctx = RunContext {
            runner: self,
            options,
            reads: Semaphore::new(self.settings.concurrency),
            staging: Semaphore::new(self.settings.concurrency),
            dispatch: tokio::sync::Mutex::new(()),
            down: std::sync::Mutex::default(),
        };
        if self.targets.len() > 1 && !options.dry_run {
            ctx.probe_targets().await;
        }
        let mut by_table: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut outcomes = Vec::new();
        for db in &databases {
            match self.select_tables(db, options).await {
                Ok(tables) => {
                    for t in tables {
                        by_table.entry(t).or_default().push(db.clone());
                    }
                }
                Err(e) => outcomes.extend(record::fail_everywhere(&ctx, &TableRef::new(db, "*"), &e).await),
            }
        }
        for (table, e) in self.target_name_clashes(by_table.keys()) {
            for db in by_table.remove(&table).unwrap_or_default() {
                outcomes.extend(record::fail_everywhere(&ctx, &TableRef::new(&db, &table), &e).await);
            }
        }
        // New tenants' first full syncs go after the others: a big new tenant neither delays
        // nor shares a commit with the tenants already synced.
        let mut new_tenants: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if !tenants.present.is_empty() {
            for (table, dbs) in by_table.iter_mut() {
                let (new, known): (Vec<String>, Vec<String>) = dbs.drain(..).partition(|d| tenants.new.contains(d));
                *dbs = known;
                if !new.is_empty() {
                    new_tenants.insert(table.clone(), new);
                }
            }
            by_table.retain(|_, dbs| !dbs.is_empty());
        }
        let not_started = AtomicUsize::new(0);
        // An outcome per tenant × table × target: sized once, not doubled as tables finish (a
        // fleet's run holds tens of thousands, and a doubling holds both copies at once).
        let expected = by_table.values().chain(new_tenants.values()).map(Vec::len).sum::<usize>() * self.targets.len();
        outcomes.reserve_exact(expected);
        for group in [by_table, new_tenants] {
            self.sync_tables(&ctx, group, &not_started, &mut outcomes).await;
        }
        // In place: a stable sort takes a buffer as big as the outcomes (5 MB at 20,000), the
        // run's peak; lines that share a table and target keep a fixed order by status.
        outcomes.sort_unstable_by(|a, b| {
            (&a.database, &a.table, &a.target, a.status as u8, &a.error).cmp(&(
                &b.database,
                &b.table,
                &b.target,
                b.status as u8,
                &b.error,
            ))
        });
        let mut report = RunReport {
            outcomes,
            elapsed: started.elapsed(),
            dry_run: options.dry_run,
            not_started: not_started.into_inner(),
            deletes_detected: Vec::new(),
            tenants,
            shard: options.shard.map(|s| s.to_string()),
        };
        if self.settings.delete_detection == crate::settings::DeleteDetection::Verify && !options.dry_run {
            self.detect_deletes(&mut report).await;
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Syncs each table name's tenants, `concurrency` tables staging at once; adds their
    /// outcomes to `outcomes`.
    async fn sync_tables(
        &self,
        ctx: &RunContext<'_>,
        by_table: BTreeMap<String, Vec<String>>,
        not_started: &AtomicUsize,
        outcomes: &mut Outcomes,
    ) {
        let mut per_table = futures::stream::iter(by_table)
            .map(|(table, dbs)| async move {
                if self.stop.load(Ordering::SeqCst) {
                    not_started.fetch_add(dbs.len(), Ordering::SeqCst);
                    return Vec::new();
                }
                table::sync_table(ctx, &table, &dbs).await
            })
            // As many tables committing as being staged: a commit is a wait on the target.
            .buffer_unordered(self.settings.concurrency * 2);
        while let Some(mut o) = per_table.next().await {
            outcomes.append(&mut o);
        }
    }

    /// Source tables whose target tables would be one and the same in some target (names the
    /// target maps to what it can hold, or a `target_table` that names another table): each
    /// fails with an error naming the other and the setting that tells them apart, instead of
    /// two tables silently writing into one.
    fn target_name_clashes<'t>(&self, tables: impl Iterator<Item = &'t String>) -> Vec<(String, ConnectorError)> {
        let tables: Vec<&String> = tables.collect();
        let mut clashes: BTreeMap<String, ConnectorError> = BTreeMap::new();
        for target in &self.targets {
            let mut by_target: BTreeMap<String, Vec<&String>> = BTreeMap::new();
            for table in &tables {
                let options = self.table_options.get(table.as_str()).map(TargetOptions::from).unwrap_or_default();
                by_target.entry(target.sink.target_name(table, &options)).or_default().push(table);
            }
            for (name, sources) in by_target.into_iter().filter(|(_, s)| s.len() > 1) {
                for table in &sources {
                    let others: Vec<String> =
                        sources.iter().filter(|o| o != &table).map(|o| format!("`{o}`")).collect();
                    clashes.entry(table.to_string()).or_insert_with(|| {
                        ConnectorError::config(format!(
                            "source tables `{table}` and {} would both be written to table `{name}` of target `{}`; \
                             give one of them another name with table_options.{table}.target_table, or leave it out \
                             of the tables synced",
                            others.join(", "),
                            target.id
                        ))
                    });
                }
            }
        }
        clashes.into_iter().collect()
    }

    pub(crate) async fn select_tables(&self, database: &str, options: &RunOptions) -> Result<Vec<String>> {
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

    /// Retries a source call (sinks retry their own remote calls; retrying them here too would
    /// multiply the waits).
    pub(crate) async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
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
                Event::RetryScheduled { what: what.to_string(), attempt, wait, error: e.to_string() }
                    .emit(&self.listeners);
            })
            .await;
        (out, retries)
    }
}

/// Gives every lock back (a remote lock at once, rather than at its expiry).
pub(crate) async fn release(locks: Vec<Box<dyn crate::state::StateLock>>) {
    for lock in locks {
        lock.release().await;
    }
}

/// The outcomes of a table name, for the report.
type Outcomes = Vec<TableOutcome>;

#[cfg(test)]
mod tests;
