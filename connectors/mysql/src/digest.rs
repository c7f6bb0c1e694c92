//! The canonical row string of `connector_framework::digest` in MySQL / MariaDB SQL, and the
//! digest queries `verify` runs on one tenant's table.
//!
//! Every expression here has a twin in the BigQuery sink (`connectors/bigquery/src/digest.rs`);
//! the two must print every value alike, which the end-to-end tests check on every type.

use connector_framework::digest::{DigestColumn, DigestSpec, Encoding};
use connector_framework::{LogicalType, Result};

use crate::types::quote_ident;

/// The value's canonical text, or NULL (see the framework's digest module for the table).
fn text(c: &DigestColumn) -> String {
    let q = quote_ident(&c.source);
    let bit = c.source_type.starts_with("bit");
    match (&c.logical, c.encoding) {
        (_, Encoding::Presence) => format!("IF({q} IS NULL, NULL, 'J')"),
        (_, Encoding::Truthy) => format!("IF({q} IS NULL, NULL, IF({q} <> 0, 'true', 'false'))"),
        (LogicalType::Int64 | LogicalType::UInt64, _) if bit => format!("CAST(CAST({q} AS UNSIGNED) AS CHAR)"),
        // YEAR prints four digits (`0000`); its value is the number.
        (LogicalType::Int64, _) if c.source_type.starts_with("year") => format!("CAST({q} + 0 AS CHAR)"),
        (LogicalType::Int64 | LogicalType::UInt64, _) => format!("CAST({q} AS CHAR)"),
        (LogicalType::Bool, _) => format!("IF({q} IS NULL, NULL, IF({q}, 'true', 'false'))"),
        (LogicalType::Decimal { scale, .. }, _) if *scale > 0 => {
            format!("TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM CAST({q} AS CHAR)))")
        }
        (LogicalType::Decimal { .. }, _) => format!("CAST({q} AS CHAR)"),
        (LogicalType::Float64, _) => float(&q, 52),
        (LogicalType::Float32, _) => float(&q, 23),
        (LogicalType::String, _) => {
            // What the read selects: types read through an expression (INET6, UUID, others)
            // are printed by it.
            let read = if is_plain_text(&c.source_type) { q.clone() } else { format!("CAST({q} AS CHAR)") };
            format!("CONVERT({read} USING utf8mb4)")
        }
        (LogicalType::Bytes, _) => format!("LOWER(HEX({q}))"),
        (LogicalType::Date, _) => format!("IF({}, DATE_FORMAT({q}, '%Y-%m-%d'), NULL)", valid_date(&q)),
        (LogicalType::DateTime { .. }, _) => {
            format!("IF({}, DATE_FORMAT({q}, '%Y-%m-%d %H:%i:%s.%f'), NULL)", valid_date(&q))
        }
        // The stored instant, whatever the session's zone; the zero timestamp is NULL.
        (LogicalType::Timestamp { .. }, _) => {
            format!(
                "IF({q} IS NULL OR UNIX_TIMESTAMP({q}) = 0, NULL, CAST(CAST(UNIX_TIMESTAMP({q}) * 1000000 AS SIGNED) AS CHAR))"
            )
        }
        (LogicalType::Time { .. }, _) => format!("CAST({q} AS CHAR)"),
        // A document stored as text (`column_types` STRING) is compared as the text the read sends.
        (LogicalType::Json, _) => format!("CONVERT({q} USING utf8mb4)"),
        (LogicalType::Geometry, _) => format!("CONVERT(ST_AsText({q}) USING utf8mb4)"),
    }
}

/// Character types the read selects as they are (everything else of logical type string is
/// read through `CAST(... AS CHAR)`, see `types::map_column`).
fn is_plain_text(source_type: &str) -> bool {
    let t = source_type.split('(').next().unwrap_or("").trim();
    ["char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set"].contains(&t)
}

/// A date the calendar has (zero and invalid dates are NULL in the target, as the read makes
/// them).
fn valid_date(q: &str) -> String {
    format!(
        "({q} IS NOT NULL AND MONTH({q}) > 0 AND DAYOFMONTH({q}) > 0 AND DAYOFMONTH({q}) <= DAYOFMONTH(LAST_DAY({q})))"
    )
}

/// An IEEE float exactly: `[-]<mantissa>e<exponent>` with `v = mantissa × 2^(exponent -
/// fraction)`, subnormals `[-]s<v × 2^(bias + fraction - 1)>`. Division by a power of two is
/// exact, and LOG2's rounding near a power of two is corrected by one step.
fn float(q: &str, fraction: u32) -> String {
    let (min_exp, scale) = if fraction == 52 { (1022, "POW(2, 537) * POW(2, 537)") } else { (126, "POW(2, 149)") };
    let a = format!("ABS({q})");
    let e0 = format!("FLOOR(LOG2({a}))");
    let m0 = format!("({a} / POW(2, {e0} - {fraction}))");
    let e = format!("({e0} + IF({m0} >= POW(2, {}), 1, 0) - IF({m0} < POW(2, {fraction}), 1, 0))", fraction + 1);
    format!(
        "IF({q} IS NULL, NULL, IF({q} = 0, '0', CONCAT(IF({q} < 0, '-', ''), IF({a} < POW(2, -{min_exp}), \
         CONCAT('s', CAST({a} * {scale} AS DECIMAL(20,0))), \
         CONCAT(CAST({a} / POW(2, {e} - {fraction}) AS DECIMAL(20,0)), 'e', {e})))))"
    )
}

/// `f(v)` of every column: `N`, or `<byte length>:<text>`.
fn coded(columns: &[DigestColumn]) -> String {
    let parts: Vec<String> = columns
        .iter()
        .map(|c| {
            let t = text(c);
            format!("IFNULL(CONCAT(LENGTH({t}), ':', {t}), 'N')")
        })
        .collect();
    if parts.is_empty() { "''".to_string() } else { format!("CONCAT({})", parts.join(", ")) }
}

/// The row string of a spec.
pub(crate) fn row_string(spec: &DigestSpec) -> String {
    coded(&spec.columns)
}

/// The key string (tables without a key: the row's digest).
pub(crate) fn key_string(spec: &DigestSpec) -> String {
    if spec.key.is_empty() { digest_hex(spec) } else { coded(&spec.key) }
}

/// The row digest: 15 hex digits of the row string's MD5.
pub(crate) fn digest_hex(spec: &DigestSpec) -> String {
    format!("SUBSTRING(MD5({}), 1, 15)", row_string(spec))
}

/// The JSON string (see the framework's `digest::json_string`): the key string, then each JSON
/// column's document in `JSON_NORMALIZE`'s form (MariaDB 10.7+); `None` without JSON columns.
fn json_string(spec: &DigestSpec) -> Option<String> {
    let parts: Vec<String> = spec
        .columns
        .iter()
        .filter(|c| c.encoding == Encoding::Presence)
        .map(|c| {
            let n = format!("JSON_NORMALIZE({})", quote_ident(&c.source));
            format!("IFNULL(CONCAT(LENGTH({n}), ':', {n}), 'N')")
        })
        .collect();
    (!parts.is_empty()).then(|| format!("CONCAT({}, {})", key_string(spec), parts.join(", ")))
}

fn bucket(spec: &DigestSpec) -> String {
    format!("MOD(CAST(CONV(SUBSTRING(MD5({}), 1, 8), 16, 10) AS UNSIGNED), {})", key_string(spec), spec.buckets)
}

fn from(spec: &DigestSpec) -> String {
    format!("{}.{}", quote_ident(&spec.table.database), quote_ident(&spec.table.table))
}

/// The cursor as text comparable with watermarks (`YYYY-MM-DD HH:MM:SS.ffffff`, digits).
fn cursor(spec: &DigestSpec) -> String {
    match &spec.cursor {
        Some(c) => {
            let q = quote_ident(c);
            format!(
                "CASE WHEN {q} IS NULL THEN NULL WHEN {q} REGEXP '^-?[0-9]+$' THEN CAST({q} AS CHAR) \
                 ELSE DATE_FORMAT({q}, '%Y-%m-%d %H:%i:%s.%f') END"
            )
        }
        None => "NULL".to_string(),
    }
}

/// Per bucket: rows, the exact sum of digests, and with `json` the sum of JSON digests (NULL
/// without JSON columns).
pub(crate) fn buckets_sql(spec: &DigestSpec, json: bool) -> String {
    let jh = match json_string(spec).filter(|_| json) {
        Some(j) => format!("CAST(CONV(SUBSTRING(MD5({j}), 1, 15), 16, 10) AS UNSIGNED)"),
        None => "NULL".to_string(),
    };
    format!(
        "SELECT b, COUNT(*), CAST(SUM(h) AS CHAR), CAST(SUM(jh) AS CHAR) FROM (SELECT {} AS b, \
         CAST(CONV({}, 16, 10) AS UNSIGNED) AS h, {jh} AS jh FROM {}) d GROUP BY b",
        bucket(spec),
        digest_hex(spec),
        from(spec)
    )
}

/// Each row of these buckets: key string, digest, cursor, and with `json` the JSON digest.
pub(crate) fn rows_sql(spec: &DigestSpec, buckets: &[u32], json: bool) -> String {
    let list: Vec<String> = buckets.iter().map(u32::to_string).collect();
    let jd = match json_string(spec).filter(|_| json) {
        Some(j) => format!("SUBSTRING(MD5({j}), 1, 15)"),
        None => "NULL".to_string(),
    };
    format!(
        "SELECT {}, {}, {}, {jd} FROM {} WHERE {} IN ({})",
        key_string(spec),
        digest_hex(spec),
        cursor(spec),
        from(spec),
        bucket(spec),
        list.join(", ")
    )
}

/// A statement, the JSON columns it reads, and its parameters.
pub(crate) type JsonQuery = (String, Vec<String>, Vec<mysql_async::Value>);

/// Key string, cursor, then each JSON column's document: every row, or the rows of `keys`.
pub(crate) fn json_sql(spec: &DigestSpec, keys: Option<&[String]>) -> Result<Option<JsonQuery>> {
    let json: Vec<&DigestColumn> = spec.columns.iter().filter(|c| c.encoding == Encoding::Presence).collect();
    if json.is_empty() {
        return Ok(None);
    }
    let docs: Vec<String> = json.iter().map(|c| format!("CONVERT({} USING utf8mb4)", quote_ident(&c.source))).collect();
    let mut sql = format!("SELECT {}, {}, {} FROM {}", key_string(spec), cursor(spec), docs.join(", "), from(spec));
    let mut params = Vec::new();
    if let Some(keys) = keys {
        let (condition, values) = keys_condition(spec, keys)?;
        sql.push_str(&format!(" WHERE {condition}"));
        params = values;
    }
    Ok(Some((sql, json.iter().map(|c| c.source.clone()).collect(), params)))
}

/// Whether the server has `JSON_NORMALIZE` (MariaDB 10.7 and later).
pub(crate) async fn has_json_normalize(conn: &mut mysql_async::Conn) -> bool {
    use mysql_async::prelude::Queryable;
    conn.query_drop("SELECT JSON_NORMALIZE('1')").await.is_ok()
}

/// The condition and parameters of a read of these keys (`ReadRange::Keys`): an integer key
/// by value (its index is used), any other by its key string.
pub(crate) fn keys_condition(spec: &DigestSpec, keys: &[String]) -> Result<(String, Vec<mysql_async::Value>)> {
    if keys.len() > 60_000 {
        return Err(connector_framework::ConnectorError::config(format!(
            "{}: {} keys differ, more than one repair reads; sync the tenant in full instead (--full --databases {})",
            spec.table,
            keys.len(),
            spec.table.database
        )));
    }
    let placeholders = vec!["?"; keys.len().max(1)].join(", ");
    if let [k] = spec.key.as_slice()
        && matches!(k.logical, LogicalType::Int64 | LogicalType::UInt64)
        && k.encoding == Encoding::Value
        && !k.source_type.starts_with("bit")
    {
        let values: Option<Vec<mysql_async::Value>> = keys
            .iter()
            .map(|key| {
                let digits = key.split_once(':')?.1;
                digits
                    .parse::<i64>()
                    .map(mysql_async::Value::Int)
                    .or_else(|_| digits.parse::<u64>().map(mysql_async::Value::UInt))
                    .ok()
            })
            .collect();
        if let Some(values) = values {
            return Ok((format!("{} IN ({placeholders})", quote_ident(&k.source)), values));
        }
    }
    let values = keys.iter().map(|k| mysql_async::Value::from(k.as_str())).collect();
    Ok((format!("{} IN ({placeholders})", key_string(spec)), values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use connector_framework::TableRef;

    fn col(name: &str, logical: LogicalType, source_type: &str) -> DigestColumn {
        DigestColumn {
            source: name.into(),
            target: name.into(),
            logical,
            source_type: source_type.into(),
            encoding: Encoding::Value,
        }
    }

    #[test]
    fn statements_name_the_table_and_bucket_by_the_key() {
        let spec = DigestSpec {
            table: TableRef::new("shop1", "orders"),
            columns: vec![col("id", LogicalType::Int64, "bigint"), col("note", LogicalType::String, "varchar(10)")],
            key: vec![col("id", LogicalType::Int64, "bigint")],
            buckets: 8,
            cursor: None,
            skip_soft_deleted: false,
        };
        let sql = buckets_sql(&spec, true);
        assert!(sql.contains("FROM `shop1`.`orders`") && sql.contains(", 8)"), "{sql}");
        assert!(sql.contains("CONVERT(`note` USING utf8mb4)"), "{sql}");
        let (cond, values) = keys_condition(&spec, &["2:42".into(), "1:7".into()]).unwrap();
        assert_eq!((cond.as_str(), values.len()), ("`id` IN (?, ?)", 2));
        assert_eq!(values[0], mysql_async::Value::Int(42));
    }
}
