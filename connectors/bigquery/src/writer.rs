//! One tenant's staging writer: rows encoded as NDJSON lines of the staging table and handed
//! to the shared stage, the handle that says where they are, and the row hash of tables
//! without a key.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use connector_framework::{
    ChangeMeta, ChangeOp, ChangeSeq, LogicalType, Result, RowBatch, Staged, StagingWriter, SyncMode, Value, WriteMode,
};
use tokio::sync::Mutex;

use crate::stage::{HANDOFF_BYTES, Stage};
use crate::types::{encode_str, encode_value};

/// Room kept free in a writer's own buffer before each row (a row larger than this grows it).
const LOCAL_ROW_ROOM: usize = 64 * 1024;

/// Staging only: each staged row's number, so a chunk that was loaded twice counts once.
pub(crate) const SEQ_FIELD: &str = "_seq";
/// `,"_seq":`, written once per row (a `format!` per row showed in profiles).
const SEQ_KEY: &[u8] = b",\"_seq\":";
/// Staging only: which writer staged the row. Tenants share staging tables; a commit takes
/// each tenant's rows from the writer that finished, never from an attempt that failed.
pub(crate) const WRITER_FIELD: &str = "_writer";
/// Staging only: the tenant's name.
pub(crate) const TENANT_FIELD: &str = "_tenant";
/// Staging only: the sync mode.
pub(crate) const MODE_FIELD: &str = "_mode";
/// Staging only: when the row was written.
pub(crate) const SYNCED_FIELD: &str = "_synced";
/// Staging only: the row hash (tables without a key).
pub(crate) const HASH_FIELD: &str = "_hash";
/// Staging only (tables a change stream writes): the log position of the change or snapshot
/// the row comes from.
pub(crate) const CHANGE_SEQ_FIELD: &str = "_cseq";
/// Staging only (change batches): `U` (upsert) or `D` (delete).
pub(crate) const OP_FIELD: &str = "_op";
/// Staging only (change batches): when the source made the change.
pub(crate) const CHANGED_AT_FIELD: &str = "_at";

/// Which change-stream fields a writer's rows carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ChangeFields {
    /// `_cseq`: the target table is written by a change stream.
    pub seq: bool,
    /// `_op` and `_at`: the rows are a change batch.
    pub ops: bool,
}

/// Where one tenant's staged rows are: a staging table, the writer staging them now, and, for
/// a resumed full sync, the writers before it with the rows each made durable. Written as
/// `<table>/<writer>[/<writer>:<rows>]...`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StageHandle {
    pub table: String,
    pub writer: u64,
    /// Earlier writers of the same rows, each with its first `rows` rows (`_seq` below it).
    pub earlier: Vec<(u64, u64)>,
}

impl StageHandle {
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('/');
        let table = parts.next()?.to_string();
        let writer = parts.next()?.parse().ok()?;
        let earlier = parts
            .map(|p| {
                let (w, rows) = p.split_once(':')?;
                Some((w.parse().ok()?, rows.parse().ok()?))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { table, writer, earlier })
    }

    /// The SQL condition that selects the rows of these handles in one staging table: the
    /// finished writers by `writers`, an INT64 array parameter holding them (see
    /// [`StageHandle::writers_param`]), and the durable part of each writer a handle resumed.
    /// The writers go as a parameter, not as literals: a fleet's table lists thousands, and
    /// BigQuery caps a statement's text at 1 MB (the parameters have the request's 10 MB).
    pub fn condition(handles: &[&StageHandle], writers: &str) -> String {
        let mut terms = vec![format!("{WRITER_FIELD} IN UNNEST(@{writers})")];
        for h in handles {
            terms.extend(h.earlier.iter().map(|(w, rows)| format!("({WRITER_FIELD} = {w} AND {SEQ_FIELD} < {rows})")));
        }
        terms.join(" OR ")
    }

    /// The query parameter `name` that [`StageHandle::condition`] reads: the handles' writers.
    pub fn writers_param(name: &str, handles: &[&StageHandle]) -> serde_json::Value {
        crate::digest::array_param(name, "INT64", handles.iter().map(|h| h.writer.to_string()))
    }
}

impl std::fmt::Display for StageHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.table, self.writer)?;
        self.earlier.iter().try_for_each(|(w, rows)| write!(f, "/{w}:{rows}"))
    }
}

/// The row hash of tables without a key, version 2: the xxh3-128 of the row's non-NULL
/// values by column name (sorted, case-insensitive), each as `name` and a canonical form of the
/// value (numbers as minimal decimals, floats by their bits, times as fixed-width text), each
/// length-prefixed. It depends neither on column order nor on the load-file encoding, and a
/// column added with NULLs does not change it. `v2.` in front names the version.
pub(crate) fn row_hash(order: &[(usize, Vec<u8>)], row: &[Value]) -> String {
    let mut bytes = Vec::with_capacity(256);
    for (i, name) in order {
        let Some(value) = row.get(*i).filter(|v| !v.is_null()) else { continue };
        bytes.extend_from_slice(&(name.len() as u32).to_le_bytes());
        bytes.extend_from_slice(name);
        let start = bytes.len();
        bytes.extend_from_slice(&[0; 4]);
        canonical(&mut bytes, value);
        let len = (bytes.len() - start - 4) as u32;
        bytes[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }
    format!("v2.{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes))
}

/// The hash order of a tenant's columns: (position, lower-case target name), by name.
pub(crate) fn hash_order(names: &[String]) -> Vec<(usize, Vec<u8>)> {
    let mut order: Vec<(usize, Vec<u8>)> =
        names.iter().enumerate().map(|(i, n)| (i, n.to_lowercase().into_bytes())).collect();
    order.sort_by(|a, b| a.1.cmp(&b.1));
    order
}

fn canonical(out: &mut Vec<u8>, value: &Value) {
    use std::io::Write;
    match value {
        Value::Null => {}
        Value::Bool(b) => out.extend_from_slice(if *b { b"b1" } else { b"b0" }),
        Value::Int(i) => {
            let _ = write!(out, "n{i}");
        }
        Value::UInt(u) => {
            let _ = write!(out, "n{u}");
        }
        Value::Decimal(d) => {
            out.push(b'n');
            let t = if d.contains('.') { d.trim_end_matches('0').trim_end_matches('.') } else { d.as_str() };
            out.extend_from_slice(if t == "-0" || t.is_empty() { b"0" } else { t.as_bytes() });
        }
        Value::Float(f) => {
            let _ = write!(out, "f{:016x}", f.to_bits());
        }
        Value::String(s) => {
            out.push(b's');
            out.extend_from_slice(s.as_bytes());
        }
        Value::Bytes(b) => {
            out.push(b'x');
            out.extend_from_slice(b);
        }
        Value::Date(d) => {
            let _ = write!(out, "d{}", d.format("%Y-%m-%d"));
        }
        Value::DateTime(t) => {
            let _ = write!(out, "t{}", connector_framework::state::watermark_text(t));
        }
        Value::Timestamp(t) => {
            let _ = write!(out, "z{}", connector_framework::state::watermark_text(&t.naive_utc()));
        }
        Value::Time(us) => {
            let _ = write!(out, "T{us}");
        }
        Value::Json(j) => {
            out.push(b'j');
            out.extend_from_slice(j.as_bytes());
        }
        Value::Geometry(g) => {
            out.push(b'g');
            out.extend_from_slice(g.as_bytes());
        }
    }
}

/// Encodes one tenant's rows as NDJSON and hands them to its stage: the table's shared stage,
/// or, for a resumed full sync, a stage of its own on the staging table it began.
pub(crate) struct BqStagingWriter {
    pub stage: Arc<Mutex<Stage>>,
    /// The stage is this writer's alone: `finish` loads its rows (a shared stage's last rows
    /// are loaded by `commit`).
    pub private: bool,
    /// Where this tenant's rows are; `handle.writer` is in every row this writer stages.
    pub handle: StageHandle,
    pub tenant: String,
    pub mode: SyncMode,
    pub write: WriteMode,
    /// The tenant's columns' target names.
    pub columns: Arc<[String]>,
    /// The staged BigQuery type of each column.
    pub types: Arc<[String]>,
    /// `{"_tenant":…,"_synced":…,"_mode":…,"_writer":…` for every line.
    pub prefix: Vec<u8>,
    /// `,"<staging column>":` and the column's type, per column.
    pub keys: Vec<(Vec<u8>, LogicalType)>,
    /// For tables without a key: the columns in hash order.
    pub hash: Option<Vec<(usize, Vec<u8>)>>,
    pub change_fields: ChangeFields,
    /// The next row's `_seq`.
    pub seq: u64,
    pub rows: u64,
    pub bytes: u64,
    /// Rows encoded and not yet handed to the stage.
    pub local: Vec<u8>,
}

impl BqStagingWriter {
    /// The line prefix shared by every row of this writer.
    pub fn prefix(tenant: &str, mode: SyncMode, writer: u64) -> Vec<u8> {
        let synced = Utc::now().format("%Y-%m-%d %H:%M:%S%.6f UTC").to_string();
        let mut prefix = Vec::new();
        prefix.extend_from_slice(format!("{{\"{TENANT_FIELD}\":").as_bytes());
        encode_str(&mut prefix, tenant);
        prefix.extend_from_slice(format!(",\"{SYNCED_FIELD}\":").as_bytes());
        encode_str(&mut prefix, &synced);
        prefix.extend_from_slice(format!(",\"{MODE_FIELD}\":").as_bytes());
        encode_str(&mut prefix, mode.as_str());
        prefix.extend_from_slice(format!(",\"{WRITER_FIELD}\":{writer}").as_bytes());
        prefix
    }

    /// Appends one row to `out` as a line of NDJSON.
    fn encode_row(
        &mut self,
        out: &mut Vec<u8>,
        row: &[Value],
        snapshot: Option<&ChangeSeq>,
        change: Option<&ChangeMeta>,
    ) {
        out.extend_from_slice(&self.prefix);
        for ((key, logical), value) in self.keys.iter().zip(row) {
            out.extend_from_slice(key);
            encode_value(out, value, logical);
        }
        if let Some(order) = &self.hash {
            // The commit adds the occurrence number, so identical rows stay distinct.
            let hash = row_hash(order, row);
            out.extend_from_slice(format!(",\"{HASH_FIELD}\":\"{hash}\"").as_bytes());
        }
        if self.change_fields.seq {
            out.extend_from_slice(format!(",\"{CHANGE_SEQ_FIELD}\":").as_bytes());
            match change.map(|c| &c.seq).or(snapshot) {
                Some(seq) => encode_str(out, seq.as_str()),
                None => out.extend_from_slice(b"null"),
            }
        }
        if self.change_fields.ops
            && let Some(c) = change
        {
            out.extend_from_slice(format!(",\"{OP_FIELD}\":").as_bytes());
            out.extend_from_slice(if c.op == ChangeOp::Delete { b"\"D\"" } else { b"\"U\"" });
            out.extend_from_slice(format!(",\"{CHANGED_AT_FIELD}\":").as_bytes());
            encode_str(out, &c.at.format("%Y-%m-%d %H:%M:%S%.6f UTC").to_string());
        }
        out.extend_from_slice(SEQ_KEY);
        out.extend_from_slice(itoa::Buffer::new().format(self.seq).as_bytes());
        self.seq += 1;
        out.extend_from_slice(b"}\n");
    }

    /// About what `batch` takes encoded, up to a piece and a row: each row's fixed keys and
    /// prefix, and its values with room for escaping. A stage's buffer is grown by this, so a
    /// tenant of one changed row does not reserve a piece.
    fn room_for(&self, batch: &RowBatch) -> usize {
        let per_row = self.prefix.len() + self.keys.iter().map(|(key, _)| key.len()).sum::<usize>() + 64;
        (batch.rows.len() * per_row + 2 * batch.bytes).min(HANDOFF_BYTES + LOCAL_ROW_ROOM)
    }

    /// Encodes `batch` into the stage's chunk buffer, counting the bytes in with the stage
    /// every [`HANDOFF_BYTES`] (where a full chunk is uploaded) and at the end.
    async fn write_direct(&mut self, stage: &mut Stage, batch: &RowBatch) -> Result<()> {
        let writer = self.handle.writer;
        let room = self.room_for(batch);
        let mut out = stage.open(writer, room)?;
        let mut counted = out.len();
        for (i, row) in batch.rows.iter().enumerate() {
            self.encode_row(out, row, batch.snapshot_seq.as_ref(), batch.changes.get(i));
            if out.len() - counted >= HANDOFF_BYTES {
                stage.appended(writer).await?;
                out = stage.open(writer, room)?;
                counted = out.len();
            }
        }
        if out.len() > counted {
            stage.appended(writer).await?;
        }
        Ok(())
    }

    /// Encodes `batch` into this writer's own buffer, handing it over every [`HANDOFF_BYTES`].
    async fn write_local(&mut self, batch: &RowBatch) -> Result<()> {
        let mut local = std::mem::take(&mut self.local);
        for (i, row) in batch.rows.iter().enumerate() {
            // Doubling from a page up to a piece and its last row, never past that: a
            // fleet's tenant of a few rows holds kilobytes, not a whole piece.
            if local.capacity() - local.len() < LOCAL_ROW_ROOM {
                let capacity = (local.capacity() * 2).clamp(LOCAL_ROW_ROOM, HANDOFF_BYTES + LOCAL_ROW_ROOM);
                local.reserve_exact(capacity.saturating_sub(local.len()));
            }
            self.encode_row(&mut local, row, batch.snapshot_seq.as_ref(), batch.changes.get(i));
            if local.len() >= HANDOFF_BYTES {
                self.local = local;
                self.hand_off().await?;
                local = std::mem::take(&mut self.local);
            }
        }
        self.local = local;
        Ok(())
    }

    /// Moves the encoded rows into the stage.
    async fn hand_off(&mut self) -> Result<()> {
        if !self.local.is_empty() {
            self.stage.lock().await.append(self.handle.writer, &self.local).await?;
            self.local.clear();
        }
        Ok(())
    }
}

#[async_trait]
impl StagingWriter for BqStagingWriter {
    async fn write(&mut self, batch: &RowBatch) -> Result<()> {
        if self.change_fields.ops && batch.changes.len() != batch.rows.len() {
            return Err(connector_framework::ConnectorError::permanent(format!(
                "{}: a change batch without a change per row (a bug in the runner)",
                self.tenant
            )));
        }
        // Rows go straight into the stage's chunk when no other tenant of the table is writing
        // to it (a big table's only writer always); otherwise into this writer's own buffer,
        // handed over in pieces. Straight in saves copying every row once more.
        let free_stage = if self.local.is_empty() { Arc::clone(&self.stage).try_lock_owned().ok() } else { None };
        match free_stage {
            Some(mut stage) => self.write_direct(&mut stage, batch).await?,
            None => self.write_local(batch).await?,
        }
        self.rows += batch.len() as u64;
        self.bytes += batch.bytes as u64;
        Ok(())
    }

    async fn checkpoint(&mut self) -> Result<()> {
        self.hand_off().await?;
        self.stage.lock().await.settle(Some(self.handle.writer)).await
    }

    fn handle(&self) -> Option<String> {
        Some(self.handle.to_string())
    }

    async fn finish(mut self: Box<Self>) -> Result<Staged> {
        self.hand_off().await?;
        let mut stage = self.stage.lock().await;
        if self.private {
            stage.settle(Some(self.handle.writer)).await?
        } else {
            stage.check(self.handle.writer)?
        }
        drop(stage);
        Ok(Staged {
            tenant: self.tenant.clone(),
            mode: self.mode,
            write: self.write,
            rows: self.rows,
            bytes: self.bytes,
            columns: self.columns.clone(),
            types: self.types.clone(),
            handle: Some(self.handle.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(stage: &Arc<Mutex<Stage>>, id: u64) -> BqStagingWriter {
        BqStagingWriter {
            stage: Arc::clone(stage),
            private: false,
            handle: StageHandle { table: "_stage_t".into(), writer: id, earlier: Vec::new() },
            tenant: format!("shop{id}"),
            mode: SyncMode::Full,
            write: WriteMode::ReplaceTenant,
            columns: vec!["id".to_string()].into(),
            types: vec!["INT64".to_string()].into(),
            prefix: BqStagingWriter::prefix(&format!("shop{id}"), SyncMode::Full, id),
            keys: vec![(b",\"id\":".to_vec(), LogicalType::Int64)],
            hash: None,
            change_fields: ChangeFields::default(),
            seq: 0,
            rows: 0,
            bytes: 0,
            local: Vec::new(),
        }
    }

    fn batch(ids: std::ops::Range<i64>) -> RowBatch {
        let mut batch = RowBatch::default();
        ids.for_each(|i| batch.push(vec![Value::Int(i)]));
        batch
    }

    #[tokio::test]
    async fn rows_reach_the_chunk_whole_whether_written_into_it_or_handed_over() {
        let budget = crate::stage::ChunkBudget::new(64 << 20);
        let stage = Arc::new(Mutex::new(crate::stage::tests::stage(&budget, 32 << 20)));
        let (mut first, mut second) = (writer(&stage, 1), writer(&stage, 2));
        // The stage is free: the rows are encoded straight into its chunk.
        first.write(&batch(0..3)).await.unwrap();
        assert!(first.local.is_empty());
        // Another tenant holds the stage: the rows wait in the writer's own buffer...
        let busy = stage.lock().await;
        second.write(&batch(10..12)).await.unwrap();
        assert!(!second.local.is_empty());
        drop(busy);
        // ...and keep going there until handed over, so that its rows stay in order of `_seq`.
        second.write(&batch(12..13)).await.unwrap();
        first.write(&batch(3..5)).await.unwrap();
        second.hand_off().await.unwrap();
        let stage = stage.lock().await;
        let (rows, segments) = stage.filling();
        let lines: Vec<serde_json::Value> =
            rows.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
        let seen = |w: u64| -> Vec<(i64, u64)> {
            lines
                .iter()
                .filter(|l| l["_writer"] == w)
                .map(|l| (l["id"].as_i64().unwrap(), l["_seq"].as_u64().unwrap()))
                .collect()
        };
        assert_eq!(seen(1), vec![(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]);
        assert_eq!(seen(2), vec![(10, 0), (11, 1), (12, 2)]);
        // Every byte is counted, each writer's stretch ends where its rows end.
        assert_eq!(segments.last().map(|s| s.1), Some(rows.len() as u64));
        assert_eq!(segments.iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!(stage.capacity() >= rows.len());
        assert_eq!(crate::stage::tests::held(&budget), stage.capacity(), "the budget counts the chunk's allocation");
    }

    #[tokio::test]
    async fn a_tenant_of_one_row_reserves_kilobytes_in_the_stage_and_a_big_batch_a_piece() {
        let budget = crate::stage::ChunkBudget::new(64 << 20);
        let stage = Arc::new(Mutex::new(crate::stage::tests::stage(&budget, 32 << 20)));
        let mut w = writer(&stage, 1);
        w.write(&batch(0..1)).await.unwrap();
        let small = stage.lock().await.capacity();
        assert!(small <= 16 << 10, "one row's stage holds a few KiB, not a piece: {small}");
        let mut big = batch(1..20_000);
        big.bytes = 8 * big.len();
        w.write(&big).await.unwrap();
        let stage = stage.lock().await;
        let (rows, _) = stage.filling();
        assert_eq!(rows.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count(), 20_000, "every row is there");
        assert!(
            stage.capacity() >= rows.len() && stage.capacity() <= 2 * rows.len() + (1 << 20),
            "{}",
            stage.capacity()
        );
        assert_eq!(crate::stage::tests::held(&budget), stage.capacity());
    }

    #[test]
    fn the_seq_key_names_the_seq_field() {
        assert_eq!(SEQ_KEY, format!(",\"{SEQ_FIELD}\":").as_bytes());
    }

    #[test]
    fn stage_handles_round_trip_and_reject_other_versions() {
        let h = StageHandle { table: "_stage_x".into(), writer: 42, earlier: vec![(7, 1_000_000), (9, 2_000_000)] };
        assert_eq!(h.to_string(), "_stage_x/42/7:1000000/9:2000000");
        assert_eq!(StageHandle::parse(&h.to_string()), Some(h));
        assert_eq!(StageHandle::parse("_stage_x").map(|h| h.writer), None, "a handle of the per-tenant version");
        assert_eq!(StageHandle::parse("_stage_x/1/2"), None);
    }

    #[test]
    fn row_hashes_follow_values_by_name_not_order_encoding_or_null_columns() {
        let names = |n: &[&str]| hash_order(&n.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let a = row_hash(&names(&["path", "ref"]), &[Value::String("/x".into()), Value::Int(5)]);
        let b = row_hash(&names(&["ref", "path"]), &[Value::Int(5), Value::String("/x".into())]);
        assert_eq!(a, b, "column order does not matter");
        let with_null =
            row_hash(&names(&["path", "ref", "agent"]), &[Value::String("/x".into()), Value::Int(5), Value::Null]);
        assert_eq!(a, with_null, "a column added with NULL does not change the hash");
        let unsigned = row_hash(&names(&["path", "ref"]), &[Value::String("/x".into()), Value::UInt(5)]);
        assert_eq!(a, unsigned, "5 is 5 whether signed or not");
        let decimal = row_hash(&names(&["path", "ref"]), &[Value::String("/x".into()), Value::Decimal("5.00".into())]);
        assert_eq!(a, decimal);
        let other = row_hash(&names(&["path", "ref"]), &[Value::String("/x".into()), Value::Int(6)]);
        assert_ne!(a, other);
        let moved = row_hash(&names(&["path", "ref"]), &[Value::String("/x5".into()), Value::Null]);
        assert_ne!(row_hash(&names(&["path", "ref"]), &[Value::String("/x".into()), Value::String("5".into())]), moved);
        assert!(a.starts_with("v2."));
    }
}
