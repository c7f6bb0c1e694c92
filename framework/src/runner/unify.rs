//! From the tenants' own schemas to one target table: per-table options applied to each
//! tenant, tenants whose key or column types disagree with the others left out alone (the
//! others still sync), and the union of the rest.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{ConnectorError, ErrorClass, Result};
use crate::pipeline::TableOptions;
use crate::schema::{Column, KeySource, LogicalType, TableRef, TableSchema};
use crate::sink::{TargetOptions, TargetTable};
use crate::system::SystemColumns;

/// Applies the per-table `primary_key` and `exclude_columns` and checks `cursor_column`
/// against one tenant's discovered columns.
pub(crate) fn apply_table_options(mut schema: TableSchema, options: &TableOptions) -> Result<TableSchema> {
    let table = schema.table.clone();
    let excluded = |name: &str| options.exclude_columns.iter().any(|e| e.eq_ignore_ascii_case(name));
    // Changed only when something is excluded: the list may be shared with other tenants.
    if schema.columns.iter().any(|c| excluded(&c.name)) {
        Arc::make_mut(&mut schema.columns).retain(|c| !excluded(&c.name));
    }
    if let Some(cursor) = &options.cursor_column {
        match schema.column(cursor) {
            None if excluded(cursor) => {
                return Err(ConnectorError::config(format!(
                    "{table}: table_options.{}.cursor_column `{cursor}` is also in exclude_columns; a cursor must be read",
                    table.table
                )));
            }
            None => {
                return Err(ConnectorError::config(format!(
                    "{table}: table_options.{}.cursor_column names `{cursor}`, which the table does not have",
                    table.table
                )));
            }
            Some(c) if !crate::strategy::is_cursor_type(&c.logical) => {
                return Err(ConnectorError::config(format!(
                    "{table}: table_options.{}.cursor_column `{cursor}` is {}; a cursor must be DATE, DATETIME or \
                     TIMESTAMP",
                    table.table, c.source_type
                )));
            }
            Some(_) => {}
        }
    }
    if !options.primary_key.is_empty() {
        let mut key = Vec::new();
        for k in &options.primary_key {
            let column = schema.column(k).ok_or_else(|| {
                ConnectorError::config(format!(
                    "{table}: table_options.{}.primary_key names column `{k}`, which the table does not have{}",
                    table.table,
                    if excluded(k) { " (it is excluded)" } else { "" }
                ))
            })?;
            key.push(column.name.clone());
        }
        schema.key = key;
        schema.key_source = KeySource::Configured;
    } else if schema.key.iter().any(|k| excluded(k)) {
        return Err(ConnectorError::config(format!(
            "{table}: exclude_columns leaves out key column `{}`; the key is needed to merge rows (set \
             table_options.{}.primary_key to other columns, or keep it)",
            schema.key.iter().find(|k| excluded(k)).cloned().unwrap_or_default(),
            table.table
        )));
    }
    Ok(schema)
}

/// Discovers one tenant's table (retried) with its per-table options applied.
pub(crate) async fn discover_configured(runner: &super::Runner, table: &TableRef) -> Result<TableSchema> {
    let options = runner.table_options.get(&table.table).cloned().unwrap_or_default();
    let schema = runner.retry(&format!("discover {table}"), || runner.source.discover(table)).await?;
    apply_table_options(schema, &options)
}

/// Discovers table `name` in every one of `databases` and unifies the tenants as a sync
/// does: per-table options checked and applied, and every tenant that cannot take part
/// (not discovered, a bad option, a key or type that disagrees) in `rejected` with why.
pub(crate) async fn discover_and_unify(
    runner: &super::Runner,
    name: &str,
    databases: &[String],
    options: &TableOptions,
) -> Unified {
    // One batched discovery; a tenant it failed for transiently is retried alone.
    let batch = runner.source.discover_many(name, databases).await;
    let mut discovered: Vec<(TableRef, Result<TableSchema>)> =
        databases.iter().zip(batch).map(|(db, found)| (TableRef::new(db, name), found)).collect();
    // Only those retried run side by side (a future per tenant of a thousand is a megabyte).
    let retried = futures::future::join_all(
        discovered
            .iter_mut()
            .filter(|(_, found)| found.as_ref().is_err_and(|e| e.class() == ErrorClass::Transient))
            .map(|(table, found)| async move {
                if let Err(e) = found {
                    tracing::debug!(%table, error = %e, "batched discovery failed; retrying this tenant alone");
                }
                *found = runner.retry(&format!("discover {table}"), || runner.source.discover(table)).await;
            }),
    );
    retried.await;
    let mut rejected = Vec::new();
    let mut found = Vec::new();
    for (table, result) in discovered {
        match result {
            Ok(schema) => found.push(schema),
            Err(e) => rejected.push((table, e)),
        }
    }
    if let Some(e) = unknown_option_columns(name, &found, options) {
        rejected.extend(found.into_iter().map(|s| (s.table, e.duplicate())));
        return Unified { target: None, tenants: Vec::new(), rejected };
    }
    let mut schemas = Vec::with_capacity(found.len());
    let mut last_columns: Option<Arc<Vec<Column>>> = None;
    for schema in found {
        let table = schema.table.clone();
        match apply_table_options(schema, options) {
            Ok(mut s) => {
                s.share_columns(&mut last_columns);
                schemas.push(Arc::new(s))
            }
            Err(e) => rejected.push((table, e)),
        }
    }
    let mut unified = unify(name, schemas, options, &runner.settings.system_columns);
    rejected.append(&mut unified.rejected);
    unified.rejected = rejected;
    unified
}

/// Column names of `exclude_columns` and `rename_columns` that no tenant has: a config error
/// (a typo would otherwise leave a PII column in the data).
fn unknown_option_columns(name: &str, discovered: &[TableSchema], options: &TableOptions) -> Option<ConnectorError> {
    if discovered.is_empty() {
        return None;
    }
    let has = |c: &str| discovered.iter().any(|s| s.column(c).is_some());
    let excluded_everywhere = |c: &str| options.exclude_columns.iter().any(|e| e.eq_ignore_ascii_case(c));
    for (key, column) in options
        .exclude_columns
        .iter()
        .map(|c| ("exclude_columns", c))
        .chain(options.rename_columns.keys().map(|c| ("rename_columns", c)))
    {
        if !has(column) {
            let known: Vec<&str> =
                discovered.first().map(|s| s.columns.iter().map(|c| c.name.as_str()).collect()).unwrap_or_default();
            let hint =
                crate::config::closest(column, known).map(|n| format!("; did you mean `{n}`?")).unwrap_or_default();
            return Some(ConnectorError::config(format!(
                "table_options.{name}.{key} names column `{column}`, which no tenant's {name} has{hint}"
            )));
        }
        if key == "rename_columns" && excluded_everywhere(column) {
            return Some(ConnectorError::config(format!(
                "table_options.{name}: column `{column}` is both renamed and excluded; keep one"
            )));
        }
    }
    None
}

/// The result of unifying the tenants of one table name.
pub(crate) struct Unified {
    pub target: Option<TargetTable>,
    /// The tenants that take part.
    pub tenants: Vec<Arc<TableSchema>>,
    /// Tenants left out, each with the reason.
    pub rejected: Vec<(TableRef, ConnectorError)>,
}

/// Unifies the tenants' schemas: a tenant whose key or a column's type disagrees with the
/// others' is left out with an error naming both (the others still sync); the target is the
/// union of the rest.
pub(crate) fn unify(
    name: &str,
    schemas: Vec<Arc<TableSchema>>,
    options: &TableOptions,
    system: &SystemColumns,
) -> Unified {
    let (schemas, mut rejected) = split_by_key(name, schemas);
    let (schemas, mismatched) = split_by_types(name, schemas, options);
    rejected.extend(mismatched);
    if schemas.is_empty() {
        return Unified { target: None, tenants: schemas, rejected };
    }
    let target = union_target(name, &schemas, options, system);
    Unified { target: Some(target), tenants: schemas, rejected }
}

/// Keeps the tenants that share the most common key (the first tenant's on a tie); the others
/// fail with an error naming both keys, instead of silently turning the table keyless.
pub(super) fn split_by_key(
    name: &str,
    schemas: Vec<Arc<TableSchema>>,
) -> (Vec<Arc<TableSchema>>, Vec<(TableRef, ConnectorError)>) {
    let norm = |k: &[String]| k.iter().map(|c| c.to_ascii_lowercase()).collect::<Vec<_>>();
    let mut counts: Vec<(Vec<String>, usize)> = Vec::new();
    for s in &schemas {
        let k = norm(&s.key);
        match counts.iter_mut().find(|(c, _)| *c == k) {
            Some((_, n)) => *n += 1,
            None => counts.push((k, 1)),
        }
    }
    let Some(best) = most_common(&counts) else { return (schemas, Vec::new()) };
    let describe = |k: &[String]| if k.is_empty() { "no key".to_string() } else { format!("key ({})", k.join(", ")) };
    let (keep, reject): (Vec<_>, Vec<_>) = schemas.into_iter().partition(|s| norm(&s.key) == best);
    let errors = reject
        .into_iter()
        .map(|s| {
            let e = ConnectorError::permanent(format!(
                "{}: has {} but the other tenants' {name} has {}; this tenant is left out until they agree: align \
                 the schemas, or set table_options.{name}.primary_key for every tenant",
                s.table,
                describe(&s.key),
                describe(&best)
            ));
            (s.table.clone(), e)
        })
        .collect();
    (keep, errors)
}

/// The entry with the highest count; the first one on a tie.
fn most_common<T: Clone>(counts: &[(T, usize)]) -> Option<T> {
    let mut best: Option<&(T, usize)> = None;
    for c in counts {
        if best.is_none_or(|b| c.1 > b.1) {
            best = Some(c);
        }
    }
    best.map(|b| b.0.clone())
}

/// Per column, the type most tenants have (widened over the compatible others) wins; a tenant
/// whose type cannot be widened into it is left out, named with the column and both types.
/// An explicit `column_types` target type settles any disagreement (the sink converts).
fn split_by_types(
    name: &str,
    schemas: Vec<Arc<TableSchema>>,
    options: &TableOptions,
) -> (Vec<Arc<TableSchema>>, Vec<(TableRef, ConnectorError)>) {
    // column (lower case) → (type, tenants having it, an example source type), first seen first
    type Groups = Vec<(LogicalType, Vec<usize>, String)>;
    let mut columns: Vec<(String, Groups)> = Vec::new();
    for (i, s) in schemas.iter().enumerate() {
        for c in s.columns.iter() {
            let lower = c.name.to_ascii_lowercase();
            let groups = match columns.iter_mut().find(|(n, _)| *n == lower) {
                Some((_, g)) => g,
                None => {
                    columns.push((lower, Vec::new()));
                    &mut columns.last_mut().expect("just pushed").1
                }
            };
            match groups.iter_mut().find(|(t, _, _)| *t == c.logical) {
                Some((_, tenants, _)) => tenants.push(i),
                None => groups.push((c.logical.clone(), vec![i], c.source_type.clone())),
            }
        }
    }
    let mut rejected: HashMap<usize, ConnectorError> = HashMap::new();
    for (column, groups) in &columns {
        if groups.len() < 2 || options.column_types.keys().any(|k| k.eq_ignore_ascii_case(column)) {
            continue;
        }
        // Families of types that widen into each other: (widest type, tenants, a source type).
        let mut families: Vec<(LogicalType, Vec<usize>, String)> = Vec::new();
        for (ty, tenants, source_type) in groups {
            match families.iter_mut().find_map(|f| widen(&f.0, ty).map(|w| (f, w))) {
                Some((family, wide)) => {
                    family.0 = wide;
                    family.1.extend(tenants);
                }
                None => families.push((ty.clone(), tenants.clone(), source_type.clone())),
            }
        }
        let counts: Vec<(usize, usize)> = families.iter().enumerate().map(|(f, (_, t, _))| (f, t.len())).collect();
        let winner = most_common(&counts).unwrap_or(0);
        let mut others: Vec<String> = families[winner].1.iter().map(|&i| schemas[i].table.database.clone()).collect();
        others.sort();
        for (f, (_, tenants, _)) in families.iter().enumerate() {
            if f == winner {
                continue;
            }
            for &i in tenants {
                let c = schemas[i].column(column);
                let original = c.map_or(column.as_str(), |c| c.name.as_str());
                let source_type = c.map_or("", |c| c.source_type.as_str());
                rejected.entry(i).or_insert_with(|| {
                    ConnectorError::permanent(format!(
                        "{}: column `{original}` is {source_type} here but {} in {}; this tenant is left out until they \
                         agree: align the schemas, or set table_options.{name}.column_types.{original}",
                        schemas[i].table,
                        families[winner].2,
                        others.join(", ")
                    ))
                });
            }
        }
    }
    let mut keep = Vec::new();
    let mut errors = Vec::new();
    for (i, s) in schemas.into_iter().enumerate() {
        match rejected.remove(&i) {
            Some(e) => errors.push((s.table.clone(), e)),
            None => keep.push(s),
        }
    }
    (keep, errors)
}

/// The target table for the tenants: the union of their columns (compatible types widened).
fn union_target(
    name: &str,
    schemas: &[Arc<TableSchema>],
    options: &TableOptions,
    system: &SystemColumns,
) -> TargetTable {
    let mut columns: Vec<Column> = Vec::new();
    for s in schemas {
        for c in s.columns.iter() {
            match columns.iter_mut().find(|e| e.name.eq_ignore_ascii_case(&c.name)) {
                None => columns.push(Column { nullable: true, ..c.clone() }),
                Some(existing) if existing.logical == c.logical => {}
                Some(existing) => {
                    // Either widenable (split_by_types kept only those) or settled by an
                    // explicit target type, which the sink converts each tenant's values into.
                    if let Some(wider) = widen(&existing.logical, &c.logical) {
                        existing.logical = wider;
                    }
                }
            }
        }
    }
    // Every tenant has the same key here (see split_by_key).
    let key = schemas.first().map(|s| s.key.clone()).unwrap_or_default();
    let key_nullable = schemas.iter().any(|s| s.key.iter().any(|k| s.column(k).is_none_or(|c| c.nullable)));
    TargetTable {
        name: name.to_string(),
        columns,
        key,
        key_nullable,
        options: TargetOptions::from(options),
        system: system.clone(),
        changes: None,
    }
}

/// A type that holds every value of both, where one exists without changing representation.
/// Exact types never widen into floating point.
pub(super) fn widen(a: &LogicalType, b: &LogicalType) -> Option<LogicalType> {
    use LogicalType::*;
    match (a, b) {
        (Int64, UInt64) | (UInt64, Int64) => Some(Decimal { precision: 20, scale: 0 }),
        (Float32, Float64) | (Float64, Float32) => Some(Float64),
        (Decimal { precision: p1, scale: s1 }, Decimal { precision: p2, scale: s2 }) => {
            let scale = (*s1).max(*s2);
            let int = (p1 - s1).max(p2 - s2);
            Some(Decimal { precision: int.saturating_add(scale).min(76), scale })
        }
        (DateTime { fsp: a }, DateTime { fsp: b }) => Some(DateTime { fsp: (*a).max(*b) }),
        (Timestamp { fsp: a }, Timestamp { fsp: b }) => Some(Timestamp { fsp: (*a).max(*b) }),
        (Time { fsp: a }, Time { fsp: b }) => Some(Time { fsp: (*a).max(*b) }),
        _ => None,
    }
}

/// Identifies a tenant table's columns, types and key (as synced, after the table options):
/// a resumed full sync notices schema changes by it, and a changed fingerprint re-reads the
/// tenant's table in full.
pub fn fingerprint(schema: &TableSchema) -> String {
    let text = serde_json::to_string(&(&schema.columns, &schema.key)).unwrap_or_default();
    let hash = text.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::column;

    fn schema(db: &str, columns: Vec<Column>) -> Arc<TableSchema> {
        Arc::new(TableSchema {
            table: TableRef::new(db, "orders"),
            columns: columns.into(),
            key: vec!["id".into()],
            key_source: KeySource::PrimaryKey,
            estimated_rows: None,
        })
    }

    #[test]
    fn tenants_with_equal_columns_share_one_list_and_an_exclusion_still_applies_to_each() {
        let columns = || vec![column("id", LogicalType::Int64), column("note", LogicalType::String)];
        let mut last = None;
        let mut tenants: Vec<TableSchema> =
            ["shop1", "shop2", "shop3"].iter().map(|db| (*schema(db, columns())).clone()).collect();
        tenants[2] = (*schema("shop3", vec![column("id", LogicalType::Int64)])).clone();
        for t in &mut tenants {
            t.share_columns(&mut last);
        }
        assert!(Arc::ptr_eq(&tenants[0].columns, &tenants[1].columns), "equal lists are one allocation");
        assert!(!Arc::ptr_eq(&tenants[1].columns, &tenants[2].columns), "a different list stays its own");
        assert_eq!(tenants[2].columns.len(), 1);

        // Options that exclude nothing keep the list shared; an exclusion changes this tenant only.
        let kept = apply_table_options(tenants[0].clone(), &TableOptions::default()).unwrap();
        assert!(Arc::ptr_eq(&kept.columns, &tenants[1].columns));
        let options = TableOptions { exclude_columns: vec!["note".into()], ..Default::default() };
        let excluded = apply_table_options(tenants[0].clone(), &options).unwrap();
        assert_eq!(excluded.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["id"]);
        assert_eq!(tenants[1].columns.len(), 2, "the shared list itself is unchanged");
    }

    #[test]
    fn union_takes_every_tenants_columns_and_widens_compatible_types() {
        let a = schema("shop1", vec![column("id", LogicalType::Int64), column("note", LogicalType::String)]);
        let b =
            schema("shop2", vec![column("id", LogicalType::UInt64), column("extra", LogicalType::DateTime { fsp: 3 })]);
        let u = unify("orders", vec![a, b], &TableOptions::default(), &SystemColumns::default());
        let t = u.target.unwrap();
        let names: Vec<_> = t.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "note", "extra"]);
        assert_eq!(t.columns[0].logical, LogicalType::Decimal { precision: 20, scale: 0 });
        assert!(t.columns.iter().all(|c| c.nullable));
        assert_eq!(t.key, ["id"]);
        assert!(u.rejected.is_empty());
    }

    #[test]
    fn a_tenant_whose_column_type_disagrees_is_left_out_alone() {
        let a = schema(
            "shop1",
            vec![column("id", LogicalType::Int64), column("v", LogicalType::Decimal { precision: 10, scale: 2 })],
        );
        let b = schema("shop2", vec![column("id", LogicalType::Int64), column("v", LogicalType::String)]);
        let c = schema(
            "shop3",
            vec![column("id", LogicalType::Int64), column("v", LogicalType::Decimal { precision: 12, scale: 2 })],
        );
        let u = unify("orders", vec![a, b, c], &TableOptions::default(), &SystemColumns::default());
        let kept: Vec<&str> = u.tenants.iter().map(|s| s.table.database.as_str()).collect();
        assert_eq!(kept, ["shop1", "shop3"]);
        assert_eq!(u.rejected.len(), 1);
        let (table, e) = &u.rejected[0];
        assert_eq!(table.database, "shop2");
        assert!(e.message().contains("column `v`") && e.message().contains("shop1, shop3"), "{e}");
        assert!(e.message().contains("column_types.v"), "{e}");
        assert_eq!(u.target.unwrap().columns[1].logical, LogicalType::Decimal { precision: 12, scale: 2 });
    }

    #[test]
    fn exact_types_never_widen_into_floats() {
        assert_eq!(widen(&LogicalType::Int64, &LogicalType::Float64), None);
        assert_eq!(widen(&LogicalType::Decimal { precision: 10, scale: 2 }, &LogicalType::Float64), None);
    }
}
