//! The `ndjson` sink's config: an id and the folder to write to.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use connector_framework::{
    BuildContext, ConnectorDescriptor, ConnectorError, Factory, FieldDoc, Result, Sink, SinkConfig, config,
};
use serde::{Deserialize, Serialize};

use crate::sink::NdjsonSink;

pub(crate) const FIELDS: &[FieldDoc] = &[
    FieldDoc { name: "id", ty: "string", required: false, default: "default", doc: "names this target" },
    FieldDoc {
        name: "path",
        ty: "path",
        required: true,
        default: "",
        doc: "folder that receives <table>/<tenant>.ndjson",
    },
];

/// Config of the `ndjson` sink.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NdjsonSinkConfig {
    #[serde(default)]
    pub id: Option<String>,
    pub path: PathBuf,
}

fn parse(raw: &serde_json::Value) -> Result<Box<dyn SinkConfig>> {
    let c: NdjsonSinkConfig = config::parse("sink `ndjson`", raw, FIELDS)?;
    if c.path.as_os_str().is_empty() {
        return Err(ConnectorError::config("sink `ndjson`: path is empty"));
    }
    Ok(Box::new(c))
}

#[async_trait]
impl SinkConfig for NdjsonSinkConfig {
    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Sink>> {
        Ok(Arc::new(NdjsonSink::new(&ctx.target_id, &self.path, &ctx.run_id)))
    }

    fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    fn default_id(&self) -> Option<String> {
        let name = self.path.file_name()?.to_string_lossy().to_string();
        Some(name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect())
    }
}

connector_framework::inventory::submit! {
    ConnectorDescriptor {
        kind: "ndjson",
        crate_name: env!("CARGO_PKG_NAME"),
        description: "Writes each table as newline-delimited JSON files, one per tenant (example connector crate)",
        details: "Files: <path>/<table>/<tenant>.ndjson. Full syncs replace a tenant's file atomically; \
incremental syncs merge by key. Values: numbers beyond 64 bits and decimals as strings, bytes as \
\\x-prefixed hex, times as text.",
        fields: FIELDS,
        example: r#"{"kind": "ndjson", "id": "files", "path": "/mnt/exports"}"#,
        types: &[],
        factory: Factory::Sink(parse),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_documented_keys_are_the_configs_keys() {
        let d = connector_framework::registry::find(connector_framework::registry::Role::Sink, "ndjson").unwrap();
        connector_framework::testkit::documented_fields_match(d).unwrap();
    }
}
