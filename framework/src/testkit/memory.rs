//! Tables held in memory.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::error::{ConnectorError, Result};
use crate::schema::{TableRef, TableSchema};
use crate::source::{BatchSender, ReadRange, ReadRequest, ReadSummary, RowSink, Source};
use crate::value::{Row, Value};

/// Schema and rows per table.
pub type MemoryTables = BTreeMap<TableRef, (TableSchema, Vec<Row>)>;

/// Tables held in memory, one per `database.table`. Its clock is the host's (UTC), and it
/// honours the whole [`ReadRange`] contract.
#[derive(Debug, Default, Clone)]
pub struct MemorySource {
    pub databases: Vec<String>,
    pub tables: Arc<Mutex<MemoryTables>>,
    /// Every read request, in order (for tests of what the runner asked for).
    pub requests: Arc<Mutex<Vec<ReadRange>>>,
    /// Fail the read with this number (counting from 1), as a lost connection would.
    pub fail_read: Arc<Mutex<Option<usize>>>,
}

impl MemorySource {
    pub fn add_table(&self, schema: TableSchema, rows: Vec<Row>) {
        self.tables.lock().unwrap_or_else(|p| p.into_inner()).insert(schema.table.clone(), (schema, rows));
    }
}

fn key_of(row: &Row, i: usize) -> i128 {
    match &row[i] {
        Value::Int(k) => i128::from(*k),
        Value::UInt(k) => i128::from(*k),
        _ => i128::MIN,
    }
}

#[async_trait]
impl Source for MemorySource {
    fn databases(&self) -> Vec<String> {
        self.databases.clone()
    }

    /// The databases that have a table (a selection with patterns matches them).
    async fn list_databases(&self) -> Result<Vec<String>> {
        let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<String> = tables.keys().map(|t| t.database.clone()).collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn list_tables(&self, database: &str) -> Result<Vec<String>> {
        let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        Ok(tables.keys().filter(|t| t.database == database).map(|t| t.table.clone()).collect())
    }

    async fn discover(&self, table: &TableRef) -> Result<TableSchema> {
        let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        tables
            .get(table)
            .map(|(s, _)| s.clone())
            .ok_or_else(|| ConnectorError::permanent(format!("table {table} does not exist")))
    }

    async fn key_bounds(&self, table: &TableRef, key: &str) -> Result<Option<(String, String)>> {
        let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let Some((schema, rows)) = tables.get(table) else { return Ok(None) };
        let Some(i) = schema.column_index(key) else { return Ok(None) };
        let keys = rows.iter().map(|r| key_of(r, i));
        Ok(keys.clone().min().zip(keys.max()).map(|(low, high)| (low.to_string(), high.to_string())))
    }

    async fn read(&self, request: ReadRequest, output: BatchSender) -> Result<ReadSummary> {
        let reads = {
            let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            requests.push(request.range.clone());
            requests.len()
        };
        if *self.fail_read.lock().unwrap_or_else(|p| p.into_inner()) == Some(reads) {
            return Err(ConnectorError::permanent(format!("{}: connection lost (read {reads})", request.schema.table)));
        }
        if let ReadRange::Keys { .. } = &request.range {
            // Key strings are computed by a source's SQL; memory has none.
            return Err(crate::source::no_digests(&request.schema.table));
        }
        let (full_schema, mut rows) = {
            let tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
            tables.get(&request.schema.table).cloned().unwrap_or_else(|| ((*request.schema).clone(), Vec::new()))
        };
        // Only the requested columns, in the requested order (excluded ones are never read).
        let picks: Vec<usize> =
            request.schema.columns.iter().filter_map(|c| full_schema.column_index(&c.name)).collect();
        let now = chrono::Utc::now().naive_utc();
        let mut summary = ReadSummary {
            snapshot_time: Some(now),
            cursor_clock: Some(now),
            cursor_utc_offset: Some(0),
            ..Default::default()
        };
        let mut last_key = None;
        if let ReadRange::KeyRange { key, after, until, limit } = &request.range {
            let i = full_schema.column_index(key).unwrap_or(0);
            rows.sort_by_key(|r| key_of(r, i));
            let after: Option<i128> = after.as_deref().and_then(|a| a.parse().ok());
            let until: Option<i128> = until.as_deref().and_then(|u| u.parse().ok());
            rows.retain(|r| after.is_none_or(|a| key_of(r, i) > a) && until.is_none_or(|u| key_of(r, i) <= u));
            rows.truncate(usize::try_from(*limit).unwrap_or(usize::MAX));
            last_key = rows.last().map(|r| key_of(r, i).to_string());
        }
        // The framework's own row sink: the watermark and window rules are those every
        // source's read follows.
        let mut sink = RowSink::new(&request, output, now, now);
        for row in rows {
            if let ReadRange::Since { cursor: name, from, include_nulls, .. } = &request.range {
                let i = full_schema.column_index(name).unwrap_or(0);
                match row[i].cursor_text() {
                    Some(t) if t.as_str() >= from.as_str() => {}
                    None if *include_nulls => {}
                    None => {
                        summary.null_cursor_rows_skipped += 1;
                        continue;
                    }
                    Some(_) => continue,
                }
            }
            sink.push(picks.iter().map(|&i| row[i].clone()).collect()).await?;
        }
        sink.finish(&mut summary).await?;
        summary.last_key = last_key;
        Ok(summary)
    }
}
