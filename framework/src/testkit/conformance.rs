//! Conformance checks any source or sink can run against its own server.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::error::{ConnectorError, Result};
use crate::schema::{LogicalType, TableRef, TableSchema};
use crate::sink::{Sink, StageRequest, TargetOptions, TargetTable, WriteMode};
use crate::source::{ReadRange, ReadRequest, ReadSummary, Source};
use crate::state::SyncMode;
use crate::system::SystemColumns;
use crate::value::{Row, RowBatch, Value};

use super::sample_table;

/// Reads `range` with `batch_size` 2 and checks the batches (size, row width) and the
/// reported row count.
async fn read_all(
    source: &dyn Source,
    schema: &Arc<TableSchema>,
    range: ReadRange,
    cursor: Option<&str>,
) -> Result<(Vec<Row>, ReadSummary)> {
    let table = &schema.table;
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let mut request = ReadRequest::new(schema.clone(), range, 2);
    request.track_cursor = cursor.map(str::to_string);
    let reader = source.read(request, crate::source::BatchSender::new(tx));
    let collect = async {
        let mut rows = Vec::new();
        while let Some(batch) = rx.recv().await {
            if batch.len() > 2 || batch.is_empty() {
                return Err(ConnectorError::permanent(format!(
                    "{table}: a batch of {} rows for batch_size 2",
                    batch.len()
                )));
            }
            if let Some(r) = batch.rows.iter().find(|r| r.len() != schema.columns.len()) {
                return Err(ConnectorError::permanent(format!(
                    "{table}: a row of {} values for {} columns",
                    r.len(),
                    schema.columns.len()
                )));
            }
            rows.extend(batch.rows);
        }
        Ok(rows)
    };
    let (summary, rows) = tokio::join!(reader, collect);
    let (summary, rows) = (summary?, rows?);
    if summary.rows != rows.len() as u64 {
        return Err(ConnectorError::permanent(format!(
            "{table}: reported {} rows but sent {}",
            summary.rows,
            rows.len()
        )));
    }
    Ok((rows, summary))
}

fn fail(table: &TableRef, what: String) -> ConnectorError {
    ConnectorError::permanent(format!("{table}: {what}"))
}

/// Checks a source against the [`Source`] contract on one of its tables and returns the names
/// of the checks it ran (the caller asserts it ran the ones its table allows):
/// - `full`: every row, in batches no larger than asked, each row as wide as the schema;
/// - `since` (the table has a cursor column): `Since` returns exactly the rows at or after a
///   bound, plus the NULL-cursor rows when asked (counted when not), and reports the highest
///   cursor value;
/// - `key ranges` (the table has a one-column integer key): `KeyRange` reads of 2 rows return
///   ascending keys after the exclusive bound, report the last key, and together return every
///   row once; a range `until` a key stops at it (inclusive);
/// - `key bounds` (the same, when the source reports [`Source::key_bounds`]): the lowest and
///   highest key.
pub async fn source_conformance(source: &dyn Source, table: &TableRef) -> Result<Vec<&'static str>> {
    let schema = Arc::new(source.discover(table).await?);
    if schema.columns.is_empty() {
        return Err(fail(table, "discovered no columns".into()));
    }
    let mut checks = vec!["full"];
    let cursor = crate::strategy::detect_cursor(&schema, None);
    let (all, summary) = read_all(source, &schema, ReadRange::Full, cursor.as_deref()).await?;

    if let Some(cursor) = cursor {
        let i = schema.column_index(&cursor).unwrap_or(0);
        let mut values: Vec<String> = all.iter().filter_map(|r| r[i].cursor_text()).collect();
        values.sort();
        if let Some(from) = values.get(values.len() / 2).cloned() {
            let expected_max = values.last().cloned();
            if summary.max_cursor.as_ref().and_then(Value::cursor_text) != expected_max {
                return Err(fail(
                    table,
                    format!("a full read reported max cursor {:?}, the rows say {expected_max:?}", summary.max_cursor),
                ));
            }
            let at_or_after = all.iter().filter(|r| r[i].cursor_text().is_some_and(|t| t >= from)).count();
            let nulls = all.iter().filter(|r| r[i].cursor_text().is_none()).count();
            for include_nulls in [true, false] {
                let range = ReadRange::since(&cursor, &from, include_nulls);
                let (rows, s) = read_all(source, &schema, range, Some(&cursor)).await?;
                let want = at_or_after + if include_nulls { nulls } else { 0 };
                if rows.len() != want {
                    return Err(fail(
                        table,
                        format!(
                            "Since {cursor} >= '{from}' (include_nulls {include_nulls}) returned {} rows, {want} expected \
                         (the bound is inclusive)",
                            rows.len()
                        ),
                    ));
                }
                if !include_nulls && s.null_cursor_rows_skipped != nulls as u64 {
                    return Err(fail(
                        table,
                        format!(
                            "Since without NULLs counted {} NULL-cursor rows left out, {nulls} expected",
                            s.null_cursor_rows_skipped
                        ),
                    ));
                }
            }
            checks.push("since");
        }
    }

    let key_column = (schema.key.len() == 1).then(|| schema.column(&schema.key[0])).flatten();
    if let Some(key) = key_column.filter(|k| matches!(k.logical, LogicalType::Int64 | LogicalType::UInt64)) {
        let i = schema.column_index(&key.name).unwrap_or(0);
        let number = |v: &Value| match v {
            Value::Int(k) => Some(i128::from(*k)),
            Value::UInt(k) => Some(i128::from(*k)),
            _ => None,
        };
        let mut seen = BTreeSet::new();
        let mut after: Option<String> = None;
        loop {
            let range = ReadRange::KeyRange { key: key.name.clone(), after: after.clone(), until: None, limit: 2 };
            let (rows, s) = read_all(source, &schema, range, None).await?;
            let keys: Vec<i128> = rows.iter().filter_map(|r| number(&r[i])).collect();
            if keys.windows(2).any(|w| w[0] >= w[1]) {
                return Err(fail(table, format!("KeyRange returned keys out of order: {keys:?}")));
            }
            if let (Some(a), Some(first)) = (after.as_deref().and_then(|a| a.parse::<i128>().ok()), keys.first())
                && *first <= a
            {
                return Err(fail(table, format!("KeyRange after {a} returned key {first} (the bound is exclusive)")));
            }
            if keys.len() > 2 {
                return Err(fail(table, format!("KeyRange limit 2 returned {} rows", keys.len())));
            }
            if !keys.is_empty() && s.last_key != keys.last().map(|k| k.to_string()) {
                return Err(fail(
                    table,
                    format!("KeyRange reported last key {:?}, the rows end at {:?}", s.last_key, keys.last()),
                ));
            }
            for k in &keys {
                if !seen.insert(*k) {
                    return Err(fail(table, format!("KeyRange returned key {k} twice")));
                }
            }
            if keys.len() < 2 {
                break;
            }
            after = s.last_key;
        }
        if seen.len() != all.len() {
            return Err(fail(table, format!("key ranges returned {} rows, a full read {}", seen.len(), all.len())));
        }
        if let Some(&middle) = seen.iter().nth(seen.len() / 2) {
            let until = middle.to_string();
            let range = ReadRange::KeyRange {
                key: key.name.clone(),
                after: None,
                until: Some(until),
                limit: all.len() as u64 + 1,
            };
            let (rows, _) = read_all(source, &schema, range, None).await?;
            let keys: BTreeSet<i128> = rows.iter().filter_map(|r| number(&r[i])).collect();
            let want: BTreeSet<i128> = seen.range(..=middle).copied().collect();
            if keys != want || rows.len() != want.len() {
                return Err(fail(
                    table,
                    format!(
                        "KeyRange until {middle} returned {} rows, {} expected (the bound is inclusive)",
                        rows.len(),
                        want.len()
                    ),
                ));
            }
        }
        checks.push("key ranges");
        if let Some((low, high)) = source.key_bounds(table, &key.name).await? {
            let want = seen.first().zip(seen.last()).map(|(l, h)| (l.to_string(), h.to_string()));
            if Some((low.clone(), high.clone())) != want {
                return Err(fail(table, format!("key_bounds said {low}..{high}, the rows span {want:?}")));
            }
            checks.push("key bounds");
        }
    }
    Ok(checks)
}

fn fresh<'a>(table: &'a TargetTable, tenant: &'a TableSchema, mode: SyncMode, write: WriteMode) -> StageRequest<'a> {
    StageRequest { table, tenant, mode, write, resume: None }
}

/// Checks a sink against the [`Sink`] contract: it prepares a table, stages and commits a full
/// sync of two tenants, an incremental merge, a keyless append, and discards a staging it will
/// not commit. Returns the names of the steps it ran; the caller checks the sink's own output.
pub async fn sink_conformance(sink: &dyn Sink, table: &str) -> Result<Vec<&'static str>> {
    let mut steps = Vec::new();
    let (schema_a, rows_a) = sample_table("tenant_a", table, 5);
    let (schema_b, rows_b) = sample_table("tenant_b", table, 3);
    let target = TargetTable {
        name: table.to_string(),
        columns: schema_a.columns.to_vec(),
        key: schema_a.key.clone(),
        key_nullable: false,
        options: TargetOptions::default(),
        system: SystemColumns::default(),
        changes: None,
    };
    sink.prepare(&target).await?;
    sink.prepare(&target).await?;
    steps.push("prepare twice");

    let mut staged = Vec::new();
    for (schema, rows) in [(&schema_a, &rows_a), (&schema_b, &rows_b)] {
        let mut w = sink.stage(fresh(&target, schema, SyncMode::Full, WriteMode::ReplaceTenant)).await?;
        w.write(&RowBatch { rows: rows.clone(), ..Default::default() }).await?;
        let s = w.finish().await?;
        if s.rows != rows.len() as u64 || s.tenant != schema.table.database {
            return Err(ConnectorError::permanent(format!(
                "staged {} rows of {}, wrote {}",
                s.rows,
                s.tenant,
                rows.len()
            )));
        }
        staged.push(s);
    }
    let outcome = sink.commit(&target, &staged).await?;
    if !outcome.rejected.is_empty() {
        return Err(ConnectorError::permanent(format!("the commit rejected {:?}", outcome.rejected)));
    }
    sink.discard(&staged).await;
    steps.push("full sync of two tenants");

    let mut w = sink.stage(fresh(&target, &schema_a, SyncMode::Incremental, WriteMode::Merge)).await?;
    let mut changed = rows_a[..2].to_vec();
    changed[0][1] = Value::String("changed".into());
    w.write(&RowBatch { rows: changed, ..Default::default() }).await?;
    let s = w.finish().await?;
    sink.commit(&target, std::slice::from_ref(&s)).await?;
    sink.discard(std::slice::from_ref(&s)).await;
    steps.push("incremental merge");

    let keyless = TargetTable { name: format!("{table}_keyless"), key: Vec::new(), ..target.clone() };
    let mut keyless_schema = schema_a.clone();
    keyless_schema.key.clear();
    sink.prepare(&keyless).await?;
    let mut w = sink.stage(fresh(&keyless, &keyless_schema, SyncMode::Incremental, WriteMode::AppendDedup)).await?;
    w.write(&RowBatch { rows: rows_a.clone(), ..Default::default() }).await?;
    let s = w.finish().await?;
    sink.commit(&keyless, std::slice::from_ref(&s)).await?;
    sink.discard(std::slice::from_ref(&s)).await;
    steps.push("keyless append");

    let mut w = sink.stage(fresh(&target, &schema_b, SyncMode::Full, WriteMode::ReplaceTenant)).await?;
    w.write(&RowBatch { rows: rows_b.clone(), ..Default::default() }).await?;
    let s = w.finish().await?;
    sink.discard(std::slice::from_ref(&s)).await;
    steps.push("discard");
    Ok(steps)
}
