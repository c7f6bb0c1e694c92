//! Binlog events → change events: event groups (GTID … XID, or a standalone DDL) become
//! transactions ending in a `Commit` at their end position; table maps become layouts; row
//! events of requested tables become row changes; Query events are read for transaction
//! boundaries and DDL. Every event type is either understood or ends the stream with an error
//! that names it: nothing is skipped silently.
//!
//! What mysql_async leaves out for MariaDB is done here: `@mariadb_slave_capability=4` (real
//! GTID events instead of fake `BEGIN`s), reading the GTID event's body, and ignoring the file
//! name of the first, fake ROTATE (it carries the checksum bytes, blackbeam/mysql_async#189).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use connector_framework::{
    ChangeEvent, ChangeOp, ChangeRequest, ChangeSeq, ChangeStream, ConnectorError, Result, RowChange, TableRef, Value,
};
use futures::StreamExt;
use mysql_async::binlog::events::{Event, EventData, RowsEventData};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn, Opts, Pool};
use mysql_common::io::ParseBuf;

use super::charset::Collations;
use super::ddl::{self, Statement};
use super::decode::{Image, Layout, Mismatch};
use super::{file_number, position};
use crate::config::ZeroDatePolicy;
use crate::error::wrap;

/// The event group being read.
#[derive(Debug, Default)]
struct Group {
    /// The end position of the event that opened it; its changes' sequence numbers are
    /// `(file, start, ordinal)`.
    start: u64,
    ordinal: u32,
    /// A DDL group: it ends with its one Query event.
    standalone: bool,
    /// MySQL: a GTID event opened it and no `BEGIN` followed yet.
    awaiting_begin: bool,
    gtid: Option<String>,
}

pub(crate) struct BinlogChanges {
    stream: Option<BinlogStream>,
    /// For values the server converts (geometry as WKT).
    pool: Pool,
    request: ChangeRequest,
    server: String,
    file: String,
    file_no: u32,
    collations: Collations,
    zero_dates: ZeroDatePolicy,
    /// MariaDB's table maps differ from MySQL's in small ways.
    mariadb: bool,
    /// A format description event arrived (events after it are read with its checksum).
    seen_format: bool,
    layouts: HashMap<u64, Option<Arc<Layout>>>,
    /// Tables already reported (seen, changed, unreadable), so each is reported once.
    reported: HashSet<TableRef>,
    group: Option<Group>,
    last_gtid: Option<String>,
    queue: VecDeque<ChangeEvent>,
}

impl BinlogChanges {
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        opts: &Opts,
        pool: &Pool,
        request: ChangeRequest,
        file: String,
        offset: u64,
        server: String,
        collations: Collations,
        zero_dates: ZeroDatePolicy,
    ) -> Result<Self> {
        let mut conn = Conn::new(opts.clone()).await.map_err(|e| wrap(e, "opening the binlog connection"))?;
        let version: Option<String> =
            conn.query_first("SELECT @@version").await.map_err(|e| wrap(e, "reading the server version"))?;
        let mariadb = version.is_some_and(|v| v.contains("MariaDB"));
        let period = request.heartbeat.as_nanos().min(u128::from(u64::MAX)) as u64;
        for sql in [
            // Real GTID events, not BEGIN queries in their place.
            "SET @mariadb_slave_capability = 4".to_string(),
            format!("SET @master_heartbeat_period = {period}"),
            format!("SET @source_heartbeat_period = {period}"),
        ] {
            conn.query_drop(sql).await.map_err(|e| wrap(e, "preparing the binlog connection"))?;
        }
        let file_no = file_number(&file)
            .ok_or_else(|| ConnectorError::permanent(format!("binlog file name `{file}` does not end in a number")))?;
        let mut dump = BinlogStreamRequest::new(request.stream_id).with_filename(file.as_bytes()).with_pos(offset);
        if request.stop_at_end {
            dump = dump.with_non_blocking();
        }
        let stream = conn.get_binlog_stream(dump).await.map_err(|e| dump_error(e, &file, offset))?;
        Ok(Self {
            stream: Some(stream),
            pool: pool.clone(),
            request,
            server,
            file,
            file_no,
            collations,
            zero_dates,
            mariadb,
            seen_format: false,
            layouts: HashMap::new(),
            reported: HashSet::new(),
            group: None,
            last_gtid: None,
            queue: VecDeque::new(),
        })
    }

    fn here(&self, offset: u64) -> String {
        format!("{}:{offset}", self.file)
    }

    fn seq(&self, ordinal: u32) -> ChangeSeq {
        ChangeSeq::new(self.file_no, self.group.as_ref().map_or(0, |g| g.start), ordinal)
    }

    fn open_group(&mut self, start: u64, standalone: bool, awaiting_begin: bool, gtid: Option<String>) {
        self.group = Some(Group { start, ordinal: 0, standalone, awaiting_begin, gtid });
    }

    fn commit(&mut self, end: u64, at: DateTime<Utc>) -> Result<()> {
        let group = self.group.take();
        if let Some(g) = group.as_ref().and_then(|g| g.gtid.clone()) {
            self.last_gtid = Some(g);
        }
        let position = position(&self.file, end, &self.server, self.last_gtid.clone())?;
        self.queue.push_back(ChangeEvent::Commit { position, at });
        Ok(())
    }

    fn wanted_db(&self, db: &str) -> bool {
        self.request.databases.contains(db)
    }

    /// Reads the next binlog event (or `None` at the end of a non-blocking dump).
    async fn read(&mut self) -> Result<Option<Event>> {
        let Some(stream) = self.stream.as_mut() else { return Ok(None) };
        let next = if self.request.stop_at_end {
            stream.next().await
        } else {
            let patience = self.request.heartbeat * 3 + Duration::from_secs(5);
            match tokio::time::timeout(patience, stream.next()).await {
                Ok(n) => n,
                Err(_) => {
                    return Err(ConnectorError::transient(format!(
                        "no binlog event or heartbeat for {} s; the connection is taken for dead",
                        patience.as_secs()
                    )));
                }
            }
        };
        match next {
            None if self.request.stop_at_end => Ok(None),
            // A dump that waits for more never ends by itself: the server went away.
            None => Err(ConnectorError::transient("the server closed the binlog stream (restarting?)")),
            Some(Ok(e)) => Ok(Some(e)),
            Some(Err(e)) => Err(dump_error(e, &self.file, 0)),
        }
    }

    /// Handles one binlog event, queueing what it means.
    async fn handle(&mut self, event: Event) -> Result<()> {
        let header = event.header();
        let kind = header.event_type_raw();
        let end = u64::from(header.log_pos());
        let at = DateTime::from_timestamp(i64::from(header.timestamp()), 0).unwrap_or_default();
        match kind {
            // ROTATE names the next file: a real one at the end of a file, a fake one when the
            // dump moves on by itself (after a server restart the old file ends in STOP). The
            // fake one a dump starts with comes before any format description, and its name
            // carries the checksum bytes (blackbeam/mysql_async#189): that one is ignored, the
            // file is the one requested.
            4 => {
                if self.seen_format
                    && let Ok(Some(EventData::RotateEvent(r))) = event.read_data()
                {
                    let name = r.name().into_owned();
                    if name != self.file {
                        self.file_no = file_number(&name).ok_or_else(|| {
                            ConnectorError::permanent(format!("binlog file name `{name}` does not end in a number"))
                        })?;
                        self.file = name;
                        self.layouts.clear();
                    }
                }
            }
            15 => self.seen_format = true,
            // MariaDB GTID: sequence (u64), domain (u32), flags (u8), in the body.
            162 => {
                let body = event.data();
                if body.len() < 13 {
                    return Err(self.fatal(end, "a MariaDB GTID event that is too short"));
                }
                let seq = u64::from_le_bytes(body[0..8].try_into().unwrap_or_default());
                let domain = u32::from_le_bytes(body[8..12].try_into().unwrap_or_default());
                let standalone = body[12] & 0x01 != 0;
                let gtid = format!("{domain}-{}-{seq}", header.server_id());
                self.open_group(end, standalone, false, Some(gtid));
            }
            // MySQL GTID, anonymous GTID, tagged GTID (8.4): a group follows.
            33 | 34 | 42 => {
                let gtid = match event.read_data() {
                    Ok(Some(EventData::GtidEvent(g))) => Some(format!("{}:{}", uuid_text(&g.sid()), g.gno())),
                    _ => None,
                };
                self.open_group(end, false, true, gtid);
            }
            2 => self.query(&event, end, at).await?,
            // XID: the group committed.
            16 => self.commit(end, at)?,
            19 => self.table_map(&event, end)?,
            23 | 24 | 25 | 30 | 31 | 32 => self.rows(&event, end, at).await?,
            39 => {
                return Err(self.fatal(
                    end,
                    "a partial JSON update (PARTIAL_UPDATE_ROWS); set binlog_row_value_options = '' on the server",
                ));
            }
            // Heartbeat: the dump is alive and at the end of the log.
            27 => {
                if self.group.is_none() {
                    let name = String::from_utf8_lossy(event.data()).trim_end_matches('\0').to_string();
                    if !name.is_empty() && file_number(&name).is_some() && name != self.file {
                        self.file_no = file_number(&name).unwrap_or(self.file_no);
                        self.file = name;
                    }
                    let position = position(&self.file, end, &self.server, self.last_gtid.clone())?;
                    self.queue.push_back(ChangeEvent::Idle { position });
                }
            }
            40 => {
                return Err(self.fatal(
                    end,
                    "a compressed transaction (binlog_transaction_compression); set it OFF on the server",
                ));
            }
            164 => return Err(self.fatal(end, "an encrypted binlog (START_ENCRYPTION)")),
            165..=171 => {
                return Err(self.fatal(
                    end,
                    &format!("a compressed event (type {kind}); set log_bin_compress = OFF on the server"),
                ));
            }
            26 => return Err(self.fatal(end, "an INCIDENT event: the server lost events of its own log")),
            // Known and carrying nothing for us: STOP, INTVAR, RAND, USER_VAR, FORMAT_DESCRIPTION,
            // ROWS_QUERY, PREVIOUS_GTIDS, HEARTBEAT_V2, ANNOTATE_ROWS, BINLOG_CHECKPOINT,
            // GTID_LIST.
            3 | 5 | 13 | 14 | 29 | 35 | 41 | 160 | 161 | 163 => {}
            other => {
                return Err(
                    self.fatal(end, &format!("binlog event type {other}, which connector-run does not understand"))
                );
            }
        }
        Ok(())
    }

    fn fatal(&self, end: u64, what: &str) -> ConnectorError {
        ConnectorError::permanent(format!(
            "the binlog holds {what} (at {}); the change stream stopped there so that no change is skipped",
            self.here(end)
        ))
    }

    async fn query(&mut self, event: &Event, end: u64, at: DateTime<Utc>) -> Result<()> {
        let Ok(Some(EventData::QueryEvent(q))) = event.read_data() else {
            return Err(self.fatal(end, "an unreadable Query event"));
        };
        let sql = q.query().into_owned();
        let schema = q.schema().into_owned();
        let statement = ddl::classify(&sql);
        match statement {
            Statement::Begin => {
                match self.group.as_mut() {
                    Some(g) => g.awaiting_begin = false,
                    None => self.open_group(end, false, false, None),
                }
                return Ok(());
            }
            Statement::Commit => return self.commit(end, at),
            Statement::Xa => return Err(self.fatal(end, &format!("an XA transaction (`{}`)", short(&sql)))),
            _ => {}
        }
        // A statement outside BEGIN … COMMIT is a group of its own (DDL).
        if self.group.as_ref().is_none_or(|g| g.awaiting_begin) {
            let gtid = self.group.take().and_then(|g| g.gtid);
            self.open_group(end, true, false, gtid);
        }
        let seq = self.seq(1);
        let table = |name: &ddl::Name| -> Option<TableRef> {
            let db = name.0.clone().unwrap_or_else(|| schema.clone());
            (!db.is_empty()).then(|| TableRef::new(db, name.1.clone()))
        };
        let mut events = Vec::new();
        match statement {
            Statement::Truncate(n) => {
                events.extend(table(&n).map(|t| ChangeEvent::Truncated { table: t, seq: seq.clone(), at }))
            }
            Statement::Drop(names) => {
                for n in &names {
                    if let Some(t) = table(n) {
                        events.push(ChangeEvent::Dropped { table: t, seq: seq.clone(), statement: sql.clone() });
                    }
                }
            }
            Statement::DropDatabase(db) => {
                for t in self.request.tables.keys().filter(|t| t.database == db) {
                    events.push(ChangeEvent::Dropped { table: t.clone(), seq: seq.clone(), statement: sql.clone() });
                }
            }
            Statement::Rename(pairs) => {
                for (from, to) in &pairs {
                    if let Some(t) = table(from) {
                        events.push(ChangeEvent::Dropped { table: t, seq: seq.clone(), statement: sql.clone() });
                    }
                    if let Some(t) = table(to) {
                        events.push(ChangeEvent::Created { table: t, seq: seq.clone() });
                    }
                }
            }
            Statement::Alter(n) => events.extend(table(&n).map(|t| ChangeEvent::Altered {
                table: t,
                seq: seq.clone(),
                statement: sql.clone(),
            })),
            Statement::Create(n) => {
                events.extend(table(&n).map(|t| ChangeEvent::Created { table: t, seq: seq.clone() }))
            }
            Statement::Replace(n) => {
                if let Some(t) = table(&n) {
                    events.push(ChangeEvent::Dropped { table: t.clone(), seq: seq.clone(), statement: sql.clone() });
                    events.push(ChangeEvent::Created { table: t, seq: seq.clone() });
                }
            }
            Statement::Dml(n) => {
                let named = n.as_ref().and_then(table);
                match named {
                    Some(t) if self.wanted_db(&t.database) => {
                        events.push(ChangeEvent::SchemaChanged {
                            table: t,
                            seq: seq.clone(),
                            detail: format!(
                                "a change logged as a statement, not as rows (`{}`): some session runs with \
                                 binlog_format other than ROW",
                                short(&sql)
                            ),
                        });
                    }
                    Some(_) => {}
                    None if self.wanted_db(&schema) => {
                        return Err(
                            self.fatal(end, &format!("a data change logged as a statement (`{}`)", short(&sql)))
                        );
                    }
                    None => {}
                }
            }
            Statement::Begin | Statement::Commit | Statement::Xa | Statement::Other => {}
        }
        for e in events {
            let db = match &e {
                ChangeEvent::Truncated { table, .. }
                | ChangeEvent::Dropped { table, .. }
                | ChangeEvent::Created { table, .. }
                | ChangeEvent::Altered { table, .. }
                | ChangeEvent::SchemaChanged { table, .. } => table.database.clone(),
                _ => String::new(),
            };
            if self.wanted_db(&db) {
                self.queue.push_back(e);
            }
        }
        if self.group.as_ref().is_some_and(|g| g.standalone) {
            self.commit(end, at)?;
        }
        Ok(())
    }

    fn table_map(&mut self, event: &Event, end: u64) -> Result<()> {
        let Ok(Some(EventData::TableMapEvent(tme))) = event.read_data() else {
            return Err(self.fatal(end, "an unreadable table map"));
        };
        let table = TableRef::new(tme.database_name().into_owned(), tme.table_name().into_owned());
        let id = tme.table_id();
        if !self.wanted_db(&table.database) {
            self.layouts.insert(id, None);
            return Ok(());
        }
        let Some(requested) = self.request.tables.get(&table) else {
            self.layouts.insert(id, None);
            if self.reported.insert(table.clone()) {
                let seq = self.seq(0);
                self.queue.push_back(ChangeEvent::TableSeen { table, seq });
            }
            return Ok(());
        };
        match Layout::new(&tme, requested, &self.collations, self.zero_dates, self.mariadb) {
            Ok(layout) => {
                self.layouts.insert(id, Some(Arc::new(layout)));
            }
            Err(Mismatch::Columns(detail)) => {
                self.layouts.insert(id, None);
                if self.reported.insert(table.clone()) {
                    let seq = self.seq(0);
                    self.queue.push_back(ChangeEvent::SchemaChanged { table, seq, detail });
                }
            }
            Err(Mismatch::Unreadable(error)) => {
                self.layouts.insert(id, None);
                if self.reported.insert(table.clone()) {
                    let seq = self.seq(0);
                    self.queue.push_back(ChangeEvent::Unreadable { table, seq, error });
                }
            }
        }
        Ok(())
    }

    async fn rows(&mut self, event: &Event, end: u64, at: DateTime<Utc>) -> Result<()> {
        let Ok(Some(EventData::RowsEvent(rows))) = event.read_data() else {
            return Err(self.fatal(end, "an unreadable rows event"));
        };
        let Some(Some(layout)) = self.layouts.get(&rows.table_id()).cloned() else {
            // A table of another database, or one not requested: never decoded. A rows event
            // without a table map first cannot be read at all.
            if !self.layouts.contains_key(&rows.table_id()) {
                return Err(self.fatal(end, "a rows event without its table map"));
            }
            return Ok(());
        };
        if self.group.is_none() {
            return Err(self.fatal(end, "row changes outside a transaction"));
        }
        let before_bits: Option<Vec<bool>> = rows.columns_before_image().map(|b| b.iter().by_vals().collect());
        let after_bits: Option<Vec<bool>> = rows.columns_after_image().map(|b| b.iter().by_vals().collect());
        if before_bits.as_ref().is_some_and(|b| b.len() != layout.logged())
            || after_bits.as_ref().is_some_and(|b| b.len() != layout.logged())
        {
            return Err(
                self.fatal(end, &format!("a rows event of {} whose columns do not match its table map", layout.table))
            );
        }
        let kind = match &rows {
            RowsEventData::WriteRowsEventV1(_) | RowsEventData::WriteRowsEvent(_) => Kind::Insert,
            RowsEventData::UpdateRowsEventV1(_) | RowsEventData::UpdateRowsEvent(_) => Kind::Update,
            RowsEventData::DeleteRowsEventV1(_) | RowsEventData::DeleteRowsEvent(_) => Kind::Delete,
            RowsEventData::PartialUpdateRowsEvent(_) => {
                return Err(self.fatal(end, "a partial JSON update; set binlog_row_value_options = ''"));
            }
        };
        let mut buf = ParseBuf(rows.rows_data());
        let mut changes = Vec::new();
        while !buf.is_empty() {
            let read = |buf: &mut ParseBuf<'_>, present: &Option<Vec<bool>>| -> Result<Image> {
                let present = present.as_deref().unwrap_or_default();
                layout.read_image(buf, present).map_err(ConnectorError::permanent)
            };
            let before = match kind {
                Kind::Update | Kind::Delete => Some(read(&mut buf, &before_bits)?),
                Kind::Insert => None,
            };
            let after = match kind {
                Kind::Update | Kind::Insert => Some(read(&mut buf, &after_bits)?),
                Kind::Delete => None,
            };
            let before = match before {
                Some(i) => Some(self.finish(i, &layout).await?),
                None => None,
            };
            let after = match after {
                Some(i) => Some(self.finish(i, &layout).await?),
                None => None,
            };
            let ordinal = match self.group.as_mut() {
                Some(g) => {
                    g.ordinal += 1;
                    g.ordinal
                }
                None => return Err(self.fatal(end, "row changes outside a transaction")),
            };
            let seq = self.seq(ordinal);
            match (before, after) {
                (None, Some(row)) => changes.push(RowChange { op: ChangeOp::Upsert, seq, row }),
                (Some(row), None) => changes.push(RowChange { op: ChangeOp::Delete, seq, row }),
                (Some(old), Some(new)) => {
                    // Same key: one upsert. Another key (or no key): the old row goes, the new comes.
                    let same_key = !layout.key.is_empty() && layout.key.iter().all(|&k| old[k] == new[k]);
                    if !same_key {
                        changes.push(RowChange { op: ChangeOp::Delete, seq: seq.clone(), row: old });
                    }
                    changes.push(RowChange { op: ChangeOp::Upsert, seq, row: new });
                }
                (None, None) => {}
            }
        }
        if !changes.is_empty() {
            self.queue.push_back(ChangeEvent::Rows { table: layout.table.clone(), at, changes });
        }
        Ok(())
    }

    /// Completes an image with the values the server converts.
    async fn finish(&self, image: Image, layout: &Layout) -> Result<Vec<Value>> {
        let mut row = image.row;
        if image.pending.is_empty() {
            return Ok(row);
        }
        let mut conn =
            self.pool.get_conn().await.map_err(|e| wrap(e, format!("{}: converting a geometry", layout.table)))?;
        for p in image.pending {
            // A hex literal: a bound parameter would arrive as text, which ST_GeomFromWKB refuses.
            let hex: String = p.wkb.iter().map(|b| format!("{b:02X}")).collect();
            // NULL (a value the server cannot read back as a geometry) stays NULL: the row
            // must not fail to convert.
            let wkt: Option<String> = conn
                .query_first::<Option<String>, _>(format!("SELECT ST_AsText(ST_GeomFromWKB(x'{hex}', {}))", p.srid))
                .await
                .map_err(|e| wrap(e, format!("{}: converting a geometry from the binlog", layout.table)))?
                .flatten();
            row[p.column] = wkt.map_or(Value::Null, Value::Geometry);
        }
        Ok(row)
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Insert,
    Update,
    Delete,
}

fn short(sql: &str) -> String {
    let line = sql.lines().next().unwrap_or_default().trim();
    if line.chars().count() > 100 {
        format!("{}…", line.chars().take(100).collect::<String>())
    } else {
        line.to_string()
    }
}

fn uuid_text(sid: &[u8; 16]) -> String {
    let h: String = sid.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// A dump error: a position the server no longer has is `position_lost`.
fn dump_error(e: mysql_async::Error, file: &str, offset: u64) -> ConnectorError {
    if let mysql_async::Error::Server(s) = &e
        && s.code == 1236
    {
        return ConnectorError::position_lost(format!(
            "the server cannot stream its binlog from {file}{}: {} (purged, or the log was reset)",
            if offset > 0 { format!(":{offset}") } else { String::new() },
            s.message
        ));
    }
    wrap(e, "reading the binlog")
}

#[async_trait]
impl ChangeStream for BinlogChanges {
    async fn next(&mut self) -> Result<Option<ChangeEvent>> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Ok(Some(e));
            }
            let Some(event) = self.read().await? else {
                return Ok(None);
            };
            self.handle(event).await?;
        }
    }

    async fn close(mut self: Box<Self>) {
        if let Some(s) = self.stream.take() {
            let _ = s.close().await;
        }
    }
}
