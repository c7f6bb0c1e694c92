//! `connector-mysql`: reads tables from MySQL and MariaDB servers, one database per tenant.
//!
//! - [`MySqlSourceConfig`]: connection settings and the databases to read.
//! - [`MySqlSource`]: discovers columns and keys from `information_schema`, one table name in
//!   all tenants at once (`schema`), reused while a MariaDB table's `CREATE_TIME` is unchanged
//!   (`schema_cache`), and streams rows with the binary protocol: a read is the
//!   server's clock, then one SELECT (its own consistent snapshot), or, for a change stream,
//!   both inside `START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY`. Sessions run at UTC
//!   and read only, set up once per pooled connection; the user needs SELECT privileges and
//!   nothing else.
//! - [`types`]: the one place where MySQL column types map to logical types, with the
//!   documented table `connector-run describe mysql` prints.

mod binlog;
mod config;
mod digest;
mod error;
mod privileges;
mod schema;
mod schema_cache;
mod source;
mod tls;
pub mod types;

pub use binlog::MySqlChangeLog;
pub use config::MySqlSourceConfig;
pub use source::MySqlSource;

/// Referenced by `connector-run` so the linker keeps this crate's registration.
pub fn link() {}
