//! The four traits a pipeline is assembled from: [`Source`], [`Sink`], [`StateStore`] and
//! [`Strategy`]. All are object safe; the runner holds them as trait objects.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::NaiveDateTime;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::error::Result;
use crate::schema::{Column, TableRef, TableSchema};
use crate::state::{DatabaseState, SyncMode, TableState};
use crate::value::{RowBatch, Value};

/// The channel a source pushes batches into; bounded, so a slow sink slows the reader
/// instead of filling memory.
pub type BatchSender = mpsc::Sender<RowBatch>;

/// Which rows to read.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReadRange {
    /// Every row.
    Full,
    /// Rows whose `cursor` is at or after `from` (inclusive), plus rows whose cursor is NULL
    /// when `include_nulls` (see [`NullCursorPolicy`]).
    Since { cursor: String, from: String, include_nulls: bool },
    /// The next `limit` rows in `key` order after `after` (exclusive; from the start when
    /// `None`): one range of a full sync read in key ranges.
    KeyRange { key: String, after: Option<String>, limit: u64 },
}

impl ReadRange {
    /// `all rows`, or `updated_at >= '2025-01-01 00:00:00.000000'` (plus NULLs when included).
    pub fn describe(&self) -> String {
        match self {
            ReadRange::Full => "all rows".to_string(),
            ReadRange::Since { cursor, from, include_nulls } => {
                let nulls = if *include_nulls { format!(" or {cursor} IS NULL") } else { String::new() };
                format!("{cursor} >= '{from}'{nulls}")
            }
            ReadRange::KeyRange { key, after: None, limit } => format!("all rows, in ranges of {limit} by {key}"),
            ReadRange::KeyRange { key, after: Some(after), limit } => {
                format!("all rows, in ranges of {limit} by {key}, resumed after {key} = {after}")
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReadRequest {
    pub schema: Arc<TableSchema>,
    pub range: ReadRange,
    /// Rows per batch.
    pub batch_size: usize,
    /// The cursor column whose highest value the source reports, if any.
    pub track_cursor: Option<String>,
}

/// What a finished read saw.
#[derive(Debug, Clone, Default)]
pub struct ReadSummary {
    pub rows: u64,
    pub bytes: u64,
    /// The source server's clock (UTC) inside the read's snapshot.
    pub snapshot_time: Option<NaiveDateTime>,
    /// The same instant in the source server's default time zone (for DATETIME cursors,
    /// which applications usually stamp in that zone).
    pub snapshot_local_time: Option<NaiveDateTime>,
    /// The highest value of `track_cursor` among the rows read.
    pub max_cursor: Option<Value>,
    /// Invalid dates ('0000-00-00') written as NULL.
    pub zero_dates_nulled: u64,
    /// Rows with a NULL cursor that an incremental read left out (policy `report`).
    pub null_cursor_rows_skipped: u64,
    /// For key-range reads: the key of the last row read.
    pub last_key: Option<String>,
    /// How the rows were read, when it differs from the plan (key ranges, a resume).
    pub window: Option<String>,
}

/// Reads tables from a database server.
#[async_trait]
pub trait Source: Send + Sync + std::fmt::Debug {
    /// The databases (tenants) this source is configured to read.
    fn databases(&self) -> Vec<String>;
    /// The base tables of one database.
    async fn list_tables(&self, database: &str) -> Result<Vec<String>>;
    /// Columns, types and key of one table.
    async fn discover(&self, table: &TableRef) -> Result<TableSchema>;
    /// Streams the requested rows into `output` from one consistent snapshot.
    async fn read(&self, request: ReadRequest, output: BatchSender) -> Result<ReadSummary>;
    /// Releases connections.
    async fn close(&self) {}
}

/// How staged rows are applied to the target table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// Replace all of this tenant's rows (full sync).
    ReplaceTenant,
    /// Update rows matched on `(tenant, key)`, insert the rest.
    Merge,
    /// Insert rows whose content hash is not present yet (tables without a key).
    AppendDedup,
}

/// Per-table target settings (from the pipeline config).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TargetOptions {
    /// Partition column; `None` uses the sink's default.
    pub partition_by: Option<String>,
    /// Clustering columns; `None` uses the sink's default.
    pub cluster_by: Option<Vec<String>>,
    /// Target type per column, overriding the sink's default mapping.
    pub column_types: std::collections::BTreeMap<String, String>,
}

/// A target table shared by every tenant of one source table name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetTable {
    /// Source table name, also the target table's name.
    pub name: String,
    /// The union of the tenants' columns, in first-seen order.
    pub columns: Vec<Column>,
    /// Key columns (without the tenant column); empty when there is none.
    pub key: Vec<String>,
    /// Some tenant's key column allows NULL (possible only for a configured key).
    pub key_nullable: bool,
    pub options: TargetOptions,
}

/// One tenant's rows, staged and not yet visible.
#[derive(Debug, Clone)]
pub struct Staged {
    pub tenant: String,
    pub mode: SyncMode,
    pub write: WriteMode,
    pub rows: u64,
    pub bytes: u64,
    /// The tenant's own columns (a subset of the target's).
    pub columns: Vec<String>,
    /// The staged type of each of `columns`, in the sink's type names.
    pub types: Vec<String>,
    /// Sink-specific location of the staged data (e.g. a staging table).
    pub handle: Option<String>,
}

/// What a commit changed.
#[derive(Debug, Clone, Default)]
pub struct CommitSummary {
    pub rows_deleted: Option<u64>,
    pub rows_inserted: Option<u64>,
    /// Bytes the target billed for the commit, where it reports them.
    pub bytes_billed: Option<u64>,
}

/// Receives one tenant's batches for one table.
#[async_trait]
pub trait StagingWriter: Send {
    async fn write(&mut self, batch: &RowBatch) -> Result<()>;
    /// Makes every row written so far durable in staging, so a later run can resume after it.
    async fn checkpoint(&mut self) -> Result<()> {
        Ok(())
    }
    /// The staging location a later run can resume into, if the sink supports resuming.
    fn handle(&self) -> Option<String> {
        None
    }
    /// Ends this writer. Every written row is durable in staging when it returns, or, where
    /// writers share staging (the BigQuery sink: all tenants of a table), `Sink::commit` makes
    /// the last ones durable before it applies anything.
    async fn finish(self: Box<Self>) -> Result<Staged>;
}

/// Writes tables to a destination, atomically per commit.
#[async_trait]
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// Identifies this sink in state paths, reports and metrics.
    fn id(&self) -> &str;
    /// How each column would be stored, for `--dry-run` (`column: TYPE`).
    fn describe_columns(&self, table: &TargetTable) -> Vec<String>;
    /// The schema changes `prepare` would make (`add column x NUMERIC`, …), without making
    /// them; for `--dry-run`.
    async fn plan_changes(&self, table: &TargetTable) -> Result<Vec<String>>;
    /// Creates the target table, or adds and widens the columns it needs.
    async fn prepare(&self, table: &TargetTable) -> Result<()>;
    /// Starts staging one tenant's rows.
    async fn stage(
        &self,
        table: &TargetTable,
        tenant: &TableSchema,
        mode: SyncMode,
        write: WriteMode,
    ) -> Result<Box<dyn StagingWriter>>;
    /// Reopens staging written by an interrupted run (`handle` from [`StagingWriter::handle`],
    /// holding `rows` rows) to append the rest. Sinks that cannot resume say so, and the run
    /// starts over.
    async fn resume_stage(
        &self,
        _table: &TargetTable,
        tenant: &TableSchema,
        _mode: SyncMode,
        _write: WriteMode,
        _handle: &str,
        _rows: u64,
    ) -> Result<Box<dyn StagingWriter>> {
        Err(crate::error::ConnectorError::permanent(format!("{}: this sink cannot resume staging", tenant.table)))
    }
    /// Applies every staged tenant to the target in one atomic step.
    async fn commit(&self, table: &TargetTable, staged: &[Staged]) -> Result<CommitSummary>;
    /// Removes staged data that will not be committed (best effort).
    async fn discard(&self, staged: &[Staged]);
}

/// Stores per-table sync state, one record set per database.
#[async_trait]
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// Takes the exclusive run lock; a second concurrent run fails at once.
    async fn lock(&self) -> Result<Box<dyn StateLock>>;
    async fn load(&self, database: &str) -> Result<DatabaseState>;
    /// Records one table's outcome durably (atomic replace).
    async fn record(&self, database: &str, state: TableState) -> Result<()>;
    /// Where the state lives, for messages.
    fn location(&self) -> String;
}

/// Held for the duration of a run; released on drop.
pub trait StateLock: Send + Sync + std::fmt::Debug {}

/// Settings the strategy plans with.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// `--full` was given.
    pub force_full: bool,
    pub lookback_minutes: u64,
    /// Cursor column named in the config for this table.
    pub cursor_override: Option<String>,
    /// The guide's rule: a failed last sync forces a full one.
    pub full_after_failure: bool,
    pub null_cursor: NullCursorPolicy,
}

/// What incremental reads do with rows whose cursor is NULL (they are never silently lost).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NullCursorPolicy {
    /// Read them in every incremental run too (idempotent writes absorb the repeats).
    #[default]
    Include,
    /// Leave them to full syncs and report how many there are in each run.
    Report,
}

/// What the runner will do with one table of one tenant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TablePlan {
    pub mode: SyncMode,
    pub write: WriteMode,
    pub range: ReadRange,
    /// The cursor column, when the table has one.
    pub cursor: Option<String>,
    /// Why this mode was chosen, in words.
    pub reason: String,
}

/// Chooses full or incremental sync for each table.
pub trait Strategy: Send + Sync + std::fmt::Debug {
    fn plan(&self, schema: &TableSchema, prior: Option<&TableState>, options: &PlanOptions) -> TablePlan;
}
