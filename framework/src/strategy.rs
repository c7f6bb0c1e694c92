//! The original tool's strategy: incremental by a timestamp cursor when possible, full
//! otherwise.

use crate::schema::{LogicalType, TableSchema};
use crate::state::{SyncMode, SyncStatus, TableState};
use crate::traits::{PlanOptions, ReadRange, Strategy, TablePlan, WriteMode};

/// Cursor column names, in order of preference (the original tool's list).
pub const CURSOR_CANDIDATES: &[&str] = &[
    "updated_at",
    "update_time",
    "last_updated",
    "created_at",
    "create_time",
    "insert_time",
    "timestamp",
    "sync_time",
];

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

/// Picks the cursor: the configured one, else the first candidate name of a date/time type.
pub fn detect_cursor(schema: &TableSchema, configured: Option<&str>) -> Option<String> {
    if let Some(name) = configured {
        return schema.column(name).map(|c| c.name.clone());
    }
    CURSOR_CANDIDATES
        .iter()
        .find_map(|cand| schema.column(cand).filter(|c| is_cursor_type(&c.logical)).map(|c| c.name.clone()))
}

/// Rules, in order: `--full`; no cursor; never synced; last sync failed (only with
/// `full_after_failure`, since our commits are atomic and the watermark stays valid); no
/// watermark; otherwise incremental from the watermark minus the lookback.
#[derive(Debug, Default, Clone, Copy)]
pub struct GuideStrategy;

impl Strategy for GuideStrategy {
    fn plan(&self, schema: &TableSchema, prior: Option<&TableState>, options: &PlanOptions) -> TablePlan {
        let cursor = detect_cursor(schema, options.cursor_override.as_deref());
        let full = |reason: &str| TablePlan {
            mode: SyncMode::Full,
            write: WriteMode::ReplaceTenant,
            range: ReadRange::Full,
            cursor: cursor.clone(),
            reason: reason.to_string(),
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
                include_nulls: options.null_cursor == crate::traits::NullCursorPolicy::Include,
            },
            cursor,
            reason: format!("watermark {} minus {} min lookback", watermark.value, options.lookback_minutes),
        }
    }
}

fn same_key(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.eq_ignore_ascii_case(y))
}

/// `watermark - lookback`, keeping the watermark's microseconds. Date-only watermarks stay
/// dates. A bound before year 1 is the earliest date.
fn lower_bound(watermark: &str, lookback_minutes: u64) -> String {
    use chrono::{NaiveDate, NaiveDateTime, TimeDelta};
    let lookback =
        TimeDelta::try_minutes(i64::try_from(lookback_minutes).unwrap_or(i64::MAX)).unwrap_or(TimeDelta::MAX);
    let earliest = NaiveDate::from_ymd_opt(1, 1, 1).unwrap_or_default();
    if let Ok(ts) = NaiveDateTime::parse_from_str(watermark, "%Y-%m-%d %H:%M:%S%.f") {
        let bound =
            ts.checked_sub_signed(lookback).unwrap_or_else(|| earliest.and_hms_opt(0, 0, 0).unwrap_or_default());
        return bound.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
    }
    if let Ok(d) = NaiveDate::parse_from_str(watermark, "%Y-%m-%d") {
        let days = lookback.num_days() + i64::from(lookback.num_seconds() % 86_400 != 0);
        let bound = TimeDelta::try_days(days).and_then(|t| d.checked_sub_signed(t)).unwrap_or(earliest);
        return bound.format("%Y-%m-%d").to_string();
    }
    watermark.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Column, KeySource, TableRef};
    use crate::state::Watermark;

    fn schema(cols: &[(&str, LogicalType)]) -> TableSchema {
        TableSchema {
            table: TableRef::new("shop1", "orders"),
            columns: cols
                .iter()
                .map(|(n, t)| Column {
                    name: n.to_string(),
                    source_type: String::new(),
                    logical: t.clone(),
                    nullable: true,
                })
                .collect(),
            key: vec!["id".into()],
            key_source: KeySource::PrimaryKey,
        }
    }

    fn prior(status: SyncStatus) -> TableState {
        TableState {
            table_name: "orders".into(),
            last_sync_time: None,
            sync_status: status,
            sync_mode: SyncMode::Full,
            records_synced: 1,
            error_message: None,
            updated_at: chrono::NaiveDateTime::default(),
            watermark: Some(Watermark {
                column: "updated_at".into(),
                column_type: "datetime".into(),
                value: "2025-01-01 00:05:00.000001".into(),
            }),
            last_success_at: Some(chrono::NaiveDateTime::default()),
            duration_seconds: None,
            consecutive_failures: 0,
            key: Some(vec!["id".into()]),
            resume: None,
        }
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
    }

    #[test]
    fn follows_the_guides_rules() {
        let s = schema(&[("id", LogicalType::Int64), ("updated_at", LogicalType::DateTime { fsp: 6 })]);
        let st = GuideStrategy;
        let opts = PlanOptions { lookback_minutes: 10, ..Default::default() };
        assert_eq!(st.plan(&s, None, &opts).mode, SyncMode::Full);
        let p = st.plan(&s, Some(&prior(SyncStatus::Success)), &opts);
        assert_eq!(p.mode, SyncMode::Incremental);
        assert_eq!(p.write, WriteMode::Merge);
        assert_eq!(
            p.range,
            ReadRange::Since {
                cursor: "updated_at".into(),
                from: "2024-12-31 23:55:00.000001".into(),
                include_nulls: true
            }
        );
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
    fn lookback_keeps_microseconds_and_widens_dates() {
        assert_eq!(lower_bound("2025-03-01 00:00:00.123456", 10), "2025-02-28 23:50:00.123456");
        assert_eq!(lower_bound("2025-03-01", 10), "2025-02-28");
        assert_eq!(lower_bound("2025-03-01 00:00:00", u64::MAX), "0001-01-01 00:00:00.000000");
        assert_eq!(lower_bound("2025-03-01", u64::MAX), "0001-01-01");
    }
}
