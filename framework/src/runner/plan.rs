//! Planning one tenant's table for every target: the strategy's plan per target, the one read
//! that serves them all, and the `--dry-run` view of it.

use std::time::Duration;

use chrono::Utc;

use crate::events::Event;
use crate::pipeline::TableOptions;
use crate::report::{OutcomeStatus, PlanDetail, TableOutcome};
use crate::schema::TableSchema;
use crate::sink::TargetTable;
use crate::source::ReadRange;
use crate::state::{TableState, TargetStamp};
use crate::strategy::{PlanOptions, TablePlan};

use super::{RunContext, Target, unify};

/// The strategy's inputs for one tenant × target.
pub(super) fn plan_options(
    ctx: &RunContext<'_>,
    table_options: &TableOptions,
    schema: &TableSchema,
    stamp: Option<&TargetStamp>,
) -> PlanOptions {
    let settings = &ctx.runner.settings;
    PlanOptions {
        force_full: ctx.options.force_full,
        lookback_minutes: settings.lookback_minutes,
        cursor_override: table_options.cursor_column.clone(),
        full_after_failure: settings.full_after_failure,
        null_cursor: settings.null_cursor,
        full_every: table_options.full_every.or(settings.full_every).map(Duration::from_secs),
        target: stamp.cloned(),
        schema_fingerprint: Some(unify::fingerprint(schema)),
        now: Some(Utc::now().naive_utc()),
    }
}

/// Plans one tenant for one target and tells the listeners.
pub(super) fn plan_for(
    ctx: &RunContext<'_>,
    table_options: &TableOptions,
    schema: &TableSchema,
    target: &Target,
    stamp: Option<&TargetStamp>,
    prior: Option<&TableState>,
) -> TablePlan {
    let options = plan_options(ctx, table_options, schema, stamp);
    let plan = ctx.runner.strategy.plan(schema, prior, &options);
    announce(ctx, schema, target, &plan);
    plan
}

/// Tells the listeners (and the log) what a tenant × target will do.
pub(super) fn announce(ctx: &RunContext<'_>, schema: &TableSchema, target: &Target, plan: &TablePlan) {
    Event::TablePlanned {
        table: schema.table.clone(),
        target: target.id.clone(),
        mode: plan.mode,
        reason: plan.reason.clone(),
    }
    .emit(ctx.listeners());
    for w in &plan.warnings {
        tracing::warn!(table = %schema.table, target = %target.id, "{w}");
    }
}

/// The union of read ranges: full if any is full, else the earliest lower bound (and the
/// largest zone offset, which widens the most).
pub(super) fn widest_range<'a>(ranges: impl Iterator<Item = &'a ReadRange>) -> ReadRange {
    let mut widest: Option<ReadRange> = None;
    for r in ranges {
        widest = Some(match (widest, r) {
            (None, r) => r.clone(),
            (Some(ReadRange::Full), _) | (_, ReadRange::Full) => ReadRange::Full,
            // A plan never carries key ranges (the runner makes them from a full plan) or key
            // lists (repairs read on their own).
            (Some(ReadRange::KeyRange { .. } | ReadRange::Keys { .. }), _)
            | (_, ReadRange::KeyRange { .. } | ReadRange::Keys { .. }) => ReadRange::Full,
            (
                Some(ReadRange::Since { cursor, from: a, include_nulls: na, from_utc_offset: oa }),
                ReadRange::Since { from: b, include_nulls: nb, from_utc_offset: ob, .. },
            ) => ReadRange::Since {
                cursor,
                from: if *b < a { b.clone() } else { a },
                include_nulls: na || *nb,
                from_utc_offset: match (oa, ob) {
                    (Some(x), Some(y)) => Some(x.max(*y)),
                    (x, y) => x.or(*y),
                },
            },
        });
    }
    widest.unwrap_or(ReadRange::Full)
}

/// `--dry-run`: what each target would do with one tenant's table, and nothing written.
pub(super) async fn dry_run_outcomes(
    ctx: &RunContext<'_>,
    schema: &TableSchema,
    target_table: &TargetTable,
    table_options: &TableOptions,
    priors: &[(&Target, crate::error::Result<Option<TableState>>)],
) -> Vec<TableOutcome> {
    let mut out = Vec::new();
    for (target, prior) in priors {
        let prior = match prior {
            Ok(p) => p.as_ref(),
            Err(e) => {
                out.push(TableOutcome::failed(&schema.table, &target.id, None, e));
                continue;
            }
        };
        // The stamp of the table as it is now: a dry run makes no table, so a table that does
        // not exist yet shows as new.
        let stamp =
            TargetStamp { destination: target.sink.destination(), table: target_table.name.clone(), generation: None };
        let options = plan_options(ctx, table_options, schema, Some(&stamp));
        let plan = ctx.runner.strategy.plan(schema, prior, &options);
        let (columns, changes) = match target.sink.plan(target_table).await {
            Ok(p) => (p.columns, if p.changes.is_empty() { vec!["none".to_string()] } else { p.changes }),
            Err(e) => (Vec::new(), vec![format!("cannot tell ({e})")]),
        };
        let mut o = TableOutcome::new(&schema.table, &target.id, OutcomeStatus::Planned);
        o.mode = Some(plan.mode);
        o.detail = Some(plan.reason.clone());
        o.warnings = plan.warnings.clone();
        o.plan = Some(Box::new(PlanDetail {
            reason: plan.reason,
            key: schema.key.clone(),
            cursor: plan.cursor,
            write: plan.write.describe().to_string(),
            range: plan.range.describe(),
            columns,
            source_types: schema.columns.iter().map(|c| format!("{} {}", c.name, c.source_type)).collect(),
            changes,
            excluded: table_options.exclude_columns.clone(),
            renamed: table_options.rename_columns.iter().map(|(s, t)| format!("{s} → {t}")).collect(),
        }));
        out.push(o);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widest_range_prefers_full_then_the_earliest_bound() {
        let a = ReadRange::since("u", "2025-01-02", false);
        let b = ReadRange::since("u", "2025-01-01", false);
        assert_eq!(widest_range([&a, &b].into_iter()), b);
        assert_eq!(widest_range([&a, &ReadRange::Full].into_iter()), ReadRange::Full);
    }
}
