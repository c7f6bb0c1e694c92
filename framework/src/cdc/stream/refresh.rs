//! Which tables a target's stream carries, and from where: snapshots for tables it does not
//! carry yet (new, schema changed, position lost), the positions recorded for the others, and
//! tables it stops carrying (dropped, renamed, unreadable).

use std::collections::BTreeSet;

use super::*;

impl TargetStream<'_> {
    /// The selected tables: every configured database (or `--databases`) × its tables.
    pub(super) async fn scope(&self) -> Result<BTreeSet<TableRef>> {
        let mut out = BTreeSet::new();
        for db in self.runner.select_databases(self.selection).await? {
            match self.runner.select_tables(&db, self.selection).await {
                Ok(tables) => out.extend(tables.into_iter().map(|t| TableRef::new(&db, t))),
                // A tenant that cannot be listed (not created yet) joins when its tables appear.
                Err(e) => {
                    tracing::warn!(database = %db, error = %e, "cannot list the tables; they join the stream when they appear")
                }
            }
        }
        Ok(out)
    }

    /// Whether a table seen in the log is one this pipeline syncs.
    pub(super) fn wanted(&self, table: &TableRef) -> bool {
        // run_cdc resolved the tenants into the selection.
        let db_ok = self.runner.source.tenant_selection().matches(&table.database)
            && self.selection.databases.as_ref().is_none_or(|d| d.contains(&table.database));
        let table_ok = (self.runner.tables.is_empty() || self.runner.tables.contains(&table.table))
            && self.selection.tables.as_ref().is_none_or(|t| t.contains(&table.table));
        db_ok && table_ok
    }

    /// Snapshots what needs it in the scope, then loads the scope's tables and positions.
    pub(super) async fn refresh(&mut self, refresh: Refresh) -> Result<()> {
        self.refresh_at(refresh, 0).await
    }

    pub(super) async fn refresh_at(&mut self, refresh: Refresh, depth: u8) -> Result<()> {
        let (scope, mut forced): (BTreeSet<TableRef>, BTreeMap<TableRef, String>) = match refresh {
            Refresh::Nothing => return Ok(()),
            Refresh::All => (self.scope().await?, BTreeMap::new()),
            Refresh::Only(tables) => (tables.keys().cloned().collect(), tables),
        };
        if scope.is_empty() {
            return Ok(());
        }
        let status = self.log.status().await?;
        // Positions the log no longer has, or another server's: those tables start over.
        for table in &scope {
            if forced.contains_key(table) {
                continue;
            }
            let prior = self.load_state(table).await?;
            let Some(cdc) = prior.as_ref().and_then(|p| p.cdc.as_ref()) else { continue };
            let after = self.position_after(table, &cdc.snapshot);
            if after.server != status.head.server {
                forced.insert(table.clone(), format!("the source is another server now ({})", status.head.server));
            } else if after.seq < status.oldest.seq {
                forced.insert(
                    table.clone(),
                    format!("the log before {} was purged from the server", status.oldest.coordinates),
                );
            }
        }
        // Tables the stream carries already take no snapshot (and need no target to be up).
        let mut needs: BTreeSet<TableRef> = BTreeSet::new();
        for t in &scope {
            self.tracked.remove(t);
            if let Some(h) = self.halted.get(t) {
                if h.retry_at > Instant::now() {
                    continue;
                }
                forced.entry(t.clone()).or_insert_with(|| format!("trying again after: {}", h.reason));
            }
            if forced.contains_key(t) || !self.track(t, false).await? {
                needs.insert(t.clone());
            }
        }
        // One snapshot run per table name, for the tenants that need one.
        let mut by_name: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in &needs {
            by_name.entry(t.table.clone()).or_default().push(t.database.clone());
        }
        for (name, dbs) in &by_name {
            if self.stopping() {
                return Ok(());
            }
            let resnapshot = forced
                .iter()
                .filter(|(t, _)| t.table == *name)
                .map(|(t, why)| ((self.target.id.clone(), t.clone()), why.clone()))
                .collect();
            let options = RunOptions {
                databases: Some(dbs.clone()),
                tables: Some(vec![name.clone()]),
                cdc: Some(CdcSnapshots { tracking: self.config.tracking, resnapshot }),
                ..self.selection.clone()
            };
            let report = self.runner.run_locked(&options).await?;
            // The report keeps each table's latest snapshot: one that failed and then worked
            // (a tenant created later) is not a failure.
            for o in report.outcomes {
                self.report.snapshots.retain(|s| (&s.database, &s.table) != (&o.database, &o.table));
                self.report.snapshots.push(o);
            }
        }
        for t in &needs {
            self.track(t, true).await?;
        }
        let names: BTreeSet<String> = scope.iter().map(|t| t.table.clone()).collect();
        let mut renew = BTreeMap::new();
        for name in &names {
            renew.append(&mut self.rebuild_target_table(name).await?);
        }
        if !renew.is_empty() && depth < 2 {
            // Once more for those: their snapshot goes into the target table as it is now.
            return Box::pin(self.refresh_at(Refresh::Only(renew), depth + 1)).await;
        }
        Ok(())
    }

    pub(super) async fn load_state(&self, table: &TableRef) -> Result<Option<TableState>> {
        self.target.state.load_table(&table.database, &table.table).await
    }

    /// A table's own position, or the stream's when that is later, of the same server, and
    /// the stream carried the table when it recorded it (else the stream may have passed
    /// changes of the table it never applied).
    pub(super) fn position_after(&self, table: &TableRef, snapshot: &ChangePosition) -> ChangePosition {
        let carried = self.state.carried.get(&table.database).is_some_and(|t| t.contains(&table.table));
        match &self.state.applied {
            Some(a) if carried && a.server == snapshot.server && a.seq > snapshot.seq => a.clone(),
            _ => snapshot.clone(),
        }
    }

    /// Starts carrying `table` if its state says a snapshot for this stream is in the target;
    /// whether it does. After a snapshot attempt, a table that still cannot stream is held
    /// back (and tried again later).
    pub(super) async fn track(&mut self, table: &TableRef, after_snapshot: bool) -> Result<bool> {
        let Some(prior) = self.load_state(table).await? else { return Ok(false) };
        let options = self.runner.table_options.get(&table.table).cloned().unwrap_or_default();
        let schema = match crate::runner::discover_configured(&self.runner, table).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                if after_snapshot {
                    tracing::warn!(%table, error = %e, "cannot discover the table; it does not stream");
                }
                return Ok(false);
            }
        };
        if let Some(reason) = snapshot_reason(&schema, Some(&prior), None, self.config.tracking) {
            if after_snapshot && (prior.cdc.is_some() || prior.sync_status == crate::state::SyncStatus::Failed) {
                let why = prior.error_message.clone().unwrap_or(reason);
                self.halted.entry(table.clone()).or_insert_with(|| Halted {
                    reason: why,
                    retry_at: Instant::now() + Duration::from_secs(60),
                    backoff: Duration::from_secs(60),
                });
            }
            return Ok(false);
        }
        let Some(cdc) = prior.cdc else { return Ok(false) };
        self.halted.remove(table);
        self.report.stopped_tables.retain(|(t, _)| t != table);
        self.tracked.insert(
            table.clone(),
            Tracked {
                schema,
                excluded: options.exclude_columns.clone(),
                after: self.position_after(table, &cdc.snapshot),
                settled: cdc.settled,
                paused: false,
            },
        );
        Ok(true)
    }

    /// The target table of a table name from its tracked tenants, prepared in the target
    /// (created or evolved as needed). Returns the tenants whose state belongs to another
    /// instance of the target table (dropped and created again since): they need a snapshot.
    pub(super) async fn rebuild_target_table(&mut self, name: &str) -> Result<BTreeMap<TableRef, String>> {
        let mut renew = BTreeMap::new();
        let schemas: Vec<Arc<TableSchema>> =
            self.tracked.iter().filter(|(t, _)| t.table == name).map(|(_, t)| t.schema.clone()).collect();
        if schemas.is_empty() {
            self.target_tables.remove(name);
            return Ok(renew);
        }
        let options = self.runner.table_options.get(name).cloned().unwrap_or_default();
        let unified = crate::runner::unify(name, schemas, &options, &self.runner.settings.system_columns);
        for (table, e) in unified.rejected {
            self.halt(&table, &e).await;
        }
        let Some(mut target_table) = unified.target else {
            self.target_tables.remove(name);
            return Ok(renew);
        };
        target_table.changes = Some(self.config.tracking);
        let prepared = self.target.sink.prepare(&target_table).await?;
        for w in &prepared.warnings {
            tracing::warn!(table = %name, target = %self.target.id, "{w}");
        }
        let tenants: Vec<TableRef> = self.tracked.keys().filter(|t| t.table == name).cloned().collect();
        for t in tenants {
            let stamp = self.load_state(&t).await?.and_then(|s| s.target);
            let same = match (&stamp, &prepared.generation) {
                (Some(s), Some(g)) => {
                    s.generation.as_ref() == Some(g) && s.destination == self.target.sink.destination()
                }
                (Some(s), None) => s.destination == self.target.sink.destination(),
                (None, _) => false,
            };
            if !same {
                self.tracked.remove(&t);
                renew.insert(t, "the target table is new (created, or dropped and recreated)".to_string());
            }
        }
        self.target_tables.insert(name.to_string(), target_table);
        Ok(renew)
    }

    /// Stops streaming a table: its state says why, and a later snapshot takes it up again.
    pub(super) async fn halt(&mut self, table: &TableRef, error: &ConnectorError) {
        self.tracked.remove(table);
        let backoff =
            self.halted.get(table).map_or(Duration::from_secs(60), |h| (h.backoff * 2).min(Duration::from_secs(3600)));
        self.halted
            .insert(table.clone(), Halted { reason: error.to_string(), retry_at: Instant::now() + backoff, backoff });
        Event::StreamTableStopped { table: table.clone(), target: self.target.id.clone(), reason: error.to_string() }
            .emit(&self.runner.listeners);
        self.report.stopped_tables.push((table.clone(), error.to_string()));
        let prior = self.load_state(table).await.ok().flatten();
        let state = TableState::failed(&table.table, prior.as_ref(), Some(SyncMode::Cdc), error);
        if let Err(e) = self.target.state.record(&table.database, state).await {
            tracing::warn!(%table, error = %e, "could not record that the table stopped streaming");
        }
    }

    /// The tables whose positions the log does not have any more.
    pub(super) async fn lost_tables(&mut self) -> Result<BTreeMap<TableRef, String>> {
        let status = self.log.status().await?;
        let mut lost = BTreeMap::new();
        for (table, t) in &self.tracked {
            if t.after.server != status.head.server || t.after.seq < status.oldest.seq {
                lost.insert(table.clone(), format!("its log position {} is gone from the server", t.after));
            }
        }
        if lost.is_empty() {
            // The server refused a position it says it has: start every table over.
            for (table, t) in &self.tracked {
                lost.insert(table.clone(), format!("the server refused the log position {}", t.after));
            }
        }
        if self.state.applied.as_ref().is_some_and(|a| a.seq < status.oldest.seq || a.server != status.head.server) {
            self.state.applied = None;
        }
        Ok(lost)
    }
}
