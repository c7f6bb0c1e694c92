//! The `bigquery` sink: target tables, staging through load jobs, atomic commits.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::Utc;
use connector_framework::{
    BuildContext, CommitSummary, ConnectorError, LogicalType, Result, RowBatch, Sink, Staged, StagingWriter, SyncMode,
    TableSchema, TargetTable, WriteMode,
};
use serde_json::{Value as Json, json};
use tokio::sync::{Mutex, OnceCell};
use tokio::task::JoinHandle;

use crate::client::BqClient;
use crate::config::BigQuerySinkConfig;
use crate::types::{bigquery_type, can_widen, canonical_type, column_name, encode_str, encode_value};

pub const TENANT_FIELD: &str = "tenant_id";
pub const SYNC_TIMESTAMP_FIELD: &str = "sync_timestamp";
pub const SYNC_MODE_FIELD: &str = "sync_mode";
pub const ROW_HASH_FIELD: &str = "_row_hash";
/// Staging only: each staged row's number, so a chunk that was loaded twice counts once.
const SEQ_FIELD: &str = "_seq";
/// Staging only: which writer staged the row. Tenants share staging tables; a commit takes
/// each tenant's rows from the writer that finished, never from an attempt that failed.
const WRITER_FIELD: &str = "_writer";
/// Encoded rows move from a writer into its shared stage in pieces of about this size.
const HANDOFF_BYTES: usize = 256 * 1024;
const SYSTEM_FIELDS: [&str; 3] = [TENANT_FIELD, SYNC_TIMESTAMP_FIELD, SYNC_MODE_FIELD];

/// Staging tables expire on their own if a run dies before dropping them.
const STAGING_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

/// Tenants applied by one MERGE (a query reads at most 1,000 tables).
const TENANTS_PER_COMMIT: usize = 200;

/// Writes to one BigQuery dataset.
#[derive(Debug)]
pub struct BigQuerySink {
    id: String,
    client: BqClient,
    dataset: String,
    staging_dataset: String,
    run_id: String,
    chunk_bytes: usize,
    datasets_ready: OnceCell<()>,
    stage_counter: AtomicU64,
    /// Target table → its columns (name, BigQuery type) after `prepare`.
    targets: Mutex<HashMap<String, Vec<(String, String)>>>,
    /// Target table → the staging tables its writers share this run.
    stages: Mutex<HashMap<String, Vec<SharedStage>>>,
}

/// A staging table shared by every writer of one target table whose rows have the same
/// staging columns: every tenant, in a fleet with one schema. Load jobs then follow the data
/// volume of a target table, not the number of tenants × tables.
#[derive(Debug, Clone)]
struct SharedStage {
    /// The staging columns as JSON text; writers with equal columns share the stage.
    fields_key: String,
    /// The staging table's id.
    table: String,
    stage: Arc<Mutex<Stage>>,
    /// The staging table exists (created by the first writer, awaited by the others).
    created: Arc<OnceCell<()>>,
}

/// The fields the sink adds to every table; tables without a key also get `_row_hash`, the
/// content hash that makes re-reading a window idempotent.
fn system_fields(keyless: bool) -> Vec<Json> {
    let mut fields = vec![
        json!({"name": TENANT_FIELD, "type": "STRING", "mode": "REQUIRED", "description": "source database (tenant)"}),
        json!({"name": SYNC_TIMESTAMP_FIELD, "type": "TIMESTAMP", "mode": "REQUIRED", "description": "when connector-run wrote the row"}),
        json!({"name": SYNC_MODE_FIELD, "type": "STRING", "mode": "REQUIRED", "description": "FULL or INCREMENTAL"}),
    ];
    if keyless {
        fields.push(json!({"name": ROW_HASH_FIELD, "type": "STRING", "mode": "NULLABLE",
                           "description": "hash of the row's values and its occurrence number (tables without a key)"}));
    }
    fields
}

/// (BigQuery name, BigQuery type) of each column.
type MappedColumns = Vec<(String, String)>;

/// Target columns for a table: (BigQuery name, BigQuery type), names checked for clashes.
fn mapped_columns(table: &str, columns: &[connector_framework::Column]) -> Result<MappedColumns> {
    let mut out: Vec<(String, String)> = Vec::new();
    for c in columns {
        let name = column_name(&c.name);
        if SYSTEM_FIELDS.iter().chain([&ROW_HASH_FIELD]).any(|s| s.eq_ignore_ascii_case(&name)) {
            return Err(ConnectorError::permanent(format!(
                "{table}: column `{}` clashes with the system field `{name}` the sink adds; rename the column \
                 in a view or exclude the table",
                c.name
            )));
        }
        if let Some((_, _)) = out.iter().find(|(n, _)| n.eq_ignore_ascii_case(&name)) {
            return Err(ConnectorError::permanent(format!(
                "{table}: columns map to the same BigQuery name `{name}` (`{}` and another); rename one",
                c.name
            )));
        }
        out.push((name, bigquery_type(&c.logical).to_string()));
    }
    Ok(out)
}

/// The target's columns: each column's override from `column_types`, else its mapped type.
fn desired_columns(table: &TargetTable) -> Result<Vec<(String, String)>> {
    let mut columns = mapped_columns(&table.name, &table.columns)?;
    for (source_name, (_, ty)) in table.columns.iter().map(|c| &c.name).zip(columns.iter_mut()) {
        if let Some((_, over)) = table.options.column_types.iter().find(|(c, _)| c.eq_ignore_ascii_case(source_name)) {
            let over = over.to_ascii_uppercase();
            if !can_convert(ty, &over) {
                return Err(ConnectorError::config(format!(
                    "table_options.{}.column_types.{source_name}: a {ty} column cannot be stored as {over}; \
                     choose STRING or a compatible type",
                    table.name
                )));
            }
            *ty = over;
        }
    }
    for c in table.options.column_types.keys() {
        if !table.columns.iter().any(|col| col.name.eq_ignore_ascii_case(c)) {
            return Err(ConnectorError::config(format!(
                "table_options.{}.column_types names column `{c}`, which no tenant's table has",
                table.name
            )));
        }
    }
    Ok(columns)
}

/// Whether staged values of type `from` can be stored in a `to` column (see [`convert`]).
fn can_convert(from: &str, to: &str) -> bool {
    let numeric = ["INT64", "NUMERIC", "BIGNUMERIC", "FLOAT64", "BOOL", "STRING"];
    let temporal = ["DATE", "DATETIME", "TIMESTAMP", "STRING"];
    from == to
        || match to {
            "STRING" => true,
            "BOOL" => ["INT64", "STRING"].contains(&from),
            "INT64" | "NUMERIC" | "BIGNUMERIC" | "FLOAT64" => numeric.contains(&from),
            "JSON" | "GEOGRAPHY" | "TIME" | "BYTES" => from == "STRING",
            "DATE" | "DATETIME" | "TIMESTAMP" => temporal.contains(&from),
            _ => false,
        }
}

/// The SQL that turns a staged `from` value into a `to` column's value.
fn convert(expr: &str, from: &str, to: &str) -> String {
    match (from, to) {
        (f, t) if f == t => expr.to_string(),
        ("BYTES", "STRING") => format!("TO_BASE64({expr})"),
        ("JSON", "STRING") => format!("TO_JSON_STRING({expr})"),
        ("STRING", "JSON") => format!("PARSE_JSON({expr})"),
        ("STRING", "GEOGRAPHY") => format!("ST_GEOGFROMTEXT({expr})"),
        (_, t) => format!("CAST({expr} AS {t})"),
    }
}

/// How an existing target table must change to hold a run's columns.
struct SchemaDiff {
    /// Every target column in order (name, type): the desired ones, then columns the source
    /// no longer has (kept, written NULL from now on).
    columns: Vec<(String, String)>,
    /// Columns to add (NULLABLE); `_row_hash` included when a keyless table lacks it.
    added: Vec<(String, String)>,
    /// Columns BigQuery can widen in place: (name, from, to).
    widened: Vec<(String, String, String)>,
    create: bool,
}

impl SchemaDiff {
    fn new(table: &TargetTable, existing: Option<&Json>) -> Result<Self> {
        let desired = desired_columns(table)?;
        let Some(resource) = existing else {
            return Ok(Self { columns: desired, added: Vec::new(), widened: Vec::new(), create: true });
        };
        let current: Vec<(String, String)> = resource["schema"]["fields"]
            .as_array()
            .map(|f| {
                f.iter()
                    .filter_map(|f| {
                        Some((f["name"].as_str()?.to_string(), canonical_type(f["type"].as_str()?).to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut diff = Self { columns: Vec::new(), added: Vec::new(), widened: Vec::new(), create: false };
        if table.key.is_empty() && !current.iter().any(|(n, _)| n == ROW_HASH_FIELD) {
            diff.added.push((ROW_HASH_FIELD.to_string(), "STRING".to_string()));
        }
        for (name, ty) in &desired {
            match current.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                None => {
                    diff.added.push((name.clone(), ty.clone()));
                    diff.columns.push((name.clone(), ty.clone()));
                }
                Some((n, cur)) if cur == ty => diff.columns.push((n.clone(), cur.clone())),
                // The target already holds a wider type; values are converted on insert.
                Some((n, cur)) if can_widen(ty, cur) || (cur == "STRING" && can_convert(ty, cur)) => {
                    diff.columns.push((n.clone(), cur.clone()))
                }
                Some((n, cur)) if can_widen(cur, ty) => {
                    diff.widened.push((n.clone(), cur.clone(), ty.clone()));
                    diff.columns.push((n.clone(), ty.clone()));
                }
                Some((n, cur)) => {
                    return Err(ConnectorError::permanent(format!(
                        "{}: column `{n}` is {cur} in BigQuery but the source now maps it to {ty}, which BigQuery \
                         cannot convert in place. Either set table_options.{}.column_types.{n} to \"{cur}\" (or \
                         STRING) to keep the BigQuery type, or drop the BigQuery column (or table) and run with \
                         --full",
                        table.name, table.name
                    )));
                }
            }
        }
        let system: Vec<&str> = SYSTEM_FIELDS.iter().copied().chain([ROW_HASH_FIELD]).collect();
        for (name, ty) in &current {
            if !system.contains(&name.as_str()) && !diff.columns.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
                diff.columns.push((name.clone(), ty.clone()));
            }
        }
        Ok(diff)
    }

    fn describe(&self) -> Vec<String> {
        if self.create {
            return vec![format!("create table with {} columns", self.columns.len())];
        }
        let mut out: Vec<String> = self.added.iter().map(|(n, t)| format!("add column {n} {t}")).collect();
        out.extend(self.widened.iter().map(|(n, f, t)| format!("widen {n} {f} → {t}")));
        out
    }
}

/// Backtick-quoted `project.dataset.table`.
fn qualified(project: &str, dataset: &str, table: &str) -> String {
    format!("`{}.{}.{}`", project, dataset, table.replace('`', ""))
}

/// A GoogleSQL string literal.
fn string_literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn quote_column(name: &str) -> String {
    format!("`{}`", name.replace('`', ""))
}

/// Benchmarks only (bench/run.sh): encode load files, then discard them; no request reaches
/// BigQuery (no table is read, created or dropped), to measure reading and encoding alone.
/// Never set this in production: runs would record success without writing.
fn bench_discards_uploads() -> bool {
    static DISCARD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DISCARD.get_or_init(|| {
        let on = std::env::var_os("CONNECTOR_BENCH_DISCARD_UPLOADS").is_some_and(|v| v == "1");
        if on {
            tracing::warn!(
                "CONNECTOR_BENCH_DISCARD_UPLOADS=1: load files are encoded and discarded; nothing reaches BigQuery"
            );
        }
        on
    })
}

/// A BigQuery table or job id for these parts: a readable prefix (letters, digits,
/// underscores) and a hash of the exact parts, so ids never collide however names sanitize.
fn unique_id(kind: &str, parts: &[&str]) -> String {
    let readable: String = parts
        .iter()
        .map(|p| p.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect::<String>())
        .collect::<Vec<_>>()
        .join("_");
    let readable: String = readable.chars().take(120).collect();
    let hash = xxhash_rust::xxh3::xxh3_128(parts.join("\u{1f}").as_bytes());
    format!("{kind}_{readable}_{hash:032x}")
}

impl BigQuerySink {
    pub fn new(ctx: &BuildContext, config: &BigQuerySinkConfig, client: BqClient) -> Self {
        Self {
            id: ctx.target_id.clone(),
            dataset: config.dataset.clone(),
            staging_dataset: config.staging_dataset.clone().unwrap_or_else(|| config.dataset.clone()),
            run_id: ctx.run_id.clone(),
            chunk_bytes: config.upload_chunk_mb * 1024 * 1024,
            client,
            datasets_ready: OnceCell::new(),
            stage_counter: AtomicU64::new(0),
            targets: Mutex::new(HashMap::new()),
            stages: Mutex::new(HashMap::new()),
        }
    }

    /// A writer number no other writer of any run has (rows of several runs can share a
    /// staging table when a full sync resumes): a hash of the run id and a counter, kept
    /// within INT64.
    fn new_writer_id(&self) -> u64 {
        let n = self.stage_counter.fetch_add(1, Ordering::Relaxed);
        xxhash_rust::xxh3::xxh3_64(format!("{}/{}/{n}", self.run_id, self.id).as_bytes()) >> 1
    }

    /// A new staging table for `table`: its id, unique to this sink, run and counter value.
    fn stage_table_id(&self, table: &str) -> String {
        let n = self.stage_counter.fetch_add(1, Ordering::Relaxed);
        unique_id("_stage", &[table, &self.id, &self.dataset, &self.run_id, &n.to_string()])
    }

    /// A stage object filling `stage_table`. Load job ids are unique per stage object: a
    /// resumed stage must not meet the jobs of the run it resumes (a 409 would pass for a
    /// load that never happened).
    fn new_stage(&self, stage_table: String, fields: Vec<Json>) -> Stage {
        Stage {
            client: self.client.clone(),
            dataset: self.staging_dataset.clone(),
            instance: format!("{}_{}", self.run_id, self.stage_counter.fetch_add(1, Ordering::Relaxed)),
            table: stage_table,
            fields,
            buffer: Vec::new(),
            spare: None,
            chunk_bytes: self.chunk_bytes,
            chunks: 0,
            pending: None,
            failed: None,
        }
    }

    /// The shared stage of `table` for writers with these staging `fields`, its staging table
    /// created if this is the first writer.
    async fn shared_stage(&self, table: &str, fields: &[Json]) -> Result<SharedStage> {
        let fields_key = Json::from(fields.to_vec()).to_string();
        let shared = {
            let mut stages = self.stages.lock().await;
            let list = stages.entry(table.to_string()).or_default();
            match list.iter().find(|s| s.fields_key == fields_key) {
                Some(s) => s.clone(),
                None => {
                    let stage_table = self.stage_table_id(table);
                    let stage = self.new_stage(stage_table.clone(), fields.to_vec());
                    let s = SharedStage {
                        fields_key,
                        table: stage_table,
                        stage: Arc::new(Mutex::new(stage)),
                        created: Arc::new(OnceCell::new()),
                    };
                    list.push(s.clone());
                    s
                }
            }
        };
        let stage_table = shared.table.clone();
        shared
            .created
            .get_or_try_init(|| async {
                if bench_discards_uploads() {
                    return Ok(());
                }
                let expires = Utc::now().timestamp_millis() + STAGING_TTL_MS;
                self.client
                    .create_table(
                        &self.staging_dataset,
                        json!({
                            "tableReference": {"projectId": self.client.project(), "datasetId": self.staging_dataset, "tableId": stage_table},
                            "schema": {"fields": fields},
                            "expirationTime": expires.to_string(),
                        }),
                    )
                    .await
            })
            .await?;
        Ok(shared)
    }

    /// The staging columns of one tenant's rows: (name, type) of its own columns, and the
    /// staging table's fields.
    fn staging_fields(table: &TargetTable, tenant: &TableSchema) -> Result<(MappedColumns, Vec<Json>)> {
        let columns = mapped_columns(&tenant.table.to_string(), &tenant.columns)?;
        let mut fields = system_fields(table.key.is_empty());
        fields.extend(columns.iter().map(|(n, t)| json!({"name": n, "type": t, "mode": "NULLABLE"})));
        fields.push(json!({"name": SEQ_FIELD, "type": "INT64", "mode": "NULLABLE"}));
        fields.push(json!({"name": WRITER_FIELD, "type": "INT64", "mode": "NULLABLE"}));
        Ok((columns, fields))
    }

    /// The writer `handle.writer` of one tenant's rows into `stage`, numbering them from `seq`.
    #[allow(clippy::too_many_arguments)]
    fn writer(
        &self,
        table: &TargetTable,
        tenant: &TableSchema,
        mode: SyncMode,
        write: WriteMode,
        columns: MappedColumns,
        (stage, private): (Arc<Mutex<Stage>>, bool),
        handle: StageHandle,
        seq: u64,
    ) -> BqStagingWriter {
        let keyless = table.key.is_empty();
        let sync_timestamp = Utc::now().format("%Y-%m-%d %H:%M:%S%.6f UTC").to_string();
        let mut prefix = Vec::new();
        prefix.extend_from_slice(b"{\"tenant_id\":");
        encode_str(&mut prefix, &tenant.table.database);
        prefix.extend_from_slice(b",\"sync_timestamp\":");
        encode_str(&mut prefix, &sync_timestamp);
        prefix.extend_from_slice(b",\"sync_mode\":");
        encode_str(&mut prefix, mode.as_str());
        prefix.extend_from_slice(format!(",\"{WRITER_FIELD}\":{}", handle.writer).as_bytes());
        let keys = columns
            .iter()
            .zip(&tenant.columns)
            .map(|((name, _), column)| {
                let mut k = vec![b','];
                encode_str(&mut k, name);
                k.push(b':');
                (k, column.logical.clone())
            })
            .collect();
        BqStagingWriter {
            stage,
            private,
            handle,
            tenant: tenant.table.database.clone(),
            mode,
            write,
            types: columns.iter().map(|(_, t)| t.clone()).collect(),
            columns: columns.into_iter().map(|(n, _)| n).collect(),
            prefix,
            keys,
            hash_rows: keyless,
            seq,
            rows: seq,
            bytes: 0,
            local: Vec::with_capacity(HANDOFF_BYTES + 64 * 1024),
        }
    }

    async fn ensure_datasets(&self) -> Result<()> {
        self.datasets_ready
            .get_or_try_init(|| async {
                self.client.ensure_dataset(&self.dataset).await?;
                if self.staging_dataset != self.dataset {
                    self.client.ensure_dataset(&self.staging_dataset).await?;
                }
                Ok::<(), ConnectorError>(())
            })
            .await
            .map(|_| ())
    }

    fn table_resource(&self, table: &TargetTable, fields: Vec<Json>) -> Result<Json> {
        let mut resource = json!({
            "tableReference": {"projectId": self.client.project(), "datasetId": self.dataset, "tableId": table.name},
            "schema": {"fields": fields},
            "description": format!("Synced by connector-run from MySQL table `{}` of every tenant", table.name),
        });
        let partition = table.options.partition_by.clone().unwrap_or_else(|| SYNC_TIMESTAMP_FIELD.to_string());
        if !partition.eq_ignore_ascii_case("none") {
            let field = column_name(&partition);
            let ok = field == SYNC_TIMESTAMP_FIELD
                || table.columns.iter().any(|c| {
                    column_name(&c.name) == field
                        && matches!(bigquery_type(&c.logical), "DATE" | "DATETIME" | "TIMESTAMP")
                });
            if !ok {
                return Err(ConnectorError::config(format!(
                    "table_options.{}.partition_by: `{partition}` is not a DATE, DATETIME or TIMESTAMP column",
                    table.name
                )));
            }
            resource["timePartitioning"] = json!({"type": "DAY", "field": field});
        }
        let cluster = table.options.cluster_by.clone().unwrap_or_else(|| vec![TENANT_FIELD.to_string()]);
        if !cluster.is_empty() {
            resource["clustering"] = json!({"fields": cluster.iter().map(|c| column_name(c)).collect::<Vec<_>>()});
        }
        if !table.key.is_empty() {
            let mut pk = vec![TENANT_FIELD.to_string()];
            pk.extend(table.key.iter().map(|k| column_name(k)));
            resource["tableConstraints"] = json!({"primaryKey": {"columns": pk}});
        }
        Ok(resource)
    }
}

#[async_trait]
impl Sink for BigQuerySink {
    fn id(&self) -> &str {
        &self.id
    }

    fn describe_columns(&self, table: &TargetTable) -> Vec<String> {
        match desired_columns(table) {
            Ok(cols) => cols.into_iter().map(|(n, t)| format!("{n} {t}")).collect(),
            Err(e) => vec![format!("error: {e}")],
        }
    }

    async fn plan_changes(&self, table: &TargetTable) -> Result<Vec<String>> {
        let existing = self.client.get_table(&self.dataset, &table.name).await?;
        let diff = SchemaDiff::new(table, existing.as_ref())?;
        Ok(diff.describe())
    }

    async fn prepare(&self, table: &TargetTable) -> Result<()> {
        if bench_discards_uploads() {
            let diff = SchemaDiff::new(table, None)?;
            self.targets.lock().await.insert(table.name.clone(), diff.columns);
            return Ok(());
        }
        self.ensure_datasets().await?;
        let existing = self.client.get_table(&self.dataset, &table.name).await?;
        let diff = SchemaDiff::new(table, existing.as_ref())?;
        match &existing {
            None => {
                let mut fields = system_fields(table.key.is_empty());
                fields.extend(diff.columns.iter().map(|(n, t)| json!({"name": n, "type": t, "mode": "NULLABLE"})));
                self.client.create_table(&self.dataset, self.table_resource(table, fields)?).await?;
            }
            Some(resource) => {
                if !diff.added.is_empty() {
                    let mut all: Vec<Json> = resource["schema"]["fields"].as_array().cloned().unwrap_or_default();
                    all.extend(diff.added.iter().map(|(n, t)| json!({"name": n, "type": t, "mode": "NULLABLE"})));
                    self.client.patch_schema(&self.dataset, &table.name, json!(all)).await?;
                }
                for (name, from, to) in &diff.widened {
                    let sql = format!(
                        "ALTER TABLE {} ALTER COLUMN {} SET DATA TYPE {to}",
                        qualified(self.client.project(), &self.dataset, &table.name),
                        quote_column(name)
                    );
                    let job = unique_id("alter", &[&self.id, &self.dataset, &self.run_id, &table.name, name, to]);
                    self.client.query(&sql, json!([]), &job).await.map_err(|e| {
                        ConnectorError::new(
                            e.class(),
                            format!(
                                "{}: widening column `{name}` from {from} to {to} failed: {e}; widen it by hand \
                                 (ALTER TABLE ... ALTER COLUMN ... SET DATA TYPE {to}) or recreate the table",
                                table.name
                            ),
                        )
                    })?;
                }
            }
        }
        self.targets.lock().await.insert(table.name.clone(), diff.columns);
        Ok(())
    }

    async fn stage(
        &self,
        table: &TargetTable,
        tenant: &TableSchema,
        mode: SyncMode,
        write: WriteMode,
    ) -> Result<Box<dyn StagingWriter>> {
        let (columns, fields) = Self::staging_fields(table, tenant)?;
        let shared = self.shared_stage(&table.name, &fields).await?;
        let handle = StageHandle { table: shared.table.clone(), writer: self.new_writer_id(), earlier: Vec::new() };
        Ok(Box::new(self.writer(table, tenant, mode, write, columns, (shared.stage, false), handle, 0)))
    }

    async fn resume_stage(
        &self,
        table: &TargetTable,
        tenant: &TableSchema,
        mode: SyncMode,
        write: WriteMode,
        handle: &str,
        rows: u64,
    ) -> Result<Box<dyn StagingWriter>> {
        let Some(prior) = StageHandle::parse(handle) else {
            return Err(ConnectorError::permanent(format!(
                "{}: staging handle {handle} is from another version",
                tenant.table
            )));
        };
        let stage_table = prior.table.as_str();
        let (columns, fields) = Self::staging_fields(table, tenant)?;
        let Some(existing) = self.client.get_table(&self.staging_dataset, stage_table).await? else {
            return Err(ConnectorError::permanent(format!(
                "{}: staging table {stage_table} is gone (expired?)",
                tenant.table
            )));
        };
        let names = |fields: &Json| -> Vec<String> {
            fields
                .as_array()
                .map(|f| f.iter().filter_map(|f| f["name"].as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        };
        if names(&existing["schema"]["fields"]) != names(&json!(fields)) {
            return Err(ConnectorError::permanent(format!(
                "{}: staging table {stage_table} has other columns",
                tenant.table
            )));
        }
        // A new writer continues alone in the table the interrupted one began. Its rows are
        // numbered on from `rows`; of the earlier writer only the first `rows` count, since it
        // may have staged more after its last checkpoint (rows a later snapshot may number
        // differently).
        let stage = Arc::new(Mutex::new(self.new_stage(stage_table.to_string(), fields)));
        let mut earlier = prior.earlier.clone();
        earlier.push((prior.writer, rows));
        let handle = StageHandle { table: prior.table.clone(), writer: self.new_writer_id(), earlier };
        Ok(Box::new(self.writer(table, tenant, mode, write, columns, (stage, true), handle, rows)))
    }

    async fn commit(&self, table: &TargetTable, staged: &[Staged]) -> Result<CommitSummary> {
        // The rows the writers handed over last are loaded now: one partial chunk per shared
        // stage, not one per tenant. A failed load fails this and every later attempt.
        let shared = self.stages.lock().await.get(&table.name).cloned().unwrap_or_default();
        for s in &shared {
            s.stage.lock().await.settle().await?;
        }
        if bench_discards_uploads() {
            return Ok(CommitSummary::default());
        }
        let target_columns = self.targets.lock().await.get(&table.name).cloned().ok_or_else(|| {
            ConnectorError::permanent(format!("{}: commit before prepare (a bug in the runner)", table.name))
        })?;
        let plan = CommitPlan {
            target: qualified(self.client.project(), &self.dataset, &table.name),
            project: self.client.project().to_string(),
            staging_dataset: self.staging_dataset.clone(),
            columns: target_columns,
            key: table.key.iter().map(|k| column_name(k)).collect(),
            key_nullable: table.key_nullable,
        };
        let mut summary = CommitSummary { rows_inserted: Some(0), bytes_billed: Some(0), ..Default::default() };
        // One MERGE per table per run; only very large fleets are split, since one query may
        // read at most 1,000 tables.
        for group in staged.chunks(TENANTS_PER_COMMIT) {
            let (sql, params) = plan.statement(group);
            if sql.is_empty() {
                continue;
            }
            let mut parts: Vec<&str> = vec![&self.id, &self.dataset, &self.run_id, &table.name];
            parts.extend(group.iter().filter_map(|s| s.handle.as_deref()));
            parts.extend(group.iter().map(|s| s.tenant.as_str()));
            let outcome = self.client.query(&sql, params, &unique_id("commit", &parts)).await?;
            summary.rows_inserted = summary.rows_inserted.map(|r| r + group.iter().map(|s| s.rows).sum::<u64>());
            let billed = outcome.statistic(&["query", "totalBytesBilled"]).unwrap_or(0);
            summary.bytes_billed = summary.bytes_billed.map(|b| b + billed);
        }
        Ok(summary)
    }

    async fn discard(&self, staged: &[Staged]) {
        let mut tables: Vec<String> =
            staged.iter().filter_map(|s| Some(StageHandle::parse(s.handle.as_deref()?)?.table)).collect();
        tables.sort_unstable();
        tables.dedup();
        // Shared stages whose table is dropped take no more rows this run.
        for list in self.stages.lock().await.values_mut() {
            list.retain(|s| !tables.contains(&s.table));
        }
        if bench_discards_uploads() {
            return;
        }
        for stage in tables {
            if let Err(e) = self.client.delete_table(&self.staging_dataset, &stage).await {
                tracing::warn!(table = %stage, error = %e, "could not drop a staging table; it expires within a day");
            }
        }
    }
}

/// Where one tenant's staged rows are: a staging table, the writer staging them now, and, for
/// a resumed full sync, the writers before it with the rows each made durable. Written as
/// `<table>/<writer>[/<writer>:<rows>]...`.
#[derive(Debug, Clone, PartialEq)]
struct StageHandle {
    table: String,
    writer: u64,
    /// Earlier writers of the same rows, each with its first `rows` rows (`_seq` below it).
    earlier: Vec<(u64, u64)>,
}

impl StageHandle {
    fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('/');
        let table = parts.next()?.to_string();
        let writer = parts.next()?.parse().ok()?;
        let earlier = parts
            .map(|p| {
                let (w, rows) = p.split_once(':')?;
                Some((w.parse().ok()?, rows.parse().ok()?))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { table, writer, earlier })
    }

    /// The SQL condition that selects these rows of a staging table.
    fn condition(&self) -> String {
        let mut terms = vec![format!("{WRITER_FIELD} = {}", self.writer)];
        terms.extend(self.earlier.iter().map(|(w, rows)| format!("({WRITER_FIELD} = {w} AND {SEQ_FIELD} < {rows})")));
        terms.join(" OR ")
    }
}

impl std::fmt::Display for StageHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.table, self.writer)?;
        self.earlier.iter().try_for_each(|(w, rows)| write!(f, "/{w}:{rows}"))
    }
}

/// One staging table and its load jobs: NDJSON rows gather in a chunk buffer; each full chunk
/// becomes one load job, uploaded while the next chunk fills (at most one upload in flight, so
/// memory stays at about two chunks).
struct Stage {
    client: BqClient,
    dataset: String,
    table: String,
    /// Distinguishes this stage's load jobs from any other's into the same table.
    instance: String,
    fields: Vec<Json>,
    buffer: Vec<u8>,
    chunk_bytes: usize,
    chunks: u64,
    /// The upload in flight, which hands its chunk back for reuse.
    pending: Option<JoinHandle<(Result<()>, bytes::Bytes)>>,
    /// A cleared chunk buffer to fill next.
    spare: Option<Vec<u8>>,
    /// Why a load failed: its rows are lost, so nothing staged here may be committed.
    failed: Option<(connector_framework::ErrorClass, String)>,
}

// By hand: the buffers are megabytes of rows.
impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage").field("table", &self.table).field("chunks", &self.chunks).finish_non_exhaustive()
    }
}

impl Stage {
    fn check(&self) -> Result<()> {
        match &self.failed {
            Some((class, message)) => Err(ConnectorError::new(*class, message.clone())),
            None => Ok(()),
        }
    }

    /// Adds encoded rows; uploads the chunk once it is full.
    async fn append(&mut self, rows: &[u8]) -> Result<()> {
        self.check()?;
        if self.buffer.capacity() == 0 {
            self.buffer = self.spare.take().unwrap_or_else(|| Vec::with_capacity(self.chunk_bytes + 2 * HANDOFF_BYTES));
        }
        self.buffer.extend_from_slice(rows);
        if self.buffer.len() >= self.chunk_bytes {
            self.flush().await?;
        }
        Ok(())
    }

    /// Loads every row appended so far.
    async fn settle(&mut self) -> Result<()> {
        self.flush().await?;
        self.wait_pending().await
    }

    async fn wait_pending(&mut self) -> Result<()> {
        self.check()?;
        if let Some(handle) = self.pending.take() {
            let outcome = handle.await.map_err(|e| ConnectorError::permanent(format!("upload task failed: {e}")));
            match outcome.and_then(|(result, data)| result.map(|()| data)) {
                Ok(data) => self.recycle(data),
                Err(e) => {
                    let e = e.context(format!("loading staging table {}", self.table));
                    self.failed = Some((e.class(), e.to_string()));
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Keeps an uploaded chunk's memory for the next chunk: a fresh 16 MiB buffer per chunk
    /// costs a page fault per 4 KiB, and the allocator may not return it at once.
    fn recycle(&mut self, data: bytes::Bytes) {
        if let Some(buffer) = reclaim(data) {
            self.spare = Some(buffer);
        }
    }

    async fn flush(&mut self) -> Result<()> {
        self.wait_pending().await?;
        if self.buffer.is_empty() {
            return Ok(());
        }
        // The next chunk's buffer: the one uploaded before, or a new one at the next append.
        let next = self.spare.take().unwrap_or_default();
        let data = bytes::Bytes::from(std::mem::replace(&mut self.buffer, next));
        let client = self.client.clone();
        let load = json!({
            "destinationTable": {"projectId": client.project(), "datasetId": self.dataset, "tableId": self.table},
            "sourceFormat": "NEWLINE_DELIMITED_JSON",
            "schema": {"fields": self.fields},
            "writeDisposition": "WRITE_APPEND",
            "createDisposition": "CREATE_NEVER",
        });
        let job_id = unique_id("load", &[&self.table, &self.instance, &self.chunks.to_string()]);
        self.chunks += 1;
        // A copy of every load file, for debugging and for measuring encoding alone.
        if let Some(dir) = std::env::var_os("CONNECTOR_BQ_DUMP_DIR") {
            let path = std::path::Path::new(&dir).join(format!("{job_id}.ndjson"));
            std::fs::write(&path, &data).map_err(|e| {
                ConnectorError::permanent(format!("CONNECTOR_BQ_DUMP_DIR: cannot write {}: {e}", path.display()))
            })?;
        }
        if bench_discards_uploads() {
            self.recycle(data);
            return Ok(());
        }
        self.pending = Some(tokio::spawn(async move {
            let result = client.load(load, data.clone(), &job_id).await.map(|_| ());
            (result, data)
        }));
        Ok(())
    }
}

/// Encodes one tenant's rows as NDJSON and hands them to its stage: the table's shared stage,
/// or, for a resumed full sync, a stage of its own on the staging table it began.
struct BqStagingWriter {
    stage: Arc<Mutex<Stage>>,
    /// The stage is this writer's alone: `finish` loads its rows (a shared stage's last rows
    /// are loaded by `commit`).
    private: bool,
    /// Where this tenant's rows are; `handle.writer` is in every row this writer stages.
    handle: StageHandle,
    tenant: String,
    mode: SyncMode,
    write: WriteMode,
    columns: Vec<String>,
    /// The staged BigQuery type of each column.
    types: Vec<String>,
    /// `{"tenant_id":…,"sync_timestamp":…,"sync_mode":…,"_writer":…` for every line.
    prefix: Vec<u8>,
    /// `,"column":` and the column's type, per column.
    keys: Vec<(Vec<u8>, LogicalType)>,
    /// Add `_row_hash` (tables without a key).
    hash_rows: bool,
    /// The next row's `_seq`.
    seq: u64,
    rows: u64,
    bytes: u64,
    /// Rows encoded and not yet handed to the stage.
    local: Vec<u8>,
}

impl BqStagingWriter {
    /// Appends one row as a line of NDJSON.
    fn encode_row(&mut self, row: &[connector_framework::Value]) {
        let out = &mut self.local;
        out.extend_from_slice(&self.prefix);
        let values_start = out.len();
        for ((key, logical), value) in self.keys.iter().zip(row) {
            out.extend_from_slice(key);
            encode_value(out, value, logical);
        }
        if self.hash_rows {
            // The encoded values identify the row's content; the commit adds the
            // occurrence number so identical rows stay distinct.
            let hash = xxhash_rust::xxh3::xxh3_128(&out[values_start..]);
            out.extend_from_slice(format!(",\"{ROW_HASH_FIELD}\":\"{hash:032x}\"").as_bytes());
        }
        out.extend_from_slice(b",\"_seq\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.seq).as_bytes());
        self.seq += 1;
        out.extend_from_slice(b"}\n");
    }

    /// Moves the encoded rows into the stage.
    async fn hand_off(&mut self) -> Result<()> {
        if !self.local.is_empty() {
            self.stage.lock().await.append(&self.local).await?;
            self.local.clear();
        }
        Ok(())
    }
}

#[async_trait]
impl StagingWriter for BqStagingWriter {
    async fn write(&mut self, batch: &RowBatch) -> Result<()> {
        for row in &batch.rows {
            self.encode_row(row);
            if self.local.len() >= HANDOFF_BYTES {
                self.hand_off().await?;
            }
        }
        self.rows += batch.len() as u64;
        self.bytes += batch.bytes as u64;
        Ok(())
    }

    async fn checkpoint(&mut self) -> Result<()> {
        self.hand_off().await?;
        self.stage.lock().await.settle().await
    }

    fn handle(&self) -> Option<String> {
        Some(self.handle.to_string())
    }

    async fn finish(mut self: Box<Self>) -> Result<Staged> {
        self.hand_off().await?;
        let mut stage = self.stage.lock().await;
        if self.private {
            stage.settle().await?
        } else {
            stage.check()?
        }
        drop(stage);
        Ok(Staged {
            tenant: self.tenant.clone(),
            mode: self.mode,
            write: self.write,
            rows: self.rows,
            bytes: self.bytes,
            columns: self.columns.clone(),
            types: self.types.clone(),
            handle: Some(self.handle.to_string()),
        })
    }
}

/// The allocation behind a chunk nothing else holds any more, emptied for reuse.
fn reclaim(data: bytes::Bytes) -> Option<Vec<u8>> {
    let mut buffer = Vec::from(data.try_into_mut().ok()?);
    buffer.clear();
    Some(buffer)
}

/// Builds the one statement that applies every staged tenant of a table atomically: a MERGE
/// on `(tenant_id, key)` (tables without a key: `(tenant_id, _row_hash)`) that updates matched
/// rows, inserts new ones, and, for tenants synced in full, deletes their rows that are no longer
/// in the source. Other tenants' rows are never touched. One DML statement per table per run
/// also keeps BigQuery's per-table modification quota free.
struct CommitPlan {
    target: String,
    project: String,
    staging_dataset: String,
    /// Target columns (BigQuery name, type), without the system fields.
    columns: Vec<(String, String)>,
    key: Vec<String>,
    /// Some key column may hold NULL (a configured key): match NULLs to each other.
    key_nullable: bool,
}

impl CommitPlan {
    fn keyless(&self) -> bool {
        self.key.is_empty()
    }

    /// System fields, then the target's columns, then `_row_hash` for keyless tables.
    fn insert_columns(&self) -> Vec<String> {
        let mut cols: Vec<String> = SYSTEM_FIELDS.iter().map(|s| s.to_string()).collect();
        cols.extend(self.columns.iter().map(|(n, _)| n.clone()));
        if self.keyless() {
            cols.push(ROW_HASH_FIELD.to_string());
        }
        cols
    }

    /// One SELECT per staging table and column set, shaped like the target (missing columns
    /// NULL, types cast).
    fn source_query(&self, staged: &[&Staged]) -> Option<String> {
        // Tenants staged in one table with the same columns are read by one SELECT, so the
        // staging table is scanned (and billed) once, not once per tenant.
        // (the group's first tenant, the handle of each of its tenants)
        let mut groups: Vec<(&Staged, Vec<(&str, StageHandle)>)> = Vec::new();
        for s in staged.iter().filter(|s| s.rows > 0) {
            let Some(handle) = s.handle.as_deref().and_then(StageHandle::parse) else { continue };
            match groups.iter_mut().find(|(first, handles)| {
                handles[0].1.table == handle.table && first.columns == s.columns && first.types == s.types
            }) {
                Some((_, handles)) => handles.push((&s.tenant, handle)),
                None => groups.push((s, vec![(&s.tenant, handle)])),
            }
        }
        let selects: Vec<String> = groups
            .iter()
            .map(|(s, handles)| {
                let mut exprs: Vec<String> = SYSTEM_FIELDS.iter().map(|f| quote_column(f)).collect();
                for (name, ty) in &self.columns {
                    let expr = match s.columns.iter().position(|c| c.eq_ignore_ascii_case(name)) {
                        Some(i) => {
                            let from = s.types.get(i).map_or(ty.as_str(), String::as_str);
                            convert(&quote_column(&s.columns[i]), from, ty)
                        }
                        None => format!("CAST(NULL AS {ty})"),
                    };
                    exprs.push(format!("{expr} AS {}", quote_column(name)));
                }
                if self.keyless() {
                    // Identical rows of a tenant share a hash; numbering them keeps each one, and
                    // the same rows read again get the same numbers.
                    exprs.push(format!(
                        "CONCAT({h}, ':', CAST(ROW_NUMBER() OVER (PARTITION BY {TENANT_FIELD}, {h}) AS STRING)) AS {h}",
                        h = quote_column(ROW_HASH_FIELD)
                    ));
                }
                // Each tenant's rows from the writer that finished (and the durable part of any
                // writer it resumed); writer numbers are unique. A chunk loaded twice (a job lost
                // and redone) shows as a repeated (_writer, _seq): keep one.
                let tenants: Vec<String> = handles.iter().map(|(t, _)| string_literal(t)).collect();
                let rows: Vec<String> = handles.iter().map(|(_, h)| h.condition()).collect();
                format!(
                    "SELECT {} FROM (SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY {WRITER_FIELD}, {SEQ_FIELD}) \
                     AS _copy FROM {} WHERE {TENANT_FIELD} IN ({}) AND ({})) WHERE _copy = 1)",
                    exprs.join(", "),
                    qualified(&self.project, &self.staging_dataset, &handles[0].1.table),
                    tenants.join(", "),
                    rows.join(" OR "),
                )
            })
            .collect();
        (!selects.is_empty()).then(|| selects.join("\nUNION ALL\n"))
    }

    fn tenants_param(name: &str, staged: &[&Staged]) -> Json {
        json!({
            "name": name,
            "parameterType": {"type": "ARRAY", "arrayType": {"type": "STRING"}},
            "parameterValue": {"arrayValues": staged.iter().map(|s| json!({"value": s.tenant})).collect::<Vec<_>>()},
        })
    }

    fn statement(&self, staged: &[Staged]) -> (String, Json) {
        let all: Vec<&Staged> = staged.iter().collect();
        let full: Vec<&Staged> = staged.iter().filter(|s| s.write == WriteMode::ReplaceTenant).collect();
        let target = &self.target;
        let mut params = vec![Self::tenants_param("tenants", &all)];
        if !full.is_empty() {
            params.push(Self::tenants_param("full_tenants", &full));
        }
        let Some(source) = self.source_query(&all) else {
            // No rows staged at all: only full-sync tenants whose source table is empty.
            let sql = format!("DELETE FROM {target} WHERE {TENANT_FIELD} IN UNNEST(@full_tenants)");
            return if full.is_empty() { (String::new(), Json::Array(params)) } else { (sql, Json::Array(params)) };
        };
        let cols = self.insert_columns();
        let col_list = cols.iter().map(|c| quote_column(c)).collect::<Vec<_>>().join(", ");
        let values = cols.iter().map(|c| format!("S.{}", quote_column(c))).collect::<Vec<_>>().join(", ");
        // The tenant filter lets BigQuery prune by the tenant_id clustering.
        let mut on =
            vec![format!("T.{TENANT_FIELD} IN UNNEST(@tenants)"), format!("T.{TENANT_FIELD} = S.{TENANT_FIELD}")];
        if !full.is_empty() {
            // A full sync replaces: its tenants' rows never match, so all of them are deleted
            // and the staged ones inserted, in this one statement (any strays go too).
            on.push(format!("T.{TENANT_FIELD} NOT IN UNNEST(@full_tenants)"));
        }
        let match_columns: Vec<String> =
            if self.keyless() { vec![ROW_HASH_FIELD.to_string()] } else { self.key.clone() };
        let null_safe = self.key_nullable && !self.keyless();
        on.extend(match_columns.iter().map(|k| {
            let k = quote_column(k);
            if null_safe {
                format!("(T.{k} = S.{k} OR (T.{k} IS NULL AND S.{k} IS NULL))")
            } else {
                format!("T.{k} = S.{k}")
            }
        }));
        let mut sql = format!("MERGE {target} T\nUSING (\n{source}\n) S\nON {}\n", on.join(" AND "));
        let set: Vec<String> = cols
            .iter()
            .filter(|c| c.as_str() != TENANT_FIELD && !match_columns.contains(c))
            .map(|c| format!("{q} = S.{q}", q = quote_column(c)))
            .collect();
        if !self.keyless() {
            sql.push_str(&format!("WHEN MATCHED THEN UPDATE SET {}\n", set.join(", ")));
        }
        sql.push_str(&format!("WHEN NOT MATCHED THEN INSERT ({col_list}) VALUES ({values})"));
        if !full.is_empty() {
            sql.push_str(&format!(
                "\nWHEN NOT MATCHED BY SOURCE AND T.{TENANT_FIELD} IN UNNEST(@full_tenants) THEN DELETE"
            ));
        }
        (sql, Json::Array(params))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use connector_framework::{Column, LogicalType, TargetOptions};

    #[test]
    fn an_uploaded_chunk_gives_its_allocation_back() {
        let mut chunk = Vec::with_capacity(1 << 20);
        chunk.extend_from_slice(b"{\"a\":1}\n");
        let address = chunk.as_ptr();
        let data = bytes::Bytes::from(chunk);
        let in_flight = data.clone();
        assert!(reclaim(in_flight).is_none(), "a chunk still shared must not be reused");
        let reused = reclaim(data).expect("the last holder gets the buffer back");
        assert_eq!((reused.as_ptr(), reused.capacity(), reused.len()), (address, 1 << 20, 0));
    }

    #[test]
    fn stage_handles_round_trip_and_reject_other_versions() {
        let h = StageHandle { table: "_stage_x".into(), writer: 42, earlier: vec![(7, 1_000_000), (9, 2_000_000)] };
        assert_eq!(h.to_string(), "_stage_x/42/7:1000000/9:2000000");
        assert_eq!(StageHandle::parse(&h.to_string()), Some(h));
        assert_eq!(StageHandle::parse("_stage_x").map(|h| h.writer), None, "a handle of the per-tenant version");
        assert_eq!(StageHandle::parse("_stage_x/1/2"), None);
    }

    fn target(columns: &[(&str, LogicalType)], key: &[&str]) -> TargetTable {
        TargetTable {
            name: "orders".into(),
            columns: columns
                .iter()
                .map(|(n, t)| Column {
                    name: n.to_string(),
                    source_type: String::new(),
                    logical: t.clone(),
                    nullable: true,
                })
                .collect(),
            key: key.iter().map(|k| k.to_string()).collect(),
            key_nullable: false,
            options: TargetOptions::default(),
        }
    }

    fn existing(fields: &[(&str, &str)]) -> Json {
        let mut all = system_fields(false);
        all.extend(fields.iter().map(|(n, t)| json!({"name": n, "type": t})));
        json!({"schema": {"fields": all}})
    }

    #[test]
    fn schema_diff_adds_widens_keeps_dropped_columns_and_rejects_incompatible_ones() {
        let t = target(
            &[("id", LogicalType::Int64), ("qty", LogicalType::UInt64), ("coupon", LogicalType::String)],
            &["id"],
        );
        let diff =
            SchemaDiff::new(&t, Some(&existing(&[("id", "INTEGER"), ("qty", "INTEGER"), ("note", "STRING")]))).unwrap();
        assert_eq!(diff.added, [("coupon".to_string(), "STRING".to_string())]);
        assert_eq!(diff.widened, [("qty".to_string(), "INT64".to_string(), "NUMERIC".to_string())]);
        let names: Vec<&str> = diff.columns.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["id", "qty", "coupon", "note"], "a dropped column is kept");
        assert_eq!(diff.describe(), ["add column coupon STRING", "widen qty INT64 → NUMERIC"]);

        let t = target(&[("id", LogicalType::Int64), ("created", LogicalType::Bytes)], &["id"]);
        let err = SchemaDiff::new(&t, Some(&existing(&[("id", "INTEGER"), ("created", "DATETIME")]))).err().unwrap();
        assert!(
            err.message().contains("`created` is DATETIME in BigQuery") && err.message().contains("BYTES"),
            "{err}"
        );

        let keyless = target(&[("path", LogicalType::String)], &[]);
        let diff = SchemaDiff::new(&keyless, Some(&existing(&[("path", "STRING")]))).unwrap();
        assert_eq!(diff.added, [(ROW_HASH_FIELD.to_string(), "STRING".to_string())]);
    }

    #[test]
    fn overrides_are_checked_and_converted() {
        let mut t = target(&[("flag", LogicalType::Int64), ("blob", LogicalType::Bytes)], &[]);
        t.options.column_types.insert("flag".into(), "bool".into());
        assert_eq!(desired_columns(&t).unwrap()[0], ("flag".to_string(), "BOOL".to_string()));
        t.options.column_types.insert("blob".into(), "DATE".into());
        assert!(desired_columns(&t).unwrap_err().message().contains("a BYTES column cannot be stored as DATE"));
        t.options.column_types.clear();
        t.options.column_types.insert("nope".into(), "STRING".into());
        assert!(desired_columns(&t).unwrap_err().message().contains("`nope`"));
        assert_eq!(convert("`b`", "BYTES", "STRING"), "TO_BASE64(`b`)");
        assert_eq!(convert("`j`", "STRING", "JSON"), "PARSE_JSON(`j`)");
        assert_eq!(convert("`f`", "INT64", "BOOL"), "CAST(`f` AS BOOL)");
        assert_eq!(convert("`x`", "INT64", "INT64"), "`x`");
    }

    #[test]
    fn tenants_sharing_a_staging_table_are_read_by_one_select_from_their_own_writers() {
        let staged = |tenant: &str, handle: &str, columns: &[&str]| Staged {
            tenant: tenant.into(),
            mode: SyncMode::Incremental,
            write: WriteMode::AppendDedup,
            rows: 1,
            bytes: 1,
            columns: columns.iter().map(|c| c.to_string()).collect(),
            types: columns.iter().map(|_| "STRING".to_string()).collect(),
            handle: Some(handle.into()),
        };
        let plan = CommitPlan {
            target: "p.d.views".into(),
            project: "p".into(),
            staging_dataset: "d".into(),
            columns: vec![("path".into(), "STRING".into()), ("ref".into(), "STRING".into())],
            key: Vec::new(),
            key_nullable: false,
        };
        let all = [
            staged("shop1", "_stage_a/3", &["path"]),
            staged("shop'2", "_stage_a/7/5:1000", &["path"]),
            staged("shop3", "_stage_a/9", &["path", "ref"]),
        ];
        let sql = plan.source_query(&all.iter().collect::<Vec<_>>()).unwrap();
        let selects: Vec<&str> = sql.split("UNION ALL").collect();
        assert_eq!(selects.len(), 2, "one SELECT per staging table and column set: {sql}");
        assert!(
            selects[0].contains(
                "tenant_id IN ('shop1', 'shop\\'2') AND (_writer = 3 OR _writer = 7 OR (_writer = 5 AND _seq < 1000))"
            ),
            "{sql}"
        );
        assert!(selects[1].contains("tenant_id IN ('shop3') AND (_writer = 9)"), "{sql}");
        // Duplicates of a row are numbered per tenant, as when each tenant was read alone.
        assert!(sql.contains("PARTITION BY tenant_id, `_row_hash`"), "{sql}");
        assert!(sql.contains("PARTITION BY _writer, _seq"), "{sql}");
    }
}
