//! Typed values and the batches of rows that flow from a source to its sinks.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use crate::change::{ChangeMeta, ChangeSeq};

/// One value of a row. The variant follows the column's [`LogicalType`](crate::LogicalType).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    /// Decimal digits as the source printed them (`-123.4500`); never via `f64`.
    Decimal(String),
    String(String),
    Bytes(Vec<u8>),
    Date(NaiveDate),
    DateTime(NaiveDateTime),
    Timestamp(DateTime<Utc>),
    /// A signed duration in microseconds (MySQL TIME).
    Time(i64),
    Json(String),
    /// Well-known text.
    Geometry(String),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// A rough size in bytes, for batch accounting and throughput figures.
    pub fn approx_size(&self) -> usize {
        match self {
            Value::Null => 1,
            Value::Bool(_) => 1,
            Value::Int(_) | Value::UInt(_) | Value::Float(_) | Value::Time(_) => 8,
            Value::Date(_) => 4,
            Value::DateTime(_) | Value::Timestamp(_) => 8,
            Value::Decimal(s) | Value::String(s) | Value::Json(s) | Value::Geometry(s) => s.len(),
            Value::Bytes(b) => b.len(),
        }
    }
}

impl Value {
    /// A cursor value as the text watermarks store (`YYYY-MM-DD HH:MM:SS.ffffff`, or
    /// `YYYY-MM-DD`); such texts sort like the values. `None` for non-cursor values.
    pub fn cursor_text(&self) -> Option<String> {
        match self {
            Value::DateTime(t) => Some(crate::state::watermark_text(t)),
            Value::Timestamp(t) => Some(crate::state::watermark_text(&t.naive_utc())),
            Value::Date(d) => Some(d.format("%Y-%m-%d").to_string()),
            _ => None,
        }
    }

    /// Whether cursor value `self` is later than `other` (both of one cursor type).
    pub fn cursor_gt(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::DateTime(a), Value::DateTime(b)) => a > b,
            (Value::Timestamp(a), Value::Timestamp(b)) => a > b,
            (Value::Date(a), Value::Date(b)) => a > b,
            _ => false,
        }
    }

    /// The instant of a cursor value as a wall-clock time (dates at midnight).
    pub fn cursor_instant(&self) -> Option<NaiveDateTime> {
        match self {
            Value::DateTime(t) => Some(*t),
            Value::Timestamp(t) => Some(t.naive_utc()),
            Value::Date(d) => d.and_hms_opt(0, 0, 0),
            _ => None,
        }
    }

    /// The inverse of [`Value::cursor_text`] for a column of type `logical`.
    pub fn from_cursor_text(text: &str, logical: &crate::LogicalType) -> Option<Value> {
        use crate::LogicalType as L;
        match logical {
            L::Date => NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().map(Value::Date),
            L::DateTime { .. } => crate::state::parse_watermark_text(text).map(Value::DateTime),
            L::Timestamp { .. } => crate::state::parse_watermark_text(text)
                .map(|t| Value::Timestamp(chrono::TimeZone::from_utc_datetime(&Utc, &t))),
            _ => None,
        }
    }

    /// A plain JSON rendering for file sinks and tests: exact numbers beyond `i64`/`f64` and
    /// decimals as strings, bytes as hex (`\x00ff`), times as text.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::UInt(u) => J::String(u.to_string()),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or_else(|| J::String(f.to_string()), J::Number),
            Value::Decimal(s) | Value::String(s) | Value::Geometry(s) => J::String(s.clone()),
            Value::Bytes(b) => J::String(format!("\\x{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())),
            Value::Date(d) => J::String(d.format("%Y-%m-%d").to_string()),
            Value::DateTime(t) => J::String(crate::state::watermark_text(t)),
            Value::Timestamp(t) => J::String(t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()),
            Value::Time(us) => J::String(format_time(*us, 6)),
            Value::Json(s) => serde_json::from_str(s).unwrap_or_else(|_| J::String(s.clone())),
        }
    }
}

/// Formats a MySQL-style duration: `-838:59:59.000000`, fraction only when `fsp > 0`.
pub fn format_time(micros: i64, fsp: u8) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let total = micros.unsigned_abs();
    let secs = total / 1_000_000;
    let frac = total % 1_000_000;
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if fsp == 0 {
        format!("{sign}{h:02}:{m:02}:{s:02}")
    } else {
        let digits = format!("{frac:06}");
        format!("{sign}{h:02}:{m:02}:{s:02}.{}", &digits[..usize::from(fsp.min(6))])
    }
}

/// One source row: values in the order of the schema's columns.
pub type Row = Vec<Value>;

/// A batch is sent at this size even below `batch_size` rows, so that wide rows cannot make
/// the few batches in flight per table take unbounded memory.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// A batch of rows read from one table.
#[derive(Debug, Default)]
pub struct RowBatch {
    pub rows: Vec<Row>,
    /// Approximate payload size, for throughput and memory accounting.
    pub bytes: usize,
    /// Rows of a snapshot read for a change stream: the change-log position of the snapshot
    /// they come from (every row of the batch).
    pub snapshot_seq: Option<ChangeSeq>,
    /// Rows of a change stream: per row (same length as `rows`), what the change does and
    /// where it is in the log. Empty for rows read from tables.
    pub changes: Vec<ChangeMeta>,
}

impl RowBatch {
    pub fn with_capacity(rows: usize) -> Self {
        Self { rows: Vec::with_capacity(rows), ..Default::default() }
    }
    pub fn push(&mut self, row: Row) {
        self.bytes += row.iter().map(Value::approx_size).sum::<usize>();
        self.rows.push(row);
    }
    /// Adds one change of a change stream.
    pub fn push_change(&mut self, row: Row, meta: ChangeMeta) {
        self.push(row);
        self.changes.push(meta);
    }
    /// Whether the batch is ready to send: `max_rows` rows, or [`MAX_BATCH_BYTES`] of values.
    pub fn is_full(&self, max_rows: usize) -> bool {
        self.rows.len() >= max_rows || self.bytes >= MAX_BATCH_BYTES
    }
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_full_at_its_row_count_or_at_four_mib() {
        let mut batch = RowBatch::with_capacity(10);
        batch.push(vec![Value::Int(1)]);
        assert!(!batch.is_full(2));
        batch.push(vec![Value::String("x".repeat(MAX_BATCH_BYTES))]);
        assert!(batch.is_full(1000), "wide rows end a batch before batch_size");
        let mut narrow = RowBatch::with_capacity(2);
        narrow.push(vec![Value::Int(1)]);
        narrow.push(vec![Value::Int(2)]);
        assert!(narrow.is_full(2));
    }

    #[test]
    fn time_formats_negative_and_long_durations() {
        let max = ((838 * 3600 + 59 * 60 + 59) as i64) * 1_000_000;
        assert_eq!(format_time(max, 0), "838:59:59");
        assert_eq!(format_time(-max, 0), "-838:59:59");
        assert_eq!(format_time(-1_500_000, 3), "-00:00:01.500");
        assert_eq!(format_time(3_723_000_001, 6), "01:02:03.000001");
    }
}
