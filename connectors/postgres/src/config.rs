//! The `postgres` source's config: connection, TLS, the fleet's layout (a database per tenant,
//! or a schema per tenant in one database), and what to do with values BigQuery cannot hold.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use connector_framework::config::{self, ConnectionKeys, Problem, lenient, string_list};
use connector_framework::tenants::{TenantPattern, TenantSelection};
use connector_framework::{
    BuildContext, ConnectorDescriptor, ConnectorError, Factory, FieldDoc, Result, Secret, Source, SourceConfig,
};
use serde::{Deserialize, Serialize};

use crate::source::PostgresSource;

pub(crate) const FIELDS: &[FieldDoc] = &[
    FieldDoc { name: "host", ty: "string", required: true, default: "", doc: "server host name or IP" },
    FieldDoc { name: "port", ty: "integer", required: false, default: "5432", doc: "server port" },
    FieldDoc {
        name: "user",
        ty: "string",
        required: true,
        default: "",
        doc: "a role with CONNECT on the databases, USAGE on the schemas and SELECT on the tables",
    },
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
        name: "tenant_by",
        ty: "database | schema",
        required: false,
        default: "database",
        doc: "database: one database per tenant (`databases`); schema: one schema per tenant inside `database` (`schemas`)",
    },
    FieldDoc {
        name: "databases",
        ty: "list of strings",
        required: false,
        default: "none",
        doc: "tenant_by database: the databases (tenants) to read: names, glob patterns (shop*) or regular expressions (re:^shop[0-9]+$), matched at the start of every run",
    },
    FieldDoc {
        name: "exclude_databases",
        ty: "list of strings",
        required: false,
        default: "none",
        doc: "tenant_by database: databases to leave out of those `databases` matches, in the same forms",
    },
    FieldDoc {
        name: "schemas",
        ty: "list of strings",
        required: false,
        default: "none",
        doc: "tenant_by schema: the schemas (tenants) to read, in the same forms as `databases`",
    },
    FieldDoc {
        name: "exclude_schemas",
        ty: "list of strings",
        required: false,
        default: "none",
        doc: "tenant_by schema: schemas to leave out of those `schemas` matches",
    },
    FieldDoc {
        name: "database",
        ty: "string",
        required: false,
        default: "postgres",
        doc: "tenant_by schema: the database holding the tenants' schemas; tenant_by database: the database connected to for listing the server's databases",
    },
    FieldDoc {
        name: "schema",
        ty: "string",
        required: false,
        default: "public",
        doc: "tenant_by database: the schema of each tenant database whose tables are read",
    },
    FieldDoc {
        name: "ssl_mode",
        ty: "disable | prefer | require | verify-ca | verify-full",
        required: false,
        default: "prefer",
        doc: "TLS to the server, as libpq's sslmode: prefer uses TLS when the server offers it; verify-ca checks the certificate against ssl_ca, verify-full also its host name",
    },
    FieldDoc {
        name: "ssl_ca",
        ty: "path",
        required: false,
        default: "none",
        doc: "the CA certificate (PEM) the server's certificate must chain to (libpq's sslrootcert; needed by verify-ca and verify-full)",
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
        doc: "refuse to run when the role is a superuser or may write to a synced table",
    },
    FieldDoc {
        name: "pool_size",
        ty: "integer",
        required: false,
        default: "5",
        doc: "maximum connections open at once, over every database",
    },
    FieldDoc {
        name: "out_of_range",
        ty: "null | fail",
        required: false,
        default: "null",
        doc: "values BigQuery cannot hold (dates before year 1 or after 9999, infinity, numeric NaN or beyond BIGNUMERIC): write NULL and count them, or fail the table",
    },
    FieldDoc {
        name: "connect_timeout",
        ty: "seconds",
        required: false,
        default: "10",
        doc: "time allowed to open a connection",
    },
];

/// Config of the `postgres` source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PostgresSourceConfig {
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
    pub tenant_by: TenantBy,
    #[serde(default, deserialize_with = "string_list::deserialize")]
    pub databases: Vec<String>,
    #[serde(default, deserialize_with = "string_list::deserialize")]
    pub exclude_databases: Vec<String>,
    #[serde(default, deserialize_with = "string_list::deserialize")]
    pub schemas: Vec<String>,
    #[serde(default, deserialize_with = "string_list::deserialize")]
    pub exclude_schemas: Vec<String>,
    #[serde(default = "default_database")]
    pub database: String,
    #[serde(default = "default_schema")]
    pub schema: String,
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
    #[serde(default = "default_pool", deserialize_with = "lenient::deserialize")]
    pub pool_size: usize,
    #[serde(default = "default_connect_timeout", deserialize_with = "lenient::deserialize")]
    pub connect_timeout: u64,
    #[serde(default)]
    pub out_of_range: OutOfRangePolicy,
}

/// How tenants are laid out on the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantBy {
    /// One database per tenant; the tables are in `schema` of each.
    #[default]
    Database,
    /// One schema per tenant inside `database`; `tenant_id` is the schema's name.
    Schema,
}

/// TLS to the server, with libpq's `sslmode` names and meanings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, the certificate not checked; else unencrypted.
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is not checked (unless `ssl_ca` is given, as
    /// libpq does with a root certificate: then as `verify-ca`).
    Require,
    /// TLS, and the certificate must chain to `ssl_ca`.
    #[serde(alias = "verify_ca")]
    VerifyCa,
    /// As `verify-ca`, and the certificate must be for the host connected to.
    #[serde(alias = "verify_full", alias = "verify_identity")]
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// What to do with a value BigQuery's column type cannot hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutOfRangePolicy {
    /// Write NULL and count it in the report, by what it was.
    #[default]
    Null,
    /// Fail the table with an error naming the column and the value.
    Fail,
}

fn default_port() -> u16 {
    5432
}
fn default_pool() -> usize {
    5
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_database() -> String {
    "postgres".to_string()
}
fn default_schema() -> String {
    "public".to_string()
}

impl PostgresSourceConfig {
    /// The configured tenants (databases or schemas, by `tenant_by`).
    pub fn tenants(&self) -> &[String] {
        match self.tenant_by {
            TenantBy::Database => &self.databases,
            TenantBy::Schema => &self.schemas,
        }
    }

    /// The tenants as a selection (validated by [`Self::validate`]).
    pub fn tenant_selection(&self) -> TenantSelection {
        let exclude = match self.tenant_by {
            TenantBy::Database => &self.exclude_databases,
            TenantBy::Schema => &self.exclude_schemas,
        };
        TenantSelection::parse(self.tenants(), exclude).unwrap_or_default()
    }

    /// Checks the config without touching the network; every mistake, each with its key.
    pub fn validate(&mut self) -> Result<()> {
        let mut problems = Vec::new();
        if self.host.trim().is_empty() {
            problems.push(Problem::at("host", "is empty; give the PostgreSQL server's host name or IP"));
        }
        if self.user.trim().is_empty() {
            problems.push(Problem::at("user", "is empty; give a role with SELECT on the tables"));
        }
        if self.port == 0 {
            problems.push(Problem::at("port", "0 is not a port; the default is 5432"));
        }
        let (list, exclude, other, other_exclude) = match self.tenant_by {
            TenantBy::Database => ("databases", "exclude_databases", "schemas", "exclude_schemas"),
            TenantBy::Schema => ("schemas", "exclude_schemas", "databases", "exclude_databases"),
        };
        let by = match self.tenant_by {
            TenantBy::Database => "database",
            TenantBy::Schema => "schema",
        };
        if self.tenants().is_empty() {
            problems.push(Problem::at(list, format!("names no {by}; list the tenants' {list} (tenant_by is {by})")));
        }
        for key in [other, other_exclude] {
            let set = match key {
                "databases" => !self.databases.is_empty(),
                "exclude_databases" => !self.exclude_databases.is_empty(),
                "schemas" => !self.schemas.is_empty(),
                _ => !self.exclude_schemas.is_empty(),
            };
            if set {
                problems.push(Problem::at(
                    key,
                    format!("is for the other layout: tenant_by is {by}, so the tenants are `{list}`; move the list there, or set tenant_by"),
                ));
            }
        }
        let entries = match self.tenant_by {
            TenantBy::Database => [(list, &self.databases), (exclude, &self.exclude_databases)],
            TenantBy::Schema => [(list, &self.schemas), (exclude, &self.exclude_schemas)],
        };
        for (key, entries) in entries {
            for entry in entries {
                match TenantPattern::parse(entry) {
                    Err(e) => problems.push(Problem::at(key, e)),
                    Ok(p) if !p.is_pattern() => {
                        if let Err(e) = validate_identifier(by, entry) {
                            problems.push(Problem::at(key, e.message().to_string()));
                        }
                    }
                    Ok(_) => {}
                }
            }
        }
        let tenants = self.tenants();
        for (i, t) in tenants.iter().enumerate() {
            if tenants[..i].contains(t) {
                problems.push(Problem::at(list, format!("names `{t}` twice; list each {by} once")));
            }
        }
        for (key, name) in [("database", &self.database), ("schema", &self.schema)] {
            if let Err(e) = validate_identifier(key, name) {
                problems.push(Problem::at(key, e.message().to_string()));
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
                ssl_verifies: matches!(self.ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull),
                ssl_disabled: self.ssl_mode == SslMode::Disable,
                ssl_ca: self.ssl_ca.is_some(),
                ssl_cert: self.ssl_cert.is_some(),
                ssl_key: self.ssl_key.is_some(),
            }
            .problems(),
        );
        if problems.is_empty() { Ok(()) } else { Err(ConnectorError::config_problems("source `postgres`", problems)) }
    }
}

/// Names are quoted with double quotes; refuse the few that cannot be (PostgreSQL cuts names at
/// 63 bytes, so a longer one would name another object).
pub(crate) fn validate_identifier(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        return Err(ConnectorError::config(format!(
            "{what} name `{name}` is not usable: 1 to 63 bytes, without NUL (PostgreSQL's limit)"
        )));
    }
    Ok(())
}

fn parse(raw: &serde_json::Value) -> Result<Box<dyn SourceConfig>> {
    let mut c: PostgresSourceConfig = config::parse("source `postgres`", raw, FIELDS)?;
    c.validate()?;
    Ok(Box::new(c))
}

#[async_trait]
impl SourceConfig for PostgresSourceConfig {
    async fn build(&self, _ctx: &BuildContext) -> Result<Arc<dyn Source>> {
        let mut config = self.clone();
        if let Some(path) = &self.password_file {
            config.password = Secret::from_file(path, "password_file")?;
        }
        Ok(Arc::new(PostgresSource::connect(config).await?))
    }
}

connector_framework::inventory::submit! {
    ConnectorDescriptor {
        kind: "postgres",
        crate_name: env!("CARGO_PKG_NAME"),
        description: "Reads tables from PostgreSQL (one database or one schema per tenant)",
        details: "Each read runs in BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY: the server's clock \
(now(), the transaction's start) and the rows come from one snapshot, streamed with COPY ... TO STDOUT. \
Sessions are read-only (default_transaction_read_only). Values BigQuery cannot hold (dates outside \
0001..9999, infinity, numeric NaN or beyond BIGNUMERIC) are written as NULL and counted in the report \
(out_of_range: \"fail\" fails the table instead). The role needs CONNECT, USAGE on the schemas and SELECT. \
A schema per tenant: \"tenant_by\": \"schema\", \"database\": \"app\", \"schemas\": [\"shop*\"] (tenant_id is the schema's name).",
        types: crate::types::POSTGRES_TYPES,
        fields: FIELDS,
        example: r#"{"kind": "postgres", "host": "127.0.0.1", "port": 5432, "user": "sync_reader", "password": "${PGPASSWORD}", "databases": ["shop*"], "ssl_mode": "verify-full", "ssl_ca": "/etc/ssl/pg-ca.pem"}"#,
        factory: Factory::Source(parse),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_keys_are_the_configs_keys() {
        let d = connector_framework::registry::find(connector_framework::registry::Role::Source, "postgres").unwrap();
        connector_framework::testkit::documented_fields_match(d).unwrap();
    }

    fn validated(raw: serde_json::Value) -> Result<PostgresSourceConfig> {
        let mut c: PostgresSourceConfig = config::parse("source `postgres`", &raw, FIELDS)?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn each_layout_takes_its_own_tenant_list() {
        let by_db = validated(serde_json::json!({"host": "h", "user": "u", "databases": ["shop*"]})).unwrap();
        assert_eq!(by_db.tenants(), ["shop*"]);
        let by_schema = validated(
            serde_json::json!({"host": "h", "user": "u", "tenant_by": "schema", "database": "app", "schemas": "s1,s2"}),
        )
        .unwrap();
        assert_eq!(by_schema.tenants(), ["s1", "s2"]);
        let wrong = validated(serde_json::json!({"host": "h", "user": "u", "tenant_by": "schema", "databases": ["a"]}))
            .unwrap_err()
            .to_string();
        assert!(wrong.contains("schemas") && wrong.contains("is for the other layout"), "{wrong}");
    }

    #[test]
    fn verify_modes_need_a_ca_and_take_libpq_names() {
        let e = validated(serde_json::json!({"host": "h", "user": "u", "databases": ["a"], "ssl_mode": "verify-full"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ssl_ca"), "{e}");
        let ok = validated(
            serde_json::json!({"host": "h", "user": "u", "databases": ["a"], "ssl_mode": "verify_ca", "ssl_ca": "/x"}),
        )
        .unwrap();
        assert_eq!(ok.ssl_mode, SslMode::VerifyCa);
    }
}
