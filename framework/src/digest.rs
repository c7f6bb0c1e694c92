//! The digest role: what a source and a sink compute so that `verify` can prove a target
//! table equals the source, tenant by tenant, without moving the rows.
//!
//! Both sides compute, inside their own database, the same **canonical row string** for every
//! row and hash it; `verify` compares per-bucket counts and sums, and drills down only into
//! buckets that differ (per-row digests there). Two engines only agree if they print every value
//! the same way, so the encoding is a contract, written here and implemented twice (in the
//! source's SQL and the sink's); `docs/verify.md` has the table and the reasons.
//!
//! ## The canonical row string
//!
//! For each [`DigestColumn`] in the order of [`DigestSpec::columns`] (sorted by source column
//! name), `f(v)` = `N` when the value is NULL, else `<byte length>:<text>` (a prefix-free
//! code: no value can imitate a separator or NULL). `text` per logical type:
//!
//! | logical type | text |
//! | --- | --- |
//! | int64, bool override (`true`/`false`) | decimal digits (`-12`) |
//! | uint64, decimal | the shortest decimal: no trailing fractional zeros, no trailing `.` (`1.5`, `100`, `0`) |
//! | float64 | `0`, or `[-]M e E` with `M` the 53-bit integer mantissa and `E` the exponent: `v = M × 2^(E-52)` (subnormals: `s<M>`); exact, bit for bit |
//! | float32 | the same for the 24-bit mantissa of the f32 value: `v = M × 2^(E-23)` (subnormals `s<M>`) |
//! | string, geometry, time | the UTF-8 text as the sink stores it (time: `[-]H:MM:SS[.ffffff]` as the source prints it) |
//! | bytes | lower-case hex |
//! | date | `YYYY-MM-DD` (four-digit year); dates no calendar has are NULL, as the sink stores them |
//! | datetime | `YYYY-MM-DD HH:MM:SS.ffffff` (always six fractional digits) |
//! | timestamp | microseconds since 1970-01-01 UTC |
//! | json | `J` when not NULL: documents are compared apart, parsed ([`JsonDigest`]) |
//!
//! The **digest** of a row is the first 15 hexadecimal digits of the MD5 of its string, as an
//! integer below 2^60; a bucket's sum of digests is exact (no overflow, no cancellation of
//! duplicates as XOR would). The **key string** is the same code over the key columns; rows
//! go to bucket `first 8 hex digits of MD5(key string) mod buckets` (tables without a key: of
//! the row string, so identical rows share a bucket and compare as a multiset).

use serde::Serialize;

use crate::schema::{LogicalType, TableRef};

/// How a column enters the row string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Its value, by the table in the module doc.
    Value,
    /// `true` / `false`: an integer column stored as BOOL (`column_types`), nonzero = true.
    Truthy,
    /// `J` or NULL only: JSON documents, compared apart.
    Presence,
}

/// One column of a digest: named in the source and in the target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DigestColumn {
    pub source: String,
    pub target: String,
    pub logical: LogicalType,
    /// The source's own type (`bit(1)`, `enum('a','b')`…), for sources that read some types
    /// through an expression.
    pub source_type: String,
    pub encoding: Encoding,
}

/// What to digest of one tenant's table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DigestSpec {
    /// The tenant's source table.
    pub table: TableRef,
    /// The row string's columns, sorted by source name; only the key's in a keys-only check.
    pub columns: Vec<DigestColumn>,
    /// The key columns, in key order; empty for a table without a key.
    pub key: Vec<DigestColumn>,
    /// Rows are spread over this many buckets (a power of two).
    pub buckets: u32,
    /// The cursor column, whose value `digest_rows` reports (to tell changes in flight).
    pub cursor: Option<String>,
    /// Rows a change stream soft-deleted are not rows of the target (`_deleted_at` set).
    pub skip_soft_deleted: bool,
}

/// One bucket: its rows and the exact sum of their digests (decimal text); with JSON columns,
/// the sum of their JSON digests too ([`json_string`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BucketDigest {
    pub bucket: u32,
    pub rows: u64,
    pub sum: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_sum: Option<String>,
}

/// One row of a drilled-down bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowDigest {
    /// The key string (tables without a key: the row digest).
    pub key: String,
    /// The row digest, 15 hexadecimal digits.
    pub digest: String,
    /// The cursor's value as text (source side only).
    pub cursor: Option<String>,
    /// The row's JSON digest ([`json_string`]), for tables with JSON columns.
    pub json: Option<String>,
}

/// One JSON column's documents of some rows, for the exact comparison of JSON: the key string
/// and the document's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonDigest {
    pub key: String,
    pub column: String,
    pub text: Option<String>,
    /// The row's cursor as text (source side only).
    pub cursor: Option<String>,
}

/// The first 15 hexadecimal digits of the MD5 of `text`: a row's digest.
pub fn digest_hex(text: &str) -> String {
    use md5::Digest;
    let hash = md5::Md5::digest(text.as_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    hex[..15].to_string()
}

/// A digest's value: the 15 hexadecimal digits as an integer below 2^60.
pub fn digest_value(hex: &str) -> u128 {
    u128::from_str_radix(hex, 16).unwrap_or(0)
}

/// The bucket of a key string: its MD5's first 8 hexadecimal digits, modulo `buckets`.
pub fn bucket_of(key: &str, buckets: u32) -> u32 {
    use md5::Digest;
    let hash = md5::Md5::digest(key.as_bytes());
    let first = u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]);
    first % buckets.max(1)
}

/// The JSON string of a row: its key string, then each JSON column's document in the normal
/// form below (`N` for SQL NULL), coded like the row string. Its digest is compared apart from
/// the row's, so that documents are compared without leaving the source: the source prints
/// the normal form in SQL (MariaDB's `JSON_NORMALIZE`), the sink's documents are put into it
/// here. A document whose text differs only in ways the normal form keeps (a `\u00e9` where
/// the other side has `é`, more digits than a double holds) shows as a difference at first,
/// and is then compared by value ([`canonical_json`]).
pub fn json_string(key: &str, documents: &[Option<&str>]) -> String {
    let mut out = key.to_string();
    for doc in documents {
        match doc.and_then(normal_json) {
            None => out.push('N'),
            Some(text) => out.push_str(&format!("{}:{text}", text.len())),
        }
    }
    out
}

/// A JSON document in MariaDB's `JSON_NORMALIZE` form: object members sorted by name (bytes),
/// no spaces, every number as `d.ddddE±x` (its significant digits: `2.5E0`, `1.0E1`,
/// `0.0E0` for zero), strings as JSON prints them. `None` for text that is not JSON.
pub fn normal_json(text: &str) -> Option<String> {
    fn number(n: &serde_json::Number) -> String {
        let text = match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => ryu::Buffer::new().format(f).to_string(),
            _ => n.to_string(),
        };
        let negative = text.starts_with('-');
        let body = text.trim_start_matches('-');
        let (mantissa, exp) = match body.split_once(['e', 'E']) {
            Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
            None => (body, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits: String = format!("{int}{frac}");
        let lead = digits.len() - digits.trim_start_matches('0').len();
        let significant = digits.trim_start_matches('0').trim_end_matches('0');
        if significant.is_empty() {
            return "0.0E0".to_string();
        }
        let exponent = exp + int.len() as i32 - 1 - lead as i32;
        let (first, rest) = significant.split_at(1);
        format!("{}{first}.{}E{exponent}", if negative { "-" } else { "" }, if rest.is_empty() { "0" } else { rest })
    }
    sorted_json(text, &number)
}

/// `text` as JSON with object members sorted by name, no spaces, strings as JSON prints them
/// and numbers as `number` prints them; `None` for text that is not JSON.
fn sorted_json(text: &str, number: &dyn Fn(&serde_json::Number) -> String) -> Option<String> {
    fn walk(v: &serde_json::Value, out: &mut String, number: &dyn Fn(&serde_json::Number) -> String) {
        match v {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::Value::String((*k).clone()).to_string());
                    out.push(':');
                    walk(&map[*k], out, number);
                }
                out.push('}');
            }
            serde_json::Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    walk(item, out, number);
                }
                out.push(']');
            }
            serde_json::Value::Number(n) => out.push_str(&number(n)),
            other => out.push_str(&other.to_string()),
        }
    }
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    let mut out = String::new();
    walk(&value, &mut out, number);
    Some(out)
}

/// The key string of one key value per column, as the module doc defines it (what sources
/// and sinks compute in SQL), for keys the caller holds as text.
pub fn key_string(parts: &[Option<&str>]) -> String {
    parts
        .iter()
        .map(|p| match p {
            None => "N".to_string(),
            Some(t) => format!("{}:{t}", t.len()),
        })
        .collect()
}

/// A key string as people read it: `42`, or `(a, b)` for a key of several columns; `NULL`
/// for NULL parts.
pub fn display_key(key: &str) -> String {
    let mut parts = Vec::new();
    let mut rest = key;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('N') {
            parts.push("NULL".to_string());
            rest = r;
            continue;
        }
        let Some((len, r)) = rest.split_once(':') else { return key.to_string() };
        let Ok(len) = len.parse::<usize>() else { return key.to_string() };
        if r.len() < len || !r.is_char_boundary(len) {
            return key.to_string();
        }
        parts.push(r[..len].to_string());
        rest = &r[len..];
    }
    match parts.as_slice() {
        [one] => one.clone(),
        many => format!("({})", many.join(", ")),
    }
}

/// Canonical JSON for the comparison of documents: objects with sorted keys, numbers as the
/// shortest text of their value (`1.0` and `1` are one number in BigQuery's JSON), no spaces.
/// `None` for text that is not JSON.
pub fn canonical_json(text: &str) -> Option<String> {
    sorted_json(text, &|n| match (n.as_i64(), n.as_u64(), n.as_f64()) {
        (Some(i), _, _) => i.to_string(),
        (_, Some(u), _) => u.to_string(),
        (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => (f as i64).to_string(),
        (_, _, Some(f)) => f.to_string(),
        _ => n.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefix_coded_and_read_back() {
        assert_eq!(key_string(&[Some("42")]), "2:42");
        assert_eq!(key_string(&[Some("a:b"), None, Some("")]), "3:a:bN0:");
        assert_eq!(display_key("2:42"), "42");
        assert_eq!(display_key("3:a:bN0:"), "(a:b, NULL, )");
        assert_eq!(display_key("2:é"), "é");
    }

    #[test]
    fn the_normal_form_is_mariadbs_json_normalize() {
        // Each expected text is what MariaDB 10.11's JSON_NORMALIZE printed for the input.
        let cases = [
            (
                r#"{"b": 1.0, "a": [true, null, "x", 2.5, 10, -0, 1e20, 0.1]}"#,
                r#"{"a":[true,null,"x",2.5E0,1.0E1,0.0E0,1.0E20,1.0E-1],"b":1.0E0}"#,
            ),
            (
                r#"[0.30000000000000004, 1e-7, 123456.7, 1.5e300, -3, 100, 1234567890123]"#,
                "[3.0000000000000004E-1,1.0E-7,1.234567E5,1.5E300,-3.0E0,1.0E2,1.234567890123E12]",
            ),
            (r#"{"gift": true, "n": 7, "tags": ["a", 3]}"#, r#"{"gift":true,"n":7.0E0,"tags":["a",3.0E0]}"#),
            (r#"{"b":1,"B":2,"a":3,"é":4,"e":5}"#, r#"{"B":2.0E0,"a":3.0E0,"b":1.0E0,"e":5.0E0,"é":4.0E0}"#),
            ("null", "null"),
            (r#""just""#, r#""just""#),
        ];
        for (input, expected) in cases {
            assert_eq!(normal_json(input).as_deref(), Some(expected), "{input}");
        }
        assert_eq!(json_string("2:42", &[Some("[1]"), None]), "2:427:[1.0E0]N");
        assert_eq!(digest_hex("hello"), "5d41402abc4b2a7");
        assert_eq!(digest_value("5d41402abc4b2a7"), 419982666956583591);
        assert_eq!(bucket_of("x", 8), 1, "MOD(CONV(SUBSTRING(MD5('x'), 1, 8), 16, 10), 8) on MariaDB");
    }

    #[test]
    fn json_documents_compare_by_value_not_text() {
        assert_eq!(
            canonical_json(r#"{"b": 1.0, "a": [true, null, "x"]}"#),
            canonical_json(r#"{"a":[true,null,"x"],"b":1}"#)
        );
        assert_ne!(canonical_json(r#"{"a": 1}"#), canonical_json(r#"{"a": 2}"#));
        assert_eq!(canonical_json("null").as_deref(), Some("null"));
        assert_ne!(canonical_json("null"), canonical_json(r#""null""#));
        assert_eq!(canonical_json("not json"), None);
    }
}
