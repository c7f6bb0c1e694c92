//! Discovery from `pg_catalog`: the server's databases or a database's schemas (the tenants),
//! the tables of a schema, and one table name's columns and keys in many schemas at once.

use std::collections::HashMap;

use connector_framework::{Column, ConnectorError, KeySource, Result, TableRef, TableSchema};

use crate::config::validate_identifier;
use crate::error::wrap;
use crate::pool::Conn;
use crate::types::{ColumnInfo, map_column};

/// The databases of the server a pattern may match: not templates, not the maintenance
/// database `postgres`, and only those this role may connect to.
pub(crate) async fn list_databases(conn: &Conn) -> Result<Vec<String>> {
    let rows = conn
        .query(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate AND datname <> 'postgres' \
             AND has_database_privilege(datname, 'CONNECT') ORDER BY datname",
            &[],
        )
        .await
        .map_err(|e| wrap(e, "listing the server's databases"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The schemas of the connected database a pattern may match: not PostgreSQL's own.
pub(crate) async fn list_schemas(conn: &Conn) -> Result<Vec<String>> {
    let rows = conn
        .query(
            "SELECT nspname::text FROM pg_namespace WHERE nspname <> 'information_schema' AND nspname NOT LIKE 'pg\\_%' \
             AND has_schema_privilege(oid, 'USAGE') ORDER BY nspname",
            &[],
        )
        .await
        .map_err(|e| wrap(e, format!("database `{}`: listing schemas", conn.database())))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The tables of one schema: ordinary and partitioned ones (a partition is read through its
/// parent, never on its own).
pub(crate) async fn list_tables(conn: &Conn, schema: &str, tenant: &str) -> Result<Vec<String>> {
    let rows = conn
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY c.relname",
            &[&schema],
        )
        .await
        .map_err(|e| wrap(e, format!("{tenant}: listing tables")))?;
    if rows.is_empty() {
        let exists = conn
            .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
            .await
            .map_err(|e| wrap(e, format!("{tenant}: listing tables")))?;
        if exists.is_none() {
            return Err(ConnectorError::permanent(format!(
                "schema `{schema}` does not exist in database `{}` or the role cannot see it; check the tenant list \
                 and grants",
                conn.database()
            )));
        }
    }
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Columns with their types (domains resolved to their base type, the type modifier of the
/// column or else of the innermost domain that has one), one row per column, by schema.
const COLUMNS_SQL: &str = "
WITH RECURSIVE cols AS (
    SELECT n.nspname::text AS schema, a.attnum, a.attname::text AS name, a.attnotnull, a.atttypid, a.atttypmod,
           c.reltuples::float8 AS reltuples
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    WHERE c.relname = $1 AND n.nspname = ANY($2) AND c.relkind IN ('r', 'p')
), chain(schema, attnum, typid, typmod) AS (
    SELECT schema, attnum, atttypid, atttypmod FROM cols
    UNION ALL
    SELECT ch.schema, ch.attnum, t.typbasetype, CASE WHEN ch.typmod <> -1 THEN ch.typmod ELSE t.typtypmod END
    FROM chain ch JOIN pg_type t ON t.oid = ch.typid WHERE t.typtype = 'd'
)
SELECT c.schema, c.name, format_type(c.atttypid, c.atttypmod), bt.typname::text, bt.typtype::text,
       bt.typcategory::text, ch.typmod, c.attnotnull, c.reltuples
FROM cols c
JOIN chain ch ON ch.schema = c.schema AND ch.attnum = c.attnum
JOIN pg_type bt ON bt.oid = ch.typid AND bt.typtype <> 'd'
ORDER BY c.schema, c.attnum";

/// Primary keys and unique indexes without expressions or predicates, with their columns in
/// index order and whether all are NOT NULL.
const KEYS_SQL: &str = "
SELECT n.nspname::text, i.indisprimary, ic.relname::text,
       array_agg(a.attname::text ORDER BY k.ord), bool_and(a.attnotnull)
FROM pg_index i
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
WHERE c.relname = $1 AND n.nspname = ANY($2) AND (i.indisprimary OR i.indisunique)
  AND i.indexprs IS NULL AND i.indpred IS NULL AND i.indisvalid
  AND k.ord <= i.indnkeyatts
GROUP BY n.nspname, i.indisprimary, ic.relname";

/// Table `name` in each of `schemas` of the connected database, in that order. `tenants`
/// names them as the run does (the schema in the schema layout, the database otherwise).
pub(crate) async fn discover(
    conn: &Conn,
    name: &str,
    schemas: &[String],
    tenants: &[String],
) -> Vec<Result<TableSchema>> {
    let label = match tenants {
        [one] => TableRef::new(one, name).to_string(),
        _ => format!("`{name}` in {} schemas", schemas.len()),
    };
    let found = match validate_identifier("table", name) {
        Ok(()) => read(conn, name, schemas, &label).await,
        Err(e) => Err(e),
    };
    match found {
        Ok(mut found) => {
            // Tenants with the same columns share one list (`TableSchema::share_columns`).
            let mut last_columns = None;
            schemas
                .iter()
                .zip(tenants)
                .map(|(schema, tenant)| {
                    let mut found =
                        found.remove(schema).unwrap_or_default().into_schema(TableRef::new(tenant, name))?;
                    found.share_columns(&mut last_columns);
                    Ok(found)
                })
                .collect()
        }
        Err(e) => schemas.iter().map(|_| Err(e.duplicate())).collect(),
    }
}

#[derive(Default)]
struct TableFacts {
    columns: Vec<ColumnInfo>,
    /// (is primary, index name, columns, all NOT NULL)
    keys: Vec<(bool, String, Vec<String>, bool)>,
    estimated_rows: Option<u64>,
}

impl TableFacts {
    fn into_schema(self, table: TableRef) -> Result<TableSchema> {
        if self.columns.is_empty() {
            return Err(ConnectorError::permanent(format!(
                "table {table} does not exist or the role cannot see it; check table_list and grants"
            )));
        }
        let (key, key_source) = match self.keys.iter().find(|k| k.0) {
            Some(pk) => (pk.2.clone(), KeySource::PrimaryKey),
            None => self
                .keys
                .iter()
                .filter(|k| k.3)
                .min_by(|a, b| a.2.len().cmp(&b.2.len()).then_with(|| a.1.cmp(&b.1)))
                .map_or((Vec::new(), KeySource::None), |k| (k.2.clone(), KeySource::UniqueIndex)),
        };
        let columns: Vec<Column> = self
            .columns
            .iter()
            .map(|info| Column {
                name: info.name.clone(),
                source_type: info.declared.clone(),
                logical: map_column(info),
                nullable: info.nullable,
            })
            .collect();
        Ok(TableSchema { table, columns: columns.into(), key, key_source, estimated_rows: self.estimated_rows })
    }
}

async fn read(conn: &Conn, name: &str, schemas: &[String], label: &str) -> Result<HashMap<String, TableFacts>> {
    let mut facts: HashMap<String, TableFacts> = HashMap::new();
    let schemas: Vec<&str> = schemas.iter().map(String::as_str).collect();
    let columns = conn
        .query(COLUMNS_SQL, &[&name, &schemas])
        .await
        .map_err(|e| wrap(e, format!("{label}: reading pg_attribute")))?;
    for row in columns {
        let schema: String = row.get(0);
        let reltuples: f64 = row.get(8);
        let entry = facts.entry(schema).or_default();
        // -1: never analyzed (PostgreSQL 14+); 0 may be that too on older servers.
        entry.estimated_rows = (reltuples >= 0.0).then_some(reltuples as u64);
        entry.columns.push(ColumnInfo {
            name: row.get(1),
            declared: row.get(2),
            base: row.get(3),
            typtype: row.get(4),
            category: row.get(5),
            typmod: row.get(6),
            nullable: !row.get::<_, bool>(7),
        });
    }
    let keys =
        conn.query(KEYS_SQL, &[&name, &schemas]).await.map_err(|e| wrap(e, format!("{label}: reading pg_index")))?;
    for row in keys {
        let schema: String = row.get(0);
        if let Some(entry) = facts.get_mut(&schema) {
            entry.keys.push((row.get(1), row.get(2), row.get(3), row.get(4)));
        }
    }
    Ok(facts)
}
