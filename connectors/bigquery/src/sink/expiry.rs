//! Expirations: BigQuery deletes a table, or its old partitions, when an expiration says so;
//! a new table's inherited ones are removed, and every run warns about the rest.

use serde_json::{Value as Json, json};

use super::BigQuerySink;
use crate::client::DatasetInfo;
use crate::merge::{qualified, unique_id};
use connector_framework::Result;

impl BigQuerySink {
    /// A table created in a dataset with default expirations inherits them, and BigQuery would
    /// delete synced rows (the table, or old partitions) without anyone asking: they are
    /// removed from the new table. Returns the resource as it now is.
    pub(super) async fn clear_inherited_expirations(&self, table: &str, mut resource: Json) -> Result<Json> {
        let mut options = Vec::new();
        if resource.get("expirationTime").is_some_and(|v| !v.is_null()) {
            options.push("expiration_timestamp = NULL");
            resource["expirationTime"] = Json::Null;
        }
        if resource["timePartitioning"].get("expirationMs").is_some_and(|v| !v.is_null()) {
            options.push("partition_expiration_days = NULL");
            resource["timePartitioning"]["expirationMs"] = Json::Null;
        }
        if options.is_empty() {
            return Ok(resource);
        }
        let sql = format!(
            "ALTER TABLE {} SET OPTIONS ({})",
            qualified(self.client.project(), &self.dataset, table),
            options.join(", ")
        );
        let job = unique_id("noexpiry", &[&self.id, &self.dataset, &self.run_id, table]);
        let what = format!("removing the expiration {table} inherited from dataset {}", self.dataset);
        self.client.query(&sql, json!([]), &job, &what).await?;
        tracing::info!(table, dataset = %self.dataset, "removed the expiration the new table inherited from its dataset");
        Ok(resource)
    }

    /// Warnings about expirations that would delete synced rows without telling anyone.
    pub(super) fn expiration_warnings(&self, dataset: &DatasetInfo, table: &Json) -> Vec<String> {
        let mut out = Vec::new();
        let name = table["tableReference"]["tableId"].as_str().unwrap_or("?");
        if let Some(ms) = &dataset.default_table_expiration_ms {
            out.push(format!(
                "dataset {} has a default table expiration ({} days): connector-run removes it from the tables it \
                 creates, but tables made otherwise (or recreated by hand) vanish after that; remove it \
                 (bq update --default_table_expiration 0 {})",
                self.dataset,
                ms.parse::<u64>().unwrap_or(0) / 86_400_000,
                self.dataset
            ));
        }
        if let Some(ms) = &dataset.default_partition_expiration_ms {
            out.push(format!(
                "dataset {} has a default partition expiration ({} days): connector-run removes it from the tables it \
                 creates, but partitions of tables made otherwise are deleted by BigQuery after that; remove it \
                 (bq update --default_partition_expiration 0 {})",
                self.dataset,
                ms.parse::<u64>().unwrap_or(0) / 86_400_000,
                self.dataset
            ));
        }
        if table.get("expirationTime").is_some_and(|v| !v.is_null()) {
            out.push(format!(
                "table {}.{name} expires (expirationTime is set): it and its rows will be deleted then; remove it with \
                 bq update --expiration 0 {}.{name} (a recreated table is then synced in full)",
                self.dataset, self.dataset
            ));
        }
        if table["timePartitioning"].get("expirationMs").is_some_and(|v| !v.is_null()) {
            out.push(format!(
                "table {}.{name} has a partition expiration: BigQuery deletes partitions older than that, and those \
                 rows are not synced again until a full sync",
                self.dataset
            ));
        }
        out
    }
}
