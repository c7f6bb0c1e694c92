//! MySQL / MariaDB column types → logical types, and wire values → [`Value`]s.
//!
//! This is the one place that knows MySQL's types. Each column gets a [`Decoder`] once per
//! read, so the per-value work is a single match.

use chrono::{NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use connector_framework::{Column, ConnectorError, LogicalType, Result, TypeRow, Value};
use mysql_async::Value as Wire;

/// MySQL / MariaDB types → logical types, as documented for users (`connector-run describe
/// mysql` joins these rows with each sink's logical → target rows; docs/types.md). The code
/// that decides is [`map_column`]; a test checks that every row's logical type is one it maps to.
pub const MYSQL_TYPES: &[TypeRow] = &[
    TypeRow { from: "TINYINT..INT (signed or unsigned), YEAR", to: "int64", note: "" },
    TypeRow {
        from: "TINYINT(1) / BOOL",
        to: "int64",
        note: "MySQL stores any -128..127 there; column_types BOOL makes it a boolean",
    },
    TypeRow { from: "BIGINT", to: "int64", note: "" },
    TypeRow { from: "BIGINT UNSIGNED", to: "uint64", note: "0..18446744073709551615" },
    TypeRow { from: "DECIMAL(p,s)", to: "decimal", note: "digits kept as text, never through floating point" },
    TypeRow { from: "FLOAT", to: "float32", note: "the shortest decimal of the float" },
    TypeRow { from: "DOUBLE / REAL", to: "float64", note: "" },
    TypeRow { from: "BIT(n)", to: "int64 / uint64", note: "uint64 for n = 64" },
    TypeRow {
        from: "DATE",
        to: "date",
        note: "zero and invalid dates: NULL (counted) or a failed table (zero_dates: fail)",
    },
    TypeRow { from: "DATETIME(0..6)", to: "datetime", note: "wall clock, no zone, microseconds kept" },
    TypeRow { from: "TIMESTAMP(0..6)", to: "timestamp", note: "read in UTC, microseconds kept" },
    TypeRow { from: "TIME(0..6)", to: "time", note: "a signed duration -838:59:59..838:59:59" },
    TypeRow {
        from: "CHAR, VARCHAR, TEXT (any character set), ENUM, SET",
        to: "string",
        note: "converted to UTF-8 by the server; SET as 'a,b'",
    },
    TypeRow { from: "BINARY, VARBINARY, BLOB", to: "bytes", note: "NUL bytes kept" },
    TypeRow {
        from: "JSON (MySQL) / LONGTEXT with a json_valid check (MariaDB)",
        to: "json",
        note: "JSON null is kept apart from SQL NULL",
    },
    TypeRow { from: "GEOMETRY, POINT, ... (spatial)", to: "geometry", note: "WKT via ST_AsText" },
    TypeRow { from: "INET4, INET6, UUID (MariaDB), other types", to: "string", note: "CAST(col AS CHAR)" },
];

/// How to turn one column's wire values into [`Value`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    Int,
    UInt,
    Bit,
    Float32,
    Float64,
    Decimal,
    Text,
    Bytes,
    Date,
    DateTime,
    Timestamp,
    Time,
    Json,
    Geometry,
}

/// What `information_schema.COLUMNS` says about a column.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ColumnInfo {
    pub name: String,
    /// `DATA_TYPE`, lower case: `int`, `varchar`, …
    pub data_type: String,
    /// `COLUMN_TYPE`: `int(10) unsigned`, `enum('a','b')`, …
    pub column_type: String,
    pub numeric_precision: Option<u64>,
    pub numeric_scale: Option<u64>,
    pub datetime_precision: Option<u64>,
    /// MariaDB stores JSON as LONGTEXT with a `json_valid` check.
    pub json_check: bool,
    pub nullable: bool,
}

/// Whether a column of this `DATA_TYPE` is MariaDB's JSON when a `json_valid` CHECK guards it
/// (MariaDB's JSON is LONGTEXT with that check; TEXT and MEDIUMTEXT with it count too).
pub(crate) fn may_be_mariadb_json(data_type: &str) -> bool {
    matches!(data_type, "longtext" | "text" | "mediumtext")
}

/// Maps a column to its logical type and decoder; the third value is the SELECT expression
/// when the column is not read as-is.
pub fn map_column(c: &ColumnInfo) -> (LogicalType, Decoder, Option<String>) {
    let unsigned = c.column_type.contains("unsigned");
    let fsp = c.datetime_precision.unwrap_or(0).min(6) as u8;
    let quoted = quote_ident(&c.name);
    match c.data_type.as_str() {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" => (LogicalType::Int64, Decoder::Int, None),
        "bigint" if unsigned => (LogicalType::UInt64, Decoder::UInt, None),
        "bigint" => (LogicalType::Int64, Decoder::Int, None),
        "decimal" | "numeric" | "fixed" => {
            let precision = c.numeric_precision.unwrap_or(65).min(65) as u8;
            let scale = c.numeric_scale.unwrap_or(0).min(38) as u8;
            (LogicalType::Decimal { precision, scale }, Decoder::Decimal, None)
        }
        "float" => (LogicalType::Float32, Decoder::Float32, None),
        "double" | "real" | "double precision" => (LogicalType::Float64, Decoder::Float64, None),
        "bit" => {
            let width = c.numeric_precision.unwrap_or(1).clamp(1, 64) as u8;
            let logical = if width == 64 { LogicalType::UInt64 } else { LogicalType::Int64 };
            (logical, Decoder::Bit, None)
        }
        "year" => (LogicalType::Int64, Decoder::Int, None),
        "date" => (LogicalType::Date, Decoder::Date, None),
        "datetime" => (LogicalType::DateTime { fsp }, Decoder::DateTime, None),
        "timestamp" => (LogicalType::Timestamp { fsp }, Decoder::Timestamp, None),
        "time" => (LogicalType::Time { fsp }, Decoder::Time, None),
        "json" => (LogicalType::Json, Decoder::Json, None),
        text if c.json_check && may_be_mariadb_json(text) => (LogicalType::Json, Decoder::Json, None),
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "set" => {
            (LogicalType::String, Decoder::Text, None)
        }
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
            (LogicalType::Bytes, Decoder::Bytes, None)
        }
        "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring" | "multipolygon"
        | "geometrycollection" | "geomcollection" => {
            (LogicalType::Geometry, Decoder::Geometry, Some(format!("ST_AsText({quoted})")))
        }
        "inet4" | "inet6" | "uuid" => (LogicalType::String, Decoder::Text, Some(format!("CAST({quoted} AS CHAR)"))),
        _ => (LogicalType::String, Decoder::Text, Some(format!("CAST({quoted} AS CHAR)"))),
    }
}

/// The decoder and SELECT expression of a discovered column, from what discovery kept of it:
/// its declared type (`COLUMN_TYPE`, whose first word is `DATA_TYPE`) and its logical type
/// (which tells MariaDB's JSON, a LONGTEXT with a `json_valid` check, from other text). A
/// read needs no second look at `information_schema`.
pub fn read_plan(column: &Column) -> (Decoder, Option<String>) {
    let column_type = column.source_type.to_ascii_lowercase();
    let data_type = column_type.split(['(', ' ']).next().unwrap_or_default().to_string();
    let info = ColumnInfo {
        name: column.name.clone(),
        data_type,
        column_type,
        numeric_precision: None,
        numeric_scale: None,
        datetime_precision: None,
        json_check: column.logical == LogicalType::Json,
        nullable: column.nullable,
    };
    let (_, decoder, expr) = map_column(&info);
    (decoder, expr)
}

/// Quotes an identifier with backticks.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Converts one wire value.
#[inline(always)]
pub fn decode(decoder: Decoder, wire: Wire) -> std::result::Result<Value, DecodeError> {
    use Decoder as D;
    Ok(match (decoder, wire) {
        (_, Wire::NULL) => Value::Null,
        (D::Int, Wire::Int(i)) => Value::Int(i),
        (D::Int, Wire::UInt(u)) => Value::Int(i64::try_from(u).map_err(|_| DecodeError::Range(u.to_string()))?),
        (D::UInt, Wire::UInt(u)) => Value::UInt(u),
        (D::UInt, Wire::Int(i)) => Value::UInt(u64::try_from(i).map_err(|_| DecodeError::Range(i.to_string()))?),
        (D::Int | D::UInt, Wire::Bytes(b)) => parse_int_text(decoder, &b)?,
        (D::Bit, Wire::Bytes(b)) => {
            let v = b.iter().fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte));
            if b.len() >= 8 { Value::UInt(v) } else { Value::Int(v as i64) }
        }
        (D::Bit, Wire::UInt(u)) => Value::UInt(u),
        (D::Bit, Wire::Int(i)) => Value::Int(i),
        // FLOAT is single precision: keep the shortest decimal that reads back as the same
        // float (what MySQL prints), not the f64 widening's trailing digits.
        (D::Float32, Wire::Float(f)) => {
            Value::Float(ryu::Buffer::new().format(f).parse::<f64>().unwrap_or(f64::from(f)))
        }
        (D::Float32 | D::Float64, Wire::Double(d)) => Value::Float(d),
        (D::Float64, Wire::Float(f)) => Value::Float(f64::from(f)),
        (D::Float32 | D::Float64, Wire::Bytes(b)) => {
            Value::Float(utf8(b)?.parse().map_err(|_| DecodeError::Unexpected("float text"))?)
        }
        (D::Decimal, Wire::Bytes(b)) => Value::Decimal(utf8(b)?),
        (D::Text, Wire::Bytes(b)) => Value::String(utf8(b)?),
        (D::Text, Wire::Int(i)) => Value::String(i.to_string()),
        (D::Text, Wire::UInt(u)) => Value::String(u.to_string()),
        (D::Bytes, Wire::Bytes(b)) => Value::Bytes(b),
        (D::Json, Wire::Bytes(b)) => Value::Json(utf8(b)?),
        (D::Geometry, Wire::Bytes(b)) => Value::Geometry(utf8(b)?),
        (D::Date, Wire::Date(y, m, d, ..)) => match date(y, m, d) {
            Some(d) => Value::Date(d),
            None => return Err(DecodeError::InvalidDate),
        },
        (D::DateTime | D::Timestamp, Wire::Date(y, mo, d, h, mi, s, us)) => {
            let Some(dt) = date(y, mo, d).and_then(|d| {
                NaiveTime::from_hms_micro_opt(u32::from(h), u32::from(mi), u32::from(s), us).map(|t| d.and_time(t))
            }) else {
                return Err(DecodeError::InvalidDate);
            };
            if decoder == D::Timestamp { Value::Timestamp(Utc.from_utc_datetime(&dt)) } else { Value::DateTime(dt) }
        }
        (D::Time, Wire::Time(neg, days, h, m, s, us)) => {
            let secs = i64::from(days) * 86_400 + i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(s);
            let micros = secs * 1_000_000 + i64::from(us);
            Value::Time(if neg { -micros } else { micros })
        }
        (D::Date | D::DateTime | D::Timestamp | D::Time, Wire::Bytes(b)) => parse_temporal_text(decoder, &utf8(b)?)?,
        (_, _) => return Err(DecodeError::Unexpected("wire value for this column type")),
    })
}

/// Why a wire value could not be converted.
#[derive(Debug)]
pub enum DecodeError {
    /// '0000-00-00' and other dates no calendar has; the caller applies the zero-date policy.
    InvalidDate,
    Range(String),
    NotUtf8,
    Unexpected(&'static str),
}

impl DecodeError {
    pub fn into_error(self, table: &str, column: &str, source_type: &str) -> ConnectorError {
        let what = match self {
            DecodeError::InvalidDate => "an invalid date".to_string(),
            DecodeError::Range(v) => format!("value {v} out of range"),
            DecodeError::NotUtf8 => "text that is not valid UTF-8".to_string(),
            DecodeError::Unexpected(w) => format!("an unexpected {w}"),
        };
        ConnectorError::permanent(format!(
            "{table}, column `{column}` ({source_type}): {what}; set column_types for this column or report a bug"
        ))
    }
}

fn utf8(b: Vec<u8>) -> std::result::Result<String, DecodeError> {
    String::from_utf8(b).map_err(|_| DecodeError::NotUtf8)
}

fn date(y: u16, m: u8, d: u8) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(i32::from(y), u32::from(m), u32::from(d)).filter(|_| y > 0)
}

fn parse_int_text(decoder: Decoder, b: &[u8]) -> std::result::Result<Value, DecodeError> {
    let s = std::str::from_utf8(b).map_err(|_| DecodeError::NotUtf8)?;
    Ok(if decoder == Decoder::UInt {
        Value::UInt(s.parse().map_err(|_| DecodeError::Range(s.to_string()))?)
    } else {
        Value::Int(s.parse().map_err(|_| DecodeError::Range(s.to_string()))?)
    })
}

/// Text-protocol temporal values (used for bound parameters echoed back, and by tests).
fn parse_temporal_text(decoder: Decoder, s: &str) -> std::result::Result<Value, DecodeError> {
    match decoder {
        Decoder::Date => {
            NaiveDate::parse_from_str(s, "%Y-%m-%d").map(Value::Date).map_err(|_| DecodeError::InvalidDate)
        }
        Decoder::DateTime | Decoder::Timestamp => {
            let dt = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").map_err(|_| DecodeError::InvalidDate)?;
            Ok(if decoder == Decoder::Timestamp {
                Value::Timestamp(Utc.from_utc_datetime(&dt))
            } else {
                Value::DateTime(dt)
            })
        }
        _ => Err(DecodeError::Unexpected("time text")),
    }
}

/// What a value [`decode`] refused becomes: under the zero-date policy an invalid date is NULL
/// (counted); everything else is an error naming the column. Out of line: it is the rare path
/// of a per-value loop.
#[cold]
#[inline(never)]
pub fn undecodable(
    error: DecodeError,
    policy: crate::config::ZeroDatePolicy,
    zero_dates: &mut u64,
    table: &str,
    column: &str,
    source_type: &str,
) -> Result<Value> {
    match error {
        DecodeError::InvalidDate if policy == crate::config::ZeroDatePolicy::Null => {
            *zero_dates += 1;
            Ok(Value::Null)
        }
        DecodeError::InvalidDate => Err(ConnectorError::permanent(format!(
            "{table}, column `{column}` ({source_type}): an invalid date such as '0000-00-00'; fix the row, or \
             set zero_dates to \"null\" to write NULL instead"
        ))),
        e => Err(e.into_error(table, column, source_type)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(data_type: &str, column_type: &str) -> ColumnInfo {
        ColumnInfo {
            name: "c".into(),
            data_type: data_type.into(),
            column_type: column_type.into(),
            numeric_precision: None,
            numeric_scale: None,
            datetime_precision: None,
            json_check: false,
            nullable: true,
        }
    }

    #[test]
    fn maps_every_type_family() {
        let cases: &[(&str, &str, LogicalType)] = &[
            ("tinyint", "tinyint(1)", LogicalType::Int64),
            ("int", "int(10) unsigned", LogicalType::Int64),
            ("bigint", "bigint(20)", LogicalType::Int64),
            ("bigint", "bigint(20) unsigned", LogicalType::UInt64),
            ("float", "float", LogicalType::Float32),
            ("double", "double", LogicalType::Float64),
            ("year", "year(4)", LogicalType::Int64),
            ("date", "date", LogicalType::Date),
            ("varchar", "varchar(10)", LogicalType::String),
            ("enum", "enum('a','b')", LogicalType::String),
            ("set", "set('a','b')", LogicalType::String),
            ("longblob", "longblob", LogicalType::Bytes),
            ("varbinary", "varbinary(4)", LogicalType::Bytes),
            ("json", "json", LogicalType::Json),
            ("point", "point", LogicalType::Geometry),
            ("uuid", "uuid", LogicalType::String),
        ];
        for (dt, ct, want) in cases {
            assert_eq!(&map_column(&info(dt, ct)).0, want, "{ct}");
        }
    }

    /// A read plans its columns from the discovered schema alone: the same decoder and SELECT
    /// expression as discovery's full look at `information_schema`.
    #[test]
    fn a_read_plans_each_column_as_discovery_mapped_it() {
        let mut cases: Vec<ColumnInfo> = [
            ("tinyint", "tinyint(1)"),
            ("int", "int(10) unsigned"),
            ("bigint", "bigint(20) unsigned zerofill"),
            ("decimal", "decimal(12,2)"),
            ("float", "float"),
            ("double", "double"),
            ("bit", "bit(64)"),
            ("bit", "bit(3)"),
            ("year", "year(4)"),
            ("date", "date"),
            ("datetime", "datetime(6)"),
            ("timestamp", "timestamp(3)"),
            ("time", "time(6)"),
            ("varchar", "varchar(10)"),
            ("enum", "enum('a b','c(d)')"),
            ("set", "set('a','b')"),
            ("longtext", "longtext"),
            ("longblob", "longblob"),
            ("json", "json"),
            ("geometry", "geometry"),
            ("point", "point"),
            ("inet6", "inet6"),
            ("uuid", "uuid"),
            ("vector", "vector(3)"),
        ]
        .iter()
        .map(|(dt, ct)| info(dt, ct))
        .collect();
        let mut json = info("longtext", "longtext");
        json.json_check = true;
        cases.push(json);
        for info in cases {
            let (logical, decoder, expr) = map_column(&info);
            let column =
                Column { name: info.name.clone(), source_type: info.column_type.clone(), logical, nullable: true };
            assert_eq!(read_plan(&column), (decoder, expr), "{}", info.column_type);
        }
        let mut dec = info("decimal", "decimal(65,30)");
        dec.numeric_precision = Some(65);
        dec.numeric_scale = Some(30);
        assert_eq!(map_column(&dec).0, LogicalType::Decimal { precision: 65, scale: 30 });
        let mut dt = info("datetime", "datetime(6)");
        dt.datetime_precision = Some(6);
        assert_eq!(map_column(&dt).0, LogicalType::DateTime { fsp: 6 });
        let mut mariadb_json = info("longtext", "longtext");
        mariadb_json.json_check = true;
        assert_eq!(map_column(&mariadb_json).0, LogicalType::Json);
        let mut bit = info("bit", "bit(64)");
        bit.numeric_precision = Some(64);
        assert_eq!(map_column(&bit).0, LogicalType::UInt64);
    }

    #[test]
    fn the_documented_logical_types_are_the_ones_mapped_to() {
        let name = |t: &LogicalType| match t {
            LogicalType::Bool => "bool",
            LogicalType::Int64 => "int64",
            LogicalType::UInt64 => "uint64",
            LogicalType::Float32 => "float32",
            LogicalType::Float64 => "float64",
            LogicalType::Decimal { .. } => "decimal",
            LogicalType::String => "string",
            LogicalType::Bytes => "bytes",
            LogicalType::Date => "date",
            LogicalType::DateTime { .. } => "datetime",
            LogicalType::Timestamp { .. } => "timestamp",
            LogicalType::Time { .. } => "time",
            LogicalType::Json => "json",
            LogicalType::Geometry => "geometry",
        };
        let mapped: Vec<&str> = [
            "tinyint",
            "bigint",
            "decimal",
            "float",
            "double",
            "date",
            "datetime",
            "timestamp",
            "time",
            "varchar",
            "blob",
            "json",
            "point",
            "uuid",
        ]
        .iter()
        .map(|t| name(&map_column(&info(t, t)).0))
        .chain(["uint64"])
        .collect();
        for row in MYSQL_TYPES {
            for logical in row.to.split(" / ") {
                assert!(mapped.contains(&logical), "{} documents {logical}, which map_column never gives", row.from);
            }
        }
    }

    #[test]
    fn decodes_edge_values_exactly() {
        assert_eq!(decode(Decoder::UInt, Wire::UInt(u64::MAX)).unwrap(), Value::UInt(u64::MAX));
        assert_eq!(decode(Decoder::Bit, Wire::Bytes(vec![0xff; 8])).unwrap(), Value::UInt(u64::MAX));
        assert_eq!(decode(Decoder::Bit, Wire::Bytes(vec![0x01, 0x00])).unwrap(), Value::Int(256));
        assert_eq!(decode(Decoder::Float32, Wire::Float(1.1)).unwrap(), Value::Float(1.1));
        assert_eq!(
            decode(Decoder::Decimal, Wire::Bytes(b"-99999999999999999999.123456789".to_vec())).unwrap(),
            Value::Decimal("-99999999999999999999.123456789".into())
        );
        assert_eq!(
            decode(Decoder::Time, Wire::Time(true, 34, 22, 59, 59, 0)).unwrap(),
            Value::Time(-3_020_399_000_000)
        );
        assert!(matches!(decode(Decoder::Date, Wire::Date(0, 0, 0, 0, 0, 0, 0)), Err(DecodeError::InvalidDate)));
        assert!(matches!(
            decode(Decoder::DateTime, Wire::Date(2024, 0, 10, 0, 0, 0, 0)),
            Err(DecodeError::InvalidDate)
        ));
        let ts = decode(Decoder::Timestamp, Wire::Date(2038, 1, 19, 3, 14, 7, 999_999)).unwrap();
        assert_eq!(
            ts,
            Value::Timestamp(
                Utc.with_ymd_and_hms(2038, 1, 19, 3, 14, 7).unwrap() + chrono::TimeDelta::microseconds(999_999)
            )
        );
        assert!(matches!(decode(Decoder::Text, Wire::Bytes(vec![0xff])), Err(DecodeError::NotUtf8)));
    }
}
