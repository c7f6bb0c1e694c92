//! Maintenance of a status folder: the overview behind `connector-run status`, the migration of
//! the original tool's older one-file-per-table layout, and resets that force full syncs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use connector_framework::{ConnectorError, DatabaseState, Result, TableState};
use serde::Serialize;

use crate::store::JsonStateStore;

/// The folder that receives migrated per-table files.
pub const BACKUP_DIR: &str = "backup_single_table_files";

/// Every `<database>.json` in a status folder, sorted, with its tables, each file read once.
/// A file that cannot be read or parsed is reported as an error next to the readable ones; a
/// file of the older one-file-per-table layout (no `tables`, no `database_info`) is no database.
pub fn overview(dir: &Path) -> Result<Vec<(String, std::result::Result<DatabaseState, ConnectorError>)>> {
    // The journals before the files: a fold writes the files before it removes a journal, so
    // a record is seen in one or the other.
    let mut journaled = journaled(dir)?;
    let mut out: Vec<(String, std::result::Result<DatabaseState, ConnectorError>)> = Vec::new();
    for_each_database_file(dir, |database, path, text| {
        let state = text.and_then(|text| JsonStateStore::parse_file(&path, &database, &text));
        out.push((database, state));
    })?;
    // A run under way (or one that crashed) holds records in its journal that the files do
    // not have yet: the newer record wins, and a database only a journal knows is listed too.
    for (database, state) in out.iter_mut() {
        if let (Some(tables), Ok(state)) = (journaled.remove(database.as_str()), state.as_mut()) {
            tables.into_values().for_each(|t| crate::journal::put_newer(&mut state.tables, t));
        }
    }
    for (database, tables) in journaled {
        out.push((database.clone(), Ok(DatabaseState { database, tables })));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The databases a status folder has state for, sorted: [`overview`]'s names, without parsing
/// every table of every file (a run asks at its start, and a fleet's files are megabytes).
pub fn database_names(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    for_each_database_file(dir, |database, _, _| names.push(database))?;
    names.extend(journaled(dir)?.into_keys());
    names.sort();
    names.dedup();
    Ok(names)
}

fn journaled(dir: &Path) -> Result<crate::journal::Records> {
    crate::journal::read_all(dir)
        .map_err(|e| ConnectorError::permanent(format!("cannot read the state journals in {}: {e}", dir.display())))
}

/// Gives `each` the `<database>.json` files of a status folder, sorted, one at a time: name,
/// path and text (or why it cannot be read). Files of the older one-file-per-table layout are
/// left out. One at a time: a fleet's files are megabytes together, and a run's start only
/// needs their names.
fn for_each_database_file(
    dir: &Path,
    mut each: impl FnMut(String, PathBuf, std::result::Result<String, ConnectorError>),
) -> Result<()> {
    /// Just enough of a file to tell the two layouts apart.
    #[derive(serde::Deserialize)]
    struct Shape {
        tables: Option<serde::de::IgnoredAny>,
        database_info: Option<serde::de::IgnoredAny>,
    }
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ConnectorError::permanent(format!("cannot read {}: {e}", dir.display()))),
    };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for path in files {
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else { continue };
        if path.extension().and_then(|e| e.to_str()) != Some("json") || stem.starts_with('.') || !path.is_file() {
            continue;
        }
        let text = match fs::read_to_string(&path) {
            Err(e) => Err(ConnectorError::permanent(format!("cannot read state file {}: {e}", path.display()))),
            Ok(text) => {
                // A file that is not JSON at all is a database file gone corrupt.
                let is_database = match serde_json::from_str::<Shape>(&text) {
                    Ok(shape) => shape.tables.is_some() || shape.database_info.is_some(),
                    Err(_) => serde_json::from_str::<serde::de::IgnoredAny>(&text).is_err(),
                };
                if !is_database {
                    continue;
                }
                Ok(text)
            }
        };
        each(stem, path, text);
    }
    Ok(())
}

/// What a migration did (or, in preview, would do).
#[derive(Debug, Default, Serialize)]
pub struct Migration {
    /// (old file, database, table)
    pub moved: Vec<(String, String, String)>,
    /// Old entries not taken because the database file has a newer one.
    pub superseded: Vec<String>,
    /// Files that could not be read or understood; left where they are.
    pub problems: Vec<(String, String)>,
    /// Database files written.
    pub written: Vec<String>,
}

/// Converts `<database>_<table>.json` and `<database>.<table>.json` files (each one table's
/// fields) into the per-database files, newer entries winning, and moves the old files into
/// `backup_single_table_files/`. With `preview`, nothing changes.
pub fn migrate(dir: &Path, preview: bool) -> Result<Migration> {
    let mut report = Migration::default();
    let mut merged: BTreeMap<String, BTreeMap<String, TableState>> = BTreeMap::new();
    let mut sources: Vec<PathBuf> = Vec::new();
    let entries =
        fs::read_dir(dir).map_err(|e| ConnectorError::permanent(format!("cannot read {}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for path in files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if !name.ends_with(".json") || name.starts_with('.') || !path.is_file() {
            continue;
        }
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                report.problems.push((name, format!("unreadable: {e}")));
                continue;
            }
        };
        let value: serde_json::Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                report.problems.push((name, format!("not JSON: {e}")));
                continue;
            }
        };
        if value.get("tables").is_some() || value.get("database_info").is_some() {
            continue; // already a per-database file
        }
        let Some(table) = value.get("table_name").and_then(|t| t.as_str()).map(str::to_string) else {
            report.problems.push((name, "no table_name: not a per-table state file".into()));
            continue;
        };
        let stem = &name[..name.len() - ".json".len()];
        let database = stem
            .strip_suffix(&format!("_{table}"))
            .or_else(|| stem.strip_suffix(&format!(".{table}")))
            .map(str::to_string);
        let Some(database) = database.filter(|d| !d.is_empty()) else {
            report.problems.push((name, format!("the name does not end in _{table} or .{table}")));
            continue;
        };
        let state: TableState = match serde_json::from_value(value) {
            Ok(s) => s,
            Err(e) => {
                report.problems.push((name, format!("fields not understood: {e}")));
                continue;
            }
        };
        let tables = merged.entry(database.clone()).or_default();
        if tables.get(&table).is_some_and(|e| e.updated_at >= state.updated_at) {
            report.superseded.push(name.clone());
        } else {
            tables.insert(table.clone(), state);
        }
        report.moved.push((name, database, table));
        sources.push(path);
    }
    if preview || sources.is_empty() {
        return Ok(report);
    }
    let store = JsonStateStore::new(dir);
    let _lock = store.lock_blocking(connector_framework::LockScope::Whole)?;
    store.fold_leftovers(connector_framework::LockScope::Whole)?;
    for (database, tables) in merged {
        let current = JsonStateStore::read_file(&store.path_for(&database)?, &database)?;
        for (table, state) in tables {
            // An entry already in the database file wins when it is at least as new.
            if current.table(&table).is_some_and(|c| c.updated_at >= state.updated_at) {
                report.superseded.push(format!("{database}.{table}"));
                continue;
            }
            store.record_blocking(&database, state)?;
        }
        report.written.push(format!("{database}.json"));
    }
    let backup = dir.join(BACKUP_DIR);
    crate::private_dir(&backup)
        .map_err(|e| ConnectorError::permanent(format!("cannot create {}: {e}", backup.display())))?;
    for path in sources {
        let target = backup.join(path.file_name().unwrap_or_default());
        fs::rename(&path, &target).map_err(|e| {
            ConnectorError::permanent(format!("cannot move {} to {}: {e}", path.display(), target.display()))
        })?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = r#"{"table_name": "users", "last_sync_time": "2025-09-28T15:30:00", "sync_status": "SUCCESS",
        "sync_mode": "INCREMENTAL", "records_synced": 150, "error_message": null, "updated_at": "2025-09-28T15:30:05"}"#;

    #[test]
    fn migrates_per_table_files_and_keeps_corrupt_ones() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("shop_1_users.json"), OLD).unwrap();
        fs::write(dir.path().join("shop2.users.json"), OLD.replace("150", "7")).unwrap();
        fs::write(dir.path().join("shop3_orders.json"), "{ broken").unwrap();

        let preview = migrate(dir.path(), true).unwrap();
        assert_eq!(preview.moved.len(), 2);
        assert!(preview.written.is_empty());
        assert!(dir.path().join("shop_1_users.json").exists(), "a preview changes nothing");

        let done = migrate(dir.path(), false).unwrap();
        assert_eq!(done.problems.len(), 1, "{:?}", done.problems);
        assert!(dir.path().join("shop3_orders.json").exists(), "a corrupt file stays where it is");
        assert!(dir.path().join(BACKUP_DIR).join("shop_1_users.json").exists());
        let shop1 = JsonStateStore::read_file(&dir.path().join("shop_1.json"), "shop_1").unwrap();
        assert_eq!(shop1.table("users").unwrap().records_synced, 150);
        let shop2 = JsonStateStore::read_file(&dir.path().join("shop2.json"), "shop2").unwrap();
        assert_eq!(shop2.table("users").unwrap().records_synced, 7);

        let all = overview(dir.path()).unwrap();
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["shop2", "shop3_orders", "shop_1"]);
        assert!(all[1].1.is_err(), "the corrupt file is reported, not hidden");
    }
}
