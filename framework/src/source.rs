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

/// The channel a source pushes batches into; bounded, so a slow sink slows the reader
/// instead of filling memory.
pub type BatchSender = mpsc::Sender<RowBatch>;

/// Which rows to read.
///
/// The contract (checked by [`crate::testkit::source_conformance`]):
/// - `Full`: every row, in any order.
/// - `Since`: rows whose `cursor` is **at or after** `from` (inclusive, compared in the
///   cursor's own type), plus rows whose cursor is NULL (or not a valid date) when
///   `include_nulls`; rows left out that way are counted in
///   [`ReadSummary::null_cursor_rows_skipped`].
/// - `KeyRange`: the first `limit` rows in ascending `key` order whose key is **greater than**
///   `after` (exclusive; from the start when `None`), and [`ReadSummary::last_key`] set to the
///   key of the last row sent. Fewer than `limit` rows means the table is done.
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
    /// `None`): one range of a full sync read in key ranges.
    KeyRange { key: String, after: Option<String>, limit: u64 },
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
            ReadRange::KeyRange { key, after: None, limit } => format!("all rows, in ranges of {limit} by {key}"),
            ReadRange::KeyRange { key, after: Some(after), limit } => {
                format!("all rows, in ranges of {limit} by {key}, resumed after {key} = {after}")
            }
            ReadRange::Keys { keys, .. } => format!("{} rows by key (a repair)", keys.len()),
        }
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
        if self.snapshot_time.is_none() {
            self.snapshot_time = part.snapshot_time;
            self.cursor_clock = part.cursor_clock;
            self.cursor_utc_offset = part.cursor_utc_offset;
        }
        if let Some(m) = part.max_cursor.filter(|m| self.max_cursor.as_ref().is_none_or(|t| m.cursor_gt(t))) {
            self.max_cursor = Some(m);
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
