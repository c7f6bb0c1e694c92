//! A run's tenants: the source's selection (names, or patterns matched against the server's
//! databases at the start of every run), narrowed to this worker's share (`--shard`) and to
//! `--databases`; compared with the tenants the state knows (new, present, gone); and, with
//! `drop_missing_tenants`, the rows of the gone ones deleted from every target.

use std::collections::BTreeSet;

use super::{RunOptions, Runner};
use crate::error::{ConnectorError, Result};
use crate::sink::TargetOptions;
use crate::tenants::{DroppedTenant, TenantChanges};

impl Runner {
    /// The tenants a run with `options` would sync, compared with the state: new, present and
    /// gone (what `status` shows). Reads, never writes.
    pub async fn tenant_overview(&self, options: &RunOptions) -> Result<TenantChanges> {
        let databases = self.select_databases(options).await?;
        Ok(self.tenant_changes(&databases, options).await)
    }

    /// The tenants this run syncs, in order. A selection of names is taken as it is; one with
    /// patterns asks the server which databases it has now.
    pub(crate) async fn select_databases(&self, options: &RunOptions) -> Result<Vec<String>> {
        let selection = self.source.tenant_selection();
        let owned = |db: &String| options.shard.is_none_or(|s| s.owns(db));
        if let Some(wanted) = &options.databases {
            let unknown: Vec<&String> = wanted.iter().filter(|w| !selection.matches(w)).collect();
            if !unknown.is_empty() {
                return Err(ConnectorError::config(format!(
                    "--databases: {} not in the pipeline's databases ({}); nothing was synced",
                    unknown.iter().map(|w| format!("`{w}` is")).collect::<Vec<_>>().join(", "),
                    selection.describe()
                )));
            }
            let mut chosen: Vec<String> = wanted.iter().filter(|d| owned(d)).cloned().collect();
            if selection.is_static() {
                // The configured order, as without --databases.
                let order = selection.names();
                chosen.sort_by_key(|d| order.iter().position(|o| o == d));
            }
            chosen.dedup();
            return Ok(chosen);
        }
        let all = if selection.is_static() {
            selection.names()
        } else {
            let on_server = self.retry("list the server's databases", || self.source.list_databases()).await?;
            let found = selection.select(&on_server);
            if found.is_empty() {
                tracing::warn!(databases = %selection.describe(), "no database on the server matches the tenant list");
            }
            found
        };
        Ok(all.into_iter().filter(|d| owned(d)).collect())
    }

    /// How `databases` compare with the tenants the targets' state knows. Tenants are gone only
    /// under a selection with patterns, and only those of this worker's share: a listed name
    /// the server lacks fails its tables instead, and `--databases` looks at no others.
    pub(crate) async fn tenant_changes(&self, databases: &[String], options: &RunOptions) -> TenantChanges {
        let mut known = BTreeSet::new();
        for target in &self.targets {
            match target.state.databases().await {
                Ok(names) => known.extend(names),
                Err(e) => {
                    tracing::warn!(target = %target.id, error = %e, "cannot list the tenants the state knows; none is taken for new or gone");
                    return TenantChanges { present: databases.to_vec(), ..Default::default() };
                }
            }
        }
        let (present, new): (Vec<String>, Vec<String>) = databases.iter().cloned().partition(|d| known.contains(d));
        let selection = self.source.tenant_selection();
        let gone = if selection.is_static() || options.databases.is_some() {
            Vec::new()
        } else {
            let here: BTreeSet<&String> = databases.iter().collect();
            known
                .iter()
                .filter(|d| !here.contains(d) && selection.matches(d) && !selection.is_listed(d))
                .filter(|d| options.shard.is_none_or(|s| s.owns(d)))
                .cloned()
                .collect()
        };
        TenantChanges { new, present, gone, dropped: Vec::new() }
    }

    /// `drop_missing_tenants`: for each gone tenant and target, its rows deleted from every
    /// table its state names (one atomic delete per target), then its state forgotten. A target
    /// that fails keeps the tenant's state, so the next run tries again.
    pub(crate) async fn drop_gone(&self, changes: &mut TenantChanges) {
        // An empty or much shorter list of databases is more often lost grants, a wrong
        // replica or a mistyped pattern than a fleet that shrank by half: nothing is deleted then.
        let known = changes.present.len() + changes.gone.len();
        if !changes.gone.is_empty() && (changes.present.is_empty() || changes.gone.len() * 2 > known) {
            let why = format!(
                "not deleted: {} of the {known} tenants with state would go at once{}; check the user's grants \
                 and the db_list patterns, or delete them by hand",
                changes.gone.len(),
                if changes.present.is_empty() { " (the server showed none of them)" } else { "" }
            );
            tracing::error!("{why}");
            for tenant in &changes.gone {
                for target in &self.targets {
                    changes.dropped.push(DroppedTenant {
                        tenant: tenant.clone(),
                        target: target.id.clone(),
                        outcome: Err(why.clone()),
                    });
                }
            }
            return;
        }
        for tenant in &changes.gone {
            for target in &self.targets {
                let outcome = self.drop_tenant_from(target, tenant).await.map_err(|e| e.to_string());
                if let Err(e) = &outcome {
                    tracing::error!(tenant = %tenant, target = %target.id, error = %e, "cannot drop the gone tenant's rows");
                }
                changes.dropped.push(DroppedTenant { tenant: tenant.clone(), target: target.id.clone(), outcome });
            }
        }
    }

    async fn drop_tenant_from(&self, target: &super::Target, tenant: &str) -> Result<u64> {
        let state = target.state.load(tenant).await?;
        let tables: Vec<String> = state
            .tables
            .keys()
            .map(|t| {
                let options = self.table_options.get(t).map(TargetOptions::from).unwrap_or_default();
                target.sink.target_name(t, &options)
            })
            .collect();
        let deleted = target.sink.drop_tenant(tenant, &tables, &self.settings.system_columns).await?;
        target.state.forget(tenant, None).await?;
        tracing::info!(tenant, target = %target.id, rows = deleted, "dropped the gone tenant");
        Ok(deleted)
    }
}
