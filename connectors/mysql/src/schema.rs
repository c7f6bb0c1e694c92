//! Discovery: the base tables of a database, and one table's columns, types and key in many
//! databases at once, from `information_schema`.
//!
//! A fleet's run discovers every table name in every tenant. Asking per tenant costs four
//! statements per tenant and table; asking per table name with the tenants in an `IN` list
//! costs four per [`DISCOVERY_CHUNK`] tenants, whatever the fleet's size (three when none of
//! them has a text column that could be MariaDB's JSON), and one when every tenant's
//! definition is unchanged since a run kept it (`schema_cache`).

use std::collections::HashMap;

use connector_framework::{Column, ConnectorError, KeySource, Result, TableRef, TableSchema};
use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::config::validate_identifier;
use crate::error::wrap;
use crate::schema_cache::{Definition, TableCache};
use crate::types::{ColumnInfo, map_column, may_be_mariadb_json};

/// Databases per discovery statement: far below the server's placeholder limit, and a short
/// enough statement for any `max_allowed_packet`.
pub(crate) const DISCOVERY_CHUNK: usize = 500;

/// The server's own schemas: never a tenant, whatever a pattern matches.
const SYSTEM_SCHEMAS: &[&str] = &["information_schema", "mysql", "performance_schema", "sys"];

/// Every database the user can see, but the server's own, sorted.
pub(crate) async fn list_databases(conn: &mut Conn) -> Result<Vec<String>> {
    let names: Vec<String> = conn
        .query("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY SCHEMA_NAME")
        .await
        .map_err(|e| wrap(e, "listing the server's databases"))?;
    Ok(names.into_iter().filter(|n| !SYSTEM_SCHEMAS.contains(&n.to_ascii_lowercase().as_str())).collect())
}

/// The base tables of `database`, by name; an error when the database does not exist or the
/// user cannot see it.
pub(crate) async fn list_tables(conn: &mut Conn, database: &str) -> Result<Vec<String>> {
    let tables: Vec<String> = conn
        .exec(
            "SELECT TABLE_NAME FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
            (database,),
        )
        .await
        .map_err(|e| wrap(e, format!("{database}: listing tables")))?;
    if tables.is_empty() {
        let exists: Option<String> = conn
            .exec_first("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?", (database,))
            .await
            .map_err(|e| wrap(e, format!("{database}: listing tables")))?;
        if exists.is_none() {
            return Err(ConnectorError::permanent(format!(
                "database `{database}` does not exist or the user cannot see it; check db_list and grants"
            )));
        }
    }
    Ok(tables)
}

/// Table `name` in each of `databases` (at most [`DISCOVERY_CHUNK`]), in that order. One
/// statement (`TABLES`) when `cache` holds every tenant's definition under its current
/// `CREATE_TIME`; else three or four more for the others, whose definitions `cache` then
/// keeps. A statement that fails fails every database of the chunk with its error.
pub(crate) async fn discover_chunk(
    conn: &mut Conn,
    name: &str,
    databases: &[String],
    cache: &mut TableCache,
) -> Vec<Result<TableSchema>> {
    let label = match databases {
        [one] => TableRef::new(one, name).to_string(),
        _ => format!("`{name}` in {} databases", databases.len()),
    };
    let found = match validate_identifier("table", name) {
        Ok(()) => read_chunk(conn, name, databases, &label, cache).await,
        Err(e) => Err(e),
    };
    match found {
        Ok(mut found) => {
            // Tenants with the same columns share one list (`TableSchema::share_columns`).
            let mut last_columns = None;
            databases
                .iter()
                .map(|db| {
                    let mut schema =
                        found.remove(db.as_str()).unwrap_or_default().into_schema(TableRef::new(db, name))?;
                    schema.share_columns(&mut last_columns);
                    Ok(schema)
                })
                .collect()
        }
        Err(e) => databases.iter().map(|_| Err(e.duplicate())).collect(),
    }
}

/// What `information_schema` says of one database's table.
#[derive(Default)]
struct TableFacts {
    definition: Definition,
    estimated_rows: Option<u64>,
}

impl TableFacts {
    fn into_schema(self, table: TableRef) -> Result<TableSchema> {
        let Definition { columns, unique_indexes, checks } = self.definition;
        if columns.is_empty() {
            return Err(ConnectorError::permanent(format!(
                "table {table} does not exist or the user cannot see it; check table_list and grants"
            )));
        }
        let mut infos = columns;
        // MariaDB's JSON is LONGTEXT with CHECK (json_valid(`col`)).
        for info in &mut infos {
            let check = format!("json_valid(`{}`)", info.name.to_ascii_lowercase());
            info.json_check = checks.iter().any(|c| c.to_ascii_lowercase().contains(&check));
        }
        let (key, key_source) = choose_key(unique_indexes, &infos);
        let columns: Vec<Column> = infos
            .iter()
            .map(|info| Column {
                name: info.name.clone(),
                source_type: info.column_type.clone(),
                logical: map_column(info).0,
                nullable: info.nullable,
            })
            .collect();
        Ok(TableSchema { table, columns: columns.into(), key, key_source, estimated_rows: self.estimated_rows })
    }
}

/// The primary key, else the smallest unique index over NOT NULL columns (ties: the first
/// index name).
fn choose_key(indexes: Vec<(String, Vec<Option<String>>)>, infos: &[ColumnInfo]) -> (Vec<String>, KeySource) {
    let indexes: Vec<(String, Vec<String>)> = indexes
        .into_iter()
        .filter_map(|(n, cols)| cols.into_iter().collect::<Option<Vec<_>>>().map(|c| (n, c)))
        .collect();
    if let Some((_, cols)) = indexes.iter().find(|(n, _)| n == "PRIMARY") {
        return (cols.clone(), KeySource::PrimaryKey);
    }
    let not_null = |c: &String| infos.iter().any(|i| &i.name == c && !i.nullable);
    let best = indexes
        .into_iter()
        .filter(|(_, cols)| cols.iter().all(not_null))
        .min_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| a.0.cmp(&b.0)));
    match best {
        Some((_, cols)) => (cols, KeySource::UniqueIndex),
        None => (Vec::new(), KeySource::None),
    }
}

/// `?, ?, …` for `n` values.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// Runs one discovery statement: `columns` of information_schema's `view` for table `name` in
/// `databases`, `filter` added to the WHERE clause (the view's database column is `schema`).
async fn select_chunk<T: mysql_async::prelude::FromRow + Send + 'static>(
    conn: &mut Conn,
    (view, schema, columns, filter): (&str, &str, &str, &str),
    name: &str,
    databases: &[String],
) -> std::result::Result<Vec<T>, mysql_async::Error> {
    let params: Vec<mysql_async::Value> = std::iter::once(mysql_async::Value::from(name))
        .chain(databases.iter().map(|d| mysql_async::Value::from(d.as_str())))
        .collect();
    let sql = format!(
        "SELECT {schema}, TABLE_NAME, {columns} FROM information_schema.{view} WHERE TABLE_NAME = ? AND {schema} IN \
         ({}){filter}",
        placeholders(databases.len())
    );
    conn.exec(sql, params).await
}

async fn read_chunk<'a>(
    conn: &mut Conn,
    name: &str,
    databases: &'a [String],
    label: &str,
    cache: &mut TableCache,
) -> Result<HashMap<&'a str, TableFacts>> {
    let mut facts: HashMap<&'a str, TableFacts> = HashMap::new();
    // information_schema compares case-insensitively, so `Shop1` can bring `shop1`'s rows
    // too: only rows of the database and table named exactly as asked count.
    let asked = |db: &str, table: &str| if table == name { databases.iter().find(|d| *d == db) } else { None };

    // First, so that a definition read below is never kept under a time later than it
    // (`schema_cache`).
    type Size = (String, String, Option<u64>, Option<i64>, i64, String, Option<String>);
    let sizes: Vec<Size> = select_chunk(
        conn,
        (
            "TABLES",
            "TABLE_SCHEMA",
            "TABLE_ROWS, CAST(UNIX_TIMESTAMP(CREATE_TIME) AS SIGNED), CAST(UNIX_TIMESTAMP() AS SIGNED), VERSION(), \
             ENGINE",
            "",
        ),
        name,
        databases,
    )
    .await
    .map_err(|e| wrap(e, format!("{label}: reading information_schema.TABLES")))?;
    let mut created: HashMap<&'a str, (i64, i64)> = HashMap::new();
    for (db, table, rows, create_time, now, version, engine) in sizes {
        let Some(db) = asked(&db, &table) else { continue };
        let entry = facts.entry(db.as_str()).or_default();
        entry.estimated_rows = rows;
        // MariaDB's InnoDB tables only (`schema_cache`); a view has no CREATE_TIME.
        let fingerprinted = version.contains("MariaDB") && engine.as_deref() == Some("InnoDB");
        match create_time.filter(|_| fingerprinted) {
            Some(time) => match cache.get(db, time) {
                Some(definition) => entry.definition = definition.clone(),
                None => {
                    created.insert(db.as_str(), (time, now));
                }
            },
            None => cache.forget(db),
        }
    }
    let unknown: Vec<String> = databases
        .iter()
        .filter(|db| facts.get(db.as_str()).is_none_or(|f| f.definition.columns.is_empty()))
        .cloned()
        .collect();
    if unknown.is_empty() {
        return Ok(facts);
    }
    read_definitions(conn, name, &unknown, label, &mut facts, &asked).await?;
    for db in &unknown {
        match (facts.get(db.as_str()), created.get(db.as_str())) {
            (Some(found), Some(&(time, now))) if !found.definition.columns.is_empty() => {
                cache.put(db, time, now, &found.definition)
            }
            // Gone, unseen, or not fingerprinted (`schema_cache`).
            _ => cache.forget(db),
        }
    }
    Ok(facts)
}

/// Columns, checks and unique indexes of table `name` in `databases` (those whose definitions
/// are not known), into `facts`.
async fn read_definitions<'a>(
    conn: &mut Conn,
    name: &str,
    databases: &[String],
    label: &str,
    facts: &mut HashMap<&'a str, TableFacts>,
    asked: &impl Fn(&str, &str) -> Option<&'a String>,
) -> Result<()> {
    type Raw = (String, String, String, String, String, String, Option<u64>, Option<u64>, Option<u64>);
    let columns: Vec<Raw> = select_chunk(
        conn,
        (
            "COLUMNS",
            "TABLE_SCHEMA",
            "COLUMN_NAME, LOWER(DATA_TYPE), LOWER(COLUMN_TYPE), IS_NULLABLE, NUMERIC_PRECISION, NUMERIC_SCALE, \
             DATETIME_PRECISION",
            " ORDER BY TABLE_SCHEMA, ORDINAL_POSITION",
        ),
        name,
        databases,
    )
    .await
    .map_err(|e| wrap(e, format!("{label}: reading information_schema.COLUMNS")))?;
    for (db, table, column, data_type, column_type, nullable, precision, scale, dt_precision) in columns {
        let Some(db) = asked(&db, &table) else { continue };
        facts.entry(db.as_str()).or_default().definition.columns.push(ColumnInfo {
            nullable: nullable == "YES",
            name: column,
            data_type,
            column_type,
            numeric_precision: precision,
            numeric_scale: scale,
            datetime_precision: dt_precision,
            json_check: false,
        });
    }

    // Checks only tell MariaDB's JSON from text, so only tenants with a text column are asked:
    // CHECK_CONSTRAINTS costs the server twice what COLUMNS does (0.2 ms a table), the most
    // of a fleet run's discovery.
    let with_text: Vec<String> = databases
        .iter()
        .filter(|db| {
            facts
                .get(db.as_str())
                .is_some_and(|f| f.definition.columns.iter().any(|c| may_be_mariadb_json(&c.data_type)))
        })
        .cloned()
        .collect();
    // MySQL 8 lacks TABLE_NAME here (and has a real JSON type): a server error means no checks.
    let checks: Vec<(String, String, String)> = if with_text.is_empty() {
        Vec::new()
    } else {
        match select_chunk(conn, ("CHECK_CONSTRAINTS", "CONSTRAINT_SCHEMA", "CHECK_CLAUSE", ""), name, &with_text).await
        {
            Ok(checks) => checks,
            Err(mysql_async::Error::Server(_)) => Vec::new(),
            Err(e) => return Err(wrap(e, format!("{label}: reading information_schema.CHECK_CONSTRAINTS"))),
        }
    };
    for (db, table, clause) in checks {
        if let Some(db) = asked(&db, &table) {
            facts.entry(db.as_str()).or_default().definition.checks.push(clause);
        }
    }

    // COLUMN_NAME is NULL for functional key parts (MySQL 8); such indexes are no key.
    let indexes: Vec<(String, String, String, Option<String>)> = select_chunk(
        conn,
        (
            "STATISTICS",
            "TABLE_SCHEMA",
            "INDEX_NAME, COLUMN_NAME",
            " AND NON_UNIQUE = 0 ORDER BY TABLE_SCHEMA, INDEX_NAME, SEQ_IN_INDEX",
        ),
        name,
        databases,
    )
    .await
    .map_err(|e| wrap(e, format!("{label}: reading information_schema.STATISTICS")))?;
    for (db, table, index, column) in indexes {
        let Some(db) = asked(&db, &table) else { continue };
        let unique = &mut facts.entry(db.as_str()).or_default().definition.unique_indexes;
        match unique.iter_mut().find(|(n, _)| *n == index) {
            Some((_, cols)) => cols.push(column),
            None => unique.push((index, vec![column])),
        }
    }
    Ok(())
}
