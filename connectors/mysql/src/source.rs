//! The `mysql` source: discovery from `information_schema`, consistent-snapshot reads.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDateTime;
use connector_framework::digest::{BucketDigest, DigestSpec, JsonDigest, RowDigest};
use connector_framework::{
    BatchSender, ConnectorError, Preflight, ReadRange, ReadRequest, ReadSummary, Result, RowSink, Source, TableRef,
    TableSchema,
};
use mysql_async::prelude::Queryable;
use mysql_async::{Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts};

use crate::binlog::MySqlChangeLog;
use crate::config::{MySqlSourceConfig, SslMode};
use crate::error::wrap;
use crate::schema_cache::{SchemaCache, TableCache};
use crate::tls;
use crate::types::{Decoder, decode, quote_ident, read_plan, undecodable};

/// Reads MySQL / MariaDB tables through one shared connection pool.
pub struct MySqlSource {
    config: MySqlSourceConfig,
    pool: Pool,
    change_log: Arc<MySqlChangeLog>,
    json_normalize: tokio::sync::OnceCell<bool>,
    /// Definitions kept between runs (`reuse_discovery`); `None`: asked in full every run.
    schema_cache: Option<SchemaCache>,
}

// By hand: the pool's options hold the password.
impl std::fmt::Debug for MySqlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MySqlSource").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Why a connection attempt failed.
enum Failure {
    /// The server offers no TLS (`preferred` then connects without it).
    NoTls,
    Error(ConnectorError),
}

impl Failure {
    fn into_error(self) -> ConnectorError {
        match self {
            Failure::NoTls => ConnectorError::permanent("the MySQL server offers no TLS"),
            Failure::Error(e) => e,
        }
    }
}

/// Unknown column; SELECT denied on a column.
const ER_BAD_FIELD: u16 = 1054;
const ER_COLUMN_ACCESS_DENIED: u16 = 1143;

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
    /// Table `name` in each of `databases`, reusing and keeping definitions in `kept`.
    async fn discover_with(
        &self,
        name: &str,
        databases: &[String],
        kept: Option<&SchemaCache>,
    ) -> Vec<Result<TableSchema>> {
        let mut cache = kept.map_or_else(TableCache::disabled, |k| k.load(name));
        let mut out = Vec::with_capacity(databases.len());
        for chunk in databases.chunks(crate::schema::DISCOVERY_CHUNK) {
            match self.conn(&format!("`{name}`")).await {
                Ok(mut conn) => out.extend(crate::schema::discover_chunk(&mut conn, name, chunk, &mut cache).await),
                Err(e) => out.extend(chunk.iter().map(|_| Err(e.duplicate()))),
            }
        }
        if let Some(kept) = kept {
            kept.save(cache);
        }
        out
    }

    /// Creates the pool and checks that the server answers.
    pub async fn connect(config: MySqlSourceConfig) -> Result<Self> {
        let ssl = tls::ssl_opts(&config).await?;
        match Self::connect_with(config.clone(), ssl.clone()).await {
            // `preferred`, as the MySQL client means it: unencrypted when the server offers
            // no TLS at all (never when a TLS handshake fails).
            Err(Failure::NoTls) if config.ssl_mode == SslMode::Preferred => {
                tracing::warn!(host = %config.host, "the MySQL server offers no TLS: connected unencrypted (db_ssl_mode preferred; set required to refuse)");
                Self::connect_with(config, None).await.map_err(Failure::into_error)
            }
            other => other.map_err(Failure::into_error),
        }
    }

    async fn connect_with(config: MySqlSourceConfig, ssl: Option<mysql_async::SslOpts>) -> Result<Self, Failure> {
        let pool_opts = PoolOpts::default()
            .with_constraints(PoolConstraints::new(0, config.pool_size).unwrap_or_default())
            .with_inactive_connection_ttl(Duration::from_secs(60))
            // Not reset on every checkout (a reset and the session set-up again would cost six
            // statements per read): no caller leaves session state behind, and a read that
            // opens a transaction marks its connection to be reset if it stops inside it.
            .with_reset_connection(false);
        let opts: Opts = OptsBuilder::default()
            .ip_or_hostname(config.host.clone())
            .tcp_port(config.port)
            .user(Some(config.user.clone()))
            .pass(Some(config.password.expose().to_string()).filter(|p| !p.is_empty()))
            .setup(SESSION_SETUP.iter().map(|s| s.to_string()).collect())
            .pool_opts(pool_opts)
            .prefer_socket(false)
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .ssl_opts(ssl)
            .into();
        let pool = Pool::new(opts.clone());
        let endpoint = format!("MySQL at {}:{}", config.host, config.port);
        let change_log =
            Arc::new(MySqlChangeLog::new(pool.clone(), opts, endpoint, config.user.clone(), config.zero_dates));
        let schema_cache = config
            .reuse_discovery
            .then(|| SchemaCache::new(config.schema_cache_dir.as_deref(), &config.host, config.port, &config.user))
            .flatten();
        let source = Self { config, pool, change_log, json_normalize: tokio::sync::OnceCell::new(), schema_cache };
        let timeout = Duration::from_secs(source.config.connect_timeout.max(1));
        let endpoint = format!("MySQL at {}:{} as {}", source.config.host, source.config.port, source.config.user);
        match tokio::time::timeout(timeout, source.pool.get_conn()).await {
            Ok(Ok(_conn)) => Ok(source),
            Ok(Err(e)) if tls::server_has_no_tls(&e) && source.config.ssl_mode == SslMode::Preferred => {
                Err(Failure::NoTls)
            }
            Ok(Err(e)) => Err(Failure::Error(
                tls::explain(&e, &source.config, &endpoint)
                    .unwrap_or_else(|| wrap(e, format!("cannot connect to {endpoint}"))),
            )),
            Err(_) => Err(Failure::Error(ConnectorError::transient(format!(
                "cannot connect to {endpoint}: no answer within {} s; is the server reachable?",
                timeout.as_secs()
            )))),
        }
    }

    /// Whether the server digests JSON documents in SQL (`JSON_NORMALIZE`), asked once.
    async fn json_normalize(&self, conn: &mut mysql_async::Conn) -> bool {
        *self.json_normalize.get_or_init(|| crate::digest::has_json_normalize(conn)).await
    }

    async fn conn(&self, what: &(dyn std::fmt::Display + Sync)) -> Result<mysql_async::Conn> {
        self.pool.get_conn().await.map_err(|e| wrap(e, format!("{what}: cannot get a connection")))
    }
}

impl MySqlSource {
    /// Starts a consistent snapshot for a change stream's read and returns its change-log
    /// position.
    async fn open_snapshot(
        &self,
        conn: &mut mysql_async::Conn,
        schema: &TableSchema,
    ) -> Result<Option<connector_framework::ChangePosition>> {
        let table = &schema.table;
        // The log's end before the snapshot, in case the server cannot tell the snapshot's own
        // position (MySQL without Percona's binlog_snapshot_*).
        let before = self.change_log.head_on(conn).await?;
        conn.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            .await
            .map_err(|e| wrap(e, format!("{table}: starting a snapshot")))?;
        match self.change_log.snapshot_position(conn).await? {
            Some(exact) => Ok(Some(exact)),
            // Changes between `before` and the snapshot are applied again over rows that have
            // them: harmless by key, but a table without one would count them twice.
            None if schema.key.is_empty() => Err(ConnectorError::config(format!(
                "{table} has no primary key, and this server cannot tell a snapshot's exact binlog position (MariaDB \
                 and Percona Server can); give the table a key (or table_options.{}.primary_key), or sync it by cursor",
                table.table
            ))),
            None => Ok(Some(before)),
        }
    }
}

/// Per-column read plan: SELECT expression and decoder.
struct ReadColumn {
    name: String,
    source_type: String,
    expr: String,
    decoder: Decoder,
}

fn read_columns(schema: &TableSchema) -> Vec<ReadColumn> {
    schema
        .columns
        .iter()
        .map(|c| {
            let (decoder, expr) = read_plan(c);
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

    fn tenant_selection(&self) -> connector_framework::TenantSelection {
        self.config.tenant_selection()
    }

    async fn list_databases(&self) -> Result<Vec<String>> {
        let endpoint = format!("MySQL at {}:{}", self.config.host, self.config.port);
        let mut conn = self.conn(&endpoint).await?;
        crate::schema::list_databases(&mut conn).await
    }

    async fn preflight(&self, change_stream: bool) -> Result<Preflight> {
        let endpoint = format!("MySQL at {}:{} as {}", self.config.host, self.config.port, self.config.user);
        let mut conn = self.conn(&endpoint).await?;
        crate::privileges::preflight(&mut conn, &self.config, &endpoint, change_stream).await
    }

    async fn list_tables(&self, database: &str) -> Result<Vec<String>> {
        let mut conn = self.conn(&database).await?;
        crate::schema::list_tables(&mut conn, database).await
    }

    async fn discover(&self, table: &TableRef) -> Result<TableSchema> {
        // One tenant (a retry, a change stream's DDL) asks in full: the kept file is the whole
        // fleet's for this table name, and many such calls at once would each hold a copy.
        let mut found = self.discover_with(&table.table, std::slice::from_ref(&table.database), None).await;
        found.pop().unwrap_or_else(|| Err(ConnectorError::permanent(format!("{table}: discovery found nothing"))))
    }

    async fn discover_many(&self, name: &str, databases: &[String]) -> Vec<Result<TableSchema>> {
        self.discover_with(name, databases, self.schema_cache.as_ref()).await
    }

    async fn key_bounds(&self, table: &TableRef, key: &str) -> Result<Option<(String, String)>> {
        let mut conn = self.conn(table).await?;
        let k = quote_ident(key);
        // Both ends of the key's index: two lookups, whatever the table's size.
        let bounds: Option<(Option<String>, Option<String>)> = conn
            .query_first(format!(
                // `+ 0`: a BIT key as its number, not its bytes.
                "SELECT CAST(MIN({k}) + 0 AS CHAR), CAST(MAX({k}) + 0 AS CHAR) FROM {}.{}",
                quote_ident(&table.database),
                quote_ident(&table.table)
            ))
            .await
            .map_err(|e| wrap(e, format!("{table}: reading the bounds of `{key}`")))?;
        Ok(bounds.and_then(|(low, high)| low.zip(high)))
    }

    async fn read(&self, request: ReadRequest, output: BatchSender) -> Result<ReadSummary> {
        let schema = &request.schema;
        let table = &schema.table;
        let columns = read_columns(schema);

        let mut sql = format!(
            "SELECT {} FROM {}.{}",
            columns.iter().map(|c| c.expr.as_str()).collect::<Vec<_>>().join(", "),
            quote_ident(&table.database),
            quote_ident(&table.table)
        );
        let mut params: Vec<mysql_async::Value> = Vec::new();
        // Rows with a NULL cursor are either read every time or counted (never silently lost).
        let mut count_nulls = None;
        if let ReadRange::Since { cursor, from, include_nulls, .. } = &request.range {
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
        if let ReadRange::Keys { digest, keys } = &request.range {
            let (condition, values) = crate::digest::keys_condition(digest, keys)?;
            sql.push_str(&format!(" WHERE {condition}"));
            params.extend(values);
        }
        if let ReadRange::KeyRange { key, after, until, limit } = &request.range {
            let k = quote_ident(key);
            let mut bounds = Vec::new();
            if let Some(after) = after {
                bounds.push(format!("{k} > ?"));
                params.push(key_param(after));
            }
            if let Some(until) = until {
                bounds.push(format!("{k} <= ?"));
                params.push(key_param(until));
            }
            if !bounds.is_empty() {
                sql.push_str(&format!(" WHERE {}", bounds.join(" AND ")));
            }
            sql.push_str(&format!(" ORDER BY {k} LIMIT {limit}"));
        }

        let mut conn = self.conn(table).await?;
        // A plain read is one SELECT, which InnoDB runs in a consistent snapshot of its own: no
        // transaction around it, two statements in all (the clock, then the rows). A change
        // stream's read needs the snapshot's log position, so it opens the snapshot itself.
        let (change_position, snapshot_seq) = if request.capture_position {
            // A read that stops halfway must not hand the pool a connection still inside its
            // snapshot: this one is reset when it goes back, unless the COMMIT below ran.
            conn.reset_connection(true);
            let position = self.open_snapshot(&mut conn, schema).await?;
            let seq = position.as_ref().map(|p| p.seq.clone());
            (position, seq)
        } else {
            (None, None)
        };
        // The source clock, just before the SELECT's snapshot (inside it, for a change stream):
        // UTC, and the zone DATETIME cursors are stamped in (the server's default zone unless
        // cursor_time_zone says otherwise). The NULL-cursor count rides along.
        let zone = request.cursor_time_zone.clone().unwrap_or_else(|| "@@global.time_zone".to_string());
        let zone_sql =
            if request.cursor_time_zone.is_some() { format!("'{}'", zone.replace('\'', "")) } else { zone.clone() };
        let asked = std::time::Instant::now();
        let clock: Option<(NaiveDateTime, Option<NaiveDateTime>, Option<u64>)> = conn
            .query_first(format!(
                "SELECT UTC_TIMESTAMP(6), CONVERT_TZ(UTC_TIMESTAMP(6), '+00:00', {zone_sql}), {}",
                count_nulls.as_deref().map_or_else(|| "NULL".to_string(), |c| format!("({c})"))
            ))
            .await
            .map_err(|e| wrap(e, format!("{table}: reading the server clock")))?;
        let Some((utc, local, skipped)) = clock else {
            return Err(ConnectorError::permanent(format!("{table}: the server returned no clock")));
        };
        let local = match (local, &request.cursor_time_zone) {
            (Some(l), _) => l,
            (None, Some(z)) => {
                return Err(ConnectorError::config(format!(
                    "{table}: cursor_time_zone `{z}` is unknown to the server: give an offset like \"-05:00\", or load \
                     the server's time zone tables (mariadb-tzinfo-to-sql /usr/share/zoneinfo | mariadb mysql)"
                )));
            }
            // A server zone the server cannot convert to: take UTC, as the server does.
            (None, None) => utc,
        };
        let offset = i32::try_from((local - utc).num_seconds()).unwrap_or(0);
        let mut summary = ReadSummary {
            snapshot_time: Some(utc),
            cursor_clock: Some(local),
            cursor_utc_offset: Some(offset),
            change_settled: snapshot_seq.clone(),
            change_position,
            ..Default::default()
        };
        if let (Some(param), Some((widened, window))) = (params.first_mut(), request.range.widened_for_offset(offset)) {
            *param = mysql_async::Value::from(widened);
            summary.window = Some(window);
        }

        summary.null_cursor_rows_skipped = skipped.unwrap_or(0);

        let label = table.to_string();
        let mut result = match conn.exec_iter(sql.as_str(), params).await {
            Ok(result) => result,
            Err(e) => {
                // Columns the user cannot see (any more) without an ALTER: a grant changed, so
                // what discovery kept is not asked again until this is forgotten.
                if let (mysql_async::Error::Server(s), Some(kept)) = (&e, &self.schema_cache)
                    && matches!(s.code, ER_BAD_FIELD | ER_COLUMN_ACCESS_DENIED)
                {
                    kept.forget(table);
                }
                return Err(wrap(e, format!("{table}: SELECT")));
            }
        };
        // The SELECT's snapshot began after the clock was read and before its answer came: a
        // row stamped within that slack is not from the future (the runner still caps the
        // watermark at the clock).
        let slack = chrono::TimeDelta::from_std(asked.elapsed()).unwrap_or_default();
        let mut rows = RowSink::new(&request, output, utc + slack, local + slack).with_snapshot_seq(snapshot_seq);
        let mut zero_dates = 0u64;
        while let Some(row) = result.next().await.map_err(|e| wrap(e, format!("{table}: reading rows")))? {
            let raw = row.unwrap_raw();
            let mut values = Vec::with_capacity(raw.len());
            for (wire, col) in raw.into_iter().zip(&columns) {
                let wire = wire.unwrap_or(mysql_async::Value::NULL);
                values.push(match decode(col.decoder, wire) {
                    Ok(value) => value,
                    Err(e) => {
                        let policy = self.config.zero_dates;
                        undecodable(e, policy, &mut zero_dates, &label, &col.name, &col.source_type)?
                    }
                });
            }
            rows.push(values).await?;
        }
        drop(result);
        rows.finish(&mut summary).await?;
        if request.capture_position {
            conn.query_drop("COMMIT").await.map_err(|e| wrap(e, format!("{table}: ending the snapshot")))?;
            conn.reset_connection(false);
        }
        if zero_dates > 0 {
            summary.nulled_values.insert("invalid dates".to_string(), zero_dates);
        }
        Ok(summary)
    }

    async fn digest_buckets(&self, spec: &DigestSpec) -> Result<Vec<BucketDigest>> {
        let table = &spec.table;
        let mut conn = self.conn(table).await?;
        let json = self.json_normalize(&mut conn).await;
        let rows: Vec<(u32, u64, String, Option<String>)> = conn
            .query(crate::digest::buckets_sql(spec, json))
            .await
            .map_err(|e| wrap(e, format!("{table}: computing digests")))?;
        Ok(rows.into_iter().map(|(bucket, rows, sum, json_sum)| BucketDigest { bucket, rows, sum, json_sum }).collect())
    }

    async fn digest_rows(&self, spec: &DigestSpec, buckets: &[u32]) -> Result<Vec<RowDigest>> {
        let table = &spec.table;
        let mut conn = self.conn(table).await?;
        let json = self.json_normalize(&mut conn).await;
        let sql = crate::digest::rows_sql(spec, buckets, json);
        tracing::debug!(%table, sql, "row digests");
        let rows: Vec<(String, String, Option<String>, Option<String>)> =
            conn.query(sql).await.map_err(|e| wrap(e, format!("{table}: computing row digests")))?;
        Ok(rows.into_iter().map(|(key, digest, cursor, json)| RowDigest { key, digest, cursor, json }).collect())
    }

    async fn json_documents(&self, spec: &DigestSpec, keys: Option<&[String]>) -> Result<Vec<JsonDigest>> {
        let Some((sql, columns, params)) = crate::digest::json_sql(spec, keys)? else { return Ok(Vec::new()) };
        let table = &spec.table;
        let mut conn = self.conn(table).await?;
        let mut out = Vec::new();
        let mut result =
            conn.exec_iter(sql, params).await.map_err(|e| wrap(e, format!("{table}: reading JSON documents")))?;
        while let Some(row) = result.next().await.map_err(|e| wrap(e, format!("{table}: reading JSON documents")))? {
            let mut row = row;
            let key: String = row.take(0).unwrap_or_default();
            let cursor: Option<String> = row.take(1).flatten();
            for (i, column) in columns.iter().enumerate() {
                let text: Option<String> = row.take(i + 2).flatten();
                out.push(JsonDigest { key: key.clone(), column: column.clone(), text, cursor: cursor.clone() });
            }
        }
        Ok(out)
    }

    fn change_log(&self) -> Option<Arc<dyn connector_framework::ChangeLog>> {
        Some(self.change_log.clone())
    }

    async fn close(&self) {
        let _ = self.pool.clone().disconnect().await;
    }
}

/// A key bound as the integer it is, so the server uses the key's index for the range.
fn key_param(bound: &str) -> mysql_async::Value {
    match bound.parse::<i64>() {
        Ok(i) => mysql_async::Value::Int(i),
        Err(_) => bound.parse::<u64>().map_or_else(|_| mysql_async::Value::from(bound), mysql_async::Value::UInt),
    }
}
