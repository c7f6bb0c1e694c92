//! One source table name, all its tenants: discover → unify → prepare each target → resolve
//! writes in doubt → stage every tenant (one read each, fanned out) → one commit per target →
//! record each outcome. Everything before the commit holds one of the run's `concurrency`
//! staging permits; the commit, a wait on the targets, does not.
//!
//! The commit covers every tenant, so each tenant's prior state (until its read) and the
//! record its success will leave (until the commit) are set aside on disk (`spill.rs`): what
//! a table in flight holds in memory per tenant is its staged handle, not its states.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::error::{ConnectorError, Result};
use crate::events::Event;
use crate::pipeline::TableOptions;
use crate::schema::TableRef;
use crate::schema::TableSchema;
use crate::sink::{Staged, TargetTable, WriteMode};
use crate::source::{ReadRange, ReadRequest, ReadSummary};
use crate::state::{SyncMode, TableState, TargetStamp};
use crate::strategy::TablePlan;
use crate::window::WindowCheck;

use super::record::{self, Committed, PriorFacts, Success, SuccessRecord};
use super::spill::{Spill, Spilled};
use super::{Outcomes, RunContext, Target, plan, read, unify};

/// A target that is ready for this table, with the stamp state records for it.
struct Live<'a> {
    target: &'a Target,
    stamp: TargetStamp,
}

/// One tenant's prior state per target, loaded once and set aside until its read, with the
/// write in doubt it names (resolved before any tenant is staged).
type Priors<'a> = Vec<(&'a Target, Result<Option<PriorRef>>)>;

/// The targets one tenant is staged for, each with where its prior state was set aside.
type StagedFor<'a> = Vec<(&'a Live<'a>, Option<Spilled<TableState>>)>;

struct PriorRef {
    state: Spilled<TableState>,
    in_doubt: Option<String>,
}

/// How many committed tenants' states are recorded in one batch: a bounded group, so that
/// recording a thousand tenants does not hold a thousand states at once.
const RECORD_GROUP: usize = 256;

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

/// A tenant staged for one target, waiting for the table's commit: the staged data and where
/// its success record was set aside. (Small: a table's thousand tenants wait together.)
enum Waiting {
    Ready(Ready),
    Failed(Box<Failure>),
}

struct Ready {
    /// Shared with the table's list of tenants.
    schema: Arc<TableSchema>,
    staged: Staged,
    /// The plan's mode, for a failure's record.
    mode: SyncMode,
    record: Spilled<SuccessRecord>,
    elapsed: Duration,
    retries: u32,
    /// The prior state holds window digests ([`crate::window`]): they go before a commit
    /// that writes rows.
    window_rows: bool,
}

/// A tenant that cannot be committed to one target, and why.
struct Failure {
    table: TableRef,
    mode: Option<SyncMode>,
    error: ConnectorError,
    elapsed: Duration,
    retries: u32,
    /// Staged data that is not to be committed: discarded with the others after the commit.
    withheld: Option<Staged>,
}

impl Waiting {
    fn failed(t: &TenantResult, mode: Option<SyncMode>, error: ConnectorError, withheld: Option<Staged>) -> Self {
        Self::Failed(Box::new(Failure {
            table: t.schema.table.clone(),
            mode,
            error,
            elapsed: t.elapsed,
            retries: t.retries,
            withheld,
        }))
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
            let priors = load_priors(ctx, &TableRef::new(&schema.table.database, name)).await;
            outcomes.extend(plan::dry_run_outcomes(ctx, schema, &target_table, &table_options, &priors).await);
        }
        return outcomes;
    }

    // Prior state: loaded here, once per tenant and target, and set aside on disk until the
    // tenant's read (a thousand tenants' states would otherwise wait in memory for it).
    let mut prior_states = Spill::new(format!("prior states of table `{name}`"));
    let mut priors: Vec<Priors<'_>> = Vec::with_capacity(tenants.len());
    for schema in &tenants {
        let mut per_target = Vec::with_capacity(runner.targets.len());
        for (target, loaded) in load_priors(ctx, &TableRef::new(&schema.table.database, name)).await {
            let set_aside = loaded.and_then(|prior| {
                prior
                    .map(|state| Ok(PriorRef { state: prior_states.put(&state)?, in_doubt: state.in_doubt }))
                    .transpose()
            });
            per_target.push((target, set_aside));
        }
        priors.push(per_target);
    }
    if let Err(e) = prior_states.finish() {
        for (_, prior) in priors.iter_mut().flatten() {
            if matches!(prior, Ok(Some(_))) {
                *prior = Err(e.duplicate());
            }
        }
    }

    let live = prepare_targets(ctx, &target_table, &tenants, &mut outcomes).await;
    if live.is_empty() {
        return outcomes;
    }
    // Which targets each tenant is staged for: the live ones whose prior state loaded and
    // whose earlier writes in doubt are resolved.
    let mut staged_for: Vec<StagedFor<'_>> = (0..tenants.len()).map(|_| Vec::with_capacity(live.len())).collect();
    for l in &live {
        let unresolved = resolve_in_doubt(l, &priors).await;
        for (i, schema) in tenants.iter().enumerate() {
            let prior = priors[i].iter().find(|(t, _)| t.id == l.target.id).map(|(_, p)| p);
            let failure = match prior {
                Some(Err(e)) => Some(e.duplicate()),
                Some(Ok(p)) => p
                    .as_ref()
                    .and_then(|p| p.in_doubt.as_ref())
                    .and_then(|h| unresolved.get(h))
                    .map(ConnectorError::duplicate),
                None => None,
            };
            match failure {
                Some(e) => outcomes
                    .push(record::record_failure(ctx, l.target, &schema.table, None, &e, 0, Duration::ZERO).await),
                None => staged_for[i].push((l, prior.and_then(|p| p.as_ref().ok()?.as_ref().map(|p| p.state)))),
            }
        }
    }
    drop(priors);

    // The target table's layout, part of every window digest (serialized once per table, not
    // per tenant).
    let layout = serde_json::to_string(&target_table).unwrap_or_default();
    // What each tenant's success will record, set aside as it is staged; in memory, per
    // target, only the staged data's handle and where its record is.
    let mut records = Spill::new(format!("staged tenants' records of table `{name}`"));
    let mut waiting: Vec<Vec<Waiting>> = live.iter().map(|_| Vec::with_capacity(tenants.len())).collect();
    let mut staged = futures::stream::iter(tenants.iter().cloned().zip(staged_for))
        .map(|(schema, targets)| {
            let (target_table, layout) = (&target_table, layout.as_str());
            let (table_options, prior_states) = (&table_options, &prior_states);
            async move {
                let _permit = ctx.reads.acquire().await;
                stage_tenant(ctx, schema, targets, prior_states, (target_table, layout), table_options).await
            }
        })
        .buffer_unordered(runner.settings.concurrency);
    while let Some(result) = staged.next().await {
        set_aside(ctx, &live, result, &mut records, &mut waiting);
    }
    drop(staged);
    drop(prior_states);
    drop(staging);
    if let Err(e) = records.finish() {
        for w in waiting.iter_mut().flatten() {
            if let Waiting::Ready(r) = w {
                let failure = Failure {
                    table: r.schema.table.clone(),
                    mode: Some(r.mode),
                    error: e.duplicate(),
                    elapsed: r.elapsed,
                    retries: r.retries,
                    withheld: Some(r.staged.clone()),
                };
                *w = Waiting::Failed(Box::new(failure));
            }
        }
    }

    for (l, waiting) in live.iter().zip(waiting) {
        outcomes.extend(commit_target(ctx, l, &target_table, waiting, &records).await);
    }
    outcomes
}

/// One tenant's prior state in every target.
async fn load_priors<'a>(ctx: &RunContext<'a>, table: &TableRef) -> Vec<(&'a Target, Result<Option<TableState>>)> {
    let mut per_target = Vec::with_capacity(ctx.runner.targets.len());
    for target in &ctx.runner.targets {
        per_target.push((target, target.state.load_table(&table.database, &table.table).await));
    }
    per_target
}

/// Turns a staged tenant into what waits for each target's commit: its success record set
/// aside, or why it cannot be committed.
fn set_aside(
    ctx: &RunContext<'_>,
    live: &[Live<'_>],
    t: TenantResult,
    records: &mut Spill,
    waiting: &mut [Vec<Waiting>],
) {
    let no_read = ReadSummary::default();
    for (id, (plan, staged)) in &t.per_target {
        let Some(i) = live.iter().position(|l| &l.target.id == id) else { continue };
        let entry = match (plan, staged) {
            (Some(plan), Ok(staged)) => {
                let prior = t.priors.iter().find(|(p, _)| p == id).and_then(|(_, p)| p.as_ref());
                let success = Success {
                    schema: &t.schema,
                    plan,
                    read: t.read.as_ref().unwrap_or(&no_read),
                    prior,
                    stamp: &live[i].stamp,
                    rows: staged.rows,
                    elapsed: t.elapsed,
                };
                match SuccessRecord::of(ctx, &success).and_then(|r| records.put(&r)) {
                    Ok(record) => Waiting::Ready(Ready {
                        schema: t.schema.clone(),
                        staged: staged.clone(),
                        mode: plan.mode,
                        record,
                        elapsed: t.elapsed,
                        retries: t.retries,
                        window_rows: prior.is_some_and(|p| p.window_rows),
                    }),
                    Err(e) => Waiting::failed(&t, Some(plan.mode), e, Some(staged.clone())),
                }
            }
            (plan, Err(e)) => Waiting::failed(&t, plan.as_ref().map(|p| p.mode), e.duplicate(), None),
            (None, Ok(_)) => continue,
        };
        waiting[i].push(entry);
    }
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

/// Resolves every write in doubt that the tenants' state names for this target (each once);
/// returns those that could not be resolved, with the reason.
async fn resolve_in_doubt(l: &Live<'_>, priors: &[Priors<'_>]) -> HashMap<String, ConnectorError> {
    let handles: BTreeSet<String> = priors
        .iter()
        .flat_map(|p| p.iter())
        .filter(|(t, _)| t.id == l.target.id)
        .filter_map(|(_, p)| p.as_ref().ok()?.as_ref()?.in_doubt.clone())
        .collect();
    let mut unresolved = HashMap::new();
    for handle in handles {
        match l.target.sink.resolve(&handle).await {
            Ok(()) => tracing::info!(target = %l.target.id, %handle, "an earlier write in doubt is resolved"),
            Err(e) => {
                unresolved.insert(handle, e);
            }
        }
    }
    unresolved
}

/// Plans one tenant for each of its targets, reads it once, stages it in every one.
async fn stage_tenant<'a>(
    ctx: &RunContext<'_>,
    schema: Arc<TableSchema>,
    targets: StagedFor<'a>,
    prior_states: &Spill,
    (target_table, layout): (&TargetTable, &str),
    table_options: &TableOptions,
) -> TenantResult {
    let runner = ctx.runner;
    let started = Instant::now();
    let table = schema.table.clone();
    let mut per_target = Vec::with_capacity(targets.len());
    let mut priors = Vec::with_capacity(targets.len());
    let mut plans: Vec<(&Target, TablePlan)> = Vec::with_capacity(targets.len());
    let mut held = Vec::with_capacity(targets.len());
    for (l, prior) in targets {
        let mut prior = match prior.map(|p| prior_states.get(p)).transpose() {
            Ok(prior) => prior,
            Err(e) => {
                per_target.push((l.target.id.clone(), (None, Err(e))));
                continue;
            }
        };
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
        // Only rows merged by key can be left out: a table without one counts each row's
        // copies over the whole window it is sent.
        if matches!(request.range, ReadRange::Since { .. }) && plans.iter().all(|(_, p)| p.write == WriteMode::Merge) {
            // The target table's layout and the tenant's columns are part of every digest:
            // a row is "held" only in the shape it was written in.
            let shape = format!("{} {layout}", unify::fingerprint(&schema));
            let held: Vec<_> = held.iter().map(Option::as_ref).collect();
            request.window = Some(WindowCheck::new(&held, &shape, runner.settings.lookback_minutes));
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
    waiting: Vec<Waiting>,
    records: &Spill,
) -> Outcomes {
    let target = l.target;
    let mut outcomes = Vec::new();
    let mut ready = Vec::with_capacity(waiting.len());
    // Staged but not to be committed: discarded with the others after the commit.
    let mut withheld = Vec::new();
    for w in waiting {
        match w {
            Waiting::Ready(r) => ready.push(r),
            Waiting::Failed(f) => {
                outcomes
                    .push(record::record_failure(ctx, target, &f.table, f.mode, &f.error, f.retries, f.elapsed).await);
                withheld.extend(f.withheld);
            }
        }
    }
    let vouched: Vec<&TableRef> =
        ready.iter().filter(|r| r.staged.rows > 0 && r.window_rows).map(|r| &r.schema.table).collect();
    let refused = record::forget_window_rows(ctx, target, &vouched).await;
    if !refused.is_empty() {
        let mut kept = Vec::with_capacity(ready.len());
        for r in ready {
            match refused.iter().find(|(db, _)| *db == r.schema.table.database) {
                Some((_, e)) => {
                    outcomes.push(
                        record::record_failure(ctx, target, &r.schema.table, Some(r.mode), e, r.retries, r.elapsed)
                            .await,
                    );
                    withheld.push(r.staged);
                }
                None => kept.push(r),
            }
        }
        ready = kept;
    }
    if ready.is_empty() {
        if !withheld.is_empty() {
            target.sink.discard(&withheld).await;
        }
        return outcomes;
    }
    let started = Instant::now();
    // The staged data moves into one slice for the commit (no copy of a thousand handles);
    // the rest of each tenant's entry stays beside it, in the same order.
    let (all, rest): (Vec<Staged>, Vec<_>) =
        ready.into_iter().map(|r| (r.staged, (r.schema, r.mode, r.record, r.elapsed, r.retries))).unzip();
    let results_by_tenant = commit_isolating(target, target_table, &all).await;
    target.sink.discard(&all).await;
    if !withheld.is_empty() {
        target.sink.discard(&withheld).await;
    }
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
    drop(committed);
    let commit_elapsed = started.elapsed();
    let mut group = Vec::with_capacity(RECORD_GROUP.min(all.len()));
    for (staged, (schema, mode, record, elapsed, retries)) in all.iter().zip(rest) {
        let elapsed = elapsed + commit_elapsed;
        let table = &schema.table;
        let failure = match results_by_tenant.get(&staged.tenant) {
            Some(Ok(())) => match records.get(record) {
                Ok(record) => {
                    group.push(Committed { record, elapsed, retries });
                    if group.len() == RECORD_GROUP {
                        outcomes.extend(record::record_successes(ctx, target, std::mem::take(&mut group)).await);
                    }
                    continue;
                }
                // The data is committed, its checkpoint lost: the next run reads again from the
                // older watermark, which the idempotent writes absorb.
                Err(e) => ConnectorError::transient(format!("data committed but state not saved: {e}")),
            },
            Some(Err(e)) => {
                ctx.note_failure(target, e);
                e.duplicate()
            }
            None => ConnectorError::permanent(format!("{table}: the commit did not report this tenant")),
        };
        outcomes.push(record::record_failure(ctx, target, table, Some(mode), &failure, retries, elapsed).await);
    }
    outcomes.extend(record::record_successes(ctx, target, group).await);
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
    // A group is a stretch of `staged` while halving (no copies); tenants a commit rejected
    // are a copy.
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
                    let (first, second) = halves(Cow::Owned(again));
                    groups.push(second);
                    groups.push(first);
                }
            }
            Err(e) if group.len() > 1 && !e.is_transient() && e.in_doubt().is_none() => {
                tracing::warn!(table = %table.name, target = %target.id, tenants = group.len(), error = %e,
                    "commit failed; committing the tenants in smaller groups to find the one that fails");
                let (first, second) = halves(group);
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

/// A group's first and second half.
fn halves(group: Cow<'_, [Staged]>) -> (Cow<'_, [Staged]>, Cow<'_, [Staged]>) {
    match group {
        Cow::Borrowed(all) => {
            let (first, second) = all.split_at(all.len() / 2);
            (Cow::Borrowed(first), Cow::Borrowed(second))
        }
        Cow::Owned(mut first) => {
            let second = first.split_off(first.len() / 2);
            (Cow::Owned(first), Cow::Owned(second))
        }
    }
}
