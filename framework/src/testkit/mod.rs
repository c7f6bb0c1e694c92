//! A kit for testing connectors and pipelines without servers (feature `testkit`): an
//! in-memory [`MemorySource`], a [`CollectingSink`] that records what it is given and can
//! resume interrupted staging, a [`MemoryStateStore`], and conformance checks that any source
//! or sink can run ([`source_conformance`], [`sink_conformance`]).

mod collecting_sink;
mod conformance;
mod memory;

pub use crate::state::MemoryStateStore;
pub use collecting_sink::{CollectingSink, Commit};
pub use conformance::{sink_conformance, source_conformance};
pub use memory::{MemorySource, MemoryTables};

use std::sync::Arc;

use chrono::NaiveDateTime;

use crate::schema::{Column, KeySource, LogicalType, TableRef, TableSchema};
use crate::state::{SyncMode, SyncStatus, TableState};
use crate::value::{Row, Value};

/// A nullable column of this type (source type: the logical type's debug name).
pub fn column(name: &str, logical: LogicalType) -> Column {
    Column { name: name.into(), source_type: format!("{logical:?}"), logical, nullable: true }
}

/// A table of these columns with this key (primary key; none when empty).
pub fn schema_of(database: &str, table: &str, columns: &[(&str, LogicalType)], key: &[&str]) -> TableSchema {
    TableSchema {
        table: TableRef::new(database, table),
        columns: Arc::new(columns.iter().map(|(n, t)| column(n, t.clone())).collect()),
        key: key.iter().map(|k| k.to_string()).collect(),
        key_source: if key.is_empty() { KeySource::None } else { KeySource::PrimaryKey },
        estimated_rows: None,
    }
}

/// The state of a table that last synced with `status`, in full, with key `id` and no
/// watermark.
pub fn prior_state(table: &str, status: SyncStatus) -> TableState {
    let mut s = TableState::in_progress(table);
    s.sync_status = status;
    s.sync_mode = SyncMode::Full;
    s.records_synced = 1;
    s.error_message = None;
    s.last_sync_time = Some(NaiveDateTime::default());
    s.last_success_at = Some(NaiveDateTime::default());
    s.key = Some(vec!["id".into()]);
    s
}

/// A small keyed table (`id`, `name`, `updated_at`) for conformance checks and tests.
pub fn sample_table(database: &str, table: &str, rows: usize) -> (TableSchema, Vec<Row>) {
    let mut schema = schema_of(
        database,
        table,
        &[("id", LogicalType::Int64), ("name", LogicalType::String), ("updated_at", LogicalType::DateTime { fsp: 6 })],
        &["id"],
    );
    let columns = Arc::make_mut(&mut schema.columns);
    columns[0].nullable = false;
    columns[0].source_type = "bigint".into();
    columns[1].source_type = "varchar(20)".into();
    columns[2].source_type = "datetime(6)".into();
    columns[2].nullable = false;
    let base = NaiveDateTime::parse_from_str("2025-01-01 00:00:00", "%Y-%m-%d %H:%M:%S").unwrap_or_default();
    let rows = (0..rows)
        .map(|i| {
            vec![
                Value::Int(i as i64),
                if i % 3 == 0 { Value::Null } else { Value::String(format!("name {i} é😀")) },
                Value::DateTime(base + chrono::TimeDelta::seconds(i as i64)),
            ]
        })
        .collect();
    (schema, rows)
}

/// Checks that a connector's documented keys are its config's keys: its example parses, and
/// the parsed config has exactly the documented keys (`kind` aside), with each documented
/// default that is a plain value (`3306`, `16`, `false`) equal to what a config without that key
/// gets.
pub fn documented_fields_match(d: &crate::registry::ConnectorDescriptor) -> crate::error::Result<()> {
    use crate::error::ConnectorError;
    use crate::registry::Factory;
    let fail = |what: String| Err(ConnectorError::permanent(format!("{}: {what}", d.kind)));
    let mut example: serde_json::Value = serde_json::from_str(d.example)
        .map_err(|e| ConnectorError::permanent(format!("{}: the example is not JSON: {e}", d.kind)))?;
    // `${VAR}` secrets in examples: a literal stands in (no environment needed).
    if let Some(map) = example.as_object_mut() {
        for v in map.values_mut() {
            if v.as_str().is_some_and(|s| s.starts_with("${")) {
                *v = serde_json::json!("example-secret");
            }
        }
    }
    let to_json = |raw: &serde_json::Value| -> crate::error::Result<serde_json::Value> {
        let value = match d.factory {
            Factory::Source(parse) => serde_json::to_value(&*parse(raw)?),
            Factory::Sink(parse) => serde_json::to_value(&*parse(raw)?),
            Factory::State(parse) => serde_json::to_value(&*parse(raw)?),
        };
        value.map_err(|e| ConnectorError::permanent(e.to_string()))
    };
    let parsed = to_json(&example)?;
    let keys: Vec<&String> = parsed.as_object().map(|m| m.keys().collect()).unwrap_or_default();
    for k in &keys {
        if !d.fields.iter().any(|f| f.name == k.as_str()) {
            return fail(format!("the config has key `{k}`, which its documentation does not list"));
        }
    }
    for f in d.fields {
        if !keys.iter().any(|k| k.as_str() == f.name) {
            return fail(format!("the documentation lists `{}`, which the config does not have", f.name));
        }
    }
    // Defaults: the example with only the required keys, and those without a default (one of
    // several alternatives a config needs, such as a source's tenant list per layout).
    let mut minimal = serde_json::Map::new();
    minimal.insert("kind".into(), serde_json::json!(d.kind));
    for f in d.fields.iter().filter(|f| f.required || (f.default == "none" && example.get(f.name).is_some())) {
        minimal.insert(f.name.into(), example[f.name].clone());
    }
    let defaults = to_json(&serde_json::Value::Object(minimal))?;
    for f in d.fields.iter().filter(|f| !f.required) {
        if let Ok(documented) = serde_json::from_str::<serde_json::Value>(f.default)
            && !documented.is_object()
            && defaults[f.name] != documented
            && defaults[f.name].as_str() != Some(f.default)
        {
            return fail(format!("`{}` defaults to {}, documented as {}", f.name, defaults[f.name], f.default));
        }
    }
    Ok(())
}
