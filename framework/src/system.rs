//! The system columns every sink adds to a target table, and their names.
//!
//! The defaults are the original tool's (`tenant_id`, `sync_timestamp`, `sync_mode`) plus
//! `_row_hash` for tables without a key. `system_columns` in the pipeline config renames them,
//! e.g. when source tables have a column called `tenant_id` themselves.

use serde::{Deserialize, Serialize};

use crate::error::{ConnectorError, Result};

pub const DEFAULT_TENANT: &str = "tenant_id";
pub const DEFAULT_SYNCED_AT: &str = "sync_timestamp";
pub const DEFAULT_MODE: &str = "sync_mode";
pub const DEFAULT_ROW_HASH: &str = "_row_hash";
/// Soft-deleted rows (CDC with `cdc_deletes: soft`) carry the deletion time here.
pub const DEFAULT_DELETED_AT: &str = "_deleted_at";
/// Rows written by a change stream carry the log position of the change that wrote them.
pub const DEFAULT_CHANGE_SEQ: &str = "_change_seq";

/// The names of the columns the sinks add.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemColumns {
    /// The source database (tenant) of the row.
    #[serde(default = "tenant", rename = "tenant_id")]
    pub tenant: String,
    /// When the row was written by a sync.
    #[serde(default = "synced_at", rename = "sync_timestamp")]
    pub synced_at: String,
    /// `FULL`, `INCREMENTAL` or `CDC`.
    #[serde(default = "mode", rename = "sync_mode")]
    pub mode: String,
    /// Tables without a key: the row's content hash and occurrence number.
    #[serde(default = "row_hash", rename = "_row_hash")]
    pub row_hash: String,
    /// CDC soft deletes: when the row was deleted in the source.
    #[serde(default = "deleted_at", rename = "_deleted_at")]
    pub deleted_at: String,
    /// CDC: the change-log position of the change (or snapshot) that wrote the row.
    #[serde(default = "change_seq", rename = "_change_seq")]
    pub change_seq: String,
}

fn tenant() -> String {
    DEFAULT_TENANT.into()
}
fn synced_at() -> String {
    DEFAULT_SYNCED_AT.into()
}
fn mode() -> String {
    DEFAULT_MODE.into()
}
fn row_hash() -> String {
    DEFAULT_ROW_HASH.into()
}
fn deleted_at() -> String {
    DEFAULT_DELETED_AT.into()
}
fn change_seq() -> String {
    DEFAULT_CHANGE_SEQ.into()
}

impl Default for SystemColumns {
    fn default() -> Self {
        Self {
            tenant: tenant(),
            synced_at: synced_at(),
            mode: mode(),
            row_hash: row_hash(),
            deleted_at: deleted_at(),
            change_seq: change_seq(),
        }
    }
}

impl SystemColumns {
    /// Every system column name with the config key that sets it.
    pub fn all(&self) -> [(&'static str, &str); 6] {
        [
            ("tenant_id", &self.tenant),
            ("sync_timestamp", &self.synced_at),
            ("sync_mode", &self.mode),
            ("_row_hash", &self.row_hash),
            ("_deleted_at", &self.deleted_at),
            ("_change_seq", &self.change_seq),
        ]
    }

    /// The setting that names `column`, when it is a system column (case-insensitive, as
    /// BigQuery compares column names).
    pub fn clash(&self, column: &str) -> Option<&'static str> {
        self.all().into_iter().find(|(_, name)| name.eq_ignore_ascii_case(column)).map(|(key, _)| key)
    }

    /// Names must be non-empty, distinct and usable as column names.
    pub fn validate(&self) -> Result<()> {
        let all = self.all();
        for (i, (key, name)) in all.iter().enumerate() {
            if name.trim().is_empty() || name.len() > 300 || name.contains(['`', '\n', '\0']) {
                return Err(ConnectorError::config(format!(
                    "system_columns.{key}: `{name}` is not a usable column name (1 to 300 characters, no backticks)"
                )));
            }
            if let Some((other, _)) = all[..i].iter().find(|(_, n)| n.eq_ignore_ascii_case(name)) {
                return Err(ConnectorError::config(format!(
                    "system_columns: {other} and {key} are both `{name}`; give each its own name"
                )));
            }
        }
        Ok(())
    }
}
