//! Row images of the binlog → rows of [`Value`]s, exactly as the snapshot's SELECT would have
//! read them.
//!
//! A [`Layout`] is made once per table map: each logged column matched by name (the table map
//! carries names with `binlog_row_metadata=FULL`) to a requested column, with how to convert
//! its values. A logged layout that differs from the requested schema is reported, never
//! guessed at. Values are parsed with mysql_common's binlog value decoder, except TIME with
//! one or two fractional digits, whose negative values it gets wrong.

use connector_framework::{ChangeTable, LogicalType, TableRef, Value};
use mysql_async::binlog::events::{OptionalMetaExtractor, OptionalMetadataField, TableMapEvent};
use mysql_async::consts::ColumnType;
use mysql_common::binlog::value::BinlogValue;
use mysql_common::io::ParseBuf;

use super::charset::{Collations, TextCharset, charset_named, decode_text};
use crate::config::ZeroDatePolicy;
use crate::types::{DecodeError, Decoder, decode};

/// How one logged column's values become a [`Value`].
#[derive(Debug, Clone)]
enum Convert {
    /// Through the snapshot path's decoder, unchanged.
    Wire(Decoder),
    Text(TextCharset),
    /// BINARY(n): the log drops trailing zero bytes; the column holds n.
    Binary(Option<usize>),
    Enum(Vec<String>),
    Set(Vec<String>),
    Year,
    Timestamp,
    Time,
    /// MySQL's binary JSON.
    JsonBinary,
    /// MariaDB's JSON (text).
    JsonText(TextCharset),
    /// SRID and WKB; made WKT by the server (the text must be exactly ST_AsText's).
    Geometry,
    /// MariaDB's INET4 (4 bytes) and INET6 (16 bytes); the log drops trailing zero bytes.
    Inet(usize),
}

#[derive(Debug, Clone)]
struct LoggedColumn {
    name: String,
    ty: ColumnType,
    meta: Vec<u8>,
    unsigned: bool,
    /// Where the value goes in the delivered row; `None` for an excluded column.
    out: Option<usize>,
    convert: Convert,
    source_type: String,
}

/// How to read the rows of one table map.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub table: TableRef,
    columns: Vec<LoggedColumn>,
    /// Delivered columns (the requested schema's).
    width: usize,
    /// Positions of the key columns in a delivered row.
    pub key: Vec<usize>,
    pub zero_dates: ZeroDatePolicy,
}

/// A value the server still has to convert (geometry, as WKT).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pending {
    pub column: usize,
    pub srid: u32,
    pub wkb: Vec<u8>,
}

/// A decoded image and the values it still needs from the server.
#[derive(Debug, Default)]
pub(crate) struct Image {
    pub row: Vec<Value>,
    pub pending: Vec<Pending>,
    pub zero_dates: u64,
}

/// Why a table map cannot be read with the requested schema.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Mismatch {
    /// The logged columns are not the requested ones (a change to catch up with by a snapshot).
    Columns(String),
    /// The log lacks what decoding needs (names: `binlog_row_metadata` is not FULL).
    Unreadable(String),
}

impl Layout {
    /// Matches a table map against the requested table.
    pub fn new(
        tme: &TableMapEvent<'_>,
        request: &ChangeTable,
        collations: &Collations,
        zero_dates: ZeroDatePolicy,
        mariadb: bool,
    ) -> Result<Self, Mismatch> {
        let schema = &request.schema;
        let table = schema.table.clone();
        let count = tme.columns_count() as usize;
        let extractor = OptionalMetaExtractor::new(tme.iter_optional_meta())
            .map_err(|e| Mismatch::Unreadable(format!("{table}: unreadable table map metadata ({e})")))?;
        let names: Vec<String> =
            extractor.iter_column_name().map(|n| n.map(|n| n.name().into_owned())).collect::<Result<_, _>>().map_err(
                |e| Mismatch::Unreadable(format!("{table}: unreadable column names in the table map ({e})")),
            )?;
        if names.len() != count {
            return Err(Mismatch::Unreadable(format!(
                "{table}: the binlog does not name the columns; set binlog_row_metadata = FULL on the server"
            )));
        }
        let mut charsets = extractor.iter_charset();
        let mut enum_set_charsets = extractor.iter_enum_and_set_charset();
        let (mut enums, mut sets) = (Vec::new(), Vec::new());
        for field in tme.iter_optional_meta() {
            match field {
                Ok(OptionalMetadataField::EnumStrValue(v)) => {
                    for e in v.iter_values() {
                        let e = e.map_err(|e| Mismatch::Unreadable(format!("{table}: ENUM values ({e})")))?;
                        enums.push(e.values().iter().map(|x| x.value_raw().to_vec()).collect::<Vec<_>>());
                    }
                }
                Ok(OptionalMetadataField::SetStrValue(v)) => {
                    for s in v.iter_values() {
                        let s = s.map_err(|e| Mismatch::Unreadable(format!("{table}: SET values ({e})")))?;
                        sets.push(s.values().iter().map(|x| x.value_raw().to_vec()).collect::<Vec<_>>());
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(Mismatch::Unreadable(format!("{table}: unreadable table map metadata ({e})"))),
            }
        }
        let (mut enums, mut sets) = (enums.into_iter(), sets.into_iter());
        let mut columns = Vec::with_capacity(count);
        let mut seen = vec![false; schema.columns.len()];
        for (i, name) in names.into_iter().enumerate() {
            let ty = tme.get_column_type(i).ok().flatten().ok_or_else(|| {
                Mismatch::Unreadable(format!("{table}: column `{name}` has a type the log reader does not know"))
            })?;
            let meta = tme.get_column_metadata(i).unwrap_or_default().to_vec();
            // MariaDB lists a character set for GEOMETRY columns too (a geometry is a BLOB there).
            let charset = if ty.is_character_type() || (mariadb && ty == ColumnType::MYSQL_TYPE_GEOMETRY) {
                charsets.next().transpose().ok().flatten()
            } else if ty.is_enum_or_set_type() {
                enum_set_charsets.next().transpose().ok().flatten()
            } else {
                None
            };
            let labels = match ty {
                ColumnType::MYSQL_TYPE_ENUM => enums.next(),
                ColumnType::MYSQL_TYPE_SET => sets.next(),
                _ => None,
            };
            let out = schema.column_index(&name);
            let Some(index) = out else {
                if request.excluded.iter().any(|x| x.eq_ignore_ascii_case(&name)) {
                    columns.push(LoggedColumn {
                        name,
                        ty,
                        meta,
                        unsigned: false,
                        out: None,
                        convert: Convert::Wire(Decoder::Bytes),
                        source_type: String::new(),
                    });
                    continue;
                }
                return Err(Mismatch::Columns(format!("column `{name}` is new")));
            };
            seen[index] = true;
            let column = &schema.columns[index];
            let text = |collation: Option<u16>| -> Result<TextCharset, Mismatch> {
                let set = collation.and_then(|c| collations.charset_of(c)).unwrap_or("utf8mb4");
                charset_named(set).ok_or_else(|| {
                    Mismatch::Unreadable(format!(
                        "{table}, column `{name}`: character set {set} cannot be converted from the binlog; convert the \
                         column to utf8mb4, or leave it out with exclude_columns"
                    ))
                })
            };
            let kind = column.source_type.split(['(', ' ']).next().unwrap_or_default().to_ascii_lowercase();
            let convert = match (&column.logical, ty) {
                (_, ColumnType::MYSQL_TYPE_YEAR) => Convert::Year,
                (LogicalType::Int64 | LogicalType::UInt64, ColumnType::MYSQL_TYPE_BIT) => Convert::Wire(Decoder::Bit),
                (
                    LogicalType::Int64,
                    ColumnType::MYSQL_TYPE_TINY
                    | ColumnType::MYSQL_TYPE_SHORT
                    | ColumnType::MYSQL_TYPE_INT24
                    | ColumnType::MYSQL_TYPE_LONG
                    | ColumnType::MYSQL_TYPE_LONGLONG,
                ) => Convert::Wire(Decoder::Int),
                (LogicalType::UInt64, ColumnType::MYSQL_TYPE_LONGLONG) => Convert::Wire(Decoder::UInt),
                (LogicalType::Decimal { .. }, ColumnType::MYSQL_TYPE_NEWDECIMAL) => Convert::Wire(Decoder::Decimal),
                (LogicalType::Float32, ColumnType::MYSQL_TYPE_FLOAT) => Convert::Wire(Decoder::Float32),
                (LogicalType::Float64, ColumnType::MYSQL_TYPE_DOUBLE) => Convert::Wire(Decoder::Float64),
                (LogicalType::Date, ColumnType::MYSQL_TYPE_NEWDATE | ColumnType::MYSQL_TYPE_DATE) => {
                    Convert::Wire(Decoder::Date)
                }
                (LogicalType::DateTime { .. }, ColumnType::MYSQL_TYPE_DATETIME2 | ColumnType::MYSQL_TYPE_DATETIME) => {
                    Convert::Wire(Decoder::DateTime)
                }
                (LogicalType::Timestamp { .. }, ColumnType::MYSQL_TYPE_TIMESTAMP2) => Convert::Timestamp,
                (LogicalType::Time { .. }, ColumnType::MYSQL_TYPE_TIME2) => Convert::Time,
                (LogicalType::Json, ColumnType::MYSQL_TYPE_JSON) => Convert::JsonBinary,
                (LogicalType::Json, ColumnType::MYSQL_TYPE_BLOB) => Convert::JsonText(text(charset)?),
                (LogicalType::Geometry, ColumnType::MYSQL_TYPE_GEOMETRY) => Convert::Geometry,
                (LogicalType::String, ColumnType::MYSQL_TYPE_ENUM | ColumnType::MYSQL_TYPE_SET) => {
                    let cs = text(charset)?;
                    let labels = labels
                        .unwrap_or_default()
                        .into_iter()
                        .map(|l| decode_text(cs, l))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| Mismatch::Unreadable(format!("{table}, column `{name}`: unreadable labels")))?;
                    if ty == ColumnType::MYSQL_TYPE_ENUM { Convert::Enum(labels) } else { Convert::Set(labels) }
                }
                (LogicalType::String, ColumnType::MYSQL_TYPE_STRING) if matches!(kind.as_str(), "inet4" | "inet6") => {
                    Convert::Inet(fixed_length(&meta).unwrap_or(if kind == "inet4" { 4 } else { 16 }))
                }
                (LogicalType::String, _) if matches!(kind.as_str(), "uuid") => {
                    return Err(Mismatch::Unreadable(format!(
                        "{table}, column `{name}` ({}): this type cannot be read from the binlog yet; leave it out with \
                         exclude_columns or sync the table by cursor",
                        column.source_type
                    )));
                }
                (
                    LogicalType::String,
                    ColumnType::MYSQL_TYPE_STRING
                    | ColumnType::MYSQL_TYPE_VARCHAR
                    | ColumnType::MYSQL_TYPE_VAR_STRING
                    | ColumnType::MYSQL_TYPE_BLOB,
                ) => Convert::Text(text(charset)?),
                (LogicalType::Bytes, ColumnType::MYSQL_TYPE_STRING) => Convert::Binary(fixed_length(&meta)),
                (
                    LogicalType::Bytes,
                    ColumnType::MYSQL_TYPE_VARCHAR | ColumnType::MYSQL_TYPE_VAR_STRING | ColumnType::MYSQL_TYPE_BLOB,
                ) => Convert::Binary(None),
                (logical, ty) => {
                    return Err(Mismatch::Columns(format!(
                        "column `{name}` is {ty:?} in the log, {logical:?} ({}) in the table now",
                        column.source_type
                    )));
                }
            };
            columns.push(LoggedColumn {
                unsigned: column.source_type.contains("unsigned"),
                name,
                ty,
                meta,
                out: Some(index),
                convert,
                source_type: column.source_type.clone(),
            });
        }
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(Mismatch::Columns(format!("column `{}` is gone", schema.columns[i].name)));
        }
        let key = schema.key.iter().filter_map(|k| schema.column_index(k)).collect();
        Ok(Self { table, columns, width: schema.columns.len(), key, zero_dates })
    }

    /// The number of logged columns.
    pub fn logged(&self) -> usize {
        self.columns.len()
    }

    /// Reads one row image (`present`: which logged columns it has; all of them, with
    /// `binlog_row_image=FULL`).
    pub fn read_image(&self, buf: &mut ParseBuf<'_>, present: &[bool]) -> Result<Image, String> {
        if present.len() != self.columns.len() || present.iter().any(|p| !p) {
            return Err(format!(
                "{}: the binlog holds only some columns of each row; set binlog_row_image = FULL on the server",
                self.table
            ));
        }
        let nulls = buf.checked_eat(present.len().div_ceil(8)).ok_or_else(|| self.truncated())?.to_vec();
        let mut image = Image { row: vec![Value::Null; self.width], ..Default::default() };
        for (i, column) in self.columns.iter().enumerate() {
            if nulls[i / 8] & (1 << (i % 8)) != 0 {
                continue;
            }
            let value = if column.ty == ColumnType::MYSQL_TYPE_TIME2 {
                let dec = column.meta.first().copied().unwrap_or(0);
                Binlog::Time(read_time2(buf, dec).ok_or_else(|| self.truncated())?)
            } else if column.ty == ColumnType::MYSQL_TYPE_INT24 {
                // mysql_common does not sign-extend MEDIUMINT.
                let b = buf.checked_eat(3).ok_or_else(|| self.truncated())?;
                let raw = i64::from(b[0]) | (i64::from(b[1]) << 8) | (i64::from(b[2]) << 16);
                let v = if !column.unsigned && raw & 0x80_0000 != 0 { raw - 0x100_0000 } else { raw };
                Binlog::Value(BinlogValue::Value(mysql_async::Value::Int(v)))
            } else {
                let ctx = (column.ty, column.meta.as_slice(), column.unsigned, false);
                // A buffer of this value's own lifetime (the metadata lives in the layout).
                let data = buf.0;
                let mut local = ParseBuf(data);
                let value = local
                    .parse::<BinlogValue<'_>>(ctx)
                    .map_err(|e| {
                        format!("{}, column `{}`: unreadable value in the binlog ({e})", self.table, column.name)
                    })?
                    .into_owned();
                buf.0 = &data[data.len() - local.0.len()..];
                Binlog::Value(value)
            };
            let Some(out) = column.out else { continue };
            match self.convert(column, value, &mut image) {
                Ok(Some(v)) => image.row[out] = v,
                Ok(None) => image.pending.push(Pending::from_slot(out, &mut image.row)),
                Err(e) => return Err(e),
            }
        }
        Ok(image)
    }

    fn truncated(&self) -> String {
        format!("{}: a row image in the binlog ends early", self.table)
    }

    /// One value; `Ok(None)` leaves a geometry for the server to convert (its WKB is put in
    /// the row slot for [`Pending::from_slot`]).
    fn convert(&self, c: &LoggedColumn, value: Binlog, image: &mut Image) -> Result<Option<Value>, String> {
        use mysql_async::Value as Wire;
        let fail = |e: DecodeError| e.into_error(&self.table.to_string(), &c.name, &c.source_type).to_string();
        let wire = match value {
            Binlog::Time(micros) => return Ok(Some(Value::Time(micros))),
            Binlog::Value(BinlogValue::Value(w)) => w,
            Binlog::Value(BinlogValue::Jsonb(j)) => {
                let json = serde_json::Value::try_from(j)
                    .map_err(|e| format!("{}, column `{}`: unreadable JSON in the binlog ({e})", self.table, c.name))?;
                return Ok(Some(Value::Json(json.to_string())));
            }
            Binlog::Value(BinlogValue::JsonDiff(_)) => {
                return Err(format!(
                    "{}, column `{}`: the binlog holds a partial JSON update; set binlog_row_value_options = '' on the server",
                    self.table, c.name
                ));
            }
        };
        let bytes = |w: Wire| match w {
            Wire::Bytes(b) => Ok(b),
            other => Err(format!("{}, column `{}`: unexpected value {other:?} in the binlog", self.table, c.name)),
        };
        let invalid_date = |image: &mut Image| -> Result<Option<Value>, String> {
            match self.zero_dates {
                ZeroDatePolicy::Null => {
                    image.zero_dates += 1;
                    Ok(Some(Value::Null))
                }
                _ => Err(fail(DecodeError::InvalidDate)),
            }
        };
        let text_of = |cs: TextCharset, b: Vec<u8>| decode_text(cs, b).ok_or_else(|| fail(DecodeError::NotUtf8));
        Ok(Some(match &c.convert {
            Convert::Wire(decoder) => match decode(*decoder, wire) {
                Ok(v) => v,
                Err(DecodeError::InvalidDate) => return invalid_date(image),
                Err(e) => return Err(fail(e)),
            },
            Convert::Text(cs) => Value::String(text_of(*cs, bytes(wire)?)?),
            Convert::JsonText(cs) => Value::Json(text_of(*cs, bytes(wire)?)?),
            Convert::Binary(width) => {
                let mut b = bytes(wire)?;
                if let Some(n) = width
                    && b.len() < *n
                {
                    b.resize(*n, 0);
                }
                Value::Bytes(b)
            }
            Convert::Enum(labels) => match wire {
                Wire::Int(0) | Wire::UInt(0) => Value::String(String::new()),
                Wire::Int(i) => labels
                    .get((i - 1) as usize)
                    .cloned()
                    .map(Value::String)
                    .ok_or_else(|| format!("{}, column `{}`: ENUM index {i} out of range", self.table, c.name))?,
                other => return Err(format!("{}, column `{}`: unexpected ENUM value {other:?}", self.table, c.name)),
            },
            Convert::Set(labels) => {
                let mask = bytes(wire)?;
                let mut chosen = Vec::new();
                for (i, label) in labels.iter().enumerate() {
                    if mask.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0) {
                        chosen.push(label.as_str());
                    }
                }
                Value::String(chosen.join(","))
            }
            Convert::Year => {
                let text = String::from_utf8(bytes(wire)?).map_err(|_| fail(DecodeError::NotUtf8))?;
                let year: i64 = text.parse().map_err(|_| fail(DecodeError::Range(text.clone())))?;
                // The log stores years as an offset from 1900; 0 is the zero year 0000.
                Value::Int(if year == 1900 { 0 } else { year })
            }
            Convert::Timestamp => {
                let text = String::from_utf8(bytes(wire)?).map_err(|_| fail(DecodeError::NotUtf8))?;
                let (secs, micros) = match text.split_once('.') {
                    Some((s, f)) => (s.parse::<i64>(), f.parse::<u32>()),
                    None => (text.parse::<i64>(), Ok(0)),
                };
                let (Ok(secs), Ok(micros)) = (secs, micros) else { return Err(fail(DecodeError::Range(text))) };
                if secs == 0 && micros == 0 {
                    return invalid_date(image);
                }
                let t = chrono::DateTime::from_timestamp(secs, micros * 1000)
                    .ok_or_else(|| fail(DecodeError::Range(text)))?;
                Value::Timestamp(t)
            }
            Convert::Time => return Err(fail(DecodeError::Unexpected("TIME value"))),
            Convert::JsonBinary => return Err(fail(DecodeError::Unexpected("JSON value"))),
            Convert::Geometry => {
                let b = bytes(wire)?;
                if b.len() < 4 {
                    return Err(fail(DecodeError::Unexpected("geometry value")));
                }
                image.row[c.out.unwrap_or_default()] = Value::Bytes(b);
                return Ok(None);
            }
            Convert::Inet(width) => {
                let mut b = bytes(wire)?;
                if b.len() < *width {
                    b.resize(*width, 0);
                }
                match b.len() {
                    4 => Value::String(std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
                    16 => {
                        let octets: [u8; 16] = b.as_slice().try_into().unwrap_or_default();
                        Value::String(inet6_text(std::net::Ipv6Addr::from(octets)))
                    }
                    _ => return Err(fail(DecodeError::Unexpected("INET value"))),
                }
            }
        }))
    }
}

/// A value as parsed from the log.
enum Binlog {
    Value(BinlogValue<'static>),
    /// TIME, in signed microseconds.
    Time(i64),
}

impl Pending {
    /// Takes the geometry bytes the converter left in `row[column]` (SRID, then WKB).
    fn from_slot(column: usize, row: &mut [Value]) -> Self {
        let bytes = match std::mem::replace(&mut row[column], Value::Null) {
            Value::Bytes(b) => b,
            _ => Vec::new(),
        };
        let srid = bytes.get(..4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]));
        Self { column, srid, wkb: bytes.get(4..).unwrap_or_default().to_vec() }
    }
}

/// BINARY(n) / CHAR(n): the byte length the table map gives a fixed-length string column.
fn fixed_length(meta: &[u8]) -> Option<usize> {
    let (b0, b1) = (usize::from(*meta.first()?), usize::from(*meta.get(1)?));
    Some(if (b0 & 0x30) != 0x30 { b1 | (((b0 & 0x30) ^ 0x30) << 4) } else { b1 })
}

/// MariaDB's INET6 text: the RFC 5952 form, except that IPv4-mapped and IPv4-compatible
/// addresses end in dotted quads (`::ffff:1.2.3.4`, `::1.2.3.4`).
fn inet6_text(addr: std::net::Ipv6Addr) -> String {
    let s = addr.segments();
    if s[..5] == [0; 5] && (s[5] == 0xffff || (s[5] == 0 && (s[6] != 0 || s[7] > 1))) {
        let o = addr.octets();
        let prefix = if s[5] == 0xffff { "::ffff:" } else { "::" };
        return format!("{prefix}{}.{}.{}.{}", o[12], o[13], o[14], o[15]);
    }
    addr.to_string()
}

/// TIME2 with `dec` fractional digits (0..6) in signed microseconds, as MySQL's
/// `my_time_packed_from_binary` and `TIME_from_longlong_time_packed` read it.
fn read_time2(buf: &mut ParseBuf<'_>, dec: u8) -> Option<i64> {
    const INT_OFS: i64 = 0x80_0000;
    let be = |b: &[u8]| b.iter().fold(0i64, |acc, x| (acc << 8) | i64::from(*x));
    let packed = match dec {
        1 | 2 => {
            let b = buf.checked_eat(4)?;
            let mut int = be(&b[..3]) - INT_OFS;
            let mut frac = i64::from(b[3]);
            if int < 0 && frac > 0 {
                int += 1;
                frac -= 0x100;
            }
            int * (1 << 24) + frac * 10_000
        }
        3 | 4 => {
            let b = buf.checked_eat(5)?;
            let mut int = be(&b[..3]) - INT_OFS;
            let mut frac = be(&b[3..5]);
            if int < 0 && frac > 0 {
                int += 1;
                frac -= 0x1_0000;
            }
            int * (1 << 24) + frac * 100
        }
        5 | 6 => be(buf.checked_eat(6)?) - 0x8000_0000_0000,
        _ => (be(buf.checked_eat(3)?) - INT_OFS) * (1 << 24),
    };
    let negative = packed < 0;
    let tmp = packed.abs();
    let hms = tmp >> 24;
    let (h, m, s) = ((hms >> 12) % (1 << 10), (hms >> 6) % (1 << 6), hms % (1 << 6));
    let micros = (h * 3600 + m * 60 + s) * 1_000_000 + tmp % (1 << 24);
    Some(if negative { -micros } else { micros })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time2(bytes: &[u8], dec: u8) -> i64 {
        read_time2(&mut ParseBuf(bytes), dec).unwrap()
    }

    #[test]
    fn time2_reads_negative_fractions_that_mysql_common_gets_wrong() {
        // -00:00:01.5 as TIME(1), as MySQL writes it: integer part -2 (offset), fraction -50 as a byte.
        let b = [0x7f, 0xff, 0xfe, 0xce];
        assert_eq!(time2(&b, 1), -1_500_000);
        // 838:59:59 as TIME(0).
        let hms = (838i64 << 12) | (59 << 6) | 59;
        let v = hms + 0x80_0000;
        assert_eq!(time2(&[(v >> 16) as u8, (v >> 8) as u8, v as u8], 0), (838 * 3600 + 59 * 60 + 59) * 1_000_000);
        // 01:02:03.000004 as TIME(6).
        let p = ((((1i64 << 12) | (2 << 6) | 3) << 24) + 4) + 0x8000_0000_0000;
        let b: Vec<u8> = (0..6).rev().map(|i| (p >> (8 * i)) as u8).collect();
        assert_eq!(time2(&b, 6), 3_723_000_004);
    }

    #[test]
    fn inet6_text_is_mariadbs() {
        assert_eq!(inet6_text("::ffff:1.2.3.4".parse().unwrap()), "::ffff:1.2.3.4");
        assert_eq!(inet6_text("2001:db8::1".parse().unwrap()), "2001:db8::1");
        assert_eq!(inet6_text("::1".parse().unwrap()), "::1");
        assert_eq!(inet6_text("::".parse().unwrap()), "::");
    }

    #[test]
    fn fixed_length_reads_long_char_metadata() {
        // BINARY(4): real type 0xfe, length 4.
        assert_eq!(fixed_length(&[0xfe, 4]), Some(4));
        // CHAR(255) utf8mb4 = 1020 bytes: the high bits of the length live in byte 0.
        assert_eq!(fixed_length(&[0xce, 0xfc]), Some(1020));
    }
}
