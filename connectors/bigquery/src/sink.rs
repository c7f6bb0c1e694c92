//! The `bigquery` sink: target tables, staging through load jobs, atomic commits.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::Utc;
use connector_framework::digest::{BucketDigest, DigestSpec, JsonDigest, RowDigest};
use connector_framework::{
    BuildContext, CdcDeletes, ChangeSeq, CommitOutcome, CommitSummary, ConnectorError, Prepared, Result, Sink,
    StageRequest, Staged, StagingWriter, TableSchema, TargetOptions, TargetPlan, TargetTable,
};
use serde_json::{Value as Json, json};
use tokio::sync::{Mutex, OnceCell};

use crate::client::{BqClient, DatasetInfo};
use crate::config::BigQuerySinkConfig;
use crate::merge::{CommitPlan, PROGRESS_TABLE, qualified, quote_column, unique_id};
use crate::schema::{MappedColumn, SchemaDiff, desired_columns, mapped_columns, system_fields, table_resource};
use crate::stage::{SharedStage, Stage};
use crate::types::{column_name, encode_str, staging_name, staging_type};
use crate::writer::{
    BqStagingWriter, CHANGE_SEQ_FIELD, CHANGED_AT_FIELD, ChangeFields, HASH_FIELD, MODE_FIELD, OP_FIELD, SEQ_FIELD,
    SYNCED_FIELD, StageHandle, TENANT_FIELD, WRITER_FIELD, hash_order,
};

/// Attempts at preparing a target table that other writers prepare at the same time.
const PREPARE_ATTEMPTS: u32 = 3;

mod expiry;
mod tenants;
mod verify;

/// The BigQuery table id of a target table (see [`crate::types::table_id`]).
pub(crate) fn table_id(table: &TargetTable) -> String {
    crate::types::table_id(table.options.table_name(&table.name))
}

/// The change-stream fields of a writer's staging rows.
fn change_fields(request: &StageRequest<'_>) -> ChangeFields {
    ChangeFields {
        seq: request.table.changes.is_some(),
        ops: request.write == connector_framework::WriteMode::ApplyChanges,
    }
}

/// Staging tables expire on their own if a run dies before dropping them.
const STAGING_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

/// Tenants applied by one MERGE. Their names and writer numbers go as query parameters (about
/// 100 bytes of request per tenant, not statement text; BigQuery caps a query's text at 1 MB and
/// the request at 10 MB), so a fleet of this size gets one MERGE per table. Larger groups were
/// never tried on real BigQuery; this bound is what the statement's text once allowed.
const TENANTS_PER_COMMIT: usize = 4000;

/// The version of the row hash of tables without a key (see `writer::row_hash`): part of the
/// table generation, so a table hashed with another version is re-synced in full.
const ROW_HASH_VERSION: &str = "rowhash-v2";

/// Writes to one BigQuery dataset.
#[derive(Debug)]
pub struct BigQuerySink {
    id: String,
    destination: String,
    client: BqClient,
    dataset: String,
    staging_dataset: String,
    run_id: String,
    chunk_bytes: usize,
    /// Shared by every stage of the run.
    chunk_budget: crate::stage::ChunkBudget,
    datasets_ready: OnceCell<DatasetInfo>,
    counter: AtomicU64,
    /// Bytes billed by verify's queries (`Sink::bytes_billed`).
    billed: AtomicU64,
    /// Target table → its columns (name, BigQuery type) after `prepare`.
    targets: Mutex<HashMap<String, Vec<(String, String)>>>,
    /// Target table → the staging tables its writers share this run.
    stages: Mutex<HashMap<String, Vec<SharedStage>>>,
    /// The distinct column and type lists of this run's writers: a fleet's tenants have the
    /// same ones, and each staged tenant keeps its lists until the table's commit.
    column_lists: std::sync::Mutex<std::collections::HashSet<Arc<[String]>>>,
}

impl BigQuerySink {
    pub fn new(ctx: &BuildContext, config: &BigQuerySinkConfig, client: BqClient) -> Self {
        Self {
            id: ctx.target_id.clone(),
            destination: config.destination(),
            dataset: config.dataset.clone(),
            staging_dataset: config.staging_dataset.clone().unwrap_or_else(|| config.dataset.clone()),
            run_id: ctx.run_id.clone(),
            chunk_bytes: config.upload_chunk_mb * 1024 * 1024,
            chunk_budget: crate::stage::ChunkBudget::new(config.staging_memory_bytes()),
            client,
            datasets_ready: OnceCell::new(),
            counter: AtomicU64::new(0),
            billed: AtomicU64::new(0),
            targets: Mutex::new(HashMap::new()),
            stages: Mutex::new(HashMap::new()),
            column_lists: Default::default(),
        }
    }

    /// `list`, shared with every equal list of this run.
    fn shared_list(&self, list: Vec<String>) -> Arc<[String]> {
        let mut lists = self.column_lists.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match lists.get(list.as_slice()) {
            Some(shared) => Arc::clone(shared),
            None => {
                let shared: Arc<[String]> = list.into();
                lists.insert(Arc::clone(&shared));
                shared
            }
        }
    }

    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// A writer number no other writer of any run has (rows of several runs can share a
    /// staging table when a full sync resumes): a hash of the run id and a counter, kept
    /// within INT64.
    fn new_writer_id(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(format!("{}/{}/{}", self.run_id, self.id, self.next()).as_bytes()) >> 1
    }

    /// A stage object filling `stage_table`. Load job ids are unique per stage object: a
    /// resumed stage must not meet the jobs of the run it resumes (a 409 would pass for a
    /// load that never happened).
    fn new_stage(&self, stage_table: String, fields: Vec<Json>) -> Stage {
        let instance = format!("{}_{}", self.run_id, self.next());
        Stage::new(
            self.client.clone(),
            self.staging_dataset.clone(),
            stage_table,
            instance,
            fields,
            self.chunk_bytes,
            self.chunk_budget.clone(),
        )
    }

    /// The shared stage of `table` for writers with these staging `fields`, its staging table
    /// created if this is the first writer.
    async fn shared_stage(&self, table: &str, fields: &[Json]) -> Result<SharedStage> {
        // Serialized as it is: every tenant asks, and a copy of the fields first was most of
        // a fleet run's allocations here.
        let fields_key = serde_json::to_string(fields)
            .map_err(|e| ConnectorError::permanent(format!("{table}: staging fields: {e}")))?;
        let shared = {
            let mut stages = self.stages.lock().await;
            let list = stages.entry(table.to_string()).or_default();
            match list.iter().find(|s| s.fields_key == fields_key) {
                Some(s) => s.clone(),
                None => {
                    let stage_table =
                        unique_id("_stage", &[table, &self.id, &self.dataset, &self.run_id, &self.next().to_string()]);
                    let s = SharedStage {
                        fields_key,
                        stage: Arc::new(Mutex::new(self.new_stage(stage_table.clone(), fields.to_vec()))),
                        table: stage_table,
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
                    .map(|_| ())
            })
            .await?;
        Ok(shared)
    }

    /// Loads the rows the writers of `table` handed over last (one partial chunk per shared
    /// stage, not one per tenant) and returns its shared stages.
    async fn settle_stages(&self, table: &str) -> Result<Vec<SharedStage>> {
        let shared = self.stages.lock().await.get(table).cloned().unwrap_or_default();
        for s in &shared {
            let mut stage = s.stage.lock().await;
            stage.settle(None).await?;
            // The commit takes no more rows: the chunk memory goes back now, not when the
            // stage is dropped after the commit (other tables fill theirs meanwhile).
            stage.release_buffers();
        }
        Ok(shared)
    }

    /// The staging columns of one tenant's rows: its columns (target names and types), and
    /// the staging table's fields (fixed ASCII names: see `types::staging_name`).
    fn staging_fields(
        table: &TargetTable,
        tenant: &TableSchema,
        changes: ChangeFields,
    ) -> Result<(Vec<MappedColumn>, Vec<Json>)> {
        let mut columns = mapped_columns(table, &tenant.columns, &tenant.table.to_string())?;
        for (c, source) in columns.iter_mut().zip(tenant.columns.iter()) {
            c.ty = staging_type(&source.logical).to_string();
        }
        let mut fields = vec![
            json!({"name": TENANT_FIELD, "type": "STRING", "mode": "NULLABLE"}),
            json!({"name": SYNCED_FIELD, "type": "TIMESTAMP", "mode": "NULLABLE"}),
            json!({"name": MODE_FIELD, "type": "STRING", "mode": "NULLABLE"}),
        ];
        if table.key.is_empty() {
            fields.push(json!({"name": HASH_FIELD, "type": "STRING", "mode": "NULLABLE"}));
        }
        fields.extend(columns.iter().map(|c| json!({"name": staging_name(&c.name), "type": c.ty, "mode": "NULLABLE"})));
        if changes.seq {
            fields.push(json!({"name": CHANGE_SEQ_FIELD, "type": "STRING", "mode": "NULLABLE"}));
        }
        if changes.ops {
            fields.push(json!({"name": OP_FIELD, "type": "STRING", "mode": "NULLABLE"}));
            fields.push(json!({"name": CHANGED_AT_FIELD, "type": "TIMESTAMP", "mode": "NULLABLE"}));
        }
        fields.push(json!({"name": SEQ_FIELD, "type": "INT64", "mode": "NULLABLE"}));
        fields.push(json!({"name": WRITER_FIELD, "type": "INT64", "mode": "NULLABLE"}));
        Ok((columns, fields))
    }

    /// The writer `handle.writer` of one tenant's rows into `stage`, numbering them from `seq`.
    fn writer(
        &self,
        request: &StageRequest<'_>,
        columns: Vec<MappedColumn>,
        (stage, private): (Arc<Mutex<Stage>>, bool),
        handle: StageHandle,
        seq: u64,
    ) -> BqStagingWriter {
        let tenant = request.tenant;
        let keys = columns
            .iter()
            .zip(tenant.columns.iter())
            .map(|(c, column)| {
                let mut k = vec![b','];
                encode_str(&mut k, &staging_name(&c.name));
                k.push(b':');
                (k, column.logical.clone())
            })
            .collect();
        let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
        BqStagingWriter {
            stage,
            private,
            prefix: BqStagingWriter::prefix(&tenant.table.database, request.mode, handle.writer),
            handle,
            tenant: tenant.table.database.clone(),
            mode: request.mode,
            write: request.write,
            types: self.shared_list(columns.iter().map(|c| c.ty.clone()).collect()),
            hash: request.table.key.is_empty().then(|| hash_order(&names)),
            change_fields: change_fields(request),
            columns: self.shared_list(names),
            keys,
            seq,
            rows: seq,
            bytes: 0,
            // Allocated only if the stage is ever busy when this writer writes (`write_local`).
            local: Vec::new(),
        }
    }

    async fn ensure_datasets(&self) -> Result<&DatasetInfo> {
        self.datasets_ready
            .get_or_try_init(|| async {
                let info = self.client.ensure_dataset(&self.dataset).await?;
                if self.staging_dataset != self.dataset {
                    self.client.ensure_dataset(&self.staging_dataset).await?;
                }
                Ok::<DatasetInfo, ConnectorError>(info)
            })
            .await
    }

    /// The change stream's progress records of tables without a key (see
    /// [`crate::merge::PROGRESS_TABLE`]), made once.
    async fn ensure_progress_table(&self) -> Result<()> {
        let fields = json!([
            {"name": "target_table", "type": "STRING", "mode": "REQUIRED"},
            {"name": "tenant", "type": "STRING", "mode": "REQUIRED"},
            {"name": "applied_seq", "type": "STRING", "mode": "REQUIRED"},
            {"name": "updated_at", "type": "TIMESTAMP", "mode": "NULLABLE"},
        ]);
        let resource = json!({
            "tableReference": {"projectId": self.client.project(), "datasetId": self.dataset, "tableId": PROGRESS_TABLE},
            "schema": {"fields": fields},
            "description": "connector-run --cdc: how far each table without a key has applied the change stream, per tenant",
        });
        self.client.create_table(&self.dataset, resource).await.map(|_| ())
    }

    /// The commit of one group of tenants.
    /// The commit plan of a prepared target table.
    async fn commit_plan(&self, table: &TargetTable) -> Result<CommitPlan> {
        let target_columns = self.targets.lock().await.get(&table.name).cloned().ok_or_else(|| {
            ConnectorError::permanent(format!("{}: commit before prepare (a bug in the runner)", table.name))
        })?;
        Ok(CommitPlan {
            target: qualified(self.client.project(), &self.dataset, &table_id(table)),
            project: self.client.project().to_string(),
            staging_dataset: self.staging_dataset.clone(),
            columns: target_columns,
            key: table.key.iter().map(|k| column_name(table.options.target_name(k))).collect(),
            key_nullable: table.key_nullable,
            system: table.system.clone(),
            changes: table.changes,
            table_name: table.name.clone(),
            progress: qualified(self.client.project(), &self.dataset, PROGRESS_TABLE),
        })
    }

    async fn commit_group(&self, table: &TargetTable, plan: &CommitPlan, group: &[Staged]) -> Result<u64> {
        let (sql, params) = plan.statement(group);
        if sql.is_empty() {
            return Ok(0);
        }
        let mut parts: Vec<&str> = vec![&self.id, &self.dataset, &self.run_id, &table.name];
        parts.extend(group.iter().filter_map(|s| s.handle.as_deref()));
        parts.extend(group.iter().map(|s| s.tenant.as_str()));
        let what = format!("MERGE of {} tenants into {}", group.len(), table.name);
        let outcome = self.client.query(&sql, params, &unique_id("commit", &parts), &what).await?;
        Ok(outcome.statistic(&["query", "totalBytesBilled"]).unwrap_or(0))
    }
}

impl BigQuerySink {
    /// One [`Sink::prepare`] attempt; `None` when it lost a race with another writer of the
    /// table (`last`: fail instead).
    async fn prepare_attempt(&self, table: &TargetTable, last: bool) -> Result<Option<Prepared>> {
        let dataset = self.ensure_datasets().await?.clone();
        let id = table_id(table);
        let existing = self.client.get_table(&self.dataset, &id).await?;
        let diff = SchemaDiff::new(table, existing.as_ref())?;
        let (resource, created) = match existing {
            None => {
                let mut fields = system_fields(&table.system, table.key.is_empty(), table.changes);
                fields.extend(diff.columns.iter().map(|(n, t)| json!({"name": n, "type": t, "mode": "NULLABLE"})));
                let resource = table_resource(self.client.project(), &self.dataset, table, fields)?;
                let Some(created) = self.client.create_table_if_absent(&self.dataset, resource).await? else {
                    // Another worker created it first: evolve it as an existing table.
                    if last {
                        return Err(ConnectorError::transient(format!(
                            "{}: the target table was created by another writer and then not found; the next run \
                             prepares it again",
                            table.name
                        )));
                    }
                    return Ok(None);
                };
                (self.clear_inherited_expirations(&id, created).await?, true)
            }
            Some(resource) => {
                if !diff.added.is_empty() {
                    let mut all: Vec<Json> = resource["schema"]["fields"].as_array().cloned().unwrap_or_default();
                    all.extend(diff.added.iter().map(|(n, t)| json!({"name": n, "type": t, "mode": "NULLABLE"})));
                    match self.client.patch_schema(&self.dataset, &id, json!(all)).await {
                        // Another worker changed the schema since it was read.
                        Err(e) if !last && e.message().contains("does not match") => return Ok(None),
                        other => other?,
                    }
                }
                for (name, from, to) in &diff.widened {
                    let sql = format!(
                        "ALTER TABLE {} ALTER COLUMN {} SET DATA TYPE {to}",
                        qualified(self.client.project(), &self.dataset, &id),
                        quote_column(name)
                    );
                    let job = unique_id("alter", &[&self.id, &self.dataset, &self.run_id, &table.name, name, to]);
                    self.client
                        .query(&sql, json!([]), &job, &format!("widening {}.{name}", table.name))
                        .await
                        .map_err(|e| {
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
                (resource, false)
            }
        };
        self.targets.lock().await.insert(table.name.clone(), diff.columns);
        if table.changes.is_some() && table.key.is_empty() {
            self.ensure_progress_table().await?;
        }
        // The table's creation time tells its instances apart: a table dropped and created
        // again (by hand, by an expiration, in another dataset) is another generation.
        let created_at = resource["creationTime"]
            .as_str()
            .map(str::to_string)
            .or_else(|| resource["creationTime"].as_i64().map(|t| t.to_string()));
        let generation = created_at.map(|t| if table.key.is_empty() { format!("{t}/{ROW_HASH_VERSION}") } else { t });
        Ok(Some(Prepared { generation, created, warnings: self.expiration_warnings(&dataset, &resource) }))
    }
}

#[async_trait]
impl Sink for BigQuerySink {
    fn id(&self) -> &str {
        &self.id
    }

    fn destination(&self) -> String {
        self.destination.clone()
    }

    fn target_name(&self, source: &str, options: &TargetOptions) -> String {
        crate::types::table_id(options.table_name(source))
    }

    async fn probe(&self) -> Result<()> {
        self.client.probe(&self.dataset).await
    }

    async fn plan(&self, table: &TargetTable) -> Result<TargetPlan> {
        let desired = desired_columns(table)?;
        let columns = desired.iter().map(|c| format!("{} {}", c.name, c.ty)).collect();
        let changes = match self.client.get_table(&self.dataset, &table_id(table)).await {
            Ok(existing) => SchemaDiff::new(table, existing.as_ref())?.describe(),
            Err(e) => vec![format!("cannot tell ({e})")],
        };
        Ok(TargetPlan { columns, changes })
    }

    async fn prepare(&self, table: &TargetTable) -> Result<Prepared> {
        // Sharded workers prepare the same target table at once: an attempt that loses a race
        // (the table created meanwhile, its schema changed meanwhile) reads the table again.
        for attempt in 1..=PREPARE_ATTEMPTS {
            if let Some(prepared) = self.prepare_attempt(table, attempt == PREPARE_ATTEMPTS).await? {
                return Ok(prepared);
            }
            tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt))).await;
        }
        Err(ConnectorError::permanent(format!("{}: preparing the target table lost every race", table.name)))
    }

    async fn stage(&self, request: StageRequest<'_>) -> Result<Box<dyn StagingWriter>> {
        let (columns, fields) = Self::staging_fields(request.table, request.tenant, change_fields(&request))?;
        let Some(resume) = request.resume else {
            let shared = self.shared_stage(&request.table.name, &fields).await?;
            let handle = StageHandle { table: shared.table.clone(), writer: self.new_writer_id(), earlier: Vec::new() };
            return Ok(Box::new(self.writer(&request, columns, (shared.stage, false), handle, 0)));
        };
        let tenant = &request.tenant.table;
        let Some(prior) = StageHandle::parse(resume.handle) else {
            return Err(ConnectorError::permanent(format!(
                "{tenant}: staging handle {} is from another version",
                resume.handle
            )));
        };
        let stage_table = prior.table.as_str();
        let Some(existing) = self.client.get_table(&self.staging_dataset, stage_table).await? else {
            return Err(ConnectorError::permanent(format!("{tenant}: staging table {stage_table} is gone (expired?)")));
        };
        let names = |fields: &Json| -> Vec<String> {
            fields
                .as_array()
                .map(|f| f.iter().filter_map(|f| f["name"].as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        };
        if names(&existing["schema"]["fields"]) != names(&json!(fields)) {
            return Err(ConnectorError::permanent(format!("{tenant}: staging table {stage_table} has other columns")));
        }
        // A new writer continues alone in the table the interrupted one began. Its rows are
        // numbered on from `rows`; of the earlier writer only the first `rows` count, since it
        // may have staged more after its last checkpoint (rows a later snapshot may number
        // differently).
        let stage = Arc::new(Mutex::new(self.new_stage(stage_table.to_string(), fields)));
        let mut earlier = prior.earlier.clone();
        earlier.push((prior.writer, resume.rows));
        let handle = StageHandle { table: prior.table.clone(), writer: self.new_writer_id(), earlier };
        Ok(Box::new(self.writer(&request, columns, (stage, true), handle, resume.rows)))
    }

    async fn commit(&self, table: &TargetTable, staged: &[Staged]) -> Result<CommitOutcome> {
        let shared = self.settle_stages(&table.name).await?;
        // Tenants whose rows did not load (or whose handle is unreadable) are left out before
        // anything is applied; the others commit.
        let mut rejected = Vec::new();
        let mut accepted = Vec::new();
        for s in staged {
            let Some(handle) = s.handle.as_deref().and_then(StageHandle::parse) else {
                rejected.push((
                    s.tenant.clone(),
                    ConnectorError::permanent(format!("{}: unreadable staging handle", s.tenant)),
                ));
                continue;
            };
            match writer_failure(&shared, &handle).await {
                Some(e) => rejected.push((s.tenant.clone(), e.context(format!("{}.{}", s.tenant, table.name)))),
                None => accepted.push(s.clone()),
            }
        }
        let plan = self.commit_plan(table).await?;
        let mut summary = CommitSummary { rows_inserted: Some(0), bytes_billed: Some(0), ..Default::default() };
        // One MERGE per table per run; only very large fleets are split into groups. A group
        // that fails after an earlier one committed is reported as not applied, tenant by tenant.
        for (i, group) in accepted.chunks(TENANTS_PER_COMMIT).enumerate() {
            match self.commit_group(table, &plan, group).await {
                Ok(billed) => {
                    summary.rows_inserted =
                        summary.rows_inserted.map(|r| r + group.iter().map(|s| s.rows).sum::<u64>());
                    summary.bytes_billed = summary.bytes_billed.map(|b| b + billed);
                }
                Err(e) if i == 0 && rejected.is_empty() => return Err(e),
                Err(e) => rejected.extend(group.iter().map(|s| (s.tenant.clone(), e.duplicate()))),
            }
        }
        Ok(CommitOutcome { summary, rejected })
    }

    async fn digest_buckets(
        &self,
        table: &TargetTable,
        spec: &DigestSpec,
        tenants: &[String],
    ) -> Result<Vec<(String, BucketDigest)>> {
        self.target_digest_buckets(table, spec, tenants).await
    }

    async fn digest_rows(
        &self,
        table: &TargetTable,
        spec: &DigestSpec,
        wanted: &[(String, u32)],
    ) -> Result<Vec<(String, RowDigest)>> {
        self.target_digest_rows(table, spec, wanted).await
    }

    fn bytes_billed(&self) -> Option<u64> {
        Some(self.billed.load(Ordering::Relaxed))
    }

    async fn json_digests(
        &self,
        table: &TargetTable,
        spec: &DigestSpec,
        tenants: &[String],
    ) -> Result<Vec<(String, BucketDigest)>> {
        self.target_json_digests(table, spec, tenants).await
    }

    async fn json_documents(
        &self,
        table: &TargetTable,
        spec: &DigestSpec,
        tenants: &[String],
        buckets: Option<&[(String, u32)]>,
    ) -> Result<Vec<(String, JsonDigest)>> {
        self.target_json_documents(table, spec, tenants, buckets).await
    }

    async fn repair(
        &self,
        table: &TargetTable,
        spec: &DigestSpec,
        tenant: &str,
        keys: &[String],
        staged: &Staged,
    ) -> Result<CommitSummary> {
        self.repair_keys(table, spec, tenant, keys, staged).await
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
        for stage in tables {
            if let Err(e) = self.client.delete_table(&self.staging_dataset, &stage).await {
                tracing::warn!(table = %stage, error = %e, "could not drop a staging table; it expires within 7 days");
            }
        }
    }

    async fn resolve(&self, handle: &str) -> Result<()> {
        self.client.resolve(handle).await
    }

    async fn drop_tenant(
        &self,
        tenant: &str,
        tables: &[String],
        system: &connector_framework::SystemColumns,
    ) -> Result<u64> {
        self.delete_tenant(tenant, tables, system).await
    }

    async fn truncate(&self, table: &TargetTable, tenant: &str, before: &ChangeSeq) -> Result<()> {
        let target = qualified(self.client.project(), &self.dataset, &table_id(table));
        let sys = &table.system;
        let (t, seq) = (quote_column(&sys.tenant), quote_column(&sys.change_seq));
        let older = format!("{t} = @tenant AND ({seq} IS NULL OR {seq} < @before)");
        let soft = table.changes.is_some_and(|c| c.deletes == CdcDeletes::Soft) && !table.key.is_empty();
        let sql = if soft {
            let deleted = quote_column(&sys.deleted_at);
            format!(
                "UPDATE {target} SET {deleted} = CURRENT_TIMESTAMP(), {seq} = @before WHERE {older} AND {deleted} IS NULL"
            )
        } else {
            format!("DELETE FROM {target} WHERE {older}")
        };
        let params = json!([
            {"name": "tenant", "parameterType": {"type": "STRING"}, "parameterValue": {"value": tenant}},
            {"name": "before", "parameterType": {"type": "STRING"}, "parameterValue": {"value": before.as_str()}},
        ]);
        let job = unique_id("truncate", &[&self.id, &self.dataset, &table.name, tenant, before.as_str()]);
        self.client
            .query(&sql, params, &job, &format!("TRUNCATE of {tenant}.{} from the change stream", table.name))
            .await?;
        Ok(())
    }
}

/// Why the writer of `handle` failed to stage its rows, if it did.
async fn writer_failure(shared: &[SharedStage], handle: &StageHandle) -> Option<ConnectorError> {
    let sh = shared.iter().find(|sh| sh.table == handle.table)?;
    sh.stage.lock().await.writer_failure(handle.writer)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use connector_framework::LogicalType;

    use super::*;
    use crate::client::tests::{Scripted, client};

    fn sink(transport: Arc<Scripted>) -> BigQuerySink {
        let ctx = BuildContext {
            run_id: "run1".into(),
            target_id: "default".into(),
            state_subdir: None,
            retry: Default::default(),
            discard_writes: false,
        };
        let config: BigQuerySinkConfig =
            serde_json::from_value(json!({"project": "p", "dataset": "shops"})).expect("config");
        BigQuerySink::new(&ctx, &config, client(transport, Duration::from_secs(5)))
    }

    #[test]
    fn equal_column_lists_of_a_run_are_one_allocation() {
        let sink = sink(Arc::new(Scripted::default()));
        let list = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let first = sink.shared_list(list(&["id", "amount"]));
        let again = sink.shared_list(list(&["id", "amount"]));
        let other = sink.shared_list(list(&["id", "total"]));
        assert!(Arc::ptr_eq(&first, &again), "a second tenant with the same columns shares the first one's list");
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(&other[..], ["id", "total"]);
    }

    #[tokio::test]
    async fn a_new_table_never_keeps_an_expiration_inherited_from_its_dataset() {
        let transport = Arc::new(Scripted {
            created_with: json!({"expirationTime": "1767225600000", "timePartitioning": {"expirationMs": "5184000000"}}),
            ..Default::default()
        });
        let table = crate::schema::tests::target(&[("id", LogicalType::Int64)], &["id"]);
        let prepared = sink(transport.clone()).prepare(&table).await.expect("prepare");
        let calls = transport.calls.lock().expect("calls").clone();
        assert!(
            calls.iter().any(|c| c.starts_with("query ALTER TABLE `p.shops.orders` SET OPTIONS (expiration_timestamp = NULL, partition_expiration_days = NULL)")),
            "{calls:?}"
        );
        assert!(
            prepared.warnings.iter().all(|w| !w.contains("table shops.orders expires")),
            "the expiration is gone: {:?}",
            prepared.warnings
        );
        assert!(prepared.warnings.iter().any(|w| w.contains("default table expiration")), "{:?}", prepared.warnings);

        let plain = Arc::new(Scripted::default());
        sink(plain.clone()).prepare(&table).await.expect("prepare");
        assert!(!plain.calls.lock().expect("calls").iter().any(|c| c.contains("SET OPTIONS")), "nothing to remove");
    }
}
