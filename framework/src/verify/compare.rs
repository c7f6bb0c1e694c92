//! Comparing digests: buckets first, then the rows of the buckets that differ, each differing
//! key put in one class.

use std::collections::BTreeMap;

use crate::digest::{BucketDigest, DigestSpec, RowDigest};
use crate::runner::{Runner, Target};
use crate::schema::TableSchema;
use crate::source::ReadRange;
use crate::strategy::PlanOptions;

use super::report::TableVerdict;

/// The verdict from per-bucket digests, and the buckets whose rows or sums differ.
pub(super) fn buckets(
    database: &str,
    table: &str,
    target: &str,
    source: &[BucketDigest],
    theirs: &[BucketDigest],
) -> (TableVerdict, Vec<u32>) {
    let mut verdict = TableVerdict::new(database, table, target);
    verdict.source_rows = source.iter().map(|b| b.rows).sum();
    verdict.target_rows = theirs.iter().map(|b| b.rows).sum();
    let mut all: BTreeMap<u32, (Option<&BucketDigest>, Option<&BucketDigest>)> = BTreeMap::new();
    for b in source {
        all.entry(b.bucket).or_default().0 = Some(b);
    }
    for b in theirs {
        all.entry(b.bucket).or_default().1 = Some(b);
    }
    verdict.buckets = all.len();
    let differing: Vec<u32> = all
        .into_iter()
        .filter(|(_, (s, t))| match (s, t) {
            (Some(s), Some(t)) => s.rows != t.rows || s.sum != t.sum,
            _ => true,
        })
        .map(|(b, _)| b)
        .collect();
    verdict.buckets_differing = differing.len();
    (verdict, differing)
}

/// Classifies the rows of the differing buckets. `in_flight_from`: the lower bound of the next
/// sync's window; a source row whose cursor is at or after it is in flight, not a difference.
/// Tables without a key compare as multisets of row digests.
pub(super) fn rows(
    verdict: &mut TableVerdict,
    source: &[RowDigest],
    theirs: &[RowDigest],
    in_flight_from: Option<&str>,
    keyless: bool,
) {
    let in_flight = |cursor: &Option<String>| match (cursor, in_flight_from) {
        (Some(c), Some(from)) => cursor_at_or_after(c, from),
        _ => false,
    };
    let d = &mut verdict.differences;
    if keyless {
        let mut counts: BTreeMap<&str, (usize, usize, bool)> = BTreeMap::new();
        for r in source {
            let e = counts.entry(&r.key).or_default();
            e.0 += 1;
            e.2 |= in_flight(&r.cursor);
        }
        for r in theirs {
            counts.entry(&r.key).or_default().1 += 1;
        }
        for (key, (s, t, recent)) in counts {
            if s == t {
                continue;
            }
            // Keys are row digests here; how many copies differ is kept apart.
            let item = key.to_string();
            if s.abs_diff(t) > 1 {
                d.copies.insert(item.clone(), s.abs_diff(t) as u64);
            }
            if recent && s > t {
                d.in_flight.push(item);
            } else if s > t {
                d.missing.push(item);
            } else {
                d.extra.push(item);
            }
        }
        return;
    }
    let mut mine: BTreeMap<&str, &RowDigest> = BTreeMap::new();
    for r in source {
        mine.insert(&r.key, r);
    }
    let mut target: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for r in theirs {
        target.entry(&r.key).or_default().push(&r.digest);
    }
    for (key, row) in &mine {
        match target.get(key) {
            None if in_flight(&row.cursor) => d.in_flight.push(key.to_string()),
            None => d.missing.push(key.to_string()),
            Some(copies) if copies.len() > 1 => d.duplicated.push(key.to_string()),
            Some(copies) if copies[0] == row.digest => {}
            Some(_) if in_flight(&row.cursor) => d.in_flight.push(key.to_string()),
            Some(_) => d.different.push(key.to_string()),
        }
    }
    for (key, copies) in &target {
        if !mine.contains_key(key) {
            d.extra.push(key.to_string());
            if copies.len() > 1 {
                d.duplicated.push(key.to_string());
            }
        }
        if copies.len() > 1 {
            d.copies.insert(key.to_string(), copies.len() as u64);
        }
    }
}

/// Whether a cursor value is at or after the window's start: numbers by value, date-times
/// by their text (`YYYY-MM-DD HH:MM:SS.ffffff` sorts like the instants).
pub(super) fn cursor_at_or_after(cursor: &str, from: &str) -> bool {
    match (cursor.parse::<i128>(), from.parse::<i128>()) {
        (Ok(c), Ok(f)) => c >= f,
        _ => {
            let width = cursor.len().min(from.len());
            cursor.get(..width) >= from.get(..width)
        }
    }
}

/// Where the next sync of this tenant's table would start reading (the watermark minus the
/// lookback, as the strategy plans it); `None` when it would read everything or nothing by
/// cursor (a table without a cursor, a change stream, no state yet).
pub(super) async fn in_flight_from(
    runner: &Runner,
    target: &Target,
    schema: &TableSchema,
    spec: &DigestSpec,
) -> Option<String> {
    spec.cursor.as_ref()?;
    let prior = target.state.load_table(&schema.table.database, &schema.table.table).await.ok()??;
    if prior.cdc.is_some() {
        return None;
    }
    let options = PlanOptions {
        lookback_minutes: runner.settings.lookback_minutes,
        cursor_override: spec.cursor.clone(),
        null_cursor: runner.settings.null_cursor,
        target: prior.target.clone(),
        schema_fingerprint: prior.schema_fingerprint.clone(),
        ..Default::default()
    };
    match runner.strategy.plan(schema, Some(&prior), &options).range {
        ReadRange::Since { from, .. } => Some(from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::VerdictStatus;

    fn row(key: &str, digest: &str, cursor: Option<&str>) -> RowDigest {
        RowDigest { key: key.into(), digest: digest.into(), cursor: cursor.map(str::to_string), json: None }
    }

    #[test]
    fn each_differing_key_gets_one_kind() {
        let source = [
            row("1:1", "a", Some("2025-01-01 00:00:00.000000")),
            row("1:2", "b", Some("2025-01-01 00:00:00.000000")),
            row("1:3", "c", Some("2025-01-01 00:00:00.000000")),
            row("1:4", "d", Some("2025-06-01 00:00:00.000000")),
            row("1:5", "e", Some("2025-01-01 00:00:00.000000")),
        ];
        let target = [
            row("1:1", "a", None),
            row("1:2", "x", None),
            row("1:5", "e", None),
            row("1:5", "e", None),
            row("1:9", "z", None),
        ];
        let mut v = TableVerdict::new("shop1", "orders", "default");
        rows(&mut v, &source, &target, Some("2025-05-01 00:00:00.000000"), false);
        v.settle();
        let d = &v.differences;
        assert_eq!((d.missing.as_slice(), d.extra.as_slice()), (&["1:3".to_string()][..], &["1:9".to_string()][..]));
        assert_eq!(
            (d.different.as_slice(), d.duplicated.as_slice()),
            (&["1:2".to_string()][..], &["1:5".to_string()][..])
        );
        assert_eq!(d.in_flight, ["1:4"], "changed after the window's start: the next sync reads it");
        assert_eq!(v.status, VerdictStatus::Different);
    }

    #[test]
    fn rows_without_a_key_compare_as_a_multiset() {
        let source = [row("h1", "h1", None), row("h1", "h1", None), row("h2", "h2", None)];
        let target = [row("h1", "h1", None), row("h2", "h2", None), row("h2", "h2", None), row("h2", "h2", None)];
        let mut v = TableVerdict::new("shop1", "views", "default");
        rows(&mut v, &source, &target, None, true);
        v.settle();
        assert_eq!(v.differences.missing, ["h1"]);
        assert_eq!(v.differences.extra, ["h2"]);
        assert_eq!(v.differences.copies.get("h2"), Some(&2), "two copies too many");
    }

    #[test]
    fn buckets_that_differ_in_rows_or_sum() {
        let b = |bucket, rows, sum: &str| BucketDigest { bucket, rows, sum: sum.into(), json_sum: None };
        let (v, differing) = buckets(
            "a",
            "t",
            "default",
            &[b(0, 2, "10"), b(1, 1, "5"), b(2, 1, "7")],
            &[b(0, 2, "10"), b(1, 1, "6"), b(3, 1, "1")],
        );
        assert_eq!(differing, [1, 2, 3]);
        assert_eq!((v.source_rows, v.target_rows, v.buckets), (4, 4, 4));
        assert!(cursor_at_or_after("2025-01-02", "2025-01-01 10:00:00.000000") && !cursor_at_or_after("9", "10"));
    }
}
