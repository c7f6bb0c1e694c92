//! The strategy role: a [`Strategy`] decides per tenant × table × target whether to sync in
//! full or incrementally, and from where. [`CursorStrategy`] is the original tool's rule set
//! (incremental by a timestamp cursor when possible), with the cases that would silently miss
//! rows made full.

use std::time::Duration;

use chrono::NaiveDateTime;
use serde::Serialize;

use crate::schema::{LogicalType, TableSchema};
use crate::sink::WriteMode;
use crate::source::ReadRange;
use crate::state::{SyncMode, SyncStatus, TableState, TargetStamp, parse_watermark_text, watermark_text};

/// Update-time column names, in order of preference: the original tool's three, then other
/// common spellings of "last modified".
pub const UPDATE_CURSOR_NAMES: &[&str] = &[
    "updated_at",
    "update_time",
    "last_updated",
    "modified_at",
    "modify_time",
    "last_modified",
    "gmt_modified",
    "date_modified",
];

/// Insert-time column names the original tool also accepts as cursors. Such a cursor never
/// changes when a row is updated: updates of older rows are not seen by incremental runs, and
/// every plan says so.
pub const INSERT_CURSOR_NAMES: &[&str] = &["created_at", "create_time", "insert_time", "timestamp", "sync_time"];

/// What incremental reads do with rows whose cursor is NULL (they are never silently lost).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NullCursorPolicy {
    /// Read them in every incremental run too (idempotent writes absorb the repeats).
    #[default]
    Include,
    /// Leave them to full syncs and report how many there are in each run.
    Report,
}

/// Whether a column type can serve as a cursor.
pub fn is_cursor_type(t: &LogicalType) -> bool {
    cursor_type_name(t).is_some()
}

/// The name a watermark stores for a cursor of this type.
pub fn cursor_type_name(t: &LogicalType) -> Option<&'static str> {
    match t {
        LogicalType::Date => Some("date"),
        LogicalType::DateTime { .. } => Some("datetime"),
        LogicalType::Timestamp { .. } => Some("timestamp"),
        _ => None,
    }
}

/// Picks the cursor: the configured one, else the first update-time name, else the first
/// insert-time name, of a date/time type.
pub fn detect_cursor(schema: &TableSchema, configured: Option<&str>) -> Option<String> {
    if let Some(name) = configured {
        return schema.column(name).map(|c| c.name.clone());
    }
    UPDATE_CURSOR_NAMES
        .iter()
        .chain(INSERT_CURSOR_NAMES)
        .find_map(|cand| schema.column(cand).filter(|c| is_cursor_type(&c.logical)).map(|c| c.name.clone()))
}

/// Whether `cursor` is one of the insert-time names (and so never moves on update).
pub fn is_insert_time_cursor(cursor: &str) -> bool {
    INSERT_CURSOR_NAMES.iter().any(|n| n.eq_ignore_ascii_case(cursor))
}

/// Settings the strategy plans with, for one tenant × table × target.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// `--full` was given.
    pub force_full: bool,
    pub lookback_minutes: u64,
    /// Cursor column named in the config for this table.
    pub cursor_override: Option<String>,
    /// The original tool's rule: a failed last sync forces a full one.
    pub full_after_failure: bool,
    pub null_cursor: NullCursorPolicy,
    /// Sync in full when the last full sync is older than this (`full_every`).
    pub full_every: Option<Duration>,
    /// The target table this run writes to; state stamped with another one is not used.
    pub target: Option<TargetStamp>,
    /// The fingerprint of the tenant's schema as discovered now.
    pub schema_fingerprint: Option<String>,
    /// The current time, for `full_every`.
    pub now: Option<NaiveDateTime>,
}

/// What the runner will do with one table of one tenant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TablePlan {
    pub mode: SyncMode,
    pub write: WriteMode,
    pub range: ReadRange,
    /// The cursor column, when the table has one.
    pub cursor: Option<String>,
    /// Why this mode was chosen, in words.
    pub reason: String,
    /// What the operator should know about this plan (e.g. an insert-time cursor).
    pub warnings: Vec<String>,
}

/// Chooses full or incremental sync for each table.
pub trait Strategy: Send + Sync + std::fmt::Debug {
    fn plan(&self, schema: &TableSchema, prior: Option<&TableState>, options: &PlanOptions) -> TablePlan;
}

/// Incremental by a timestamp cursor when the state allows it, full otherwise. Rules, in
/// order: `--full`; no cursor; never synced; the state belongs to another target table; the
/// schema changed; `full_every` is due; last sync failed (only with `full_after_failure`, since
/// commits are atomic and the watermark stays valid); no watermark for the cursor; the cursor
/// changed type; the key changed; otherwise incremental from the watermark minus the lookback.
#[derive(Debug, Default, Clone, Copy)]
pub struct CursorStrategy;

impl Strategy for CursorStrategy {
    fn plan(&self, schema: &TableSchema, prior: Option<&TableState>, options: &PlanOptions) -> TablePlan {
        let cursor = detect_cursor(schema, options.cursor_override.as_deref());
        let mut warnings = Vec::new();
        if let Some(c) = cursor.as_deref().filter(|c| is_insert_time_cursor(c)) {
            warnings.push(format!(
                "cursor {c} is an insert time: updates of older rows are not seen by incremental runs; set \
                 cursor_column to an update-time column, or full_every (e.g. \"24h\") to resync in full regularly"
            ));
        }
        let full = |reason: &str| TablePlan {
            mode: SyncMode::Full,
            write: WriteMode::ReplaceTenant,
            range: ReadRange::Full,
            cursor: cursor.clone(),
            reason: reason.to_string(),
            warnings: warnings.clone(),
        };
        if options.force_full {
            return full("--full given");
        }
        let Some(cursor_name) = cursor.clone() else {
            return full("no cursor column");
        };
        let Some(prior) = prior else {
            return full("first sync");
        };
        if prior.last_success_at.is_none() && prior.sync_status != SyncStatus::Success {
            return full("never synced successfully");
        }
        if let (Some(now), Some(target)) = (&options.target, &prior.target) {
            if now.destination != target.destination || !now.table.eq_ignore_ascii_case(&target.table) {
                return full(&format!("the state was written for another target ({})", target.destination));
            }
            if now.generation.is_some() && now.generation != target.generation {
                return full("the target table is new (created, or dropped and recreated, since the last sync)");
            }
        } else if options.target.as_ref().is_some_and(|t| t.generation.is_some()) && prior.target.is_none() {
            // State from before target stamps: the table may or may not be the one written.
            // It is the one written when it existed before this run, which the generation
            // cannot tell; a full sync is the safe answer once.
            return full("the state does not record its target table yet");
        }
        if let (Some(now), Some(then)) = (&options.schema_fingerprint, &prior.schema_fingerprint)
            && now != then
        {
            return full("the table's schema changed (existing rows are re-read)");
        }
        if let (Some(every), Some(now)) = (options.full_every, options.now) {
            let last_full = prior.last_full_at;
            let due = last_full.is_none_or(|t| (now - t).to_std().is_ok_and(|age| age >= every));
            if due {
                return full(&format!("full_every {} is due", humanize(every)));
            }
        }
        if prior.sync_status == SyncStatus::Failed && options.full_after_failure {
            return full("last sync failed (full_after_failure)");
        }
        let Some(watermark) = prior.watermark.as_ref().filter(|w| w.column.eq_ignore_ascii_case(&cursor_name)) else {
            return full("no stored watermark for the cursor");
        };
        // A watermark of another type (DATETIME in local time vs TIMESTAMP in UTC, or a DATE)
        // cannot bound this cursor safely.
        let current_type = schema.column(&cursor_name).and_then(|c| cursor_type_name(&c.logical));
        if current_type != Some(watermark.column_type.as_str()) {
            return full("the cursor column changed type");
        }
        if prior.key.as_ref().is_some_and(|k| !same_key(k, &schema.key)) {
            return full("the row key changed");
        }
        let from = lower_bound(&watermark.value, options.lookback_minutes);
        TablePlan {
            mode: SyncMode::Incremental,
            write: if schema.key.is_empty() { WriteMode::AppendDedup } else { WriteMode::Merge },
            range: ReadRange::Since {
                cursor: cursor_name,
                from,
                include_nulls: options.null_cursor == NullCursorPolicy::Include,
                from_utc_offset: watermark.utc_offset,
            },
            cursor,
            reason: format!("watermark {} minus {} min lookback", watermark.value, options.lookback_minutes),
            warnings,
        }
    }
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

fn same_key(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.eq_ignore_ascii_case(y))
}

/// `watermark - lookback`, keeping the watermark's microseconds. Date-only watermarks stay
/// dates. A bound before year 1 is the earliest date.
pub fn lower_bound(watermark: &str, lookback_minutes: u64) -> String {
    use chrono::{NaiveDate, TimeDelta};
    let lookback = lookback(lookback_minutes);
    let earliest = NaiveDate::from_ymd_opt(1, 1, 1).unwrap_or_default();
    if let Some(ts) = parse_watermark_text(watermark) {
        let bound =
            ts.checked_sub_signed(lookback).unwrap_or_else(|| earliest.and_hms_opt(0, 0, 0).unwrap_or_default());
        return watermark_text(&bound);
    }
    if let Ok(d) = NaiveDate::parse_from_str(watermark, "%Y-%m-%d") {
        let bound =
            TimeDelta::try_days(lookback_days(lookback)).and_then(|t| d.checked_sub_signed(t)).unwrap_or(earliest);
        return bound.format("%Y-%m-%d").to_string();
    }
    watermark.to_string()
}

/// `lookback_minutes` as a duration (saturating).
pub(crate) fn lookback(minutes: u64) -> chrono::TimeDelta {
    chrono::TimeDelta::try_minutes(i64::try_from(minutes).unwrap_or(i64::MAX)).unwrap_or(chrono::TimeDelta::MAX)
}

/// How many days a lookback moves a DATE watermark back: every day begun.
pub(crate) fn lookback_days(lookback: chrono::TimeDelta) -> i64 {
    lookback.num_days() + i64::from(lookback.num_seconds() % 86_400 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Watermark;
    use crate::testkit::{prior_state, schema_of};

    fn schema(cols: &[(&str, LogicalType)]) -> TableSchema {
        schema_of("shop1", "orders", cols, &["id"])
    }

    fn prior(status: SyncStatus) -> TableState {
        let mut p = prior_state("orders", status);
        p.watermark = Some(Watermark {
            column: "updated_at".into(),
            column_type: "datetime".into(),
            value: "2025-01-01 00:05:00.000001".into(),
            utc_offset: None,
        });
        p
    }

    #[test]
    fn detects_cursor_in_the_guides_order_and_only_for_time_types() {
        let s = schema(&[
            ("id", LogicalType::Int64),
            ("created_at", LogicalType::DateTime { fsp: 0 }),
            ("updated_at", LogicalType::Timestamp { fsp: 6 }),
        ]);
        assert_eq!(detect_cursor(&s, None).as_deref(), Some("updated_at"));
        let s = schema(&[("updated_at", LogicalType::String), ("create_time", LogicalType::Date)]);
        assert_eq!(detect_cursor(&s, None).as_deref(), Some("create_time"));
        assert_eq!(detect_cursor(&schema(&[("id", LogicalType::Int64)]), None), None);
        // An update-time column wins over an insert-time one whatever the order.
        let s = schema(&[("created_at", LogicalType::DateTime { fsp: 0 }), ("gmt_modified", LogicalType::Date)]);
        assert_eq!(detect_cursor(&s, None).as_deref(), Some("gmt_modified"));
    }

    #[test]
    fn an_insert_time_cursor_is_named_in_every_plan() {
        let s = schema(&[("id", LogicalType::Int64), ("created_at", LogicalType::DateTime { fsp: 0 })]);
        let plan = CursorStrategy.plan(&s, None, &PlanOptions::default());
        assert!(plan.warnings[0].contains("cursor created_at is an insert time: updates"), "{:?}", plan.warnings);
        let s = schema(&[("id", LogicalType::Int64), ("updated_at", LogicalType::DateTime { fsp: 0 })]);
        assert!(CursorStrategy.plan(&s, None, &PlanOptions::default()).warnings.is_empty());
    }

    #[test]
    fn follows_the_guides_rules() {
        let s = schema(&[("id", LogicalType::Int64), ("updated_at", LogicalType::DateTime { fsp: 6 })]);
        let st = CursorStrategy;
        let opts = PlanOptions { lookback_minutes: 10, ..Default::default() };
        assert_eq!(st.plan(&s, None, &opts).mode, SyncMode::Full);
        let p = st.plan(&s, Some(&prior(SyncStatus::Success)), &opts);
        assert_eq!(p.mode, SyncMode::Incremental);
        assert_eq!(p.write, WriteMode::Merge);
        assert_eq!(p.range, ReadRange::since("updated_at", "2024-12-31 23:55:00.000001", true));
        let forced = PlanOptions { force_full: true, ..opts.clone() };
        assert_eq!(st.plan(&s, Some(&prior(SyncStatus::Success)), &forced).mode, SyncMode::Full);
        // A failed run resumes from the watermark unless the guide's behaviour is asked for.
        assert_eq!(st.plan(&s, Some(&prior(SyncStatus::Failed)), &opts).mode, SyncMode::Incremental);
        let strict = PlanOptions { full_after_failure: true, ..opts.clone() };
        assert_eq!(st.plan(&s, Some(&prior(SyncStatus::Failed)), &strict).mode, SyncMode::Full);
        // A cursor that changed type, or a changed key, cannot continue from the watermark.
        let retyped = schema(&[("id", LogicalType::Int64), ("updated_at", LogicalType::Timestamp { fsp: 6 })]);
        assert_eq!(
            st.plan(&retyped, Some(&prior(SyncStatus::Success)), &opts).reason,
            "the cursor column changed type"
        );
        let mut rekeyed = s.clone();
        rekeyed.key = vec!["code".into()];
        assert_eq!(st.plan(&rekeyed, Some(&prior(SyncStatus::Success)), &opts).reason, "the row key changed");
    }

    #[test]
    fn another_target_a_new_table_a_schema_change_or_a_due_full_every_sync_in_full() {
        let s = schema(&[("id", LogicalType::Int64), ("updated_at", LogicalType::DateTime { fsp: 6 })]);
        let stamp = |dest: &str, generation: &str| TargetStamp {
            destination: dest.into(),
            table: "orders".into(),
            generation: Some(generation.into()),
        };
        let mut p = prior(SyncStatus::Success);
        p.target = Some(stamp("bigquery p.a", "1"));
        p.schema_fingerprint = Some("f1".into());
        let t0 = parse_watermark_text("2025-01-01 00:00:00").unwrap();
        p.last_full_at = Some(t0);
        let opts = PlanOptions {
            lookback_minutes: 10,
            target: Some(stamp("bigquery p.a", "1")),
            schema_fingerprint: Some("f1".into()),
            ..Default::default()
        };
        assert_eq!(CursorStrategy.plan(&s, Some(&p), &opts).mode, SyncMode::Incremental);
        let other = PlanOptions { target: Some(stamp("bigquery p.b", "1")), ..opts.clone() };
        assert!(CursorStrategy.plan(&s, Some(&p), &other).reason.contains("another target (bigquery p.a)"));
        let recreated = PlanOptions { target: Some(stamp("bigquery p.a", "2")), ..opts.clone() };
        assert!(CursorStrategy.plan(&s, Some(&p), &recreated).reason.contains("the target table is new"));
        let changed = PlanOptions { schema_fingerprint: Some("f2".into()), ..opts.clone() };
        assert!(CursorStrategy.plan(&s, Some(&p), &changed).reason.contains("schema changed"));
        let every = Duration::from_secs(86_400);
        let not_due = PlanOptions { full_every: Some(every), now: Some(t0 + chrono::TimeDelta::hours(23)), ..opts };
        assert_eq!(CursorStrategy.plan(&s, Some(&p), &not_due).mode, SyncMode::Incremental);
        let due = PlanOptions { now: Some(t0 + chrono::TimeDelta::hours(24)), ..not_due };
        assert_eq!(CursorStrategy.plan(&s, Some(&p), &due).reason, "full_every 1d is due");
    }

    #[test]
    fn lookback_keeps_microseconds_and_widens_dates() {
        assert_eq!(lower_bound("2025-03-01 00:00:00.123456", 10), "2025-02-28 23:50:00.123456");
        assert_eq!(lower_bound("2025-03-01", 10), "2025-02-28");
        assert_eq!(lower_bound("2025-03-01 00:00:00", u64::MAX), "0001-01-01 00:00:00.000000");
        assert_eq!(lower_bound("2025-03-01", u64::MAX), "0001-01-01");
    }
}
