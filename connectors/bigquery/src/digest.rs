//! The canonical row string of `connector_framework::digest` in GoogleSQL, over a target
//! table, and the queries `verify` and `verify --repair` run on it: one per table for all the
//! tenants that share columns.
//!
//! Every expression has a twin in the MySQL source (`connectors/mysql/src/digest.rs`). Values
//! are printed by the type of the BigQuery column (which may be wider than a tenant's own
//! type: a union of tenants), so that the same value prints alike whatever the column became.

use connector_framework::digest::{DigestColumn, DigestSpec, Encoding};
use connector_framework::{ConnectorError, LogicalType, Result, SystemColumns};

use crate::merge::quote_column;
use crate::schema::Fields;
use crate::types::column_name;

/// `1.500000000` → `1.5`, `100` → `100`: the shortest decimal.
fn min_dec(expr: &str) -> String {
    format!(r"REGEXP_REPLACE(REGEXP_REPLACE({expr}, r'(\.[0-9]*?)0+$', r'\1'), r'\.$', '')")
}

/// An IEEE float exactly (see the MySQL twin). A float32 source value was loaded as the
/// shortest decimal of the float, so its 24-bit mantissa is recovered by rounding.
fn float(q: &str, fraction: u32) -> String {
    let (min_exp, scale) =
        if fraction == 52 { (1022, "POW(2.0, 537) * POW(2.0, 537)") } else { (126, "POW(2.0, 149)") };
    let a = format!("ABS({q})");
    let e0 = format!("FLOOR(LOG({a}, 2))");
    let m0 = format!("({a} / POW(2.0, {e0} - {fraction}))");
    let e = format!(
        "CAST({e0} + IF({m0} >= POW(2.0, {}), 1, 0) - IF({m0} < POW(2.0, {fraction}), 1, 0) AS INT64)",
        fraction + 1
    );
    let (body, subnormal) = if fraction == 52 {
        (
            format!(
                "CONCAT(CAST(CAST({a} / POW(2.0, {e} - {fraction}) AS INT64) AS STRING), 'e', CAST({e} AS STRING))"
            ),
            format!("CONCAT('s', CAST(CAST({a} * {scale} AS INT64) AS STRING))"),
        )
    } else {
        let m = format!("CAST(ROUND({a} / POW(2.0, {e} - {fraction})) AS INT64)");
        (
            format!(
                "IF({m} = 16777216, CONCAT('8388608e', CAST({e} + 1 AS STRING)), CONCAT(CAST({m} AS STRING), 'e', \
                 CAST({e} AS STRING)))"
            ),
            format!("CONCAT('s', CAST(CAST(ROUND({a} * {scale}) AS INT64) AS STRING))"),
        )
    };
    format!(
        "IF({q} IS NULL, NULL, IF({q} = 0, '0', CONCAT(IF({q} < 0, '-', ''), IF({a} < POW(2.0, -{min_exp}), {subnormal}, \
         {body}))))"
    )
}

/// The value's canonical text, printed by the column's BigQuery type.
fn text(c: &DigestColumn, fields: &Fields, table: &str, is_key: bool) -> Result<String> {
    let name = column_name(&c.target);
    let Some(ty) = fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(&name)).map(|(_, t)| t.as_str()) else {
        // A column the source gained since the last sync: every target row holds NULL there,
        // so rows differ exactly where the source has a value. Keys cannot be matched so.
        if is_key {
            return Err(ConnectorError::permanent(format!(
                "{table}: the target table has no key column `{name}`; run a sync first so it is added"
            )));
        }
        return Ok("CAST(NULL AS STRING)".to_string());
    };
    let q = quote_column(&name);
    Ok(match (c.encoding, ty) {
        (Encoding::Presence, _) => format!("IF({q} IS NULL, NULL, 'J')"),
        (_, "BOOL") => format!("IF({q} IS NULL, NULL, IF({q}, 'true', 'false'))"),
        (_, "INT64") => format!("CAST({q} AS STRING)"),
        (_, "NUMERIC" | "BIGNUMERIC") => min_dec(&format!("CAST({q} AS STRING)")),
        (_, "FLOAT64") => float(&q, if c.logical == LogicalType::Float32 { 23 } else { 52 }),
        (_, "STRING") if matches!(c.logical, LogicalType::Decimal { .. }) => min_dec(&q),
        (_, "STRING") => q,
        (_, "BYTES") => format!("TO_HEX({q})"),
        (_, "DATE") => format!("FORMAT_DATE('%E4Y-%m-%d', {q})"),
        (_, "DATETIME") => format!("FORMAT_DATETIME('%E4Y-%m-%d %H:%M:%E6S', {q})"),
        (_, "TIMESTAMP") => format!("CAST(UNIX_MICROS({q}) AS STRING)"),
        (_, "JSON") => format!("IF({q} IS NULL, NULL, 'J')"),
        (_, other) => {
            return Err(ConnectorError::permanent(format!(
                "{table}: column `{name}` is {other} in BigQuery, which verify cannot compare with the source"
            )));
        }
    })
}

fn coded(columns: &[DigestColumn], fields: &Fields, table: &str, is_key: bool) -> Result<String> {
    let parts = columns
        .iter()
        .map(|c| {
            let t = text(c, fields, table, is_key)?;
            Ok(format!("IFNULL(CONCAT(CAST(BYTE_LENGTH({t}) AS STRING), ':', {t}), 'N')"))
        })
        .collect::<Result<Vec<String>>>()?;
    Ok(if parts.is_empty() { "''".to_string() } else { format!("CONCAT({})", parts.join(", ")) })
}

/// The expressions of one spec over the target table.
pub(crate) struct Exprs {
    pub digest: String,
    pub key: String,
    pub bucket: String,
    pub tenant: String,
    /// Rows a change stream soft-deleted are left out.
    pub live: String,
}

impl Exprs {
    pub fn new(spec: &DigestSpec, fields: &Fields, system: &SystemColumns, table: &str) -> Result<Self> {
        let row = coded(&spec.columns, fields, table, false)?;
        let digest = format!("SUBSTR(TO_HEX(MD5({row})), 1, 15)");
        let key = if spec.key.is_empty() { digest.clone() } else { coded(&spec.key, fields, table, true)? };
        let bucket = format!("MOD(CAST(CONCAT('0x', SUBSTR(TO_HEX(MD5({key})), 1, 8)) AS INT64), {})", spec.buckets);
        let deleted = column_name(&system.deleted_at);
        let live = if spec.skip_soft_deleted && fields.iter().any(|(n, _)| *n == deleted) {
            format!("{} IS NULL", quote_column(&deleted))
        } else {
            "TRUE".to_string()
        };
        Ok(Self { digest, key, bucket, tenant: quote_column(&column_name(&system.tenant)), live })
    }

    /// Per tenant and bucket: rows and the exact sum of digests.
    pub fn buckets_sql(&self, target: &str) -> String {
        format!(
            "SELECT tenant, b, COUNT(*), {} FROM (SELECT {} AS tenant, {} AS b, CAST(CONCAT('0x', {}) AS INT64) AS h \
             FROM {target} WHERE {} IN UNNEST(@tenants) AND {}) GROUP BY tenant, b",
            min_dec("CAST(SUM(CAST(h AS NUMERIC)) AS STRING)"),
            self.tenant,
            self.bucket,
            self.digest,
            self.tenant,
            self.live
        )
    }

    /// Each row of the wanted (tenant, bucket) pairs, given as `tenant/bucket` texts.
    pub fn rows_sql(&self, target: &str) -> String {
        format!(
            "SELECT {t}, {}, {} FROM {target} WHERE {t} IN UNNEST(@tenants) AND {} AND CONCAT({t}, '/', CAST({} AS \
             STRING)) IN UNNEST(@pairs)",
            self.key,
            self.digest,
            self.live,
            self.bucket,
            t = self.tenant
        )
    }

    /// Tenant, key, then each JSON column as text: every row of `@tenants`, or with `pairs`
    /// only those of the `@pairs` (`tenant/bucket`).
    pub fn json_sql(&self, target: &str, json: &[String], pairs: bool) -> String {
        // TO_JSON_STRING of SQL NULL is the text `null`, which is JSON null: keep them apart.
        let docs: Vec<String> = json
            .iter()
            .map(|c| {
                let q = quote_column(c);
                format!("IF({q} IS NULL, NULL, TO_JSON_STRING({q}))")
            })
            .collect();
        let only = if pairs {
            format!(" AND CONCAT({}, '/', CAST({} AS STRING)) IN UNNEST(@pairs)", self.tenant, self.bucket)
        } else {
            String::new()
        };
        format!(
            "SELECT {t}, {}, {} FROM {target} WHERE {t} IN UNNEST(@tenants) AND {}{only}",
            self.key,
            docs.join(", "),
            self.live,
            t = self.tenant
        )
    }
}

/// A query parameter holding a list of strings.
pub(crate) fn strings_param<S: AsRef<str>>(name: &str, values: impl IntoIterator<Item = S>) -> serde_json::Value {
    array_param(name, "STRING", values)
}

/// A query parameter holding a list of `element_type` values, each in its REST text form
/// (INT64 values as decimal strings).
pub(crate) fn array_param<S: AsRef<str>>(
    name: &str,
    element_type: &str,
    values: impl IntoIterator<Item = S>,
) -> serde_json::Value {
    let values: Vec<serde_json::Value> = values.into_iter().map(|v| serde_json::json!({"value": v.as_ref()})).collect();
    serde_json::json!({
        "name": name,
        "parameterType": {"type": "ARRAY", "arrayType": {"type": element_type}},
        "parameterValue": {"arrayValues": values},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use connector_framework::TableRef;

    #[test]
    fn values_print_by_the_target_columns_type() {
        let c = |name: &str, logical| DigestColumn {
            source: name.into(),
            target: name.into(),
            logical,
            source_type: String::new(),
            encoding: Encoding::Value,
        };
        let spec = DigestSpec {
            table: TableRef::new("shop1", "orders"),
            columns: vec![c("amount", LogicalType::Int64), c("id", LogicalType::Int64)],
            key: vec![c("id", LogicalType::Int64)],
            buckets: 4,
            cursor: None,
            skip_soft_deleted: false,
        };
        // A tenant's INT column in a NUMERIC union column prints as the shortest decimal.
        let fields = vec![("amount".to_string(), "NUMERIC".to_string()), ("id".to_string(), "INT64".to_string())];
        let e = Exprs::new(&spec, &fields, &SystemColumns::default(), "orders").unwrap();
        assert!(e.digest.contains("REGEXP_REPLACE(REGEXP_REPLACE(CAST(`amount` AS STRING)"), "{}", e.digest);
        assert!(e.bucket.ends_with(", 4)"), "{}", e.bucket);
        // A column the target lacks yet prints as NULL; a key column it lacks is an error.
        let no_amount = vec![("id".to_string(), "INT64".to_string())];
        let e = Exprs::new(&spec, &no_amount, &SystemColumns::default(), "orders").unwrap();
        assert!(e.digest.contains("CAST(NULL AS STRING)"), "{}", e.digest);
        let no_id = vec![("amount".to_string(), "NUMERIC".to_string())];
        assert!(Exprs::new(&spec, &no_id, &SystemColumns::default(), "orders").is_err());
    }
}
