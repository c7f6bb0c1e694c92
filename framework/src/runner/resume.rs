//! Big full syncs read in key ranges: each range is made durable in every target's staging
//! and recorded as a resume point, so a run that dies mid-table continues after the last range
//! staged instead of starting over.
//!
//! Ranges are `key > after ORDER BY key LIMIT chunk_rows` over a single integer column that is
//! the table's primary key or a unique NOT NULL index: only then does "after the last key"
//! skip no row (a configured key may repeat or be NULL).

use std::time::Instant;

use chrono::Utc;

use crate::error::Result;
use crate::events::Event;
use crate::pipeline::Settings;
use crate::schema::{KeySource, LogicalType};
use crate::source::{ReadRange, ReadRequest, ReadSummary};
use crate::state::{ResumePoint, TableState};
use crate::strategy::TablePlan;
use crate::value::Value;

use super::fanout::Fanout;
use super::read::{consume, start_read};
use super::{Runner, Target, unify};

/// A resume point every target of the tenant recorded alike, and each target's staging handle.
#[derive(Debug, Clone)]
pub(super) struct Resume {
    pub point: ResumePoint,
    /// Per target, in the order of the plans.
    pub handles: Vec<String>,
}

/// The key column and range size, when this tenant's read goes in key ranges: a full read of
/// a table whose declared key is one integer column, with `chunk_rows` set.
pub(super) fn key_chunking(settings: &Settings, request: &ReadRequest) -> Option<(String, u64)> {
    let schema = &request.schema;
    if settings.chunk_rows == 0 || request.range != ReadRange::Full || schema.key.len() != 1 {
        return None;
    }
    if !matches!(schema.key_source, KeySource::PrimaryKey | KeySource::UniqueIndex) {
        return None;
    }
    let key = schema.column(&schema.key[0])?;
    matches!(key.logical, LogicalType::Int64 | LogicalType::UInt64).then(|| (key.name.clone(), settings.chunk_rows))
}

/// The resume point the targets' state holds for this read, if all of them hold the same one
/// for the same key and schema. State is read again on every attempt on purpose: an earlier
/// attempt of this run may have left durable ranges.
pub(super) async fn usable_point(request: &ReadRequest, plans: &[(&Target, TablePlan)], key: &str) -> Option<Resume> {
    let table = &request.schema.table;
    let fingerprint = unify::fingerprint(&request.schema);
    let mut points = Vec::new();
    for (target, _) in plans {
        let prior = target.state.load_table(&table.database, &table.table).await.ok()?;
        points.push(prior?.resume?);
    }
    let first = points.first()?.clone();
    let usable = points.iter().all(|r| r.after_key == first.after_key && r.rows == first.rows)
        && first.key == key
        && first.schema_fingerprint == fingerprint
        // A snapshot for a change stream continues only one that recorded its log position.
        && (!request.capture_position || first.change_position.is_some());
    usable.then(|| Resume { handles: points.iter().map(|p| p.staging.clone()).collect(), point: first })
}

/// Reads the table range by range into the fanout, checkpointing after each full range.
pub(super) async fn read_in_ranges(
    runner: &Runner,
    request: &ReadRequest,
    fanout: &mut Fanout<'_>,
    key: &str,
    limit: u64,
    resumed: Option<&Resume>,
    started: Instant,
) -> Result<ReadSummary> {
    let table = &request.schema.table;
    let cursor_logical =
        request.track_cursor.as_deref().and_then(|c| request.schema.column(c)).map(|c| c.logical.clone());
    let mut total = ReadSummary::default();
    let mut after = None;
    if let Some(Resume { point, .. }) = resumed {
        tracing::info!(%table, after_key = %point.after_key, rows = point.rows, "resuming an interrupted full sync");
        total.rows = point.rows;
        total.bytes = point.bytes;
        total.snapshot_time = point.started;
        total.cursor_clock = point.started_local;
        total.cursor_utc_offset = point.started_utc_offset;
        total.max_cursor =
            point.max_cursor.as_deref().zip(cursor_logical.as_ref()).and_then(|(s, l)| Value::from_cursor_text(s, l));
        // The staged rows of the first ranges are as old as the first range's position.
        total.change_position = point.change_position.clone();
        after = Some(point.after_key.clone());
    }
    total.window = Some(ReadRange::KeyRange { key: key.to_string(), after: after.clone(), limit }.describe());
    let fingerprint = unify::fingerprint(&request.schema);
    loop {
        let range = ReadRange::KeyRange { key: key.to_string(), after: after.clone(), limit };
        let read = start_read(runner, ReadRequest { range, ..request.clone() });
        let part = consume(runner, read, fanout, started).await?;
        let (part_rows, part_last) = (part.rows, part.last_key.clone());
        total.absorb(part);
        if part_rows < limit || part_last.is_none() {
            break;
        }
        after = part_last;
        let after_key = after.clone().unwrap_or_default();
        for (target, staging) in fanout.checkpoint().await {
            let point = ResumePoint {
                staging,
                key: key.to_string(),
                after_key: after_key.clone(),
                rows: total.rows,
                bytes: total.bytes,
                started: total.snapshot_time,
                started_local: total.cursor_clock,
                started_utc_offset: total.cursor_utc_offset,
                max_cursor: total.max_cursor.as_ref().and_then(Value::cursor_text),
                schema_fingerprint: fingerprint.clone(),
                change_position: total.change_position.clone(),
                estimated_rows: request.schema.estimated_rows,
            };
            record_point(runner, target, request, point).await;
        }
    }
    Ok(total)
}

/// Records where a later run can resume: everything up to `point.after_key` is durable in
/// `point.staging`.
async fn record_point(runner: &Runner, target: &Target, request: &ReadRequest, point: ResumePoint) {
    let table = &request.schema.table;
    let prior = target.state.load_table(&table.database, &table.table).await.ok().flatten();
    let mut state = prior.unwrap_or_else(|| TableState::in_progress(&table.table));
    state.updated_at = Utc::now().naive_utc();
    state.resume = Some(point);
    match target.state.record(&table.database, state).await {
        Ok(()) => {
            Event::CheckpointCommitted { table: table.clone(), target: target.id.clone() }.emit(&runner.listeners)
        }
        Err(e) => tracing::warn!(%table, target = %target.id, error = %e, "could not record a resume point"),
    }
}
