//! Logical types → BigQuery column types, column names → BigQuery column names, and values →
//! NDJSON for load jobs: the one place that knows BigQuery's types.

use std::sync::LazyLock;

use base64::Engine;
use chrono::{Datelike, NaiveDate, NaiveDateTime, Timelike};
use connector_framework::value::format_time;
use connector_framework::{LogicalType, TypeRow, Value};

/// Logical types → BigQuery types, as documented for users (`connector-run describe`,
/// docs/types.md); [`bigquery_type`] decides, and a test checks each row against it.
pub const BIGQUERY_TYPES: &[TypeRow] = &[
    TypeRow { from: "bool", to: "BOOL", note: "" },
    TypeRow { from: "int64", to: "INT64", note: "" },
    TypeRow { from: "uint64", to: "NUMERIC", note: "holds 0..18446744073709551615" },
    TypeRow { from: "float32", to: "FLOAT64", note: "" },
    TypeRow { from: "float64", to: "FLOAT64", note: "" },
    TypeRow {
        from: "decimal",
        to: "NUMERIC / BIGNUMERIC / STRING",
        note: "NUMERIC if p-s <= 29 and s <= 9, BIGNUMERIC if p-s <= 38 and s <= 38, else STRING (exact digits)",
    },
    TypeRow { from: "string", to: "STRING", note: "" },
    TypeRow { from: "bytes", to: "BYTES", note: "" },
    TypeRow { from: "date", to: "DATE", note: "" },
    TypeRow { from: "datetime", to: "DATETIME", note: "microseconds kept" },
    TypeRow { from: "timestamp", to: "TIMESTAMP", note: "microseconds kept" },
    TypeRow {
        from: "time",
        to: "STRING",
        note: "'-838:59:59'..'838:59:59' (BigQuery TIME is a time of day; column_types TIME for 00:00..23:59)",
    },
    TypeRow { from: "json", to: "JSON", note: "JSON null and SQL NULL stay apart" },
    TypeRow { from: "geometry", to: "STRING", note: "WKT; column_types GEOGRAPHY for longitude/latitude data" },
];

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
    }
}

/// The type a column has in staging tables: its target type, except JSON, which is staged as
/// its text and parsed by the MERGE (`PARSE_JSON`): a load file cannot tell a JSON `null`
/// document from SQL NULL.
pub fn staging_type(t: &LogicalType) -> &'static str {
    match t {
        LogicalType::Json => "STRING",
        other => bigquery_type(other),
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
/// (`ALTER COLUMN SET DATA TYPE`) without changing any value: exact types never widen into
/// FLOAT64, whose 53-bit mantissa would round them.
pub fn can_widen(from: &str, to: &str) -> bool {
    matches!(
        (canonical_type(from), canonical_type(to)),
        ("INT64", "NUMERIC") | ("INT64", "BIGNUMERIC") | ("NUMERIC", "BIGNUMERIC")
    )
}

/// Characters BigQuery's flexible column names take besides letters, marks and digits of any
/// script: connector punctuation, dashes, space and `&%=+:'<>#|`.
static FLEXIBLE: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"^[\p{L}\p{M}\p{N}\p{Pc}\p{Pd} &%=+:'<>#|]$").unwrap_or_else(|_| unreachable!("a valid pattern"))
});

/// Column name prefixes BigQuery reserves (case-insensitive).
const RESERVED_PREFIXES: &[&str] = &["_table_", "_file_", "_partition", "_row_timestamp", "__root__", "_colidentifier"];

/// The BigQuery name of a source column: the name itself wherever BigQuery's flexible column
/// names allow it. Documented mapping otherwise: every other character becomes `_`, a name
/// with a reserved prefix gets `c` in front, and names are cut at 300 characters.
pub fn column_name(name: &str) -> String {
    let mut out: String =
        name.chars().map(|c| if FLEXIBLE.is_match(c.encode_utf8(&mut [0; 4])) { c } else { '_' }).collect();
    if out.is_empty() {
        out.push('_');
    }
    let lower = out.to_lowercase();
    if RESERVED_PREFIXES.iter().any(|p| lower.starts_with(p)) {
        out.insert(0, 'c');
    }
    out.chars().take(300).collect()
}

/// Characters BigQuery table names take: letters, marks and digits of any script, connector
/// punctuation, dashes and spaces.
static TABLE_CHAR: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"^[\p{L}\p{M}\p{N}\p{Pc}\p{Pd}\p{Zs}]$").unwrap_or_else(|_| unreachable!("a valid pattern"))
});

/// The BigQuery table id for a target table name: the name itself wherever BigQuery allows it.
/// Documented mapping otherwise: every other character becomes `_`, and the id is cut at
/// 1,024 bytes.
pub fn table_id(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = if TABLE_CHAR.is_match(c.encode_utf8(&mut [0; 4])) { c } else { '_' };
        if out.len() + c.len_utf8() > 1024 {
            break;
        }
        out.push(c);
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// The name of a column in staging tables: ASCII letters, digits and `_` only plus a hash of
/// the exact name, so load files never depend on flexible column names and two names never
/// share one staging column.
pub fn staging_name(target: &str) -> String {
    let readable: String = target.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(40).collect();
    let hash = xxhash_rust::xxh3::xxh3_64(target.as_bytes()) & 0xffff_ffff;
    format!("c_{readable}_{hash:08x}")
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
        // Staged as text (see `staging_type`); the MERGE parses it, so JSON `null` stays a
        // JSON null.
        Value::Json(text) => encode_str(out, text),
    }
}

/// `YYYY-MM-DD`, written digit by digit into one stack buffer and appended at once: chrono's
/// `format` parses its pattern on every call, which cost more than the rest of a row's
/// encoding. Years outside 0..=9999 take chrono's path.
fn push_date(out: &mut Vec<u8>, d: &NaiveDate) {
    let mut text = [0u8; 10];
    if write_date(&mut text, d) {
        out.extend_from_slice(&text);
    } else {
        use std::io::Write;
        let _ = write!(out, "{}", d.format("%Y-%m-%d"));
    }
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` (always six fractional digits).
fn push_datetime(out: &mut Vec<u8>, t: &NaiveDateTime) {
    let mut text = *b"0000-00-00 00:00:00.000000";
    write_time(&mut text, t);
    if write_date(&mut text, &t.date()) {
        out.extend_from_slice(&text);
    } else {
        push_date(out, &t.date());
        out.extend_from_slice(&text[10..]);
    }
}

/// Writes `YYYY-MM-DD` into `text[..10]`; false for years outside 0..=9999.
#[inline]
fn write_date(text: &mut [u8], d: &NaiveDate) -> bool {
    let Ok(year @ 0..=9999) = u32::try_from(d.year()) else { return false };
    digits_2(&mut text[0..2], year / 100);
    digits_2(&mut text[2..4], year % 100);
    text[4] = b'-';
    digits_2(&mut text[5..7], d.month());
    text[7] = b'-';
    digits_2(&mut text[8..10], d.day());
    true
}

/// Writes the digits of ` HH:MM:SS.ffffff` into `text[10..26]`, whose separators the
/// caller's template holds.
#[inline]
fn write_time(text: &mut [u8; 26], t: &NaiveDateTime) {
    // A leap second (nanosecond >= 10^9) is shown by chrono as second 60.
    let (second, nanos) = match t.nanosecond() {
        n if n >= 1_000_000_000 => (t.second() + 1, n - 1_000_000_000),
        n => (t.second(), n),
    };
    let micros = nanos / 1000;
    digits_2(&mut text[11..13], t.hour());
    digits_2(&mut text[14..16], t.minute());
    digits_2(&mut text[17..19], second);
    digits_2(&mut text[20..22], micros / 10_000);
    digits_2(&mut text[22..24], micros / 100 % 100);
    digits_2(&mut text[24..26], micros % 100);
}

/// "00" to "99", so that a pair of digits is one copy rather than two divisions.
const DIGIT_PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// The last two decimal digits of `v`.
#[inline]
fn digits_2(two: &mut [u8], v: u32) {
    let at = (v % 100) as usize * 2;
    two.copy_from_slice(&DIGIT_PAIRS[at..at + 2]);
}

/// A JSON string literal.
///
/// Most text needs no escape at all: it is found clean eight bytes at a time and copied in one
/// piece. Text with a quote, a backslash or a control character goes through serde_json's
/// escaping, which is correct for every code point. (Bytes of multi-byte characters are never
/// escaped, so the scan can go by bytes.) Escaping in the same pass, eight bytes at a time or
/// byte by byte, was tried and measured slower than serde_json's table on JSON documents (a
/// quote every few bytes) and no faster on clean text.
pub fn encode_str(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
        return;
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// Whether any byte is below 0x20, a quote or a backslash.
fn needs_escape(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    let dirty = words.any(|w| word_needs_escape(u64::from_le_bytes(w.try_into().unwrap_or_default())));
    dirty || words.remainder().iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// [`needs_escape`] for eight bytes at once, exactly (the classic "has a byte less than n" and
/// "has a zero byte" tests, which have no false positives or negatives as a whole).
#[inline]
fn word_needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH != 0;
    has_zero(word ^ (ONES * u64::from(b'"')))
        || has_zero(word ^ (ONES * u64::from(b'\\')))
        || word.wrapping_sub(ONES * 0x20) & !word & HIGH != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_escapes_them() {
        let mut cases: Vec<String> = vec![
            String::new(),
            "plain text longer than a word".into(),
            "ünïcödé — text 表 😀 mixed with \"quotes\" and \\ backslashes".into(),
            "{\"n\": 1, \"tags\": [\"a\", 3], \"gift\": true}".into(),
            "\u{7f}\u{80}\u{ff}".into(),
        ];
        // Every byte value below 0x80 at every offset of a word, and runs of them.
        for b in 0u8..0x80 {
            for at in 0..10 {
                let mut t = "abcdefghij".to_string();
                t.insert(at, char::from(b));
                cases.push(t);
            }
            cases.push(char::from(b).to_string().repeat(17));
        }
        // Escapes side by side, across word boundaries, among multi-byte characters: strings
        // drawn from a small alphabet by a fixed generator, of every length up to 40.
        let alphabet = ['a', '"', '\\', '\n', '\u{1}', '\u{1f}', ' ', 'é', '表', '😀', '\u{7f}'];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..=40 {
            for _ in 0..50 {
                let text: String = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        alphabet[(seed % alphabet.len() as u64) as usize]
                    })
                    .collect();
                cases.push(text);
            }
        }
        for case in &cases {
            let mut ours = Vec::new();
            encode_str(&mut ours, case);
            assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(case).unwrap(), "{case:?}");
        }
    }

    #[test]
    fn table_ids_keep_what_bigquery_holds_and_map_the_rest() {
        assert_eq!(table_id("orders"), "orders");
        assert_eq!(table_id("order items"), "order items");
        assert_eq!(table_id("a-b"), "a-b");
        assert_eq!(table_id("Δέλτα_表"), "Δέλτα_表");
        assert_eq!(table_id("a$b"), "a_b");
        assert_eq!(table_id("a.b"), "a_b");
        assert_eq!(table_id(""), "_");
        let long = "é".repeat(600);
        assert_eq!(table_id(&long).len(), 1024, "cut at 1,024 bytes, on a character boundary");
    }

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
        assert_eq!(enc(Value::Json("{\"a\": [1, \"é\"]}".into())), "\"{\\\"a\\\": [1, \\\"é\\\"]}\"");
        assert_eq!(enc(Value::Json("null".into())), "\"null\"", "a JSON null document is not SQL NULL");
        assert_eq!(enc(Value::Json("{\"a\":\r\n 1}".into())), "\"{\\\"a\\\":\\r\\n 1}\"", "one line per row");
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
        for day in [far, NaiveDate::from_ymd_opt(-1, 12, 31).unwrap()] {
            let t = day.and_hms_micro_opt(23, 59, 58, 123_456).unwrap();
            assert_eq!(enc(Value::DateTime(t)), format!("\"{}\"", t.format("%Y-%m-%d %H:%M:%S%.6f")));
        }
        // chrono's leap second (a nanosecond count past 10^9) is second 60.
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31).unwrap().and_hms_micro_opt(23, 59, 59, 1_500_000).unwrap();
        assert_eq!(enc(Value::DateTime(leap)), "\"2016-12-31 23:59:60.500000\"");
        assert_eq!(enc(Value::DateTime(leap)), format!("\"{}\"", leap.format("%Y-%m-%d %H:%M:%S%.6f")));
    }

    #[test]
    fn column_names_are_kept_where_bigquery_allows_them() {
        for kept in ["order-id", "1st", "ok_name", "my col", "Δ", "名称", "a&b", "x:y"] {
            assert_eq!(column_name(kept), kept);
        }
        assert_eq!(column_name("a/b\"c"), "a_b_c");
        assert_eq!(column_name("_PARTITIONTIME"), "c_PARTITIONTIME");
        assert_eq!(column_name(&"x".repeat(400)).len(), 300);
        assert_ne!(staging_name("a-b"), staging_name("a_b"), "distinct names stay distinct in staging");
        assert!(staging_name("my col").chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    }

    #[test]
    fn exact_types_never_widen_into_floating_point() {
        assert!(can_widen("INT64", "NUMERIC") && can_widen("NUMERIC", "BIGNUMERIC"));
        assert!(
            !can_widen("INT64", "FLOAT64") && !can_widen("NUMERIC", "FLOAT64") && !can_widen("BIGNUMERIC", "FLOAT64")
        );
    }

    #[test]
    fn the_documented_mapping_is_the_one_in_code() {
        use LogicalType as L;
        let all = [
            ("bool", L::Bool),
            ("int64", L::Int64),
            ("uint64", L::UInt64),
            ("float32", L::Float32),
            ("float64", L::Float64),
            ("string", L::String),
            ("bytes", L::Bytes),
            ("date", L::Date),
            ("datetime", L::DateTime { fsp: 6 }),
            ("timestamp", L::Timestamp { fsp: 6 }),
            ("time", L::Time { fsp: 0 }),
            ("json", L::Json),
            ("geometry", L::Geometry),
        ];
        for (name, logical) in all {
            let row = BIGQUERY_TYPES.iter().find(|r| r.from == name).unwrap();
            assert_eq!(row.to, bigquery_type(&logical), "{name}");
        }
        assert!(BIGQUERY_TYPES.iter().any(|r| r.from == "decimal"));
    }
}
