//! The `mysql` source's config: connection, tenants, and what to do with values MySQL allows
//! but other systems do not.

use std::sync::Arc;

use async_trait::async_trait;
use connector_framework::config::{self, Problem, lenient, string_list};
use connector_framework::{
    BuildContext, ConnectorDescriptor, ConnectorError, Factory, FieldDoc, Result, Secret, Source, SourceConfig,
};
use serde::{Deserialize, Serialize};

use crate::source::MySqlSource;

pub(crate) const FIELDS: &[FieldDoc] = &[
    FieldDoc { name: "host", ty: "string", required: true, default: "", doc: "server host name or IP" },
    FieldDoc { name: "port", ty: "integer", required: false, default: "3306", doc: "server port" },
    FieldDoc { name: "user", ty: "string", required: true, default: "", doc: "a user with SELECT privileges" },
    FieldDoc {
        name: "password",
        ty: "string",
        required: false,
        default: "empty",
        doc: "literal, or ${ENV_VAR} to read it from the environment",
    },
    FieldDoc {
        name: "password_env",
        ty: "string",
        required: false,
        default: "none",
        doc: "name of an environment variable holding the password",
    },
    FieldDoc {
        name: "databases",
        ty: "list of strings",
        required: true,
        default: "",
        doc: "databases (tenants) to read",
    },
    FieldDoc { name: "pool_size", ty: "integer", required: false, default: "5", doc: "maximum connections" },
    FieldDoc {
        name: "zero_dates",
        ty: "null | fail",
        required: false,
        default: "null",
        doc: "invalid dates ('0000-00-00'): write NULL and count them, or fail the table",
    },
    FieldDoc {
        name: "connect_timeout",
        ty: "seconds",
        required: false,
        default: "10",
        doc: "time allowed to open a connection",
    },
];

/// Config of the `mysql` source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MySqlSourceConfig {
    pub host: String,
    #[serde(default = "default_port", deserialize_with = "lenient::deserialize")]
    pub port: u16,
    pub user: String,
    #[serde(default)]
    pub password: Secret,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(deserialize_with = "string_list::deserialize")]
    pub databases: Vec<String>,
    #[serde(default = "default_pool", deserialize_with = "lenient::deserialize")]
    pub pool_size: usize,
    #[serde(default = "default_connect_timeout", deserialize_with = "lenient::deserialize")]
    pub connect_timeout: u64,
    #[serde(default)]
    pub zero_dates: ZeroDatePolicy,
}

/// What to do with dates no calendar has ('0000-00-00', '2024-00-10').
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZeroDatePolicy {
    /// Write NULL and count them in the report.
    #[default]
    Null,
    /// Fail the table with an error naming the column.
    Fail,
}

fn default_port() -> u16 {
    3306
}
fn default_pool() -> usize {
    5
}
fn default_connect_timeout() -> u64 {
    10
}

impl MySqlSourceConfig {
    /// Checks the config without touching the network; every mistake, each with its key.
    pub fn validate(&mut self) -> Result<()> {
        let mut problems = Vec::new();
        if self.host.trim().is_empty() {
            problems.push(Problem::at("host", "is empty; give the MySQL server's host name or IP"));
        }
        if self.user.trim().is_empty() {
            problems.push(Problem::at("user", "is empty; give a user with SELECT privileges"));
        }
        if self.port == 0 {
            problems.push(Problem::at("port", "0 is not a port; the default is 3306"));
        }
        if self.databases.is_empty() {
            problems.push(Problem::at("databases", "names no database; list the tenants' databases"));
        }
        for (i, db) in self.databases.iter().enumerate() {
            if let Err(e) = validate_identifier("database", db) {
                problems.push(Problem::at("databases", e.message().to_string()));
            }
            if self.databases[..i].contains(db) {
                problems.push(Problem::at("databases", format!("names `{db}` twice; list each database once")));
            }
        }
        if self.pool_size == 0 || self.pool_size > 256 {
            problems.push(Problem::at("pool_size", format!("between 1 and 256, got {}", self.pool_size)));
        }
        if self.connect_timeout == 0 || self.connect_timeout > 3600 {
            problems.push(Problem::at(
                "connect_timeout",
                format!("between 1 and 3600 seconds, got {}", self.connect_timeout),
            ));
        }
        if let Some(var) = &self.password_env {
            match Secret::from_env(var, "password_env") {
                Ok(secret) => self.password = secret,
                Err(e) => problems
                    .push(Problem::at("password_env", e.message().trim_start_matches("password_env: ").to_string())),
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(ConnectorError::config_problems("source `mysql`", problems)) }
    }
}

/// Database and table names are quoted with backticks; refuse the few that cannot be.
pub(crate) fn validate_identifier(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 64 || name.contains(['`', '\0', '/', '\\']) || name.starts_with('.') {
        return Err(ConnectorError::config(format!(
            "{what} name `{name}` is not usable: 1 to 64 characters, without backticks, slashes or NUL"
        )));
    }
    Ok(())
}

fn parse(raw: &serde_json::Value) -> Result<Box<dyn SourceConfig>> {
    let mut c: MySqlSourceConfig = config::parse("source `mysql`", raw, FIELDS)?;
    c.validate()?;
    Ok(Box::new(c))
}

#[async_trait]
impl SourceConfig for MySqlSourceConfig {
    async fn build(&self, _ctx: &BuildContext) -> Result<Arc<dyn Source>> {
        Ok(Arc::new(MySqlSource::connect(self.clone()).await?))
    }
}

connector_framework::inventory::submit! {
    ConnectorDescriptor {
        kind: "mysql",
        crate_name: env!("CARGO_PKG_NAME"),
        description: "Reads tables from MySQL / MariaDB databases (one database per tenant)",
        details: "Zero or invalid dates ('0000-00-00', '2024-00-10') are written as NULL and counted in the \
report (zero_dates: \"fail\" fails the table instead). Each read runs in START TRANSACTION WITH CONSISTENT \
SNAPSHOT, READ ONLY at UTC; the user needs SELECT only.",
        types: crate::types::MYSQL_TYPES,
        fields: FIELDS,
        example: r#"{"kind": "mysql", "host": "127.0.0.1", "port": 3306, "user": "sync_reader", "password": "${MYSQL_PASSWORD}", "databases": ["shop1", "shop2"], "pool_size": 5}"#,
        factory: Factory::Source(parse),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_documented_keys_are_the_configs_keys() {
        let d = connector_framework::registry::find(connector_framework::registry::Role::Source, "mysql").unwrap();
        connector_framework::testkit::documented_fields_match(d).unwrap();
    }
}
