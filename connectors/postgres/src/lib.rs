//! `connector-postgres`: reads tables from PostgreSQL, a database or a schema per tenant.
//!
//! - [`PostgresSourceConfig`]: connection, TLS (libpq's `sslmode`), the fleet's layout
//!   (`tenant_by`) and the tenants.
//! - [`PostgresSource`]: discovers columns and keys from `pg_catalog`, one table name in every
//!   tenant schema at once (`schema`), and reads each table in one `REPEATABLE READ, READ
//!   ONLY` transaction: the server's clock, then `COPY (SELECT ...) TO STDOUT` in text form
//!   (`copy`), decoded by [`types`]. Connections are kept per database and bounded in total
//!   (`pool`); sessions are read-only from their startup packet on. The role needs CONNECT,
//!   USAGE and SELECT only (`privileges` reports anything more).
//! - [`types`]: the one place where PostgreSQL types map to logical types, with the
//!   documented table `connector-run describe postgres` prints.
//!
//! No framework part knows this crate: it plugs in through the same traits and registry as
//! the MySQL source (docs/writing-a-connector.md tells what it took).

mod config;
mod copy;
mod error;
mod pool;
mod privileges;
mod schema;
mod source;
mod tls;
pub mod types;

pub use config::{OutOfRangePolicy, PostgresSourceConfig, SslMode, TenantBy};
pub use source::PostgresSource;

/// Referenced by `connector-run` so the linker keeps this crate's registration.
pub fn link() {}
