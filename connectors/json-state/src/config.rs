//! The `json` state store's config: one key, `status_dir`.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use connector_framework::{
    BuildContext, ConnectorDescriptor, Factory, FieldDoc, Result, StateConfig, StateStore, config,
};
use serde::{Deserialize, Serialize};

use crate::store::JsonStateStore;

pub(crate) const FIELDS: &[FieldDoc] = &[FieldDoc {
    name: "status_dir",
    ty: "path",
    required: false,
    default: "sync_status",
    doc: "folder of <database>.json files; with several targets, one subfolder per target id",
}];

/// Config of the `json` state store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JsonStateConfig {
    #[serde(default = "default_dir")]
    pub status_dir: PathBuf,
}

fn default_dir() -> PathBuf {
    PathBuf::from("sync_status")
}

fn parse(raw: &serde_json::Value) -> Result<Box<dyn StateConfig>> {
    let c: JsonStateConfig = config::parse("state `json`", raw, FIELDS)?;
    if c.status_dir.as_os_str().is_empty() {
        return Err(connector_framework::ConnectorError::config("state `json`: status_dir is empty"));
    }
    Ok(Box::new(c))
}

#[async_trait]
impl StateConfig for JsonStateConfig {
    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn StateStore>> {
        let dir = match &ctx.state_subdir {
            Some(sub) => self.status_dir.join(sub),
            None => self.status_dir.clone(),
        };
        Ok(Arc::new(JsonStateStore::new(dir)))
    }
}

connector_framework::inventory::submit! {
    ConnectorDescriptor {
        kind: "json",
        crate_name: env!("CARGO_PKG_NAME"),
        description: "Sync state as one JSON file per database (the original tool's format)",
        details: "Each <database>.json holds database_info and one entry per table: table_name, \
last_sync_time, sync_status, sync_mode, records_synced, error_message, updated_at, plus the \
watermark (cursor column, type and value at microsecond precision), last_success_at, \
duration_seconds and consecutive_failures. Files are replaced atomically; a lock file stops a \
second concurrent run.",
        fields: FIELDS,
        example: r#"{"kind": "json", "status_dir": "sync_status"}"#,
        types: &[],
        factory: Factory::State(parse),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_documented_keys_are_the_configs_keys() {
        let d = connector_framework::registry::find(connector_framework::registry::Role::State, "json").unwrap();
        connector_framework::testkit::documented_fields_match(d).unwrap();
    }
}
