//! Big full syncs read in key ranges: each range is made durable in every target's staging
//! and recorded as a resume point, so a run that dies mid-table continues after the last range
//! staged instead of starting over.
//!
//! Ranges are `key > after ORDER BY key LIMIT chunk_rows` over a single integer column that is
//! the table's primary key or a unique NOT NULL index: only then does "after the last key"
//! skip no row (a configured key may repeat or be NULL). A big table's key space is split into
//! segments (`key > a AND key <= b`) read side by side on `range_readers` connections; a
//! resume point then records what is left of each.

use std::time::Instant;

use chrono::Utc;

use crate::error::Result;
use crate::events::Event;
use crate::pipeline::Settings;
use crate::schema::{KeySource, LogicalType};
use crate::source::{ReadRange, ReadRequest, ReadSummary};
use crate::state::{KeySegment, ResumePoint, SEGMENTED, TableState};
use crate::strategy::TablePlan;
use crate::value::Value;

use super::fanout::Fanout;
use super::read::{consume_parts, start_reads};
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
    let first = ResumePoint::clone(points.first()?);
    let fingerprint = point_fingerprint(&fingerprint, &first.segments);
    let usable = points.iter().all(|r| r.after_key == first.after_key && r.segments == first.segments && r.rows == first.rows)
        && first.key == key
        && first.schema_fingerprint == fingerprint
        // A snapshot for a change stream continues only one that recorded its log position.
        && (!request.capture_position || first.change_position.is_some());
    usable.then(|| Resume { handles: points.iter().map(|p| p.staging.clone()).collect(), point: first })
}

/// Reads the table range by range into the fanout, checkpointing after each round of full
/// ranges. A big table is split into segments of its key space read side by side
/// ([`split`]); each round reads the next range of every segment not done yet.
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
    let mut segments = match resumed {
        Some(Resume { point, .. }) => {
            tracing::info!(%table, after_key = %point.after_key, segments = point.segments.len(), rows = point.rows, "resuming an interrupted full sync");
            total.rows = point.rows;
            total.bytes = point.bytes;
            total.snapshot_time = point.started;
            total.cursor_clock = point.started_local;
            total.cursor_utc_offset = point.started_utc_offset;
            total.max_cursor = point
                .max_cursor
                .as_deref()
                .zip(cursor_logical.as_ref())
                .and_then(|(s, l)| Value::from_cursor_text(s, l));
            // The staged rows of the first ranges are as old as the first range's position.
            total.change_position = point.change_position.clone();
            if point.segments.is_empty() {
                vec![KeySegment { after: Some(point.after_key.clone()), until: None }]
            } else {
                point.segments.clone()
            }
        }
        None => split(runner, request, key, limit).await,
    };
    // A resume may hold more segments than `range_readers` allows now: the rest wait their turn.
    let readers = runner.settings.range_readers.max(1);
    total.window = Some(describe(key, limit, &segments, readers, resumed.is_some()));
    let fingerprint = unify::fingerprint(&request.schema);
    while !segments.is_empty() {
        let now = segments.len().min(readers);
        let reads = segments[..now]
            .iter()
            .map(|s| ReadRequest {
                range: ReadRange::KeyRange {
                    key: key.to_string(),
                    after: s.after.clone(),
                    until: s.until.clone(),
                    limit,
                },
                ..request.clone()
            })
            .collect();
        let mut parts = consume_parts(runner, start_reads(runner, table.clone(), reads), fanout, started).await?;
        // A segment whose range came back full has more rows after its last key.
        let mut left: Vec<KeySegment> = segments[..now]
            .iter()
            .zip(&parts)
            .filter(|(_, part)| part.rows >= limit && part.last_key.is_some())
            .map(|(s, part)| KeySegment { after: part.last_key.clone(), until: s.until.clone() })
            .collect();
        left.extend_from_slice(&segments[now..]);
        segments = left;
        // The earliest clock first: the first part absorbed bounds the watermark.
        parts.sort_by_key(|p| p.snapshot_time);
        for part in parts {
            total.absorb(part);
        }
        if segments.is_empty() {
            break;
        }
        // What is left of one open-ended sequence is a plain resume point, which any version
        // reads; anything else records its segments.
        let after_key = segments[0].after.clone().unwrap_or_default();
        let segments_left = match segments.as_slice() {
            [KeySegment { until: None, .. }] => Vec::new(),
            _ => segments.clone(),
        };
        let schema_fingerprint = point_fingerprint(&fingerprint, &segments_left);
        for (target, staging) in fanout.checkpoint().await {
            let point = ResumePoint {
                staging,
                key: key.to_string(),
                after_key: after_key.clone(),
                segments: segments_left.clone(),
                rows: total.rows,
                bytes: total.bytes,
                started: total.snapshot_time,
                started_local: total.cursor_clock,
                started_utc_offset: total.cursor_utc_offset,
                max_cursor: total.max_cursor.as_ref().and_then(Value::cursor_text),
                schema_fingerprint: schema_fingerprint.clone(),
                change_position: total.change_position.clone(),
                estimated_rows: request.schema.estimated_rows,
            };
            record_point(runner, target, request, point).await;
        }
    }
    Ok(total)
}

/// The schema fingerprint a resume point records: marked when it has segments, so that a
/// version that knows no segments finds it unusable.
fn point_fingerprint(fingerprint: &str, segments: &[KeySegment]) -> String {
    if segments.is_empty() { fingerprint.to_string() } else { format!("{fingerprint}{SEGMENTED}") }
}

/// The segments a full sync reads side by side: one (the whole key space) unless the table is
/// estimated at more than one range and `range_readers` allows more, then up to that many of
/// equal width between the key's lowest and highest value. The first is open below and the
/// last above, so rows written outside those bounds meanwhile are read too. A change stream's
/// snapshot is one sequence: its resume keeps one log position.
async fn split(runner: &Runner, request: &ReadRequest, key: &str, limit: u64) -> Vec<KeySegment> {
    let whole = vec![KeySegment { after: None, until: None }];
    let estimated = request.schema.estimated_rows.unwrap_or(0);
    let readers = u64::try_from(runner.settings.range_readers).unwrap_or(1).min(estimated.div_ceil(limit.max(1)));
    if readers < 2 || request.capture_position {
        return whole;
    }
    // Splitting only speeds the read up: without the bounds it goes in one sequence.
    let bounds = runner.source.key_bounds(&request.schema.table, key).await.unwrap_or_else(|e| {
        tracing::warn!(table = %request.schema.table, error = %e, "cannot read the key's bounds; reading its ranges one after another");
        None
    });
    let Some((low, high)) = bounds else { return whole };
    equal_segments(&low, &high, readers).unwrap_or(whole)
}

/// `n` segments of equal width from `low` to `high` (integers), fewer when the span is
/// narrower; `None` when a bound is no integer.
fn equal_segments(low: &str, high: &str, n: u64) -> Option<Vec<KeySegment>> {
    let (low, high): (i128, i128) = (low.parse().ok()?, high.parse().ok()?);
    let span = high - low + 1;
    let n = i128::from(n).min(span).max(1);
    // Segment i ends at the last key before low + span * (i + 1) / n.
    let ends: Vec<i128> = (1..n).map(|i| low + span * i / n - 1).collect();
    let mut segments = Vec::with_capacity(ends.len() + 1);
    let mut after = None;
    for end in ends {
        segments.push(KeySegment { after: after.map(|a: i128| a.to_string()), until: Some(end.to_string()) });
        after = Some(end);
    }
    segments.push(KeySegment { after: after.map(|a| a.to_string()), until: None });
    Some(segments)
}

/// How the rows are read, for the report: `all rows, in ranges of 1000 by id`, with the
/// segments and where a resume continues.
fn describe(key: &str, limit: u64, segments: &[KeySegment], readers: usize, resumed: bool) -> String {
    let mut text = ReadRange::KeyRange { key: key.to_string(), after: None, until: None, limit }.describe();
    match segments.len() {
        0 | 1 => {}
        n if n <= readers => text.push_str(&format!(", {n} segments read at once")),
        n => text.push_str(&format!(", {n} segments read {readers} at a time")),
    }
    if resumed {
        let afters: Vec<String> = segments
            .iter()
            .map(|s| s.after.as_ref().map_or_else(|| "the start".to_string(), |a| format!("{key} = {a}")))
            .collect();
        text.push_str(&format!(", resumed after {}", afters.join(", ")));
    }
    text
}

/// Records where a later run can resume: everything up to `point.after_key` is durable in
/// `point.staging`.
async fn record_point(runner: &Runner, target: &Target, request: &ReadRequest, point: ResumePoint) {
    let table = &request.schema.table;
    let prior = target.state.load_table(&table.database, &table.table).await.ok().flatten();
    let mut state = prior.unwrap_or_else(|| TableState::in_progress(&table.table));
    state.updated_at = Utc::now().naive_utc();
    state.resume = Some(Box::new(point));
    match target.state.record(&table.database, state).await {
        Ok(()) => {
            Event::CheckpointCommitted { table: table.clone(), target: target.id.clone() }.emit(&runner.listeners)
        }
        Err(e) => tracing::warn!(%table, target = %target.id, error = %e, "could not record a resume point"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(segments: &[KeySegment]) -> Vec<(Option<&str>, Option<&str>)> {
        segments.iter().map(|s| (s.after.as_deref(), s.until.as_deref())).collect()
    }

    #[test]
    fn segments_cover_the_key_space_without_gaps_or_overlaps() {
        let four = equal_segments("1", "100", 4).unwrap();
        assert_eq!(
            ends(&four),
            [(None, Some("25")), (Some("25"), Some("50")), (Some("50"), Some("75")), (Some("75"), None)]
        );
        let negative = equal_segments("-10", "9", 2).unwrap();
        assert_eq!(ends(&negative), [(None, Some("-1")), (Some("-1"), None)]);
        // Fewer keys than segments: one segment per key at most.
        assert_eq!(ends(&equal_segments("5", "6", 4).unwrap()), [(None, Some("5")), (Some("5"), None)]);
        assert_eq!(ends(&equal_segments("7", "7", 3).unwrap()), [(None, None)]);
        let wide = equal_segments(&i64::MIN.to_string(), &u64::MAX.to_string(), 3).unwrap();
        assert_eq!(wide.len(), 3);
        assert!(equal_segments("a", "9", 2).is_none());
    }
}
