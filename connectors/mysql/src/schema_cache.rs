//! Discovery reused between runs while a tenant's table definition is unchanged (MariaDB).
//!
//! A run asks `information_schema` about every tenant's table; `COLUMNS`, `CHECK_CONSTRAINTS`
//! and `STATISTICS` make most of that cost, `TABLES` little of it. MariaDB's `CREATE_TIME` of
//! an InnoDB table is the change time (ctime) of its `.frm` file, which every `ALTER TABLE`
//! rewrites, the instant ones included, as does `RENAME TABLE` into its place; nobody can set
//! a ctime back. (MyISAM's and Aria's keep their creation time through an `ALTER` that only
//! rewrites the `.frm`, a `RENAME COLUMN` say: their tables are always asked.) So a table
//! whose `CREATE_TIME` is the one its facts were read under still has them, and a run asks the
//! other views only for the tenants whose time moved (or that it has no facts for): one
//! statement per chunk of tenants when no definition changed.
//!
//! The rules that keep a reused definition right:
//! - `TABLES` is read before the other views: facts read after a change are kept under the
//!   time before it, so they are read again next run, never the other way round;
//! - facts are kept only when their `CREATE_TIME` is at least [`SETTLED_SECONDS`] before the
//!   server's clock in that same statement: the time has whole seconds, so a change in the
//!   second it names could leave it unchanged;
//! - MariaDB's InnoDB tables only: MySQL 8 keeps `CREATE_TIME` in its data dictionary, and
//!   whether every `ALTER` moves it is not checked, so a MySQL server's tables are always asked;
//! - one file per server, user (column privileges change what a user sees) and table name,
//!   naming all three inside and the tool's version: any mismatch, or a file that cannot be
//!   read, is a miss; a file that cannot be written is a warning and the run goes on;
//! - a grant or revoke of column privileges changes what the user sees without an `ALTER`:
//!   a definition is read again once it is [`REREAD_AFTER_SECONDS`] old, and a read refused
//!   for a column forgets its tenant's definition at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::types::ColumnInfo;

/// Whole seconds between a table's `CREATE_TIME` and the server's clock before its facts are
/// kept: one for the truncation, one for file times that lag the clock by a tick.
pub(crate) const SETTLED_SECONDS: i64 = 2;

/// A definition older than this is read again (column privileges can change without an
/// `ALTER`): one full discovery a day.
pub(crate) const REREAD_AFTER_SECONDS: i64 = 86_400;

/// What `information_schema` says of a table's definition (its size is asked every run).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Definition {
    pub columns: Vec<ColumnInfo>,
    /// Unique indexes in index-name order, each with its columns in index order (`None`: a
    /// functional key part, MySQL 8).
    pub unique_indexes: Vec<(String, Vec<Option<String>>)>,
    pub checks: Vec<String>,
}

/// Where a source keeps its definitions: a folder, and who it asks.
#[derive(Debug)]
pub(crate) struct SchemaCache {
    folder: PathBuf,
    /// `host:port user`, as configured.
    server: String,
    /// A folder that refuses writes is said once per run, not once per table name.
    warned: std::sync::atomic::AtomicBool,
}

/// One table name's definitions, loaded for a discovery and saved after it.
#[derive(Debug, Default)]
pub(crate) struct TableCache {
    file: CacheFile,
    /// False: nothing is kept (`reuse_discovery` off, or no folder).
    enabled: bool,
    changed: bool,
    /// Unix seconds, this machine's clock.
    now: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    /// The tool's version and [`FORMAT`]: another build's file is not trusted.
    format: String,
    server: String,
    table: String,
    /// Distinct definitions: a fleet's tenants nearly all share one.
    definitions: Vec<Definition>,
    tenants: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Entry {
    /// `UNIX_TIMESTAMP(CREATE_TIME)` the definition was read under.
    created: i64,
    definition: usize,
    /// When it was read (unix seconds, this machine's clock).
    read_at: i64,
}

/// Bump the number when [`Definition`] or what discovery puts in it changes.
const FORMAT: &str = concat!(env!("CARGO_PKG_VERSION"), "/1");

impl SchemaCache {
    /// `folder`: the configured `schema_cache_dir`, else the user's cache folder
    /// (`$XDG_CACHE_HOME` or `~/.cache`, then `connector-run/mysql-discovery`); `None` when
    /// there is neither.
    pub(crate) fn new(folder: Option<&Path>, host: &str, port: u16, user: &str) -> Option<Self> {
        let folder = match folder {
            Some(f) => f.to_path_buf(),
            None => default_folder()?,
        };
        let server = format!("{host}:{port} {user}");
        Some(Self { folder: folder.join(file_part(&server)), server, warned: Default::default() })
    }

    fn path(&self, table: &str) -> PathBuf {
        self.folder.join(format!("{}.json", file_part(table)))
    }

    /// Table `table`'s definitions; none when there is no file or it is not this server's.
    pub(crate) fn load(&self, table: &str) -> TableCache {
        let mut cache = TableCache { enabled: true, now: chrono::Utc::now().timestamp(), ..TableCache::default() };
        let file = std::fs::read(self.path(table))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<CacheFile>(&bytes).ok())
            .filter(|f| f.format == FORMAT && f.server == self.server && f.table == table)
            .filter(|f| f.tenants.values().all(|e| e.definition < f.definitions.len()));
        cache.file = file.unwrap_or_else(|| CacheFile {
            format: FORMAT.to_string(),
            server: self.server.clone(),
            table: table.to_string(),
            ..CacheFile::default()
        });
        cache
    }

    /// Writes what changed (whole file, through a temporary one renamed over it).
    pub(crate) fn save(&self, cache: TableCache) {
        if !cache.enabled || !cache.changed {
            return;
        }
        let table = cache.file.table.clone();
        if let Err(e) = self.write(&table, cache.compacted())
            && !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(table = %table, folder = %self.folder.display(), error = %e,
                "could not keep the discovered definitions for the next run (schema_cache_dir); discovery will ask again");
        }
    }

    /// Forgets what is kept for one tenant's table.
    pub(crate) fn forget(&self, table: &connector_framework::TableRef) {
        let mut cache = self.load(&table.table);
        cache.forget(&table.database);
        self.save(cache);
    }

    fn write(&self, table: &str, file: CacheFile) -> std::io::Result<()> {
        // The user's own: what is in it decides which columns a run selects.
        let mut folder = std::fs::DirBuilder::new();
        folder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut folder, 0o700);
        folder.create(&self.folder)?;
        let path = self.path(table);
        let temporary = path.with_extension(format!("json.{}.tmp", std::process::id()));
        std::fs::write(&temporary, serde_json::to_vec(&file)?)?;
        std::fs::rename(&temporary, &path).inspect_err(|_| {
            let _ = std::fs::remove_file(&temporary);
        })
    }
}

impl TableCache {
    /// Keeps nothing and finds nothing.
    pub(crate) fn disabled() -> Self {
        Self::default()
    }

    /// The definition `database`'s table had when its `CREATE_TIME` was `created`, unless it
    /// is due to be read again.
    pub(crate) fn get(&self, database: &str, created: i64) -> Option<&Definition> {
        let entry = self.file.tenants.get(database)?;
        if entry.created != created || self.now - entry.read_at >= REREAD_AFTER_SECONDS {
            return None;
        }
        self.file.definitions.get(entry.definition)
    }

    /// Keeps `definition` for `database`, read under `created`, when the server's clock
    /// `now` (same statement) is far enough past it.
    pub(crate) fn put(&mut self, database: &str, created: i64, now: i64, definition: &Definition) {
        if !self.enabled || created > now - SETTLED_SECONDS {
            self.forget(database);
            return;
        }
        let index = match self.file.definitions.iter().position(|d| d == definition) {
            Some(i) => i,
            None => {
                self.file.definitions.push(definition.clone());
                self.file.definitions.len() - 1
            }
        };
        self.file.tenants.insert(database.to_string(), Entry { created, definition: index, read_at: self.now });
        self.changed = true;
    }

    /// Drops what is kept for `database` (its table is gone, or changing now).
    pub(crate) fn forget(&mut self, database: &str) {
        if self.file.tenants.remove(database).is_some() {
            self.changed = true;
        }
    }

    /// The file without definitions due to be read again (tenants come and go) and without
    /// definitions no tenant has any more.
    fn compacted(self) -> CacheFile {
        let mut file = self.file;
        let now = self.now;
        file.tenants.retain(|_, e| now - e.read_at < REREAD_AFTER_SECONDS);
        let mut used: Vec<Option<usize>> = vec![None; file.definitions.len()];
        let mut definitions = Vec::new();
        for entry in file.tenants.values_mut() {
            let new = *used[entry.definition].get_or_insert_with(|| {
                definitions.push(std::mem::take(&mut file.definitions[entry.definition]));
                definitions.len() - 1
            });
            entry.definition = new;
        }
        file.definitions = definitions;
        file
    }
}

fn default_folder() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("connector-run").join("mysql-discovery"))
}

/// A name as a file name: letters, digits, `-`, `_` and `.` kept, anything else `_` (the file
/// names what it is for inside, so two names that meet here only miss).
fn file_part(name: &str) -> String {
    let part: String =
        name.chars().map(|c| if c.is_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    if part.starts_with('.') { format!("_{part}") } else { part }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(column: &str) -> Definition {
        Definition {
            columns: vec![ColumnInfo {
                name: column.into(),
                data_type: "int".into(),
                column_type: "int(11)".into(),
                numeric_precision: Some(10),
                numeric_scale: Some(0),
                datetime_precision: None,
                json_check: false,
                nullable: false,
            }],
            unique_indexes: vec![("PRIMARY".into(), vec![Some(column.into())])],
            checks: Vec::new(),
        }
    }

    fn cache_in(dir: &Path) -> SchemaCache {
        SchemaCache::new(Some(dir), "db.example", 3306, "reader").unwrap()
    }

    #[test]
    fn a_definition_is_found_again_only_under_the_time_it_was_read_under() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_in(dir.path());
        let mut t = cache.load("orders");
        t.put("shop1", 1_000, 1_010, &definition("id"));
        t.put("shop2", 1_000, 1_010, &definition("id"));
        cache.save(t);

        let again = cache.load("orders");
        assert_eq!(again.get("shop1", 1_000), Some(&definition("id")));
        assert_eq!(again.get("shop1", 1_001), None, "an ALTER moved CREATE_TIME");
        assert_eq!(again.get("shop3", 1_000), None);
        assert_eq!(again.file.definitions.len(), 1, "tenants with one definition share it");
        assert!(cache.load("users").get("shop1", 1_000).is_none(), "another table name");
    }

    #[test]
    fn a_definition_read_within_two_seconds_of_its_change_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_in(dir.path());
        let mut t = cache.load("orders");
        t.put("shop1", 1_000, 1_000, &definition("id"));
        t.put("shop2", 1_000, 1_001, &definition("id"));
        t.put("shop3", 1_000, 1_002, &definition("id"));
        cache.save(t);
        let again = cache.load("orders");
        assert!(again.get("shop1", 1_000).is_none());
        assert!(again.get("shop2", 1_000).is_none());
        assert!(again.get("shop3", 1_000).is_some());
    }

    #[test]
    fn another_server_user_or_a_damaged_file_finds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_in(dir.path());
        let mut t = cache.load("orders");
        t.put("shop1", 1_000, 1_010, &definition("id"));
        cache.save(t);
        let other_user = SchemaCache::new(Some(dir.path()), "db.example", 3306, "admin").unwrap();
        assert!(other_user.load("orders").get("shop1", 1_000).is_none());
        let other_port = SchemaCache::new(Some(dir.path()), "db.example", 3307, "reader").unwrap();
        assert!(other_port.load("orders").get("shop1", 1_000).is_none());

        std::fs::write(cache.path("orders"), b"{\"format\": ").unwrap();
        assert!(cache.load("orders").get("shop1", 1_000).is_none());
    }

    #[test]
    fn forgotten_or_day_old_definitions_leave_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache_in(dir.path());
        let mut t = cache.load("orders");
        t.put("shop1", 1_000, 1_010, &definition("id"));
        t.put("shop2", 1_000, 1_010, &definition("other"));
        t.put("shop3", 1_000, 1_010, &definition("id"));
        t.file.tenants.get_mut("shop3").unwrap().read_at -= REREAD_AFTER_SECONDS;
        t.forget("shop1");
        cache.save(t);
        let again = cache.load("orders");
        assert_eq!(again.file.definitions, vec![definition("other")]);
        assert_eq!(again.get("shop2", 1_000), Some(&definition("other")));
        assert!(again.get("shop3", 1_000).is_none(), "read a day ago");
        assert!(!again.file.tenants.contains_key("shop3"));
    }

    #[test]
    fn a_disabled_cache_keeps_nothing() {
        let mut t = TableCache::disabled();
        t.put("shop1", 1_000, 1_010, &definition("id"));
        assert!(t.get("shop1", 1_000).is_none());
    }
}
