//! The binlog as a change log: the server checks `--cdc` needs, the log's head and oldest
//! position, the snapshot position of a consistent read, and streams that turn binlog events
//! into [`connector_framework::ChangeEvent`]s.
//!
//! Positions are `(binlog file, offset)` of transaction boundaries; their sequence numbers
//! sort like the log because binlog files are numbered in order. MariaDB and MySQL both work
//! this way; MariaDB also gives the snapshot's exact position (`binlog_snapshot_*`), which
//! the handoff from a snapshot to the stream relies on (see `docs/cdc.md`).

mod charset;
mod ddl;
mod decode;
mod events;

use std::sync::Arc;

use async_trait::async_trait;
use connector_framework::{
    ChangeLog, ChangeLogStatus, ChangePosition, ChangeRequest, ChangeSeq, ChangeStream, ConnectorError, Result,
};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, Pool};
use tokio::sync::OnceCell;

use crate::config::ZeroDatePolicy;
use crate::error::wrap;

pub(crate) use charset::Collations;

/// The binlog of the server a [`crate::MySqlSource`] reads.
#[derive(Clone)]
pub struct MySqlChangeLog {
    pool: Pool,
    /// For the stream's own connection (the binlog dump holds it for as long as it runs).
    opts: Opts,
    endpoint: String,
    user: String,
    zero_dates: ZeroDatePolicy,
    identity: Arc<OnceCell<String>>,
}

impl std::fmt::Debug for MySqlChangeLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MySqlChangeLog").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

/// `mariadb-bin.000003` → 3.
pub(crate) fn file_number(file: &str) -> Option<u32> {
    file.rsplit('.').next()?.parse().ok()
}

/// The position at a transaction boundary of `file`.
pub(crate) fn position(file: &str, offset: u64, server: &str, gtid: Option<String>) -> Result<ChangePosition> {
    let number = file_number(file).ok_or_else(|| {
        ConnectorError::permanent(format!("binlog file name `{file}` does not end in a number; cannot order positions"))
    })?;
    Ok(ChangePosition {
        seq: ChangeSeq::new(number, offset, 0),
        coordinates: format!("{file}:{offset}"),
        server: server.to_string(),
        gtid,
    })
}

/// Whether the GTIDs recorded with a position (`d-s-n[,d-s-n…]`; a stream records the last
/// transaction's, a snapshot every domain's) are all in the server's GTID state there.
fn same_gtid_position(recorded: &str, found: &str) -> bool {
    let found: Vec<&str> = found.split(',').map(str::trim).collect();
    recorded.split(',').map(str::trim).filter(|g| !g.is_empty()).all(|g| found.contains(&g))
}

/// `mariadb-bin.000003:3054` → (file, offset).
pub(crate) fn parse_coordinates(text: &str) -> Option<(String, u64)> {
    let (file, offset) = text.rsplit_once(':')?;
    Some((file.to_string(), offset.parse().ok()?))
}

impl MySqlChangeLog {
    pub(crate) fn new(pool: Pool, opts: Opts, endpoint: String, user: String, zero_dates: ZeroDatePolicy) -> Self {
        Self { pool, opts, endpoint, user, zero_dates, identity: Arc::default() }
    }

    async fn conn(&self) -> Result<Conn> {
        self.pool.get_conn().await.map_err(|e| wrap(e, format!("{}: cannot get a connection", self.endpoint)))
    }

    /// Which server's log this is: `server_id=N` (and the server UUID where MySQL has one).
    pub(crate) async fn identity(&self) -> Result<String> {
        self.identity
            .get_or_try_init(|| async {
                let mut conn = self.conn().await?;
                let id: Option<u64> =
                    conn.query_first("SELECT @@server_id").await.map_err(|e| wrap(e, "reading @@server_id"))?;
                let uuid: Option<String> = conn.query_first("SELECT @@server_uuid").await.unwrap_or(None);
                Ok(match uuid {
                    Some(u) => format!("server_id={} uuid={u}", id.unwrap_or(0)),
                    None => format!("server_id={}", id.unwrap_or(0)),
                })
            })
            .await
            .cloned()
    }

    /// The position of the consistent snapshot open on `conn`, exactly at its boundary
    /// (MariaDB, Percona Server), or `None` where the server cannot tell.
    pub(crate) async fn snapshot_position(&self, conn: &mut Conn) -> Result<Option<ChangePosition>> {
        let rows: Vec<(String, String)> = conn
            .query("SHOW STATUS LIKE 'binlog_snapshot_%'")
            .await
            .map_err(|e| wrap(e, "reading the snapshot's binlog position"))?;
        let file = rows.iter().find(|(k, _)| k.eq_ignore_ascii_case("binlog_snapshot_file")).map(|(_, v)| v.clone());
        let offset = rows
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("binlog_snapshot_position"))
            .and_then(|(_, v)| v.parse::<u64>().ok());
        let (Some(file), Some(offset)) = (file.filter(|f| !f.is_empty()), offset) else { return Ok(None) };
        let gtid: Option<String> = conn
            .exec_first::<Option<String>, _, _>("SELECT BINLOG_GTID_POS(?, ?)", (&file, offset))
            .await
            .ok()
            .flatten()
            .flatten()
            .filter(|g: &String| !g.is_empty());
        let server = self.identity().await?;
        position(&file, offset, &server, gtid).map(Some)
    }

    /// The log's current end, read outside any snapshot.
    pub(crate) async fn head_on(&self, conn: &mut Conn) -> Result<ChangePosition> {
        let row: Option<mysql_async::Row> = match conn.query_first("SHOW MASTER STATUS").await {
            Ok(r) => r,
            // MySQL 8.4 renamed it.
            Err(_) => {
                conn.query_first("SHOW BINARY LOG STATUS").await.map_err(|e| wrap(e, "reading the binlog head"))?
            }
        };
        let row = row.ok_or_else(|| {
            ConnectorError::config(format!(
                "{}: the server keeps no binary log (log_bin is OFF); --cdc needs it (docs/cdc.md)",
                self.endpoint
            ))
        })?;
        let file: String = row.get(0).unwrap_or_default();
        let offset: u64 = row.get(1).unwrap_or_default();
        let gtid: Option<String> = conn.query_first("SELECT @@gtid_binlog_pos").await.ok().flatten();
        let server = self.identity().await?;
        position(&file, offset, &server, gtid.filter(|g| !g.is_empty()))
    }

    /// Collation id → character set, from the server.
    async fn collations(&self) -> Result<Collations> {
        let mut conn = self.conn().await?;
        let rows: Vec<(u64, String)> = conn
            .query("SELECT ID, CHARACTER_SET_NAME FROM information_schema.COLLATIONS WHERE ID IS NOT NULL")
            .await
            .map_err(|e| wrap(e, "reading information_schema.COLLATIONS"))?;
        Ok(Collations(rows.into_iter().filter_map(|(id, cs)| Some((u16::try_from(id).ok()?, cs))).collect()))
    }
}

/// One unmet requirement of `--cdc` and how to meet it.
fn problem(what: &str, fix: &str) -> String {
    format!("  - {what}: {fix}")
}

#[async_trait]
impl ChangeLog for MySqlChangeLog {
    async fn check(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        let mut problems = Vec::new();
        let var = |name: &'static str| format!("SELECT CAST(@@global.{name} AS CHAR)");
        let mut get = async |name: &'static str| -> Option<String> {
            conn.query_first::<Option<String>, _>(var(name)).await.ok().flatten().flatten()
        };
        let log_bin = get("log_bin").await;
        let format = get("binlog_format").await;
        let image = get("binlog_row_image").await;
        let metadata = get("binlog_row_metadata").await;
        let compress = get("log_bin_compress").await;
        let value_options = get("binlog_row_value_options").await;
        let on = |v: &Option<String>| v.as_deref().is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("ON"));
        if !on(&log_bin) {
            problems.push(problem(
                "log_bin is OFF",
                "start the server with log_bin (e.g. log_bin = mariadb-bin and server_id = 1 in my.cnf)",
            ));
        }
        if !format.as_deref().is_some_and(|f| f.eq_ignore_ascii_case("ROW")) {
            problems.push(problem(
                &format!("binlog_format is {}", format.as_deref().unwrap_or("unknown")),
                "SET GLOBAL binlog_format = 'ROW' and binlog_format = ROW in my.cnf",
            ));
        }
        if !image.as_deref().is_some_and(|f| f.eq_ignore_ascii_case("FULL")) {
            problems.push(problem(
                &format!("binlog_row_image is {}", image.as_deref().unwrap_or("unknown")),
                "SET GLOBAL binlog_row_image = 'FULL' and in my.cnf",
            ));
        }
        if !metadata.as_deref().is_some_and(|f| f.eq_ignore_ascii_case("FULL")) {
            problems.push(problem(
                &format!(
                    "binlog_row_metadata is {}",
                    metadata.as_deref().unwrap_or("unknown (before MariaDB 10.5 / MySQL 8.0)")
                ),
                "SET GLOBAL binlog_row_metadata = 'FULL' and in my.cnf",
            ));
        }
        if on(&compress) {
            problems.push(problem("log_bin_compress is ON", "SET GLOBAL log_bin_compress = OFF and in my.cnf"));
        }
        if value_options.as_deref().is_some_and(|v| !v.is_empty()) {
            problems.push(problem(
                "binlog_row_value_options is PARTIAL_JSON",
                "SET GLOBAL binlog_row_value_options = '' and in my.cnf",
            ));
        }
        // `SHOW GRANTS` without FOR lists the privileges of the session's active roles too
        // (MariaDB), so a grant through a default role counts.
        let grants: Vec<String> = conn.query("SHOW GRANTS").await.unwrap_or_default();
        let global: Vec<String> =
            grants.iter().map(|g| g.to_ascii_uppercase()).filter(|g| g.contains(" ON *.* ")).collect();
        let has = |p: &str| global.iter().any(|g| g.contains("ALL PRIVILEGES") || g.contains(p));
        if !has("REPLICATION SLAVE") && !has("REPLICATION REPLICA") {
            problems.push(problem(
                &format!("the user `{}` lacks REPLICATION SLAVE", self.user),
                &format!("GRANT REPLICATION SLAVE ON *.* TO '{}'@'…'", self.user),
            ));
        }
        // What BINLOG MONITOR / REPLICATION CLIENT allow is asked for directly: whatever the
        // grant came through, the statement the stream needs either runs or does not.
        // (1227: access denied for lack of a privilege; with log_bin off the statement fails
        // for that reason instead, reported above.)
        let monitor_denied = matches!(conn.query_drop("SHOW BINARY LOGS").await, Err(mysql_async::Error::Server(ref e)) if e.code == 1227);
        if monitor_denied {
            problems.push(problem(
                &format!("the user `{}` lacks BINLOG MONITOR (MariaDB) / REPLICATION CLIENT (MySQL)", self.user),
                &format!("GRANT BINLOG MONITOR ON *.* TO '{}'@'…' (MySQL: GRANT REPLICATION CLIENT)", self.user),
            ));
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(ConnectorError::config(format!(
            "{} is not ready for --cdc (docs/cdc.md, \"Server setup\"):\n{}",
            self.endpoint,
            problems.join("\n")
        )))
    }

    async fn status(&self) -> Result<ChangeLogStatus> {
        let mut conn = self.conn().await?;
        let head = self.head_on(&mut conn).await?;
        let logs: Vec<mysql_async::Row> =
            conn.query("SHOW BINARY LOGS").await.map_err(|e| wrap(e, "listing the binary logs"))?;
        let oldest_file: String = logs.first().and_then(|r| r.get(0)).unwrap_or_default();
        let oldest = position(&oldest_file, 4, &head.server, None)?;
        Ok(ChangeLogStatus { head, oldest })
    }

    async fn open(&self, request: ChangeRequest) -> Result<Box<dyn ChangeStream>> {
        let server = self.identity().await?;
        if request.from.server != server {
            return Err(ConnectorError::position_lost(format!(
                "the position {} belongs to another server ({}; this one is {server})",
                request.from.coordinates, request.from.server
            )));
        }
        let (file, offset) = parse_coordinates(&request.from.coordinates).ok_or_else(|| {
            ConnectorError::permanent(format!("unreadable binlog position `{}` in the state", request.from.coordinates))
        })?;
        let mut conn = self.conn().await?;
        let logs: Vec<mysql_async::Row> =
            conn.query("SHOW BINARY LOGS").await.map_err(|e| wrap(e, "listing the binary logs"))?;
        let files: Vec<String> = logs.iter().filter_map(|r| r.get::<String, _>(0)).collect();
        if !files.contains(&file) {
            return Err(ConnectorError::position_lost(format!(
                "binlog {file} is no longer on the server (it has {} to {}): it was purged",
                files.first().map_or("none", String::as_str),
                files.last().map_or("none", String::as_str)
            )));
        }
        // The same coordinates in a log that was reset (RESET MASTER) are another place: on
        // MariaDB the GTID at the position tells. NULL there means the coordinates are no event
        // boundary of this log (past its end, or inside an event of the new log): the log was
        // reset too, and reading from there would decode garbage.
        if let Some(expected) = request.from.gtid.as_ref().filter(|g| !g.is_empty()) {
            let found =
                match conn.exec_first::<Option<String>, _, _>("SELECT BINLOG_GTID_POS(?, ?)", (&file, offset)).await {
                    Ok(found) => found.flatten(),
                    // MySQL has no such function, and its GTIDs are checked by the server.
                    Err(mysql_async::Error::Server(_)) => Some(expected.clone()),
                    Err(e) => return Err(wrap(e, format!("checking the GTID at {file}:{offset}"))),
                };
            match found.filter(|f| !f.is_empty()) {
                Some(found) if same_gtid_position(expected, &found) => {}
                found => {
                    return Err(ConnectorError::position_lost(format!(
                        "the binlog at {file}:{offset} is {}, not at GTID {expected} as when it was read: the log was \
                         reset or rewritten",
                        found.map_or_else(|| "no event boundary".to_string(), |f| format!("at GTID {f}"))
                    )));
                }
            }
        }
        drop(conn);
        let collations = self.collations().await?;
        let stream = events::BinlogChanges::open(
            &self.opts,
            &self.pool,
            request,
            file,
            offset,
            server,
            collations,
            self.zero_dates,
        )
        .await?;
        Ok(Box::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_matches_the_gtid_state_that_contains_its_gtids() {
        assert!(same_gtid_position("0-11-13", "0-11-13"));
        assert!(same_gtid_position("0-11-13", "1-12-5,0-11-13"));
        assert!(!same_gtid_position("0-11-13", "0-11-2"));
        assert!(!same_gtid_position("0-11-13,1-12-5", "0-11-13"));
    }

    #[test]
    fn positions_sort_by_file_then_offset() {
        let a = position("mariadb-bin.000009", 9999, "s", None).unwrap();
        let b = position("mariadb-bin.000010", 4, "s", None).unwrap();
        assert!(a.seq < b.seq);
        assert_eq!(parse_coordinates(&b.coordinates), Some(("mariadb-bin.000010".into(), 4)));
        assert!(position("binlog", 4, "s", None).is_err());
    }
}
