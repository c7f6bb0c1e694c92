//! The state role: what a [`StateStore`] remembers about each table of each tenant, in the
//! original tool's file format (plus optional fields of ours), and the run lock.
//!
//! The original tool is `smart_sync_incremental_optimized.py`, the Python script this project
//! replaces; its state files (`sync_status/<database>.json`) stay readable by both tools.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::change::{ChangePosition, ChangeSeq};
use crate::error::{ConnectorError, Result};
use crate::window::WindowRows;

mod memory;
mod scratch;

pub use memory::MemoryStateStore;
pub use scratch::ScratchState;

/// How a table was (or will be) synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SyncMode {
    Full,
    Incremental,
    /// Streamed from the source's change log (`--cdc`), after a snapshot.
    Cdc,
    /// Rows written again by `verify --repair` (never a table's state).
    Repair,
}

impl SyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Full => "FULL",
            SyncMode::Incremental => "INCREMENTAL",
            SyncMode::Cdc => "CDC",
            SyncMode::Repair => "REPAIR",
        }
    }
}

impl std::fmt::Display for SyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SyncStatus {
    Success,
    Failed,
}

/// The text form of a cursor instant in watermarks and read ranges:
/// `YYYY-MM-DD HH:MM:SS.ffffff`, never rounded; such texts sort like the instants.
pub fn watermark_text(t: &NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// Parses [`watermark_text`] (any number of fractional digits).
pub fn parse_watermark_text(text: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").ok()
}

/// The highest cursor value committed to the target, at full precision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    pub column: String,
    /// The cursor column's logical type, e.g. `datetime`, `timestamp`, `date`.
    pub column_type: String,
    /// `YYYY-MM-DD HH:MM:SS.ffffff` (UTC for timestamps), never rounded.
    pub value: String,
    /// The cursor zone's UTC offset in seconds when this value was taken (DATETIME and DATE
    /// cursors): a later read in a smaller offset (a daylight-saving fall-back) widens its window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc_offset: Option<i32>,
}

/// The target table a table's state belongs to. State whose target differs from the one a run
/// writes to (another dataset, a dropped and recreated table, another endpoint) is not used to
/// plan incrementally: the table is synced in full into its new target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStamp {
    /// [`crate::sink::Sink::destination`], e.g. `bigquery https://bigquery.googleapis.com project.dataset`.
    pub destination: String,
    /// The target table's name there.
    pub table: String,
    /// [`crate::sink::Prepared::generation`] of the target table, when the sink reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<String>,
}

/// One table's entry in a database's state file.
///
/// The first seven fields are the original tool's; the rest are ours and optional, so files
/// written by either tool can be read by the other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableState {
    pub table_name: String,
    /// When the last successful sync read the source (the source server's clock, UTC).
    pub last_sync_time: Option<NaiveDateTime>,
    pub sync_status: SyncStatus,
    pub sync_mode: SyncMode,
    pub records_synced: u64,
    pub error_message: Option<String>,
    /// When this entry was written.
    pub updated_at: NaiveDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<Watermark>,
    /// When the table last synced successfully (kept across failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<NaiveDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// Consecutive failed runs since the last success.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consecutive_failures: u32,
    /// The row key the target was written with; a different key forces a full sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Vec<String>>,
    /// A full sync read in key ranges that has not committed yet: where to resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Box<ResumePoint>>,
    /// The target table the data went to (see [`TargetStamp`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetStamp>,
    /// The fingerprint of the tenant's columns, types and key at the last success; another
    /// fingerprint forces a full sync (a new column's existing values, a rename, a backfill).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_fingerprint: Option<String>,
    /// When the last successful full sync read the source (for `full_every`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_full_at: Option<NaiveDateTime>,
    /// A write to the target whose outcome is unknown (the sink's reference to it, e.g. a
    /// BigQuery job id). The table is not written again until the sink has resolved it, so an
    /// old write can never land after a newer one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_doubt: Option<String>,
    /// What the operator should know about how this table syncs (e.g. an insert-time cursor),
    /// from the last plan; `status` shows it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Streamed by `--cdc`: the snapshot the target's rows of this table come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdc: Option<Box<CdcTableState>>,
    /// Digests of the rows the next incremental read takes again (its lookback window), as
    /// the last success committed them: such a row read back unchanged is not sent again
    /// ([`crate::window`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_rows: Option<WindowRows>,
}

/// A table's place in the change stream: its rows in the target are those of `snapshot`, plus
/// every change after it that the target's stream has applied ([`StreamState::applied`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CdcTableState {
    pub snapshot: ChangePosition,
    /// For a snapshot read in key ranges: the last range's position (see
    /// [`crate::source::ReadSummary::change_settled`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled: Option<ChangeSeq>,
    /// How deletes were applied since the snapshot; another setting takes a new snapshot.
    pub deletes: crate::pipeline::CdcDeletes,
}

/// One target's change stream: how far it has applied the source's change log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamState {
    /// Every change before this position, of every table streaming then, is in the target.
    pub applied: Option<ChangePosition>,
    /// When the last applied transaction was committed in the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_commit_at: Option<DateTime<Utc>>,
    /// A batch that was being applied when this was written, up to this position: a stream
    /// that starts again applies its first batch at least this far, so a row a later change
    /// deleted is never shown again in between.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applying_to: Option<ChangeSeq>,
    /// The head of the source's log when last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<ChangePosition>,
    /// Seconds between the last applied commit and the moment it was applied (0 when the
    /// stream had caught up with the head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    /// The tables the stream carried when it recorded `applied`, per database: only their
    /// changes up to `applied` are in the target. A table left out then (not selected, not in
    /// the config, halted) streams again from its own position.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub carried: BTreeMap<String, BTreeSet<String>>,
    /// `streaming`, `stopped` or `failed`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub updated_at: NaiveDateTime,
}

impl StreamState {
    /// A stream that has applied nothing yet, in `status` as of `updated_at`.
    pub fn new(status: &str, updated_at: NaiveDateTime) -> Self {
        Self {
            applied: None,
            applied_commit_at: None,
            applying_to: None,
            head: None,
            lag_seconds: None,
            carried: BTreeMap::new(),
            status: status.to_string(),
            error: None,
            updated_at,
        }
    }
}

/// Where an interrupted full sync left off: everything up to `after_key` is durable in
/// `staging`, or, for a table read in segments side by side, everything but `segments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePoint {
    pub staging: String,
    pub key: String,
    /// Read in one sequence of ranges: the last key staged. Read in segments: the first
    /// segment's `after` (for people reading the file; `segments` is what counts).
    pub after_key: String,
    /// Read in segments side by side: the key ranges not staged yet. Such a point's
    /// `schema_fingerprint` ends in [`SEGMENTED`], so that a version that knows no segments
    /// finds it unusable and starts over instead of resuming after `after_key` alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<KeySegment>,
    pub rows: u64,
    pub bytes: u64,
    /// The source clock when the first range was read (UTC, and the cursor's zone).
    pub started: Option<NaiveDateTime>,
    pub started_local: Option<NaiveDateTime>,
    /// The cursor zone's UTC offset when the first range was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_utc_offset: Option<i32>,
    /// The highest cursor value staged so far, as a watermark string.
    pub max_cursor: Option<String>,
    /// The table's columns and key when staging began; a schema change starts over.
    pub schema_fingerprint: String,
    /// A snapshot for a change stream: the change-log position of its first range (the
    /// stream applies the table's changes after it, so a resumed snapshot keeps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_position: Option<ChangePosition>,
    /// The source's estimate of the table's rows when staging began (for progress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_rows: Option<u64>,
}

/// What marks the schema fingerprint of a resume point with segments.
pub const SEGMENTED: &str = "+segments";

/// Keys of one segment of a full sync read side by side: after `after` (exclusive; from the
/// start when `None`) up to `until` (inclusive; to the end when `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySegment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl TableState {
    /// The mode as `status` and the console show it: `SNAPSHOT 37%` while a snapshot for the
    /// change stream is under way, else the sync mode.
    pub fn shown_mode(&self) -> String {
        if let Some(r) = self.resume.as_ref().filter(|r| r.change_position.is_some()) {
            return match r.estimated_rows.filter(|n| *n > 0) {
                Some(n) => format!("SNAPSHOT {}%", (r.rows.saturating_mul(100) / n).min(99)),
                None => "SNAPSHOT".to_string(),
            };
        }
        self.sync_mode.as_str().to_string()
    }

    /// A first full sync that has begun staging and not committed: recorded as failed (it has
    /// not succeeded), so the next run does not take it for a synced table, and resumes it.
    pub fn in_progress(table: &str) -> Self {
        let now = Utc::now().naive_utc();
        Self {
            table_name: table.to_string(),
            last_sync_time: None,
            sync_status: SyncStatus::Failed,
            sync_mode: SyncMode::Full,
            records_synced: 0,
            error_message: Some("first full sync in progress (or interrupted); the next run resumes it".into()),
            updated_at: now,
            watermark: None,
            last_success_at: None,
            duration_seconds: None,
            consecutive_failures: 0,
            key: None,
            resume: None,
            target: None,
            schema_fingerprint: None,
            last_full_at: None,
            in_doubt: None,
            notes: Vec::new(),
            cdc: None,
            window_rows: None,
        }
    }

    /// A success in `mode` that synced `rows` from a read at `read_at` (the source's clock);
    /// the caller adds what it knows beyond that (watermark, key, target, fingerprint…).
    pub fn succeeded(table: &str, mode: SyncMode, rows: u64, read_at: NaiveDateTime) -> Self {
        let now = Utc::now().naive_utc();
        Self {
            last_sync_time: Some(read_at),
            sync_status: SyncStatus::Success,
            sync_mode: mode,
            records_synced: rows,
            error_message: None,
            last_success_at: Some(now),
            last_full_at: (mode == SyncMode::Full).then_some(read_at),
            ..Self::in_progress(table)
        }
    }

    /// A failure: keeps everything the prior state knew that is still true (the last good
    /// watermark, times, key, resume point, target), so nothing already synced is lost.
    pub fn failed(table: &str, prior: Option<&TableState>, mode: Option<SyncMode>, error: &ConnectorError) -> Self {
        let mut state = prior.cloned().unwrap_or_else(|| Self::in_progress(table));
        state.table_name = table.to_string();
        state.sync_status = SyncStatus::Failed;
        state.sync_mode = mode.or(prior.map(|p| p.sync_mode)).unwrap_or(SyncMode::Full);
        state.error_message = Some(error.to_string());
        state.updated_at = Utc::now().naive_utc();
        state.consecutive_failures = prior.map_or(0, |p| p.consecutive_failures) + 1;
        state.records_synced = 0;
        // A failed commit may have written some rows (or be in doubt): the digests no longer
        // say what the target holds.
        state.window_rows = None;
        if let Some(handle) = error.in_doubt() {
            state.in_doubt = Some(handle.to_string());
        }
        state
    }
}

/// Everything a state store knows about one database (tenant).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatabaseState {
    pub database: String,
    pub tables: BTreeMap<String, TableState>,
}

impl DatabaseState {
    pub fn table(&self, table: &str) -> Option<&TableState> {
        self.tables.get(table)
    }
}

/// What a run locks: the whole state (an ordinary run, the state tools), or one worker's
/// share of the tenants (`--shard`). Shares of one `count` do not exclude each other; the whole
/// excludes every share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockScope {
    Whole,
    Shard(crate::tenants::Shard),
}

impl LockScope {
    /// A name for the lock (file or row): `whole`, `shard-1-of-3`.
    pub fn name(&self) -> String {
        match self {
            Self::Whole => "whole".into(),
            Self::Shard(s) => format!("shard-{}-of-{}", s.index, s.count),
        }
    }

    /// Whether a run holding `self` and one holding `other` would sync the same tenants.
    pub fn conflicts_with(&self, other: &LockScope) -> bool {
        match (self, other) {
            (Self::Shard(a), Self::Shard(b)) => a == b || a.count != b.count,
            _ => true,
        }
    }
}

/// How many records [`StateStore::record_batch`] says by default: a big table's tenants are
/// recorded a few hundred at a time.
pub const DEFAULT_RECORD_BATCH: usize = 256;

/// Stores per-table sync state, one record set per database.
#[async_trait]
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// Takes the run lock for `scope` (see [`LockScope`]). Without `wait` a conflicting
    /// concurrent run fails at once; with it, the call waits up to that long for it to finish.
    async fn lock(&self, scope: LockScope, wait: Option<Duration>) -> Result<Box<dyn StateLock>>;
    async fn load(&self, database: &str) -> Result<DatabaseState>;
    /// One table's state in a database (`None`: never recorded). A store that can read one
    /// entry without parsing the database's others overrides this: a run asks once per
    /// tenant and table.
    async fn load_table(&self, database: &str, table: &str) -> Result<Option<TableState>> {
        Ok(self.load(database).await?.tables.remove(table))
    }
    /// Every database the store holds state for, sorted.
    async fn databases(&self) -> Result<Vec<String>>;
    /// Every database's state, as stored now (not as this store last cached it); one that cannot
    /// be read is an error of its own, never skipped.
    async fn load_all(&self) -> Result<Vec<(String, Result<DatabaseState>)>> {
        let mut out = Vec::new();
        for database in self.databases().await? {
            let state = self.load(&database).await;
            out.push((database, state));
        }
        Ok(out)
    }
    /// Records one table's outcome durably (atomic replace).
    async fn record(&self, database: &str, state: TableState) -> Result<()>;
    /// Records many tables' outcomes (a table's tenants after one commit), each durably and
    /// atomically, with one result per record in order. A store that can make a batch durable
    /// at once (one flush for all its files) overrides this; the default records one by one.
    async fn record_many(&self, records: Vec<(String, TableState)>) -> Vec<Result<()>> {
        let mut out = Vec::with_capacity(records.len());
        for (database, state) in records {
            out.push(self.record(&database, state).await);
        }
        out
    }
    /// How many records the runner hands [`StateStore::record_many`] at once. The default, a
    /// few hundred, lets it build a big table's states a group at a time; a store whose every
    /// call is a round trip to a service (one MERGE each) takes a table's tenants in one call.
    fn record_batch(&self) -> usize {
        DEFAULT_RECORD_BATCH
    }
    /// Forgets one table of a database, or the whole database (`table` `None`): the next run
    /// syncs it in full. Returns the tables forgotten.
    async fn forget(&self, database: &str, table: Option<&str>) -> Result<Vec<String>>;
    /// Where the state lives, for messages.
    fn location(&self) -> String;
    /// How often a reader that polls the state (the console) should read it again: reading a
    /// remote store costs queries.
    fn poll_interval(&self) -> Duration {
        Duration::from_secs(3)
    }
    /// Adds a finished run to the history, keeping the last [`crate::history::HISTORY_RUNS`].
    /// A store without a history ignores it.
    async fn record_run(&self, _run: crate::history::RunRecord) -> Result<()> {
        Ok(())
    }
    /// The runs recorded, oldest first.
    async fn runs(&self) -> Result<Vec<crate::history::RunRecord>> {
        Ok(Vec::new())
    }
    /// The change stream's state (`--cdc`), if one was recorded.
    async fn load_stream(&self) -> Result<Option<StreamState>> {
        Ok(None)
    }
    /// Records the change stream's state durably (atomic replace).
    async fn record_stream(&self, _state: StreamState) -> Result<()> {
        Err(ConnectorError::config(format!(
            "the state store at {} cannot keep a change stream's position",
            self.location()
        )))
    }
}

/// Held for the duration of a run; released on drop, or by [`StateLock::release`], which a
/// store whose lock lives remotely uses to give it back at once instead of at its expiry.
#[async_trait]
pub trait StateLock: Send + Sync + std::fmt::Debug {
    async fn release(self: Box<Self>) {}
}
