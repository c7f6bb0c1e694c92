//! Which tables a target's stream cannot carry yet, and why: they are read in full at a
//! captured log position (the runner's full sync with `capture_position`), and the stream
//! takes over after it.

use crate::runner::fingerprint;
use crate::schema::TableSchema;
use crate::sink::{ChangeTracking, WriteMode};
use crate::source::ReadRange;
use crate::state::{SyncMode, SyncStatus, TableState, TargetStamp};
use crate::strategy::TablePlan;

/// The snapshot plan for one tenant × target, or `None` when its stream carries the table
/// already (its state holds a snapshot position for this very target table and schema).
/// `forced` is a reason the caller found to take a new snapshot anyway.
pub fn snapshot_plan(
    schema: &TableSchema,
    prior: Option<&TableState>,
    stamp: &TargetStamp,
    tracking: ChangeTracking,
    forced: Option<&str>,
) -> Option<TablePlan> {
    let reason = match forced {
        Some(f) => f.to_string(),
        None => snapshot_reason(schema, prior, Some(stamp), tracking)?,
    };
    Some(TablePlan {
        mode: SyncMode::Full,
        write: WriteMode::ReplaceTenant,
        range: ReadRange::Full,
        cursor: None,
        reason: format!("CDC snapshot: {reason}"),
        warnings: Vec::new(),
    })
}

/// Why a table's state does not let the stream carry it (`None`: it does). Without `stamp`
/// (before the target table was looked at) the target is not compared.
pub fn snapshot_reason(
    schema: &TableSchema,
    prior: Option<&TableState>,
    stamp: Option<&TargetStamp>,
    tracking: ChangeTracking,
) -> Option<String> {
    let Some(prior) = prior else { return Some("first sync".into()) };
    let Some(cdc) = &prior.cdc else {
        return Some("no change-stream position yet (synced by cursor until now)".into());
    };
    if prior.sync_status != SyncStatus::Success {
        return Some("the table stopped streaming (see its last error); a new snapshot".into());
    }
    if let Some(now) = stamp {
        match &prior.target {
            None => return Some("the state does not record its target table".into()),
            Some(then) if then.destination != now.destination || !then.table.eq_ignore_ascii_case(&now.table) => {
                return Some(format!("the state was written for another target ({})", then.destination));
            }
            Some(then) if now.generation.is_some() && now.generation != then.generation => {
                return Some("the target table is new (created, or dropped and recreated)".into());
            }
            Some(_) => {}
        }
    }
    if prior.schema_fingerprint.as_deref() != Some(fingerprint(schema).as_str()) {
        return Some("the table's columns or key changed".into());
    }
    if cdc.deletes != tracking.deletes {
        return Some("cdc_deletes changed".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{ChangePosition, ChangeSeq};
    use crate::pipeline::CdcDeletes;
    use crate::schema::LogicalType;
    use crate::state::CdcTableState;
    use crate::testkit::{prior_state, schema_of};

    fn streaming(schema: &TableSchema, stamp: &TargetStamp) -> TableState {
        let mut p = prior_state("orders", SyncStatus::Success);
        p.sync_mode = SyncMode::Cdc;
        p.target = Some(stamp.clone());
        p.schema_fingerprint = Some(fingerprint(schema));
        p.cdc = Some(Box::new(CdcTableState {
            snapshot: ChangePosition {
                seq: ChangeSeq::new(1, 4, 0),
                coordinates: "bin.000001:4".into(),
                server: "server_id=1".into(),
                gtid: None,
            },
            settled: None,
            deletes: CdcDeletes::Delete,
        }));
        p
    }

    #[test]
    fn only_a_table_the_stream_carries_for_this_target_and_schema_skips_the_snapshot() {
        let schema = schema_of("shop1", "orders", &[("id", LogicalType::Int64)], &["id"]);
        let stamp = TargetStamp { destination: "bq p.d".into(), table: "orders".into(), generation: Some("1".into()) };
        let tracking = ChangeTracking { deletes: CdcDeletes::Delete };
        let ok = streaming(&schema, &stamp);
        assert!(snapshot_plan(&schema, Some(&ok), &stamp, tracking, None).is_none());
        assert!(snapshot_plan(&schema, Some(&ok), &stamp, tracking, Some("purged")).is_some());
        assert!(snapshot_plan(&schema, None, &stamp, tracking, None).is_some());
        let cursor = prior_state("orders", SyncStatus::Success);
        let plan = snapshot_plan(&schema, Some(&cursor), &stamp, tracking, None).unwrap();
        assert!(plan.reason.contains("synced by cursor"), "{}", plan.reason);
        assert_eq!((plan.mode, plan.write), (SyncMode::Full, WriteMode::ReplaceTenant));
        let new_table = TargetStamp { generation: Some("2".into()), ..stamp.clone() };
        assert!(snapshot_plan(&schema, Some(&ok), &new_table, tracking, None).is_some());
        let wider = schema_of("shop1", "orders", &[("id", LogicalType::Int64), ("x", LogicalType::String)], &["id"]);
        assert!(snapshot_plan(&wider, Some(&ok), &stamp, tracking, None).is_some());
        let soft = ChangeTracking { deletes: CdcDeletes::Soft };
        assert!(snapshot_plan(&schema, Some(&ok), &stamp, soft, None).is_some());
        let mut failed = ok.clone();
        failed.sync_status = SyncStatus::Failed;
        assert!(snapshot_plan(&schema, Some(&failed), &stamp, tracking, None).is_some());
    }
}
