//! The shape of target tables: system fields, each column's BigQuery name and type (with
//! `rename_columns` and `column_types`), how an existing table must change, and the table
//! resource a new one is created with.

use connector_framework::{CdcDeletes, ChangeTracking, Column, ConnectorError, Result, SystemColumns, TargetTable};
use serde_json::{Value as Json, json};

use crate::types::{bigquery_type, can_widen, canonical_type, column_name};

/// The fields the sink adds to every table; tables without a key also get the row hash, the
/// content hash that makes re-reading a window idempotent.
pub(crate) fn system_fields(system: &SystemColumns, keyless: bool, changes: Option<ChangeTracking>) -> Vec<Json> {
    let mut fields = vec![
        json!({"name": system.tenant, "type": "STRING", "mode": "REQUIRED", "description": "source database (tenant)"}),
        json!({"name": system.synced_at, "type": "TIMESTAMP", "mode": "REQUIRED", "description": "when connector-run wrote the row"}),
        json!({"name": system.mode, "type": "STRING", "mode": "REQUIRED", "description": "FULL or INCREMENTAL"}),
    ];
    if keyless {
        fields.push(json!({"name": system.row_hash, "type": "STRING", "mode": "NULLABLE",
                           "description": "hash of the row's values and its occurrence number (tables without a key)"}));
    }
    fields.extend(
        change_fields(system, keyless, changes)
            .into_iter()
            .map(|(name, ty, doc)| json!({"name": name, "type": ty, "mode": "NULLABLE", "description": doc})),
    );
    fields
}

/// The columns a change stream needs in a target table: the log position of the change that
/// wrote each row, and, with soft deletes (tables with a key), when the row was deleted.
pub(crate) fn change_fields(
    system: &SystemColumns,
    keyless: bool,
    changes: Option<ChangeTracking>,
) -> Vec<(String, &'static str, &'static str)> {
    let Some(changes) = changes else { return Vec::new() };
    let mut out = vec![(
        system.change_seq.clone(),
        "STRING",
        "binlog position of the change (or snapshot) that wrote the row (--cdc)",
    )];
    if changes.deletes == CdcDeletes::Soft && !keyless {
        out.push((
            system.deleted_at.clone(),
            "TIMESTAMP",
            "when the row was deleted in the source (cdc_deletes: soft)",
        ));
    }
    out
}

/// The system column names that may appear in a table.
pub(crate) fn system_names(system: &SystemColumns) -> [&str; 6] {
    [&system.tenant, &system.synced_at, &system.mode, &system.row_hash, &system.change_seq, &system.deleted_at]
}

/// One column in BigQuery: its source name, BigQuery name and BigQuery type.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MappedColumn {
    pub source: String,
    pub name: String,
    pub ty: String,
}

/// Target columns for `columns`: each source column's BigQuery name (its `rename_columns`
/// entry, else itself where BigQuery allows) and type. Two columns never share a name, and no
/// column takes a system column's name: either is an error that names both columns and the
/// setting that resolves it.
pub(crate) fn mapped_columns(table: &TargetTable, columns: &[Column], what: &str) -> Result<Vec<MappedColumn>> {
    let mut out: Vec<MappedColumn> = Vec::new();
    for c in columns {
        let renamed = table.options.rename_columns.iter().find(|(k, _)| k.eq_ignore_ascii_case(&c.name));
        let name = match renamed {
            Some((_, to)) => to.clone(),
            None => column_name(&c.name),
        };
        if let Some(key) = table.system.clash(&name) {
            return Err(ConnectorError::config(format!(
                "{what}: column `{}` has the name of the system column `{name}` that every target table gets; \
                 rename the system column with system_columns.{key} (e.g. \"_{name}\"), or the column with \
                 table_options.{}.rename_columns",
                c.name, table.name
            )));
        }
        if let Some(other) = out.iter().find(|o| o.name.eq_ignore_ascii_case(&name)) {
            return Err(ConnectorError::config(format!(
                "{what}: columns `{}` and `{}` would both be `{name}` in BigQuery (column names there ignore case{}); \
                 give one another name with table_options.{}.rename_columns, e.g. {{\"{}\": \"{}_2\"}}",
                other.source,
                c.name,
                if renamed.is_none() && name != c.name { ", and this name is mapped" } else { "" },
                table.name,
                c.name,
                name
            )));
        }
        out.push(MappedColumn { source: c.name.clone(), name, ty: bigquery_type(&c.logical).to_string() });
    }
    Ok(out)
}

/// The target's columns: each column's override from `column_types`, else its mapped type.
pub(crate) fn desired_columns(table: &TargetTable) -> Result<Vec<MappedColumn>> {
    let mut columns = mapped_columns(table, &table.columns, &table.name)?;
    for column in &mut columns {
        let over = table.options.column_types.iter().find(|(c, _)| c.eq_ignore_ascii_case(&column.source));
        if let Some((_, over)) = over {
            let over = over.to_ascii_uppercase();
            if !can_convert(&column.ty, &over) {
                return Err(ConnectorError::config(format!(
                    "table_options.{}.column_types.{}: a {} column cannot be stored as {over}; choose STRING or a \
                     compatible type",
                    table.name, column.source, column.ty
                )));
            }
            column.ty = over;
        }
    }
    for c in table.options.column_types.keys() {
        if !table.columns.iter().any(|col| col.name.eq_ignore_ascii_case(c)) {
            return Err(ConnectorError::config(format!(
                "table_options.{}.column_types names column `{c}`, which no tenant's table has",
                table.name
            )));
        }
    }
    Ok(columns)
}

/// Whether staged values of type `from` can be stored in a `to` column (see [`convert`]).
/// Conversions into FLOAT64 are allowed only from FLOAT64 and STRING: exact values would be
/// rounded.
pub(crate) fn can_convert(from: &str, to: &str) -> bool {
    let exact = ["INT64", "NUMERIC", "BIGNUMERIC", "BOOL", "STRING"];
    let temporal = ["DATE", "DATETIME", "TIMESTAMP", "STRING"];
    from == to
        || match to {
            "STRING" => true,
            "BOOL" => ["INT64", "STRING"].contains(&from),
            "INT64" | "NUMERIC" | "BIGNUMERIC" => exact.contains(&from),
            "FLOAT64" => from == "STRING",
            "JSON" | "GEOGRAPHY" | "TIME" | "BYTES" => from == "STRING",
            "DATE" | "DATETIME" | "TIMESTAMP" => temporal.contains(&from),
            _ => false,
        }
}

/// The SQL that turns a staged `from` value into a `to` column's value.
pub(crate) fn convert(expr: &str, from: &str, to: &str) -> String {
    match (from, to) {
        (f, t) if f == t => expr.to_string(),
        ("BYTES", "STRING") => format!("TO_BASE64({expr})"),
        ("JSON", "STRING") => format!("TO_JSON_STRING({expr})"),
        ("STRING", "JSON") => format!("PARSE_JSON({expr})"),
        ("STRING", "GEOGRAPHY") => format!("ST_GEOGFROMTEXT({expr})"),
        (_, t) => format!("CAST({expr} AS {t})"),
    }
}

/// How an existing target table must change to hold a run's columns.
pub(crate) struct SchemaDiff {
    /// Every target column in order (name, type): the desired ones, then columns the source
    /// no longer has (kept, written NULL from now on).
    pub columns: Vec<(String, String)>,
    /// Columns to add (NULLABLE); the row hash included when a keyless table lacks it.
    pub added: Vec<(String, String)>,
    /// Columns BigQuery can widen in place: (name, from, to).
    pub widened: Vec<(String, String, String)>,
    pub create: bool,
}

/// The columns of a table resource: BigQuery name → type (canonical names).
pub(crate) type Fields = Vec<(String, String)>;

pub(crate) fn fields_of(resource: &Json) -> Fields {
    resource["schema"]["fields"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|f| {
                    Some((f["name"].as_str()?.to_string(), canonical_type(f["type"].as_str()?).to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

impl SchemaDiff {
    pub fn new(table: &TargetTable, existing: Option<&Json>) -> Result<Self> {
        let desired: Vec<(String, String)> = desired_columns(table)?.into_iter().map(|c| (c.name, c.ty)).collect();
        let Some(resource) = existing else {
            return Ok(Self { columns: desired, added: Vec::new(), widened: Vec::new(), create: true });
        };
        let current = fields_of(resource);
        let mut diff = Self { columns: Vec::new(), added: Vec::new(), widened: Vec::new(), create: false };
        let row_hash = &table.system.row_hash;
        if table.key.is_empty() && !current.iter().any(|(n, _)| n == row_hash) {
            diff.added.push((row_hash.clone(), "STRING".to_string()));
        }
        for (name, ty, _) in change_fields(&table.system, table.key.is_empty(), table.changes) {
            if !current.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name)) {
                diff.added.push((name, ty.to_string()));
            }
        }
        for (name, ty) in &desired {
            match current.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                None => {
                    diff.added.push((name.clone(), ty.clone()));
                    diff.columns.push((name.clone(), ty.clone()));
                }
                Some((n, cur)) if cur == ty => diff.columns.push((n.clone(), cur.clone())),
                // The target already holds a wider type; values are converted on insert.
                Some((n, cur)) if can_widen(ty, cur) || (cur == "STRING" && can_convert(ty, cur)) => {
                    diff.columns.push((n.clone(), cur.clone()))
                }
                Some((n, cur)) if can_widen(cur, ty) => {
                    diff.widened.push((n.clone(), cur.clone(), ty.clone()));
                    diff.columns.push((n.clone(), ty.clone()));
                }
                Some((n, cur)) => {
                    // The fixes offered both work: a new column is created with the new type
                    // (the old one keeps its values), or the column is rebuilt from scratch.
                    return Err(ConnectorError::permanent(format!(
                        "{}: column `{n}` is {cur} in BigQuery but the source now maps it to {ty}, which the \
                         {cur} column cannot hold without changing values. Either write it to a new BigQuery \
                         column with table_options.{}.rename_columns = {{\"{n}\": \"{n}_{}\"}} (the {cur} \
                         column keeps its values), or drop the BigQuery column (or table) and run with --full",
                        table.name,
                        table.name,
                        ty.to_ascii_lowercase()
                    )));
                }
            }
        }
        let system = system_names(&table.system);
        for (name, ty) in &current {
            if !system.contains(&name.as_str()) && !diff.columns.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                diff.columns.push((name.clone(), ty.clone()));
            }
        }
        Ok(diff)
    }

    pub fn describe(&self) -> Vec<String> {
        if self.create {
            return vec![format!("create table with {} columns", self.columns.len())];
        }
        let mut out: Vec<String> = self.added.iter().map(|(n, t)| format!("add column {n} {t}")).collect();
        out.extend(self.widened.iter().map(|(n, f, t)| format!("widen {n} {f} → {t}")));
        out
    }
}

/// The REST resource a new target table is created with: DAY partitions (on `partition_by`,
/// default the sync timestamp), clustering (default the tenant column) and a NOT ENFORCED
/// primary key (tenant, key...).
pub(crate) fn table_resource(project: &str, dataset: &str, table: &TargetTable, fields: Vec<Json>) -> Result<Json> {
    let mut resource = json!({
        "tableReference": {"projectId": project, "datasetId": dataset, "tableId": crate::sink::table_id(table)},
        "schema": {"fields": fields},
        "description": format!("Synced by connector-run from source table `{}` of every tenant", table.name),
    });
    let system = &table.system;
    let partition = table.options.partition_by.clone().unwrap_or_else(|| system.synced_at.clone());
    if !partition.eq_ignore_ascii_case("none") {
        let field = table.options.target_name(&partition).to_string();
        let field = if field == partition && field != system.synced_at { column_name(&field) } else { field };
        let ok = field == system.synced_at
            || table.columns.iter().any(|c| {
                column_name(table.options.target_name(&c.name)) == field
                    && matches!(bigquery_type(&c.logical), "DATE" | "DATETIME" | "TIMESTAMP")
            });
        if !ok {
            return Err(ConnectorError::config(format!(
                "table_options.{}.partition_by: `{partition}` is not a DATE, DATETIME or TIMESTAMP column",
                table.name
            )));
        }
        resource["timePartitioning"] = json!({"type": "DAY", "field": field});
    }
    let cluster = table.options.cluster_by.clone().unwrap_or_else(|| vec![system.tenant.clone()]);
    if !cluster.is_empty() {
        let names: Vec<String> = cluster
            .iter()
            .map(|c| if *c == system.tenant { c.clone() } else { column_name(table.options.target_name(c)) })
            .collect();
        resource["clustering"] = json!({ "fields": names });
    }
    if !table.key.is_empty() {
        let mut pk = vec![system.tenant.clone()];
        pk.extend(table.key.iter().map(|k| column_name(table.options.target_name(k))));
        resource["tableConstraints"] = json!({"primaryKey": {"columns": pk}});
    }
    Ok(resource)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use connector_framework::LogicalType;
    use connector_framework::testkit::column;

    pub(crate) fn target(columns: &[(&str, LogicalType)], key: &[&str]) -> TargetTable {
        TargetTable {
            name: "orders".into(),
            columns: columns.iter().map(|(n, t)| column(n, t.clone())).collect(),
            key: key.iter().map(|k| k.to_string()).collect(),
            key_nullable: false,
            options: Default::default(),
            system: SystemColumns::default(),
            changes: None,
        }
    }

    fn existing(fields: &[(&str, &str)]) -> Json {
        let mut all = system_fields(&SystemColumns::default(), false, None);
        all.extend(fields.iter().map(|(n, t)| json!({"name": n, "type": t})));
        json!({"schema": {"fields": all}})
    }

    #[test]
    fn schema_diff_adds_widens_keeps_dropped_columns_and_rejects_incompatible_ones() {
        let t = target(
            &[("id", LogicalType::Int64), ("qty", LogicalType::UInt64), ("coupon", LogicalType::String)],
            &["id"],
        );
        let diff =
            SchemaDiff::new(&t, Some(&existing(&[("id", "INTEGER"), ("qty", "INTEGER"), ("note", "STRING")]))).unwrap();
        assert_eq!(diff.added, [("coupon".to_string(), "STRING".to_string())]);
        assert_eq!(diff.widened, [("qty".to_string(), "INT64".to_string(), "NUMERIC".to_string())]);
        let names: Vec<&str> = diff.columns.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["id", "qty", "coupon", "note"], "a dropped column is kept");
        assert_eq!(diff.describe(), ["add column coupon STRING", "widen qty INT64 → NUMERIC"]);

        let t = target(&[("id", LogicalType::Int64), ("created", LogicalType::Bytes)], &["id"]);
        let err = SchemaDiff::new(&t, Some(&existing(&[("id", "INTEGER"), ("created", "DATETIME")]))).err().unwrap();
        assert!(
            err.message().contains("`created` is DATETIME in BigQuery") && err.message().contains("BYTES"),
            "{err}"
        );

        let keyless = target(&[("path", LogicalType::String)], &[]);
        let diff = SchemaDiff::new(&keyless, Some(&existing(&[("path", "STRING")]))).unwrap();
        assert_eq!(diff.added, [("_row_hash".to_string(), "STRING".to_string())]);
    }

    #[test]
    fn an_exact_type_into_an_existing_float_column_fails_with_the_fix() {
        let t =
            target(&[("id", LogicalType::Int64), ("price", LogicalType::Decimal { precision: 19, scale: 4 })], &["id"]);
        let err = SchemaDiff::new(&t, Some(&existing(&[("id", "INTEGER"), ("price", "FLOAT")]))).err().unwrap();
        assert!(
            err.message().contains("`price` is FLOAT64 in BigQuery but the source now maps it to NUMERIC"),
            "{err}"
        );
        assert!(err.message().contains("rename_columns = {\"price\": \"price_numeric\"}"), "{err}");
        // The fix offered works: the values go to a new NUMERIC column, the FLOAT64 one is kept.
        let mut fixed = t.clone();
        fixed.options.rename_columns.insert("price".into(), "price_numeric".into());
        let diff = SchemaDiff::new(&fixed, Some(&existing(&[("id", "INTEGER"), ("price", "FLOAT")]))).unwrap();
        assert!(diff.added.contains(&("price_numeric".to_string(), "NUMERIC".to_string())), "{:?}", diff.added);
        assert!(diff.columns.contains(&("price".to_string(), "FLOAT64".to_string())), "{:?}", diff.columns);
        let t = target(&[("id", LogicalType::Int64), ("big", LogicalType::Int64)], &["id"]);
        assert!(SchemaDiff::new(&t, Some(&existing(&[("id", "INTEGER"), ("big", "FLOAT")]))).is_err());
    }

    #[test]
    fn overrides_are_checked_and_converted() {
        let mut t = target(&[("flag", LogicalType::Int64), ("blob", LogicalType::Bytes)], &[]);
        t.options.column_types.insert("flag".into(), "bool".into());
        assert_eq!(desired_columns(&t).unwrap()[0].ty, "BOOL");
        t.options.column_types.insert("blob".into(), "DATE".into());
        assert!(desired_columns(&t).unwrap_err().message().contains("a BYTES column cannot be stored as DATE"));
        t.options.column_types.clear();
        t.options.column_types.insert("nope".into(), "STRING".into());
        assert!(desired_columns(&t).unwrap_err().message().contains("`nope`"));
        let mut t = target(&[("n", LogicalType::Decimal { precision: 10, scale: 2 })], &[]);
        t.options.column_types.insert("n".into(), "FLOAT64".into());
        assert!(desired_columns(&t).is_err(), "a DECIMAL is never rounded into FLOAT64");
        assert_eq!(convert("`b`", "BYTES", "STRING"), "TO_BASE64(`b`)");
        assert_eq!(convert("`j`", "STRING", "JSON"), "PARSE_JSON(`j`)");
        assert_eq!(convert("`f`", "INT64", "BOOL"), "CAST(`f` AS BOOL)");
        assert_eq!(convert("`x`", "INT64", "INT64"), "`x`");
    }

    #[test]
    fn names_are_kept_and_clashes_name_both_columns_and_the_setting() {
        let t =
            target(&[("my col", LogicalType::String), ("a-b", LogicalType::String), ("Δ", LogicalType::Int64)], &[]);
        let names: Vec<String> = desired_columns(&t).unwrap().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["my col", "a-b", "Δ"]);
        let t = target(&[("a/b", LogicalType::String), ("a_b", LogicalType::String)], &[]);
        let e = desired_columns(&t).unwrap_err();
        assert!(e.message().contains("columns `a/b` and `a_b` would both be `a_b`"), "{e}");
        assert!(e.message().contains("table_options.orders.rename_columns"), "{e}");
        let mut t = target(&[("a/b", LogicalType::String), ("a_b", LogicalType::String)], &[]);
        t.options.rename_columns.insert("a/b".into(), "a_slash_b".into());
        assert_eq!(desired_columns(&t).unwrap()[0].name, "a_slash_b");
        let t = target(&[("tenant_id", LogicalType::String)], &[]);
        let e = desired_columns(&t).unwrap_err();
        assert!(e.message().contains("system_columns.tenant_id"), "{e}");
        let mut t = target(&[("tenant_id", LogicalType::String)], &[]);
        t.system.tenant = "_tenant".into();
        assert_eq!(desired_columns(&t).unwrap()[0].name, "tenant_id");
    }
}
