//! What a state store remembers about each table, in the original tool's file format.

use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};

/// How a table was (or will be) synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SyncMode {
    Full,
    Incremental,
}

impl SyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Full => "FULL",
            SyncMode::Incremental => "INCREMENTAL",
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

/// The highest cursor value committed to the target, at full precision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    pub column: String,
    /// The cursor column's logical type, e.g. `datetime`, `timestamp`, `date`.
    pub column_type: String,
    /// `YYYY-MM-DD HH:MM:SS.ffffff` (UTC for timestamps), never rounded.
    pub value: String,
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
    pub resume: Option<ResumePoint>,
}

/// Where an interrupted full sync left off: everything up to `after_key` is durable in
/// `staging`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePoint {
    pub staging: String,
    pub key: String,
    pub after_key: String,
    pub rows: u64,
    pub bytes: u64,
    /// The source clock when the first range was read (UTC, and the server's zone).
    pub started: Option<NaiveDateTime>,
    pub started_local: Option<NaiveDateTime>,
    /// The highest cursor value staged so far, as a watermark string.
    pub max_cursor: Option<String>,
    /// The table's columns and key when staging began; a schema change starts over.
    pub schema_fingerprint: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Everything a state store knows about one database (tenant).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DatabaseState {
    pub database: String,
    pub tables: std::collections::BTreeMap<String, TableState>,
}

impl DatabaseState {
    pub fn table(&self, table: &str) -> Option<&TableState> {
        self.tables.get(table)
    }
}
