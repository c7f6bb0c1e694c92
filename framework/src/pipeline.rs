//! The general pipeline config: any registered source, sinks and state store.
//!
//! Config moves through three stages: the raw JSON; [`Pipeline`], parsed and validated without
//! any I/O (what `connector-run validate` checks; every mistake is reported at once, each under
//! the key as the user wrote it, see [`KeyNames`]); then the built components, which is where
//! connections are made.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{self, FieldDoc, Problem, lenient, string_list};
use crate::error::{ConnectorError, Result};
use crate::registry::{self, SinkConfig, SourceConfig, StateConfig};
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
        doc: "--cdc registers with MySQL as a replica with this server id (target i: this + i); unique on the server",
    },
    FieldDoc {
        name: "cdc_deletes",
        ty: "delete | soft",
        required: false,
        default: "delete",
        doc: "--cdc: a deleted row leaves BigQuery, or stays with _deleted_at set",
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
            log_file: Some("sync_incremental.log".into()),
            full_every: None,
            cursor_time_zone: None,
            cdc_flush_seconds: 30.0,
            cdc_server_id: DEFAULT_CDC_SERVER_ID,
            cdc_deletes: CdcDeletes::Delete,
            system_columns: SystemColumns::default(),
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
    fn problems(&self) -> Vec<Problem> {
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
            out.push(Problem::at("cdc_server_id", "must not be 0 (MySQL refuses replicas with server id 0)"));
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

/// Where a key sits in a pipeline, so an error can name it the way the user wrote it.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    /// A top-level key (settings, `tables`, `table_options…`).
    Pipeline,
    Source,
    /// The sink at this position.
    Sink(usize),
    State,
}

/// How keys are named in the document the user wrote.
pub trait KeyNames {
    /// The document, for messages (`pipeline.json`, `params.json`).
    fn document(&self) -> String;
    /// A key of `scope` (named as in the general form) as the user wrote it.
    fn key(&self, scope: Scope, key: &str) -> String;
}

/// The general form's own names: `source.port`, `sinks[1].dataset`, `batch_size`.
#[derive(Debug, Clone, Copy)]
pub struct GeneralNames;

impl KeyNames for GeneralNames {
    fn document(&self) -> String {
        "pipeline".into()
    }
    fn key(&self, scope: Scope, key: &str) -> String {
        match scope {
            Scope::Pipeline => key.to_string(),
            Scope::Source => format!("source.{key}"),
            Scope::Sink(i) => format!("sinks[{i}].{key}"),
            Scope::State => format!("state.{key}"),
        }
    }
}

/// Gathers every mistake of a pipeline, each named as the user wrote it.
struct Problems<'a> {
    names: &'a dyn KeyNames,
    found: Vec<Problem>,
}

impl Problems<'_> {
    fn add(&mut self, scope: Scope, problems: Vec<Problem>) {
        for p in problems {
            let key = p.key.map(|k| self.names.key(scope, &k));
            self.found.push(Problem { key, message: p.message });
        }
    }
    fn add_error(&mut self, scope: Scope, e: &ConnectorError) {
        if e.problems().is_empty() {
            self.found.push(Problem::general(e.message().to_string()));
        } else {
            self.add(scope, e.problems().to_vec());
        }
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
        Self::from_json_named(value, &GeneralNames)
    }

    /// Parses the general form and reports every mistake at once, each key named by `names`
    /// (the flat `params.json` calls `source.port` `db_port`).
    pub fn from_json_named(value: &serde_json::Value, names: &dyn KeyNames) -> Result<Self> {
        let mut problems = Problems { names, found: Vec::new() };
        let fields: Vec<FieldDoc> = PIPELINE_FIELDS.iter().chain(SETTINGS_FIELDS).copied().collect();
        problems.add(Scope::Pipeline, config::unknown_keys(value, &fields));
        problems.add(Scope::Pipeline, config::missing_keys(value, PIPELINE_FIELDS));
        let empty = serde_json::Map::new();
        let map = value.as_object().unwrap_or(&empty);

        // Settings sit at the top level of the general form.
        let settings_json: serde_json::Map<String, serde_json::Value> =
            SETTINGS_FIELDS.iter().filter_map(|f| Some((f.name.to_string(), map.get(f.name)?.clone()))).collect();
        let settings =
            match config::parse::<Settings>("settings", &serde_json::Value::Object(settings_json), SETTINGS_FIELDS) {
                Ok(s) => {
                    problems.add(Scope::Pipeline, s.problems());
                    s
                }
                Err(e) => {
                    problems.add_error(Scope::Pipeline, &e);
                    Settings::default()
                }
            };
        let tables: Vec<String> = match map.get("tables") {
            None => Vec::new(),
            Some(v) => match string_list::deserialize(v.clone()) {
                Ok(t) => t,
                Err(e) => {
                    problems.add(Scope::Pipeline, vec![Problem::at("tables", e.to_string())]);
                    Vec::new()
                }
            },
        };
        for (i, t) in tables.iter().enumerate() {
            if tables[..i].contains(t) {
                problems.add(
                    Scope::Pipeline,
                    vec![Problem::at("tables", format!("names `{t}` twice; list each table once"))],
                );
            }
        }
        let mut table_options = BTreeMap::new();
        if let Some(options) = map.get("table_options") {
            match options.as_object() {
                None => problems
                    .add(Scope::Pipeline, vec![Problem::at("table_options", "expected an object of table names")]),
                Some(options) => {
                    for (table, raw) in options {
                        match config::parse::<TableOptions>("table_options", raw, TABLE_OPTION_FIELDS) {
                            Ok(o) => {
                                table_options.insert(table.clone(), o);
                            }
                            Err(e) => {
                                let prefixed = e
                                    .problems()
                                    .iter()
                                    .map(|p| Problem {
                                        key: Some(format!(
                                            "table_options.{table}{}",
                                            p.key.as_ref().map(|k| format!(".{k}")).unwrap_or_default()
                                        )),
                                        message: p.message.clone(),
                                    })
                                    .collect();
                                problems.add(Scope::Pipeline, prefixed);
                            }
                        }
                    }
                }
            }
        }

        let source =
            map.get("source").map(|raw| registry::parse_source(raw).map_err(|e| problems.add_error(Scope::Source, &e)));
        let state =
            map.get("state").map(|raw| registry::parse_state(raw).map_err(|e| problems.add_error(Scope::State, &e)));
        let mut targets: Vec<TargetSpec> = Vec::new();
        match map.get("sinks").map(|s| s.as_array()) {
            Some(Some(sinks)) if sinks.is_empty() => {
                problems.add(Scope::Pipeline, vec![Problem::at("sinks", "is empty; name at least one target")])
            }
            Some(Some(sinks)) => {
                for (i, raw) in sinks.iter().enumerate() {
                    match registry::parse_sink(raw) {
                        Ok((kind, config)) => {
                            let id = match config.id() {
                                Some(id) => id.to_string(),
                                None if sinks.len() == 1 => "default".to_string(),
                                // A stable id: state folders follow the target, not its position.
                                None => config.default_id().unwrap_or_else(|| format!("target{}", i + 1)),
                            };
                            if let Err(e) = validate_target_id(&id) {
                                problems.add(Scope::Sink(i), vec![Problem::at("id", e)]);
                            }
                            if let Some(other) = targets.iter().position(|t| t.id == id) {
                                problems.add(
                                    Scope::Sink(i),
                                    vec![Problem::at(
                                        "id",
                                        format!("`{id}` is also target {other}'s id; give each target its own id"),
                                    )],
                                );
                            }
                            targets.push(TargetSpec { id, kind, config });
                        }
                        Err(e) => problems.add_error(Scope::Sink(i), &e),
                    }
                }
            }
            Some(None) => problems.add(Scope::Pipeline, vec![Problem::at("sinks", "expected a list of sink objects")]),
            None => {}
        }
        for (table, opts) in &table_options {
            for column in opts.column_types.keys().chain(opts.rename_columns.keys()) {
                if column.trim().is_empty() {
                    problems.add(
                        Scope::Pipeline,
                        vec![Problem::at(format!("table_options.{table}"), "an empty column name")],
                    );
                }
            }
            for (from, to) in &opts.rename_columns {
                if to.trim().is_empty() {
                    problems.add(
                        Scope::Pipeline,
                        vec![Problem::at(
                            format!("table_options.{table}.rename_columns.{from}"),
                            "the new name is empty",
                        )],
                    );
                }
            }
            for (i, t) in targets.iter().enumerate() {
                if let Err(e) = t.config.validate_table_options(table, opts) {
                    problems.add_error(Scope::Sink(i), &e);
                }
            }
        }
        match (source, state, problems.found.is_empty()) {
            (Some(Ok((source_kind, source))), Some(Ok((state_kind, state))), true) => {
                Ok(Self { source_kind, source, targets, state_kind, state, tables, table_options, settings })
            }
            _ => Err(ConnectorError::config_problems(&names.document(), problems.found)),
        }
    }

    /// A JSON view of the validated pipeline, secrets masked.
    pub fn describe(&self) -> serde_json::Value {
        let to = |v: &dyn erased_serde::Serialize| serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
        serde_json::json!({
            "source": {"kind": self.source_kind, "config": to(&*self.source)},
            "sinks": self.targets.iter().map(|t| {
                // The id is the target's, shown once.
                let mut config = to(&*t.config);
                if let Some(c) = config.as_object_mut() {
                    c.remove("id");
                }
                serde_json::json!({"id": t.id, "kind": t.kind, "config": config})
            }).collect::<Vec<_>>(),
            "state": {"kind": self.state_kind, "config": to(&*self.state)},
            "tables": self.tables,
            "table_options": self.table_options,
            "settings": self.settings,
        })
    }
}

fn validate_target_id(id: &str) -> std::result::Result<(), String> {
    if id.is_empty()
        || id.starts_with('.')
        || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!("`{id}`: use letters, digits, '-', '_' and '.' only (it names a state folder)"));
    }
    Ok(())
}
