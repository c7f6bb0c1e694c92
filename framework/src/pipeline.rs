//! The general pipeline config: any registered source, sinks and state store.
//!
//! Config moves through three stages: [`PipelineSpec`] is the raw JSON shape; [`Pipeline`] is
//! parsed and validated without any I/O (what `connector-run validate` checks); the runner then
//! builds the components, which is where connections are made.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{self, FieldDoc, lenient, string_list};
use crate::error::{ConnectorError, Result};
use crate::registry::{self, SinkConfig, SourceConfig, StateConfig};
use crate::retry::RetryPolicy;

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
}

/// Target types a `column_types` override may name.
pub const OVERRIDE_TYPES: &[&str] = &[
    "STRING",
    "INT64",
    "NUMERIC",
    "BIGNUMERIC",
    "FLOAT64",
    "BOOL",
    "BYTES",
    "DATE",
    "DATETIME",
    "TIMESTAMP",
    "TIME",
    "JSON",
    "GEOGRAPHY",
];

/// The documented top-level keys of the general form: components and tables.
pub const PIPELINE_FIELDS: &[FieldDoc] = &[
    FieldDoc {
        name: "source",
        ty: "object",
        required: true,
        default: "",
        doc: "{\"kind\": ..., ...} (see `connector-run list`)",
    },
    FieldDoc {
        name: "sinks",
        ty: "list of objects",
        required: true,
        default: "",
        doc: "each {\"kind\": ..., \"id\": ..., ...}",
    },
    FieldDoc { name: "state", ty: "object", required: true, default: "", doc: "{\"kind\": \"json\", ...}" },
    FieldDoc {
        name: "tables",
        ty: "list of strings",
        required: false,
        default: "every base table",
        doc: "tables to sync in each database",
    },
    FieldDoc {
        name: "table_options",
        ty: "object",
        required: false,
        default: "{}",
        doc: "per-table cursor_column, primary_key, partition_by, cluster_by",
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
    FieldDoc { name: "concurrency", ty: "integer", required: false, default: "5", doc: "tables read at once" },
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
];

/// The raw general form.
#[derive(Debug, Clone, Deserialize)]
pub struct PipelineSpec {
    pub source: serde_json::Value,
    pub sinks: Vec<serde_json::Value>,
    pub state: serde_json::Value,
    #[serde(default, deserialize_with = "string_list::deserialize")]
    pub tables: Vec<String>,
    #[serde(default)]
    pub table_options: BTreeMap<String, TableOptions>,
    #[serde(default)]
    pub settings: Settings,
}

/// Run-wide settings, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    #[serde(default)]
    pub null_cursor: crate::traits::NullCursorPolicy,
    #[serde(default = "default_chunk_rows", deserialize_with = "lenient::deserialize")]
    pub chunk_rows: u64,
    pub log_file: Option<String>,
}

fn default_chunk_rows() -> u64 {
    1_000_000
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            max_retries: 3,
            retry_delay: 5.0,
            concurrency: 5,
            lookback_minutes: 10,
            full_after_failure: false,
            null_cursor: crate::traits::NullCursorPolicy::Include,
            chunk_rows: default_chunk_rows(),
            log_file: Some("sync_incremental.log".into()),
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

    fn validate(&self) -> Result<()> {
        // A century is generous and keeps date arithmetic far from overflow.
        if self.lookback_minutes > 100 * 366 * 24 * 60 {
            return Err(ConnectorError::config(format!(
                "lookback_minutes must be at most 52704000 (a century), got {}",
                self.lookback_minutes
            )));
        }
        if self.batch_size == 0 || self.batch_size > 1_000_000 {
            return Err(ConnectorError::config(format!(
                "batch_size must be between 1 and 1000000, got {}",
                self.batch_size
            )));
        }
        if self.concurrency == 0 || self.concurrency > 256 {
            return Err(ConnectorError::config(format!(
                "pool_size/concurrency must be between 1 and 256, got {}",
                self.concurrency
            )));
        }
        if !self.retry_delay.is_finite() || self.retry_delay < 0.0 || self.retry_delay > 3600.0 {
            return Err(ConnectorError::config(format!(
                "retry_delay must be between 0 and 3600 seconds, got {}",
                self.retry_delay
            )));
        }
        Ok(())
    }
}

/// One sink of a pipeline with its id.
#[derive(Debug)]
pub struct TargetSpec {
    pub id: String,
    pub kind: &'static str,
    pub config: Box<dyn SinkConfig>,
}

/// A parsed and validated pipeline; nothing has touched the network yet.
#[derive(Debug)]
pub struct Pipeline {
    pub source_kind: &'static str,
    pub source: Box<dyn SourceConfig>,
    pub targets: Vec<TargetSpec>,
    pub state_kind: &'static str,
    pub state: Box<dyn StateConfig>,
    pub tables: Vec<String>,
    pub table_options: BTreeMap<String, TableOptions>,
    pub settings: Settings,
}

impl Pipeline {
    /// Parses the general JSON form (`{"source": ..., "sinks": [...], "state": ...}`).
    pub fn from_general_json(value: &serde_json::Value) -> Result<Self> {
        let fields: Vec<FieldDoc> = PIPELINE_FIELDS.iter().chain(SETTINGS_FIELDS).copied().collect();
        config::check_keys("pipeline", value, &fields)?;
        let mut value = value.clone();
        // Settings may sit at the top level of the general form; gather them.
        if let Some(map) = value.as_object_mut() {
            let mut settings =
                serde_json::to_value(Settings::default()).map_err(|e| ConnectorError::config(e.to_string()))?;
            for f in SETTINGS_FIELDS {
                if let Some(v) = map.remove(f.name) {
                    settings[f.name] = v;
                }
            }
            map.insert("settings".into(), settings);
        }
        let spec: PipelineSpec =
            serde_json::from_value(value).map_err(|e| ConnectorError::config(format!("pipeline: {e}")))?;
        Self::from_spec(spec)
    }

    /// Validates a spec: parses each component through the registry.
    pub fn from_spec(spec: PipelineSpec) -> Result<Self> {
        spec.settings.validate()?;
        for (i, t) in spec.tables.iter().enumerate() {
            if spec.tables[..i].contains(t) {
                return Err(ConnectorError::config(format!(
                    "table_list/tables names `{t}` twice; list each table once"
                )));
            }
        }
        let (source_kind, source) = registry::parse_source(&spec.source)?;
        let (state_kind, state) = registry::parse_state(&spec.state)?;
        if spec.sinks.is_empty() {
            return Err(ConnectorError::config("pipeline: `sinks` is empty; name at least one target"));
        }
        let mut targets: Vec<TargetSpec> = Vec::new();
        for (i, raw) in spec.sinks.iter().enumerate() {
            let id = match raw.get("id").and_then(|v| v.as_str()) {
                Some(id) => id.to_string(),
                None if spec.sinks.len() == 1 => "default".to_string(),
                None => format!("target{}", i + 1),
            };
            validate_target_id(&id)?;
            if targets.iter().any(|t| t.id == id) {
                return Err(ConnectorError::config(format!(
                    "sinks: id `{id}` is used twice; give each target its own id"
                )));
            }
            let (kind, config) = registry::parse_sink(raw).map_err(|e| e.context(format!("sink `{id}`")))?;
            targets.push(TargetSpec { id, kind, config });
        }
        for (table, opts) in &spec.table_options {
            if opts.cluster_by.as_ref().is_some_and(|c| c.len() > 4) {
                return Err(ConnectorError::config(format!(
                    "table_options.{table}.cluster_by: at most 4 columns can be clustered"
                )));
            }
            for (column, ty) in &opts.column_types {
                if column.trim().is_empty() {
                    return Err(ConnectorError::config(format!(
                        "table_options.{table}.column_types: empty column name"
                    )));
                }
                if !OVERRIDE_TYPES.contains(&ty.to_ascii_uppercase().as_str()) {
                    let hint = config::closest(&ty.to_ascii_uppercase(), OVERRIDE_TYPES.iter().copied())
                        .map(|n| format!("did you mean `{n}`? "))
                        .unwrap_or_default();
                    return Err(ConnectorError::config(format!(
                        "table_options.{table}.column_types.{column}: unknown type `{ty}`; {hint}valid types: {}",
                        OVERRIDE_TYPES.join(", ")
                    )));
                }
            }
        }
        Ok(Self {
            source_kind,
            source,
            targets,
            state_kind,
            state,
            tables: spec.tables,
            table_options: spec.table_options,
            settings: spec.settings,
        })
    }

    /// A JSON view of the validated pipeline, secrets masked.
    pub fn describe(&self) -> serde_json::Value {
        let to = |v: &dyn erased_serde::Serialize| serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
        serde_json::json!({
            "source": {"kind": self.source_kind, "config": to(&*self.source)},
            "sinks": self.targets.iter().map(|t| serde_json::json!({"id": t.id, "kind": t.kind, "config": to(&*t.config)})).collect::<Vec<_>>(),
            "state": {"kind": self.state_kind, "config": to(&*self.state)},
            "tables": self.tables,
            "table_options": self.table_options,
            "settings": self.settings,
        })
    }
}

fn validate_target_id(id: &str) -> Result<()> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(ConnectorError::config(format!(
            "sink id `{id}`: use letters, digits, '-' and '_' only (it names a state folder)"
        )));
    }
    Ok(())
}
