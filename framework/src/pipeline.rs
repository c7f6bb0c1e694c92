//! The general pipeline config: any registered source, sinks and state store.
//!
//! Config moves through three stages: the raw JSON; [`Pipeline`], parsed and validated without
//! any I/O (what `connector-run validate` checks; every mistake is reported at once, each under
//! the key as the user wrote it, see [`KeyNames`]); then the built components, which is where
//! connections are made.

use std::collections::BTreeMap;

use crate::config::{self, FieldDoc, Problem, string_list};
use crate::error::{ConnectorError, Result};
use crate::registry::{self, SinkConfig, SourceConfig, StateConfig};

pub use crate::settings::{
    CdcDeletes, DEFAULT_CDC_SERVER_ID, DeleteDetection, SETTINGS_FIELDS, Settings, TABLE_OPTION_FIELDS, TableOptions,
};

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
            if opts.target_table.as_ref().is_some_and(|t| t.trim().is_empty()) {
                problems.add(
                    Scope::Pipeline,
                    vec![Problem::at(format!("table_options.{table}.target_table"), "the name is empty")],
                );
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
