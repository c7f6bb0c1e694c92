//! The sink's side of `verify`: digests over a target table (one query for all tenants that
//! share columns), JSON documents, and the transaction of a repair.

use std::collections::BTreeMap;

use connector_framework::digest::{
    BucketDigest, DigestSpec, JsonDigest, RowDigest, bucket_of, digest_hex, digest_value, json_string,
};
use connector_framework::{CommitSummary, ConnectorError, Result, Staged, TargetTable};
use serde_json::{Value as Json, json};

use super::{BigQuerySink, table_id};
use crate::digest;
use crate::merge::{qualified, quote_column, unique_id};
use crate::types::column_name;
use crate::writer::StageHandle;

impl BigQuerySink {
    /// The digest expressions over the target table as it is, or `None` when it does not
    /// exist (every source row is then missing).
    async fn digest_exprs(&self, table: &TargetTable, spec: &DigestSpec) -> Result<Option<(String, digest::Exprs)>> {
        let id = table_id(table);
        let Some(resource) = self.client.get_table(&self.dataset, &id).await? else { return Ok(None) };
        let fields = crate::schema::fields_of(&resource);
        let exprs = digest::Exprs::new(spec, &fields, &table.system, &table.name)?;
        Ok(Some((qualified(self.client.project(), &self.dataset, &id), exprs)))
    }

    /// Runs a verify query (read only) and returns its rows.
    async fn verify_query(
        &self,
        table: &TargetTable,
        sql: &str,
        params: Json,
        what: &str,
    ) -> Result<Vec<Vec<Option<String>>>> {
        let job = unique_id("verify", &[&self.id, &self.dataset, &self.run_id, &table.name, &self.next().to_string()]);
        let (rows, billed) = self.client.query_rows(sql, params, &job, what).await?;
        self.billed.fetch_add(billed.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(table = %table.name, what, bytes_billed = billed.unwrap_or(0), "verify query");
        Ok(rows)
    }

    pub(super) async fn target_digest_buckets(
        &self,
        table: &TargetTable,
        spec: &DigestSpec,
        tenants: &[String],
    ) -> Result<Vec<(String, BucketDigest)>> {
        let Some((target, exprs)) = self.digest_exprs(table, spec).await? else { return Ok(Vec::new()) };
        let what = format!("digests of {} tenants of {}", tenants.len(), table.name);
        let rows = self
            .verify_query(table, &exprs.buckets_sql(&target), json!([digest::strings_param("tenants", tenants)]), &what)
            .await?;
        rows.into_iter()
            .map(|r| {
                let cell = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
                let number = |i: usize| {
                    cell(i)
                        .parse::<u64>()
                        .map_err(|_| ConnectorError::permanent(format!("{}: unreadable digest row {r:?}", table.name)))
                };
                Ok((
                    cell(0),
                    BucketDigest { bucket: number(1)? as u32, rows: number(2)?, sum: cell(3), json_sum: None },
                ))
            })
            .collect()
    }

    pub(super) async fn target_digest_rows(
        &self,
        table: &TargetTable,
        spec: &DigestSpec,
        wanted: &[(String, u32)],
    ) -> Result<Vec<(String, RowDigest)>> {
        let Some((target, exprs)) = self.digest_exprs(table, spec).await? else { return Ok(Vec::new()) };
        let mut tenants: Vec<String> = wanted.iter().map(|(t, _)| t.clone()).collect();
        tenants.sort();
        tenants.dedup();
        let pairs: Vec<String> = wanted.iter().map(|(t, b)| format!("{t}/{b}")).collect();
        let params = json!([digest::strings_param("tenants", &tenants), digest::strings_param("pairs", &pairs)]);
        let what = format!("row digests of {} buckets of {}", wanted.len(), table.name);
        let rows = self.verify_query(table, &exprs.rows_sql(&target), params, &what).await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let cell = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
                (cell(0), RowDigest { key: cell(1), digest: cell(2), cursor: None, json: None })
            })
            .collect())
    }

    /// The spec's JSON columns: (source name, BigQuery name).
    fn json_columns(spec: &DigestSpec) -> Vec<(String, String)> {
        spec.columns
            .iter()
            .filter(|c| c.encoding == connector_framework::digest::Encoding::Presence)
            .map(|c| (c.source.clone(), column_name(&c.target)))
            .collect()
    }

    pub(super) async fn target_json_digests(
        &self,
        table: &TargetTable,
        spec: &DigestSpec,
        tenants: &[String],
    ) -> Result<Vec<(String, BucketDigest)>> {
        let json = Self::json_columns(spec);
        if json.is_empty() {
            return Ok(Vec::new());
        }
        let Some((target, exprs)) = self.digest_exprs(table, spec).await? else { return Ok(Vec::new()) };
        let names: Vec<String> = json.iter().map(|(_, t)| t.clone()).collect();
        let what = format!("JSON digests of {} tenants of {}", tenants.len(), table.name);
        let job = unique_id("verify", &[&self.id, &self.dataset, &self.run_id, &table.name, &self.next().to_string()]);
        let mut sums: BTreeMap<(String, u32), (u64, u128)> = BTreeMap::new();
        // Documents are digested page by page: only the sums are kept.
        let billed = self
            .client
            .query_pages(
                &exprs.json_sql(&target, &names, false),
                json!([digest::strings_param("tenants", tenants)]),
                &job,
                &what,
                |rows| {
                    for r in rows {
                        let tenant = r.first().cloned().flatten().unwrap_or_default();
                        let key = r.get(1).cloned().flatten().unwrap_or_default();
                        let docs: Vec<Option<&str>> =
                            (0..json.len()).map(|i| r.get(i + 2).and_then(|c| c.as_deref())).collect();
                        let value = json_digest_value(&key, &docs);
                        let entry = sums.entry((tenant, bucket_of(&key, spec.buckets))).or_default();
                        entry.0 += 1;
                        entry.1 += value;
                    }
                },
            )
            .await?;
        self.billed.fetch_add(billed.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
        Ok(sums
            .into_iter()
            .map(|((tenant, bucket), (rows, sum))| {
                (tenant, BucketDigest { bucket, rows, sum: String::new(), json_sum: Some(sum.to_string()) })
            })
            .collect())
    }

    pub(super) async fn target_json_documents(
        &self,
        table: &TargetTable,
        spec: &DigestSpec,
        tenants: &[String],
        buckets: Option<&[(String, u32)]>,
    ) -> Result<Vec<(String, JsonDigest)>> {
        let json = Self::json_columns(spec);
        if json.is_empty() {
            return Ok(Vec::new());
        }
        let Some((target, exprs)) = self.digest_exprs(table, spec).await? else { return Ok(Vec::new()) };
        let names: Vec<String> = json.iter().map(|(_, t)| t.clone()).collect();
        let mut params = vec![digest::strings_param("tenants", tenants)];
        if let Some(pairs) = buckets {
            let pairs: Vec<String> = pairs.iter().map(|(t, b)| format!("{t}/{b}")).collect();
            params.push(digest::strings_param("pairs", &pairs));
        }
        let what = format!("JSON documents of {} tenants of {}", tenants.len(), table.name);
        let rows =
            self.verify_query(table, &exprs.json_sql(&target, &names, buckets.is_some()), json!(params), &what).await?;
        let mut out = Vec::new();
        for r in rows {
            let tenant = r.first().cloned().flatten().unwrap_or_default();
            let key = r.get(1).cloned().flatten().unwrap_or_default();
            for (i, (source, _)) in json.iter().enumerate() {
                let text = r.get(i + 2).cloned().flatten();
                out.push((tenant.clone(), JsonDigest { key: key.clone(), column: source.clone(), text, cursor: None }));
            }
        }
        Ok(out)
    }

    pub(super) async fn repair_keys(
        &self,
        table: &TargetTable,
        spec: &DigestSpec,
        tenant: &str,
        keys: &[String],
        staged: &Staged,
    ) -> Result<CommitSummary> {
        let shared = self.settle_stages(&table.name).await?;
        if let Some(handle) = staged.handle.as_deref().and_then(StageHandle::parse)
            && let Some(e) = super::writer_failure(&shared, &handle).await
        {
            return Err(e);
        }
        let plan = self.commit_plan(table).await?;
        let Some((target, exprs)) = self.digest_exprs(table, spec).await? else {
            return Err(ConnectorError::permanent(format!("{}: the target table does not exist", table.name)));
        };
        let columns: Vec<String> = plan.insert_columns().iter().map(|c| quote_column(c)).collect();
        let mut params = vec![
            json!({"name": "tenant", "parameterType": {"type": "STRING"}, "parameterValue": {"value": tenant}}),
            digest::strings_param("keys", keys),
        ];
        // The staged rows' SELECT reads `@tenants`; with no rows staged there is none.
        let mut source_params = vec![digest::strings_param("tenants", [tenant])];
        let insert = match plan.source_query(&[staged], &mut source_params) {
            Some(q) => {
                params.append(&mut source_params);
                format!("INSERT INTO {target} ({}) SELECT * FROM ({q});\n", columns.join(", "))
            }
            None => String::new(),
        };
        let sql = format!(
            "BEGIN TRANSACTION;\nDELETE FROM {target} WHERE {} = @tenant AND {} IN UNNEST(@keys);\n{insert}COMMIT TRANSACTION;",
            exprs.tenant, exprs.key
        );
        let mut parts: Vec<&str> = vec![&self.id, &self.dataset, &self.run_id, &table.name, tenant];
        parts.extend(staged.handle.as_deref());
        let what = format!("repair of {} keys of {tenant}.{}", keys.len(), table.name);
        let outcome = self.client.query(&sql, Json::Array(params), &unique_id("repair", &parts), &what).await?;
        Ok(CommitSummary {
            rows_deleted: outcome.statistic(&["query", "numDmlAffectedRows"]).map(|n| n.saturating_sub(staged.rows)),
            rows_inserted: Some(staged.rows),
            bytes_billed: outcome.statistic(&["query", "totalBytesBilled"]),
        })
    }
}

/// A row's JSON digest as an integer (see `connector_framework::digest::json_string`).
fn json_digest_value(key: &str, docs: &[Option<&str>]) -> u128 {
    digest_value(&digest_hex(&json_string(key, docs)))
}
