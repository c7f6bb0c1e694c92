//! The test PostgreSQL: connection, statements, row reads, and the PostgreSQL-vs-BigQuery
//! comparison.

use serde_json::{Value, json};

use super::{Emulator, bq_query_with_schema, compare_rows};

/// The test server's port (`PG_PORT`, which scripts/test.sh points at its private server; the
/// machine's own server is never used).
pub fn pg_port() -> u16 {
    std::env::var("PG_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .expect("PG_PORT: the private PostgreSQL's port (scripts/test.sh starts it and sets this)")
}

/// The private server's TLS folder (`PG_TLS_DIR`: ca.pem, other-ca.pem).
pub fn pg_tls_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var("PG_TLS_DIR").expect("PG_TLS_DIR (scripts/test.sh sets it)"))
}

async fn pg_client(db: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={} user=postgres dbname={db} sslmode=disable", pg_port()),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("connect to the test PostgreSQL (database {db}): {e}"));
    tokio::spawn(conn);
    client
}

/// Runs SQL statements (several, separated by `;`) in database `db`.
pub async fn pg_exec(db: &str, sql: &str) {
    pg_client(db).await.batch_execute(sql).await.unwrap_or_else(|e| panic!("{e:?}\n{sql}"));
}

/// Rows of a query in database `db`, as text (NULL as None).
pub async fn pg_rows(db: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    let messages = pg_client(db).await.simple_query(sql).await.unwrap_or_else(|e| panic!("{e:?}\n{sql}"));
    messages
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// A fresh, empty database.
pub async fn pg_fresh_database(name: &str) {
    let admin = pg_client("postgres").await;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await.unwrap();
    admin.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await.unwrap();
}

/// A `postgres` source config for the test server, as superuser `postgres`.
pub fn pg_source(layout: &str, tenants: &[String], database: &str) -> Value {
    let mut source = json!({"kind": "postgres", "host": "127.0.0.1", "port": pg_port(), "user": "postgres",
                            "tenant_by": layout, "ssl_mode": "disable", "pool_size": 4});
    match layout {
        "schema" => {
            source["database"] = json!(database);
            source["schemas"] = json!(tenants);
        }
        _ => source["databases"] = json!(tenants),
    }
    source
}

/// The SQL expression that renders a PostgreSQL column the way the comparison expects, and
/// its kind (`compare_rows`).
fn pg_expression(name: &str, data_type: &str) -> (String, String) {
    let q = format!("\"{name}\"");
    let (kind, expr) = match data_type {
        "timestamp with time zone" => {
            ("timestamp", format!("(extract(epoch from {q}) * 1000000)::numeric(30,0)::text"))
        }
        "timestamp without time zone" => ("datetime", format!("to_char({q}, 'YYYY-MM-DD HH24:MI:SS.US')")),
        "date" => ("date", format!("to_char({q}, 'YYYY-MM-DD')")),
        "numeric" | "money" => ("decimal", format!("{q}::numeric::text")),
        "double precision" => ("double", format!("{q}::text")),
        "real" => ("float", format!("{q}::text")),
        "bytea" => ("binary", format!("encode({q}, 'base64')")),
        "json" | "jsonb" | "ARRAY" | "USER-DEFINED_composite" => ("json", format!("to_json({q})::text")),
        "boolean" => ("bool", format!("{q}::text")),
        "time without time zone" => ("time6", format!("{q}::text")),
        // A cast to text would drop char(n)'s padding; the output function keeps it.
        "character" => ("text", format!("CASE WHEN {q} IS NULL THEN NULL ELSE format('%s', {q}) END")),
        // The type's output function, as COPY sends it (a cast to text differs for inet).
        _ => ("text", format!("CASE WHEN {q} IS NULL THEN NULL ELSE format('%s', {q}) END")),
    };
    (kind.to_string(), expr)
}

/// Asserts that BigQuery's rows of tenant `tenant` in `dataset.table` equal PostgreSQL's
/// `schema.table` in database `db`, row by row (ordered by `order_by`), for every column.
/// Returns the column count.
pub async fn assert_pg_table_equal(
    emulator: &Emulator,
    dataset: &str,
    tenant: &str,
    (db, schema, table): (&str, &str, &str),
    order_by: &str,
) -> usize {
    let cols = pg_rows(
        db,
        &format!(
            "SELECT column_name, data_type, domain_name FROM information_schema.columns WHERE table_schema = \
             '{schema}' AND table_name = '{table}' ORDER BY ordinal_position"
        ),
    )
    .await;
    let columns: Vec<(String, String, String)> = cols
        .into_iter()
        .map(|r| {
            let name = r[0].clone().unwrap();
            // A domain over a domain is USER-DEFINED here; the tests' ones are all numeric.
            let data_type = match (r[1].as_deref().unwrap(), &r[2]) {
                ("USER-DEFINED", Some(_)) => "numeric",
                (t, _) => t,
            };
            let (kind, expr) = pg_expression(&name, data_type);
            (name, kind, expr)
        })
        .collect();
    // Aliased apart from the column names: ORDER BY would take an output name first.
    let exprs: Vec<String> = columns.iter().enumerate().map(|(i, c)| format!("{} AS compared_{i}", c.2)).collect();
    // Intervals in the ISO 8601 form the source reads them in.
    let source = pg_rows(
        db,
        &format!(
            "SET IntervalStyle = iso_8601; SELECT {} FROM \"{schema}\".\"{table}\" ORDER BY {order_by}",
            exprs.join(", ")
        ),
    )
    .await;
    let names: Vec<String> = columns.iter().map(|c| format!("`{}`", c.0)).collect();
    let (bq_schema, bq) = bq_query_with_schema(
        emulator,
        &format!(
            "SELECT {} FROM `{dataset}`.`{table}` WHERE tenant_id = '{tenant}' ORDER BY {order_by}",
            names.join(", ")
        ),
    )
    .await;
    let kinds: Vec<(String, String)> = columns.iter().map(|(n, k, _)| (n.clone(), k.clone())).collect();
    compare_rows(&format!("{tenant}.{table}"), "PostgreSQL", &kinds, source, &bq_schema, bq);
    columns.len()
}
