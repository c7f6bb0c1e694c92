//! The state journal of a run. While a run holds the lock, a batch of records (a table's
//! tenants after one commit) is appended to `.journal-<lock scope>` and flushed once, instead
//! of replacing every tenant's file: a fleet's table of a thousand tenants costs one flush,
//! not a thousand new files. The files take the records when the run folds its journal: at
//! the end of the run, when [`FOLD_AT`] tables have records pending, or, after a crash, when
//! the next run takes the lock. Until then the run keeps only where each pending record's line
//! is, and reads a record back from the file when it is asked for or folded.
//!
//! Readers that hold no lock (`status`, the console) put every journal's records over the
//! files. A journal left by a crashed run may hold records older than the files it covers (a
//! run of another lock scope wrote them later), so across journals and files the newer
//! record wins, by `updated_at`; within one journal the later line wins.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use connector_framework::TableState;
use serde::{Deserialize, Serialize};

use crate::store::private_file;

/// The journal files' name prefix; the lock scope's name follows (`.journal-whole`).
pub(crate) const JOURNAL_PREFIX: &str = ".journal-";

/// Records pending before the run folds them into the files: bounds the journal's size and
/// what a run after a crash reads back at once (about 1 KiB a record), whatever the fleet's
/// size.
pub(crate) const FOLD_AT: usize = 10_000;

/// Records by database, then table.
pub(crate) type Records = HashMap<String, BTreeMap<String, TableState>>;

/// Where a pending record's line is in the journal file.
#[derive(Debug, Clone, Copy)]
struct LineAt {
    offset: u64,
    len: usize,
}

/// One journal line.
#[derive(Serialize, Deserialize)]
struct Entry {
    database: String,
    state: TableState,
}

/// The journal a run appends to, and where its records that the files do not hold yet are.
/// The records themselves stay in the file: a fleet's ten thousand of them held in memory
/// were a quarter of a run's heap.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    /// The latest line of each pending record, by database, then table.
    pending: HashMap<String, BTreeMap<String, LineAt>>,
    count: usize,
}

impl Journal {
    /// Starts an empty journal at `path` (any journal there was folded first) and makes its
    /// existence durable, so a crash cannot lose the file with the records in it.
    pub fn create(path: PathBuf) -> std::io::Result<Self> {
        // Appending: every write lands at the end, also after `clear` shortened the file.
        let file = private_file(OpenOptions::new().create(true).read(true).append(true), &path)?;
        file.set_len(0)?;
        file.sync_all()?;
        File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()?;
        Ok(Self { path, file, pending: HashMap::new(), count: 0 })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `records` as one write, flushed; only then are they pending.
    pub fn append(&mut self, records: Vec<(String, TableState)>) -> std::io::Result<()> {
        let mut bytes = Vec::with_capacity(records.len() * 1024);
        let mut lines = Vec::with_capacity(records.len());
        for (database, state) in &records {
            let start = bytes.len();
            encode(&mut bytes, database, state)?;
            lines.push((start, bytes.len() - start));
        }
        let before = self.file.metadata()?.len();
        if let Err(e) = self.file.write_all(&bytes).and_then(|()| self.file.sync_data()) {
            // A part written stays no torn line in front of the next batch.
            let _ = self.file.set_len(before);
            return Err(e);
        }
        for ((database, state), (start, len)) in records.into_iter().zip(lines) {
            let at = LineAt { offset: before + start as u64, len };
            // Counted once per table: a later record of it replaces the pending one.
            if self.pending.entry(database).or_default().insert(state.table_name, at).is_none() {
                self.count += 1;
            }
        }
        Ok(())
    }

    /// The pending records of `database`, or only its `table`'s, read back from the file.
    pub fn pending(&self, database: &str, table: Option<&str>) -> std::io::Result<Vec<TableState>> {
        let Some(tables) = self.pending.get(database) else { return Ok(Vec::new()) };
        match table {
            Some(t) => tables.get(t).map(|at| self.read_line(*at)).into_iter().collect(),
            None => tables.values().map(|at| self.read_line(*at)).collect(),
        }
    }

    pub fn pending_count(&self) -> usize {
        self.count
    }

    /// The databases with records pending, for a fold (they stay pending until
    /// [`Self::clear`]).
    pub fn databases(&self) -> impl ExactSizeIterator<Item = &String> {
        self.pending.keys()
    }

    fn read_line(&self, at: LineAt) -> std::io::Result<TableState> {
        let mut line = vec![0; at.len];
        self.file.read_exact_at(&mut line, at.offset)?;
        serde_json::from_slice::<Entry>(&line).map(|entry| entry.state).map_err(std::io::Error::other)
    }

    /// After a fold: the files hold every record, so the journal starts over empty.
    pub fn clear(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_data()?;
        self.pending.clear();
        self.count = 0;
        Ok(())
    }
}

#[derive(Serialize)]
struct EntryRef<'a> {
    database: &'a str,
    state: &'a TableState,
}

/// One record as its journal line.
fn encode(bytes: &mut Vec<u8>, database: &str, state: &TableState) -> std::io::Result<()> {
    serde_json::to_writer(&mut *bytes, &EntryRef { database, state })?;
    bytes.push(b'\n');
    Ok(())
}

/// The journal files in `dir`, sorted.
pub(crate) fn journals(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(JOURNAL_PREFIX))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// A journal's records, the later line winning. A last line without its newline (a crash
/// during the append) is not a record, and a line that cannot be read is skipped with a
/// warning: either only means the next run reads that table from its older state.
pub(crate) fn read(path: &Path) -> std::io::Result<Records> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Records::new()),
        Err(e) => return Err(e),
    };
    let mut records = Records::new();
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    for (i, line) in bytes[..complete].split(|b| *b == b'\n').enumerate().filter(|(_, l)| !l.is_empty()) {
        match serde_json::from_slice::<Entry>(line) {
            Ok(entry) => {
                records.entry(entry.database).or_default().insert(entry.state.table_name.clone(), entry.state);
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), line = i + 1, error = %e, "a state journal line was skipped")
            }
        }
    }
    Ok(records)
}

/// Replaces the journal at `path` with `records` (atomically), or removes it when none are
/// left: a shard takes its own tenants' records out of a journal a crashed run left.
pub(crate) fn rewrite(path: &Path, records: &Records) -> std::io::Result<()> {
    if records.is_empty() {
        return remove(path);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut bytes = Vec::new();
    for (database, tables) in records {
        for state in tables.values() {
            encode(&mut bytes, database, state)?;
        }
    }
    // Not named like a journal, so no reader takes it for one.
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("journal");
    let tmp = dir.join(format!(".rewrite{name}"));
    let mut file = private_file(OpenOptions::new().create(true).truncate(true).write(true), &tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Removes the journal at `path`, durably (its folder flushed).
pub(crate) fn remove(path: &Path) -> std::io::Result<()> {
    fs::remove_file(path)?;
    File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// Every journal's records in `dir`, merged (the newer record wins).
pub(crate) fn read_all(dir: &Path) -> std::io::Result<Records> {
    let mut all = Records::new();
    for path in journals(dir) {
        for (database, tables) in read(&path)? {
            let into = all.entry(database).or_default();
            for state in tables.into_values() {
                put_newer(into, state);
            }
        }
    }
    Ok(all)
}

/// Puts `state` in `tables` unless the entry there is newer.
pub(crate) fn put_newer(tables: &mut BTreeMap<String, TableState>, state: TableState) {
    match tables.get(&state.table_name) {
        Some(current) if current.updated_at > state.updated_at => {}
        _ => {
            tables.insert(state.table_name.clone(), state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(table: &str, rows: u64) -> TableState {
        let mut s = TableState::in_progress(table);
        s.records_synced = rows;
        s
    }

    #[test]
    fn appended_records_read_back_and_a_torn_last_line_is_no_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".journal-whole");
        let mut journal = Journal::create(path.clone()).unwrap();
        journal.append(vec![("shop1".into(), state("orders", 1)), ("shop2".into(), state("orders", 2))]).unwrap();
        journal.append(vec![("shop1".into(), state("orders", 3))]).unwrap();
        assert_eq!(journal.pending_count(), 2, "one per table: shop1's second record replaces its first");
        let pending = journal.pending("shop1", None).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].records_synced, 3, "read back from the later line");
        assert_eq!(journal.pending("shop2", Some("orders")).unwrap()[0].records_synced, 2);
        assert!(journal.pending("shop2", Some("users")).unwrap().is_empty());
        // A crash in the middle of the next append.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"database":"shop2","state":{"table_na"#).unwrap();
        let records = read(&path).unwrap();
        assert_eq!(records["shop1"]["orders"].records_synced, 3, "the later line wins");
        assert_eq!(records["shop2"]["orders"].records_synced, 2, "the torn line changed nothing");
        journal.clear().unwrap();
        assert!(read(&path).unwrap().is_empty());
        assert_eq!(journal.pending_count(), 0);
        assert!(journal.pending("shop1", None).unwrap().is_empty());
        // After a fold the next record is the file's first line, not one after a gap.
        journal.append(vec![("shop3".into(), state("users", 4))]).unwrap();
        assert_eq!(fs::read(&path).unwrap().first(), Some(&b'{'));
        assert_eq!(read(&path).unwrap()["shop3"]["users"].records_synced, 4);
        assert_eq!(journal.pending("shop3", Some("users")).unwrap()[0].records_synced, 4, "read from offset 0");
    }

    #[test]
    fn across_journals_the_newer_record_wins() {
        let dir = tempfile::tempdir().unwrap();
        let older = state("orders", 1);
        let mut newer = state("orders", 2);
        newer.updated_at = older.updated_at + chrono::Duration::seconds(1);
        // The newer record is in the journal that sorts first.
        Journal::create(dir.path().join(".journal-shard-0-of-2"))
            .unwrap()
            .append(vec![("shop1".into(), newer)])
            .unwrap();
        Journal::create(dir.path().join(".journal-whole")).unwrap().append(vec![("shop1".into(), older)]).unwrap();
        assert_eq!(read_all(dir.path()).unwrap()["shop1"]["orders"].records_synced, 2);
    }
}
