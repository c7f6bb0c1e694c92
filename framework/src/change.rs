//! The change-log role: what a source's change stream (MySQL's binlog) delivers, and where in
//! the log it is.
//!
//! A [`ChangeStream`] yields committed transactions in commit order as [`ChangeEvent`]s: the
//! row changes of each transaction, its DDL, then a [`ChangeEvent::Commit`] at the boundary.
//! Every change carries a [`ChangeSeq`], text that sorts like the log, so a sink can apply a
//! change only over an older one and a re-applied batch changes nothing. A snapshot read with
//! [`crate::source::ReadRequest::capture_position`] stamps its rows with the position of its
//! consistent snapshot, which orders them against the stream the same way.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::schema::{TableRef, TableSchema};
use crate::value::Row;

/// A position in the change log as text that sorts like the log: `FFFFFFFF/PPPPPPPPPPPPPPPP/OOOOOOOO`,
/// the log file number, the byte offset and the change's ordinal within its transaction, each
/// fixed-width upper-case hex. A boundary between transactions (a snapshot, a checkpoint) has
/// ordinal 0; the changes of the transactions after it sort above it, those before below.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChangeSeq(pub String);

impl ChangeSeq {
    pub fn new(file: u32, offset: u64, ordinal: u32) -> Self {
        Self(format!("{file:08X}/{offset:016X}/{ordinal:08X}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The (file, offset, ordinal) it was made from.
    pub fn parts(&self) -> Option<(u32, u64, u32)> {
        let mut it = self.0.split('/');
        let file = u32::from_str_radix(it.next()?, 16).ok()?;
        let offset = u64::from_str_radix(it.next()?, 16).ok()?;
        let ordinal = u32::from_str_radix(it.next()?, 16).ok()?;
        it.next().is_none().then_some((file, offset, ordinal))
    }
}

impl std::fmt::Display for ChangeSeq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A boundary in the change log: where a snapshot was taken or a stream has applied up to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangePosition {
    pub seq: ChangeSeq,
    /// The log coordinates a stream resumes from, as the source writes them
    /// (MySQL: `mariadb-bin.000003:3054`).
    pub coordinates: String,
    /// The server whose log this is (MySQL: `server_id=11`, plus the server UUID on MySQL).
    /// A position of another server is never resumed from.
    pub server: String,
    /// The global transaction id at this boundary, when the server has one (for people).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid: Option<String>,
}

impl std::fmt::Display for ChangePosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.coordinates)?;
        if let Some(g) = &self.gtid {
            write!(f, " (GTID {g})")?;
        }
        Ok(())
    }
}

/// What a change does to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    /// Insert, or replace the row with this key (`row` is the full new image).
    Upsert,
    /// Remove the row (`row` is the full old image).
    Delete,
}

/// One row change. An update that keeps the key is one `Upsert`; an update that changes the
/// key (or any update of a table without a key) is a `Delete` of the old image and an
/// `Upsert` of the new one, with the same `seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    pub op: ChangeOp,
    pub seq: ChangeSeq,
    /// Values in the order of the table's requested columns.
    pub row: Row,
}

/// Per row of a batch of changes: what it does, where it is in the log, when it was made.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeMeta {
    pub op: ChangeOp,
    pub seq: ChangeSeq,
    /// When the source executed the change (the event's timestamp, whole seconds).
    pub at: DateTime<Utc>,
}

/// What a change stream delivers, in log order.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeEvent {
    /// Row changes of a requested table, part of the transaction that the next `Commit` ends.
    Rows { table: TableRef, at: DateTime<Utc>, changes: Vec<RowChange> },
    /// A table of a requested database that the request did not name: created since, or a
    /// tenant that joined. Its rows are not decoded.
    TableSeen { table: TableRef, seq: ChangeSeq },
    /// A requested table's columns in the log differ from the schema it was requested with
    /// (a column added, dropped or retyped). Its rows are not decoded from here on.
    SchemaChanged { table: TableRef, seq: ChangeSeq, detail: String },
    /// A requested table's rows cannot be read from the log (a type or character set the
    /// reader cannot convert exactly); it stops streaming with `error`.
    Unreadable { table: TableRef, seq: ChangeSeq, error: String },
    /// DDL that may have changed a requested table (`ALTER TABLE`, `CREATE INDEX`…): the caller
    /// rediscovers it.
    Altered { table: TableRef, seq: ChangeSeq, statement: String },
    /// A table of a requested database was created.
    Created { table: TableRef, seq: ChangeSeq },
    /// Every row of a requested table was removed (`TRUNCATE`).
    Truncated { table: TableRef, seq: ChangeSeq, at: DateTime<Utc> },
    /// A requested table was dropped or renamed away.
    Dropped { table: TableRef, seq: ChangeSeq, statement: String },
    /// The end of a transaction: everything before `position` has been delivered.
    Commit { position: ChangePosition, at: DateTime<Utc> },
    /// No transaction is open and the log has nothing new: the stream is at `position`, the
    /// head of the log.
    Idle { position: ChangePosition },
}

/// What a stream should read.
#[derive(Debug, Clone)]
pub struct ChangeRequest {
    /// Where to start: a boundary from an earlier [`ChangeEvent::Commit`], a snapshot, or
    /// the head from [`ChangeLog::status`].
    pub from: ChangePosition,
    /// Events of other databases are skipped without decoding.
    pub databases: BTreeSet<String>,
    /// The tables whose rows are decoded, each with the columns to deliver.
    pub tables: HashMap<TableRef, ChangeTable>,
    /// The replica id the stream registers with; unique per stream on one server.
    pub stream_id: u32,
    /// How often an idle server reports that it is alive; a stream silent for three periods
    /// is taken for dead.
    pub heartbeat: Duration,
    /// End the stream (`next` returns `None`) at the log's end instead of waiting for more.
    pub stop_at_end: bool,
}

/// One requested table: the schema its rows are delivered in, and the columns of the source
/// table that are left out on purpose (`exclude_columns`), so they are not taken for a change.
#[derive(Debug, Clone)]
pub struct ChangeTable {
    pub schema: Arc<TableSchema>,
    pub excluded: Vec<String>,
}

/// The server's change log as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeLogStatus {
    /// The end of the log now.
    pub head: ChangePosition,
    /// The oldest position the server still has; a stream cannot start before it.
    pub oldest: ChangePosition,
}

/// A running change stream.
#[async_trait]
pub trait ChangeStream: Send {
    /// The next event; `None` when a `stop_at_end` stream reached the end of the log. An error
    /// ends the stream: open a new one from the last applied `Commit`.
    async fn next(&mut self) -> Result<Option<ChangeEvent>>;
    /// Ends the stream and releases its connection.
    async fn close(self: Box<Self>) {}
}

/// A source with a change log (the [`crate::source::Source::change_log`] of a source that has one).
#[async_trait]
pub trait ChangeLog: Send + Sync + std::fmt::Debug {
    /// Checks that the server logs every change in a form the stream can read and that the
    /// user may read it; a config error listing every missing setting and grant otherwise.
    async fn check(&self) -> Result<()>;
    /// The head and the oldest available position of the log.
    async fn status(&self) -> Result<ChangeLogStatus>;
    /// Opens a stream. A `from` the server no longer has (purged, or another server's) fails
    /// with [`crate::error::ConnectorError::is_position_lost`].
    async fn open(&self, request: ChangeRequest) -> Result<Box<dyn ChangeStream>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_sort_like_the_log_and_round_trip() {
        let a = ChangeSeq::new(3, 0xfff, 7);
        let b = ChangeSeq::new(3, 0x1000, 0);
        let c = ChangeSeq::new(4, 4, 1);
        assert!(a < b && b < c);
        assert_eq!(a.as_str(), "00000003/0000000000000FFF/00000007");
        assert_eq!(c.parts(), Some((4, 4, 1)));
        assert_eq!(ChangeSeq("x/1".into()).parts(), None);
    }
}
