use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{NaiveDateTime, Utc};
use connector_framework::history::HISTORY_RUNS;
use connector_framework::{
    ConnectorError, DatabaseState, LockScope, Result, RunRecord, StateLock, StateStore, StreamState, TableState,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::journal::{self, Journal, Records};

/// The on-disk layout of one database's file.
#[derive(Debug, Serialize, Deserialize)]
struct DatabaseFile {
    database_info: DatabaseInfo,
    tables: BTreeMap<String, TableState>,
}

#[derive(Debug, Serialize, Deserialize)]
struct DatabaseInfo {
    tenant_id: String,
    last_updated: NaiveDateTime,
    total_tables: usize,
}

/// State in `<dir>/<database>.json`.
#[derive(Debug, Clone)]
pub struct JsonStateStore {
    dir: PathBuf,
    /// Serialises read-modify-write of each database file within this process.
    files: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// The run's journal while this store holds a run lock ([`crate::journal`]).
    journal: Arc<Mutex<Option<Journal>>>,
}

/// The OS file locks a run holds: `.lock` (exclusive for the whole state, shared for a
/// shard) and, for a shard, its own `.lock-shard-I-of-N` (exclusive). The kernel releases them
/// when the process ends, however it ends.
#[derive(Debug)]
struct FileLock {
    _files: Vec<File>,
}

impl StateLock for FileLock {}

impl JsonStateStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), files: Arc::default(), journal: Arc::default() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file for a database. Database names are validated by the source; refuse anything
    /// that could leave the folder anyway.
    pub fn path_for(&self, database: &str) -> Result<PathBuf> {
        if database.is_empty() || database.contains(['/', '\\']) || database.starts_with('.') {
            return Err(ConnectorError::config(format!("database name `{database}` cannot name a state file")));
        }
        Ok(self.dir.join(format!("{database}.json")))
    }

    fn file_mutex(&self, database: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files.entry(database.to_string()).or_default().clone()
    }

    /// Reads a database file; a missing file is an empty state, a corrupt one an error.
    pub fn read_file(path: &Path, database: &str) -> Result<DatabaseState> {
        match fs::read_to_string(path) {
            Ok(text) => Self::parse_file(path, database, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(DatabaseState { database: database.to_string(), tables: BTreeMap::new() })
            }
            Err(e) => Err(ConnectorError::permanent(format!("cannot read state file {}: {e}", path.display()))),
        }
    }

    /// One table's entry of a database file, parsing only that entry (a fleet's run asks for
    /// one table of a tenant's file at a time); a missing file or entry is `None`.
    pub fn read_table(path: &Path, database: &str, table: &str) -> Result<Option<TableState>> {
        #[derive(Deserialize)]
        struct TablesOnly<'a> {
            #[serde(borrow)]
            tables: HashMap<std::borrow::Cow<'a, str>, &'a RawValue>,
        }
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ConnectorError::permanent(format!("cannot read state file {}: {e}", path.display()))),
        };
        let parsed = serde_json::from_str::<TablesOnly<'_>>(&text).and_then(|file| {
            file.tables.get(table).map(|raw| serde_json::from_str::<TableState>(raw.get())).transpose()
        });
        // A file this cannot read gets the full parse, and its error.
        parsed.or_else(|_| Ok(Self::parse_file(path, database, &text)?.tables.remove(table)))
    }

    /// A database file's content (read from `path`), parsed; corrupt content is an error.
    pub fn parse_file(path: &Path, database: &str, text: &str) -> Result<DatabaseState> {
        let file: DatabaseFile = serde_json::from_str(text).map_err(|e| {
            ConnectorError::permanent(format!(
                "state file {} is corrupt ({e}); it was left untouched. Restore it from a backup, or move it \
                 away to make every table of `{database}` sync in full",
                path.display()
            ))
        })?;
        Ok(DatabaseState { database: database.to_string(), tables: file.tables })
    }

    /// Writes `bytes` to `path` atomically: temp file in the same folder, fsync, rename,
    /// fsync the folder.
    pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = write_flushed(path, bytes)?;
        fs::rename(&tmp, path)?;
        File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
    }
}

fn tempfile_in(dir: &Path, target: &Path) -> std::io::Result<(PathBuf, File)> {
    let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let file = private_file(OpenOptions::new().write(true).create(true).truncate(true), &tmp)?;
    Ok((tmp, file))
}

/// Opens `path` with `options` as a file only its owner may read or write: created 0600, and
/// narrowed to 0600 if it existed. (The umask only takes bits away, so it cannot widen this.)
pub fn private_file(options: &mut OpenOptions, path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = options.mode(0o600).open(path)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Creates `dir` (and missing parents) as folders only their owner may enter: 0700. An
/// existing folder keeps its mode (see [`exposure`]).
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// What of the state in `dir` other users may read: the folder itself or any file in it
/// (and in its subfolders), each with its mode. Empty when all is private.
pub fn exposure(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(meta) = fs::metadata(&d) else { continue };
        if meta.permissions().mode() & 0o077 != 0 {
            out.push(format!("{} (mode {:o})", d.display(), meta.permissions().mode() & 0o777));
        }
        for entry in fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.permissions().mode() & 0o077 != 0 {
                out.push(format!("{} (mode {:o})", entry.path().display(), meta.permissions().mode() & 0o777));
            }
        }
    }
    out
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> ConnectorError {
    ConnectorError::permanent(format!("{what} {}: {e}", path.display()))
}

impl JsonStateStore {
    /// Takes the run lock for `scope` (the state tools take the whole, so they never race a
    /// sync); with `wait`, waits up to that long for the other run to let go.
    pub async fn lock_waiting(
        &self,
        scope: LockScope,
        wait: Option<std::time::Duration>,
    ) -> Result<Box<dyn StateLock>> {
        let deadline = wait.map(|w| std::time::Instant::now() + w);
        let mut logged = false;
        loop {
            match self.lock_blocking(scope) {
                Err(e)
                    if e.message().contains("already syncing")
                        && deadline.is_some_and(|d| std::time::Instant::now() < d) =>
                {
                    if !logged {
                        tracing::info!(status_dir = %self.dir.display(), "another run holds the lock; waiting (--wait-lock)");
                        logged = true;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                Err(e) if e.message().contains("already syncing") && wait.is_some() => {
                    return Err(ConnectorError::config(format!(
                        "{}; waited {} s (--wait-lock) and it is still running",
                        e.message(),
                        wait.unwrap_or_default().as_secs()
                    )));
                }
                other => return other,
            }
        }
    }

    /// Takes the run lock for `scope` at once, or fails.
    pub fn lock_blocking(&self, scope: LockScope) -> Result<Box<dyn StateLock>> {
        private_dir(&self.dir).map_err(|e| io_err("cannot create status_dir", &self.dir, e))?;
        let open = |name: &str| {
            let path = self.dir.join(name);
            private_file(OpenOptions::new().create(true).truncate(false).write(true), &path)
                .map(|f| (path.clone(), f))
                .map_err(|e| io_err("cannot open lock file", &path, e))
        };
        let busy = |what: &str| {
            ConnectorError::config(format!(
                "another connector-run is already syncing {what} with status_dir {}; wait for it to finish \
                 (runs never overlap)",
                self.dir.display()
            ))
        };
        let (path, whole) = open(".lock")?;
        let mut files = Vec::new();
        match scope {
            LockScope::Whole => match whole.try_lock() {
                Ok(()) => files.push(whole),
                Err(std::fs::TryLockError::WouldBlock) => return Err(busy("these tenants")),
                Err(std::fs::TryLockError::Error(e)) => return Err(io_err("cannot lock", &path, e)),
            },
            LockScope::Shard(shard) => {
                match whole.try_lock_shared() {
                    Ok(()) => files.push(whole),
                    Err(std::fs::TryLockError::WouldBlock) => return Err(busy("every tenant")),
                    Err(std::fs::TryLockError::Error(e)) => return Err(io_err("cannot lock", &path, e)),
                }
                let (path, own) = open(&format!(".lock-{}", scope.name()))?;
                match own.try_lock() {
                    Ok(()) => files.push(own),
                    Err(std::fs::TryLockError::WouldBlock) => return Err(busy(&format!("shard {shard}"))),
                    Err(std::fs::TryLockError::Error(e)) => return Err(io_err("cannot lock", &path, e)),
                }
                // Shards of another count cover other tenants: one still held means workers of
                // two sizes at once, which would sync tenants twice.
                if let Some(other) = self.held_shard_of_another_count(shard.count)? {
                    return Err(busy(&format!("as shard {other} (workers of another count)")));
                }
            }
        }
        Ok(Box::new(FileLock { _files: files }))
    }

    /// A shard lock of a count other than `count` that another process holds (its `I/N`).
    fn held_shard_of_another_count(&self, count: u32) -> Result<Option<String>> {
        let entries = fs::read_dir(&self.dir).map_err(|e| io_err("cannot read", &self.dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some((index, n)) = name.strip_prefix(".lock-shard-").and_then(|r| r.split_once("-of-")) else {
                continue;
            };
            if n.parse::<u32>().ok() == Some(count) {
                continue;
            }
            let Ok(file) = OpenOptions::new().write(true).open(entry.path()) else { continue };
            if matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock)) {
                return Ok(Some(format!("{index}/{n}")));
            }
        }
        Ok(None)
    }

    /// The databases with a state file here, sorted. Files of the original tool's older
    /// one-file-per-table layout are not databases (`state migrate` converts them).
    pub fn databases_blocking(&self) -> Result<Vec<String>> {
        crate::tools::database_names(&self.dir)
    }

    /// Forgets a table, or a whole database (its file removed, the folder flushed).
    pub fn forget_blocking(&self, database: &str, table: Option<&str>) -> Result<Vec<String>> {
        // The files first take what the run's journal holds, or the journal would bring the
        // forgotten entries back.
        if let Some(j) = self.journal.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            self.fold_into_files(j)?;
        }
        let path = self.path_for(database)?;
        let current = Self::read_file(&path, database)?;
        match table {
            None => {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("cannot remove state file", &path, e)),
                }
                File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| io_err("cannot flush", &self.dir, e))?;
                Ok(current.tables.into_keys().collect())
            }
            Some(t) if !current.tables.contains_key(t) => Ok(Vec::new()),
            Some(t) => {
                let mut tables = current.tables;
                tables.remove(t);
                let bytes = Self::file_bytes(database, tables)?;
                Self::write_atomic(&path, &bytes).map_err(|e| io_err("cannot write state file", &path, e))?;
                Ok(vec![t.to_string()])
            }
        }
    }

    /// Replaces one table's entry in its database file (read, modify, atomic write). Callers
    /// serialize writes to one database file.
    pub fn record_blocking(&self, database: &str, state: TableState) -> Result<()> {
        self.record_many_blocking(vec![(database.to_string(), state)]).pop().unwrap_or(Ok(()))
    }

    /// Many records at once. While this store holds a run lock they are one append to the
    /// run's journal (`journal.rs`); otherwise each file is replaced atomically, all of them
    /// made durable together (see `replace_files`). Callers serialize writes to each database
    /// file.
    pub fn record_many_blocking(&self, records: Vec<(String, TableState)>) -> Vec<Result<()>> {
        let mut results: Vec<Result<()>> = records.iter().map(|(db, _)| self.path_for(db).map(|_| ())).collect();
        let valid: Vec<(usize, (String, TableState))> =
            records.into_iter().enumerate().filter(|(i, _)| results[*i].is_ok()).collect();
        let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(j) = journal.as_mut() {
            let (indexes, batch): (Vec<usize>, Vec<(String, TableState)>) = valid.into_iter().unzip();
            if let Err(e) = j.append(batch) {
                let e = io_err("cannot write the state journal", j.path(), e);
                indexes.into_iter().for_each(|i| results[i] = Err(e.duplicate()));
            } else if j.pending_count() >= journal::FOLD_AT
                && let Err(e) = self.fold_into_files(j)
            {
                // The records are durable in the journal; the files take them at the next fold.
                tracing::warn!(error = %e, "cannot fold the state journal into the state files yet");
            }
            return results;
        }
        drop(journal);
        let mut by_database: BTreeMap<String, (Vec<usize>, Vec<TableState>)> = BTreeMap::new();
        for (i, (database, state)) in valid {
            let entry = by_database.entry(database).or_default();
            entry.0.push(i);
            entry.1.push(state);
        }
        let mut indexes = Vec::with_capacity(by_database.len());
        let mut files = Vec::with_capacity(by_database.len());
        for (database, (records, states)) in by_database {
            indexes.push(records);
            files.push((database, states));
        }
        let files = files.into_iter().map(|(database, states)| (database, Ok(states)));
        for (indexes, written) in indexes.into_iter().zip(self.replace_files(files, Put::Always)) {
            if let Err(e) = written {
                indexes.into_iter().for_each(|i| results[i] = Err(e.duplicate()));
            }
        }
        results
    }

    /// Puts `states` into their databases' files, each file replaced atomically, all made
    /// durable together: every new file is written and flushed, then all are renamed into
    /// place and the folder is flushed once. (One after another: files created in parallel
    /// in one folder contend for the file system's inode allocation, which costs more than it
    /// saves.) One result per database, in order.
    fn replace_files(
        &self,
        files: impl ExactSizeIterator<Item = (String, Result<Vec<TableState>>)>,
        put: Put,
    ) -> Vec<Result<()>> {
        if let Err(e) = private_dir(&self.dir) {
            let e = io_err("cannot create status_dir", &self.dir, e);
            return files.map(|_| Err(e.duplicate())).collect();
        }
        let mut results: Vec<Result<()>> = Vec::with_capacity(files.len());
        let mut written: Vec<(usize, PathBuf, std::io::Result<PathBuf>)> = Vec::new();
        for (i, (database, states)) in files.enumerate() {
            match states.and_then(|states| self.replaced_file(&database, states, put)) {
                Ok((path, bytes)) => {
                    let tmp = write_flushed(&path, &bytes);
                    written.push((i, path, tmp));
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        let mut renamed = Vec::new();
        for (i, path, tmp) in written {
            match tmp.and_then(|tmp| fs::rename(&tmp, &path)) {
                Ok(()) => renamed.push(i),
                Err(e) => results[i] = Err(io_err("cannot write state file", &path, e)),
            }
        }
        if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
            let e = io_err("cannot flush status_dir", &self.dir, e);
            renamed.into_iter().for_each(|i| results[i] = Err(e.duplicate()));
        }
        results
    }

    /// A database file with `states` put in (read, modify), serialized.
    fn replaced_file(&self, database: &str, states: Vec<TableState>, put: Put) -> Result<(PathBuf, Vec<u8>)> {
        let path = self.path_for(database)?;
        let mut current = Self::read_file(&path, database)?;
        for state in states {
            match put {
                Put::Always => {
                    current.tables.insert(state.table_name.clone(), state);
                }
                Put::Newer => journal::put_newer(&mut current.tables, state),
            }
        }
        Ok((path, Self::file_bytes(database, current.tables)?))
    }

    /// A database file's content.
    fn file_bytes(database: &str, tables: BTreeMap<String, TableState>) -> Result<Vec<u8>> {
        let file = DatabaseFile {
            database_info: DatabaseInfo {
                tenant_id: database.to_string(),
                last_updated: Utc::now().naive_utc(),
                total_tables: tables.len(),
            },
            tables,
        };
        serde_json::to_vec_pretty(&file).map_err(|e| ConnectorError::permanent(e.to_string()))
    }
}

/// How a record goes into a file that has an entry for its table.
#[derive(Debug, Clone, Copy)]
enum Put {
    /// This run's own records: they are the latest.
    Always,
    /// A journal a crashed run left: a later run may have written a newer entry since.
    Newer,
}

/// The journal of a run: started when the run takes the lock, folded into the files when it
/// lets go.
impl JsonStateStore {
    fn journal_path(&self, scope: LockScope) -> PathBuf {
        self.dir.join(format!("{}{}", journal::JOURNAL_PREFIX, scope.name()))
    }

    /// For a run that holds `scope`: folds what crashed runs' journals hold for its tenants,
    /// then starts the run's own journal. False when this store journals for another lock
    /// already (one process holding two shards' locks: that journal takes both).
    pub fn start_journal(&self, scope: LockScope) -> Result<bool> {
        if self.journal.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return Ok(false);
        }
        self.fold_leftovers(scope)?;
        let path = self.journal_path(scope);
        let started = Journal::create(path.clone()).map_err(|e| io_err("cannot create the state journal", &path, e))?;
        *self.journal.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
        Ok(true)
    }

    /// Folds the journals of runs that ended without folding theirs (a crash): under the
    /// whole lock every journal, each removed after; under a shard's, the records of the
    /// shard's own tenants from any journal (others may belong to running shards). A record
    /// goes in only where the file holds nothing newer. A shard takes its records out of a
    /// journal it folds from (rewritten without them), so a tenant forgotten later is not
    /// brought back from it; processes folding at once take turns on `.fold.lock`.
    pub fn fold_leftovers(&self, scope: LockScope) -> Result<()> {
        let own = self.journal_path(scope);
        let journals = journal::journals(&self.dir);
        if journals.is_empty() {
            return Ok(());
        }
        let lock_path = self.dir.join(".fold.lock");
        let turn = private_file(OpenOptions::new().create(true).truncate(false).write(true), &lock_path)
            .map_err(|e| io_err("cannot open", &lock_path, e))?;
        turn.lock().map_err(|e| io_err("cannot lock", &lock_path, e))?;
        for path in journals {
            let mut records = journal::read(&path).map_err(|e| io_err("cannot read the state journal", &path, e))?;
            let mut others = Records::new();
            if let LockScope::Shard(shard) = scope
                && path != own
            {
                let (mine, theirs): (Records, Records) = records.into_iter().partition(|(db, _)| shard.owns(db));
                if mine.is_empty() {
                    continue;
                }
                (records, others) = (mine, theirs);
            }
            if !records.is_empty() {
                tracing::info!(journal = %path.display(), "a run did not finish: its state journal goes into the state files");
                let databases: Vec<String> = records.keys().cloned().collect();
                let records_of =
                    |db: &str| Ok(records.get(db).map(|t| t.values().cloned().collect()).unwrap_or_default());
                self.write_records(&databases, records_of, Put::Newer)?;
            }
            journal::rewrite(&path, &others).map_err(|e| io_err("cannot rewrite the state journal", &path, e))?;
        }
        Ok(())
    }

    /// Puts the journal's pending records into the files, then empties it.
    fn fold_into_files(&self, journal: &mut Journal) -> Result<()> {
        if journal.pending_count() > 0 {
            let databases: Vec<String> = journal.databases().cloned().collect();
            let records_of = |db: &str| {
                journal.pending(db, None).map_err(|e| io_err("cannot read the state journal", journal.path(), e))
            };
            self.write_records(&databases, records_of, Put::Always)?;
        }
        journal.clear().map_err(|e| io_err("cannot empty the state journal", journal.path(), e))
    }

    /// Ends the run's journal: its records go into the files and the journal is removed. When
    /// that fails the journal stays, and the next run to take the lock folds it.
    pub fn finish_journal(&self) {
        let mut guard = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut journal) = guard.take() else { return };
        let path = journal.path().to_path_buf();
        let folded = self.fold_into_files(&mut journal).and_then(|()| {
            drop(journal);
            journal::remove(&path).map_err(|e| io_err("cannot remove", &path, e))
        });
        if let Err(e) = folded {
            tracing::warn!(journal = %path.display(), error = %e, "the state journal stays; the next run folds it");
        }
    }

    /// Writes journal records into their files. A file that cannot be read (corrupt) keeps
    /// its content, as a record written straight to it would, and the others go ahead; a
    /// write that fails is an error (the journal is kept).
    fn write_records(
        &self,
        databases: &[String],
        records_of: impl Fn(&str) -> Result<Vec<TableState>>,
        put: Put,
    ) -> Result<()> {
        // One database's records at a time, not the whole journal's.
        let files = databases.iter().map(|db| (db.clone(), records_of(db)));
        for (database, result) in databases.iter().zip(self.replace_files(files, put)) {
            let Err(e) = result else { continue };
            if self.path_for(database).is_ok_and(|path| is_corrupt(&path)) {
                tracing::warn!(%database, error = %e, "state journal records not written to this corrupt file");
            } else {
                return Err(e);
            }
        }
        Ok(())
    }

    /// A database's tables as `read` gets them from its file (only `table`, when given), with
    /// this run's pending records over them, or (without a run lock) every journal's records.
    /// Under the lock the file is read while the journal is held, so a fold cannot move
    /// records from one to the other in between; without it the journals are read first (a
    /// fold writes the files before it removes a journal), so a record is seen in one place or
    /// the other.
    fn read_with_journal(
        &self,
        database: &str,
        table: Option<&str>,
        read: impl FnOnce() -> Result<BTreeMap<String, TableState>>,
    ) -> Result<BTreeMap<String, TableState>> {
        let guard = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(j) = guard.as_ref() {
            let mut tables = read()?;
            let pending =
                j.pending(database, table).map_err(|e| io_err("cannot read the state journal", j.path(), e))?;
            for state in pending {
                tables.insert(state.table_name.clone(), state);
            }
            return Ok(tables);
        }
        drop(guard);
        let mut all =
            journal::read_all(&self.dir).map_err(|e| io_err("cannot read the state journals in", &self.dir, e))?;
        let mut tables = read()?;
        for state in all.remove(database).into_iter().flat_map(BTreeMap::into_values) {
            journal::put_newer(&mut tables, state);
        }
        Ok(tables)
    }
}

/// Whether the database file at `path` is there and cannot be parsed (an I/O error is not
/// corruption: the records wait in the journal for the next fold).
fn is_corrupt(path: &Path) -> bool {
    fs::read_to_string(path).is_ok_and(|text| serde_json::from_str::<DatabaseFile>(&text).is_err())
}

/// A run's lock: the OS file locks, and the journal it folds before letting them go.
#[derive(Debug)]
struct RunLock {
    /// Whether this lock started the store's journal (and so ends it).
    journals: bool,
    store: JsonStateStore,
    _files: Box<dyn StateLock>,
}

#[async_trait]
impl StateLock for RunLock {
    async fn release(mut self: Box<Self>) {
        if std::mem::take(&mut self.journals) {
            let store = self.store.clone();
            let _ = tokio::task::spawn_blocking(move || store.finish_journal()).await;
        }
    }
}

impl Drop for RunLock {
    /// A run that ends without `release` (a panic) still folds before its locks go.
    fn drop(&mut self) {
        if self.journals {
            self.store.finish_journal();
        }
    }
}

/// Writes `bytes` to a temp file beside `path` and flushes it; returns the temp file's path.
fn write_flushed(path: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let (tmp, mut file) = tempfile_in(path.parent().unwrap_or(Path::new(".")), path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(tmp)
}

#[async_trait]
impl StateStore for JsonStateStore {
    async fn lock(&self, scope: LockScope, wait: Option<std::time::Duration>) -> Result<Box<dyn StateLock>> {
        let files = self.lock_waiting(scope, wait).await?;
        let store = self.clone();
        let journals = tokio::task::spawn_blocking(move || store.start_journal(scope))
            .await
            .map_err(|e| ConnectorError::permanent(format!("starting the state journal failed: {e}")))??;
        let lock: Box<dyn StateLock> = Box::new(RunLock { journals, store: self.clone(), _files: files });
        let exposed = exposure(&self.dir);
        if !exposed.is_empty() {
            tracing::warn!(
                "other users may read this state (error messages, table names, positions): {}; run chmod -R go-rwx {}",
                exposed.join(", "),
                self.dir.display()
            );
        }
        Ok(lock)
    }

    async fn load(&self, database: &str) -> Result<DatabaseState> {
        let path = self.path_for(database)?;
        let tables = self.read_with_journal(database, None, || Ok(Self::read_file(&path, database)?.tables))?;
        Ok(DatabaseState { database: database.to_string(), tables })
    }

    async fn load_table(&self, database: &str, table: &str) -> Result<Option<TableState>> {
        let path = self.path_for(database)?;
        let mut tables = self.read_with_journal(database, Some(table), || {
            Ok(Self::read_table(&path, database, table)?.map(|s| (s.table_name.clone(), s)).into_iter().collect())
        })?;
        Ok(tables.remove(table))
    }

    async fn databases(&self) -> Result<Vec<String>> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.databases_blocking())
            .await
            .map_err(|e| ConnectorError::permanent(format!("listing {} failed: {e}", self.dir.display())))?
    }

    /// Each file read once (the default would list them, then read each again).
    async fn load_all(&self) -> Result<Vec<(String, Result<DatabaseState>)>> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || crate::tools::overview(&dir))
            .await
            .map_err(|e| ConnectorError::permanent(format!("reading {} failed: {e}", self.dir.display())))?
    }

    async fn forget(&self, database: &str, table: Option<&str>) -> Result<Vec<String>> {
        let mutex = self.file_mutex(database);
        let _guard = mutex.lock().await;
        self.forget_blocking(database, table)
    }

    async fn record(&self, database: &str, state: TableState) -> Result<()> {
        let mutex = self.file_mutex(database);
        let _guard = mutex.lock().await;
        // Off the async workers: it may fold the journal, thousands of files.
        let (store, database) = (self.clone(), database.to_string());
        tokio::task::spawn_blocking(move || store.record_blocking(&database, state))
            .await
            .map_err(|e| ConnectorError::permanent(format!("writing state in {} failed: {e}", self.dir.display())))?
    }

    async fn record_many(&self, records: Vec<(String, TableState)>) -> Vec<Result<()>> {
        let count = records.len();
        // Every file's mutex, in name order (so two batches never wait on each other).
        let mut databases: Vec<&String> = records.iter().map(|(d, _)| d).collect();
        databases.sort_unstable();
        databases.dedup();
        let mut guards = Vec::with_capacity(databases.len());
        for database in databases {
            guards.push(self.file_mutex(database).lock_owned().await);
        }
        // Off the async workers: a batch is many files and flushes.
        let store = self.clone();
        let written = tokio::task::spawn_blocking(move || store.record_many_blocking(records)).await;
        drop(guards);
        written.unwrap_or_else(|e| {
            let e = ConnectorError::permanent(format!("writing state in {} failed: {e}", self.dir.display()));
            (0..count).map(|_| Err(e.duplicate())).collect()
        })
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    async fn record_run(&self, run: RunRecord) -> Result<()> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.record_run_blocking(run))
            .await
            .map_err(|e| ConnectorError::permanent(format!("writing the run history failed: {e}")))?
    }

    async fn runs(&self) -> Result<Vec<RunRecord>> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.runs_blocking())
            .await
            .map_err(|e| ConnectorError::permanent(format!("reading the run history failed: {e}")))?
    }

    async fn load_stream(&self) -> Result<Option<StreamState>> {
        let path = self.stream_path();
        match fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                ConnectorError::permanent(format!(
                    "change stream state {} is corrupt ({e}); it was left untouched. Restore it, or move it away \
                     to stream again from each table's snapshot position",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("cannot read", &path, e)),
        }
    }

    async fn record_stream(&self, state: StreamState) -> Result<()> {
        let path = self.stream_path();
        let dir = self.dir.join(STREAM_DIR);
        private_dir(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        let bytes = serde_json::to_vec_pretty(&state).map_err(|e| ConnectorError::permanent(e.to_string()))?;
        Self::write_atomic(&path, &bytes).map_err(|e| io_err("cannot write change stream state", &path, e))
    }
}

/// The change stream's state lives in `<status_dir>/cdc/stream.json`: a folder, so it can never
/// be taken for a database's file.
pub const STREAM_DIR: &str = "cdc";

/// The run history lives in `<status_dir>/history/runs.jsonl`, one run per line.
pub const HISTORY_DIR: &str = "history";

impl JsonStateStore {
    pub fn history_path(&self) -> PathBuf {
        self.dir.join(HISTORY_DIR).join("runs.jsonl")
    }

    /// The runs recorded, oldest first; a line that cannot be read is skipped (and logged).
    pub fn runs_blocking(&self) -> Result<Vec<RunRecord>> {
        let path = self.history_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("cannot read", &path, e)),
        };
        let mut runs = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            match serde_json::from_str(line) {
                Ok(run) => runs.push(run),
                Err(e) => {
                    tracing::warn!(file = %path.display(), line = i + 1, error = %e, "a run history line was skipped")
                }
            }
        }
        Ok(runs)
    }

    /// Adds a run and keeps the last [`HISTORY_RUNS`] (the file replaced atomically).
    pub fn record_run_blocking(&self, run: RunRecord) -> Result<()> {
        let dir = self.dir.join(HISTORY_DIR);
        private_dir(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        // Sharded workers share the file: one read-modify-write at a time.
        let lock_path = dir.join(".lock");
        let lock = private_file(OpenOptions::new().create(true).truncate(false).write(true), &lock_path)
            .map_err(|e| io_err("cannot open", &lock_path, e))?;
        lock.lock().map_err(|e| io_err("cannot lock", &lock_path, e))?;
        let mut runs = self.runs_blocking()?;
        runs.push(run);
        let keep = runs.len().saturating_sub(HISTORY_RUNS);
        let mut text = String::new();
        for run in &runs[keep..] {
            text.push_str(&serde_json::to_string(run).map_err(|e| ConnectorError::permanent(e.to_string()))?);
            text.push('\n');
        }
        let path = self.history_path();
        Self::write_atomic(&path, text.as_bytes()).map_err(|e| io_err("cannot write", &path, e))
    }
}

impl JsonStateStore {
    /// Where the change stream's state is.
    pub fn stream_path(&self) -> PathBuf {
        self.dir.join(STREAM_DIR).join("stream.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use connector_framework::{SyncMode, SyncStatus, Watermark};

    fn state(table: &str, rows: u64) -> TableState {
        let mut s = TableState::in_progress(table);
        s.last_sync_time = Some(NaiveDateTime::default());
        s.sync_status = SyncStatus::Success;
        s.records_synced = rows;
        s.error_message = None;
        s.watermark = Some(Watermark {
            column: "updated_at".into(),
            column_type: "datetime".into(),
            value: "2025-09-28 15:30:00.000001".into(),
            utc_offset: None,
        });
        s
    }

    #[tokio::test]
    async fn writes_the_guides_format_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = JsonStateStore::new(dir.path());
        store.record("shop1", state("users", 150)).await.unwrap();
        store.record("shop1", state("orders", 1200)).await.unwrap();
        let raw: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(dir.path().join("shop1.json")).unwrap()).unwrap();
        assert_eq!(raw["database_info"]["tenant_id"], "shop1");
        assert_eq!(raw["database_info"]["total_tables"], 2);
        let users = &raw["tables"]["users"];
        for key in [
            "table_name",
            "last_sync_time",
            "sync_status",
            "sync_mode",
            "records_synced",
            "error_message",
            "updated_at",
        ] {
            assert!(users.get(key).is_some(), "missing {key}");
        }
        assert_eq!(users["sync_status"], "SUCCESS");
        assert_eq!(users["sync_mode"], "FULL");
        assert_eq!(users["watermark"]["value"], "2025-09-28 15:30:00.000001");
        let loaded = store.load("shop1").await.unwrap();
        assert_eq!(loaded.table("orders").unwrap().records_synced, 1200);
    }

    #[tokio::test]
    async fn a_batch_of_records_writes_each_file_once_and_fails_only_its_bad_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = JsonStateStore::new(dir.path());
        store.record("shop1", state("users", 1)).await.unwrap();
        let results = store
            .record_many(vec![
                ("shop1".into(), state("orders", 10)),
                ("shop2".into(), state("orders", 20)),
                ("../escape".into(), state("orders", 30)),
                ("shop1".into(), state("products", 40)),
            ])
            .await;
        assert_eq!(results.len(), 4);
        assert!(results[0].is_ok() && results[1].is_ok() && results[3].is_ok(), "{results:?}");
        assert!(results[2].as_ref().is_err_and(|e| e.message().contains("../escape")), "{results:?}");
        let shop1 = store.load("shop1").await.unwrap();
        // The batch kept what the file held and added both of its tables.
        assert_eq!(shop1.table("users").unwrap().records_synced, 1);
        assert_eq!(shop1.table("orders").unwrap().records_synced, 10);
        assert_eq!(shop1.table("products").unwrap().records_synced, 40);
        assert_eq!(store.load("shop2").await.unwrap().table("orders").unwrap().records_synced, 20);
        // No temp file is left behind, and nothing was written outside the folder.
        let names: Vec<String> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
        assert!(!dir.path().join("../escape.json").exists());
    }

    #[tokio::test]
    async fn reads_a_file_written_by_the_original_tool() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("shop1.json"),
            r#"{"database_info": {"tenant_id": "shop1", "last_updated": "2025-09-28T16:00:00", "total_tables": 1},
                "tables": {"users": {"table_name": "users", "last_sync_time": "2025-09-28T15:30:00",
                "sync_status": "SUCCESS", "sync_mode": "INCREMENTAL", "records_synced": 150,
                "error_message": null, "updated_at": "2025-09-28T15:30:05"}}}"#,
        )
        .unwrap();
        let loaded = JsonStateStore::new(dir.path()).load("shop1").await.unwrap();
        let users = loaded.table("users").unwrap();
        assert_eq!(users.sync_mode, SyncMode::Incremental);
        assert_eq!(users.watermark, None);
    }

    #[tokio::test]
    async fn a_corrupt_file_is_an_error_and_is_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shop1.json");
        fs::write(&path, "{ not json").unwrap();
        let store = JsonStateStore::new(dir.path());
        let err = store.load("shop1").await.unwrap_err();
        assert!(err.message().contains("corrupt") && err.message().contains("shop1"), "{err}");
        assert!(store.record("shop1", state("users", 1)).await.is_err());
        assert_eq!(fs::read_to_string(&path).unwrap(), "{ not json");
    }

    #[tokio::test]
    async fn a_second_lock_is_refused_while_the_first_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let store = JsonStateStore::new(dir.path());
        let held = store.lock(LockScope::Whole, None).await.unwrap();
        let err = store.lock(LockScope::Whole, None).await.unwrap_err();
        assert!(err.message().contains("already syncing"), "{err}");
        let waited = store.lock(LockScope::Whole, Some(std::time::Duration::from_millis(300))).await.unwrap_err();
        assert!(waited.message().contains("waited 0 s (--wait-lock)"), "{waited}");
        let store2 = store.clone();
        let release = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            drop(held);
        });
        assert!(
            store2.lock(LockScope::Whole, Some(std::time::Duration::from_secs(10))).await.is_ok(),
            "the lock is taken once it is free"
        );
        release.await.unwrap();
    }

    #[tokio::test]
    async fn shards_lock_apart_from_each_other_and_the_whole_excludes_them() {
        use connector_framework::Shard;
        let dir = tempfile::tempdir().unwrap();
        let store = JsonStateStore::new(dir.path());
        let shard = |index| LockScope::Shard(Shard { index, count: 2 });
        let first = store.lock(shard(0), None).await.unwrap();
        let second = store.lock(shard(1), None).await.expect("another shard runs alongside");
        let same = store.lock(shard(0), None).await.unwrap_err();
        assert!(same.message().contains("shard 0/2"), "{same}");
        let whole = store.lock(LockScope::Whole, None).await.unwrap_err();
        assert!(whole.message().contains("already syncing"), "{whole}");
        let resized = store.lock(LockScope::Shard(Shard { index: 2, count: 3 }), None).await.unwrap_err();
        assert!(resized.message().contains("workers of another count"), "{resized}");
        drop((first, second));
        let whole = store.lock(LockScope::Whole, None).await.unwrap();
        assert!(store.lock(shard(1), None).await.is_err(), "a whole run excludes every shard");
        drop(whole);
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_run_journals_its_records_and_folds_them_into_the_files_when_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = JsonStateStore::new(dir.path());
        store.record("shop1", state("users", 1)).await.unwrap();
        let before = fs::read_to_string(dir.path().join("shop1.json")).unwrap();
        let lock = store.lock(LockScope::Whole, None).await.unwrap();
        let results =
            store.record_many(vec![("shop1".into(), state("orders", 10)), ("shop2".into(), state("orders", 20))]).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        // Durable in the journal, not yet in the files.
        assert_eq!(fs::read_to_string(dir.path().join("shop1.json")).unwrap(), before);
        assert!(!dir.path().join("shop2.json").exists());
        assert!(names(dir.path()).contains(&".journal-whole".to_string()));
        // The run itself reads its records ...
        assert_eq!(store.load_table("shop1", "orders").await.unwrap().unwrap().records_synced, 10);
        assert_eq!(store.load("shop1").await.unwrap().table("users").unwrap().records_synced, 1);
        // ... and so does a reader without the lock (`status`, the console).
        let reader = JsonStateStore::new(dir.path());
        assert_eq!(reader.load_table("shop2", "orders").await.unwrap().unwrap().records_synced, 20);
        assert_eq!(reader.databases().await.unwrap(), ["shop1", "shop2"]);
        let all = reader.load_all().await.unwrap();
        assert_eq!(all[0].1.as_ref().unwrap().tables.len(), 2, "shop1: the file's table and the journal's");
        lock.release().await;
        assert!(!names(dir.path()).iter().any(|n| n.starts_with(".journal")), "{:?}", names(dir.path()));
        let shop1 = JsonStateStore::read_file(&dir.path().join("shop1.json"), "shop1").unwrap();
        assert_eq!(shop1.table("orders").unwrap().records_synced, 10);
        assert_eq!(shop1.table("users").unwrap().records_synced, 1);
        let shop2 = JsonStateStore::read_file(&dir.path().join("shop2.json"), "shop2").unwrap();
        assert_eq!(shop2.table("orders").unwrap().records_synced, 20);
        // Without a lock, records go straight to the files again.
        store.record("shop2", state("users", 5)).await.unwrap();
        let shop2 = JsonStateStore::read_file(&dir.path().join("shop2.json"), "shop2").unwrap();
        assert_eq!(shop2.table("users").unwrap().records_synced, 5);
    }

    #[tokio::test]
    async fn a_crashed_runs_journal_is_folded_at_the_next_lock_and_never_overwrites_newer_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = JsonStateStore::new(dir.path());
        let older = state("orders", 1);
        let mut newer = state("orders", 2);
        newer.updated_at = older.updated_at + chrono::Duration::seconds(5);
        // shop1's file has an entry newer than the crashed run's; shop2's an older one.
        store.record("shop1", newer.clone()).await.unwrap();
        store.record("shop2", older.clone()).await.unwrap();
        let mut crashed_old = state("orders", 3);
        crashed_old.updated_at = older.updated_at + chrono::Duration::seconds(1);
        let mut journal = Journal::create(dir.path().join(".journal-whole")).unwrap();
        journal.append(vec![("shop1".into(), crashed_old.clone()), ("shop2".into(), crashed_old)]).unwrap();
        drop(journal);
        let reader = JsonStateStore::new(dir.path());
        assert_eq!(reader.load_table("shop1", "orders").await.unwrap().unwrap().records_synced, 2, "newer file entry");
        assert_eq!(
            reader.load_table("shop2", "orders").await.unwrap().unwrap().records_synced,
            3,
            "newer journal record"
        );
        let lock = store.lock(LockScope::Whole, None).await.unwrap();
        let shop1 = JsonStateStore::read_file(&dir.path().join("shop1.json"), "shop1").unwrap();
        let shop2 = JsonStateStore::read_file(&dir.path().join("shop2.json"), "shop2").unwrap();
        assert_eq!(shop1.table("orders").unwrap().records_synced, 2);
        assert_eq!(shop2.table("orders").unwrap().records_synced, 3);
        drop(lock);
        assert!(!names(dir.path()).iter().any(|n| n.starts_with(".journal")), "{:?}", names(dir.path()));
    }

    #[tokio::test]
    async fn a_shard_folds_only_its_own_tenants_from_another_scopes_journal() {
        use connector_framework::Shard;
        let dir = tempfile::tempdir().unwrap();
        let store = JsonStateStore::new(dir.path());
        let mine = Shard { index: 0, count: 2 };
        let ours = (0..20).map(|i| format!("shop{i}")).find(|d| mine.owns(d)).unwrap();
        let theirs = (0..20).map(|i| format!("shop{i}")).find(|d| !mine.owns(d)).unwrap();
        let mut journal = Journal::create(dir.path().join(".journal-whole")).unwrap();
        journal.append(vec![(ours.clone(), state("orders", 1)), (theirs.clone(), state("orders", 2))]).unwrap();
        drop(journal);
        let lock = store.lock(LockScope::Shard(mine), None).await.unwrap();
        assert!(dir.path().join(format!("{ours}.json")).exists(), "the shard's own tenant was folded");
        assert!(!dir.path().join(format!("{theirs}.json")).exists(), "another shard's tenant was left alone");
        assert!(names(dir.path()).contains(&".journal-whole".to_string()), "the journal stays for its other records");
        let left = journal::read(&dir.path().join(".journal-whole")).unwrap();
        assert_eq!(left.keys().collect::<Vec<_>>(), [&theirs], "the shard took its own records out");
        // A tenant of the shard forgotten now is not brought back by the next lock's fold.
        store.forget(&ours, None).await.unwrap();
        drop(lock);
        let again = store.lock(LockScope::Shard(mine), None).await.unwrap();
        assert!(!dir.path().join(format!("{ours}.json")).exists());
        drop(again);
        let reader = JsonStateStore::new(dir.path());
        assert_eq!(reader.load_table(&theirs, "orders").await.unwrap().unwrap().records_synced, 2);
        let whole = store.lock(LockScope::Whole, None).await.unwrap();
        assert!(dir.path().join(format!("{theirs}.json")).exists(), "the whole lock folds every journal");
        drop(whole);
        assert!(!names(dir.path()).iter().any(|n| n.starts_with(".journal")), "{:?}", names(dir.path()));
    }

    #[tokio::test]
    async fn a_table_forgotten_during_a_run_stays_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = JsonStateStore::new(dir.path());
        let lock = store.lock(LockScope::Whole, None).await.unwrap();
        store.record("shop1", state("orders", 1)).await.unwrap();
        store.record("shop1", state("users", 1)).await.unwrap();
        assert_eq!(store.forget("shop1", Some("orders")).await.unwrap(), ["orders"]);
        assert!(store.load_table("shop1", "orders").await.unwrap().is_none());
        lock.release().await;
        let shop1 = JsonStateStore::read_file(&dir.path().join("shop1.json"), "shop1").unwrap();
        assert_eq!(shop1.tables.keys().collect::<Vec<_>>(), ["users"]);
    }

    #[tokio::test]
    async fn databases_are_listed_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = JsonStateStore::new(dir.path());
        store.record("shop2", state("users", 1)).await.unwrap();
        store.record("shop1", state("users", 1)).await.unwrap();
        store.record("shop1", state("orders", 1)).await.unwrap();
        fs::write(dir.path().join("shop3_users.json"), r#"{"table_name": "users"}"#).unwrap();
        assert_eq!(store.databases().await.unwrap(), ["shop1", "shop2"], "an old per-table file is no database");
        assert_eq!(store.forget("shop1", Some("users")).await.unwrap(), ["users"]);
        assert_eq!(store.load("shop1").await.unwrap().tables.keys().collect::<Vec<_>>(), ["orders"]);
        assert_eq!(store.forget("shop1", None).await.unwrap(), ["orders"]);
        assert!(!dir.path().join("shop1.json").exists());
        assert_eq!(store.databases().await.unwrap(), ["shop2"]);
    }
}
