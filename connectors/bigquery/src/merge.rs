//! The one statement that applies every staged tenant of a table atomically: a MERGE on
//! `(tenant, key)` (tables without a key: `(tenant, row hash)`) that updates matched rows,
//! inserts new ones, and, for tenants synced in full, deletes their rows that are no longer in
//! the source. Other tenants' rows are never touched. One DML statement per table per run also
//! keeps BigQuery's per-table modification quota free. Plus the SQL quoting and id helpers.

use connector_framework::{Staged, SystemColumns, WriteMode};
use serde_json::{Value as Json, json};

use crate::schema::convert;
use crate::types::staging_name;
use crate::writer::{HASH_FIELD, MODE_FIELD, SEQ_FIELD, SYNCED_FIELD, StageHandle, TENANT_FIELD, WRITER_FIELD};

/// Backtick-quoted `project.dataset.table`.
pub(crate) fn qualified(project: &str, dataset: &str, table: &str) -> String {
    format!("`{}.{}.{}`", project, dataset, table.replace('`', ""))
}

/// A GoogleSQL string literal.
pub(crate) fn string_literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A backtick-quoted column name (flexible names included).
pub(crate) fn quote_column(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// A BigQuery table or job id for these parts: a readable prefix (letters, digits,
/// underscores) and a hash of the exact parts, so ids never collide however names sanitize.
pub(crate) fn unique_id(kind: &str, parts: &[&str]) -> String {
    let readable: String = parts
        .iter()
        .map(|p| p.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect::<String>())
        .collect::<Vec<_>>()
        .join("_");
    let readable: String = readable.chars().take(120).collect();
    let hash = xxhash_rust::xxh3::xxh3_128(parts.join("\u{1f}").as_bytes());
    format!("{kind}_{readable}_{hash:032x}")
}

/// A MERGE of staged tenants into one target table.
pub(crate) struct CommitPlan {
    pub target: String,
    pub project: String,
    pub staging_dataset: String,
    /// Target columns (BigQuery name, type), without the system fields.
    pub columns: Vec<(String, String)>,
    /// Key columns' BigQuery names.
    pub key: Vec<String>,
    /// Some key column may hold NULL (a configured key): match NULLs to each other.
    pub key_nullable: bool,
    pub system: SystemColumns,
}

impl CommitPlan {
    fn keyless(&self) -> bool {
        self.key.is_empty()
    }

    /// System fields, then the target's columns, then the row hash for keyless tables.
    fn insert_columns(&self) -> Vec<String> {
        let s = &self.system;
        let mut cols = vec![s.tenant.clone(), s.synced_at.clone(), s.mode.clone()];
        cols.extend(self.columns.iter().map(|(n, _)| n.clone()));
        if self.keyless() {
            cols.push(s.row_hash.clone());
        }
        cols
    }

    /// One SELECT per staging table and column set, shaped like the target (missing columns
    /// NULL, types cast, staging names mapped to target names).
    pub fn source_query(&self, staged: &[&Staged]) -> Option<String> {
        // Tenants staged in one table with the same columns are read by one SELECT, so the
        // staging table is scanned (and billed) once, not once per tenant.
        // (the group's first tenant, the handle of each of its tenants)
        let mut groups: Vec<(&Staged, Vec<(&str, StageHandle)>)> = Vec::new();
        for s in staged.iter().filter(|s| s.rows > 0) {
            // The sink wrote the handle; a tenant whose handle is unreadable was rejected
            // before the plan (CommitOutcome::rejected), never silently left out here.
            let Some(handle) = s.handle.as_deref().and_then(StageHandle::parse) else { continue };
            match groups.iter_mut().find(|(first, handles)| {
                handles[0].1.table == handle.table && first.columns == s.columns && first.types == s.types
            }) {
                Some((_, handles)) => handles.push((&s.tenant, handle)),
                None => groups.push((s, vec![(&s.tenant, handle)])),
            }
        }
        let sys = &self.system;
        let selects: Vec<String> = groups
            .iter()
            .map(|(s, handles)| {
                let mut exprs = vec![
                    format!("{TENANT_FIELD} AS {}", quote_column(&sys.tenant)),
                    format!("{SYNCED_FIELD} AS {}", quote_column(&sys.synced_at)),
                    format!("{MODE_FIELD} AS {}", quote_column(&sys.mode)),
                ];
                for (name, ty) in &self.columns {
                    let expr = match s.columns.iter().position(|c| c.eq_ignore_ascii_case(name)) {
                        Some(i) => {
                            let from = s.types.get(i).map_or(ty.as_str(), String::as_str);
                            convert(&staging_name(&s.columns[i]), from, ty)
                        }
                        None => format!("CAST(NULL AS {ty})"),
                    };
                    exprs.push(format!("{expr} AS {}", quote_column(name)));
                }
                if self.keyless() {
                    // Identical rows of a tenant share a hash; numbering them keeps each one, and
                    // the same rows read again get the same numbers.
                    exprs.push(format!(
                        "CONCAT({HASH_FIELD}, ':', CAST(ROW_NUMBER() OVER (PARTITION BY {TENANT_FIELD}, {HASH_FIELD}) AS STRING)) AS {}",
                        quote_column(&sys.row_hash)
                    ));
                }
                // Each tenant's rows from the writer that finished (and the durable part of any
                // writer it resumed); writer numbers are unique. A chunk loaded twice (a job lost
                // and redone) shows as a repeated (_writer, _seq): keep one.
                let tenants: Vec<String> = handles.iter().map(|(t, _)| string_literal(t)).collect();
                let rows: Vec<String> = handles.iter().map(|(_, h)| h.condition()).collect();
                format!(
                    "SELECT {} FROM (SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY {WRITER_FIELD}, {SEQ_FIELD}) \
                     AS _copy FROM {} WHERE {TENANT_FIELD} IN ({}) AND ({})) WHERE _copy = 1)",
                    exprs.join(", "),
                    qualified(&self.project, &self.staging_dataset, &handles[0].1.table),
                    tenants.join(", "),
                    rows.join(" OR "),
                )
            })
            .collect();
        (!selects.is_empty()).then(|| selects.join("\nUNION ALL\n"))
    }

    fn tenants_param(name: &str, staged: &[&Staged]) -> Json {
        json!({
            "name": name,
            "parameterType": {"type": "ARRAY", "arrayType": {"type": "STRING"}},
            "parameterValue": {"arrayValues": staged.iter().map(|s| json!({"value": s.tenant})).collect::<Vec<_>>()},
        })
    }

    /// The statement and its parameters; an empty statement when there is nothing to do.
    pub fn statement(&self, staged: &[Staged]) -> (String, Json) {
        let all: Vec<&Staged> = staged.iter().collect();
        let full: Vec<&Staged> = staged.iter().filter(|s| s.write == WriteMode::ReplaceTenant).collect();
        let target = &self.target;
        let tenant = quote_column(&self.system.tenant);
        let mut params = vec![Self::tenants_param("tenants", &all)];
        if !full.is_empty() {
            params.push(Self::tenants_param("full_tenants", &full));
        }
        let Some(source) = self.source_query(&all) else {
            // No rows staged at all: only full-sync tenants whose source table is empty.
            let sql = format!("DELETE FROM {target} WHERE {tenant} IN UNNEST(@full_tenants)");
            return if full.is_empty() { (String::new(), Json::Array(params)) } else { (sql, Json::Array(params)) };
        };
        let cols = self.insert_columns();
        let col_list = cols.iter().map(|c| quote_column(c)).collect::<Vec<_>>().join(", ");
        let values = cols.iter().map(|c| format!("S.{}", quote_column(c))).collect::<Vec<_>>().join(", ");
        // The tenant filter lets BigQuery prune by the tenant clustering.
        let mut on = vec![format!("T.{tenant} IN UNNEST(@tenants)"), format!("T.{tenant} = S.{tenant}")];
        if !full.is_empty() {
            // A full sync replaces: its tenants' rows never match, so all of them are deleted
            // and the staged ones inserted, in this one statement (any strays go too).
            on.push(format!("T.{tenant} NOT IN UNNEST(@full_tenants)"));
        }
        let match_columns: Vec<String> =
            if self.keyless() { vec![self.system.row_hash.clone()] } else { self.key.clone() };
        let null_safe = self.key_nullable && !self.keyless();
        on.extend(match_columns.iter().map(|k| {
            let k = quote_column(k);
            if null_safe {
                format!("(T.{k} = S.{k} OR (T.{k} IS NULL AND S.{k} IS NULL))")
            } else {
                format!("T.{k} = S.{k}")
            }
        }));
        let mut sql = format!("MERGE {target} T\nUSING (\n{source}\n) S\nON {}\n", on.join(" AND "));
        let set: Vec<String> = cols
            .iter()
            .filter(|c| **c != self.system.tenant && !match_columns.contains(c))
            .map(|c| format!("{q} = S.{q}", q = quote_column(c)))
            .collect();
        if !self.keyless() {
            sql.push_str(&format!("WHEN MATCHED THEN UPDATE SET {}\n", set.join(", ")));
        }
        sql.push_str(&format!("WHEN NOT MATCHED THEN INSERT ({col_list}) VALUES ({values})"));
        if !full.is_empty() {
            sql.push_str(&format!("\nWHEN NOT MATCHED BY SOURCE AND T.{tenant} IN UNNEST(@full_tenants) THEN DELETE"));
        }
        (sql, Json::Array(params))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use connector_framework::SyncMode;

    #[test]
    fn tenants_sharing_a_staging_table_are_read_by_one_select_from_their_own_writers() {
        let staged = |tenant: &str, handle: &str, columns: &[&str]| Staged {
            tenant: tenant.into(),
            mode: SyncMode::Incremental,
            write: WriteMode::AppendDedup,
            rows: 1,
            bytes: 1,
            columns: columns.iter().map(|c| c.to_string()).collect(),
            types: columns.iter().map(|_| "STRING".to_string()).collect(),
            handle: Some(handle.into()),
        };
        let plan = CommitPlan {
            target: "p.d.views".into(),
            project: "p".into(),
            staging_dataset: "d".into(),
            columns: vec![("path".into(), "STRING".into()), ("ref".into(), "STRING".into())],
            key: Vec::new(),
            key_nullable: false,
            system: SystemColumns::default(),
        };
        let all = [
            staged("shop1", "_stage_a/3", &["path"]),
            staged("shop'2", "_stage_a/7/5:1000", &["path"]),
            staged("shop3", "_stage_a/9", &["path", "ref"]),
        ];
        let sql = plan.source_query(&all.iter().collect::<Vec<_>>()).unwrap();
        let selects: Vec<&str> = sql.split("UNION ALL").collect();
        assert_eq!(selects.len(), 2, "one SELECT per staging table and column set: {sql}");
        assert!(
            selects[0].contains(
                "_tenant IN ('shop1', 'shop\\'2') AND (_writer = 3 OR _writer = 7 OR (_writer = 5 AND _seq < 1000))"
            ),
            "{sql}"
        );
        assert!(selects[1].contains("_tenant IN ('shop3') AND (_writer = 9)"), "{sql}");
        // Duplicates of a row are numbered per tenant, as when each tenant was read alone.
        assert!(sql.contains("PARTITION BY _tenant, _hash"), "{sql}");
        assert!(sql.contains("PARTITION BY _writer, _seq"), "{sql}");
        assert!(sql.contains(&format!("{} AS `path`", staging_name("path"))), "{sql}");
    }

    #[test]
    fn system_columns_follow_the_setting() {
        let plan = CommitPlan {
            target: "p.d.t".into(),
            project: "p".into(),
            staging_dataset: "d".into(),
            columns: vec![("tenant_id".into(), "STRING".into()), ("id".into(), "INT64".into())],
            key: vec!["id".into()],
            key_nullable: false,
            system: SystemColumns { tenant: "_tenant_id".into(), ..Default::default() },
        };
        let staged = Staged {
            tenant: "shop1".into(),
            mode: SyncMode::Full,
            write: WriteMode::ReplaceTenant,
            rows: 1,
            bytes: 1,
            columns: vec!["tenant_id".into(), "id".into()],
            types: vec!["STRING".into(), "INT64".into()],
            handle: Some("_stage_x/1".into()),
        };
        let (sql, _) = plan.statement(std::slice::from_ref(&staged));
        assert!(sql.contains("T.`_tenant_id` = S.`_tenant_id`") && sql.contains("AS `tenant_id`"), "{sql}");
        assert!(
            sql.contains("WHEN NOT MATCHED BY SOURCE AND T.`_tenant_id` IN UNNEST(@full_tenants) THEN DELETE"),
            "{sql}"
        );
    }
}
