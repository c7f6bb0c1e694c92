//! One load job's rows: the part a stage set aside on disk (when the run's stages held more
//! than their memory budget), then the part still in memory. Uploads stream the disk part in
//! pieces, so a chunk on disk costs no memory while it is loaded.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};

/// How much of the disk part an upload reads at once.
const READ_PIECE: usize = 256 * 1024;

/// The NDJSON rows of one load job, in order: `file[..on_disk]`, then `memory`.
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    file: Option<Arc<File>>,
    on_disk: u64,
    memory: Bytes,
}

impl Chunk {
    /// Rows held in memory only.
    pub fn in_memory(memory: Bytes) -> Self {
        Self { file: None, on_disk: 0, memory }
    }

    /// The first `on_disk` bytes of `file`, then `memory`.
    pub(crate) fn spilled(file: File, on_disk: u64, memory: Bytes) -> Self {
        Self { file: Some(Arc::new(file)), on_disk, memory }
    }

    pub fn len(&self) -> u64 {
        self.on_disk + self.memory.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The part in memory (its allocation can be reused once the upload is done).
    pub(crate) fn into_memory(self) -> Bytes {
        self.memory
    }

    /// Bytes `start..end` of the chunk (one writer's stretch, loaded on its own).
    pub fn range(&self, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(end.saturating_sub(start) as usize);
        self.append_range(start, end, &mut out)?;
        Ok(out)
    }

    /// Appends bytes `start..end` of the chunk to `out`, the disk part read straight into it.
    pub fn append_range(&self, start: u64, end: u64, out: &mut Vec<u8>) -> std::io::Result<()> {
        if start < self.on_disk
            && let Some(file) = &self.file
        {
            let at = out.len();
            out.resize(at + (end.min(self.on_disk) - start) as usize, 0);
            if let Err(e) = file.read_exact_at(&mut out[at..], start) {
                out.truncate(at);
                return Err(e);
            }
        }
        if end > self.on_disk {
            let from = start.saturating_sub(self.on_disk) as usize;
            out.extend_from_slice(&self.memory[from..(end - self.on_disk) as usize]);
        }
        Ok(())
    }

    /// The whole chunk as pieces, the disk part read as the stream is polled.
    pub fn stream(self) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        let Self { file, on_disk, memory } = self;
        let disk = futures::stream::unfold((file, 0u64), move |(file, at)| async move {
            let f = file.as_ref().filter(|_| at < on_disk)?;
            let len = READ_PIECE.min((on_disk - at) as usize);
            // Read on the async worker, like the spill's write: the rows were written moments
            // ago and come from the page cache. (A blocking-pool thread per piece cost more:
            // each thread's allocator kept the pieces it had allocated, 100-200 MB on a fleet's
            // full run.)
            let mut piece = vec![0; len];
            let piece = f.read_exact_at(&mut piece, at).map(|()| Bytes::from(piece));
            // After a failed read the stream ends with that error.
            let next = if piece.is_ok() { at + len as u64 } else { on_disk };
            Some((piece, (file, next)))
        });
        disk.chain(futures::stream::iter((!memory.is_empty()).then_some(Ok(memory))))
    }

    /// The whole chunk in one buffer (tests and `--bench-discard-uploads`' dumps).
    pub fn to_vec(&self) -> std::io::Result<Vec<u8>> {
        self.range(0, self.len())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn spilled(disk: &[u8], memory: &[u8]) -> Chunk {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(disk).unwrap();
        // Bytes past `on_disk` (a spill that failed half-way) are not part of the chunk.
        file.write_all(b"torn").unwrap();
        Chunk::spilled(file, disk.len() as u64, Bytes::copy_from_slice(memory))
    }

    #[tokio::test]
    async fn a_chunk_reads_back_as_its_disk_part_then_its_memory_part() {
        let disk: Vec<u8> = (0..READ_PIECE * 2 + 17).map(|i| b'a' + (i % 26) as u8).collect();
        let chunk = spilled(&disk, b"{\"m\":1}\n");
        let mut expected = disk.clone();
        expected.extend_from_slice(b"{\"m\":1}\n");
        assert_eq!(chunk.len(), expected.len() as u64);
        let pieces: Vec<Bytes> = chunk.clone().stream().map(|p| p.unwrap()).collect().await;
        assert_eq!(pieces.len(), 4, "three pieces from disk, one from memory");
        assert_eq!(pieces.concat(), expected);
        assert_eq!(chunk.to_vec().unwrap(), expected);
        let (start, end) = (disk.len() as u64 - 3, disk.len() as u64 + 4);
        assert_eq!(chunk.range(start, end).unwrap(), &expected[start as usize..end as usize], "across the two parts");
        assert_eq!(chunk.range(5, 9).unwrap(), &expected[5..9]);
        let tail = disk.len() as u64 + 2;
        assert_eq!(chunk.range(tail, chunk.len()).unwrap(), &expected[tail as usize..]);
    }

    #[tokio::test]
    async fn a_chunk_in_memory_is_one_piece() {
        let chunk = Chunk::in_memory(Bytes::from_static(b"{\"a\":1}\n"));
        let pieces: Vec<Bytes> = chunk.stream().map(|p| p.unwrap()).collect().await;
        assert_eq!(pieces, vec![Bytes::from_static(b"{\"a\":1}\n")]);
        let empty: Vec<_> = Chunk::default().stream().collect().await;
        assert!(empty.is_empty());
    }
}
