//! Test helpers, by concern: the MariaDB fixtures, the emulator, running the binary, the
//! MySQL-vs-BigQuery comparison, and a fault-injecting proxy.

#![allow(dead_code)]

mod bigquery;
mod cli;
mod compare;
mod fault_proxy;
mod mysql;
mod postgres;

pub use bigquery::*;
pub use cli::*;
pub use compare::*;
pub use fault_proxy::*;
pub use mysql::*;
pub use postgres::*;
