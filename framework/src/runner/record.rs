//! Recording outcomes: the state a success or a failure leaves (written only after the target
//! committed what the tenant staged; a tenant with nothing to apply has nothing to wait for),
//! the report line, and the next watermark.

use std::time::Duration;

use chrono::Utc;

use crate::error::ConnectorError;
use crate::events::Event;
use crate::report::{OutcomeStatus, TableOutcome};
use crate::schema::{LogicalType, TableRef, TableSchema};
use crate::source::ReadSummary;
use crate::state::{CdcTableState, SyncMode, TableState, TargetStamp, Watermark, watermark_text};
use crate::strategy::TablePlan;

use super::{RunContext, Target, unify};

/// What one tenant's successful commit to one target leaves behind.
pub(super) struct Success<'a> {
    pub schema: &'a TableSchema,
    pub plan: &'a TablePlan,
    pub read: &'a ReadSummary,
    pub prior: Option<&'a PriorFacts>,
    pub stamp: &'a TargetStamp,
    pub rows: u64,
    pub elapsed: Duration,
    pub retries: u32,
}

/// What a success needs of the state before it.
#[derive(Debug, Clone)]
pub(super) struct PriorFacts {
    pub watermark: Option<Watermark>,
    pub last_full_at: Option<chrono::NaiveDateTime>,
    /// The state holds window digests ([`crate::window`]).
    pub window_rows: bool,
}

impl PriorFacts {
    pub fn of(state: &TableState) -> Self {
        Self {
            watermark: state.watermark.clone(),
            last_full_at: state.last_full_at,
            window_rows: state.window_rows.is_some(),
        }
    }
}

/// Before a commit that writes rows: drops the window digests of the tenants whose state has
/// them ([`crate::window::forget`]). The commit may change rows they vouch for, and if its own
/// state were never saved (a crash, a state store down) the next run would still trust them.
/// Returns the tenants whose digests could not be dropped: they must not be committed.
pub(super) async fn forget_window_rows(
    ctx: &RunContext<'_>,
    target: &Target,
    tenants: &[&TableRef],
) -> Vec<(String, ConnectorError)> {
    if !ctx.records() || tenants.is_empty() {
        return Vec::new();
    }
    crate::window::forget(target.state.as_ref(), tenants).await
}

/// Records the tenants one commit to `target` applied: their report lines, and their state in
/// batched writes of the store's [`record_batch`](crate::StateStore::record_batch) (a table's
/// thousand tenants are a few flushes, not a thousand). Only a group's lines and states are
/// built at a time: a fleet's tables commit side by side, and each holding all its tenants'
/// states at once was 5.3 MB of a 22.5 MB heap peak (1,000 tenants × 10 tables, nothing
/// changed).
pub(super) async fn record_successes(
    ctx: &RunContext<'_>,
    target: &Target,
    successes: Vec<Success<'_>>,
) -> Vec<TableOutcome> {
    // Sized exactly: a table's thousand tenants' lines, not room for two thousand.
    let mut outcomes = Vec::with_capacity(successes.len());
    for group in successes.chunks(target.state.record_batch().max(1)) {
        outcomes.extend(start_recording(ctx, target, group).finish(ctx, target).await);
    }
    outcomes
}

/// One batched state write under way (a task of its own, so that tenants recorded before
/// their table's commit do not hold up its reads), and the report lines that wait for it.
pub(super) struct Recording {
    lines: Vec<(TableOutcome, TableRef)>,
    written: Option<tokio::task::JoinHandle<Vec<crate::Result<()>>>>,
    /// Successes that cannot count as one, recorded as failures when the write is done.
    refused: Vec<(TableRef, SyncMode, ConnectorError, u32, Duration)>,
}

/// Starts recording `successes` to `target` in one state write.
pub(super) fn start_recording(ctx: &RunContext<'_>, target: &Target, successes: &[Success<'_>]) -> Recording {
    let mut lines = Vec::with_capacity(successes.len());
    let mut records = Vec::with_capacity(successes.len());
    let mut refused = Vec::new();
    for s in successes {
        match success_state(ctx, s) {
            Ok(state) => {
                lines.push((success_line(target, s), s.schema.table.clone()));
                records.push((s.schema.table.database.clone(), state));
            }
            Err(e) => refused.push((s.schema.table.clone(), s.plan.mode, e, s.retries, s.elapsed)),
        }
    }
    let written = ctx.records().then(|| {
        let state = std::sync::Arc::clone(&target.state);
        tokio::spawn(async move { state.record_many(records).await })
    });
    Recording { lines, written, refused }
}

impl Recording {
    /// Waits for the write; the lines, each failed whose state was not saved.
    pub(super) async fn finish(self, ctx: &RunContext<'_>, target: &Target) -> Vec<TableOutcome> {
        let mut outcomes = Vec::with_capacity(self.lines.len() + self.refused.len());
        for (table, mode, e, retries, elapsed) in &self.refused {
            outcomes.push(record_failure(ctx, target, table, Some(*mode), e, *retries, *elapsed).await);
        }
        let Some(written) = self.written else {
            outcomes.extend(self.lines.into_iter().map(|(line, _)| line));
            return outcomes;
        };
        let count = self.lines.len();
        let written = written.await.unwrap_or_else(|e| {
            let e = ConnectorError::permanent(format!("the state write did not finish: {e}"));
            (0..count).map(|_| Err(e.duplicate())).collect()
        });
        for ((mut line, table), result) in self.lines.into_iter().zip(written) {
            match result {
                // The target has the rows (committed, or none to apply); only the checkpoint is
                // missing. The next run re-reads from the older watermark, which the idempotent
                // writes absorb.
                Err(e) => {
                    line.status = OutcomeStatus::Failed;
                    line.error = Some(format!("the target has the rows but the state was not saved: {e}"));
                }
                Ok(()) => Event::CheckpointCommitted { table, target: target.id.clone() }.emit(ctx.listeners()),
            }
            outcomes.push(line);
        }
        outcomes
    }
}

/// The state a success leaves; an error when it cannot count as one (a change stream's
/// snapshot whose position the source did not report).
fn success_state(ctx: &RunContext<'_>, s: &Success<'_>) -> Result<TableState, ConnectorError> {
    let table = &s.schema.table;
    let now = Utc::now().naive_utc();
    let read_at = s.read.snapshot_time.unwrap_or(now);
    // A snapshot for a change stream: the stream carries the table from its position on.
    let cdc = match &ctx.options.cdc {
        None => None,
        Some(cdc) => match &s.read.change_position {
            Some(position) => Some(Box::new(CdcTableState {
                snapshot: position.clone(),
                settled: s.read.change_settled.clone(),
                deletes: cdc.tracking.deletes,
            })),
            None => {
                return Err(ConnectorError::permanent(format!(
                    "{table}: the source did not report the change-log position of its snapshot, so the change \
                     stream cannot take over from it; report this as a bug"
                )));
            }
        },
    };
    let watermark = if cdc.is_some() {
        None
    } else {
        next_watermark(s.schema, s.plan, s.read, s.prior.and_then(|p| p.watermark.as_ref()))
    };
    let mode = if cdc.is_some() { SyncMode::Cdc } else { s.plan.mode };
    // The rows the next incremental read takes again, as this commit wrote them.
    let window_rows = s
        .read
        .window_rows
        .as_ref()
        .filter(|_| matches!(mode, SyncMode::Incremental | SyncMode::Full))
        .map(crate::window::WindowSeen::stored);
    Ok(TableState {
        watermark,
        duration_seconds: Some(s.elapsed.as_secs_f64()),
        key: Some(s.schema.key.clone()),
        target: Some(s.stamp.clone()),
        schema_fingerprint: Some(unify::fingerprint(s.schema)),
        last_full_at: if s.plan.mode == SyncMode::Full { Some(read_at) } else { s.prior.and_then(|p| p.last_full_at) },
        notes: s.plan.warnings.clone(),
        cdc,
        window_rows,
        ..TableState::succeeded(&table.table, mode, s.rows, read_at)
    })
}

/// The report line of a success.
fn success_line(target: &Target, s: &Success<'_>) -> TableOutcome {
    let mut outcome = TableOutcome::new(&s.schema.table, &target.id, OutcomeStatus::Success);
    outcome.mode = Some(s.plan.mode);
    outcome.rows = s.rows;
    outcome.bytes = s.read.bytes;
    outcome.seconds = s.elapsed.as_secs_f64();
    outcome.retries = s.retries;
    outcome.nulled_values = s.read.nulled_values.clone();
    outcome.future_cursor_rows = s.read.future_cursor_rows;
    outcome.null_cursor_rows_skipped = s.read.null_cursor_rows_skipped;
    outcome.unchanged_rows_skipped = s.read.unchanged_rows_skipped;
    outcome.window = Some(s.read.window.clone().unwrap_or_else(|| s.plan.range.describe()));
    outcome.detail = Some(s.plan.reason.clone());
    outcome.warnings = s.plan.warnings.clone();
    outcome
}

/// Records a failure: the last good watermark and times stay, so nothing already synced is
/// lost and the next run picks up where the last success left off.
pub(super) async fn record_failure(
    ctx: &RunContext<'_>,
    target: &Target,
    table: &TableRef,
    mode: Option<SyncMode>,
    error: &ConnectorError,
    retries: u32,
    elapsed: Duration,
) -> TableOutcome {
    Event::ComponentError { table: table.clone(), target: target.id.clone(), error: error.to_string() }
        .emit(ctx.listeners());
    let mut outcome = TableOutcome::failed(table, &target.id, mode, error);
    outcome.retries = retries;
    outcome.seconds = elapsed.as_secs_f64();
    if table.table == "*" || !ctx.records() {
        return outcome;
    }
    let prior = target.state.load_table(&table.database, &table.table).await.ok().flatten();
    let state = TableState::failed(&table.table, prior.as_ref(), mode, error);
    if let Err(e) = target.state.record(&table.database, state).await {
        outcome.error = Some(format!("{error}; also failed to save state: {e}"));
    }
    outcome
}

/// The same failure for every target.
pub(super) async fn fail_everywhere(
    ctx: &RunContext<'_>,
    table: &TableRef,
    error: &ConnectorError,
) -> Vec<TableOutcome> {
    let mut out = Vec::new();
    for target in &ctx.runner.targets {
        out.push(record_failure(ctx, target, table, None, error, 0, Duration::ZERO).await);
    }
    out
}

/// The next watermark: the highest cursor value read that is not later than the source's
/// clock (the source leaves future-dated rows out of it; the clock caps it again here), never
/// behind the previous watermark of an incremental run. Its zone offset is the offset of the
/// read that set it, so a later read in a smaller offset knows to widen its window.
pub(super) fn next_watermark(
    schema: &TableSchema,
    plan: &TablePlan,
    read: &ReadSummary,
    prior: Option<&Watermark>,
) -> Option<Watermark> {
    let cursor = plan.cursor.as_ref()?;
    let column = schema.column(cursor)?;
    let column_type = crate::strategy::cursor_type_name(&column.logical)?;
    let clock =
        if matches!(column.logical, LogicalType::Timestamp { .. }) { read.snapshot_time } else { read.cursor_clock };
    let read_max = read.max_cursor.as_ref().and_then(|v| v.cursor_instant());
    let capped = match (read_max, clock) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (m, _) => m,
    };
    let format = |t: chrono::NaiveDateTime| {
        if column_type == "date" { t.format("%Y-%m-%d").to_string() } else { watermark_text(&t) }
    };
    let offset = if column_type == "timestamp" { None } else { read.cursor_utc_offset };
    let new = capped.map(|t| Watermark {
        column: column.name.clone(),
        column_type: column_type.to_string(),
        value: format(t),
        utc_offset: offset,
    });
    let prior = prior.filter(|p| {
        p.column.eq_ignore_ascii_case(cursor) && p.column_type == column_type && plan.mode == SyncMode::Incremental
    });
    match (new, prior) {
        (Some(n), Some(p)) if p.value >= n.value => Some(p.clone()),
        (Some(n), _) => Some(n),
        (None, Some(p)) => Some(p.clone()),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::WriteMode;
    use crate::source::ReadRange;
    use crate::testkit::schema_of;

    #[test]
    fn watermark_is_capped_at_the_source_clock_and_never_moves_back() {
        let s = schema_of(
            "shop1",
            "orders",
            &[("id", LogicalType::Int64), ("updated_at", LogicalType::DateTime { fsp: 6 })],
            &["id"],
        );
        let plan = TablePlan {
            mode: SyncMode::Incremental,
            write: WriteMode::Merge,
            range: ReadRange::Full,
            cursor: Some("updated_at".into()),
            reason: String::new(),
            warnings: Vec::new(),
        };
        let t = |s: &str| crate::state::parse_watermark_text(s).unwrap();
        let read = ReadSummary {
            max_cursor: Some(crate::Value::DateTime(t("2030-01-01 00:00:00"))),
            cursor_clock: Some(t("2025-06-01 12:00:00.123456")),
            cursor_utc_offset: Some(-4 * 3600),
            ..Default::default()
        };
        let w = next_watermark(&s, &plan, &read, None).unwrap();
        assert_eq!(w.value, "2025-06-01 12:00:00.123456");
        assert_eq!(w.utc_offset, Some(-4 * 3600));
        let prior = Watermark {
            column: "updated_at".into(),
            column_type: "datetime".into(),
            value: "2026-01-01 00:00:00.000000".into(),
            utc_offset: Some(-5 * 3600),
        };
        let w = next_watermark(&s, &plan, &read, Some(&prior)).unwrap();
        assert_eq!(w, prior, "an older read keeps the prior value and its zone offset");
        let empty = ReadSummary::default();
        assert_eq!(next_watermark(&s, &plan, &empty, Some(&prior)).unwrap().value, prior.value);
    }
}
