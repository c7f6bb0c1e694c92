//! Staging tables and their load jobs. Every tenant of a target table writes into one shared
//! [`Stage`]: NDJSON rows gather in a chunk buffer, and each full chunk becomes one load job,
//! uploaded while the next chunk fills (at most one upload in flight per stage). Load jobs then
//! follow the data volume of a target table, not the number of tenants × tables. The run's
//! stages share a memory budget; a stage over its share sets its rows aside in a temporary
//! file, part of the same chunk, so memory stays bounded without more load jobs.
//!
//! A chunk holds rows of several writers (tenants). When its load fails for a reason retrying
//! cannot fix, it is loaded again writer by writer, so a tenant whose rows BigQuery rejects
//! fails alone; the others' rows are loaded.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use connector_framework::{ConnectorError, ErrorClass, Result};
use serde_json::{Value as Json, json};
use tokio::sync::{Mutex, OnceCell};
use tokio::task::JoinHandle;

use crate::chunk::Chunk;
use crate::client::BqClient;
use crate::merge::unique_id;

/// Encoded rows move from a writer into its shared stage in pieces of about this size.
pub(crate) const HANDOFF_BYTES: usize = 256 * 1024;

/// A staging table shared by every writer of one target table whose rows have the same
/// staging columns: every tenant, in a fleet with one schema.
#[derive(Debug, Clone)]
pub(crate) struct SharedStage {
    /// The staging columns as JSON text; writers with equal columns share the stage.
    pub fields_key: String,
    /// The staging table's id.
    pub table: String,
    pub stage: Arc<Mutex<Stage>>,
    /// The staging table exists (created by the first writer, awaited by the others).
    pub created: Arc<OnceCell<()>>,
}

/// What an upload task hands back: its outcome, the chunk (for reuse), and the writers whose
/// rows a per-writer reload could not load.
type Upload = (Result<()>, Chunk, Vec<(u64, ConnectorError)>);

/// The memory a run's stages hold in chunk buffers, uploads and spare buffers (their
/// allocations' capacity, not only the rows in them), and how much they may hold. A fleet has
/// many tables in flight, staging or waiting on their loads, each with up to a chunk of rows:
/// without a bound, a full run of 1,000 tenants × 20 tables peaked at 422 MB. Within the
/// budget every stage fills its chunks in memory. Over it, a stage holding more than an equal
/// share among the stages holding rows moves its buffer's rows (at least [`MIN_SPILL_BYTES`])
/// to its chunk's part on disk, and goes on filling a small buffer: the chunk, and the load
/// jobs, stay whole. Should the disk refuse, the stage sends its chunk early instead.
#[derive(Debug, Clone)]
pub(crate) struct ChunkBudget {
    held: Arc<AtomicUsize>,
    /// How many stages hold rows (a chunk filling or uploading).
    active: Arc<AtomicUsize>,
    limit: usize,
}

impl ChunkBudget {
    pub fn new(limit: usize) -> Self {
        Self { held: Default::default(), active: Default::default(), limit }
    }

    fn add(&self, bytes: usize) {
        self.held.fetch_add(bytes, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn exceeded(&self) -> bool {
        self.held.load(Ordering::Relaxed) > self.limit
    }

    /// Whether `bytes` more stay within the budget.
    fn fits(&self, bytes: usize) -> bool {
        self.held.load(Ordering::Relaxed) + bytes <= self.limit
    }

    /// An equal share of the budget among the stages holding rows.
    fn share(&self) -> usize {
        self.limit / self.active.load(Ordering::Relaxed).max(1)
    }
}

/// The least a stage over its share moves to disk at once (and the smallest chunk it sends
/// early when the disk refuses).
const MIN_SPILL_BYTES: usize = 1024 * 1024;

/// The least a chunk buffer is allocated with; it doubles from there as rows arrive (see
/// [`Stage::open`]). A fleet's incremental run stages a row or two per tenant: a table's
/// buffer then holds kilobytes, where a first buffer of a MiB per stage (and its copies as
/// upload and spare) had filled a 1,000-tenant run's budget with empty room.
const MIN_BUFFER_BYTES: usize = 16 * 1024;

/// One staging table and its load jobs.
pub(crate) struct Stage {
    client: BqClient,
    dataset: String,
    table: String,
    /// Distinguishes this stage's load jobs from any other's into the same table.
    instance: String,
    fields: Vec<Json>,
    /// The chunk's first part, set aside on disk over the budget, and its length.
    spill: Option<std::fs::File>,
    spilled: u64,
    /// The chunk's part in memory, after `spilled`.
    buffer: Vec<u8>,
    /// The writer of each stretch of the chunk: (writer, end offset in the chunk), in order.
    segments: Vec<(u64, u64)>,
    /// The disk refused a spill: this stage sends chunks early instead.
    spill_refused: bool,
    /// Where spills go (default: the system's temporary directory, `TMPDIR`).
    spill_dir: Option<std::path::PathBuf>,
    chunk_bytes: usize,
    chunks: u64,
    /// The upload in flight, which hands its chunk back for reuse.
    pending: Option<JoinHandle<Upload>>,
    /// A cleared chunk buffer to fill next.
    spare: Option<Vec<u8>>,
    budget: ChunkBudget,
    /// The bytes the upload in flight holds in memory.
    uploading: usize,
    /// The capacity of the upload's allocation.
    uploading_capacity: usize,
    /// What this stage counts in the budget: the capacity of its buffer, upload and spare.
    counted: usize,
    /// Counted among the budget's stages holding rows.
    active: bool,
    /// Why the stage as a whole failed: nothing staged here may be committed.
    failed: Option<(ErrorClass, String)>,
    /// Writers whose rows could not be loaded, and why; their tenants fail alone.
    failed_writers: HashMap<u64, (ErrorClass, String)>,
}

// By hand: the buffers are megabytes of rows.
impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage").field("table", &self.table).field("chunks", &self.chunks).finish_non_exhaustive()
    }
}

impl Stage {
    pub fn new(
        client: BqClient,
        dataset: String,
        table: String,
        instance: String,
        fields: Vec<Json>,
        chunk_bytes: usize,
        budget: ChunkBudget,
    ) -> Self {
        Self {
            client,
            dataset,
            table,
            instance,
            fields,
            spill: None,
            spilled: 0,
            buffer: Vec::new(),
            segments: Vec::new(),
            spill_refused: false,
            spill_dir: None,
            chunk_bytes,
            chunks: 0,
            pending: None,
            spare: None,
            budget,
            uploading: 0,
            uploading_capacity: 0,
            counted: 0,
            active: false,
            failed: None,
            failed_writers: HashMap::new(),
        }
    }

    /// Whether `writer`'s rows are (so far) intact.
    pub fn check(&self, writer: u64) -> Result<()> {
        if let Some((class, message)) = &self.failed {
            return Err(ConnectorError::new(*class, message.clone()));
        }
        match self.failed_writers.get(&writer) {
            Some((class, message)) => Err(ConnectorError::new(*class, message.clone())),
            None => Ok(()),
        }
    }

    /// Adds `writer`'s encoded rows; uploads the chunk once it is full.
    pub async fn append(&mut self, writer: u64, rows: &[u8]) -> Result<()> {
        self.open(writer, rows.len())?.extend_from_slice(rows);
        self.appended(writer).await
    }

    /// The chunk buffer, for `writer` to encode rows into directly, with room for about
    /// `room` more bytes (at most two pieces are reserved; past that the buffer grows as a
    /// vector does). Every byte it adds must be reported to [`Stage::appended`] before the
    /// stage is used otherwise.
    pub fn open(&mut self, writer: u64, room: usize) -> Result<&mut Vec<u8>> {
        self.check(writer)?;
        if self.buffer.capacity() == 0
            && let Some(spare) = self.spare.take()
        {
            self.buffer = spare;
        }
        // The buffer grows with what the stage holds, doubling up to a chunk of its share:
        // a fleet's small tables stage kilobytes each, and room reserved ahead of the rows is
        // memory the allocator keeps and the budget counts.
        let room = room.min(2 * HANDOFF_BYTES);
        if self.buffer.capacity() - self.buffer.len() < room {
            let target = (self.budget.share().min(self.chunk_bytes) + 2 * HANDOFF_BYTES).max(MIN_BUFFER_BYTES);
            let grown = (self.buffer.capacity() * 2).clamp(MIN_BUFFER_BYTES, target);
            let capacity = grown.max(self.buffer.len() + room);
            self.buffer.reserve_exact(capacity - self.buffer.len());
        }
        self.recount();
        Ok(&mut self.buffer)
    }

    /// Counts what `writer` added at the end of the chunk buffer; uploads the chunk once it is
    /// full, and moves the buffer's rows to disk when the stage is over its share.
    pub async fn appended(&mut self, writer: u64) -> Result<()> {
        self.recount();
        self.set_active(true);
        let end = self.chunk_len();
        match self.segments.last_mut() {
            Some((w, e)) if *w == writer => *e = end,
            _ => self.segments.push((writer, end)),
        }
        // An upload that has finished gives its memory back to the budget now, not at the
        // next chunk.
        if self.pending.as_ref().is_some_and(JoinHandle::is_finished) {
            self.wait_pending().await?;
        }
        if end >= self.chunk_bytes as u64 {
            self.flush().await?;
        } else if self.over_share() {
            if self.spill_refused {
                self.flush().await?;
            } else if let Err(e) = self.spill_buffer() {
                tracing::warn!(table = %self.table, error = %e,
                    "cannot set staged rows aside on disk; sending smaller load jobs instead");
                self.spill_refused = true;
                self.flush().await?;
            }
        }
        self.check(writer)
    }

    /// The chunk's length: its part on disk and its part in memory.
    fn chunk_len(&self) -> u64 {
        self.spilled + self.buffer.len() as u64
    }

    /// Appends the buffer's rows to the chunk's part on disk and starts a small buffer again.
    /// The write is synchronous: a few MiB into the page cache, less than a wait on a thread.
    fn spill_buffer(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let file = match &mut self.spill {
            Some(file) => file,
            None => {
                let file = match &self.spill_dir {
                    Some(dir) => tempfile::tempfile_in(dir)?,
                    None => tempfile::tempfile()?,
                };
                self.spill.insert(file)
            }
        };
        file.write_all_at(&self.buffer, self.spilled)?;
        self.spilled += self.buffer.len() as u64;
        self.buffer.clear();
        self.buffer.shrink_to(MIN_BUFFER_BYTES);
        self.recount();
        Ok(())
    }

    /// Loads every row appended so far; `writer`'s rows must be intact afterwards.
    pub async fn settle(&mut self, writer: Option<u64>) -> Result<()> {
        self.flush().await?;
        self.wait_pending().await?;
        self.set_active(false);
        match writer {
            Some(w) => self.check(w),
            None => Ok(()),
        }
    }

    /// Frees the chunk buffers (a later append allocates again).
    pub fn release_buffers(&mut self) {
        if self.buffer.is_empty() {
            self.buffer = Vec::new();
        }
        drop(self.spare.take());
        self.recount();
    }

    /// Brings what this stage counts in the budget up to date with its allocations.
    fn recount(&mut self) {
        let now = self.buffer.capacity() + self.uploading_capacity + self.spare.as_ref().map_or(0, Vec::capacity);
        if now >= self.counted {
            self.budget.add(now - self.counted);
        } else {
            self.budget.sub(self.counted - now);
        }
        self.counted = now;
    }

    /// The chunk buffer's allocation.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.buffer.capacity()
    }

    /// The rows of the chunk being filled (both parts), and the end of each writer's stretch.
    #[cfg(test)]
    pub(crate) fn filling(&self) -> (Vec<u8>, &[(u64, u64)]) {
        let file = self.spill.as_ref().map(|f| f.try_clone().unwrap());
        let chunk = match file {
            Some(f) => Chunk::spilled(f, self.spilled, bytes::Bytes::copy_from_slice(&self.buffer)),
            None => Chunk::in_memory(bytes::Bytes::copy_from_slice(&self.buffer)),
        };
        (chunk.to_vec().unwrap(), &self.segments)
    }

    /// Whether the run's stages hold more than the budget and this one more than its share,
    /// with enough rows in memory to move.
    fn over_share(&self) -> bool {
        self.buffer.len() >= MIN_SPILL_BYTES
            && self.budget.exceeded()
            && self.buffer.len() + self.uploading >= self.budget.share()
    }

    /// Counts this stage among those holding rows, or no longer.
    fn set_active(&mut self, active: bool) {
        if self.active != active {
            self.active = active;
            match active {
                true => self.budget.active.fetch_add(1, Ordering::Relaxed),
                false => self.budget.active.fetch_sub(1, Ordering::Relaxed),
            };
        }
    }

    /// Why `writer`'s rows failed to load, if they did.
    pub fn writer_failure(&self, writer: u64) -> Option<ConnectorError> {
        self.check(writer).err()
    }

    async fn wait_pending(&mut self) -> Result<()> {
        if let Some((class, message)) = &self.failed {
            return Err(ConnectorError::new(*class, message.clone()));
        }
        let Some(handle) = self.pending.take() else { return Ok(()) };
        let outcome = handle.await.map_err(|e| ConnectorError::permanent(format!("upload task failed: {e}")));
        self.uploading = 0;
        self.uploading_capacity = 0;
        self.recount();
        match outcome {
            Ok((Ok(()), data, writers)) => {
                for (w, e) in writers {
                    self.failed_writers.insert(w, (e.class(), e.to_string()));
                }
                self.recycle(data.into_memory());
                Ok(())
            }
            Ok((Err(e), _, _)) | Err(e) => {
                let e = e.context(format!("loading staging table {}", self.table));
                self.failed = Some((e.class(), e.to_string()));
                Err(e)
            }
        }
    }

    /// Keeps an uploaded chunk's memory for the next chunk: a fresh 16 MiB buffer per chunk
    /// costs a page fault per 4 KiB, and the allocator may not return it at once.
    fn recycle(&mut self, data: bytes::Bytes) {
        let Some(buffer) = reclaim(data) else { return };
        let spare = self.spare.as_ref().map_or(0, Vec::capacity);
        if self.budget.fits(buffer.capacity().saturating_sub(spare)) {
            self.spare = Some(buffer);
            self.recount();
        }
    }

    async fn flush(&mut self) -> Result<()> {
        self.wait_pending().await?;
        if self.chunk_len() == 0 {
            return Ok(());
        }
        // The next chunk's buffer: the one uploaded before, or a new one at the next append.
        let next = self.spare.take().unwrap_or_default();
        let filled = std::mem::replace(&mut self.buffer, next);
        self.uploading_capacity = filled.capacity();
        let memory = bytes::Bytes::from(filled);
        let in_memory = memory.len();
        let data = match self.spill.take() {
            Some(file) => Chunk::spilled(file, std::mem::take(&mut self.spilled), memory),
            None => Chunk::in_memory(memory),
        };
        let segments = std::mem::take(&mut self.segments);
        let client = self.client.clone();
        let load = json!({
            "destinationTable": {"projectId": client.project(), "datasetId": self.dataset, "tableId": self.table},
            "sourceFormat": "NEWLINE_DELIMITED_JSON",
            "schema": {"fields": self.fields},
            "writeDisposition": "WRITE_APPEND",
            "createDisposition": "CREATE_NEVER",
        });
        let job_id = unique_id("load", &[&self.table, &self.instance, &self.chunks.to_string()]);
        let what = format!("load into staging table {}", self.table);
        self.chunks += 1;
        self.uploading = in_memory;
        self.recount();
        self.pending = Some(tokio::spawn(async move { upload(client, load, data, job_id, what, segments).await }));
        Ok(())
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.budget.sub(self.counted);
        self.set_active(false);
    }
}

/// Loads a chunk; when that fails for good and the chunk holds several writers' rows, loads
/// each writer's rows on its own and reports the writers whose rows still fail.
async fn upload(
    client: BqClient,
    load: Json,
    data: Chunk,
    job_id: String,
    what: String,
    segments: Vec<(u64, u64)>,
) -> Upload {
    // A load that timed out is not in doubt the way a commit is: its staging table is dropped
    // and nothing reads it.
    let plain = |e: ConnectorError| ConnectorError::new(e.class(), e.message().to_string());
    let error = match client.load(load.clone(), data.clone(), &job_id, &what).await {
        Ok(_) => return (Ok(()), data, Vec::new()),
        Err(e) => plain(e),
    };
    let mut writers: Vec<u64> = segments.iter().map(|(w, _)| *w).collect();
    writers.sort_unstable();
    writers.dedup();
    if error.is_transient() || writers.len() < 2 {
        return (Err(error), data, Vec::new());
    }
    tracing::warn!(%what, error = %error, writers = writers.len(), "a load failed; loading each tenant's rows of the chunk on its own");
    let mut failures = Vec::new();
    for writer in writers {
        let mut own = Vec::new();
        let mut start = 0;
        for (w, end) in &segments {
            if *w == writer
                && let Err(e) = data.append_range(start, *end, &mut own)
            {
                let e = ConnectorError::permanent(format!("cannot read staged rows back from disk: {e}"));
                return (Err(e), data, Vec::new());
            }
            start = *end;
        }
        let id = format!("{job_id}_w{writer}");
        if let Err(e) = client.load(load.clone(), Chunk::in_memory(bytes::Bytes::from(own)), &id, &what).await {
            failures.push((writer, plain(e)));
        }
    }
    (Ok(()), data, failures)
}

/// The allocation behind a chunk nothing else holds any more, emptied for reuse.
pub(crate) fn reclaim(data: bytes::Bytes) -> Option<Vec<u8>> {
    let mut buffer = Vec::from(data.try_into_mut().ok()?);
    buffer.clear();
    Some(buffer)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn client(transport: impl crate::transport::Transport + 'static) -> BqClient {
        let options = crate::client::ClientOptions {
            project: "p".into(),
            location: None,
            retry: Default::default(),
            job_timeout: std::time::Duration::from_secs(5),
            max_concurrent_jobs: 4,
        };
        BqClient::new(options, std::sync::Arc::new(transport))
    }

    pub(crate) fn stage(budget: &ChunkBudget, chunk_bytes: usize) -> Stage {
        let client = client(crate::transport::DiscardTransport::default());
        Stage::new(client, "d".into(), "t".into(), "i".into(), Vec::new(), chunk_bytes, budget.clone())
    }

    pub(crate) fn held(budget: &ChunkBudget) -> usize {
        budget.held.load(Ordering::Relaxed)
    }

    /// A stage whose load jobs' rows are written to `dir` (one file per job), and that refuses
    /// a load holding `reject` (a row BigQuery would refuse).
    fn dumping_stage(budget: &ChunkBudget, chunk_bytes: usize, dir: &std::path::Path, reject: &'static [u8]) -> Stage {
        let dump = crate::transport::DiscardTransport { dump_dir: Some(dir.to_path_buf()) };
        let client = client(Rejecting { dump, reject });
        Stage::new(client, "d".into(), "t".into(), "i".into(), Vec::new(), chunk_bytes, budget.clone())
    }

    /// The uploads as `DiscardTransport` dumps them, with a permanent failure for those holding
    /// `reject`.
    #[derive(Debug)]
    struct Rejecting {
        dump: crate::transport::DiscardTransport,
        reject: &'static [u8],
    }

    #[async_trait::async_trait]
    impl crate::transport::Transport for Rejecting {
        async fn get_dataset(&self, p: &str, d: &str) -> Result<Option<Json>> {
            self.dump.get_dataset(p, d).await
        }
        async fn insert_dataset(&self, p: &str, b: Json) -> Result<()> {
            self.dump.insert_dataset(p, b).await
        }
        async fn get_table(&self, p: &str, d: &str, t: &str) -> Result<Option<Json>> {
            self.dump.get_table(p, d, t).await
        }
        async fn insert_table(&self, p: &str, d: &str, r: Json) -> Result<Option<Json>> {
            self.dump.insert_table(p, d, r).await
        }
        async fn patch_table(&self, p: &str, d: &str, t: &str, b: Json) -> Result<()> {
            self.dump.patch_table(p, d, t, b).await
        }
        async fn delete_table(&self, p: &str, d: &str, t: &str) -> Result<()> {
            self.dump.delete_table(p, d, t).await
        }
        async fn insert_job(&self, p: &str, j: Json) -> Result<Option<Json>> {
            self.dump.insert_job(p, j).await
        }
        async fn upload_job(&self, p: &str, j: Json, data: Chunk) -> Result<()> {
            let rows = data.to_vec().unwrap();
            if !self.reject.is_empty() && rows.windows(self.reject.len()).any(|w| w == self.reject) {
                return Err(ConnectorError::permanent("invalid row"));
            }
            self.dump.upload_job(p, j, data).await
        }
        async fn get_job(&self, p: &str, id: &str, l: Option<&str>) -> Result<Option<Json>> {
            self.dump.get_job(p, id, l).await
        }
        async fn cancel_job(&self, p: &str, id: &str, l: Option<&str>) -> Result<()> {
            self.dump.cancel_job(p, id, l).await
        }
        async fn get_query_results(&self, p: &str, id: &str, l: Option<&str>, t: Option<&str>) -> Result<Json> {
            self.dump.get_query_results(p, id, l, t).await
        }
        fn endpoint(&self) -> &str {
            self.dump.endpoint()
        }
    }

    /// The rows of every load dumped in `dir` whose job id contains `part`, by job id.
    fn loads(dir: &std::path::Path, part: &str) -> Vec<Vec<u8>> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(part))
            .collect();
        files.sort();
        files.iter().map(|p| std::fs::read(p).unwrap()).collect()
    }

    /// A handed-over piece of rows, recognisable by `tag`.
    fn piece(tag: u8) -> Vec<u8> {
        let mut piece = vec![tag; HANDOFF_BYTES - 1];
        piece.push(b'\n');
        piece
    }

    #[tokio::test]
    async fn over_the_budget_a_stage_over_its_share_sets_its_rows_aside_on_disk_in_the_same_chunk() {
        const MIB: usize = MIN_SPILL_BYTES;
        let dir = tempfile::tempdir().unwrap();
        let budget = ChunkBudget::new(16 * MIB);
        let (mut a, mut b) = (stage(&budget, 64 * MIB), dumping_stage(&budget, 64 * MIB, dir.path(), b""));
        let mut sent = Vec::new();
        for _ in 0..8 {
            a.append(1, &piece(b'a')).await.unwrap();
        }
        for i in 0..24 {
            b.append(2, &piece(b'0' + i % 10)).await.unwrap();
            sent.extend_from_slice(&piece(b'0' + i % 10));
        }
        assert_eq!((a.chunks, b.chunks, a.spilled, b.spilled), (0, 0, 0, 0), "within the budget, rows stay in memory");
        let counted = a.buffer.capacity() + b.buffer.capacity();
        assert_eq!(held(&budget), counted, "the budget counts the buffers' allocations");
        assert!(counted > 8 * MIB, "more than the rows in them: {counted}");
        assert_eq!(budget.share(), 8 * MIB);
        let mut i = 0;
        while b.spilled == 0 && i < 64 {
            b.append(2, &piece(b'A' + i % 26)).await.unwrap();
            sent.extend_from_slice(&piece(b'A' + i % 26));
            i += 1;
        }
        assert!(b.spilled > 0, "the stage over its share set its rows aside");
        assert_eq!(b.chunks, 0, "no load job was sent early");
        assert!(b.buffer.is_empty() && b.buffer.capacity() <= MIN_BUFFER_BYTES, "its memory is given back");
        assert!(held(&budget) < 16 * MIB, "the stages are within the budget again: {}", held(&budget));
        for i in 0..6 {
            b.append(2, &piece(b'a' + i)).await.unwrap();
            sent.extend_from_slice(&piece(b'a' + i));
        }
        a.append(1, &piece(b'a')).await.unwrap();
        assert_eq!(a.spilled, 0, "a stage within its share keeps its rows in memory");
        let (filling, segments) = b.filling();
        assert_eq!(filling, sent, "the chunk is the rows in the order they came, disk part first");
        assert_eq!(segments, &[(2, sent.len() as u64)]);
        b.settle(None).await.unwrap();
        assert_eq!((b.chunks, b.spilled), (1, 0), "one load job for the whole chunk");
        assert_eq!(loads(dir.path(), "load"), vec![sent], "what was loaded is what was staged");
        a.settle(None).await.unwrap();
        a.release_buffers();
        b.release_buffers();
        drop((a, b));
        assert_eq!(held(&budget), 0, "every byte counted is given back");
        assert_eq!(budget.active.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_stage_the_disk_refuses_sends_its_chunk_early_instead() {
        const MIB: usize = MIN_SPILL_BYTES;
        let budget = ChunkBudget::new(4 * MIB);
        let mut s = stage(&budget, 64 * MIB);
        s.spill_dir = Some("/nonexistent/connector-spill".into());
        let mut pieces = 0;
        while s.chunks == 0 && pieces < 64 {
            s.append(1, &piece(b'x')).await.unwrap();
            pieces += 1;
        }
        assert!(s.spill_refused && s.spilled == 0);
        assert_eq!(s.chunks, 1, "the chunk went early, as a smaller load job");
        assert!(pieces * HANDOFF_BYTES < 64 * MIB);
        s.settle(None).await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_chunk_partly_on_disk_is_loaded_again_writer_by_writer() {
        const MIB: usize = MIN_SPILL_BYTES;
        let dir = tempfile::tempdir().unwrap();
        let budget = ChunkBudget::new(2 * MIB);
        let mut s = dumping_stage(&budget, 64 * MIB, dir.path(), b"bad");
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for i in 0..12u8 {
            let (writer, rows) = if i % 3 == 2 { (2, &mut bad) } else { (1, &mut good) };
            let mut p = piece(b'a' + i);
            if writer == 2 && i == 11 {
                p[..3].copy_from_slice(b"bad");
            }
            s.append(writer, &p).await.unwrap();
            rows.extend_from_slice(&p);
        }
        assert!(s.spilled > 0 && !s.buffer.is_empty(), "the chunk is partly on disk, partly in memory");
        s.settle(None).await.unwrap();
        assert_eq!(s.chunks, 1);
        assert!(s.writer_failure(2).is_some(), "the writer with the refused row fails");
        assert!(s.writer_failure(1).is_none());
        assert_eq!(loads(dir.path(), "_w1_"), vec![good], "the other writer's rows, from both parts, in order");
        assert!(loads(dir.path(), "_w2_").is_empty());
    }

    #[tokio::test]
    async fn a_chunk_buffer_grows_with_the_rows_up_to_a_chunk_not_more() {
        const MIB: usize = MIN_SPILL_BYTES;
        let budget = ChunkBudget::new(64 * MIB);
        let mut small = stage(&budget, 16 * MIB);
        small.append(1, b"{\"a\":1}\n").await.unwrap();
        assert_eq!(small.buffer.capacity(), MIN_BUFFER_BYTES, "a stage of a few rows holds a few KiB");
        let mut big = stage(&budget, 4 * MIB);
        let piece = vec![b'x'; HANDOFF_BYTES];
        let mut capacities = Vec::new();
        for _ in 0..16 {
            let buffer = big.open(2, HANDOFF_BYTES).unwrap();
            buffer.extend_from_slice(&piece);
            capacities.push(buffer.capacity());
            big.appended(2).await.unwrap();
        }
        assert_eq!(big.chunks, 1, "the 16th piece filled the chunk");
        assert!(capacities.windows(2).all(|w| w[0] <= w[1]), "{capacities:?}");
        assert_eq!(
            *capacities.last().unwrap(),
            4 * MIB,
            "grown by doubling to a chunk, as the pieces needed room: {capacities:?}"
        );
        small.settle(None).await.unwrap();
        big.settle(None).await.unwrap();
    }

    #[test]
    fn an_uploaded_chunk_gives_its_allocation_back() {
        let mut chunk = Vec::with_capacity(1 << 20);
        chunk.extend_from_slice(b"{\"a\":1}\n");
        let address = chunk.as_ptr();
        let data = bytes::Bytes::from(chunk);
        let in_flight = data.clone();
        assert!(reclaim(in_flight).is_none(), "a chunk still shared must not be reused");
        let reused = reclaim(data).expect("the last holder gets the buffer back");
        assert_eq!((reused.as_ptr(), reused.capacity(), reused.len()), (address, 1 << 20, 0));
    }
}
