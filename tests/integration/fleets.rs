use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

/// The tenants a run's JSON report says it synced.
fn synced_tenants(report: &Value) -> BTreeSet<String> {
    report["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["status"] == "SUCCESS")
        .map(|o| o["database"].as_str().unwrap().to_string())
        .collect()
}

fn names(report: &Value, key: &str) -> Vec<String> {
    report["tenants"][key]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_db_list_pattern_syncs_new_tenants_in_full_and_reports_or_drops_gone_ones() {
    let emulator = &*EMULATOR;
    let prefix = unique("pat");
    let (a, b, c) = (format!("{prefix}_a"), format!("{prefix}_b"), format!("{prefix}_c"));
    create_shop(&a, 5, 12).await;
    create_shop(&b, 6, 15).await;
    create_shop(&format!("{prefix}_skip"), 2, 2).await;
    let dataset = unique("pat");
    let run = TestRun::new();
    let mut params = flat_params(&[], &["orders", "users"], &dataset, emulator, run.path());
    params["db_list"] = json!([format!("{prefix}_*")]);
    params["db_exclude"] = json!(["*_skip"]);
    run.params(&params);
    run.sync(&[]).await;
    assert_eq!(synced_tenants(&run.report()), BTreeSet::from([a.clone(), b.clone()]), "excluded: {prefix}_skip");

    // Between runs a tenant appears and another one disappears.
    create_shop(&c, 7, 20).await;
    mysql_exec(&format!("DROP DATABASE `{a}`")).await;
    let plan = run.sync(&["--dry-run"]).await;
    assert!(plan.stdout.contains(&format!("new tenant: {c} (synced in full, after the others)")), "{}", plan.stdout);
    assert!(plan.stdout.contains(&format!("tenant no longer on the server: {a}")), "{}", plan.stdout);
    assert!(plan.stdout.contains(&format!("tenants: 1 present, 1 new, 1 gone (present: {b})")), "{}", plan.stdout);

    let out = run.sync(&[]).await;
    let report = run.report();
    assert_eq!(names(&report, "new"), std::slice::from_ref(&c));
    assert_eq!(names(&report, "present"), std::slice::from_ref(&b));
    assert_eq!(names(&report, "gone"), std::slice::from_ref(&a));
    assert!(out.stdout.contains("their rows stay in the targets"), "{}", out.stdout);
    let new_modes: BTreeSet<&str> = report["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["database"] == c.as_str())
        .map(|o| o["mode"].as_str().unwrap())
        .collect();
    assert_eq!(new_modes, BTreeSet::from(["FULL"]));
    assert_table_equal(emulator, &dataset, &c, "orders", "id").await;
    assert_table_equal(emulator, &dataset, &c, "users", "id").await;
    assert_eq!(bq_count(emulator, &dataset, "orders", &a).await, 12, "a gone tenant's rows are kept by default");

    let status = run_cli(&["status", "--pipeline", "params.json"], run.path());
    assert!(status.stdout.contains(&format!("2 present, 0 new, 1 gone ({a})")), "{}", status.all());

    // Asked to, the next run deletes the gone tenant's rows in one go and forgets its state.
    params["drop_missing_tenants"] = json!(true);
    run.params(&params);
    let out = run.sync(&[]).await;
    assert!(out.stdout.contains(&format!("dropped tenant {a} from default: 17 rows deleted")), "{}", out.stdout);
    assert_eq!(bq_count(emulator, &dataset, "orders", &a).await, 0);
    assert_eq!(bq_count(emulator, &dataset, "users", &a).await, 0);
    assert!(!run.path().join(format!("status/{a}.json")).exists(), "its state is forgotten");
    assert_eq!(bq_count(emulator, &dataset, "orders", &b).await, 15, "the others are untouched");
    let again = run.sync(&[]).await;
    assert!(!again.stdout.contains("dropped tenant"), "gone once, reported once: {}", again.stdout);
    for db in [&b, &c, &format!("{prefix}_skip")] {
        mysql_exec(&format!("DROP DATABASE `{db}`")).await;
    }
}

/// `count` workers at once (all but `skip`), worker `i` with `--shard i/count` (the last one
/// through Cloud Run's task variables instead); their outputs and reports in worker order.
async fn sharded_runs(run: &TestRun, count: u32, skip: Option<u32>) -> Vec<(RunOutput, Value)> {
    let mut children = Vec::new();
    for index in (0..count).filter(|i| Some(*i) != skip) {
        let report = format!("report-{index}.json");
        let mut command = std::process::Command::new(binary());
        command
            .args(["--pipeline", &run.file, "--report-json", &report, "-q"])
            .current_dir(run.path())
            .env_remove("BIGQUERY_EMULATOR_HOST")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if index + 1 == count {
            command.env("CLOUD_RUN_TASK_INDEX", index.to_string()).env("CLOUD_RUN_TASK_COUNT", count.to_string());
        } else {
            command.args(["--shard", &format!("{index}/{count}")]);
        }
        children.push((report, command.spawn().unwrap()));
    }
    let mut out = Vec::new();
    for (report, child) in children {
        let done = wait(child).await;
        let value: Value =
            serde_json::from_slice(&std::fs::read(run.path().join(report)).unwrap_or_default()).unwrap_or(Value::Null);
        out.push((done, value));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn sharded_workers_sync_every_tenant_once_together_and_a_killed_worker_recovers() {
    let emulator = &*EMULATOR;
    let prefix = unique("shard");
    let tenants: Vec<String> = (0..30).map(|i| format!("{prefix}_{i:02}")).collect();
    for t in &tenants {
        create_shop(t, 3, 8).await;
    }
    let dataset = unique("shard");
    let run = TestRun::new();
    let mut params = flat_params(&[], &["orders", "users"], &dataset, emulator, run.path());
    params["db_list"] = json!([format!("{prefix}_*")]);
    params["pool_size"] = json!(2);
    run.params(&params);

    for count in [3, 2] {
        let runs = sharded_runs(&run, count, None).await;
        let mut union = BTreeSet::new();
        for (i, (out, report)) in runs.iter().enumerate() {
            assert_eq!(out.code, 0, "worker {i}/{count}: {}", out.all());
            assert_eq!(report["shard"], format!("{i}/{count}"), "worker {i} knows its share");
            let mine = synced_tenants(report);
            assert!(!mine.is_empty() && mine.len() < 30, "worker {i}/{count} took a share: {mine:?}");
            let expected: BTreeSet<String> =
                tenants.iter().filter(|t| connector_framework::Shard::owner(t, count) == i as u32).cloned().collect();
            assert_eq!(mine, expected, "worker {i}/{count} took exactly its rendezvous share");
            assert!(union.is_disjoint(&mine), "worker {i}/{count} took a tenant another worker took: {mine:?}");
            union.extend(mine);
        }
        assert_eq!(union, tenants.iter().cloned().collect(), "{count} workers together synced every tenant");
        for t in &tenants {
            let state = run.state(t);
            assert_eq!(state["tables"]["orders"]["sync_status"], "SUCCESS", "{t}: {state}");
        }
    }
    for t in &tenants {
        assert_table_equal(emulator, &dataset, t, "orders", "id").await;
    }

    // Changes everywhere; the three workers again, one killed mid-run and started again.
    for t in &tenants {
        mysql_exec(&format!(
            "UPDATE `{t}`.orders SET amount = amount + 1, updated_at = NOW(6) WHERE id <= 2;
             INSERT INTO `{t}`.orders (user_id, amount, status, created_at, updated_at) VALUES (1, 9.5, 'new', NOW(6), NOW(6))"
        ))
        .await;
    }
    let mut victim = run.spawn(&["--shard", "1/3"]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(victim.try_wait().unwrap().is_none(), "the worker is still running when it is killed");
    victim.kill().unwrap();
    let _ = victim.wait();
    let others = sharded_runs(&run, 3, Some(1)).await;
    for (i, (out, _)) in others.into_iter().enumerate() {
        assert_eq!(out.code, 0, "worker {i}: {}", out.all());
    }
    let again = run.run(&["--shard", "1/3"]).await;
    assert_eq!(again.code, 0, "the restarted worker: {}", again.all());
    for t in &tenants {
        assert_table_equal(emulator, &dataset, t, "orders", "id").await;
    }
    for t in &tenants {
        mysql_exec(&format!("DROP DATABASE `{t}`")).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn state_in_bigquery_outlives_the_working_folder_and_moves_to_files_and_back() {
    let emulator = &*EMULATOR;
    let db = unique("bqstate");
    create_shop(&db, 10, 40).await;
    let dataset = unique("bqstate");
    let first = TestRun::new();
    let mut params = flat_params(std::slice::from_ref(&db), &["orders", "users"], &dataset, emulator, first.path());
    params.as_object_mut().unwrap().remove("status_dir");
    params["state_store"] = json!("bigquery");
    params["lookback_minutes"] = json!(0);
    first.params(&params);
    first.sync(&[]).await;
    assert!(!first.path().join("status").exists(), "no state files");
    let rows = bq_query(
        emulator,
        &format!("SELECT table_name, JSON_VALUE(state, '$.sync_mode') FROM `{dataset}`.`_connector_state` WHERE `database` = '{db}' ORDER BY 1"),
    )
    .await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0][1].as_deref(), Some("FULL"));
    let locks = bq_query(emulator, &format!("SELECT COUNT(*) FROM `{dataset}`.`_connector_state_locks`")).await;
    assert_eq!(locks[0][0].as_deref(), Some("0"), "the run gave its lock back");

    mysql_exec(&format!("UPDATE `{db}`.orders SET amount = 1, updated_at = NOW(6) WHERE id <= 3")).await;
    // Another machine: an empty working folder, the same pipeline.
    let second = TestRun::new();
    second.params(&params);
    second.sync(&[]).await;
    let report = second.report();
    let orders = report["outcomes"].as_array().unwrap().iter().find(|o| o["table"] == "orders").unwrap().clone();
    assert_eq!(orders["mode"], "INCREMENTAL", "{orders}");
    // The row at the watermark (an inclusive bound) is read again, and left out: the full
    // sync stored its digest with the state in BigQuery.
    assert_eq!((&orders["rows"], &orders["unchanged_rows_skipped"]), (&json!(3), &json!(1)), "the 3 changed: {orders}");
    assert_table_equal(emulator, &dataset, &db, "orders", "id").await;

    // Two shards at once: their lock rows do not exclude each other.
    let shards = sharded_runs(&second, 2, None).await;
    for (out, _) in &shards {
        assert_eq!(out.code, 0, "{}", out.all());
    }

    let status = run_cli(&["status", "--pipeline", "params.json", "--json"], second.path());
    assert_eq!(status.code, 0, "{}", status.all());
    let listed: Value = serde_json::from_str(&status.stdout).unwrap();
    let tables: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "table")
        .map(|r| r["table"].as_str().unwrap())
        .collect();
    assert_eq!(tables, ["orders", "users"]);

    // Into files and back: the same tables, and a run from the files continues incrementally.
    let files = second.path().join("copied");
    let to_json = run_cli(
        &["state", "migrate", "--pipeline", "params.json", "--to", "json", "--to-status-dir", files.to_str().unwrap()],
        second.path(),
    );
    assert_eq!(to_json.code, 0, "{}", to_json.all());
    assert!(to_json.stdout.contains("1 databases, 2 tables"), "{}", to_json.stdout);
    let state: Value = serde_json::from_slice(&std::fs::read(files.join(format!("{db}.json"))).unwrap()).unwrap();
    assert_eq!(state["tables"]["orders"]["sync_status"], "SUCCESS");
    let mut from_files = params.clone();
    from_files.as_object_mut().unwrap().remove("state_store");
    from_files["status_dir"] = json!(files.display().to_string());
    let third = TestRun::new();
    third.params(&from_files);
    third.sync(&[]).await;
    let report = third.report();
    assert!(report["outcomes"].as_array().unwrap().iter().all(|o| o["mode"] == "INCREMENTAL"), "{report}");
    mysql_exec(&format!("UPDATE `{db}`.users SET balance = 1, updated_at = NOW(6) WHERE id = 1")).await;
    third.sync(&[]).await;
    let to_bq = run_cli(&["state", "migrate", "--pipeline", "params.json", "--to", "bigquery"], third.path());
    assert_eq!(to_bq.code, 0, "{}", to_bq.all());
    assert!(to_bq.stdout.contains("copied") && to_bq.stdout.contains("1 databases, 2 tables"), "{}", to_bq.stdout);
    let in_bq = bq_query(
        emulator,
        &format!("SELECT JSON_VALUE(state, '$.records_synced') FROM `{dataset}`.`_connector_state` WHERE `database` = '{db}' AND table_name = 'users'"),
    )
    .await;
    let from_file: Value = serde_json::from_slice(&std::fs::read(files.join(format!("{db}.json"))).unwrap()).unwrap();
    assert_eq!(in_bq.len(), 1, "one row per tenant × table: {in_bq:?}");
    assert_eq!(
        in_bq[0][0].as_deref(),
        Some(from_file["tables"]["users"]["records_synced"].to_string().as_str()),
        "the files' state is what BigQuery holds now"
    );

    let reset = run_cli(
        &["state", "reset", "--pipeline", "params.json", "--database", &db, "--table", "orders"],
        second.path(),
    );
    assert_eq!(reset.code, 0, "{}", reset.all());
    second.sync(&[]).await;
    let orders =
        second.report()["outcomes"].as_array().unwrap().iter().find(|o| o["table"] == "orders").unwrap().clone();
    assert_eq!(orders["mode"], "FULL", "reset in BigQuery forces a full sync: {orders}");
    mysql_exec(&format!("DROP DATABASE `{db}`")).await;
}

/// A `bigquery` state store of the emulator's, as a pipeline would build it.
async fn bigquery_state(dataset: &str, lease_seconds: u64) -> std::sync::Arc<dyn connector_framework::StateStore> {
    let emulator = &*EMULATOR;
    connector_bigquery::link();
    let raw = json!({"kind": "bigquery", "project": emulator.project, "dataset": dataset,
                     "endpoint": emulator.endpoint(), "lock_lease_seconds": lease_seconds});
    let (_, config) = connector_framework::registry::parse_state(&raw).unwrap();
    let ctx = connector_framework::BuildContext {
        run_id: unique("run"),
        target_id: "default".into(),
        state_subdir: None,
        retry: connector_framework::RetryPolicy {
            max_retries: 2,
            base_delay: Duration::from_millis(100),
            ..Default::default()
        },
        discard_writes: false,
    };
    config.build(&ctx).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn bigquery_state_locks_exclude_conflicting_runs_and_lapse_when_their_holder_dies() {
    use connector_framework::{LockScope, Shard};
    let dataset = unique("bqlock");
    let (a, b) = (bigquery_state(&dataset, 5).await, bigquery_state(&dataset, 5).await);
    let shard = |index| LockScope::Shard(Shard { index, count: 2 });

    let whole = a.lock(LockScope::Whole, None).await.unwrap();
    let refused = b.lock(LockScope::Whole, None).await.unwrap_err();
    assert!(refused.message().contains("already syncing"), "{refused}");
    assert!(b.lock(shard(0), None).await.is_err(), "a whole run excludes every share");
    whole.release().await;

    let first = a.lock(shard(0), None).await.unwrap();
    let second = b.lock(shard(1), None).await.expect("another share runs alongside");
    assert!(b.lock(shard(0), None).await.is_err(), "one share, one worker");
    assert!(b.lock(LockScope::Whole, None).await.is_err(), "a share excludes a whole run");
    second.release().await;

    // The holder of share 0 dies: its row stays until the lease (5 s) runs out; a waiting
    // worker then takes the share over.
    drop(first);
    let started = std::time::Instant::now();
    let taken = b.lock(shard(0), Some(Duration::from_secs(30))).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(2), "it waited for the lease: {:?}", started.elapsed());
    taken.release().await;
    // Given back at once: another worker takes the share, and then the whole, without waiting.
    let c = bigquery_state(&dataset, 5).await;
    c.lock(shard(0), None).await.expect("the released share is free at once").release().await;
    c.lock(LockScope::Whole, None).await.expect("and so is the whole").release().await;
}
