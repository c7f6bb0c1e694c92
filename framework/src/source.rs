//! The source role: what a [`Source`] reads, the [`ReadRange`] contract every source honours,
//! and the [`ReadSummary`] it reports.
//!
//! A source streams [`RowBatch`]es into a bounded channel ([`BatchSender`]) from **one
//! consistent snapshot** per [`Source::read`] call, and reports the source's own clock taken
//! no later than that snapshot began (inside it, or just before it). The runner never uses
//! the sync host's clock for watermarks.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::NaiveDateTime;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::change::{ChangeLog, ChangePosition, ChangeSeq};
use crate::digest::{BucketDigest, DigestSpec, JsonDigest, RowDigest};
use crate::error::Result;
use crate::schema::{TableRef, TableSchema};
use crate::value::{RowBatch, Value};
use crate::window::{WindowCheck, WindowSeen, WindowTracker};

/// The channel a source pushes batches into (bounded, so a slow sink slows the reader instead
/// of filling memory) and, where the runner sends them back once written, the batches it
/// sent: the reader frees their rows on its own thread, where it allocated them. A free
/// from another thread is a deferred, atomic one in the allocator, and those were 8 % of a
/// big table's CPU while the encoder freed every row.
#[derive(Debug)]
pub struct BatchSender {
    tx: mpsc::Sender<RowBatch>,
    spent: Option<mpsc::UnboundedReceiver<RowBatch>>,
}

impl BatchSender {
    /// Batches into `tx`; whoever receives them frees them.
    pub fn new(tx: mpsc::Sender<RowBatch>) -> Self {
        Self { tx, spent: None }
    }

    /// Batches into `tx`; those that come back on `spent` are freed by the reader.
    pub fn with_spent(tx: mpsc::Sender<RowBatch>, spent: mpsc::UnboundedReceiver<RowBatch>) -> Self {
        Self { tx, spent: Some(spent) }
    }

    async fn send(&mut self, batch: RowBatch) -> std::result::Result<(), mpsc::error::SendError<RowBatch>> {
        self.free_spent();
        self.tx.send(batch).await
    }

    /// Frees the batches that came back so far.
    fn free_spent(&mut self) {
        if let Some(spent) = &mut self.spent {
            while let Ok(batch) = spent.try_recv() {
                drop(batch);
            }
        }
    }
}

/// Which rows to read.
///
/// The contract (checked by [`crate::testkit::source_conformance`]):
/// - `Full`: every row, in any order.
/// - `Since`: rows whose `cursor` is **at or after** `from` (inclusive, compared in the
///   cursor's own type), plus rows whose cursor is NULL (or not a valid date) when
///   `include_nulls`; rows left out that way are counted in
///   [`ReadSummary::null_cursor_rows_skipped`].
/// - `KeyRange`: the first `limit` rows in ascending `key` order whose key is **greater than**
///   `after` (exclusive; from the start when `None`) and **not greater than** `until`
///   (inclusive; to the end when `None`), and [`ReadSummary::last_key`] set to the key of the
///   last row sent. Fewer than `limit` rows means the range is done.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReadRange {
    /// Every row.
    Full,
    /// Rows whose `cursor` is at or after `from`, plus rows whose cursor is NULL when
    /// `include_nulls` (see [`crate::strategy::NullCursorPolicy`]).
    Since {
        cursor: String,
        /// `YYYY-MM-DD HH:MM:SS.ffffff` or `YYYY-MM-DD`, in the cursor's zone.
        from: String,
        include_nulls: bool,
        /// The cursor zone's UTC offset (seconds) when the watermark behind `from` was taken.
        /// A source whose zone's offset is smaller now (a daylight-saving fall-back repeated an
        /// hour of wall-clock time) moves `from` back by the difference.
        #[serde(skip_serializing_if = "Option::is_none")]
        from_utc_offset: Option<i32>,
    },
    /// The next `limit` rows in `key` order after `after` (exclusive; from the start when
    /// `None`) up to `until` (inclusive; to the end when `None`): one range of a full sync read
    /// in key ranges. `until` bounds one of the segments a big table is read in side by side.
    KeyRange {
        key: String,
        after: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        until: Option<String>,
        limit: u64,
    },
    /// The rows whose key string (tables without a key: row digest) under `digest` is one of
    /// `keys` ([`crate::digest`]): what `verify --repair` reads again.
    Keys { digest: Box<DigestSpec>, keys: Vec<String> },
}

impl ReadRange {
    /// A cursor range without a zone offset.
    pub fn since(cursor: impl Into<String>, from: impl Into<String>, include_nulls: bool) -> Self {
        ReadRange::Since { cursor: cursor.into(), from: from.into(), include_nulls, from_utc_offset: None }
    }

    /// `all rows`, or `updated_at >= '2025-01-01 00:00:00.000000'` (plus NULLs when included).
    pub fn describe(&self) -> String {
        match self {
            ReadRange::Full => "all rows".to_string(),
            ReadRange::Since { cursor, from, include_nulls, .. } => {
                let nulls = if *include_nulls { format!(" or {cursor} IS NULL") } else { String::new() };
                format!("{cursor} >= '{from}'{nulls}")
            }
            ReadRange::KeyRange { key, after: None, until: None, limit } => {
                format!("all rows, in ranges of {limit} by {key}")
            }
            ReadRange::KeyRange { key, after: Some(after), until: None, limit } => {
                format!("all rows, in ranges of {limit} by {key}, resumed after {key} = {after}")
            }
            ReadRange::KeyRange { key, after, until: Some(until), limit } => {
                let from = after.as_ref().map_or_else(String::new, |a| format!("{key} > {a} and "));
                format!("{from}{key} <= {until}, in ranges of {limit}")
            }
            ReadRange::Keys { keys, .. } => format!("{} rows by key (a repair)", keys.len()),
        }
    }

    /// After a daylight-saving fall-back an hour of wall-clock times repeats: rows stamped in it
    /// sort before a watermark taken at the larger offset. For a `Since` range whose watermark
    /// was taken at a larger UTC offset than the cursor zone's `offset_now`, the lower bound
    /// moved back by the difference, and the window as the report shows it.
    pub fn widened_for_offset(&self, offset_now: i32) -> Option<(String, String)> {
        let ReadRange::Since { from, from_utc_offset: Some(then), .. } = self else { return None };
        if offset_now >= *then {
            return None;
        }
        let bound = crate::state::parse_watermark_text(from)?;
        let widened = crate::state::watermark_text(&(bound - chrono::TimeDelta::seconds(i64::from(then - offset_now))));
        tracing::info!(from = %from, widened = %widened, "the cursor zone's offset shrank (daylight saving ended): widening the window");
        let window = format!(
            "{} (moved back {} min: the cursor zone's clock went back)",
            self.describe().replace(from.as_str(), &widened),
            (then - offset_now) / 60
        );
        Some((widened, window))
    }
}

/// One read: a table, the rows wanted, and how to deliver them.
#[derive(Debug, Clone)]
pub struct ReadRequest {
    /// The table as discovered (the read must return exactly these columns, in this order).
    pub schema: Arc<TableSchema>,
    pub range: ReadRange,
    /// Rows per batch (a batch also ends at [`crate::value::MAX_BATCH_BYTES`]).
    pub batch_size: usize,
    /// The cursor column whose highest value the source reports, if any.
    pub track_cursor: Option<String>,
    /// The zone DATETIME cursor values are stamped in (`None`: the source's default zone);
    /// the clock it is compared with is taken in the same zone.
    pub cursor_time_zone: Option<String>,
    /// Columns to leave out of the read entirely (they never leave the source).
    pub excluded_columns: Vec<String>,
    /// Read for a change stream: take the change-log position of each consistent snapshot
    /// (exactly the boundary between the transactions it sees and those it does not), stamp
    /// every batch with it ([`RowBatch::snapshot_seq`]) and report it
    /// ([`ReadSummary::change_position`]). A source that cannot tell the position exactly for a
    /// table whose rows could then be applied twice (no key) fails the read.
    pub capture_position: bool,
    /// For a `Since` read: the rows its targets already hold, left out of the read, and the
    /// digests to collect for the next one ([`crate::window`]). For a full read (or its key
    /// ranges): only the digests to collect.
    pub window: Option<Arc<WindowCheck>>,
}

impl ReadRequest {
    /// A request for `range` of `schema` with the defaults for everything else.
    pub fn new(schema: Arc<TableSchema>, range: ReadRange, batch_size: usize) -> Self {
        Self {
            schema,
            range,
            batch_size,
            track_cursor: None,
            cursor_time_zone: None,
            excluded_columns: Vec::new(),
            capture_position: false,
            window: None,
        }
    }
}

/// What a finished read saw.
#[derive(Debug, Clone, Default)]
pub struct ReadSummary {
    pub rows: u64,
    pub bytes: u64,
    /// The source server's clock (UTC) no later than the read's snapshot began: every row
    /// committed before this instant is in the snapshot.
    pub snapshot_time: Option<NaiveDateTime>,
    /// The same instant in the cursor's zone (for DATETIME and DATE cursors, which
    /// applications stamp in some wall-clock zone).
    pub cursor_clock: Option<NaiveDateTime>,
    /// The cursor zone's UTC offset in seconds at snapshot time.
    pub cursor_utc_offset: Option<i32>,
    /// The highest value of `track_cursor` among the rows read **that is not later than the
    /// source's clock** in the cursor's zone: a row stamped in the future must not move the
    /// watermark past rows the application has not written yet.
    pub max_cursor: Option<Value>,
    /// Rows whose cursor was later than the source's clock (read, but left out of
    /// `max_cursor`).
    pub future_cursor_rows: u64,
    /// Values the source cannot represent and wrote as NULL by its documented policy, counted
    /// by what they were (`invalid dates` for MySQL's zero dates), so the report can say so.
    pub nulled_values: std::collections::BTreeMap<String, u64>,
    /// Rows with a NULL cursor that an incremental read left out (policy `report`).
    pub null_cursor_rows_skipped: u64,
    /// For key-range reads: the key of the last row read.
    pub last_key: Option<String>,
    /// How the rows were read, when it differs from the plan (key ranges, a resume).
    pub window: Option<String>,
    /// With `capture_position`: the change-log position of the (first) snapshot. A stream
    /// applies the table's changes after it.
    pub change_position: Option<ChangePosition>,
    /// With `capture_position`, for a read in several snapshots (key ranges): the position of
    /// the last one. Until a stream has passed it, rows of later ranges may still be older
    /// than changes it applies (the sequence guard orders them; a batch ending before it could
    /// briefly show a deleted row again).
    pub change_settled: Option<ChangeSeq>,
    /// Rows the read took again that every target already held, unchanged: left out.
    pub unchanged_rows_skipped: u64,
    /// With [`ReadRequest::window`]: the digests of the rows the next read takes again.
    pub window_rows: Option<WindowSeen>,
}

impl ReadSummary {
    /// Adds the counts of a later part of the same read (the next key range). The clock and
    /// the zone offset stay those of the first part: later ranges are newer snapshots, and
    /// the first one bounds the watermark.
    pub fn absorb(&mut self, part: ReadSummary) {
        self.rows += part.rows;
        self.bytes += part.bytes;
        for (what, n) in part.nulled_values {
            *self.nulled_values.entry(what).or_default() += n;
        }
        self.future_cursor_rows += part.future_cursor_rows;
        self.null_cursor_rows_skipped += part.null_cursor_rows_skipped;
        self.unchanged_rows_skipped += part.unchanged_rows_skipped;
        let window_rows = part.window_rows;
        if self.snapshot_time.is_none() {
            self.snapshot_time = part.snapshot_time;
            self.cursor_clock = part.cursor_clock;
            self.cursor_utc_offset = part.cursor_utc_offset;
        }
        if let Some(m) = part.max_cursor.filter(|m| self.max_cursor.as_ref().is_none_or(|t| m.cursor_gt(t))) {
            self.max_cursor = Some(m);
        }
        // Pruned again to the window of the parts' highest cursor.
        match (&mut self.window_rows, window_rows) {
            (Some(mine), Some(theirs)) => mine.absorb(theirs, self.max_cursor.as_ref()),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
        self.last_key = part.last_key;
        if self.change_position.is_none() {
            self.change_position = part.change_position;
        }
        if part.change_settled.is_some() {
            self.change_settled = part.change_settled;
        }
    }
}

/// What a source found out before a run touched anything: facts worth logging (`notes`: how the
/// connection is secured) and things the operator should fix (`warnings`: privileges beyond
/// reading, an unencrypted connection).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Preflight {
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
}

/// The error of a source or sink that computes no digests.
pub fn no_digests(table: &TableRef) -> crate::error::ConnectorError {
    crate::error::ConnectorError::config(format!(
        "{table}: this connector cannot compute digests, so verify cannot run"
    ))
}

/// Reads tables from a database server.
#[async_trait]
pub trait Source: Send + Sync + std::fmt::Debug {
    /// Checks made once before a run reads anything: how the connection is secured, and
    /// whether the user may do more than read (a change stream's log-reading grants expected
    /// when `change_stream`). A source configured to refuse such a user fails here with a
    /// config error; a run that fails here writes nothing.
    async fn preflight(&self, _change_stream: bool) -> Result<Preflight> {
        Ok(Preflight::default())
    }
    /// The databases (tenants) this source is configured to read, as configured: names, and
    /// patterns when [`Source::tenant_selection`] has them.
    fn databases(&self) -> Vec<String>;
    /// The tenants as a selection (names, patterns, exclusions; see [`crate::tenants`]). The
    /// default takes [`Source::databases`] as names.
    fn tenant_selection(&self) -> crate::tenants::TenantSelection {
        crate::tenants::TenantSelection::parse(&self.databases(), &[]).unwrap_or_default()
    }
    /// Every database on the server the user can see: what a selection with patterns is
    /// matched against at the start of each run.
    async fn list_databases(&self) -> Result<Vec<String>> {
        Err(crate::error::ConnectorError::config(
            "this source cannot list its server's databases; name each tenant instead of a pattern",
        ))
    }
    /// The base tables of one database.
    async fn list_tables(&self, database: &str) -> Result<Vec<String>>;
    /// Columns, types and key of one table.
    async fn discover(&self, table: &TableRef) -> Result<TableSchema>;
    /// Table `name` in each of `databases`, in that order: what [`Source::discover`] says of
    /// each. A run discovers every tenant's table at once through this, so a source that can
    /// ask about many databases in one statement keeps discovery's cost per table name, not
    /// per tenant and table; the default asks one by one.
    async fn discover_many(&self, name: &str, databases: &[String]) -> Vec<Result<TableSchema>> {
        futures::future::join_all(
            databases.iter().map(|db| async move { self.discover(&TableRef::new(db, name)).await }),
        )
        .await
    }
    /// The lowest and highest value of an integer `key` column of one tenant's table, as text
    /// (`None`: the table is empty, or the source cannot tell). The runner splits a big full
    /// sync into segments of the key space read side by side with this; the default keeps a
    /// source's ranges one after another.
    async fn key_bounds(&self, _table: &TableRef, _key: &str) -> Result<Option<(String, String)>> {
        Ok(None)
    }
    /// Streams the requested rows into `output` from one consistent snapshot.
    async fn read(&self, request: ReadRequest, output: BatchSender) -> Result<ReadSummary>;
    /// Per-bucket digests of one tenant's table (see [`crate::digest`]), for `verify`.
    async fn digest_buckets(&self, spec: &DigestSpec) -> Result<Vec<BucketDigest>> {
        Err(no_digests(&spec.table))
    }
    /// The row digests of these buckets of one tenant's table, with each row's cursor.
    async fn digest_rows(&self, spec: &DigestSpec, _buckets: &[u32]) -> Result<Vec<RowDigest>> {
        Err(no_digests(&spec.table))
    }
    /// The documents of the spec's JSON columns: every row of the tenant's table, or the rows
    /// of these key strings.
    async fn json_documents(&self, spec: &DigestSpec, _keys: Option<&[String]>) -> Result<Vec<JsonDigest>> {
        Err(no_digests(&spec.table))
    }
    /// The source's change log, when it has one that `--cdc` can stream.
    fn change_log(&self) -> Option<Arc<dyn ChangeLog>> {
        None
    }
    /// Releases connections.
    async fn close(&self) {}
}

/// The rows of one read on their way out: batches of `batch_size` sent into the channel, the
/// counts and the cursor's maximum kept for the [`ReadSummary`]. Every source's read loop ends
/// in this, so the watermark rules live in one place.
#[derive(Debug)]
pub struct RowSink {
    output: BatchSender,
    batch: RowBatch,
    batch_size: usize,
    snapshot_seq: Option<ChangeSeq>,
    table: TableRef,
    cursor: Option<usize>,
    utc_bound: NaiveDateTime,
    local_bound: NaiveDateTime,
    max_cursor: Option<Value>,
    future_cursor_rows: u64,
    key: Option<usize>,
    last_key: Option<i128>,
    window: Option<WindowTracker>,
    rows: u64,
    bytes: u64,
}

impl RowSink {
    /// Rows of `request` into `output`. `utc_bound` and `local_bound` are the source's clock
    /// when the snapshot began (UTC, and the cursor's zone) plus whatever slack the source
    /// cannot rule out: a cursor later than that is "from the future".
    pub fn new(
        request: &ReadRequest,
        output: BatchSender,
        utc_bound: NaiveDateTime,
        local_bound: NaiveDateTime,
    ) -> Self {
        let schema = &request.schema;
        let key = match &request.range {
            ReadRange::KeyRange { key, .. } => schema.column_index(key),
            _ => None,
        };
        Self {
            output,
            batch: RowBatch::with_capacity(request.batch_size),
            batch_size: request.batch_size,
            snapshot_seq: None,
            table: schema.table.clone(),
            cursor: request.track_cursor.as_deref().and_then(|c| schema.column_index(c)),
            utc_bound,
            local_bound,
            max_cursor: None,
            future_cursor_rows: 0,
            key,
            last_key: None,
            window: request.window.as_ref().and_then(|check| match request.range {
                ReadRange::Since { .. } => Some(WindowTracker::new(Arc::clone(check))),
                ReadRange::Full | ReadRange::KeyRange { .. } => Some(WindowTracker::for_full_read(Arc::clone(check))),
                _ => None,
            }),
            rows: 0,
            bytes: 0,
        }
    }

    /// Stamps every batch with the change-log position of the snapshot the rows come from.
    pub fn with_snapshot_seq(mut self, seq: Option<ChangeSeq>) -> Self {
        self.snapshot_seq = seq;
        self
    }

    /// Adds one row (its values in the request's column order); sends a full batch.
    pub async fn push(&mut self, values: Vec<Value>) -> Result<()> {
        if let Some(i) = self.cursor {
            self.observe_cursor(&values[i]);
        }
        if let Some(window) = &mut self.window {
            let cursor = self.cursor.and_then(|i| values[i].cursor_instant());
            if window.observe(&values, cursor, self.max_cursor.as_ref()) {
                // Every target holds this row as it is: read again only because the window
                // starts before the watermark.
                return Ok(());
            }
        }
        // Kept as a number (i64 and u64 both fit) and written as text once, at the end.
        match self.key.map(|i| &values[i]) {
            Some(Value::Int(k)) => self.last_key = Some(i128::from(*k)),
            Some(Value::UInt(k)) => self.last_key = Some(i128::from(*k)),
            _ => {}
        }
        self.batch.push(values);
        // Written batches are freed as they come back, not a whole batch later.
        if self.batch.len().is_multiple_of(64) {
            self.output.free_spent();
        }
        if self.batch.is_full(self.batch_size) {
            let full = std::mem::replace(&mut self.batch, RowBatch::with_capacity(self.batch_size));
            self.send(full).await?;
        }
        Ok(())
    }

    /// A row stamped later than the source's clock (an import, a 2099 sentinel, a client with
    /// a wrong clock) must not move the watermark past rows not yet written: it is read,
    /// counted, and left out of the maximum.
    fn observe_cursor(&mut self, v: &Value) {
        let clock = if matches!(v, Value::Timestamp(_)) { self.utc_bound } else { self.local_bound };
        match v.cursor_instant() {
            Some(t) if matches!(v, Value::Date(_)) && t.date() > clock.date() => self.future_cursor_rows += 1,
            Some(t) if t > clock && !matches!(v, Value::Date(_)) => self.future_cursor_rows += 1,
            Some(_) if self.max_cursor.as_ref().is_none_or(|m| v.cursor_gt(m)) => self.max_cursor = Some(v.clone()),
            _ => {}
        }
    }

    async fn send(&mut self, mut batch: RowBatch) -> Result<()> {
        self.rows += batch.len() as u64;
        self.bytes += batch.bytes as u64;
        batch.snapshot_seq = self.snapshot_seq.clone();
        self.output.send(batch).await.map_err(|_| {
            crate::error::ConnectorError::permanent(format!("{}: every target stopped accepting rows", self.table))
        })
    }

    /// Sends the last batch and writes the counts, the cursor's maximum and the last key into
    /// `summary`.
    pub async fn finish(mut self, summary: &mut ReadSummary) -> Result<()> {
        if !self.batch.is_empty() {
            let last = std::mem::take(&mut self.batch);
            self.send(last).await?;
        }
        if let Some(window) = self.window {
            summary.unchanged_rows_skipped += window.unchanged;
            summary.window_rows = window.finish(self.max_cursor.as_ref());
        }
        summary.rows += self.rows;
        summary.bytes += self.bytes;
        summary.max_cursor = self.max_cursor;
        summary.future_cursor_rows += self.future_cursor_rows;
        summary.last_key = self.last_key.map(|k| k.to_string());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Column, KeySource, LogicalType};

    #[tokio::test]
    async fn batches_sent_back_are_freed_by_the_reader_as_it_goes_on() {
        let column =
            Column { name: "id".into(), source_type: "bigint".into(), logical: LogicalType::Int64, nullable: false };
        let schema = Arc::new(TableSchema {
            table: TableRef::new("shop1", "orders"),
            columns: vec![column].into(),
            key: vec!["id".into()],
            key_source: KeySource::PrimaryKey,
            estimated_rows: None,
        });
        let request = ReadRequest::new(schema, ReadRange::Full, 64);
        let (tx, mut rx) = mpsc::channel(4);
        let (spent, spent_rx) = mpsc::unbounded_channel();
        let now = chrono::Utc::now().naive_utc();
        let mut sink = RowSink::new(&request, BatchSender::with_spent(tx, spent_rx), now, now);
        for i in 0..64 {
            sink.push(vec![Value::Int(i)]).await.unwrap();
        }
        let batch = rx.recv().await.unwrap();
        assert_eq!(batch.len(), 64);
        spent.send(batch).unwrap();
        let waiting = |sink: &RowSink| sink.output.spent.as_ref().map_or(0, mpsc::UnboundedReceiver::len);
        assert_eq!(waiting(&sink), 1, "back, not freed yet");
        for i in 64..128 {
            sink.push(vec![Value::Int(i)]).await.unwrap();
        }
        assert_eq!(waiting(&sink), 0, "freed by the reader while it read on");
        assert_eq!(rx.recv().await.unwrap().len(), 64);
    }

    /// One key range of a full read: rows `ids`, their cursor `step` apart from `base`.
    fn full_read_part(
        check: &Arc<WindowCheck>,
        ids: std::ops::Range<i64>,
        base: chrono::NaiveDateTime,
        step: chrono::TimeDelta,
    ) -> ReadSummary {
        let mut tracker = WindowTracker::for_full_read(Arc::clone(check));
        let mut max = None::<Value>;
        for id in ids {
            let row = [Value::Int(id), Value::DateTime(base + step * id as i32)];
            max = Some(row[1].clone());
            assert!(!tracker.observe(&row, row[1].cursor_instant(), max.as_ref()));
        }
        ReadSummary { window_rows: tracker.finish(max.as_ref()), max_cursor: max, ..Default::default() }
    }

    #[test]
    fn key_ranges_put_their_window_digests_together_and_one_that_gave_up_adds_none() {
        let check = WindowCheck::new(&[], "s", 10);
        let base = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap();
        let minute = chrono::TimeDelta::minutes(1);
        // Older rows than the first part's, more of them than a part digests: it stores none.
        let many = crate::window::FULL_READ_DIGESTS as i64 + 1;
        let gave_up =
            || full_read_part(&check, 0..many, base - chrono::TimeDelta::days(30), chrono::TimeDelta::microseconds(1));
        assert!(gave_up().window_rows.is_none());
        for gave_up_first in [true, false] {
            let mut total = ReadSummary::default();
            if gave_up_first {
                total.absorb(gave_up());
            }
            total.absorb(full_read_part(&check, 0..100, base, minute));
            if !gave_up_first {
                total.absorb(gave_up());
            }
            assert_eq!(total.window_rows.as_ref().map(WindowSeen::len), Some(11), "minutes 89 to 99");
            // A later range with newer rows moves the window: minutes 94 to 104.
            total.absorb(full_read_part(&check, 100..105, base, minute));
            let stored = total.window_rows.as_ref().unwrap().stored();
            assert_eq!(stored.len(), 11);
            let next = WindowCheck::new(&[Some(&stored)], "s", 10);
            let mut incremental = WindowTracker::new(next);
            let left_out: Vec<i64> = (90..105)
                .filter(|id| {
                    let row = [Value::Int(*id), Value::DateTime(base + minute * *id as i32)];
                    incremental.observe(&row, row[1].cursor_instant(), Some(&Value::DateTime(base + minute * 104)))
                })
                .collect();
            assert_eq!(left_out, (94..105).collect::<Vec<_>>());
        }
    }
}
