//! Run-wide settings and per-table options: the top-level keys of a pipeline besides its
//! components, their documentation (what `describe` and the config errors use), defaults and
//! value checks.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{self, FieldDoc, Problem, lenient, string_list};
use crate::retry::RetryPolicy;
use crate::system::SystemColumns;

/// Per-table overrides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableOptions {
    /// Cursor column for incremental sync (default: detected by name).
    #[serde(default)]
    pub cursor_column: Option<String>,
    /// Row key for tables whose key is not a declared primary key.
    #[serde(default, deserialize_with = "string_list::deserialize")]
    pub primary_key: Vec<String>,
    /// Partition column in the target (default: `sync_timestamp`).
    #[serde(default)]
    pub partition_by: Option<String>,
    /// Clustering columns in the target (default: `tenant_id`).
    #[serde(default)]
    pub cluster_by: Option<Vec<String>>,
    /// Target type per column, overriding the default mapping (e.g. `{"is_active": "BOOL"}`).
    #[serde(default)]
    pub column_types: BTreeMap<String, String>,
    /// Columns never read from the source (left out of the SELECT).
    #[serde(default, deserialize_with = "string_list::deserialize")]
    pub exclude_columns: Vec<String>,
    /// Source column → target column name.
    #[serde(default)]
    pub rename_columns: BTreeMap<String, String>,
    /// The target table's name (default: the source table's, as far as the target can hold it).
    #[serde(default)]
    pub target_table: Option<String>,
    /// Sync this table in full when its last full sync is older than this (seconds; written
    /// as `"24h"`, `"7d"`, …).
    #[serde(default, deserialize_with = "config::duration_secs::deserialize")]
    pub full_every: Option<u64>,
    /// The zone DATETIME cursor values are stamped in (default: the source's zone).
    #[serde(default)]
    pub cursor_time_zone: Option<String>,
}

/// The keys of one `table_options` entry.
pub const TABLE_OPTION_FIELDS: &[FieldDoc] = &[
    FieldDoc {
        name: "cursor_column",
        ty: "string",
        required: false,
        default: "detected by name",
        doc: "cursor column for incremental syncs",
    },
    FieldDoc {
        name: "primary_key",
        ty: "list of strings",
        required: false,
        default: "the table's key",
        doc: "row key for tables without a declared one",
    },
    FieldDoc {
        name: "partition_by",
        ty: "string",
        required: false,
        default: "the sink's (sync_timestamp)",
        doc: "target partition column, or none",
    },
    FieldDoc {
        name: "cluster_by",
        ty: "list of strings",
        required: false,
        default: "the sink's (tenant_id)",
        doc: "target clustering columns",
    },
    FieldDoc {
        name: "column_types",
        ty: "object",
        required: false,
        default: "{}",
        doc: "target type per column, e.g. {\"is_active\": \"BOOL\"}",
    },
    FieldDoc {
        name: "exclude_columns",
        ty: "list of strings",
        required: false,
        default: "none",
        doc: "columns never read from the source",
    },
    FieldDoc {
        name: "rename_columns",
        ty: "object",
        required: false,
        default: "{}",
        doc: "source column → target column name",
    },
    FieldDoc {
        name: "target_table",
        ty: "string",
        required: false,
        default: "the source table's name",
        doc: "the name of the target table",
    },
    FieldDoc {
        name: "full_every",
        ty: "duration",
        required: false,
        default: "never",
        doc: "sync in full when the last full sync is older than this, e.g. \"24h\"",
    },
    FieldDoc {
        name: "cursor_time_zone",
        ty: "zone",
        required: false,
        default: "cursor_time_zone",
        doc: "zone DATETIME cursors are stamped in",
    },
];

/// Run-wide settings, also top-level keys of the general form.
pub const SETTINGS_FIELDS: &[FieldDoc] = &[
    FieldDoc {
        name: "batch_size",
        ty: "integer",
        required: false,
        default: "1000",
        doc: "rows per batch read from the source",
    },
    FieldDoc {
        name: "max_retries",
        ty: "integer",
        required: false,
        default: "3",
        doc: "retries of a transient failure",
    },
    FieldDoc {
        name: "retry_delay",
        ty: "seconds",
        required: false,
        default: "5",
        doc: "first retry wait; doubles, jittered",
    },
    FieldDoc {
        name: "concurrency",
        ty: "integer",
        required: false,
        default: "5",
        doc: "tables read at once (as many more may be committing meanwhile)",
    },
    FieldDoc {
        name: "lookback_minutes",
        ty: "integer",
        required: false,
        default: "10",
        doc: "incremental reads start this long before the watermark",
    },
    FieldDoc {
        name: "full_after_failure",
        ty: "boolean",
        required: false,
        default: "false",
        doc: "the original tool's rule: a failed table syncs in full next time",
    },
    FieldDoc {
        name: "chunk_rows",
        ty: "integer",
        required: false,
        default: "1000000",
        doc: "full syncs of tables with an integer key read this many rows per key range, and resume after a crash from the last range staged; 0 reads in one pass",
    },
    FieldDoc {
        name: "range_readers",
        ty: "integer",
        required: false,
        default: "2",
        doc: "a full sync of a table of more than chunk_rows rows splits its key space into up to this many segments read at once, each on its own connection (the source's pool makes the rest wait); 1 reads its ranges one after another",
    },
    FieldDoc {
        name: "null_cursor",
        ty: "include | report",
        required: false,
        default: "include",
        doc: "rows whose cursor is NULL: read them in every incremental run, or leave them to full runs and report how many",
    },
    FieldDoc {
        name: "log_file",
        ty: "path",
        required: false,
        default: "sync_incremental.log",
        doc: "log file, appended to",
    },
    FieldDoc {
        name: "full_every",
        ty: "duration",
        required: false,
        default: "never",
        doc: "sync a table in full when its last full sync is older than this (e.g. \"24h\"); per table in table_options too",
    },
    FieldDoc {
        name: "cursor_time_zone",
        ty: "zone",
        required: false,
        default: "the source's zone",
        doc: "zone DATETIME cursors are stamped in: an IANA name (America/New_York) or an offset (-05:00)",
    },
    FieldDoc {
        name: "cdc_flush_seconds",
        ty: "seconds",
        required: false,
        default: "30",
        doc: "--cdc applies what it read at most this often (each apply is a load and a MERGE per changed table; docs/cdc.md)",
    },
    FieldDoc {
        name: "cdc_server_id",
        ty: "integer",
        required: false,
        default: "3141590000",
        doc: "--cdc: the id its change stream registers with on the source server (target i: this + i); unique there",
    },
    FieldDoc {
        name: "cdc_deletes",
        ty: "delete | soft",
        required: false,
        default: "delete",
        doc: "--cdc: a deleted row leaves the target (delete), or stays with _deleted_at set (soft)",
    },
    FieldDoc {
        name: "repair_max_delete_pct",
        ty: "percent",
        required: false,
        default: "10",
        doc: "verify --repair refuses to delete more than this share of a tenant's rows without --force",
    },
    FieldDoc {
        name: "delete_detection",
        ty: "none | verify",
        required: false,
        default: "none",
        doc: "verify: after each sync, compare keys and delete rows gone from the source (docs/verify.md)",
    },
    FieldDoc {
        name: "freshness_slo_minutes",
        ty: "integer",
        required: false,
        default: "2 × the serve schedule, else 120",
        doc: "a table whose last success is older than this is stale: the console shows it, /healthz fails, and a `stale` alert is sent",
    },
    FieldDoc {
        name: "alerts",
        ty: "list of objects",
        required: false,
        default: "none",
        doc: "messages when a table fails, recovers or goes stale: [{\"kind\": \"webhook\", \"url\": ..., \"on\": [\"failure\", \"recovery\", \"stale\"]}, {\"kind\": \"command\", \"run\": [...]}] (docs/console.md)",
    },
    FieldDoc {
        name: "drop_missing_tenants",
        ty: "boolean",
        required: false,
        default: "false",
        doc: "a tenant matched by a db_list pattern that is gone from the server has its rows deleted from the targets (atomically, counted in the report) and its state forgotten; false keeps them",
    },
    FieldDoc {
        name: "system_columns",
        ty: "object",
        required: false,
        default: "tenant_id, sync_timestamp, sync_mode, _row_hash, _deleted_at, _change_seq",
        doc: "names of the columns the sinks add, e.g. {\"tenant_id\": \"_tenant_id\"}",
    },
];

/// Run-wide settings, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    #[serde(deserialize_with = "lenient::deserialize")]
    pub batch_size: usize,
    #[serde(deserialize_with = "lenient::deserialize")]
    pub max_retries: u32,
    /// Seconds.
    #[serde(deserialize_with = "lenient::deserialize")]
    pub retry_delay: f64,
    #[serde(deserialize_with = "lenient::deserialize")]
    pub concurrency: usize,
    #[serde(deserialize_with = "lenient::deserialize")]
    pub lookback_minutes: u64,
    pub full_after_failure: bool,
    pub null_cursor: crate::strategy::NullCursorPolicy,
    #[serde(deserialize_with = "lenient::deserialize")]
    pub chunk_rows: u64,
    /// Segments of a big table's key space read at once in a full sync (`runner/resume.rs`).
    #[serde(deserialize_with = "lenient::deserialize")]
    pub range_readers: usize,
    pub log_file: Option<String>,
    /// Seconds; see [`TableOptions::full_every`].
    #[serde(deserialize_with = "config::duration_secs::deserialize")]
    pub full_every: Option<u64>,
    pub cursor_time_zone: Option<String>,
    /// `--cdc`: seconds between applies.
    #[serde(deserialize_with = "lenient::deserialize")]
    pub cdc_flush_seconds: f64,
    /// `--cdc`: the replica id of the first target's stream.
    #[serde(deserialize_with = "lenient::deserialize")]
    pub cdc_server_id: u32,
    pub cdc_deletes: CdcDeletes,
    pub system_columns: SystemColumns,
    /// `verify --repair` refuses to delete more than this share (%) of a tenant's rows unless
    /// forced.
    #[serde(deserialize_with = "lenient::deserialize")]
    pub repair_max_delete_pct: f64,
    /// After each sync, find rows deleted in the source and remove them (`verify`), or not.
    pub delete_detection: DeleteDetection,
    /// Tenants gone from the server: delete their rows from the targets, or keep them.
    pub drop_missing_tenants: bool,
    /// Minutes after the last success when a table counts as stale.
    #[serde(deserialize_with = "lenient::option::deserialize")]
    pub freshness_slo_minutes: Option<u64>,
    /// Where to send a message when a table fails, recovers or goes stale.
    pub alerts: Vec<crate::alerts::AlertConfig>,
}

/// Whether a sync looks for rows deleted in the source afterwards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteDetection {
    /// Cursor syncs cannot see deletes; a full sync (or `verify --repair`) removes them.
    #[default]
    None,
    /// After the sync, the keys of each synced table are compared (`verify --keys-only`) and
    /// rows gone from the source are deleted, under the repair guard.
    Verify,
}

/// What `--cdc` does in the target with a row deleted in the source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CdcDeletes {
    /// The row is deleted.
    #[default]
    Delete,
    /// The row stays, with `_deleted_at` set to when it was deleted (tables with a key; rows
    /// of tables without one are deleted).
    Soft,
}

/// The default `cdc_server_id`: far above the ids people give servers and replicas.
pub const DEFAULT_CDC_SERVER_ID: u32 = 3_141_590_000;

impl Default for Settings {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            max_retries: 3,
            retry_delay: 5.0,
            concurrency: 5,
            lookback_minutes: 10,
            full_after_failure: false,
            null_cursor: crate::strategy::NullCursorPolicy::Include,
            chunk_rows: 1_000_000,
            range_readers: 2,
            log_file: Some("sync_incremental.log".into()),
            full_every: None,
            cursor_time_zone: None,
            cdc_flush_seconds: 30.0,
            cdc_server_id: DEFAULT_CDC_SERVER_ID,
            cdc_deletes: CdcDeletes::Delete,
            system_columns: SystemColumns::default(),
            repair_max_delete_pct: 10.0,
            delete_detection: DeleteDetection::None,
            drop_missing_tenants: false,
            freshness_slo_minutes: None,
            alerts: Vec::new(),
        }
    }
}

impl Settings {
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.max_retries,
            base_delay: Duration::from_secs_f64(self.retry_delay.max(0.0)),
            max_delay: Duration::from_secs(300),
        }
    }

    /// Every setting out of range, each with its key.
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        // A century is generous and keeps date arithmetic far from overflow.
        if self.lookback_minutes > 100 * 366 * 24 * 60 {
            out.push(Problem::at(
                "lookback_minutes",
                format!("at most 52704000 (a century), got {}", self.lookback_minutes),
            ));
        }
        if self.batch_size == 0 || self.batch_size > 1_000_000 {
            out.push(Problem::at("batch_size", format!("between 1 and 1000000, got {}", self.batch_size)));
        }
        if self.range_readers == 0 || self.range_readers > 64 {
            out.push(Problem::at("range_readers", format!("between 1 and 64, got {}", self.range_readers)));
        }
        if self.concurrency == 0 || self.concurrency > 256 {
            out.push(Problem::at("concurrency", format!("between 1 and 256, got {}", self.concurrency)));
        }
        if !self.retry_delay.is_finite() || self.retry_delay < 0.0 || self.retry_delay > 3600.0 {
            out.push(Problem::at("retry_delay", format!("between 0 and 3600 seconds, got {}", self.retry_delay)));
        }
        if !self.cdc_flush_seconds.is_finite() || self.cdc_flush_seconds < 0.2 || self.cdc_flush_seconds > 86_400.0 {
            out.push(Problem::at(
                "cdc_flush_seconds",
                format!("between 0.2 and 86400 seconds, got {}", self.cdc_flush_seconds),
            ));
        }
        if self.cdc_server_id == 0 {
            out.push(Problem::at("cdc_server_id", "must not be 0 (servers refuse a replica id of 0)"));
        }
        if !self.repair_max_delete_pct.is_finite() || !(0.0..=100.0).contains(&self.repair_max_delete_pct) {
            out.push(Problem::at(
                "repair_max_delete_pct",
                format!("between 0 and 100, got {}", self.repair_max_delete_pct),
            ));
        }
        for (i, alert) in self.alerts.iter().enumerate() {
            if let Some(p) = alert.problem() {
                out.push(Problem::at("alerts", format!("entry {}: {p}", i + 1)));
            }
        }
        if self.freshness_slo_minutes == Some(0) {
            out.push(Problem::at("freshness_slo_minutes", "must be at least 1"));
        }
        if self.max_retries > 100 {
            out.push(Problem::at("max_retries", format!("at most 100, got {}", self.max_retries)));
        }
        if let Err(e) = self.system_columns.validate() {
            out.push(Problem::at(
                "system_columns",
                e.message().trim_start_matches("system_columns").trim_start_matches(['.', ':', ' ']).to_string(),
            ));
        }
        out
    }
}
