//! What to digest of each tenant's table: its columns as both sides encode them, its key,
//! the number of buckets, and which tenants share one target query.

use std::sync::Arc;

use crate::digest::{DigestColumn, DigestSpec, Encoding};
use crate::schema::{LogicalType, TableSchema};
use crate::settings::{CdcDeletes, Settings, TableOptions};
use crate::sink::TargetOptions;

/// About this many rows per bucket: a bucket that differs costs one short drill-down.
const ROWS_PER_BUCKET: u64 = 2048;

/// The spec of one tenant. Every tenant of a table gets the same number of buckets (from the
/// largest), so tenants with the same columns share one query on the target.
pub(super) fn digest_spec(
    schema: &TableSchema,
    options: &TableOptions,
    settings: &Settings,
    keys_only: bool,
    all: &[Arc<TableSchema>],
) -> DigestSpec {
    let target = TargetOptions::from(options);
    let column = |c: &crate::schema::Column| {
        let overridden = options.column_types.iter().find(|(k, _)| k.eq_ignore_ascii_case(&c.name)).map(|(_, t)| t);
        let encoding = match (&c.logical, overridden.map(|t| t.to_ascii_uppercase())) {
            // A document stored as its text is compared as text.
            (LogicalType::Json, Some(t)) if t == "STRING" => Some(Encoding::Value),
            (LogicalType::Json, Some(_)) => None,
            (LogicalType::Json, None) => Some(Encoding::Presence),
            (_, None) => Some(Encoding::Value),
            (LogicalType::Int64 | LogicalType::UInt64, Some(t)) if t == "BOOL" || t == "BOOLEAN" => {
                Some(Encoding::Truthy)
            }
            // Another target type holds a converted value no source expression reproduces.
            (_, Some(_)) => None,
        };
        encoding.map(|encoding| DigestColumn {
            source: c.name.clone(),
            target: target.target_name(&c.name).to_string(),
            logical: c.logical.clone(),
            source_type: c.source_type.clone(),
            encoding,
        })
    };
    let key: Vec<DigestColumn> = schema.key.iter().filter_map(|k| schema.column(k)).filter_map(column).collect();
    let mut columns: Vec<DigestColumn> =
        if keys_only && !key.is_empty() { key.clone() } else { schema.columns.iter().filter_map(column).collect() };
    columns.sort_by_key(|c| c.source.to_lowercase());
    let largest = all.iter().filter_map(|s| s.estimated_rows).max().unwrap_or(0);
    let buckets = largest.div_ceil(ROWS_PER_BUCKET).clamp(1, 1 << 16).next_power_of_two() as u32;
    DigestSpec {
        table: schema.table.clone(),
        columns,
        key,
        buckets,
        cursor: crate::strategy::detect_cursor(schema, options.cursor_column.as_deref()),
        skip_soft_deleted: settings.cdc_deletes == CdcDeletes::Soft,
    }
}

/// Columns left out of the comparison (a `column_types` override to a type whose values the
/// source cannot reproduce), for the report.
pub(super) fn uncompared(schema: &TableSchema, spec: &DigestSpec, keys_only: bool) -> Vec<String> {
    if keys_only {
        return Vec::new();
    }
    schema.columns.iter().filter(|c| !spec.columns.iter().any(|d| d.source == c.name)).map(|c| c.name.clone()).collect()
}

/// Tenants whose specs have the same columns and key: one target query each group.
pub(super) fn groups<'a>(specs: impl Iterator<Item = &'a DigestSpec>) -> Vec<Vec<usize>> {
    let mut groups: Vec<(&DigestSpec, Vec<usize>)> = Vec::new();
    for (i, spec) in specs.enumerate() {
        match groups
            .iter_mut()
            .find(|(s, _)| s.columns == spec.columns && s.key == spec.key && s.buckets == spec.buckets)
        {
            Some((_, members)) => members.push(i),
            None => groups.push((spec, vec![i])),
        }
    }
    groups.into_iter().map(|(_, m)| m).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{sample_table, schema_of};

    #[test]
    fn columns_sorted_by_name_json_by_presence_and_overrides_left_out() {
        let mut schema = schema_of(
            "a",
            "t",
            &[
                ("id", LogicalType::Int64),
                ("Zeta", LogicalType::String),
                ("doc", LogicalType::Json),
                ("flag", LogicalType::Int64),
                ("amount", LogicalType::Float64),
            ],
            &["id"],
        );
        schema.estimated_rows = Some(10_000);
        let mut options = TableOptions::default();
        options.column_types.insert("flag".into(), "BOOL".into());
        options.column_types.insert("amount".into(), "NUMERIC".into());
        options.rename_columns.insert("Zeta".into(), "z".into());
        let all = vec![Arc::new(schema.clone())];
        let spec = digest_spec(&schema, &options, &Settings::default(), false, &all);
        let names: Vec<(&str, &str, Encoding)> =
            spec.columns.iter().map(|c| (c.source.as_str(), c.target.as_str(), c.encoding)).collect();
        assert_eq!(
            names,
            [
                ("doc", "doc", Encoding::Presence),
                ("flag", "flag", Encoding::Truthy),
                ("id", "id", Encoding::Value),
                ("Zeta", "z", Encoding::Value)
            ]
        );
        assert_eq!(uncompared(&schema, &spec, false), ["amount"]);
        assert_eq!(spec.buckets, 8, "10,000 rows in buckets of about 2,048");
        let keys = digest_spec(&schema, &options, &Settings::default(), true, &all);
        assert_eq!(keys.columns.len(), 1);

        let (other, _) = sample_table("b", "t", 1);
        let other_spec = digest_spec(&other, &TableOptions::default(), &Settings::default(), false, &all);
        assert_eq!(groups([&spec, &other_spec, &spec.clone()].into_iter()), [vec![0, 2], vec![1]]);
    }
}
