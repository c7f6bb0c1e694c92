//! PostgreSQL column types → logical types, and the text of `COPY ... TO STDOUT` → [`Value`]s.
//!
//! This is the one place that knows PostgreSQL's types. Each column gets a [`Decoder`] (and
//! the SELECT expression that feeds it) once per read, so the per-value work is one match.
//! Values are read in their text forms, which are exact for every type: numerics keep their
//! digits, floats are printed to round-trip (`extra_float_digits`), times keep microseconds.

use chrono::{NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use connector_framework::{Column, ConnectorError, LogicalType, Result, TypeRow, Value};

use crate::config::OutOfRangePolicy;

/// PostgreSQL types → logical types, as documented for users (`connector-run describe
/// postgres` joins these rows with each sink's logical → target rows; docs/types.md). The code
/// that decides is [`map_column`]; a test checks that every row's logical type is one it maps to.
pub const POSTGRES_TYPES: &[TypeRow] = &[
    TypeRow { from: "smallint, integer, bigint (and serials), oid", to: "int64", note: "" },
    TypeRow {
        from: "numeric(p,s)",
        to: "decimal",
        note: "digits kept as text; NaN and Infinity: NULL, counted (out_of_range)",
    },
    TypeRow {
        from: "numeric (no precision)",
        to: "decimal",
        note: "as decimal(76,38) (BIGNUMERIC); a value with more than 38 integer or fractional digits: NULL, counted (out_of_range)",
    },
    TypeRow { from: "real", to: "float32", note: "NaN, Infinity and -0 kept" },
    TypeRow { from: "double precision", to: "float64", note: "NaN, Infinity and -0 kept" },
    TypeRow { from: "money", to: "decimal", note: "as numeric (the server's lc_monetary decides the scale)" },
    TypeRow { from: "boolean", to: "bool", note: "" },
    TypeRow {
        from: "text, varchar(n), char(n), name, citext",
        to: "string",
        note: "char(n) keeps its padding, as PostgreSQL returns it",
    },
    TypeRow { from: "bytea", to: "bytes", note: "" },
    TypeRow {
        from: "date",
        to: "date",
        note: "BC dates, years after 9999 and ±infinity: NULL, counted (out_of_range)",
    },
    TypeRow { from: "timestamp(0..6)", to: "datetime", note: "wall clock, no zone; out-of-range as for date" },
    TypeRow { from: "timestamptz(0..6)", to: "timestamp", note: "read in UTC; out-of-range as for date" },
    TypeRow { from: "time(0..6)", to: "time", note: "00:00:00..24:00:00" },
    TypeRow {
        from: "timetz, interval",
        to: "string",
        note: "'12:00:00+02'; intervals in ISO 8601 ('P1Y2M3DT4H5M6.5S')",
    },
    TypeRow {
        from: "uuid, inet, cidr, macaddr, macaddr8, bit(n), varbit, xml, enums, tsvector, ranges, geometric and other types",
        to: "string",
        note: "the type's text form",
    },
    TypeRow { from: "json, jsonb", to: "json", note: "JSON null is kept apart from SQL NULL" },
    TypeRow {
        from: "arrays (of any type, any dimension), composite types",
        to: "json",
        note: "to_json: [1,2], [[\"a\"]], {\"f\": 1}; NULL elements kept",
    },
    TypeRow { from: "domains", to: "as their base type", note: "" },
];

/// How to turn one column's COPY text into a [`Value`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    Bool,
    Int,
    Float,
    /// A numeric whose declared precision guarantees it fits its target type (NaN does not).
    Numeric,
    /// An unconstrained numeric: digits checked against BIGNUMERIC's 38 + 38.
    NumericUnbounded,
    Text,
    Bytea,
    Date,
    DateTime,
    /// Selected `AT TIME ZONE 'UTC'`: a UTC wall clock.
    Timestamp,
    Time,
    Json,
}

/// What `pg_catalog` says about a column (domains already resolved to their base type).
#[derive(Debug, Clone)]
pub struct ColumnInfo {
    pub name: String,
    /// The declared type, as `format_type` prints it: `numeric(12,2)`, `shop_status`, `price`.
    pub declared: String,
    /// The base type's `typname`: `int4`, `numeric`, `_int4` (an array), …
    pub base: String,
    /// The base type's `typtype` (`b` base, `e` enum, `c` composite, `r` range, …).
    pub typtype: String,
    /// The base type's `typcategory` (`A` for arrays).
    pub category: String,
    /// The type modifier that applies (the column's, else the innermost domain's).
    pub typmod: i32,
    pub nullable: bool,
}

/// The logical type of a column.
pub fn map_column(info: &ColumnInfo) -> LogicalType {
    let fsp = if info.typmod >= 0 { info.typmod.min(6) as u8 } else { 6 };
    if info.category == "A" || info.typtype == "c" {
        return LogicalType::Json;
    }
    if info.typtype == "e" {
        return LogicalType::String;
    }
    match info.base.as_str() {
        "int2" | "int4" | "int8" | "oid" => LogicalType::Int64,
        "numeric" if info.typmod < 0 => UNBOUNDED_NUMERIC,
        "numeric" => {
            let (precision, scale) = numeric_typmod(info.typmod);
            LogicalType::Decimal { precision, scale }
        }
        "money" => LogicalType::Decimal { precision: 19, scale: 2 },
        "float4" => LogicalType::Float32,
        "float8" => LogicalType::Float64,
        "bool" => LogicalType::Bool,
        "bytea" => LogicalType::Bytes,
        "date" => LogicalType::Date,
        "timestamp" => LogicalType::DateTime { fsp },
        "timestamptz" => LogicalType::Timestamp { fsp },
        "time" => LogicalType::Time { fsp },
        "json" | "jsonb" => LogicalType::Json,
        _ => LogicalType::String,
    }
}

/// An unconstrained `numeric`: BIGNUMERIC's digits.
const UNBOUNDED_NUMERIC: LogicalType = LogicalType::Decimal { precision: 76, scale: 38 };

/// How a discovered column is read: its decoder, and the SELECT expression that feeds it
/// (`None`: the column itself, whose text COPY sends as it is). Decided by the logical type
/// and the declared type alone, so that a read needs nothing but the schema the runner hands
/// it; expressions only where the text must change, as they cost the server time per row.
pub fn read_plan(column: &Column) -> (Decoder, Option<String>) {
    let q = quote_ident(&column.name);
    let declared = column.source_type.as_str();
    let plain_numeric = declared == "numeric" || declared.starts_with("numeric(");
    // A domain's text is its base type's; money's is in the server's locale ('$1,234.50').
    let as_numeric = (!plain_numeric).then(|| format!("{q}::numeric"));
    match &column.logical {
        LogicalType::Bool => (Decoder::Bool, None),
        LogicalType::Int64 | LogicalType::UInt64 => (Decoder::Int, None),
        LogicalType::Float32 | LogicalType::Float64 => (Decoder::Float, None),
        d if *d == UNBOUNDED_NUMERIC => (Decoder::NumericUnbounded, as_numeric),
        LogicalType::Decimal { .. } => (Decoder::Numeric, as_numeric),
        LogicalType::String | LogicalType::Geometry => (Decoder::Text, None),
        LogicalType::Bytes => (Decoder::Bytea, None),
        LogicalType::Date => (Decoder::Date, None),
        LogicalType::DateTime { .. } => (Decoder::DateTime, None),
        LogicalType::Timestamp { .. } => (Decoder::Timestamp, Some(format!("{q} AT TIME ZONE 'UTC'"))),
        LogicalType::Time { .. } => (Decoder::Time, None),
        // json and jsonb as they are; arrays, composites and domains become JSON on the server.
        LogicalType::Json if declared == "json" || declared == "jsonb" => (Decoder::Json, None),
        LogicalType::Json => (Decoder::Json, Some(format!("to_json({q})"))),
    }
}

/// `numeric(p,s)`'s precision and scale from its type modifier, as logical decimal digits: a
/// negative scale (PostgreSQL 15: rounded to tens, hundreds) adds integer digits, a scale
/// larger than the precision (0.00012) widens the precision. Beyond 255 digits the target
/// holds them as text anyway.
fn numeric_typmod(typmod: i32) -> (u8, u8) {
    let precision = ((typmod - 4) >> 16) & 0xffff;
    let scale = (typmod - 4) & 0x7ff;
    let scale = if scale & 0x400 != 0 { scale - 0x800 } else { scale };
    let (precision, scale) = if scale < 0 { (precision - scale, 0) } else { (precision.max(scale), scale) };
    (precision.clamp(1, 255) as u8, scale.clamp(0, 255) as u8)
}

/// `"name"`, with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'`, with embedded quotes doubled (standard_conforming_strings is on in every session).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Why a value was written as NULL: the report's words (`ReadSummary::nulled_values`).
pub const OUT_OF_RANGE_DATES: &str = "dates outside 0001-01-01..9999-12-31 (BC, infinity, year > 9999)";
pub const NUMERIC_NOT_A_NUMBER: &str = "numeric NaN or Infinity";
pub const NUMERIC_BEYOND_BIGNUMERIC: &str = "numeric beyond BIGNUMERIC (more than 38 integer or fractional digits)";

/// Per-read context of decoding: the out-of-range policy and its counts.
#[derive(Debug)]
pub struct Decoding<'a> {
    pub policy: OutOfRangePolicy,
    pub table: &'a str,
    pub nulled: std::collections::BTreeMap<String, u64>,
}

impl Decoding<'_> {
    /// A value BigQuery cannot hold: NULL and counted, or the table fails.
    fn out_of_range(&mut self, why: &'static str, column: &Column, text: &str) -> Result<Value> {
        match self.policy {
            OutOfRangePolicy::Null => {
                *self.nulled.entry(why.to_string()).or_default() += 1;
                Ok(Value::Null)
            }
            OutOfRangePolicy::Fail => Err(ConnectorError::permanent(format!(
                "{}: column `{}` ({}) holds '{text}', which BigQuery cannot hold ({why}); set out_of_range to \
                 \"null\" to write NULL and count such values",
                self.table, column.name, column.source_type
            ))),
        }
    }

    /// The value of one field's text (`None`: SQL NULL).
    pub fn decode(&mut self, decoder: Decoder, text: Option<&str>, column: &Column) -> Result<Value> {
        let Some(text) = text else { return Ok(Value::Null) };
        let bad = |what: &str| {
            ConnectorError::permanent(format!(
                "{}: column `{}` ({}): cannot read '{text}' as {what}",
                self.table, column.name, column.source_type
            ))
        };
        Ok(match decoder {
            Decoder::Bool => match text {
                "t" => Value::Bool(true),
                "f" => Value::Bool(false),
                _ => return Err(bad("a boolean")),
            },
            Decoder::Int => Value::Int(text.parse().map_err(|_| bad("an integer"))?),
            // "NaN", "Infinity", "-Infinity" and "-0" parse as themselves.
            Decoder::Float => Value::Float(text.parse().map_err(|_| bad("a float"))?),
            Decoder::Numeric => match text {
                "NaN" | "Infinity" | "-Infinity" => return self.out_of_range(NUMERIC_NOT_A_NUMBER, column, text),
                _ => Value::Decimal(text.to_string()),
            },
            Decoder::NumericUnbounded => match text {
                "NaN" | "Infinity" | "-Infinity" => return self.out_of_range(NUMERIC_NOT_A_NUMBER, column, text),
                _ => match fit_bignumeric(text) {
                    Some(digits) => Value::Decimal(digits),
                    None => return self.out_of_range(NUMERIC_BEYOND_BIGNUMERIC, column, text),
                },
            },
            Decoder::Text => Value::String(text.to_string()),
            Decoder::Json => Value::Json(text.to_string()),
            Decoder::Bytea => Value::Bytes(parse_bytea(text).ok_or_else(|| bad("bytea (hex)"))?),
            Decoder::Date => match parse_date(text) {
                Some(Ok(d)) => Value::Date(d),
                Some(Err(())) => return self.out_of_range(OUT_OF_RANGE_DATES, column, text),
                None => return Err(bad("a date")),
            },
            Decoder::DateTime | Decoder::Timestamp => match parse_datetime(text) {
                Some(Ok(t)) if decoder == Decoder::Timestamp => Value::Timestamp(Utc.from_utc_datetime(&t)),
                Some(Ok(t)) => Value::DateTime(t),
                Some(Err(())) => return self.out_of_range(OUT_OF_RANGE_DATES, column, text),
                None => return Err(bad("a timestamp")),
            },
            Decoder::Time => Value::Time(parse_time(text).ok_or_else(|| bad("a time"))?),
        })
    }
}

/// The digits of an unconstrained numeric when BIGNUMERIC holds them exactly (at most 38
/// integer digits, at most 38 fractional ones once trailing zeros are dropped).
fn fit_bignumeric(text: &str) -> Option<String> {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let int_digits = int.trim_start_matches('0').len();
    let frac = frac.trim_end_matches('0');
    if int_digits > 38 || frac.len() > 38 {
        return None;
    }
    if unsigned.split_once('.').map_or(0, |(_, f)| f.len()) <= 38 {
        return Some(text.to_string());
    }
    // Trailing zeros beyond 38 places: the same number, written within BIGNUMERIC's scale.
    let sign = if text.starts_with('-') { "-" } else { "" };
    Some(if frac.is_empty() { format!("{sign}{int}") } else { format!("{sign}{int}.{frac}") })
}

/// `\x0a0b` → bytes.
fn parse_bytea(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    hex.chunks_exact(2).map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?)).collect()
}

/// BigQuery's DATE, DATETIME and TIMESTAMP years.
fn in_bigquery_range(year: i32) -> bool {
    (1..=9999).contains(&year)
}

/// The number in ASCII digits `b` (at most 9 of them).
fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 9 {
        return None;
    }
    b.iter().try_fold(0u32, |n, &c| c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0')))
}

/// Whether PostgreSQL's text is a date (or timestamp) BigQuery cannot hold by its form alone:
/// BC, or ±infinity.
fn never_in_range(text: &str) -> bool {
    text.ends_with(" BC") || text == "infinity" || text == "-infinity"
}

/// `2024-01-31` (`Some(Err)` for what BigQuery cannot hold: BC, year > 9999, ±infinity;
/// `None` for text that is no date).
fn parse_date(text: &str) -> Option<std::result::Result<NaiveDate, ()>> {
    if never_in_range(text) {
        return Some(Err(()));
    }
    let b = text.as_bytes();
    // Years of five or more digits (PostgreSQL goes to 5874897) come before the first '-'.
    let dash = memchr::memchr(b'-', b)?;
    if b.len() != dash + 6 || b[dash + 3] != b'-' {
        return None;
    }
    let year = digits(&b[..dash])?;
    if !in_bigquery_range(i32::try_from(year).ok()?) {
        return Some(Err(()));
    }
    NaiveDate::from_ymd_opt(year as i32, digits(&b[dash + 1..dash + 3])?, digits(&b[dash + 4..])?).map(Ok)
}

/// `2024-01-31 12:34:56.123456`, as [`parse_date`] says for the date part.
pub(crate) fn parse_datetime(text: &str) -> Option<std::result::Result<NaiveDateTime, ()>> {
    if never_in_range(text) {
        return Some(Err(()));
    }
    let space = memchr::memchr(b' ', text.as_bytes())?;
    let date = match parse_date(&text[..space])? {
        Ok(d) => d,
        Err(()) => return Some(Err(())),
    };
    let micros = parse_time(&text[space + 1..])?;
    let time = NaiveTime::from_num_seconds_from_midnight_opt(
        u32::try_from(micros / 1_000_000).ok()?,
        u32::try_from(micros % 1_000_000).ok()? * 1000,
    )?;
    Some(Ok(date.and_time(time)))
}

/// `HH:MM:SS[.ffffff]` → microseconds (PostgreSQL's time runs to 24:00:00).
fn parse_time(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (h, m, s) = (digits(&b[..2])?, digits(&b[3..5])?, digits(&b[6..8])?);
    let micros = match &b[8..] {
        [] => 0,
        [b'.', frac @ ..] if (1..=6).contains(&frac.len()) => digits(frac)? * 10u32.pow(6 - frac.len() as u32),
        _ => return None,
    };
    Some((i64::from(h * 3600 + m * 60 + s)) * 1_000_000 + i64::from(micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(base: &str, typmod: i32) -> ColumnInfo {
        ColumnInfo {
            name: "c".into(),
            declared: base.into(),
            base: base.into(),
            typtype: "b".into(),
            category: "N".into(),
            typmod,
            nullable: true,
        }
    }

    #[test]
    fn every_documented_logical_type_is_one_the_mapping_produces() {
        let produced: Vec<String> = [
            "int4",
            "numeric",
            "float4",
            "float8",
            "bool",
            "text",
            "bytea",
            "date",
            "timestamp",
            "timestamptz",
            "time",
            "json",
            "uuid",
        ]
        .iter()
        .map(|b| {
            // The documented names: the serde tag, without its inner underscore.
            serde_json::to_value(map_column(&info(b, -1))).unwrap()["type"].as_str().unwrap().replace('_', "")
        })
        .collect();
        for row in POSTGRES_TYPES {
            let to = row.to;
            assert!(to == "as their base type" || produced.iter().any(|p| p == to), "{} → {to}", row.from);
        }
    }

    #[test]
    fn numeric_type_modifiers_decode_to_digits() {
        // numeric(12,2): ((12 << 16) | 2) + 4
        assert_eq!(numeric_typmod((12 << 16 | 2) + 4), (12, 2));
        // numeric(5,-2) (PostgreSQL 15): 7 integer digits
        assert_eq!(numeric_typmod((5 << 16 | (0x800 - 2)) + 4), (7, 0));
        // numeric(2,5): 0.00012
        assert_eq!(numeric_typmod((2 << 16 | 5) + 4), (5, 5));
        assert_eq!(numeric_typmod((1000 << 16 | 500) + 4), (255, 255));
    }

    #[test]
    fn unbounded_numerics_fit_bignumeric_or_are_refused() {
        assert_eq!(fit_bignumeric("-12.50").as_deref(), Some("-12.50"));
        let long_zeros = format!("1.{}", "0".repeat(50));
        assert_eq!(fit_bignumeric(&long_zeros).as_deref(), Some("1"));
        assert_eq!(fit_bignumeric(&format!("0.{}1", "0".repeat(38))), None);
        assert_eq!(fit_bignumeric(&"9".repeat(39)), None);
        assert!(fit_bignumeric(&"9".repeat(38)).is_some());
    }

    #[test]
    fn dates_and_times_parse_with_their_edges() {
        assert_eq!(parse_date("2024-02-29"), Some(Ok(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap())));
        assert_eq!(parse_date("0044-03-15 BC"), Some(Err(())));
        assert_eq!(parse_date("10000-01-01"), Some(Err(())));
        assert_eq!(parse_date("infinity"), Some(Err(())));
        assert_eq!(parse_date("nonsense"), None);
        assert_eq!(parse_time("24:00:00"), Some(86_400_000_000));
        assert_eq!(parse_time("01:02:03.5"), Some(3_723_500_000));
        let t = parse_datetime("2024-01-31 23:59:59.999999").unwrap().unwrap();
        assert_eq!(t.to_string(), "2024-01-31 23:59:59.999999");
        assert_eq!(parse_bytea("\\x00ff0A"), Some(vec![0, 255, 10]));
        assert_eq!(parse_bytea("\\x0"), None);
    }
}
