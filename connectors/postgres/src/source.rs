//! The `postgres` source: discovery from `pg_catalog`, reads in one REPEATABLE READ, READ ONLY
//! transaction each (the clock, then `COPY (SELECT ...) TO STDOUT`).

use async_trait::async_trait;
use connector_framework::{
    BatchSender, ConnectorError, LogicalType, Preflight, ReadRange, ReadRequest, ReadSummary, Result, RowSink, Source,
    TableRef, TableSchema, Value,
};
use futures::StreamExt;

use crate::config::{PostgresSourceConfig, TenantBy};
use crate::copy::{Lines, fields};
use crate::pool::{Conn, Pool};
use crate::types::{Decoder, Decoding, parse_datetime, quote_ident, quote_literal, read_plan};

/// Schemas per discovery statement in the schema layout (one statement for most fleets).
const DISCOVERY_CHUNK: usize = 500;

/// Reads PostgreSQL tables, a database or a schema per tenant.
#[derive(Debug)]
pub struct PostgresSource {
    config: PostgresSourceConfig,
    pool: Pool,
}

impl PostgresSource {
    /// Sets up the connections and checks that the server answers (TLS failures explained).
    pub async fn connect(config: PostgresSourceConfig) -> Result<Self> {
        let tls = crate::tls::connector(&config)?;
        let pool = Pool::new(&config, tls);
        let source = Self { config, pool };
        // One connection: the server answers (it stays pooled for the first read).
        source.pool.get(&source.home_database()).await?;
        Ok(source)
    }

    /// The database this source connects to for server-wide questions: the schema layout's
    /// database, or in the database layout the first tenant listed by name (the role surely
    /// may connect there), else `database`.
    fn home_database(&self) -> String {
        match self.config.tenant_by {
            TenantBy::Schema => self.config.database.clone(),
            TenantBy::Database => self
                .config
                .databases
                .iter()
                .find(|d| connector_framework::tenants::TenantPattern::parse(d).is_ok_and(|p| !p.is_pattern()))
                .cloned()
                .unwrap_or_else(|| self.config.database.clone()),
        }
    }

    /// Where a tenant's tables are: (database, schema).
    fn place<'a>(&'a self, tenant: &'a str) -> (&'a str, &'a str) {
        match self.config.tenant_by {
            TenantBy::Database => (tenant, &self.config.schema),
            TenantBy::Schema => (&self.config.database, tenant),
        }
    }

    /// The tenants on the server a pattern is matched against.
    async fn server_tenants(&self, conn: &Conn) -> Result<Vec<String>> {
        match self.config.tenant_by {
            TenantBy::Database => crate::schema::list_databases(conn).await,
            TenantBy::Schema => crate::schema::list_schemas(conn).await,
        }
    }
}

/// One column of a read: its decoder and SELECT expression.
struct ReadColumn {
    decoder: Decoder,
    expr: String,
}

/// The SQL text of a cursor bound: the watermark as a literal of the cursor's type (a UTC
/// wall clock for timestamptz). The text was written by this tool; it is checked anyway, as it
/// goes into the statement.
fn cursor_literal(table: &TableRef, logical: &LogicalType, from: &str) -> Result<String> {
    // Date cursors keep date watermarks (`2025-06-01`); the others are date and time.
    let is_date = chrono::NaiveDate::parse_from_str(from, "%Y-%m-%d").is_ok();
    if connector_framework::state::parse_watermark_text(from).is_none() && !is_date {
        return Err(ConnectorError::permanent(format!("{table}: the watermark `{from}` is not a date and time")));
    }
    Ok(match logical {
        LogicalType::Date => format!("{}::date", quote_literal(from)),
        LogicalType::Timestamp { .. } => format!("({}::timestamp AT TIME ZONE 'UTC')", quote_literal(from)),
        _ => format!("{}::timestamp", quote_literal(from)),
    })
}

/// The zone expression for `now() AT TIME ZONE ...`: a UTC offset (`-05:00`, `+0530`, `-5`)
/// as an interval, whose sign is ISO 8601's; PostgreSQL would read such a string POSIX-style,
/// the other way round, so any other text that starts like an offset is refused.
fn zone_expr(table: &TableRef, zone: &str) -> Result<String> {
    let refuse = || {
        ConnectorError::config(format!(
            "{table}: cursor_time_zone `{zone}` is neither a zone name nor an offset like \"-05:00\""
        ))
    };
    let Some(rest) = zone.strip_prefix(['+', '-']) else {
        if zone.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(refuse());
        }
        return Ok(quote_literal(zone));
    };
    let (hours, minutes) = match rest.split_once(':') {
        Some((h, m)) => (h, m),
        None if rest.len() > 2 => rest.split_at(rest.len() - 2),
        None => (rest, "0"),
    };
    let valid = |d: &str, max: u32| {
        (1..=2).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && d.parse::<u32>().is_ok_and(|n| n <= max)
    };
    if !valid(hours, 15) || !valid(minutes, 59) {
        return Err(refuse());
    }
    let sign = if zone.starts_with('-') { "-" } else { "" };
    Ok(format!("INTERVAL '{sign}{hours}:{minutes:0>2}'"))
}

#[async_trait]
impl Source for PostgresSource {
    fn databases(&self) -> Vec<String> {
        self.config.tenants().to_vec()
    }

    fn tenant_selection(&self) -> connector_framework::TenantSelection {
        self.config.tenant_selection()
    }

    async fn list_databases(&self) -> Result<Vec<String>> {
        let conn = self.pool.get(&self.config.database).await?;
        self.server_tenants(&conn).await
    }

    async fn preflight(&self, _change_stream: bool) -> Result<Preflight> {
        let endpoint = self.pool.endpoint().to_string();
        let selection = self.config.tenant_selection();
        let (database, schemas) = match self.config.tenant_by {
            TenantBy::Schema => {
                let conn = self.pool.get(&self.config.database).await?;
                let schemas = if selection.is_static() {
                    self.config.schemas.clone()
                } else {
                    selection.select(&self.server_tenants(&conn).await?)
                };
                (self.config.database.clone(), schemas)
            }
            TenantBy::Database => {
                let database = if selection.is_static() {
                    self.config.databases.first().cloned()
                } else {
                    let conn = self.pool.get(&self.config.database).await?;
                    selection.select(&self.server_tenants(&conn).await?).into_iter().next()
                };
                (database.unwrap_or_else(|| self.config.database.clone()), vec![self.config.schema.clone()])
            }
        };
        let conn = self.pool.get(&database).await?;
        crate::privileges::preflight(&conn, &self.config, &endpoint, &schemas).await
    }

    async fn list_tables(&self, tenant: &str) -> Result<Vec<String>> {
        let (database, schema) = self.place(tenant);
        let conn = self.pool.get(database).await?;
        crate::schema::list_tables(&conn, schema, tenant).await
    }

    async fn discover(&self, table: &TableRef) -> Result<TableSchema> {
        let mut found = self.discover_many(&table.table, std::slice::from_ref(&table.database)).await;
        found.pop().unwrap_or_else(|| Err(ConnectorError::permanent(format!("{table}: discovery found nothing"))))
    }

    async fn discover_many(&self, name: &str, tenants: &[String]) -> Vec<Result<TableSchema>> {
        match self.config.tenant_by {
            // Every tenant's schema in one statement (per chunk).
            TenantBy::Schema => {
                let mut out = Vec::with_capacity(tenants.len());
                for chunk in tenants.chunks(DISCOVERY_CHUNK) {
                    match self.pool.get(&self.config.database).await {
                        Ok(conn) => out.extend(crate::schema::discover(&conn, name, chunk, chunk).await),
                        Err(e) => out.extend(chunk.iter().map(|_| Err(e.duplicate()))),
                    }
                }
                out
            }
            // A database per tenant: a statement in each, as many at once as the pool allows.
            TenantBy::Database => {
                let schema = std::slice::from_ref(&self.config.schema);
                futures::future::join_all(tenants.iter().map(|tenant| async move {
                    let conn = self.pool.get(tenant).await?;
                    let mut found = crate::schema::discover(&conn, name, schema, std::slice::from_ref(tenant)).await;
                    found.pop().unwrap_or_else(|| {
                        Err(ConnectorError::permanent(format!("{tenant}.{name}: discovery found nothing")))
                    })
                }))
                .await
            }
        }
    }

    async fn key_bounds(&self, table: &TableRef, key: &str) -> Result<Option<(String, String)>> {
        let (database, schema_name) = self.place(&table.database);
        let conn = self.pool.get(database).await?;
        let k = quote_ident(key);
        // Both ends of the key's index: two lookups, whatever the table's size.
        let messages = conn
            .simple_query(&format!(
                "SELECT min({k})::text, max({k})::text FROM {}.{}",
                quote_ident(schema_name),
                quote_ident(&table.table)
            ))
            .await
            .map_err(|e| crate::error::wrap(e, format!("{table}: reading the bounds of `{key}`")))?;
        Ok(messages.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                r.get(0).zip(r.get(1)).map(|(l, h)| (l.to_string(), h.to_string()))
            }
            _ => None,
        }))
    }

    async fn read(&self, request: ReadRequest, output: BatchSender) -> Result<ReadSummary> {
        let schema = request.schema.clone();
        let table = &schema.table;
        if request.capture_position {
            return Err(ConnectorError::config(format!(
                "{table}: the postgres source has no change stream (--cdc); sync it by cursor or in full"
            )));
        }
        let (database, schema_name) = self.place(&table.database);
        let columns: Vec<ReadColumn> = schema
            .columns
            .iter()
            .map(|c| {
                let (decoder, expr) = read_plan(c);
                let quoted = quote_ident(&c.name);
                ReadColumn { decoder, expr: expr.map_or_else(|| quoted.clone(), |e| format!("{e} AS {quoted}")) }
            })
            .collect();
        let from = format!("{}.{}", quote_ident(schema_name), quote_ident(&table.table));
        let mut select =
            format!("SELECT {} FROM {from}", columns.iter().map(|c| c.expr.as_str()).collect::<Vec<_>>().join(", "));
        let mut count_nulls = "NULL".to_string();
        let mut summary = ReadSummary::default();
        // A cursor read: (the column, its condition with the bound still to fill in).
        let mut since_read = None;
        match &request.range {
            ReadRange::Full => {}
            ReadRange::Since { cursor, include_nulls, .. } => {
                let column = schema.column(cursor).ok_or_else(|| {
                    ConnectorError::config(format!("{table}: the cursor column `{cursor}` is not in the table"))
                })?;
                let c = quote_ident(&column.name);
                // Dates before year 1 (BC, -infinity) sort below every watermark and are written
                // as NULL: treated like NULL, as MySQL's zero dates.
                let first_day = match column.logical {
                    LogicalType::Timestamp { .. } => "'0001-01-01 00:00:00+00'",
                    LogicalType::Date => "'0001-01-01'::date",
                    _ => "'0001-01-01 00:00:00'::timestamp",
                };
                let null_like = format!("{c} IS NULL OR {c} < {first_day}");
                if *include_nulls {
                    since_read = Some((column, format!(" OR {null_like}")));
                } else {
                    since_read = Some((column, String::new()));
                    count_nulls = format!("(SELECT count(*) FROM {from} WHERE {null_like})");
                }
            }
            ReadRange::KeyRange { key, after, until, limit } => {
                let k = quote_ident(key);
                let mut bounds = Vec::new();
                for (bound, op) in [(after, ">"), (until, "<=")] {
                    let Some(bound) = bound else { continue };
                    // Keys are integers (the runner reads ranges only by an integer key), so
                    // they go into the SQL as they are.
                    if bound.parse::<i64>().is_err() && bound.parse::<u64>().is_err() {
                        return Err(ConnectorError::permanent(format!(
                            "{table}: the range bound `{bound}` of `{key}` is not an integer"
                        )));
                    }
                    bounds.push(format!("{k} {op} {bound}"));
                }
                if !bounds.is_empty() {
                    select.push_str(&format!(" WHERE {}", bounds.join(" AND ")));
                }
                select.push_str(&format!(" ORDER BY {k} LIMIT {limit}"));
            }
            ReadRange::Keys { .. } => return Err(connector_framework::source::no_digests(table)),
        }

        let mut conn = self.pool.get(database).await?;
        // Inside the transaction until COMMIT: never back to the pool before it.
        conn.discard();
        let zone = match &request.cursor_time_zone {
            Some(z) => format!("now() AT TIME ZONE {}", zone_expr(table, z)?),
            None => "localtimestamp".to_string(),
        };
        // BEGIN and the clock in one round trip. now() is the transaction's start, before the
        // snapshot (taken by this SELECT): every row committed before it is in the snapshot.
        let asked = std::time::Instant::now();
        let messages = conn
            .simple_query(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SELECT now() AT TIME ZONE 'UTC', {zone}, {count_nulls}"
            ))
            .await
            .map_err(|e| {
                let bad_zone = e.code() == Some(&tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE);
                match (&request.cursor_time_zone, bad_zone) {
                    (Some(z), true) => ConnectorError::config(format!(
                        "{table}: cursor_time_zone `{z}` is unknown to the server: give an offset like \"-05:00\" or a \
                         name from pg_timezone_names"
                    )),
                    _ => crate::error::wrap(e, format!("{table}: starting the snapshot")),
                }
            })?;
        let clock = messages.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                r.get(0).and_then(parse_datetime).and_then(|t| t.ok()),
                r.get(1).and_then(parse_datetime).and_then(|t| t.ok()),
                r.get(2).and_then(|n| n.parse::<u64>().ok()),
            )),
            _ => None,
        });
        let Some((Some(utc), Some(local), skipped)) = clock else {
            return Err(ConnectorError::permanent(format!("{table}: the server returned no clock")));
        };
        let offset = i32::try_from((local - utc).num_seconds()).unwrap_or(0);
        summary.snapshot_time = Some(utc);
        summary.cursor_clock = Some(local);
        summary.cursor_utc_offset = Some(offset);
        summary.null_cursor_rows_skipped = skipped.unwrap_or(0);
        if let (Some((column, nulls)), ReadRange::Since { from: since, .. }) = (&since_read, &request.range) {
            // After a daylight-saving fall-back, the bound moves back by the hour repeated.
            let bound = match request.range.widened_for_offset(offset) {
                Some((widened, window)) => {
                    summary.window = Some(window);
                    widened
                }
                None => since.clone(),
            };
            let literal = cursor_literal(table, &column.logical, &bound)?;
            select.push_str(&format!(" WHERE ({} >= {literal}{nulls})", quote_ident(&column.name)));
        }

        let copy = format!("COPY ({select}) TO STDOUT");
        tracing::debug!(%table, sql = %copy, "reading");
        let stream = conn.copy_out(copy.as_str()).await.map_err(|e| crate::error::wrap(e, format!("{table}: COPY")))?;
        // Rows stamped between now() and the snapshot are not from the future.
        let slack = chrono::TimeDelta::from_std(asked.elapsed()).unwrap_or_default();
        let mut rows = RowSink::new(&request, output, utc + slack, local + slack);
        let label = table.to_string();
        let mut decoding =
            Decoding { policy: self.config.out_of_range, table: &label, nulled: std::collections::BTreeMap::new() };
        let mut lines = Lines::default();
        let mut scratch = String::new();
        let mut pending: Vec<Vec<Value>> = Vec::new();
        futures::pin_mut!(stream);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| crate::error::wrap(e, format!("{table}: reading rows")))?;
            lines.feed(&chunk, |line| {
                let mut values = Vec::with_capacity(columns.len());
                let n = fields(line, &mut scratch, |i, text| {
                    let (Some(col), Some(column)) = (columns.get(i), schema.columns.get(i)) else {
                        return Ok(());
                    };
                    values.push(decoding.decode(col.decoder, text, column)?);
                    Ok(())
                })?;
                if n != columns.len() {
                    return Err(ConnectorError::permanent(format!(
                        "{table}: COPY sent a row of {n} fields for {} columns",
                        columns.len()
                    )));
                }
                pending.push(values);
                Ok(())
            })?;
            for values in pending.drain(..) {
                rows.push(values).await?;
            }
        }
        lines.finish()?;
        rows.finish(&mut summary).await?;
        conn.batch_execute("COMMIT")
            .await
            .map_err(|e| crate::error::wrap(e, format!("{table}: ending the snapshot")))?;
        conn.keep();
        summary.nulled_values = decoding.nulled;
        Ok(summary)
    }

    async fn close(&self) {
        self.pool.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_iso_intervals_and_lookalikes_are_refused() {
        let t = TableRef::new("shop1", "orders");
        assert_eq!(zone_expr(&t, "-05:00").unwrap(), "INTERVAL '-05:00'");
        assert_eq!(zone_expr(&t, "+0530").unwrap(), "INTERVAL '05:30'");
        assert_eq!(zone_expr(&t, "-5").unwrap(), "INTERVAL '-5:00'");
        assert_eq!(zone_expr(&t, "America/New_York").unwrap(), "'America/New_York'");
        for bad in ["5", "+25:00", "-05:60", "+5:3:0", "-"] {
            assert!(zone_expr(&t, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn date_watermarks_bound_date_cursors() {
        let t = TableRef::new("shop1", "orders");
        assert_eq!(cursor_literal(&t, &LogicalType::Date, "2025-06-01").unwrap(), "'2025-06-01'::date");
        assert!(cursor_literal(&t, &LogicalType::Date, "2025-06-01'; DROP").is_err());
    }
}
