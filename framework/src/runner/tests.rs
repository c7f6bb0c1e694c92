//! Runner tests against the test kit's in-memory source, sink and state.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::report::OutcomeStatus;
use crate::source::ReadRange;
use crate::state::{SyncMode, SyncStatus, TableState};
use crate::strategy::{CursorStrategy, PlanOptions};
use crate::testkit::{
    CollectingSink, MemorySource, MemoryStateStore, sample_table, sink_conformance, source_conformance,
};
use crate::value::Value;

fn runner(source: MemorySource, targets: Vec<(&str, CollectingSink, MemoryStateStore)>, settings: Settings) -> Runner {
    Runner {
        source: Arc::new(source),
        targets: targets
            .into_iter()
            .map(|(id, sink, state)| Target { id: id.into(), sink: Arc::new(sink), state: Arc::new(state) })
            .collect(),
        strategy: Arc::new(CursorStrategy),
        settings,
        tables: vec!["orders".into()],
        table_options: BTreeMap::new(),
        listeners: Vec::new(),
        stop: Arc::default(),
    }
}

fn source_with(tenants: &[(&str, usize)]) -> MemorySource {
    let source = MemorySource { databases: tenants.iter().map(|(d, _)| d.to_string()).collect(), ..Default::default() };
    for (db, rows) in tenants {
        let (schema, rows) = sample_table(db, "orders", *rows);
        source.add_table(schema, rows);
    }
    source
}

/// The ids of the rows committed for `tenant`'s orders, sorted.
fn committed_ids(sink: &CollectingSink, tenant: &str) -> Vec<i64> {
    let mut ids: Vec<i64> = sink
        .committed_rows("orders", tenant)
        .iter()
        .map(|r| match r[0] {
            crate::Value::Int(i) => i,
            _ => -1,
        })
        .collect();
    ids.sort();
    ids
}

/// What a [`Hooked`] sink does to resolve a write in doubt.
type ResolveFn = Arc<dyn Fn(String) -> futures::future::BoxFuture<'static, Result<()>> + Send + Sync>;

/// A collecting sink with a hook before each `prepare` (an error it returns fails it) and
/// before each `commit`, and one that resolves writes in doubt.
#[derive(Clone)]
struct Hooked {
    id: &'static str,
    inner: CollectingSink,
    before_prepare: Arc<dyn Fn() -> Option<ConnectorError> + Send + Sync>,
    before_commit: Arc<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync>,
    resolve: ResolveFn,
}

impl Hooked {
    /// Hooks that do nothing, around `inner`.
    fn around(id: &'static str, inner: CollectingSink) -> Self {
        Self {
            id,
            inner,
            before_prepare: Arc::new(|| None),
            before_commit: Arc::new(|| Box::pin(async {})),
            resolve: Arc::new(|_| Box::pin(async { Ok(()) })),
        }
    }
}

impl std::fmt::Debug for Hooked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooked").field("id", &self.id).finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Sink for Hooked {
    fn id(&self) -> &str {
        self.id
    }
    fn destination(&self) -> String {
        self.id.into()
    }
    async fn plan(&self, t: &crate::sink::TargetTable) -> Result<crate::sink::TargetPlan> {
        self.inner.plan(t).await
    }
    async fn prepare(&self, t: &crate::sink::TargetTable) -> Result<crate::sink::Prepared> {
        match (self.before_prepare)() {
            Some(e) => Err(e),
            None => self.inner.prepare(t).await,
        }
    }
    async fn stage(&self, r: crate::sink::StageRequest<'_>) -> Result<Box<dyn crate::sink::StagingWriter>> {
        self.inner.stage(r).await
    }
    async fn commit(
        &self,
        t: &crate::sink::TargetTable,
        s: &[crate::sink::Staged],
    ) -> Result<crate::sink::CommitOutcome> {
        (self.before_commit)().await;
        self.inner.commit(t, s).await
    }
    async fn discard(&self, s: &[crate::sink::Staged]) {
        self.inner.discard(s).await
    }
    async fn resolve(&self, handle: &str) -> Result<()> {
        (self.resolve)(handle.to_string()).await
    }
}

#[tokio::test]
async fn one_read_fans_out_to_every_target_and_a_failing_target_blocks_no_other() {
    let source = source_with(&[("a", 7), ("b", 7)]);
    let good = CollectingSink::new("good");
    let bad = CollectingSink { fail_with: Some("target unreachable".into()), ..CollectingSink::new("bad") };
    let (good_state, bad_state) = (MemoryStateStore::default(), MemoryStateStore::default());
    let runner = runner(
        source,
        vec![("good", good.clone(), good_state.clone()), ("bad", bad, bad_state.clone())],
        Settings { batch_size: 3, max_retries: 0, ..Default::default() },
    );
    let report = runner.run(&RunOptions::default()).await.unwrap();
    assert_eq!(report.outcomes.len(), 4);
    assert_eq!(good.committed_rows("orders", "a").len(), 7);
    assert_eq!(good.commits.lock().unwrap().len(), 1, "one commit per table for all tenants");
    for o in &report.outcomes {
        assert_eq!(o.status == OutcomeStatus::Success, o.target == "good", "{o:?}");
    }
    let bad_entry = bad_state.load("a").await.unwrap().table("orders").cloned().unwrap();
    assert_eq!(bad_entry.sync_status, SyncStatus::Failed);
    assert!(bad_entry.error_message.unwrap().contains("target unreachable"));
    let good_entry = good_state.load("b").await.unwrap().table("orders").cloned().unwrap();
    assert_eq!(good_entry.sync_status, SyncStatus::Success);
    assert_eq!(good_entry.records_synced, 7);
    assert!(good_entry.watermark.is_some());
    assert!(good_entry.target.is_some() && good_entry.schema_fingerprint.is_some(), "{good_entry:?}");

    // The next run: the good target goes incremental.
    let plan = runner.strategy.plan(
        &sample_table("a", "orders", 0).0,
        Some(&good_entry),
        &PlanOptions { target: good_entry.target.clone(), ..Default::default() },
    );
    assert_eq!(plan.mode, SyncMode::Incremental);
}

#[tokio::test]
async fn the_testkit_conformance_checks_pass_for_the_testkit_itself() {
    let source = source_with(&[("a", 5)]);
    let checks = source_conformance(&source, &TableRef::new("a", "orders")).await.unwrap();
    assert_eq!(checks, ["full", "since", "key ranges", "key bounds"]);
    // NULL cursors: `Since` returns them only when asked and counts them when not.
    let with_nulls = MemorySource { databases: vec!["n".into()], ..Default::default() };
    let (schema, mut rows) = sample_table("n", "orders", 6);
    rows[1][2] = crate::value::Value::Null;
    rows[4][2] = crate::value::Value::Null;
    with_nulls.add_table(schema, rows);
    let checks = source_conformance(&with_nulls, &TableRef::new("n", "orders")).await.unwrap();
    assert_eq!(checks, ["full", "since", "key ranges", "key bounds"]);
    let sink = CollectingSink::new("c");
    assert_eq!(sink_conformance(&sink, "t").await.unwrap().len(), 5);
    assert_eq!(sink.committed_rows("t", "tenant_b").len(), 3);
}

#[tokio::test]
async fn a_full_sync_interrupted_mid_ranges_resumes_after_its_last_checkpoint() {
    let source = source_with(&[("a", 10)]);
    // The third key range fails, as a lost connection would, after two were checkpointed.
    *source.fail_read.lock().unwrap() = Some(3);
    let sink = CollectingSink::new("t");
    let state = MemoryStateStore::default();
    let settings = Settings { batch_size: 2, max_retries: 0, chunk_rows: 3, ..Default::default() };
    let first = runner(source.clone(), vec![("t", sink.clone(), state.clone())], settings.clone());
    let report = first.run(&RunOptions::default()).await.unwrap();
    assert_eq!(report.failed(), 1);
    assert!(sink.commits.lock().unwrap().is_empty(), "nothing visible before the commit");
    let interrupted = state.load("a").await.unwrap().table("orders").cloned().unwrap();
    let point = interrupted.resume.clone().expect("a resume point");
    assert_eq!((point.after_key.as_str(), point.rows), ("5", 6));

    *source.fail_read.lock().unwrap() = None;
    source.requests.lock().unwrap().clear();
    let second = runner(source.clone(), vec![("t", sink.clone(), state.clone())], settings);
    let report = second.run(&RunOptions::default()).await.unwrap();
    assert_eq!(report.failed(), 0, "{report:?}");
    let requests = source.requests.lock().unwrap().clone();
    assert_eq!(
        requests[0],
        ReadRange::KeyRange { key: "id".into(), after: Some("5".into()), until: None, limit: 3 },
        "the rerun starts after the last checkpointed key"
    );
    assert_eq!(sink.resumes.lock().unwrap()[0].1, 6);
    assert_eq!(committed_ids(&sink, "a"), (0..10).collect::<Vec<_>>(), "every row exactly once");
    assert!(state.load("a").await.unwrap().table("orders").unwrap().resume.is_none());
}

#[tokio::test]
async fn a_big_table_is_read_in_segments_side_by_side_and_resumes_each_where_it_stopped() {
    let source = MemorySource { databases: vec!["a".into()], ..Default::default() };
    let (mut schema, rows) = sample_table("a", "orders", 20);
    schema.estimated_rows = Some(20);
    source.add_table(schema, rows);
    // Two segments (0..=9 and 10..) in ranges of 3: rounds of two reads. The fifth read (in
    // the third round) fails, after two rounds were checkpointed.
    *source.fail_read.lock().unwrap() = Some(5);
    let sink = CollectingSink::new("t");
    let state = MemoryStateStore::default();
    let settings = Settings { batch_size: 2, max_retries: 0, chunk_rows: 3, range_readers: 2, ..Default::default() };
    let first = runner(source.clone(), vec![("t", sink.clone(), state.clone())], settings.clone());
    assert_eq!(first.run(&RunOptions::default()).await.unwrap().failed(), 1);
    let range = |after: Option<&str>, until: Option<&str>| ReadRange::KeyRange {
        key: "id".into(),
        after: after.map(Into::into),
        until: until.map(Into::into),
        limit: 3,
    };
    let sorted = |mut r: Vec<ReadRange>| {
        r.sort_by_key(|r| format!("{r:?}"));
        r
    };
    let requests = source.requests.lock().unwrap().clone();
    assert_eq!(sorted(requests[..2].to_vec()), sorted(vec![range(None, Some("9")), range(Some("9"), None)]));
    let point = state.load("a").await.unwrap().table("orders").cloned().unwrap().resume.expect("a resume point");
    let left = |after: &str, until: Option<&str>| crate::state::KeySegment {
        after: Some(after.into()),
        until: until.map(Into::into),
    };
    assert_eq!(point.segments, [left("5", Some("9")), left("15", None)]);
    assert_eq!(point.rows, 12);
    assert!(point.schema_fingerprint.ends_with(crate::state::SEGMENTED), "older versions must not resume it");

    // Resumed with one reader: the segments left are read one after the other, each from
    // after its last checkpointed key.
    *source.fail_read.lock().unwrap() = None;
    source.requests.lock().unwrap().clear();
    let one_reader = Settings { range_readers: 1, ..settings };
    let second = runner(source.clone(), vec![("t", sink.clone(), state.clone())], one_reader);
    let report = second.run(&RunOptions::default()).await.unwrap();
    assert_eq!(report.failed(), 0, "{report:?}");
    let requests = source.requests.lock().unwrap().clone();
    assert_eq!(
        requests,
        [range(Some("5"), Some("9")), range(Some("8"), Some("9")), range(Some("15"), None), range(Some("18"), None)]
    );
    let window = report.outcomes[0].window.clone().unwrap_or_default();
    assert!(window.contains("2 segments read 1 at a time, resumed after id = 5, id = 15"), "{window}");
    assert_eq!(sink.resumes.lock().unwrap()[0].1, 12);
    assert_eq!(committed_ids(&sink, "a"), (0..20).collect::<Vec<_>>(), "every row exactly once");
    assert!(state.load("a").await.unwrap().table("orders").unwrap().resume.is_none());
}

#[tokio::test]
async fn a_tenant_whose_commit_fails_fails_alone() {
    let source = source_with(&[("a", 3), ("b", 3), ("c", 3), ("d", 3)]);
    let sink = CollectingSink { fail_commit_of: Some("c".into()), ..CollectingSink::new("t") };
    let state = MemoryStateStore::default();
    let runner =
        runner(source, vec![("t", sink.clone(), state.clone())], Settings { max_retries: 0, ..Default::default() });
    let report = runner.run(&RunOptions::default()).await.unwrap();
    let failed: Vec<&str> =
        report.outcomes.iter().filter(|o| o.status == OutcomeStatus::Failed).map(|o| o.database.as_str()).collect();
    assert_eq!(failed, ["c"]);
    for t in ["a", "b", "d"] {
        assert_eq!(sink.committed_rows("orders", t).len(), 3, "{t} committed");
    }
    assert!(
        state
            .load("c")
            .await
            .unwrap()
            .table("orders")
            .unwrap()
            .error_message
            .as_ref()
            .unwrap()
            .contains("cannot be stored")
    );
}

#[tokio::test]
async fn a_tables_tenants_are_recorded_in_the_stores_batches_and_every_one_is_saved() {
    let tenants: Vec<(String, usize)> = (0..7).map(|i| (format!("t{i}"), 2)).collect();
    let named: Vec<(&str, usize)> = tenants.iter().map(|(d, n)| (d.as_str(), *n)).collect();
    let sink = CollectingSink::new("t");
    let mut state = MemoryStateStore::default();
    state.record_batch = Some(3);
    let runner = runner(source_with(&named), vec![("t", sink.clone(), state.clone())], Settings::default());
    let report = runner.run(&RunOptions::default()).await.unwrap();
    assert_eq!(*state.batches.lock().unwrap(), [3, 3, 1], "one commit, recorded three tenants at a time");
    assert_eq!(report.outcomes.len(), 7);
    for (db, _) in &named {
        assert!(report.outcomes.iter().any(|o| o.database == *db && o.status == OutcomeStatus::Success), "{db}");
        let saved = state.load(db).await.unwrap().table("orders").cloned().expect("state saved");
        assert_eq!((saved.sync_status, saved.records_synced), (SyncStatus::Success, 2), "{db}");
    }
}

#[tokio::test]
async fn a_target_found_down_is_skipped_for_the_rest_of_the_run() {
    let source = MemorySource { databases: vec!["a".into()], ..Default::default() };
    let mut tables = Vec::new();
    for name in ["t1", "t2", "t3"] {
        let (schema, rows) = sample_table("a", name, 2);
        source.add_table(schema, rows);
        tables.push(name.to_string());
    }
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let good = CollectingSink::new("good");
    let runner = Runner {
        source: Arc::new(source),
        targets: vec![
            Target { id: "good".into(), sink: Arc::new(good.clone()), state: Arc::new(MemoryStateStore::default()) },
            Target {
                id: "down".into(),
                sink: Arc::new(Hooked {
                    before_prepare: Arc::new({
                        let calls = calls.clone();
                        move || {
                            calls.fetch_add(1, Ordering::SeqCst);
                            Some(ConnectorError::transient("connection refused"))
                        }
                    }),
                    ..Hooked::around("down", CollectingSink::new("down"))
                }),
                state: Arc::new(MemoryStateStore::default()),
            },
        ],
        strategy: Arc::new(CursorStrategy),
        settings: Settings { concurrency: 1, ..Default::default() },
        tables,
        table_options: BTreeMap::new(),
        listeners: Vec::new(),
        stop: Arc::default(),
    };
    let report = runner.run(&RunOptions::default()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the down target is tried once, then skipped");
    let skipped = report.outcomes.iter().filter(|o| o.error.as_deref().is_some_and(|e| e.contains("skipped"))).count();
    assert_eq!(skipped, 2);
    assert_eq!(good.commits.lock().unwrap().len(), 3, "the healthy target synced every table");
}

#[tokio::test]
async fn a_selection_that_cannot_start_takes_no_lock() {
    let state = MemoryStateStore::default();
    let runner =
        runner(source_with(&[("a", 1)]), vec![("t", CollectingSink::new("t"), state.clone())], Settings::default());
    let options = RunOptions { databases: Some(vec!["a".into(), "nosuchdb".into()]), ..Default::default() };
    let e = runner.run(&options).await.unwrap_err();
    assert!(e.message().contains("`nosuchdb` is not in the pipeline's databases"), "{e}");
    assert!(state.lock(crate::state::LockScope::Whole, None).await.is_ok(), "the lock was never taken");
}

#[tokio::test]
async fn two_source_tables_with_one_target_name_both_fail_naming_each_other() {
    let source = source_with(&[("a", 3)]);
    let (schema, rows) = sample_table("a", "legacy_orders", 3);
    source.add_table(schema, rows);
    let (schema, rows) = sample_table("a", "users", 2);
    source.add_table(schema, rows);
    let sink = CollectingSink::new("c");
    let mut runner = runner(source, vec![("c", sink.clone(), MemoryStateStore::default())], Settings::default());
    runner.tables = vec!["orders".into(), "legacy_orders".into(), "users".into()];
    let clash = TableOptions { target_table: Some("orders".into()), ..Default::default() };
    runner.table_options.insert("legacy_orders".into(), clash);
    let report = runner.run(&RunOptions::default()).await.unwrap();
    let failed: Vec<&TableOutcome> = report.outcomes.iter().filter(|o| o.status == OutcomeStatus::Failed).collect();
    assert_eq!(failed.len(), 2, "{:?}", report.outcomes);
    for o in &failed {
        let e = o.error.as_deref().unwrap_or_default();
        assert!(e.contains("would both be written to table `orders`") && e.contains("target_table"), "{e}");
    }
    assert!(sink.committed_rows("orders", "a").is_empty(), "nothing reached the shared table");
    assert_eq!(sink.committed_rows("users", "a").len(), 2, "the other tables sync");
}

#[tokio::test]
async fn a_pattern_finds_new_tenants_which_sync_after_the_others_and_gone_ones_are_dropped_when_asked() {
    let source = source_with(&[("shop1", 2), ("shop2", 3), ("other", 1)]);
    let source = MemorySource { databases: vec!["shop*".into()], ..source };
    let sink = CollectingSink::new("t");
    let state = MemoryStateStore::default();
    let settings = Settings { drop_missing_tenants: true, ..Settings::default() };
    let run = |source: MemorySource| {
        let r = runner(source, vec![("t", sink.clone(), state.clone())], settings.clone());
        async move { r.run(&RunOptions::default()).await }
    };
    let first = run(source.clone()).await.unwrap();
    assert_eq!(first.tenants.new, ["shop1", "shop2"], "the first run: every tenant is new; `other` never matches");
    assert_eq!(first.outcomes.len(), 2);

    // shop3 appears, shop1 disappears.
    let (schema, rows) = sample_table("shop3", "orders", 4);
    source.add_table(schema, rows);
    source.tables.lock().unwrap().retain(|t, _| t.database != "shop1");
    let commits_before = sink.commits.lock().unwrap().len();
    let second = run(source.clone()).await.unwrap();
    assert_eq!(second.tenants.new, ["shop3"]);
    assert_eq!(second.tenants.present, ["shop2"]);
    assert_eq!(second.tenants.gone, ["shop1"]);
    let commits = sink.commits.lock().unwrap()[commits_before..].to_vec();
    let order: Vec<Vec<&str>> = commits.iter().map(|c| c.tenants.iter().map(|t| t.0.as_str()).collect()).collect();
    assert_eq!(order, [vec!["shop2"], vec!["shop3"]], "the new tenant commits on its own, after the others");
    assert_eq!(second.tenants.dropped.len(), 1);
    assert_eq!(second.tenants.dropped[0].outcome, Ok(2), "shop1's two rows deleted");
    assert!(sink.committed_rows("orders", "shop1").is_empty());
    assert_eq!(state.databases().await.unwrap(), ["shop2", "shop3"], "the gone tenant's state is forgotten");
    assert!(second.render().contains("dropped tenant shop1 from t: 2 rows deleted"), "{}", second.render());

    // Without drop_missing_tenants a gone tenant is reported and kept.
    source.tables.lock().unwrap().retain(|t, _| t.database != "shop3");
    let keep = runner(source.clone(), vec![("t", sink.clone(), state.clone())], Settings::default());
    let third = keep.run(&RunOptions::default()).await.unwrap();
    assert_eq!(third.tenants.gone, ["shop3"]);
    assert!(third.tenants.dropped.is_empty());
    assert_eq!(sink.committed_rows("orders", "shop3").len(), 4, "kept");
    assert!(third.render().contains("drop_missing_tenants: true deletes them"), "{}", third.render());
}

#[tokio::test]
async fn shards_split_the_tenants_and_together_sync_each_once() {
    let names: Vec<String> = (0..12).map(|i| format!("shop{i}")).collect();
    let tenants: Vec<(&str, usize)> = names.iter().map(|n| (n.as_str(), 1)).collect();
    let mut seen: Vec<String> = Vec::new();
    for index in 0..3 {
        let sink = CollectingSink::new("t");
        let r = runner(source_with(&tenants), vec![("t", sink, MemoryStateStore::default())], Settings::default());
        let shard = crate::tenants::Shard { index, count: 3 };
        let report = r.run(&RunOptions { shard: Some(shard), ..Default::default() }).await.unwrap();
        assert!(report.outcomes.iter().all(|o| shard.owns(&o.database)));
        assert_eq!(report.shard.as_deref(), Some(format!("{index}/3").as_str()));
        seen.extend(report.outcomes.iter().map(|o| o.database.clone()));
    }
    seen.sort();
    let mut all = names.clone();
    all.sort();
    assert_eq!(seen, all, "every tenant exactly once over the three shards");
}

#[tokio::test]
async fn rows_read_again_in_the_window_are_sent_only_when_a_target_lacks_them_as_they_are() {
    let source = source_with(&[("a", 5)]);
    let (one, two) = (CollectingSink::new("one"), CollectingSink::new("two"));
    let (one_state, two_state) = (MemoryStateStore::default(), MemoryStateStore::default());
    let runner = runner(
        source.clone(),
        vec![("one", one.clone(), one_state.clone()), ("two", two.clone(), two_state.clone())],
        Settings { max_retries: 0, ..Default::default() },
    );
    let run = || async { runner.run(&RunOptions::default()).await.unwrap() };
    let sent = |report: &RunReport| -> Vec<(u64, u64)> {
        report.outcomes.iter().map(|o| (o.rows, o.unchanged_rows_skipped)).collect()
    };
    let names = |sink: &CollectingSink| -> Vec<Value> {
        let rows = sink.committed_rows("orders", "a");
        rows.iter().skip(rows.len().saturating_sub(10)).map(|r| r[1].clone()).collect()
    };

    // The full sync sends every row and stores the digests of the next window (every row is
    // within the 10 minutes before the watermark).
    assert_eq!(sent(&run().await), [(5, 0), (5, 0)]);
    let stored = one_state.load("a").await.unwrap().table("orders").cloned().unwrap();
    assert_eq!(stored.sync_mode, SyncMode::Full);
    assert_eq!(stored.window_rows.as_ref().map(|w| w.len()), Some(5), "{stored:?}");

    // Nothing changed: nothing sent, to either target.
    let commits_before = one.committed_rows("orders", "a").len();
    let report = run().await;
    assert_eq!(sent(&report), [(0, 5), (0, 5)], "{}", report.render());
    assert!(report.render().contains("5 rows read again in the window were already in the target unchanged"));
    assert_eq!(one.committed_rows("orders", "a").len(), commits_before);

    // A value changed without its cursor moving, and a late row inside the window: both sent.
    {
        let mut tables = source.tables.lock().unwrap();
        let (_, rows) = tables.get_mut(&TableRef::new("a", "orders")).unwrap();
        rows[2][1] = Value::String("changed in place".into());
        let mut late = rows[0].clone();
        late[0] = Value::Int(100);
        rows.push(late);
    }
    assert_eq!(sent(&run().await), [(2, 4), (2, 4)]);
    assert!(names(&one).contains(&Value::String("changed in place".into())));

    // A target whose digests are gone (a failure drops them) gets the whole window again, and
    // so does the other: one read serves both.
    let mut entry = two_state.load("a").await.unwrap().table("orders").cloned().unwrap();
    entry = TableState::failed("orders", Some(&entry), Some(SyncMode::Incremental), &ConnectorError::transient("x"));
    assert!(entry.window_rows.is_none(), "a failure drops the digests");
    two_state.record("a", entry).await.unwrap();
    assert_eq!(sent(&run().await), [(6, 0), (6, 0)]);
    assert_eq!(sent(&run().await), [(0, 6), (0, 6)]);
}

/// A configured key is the user's word, not the source's: if it repeats, a sent row would
/// overwrite a left-out one with the same key. Such tables send their whole window.
#[tokio::test]
async fn a_configured_key_never_leaves_a_row_out_of_the_window() {
    let source = MemorySource { databases: vec!["a".into()], ..Default::default() };
    let (mut schema, rows) = sample_table("a", "orders", 5);
    schema.key_source = crate::schema::KeySource::Configured;
    source.add_table(schema, rows);
    let state = MemoryStateStore::default();
    let runner = runner(source, vec![("one", CollectingSink::new("one"), state.clone())], Settings::default());
    for _ in 0..3 {
        let report = runner.run(&RunOptions::default()).await.unwrap();
        assert_eq!((report.outcomes[0].rows, report.outcomes[0].unchanged_rows_skipped), (5, 0), "{}", report.render());
        let saved = state.load("a").await.unwrap().table("orders").cloned().unwrap();
        assert!(saved.window_rows.is_none(), "{saved:?}");
    }
}

#[tokio::test]
async fn a_commit_that_writes_rows_finds_the_window_digests_already_dropped() {
    let source = source_with(&[("a", 5)]);
    let state = MemoryStateStore::default();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    // Records, at each commit, whether the tenant's state still held window digests.
    let sink = Hooked {
        before_commit: Arc::new({
            let (state, seen) = (state.clone(), seen.clone());
            move || {
                let (state, seen) = (state.clone(), seen.clone());
                Box::pin(async move {
                    let entry = state.load("a").await.unwrap();
                    seen.lock().unwrap().push(entry.table("orders").is_some_and(|e| e.window_rows.is_some()));
                })
            }
        }),
        ..Hooked::around("w", CollectingSink::new("w"))
    };
    let runner = Runner {
        source: Arc::new(source.clone()),
        targets: vec![Target { id: "w".into(), sink: Arc::new(sink), state: Arc::new(state.clone()) }],
        strategy: Arc::new(CursorStrategy),
        settings: Settings { max_retries: 0, ..Default::default() },
        tables: vec!["orders".into()],
        table_options: BTreeMap::new(),
        listeners: Vec::new(),
        stop: Arc::default(),
    };
    for _ in 0..3 {
        assert_eq!(runner.run(&RunOptions::default()).await.unwrap().failed(), 0);
    }
    // Full (no digests yet), then two incremental runs that send nothing: the full sync
    // stored the digests of its window.
    assert_eq!(*seen.lock().unwrap(), [false, true, true]);
    source.tables.lock().unwrap().get_mut(&TableRef::new("a", "orders")).unwrap().1[4][1] = Value::Null;
    let report = runner.run(&RunOptions::default()).await.unwrap();
    assert_eq!(report.outcomes[0].rows, 1, "{}", report.render());
    assert!(!seen.lock().unwrap()[3], "dropped before the commit that writes the changed row");
    let after = state.load("a").await.unwrap().table("orders").cloned().unwrap();
    assert_eq!(after.window_rows.map(|w| w.len()), Some(5), "and stored again after it");
}

/// The tables each tenant was planned for, in order.
#[derive(Debug, Default)]
struct PlanOrder(std::sync::Mutex<Vec<String>>);

impl crate::events::EventListener for PlanOrder {
    fn on_event(&self, event: &crate::events::Event) {
        if let crate::events::Event::TablePlanned { table, .. } = event {
            self.0.lock().unwrap().push(table.table.clone());
        }
    }
}

#[tokio::test]
async fn tables_hand_out_their_tenants_reads_in_turn() {
    let databases: Vec<String> = (0..8).map(|i| format!("d{i}")).collect();
    let source = MemorySource { databases: databases.clone(), ..Default::default() };
    let tables: Vec<String> = ["t1", "t2", "t3"].iter().map(|t| t.to_string()).collect();
    for name in &tables {
        for db in &databases {
            let (schema, rows) = sample_table(db, name, 2);
            source.add_table(schema, rows);
        }
    }
    let order = Arc::new(PlanOrder::default());
    let sink = CollectingSink::new("t");
    let mut runner = runner(
        source,
        vec![("t", sink, MemoryStateStore::default())],
        Settings { concurrency: 3, ..Default::default() },
    );
    runner.tables = tables;
    runner.listeners = vec![order.clone() as Arc<dyn crate::events::EventListener>];
    let report = runner.run(&RunOptions::default()).await.unwrap();
    assert_eq!((report.outcomes.len(), report.failed()), (24, 0));
    // Three tables staged at once, but each handed out all its tenants' reads before the next
    // began: the table changes twice in the 24 plans (side by side, it changed every few
    // plans: 8 times here).
    let order = order.0.lock().unwrap().clone();
    assert_eq!(order.windows(2).filter(|w| w[0] != w[1]).count(), 2, "{order:?}");
}

/// Each tenant's prior state is loaded as its read comes near, so a write in doubt is resolved
/// by the first tenant that names it: once however many tenants share it, and a tenant whose
/// write stays in doubt fails alone, without being written.
#[tokio::test]
async fn a_write_in_doubt_is_resolved_once_for_its_tenants_and_one_that_stays_fails_alone() {
    let tenants = [("a", 4), ("b", 4), ("c", 4), ("d", 4), ("e", 4)];
    let sink = CollectingSink::new("bq");
    let state = MemoryStateStore::default();
    // Notes every write in doubt it is asked to resolve; `stuck` cannot be.
    let asked: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let resolving = Hooked {
        resolve: Arc::new({
            let asked = asked.clone();
            move |handle| {
                asked.lock().unwrap().push(handle.clone());
                Box::pin(async move {
                    tokio::task::yield_now().await;
                    match handle.as_str() {
                        "stuck" => Err(ConnectorError::transient("job stuck is still running after it was cancelled")),
                        _ => Ok(()),
                    }
                })
            }
        }),
        ..Hooked::around("bq", sink.clone())
    };
    let settings = Settings { concurrency: 3, max_retries: 0, ..Default::default() };
    let first = runner(source_with(&tenants), vec![("bq", sink.clone(), state.clone())], settings.clone());
    assert_eq!(first.run(&RunOptions::default()).await.unwrap().failed(), 0);
    for (db, handle) in [("a", "commit_1"), ("b", "commit_1"), ("c", "commit_1"), ("d", "stuck")] {
        let mut s = state.load_table(db, "orders").await.unwrap().unwrap();
        s.in_doubt = Some(handle.to_string());
        state.record(db, s).await.unwrap();
    }
    let commits_before = sink.commits.lock().unwrap().len();

    let mut second = runner(source_with(&tenants), Vec::new(), settings);
    second.targets =
        vec![Target { id: "bq".into(), sink: Arc::new(resolving.clone()), state: Arc::new(state.clone()) }];
    let report = second.run(&RunOptions::default()).await.unwrap();

    let mut asked = asked.lock().unwrap().clone();
    asked.sort();
    assert_eq!(asked, ["commit_1", "stuck"], "each write in doubt is resolved once");
    let failed: Vec<&str> =
        report.outcomes.iter().filter(|o| o.status == OutcomeStatus::Failed).map(|o| o.database.as_str()).collect();
    assert_eq!(failed, ["d"], "{}", report.render());
    let d = report.outcomes.iter().find(|o| o.database == "d").unwrap();
    assert!(d.error.as_deref().unwrap_or_default().contains("still running"), "{d:?}");
    let (commits, written): (usize, Vec<String>) = {
        let commits = sink.commits.lock().unwrap();
        (commits.len(), commits.last().unwrap().tenants.iter().map(|t| t.0.clone()).collect())
    };
    assert_eq!(commits, commits_before + 1, "the others are committed together");
    assert!(!written.iter().any(|t| t == "d") && written.len() == 4, "{written:?}");
    assert_eq!(state.load_table("d", "orders").await.unwrap().unwrap().in_doubt.as_deref(), Some("stuck"));
    assert!(state.load_table("a", "orders").await.unwrap().unwrap().in_doubt.is_none());
}

/// A tenant with nothing to merge anywhere is recorded before the table's commit, in the
/// store's batches, so a run holds the tenants that changed, not the fleet; fewer than a batch
/// are recorded with the commit's tenants, as before.
#[tokio::test]
async fn tenants_with_nothing_to_merge_are_recorded_in_batches_before_the_commit() {
    let tenants: Vec<(String, usize)> = (0..7).map(|i| (format!("t{i}"), 2)).collect();
    let named: Vec<(&str, usize)> = tenants.iter().map(|(d, n)| (d.as_str(), *n)).collect();
    let source = source_with(&named);
    let sink = CollectingSink::new("t");
    let mut state = MemoryStateStore::default();
    state.record_batch = Some(3);
    let runner = runner(source.clone(), vec![("t", sink.clone(), state.clone())], Settings::default());
    let run = || async {
        let report = runner.run(&RunOptions::default()).await.unwrap();
        assert_eq!((report.outcomes.len(), report.failed()), (7, 0), "{}", report.render());
        report
    };
    let last_commit = || -> Vec<(String, usize)> {
        let commits = sink.commits.lock().unwrap();
        commits.last().unwrap().tenants.iter().map(|t| (t.0.clone(), t.2.len())).collect()
    };
    // A full sync: every tenant's rows, replaced (never recorded before the commit).
    run().await;
    assert_eq!(last_commit().len(), 7);

    // Nothing changed: two batches of three recorded as they were ready, one with the commit.
    let batches_before = state.batches.lock().unwrap().len();
    let report = run().await;
    assert_eq!(state.batches.lock().unwrap()[batches_before..], [3, 3, 1]);
    assert_eq!(last_commit().len(), 1, "only the last, fewer than a batch, waited for the commit");
    assert!(report.outcomes.iter().all(|o| o.rows == 0 && o.unchanged_rows_skipped == 2), "{}", report.render());
    for (db, _) in &named {
        let saved = state.load(db).await.unwrap().table("orders").cloned().expect("state saved");
        assert_eq!((saved.sync_status, saved.records_synced), (SyncStatus::Success, 0), "{db}");
        assert_eq!(saved.window_rows.map(|w| w.len()), Some(2), "{db}: the digests stay");
    }

    // One tenant changed: the six others are recorded before the commit, which applies its row.
    source.tables.lock().unwrap().get_mut(&TableRef::new("t3", "orders")).unwrap().1[1][1] = Value::Null;
    let report = run().await;
    assert_eq!(last_commit(), [("t3".to_string(), 1)]);
    let t3 = report.outcomes.iter().find(|o| o.database == "t3").unwrap();
    assert_eq!(t3.rows, 1, "{}", report.render());
    assert_eq!(sink.committed_rows("orders", "t3").last().unwrap()[1], Value::Null);
}

#[tokio::test]
async fn a_table_resolving_a_write_in_doubt_lets_the_other_tables_read_meanwhile() {
    let source = MemorySource { databases: vec!["a".into()], ..Default::default() };
    for name in ["t1", "t2"] {
        let (schema, rows) = sample_table("a", name, 3);
        source.add_table(schema, rows);
    }
    let sink = CollectingSink::new("bq");
    let state = MemoryStateStore::default();
    let mut runner = runner(
        source,
        vec![("bq", sink.clone(), state.clone())],
        Settings { concurrency: 2, max_retries: 0, ..Default::default() },
    );
    runner.tables = vec!["t1".into(), "t2".into()];
    assert_eq!(runner.run(&RunOptions::default()).await.unwrap().failed(), 0);
    let mut t1 = state.load_table("a", "t1").await.unwrap().unwrap();
    t1.in_doubt = Some("slow".into());
    state.record("a", t1).await.unwrap();

    runner.targets = vec![Target {
        id: "bq".into(),
        sink: Arc::new(Hooked { resolve: waits_for_another_commit(&sink), ..Hooked::around("bq", sink) }),
        state: Arc::new(state.clone()),
    }];
    let report = runner.run(&RunOptions::default()).await.unwrap();
    assert_eq!(report.failed(), 0, "{}", report.render());
    assert!(state.load_table("a", "t1").await.unwrap().unwrap().in_doubt.is_none());
}

/// A resolution that waits until another table has committed (at most 5 s): it can only
/// succeed if the table resolving it lets the others read meanwhile.
fn waits_for_another_commit(sink: &CollectingSink) -> ResolveFn {
    let commits = sink.commits.clone();
    Arc::new(move |_| {
        let commits = commits.clone();
        Box::pin(async move {
            let before = commits.lock().unwrap().len();
            for _ in 0..500 {
                if commits.lock().unwrap().len() > before {
                    return Ok(());
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(ConnectorError::transient("no other table committed while a write in doubt was resolved"))
        })
    })
}
