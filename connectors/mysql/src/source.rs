//! The `mysql` source: discovery from `information_schema`, consistent-snapshot reads.

use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDateTime;
use connector_framework::{
    BatchSender, Column, ConnectorError, KeySource, ReadRange, ReadRequest, ReadSummary, Result, RowBatch, Source,
    TableRef, TableSchema, Value,
};
use mysql_async::prelude::Queryable;
use mysql_async::{Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts};

use crate::config::{MySqlSourceConfig, validate_identifier};
use crate::error::wrap;
use crate::types::{ColumnInfo, Decoder, decode_or_null, map_column, quote_ident};

/// Reads MySQL / MariaDB tables through one shared connection pool.
pub struct MySqlSource {
    config: MySqlSourceConfig,
    pool: Pool,
}

// By hand: the pool's options hold the password.
impl std::fmt::Debug for MySqlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MySqlSource").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Every connection: UTC session, UTF-8 on the wire, read-only transactions, and long write
/// timeouts so that a slow sink (back-pressure) does not make the server drop the stream.
const SESSION_SETUP: &[&str] = &[
    "SET time_zone = '+00:00'",
    "SET NAMES utf8mb4",
    "SET SESSION TRANSACTION READ ONLY",
    "SET SESSION net_write_timeout = 3600",
    "SET SESSION net_read_timeout = 3600",
];

impl MySqlSource {
    /// Creates the pool and checks that the server answers.
    pub async fn connect(config: MySqlSourceConfig) -> Result<Self> {
        let pool_opts = PoolOpts::default()
            .with_constraints(PoolConstraints::new(0, config.pool_size).unwrap_or_default())
            .with_inactive_connection_ttl(Duration::from_secs(60));
        let opts: Opts = OptsBuilder::default()
            .ip_or_hostname(config.host.clone())
            .tcp_port(config.port)
            .user(Some(config.user.clone()))
            .pass(Some(config.password.expose().to_string()).filter(|p| !p.is_empty()))
            .setup(SESSION_SETUP.iter().map(|s| s.to_string()).collect())
            .pool_opts(pool_opts)
            .prefer_socket(false)
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .into();
        let source = Self { config, pool: Pool::new(opts) };
        let timeout = Duration::from_secs(source.config.connect_timeout.max(1));
        let endpoint = format!("MySQL at {}:{} as {}", source.config.host, source.config.port, source.config.user);
        match tokio::time::timeout(timeout, source.pool.get_conn()).await {
            Ok(Ok(_conn)) => Ok(source),
            Ok(Err(e)) => Err(wrap(e, format!("cannot connect to {endpoint}"))),
            Err(_) => Err(ConnectorError::transient(format!(
                "cannot connect to {endpoint}: no answer within {} s; is the server reachable?",
                timeout.as_secs()
            ))),
        }
    }

    async fn conn(&self, what: &(dyn std::fmt::Display + Sync)) -> Result<mysql_async::Conn> {
        self.pool.get_conn().await.map_err(|e| wrap(e, format!("{what}: cannot get a connection")))
    }

    async fn columns(&self, table: &TableRef) -> Result<Vec<ColumnInfo>> {
        let mut conn = self.conn(table).await?;
        type Raw = (String, String, String, String, Option<u64>, Option<u64>, Option<u64>);
        let rows: Vec<Raw> = conn
            .exec(
                "SELECT COLUMN_NAME, LOWER(DATA_TYPE), LOWER(COLUMN_TYPE), IS_NULLABLE, NUMERIC_PRECISION, \
                 NUMERIC_SCALE, DATETIME_PRECISION FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (&table.database, &table.table),
            )
            .await
            .map_err(|e| wrap(e, format!("{table}: reading information_schema.COLUMNS")))?;
        // MariaDB's JSON is LONGTEXT with CHECK (json_valid(`col`)); MySQL 8 lacks the
        // TABLE_NAME column here and has a real JSON type, so a failure is ignored.
        let checks: Vec<String> = match conn
            .exec(
                "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
                 WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?",
                (&table.database, &table.table),
            )
            .await
        {
            Ok(checks) => checks,
            Err(mysql_async::Error::Server(_)) => Vec::new(),
            Err(e) => return Err(wrap(e, format!("{table}: reading information_schema.CHECK_CONSTRAINTS"))),
        };
        Ok(rows
            .into_iter()
            .map(|(name, data_type, column_type, nullable, precision, scale, dt_precision)| {
                let json_check = checks
                    .iter()
                    .any(|c| c.to_ascii_lowercase().contains(&format!("json_valid(`{}`)", name.to_ascii_lowercase())));
                let _ = nullable;
                ColumnInfo {
                    name,
                    data_type,
                    column_type,
                    numeric_precision: precision,
                    numeric_scale: scale,
                    datetime_precision: dt_precision,
                    json_check,
                }
            })
            .collect())
    }

    /// The primary key, else the smallest unique index over NOT NULL columns.
    async fn key(&self, table: &TableRef, nullable: &[(String, bool)]) -> Result<(Vec<String>, KeySource)> {
        let mut conn = self.conn(table).await?;
        // COLUMN_NAME is NULL for functional key parts (MySQL 8); such indexes are no key.
        let rows: Vec<(String, Option<String>, u64)> = conn
            .exec(
                "SELECT INDEX_NAME, COLUMN_NAME, NON_UNIQUE FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY INDEX_NAME, SEQ_IN_INDEX",
                (&table.database, &table.table),
            )
            .await
            .map_err(|e| wrap(e, format!("{table}: reading information_schema.STATISTICS")))?;
        let mut indexes: Vec<(String, Vec<Option<String>>)> = Vec::new();
        for (index, column, non_unique) in rows {
            if non_unique != 0 {
                continue;
            }
            match indexes.iter_mut().find(|(n, _)| *n == index) {
                Some((_, cols)) => cols.push(column),
                None => indexes.push((index, vec![column])),
            }
        }
        let indexes: Vec<(String, Vec<String>)> = indexes
            .into_iter()
            .filter_map(|(n, cols)| cols.into_iter().collect::<Option<Vec<_>>>().map(|c| (n, c)))
            .collect();
        if let Some((_, cols)) = indexes.iter().find(|(n, _)| n == "PRIMARY") {
            return Ok((cols.clone(), KeySource::PrimaryKey));
        }
        let not_null = |c: &String| nullable.iter().any(|(n, null)| n == c && !null);
        let best = indexes
            .into_iter()
            .filter(|(_, cols)| cols.iter().all(not_null))
            .min_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| a.0.cmp(&b.0)));
        Ok(match best {
            Some((_, cols)) => (cols, KeySource::UniqueIndex),
            None => (Vec::new(), KeySource::None),
        })
    }
}

/// Per-column read plan: SELECT expression and decoder.
struct ReadColumn {
    name: String,
    source_type: String,
    expr: String,
    decoder: Decoder,
}

fn read_columns(schema: &TableSchema, infos: &[ColumnInfo]) -> Vec<ReadColumn> {
    schema
        .columns
        .iter()
        .map(|c| {
            let info = infos.iter().find(|i| i.name == c.name);
            let (_, decoder, expr) = info.map(map_column).unwrap_or((c.logical.clone(), Decoder::Text, None));
            let quoted = quote_ident(&c.name);
            ReadColumn {
                name: c.name.clone(),
                source_type: c.source_type.clone(),
                expr: expr.map_or_else(|| quoted.clone(), |e| format!("{e} AS {quoted}")),
                decoder,
            }
        })
        .collect()
}

#[async_trait]
impl Source for MySqlSource {
    fn databases(&self) -> Vec<String> {
        self.config.databases.clone()
    }

    async fn list_tables(&self, database: &str) -> Result<Vec<String>> {
        let mut conn = self.conn(&database).await?;
        let tables: Vec<String> = conn
            .exec(
                "SELECT TABLE_NAME FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
                (database,),
            )
            .await
            .map_err(|e| wrap(e, format!("{database}: listing tables")))?;
        if tables.is_empty() {
            let exists: Option<String> = conn
                .exec_first("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?", (database,))
                .await
                .map_err(|e| wrap(e, format!("{database}: listing tables")))?;
            if exists.is_none() {
                return Err(ConnectorError::permanent(format!(
                    "database `{database}` does not exist or the user cannot see it; check db_list and grants"
                )));
            }
        }
        Ok(tables)
    }

    async fn discover(&self, table: &TableRef) -> Result<TableSchema> {
        validate_identifier("table", &table.table)?;
        let infos = self.columns(table).await?;
        if infos.is_empty() {
            return Err(ConnectorError::permanent(format!(
                "table {table} does not exist or the user cannot see it; check table_list and grants"
            )));
        }
        let mut conn = self.conn(table).await?;
        let nullable: Vec<(String, String)> = conn
            .exec(
                "SELECT COLUMN_NAME, IS_NULLABLE FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
                (&table.database, &table.table),
            )
            .await
            .map_err(|e| wrap(e, format!("{table}: reading information_schema.COLUMNS")))?;
        drop(conn);
        let nullable: Vec<(String, bool)> = nullable.into_iter().map(|(n, y)| (n, y == "YES")).collect();
        let columns = infos
            .iter()
            .map(|info| Column {
                name: info.name.clone(),
                source_type: info.column_type.clone(),
                logical: map_column(info).0,
                nullable: nullable.iter().any(|(n, null)| *n == info.name && *null),
            })
            .collect();
        let (key, key_source) = self.key(table, &nullable).await?;
        Ok(TableSchema { table: table.clone(), columns, key, key_source })
    }

    async fn read(&self, request: ReadRequest, output: BatchSender) -> Result<ReadSummary> {
        let schema = &request.schema;
        let table = &schema.table;
        let infos = self.columns(table).await?;
        let columns = read_columns(schema, &infos);
        let cursor_index = request.track_cursor.as_deref().and_then(|c| schema.column_index(c));

        let mut sql = format!(
            "SELECT {} FROM {}.{}",
            columns.iter().map(|c| c.expr.as_str()).collect::<Vec<_>>().join(", "),
            quote_ident(&table.database),
            quote_ident(&table.table)
        );
        let mut params: Vec<mysql_async::Value> = Vec::new();
        // Rows with a NULL cursor are either read every time or counted (never silently lost).
        let mut count_nulls = None;
        if let ReadRange::Since { cursor, from, include_nulls } = &request.range {
            let c = quote_ident(cursor);
            // Zero dates ('0000-00-00') sort below every real date: they are treated like NULL.
            if *include_nulls {
                sql.push_str(&format!(" WHERE ({c} >= ? OR {c} IS NULL OR {c} < '1000-01-01')"));
            } else {
                sql.push_str(&format!(" WHERE {c} >= ?"));
                count_nulls = Some(format!(
                    "SELECT COUNT(*) FROM {}.{} WHERE {c} IS NULL OR {c} < '1000-01-01'",
                    quote_ident(&table.database),
                    quote_ident(&table.table)
                ));
            }
            params.push(mysql_async::Value::from(from.as_str()));
        }
        let mut key_index = None;
        if let ReadRange::KeyRange { key, after, limit } = &request.range {
            let k = quote_ident(key);
            key_index = schema.column_index(key);
            if let Some(after) = after {
                sql.push_str(&format!(" WHERE {k} > ?"));
                // Keys are integers; bind them as such so the index range is used.
                params.push(match after.parse::<i64>() {
                    Ok(i) => mysql_async::Value::Int(i),
                    Err(_) => after
                        .parse::<u64>()
                        .map_or_else(|_| mysql_async::Value::from(after.as_str()), mysql_async::Value::UInt),
                });
            }
            sql.push_str(&format!(" ORDER BY {k} LIMIT {limit}"));
        }

        let mut conn = self.conn(table).await?;
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            .await
            .map_err(|e| wrap(e, format!("{table}: starting a snapshot")))?;
        // The source clock, in the snapshot: UTC, and the server's default zone (for DATETIME
        // cursors that applications stamp in local time).
        let clock: Option<(NaiveDateTime, Option<NaiveDateTime>)> = conn
            .query_first("SELECT UTC_TIMESTAMP(6), CONVERT_TZ(UTC_TIMESTAMP(6), '+00:00', @@global.time_zone)")
            .await
            .map_err(|e| wrap(e, format!("{table}: reading the server clock")))?;
        let mut summary = ReadSummary {
            snapshot_time: clock.map(|c| c.0),
            snapshot_local_time: clock.map(|c| c.1.unwrap_or(c.0)),
            ..Default::default()
        };

        if let Some(count_sql) = count_nulls {
            let skipped: Option<u64> =
                conn.query_first(count_sql).await.map_err(|e| wrap(e, format!("{table}: counting NULL cursors")))?;
            summary.null_cursor_rows_skipped = skipped.unwrap_or(0);
        }

        let label = table.to_string();
        let mut result = conn.exec_iter(sql.as_str(), params).await.map_err(|e| wrap(e, format!("{table}: SELECT")))?;
        let mut batch = RowBatch::with_capacity(request.batch_size);
        let mut max_cursor: Option<Value> = None;
        let mut last_key: Option<String> = None;
        while let Some(row) = result.next().await.map_err(|e| wrap(e, format!("{table}: reading rows")))? {
            let raw = row.unwrap_raw();
            let mut values = Vec::with_capacity(raw.len());
            for (wire, col) in raw.into_iter().zip(&columns) {
                let wire = wire.unwrap_or(mysql_async::Value::NULL);
                values.push(decode_or_null(
                    col.decoder,
                    wire,
                    self.config.zero_dates,
                    &mut summary.zero_dates_nulled,
                    &label,
                    &col.name,
                    &col.source_type,
                )?);
            }
            if let Some(i) = cursor_index {
                let v = &values[i];
                if !v.is_null() && max_cursor.as_ref().is_none_or(|m| cursor_gt(v, m)) {
                    max_cursor = Some(v.clone());
                }
            }
            if let Some(i) = key_index {
                last_key = match &values[i] {
                    Value::Int(k) => Some(k.to_string()),
                    Value::UInt(k) => Some(k.to_string()),
                    _ => last_key,
                };
            }
            batch.push(values);
            if batch.is_full(request.batch_size) {
                summary.rows += batch.len() as u64;
                summary.bytes += batch.bytes as u64;
                let full = std::mem::replace(&mut batch, RowBatch::with_capacity(request.batch_size));
                if output.send(full).await.is_err() {
                    return Err(ConnectorError::permanent(format!("{table}: every target stopped accepting rows")));
                }
            }
        }
        drop(result);
        if !batch.is_empty() {
            summary.rows += batch.len() as u64;
            summary.bytes += batch.bytes as u64;
            if output.send(batch).await.is_err() {
                return Err(ConnectorError::permanent(format!("{table}: every target stopped accepting rows")));
            }
        }
        conn.query_drop("COMMIT").await.map_err(|e| wrap(e, format!("{table}: ending the snapshot")))?;
        summary.max_cursor = max_cursor;
        summary.last_key = last_key;
        Ok(summary)
    }

    async fn close(&self) {
        let _ = self.pool.clone().disconnect().await;
    }
}

fn cursor_gt(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::DateTime(a), Value::DateTime(b)) => a > b,
        (Value::Timestamp(a), Value::Timestamp(b)) => a > b,
        (Value::Date(a), Value::Date(b)) => a > b,
        _ => false,
    }
}
