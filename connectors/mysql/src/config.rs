use std::sync::Arc;

use async_trait::async_trait;
use connector_framework::config::{self, lenient, string_list};
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
    /// Checks the config without touching the network.
    pub fn validate(&mut self) -> Result<()> {
        if self.host.trim().is_empty() {
            return Err(ConnectorError::config("source `mysql`: db_host/host is empty"));
        }
        if self.user.trim().is_empty() {
            return Err(ConnectorError::config("source `mysql`: db_user/user is empty"));
        }
        if self.port == 0 {
            return Err(ConnectorError::config("source `mysql`: port 0 is not a valid port"));
        }
        if self.databases.is_empty() {
            return Err(ConnectorError::config("source `mysql`: db_list/databases names no database"));
        }
        for (i, db) in self.databases.iter().enumerate() {
            validate_identifier("database", db)?;
            if self.databases[..i].contains(db) {
                return Err(ConnectorError::config(format!(
                    "source `mysql`: db_list/databases names `{db}` twice; list each database once"
                )));
            }
        }
        if self.pool_size == 0 || self.pool_size > 256 {
            return Err(ConnectorError::config(format!(
                "source `mysql`: pool_size must be between 1 and 256, got {}",
                self.pool_size
            )));
        }
        if let Some(var) = &self.password_env {
            self.password = Secret::from_env(var, "source `mysql` password_env")?;
        }
        Ok(())
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
        details: crate::types::TYPE_MAPPING_DOC,
        fields: FIELDS,
        example: r#"{"kind": "mysql", "host": "127.0.0.1", "port": 3306, "user": "sync_reader", "password": "${MYSQL_PASSWORD}", "databases": ["shop1", "shop2"], "pool_size": 5}"#,
        factory: Factory::Source(parse),
    }
}
