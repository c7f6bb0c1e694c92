//! Logical types → BigQuery column types, and values → NDJSON for load jobs.

use base64::Engine;
use chrono::{Datelike, NaiveDate, NaiveDateTime, Timelike};
use connector_framework::value::format_time;
use connector_framework::{LogicalType, Value};

/// The BigQuery type that holds every value of a logical type exactly.
pub fn bigquery_type(t: &LogicalType) -> &'static str {
    match t {
        LogicalType::Bool => "BOOL",
        LogicalType::Int64 => "INT64",
        // 0..18446744073709551615 does not fit INT64; NUMERIC holds 29 integer digits.
        LogicalType::UInt64 => "NUMERIC",
        LogicalType::Float32 | LogicalType::Float64 => "FLOAT64",
        LogicalType::Decimal { precision, scale } => {
            let int_digits = precision.saturating_sub(*scale);
            if int_digits <= 29 && *scale <= 9 {
                "NUMERIC"
            } else if int_digits <= 38 && *scale <= 38 {
                "BIGNUMERIC"
            } else {
                "STRING"
            }
        }
        LogicalType::String => "STRING",
        LogicalType::Bytes => "BYTES",
        LogicalType::Date => "DATE",
        LogicalType::DateTime { .. } => "DATETIME",
        LogicalType::Timestamp { .. } => "TIMESTAMP",
        // MySQL TIME spans -838:59:59..838:59:59; BigQuery TIME is a time of day.
        LogicalType::Time { .. } => "STRING",
        LogicalType::Json => "JSON",
        LogicalType::Geometry => "STRING",
        _ => "STRING",
    }
}

/// BigQuery reports some types by their legacy names; compare through this.
pub fn canonical_type(t: &str) -> &str {
    match t {
        "INTEGER" => "INT64",
        "FLOAT" => "FLOAT64",
        "BOOLEAN" => "BOOL",
        "BIGDECIMAL" => "BIGNUMERIC",
        "DECIMAL" => "NUMERIC",
        other => other,
    }
}

/// Whether BigQuery can widen a column from `from` to `to` in place
/// (`ALTER COLUMN SET DATA TYPE`).
pub fn can_widen(from: &str, to: &str) -> bool {
    matches!(
        (canonical_type(from), canonical_type(to)),
        ("INT64", "NUMERIC")
            | ("INT64", "BIGNUMERIC")
            | ("INT64", "FLOAT64")
            | ("NUMERIC", "BIGNUMERIC")
            | ("NUMERIC", "FLOAT64")
    )
}

/// A column name BigQuery accepts: letters, digits and underscores, not starting with a digit.
pub fn column_name(name: &str) -> String {
    let mut out: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// Appends `value` of a column of type `logical` to `out` as the JSON value a load job
/// expects for [`bigquery_type`]`(logical)`.
pub fn encode_value(out: &mut Vec<u8>, value: &Value, logical: &LogicalType) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
        Value::UInt(u) => {
            out.push(b'"');
            out.extend_from_slice(itoa::Buffer::new().format(*u).as_bytes());
            out.push(b'"');
        }
        Value::Float(f) if f.is_nan() => out.extend_from_slice(b"\"NaN\""),
        Value::Float(f) if f.is_infinite() => {
            out.extend_from_slice(if *f > 0.0 { b"\"Infinity\"" } else { b"\"-Infinity\"" })
        }
        Value::Float(f) => out.extend_from_slice(ryu::Buffer::new().format_finite(*f).as_bytes()),
        Value::Decimal(s) | Value::Geometry(s) | Value::String(s) => encode_str(out, s),
        Value::Bytes(b) => {
            out.push(b'"');
            out.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(b).as_bytes());
            out.push(b'"');
        }
        Value::Date(d) => {
            out.push(b'"');
            push_date(out, d);
            out.push(b'"');
        }
        Value::DateTime(t) => {
            out.push(b'"');
            push_datetime(out, t);
            out.push(b'"');
        }
        Value::Timestamp(t) => {
            out.push(b'"');
            push_datetime(out, &t.naive_utc());
            out.extend_from_slice(b" UTC\"");
        }
        Value::Time(micros) => {
            let fsp = if let LogicalType::Time { fsp } = logical { *fsp } else { 6 };
            encode_str(out, &format_time(*micros, fsp))
        }
        Value::Json(text) => {
            // A JSON column takes the document itself; check it so one bad value cannot
            // break the line.
            // A document that is itself a string goes as JSON text inside a string, which
            // BigQuery parses; any other document goes as itself.
            match serde_json::from_str::<&serde_json::value::RawValue>(text) {
                Ok(raw) if !raw.get().starts_with('"') => {
                    // A load file holds one row per line. In valid JSON a raw line break can
                    // only be whitespace between tokens (inside strings it is escaped), so it
                    // becomes a space.
                    let start = out.len();
                    out.extend_from_slice(raw.get().as_bytes());
                    for b in &mut out[start..] {
                        if *b == b'\n' || *b == b'\r' {
                            *b = b' ';
                        }
                    }
                }
                _ => encode_str(out, text),
            }
        }
        _ => out.extend_from_slice(b"null"),
    }
}

/// `YYYY-MM-DD`, written digit by digit: chrono's `format` parses its pattern on every call,
/// which cost more than the rest of a row's encoding. Years outside 0..=9999 take chrono's path.
fn push_date(out: &mut Vec<u8>, d: &NaiveDate) {
    let year = d.year();
    if !(0..=9999).contains(&year) {
        use std::io::Write;
        let _ = write!(out, "{}", d.format("%Y-%m-%d"));
        return;
    }
    let year = year as u32;
    push_2(out, year / 100);
    push_2(out, year % 100);
    out.push(b'-');
    push_2(out, d.month());
    out.push(b'-');
    push_2(out, d.day());
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` (always six fractional digits).
fn push_datetime(out: &mut Vec<u8>, t: &NaiveDateTime) {
    push_date(out, &t.date());
    out.push(b' ');
    push_2(out, t.hour());
    out.push(b':');
    push_2(out, t.minute());
    out.push(b':');
    // A leap second (nanosecond >= 10^9) is shown by chrono as second 60.
    let (second, nanos) = match t.nanosecond() {
        n if n >= 1_000_000_000 => (t.second() + 1, n - 1_000_000_000),
        n => (t.second(), n),
    };
    push_2(out, second);
    out.push(b'.');
    let micros = nanos / 1000;
    push_2(out, micros / 10_000);
    push_2(out, micros / 100 % 100);
    push_2(out, micros % 100);
}

fn push_2(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&[b'0' + (v / 10 % 10) as u8, b'0' + (v % 10) as u8]);
}

/// A JSON string literal.
pub fn encode_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping is correct for every code point; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn enc(v: Value) -> String {
        let mut out = Vec::new();
        encode_value(&mut out, &v, &LogicalType::Time { fsp: 6 });
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn decimals_choose_the_narrowest_exact_type() {
        let d = |p, s| bigquery_type(&LogicalType::Decimal { precision: p, scale: s });
        assert_eq!(d(10, 2), "NUMERIC");
        assert_eq!(d(38, 9), "NUMERIC");
        assert_eq!(d(20, 12), "BIGNUMERIC");
        assert_eq!(d(65, 30), "BIGNUMERIC");
        assert_eq!(d(65, 0), "STRING");
        assert_eq!(bigquery_type(&LogicalType::UInt64), "NUMERIC");
    }

    #[test]
    fn encodes_values_exactly() {
        assert_eq!(enc(Value::UInt(u64::MAX)), "\"18446744073709551615\"");
        assert_eq!(enc(Value::Int(i64::MIN)), "-9223372036854775808");
        assert_eq!(enc(Value::Decimal("-0.000000001".into())), "\"-0.000000001\"");
        assert_eq!(enc(Value::Bytes(vec![0, 1, 2, 255])), "\"AAEC/w==\"");
        assert_eq!(enc(Value::String("a\"\n\u{1F600}".into())), "\"a\\\"\\n\u{1F600}\"");
        let dt = NaiveDate::from_ymd_opt(2024, 1, 2).unwrap().and_hms_micro_opt(3, 4, 5, 6).unwrap();
        assert_eq!(enc(Value::DateTime(dt)), "\"2024-01-02 03:04:05.000006\"");
        assert_eq!(enc(Value::Timestamp(Utc.from_utc_datetime(&dt))), "\"2024-01-02 03:04:05.000006 UTC\"");
        assert_eq!(enc(Value::Time(-3_020_399_000_000)), "\"-838:59:59.000000\"");
        assert_eq!(enc(Value::Json("{\"a\": [1, \"é\"]}".into())), "{\"a\": [1, \"é\"]}");
        assert_eq!(
            enc(Value::Json("{\"a\":\r\n [1,\n 2], \"b\": \"x\\ny\"}".into())),
            "{\"a\":   [1,  2], \"b\": \"x\\ny\"}"
        );
        assert_eq!(enc(Value::Float(0.1)), "0.1");
        let mut out = Vec::new();
        encode_value(&mut out, &Value::Time(-3_020_399_000_000), &LogicalType::Time { fsp: 0 });
        assert_eq!(out, b"\"-838:59:59\"");
        assert_eq!(enc(Value::Null), "null");
    }

    #[test]
    fn dates_and_times_match_chronos_formatting() {
        let mut day = NaiveDate::from_ymd_opt(1, 1, 1).unwrap();
        let last = NaiveDate::from_ymd_opt(9999, 12, 31).unwrap();
        let mut i = 0u32;
        while day < last {
            let t = day.and_hms_micro_opt(i % 24, (i * 7) % 60, (i * 13) % 60, (i * 7919) % 1_000_000).unwrap();
            for v in [Value::Date(day), Value::DateTime(t), Value::Timestamp(Utc.from_utc_datetime(&t))] {
                let want = match &v {
                    Value::Date(d) => format!("\"{}\"", d.format("%Y-%m-%d")),
                    Value::DateTime(t) => format!("\"{}\"", t.format("%Y-%m-%d %H:%M:%S%.6f")),
                    Value::Timestamp(t) => format!("\"{}\"", t.format("%Y-%m-%d %H:%M:%S%.6f UTC")),
                    _ => unreachable!(),
                };
                assert_eq!(enc(v), want);
            }
            day += chrono::TimeDelta::days(37);
            i += 1;
        }
        let far = NaiveDate::from_ymd_opt(10000, 1, 1).unwrap();
        assert_eq!(enc(Value::Date(far)), "\"+10000-01-01\"");
    }

    #[test]
    fn column_names_are_made_legal() {
        assert_eq!(column_name("order-id"), "order_id");
        assert_eq!(column_name("1st"), "_1st");
        assert_eq!(column_name("ok_name"), "ok_name");
    }
}
