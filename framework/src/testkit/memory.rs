//! Tables held in memory.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::error::{ConnectorError, Result};
use crate::schema::{TableRef, TableSchema};
use crate::source::{BatchSender, ReadRange, ReadRequest, ReadSummary, Source};
use crate::value::{Row, RowBatch, Value};

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
        if let ReadRange::KeyRange { key, after, limit } = &request.range {
            let i = full_schema.column_index(key).unwrap_or(0);
            rows.sort_by_key(|r| key_of(r, i));
            let after: Option<i128> = after.as_deref().and_then(|a| a.parse().ok());
            rows.retain(|r| after.is_none_or(|a| key_of(r, i) > a));
            rows.truncate(usize::try_from(*limit).unwrap_or(usize::MAX));
            last_key = rows.last().map(|r| key_of(r, i).to_string());
        }
        let cursor = request.track_cursor.as_deref().and_then(|c| full_schema.column_index(c));
        let mut batch = RowBatch::with_capacity(request.batch_size);
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
            if let Some(i) = cursor {
                match row[i].cursor_instant() {
                    Some(t) if t > now => summary.future_cursor_rows += 1,
                    Some(_) if summary.max_cursor.as_ref().is_none_or(|m| row[i].cursor_gt(m)) => {
                        summary.max_cursor = Some(row[i].clone());
                    }
                    _ => {}
                }
            }
            summary.rows += 1;
            batch.push(picks.iter().map(|&i| row[i].clone()).collect());
            if batch.is_full(request.batch_size) {
                summary.bytes += batch.bytes as u64;
                let full = std::mem::replace(&mut batch, RowBatch::with_capacity(request.batch_size));
                output.send(full).await.map_err(|_| ConnectorError::permanent("receiver dropped"))?;
            }
        }
        if !batch.is_empty() {
            summary.bytes += batch.bytes as u64;
            output.send(batch).await.map_err(|_| ConnectorError::permanent("receiver dropped"))?;
        }
        summary.last_key = last_key;
        Ok(summary)
    }
}
