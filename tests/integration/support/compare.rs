//! An independent, row-by-row comparison of MySQL and BigQuery through a canonical text form
//! per type.

use serde_json::Value;

use super::{Emulator, bq_query_with_schema, mysql_rows_at, mysql_url};

/// Canonical text of a MySQL value fetched by [`mysql_expression`], for comparison.
fn canonical_mysql(data_type: &str, v: Option<String>) -> Option<String> {
    let v = v?;
    Some(match data_type {
        "date" | "datetime" if v.starts_with("0000-00-00") || v.contains("-00-") => return None,
        // The lowest valid TIMESTAMP is second 1; 0 is MySQL's zero date.
        "timestamp" if v == "0" => return None,
        "decimal" | "bigint_unsigned" => trim_decimal(&v),
        "double" => v.parse::<f64>().map(|f| f.to_string()).unwrap_or(v),
        // FLOAT is single precision: compare the float the value rounds to.
        "float" => v.parse::<f64>().map(|f| (f as f32).to_string()).unwrap_or(v),
        "binary" => v.replace(['\n', '\r'], ""),
        // A time of day with six fractional digits, as the target holds it.
        "time6" => match v.split_once('.') {
            Some((hms, frac)) => format!("{hms}.{frac:0<6}"),
            None => format!("{v}.000000"),
        },
        "json" => serde_json::from_str::<Value>(&v).map(|j| j.to_string()).unwrap_or(v),
        _ => v,
    })
}

/// Canonical text of a BigQuery value of type `bq_type`, as the emulator returned it.
fn canonical_bq(bq_type: &str, v: Option<String>) -> Option<String> {
    let v = v?;
    Some(match bq_type {
        "NUMERIC" | "BIGNUMERIC" => trim_decimal(&v),
        "FLOAT" | "FLOAT64" => v.parse::<f64>().map(|f| f.to_string()).unwrap_or(v),
        "DATETIME" => {
            let v = v.replace('T', " ");
            if v.contains('.') { v } else { format!("{v}.000000") }
        }
        "JSON" => serde_json::from_str::<Value>(&v).map(|j| j.to_string()).unwrap_or(v),
        _ => v,
    })
}

fn trim_decimal(v: &str) -> String {
    if !v.contains('.') {
        return v.to_string();
    }
    let t = v.trim_end_matches('0').trim_end_matches('.');
    if t == "-0" { "0".into() } else { t.to_string() }
}

/// The SQL expression that renders a MySQL column the way the comparison expects.
async fn mysql_expression(url: &str, database: &str, table: &str) -> Vec<(String, String, String)> {
    let cols = mysql_rows_at(
        url,
        &format!(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = '{database}' AND TABLE_NAME = '{table}' ORDER BY ORDINAL_POSITION"
        ),
    )
    .await;
    cols.into_iter()
        .map(|r| {
            let name = r[0].clone().unwrap();
            let dt = r[1].clone().unwrap().to_lowercase();
            let ct = r[2].clone().unwrap().to_lowercase();
            let q = format!("`{name}`");
            let (kind, expr) = match dt.as_str() {
                "datetime" => ("datetime", format!("DATE_FORMAT({q}, '%Y-%m-%d %H:%i:%s.%f')")),
                "timestamp" => ("timestamp", format!("CAST(UNIX_TIMESTAMP({q}) * 1000000 AS DECIMAL(30,0))")),
                "date" => ("date", format!("DATE_FORMAT({q}, '%Y-%m-%d')")),
                "decimal" => ("decimal", format!("CAST({q} AS CHAR)")),
                "bigint" if ct.contains("unsigned") => ("bigint_unsigned", format!("CAST({q} AS CHAR)")),
                "double" | "real" => ("double", format!("CAST({q} AS CHAR)")),
                "float" => ("float", format!("CAST({q} AS DOUBLE)")),
                "bit" => ("text", format!("CAST({q} AS UNSIGNED)")),
                "year" => ("text", format!("CAST({q} AS SIGNED)")),
                "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring" | "multipolygon"
                | "geometrycollection" => ("text", format!("ST_AsText({q})")),
                "binary" | "varbinary" | "blob" | "tinyblob" | "mediumblob" | "longblob" => {
                    ("binary", format!("TO_BASE64({q})"))
                }
                "json" => ("json", q.clone()),
                "longtext" if ct == "longtext" => ("json_or_text", q.clone()),
                _ => ("text", format!("CAST({q} AS CHAR)")),
            };
            (name, kind.to_string(), expr)
        })
        .collect()
}

/// Asserts that BigQuery's rows for `database` in `dataset.table` equal MySQL's `database.table`,
/// row by row (ordered by `order_by`), for every source column. Returns the row count.
pub async fn assert_table_equal(
    emulator: &Emulator,
    dataset: &str,
    database: &str,
    table: &str,
    order_by: &str,
) -> usize {
    assert_table_equal_as(emulator, dataset, database, table, order_by, &Compared::default()).await
}

/// How a comparison differs from the default: the tenant column's name, source columns left out
/// (excluded), and renamed ones (source name → BigQuery name).
#[derive(Default)]
pub struct Compared<'a> {
    pub tenant_column: Option<&'a str>,
    pub excluded: &'a [&'a str],
    pub renamed: &'a [(&'a str, &'a str)],
    /// Another MySQL server than the tests' (`MYSQL_URL`).
    pub mysql_url: Option<&'a str>,
    /// A condition on the BigQuery rows compared (e.g. soft-deleted rows left out).
    pub bq_filter: Option<&'a str>,
    /// The BigQuery table, when it is not named like the MySQL one (`target_table`).
    pub bq_table: Option<&'a str>,
}

/// [`assert_table_equal`] for tables synced with `system_columns`, `exclude_columns` or
/// `rename_columns`.
pub async fn assert_table_equal_as(
    emulator: &Emulator,
    dataset: &str,
    database: &str,
    table: &str,
    order_by: &str,
    how: &Compared<'_>,
) -> usize {
    let url = how.mysql_url.map_or_else(mysql_url, str::to_string);
    let mut columns = mysql_expression(&url, database, table).await;
    columns.retain(|c| !how.excluded.contains(&c.0.as_str()));
    let tenant = how.tenant_column.unwrap_or("tenant_id");
    let exprs: Vec<&str> = columns.iter().map(|c| c.2.as_str()).collect();
    let mysql =
        mysql_rows_at(&url, &format!("SELECT {} FROM `{database}`.`{table}` ORDER BY {order_by}", exprs.join(", ")))
            .await;
    let target_name = |n: &str| how.renamed.iter().find(|(s, _)| *s == n).map_or(n.to_string(), |(_, t)| t.to_string());
    let names: Vec<String> = columns.iter().map(|c| format!("`{}`", target_name(&c.0))).collect();
    let bq_order: Vec<String> = order_by
        .split(',')
        .map(|c| {
            let c = c.trim().trim_matches('`');
            format!("`{}`", target_name(c))
        })
        .collect();
    let (schema, bq) = bq_query_with_schema(
        emulator,
        &format!(
            "SELECT {} FROM `{dataset}`.`{}` WHERE `{tenant}` = '{database}'{} ORDER BY {}",
            names.join(", "),
            how.bq_table.unwrap_or(table),
            how.bq_filter.map(|f| format!(" AND ({f})")).unwrap_or_default(),
            bq_order.join(", ")
        ),
    )
    .await;
    let kinds: Vec<(String, String)> = columns.iter().map(|(n, k, _)| (n.clone(), k.clone())).collect();
    compare_rows(&format!("{database}.{table}"), "MySQL", &kinds, mysql, &schema, bq);
    columns.len()
}

/// Asserts that `source` rows (canonical kinds per column, as [`canonical_mysql`] knows them)
/// equal BigQuery's rows (`schema`: name and type per column), in order.
pub fn compare_rows(
    label: &str,
    source_name: &str,
    columns: &[(String, String)],
    source: Vec<Vec<Option<String>>>,
    schema: &[(String, String)],
    bq: Vec<Vec<Option<String>>>,
) {
    assert_eq!(source.len(), bq.len(), "{label}: {} rows in {source_name}, {} in BigQuery", source.len(), bq.len());
    for (i, (m, b)) in source.into_iter().zip(bq).enumerate() {
        for (j, ((name, kind), (mv, bv))) in columns.iter().zip(m.into_iter().zip(b)).enumerate() {
            let bq_type = schema[j].1.as_str();
            let kind = if kind == "json_or_text" && bq_type == "JSON" { "json" } else { kind.as_str() };
            let mut expected = canonical_mysql(kind, mv.clone());
            let mut got = canonical_bq(bq_type, bv.clone());
            match (kind, bq_type) {
                // Decimals too wide for BIGNUMERIC are kept as text.
                ("decimal", "STRING") => got = got.map(|g| trim_decimal(&g)),
                ("float", _) => got = got.map(|g| g.parse::<f64>().map(|f| (f as f32).to_string()).unwrap_or(g)),
                // An integer stored as BOOL (column_types override): nonzero is true.
                (_, "BOOL" | "BOOLEAN") if kind != "bool" => expected = expected.map(|e| (e != "0").to_string()),
                _ => {}
            }
            assert_eq!(
                expected, got,
                "{label} row {i} column `{name}` ({bq_type}): {source_name} {mv:?} vs BigQuery {bv:?}"
            );
        }
    }
}
