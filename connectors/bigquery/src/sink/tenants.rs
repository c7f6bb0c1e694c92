//! `drop_missing_tenants`: a gone tenant's rows deleted from its tables in one transaction.

use connector_framework::{Result, SystemColumns};
use serde_json::json;

use super::BigQuerySink;
use crate::merge::{qualified, quote_column, unique_id};
use crate::types::table_id;

impl BigQuerySink {
    /// Counts the tenant's rows in the tables that exist, then deletes them all in one
    /// transaction (all tables or none). Nothing else writes a gone tenant's rows, so the count
    /// is what the delete removes.
    pub(super) async fn delete_tenant(&self, tenant: &str, tables: &[String], system: &SystemColumns) -> Result<u64> {
        let mut targets = Vec::new();
        for name in tables {
            let id = table_id(name);
            if self.client.get_table(&self.dataset, &id).await?.is_some() {
                targets.push(qualified(self.client.project(), &self.dataset, &id));
            }
        }
        if targets.is_empty() {
            return Ok(0);
        }
        let column = quote_column(&system.tenant);
        let params =
            json!([{"name": "tenant", "parameterType": {"type": "STRING"}, "parameterValue": {"value": tenant}}]);
        let counts: Vec<String> =
            targets.iter().map(|t| format!("SELECT COUNT(*) AS n FROM {t} WHERE {column} = @tenant")).collect();
        let count_sql = format!("SELECT SUM(n) FROM ({})", counts.join(" UNION ALL "));
        let parts: Vec<&str> = vec![&self.id, &self.dataset, &self.run_id, tenant];
        let what = format!("counting the rows of gone tenant {tenant}");
        let (rows, _) =
            self.client.query_rows(&count_sql, params.clone(), &unique_id("count_tenant", &parts), &what).await?;
        let found: u64 =
            rows.first().and_then(|r| r.first().cloned().flatten()).and_then(|n| n.parse().ok()).unwrap_or(0);
        let deletes: Vec<String> =
            targets.iter().map(|t| format!("DELETE FROM {t} WHERE {column} = @tenant;")).collect();
        let sql = format!("BEGIN TRANSACTION;\n{}\nCOMMIT TRANSACTION;", deletes.join("\n"));
        let what = format!("deleting the rows of gone tenant {tenant} from {} tables", targets.len());
        self.client.query(&sql, params, &unique_id("drop_tenant", &parts), &what).await?;
        Ok(found)
    }
}
