//! `verify`: proves each target table equals the source, tenant by tenant, names every
//! difference by key, and repairs exactly those (`--repair`).
//!
//! ```text
//! per table name: discover every tenant ─► the target table (as a sync would) ─► per tenant a
//!   DigestSpec (plan.rs)
//!   per target:
//!     target digests per bucket, one query for all tenants   Sink::digest_buckets
//!     then source digests per bucket, per tenant              Source::digest_buckets
//!       (target first: a key the source no longer has when read later was really deleted)
//!     buckets that differ ─► row digests on both sides        digest_rows
//!     each differing key classified: missing / extra / different / duplicated, or in flight
//!       when the next sync reads it anyway (its cursor within the lookback)  compare.rs
//!     JSON columns: documents compared by value                json_documents
//!     --repair: the keys re-read from the source and replaced in one transaction, then
//!       verified again                                          repair.rs
//! report ─► exit code (0 equal, 1 differences, 2 could not verify)  report.rs
//! ```

mod compare;
mod json;
mod plan;
mod repair;
mod report;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;

use crate::digest::DigestSpec;
use crate::error::{ConnectorError, Result};
use crate::runner::{RunOptions, Runner, Target};
use crate::schema::TableSchema;
use crate::sink::TargetTable;

pub use report::{Differences, Repaired, TableVerdict, VerdictStatus, VerifyReport};

/// What to verify and how.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Only these databases (`--databases`).
    pub databases: Option<Vec<String>>,
    /// Only these tables (`--tables`).
    pub tables: Option<Vec<String>>,
    /// Compare keys only: finds missing, extra (deleted in the source) and duplicated rows,
    /// not changed content; cheap enough to run daily.
    pub keys_only: bool,
    /// Write the differing keys again (`--repair`).
    pub repair: bool,
    /// Repair even when it deletes more than `repair_max_delete_pct` of a tenant's rows.
    pub force: bool,
    /// Repair only rows the source no longer has (delete detection after a sync).
    pub repair_extra_only: bool,
    /// Repair only these (database, table, target) (delete detection: what the sync just
    /// wrote); `None`: every one verified.
    pub repair_only: Option<std::collections::BTreeSet<(String, String, String)>>,
}

/// One tenant's table as verified: its schema and digest spec, and where its rows stand.
#[derive(Debug, Clone)]
struct Tenant {
    schema: Arc<TableSchema>,
    spec: DigestSpec,
}

impl Runner {
    /// Compares every selected tenant × table of every target with the source.
    pub async fn verify(&self, options: &VerifyOptions) -> Result<VerifyReport> {
        let started = Instant::now();
        let selection =
            RunOptions { databases: options.databases.clone(), tables: options.tables.clone(), ..Default::default() };
        let databases = self.select_databases(&selection).await?;
        self.preflight(false).await?;
        // A repair writes: it holds the run lock, so no sync interleaves with it.
        let locks = if options.repair { self.lock(&selection).await? } else { Vec::new() };
        let mut by_table: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut verdicts = Vec::new();
        for db in &databases {
            match self.select_tables(db, &selection).await {
                Ok(tables) => {
                    for t in tables {
                        by_table.entry(t).or_default().push(db.clone());
                    }
                }
                Err(e) => verdicts.extend(self.targets.iter().map(|t| TableVerdict::failed(db, "*", &t.id, &e))),
            }
        }
        let mut per_table = futures::stream::iter(by_table)
            .map(|(table, dbs)| async move { self.verify_table(&table, &dbs, options).await })
            .buffer_unordered(self.settings.concurrency.max(1));
        while let Some(mut v) = per_table.next().await {
            verdicts.append(&mut v);
        }
        drop(per_table);
        crate::runner::release(locks).await;
        verdicts.sort_by(|a, b| (&a.database, &a.table, &a.target).cmp(&(&b.database, &b.table, &b.target)));
        let bytes_billed = self.targets.iter().filter_map(|t| Some((t.id.clone(), t.sink.bytes_billed()?))).collect();
        Ok(VerifyReport {
            tables: verdicts,
            elapsed_seconds: started.elapsed().as_secs_f64(),
            keys_only: options.keys_only,
            bytes_billed,
        })
    }

    /// Every tenant of one table name, against every target.
    async fn verify_table(&self, name: &str, databases: &[String], options: &VerifyOptions) -> Vec<TableVerdict> {
        let table_options = self.table_options.get(name).cloned().unwrap_or_default();
        let mut out = Vec::new();
        let unified = crate::runner::discover_and_unify(self, name, databases, &table_options).await;
        for (table, e) in &unified.rejected {
            out.extend(self.targets.iter().map(|t| TableVerdict::failed(&table.database, name, &t.id, e)));
        }
        let Some(target_table) = unified.target else { return out };
        let tenants: Vec<Tenant> = unified
            .tenants
            .iter()
            .map(|schema| Tenant {
                schema: schema.clone(),
                spec: plan::digest_spec(schema, &table_options, &self.settings, options.keys_only, &unified.tenants),
            })
            .collect();
        // A key column stored converted cannot be printed alike on both sides: without it the
        // rows could not be told apart.
        let (tenants, unkeyed): (Vec<Tenant>, Vec<Tenant>) =
            tenants.into_iter().partition(|t| t.spec.key.len() == t.schema.key.len());
        for t in &unkeyed {
            let e = unsupported(&format!(
                "{}: a key column has a column_types override, so rows cannot be matched by key; verify compares \
                 tables whose key columns keep their type",
                t.schema.table
            ));
            out.extend(
                self.targets.iter().map(|target| TableVerdict::failed(&t.schema.table.database, name, &target.id, &e)),
            );
        }
        for target in &self.targets {
            out.extend(self.verify_target(target, &target_table, &tenants, options).await);
        }
        out
    }

    /// One target: digests, classification, repair.
    async fn verify_target(
        &self,
        target: &Target,
        table: &TargetTable,
        tenants: &[Tenant],
        options: &VerifyOptions,
    ) -> Vec<TableVerdict> {
        let mut verdicts: Vec<TableVerdict> = Vec::new();
        for group in plan::groups(tenants.iter().map(|t| &t.spec)) {
            let members: Vec<&Tenant> = group.iter().map(|&i| &tenants[i]).collect();
            match self.compare_group(target, table, &members).await {
                Ok(found) => verdicts.extend(found),
                Err(e) => verdicts.extend(
                    members.iter().map(|t| TableVerdict::failed(&t.schema.table.database, &table.name, &target.id, &e)),
                ),
            }
        }
        for verdict in &verdicts {
            // Progress, a line per tenant's table.
            tracing::info!(
                database = %verdict.database, table = %verdict.table, target = %verdict.target,
                status = ?verdict.status, differences = verdict.differences.count(), "verified"
            );
        }
        for verdict in &mut verdicts {
            if let Some(tenant) = tenants.iter().find(|t| t.schema.table.database == verdict.database) {
                for column in plan::uncompared(&tenant.schema, &tenant.spec, options.keys_only) {
                    verdict.notes.push(format!(
                        "column `{column}` not compared: its column_types override stores values the source cannot \
                         reproduce"
                    ));
                }
            }
        }
        if options.repair || options.repair_extra_only {
            let wanted = |v: &TableVerdict| {
                options
                    .repair_only
                    .as_ref()
                    .is_none_or(|only| only.contains(&(v.database.clone(), v.table.clone(), v.target.clone())))
            };
            for verdict in verdicts.iter_mut().filter(|v| v.status == VerdictStatus::Different && wanted(v)) {
                let Some(tenant) = tenants.iter().find(|t| t.schema.table.database == verdict.database) else {
                    continue;
                };
                repair::repair_tenant(self, target, table, tenant, verdict, options).await;
            }
        }
        verdicts
    }

    /// The tenants of one digest group (same columns): the target's digests in one pass, then
    /// each tenant's source digests, compared; drill-down into the buckets that differ.
    async fn compare_group(
        &self,
        target: &Target,
        table: &TargetTable,
        members: &[&Tenant],
    ) -> Result<Vec<TableVerdict>> {
        let spec = &members[0].spec;
        let names: Vec<String> = members.iter().map(|t| t.schema.table.database.clone()).collect();
        // Where the next sync of each tenant starts reading, taken before anything is read: a
        // sync committing meanwhile must not move it past rows read before it.
        let mut windows: BTreeMap<String, Option<String>> = BTreeMap::new();
        for tenant in members {
            let from = compare::in_flight_from(self, target, &tenant.schema, &tenant.spec).await;
            windows.insert(tenant.schema.table.database.clone(), from);
        }
        let target_buckets = target.sink.digest_buckets(table, spec, &names).await?;
        let has_json = spec.columns.iter().any(|c| c.encoding == crate::digest::Encoding::Presence);
        let target_json = if has_json { target.sink.json_digests(table, spec, &names).await? } else { Vec::new() };
        // Tenants whose source cannot digest JSON in SQL: their documents are compared whole.
        let mut json_by_value: Vec<String> = Vec::new();
        let mut verdicts = Vec::new();
        let mut drill: Vec<(usize, Vec<u32>)> = Vec::new();
        let mut source_sides = Vec::new();
        for tenant in members {
            let source_buckets = self
                .retry(&format!("digest {}", tenant.schema.table), || self.source.digest_buckets(&tenant.spec))
                .await;
            source_sides.push(source_buckets);
        }
        for (tenant, source) in members.iter().zip(source_sides) {
            let db = &tenant.schema.table.database;
            let source = match source {
                Ok(s) => s,
                Err(e) => {
                    verdicts.push(TableVerdict::failed(db, &table.name, &target.id, &e));
                    continue;
                }
            };
            let mine: Vec<_> = target_buckets.iter().filter(|(t, _)| t == db).map(|(_, b)| b.clone()).collect();
            let (verdict, mut differing) = compare::buckets(db, &table.name, &target.id, &source, &mine);
            if has_json {
                match json::differing_buckets(db, &source, &target_json) {
                    Some(more) => {
                        differing.extend(more);
                        differing.sort_unstable();
                        differing.dedup();
                    }
                    None => json_by_value.push(db.clone()),
                }
            }
            if !differing.is_empty() {
                drill.push((verdicts.len(), differing));
            }
            verdicts.push(verdict);
        }
        if !drill.is_empty() {
            let wanted: Vec<(String, u32)> = drill
                .iter()
                .flat_map(|(v, buckets)| {
                    let db = verdicts[*v].database.clone();
                    buckets.iter().map(move |b| (db.clone(), *b))
                })
                .collect();
            let target_rows = target.sink.digest_rows(table, spec, &wanted).await?;
            for (v, buckets) in &drill {
                let verdict = &mut verdicts[*v];
                let Some(tenant) = members.iter().find(|t| t.schema.table.database == verdict.database) else {
                    continue;
                };
                let source_rows = self
                    .retry(&format!("digest rows of {}", tenant.schema.table), || {
                        self.source.digest_rows(&tenant.spec, buckets)
                    })
                    .await?;
                let theirs: Vec<_> =
                    target_rows.iter().filter(|(t, _)| *t == verdict.database).map(|(_, r)| r.clone()).collect();
                let in_flight_from = windows.get(&verdict.database).cloned().flatten();
                compare::rows(verdict, &source_rows, &theirs, in_flight_from.as_deref(), tenant.spec.key.is_empty());
                if has_json && !json_by_value.contains(&verdict.database) {
                    json::drill(self, target, table, tenant, buckets, &source_rows, verdict, in_flight_from.as_deref())
                        .await?;
                }
            }
        }
        if !json_by_value.is_empty() {
            json::by_value(self, target, table, members, &json_by_value, &windows, &mut verdicts).await?;
        }
        for v in &mut verdicts {
            v.settle();
        }
        Ok(verdicts)
    }
}

/// A verify error for the whole run.
pub fn unsupported(what: &str) -> ConnectorError {
    ConnectorError::config(format!("verify: {what}"))
}
