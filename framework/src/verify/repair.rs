//! `verify --repair`: the differing keys of one tenant read again from the source and written
//! over the target's rows for those keys in one transaction; nothing else is touched, no
//! watermark moves; then the tenant is verified again.

use crate::sink::{StageRequest, TargetTable, WriteMode};
use crate::source::{ReadRange, ReadRequest};
use crate::state::SyncMode;

use super::report::Repaired;
use super::{Runner, TableVerdict, Target, Tenant, VerifyOptions};

/// Repairs one tenant's table in one target when its differences allow it.
pub(super) async fn repair_tenant(
    runner: &Runner,
    target: &Target,
    table: &TargetTable,
    tenant: &Tenant,
    verdict: &mut TableVerdict,
    options: &VerifyOptions,
) {
    let d = &verdict.differences;
    let mut keys: Vec<String> = if options.repair_extra_only {
        d.extra.clone()
    } else {
        d.missing.iter().chain(&d.extra).chain(&d.different).chain(&d.duplicated).cloned().collect()
    };
    keys.sort();
    keys.dedup();
    if keys.is_empty() {
        return;
    }
    // A table a change stream writes is repaired by the stream (or a new snapshot), and rows
    // it soft-deleted must not be deleted for real.
    if let Some(why) = not_repairable(target, tenant).await {
        verdict.repaired = Some(Repaired { refused: Some(why), ..Default::default() });
        return;
    }
    // A source read that came back short looks exactly like a mass delete: refuse to remove
    // more than the configured share of a tenant's rows unless forced. Rows, not keys: a key
    // of a table without one stands for all its copies.
    let deletes = d.rows_removed();
    let limit = runner.settings.repair_max_delete_pct;
    if !options.force && verdict.target_rows > 0 && deletes as f64 * 100.0 > limit * verdict.target_rows as f64 {
        verdict.repaired = Some(Repaired {
            keys: 0,
            refused: Some(format!(
                "it would delete {deletes} of the target's {} rows of this tenant, more than repair_max_delete_pct \
                 {limit} %; check the source, then run verify --repair --force to repair anyway",
                verdict.target_rows
            )),
            ..Default::default()
        });
        return;
    }
    // The rows the repair writes may be rows the state's window digests say the target holds
    // as they were: they no longer do, so the next sync sends its whole window again.
    if let Some((_, e)) = crate::window::forget(target.state.as_ref(), &[&tenant.schema.table]).await.pop() {
        verdict.repaired = Some(Repaired { error: Some(e.to_string()), ..Default::default() });
        return;
    }
    let result = write_again(runner, target, table, tenant, &keys).await;
    let mut repaired = Repaired { keys: keys.len(), ..Default::default() };
    match result {
        Ok(summary) => {
            repaired.rows_deleted = summary.rows_deleted;
            repaired.rows_inserted = summary.rows_inserted;
            repaired.equal_after = equal_now(runner, target, table, tenant).await;
        }
        Err(e) => repaired.error = Some(e.to_string()),
    }
    verdict.repaired = Some(repaired);
}

/// Why this tenant's table is not repaired by verify, if so.
async fn not_repairable(target: &Target, tenant: &Tenant) -> Option<String> {
    let table = &tenant.schema.table;
    let streamed = target.state.load(&table.database).await.ok()?.table(&table.table).is_some_and(|s| s.cdc.is_some());
    if streamed {
        return Some(
            "the table is streamed (--cdc): differences may be changes not applied yet; run --cdc --catch-up, \
             verify again, and take a new snapshot (--cdc --full) if they stay"
                .to_string(),
        );
    }
    tenant.spec.skip_soft_deleted.then(|| {
        "cdc_deletes is soft: repairing would delete rows the stream keeps as tombstones; sync the tenant with \
         --cdc --full instead"
            .to_string()
    })
}

/// Reads the keys' rows from the source, stages them, and lets the sink replace the target's
/// rows of those keys.
async fn write_again(
    runner: &Runner,
    target: &Target,
    table: &TargetTable,
    tenant: &Tenant,
    keys: &[String],
) -> crate::error::Result<crate::sink::CommitSummary> {
    target.sink.prepare(table).await?;
    let request =
        StageRequest { table, tenant: &tenant.schema, mode: SyncMode::Repair, write: WriteMode::Merge, resume: None };
    let mut writer = target.sink.stage(request).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let read = ReadRequest::new(
        tenant.schema.clone(),
        ReadRange::Keys { digest: Box::new(tenant.spec.clone()), keys: keys.to_vec() },
        runner.settings.batch_size,
    );
    let source = runner.source.clone();
    let reader = tokio::spawn(async move { source.read(read, crate::source::BatchSender::new(tx)).await });
    while let Some(batch) = rx.recv().await {
        writer.write(&batch).await?;
    }
    reader.await.map_err(|e| crate::error::ConnectorError::permanent(format!("the repair read failed: {e}")))??;
    let staged = writer.finish().await?;
    let summary = target.sink.repair(table, &tenant.spec, &tenant.schema.table.database, keys, &staged).await;
    target.sink.discard(std::slice::from_ref(&staged)).await;
    summary
}

/// Whether the tenant's table has no difference now (changes in flight allowed: the next
/// sync reads them).
async fn equal_now(runner: &Runner, target: &Target, table: &TargetTable, tenant: &Tenant) -> bool {
    match runner.compare_group(target, table, &[tenant]).await {
        Ok(verdicts) => verdicts.iter().all(|v| v.status == super::VerdictStatus::Equal),
        Err(_) => false,
    }
}
