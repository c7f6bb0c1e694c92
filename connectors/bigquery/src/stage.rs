//! Staging tables and their load jobs. Every tenant of a target table writes into one shared
//! [`Stage`]: NDJSON rows gather in a chunk buffer, and each full chunk becomes one load job,
//! uploaded while the next chunk fills (at most one upload in flight, so memory stays at about
//! two chunks). Load jobs then follow the data volume of a target table, not the number of
//! tenants × tables.
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
type Upload = (Result<()>, bytes::Bytes, Vec<(u64, ConnectorError)>);

/// The memory a run's stages hold in chunk buffers, uploads and spare buffers (their
/// allocations' capacity, not only the rows in them), and how much they may hold. A fleet has
/// many tables in flight, staging or waiting on their loads, each with up to a chunk of rows: without a bound, a full run of 1,000 tenants × 20 tables peaked at 422 MB.
/// Within the budget every stage fills whole chunks. Over it, a stage holding more than an
/// equal share among the stages holding rows sends its chunk early (at least
/// [`MIN_CHUNK_BYTES`]); it waits only for its own previous upload, never for another stage's,
/// so none waits forever.
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

/// The smallest chunk a stage sends early (smaller load jobs, not tiny ones).
const MIN_CHUNK_BYTES: usize = 1024 * 1024;

/// A stage's first chunk buffer; it doubles as rows arrive (see [`Stage::open`]).
const INITIAL_BUFFER_BYTES: usize = 4 * HANDOFF_BYTES;

/// One staging table and its load jobs.
pub(crate) struct Stage {
    client: BqClient,
    dataset: String,
    table: String,
    /// Distinguishes this stage's load jobs from any other's into the same table.
    instance: String,
    fields: Vec<Json>,
    buffer: Vec<u8>,
    /// The writer of each stretch of `buffer`: (writer, end offset), in order.
    segments: Vec<(u64, usize)>,
    chunk_bytes: usize,
    chunks: u64,
    /// The upload in flight, which hands its chunk back for reuse.
    pending: Option<JoinHandle<Upload>>,
    /// A cleared chunk buffer to fill next.
    spare: Option<Vec<u8>>,
    budget: ChunkBudget,
    /// The bytes of the upload in flight.
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
            buffer: Vec::new(),
            segments: Vec::new(),
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
        self.open(writer)?.extend_from_slice(rows);
        self.appended(writer).await
    }

    /// The chunk buffer, for `writer` to encode rows into directly; every byte it adds must be
    /// reported to [`Stage::appended`] before the stage is used otherwise.
    pub fn open(&mut self, writer: u64) -> Result<&mut Vec<u8>> {
        self.check(writer)?;
        if self.buffer.capacity() == 0
            && let Some(spare) = self.spare.take()
        {
            self.buffer = spare;
        }
        // Room for the next piece. The buffer grows with what the stage holds, doubling up to
        // a chunk of its share: a fleet's small tables stage kilobytes each, and a buffer
        // reserved for a whole chunk per stage is memory the allocator keeps.
        if self.buffer.capacity() - self.buffer.len() < 2 * HANDOFF_BYTES {
            let target = (self.budget.share().min(self.chunk_bytes) + 2 * HANDOFF_BYTES).max(INITIAL_BUFFER_BYTES);
            let grown = (self.buffer.capacity() * 2).clamp(INITIAL_BUFFER_BYTES, target);
            let capacity = grown.max(self.buffer.len() + 2 * HANDOFF_BYTES);
            self.buffer.reserve_exact(capacity - self.buffer.len());
        }
        self.recount();
        Ok(&mut self.buffer)
    }

    /// Counts what `writer` added at the end of the chunk buffer; uploads the chunk once it is
    /// full.
    pub async fn appended(&mut self, writer: u64) -> Result<()> {
        self.recount();
        self.set_active(true);
        match self.segments.last_mut() {
            Some((w, end)) if *w == writer => *end = self.buffer.len(),
            _ => self.segments.push((writer, self.buffer.len())),
        }
        if self.buffer.len() >= self.chunk_bytes || self.over_share() {
            self.flush().await?;
        }
        self.check(writer)
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

    /// The rows of the chunk being filled, and the end of each writer's stretch of it.
    #[cfg(test)]
    pub(crate) fn filling(&self) -> (&[u8], &[(u64, usize)]) {
        (&self.buffer, &self.segments)
    }

    /// Whether the run's stages hold more than the budget and this one more than its share,
    /// with a chunk big enough to send early.
    fn over_share(&self) -> bool {
        self.buffer.len() >= MIN_CHUNK_BYTES
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
                self.recycle(data);
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
        if self.buffer.is_empty() {
            return Ok(());
        }
        // The next chunk's buffer: the one uploaded before, or a new one at the next append.
        let next = self.spare.take().unwrap_or_default();
        let filled = std::mem::replace(&mut self.buffer, next);
        self.uploading_capacity = filled.capacity();
        let data = bytes::Bytes::from(filled);
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
        self.uploading = data.len();
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
    data: bytes::Bytes,
    job_id: String,
    what: String,
    segments: Vec<(u64, usize)>,
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
            if *w == writer {
                own.extend_from_slice(&data[start..*end]);
            }
            start = *end;
        }
        let id = format!("{job_id}_w{writer}");
        if let Err(e) = client.load(load.clone(), bytes::Bytes::from(own), &id, &what).await {
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

    pub(crate) fn stage(budget: &ChunkBudget, chunk_bytes: usize) -> Stage {
        let options = crate::client::ClientOptions {
            project: "p".into(),
            location: None,
            retry: Default::default(),
            job_timeout: std::time::Duration::from_secs(5),
            max_concurrent_jobs: 4,
        };
        let client = BqClient::new(options, std::sync::Arc::new(crate::transport::DiscardTransport::default()));
        Stage::new(client, "d".into(), "t".into(), "i".into(), Vec::new(), chunk_bytes, budget.clone())
    }

    pub(crate) fn held(budget: &ChunkBudget) -> usize {
        budget.held.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn over_the_budget_the_stages_holding_more_than_their_share_send_early() {
        const MIB: usize = MIN_CHUNK_BYTES;
        let budget = ChunkBudget::new(16 * MIB);
        let (mut a, mut b) = (stage(&budget, 64 * MIB), stage(&budget, 64 * MIB));
        // Rows arrive in pieces, as writers hand them over.
        let piece = vec![b'x'; HANDOFF_BYTES];
        for _ in 0..8 {
            a.append(1, &piece).await.unwrap();
        }
        for _ in 0..24 {
            b.append(2, &piece).await.unwrap();
        }
        assert_eq!((a.chunks, b.chunks), (0, 0), "within the budget, chunks keep filling");
        let counted = a.buffer.capacity() + b.buffer.capacity();
        assert_eq!(held(&budget), counted, "the budget counts the buffers' allocations");
        assert!(counted > 8 * MIB, "more than the rows in them: {counted}");
        assert_eq!(budget.share(), 8 * MIB);
        let mut pieces = 0;
        while b.chunks == 0 && pieces < 64 {
            b.append(2, &piece).await.unwrap();
            pieces += 1;
        }
        assert_eq!(b.chunks, 1, "the stage over its share sends its chunk early");
        assert!(b.uploading < 16 * MIB, "before it held the whole budget: {}", b.uploading);
        a.append(1, &piece).await.unwrap();
        assert_eq!(a.chunks, 0, "a stage within its share keeps filling");
        a.settle(None).await.unwrap();
        assert_eq!(budget.share(), 16 * MIB, "a settled stage no longer takes a share");
        b.settle(None).await.unwrap();
        a.release_buffers();
        b.release_buffers();
        drop((a, b));
        assert_eq!(held(&budget), 0, "every byte counted is given back");
        assert_eq!(budget.active.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_chunk_buffer_grows_with_the_rows_up_to_a_chunk_not_more() {
        const MIB: usize = MIN_CHUNK_BYTES;
        let budget = ChunkBudget::new(64 * MIB);
        let mut small = stage(&budget, 16 * MIB);
        small.append(1, b"{\"a\":1}\n").await.unwrap();
        assert_eq!(small.buffer.capacity(), INITIAL_BUFFER_BYTES, "a stage of a few rows holds its first buffer only");
        let mut big = stage(&budget, 4 * MIB);
        let piece = vec![b'x'; HANDOFF_BYTES];
        let mut capacities = Vec::new();
        for _ in 0..16 {
            let buffer = big.open(2).unwrap();
            buffer.extend_from_slice(&piece);
            capacities.push(buffer.capacity());
            big.appended(2).await.unwrap();
        }
        assert_eq!(big.chunks, 1, "the 16th piece filled the chunk");
        assert!(capacities.windows(2).all(|w| w[0] <= w[1]), "{capacities:?}");
        assert_eq!(
            *capacities.last().unwrap(),
            4 * MIB + 2 * HANDOFF_BYTES,
            "grown by doubling to a chunk and its last pieces: {capacities:?}"
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
