//! The one statement that applies every staged tenant of a table atomically: a MERGE on
//! `(tenant, key)` (tables without a key: `(tenant, row hash)`) that updates matched rows,
//! inserts new ones, and, for tenants synced in full, deletes their rows that are no longer in
//! the source. Other tenants' rows are never touched. One DML statement per table per run also
//! keeps BigQuery's per-table modification quota free. Plus the SQL quoting and id helpers.

use connector_framework::{CdcDeletes, ChangeTracking, Staged, SystemColumns, WriteMode};
use serde_json::{Value as Json, json};

use crate::digest::strings_param;
use crate::schema::convert;
use crate::types::staging_name;
use crate::writer::{
    CHANGE_SEQ_FIELD, CHANGED_AT_FIELD, HASH_FIELD, MODE_FIELD, OP_FIELD, SEQ_FIELD, SYNCED_FIELD, StageHandle,
    TENANT_FIELD, WRITER_FIELD,
};

/// The table that records, per target table and tenant, how far a change stream has applied
/// changes to a table without a key (their copies are counted, so each change must apply
/// exactly once: the record commits with the changes, in one transaction).
pub(crate) const PROGRESS_TABLE: &str = "_connector_cdc_progress";

/// Aliases of the change fields in a commit's source rows (never a target column's name).
const OP: &str = "_connector_op";
const BASE_HASH: &str = "_connector_hash";

/// What the source SELECT of a commit delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Rows of a table: full or incremental syncs, snapshots.
    Rows,
    /// A change batch of a table with a key.
    Changes,
    /// A change batch of a table without a key: the row hash without its occurrence number.
    KeylessChanges,
}

/// Backtick-quoted `project.dataset.table`.
pub(crate) fn qualified(project: &str, dataset: &str, table: &str) -> String {
    format!("`{}.{}.{}`", project, dataset, table.replace('`', ""))
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
    /// Written by a change stream (see [`connector_framework::TargetTable::changes`]).
    pub changes: Option<ChangeTracking>,
    /// The target table's own name (progress records of tables without a key).
    pub table_name: String,
    /// [`PROGRESS_TABLE`], qualified.
    pub progress: String,
}

impl CommitPlan {
    fn keyless(&self) -> bool {
        self.key.is_empty()
    }

    fn soft_deletes(&self) -> bool {
        self.changes.is_some_and(|c| c.deletes == CdcDeletes::Soft) && !self.keyless()
    }

    /// System fields, then the target's columns, then the row hash for keyless tables, then
    /// the change stream's columns.
    pub(crate) fn insert_columns(&self) -> Vec<String> {
        let s = &self.system;
        let mut cols = vec![s.tenant.clone(), s.synced_at.clone(), s.mode.clone()];
        cols.extend(self.columns.iter().map(|(n, _)| n.clone()));
        if self.keyless() {
            cols.push(s.row_hash.clone());
        }
        if self.changes.is_some() {
            cols.push(s.change_seq.clone());
        }
        if self.soft_deletes() {
            cols.push(s.deleted_at.clone());
        }
        cols
    }

    /// One SELECT per staging table and column set, shaped like the target (missing columns
    /// NULL, types cast, staging names mapped to target names).
    /// Its query parameters are added to `params`; it reads `@tenants` too, an array of the
    /// staged tenants (or more) that the caller passes.
    pub fn source_query(&self, staged: &[&Staged], params: &mut Vec<Json>) -> Option<String> {
        self.source_query_shaped(staged, Shape::Rows, params)
    }

    fn source_query_shaped(&self, staged: &[&Staged], shape: Shape, params: &mut Vec<Json>) -> Option<String> {
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
            .enumerate()
            .map(|(g, (s, handles))| {
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
                if shape == Shape::KeylessChanges {
                    exprs.push(format!("{HASH_FIELD} AS {BASE_HASH}"));
                } else if self.keyless() {
                    // Identical rows of a tenant share a hash; numbering them keeps each one, and
                    // the same rows read again get the same numbers.
                    exprs.push(format!(
                        "CONCAT({HASH_FIELD}, ':', CAST(ROW_NUMBER() OVER (PARTITION BY {TENANT_FIELD}, {HASH_FIELD}) AS STRING)) AS {}",
                        quote_column(&sys.row_hash)
                    ));
                }
                if self.changes.is_some() {
                    exprs.push(format!("{CHANGE_SEQ_FIELD} AS {}", quote_column(&sys.change_seq)));
                }
                if self.soft_deletes() {
                    let deleted = if shape == Shape::Rows {
                        "CAST(NULL AS TIMESTAMP)".to_string()
                    } else {
                        format!("IF({OP_FIELD} = 'D', {CHANGED_AT_FIELD}, NULL)")
                    };
                    exprs.push(format!("{deleted} AS {}", quote_column(&sys.deleted_at)));
                }
                if shape != Shape::Rows {
                    exprs.push(format!("{OP_FIELD} AS {OP}"));
                }
                // Each tenant's rows from the writer that finished (and the durable part of any
                // writer it resumed); writer numbers are unique. A chunk loaded twice (a job lost
                // and redone) shows as a repeated (_writer, _seq): keep one. The writers are a
                // parameter: as literals, a fleet's thousands of them made the statement's text
                // long (BigQuery caps it at 1 MB) and slow to parse. The statement's `@tenants`
                // (every tenant it applies) guards the writers.
                let writers = format!("staged_writers_{g}");
                let of_handles: Vec<&StageHandle> = handles.iter().map(|(_, h)| h).collect();
                params.push(StageHandle::writers_param(&writers, &of_handles));
                format!(
                    "SELECT {} FROM (SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY {WRITER_FIELD}, {SEQ_FIELD}) \
                     AS _copy FROM {} WHERE {TENANT_FIELD} IN UNNEST(@tenants) AND ({})) WHERE _copy = 1)",
                    exprs.join(", "),
                    qualified(&self.project, &self.staging_dataset, &handles[0].1.table),
                    StageHandle::condition(&of_handles, &writers),
                )
            })
            .collect();
        (!selects.is_empty()).then(|| selects.join("\nUNION ALL\n"))
    }

    fn tenants_param(name: &str, staged: &[&Staged]) -> Json {
        strings_param(name, staged.iter().map(|s| s.tenant.as_str()))
    }

    /// The statement and its parameters; an empty statement when there is nothing to do.
    pub fn statement(&self, staged: &[Staged]) -> (String, Json) {
        if staged.iter().any(|s| s.write == WriteMode::ApplyChanges) {
            return if self.keyless() { self.apply_keyless(staged) } else { self.apply_keyed(staged) };
        }
        let (sql, params) = self.rows_statement(staged);
        // A snapshot of a table without a key for a change stream starts its tenants' change
        // counting over (the stream applies the changes after the snapshot).
        let full: Vec<&Staged> = staged.iter().filter(|s| s.write == WriteMode::ReplaceTenant).collect();
        if self.changes.is_some() && self.keyless() && !full.is_empty() && !sql.is_empty() {
            let reset = format!(
                "DELETE FROM {} WHERE target_table = @target_table AND tenant IN UNNEST(@full_tenants)",
                self.progress
            );
            let mut params = params.as_array().cloned().unwrap_or_default();
            params.push(Self::string_param("target_table", &self.table_name));
            return (format!("{sql};\n{reset};"), Json::Array(params));
        }
        (sql, params)
    }

    fn string_param(name: &str, value: &str) -> Json {
        json!({"name": name, "parameterType": {"type": "STRING"}, "parameterValue": {"value": value}})
    }

    /// `T.k = S.k` for every key column (NULL-safe for a configured key that allows NULL).
    fn key_match(&self) -> Vec<String> {
        self.key
            .iter()
            .map(|k| {
                let k = quote_column(k);
                if self.key_nullable {
                    format!("(T.{k} = S.{k} OR (T.{k} IS NULL AND S.{k} IS NULL))")
                } else {
                    format!("T.{k} = S.{k}")
                }
            })
            .collect()
    }

    /// A change batch of a table with a key: per key the newest change, applied only over a
    /// row an older change or snapshot wrote (so a batch applied again changes nothing).
    fn apply_keyed(&self, staged: &[Staged]) -> (String, Json) {
        let all: Vec<&Staged> = staged.iter().collect();
        let mut params = vec![Self::tenants_param("tenants", &all)];
        let Some(source) = self.source_query_shaped(&all, Shape::Changes, &mut params) else {
            return (String::new(), Json::Array(params));
        };
        let sys = &self.system;
        let tenant = quote_column(&sys.tenant);
        let seq = quote_column(&sys.change_seq);
        let partition: Vec<String> =
            std::iter::once(tenant.clone()).chain(self.key.iter().map(|k| quote_column(k))).collect();
        let cols = self.insert_columns();
        let col_list = cols.iter().map(|c| quote_column(c)).collect::<Vec<_>>().join(", ");
        let values = cols.iter().map(|c| format!("S.{}", quote_column(c))).collect::<Vec<_>>().join(", ");
        let set: Vec<String> = cols
            .iter()
            .filter(|c| **c != sys.tenant && !self.key.contains(c))
            .map(|c| format!("{q} = S.{q}", q = quote_column(c)))
            .collect();
        let mut on = vec![format!("T.{tenant} IN UNNEST(@tenants)"), format!("T.{tenant} = S.{tenant}")];
        on.extend(self.key_match());
        let newer = format!("(T.{seq} IS NULL OR T.{seq} < S.{seq})");
        let mut sql = format!(
            "MERGE {} T\nUSING (\nSELECT * FROM (\n{source}\n) WHERE TRUE\nQUALIFY ROW_NUMBER() OVER (PARTITION BY {} ORDER BY {seq} DESC) = 1\n) S\nON {}\n",
            self.target,
            partition.join(", "),
            on.join(" AND ")
        );
        if self.soft_deletes() {
            // A delete keeps the row (its last values) with _deleted_at set; an upsert clears it.
            sql.push_str(&format!("WHEN MATCHED AND {newer} THEN UPDATE SET {}\n", set.join(", ")));
            sql.push_str(&format!("WHEN NOT MATCHED THEN INSERT ({col_list}) VALUES ({values})"));
        } else {
            sql.push_str(&format!("WHEN MATCHED AND S.{OP} = 'D' AND {newer} THEN DELETE\n"));
            sql.push_str(&format!("WHEN MATCHED AND {newer} THEN UPDATE SET {}\n", set.join(", ")));
            sql.push_str(&format!("WHEN NOT MATCHED AND S.{OP} = 'U' THEN INSERT ({col_list}) VALUES ({values})"));
        }
        (sql, Json::Array(params))
    }

    /// A change batch of a table without a key: each change adds or removes one copy of its
    /// row. Per tenant and row hash the batch's net count is applied to the copies there
    /// (numbered 1..n in the row hash column), and the tenant's progress mark moves on, in one
    /// transaction: a batch applied again finds its changes at or below the mark.
    fn apply_keyless(&self, staged: &[Staged]) -> (String, Json) {
        let all: Vec<&Staged> = staged.iter().collect();
        let mut params =
            vec![Self::tenants_param("tenants", &all), Self::string_param("target_table", &self.table_name)];
        let Some(source) = self.source_query_shaped(&all, Shape::KeylessChanges, &mut params) else {
            return (String::new(), Json::Array(params));
        };
        let sys = &self.system;
        let tenant = quote_column(&sys.tenant);
        let seq = quote_column(&sys.change_seq);
        let hash = quote_column(&sys.row_hash);
        let progress = &self.progress;
        let target = &self.target;
        // The changes not applied yet: after the tenant's progress mark.
        let pending = format!(
            "(SELECT S.* FROM (\n{source}\n) S LEFT JOIN {progress} P ON P.target_table = @target_table AND P.tenant = S.{tenant} \
             WHERE P.applied_seq IS NULL OR S.{seq} > P.applied_seq)"
        );
        let base = format!("SPLIT(T.{hash}, ':')[OFFSET(0)]");
        let number = format!("CAST(SPLIT(T.{hash}, ':')[OFFSET(1)] AS INT64)");
        // Per tenant and hash: the net change and the copies the target has.
        let delta = format!(
            "(SELECT D.tenant, D.base, D.net, IFNULL(C.m, 0) AS m FROM (\
             SELECT {tenant} AS tenant, {BASE_HASH} AS base, SUM(IF({OP} = 'U', 1, -1)) AS net FROM {pending} GROUP BY 1, 2) D \
             LEFT JOIN (SELECT T.{tenant} AS tenant, {base} AS base, COUNT(*) AS m FROM {target} T \
             WHERE T.{tenant} IN UNNEST(@tenants) GROUP BY 1, 2) C ON C.tenant = D.tenant AND C.base = D.base)"
        );
        let cols = self.insert_columns();
        let col_list = cols.iter().map(|c| quote_column(c)).collect::<Vec<_>>().join(", ");
        let values: Vec<String> = cols
            .iter()
            .map(|c| {
                if *c == sys.row_hash {
                    "CONCAT(X.base, ':', CAST(X.m + R._connector_copy AS STRING))".to_string()
                } else {
                    format!("R.{}", quote_column(c))
                }
            })
            .collect();
        let sql = format!(
            "BEGIN TRANSACTION;\n\
             DELETE FROM {target} T WHERE T.{tenant} IN UNNEST(@tenants) AND EXISTS (SELECT 1 FROM {delta} X \
             WHERE X.tenant = T.{tenant} AND X.base = {base} AND X.net < 0 AND {number} > X.m + X.net);\n\
             INSERT INTO {target} ({col_list})\n\
             SELECT {} FROM {delta} X JOIN (SELECT *, ROW_NUMBER() OVER (PARTITION BY {tenant}, {BASE_HASH} ORDER BY {seq}) \
             AS _connector_copy FROM {pending} WHERE {OP} = 'U') R ON R.{tenant} = X.tenant AND R.{BASE_HASH} = X.base \
             WHERE X.net > 0 AND R._connector_copy <= X.net;\n\
             UPDATE {progress} P SET applied_seq = M.applied_seq, updated_at = CURRENT_TIMESTAMP() FROM \
             (SELECT {tenant} AS tenant, MAX({seq}) AS applied_seq FROM (\n{source}\n) GROUP BY 1) M \
             WHERE P.target_table = @target_table AND P.tenant = M.tenant AND M.applied_seq > P.applied_seq;\n\
             INSERT INTO {progress} (target_table, tenant, applied_seq, updated_at) \
             SELECT @target_table, {tenant}, MAX({seq}), CURRENT_TIMESTAMP() FROM (\n{source}\n) S WHERE NOT EXISTS \
             (SELECT 1 FROM {progress} P WHERE P.target_table = @target_table AND P.tenant = S.{tenant}) GROUP BY 2;\n\
             COMMIT TRANSACTION;",
            values.join(", ")
        );
        (sql, Json::Array(params))
    }

    /// Rows of full and incremental syncs (and snapshots): one MERGE.
    fn rows_statement(&self, staged: &[Staged]) -> (String, Json) {
        let all: Vec<&Staged> = staged.iter().collect();
        let full: Vec<&Staged> = staged.iter().filter(|s| s.write == WriteMode::ReplaceTenant).collect();
        let target = &self.target;
        let tenant = quote_column(&self.system.tenant);
        let mut params = vec![Self::tenants_param("tenants", &all)];
        if !full.is_empty() {
            params.push(Self::tenants_param("full_tenants", &full));
        }
        let Some(source) = self.source_query(&all, &mut params) else {
            // No rows staged at all: only full-sync tenants whose source table is empty.
            let sql = format!("DELETE FROM {target} WHERE {tenant} IN UNNEST(@full_tenants)");
            return if full.is_empty() { (String::new(), Json::Array(params)) } else { (sql, Json::Array(params)) };
        };
        let cols = self.insert_columns();
        let col_list = cols.iter().map(|c| quote_column(c)).collect::<Vec<_>>().join(", ");
        let values = cols.iter().map(|c| format!("S.{}", quote_column(c))).collect::<Vec<_>>().join(", ");
        // The tenant filter lets BigQuery prune by the tenant clustering.
        let mut on = vec![format!("T.{tenant} IN UNNEST(@tenants)"), format!("T.{tenant} = S.{tenant}")];
        if self.soft_deletes() && !full.is_empty() {
            // A snapshot with soft deletes: rows it has are updated (and undeleted), rows it
            // lacks are marked deleted, never removed.
            on.extend(self.key_match());
            let set: Vec<String> = cols
                .iter()
                .filter(|c| **c != self.system.tenant && !self.key.contains(c))
                .map(|c| format!("{q} = S.{q}", q = quote_column(c)))
                .collect();
            let deleted = quote_column(&self.system.deleted_at);
            let sql = format!(
                "MERGE {target} T\nUSING (\n{source}\n) S\nON {}\nWHEN MATCHED THEN UPDATE SET {}\n\
                 WHEN NOT MATCHED THEN INSERT ({col_list}) VALUES ({values})\n\
                 WHEN NOT MATCHED BY SOURCE AND T.{tenant} IN UNNEST(@full_tenants) AND T.{deleted} IS NULL THEN \
                 UPDATE SET {deleted} = CURRENT_TIMESTAMP()",
                on.join(" AND "),
                set.join(", ")
            );
            return (sql, Json::Array(params));
        }
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
            changes: None,
            table_name: "views".into(),
            progress: "`p.d._connector_cdc_progress`".into(),
        };
        let all = [
            staged("shop1", "_stage_a/3", &["path"]),
            staged("shop'2", "_stage_a/7/5:1000", &["path"]),
            staged("shop3", "_stage_a/9", &["path", "ref"]),
        ];
        let mut params = Vec::new();
        let sql = plan.source_query(&all.iter().collect::<Vec<_>>(), &mut params).unwrap();
        let selects: Vec<&str> = sql.split("UNION ALL").collect();
        assert_eq!(selects.len(), 2, "one SELECT per staging table and column set: {sql}");
        assert!(
            selects[0].contains(
                "_tenant IN UNNEST(@tenants) AND (_writer IN UNNEST(@staged_writers_0) OR (_writer = 5 AND _seq < 1000))"
            ),
            "{sql}"
        );
        assert!(selects[1].contains("_tenant IN UNNEST(@tenants) AND (_writer IN UNNEST(@staged_writers_1))"), "{sql}");
        // Tenants and writers are parameters, never text of the statement.
        let values = |name: &str| -> Vec<String> {
            let p = params.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no {name}: {params:?}"));
            p["parameterValue"]["arrayValues"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["value"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(values("staged_writers_0"), ["3", "7"]);
        assert_eq!(values("staged_writers_1"), ["9"]);
        assert_eq!(params.len(), 2, "{params:?}");
        let writers = params.iter().find(|p| p["name"] == "staged_writers_0").unwrap();
        assert_eq!(writers["parameterType"]["arrayType"]["type"], "INT64");
        assert!(!sql.contains("shop"), "{sql}");
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
            changes: None,
            table_name: "t".into(),
            progress: "`p.d._connector_cdc_progress`".into(),
        };
        let staged = Staged {
            tenant: "shop1".into(),
            mode: SyncMode::Full,
            write: WriteMode::ReplaceTenant,
            rows: 1,
            bytes: 1,
            columns: vec!["tenant_id".into(), "id".into()].into(),
            types: vec!["STRING".into(), "INT64".into()].into(),
            handle: Some("_stage_x/1".into()),
        };
        let (sql, _) = plan.statement(std::slice::from_ref(&staged));
        assert!(sql.contains("T.`_tenant_id` = S.`_tenant_id`") && sql.contains("AS `tenant_id`"), "{sql}");
        assert!(
            sql.contains("WHEN NOT MATCHED BY SOURCE AND T.`_tenant_id` IN UNNEST(@full_tenants) THEN DELETE"),
            "{sql}"
        );
    }

    fn change_plan(key: &[&str], deletes: CdcDeletes) -> CommitPlan {
        CommitPlan {
            target: "`p.d.orders`".into(),
            project: "p".into(),
            staging_dataset: "d".into(),
            columns: vec![("id".into(), "INT64".into()), ("v".into(), "STRING".into())],
            key: key.iter().map(|k| k.to_string()).collect(),
            key_nullable: false,
            system: SystemColumns::default(),
            changes: Some(ChangeTracking { deletes }),
            table_name: "orders".into(),
            progress: "`p.d._connector_cdc_progress`".into(),
        }
    }

    fn change_batch(tenant: &str) -> Staged {
        Staged {
            tenant: tenant.into(),
            mode: SyncMode::Cdc,
            write: WriteMode::ApplyChanges,
            rows: 3,
            bytes: 1,
            columns: vec!["id".into(), "v".into()].into(),
            types: vec!["INT64".into(), "STRING".into()].into(),
            handle: Some("_stage_c/4".into()),
        }
    }

    #[test]
    fn a_change_batch_applies_the_newest_change_per_key_only_over_older_rows() {
        let (sql, _) = change_plan(&["id"], CdcDeletes::Delete).statement(&[change_batch("shop1")]);
        assert!(
            sql.contains("QUALIFY ROW_NUMBER() OVER (PARTITION BY `tenant_id`, `id` ORDER BY `_change_seq` DESC) = 1"),
            "{sql}"
        );
        let newer = "(T.`_change_seq` IS NULL OR T.`_change_seq` < S.`_change_seq`)";
        assert!(sql.contains(&format!("WHEN MATCHED AND S._connector_op = 'D' AND {newer} THEN DELETE")), "{sql}");
        assert!(sql.contains(&format!("WHEN MATCHED AND {newer} THEN UPDATE SET")), "{sql}");
        assert!(sql.contains("WHEN NOT MATCHED AND S._connector_op = 'U' THEN INSERT"), "{sql}");
        assert!(!sql.contains("_deleted_at"), "{sql}");
        let (soft, _) = change_plan(&["id"], CdcDeletes::Soft).statement(&[change_batch("shop1")]);
        assert!(soft.contains("IF(_op = 'D', _at, NULL) AS `_deleted_at`") && !soft.contains("THEN DELETE"), "{soft}");
    }

    #[test]
    fn a_keyless_change_batch_counts_copies_and_moves_the_progress_mark_in_one_transaction() {
        let (sql, params) = change_plan(&[], CdcDeletes::Soft).statement(&[change_batch("shop1")]);
        assert!(sql.starts_with("BEGIN TRANSACTION;") && sql.trim_end().ends_with("COMMIT TRANSACTION;"), "{sql}");
        assert!(sql.contains("S.`_change_seq` > P.applied_seq"), "only changes after the mark: {sql}");
        assert!(sql.contains("UPDATE `p.d._connector_cdc_progress` P SET applied_seq"), "{sql}");
        assert!(!sql.contains("_deleted_at"), "keyless tables delete: {sql}");
        assert!(params.to_string().contains("\"orders\""), "{params}");
    }
}
