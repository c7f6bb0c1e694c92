//! The `mysql` source's config: connection, tenants, and what to do with values MySQL allows
//! but other systems do not.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use connector_framework::config::{self, ConnectionKeys, Problem, lenient, string_list};
use connector_framework::tenants::{TenantPattern, TenantSelection};
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
        name: "password_file",
        ty: "path",
        required: false,
        default: "none",
        doc: "a file holding the password (e.g. a mounted Kubernetes secret); a trailing newline is dropped",
    },
    FieldDoc {
        name: "ssl_mode",
        ty: "disabled | preferred | required | verify_ca | verify_identity",
        required: false,
        default: "preferred",
        doc: "TLS to the server, as the MySQL client's --ssl-mode: preferred uses TLS when the server offers it",
    },
    FieldDoc {
        name: "ssl_ca",
        ty: "path",
        required: false,
        default: "none",
        doc: "the CA certificate (PEM) the server's certificate must chain to (needed by verify_ca and verify_identity)",
    },
    FieldDoc {
        name: "ssl_cert",
        ty: "path",
        required: false,
        default: "none",
        doc: "a client certificate (PEM), for servers that require one; with ssl_key",
    },
    FieldDoc {
        name: "ssl_key",
        ty: "path",
        required: false,
        default: "none",
        doc: "the client certificate's private key (PEM)",
    },
    FieldDoc {
        name: "require_readonly",
        ty: "boolean",
        required: false,
        default: "false",
        doc: "refuse to run when the user holds any privilege beyond SELECT on the synced databases",
    },
    FieldDoc {
        name: "databases",
        ty: "list of strings",
        required: true,
        default: "",
        doc: "databases (tenants) to read: names, glob patterns (shop*, shop_??) or regular expressions (re:^shop[0-9]+$), matched at the start of every run",
    },
    FieldDoc {
        name: "exclude_databases",
        ty: "list of strings",
        required: false,
        default: "none",
        doc: "databases to leave out of those `databases` matches, in the same forms",
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
    FieldDoc {
        name: "reuse_discovery",
        ty: "boolean",
        required: false,
        default: "true",
        doc: "MariaDB InnoDB tables: reuse a tenant table's columns and keys from an earlier run while its CREATE_TIME (which every ALTER moves) is unchanged, re-read daily; false asks information_schema in full every run",
    },
    FieldDoc {
        name: "schema_cache_dir",
        ty: "path",
        required: false,
        default: "$XDG_CACHE_HOME or ~/.cache, then connector-run/mysql-discovery",
        doc: "where reuse_discovery keeps what it read (table definitions only, one small file per server, user and table name)",
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
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub ssl_mode: SslMode,
    #[serde(default)]
    pub ssl_ca: Option<PathBuf>,
    #[serde(default)]
    pub ssl_cert: Option<PathBuf>,
    #[serde(default)]
    pub ssl_key: Option<PathBuf>,
    #[serde(default)]
    pub require_readonly: bool,
    #[serde(deserialize_with = "string_list::deserialize")]
    pub databases: Vec<String>,
    #[serde(default, deserialize_with = "string_list::deserialize")]
    pub exclude_databases: Vec<String>,
    #[serde(default = "default_pool", deserialize_with = "lenient::deserialize")]
    pub pool_size: usize,
    #[serde(default = "default_connect_timeout", deserialize_with = "lenient::deserialize")]
    pub connect_timeout: u64,
    #[serde(default)]
    pub zero_dates: ZeroDatePolicy,
    #[serde(default = "default_true")]
    pub reuse_discovery: bool,
    #[serde(default)]
    pub schema_cache_dir: Option<PathBuf>,
}

/// TLS to the server, with the MySQL client's `--ssl-mode` names and meanings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SslMode {
    /// Never TLS.
    Disabled,
    /// TLS when the server offers it, without checking its certificate; else unencrypted.
    #[default]
    Preferred,
    /// TLS or no connection; the certificate is not checked.
    Required,
    /// TLS, and the certificate must chain to `ssl_ca`.
    VerifyCa,
    /// As `verify_ca`, and the certificate must be for the host connected to.
    VerifyIdentity,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disabled => "disabled",
            SslMode::Preferred => "preferred",
            SslMode::Required => "required",
            SslMode::VerifyCa => "verify_ca",
            SslMode::VerifyIdentity => "verify_identity",
        }
    }
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
fn default_true() -> bool {
    true
}

impl MySqlSourceConfig {
    /// Checks the config without touching the network; every mistake, each with its key.
    /// The tenants as a selection (validated by [`Self::validate`]).
    pub fn tenant_selection(&self) -> TenantSelection {
        TenantSelection::parse(&self.databases, &self.exclude_databases).unwrap_or_default()
    }

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
        for (key, list) in [("databases", &self.databases), ("exclude_databases", &self.exclude_databases)] {
            for entry in list {
                match TenantPattern::parse(entry) {
                    Err(e) => problems.push(Problem::at(key, e)),
                    Ok(p) if !p.is_pattern() => {
                        if let Err(e) = validate_identifier("database", entry) {
                            problems.push(Problem::at(key, e.message().to_string()));
                        }
                    }
                    Ok(_) => {}
                }
            }
        }
        for (i, db) in self.databases.iter().enumerate() {
            if self.databases[..i].contains(db) {
                problems.push(Problem::at("databases", format!("names `{db}` twice; list each database once")));
            }
        }
        problems.extend(
            ConnectionKeys {
                pool_size: self.pool_size,
                connect_timeout: self.connect_timeout,
                password: &mut self.password,
                password_env: self.password_env.as_deref(),
                password_file: self.password_file.is_some(),
                ssl_mode: self.ssl_mode.as_str(),
                ssl_verifies: matches!(self.ssl_mode, SslMode::VerifyCa | SslMode::VerifyIdentity),
                ssl_disabled: self.ssl_mode == SslMode::Disabled,
                ssl_ca: self.ssl_ca.is_some(),
                ssl_cert: self.ssl_cert.is_some(),
                ssl_key: self.ssl_key.is_some(),
            }
            .problems(),
        );
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
        let mut config = self.clone();
        if let Some(path) = &self.password_file {
            config.password = Secret::from_file(path, "password_file")?;
        }
        Ok(Arc::new(MySqlSource::connect(config).await?))
    }
}

connector_framework::inventory::submit! {
    ConnectorDescriptor {
        kind: "mysql",
        crate_name: env!("CARGO_PKG_NAME"),
        description: "Reads tables from MySQL / MariaDB databases (one database per tenant)",
        details: "Zero or invalid dates ('0000-00-00', '2024-00-10') are written as NULL and counted in the \
report (zero_dates: \"fail\" fails the table instead). Each read is one SELECT (InnoDB reads it \
from one consistent snapshot) after the server's clock, at UTC in a read-only session; a change stream's reads run \
in START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY. The user needs SELECT only.",
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
