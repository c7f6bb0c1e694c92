//! Table schemas as sources discover them, in connector-neutral logical types.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A source table: `database.table`. In a multi-tenant pipeline the database is the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableRef {
    pub database: String,
    pub table: String,
}

impl TableRef {
    pub fn new(database: impl Into<String>, table: impl Into<String>) -> Self {
        Self { database: database.into(), table: table.into() }
    }
}

impl std::fmt::Display for TableRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.database, self.table)
    }
}

/// The meaning of a column's values, independent of any database's type names.
///
/// Each variant is chosen so that every legal source value has an exact representation:
/// decimals keep their digits (never `f64`), unsigned 64-bit integers keep their range,
/// times keep microseconds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LogicalType {
    Bool,
    /// Fits in a signed 64-bit integer.
    Int64,
    /// Unsigned 64-bit integer; values may exceed `i64::MAX`.
    UInt64,
    Float32,
    Float64,
    /// Exact decimal with `precision` digits, `scale` of them after the point.
    Decimal {
        precision: u8,
        scale: u8,
    },
    /// Text (valid UTF-8 after the source's character set conversion).
    String,
    Bytes,
    Date,
    /// Wall-clock date and time without a zone, `fsp` fractional digits (0..=6).
    DateTime {
        fsp: u8,
    },
    /// An instant, read in UTC, `fsp` fractional digits (0..=6).
    Timestamp {
        fsp: u8,
    },
    /// A signed duration in hours:minutes:seconds (MySQL TIME spans -838:59:59..838:59:59).
    Time {
        fsp: u8,
    },
    /// A JSON document, as text.
    Json,
    /// A spatial value as WKT text.
    Geometry,
}

/// One column of a source table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    /// The type as the source declares it, e.g. `decimal(12,2) unsigned`.
    pub source_type: String,
    pub logical: LogicalType,
    pub nullable: bool,
}

/// Where a table's row key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    PrimaryKey,
    /// A unique index over NOT NULL columns.
    UniqueIndex,
    /// Named in the configuration.
    Configured,
    None,
}

/// A discovered source table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableSchema {
    pub table: TableRef,
    /// Shared between tenants whose columns are the same (a fleet's thousand tenants hold one
    /// list, not a thousand); change it with `Arc::make_mut`.
    pub columns: Arc<Vec<Column>>,
    /// Key columns in key order; empty when the table has no usable key.
    pub key: Vec<String>,
    pub key_source: KeySource,
    /// The source's estimate of the row count (for progress), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_rows: Option<u64>,
}

impl TableSchema {
    /// Takes the column list of the tenant before it (`last`) when the two are equal, else
    /// keeps its own and remembers it: a fleet's tenants then hold one list between them.
    pub fn share_columns(&mut self, last: &mut Option<Arc<Vec<Column>>>) {
        match last {
            Some(columns) if !Arc::ptr_eq(columns, &self.columns) && **columns == *self.columns => {
                self.columns = Arc::clone(columns)
            }
            _ => *last = Some(Arc::clone(&self.columns)),
        }
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name.eq_ignore_ascii_case(name))
    }
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name.eq_ignore_ascii_case(name))
    }
}
