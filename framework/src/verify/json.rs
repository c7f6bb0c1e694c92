//! JSON documents: compared first by the digests of their normal form (computed by the source
//! in SQL, by this crate from the target's documents), so that nothing but digests leaves the
//! source; then, for the keys whose digests differ, by value.

use std::collections::{BTreeMap, BTreeSet};

use crate::digest::{BucketDigest, RowDigest, canonical_json, digest_hex, json_string};
use crate::error::Result;
use crate::sink::TargetTable;

use super::compare::cursor_at_or_after;
use super::{Runner, TableVerdict, Target, Tenant};

/// The buckets of one tenant whose JSON sums differ, or `None` when the source computed none
/// (it cannot digest JSON in SQL: the documents are then compared whole).
pub(super) fn differing_buckets(
    tenant: &str,
    source: &[BucketDigest],
    target: &[(String, BucketDigest)],
) -> Option<Vec<u32>> {
    if source.iter().any(|b| b.json_sum.is_none()) {
        return None;
    }
    let mut all: BTreeMap<u32, (Option<&str>, Option<&str>)> = BTreeMap::new();
    for b in source {
        all.entry(b.bucket).or_default().0 = b.json_sum.as_deref();
    }
    for (_, b) in target.iter().filter(|(t, _)| t == tenant) {
        all.entry(b.bucket).or_default().1 = b.json_sum.as_deref();
    }
    Some(all.into_iter().filter(|(_, (s, t))| s != t).map(|(b, _)| b).collect())
}

/// The rows of differing buckets: keys on both sides whose JSON digests differ are compared by
/// value, with the source's documents of only those keys.
#[allow(clippy::too_many_arguments)]
pub(super) async fn drill(
    runner: &Runner,
    target: &Target,
    table: &TargetTable,
    tenant: &Tenant,
    buckets: &[u32],
    source_rows: &[RowDigest],
    verdict: &mut TableVerdict,
    in_flight_from: Option<&str>,
) -> Result<()> {
    let db = tenant.schema.table.database.clone();
    let pairs: Vec<(String, u32)> = buckets.iter().map(|b| (db.clone(), *b)).collect();
    let docs = target.sink.json_documents(table, &tenant.spec, std::slice::from_ref(&db), Some(&pairs)).await?;
    let theirs = documents_by_key(docs.iter().map(|(_, d)| d), &tenant.spec);
    let known: BTreeSet<&String> = [
        &verdict.differences.missing,
        &verdict.differences.extra,
        &verdict.differences.different,
        &verdict.differences.in_flight,
    ]
    .into_iter()
    .flatten()
    .collect();
    let suspects: Vec<String> = source_rows
        .iter()
        .filter(|r| !known.contains(&r.key))
        .filter_map(|r| {
            let target = theirs.get(&r.key)?;
            let digest = digest_hex(&json_string(&r.key, &target.iter().map(Option::as_deref).collect::<Vec<_>>()));
            (r.json.as_deref() != Some(digest.as_str())).then(|| r.key.clone())
        })
        .collect();
    if suspects.is_empty() {
        return Ok(());
    }
    let mine = runner
        .retry(&format!("JSON documents of {}", tenant.schema.table), || {
            runner.source.json_documents(&tenant.spec, Some(&suspects))
        })
        .await?;
    let cursors: BTreeMap<&str, Option<&str>> =
        source_rows.iter().map(|r| (r.key.as_str(), r.cursor.as_deref())).collect();
    let (differing, recent) =
        by_value_differences(&documents_by_key(mine.iter(), &tenant.spec), &theirs, &cursors, in_flight_from);
    verdict.add_json_differences(differing, recent);
    Ok(())
}

/// Whole documents of these tenants compared by value (a source without a SQL digest of JSON).
pub(super) async fn by_value(
    runner: &Runner,
    target: &Target,
    table: &TargetTable,
    members: &[&Tenant],
    tenants: &[String],
    windows: &BTreeMap<String, Option<String>>,
    verdicts: &mut [TableVerdict],
) -> Result<()> {
    let spec = &members[0].spec;
    let theirs = target.sink.json_documents(table, spec, tenants, None).await?;
    for tenant in members.iter().filter(|t| tenants.contains(&t.schema.table.database)) {
        let db = &tenant.schema.table.database;
        let Some(verdict) = verdicts.iter_mut().find(|v| &v.database == db) else { continue };
        let mine = runner
            .retry(&format!("JSON documents of {}", tenant.schema.table), || {
                runner.source.json_documents(&tenant.spec, None)
            })
            .await?;
        let cursors: BTreeMap<&str, Option<&str>> =
            mine.iter().map(|d| (d.key.as_str(), d.cursor.as_deref())).collect();
        let target = documents_by_key(theirs.iter().filter(|(t, _)| t == db).map(|(_, d)| d), spec);
        let in_flight_from = windows.get(db).cloned().flatten();
        let (differing, recent) =
            by_value_differences(&documents_by_key(mine.iter(), spec), &target, &cursors, in_flight_from.as_deref());
        verdict.add_json_differences(differing, recent);
    }
    Ok(())
}

/// Key → each JSON column's document, in the spec's column order.
fn documents_by_key<'a>(
    docs: impl Iterator<Item = &'a crate::digest::JsonDigest>,
    spec: &crate::digest::DigestSpec,
) -> BTreeMap<String, Vec<Option<String>>> {
    let columns: Vec<&str> = spec
        .columns
        .iter()
        .filter(|c| c.encoding == crate::digest::Encoding::Presence)
        .map(|c| c.source.as_str())
        .collect();
    let mut out: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    for d in docs {
        let row = out.entry(d.key.clone()).or_insert_with(|| vec![None; columns.len()]);
        if let Some(i) = columns.iter().position(|c| *c == d.column) {
            row[i] = d.text.clone();
        }
    }
    out
}

/// Keys on both sides whose documents differ by value; those changed within the next sync's
/// window apart.
fn by_value_differences(
    mine: &BTreeMap<String, Vec<Option<String>>>,
    theirs: &BTreeMap<String, Vec<Option<String>>>,
    cursors: &BTreeMap<&str, Option<&str>>,
    in_flight_from: Option<&str>,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut differing = BTreeSet::new();
    let mut recent = BTreeSet::new();
    for (key, docs) in mine {
        let Some(target) = theirs.get(key) else { continue };
        let same = docs
            .iter()
            .zip(target)
            .all(|(a, b)| a.as_deref().and_then(canonical_json) == b.as_deref().and_then(canonical_json));
        if same {
            continue;
        }
        match (cursors.get(key.as_str()).copied().flatten(), in_flight_from) {
            (Some(c), Some(from)) if cursor_at_or_after(c, from) => recent.insert(key.clone()),
            _ => differing.insert(key.clone()),
        };
    }
    (differing, recent)
}
