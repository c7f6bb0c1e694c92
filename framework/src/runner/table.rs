//! One source table name, all its tenants: discover → unify → prepare each target → stage
//! every tenant (its prior state loaded, and a write in doubt that it names resolved, as its
//! read comes near; one read each, fanned out) → one commit per target → record each outcome.
//! Everything before the commit holds one of the run's `concurrency` staging permits; the
//! commit, a wait on the targets, does not. The tables staging hand out their tenants' reads
//! in turn, so that few of them hold all their tenants at once.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::error::{ConnectorError, Result};
use crate::events::Event;
use crate::pipeline::TableOptions;
use crate::schema::{KeySource, TableSchema};
use crate::sink::{Staged, TargetTable, WriteMode};
use crate::source::{ReadRange, ReadRequest, ReadSummary};
use crate::state::{TableState, TargetStamp};
use crate::strategy::TablePlan;
use crate::window::WindowCheck;

use super::record::{self, PriorFacts, Success};
use super::{Outcomes, RunContext, Target, plan, read, unify};

/// A target that is ready for this table, with the stamp state records for it.
struct Live<'a> {
    target: &'a Target,
    stamp: TargetStamp,
}

/// One tenant's prior state per target, loaded once.
type Priors<'a> = Vec<(&'a Target, Result<Option<TableState>>)>;

/// One target's plan for a tenant and what it staged, or why it failed.
type TargetStaging = (Option<TablePlan>, Result<Staged>);

/// What one tenant's read and staging produced.
struct TenantResult {
    schema: Arc<TableSchema>,
    read: Option<ReadSummary>,
    elapsed: Duration,
    retries: u32,
    /// Per target id: the plan and the staged data, or why it failed.
    per_target: Vec<(String, TargetStaging)>,
    /// Per target id: what its commit needs of the prior state. (Not the whole state: a
    /// table's thousand staged tenants wait for the commit together.)
    priors: Vec<(String, Option<PriorFacts>)>,
}

impl TenantResult {
    fn for_target(&self, id: &str) -> Option<&TargetStaging> {
        self.per_target.iter().find(|(t, _)| t == id).map(|(_, r)| r)
    }

    fn prior(&self, id: &str) -> Option<&PriorFacts> {
        self.priors.iter().find(|(t, _)| t == id).and_then(|(_, p)| p.as_ref())
    }

    /// What recording its success in `l`'s target needs: `plan`, the `rows` applied, and the
    /// time from its read's start.
    fn success<'t>(&'t self, l: &'t Live<'_>, plan: &'t TablePlan, rows: u64, elapsed: Duration) -> Success<'t> {
        static NO_READ: std::sync::LazyLock<ReadSummary> = std::sync::LazyLock::new(ReadSummary::default);
        Success {
            schema: &self.schema,
            plan,
            read: self.read.as_ref().unwrap_or(&NO_READ),
            prior: self.prior(&l.target.id),
            stamp: &l.stamp,
            rows,
            elapsed,
            retries: self.retries,
        }
    }
}

pub(super) async fn sync_table(ctx: &RunContext<'_>, name: &str, dbs: &[String]) -> Outcomes {
    let runner = ctx.runner;
    let table_options = runner.table_options.get(name).cloned().unwrap_or_default();
    let mut outcomes = Vec::new();
    let staging = ctx.staging.acquire().await;

    let unified = unify::discover_and_unify(runner, name, dbs, &table_options).await;
    for (table, e) in &unified.rejected {
        outcomes.extend(record::fail_everywhere(ctx, table, e).await);
    }
    let Some(mut target_table) = unified.target else { return outcomes };
    target_table.changes = ctx.options.cdc.as_ref().map(|c| c.tracking);
    let tenants = unified.tenants;

    if ctx.options.dry_run {
        for schema in &tenants {
            let priors = load_priors(ctx, &schema.table.database, name).await;
            outcomes.extend(plan::dry_run_outcomes(ctx, schema, &target_table, &table_options, &priors).await);
        }
        return outcomes;
    }

    let live = prepare_targets(ctx, &target_table, &tenants, &mut outcomes).await;
    if live.is_empty() {
        return outcomes;
    }
    let in_doubt = InDoubt::default();

    // The target table's layout, part of every window digest (serialized once per table, not
    // per tenant).
    let layout = serde_json::to_string(&target_table).unwrap_or_default();
    // What waits for the commit: tenants with something to apply. A tenant with nothing to
    // apply anywhere is recorded as soon as enough of them are ready for one batched state
    // write, so a run's memory follows the tenants that changed, not the fleet.
    let mut results: Vec<TenantResult> = Vec::new();
    let mut ready: Vec<TenantResult> = Vec::new();
    let mut settled: Vec<(String, Staged)> = Vec::new();
    let mut recording: Vec<(&Live<'_>, record::Recording)> = Vec::new();
    let ready_batch = live.iter().map(|l| l.target.state.record_batch()).max().unwrap_or(1).max(1);
    // Tables hand out their tenants' reads in turn: a table's last tenant passes the turn on
    // once it has its read permit. Tables taking reads side by side would all hold their
    // tenants until they end, close together, and commit together (a fleet run's peak).
    let turn: Turn<'_> = std::sync::Mutex::new(Some(ctx.dispatch.lock().await));
    let last = tenants.len().saturating_sub(1);
    let mut staged = futures::stream::iter(tenants.iter().cloned().enumerate())
        .map(|(i, schema)| {
            let (target_table, layout) = (&target_table, layout.as_str());
            let (table_options, turn, live, in_doubt) = (&table_options, &turn, &live, &in_doubt);
            async move {
                // Loaded as the tenant's read comes near, not for all tenants up front: a
                // table's thousand prior states (with their window digests) were a fleet
                // run's largest holding after the report.
                let (targets, refused) = staging_targets(live, &schema.table.database, name, in_doubt, turn).await;
                let _permit = ctx.reads.acquire().await;
                if i == last {
                    turn.lock().unwrap_or_else(|p| p.into_inner()).take();
                }
                stage_tenant(ctx, schema, targets, refused, (target_table, layout), table_options).await
            }
        })
        .buffer_unordered(runner.settings.concurrency);
    while let Some(result) = staged.next().await {
        if !nothing_to_apply(ctx, &result) {
            results.push(result);
            continue;
        }
        ready.push(result);
        if ready.len() >= ready_batch {
            recording.extend(record_ready(ctx, &live, std::mem::take(&mut ready), &mut settled));
        }
    }
    drop(staged);
    drop(staging);
    for (l, r) in recording {
        outcomes.extend(r.finish(ctx, l.target).await);
    }
    // Fewer than a batch: recorded with the commit's tenants, in the same state writes.
    results.append(&mut ready);
    results.shrink_to_fit();

    for l in &live {
        outcomes.extend(commit_target(ctx, l, &target_table, &results, &settled).await);
    }
    outcomes
}

/// Whether every target the tenant was staged for holds it already: each staged nothing, to
/// be merged by key. A merge of no rows writes nothing, so its state can be recorded before
/// the table's commit. (Not a change stream's snapshot, nor a replace, where no rows is an
/// empty tenant to write; not a tenant that failed anywhere.)
fn nothing_to_apply(ctx: &RunContext<'_>, t: &TenantResult) -> bool {
    ctx.options.cdc.is_none()
        && !t.per_target.is_empty()
        && t.per_target.iter().all(|(_, (plan, staged))| match (plan, staged) {
            (Some(plan), Ok(s)) => plan.write == WriteMode::Merge && s.rows == 0,
            _ => false,
        })
}

/// Starts recording tenants with nothing to apply, in every target they were staged for (the
/// writes go on while the table's reads do); keeps their staging handles in `settled`, for the
/// sink to discard with the commit's.
fn record_ready<'l>(
    ctx: &RunContext<'_>,
    live: &'l [Live<'l>],
    ready: Vec<TenantResult>,
    settled: &mut Vec<(String, Staged)>,
) -> Vec<(&'l Live<'l>, record::Recording)> {
    let mut recording = Vec::with_capacity(live.len());
    for l in live {
        let mut successes = Vec::with_capacity(ready.len());
        for t in &ready {
            let Some((Some(plan), Ok(s))) = t.for_target(&l.target.id) else { continue };
            settled.push((l.target.id.clone(), s.clone()));
            successes.push(t.success(l, plan, 0, t.elapsed));
        }
        recording.push((l, record::start_recording(ctx, l.target, &successes)));
    }
    recording
}

/// `prepare` on every target that is not down; a target that fails fails every tenant.
async fn prepare_targets<'a>(
    ctx: &RunContext<'a>,
    target_table: &TargetTable,
    tenants: &[Arc<TableSchema>],
    outcomes: &mut Outcomes,
) -> Vec<Live<'a>> {
    let mut live = Vec::new();
    for target in &ctx.runner.targets {
        let prepared = match ctx.skip_reason(target) {
            Some(e) => Err(e),
            None => target.sink.prepare(target_table).await,
        };
        match prepared {
            Ok(p) => {
                for w in &p.warnings {
                    tracing::warn!(table = %target_table.name, target = %target.id, "{w}");
                }
                let stamp = TargetStamp {
                    destination: target.sink.destination(),
                    table: target_table.name.clone(),
                    generation: p.generation,
                };
                live.push(Live { target, stamp });
            }
            Err(e) => {
                ctx.note_failure(target, &e);
                for s in tenants {
                    outcomes.push(record::record_failure(ctx, target, &s.table, None, &e, 0, Duration::ZERO).await);
                }
            }
        }
    }
    live
}

/// One tenant's prior state in every target, each loaded once.
async fn load_priors<'a>(ctx: &RunContext<'a>, database: &str, table: &str) -> Priors<'a> {
    let mut priors = Vec::with_capacity(ctx.runner.targets.len());
    for target in &ctx.runner.targets {
        priors.push((target, target.state.load_table(database, table).await));
    }
    priors
}

/// A table's turn at handing out reads (`RunContext::dispatch`), until it passes it on.
type Turn<'a> = std::sync::Mutex<Option<tokio::sync::MutexGuard<'a, ()>>>;

/// Earlier writes in doubt that the tenants' states name, each resolved once per target, by
/// the first tenant staged that names it; with why it could not be, when it could not.
#[derive(Default)]
struct InDoubt {
    resolved: tokio::sync::Mutex<HashMap<(String, String), Option<ConnectorError>>>,
}

impl InDoubt {
    /// Resolves `handle` in `l`'s target unless that was done; the error when it cannot be.
    async fn resolve(&self, l: &Live<'_>, handle: &str, turn: &Turn<'_>) -> Option<ConnectorError> {
        // Held across the resolution: the other tenants of that write wait for its outcome.
        let mut resolved = self.resolved.lock().await;
        let key = (l.target.id.clone(), handle.to_string());
        if let Some(outcome) = resolved.get(&key) {
            return outcome.as_ref().map(ConnectorError::duplicate);
        }
        // A resolution can wait for a job up to `job_timeout`: the other tables' reads go on
        // meanwhile, this table's beside theirs.
        turn.lock().unwrap_or_else(|p| p.into_inner()).take();
        let outcome = match l.target.sink.resolve(handle).await {
            Ok(()) => {
                tracing::info!(target = %l.target.id, %handle, "an earlier write in doubt is resolved");
                None
            }
            Err(e) => Some(e),
        };
        let reported = outcome.as_ref().map(ConnectorError::duplicate);
        resolved.insert(key, outcome);
        reported
    }
}

/// The live targets a tenant is staged for, each with its prior state; and those it cannot
/// be, with why: the prior state did not load, or an earlier write in doubt that it names
/// could not be resolved.
async fn staging_targets<'l>(
    live: &'l [Live<'l>],
    database: &str,
    table: &str,
    in_doubt: &InDoubt,
    turn: &Turn<'_>,
) -> (Vec<(&'l Live<'l>, Option<TableState>)>, Vec<(String, TargetStaging)>) {
    let mut targets = Vec::with_capacity(live.len());
    let mut refused = Vec::new();
    for l in live {
        let prior = l.target.state.load_table(database, table).await;
        let failure = match &prior {
            Err(e) => Some(e.duplicate()),
            Ok(p) => match p.as_ref().and_then(|p| p.in_doubt.as_deref()) {
                Some(handle) => in_doubt.resolve(l, handle, turn).await,
                None => None,
            },
        };
        match (failure, prior) {
            (Some(e), _) => refused.push((l.target.id.clone(), (None, Err(e)))),
            (None, prior) => targets.push((l, prior.ok().flatten())),
        }
    }
    (targets, refused)
}

/// Plans one tenant for each of its targets, reads it once, stages it in every one.
async fn stage_tenant<'a>(
    ctx: &RunContext<'_>,
    schema: Arc<TableSchema>,
    targets: Vec<(&'a Live<'a>, Option<TableState>)>,
    refused: Vec<(String, TargetStaging)>,
    (target_table, layout): (&TargetTable, &str),
    table_options: &TableOptions,
) -> TenantResult {
    let runner = ctx.runner;
    let started = Instant::now();
    let table = schema.table.clone();
    let mut per_target = refused;
    per_target.reserve_exact(targets.len());
    let mut priors = Vec::with_capacity(targets.len());
    let mut plans: Vec<(&Target, TablePlan)> = Vec::with_capacity(targets.len());
    let mut held = Vec::with_capacity(targets.len());
    for (l, mut prior) in targets {
        let plan = match &ctx.options.cdc {
            None => plan::plan_for(ctx, table_options, &schema, l.target, Some(&l.stamp), prior.as_ref()),
            Some(cdc) => {
                let forced = cdc.resnapshot.get(&(l.target.id.clone(), table.clone())).map(String::as_str);
                // A table the stream already carries needs no snapshot.
                let Some(plan) = crate::cdc::snapshot_plan(&schema, prior.as_ref(), &l.stamp, cdc.tracking, forced)
                else {
                    continue;
                };
                plan::announce(ctx, &schema, l.target, &plan);
                plan
            }
        };
        plans.push((l.target, plan));
        priors.push((l.target.id.clone(), prior.as_ref().map(PriorFacts::of)));
        held.push(prior.as_mut().and_then(|p| p.window_rows.take()));
    }
    let mut read = None;
    let mut retries = 0;
    if !plans.is_empty() {
        // One read serves every target: the widest range any of them needs.
        let mut request = ReadRequest::new(
            schema.clone(),
            plan::widest_range(plans.iter().map(|(_, p)| &p.range)),
            runner.settings.batch_size,
        );
        request.track_cursor = plans.iter().find_map(|(_, p)| p.cursor.clone());
        request.cursor_time_zone =
            table_options.cursor_time_zone.clone().or_else(|| runner.settings.cursor_time_zone.clone());
        request.capture_position = ctx.options.cdc.is_some();
        // The target table's layout and the tenant's columns are part of every digest: a row
        // is "held" only in the shape it was written in.
        let shape = || format!("{} {layout}", unify::fingerprint(&schema));
        let lookback = runner.settings.lookback_minutes;
        // Only rows merged by a key the source guarantees unique can be left out: a table
        // without one counts each row's copies over the whole window it is sent, and a
        // configured key that repeats would let one sent row overwrite a left-out one.
        let unique_key = matches!(schema.key_source, KeySource::PrimaryKey | KeySource::UniqueIndex);
        match request.range {
            ReadRange::Since { .. } if unique_key && plans.iter().all(|(_, p)| p.write == WriteMode::Merge) => {
                let held: Vec<_> = held.iter().map(Option::as_ref).collect();
                request.window = Some(WindowCheck::new(&held, &shape(), lookback));
            }
            // A full read leaves nothing out, but collects the digests of the next window, so
            // the first incremental run after it sends only what changed. Not for a change
            // stream's snapshot.
            ReadRange::Full if unique_key && request.track_cursor.is_some() && !request.capture_position => {
                request.window = Some(WindowCheck::new(&[], &shape(), lookback));
            }
            _ => {}
        }
        let (result, r) =
            runner.retry_counted(&format!("sync {table}"), || read::attempt(ctx, &request, target_table, &plans)).await;
        retries = r;
        match result {
            Ok((summary, finished)) => {
                read = Some(summary);
                for (target, plan, staged) in finished {
                    per_target.push((target.id.clone(), (Some(plan), staged)));
                }
            }
            Err(e) => {
                for (target, plan) in plans {
                    per_target.push((target.id.clone(), (Some(plan), Err(e.duplicate()))));
                }
            }
        }
    }
    TenantResult { schema, read, elapsed: started.elapsed(), retries, per_target, priors }
}

/// One target's commit of every tenant staged for it, then each tenant's record.
async fn commit_target(
    ctx: &RunContext<'_>,
    l: &Live<'_>,
    target_table: &TargetTable,
    results: &[TenantResult],
    settled: &[(String, Staged)],
) -> Outcomes {
    let target = l.target;
    let mut outcomes = Vec::new();
    // Recorded before the commit, discarded with it.
    let mut withheld: Vec<Staged> = settled.iter().filter(|(id, _)| *id == target.id).map(|(_, s)| s.clone()).collect();
    let mut staged: Vec<(&TenantResult, &TablePlan, &Staged)> = Vec::with_capacity(results.len());
    for t in results {
        let Some((plan, result)) = t.for_target(&target.id) else { continue };
        match (plan, result) {
            (Some(plan), Ok(s)) => staged.push((t, plan, s)),
            (plan, Err(e)) => {
                outcomes.push(
                    record::record_failure(
                        ctx,
                        target,
                        &t.schema.table,
                        plan.as_ref().map(|p| p.mode),
                        e,
                        t.retries,
                        t.elapsed,
                    )
                    .await,
                );
            }
            (None, Ok(_)) => {}
        }
    }
    let vouched: Vec<&crate::schema::TableRef> = staged
        .iter()
        // A replace writes even with no rows: it deletes the tenant's old ones.
        .filter(|(t, _, s)| {
            (s.rows > 0 || s.write == WriteMode::ReplaceTenant) && t.prior(&target.id).is_some_and(|p| p.window_rows)
        })
        .map(|(t, _, _)| &t.schema.table)
        .collect();
    let refused = record::forget_window_rows(ctx, target, &vouched).await;
    // Staged but not to be committed: discarded with the others after the commit.
    if !refused.is_empty() {
        let mut kept = Vec::with_capacity(staged.len());
        for (t, plan, s) in staged {
            match refused.iter().find(|(db, _)| *db == t.schema.table.database) {
                Some((_, e)) => {
                    withheld.push(s.clone());
                    outcomes.push(
                        record::record_failure(ctx, target, &t.schema.table, Some(plan.mode), e, t.retries, t.elapsed)
                            .await,
                    );
                }
                None => kept.push((t, plan, s)),
            }
        }
        staged = kept;
    }
    if staged.is_empty() {
        if !withheld.is_empty() {
            target.sink.discard(&withheld).await;
        }
        return outcomes;
    }
    let started = Instant::now();
    let mut all: Vec<Staged> = staged.iter().map(|(_, _, s)| (*s).clone()).collect();
    let results_by_tenant = commit_isolating(target, target_table, &all).await;
    let committed: Vec<&Staged> =
        all.iter().filter(|s| results_by_tenant.get(&s.tenant).is_some_and(|r| r.is_ok())).collect();
    if !committed.is_empty() {
        Event::TableCommitted {
            table: target_table.name.clone(),
            target: target.id.clone(),
            tenants: committed.len(),
            rows: committed.iter().map(|s| s.rows).sum(),
            elapsed: started.elapsed(),
        }
        .emit(ctx.listeners());
    }
    // One discard for all: a sink's tenants may share what it drops.
    all.append(&mut withheld);
    target.sink.discard(&all).await;
    let mut successes = Vec::new();
    for (t, plan, s) in staged {
        let elapsed = t.elapsed + started.elapsed();
        match results_by_tenant.get(&s.tenant) {
            Some(Ok(())) => successes.push(t.success(l, plan, s.rows, elapsed)),
            Some(Err(e)) => {
                ctx.note_failure(target, e);
                outcomes.push(
                    record::record_failure(ctx, target, &t.schema.table, Some(plan.mode), e, t.retries, elapsed).await,
                );
            }
            None => {
                let e = ConnectorError::permanent(format!("{}: the commit did not report this tenant", t.schema.table));
                outcomes.push(
                    record::record_failure(ctx, target, &t.schema.table, Some(plan.mode), &e, t.retries, elapsed).await,
                );
            }
        }
    }
    outcomes.extend(record::record_successes(ctx, target, successes).await);
    outcomes
}

/// Commits the staged tenants; when a commit fails for a reason retrying cannot fix, the
/// tenants are committed in halves, recursively, so one tenant's bad value fails that tenant
/// alone. A failure whose outcome is in doubt is never split: it may have been applied.
pub(crate) async fn commit_isolating(
    target: &Target,
    table: &TargetTable,
    staged: &[Staged],
) -> HashMap<String, Result<()>> {
    let mut results = HashMap::new();
    // The tenants as given, borrowed: only a split (rare) copies its halves.
    let mut groups: Vec<Cow<'_, [Staged]>> = vec![Cow::Borrowed(staged)];
    while let Some(group) = groups.pop() {
        match target.sink.commit(table, &group).await {
            Ok(outcome) => {
                let rejected: HashMap<String, ConnectorError> = outcome.rejected.into_iter().collect();
                // Rejected tenants were not applied; several of them rejected for one reason
                // that is not in doubt are tried again in halves, as a failed commit is.
                let splittable =
                    rejected.len() > 1 && rejected.values().all(|e| !e.is_transient() && e.in_doubt().is_none());
                let mut again = Vec::new();
                for s in group.iter() {
                    match rejected.get(&s.tenant) {
                        Some(_) if splittable => again.push(s.clone()),
                        Some(e) => {
                            results.insert(s.tenant.clone(), Err(e.duplicate()));
                        }
                        None => {
                            results.insert(s.tenant.clone(), Ok(()));
                        }
                    }
                }
                if !again.is_empty() {
                    let second = again.split_off(again.len() / 2);
                    groups.push(Cow::Owned(second));
                    groups.push(Cow::Owned(again));
                }
            }
            Err(e) if group.len() > 1 && !e.is_transient() && e.in_doubt().is_none() => {
                tracing::warn!(table = %table.name, target = %target.id, tenants = group.len(), error = %e,
                    "commit failed; committing the tenants in smaller groups to find the one that fails");
                let middle = group.len() / 2;
                let (first, second) = match group {
                    Cow::Borrowed(g) => (Cow::Borrowed(&g[..middle]), Cow::Borrowed(&g[middle..])),
                    Cow::Owned(mut g) => {
                        let second = g.split_off(middle);
                        (Cow::Owned(g), Cow::Owned(second))
                    }
                };
                groups.push(second);
                groups.push(first);
            }
            Err(e) => {
                for s in group.iter() {
                    results.insert(s.tenant.clone(), Err(e.duplicate()));
                }
            }
        }
    }
    results
}
