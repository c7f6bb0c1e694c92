//! The connector registry. Each connector crate submits one [`ConnectorDescriptor`] per kind
//! with `inventory::submit!`; `list`, `describe`, config parsing and the "unknown kind" error
//! all read from here, so a kind's name and documentation are written once.

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::FieldDoc;
use crate::error::{ConnectorError, Result};
use crate::pipeline::TableOptions;
use crate::sink::Sink;
use crate::source::Source;
use crate::state::StateStore;

/// What a connector does in a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Source,
    Sink,
    State,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Sink => "sink",
            Role::State => "state",
        }
    }
}

/// Facts every component build may need.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// Unique per run; sinks use it to name staging data.
    pub run_id: String,
    /// The target this component serves (`default` for a single target).
    pub target_id: String,
    /// With several targets, each keeps its state in a subfolder named after its id.
    pub state_subdir: Option<String>,
    /// Retries for the component's own remote calls.
    pub retry: crate::retry::RetryPolicy,
    /// Benchmarks only: sinks encode what they are given and discard it, contacting nothing
    /// (the runner then records no state).
    pub discard_writes: bool,
}

/// A parsed, validated source config that can build its source.
#[async_trait]
pub trait SourceConfig: erased_serde::Serialize + Send + Sync + std::fmt::Debug {
    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Source>>;
}
erased_serde::serialize_trait_object!(SourceConfig);

/// A parsed, validated sink config that can build its sink.
#[async_trait]
pub trait SinkConfig: erased_serde::Serialize + Send + Sync + std::fmt::Debug {
    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Sink>>;
    /// Checks one table's options against what this sink can do (its type names, clustering
    /// limits); no I/O. Called by `validate` and before every run.
    fn validate_table_options(&self, _table: &str, _options: &TableOptions) -> Result<()> {
        Ok(())
    }
    /// The target's own id, when the config names one.
    fn id(&self) -> Option<&str> {
        None
    }
    /// A stable name for the target when the config gives no id (e.g. `project.dataset`);
    /// used for state folders when there are several targets.
    fn default_id(&self) -> Option<String> {
        None
    }
}
erased_serde::serialize_trait_object!(SinkConfig);

/// A parsed, validated state config that can build its store.
#[async_trait]
pub trait StateConfig: erased_serde::Serialize + Send + Sync + std::fmt::Debug {
    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn StateStore>>;
}
erased_serde::serialize_trait_object!(StateConfig);

/// Parses raw JSON into a validated config (no I/O).
#[derive(Clone, Copy)]
pub enum Factory {
    Source(fn(&serde_json::Value) -> Result<Box<dyn SourceConfig>>),
    Sink(fn(&serde_json::Value) -> Result<Box<dyn SinkConfig>>),
    State(fn(&serde_json::Value) -> Result<Box<dyn StateConfig>>),
}

impl std::fmt::Debug for Factory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.role().as_str())
    }
}

impl Factory {
    pub fn role(&self) -> Role {
        match self {
            Factory::Source(_) => Role::Source,
            Factory::Sink(_) => Role::Sink,
            Factory::State(_) => Role::State,
        }
    }
}

/// One registered connector kind.
#[derive(Debug)]
pub struct ConnectorDescriptor {
    /// Lower-case kind used in configs: `mysql`, `bigquery`, `json`.
    pub kind: &'static str,
    /// The crate that registered it (`env!("CARGO_PKG_NAME")`).
    pub crate_name: &'static str,
    /// One line.
    pub description: &'static str,
    /// Longer documentation for `describe` (type mapping, behaviour), may be empty.
    pub details: &'static str,
    pub fields: &'static [FieldDoc],
    /// A complete example config, as JSON text.
    pub example: &'static str,
    /// Type mapping rows. Sources: (source type, logical type, note); sinks: (logical type,
    /// target type, note). `describe` joins a source's rows with each sink's on the logical
    /// type.
    pub types: &'static [TypeRow],
    pub factory: Factory,
}

/// One row of a connector's type mapping.
#[derive(Debug, Clone, Copy)]
pub struct TypeRow {
    pub from: &'static str,
    pub to: &'static str,
    pub note: &'static str,
}

impl ConnectorDescriptor {
    pub fn role(&self) -> Role {
        self.factory.role()
    }
}

inventory::collect!(ConnectorDescriptor);

static ENABLED_CRATES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();

/// Limits the registry to connectors from these crates (the binary's `plugins.toml`); a crate
/// that is linked but not enabled is invisible. Without a call every registration counts.
pub fn enable_only(crates: Vec<&'static str>) {
    let _ = ENABLED_CRATES.set(crates);
}

/// Every registered (and enabled) connector, sorted by role then kind.
pub fn all() -> Vec<&'static ConnectorDescriptor> {
    let enabled = ENABLED_CRATES.get();
    let mut all: Vec<_> = inventory::iter::<ConnectorDescriptor>
        .into_iter()
        .filter(|d| enabled.is_none_or(|e| e.contains(&d.crate_name)))
        .collect();
    all.sort_by_key(|d| (d.role(), d.kind));
    all
}

/// Finds a kind for a role, or explains which kinds exist.
pub fn find(role: Role, kind: &str) -> Result<&'static ConnectorDescriptor> {
    let candidates: Vec<_> = all().into_iter().filter(|d| d.role() == role).collect();
    if let Some(d) = candidates.iter().find(|d| d.kind == kind) {
        return Ok(d);
    }
    let names: Vec<&str> = candidates.iter().map(|d| d.kind).collect();
    let hint = match crate::config::closest(kind, names.iter().copied()) {
        Some(near) => format!("did you mean `{near}`? "),
        None => String::new(),
    };
    Err(ConnectorError::config_at(
        "kind",
        format!(
            "unknown {} kind `{kind}`; {hint}valid {} kinds: {} (see `connector-run list`)",
            role.as_str(),
            role.as_str(),
            if names.is_empty() { "none registered".to_string() } else { names.join(", ") },
        ),
    ))
}

/// Finds a kind in any role (for `describe`).
pub fn find_any(kind: &str) -> Result<Vec<&'static ConnectorDescriptor>> {
    let found: Vec<_> = all().into_iter().filter(|d| d.kind == kind).collect();
    if !found.is_empty() {
        return Ok(found);
    }
    let names: Vec<&str> = all().iter().map(|d| d.kind).collect();
    let hint = match crate::config::closest(kind, names.iter().copied()) {
        Some(near) => format!("did you mean `{near}`? "),
        None => String::new(),
    };
    Err(ConnectorError::config(format!(
        "unknown connector kind `{kind}`; {hint}registered kinds: {}",
        names.join(", ")
    )))
}

fn kind_of(what: &str, raw: &serde_json::Value) -> Result<String> {
    raw.get("kind")
        .and_then(|k| k.as_str())
        .map(str::to_string)
        .ok_or_else(|| ConnectorError::config_at("kind", format!("missing: which {what} (see `connector-run list`)")))
}

/// Parses `{"kind": ..., ...}` as a source config.
pub fn parse_source(raw: &serde_json::Value) -> Result<(&'static str, Box<dyn SourceConfig>)> {
    let kind = kind_of("source", raw)?;
    let d = find(Role::Source, &kind)?;
    match d.factory {
        Factory::Source(parse) => Ok((d.kind, parse(raw)?)),
        _ => unreachable!("find filters by role"),
    }
}

/// Parses `{"kind": ..., ...}` as a sink config.
pub fn parse_sink(raw: &serde_json::Value) -> Result<(&'static str, Box<dyn SinkConfig>)> {
    let kind = kind_of("sink", raw)?;
    let d = find(Role::Sink, &kind)?;
    match d.factory {
        Factory::Sink(parse) => Ok((d.kind, parse(raw)?)),
        _ => unreachable!("find filters by role"),
    }
}

/// Parses `{"kind": ..., ...}` as a state config.
pub fn parse_state(raw: &serde_json::Value) -> Result<(&'static str, Box<dyn StateConfig>)> {
    let kind = kind_of("state", raw)?;
    let d = find(Role::State, &kind)?;
    match d.factory {
        Factory::State(parse) => Ok((d.kind, parse(raw)?)),
        _ => unreachable!("find filters by role"),
    }
}
