//! The sink role: the target table a [`Sink`] is asked to hold, the staging protocol
//! ([`Sink::stage`] → [`StagingWriter`] → [`Staged`]), and the atomic [`Sink::commit`].
//!
//! The contract, in the order the runner calls it for one source table name:
//! 1. [`Sink::prepare`] once per run: create or evolve the target table so it can hold every
//!    tenant's columns. It reports the table's [`Prepared::generation`], which the runner keeps
//!    in state: a target table created anew (dropped, expired, another dataset) has another
//!    generation, and every tenant is then synced in full into it.
//! 2. [`Sink::stage`] per tenant: a writer whose rows are durable but invisible once
//!    [`StagingWriter::finish`] returns (a sink whose writers share staging may leave the last
//!    rows to `commit`, which makes them durable before it applies anything).
//! 3. [`Sink::commit`] once per target table with every staged tenant: applied atomically
//!    (all of them or none), except tenants the sink rejects before applying anything
//!    ([`CommitOutcome::rejected`]).
//! 4. [`Sink::discard`] after every commit attempt, successful or not, with the same staged
//!    tenants: the staging is not needed any more either way (a failed commit stages again
//!    next run). Best effort; staging the sink cannot remove must expire on its own.

use async_trait::async_trait;
use serde::Serialize;

use crate::change::ChangeSeq;
use crate::digest::{BucketDigest, DigestSpec, JsonDigest, RowDigest};
use crate::error::{ConnectorError, Result};
use crate::pipeline::CdcDeletes;
use crate::schema::{Column, TableSchema};
use crate::state::SyncMode;
use crate::system::SystemColumns;
use crate::value::RowBatch;

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
    /// Apply a change stream's batch ([`RowBatch::changes`]): per key the newest change wins,
    /// and only over a row an older change (or snapshot) wrote, so applying a batch again
    /// changes nothing. Tables without a key: each change adds or removes one copy of its row,
    /// exactly once.
    ApplyChanges,
}

impl WriteMode {
    /// What the mode does, in a user's words (for `--dry-run`).
    pub fn describe(self) -> &'static str {
        match self {
            WriteMode::ReplaceTenant => "replace the tenant's rows",
            WriteMode::Merge => "upsert by key",
            WriteMode::AppendDedup => "append rows not present yet (by row hash)",
            WriteMode::ApplyChanges => "apply the change stream (newest change per key wins)",
        }
    }
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
    /// Source column → target column name.
    pub rename_columns: std::collections::BTreeMap<String, String>,
    /// The target table's name, when configured (`table_options.<table>.target_table`).
    pub target_table: Option<String>,
}

impl From<&crate::settings::TableOptions> for TargetOptions {
    fn from(options: &crate::settings::TableOptions) -> Self {
        Self {
            partition_by: options.partition_by.clone(),
            cluster_by: options.cluster_by.clone(),
            column_types: options.column_types.clone(),
            rename_columns: options.rename_columns.clone(),
            target_table: options.target_table.clone(),
        }
    }
}

impl TargetOptions {
    /// The target table's name as configured, else the source table's (`source`); a sink may
    /// still map it to a name it can hold ([`Sink::target_name`]).
    pub fn table_name<'a>(&'a self, source: &'a str) -> &'a str {
        self.target_table.as_deref().unwrap_or(source)
    }

    /// The target name of a source column: its `rename_columns` entry, else its own name.
    pub fn target_name<'a>(&'a self, source: &'a str) -> &'a str {
        self.rename_columns.iter().find(|(k, _)| k.eq_ignore_ascii_case(source)).map_or(source, |(_, v)| v.as_str())
    }
}

/// A target table shared by every tenant of one source table name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetTable {
    /// The source table's name (the target table's too, unless `options.target_table` says
    /// otherwise: see [`Sink::target_name`]).
    pub name: String,
    /// The union of the tenants' columns, in first-seen order.
    pub columns: Vec<Column>,
    /// Key columns (without the tenant column); empty when there is none.
    pub key: Vec<String>,
    /// Some tenant's key column allows NULL (possible only for a configured key).
    pub key_nullable: bool,
    pub options: TargetOptions,
    /// The names of the columns every sink adds.
    pub system: SystemColumns,
    /// Written by a change stream (`--cdc`): rows carry the log position that wrote them
    /// (`_change_seq`), and with soft deletes the time they were deleted (`_deleted_at`).
    pub changes: Option<ChangeTracking>,
}

/// How a change stream writes a target table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ChangeTracking {
    pub deletes: CdcDeletes,
}

/// What `prepare` found or made.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prepared {
    /// Identifies this instance of the target table (BigQuery: its creation time). `None` when
    /// the sink cannot tell instances apart.
    pub generation: Option<String>,
    /// The table was created by this `prepare`.
    pub created: bool,
    /// Things the operator should know (e.g. a dataset default expiration), logged as warnings.
    pub warnings: Vec<String>,
}

/// Where an interrupted run left staged rows that a new writer may continue.
#[derive(Debug, Clone, Copy)]
pub struct ResumeFrom<'a> {
    /// From [`StagingWriter::handle`] of the interrupted writer.
    pub handle: &'a str,
    /// The rows the interrupted writer had made durable (its last checkpoint).
    pub rows: u64,
}

/// Everything `stage` needs to start one tenant's writer.
#[derive(Debug, Clone, Copy)]
pub struct StageRequest<'a> {
    pub table: &'a TargetTable,
    /// The tenant's own table (its columns are a subset of the target's).
    pub tenant: &'a TableSchema,
    pub mode: SyncMode,
    pub write: WriteMode,
    /// Continue the staging of an interrupted full sync instead of starting anew. A sink that
    /// cannot resume returns an error, and the runner starts the table over.
    pub resume: Option<ResumeFrom<'a>>,
}

/// One tenant's rows, staged and not yet visible.
#[derive(Debug, Clone)]
pub struct Staged {
    pub tenant: String,
    pub mode: SyncMode,
    pub write: WriteMode,
    /// Rows staged, including those of an interrupted writer this one resumed.
    pub rows: u64,
    pub bytes: u64,
    /// The tenant's own columns (a subset of the target's). Shared: a table's thousand
    /// tenants wait for its commit with the same lists.
    pub columns: std::sync::Arc<[String]>,
    /// The staged type of each of `columns`, in the sink's type names.
    pub types: std::sync::Arc<[String]>,
    /// Sink-specific location of the staged data (e.g. a staging table and writer).
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

/// A commit's result: what was applied, and the tenants the sink refused before applying
/// anything (their staged data is unusable, e.g. a load of their rows failed). The other
/// tenants were committed.
#[derive(Debug, Default)]
pub struct CommitOutcome {
    pub summary: CommitSummary,
    pub rejected: Vec<(String, ConnectorError)>,
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

/// How the target would look after `prepare`, for `--dry-run`.
#[derive(Debug, Clone, Default)]
pub struct TargetPlan {
    /// `column TYPE` for every column the target will have.
    pub columns: Vec<String>,
    /// The schema changes `prepare` would make (`add column x NUMERIC`, …).
    pub changes: Vec<String>,
}

/// Writes tables to a destination, atomically per commit.
#[async_trait]
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// Identifies this sink in state paths, reports and metrics.
    fn id(&self) -> &str;
    /// Where this sink writes (kind, endpoint, project, dataset…), with no secret in it. State
    /// records it; state written for one destination is never used for another.
    fn destination(&self) -> String;
    /// How the target would look and what `prepare` would change, without changing anything.
    async fn plan(&self, table: &TargetTable) -> Result<TargetPlan>;
    /// Creates the target table, or adds and widens the columns it needs.
    async fn prepare(&self, table: &TargetTable) -> Result<Prepared>;
    /// Starts (or resumes) staging one tenant's rows.
    async fn stage(&self, request: StageRequest<'_>) -> Result<Box<dyn StagingWriter>>;
    /// Applies every staged tenant to the target in one atomic step.
    async fn commit(&self, table: &TargetTable, staged: &[Staged]) -> Result<CommitOutcome>;
    /// Drops the staging of these tenants after a commit attempt (best effort).
    async fn discard(&self, staged: &[Staged]);
    /// The name this sink gives the target table of source table `source` with `options`:
    /// the configured or source name, mapped to one the destination can hold. The runner
    /// refuses two source tables whose target names are the same.
    fn target_name(&self, source: &str, options: &TargetOptions) -> String {
        options.table_name(source).to_string()
    }
    /// Per-bucket digests of these tenants' rows of the target table (see [`crate::digest`]),
    /// in one pass over the table.
    async fn digest_buckets(
        &self,
        _table: &TargetTable,
        spec: &DigestSpec,
        _tenants: &[String],
    ) -> Result<Vec<(String, BucketDigest)>> {
        Err(crate::source::no_digests(&spec.table))
    }
    /// The row digests of these (tenant, bucket) pairs.
    async fn digest_rows(
        &self,
        _table: &TargetTable,
        spec: &DigestSpec,
        _wanted: &[(String, u32)],
    ) -> Result<Vec<(String, RowDigest)>> {
        Err(crate::source::no_digests(&spec.table))
    }
    /// Bytes the destination billed for this sink's reads so far (verify's queries), where it
    /// reports them.
    fn bytes_billed(&self) -> Option<u64> {
        None
    }
    /// Per tenant and bucket, the rows and the exact sum of their JSON digests
    /// ([`crate::digest::json_string`]), in `BucketDigest::json_sum`.
    async fn json_digests(
        &self,
        _table: &TargetTable,
        spec: &DigestSpec,
        _tenants: &[String],
    ) -> Result<Vec<(String, BucketDigest)>> {
        Err(crate::source::no_digests(&spec.table))
    }
    /// The documents of the spec's JSON columns: every row of these tenants, or only the rows
    /// of these (tenant, bucket) pairs.
    async fn json_documents(
        &self,
        _table: &TargetTable,
        spec: &DigestSpec,
        _tenants: &[String],
        _buckets: Option<&[(String, u32)]>,
    ) -> Result<Vec<(String, JsonDigest)>> {
        Err(crate::source::no_digests(&spec.table))
    }
    /// Replaces, in one transaction, every row of `tenant` whose key string (keyless: row
    /// digest) is one of `keys` with the rows staged in `staged` (the source's rows for those
    /// keys now). Other rows and tenants are untouched; no watermark moves.
    async fn repair(
        &self,
        _table: &TargetTable,
        spec: &DigestSpec,
        _tenant: &str,
        _keys: &[String],
        _staged: &Staged,
    ) -> Result<CommitSummary> {
        Err(crate::source::no_digests(&spec.table))
    }
    /// Whether the destination answers now: asked once at the start of a run with several
    /// targets, with few and short retries. A target that does not answer is skipped for that
    /// whole run (its tables fail, its state stays, the next run catches it up), so the healthy
    /// targets do not wait on its retries table after table.
    async fn probe(&self) -> Result<()> {
        Ok(())
    }
    /// Settles a write whose outcome was unknown (`handle` from
    /// [`ConnectorError::in_doubt`]): it returns once that write has ended, one way or the
    /// other, and can no longer land after a newer one; an error leaves it in doubt.
    async fn resolve(&self, _handle: &str) -> Result<()> {
        Ok(())
    }
    /// A change stream's `TRUNCATE`: removes (or, with soft deletes, marks deleted) every row of
    /// `tenant` that a change or snapshot before `before` wrote; rows of later changes stay.
    async fn truncate(&self, table: &TargetTable, tenant: &str, _before: &ChangeSeq) -> Result<()> {
        Err(ConnectorError::permanent(format!(
            "{tenant}.{}: sink `{}` cannot apply a TRUNCATE from a change stream",
            table.name,
            self.id()
        )))
    }
    /// `drop_missing_tenants`: deletes every row of `tenant` from these target tables (names
    /// as [`Sink::target_name`] gives them) all at once or not at all, and returns how many rows
    /// went. A table that does not exist holds none.
    async fn drop_tenant(&self, tenant: &str, _tables: &[String], _system: &SystemColumns) -> Result<u64> {
        Err(ConnectorError::config(format!(
            "tenant `{tenant}`: sink `{}` cannot delete a tenant's rows; set drop_missing_tenants to false",
            self.id()
        )))
    }
}
