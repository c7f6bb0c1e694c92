use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

/// Runs the pipeline in `dir/params.json` and asserts it succeeded.
async fn sync(dir: &std::path::Path, extra: &[&str]) -> RunOutput {
    let mut args = vec!["--pipeline".to_string(), "params.json".to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = run_cli_async(args, dir.to_path_buf()).await;
    assert_eq!(out.code, 0, "{}", out.all());
    out
}

fn state(dir: &std::path::Path, db: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("status").join(format!("{db}.json"))).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn writers_running_during_syncs_lose_and_double_nothing() {
    let emulator = &*EMULATOR;
    let dbs: Vec<String> = (1..=2).map(|i| unique(&format!("cw{i}"))).collect();
    for db in &dbs {
        create_shop(db, 60, 300).await;
    }
    let dataset = unique("concurrent");
    let dir = workdir();
    let mut params = flat_params(&dbs, &["orders", "page_views"], &dataset, emulator, dir.path());
    params["table_options"] = json!({"page_views": {"cursor_column": "viewed_at"}});
    write_json(&dir.path().join("params.json"), &params);
    sync(dir.path(), &[]).await;

    // Writers: insert and update orders, append page views, in every tenant, until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for db in dbs.clone() {
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                mysql_exec(&format!(
                    "INSERT INTO `{db}`.orders (user_id, amount, status, created_at, updated_at) VALUES ({i}, {i}.5, 'new', NOW(6), NOW(6));
                     UPDATE `{db}`.orders SET amount = amount + 1, status = 'paid', updated_at = NOW(6) WHERE id = {};
                     INSERT INTO `{db}`.page_views (user_id, path, viewed_at) VALUES ({i}, '/live', NOW(6));",
                    1 + (i * 37) % 300
                ))
                .await;
            }
            i
        }));
    }
    for _ in 0..3 {
        let out = sync(dir.path(), &[]).await;
        assert!(out.stdout.contains("INCREMENTAL"), "{}", out.stdout);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in writers {
        assert!(w.await.unwrap() > 0, "the writer made changes");
    }
    sync(dir.path(), &[]).await;
    for db in &dbs {
        assert_table_equal(emulator, &dataset, db, "orders", "id").await;
        assert_table_equal(emulator, &dataset, db, "page_views", "viewed_at, path, user_id").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_commit_inside_the_lookback_window_is_picked_up() {
    let emulator = &*EMULATOR;
    let db = unique("late");
    create_shop(&db, 20, 50).await;
    let dataset = unique("late");
    let dir = workdir();
    write_json(
        &dir.path().join("params.json"),
        &flat_params(std::slice::from_ref(&db), &["orders"], &dataset, emulator, dir.path()),
    );
    sync(dir.path(), &[]).await;

    // A transaction stamps row 5 and stays open; row 6 is stamped later and committed at once.
    let pool = mysql_async::Pool::new(mysql_url().as_str());
    let mut late = pool.get_conn().await.unwrap();
    use mysql_async::prelude::Queryable;
    late.query_drop("START TRANSACTION").await.unwrap();
    late.query_drop(format!("UPDATE `{db}`.orders SET amount = 777, updated_at = NOW(6) WHERE id = 5")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    mysql_exec(&format!("UPDATE `{db}`.orders SET amount = 1, updated_at = NOW(6) WHERE id = 6")).await;

    sync(dir.path(), &[]).await;
    let amount = |rows: Vec<Vec<Option<String>>>| rows[0][0].clone().unwrap();
    let q5 = format!("SELECT amount FROM `{dataset}`.orders WHERE tenant_id = '{db}' AND id = 5");
    let q6 = format!("SELECT amount FROM `{dataset}`.orders WHERE tenant_id = '{db}' AND id = 6");
    assert_eq!(amount(bq_query(emulator, &q6).await), "1", "the committed change is synced");
    assert_ne!(amount(bq_query(emulator, &q5).await), "777", "the open transaction is invisible");
    let watermark = state(dir.path(), &db)["tables"]["orders"]["watermark"]["value"].as_str().unwrap().to_string();

    late.query_drop("COMMIT").await.unwrap();
    drop(late);
    pool.disconnect().await.unwrap();
    let out = sync(dir.path(), &[]).await;
    assert!(out.stdout.contains("window: updated_at >= "), "{}", out.stdout);
    assert_eq!(
        amount(bq_query(emulator, &q5).await),
        "777",
        "the late commit is picked up (watermark was {watermark})"
    );
    assert_table_equal(emulator, &dataset, &db, "orders", "id").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ties_across_batches_the_watermark_microsecond_future_stamps_and_null_cursors() {
    let emulator = &*EMULATOR;
    let db = unique("ties");
    create_shop(&db, 90, 200).await;
    let dataset = unique("ties");
    let dir = workdir();
    let mut params = flat_params(std::slice::from_ref(&db), &["orders", "users"], &dataset, emulator, dir.path());
    params["batch_size"] = json!(10);
    write_json(&dir.path().join("params.json"), &params);
    sync(dir.path(), &[]).await;

    // 55 rows share one cursor value, spanning six batches.
    mysql_exec(&format!(
        "UPDATE `{db}`.orders SET amount = amount + 100, updated_at = '2030-01-01 00:00:00.000000' WHERE id <= 55"
    ))
    .await;
    // ...which is in the future: the watermark must stop at the source's clock.
    let out = sync(dir.path(), &["--dry-run"]).await;
    assert!(out.stdout.contains("INCREMENTAL") && out.stdout.contains("range: updated_at >= '"), "{}", out.stdout);
    sync(dir.path(), &[]).await;
    assert_table_equal(emulator, &dataset, &db, "orders", "id").await;
    let st = state(dir.path(), &db);
    let watermark = st["tables"]["orders"]["watermark"]["value"].as_str().unwrap().to_string();
    assert!(watermark.as_str() < "2030", "a future stamp does not move the watermark past the clock: {watermark}");

    // A row stamped in the very microsecond of the watermark is still read (inclusive bound).
    mysql_exec(&format!("UPDATE `{db}`.orders SET amount = 4242, updated_at = '{watermark}' WHERE id = 100")).await;
    // A row stamped now, after the future-stamped ones, is read too.
    mysql_exec(&format!("UPDATE `{db}`.orders SET amount = 4343, updated_at = NOW(6) WHERE id = 101")).await;
    sync(dir.path(), &[]).await;
    assert_table_equal(emulator, &dataset, &db, "orders", "id").await;

    // users.updated_at is NULL for every ninth user. By default those rows are read every time.
    mysql_exec(&format!("UPDATE `{db}`.users SET nickname = 'changed-null-cursor' WHERE id = 9")).await;
    let out = sync(dir.path(), &[]).await;
    assert!(out.stdout.contains("or updated_at IS NULL"), "{}", out.stdout);
    assert_table_equal(emulator, &dataset, &db, "users", "id").await;

    // With null_cursor = report they are left to full runs, and the report says how many.
    params["null_cursor"] = json!("report");
    write_json(&dir.path().join("params.json"), &params);
    mysql_exec(&format!("UPDATE `{db}`.users SET nickname = 'changed-again' WHERE id = 18")).await;
    let out = sync(dir.path(), &["--tables", "users"]).await;
    assert!(out.stdout.contains("10 rows with a NULL cursor were not read"), "{}", out.stdout);
    let nick =
        bq_query(emulator, &format!("SELECT nickname FROM `{dataset}`.users WHERE tenant_id = '{db}' AND id = 18"))
            .await;
    assert_ne!(nick[0][0].as_deref(), Some("changed-again"));
    sync(dir.path(), &["--tables", "users", "--full"]).await;
    assert_table_equal(emulator, &dataset, &db, "users", "id").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_killed_mid_table_loses_and_doubles_nothing() {
    let emulator = &*EMULATOR;
    let db = unique("kill");
    create_shop(&db, 50, 30_000).await;
    let dataset = unique("kill");
    let dir = workdir();
    let pipeline = general_pipeline(&db, &dataset, &emulator.endpoint(), &emulator.project, dir.path());
    write_json(&dir.path().join("params.json"), &pipeline);

    let kill_mid_table = |expect_rows: u64| {
        let dir = dir.path().to_path_buf();
        let dataset = dataset.clone();
        let db = db.clone();
        async move {
            let mut child = std::process::Command::new(binary())
                .args(["--pipeline", "params.json"])
                .current_dir(&dir)
                .env("CONNECTOR_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            // Wait until a load job has put rows into a staging table, then SIGKILL.
            let started = Instant::now();
            loop {
                let staged = list_tables(emulator, &dataset)
                    .await
                    .into_iter()
                    .filter(|t| t.starts_with("_stage_"))
                    .collect::<Vec<_>>();
                let mut rows = 0;
                for t in &staged {
                    rows += bq_query(emulator, &format!("SELECT COUNT(*) FROM `{dataset}`.`{t}`")).await[0][0]
                        .as_ref()
                        .unwrap()
                        .parse::<u64>()
                        .unwrap();
                }
                if rows > 0 {
                    break;
                }
                assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed mid-table");
                assert!(started.elapsed() < Duration::from_secs(120), "no staged rows appeared");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            child.kill().unwrap();
            child.wait().unwrap();
            assert_eq!(
                bq_count(emulator, &dataset, "orders", &db).await,
                expect_rows,
                "nothing visible from the killed run"
            );
        }
    };

    // Killed during the first full sync: nothing visible, no state.
    kill_mid_table(0).await;
    assert!(!dir.path().join("status").join(format!("{db}.json")).exists());
    sync(dir.path(), &[]).await;
    assert_table_equal(emulator, &dataset, &db, "orders", "id").await;

    // Killed during a forced full re-sync: the previous copy stays whole.
    mysql_exec(&format!("UPDATE `{db}`.orders SET amount = amount + 1, updated_at = NOW(6) WHERE id % 2 = 0")).await;
    kill_mid_table(30_000).await;
    sync(dir.path(), &[]).await;
    assert_table_equal(emulator, &dataset, &db, "orders", "id").await;
    assert_eq!(bq_count(emulator, &dataset, "orders", &db).await, 30_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_in_which_nothing_changed_sends_nothing_and_a_change_that_keeps_its_cursor_is_still_synced() {
    let emulator = &*EMULATOR;
    let db = unique("idle");
    create_shop(&db, 20, 60).await;
    let dataset = unique("idle");
    let dir = workdir();
    let mut params = flat_params(std::slice::from_ref(&db), &["orders"], &dataset, emulator, dir.path());
    // The full sync reads key ranges of 25 rows, two segments side by side: the digests of
    // its parts are put together. (Whether the table is split follows the server's row
    // estimate, exact after ANALYZE.)
    params["chunk_rows"] = json!(25);
    write_json(&dir.path().join("params.json"), &params);
    mysql_exec(&format!("ANALYZE TABLE `{db}`.orders")).await;
    sync(dir.path(), &["--report-json", "report.json"]).await;
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap()).unwrap();
    let window = report["outcomes"][0]["window"].as_str().unwrap();
    assert!(window.contains("segments read at once"), "{window}");
    // The full sync stored the digests of the next window: the ten rows stamped in the ten
    // minutes before the newest (orders 51 to 60, a minute apart).
    let digests = state(dir.path(), &db)["tables"]["orders"]["window_rows"]["digests"].as_str().unwrap().len();
    assert_eq!(digests, 10 * 32);
    mysql_exec(&format!("UPDATE `{db}`.orders SET amount = amount + 1, updated_at = NOW(6) WHERE id <= 4")).await;
    // The first incremental run reads those ten again and sends only the four changed rows,
    // and remembers them.
    let out = sync(dir.path(), &[]).await;
    assert!(out.stdout.contains("INCREMENTAL"), "{}", out.stdout);
    assert!(
        out.stdout.contains("10 rows read again in the window were already in the target unchanged"),
        "{}",
        out.stdout
    );
    assert_table_equal(emulator, &dataset, &db, "orders", "id").await;
    let digests = state(dir.path(), &db)["tables"]["orders"]["window_rows"]["digests"].as_str().unwrap().len();
    assert_eq!(digests, 4 * 32, "one digest per row of the next window");

    // Nothing changed: the window's rows come back unchanged and nothing is loaded or merged.
    let jobs = bq_job_counts(emulator, &dataset).await;
    let out = sync(dir.path(), &[]).await;
    assert!(
        out.stdout.contains("4 rows read again in the window were already in the target unchanged"),
        "{}",
        out.stdout
    );
    assert_eq!(bq_job_counts(emulator, &dataset).await, jobs, "no load, no MERGE");

    // A change that leaves the cursor as it was (an application that does not stamp it) and
    // a row stamped inside the window are both sent; the unchanged rows are not.
    mysql_exec(&format!("UPDATE `{db}`.orders SET amount = 4242, updated_at = updated_at WHERE id = 2")).await;
    mysql_exec(&format!(
        "UPDATE `{db}`.orders SET status = 'shipped', updated_at = (SELECT MAX(updated_at) FROM (SELECT updated_at FROM `{db}`.orders) m) WHERE id = 9"
    ))
    .await;
    let out = sync(dir.path(), &[]).await;
    assert!(
        out.stdout.contains("3 rows read again in the window were already in the target unchanged"),
        "{}",
        out.stdout
    );
    let q = format!("SELECT amount FROM `{dataset}`.orders WHERE tenant_id = '{db}' AND id = 2");
    assert_eq!(bq_query(emulator, &q).await[0][0].as_deref(), Some("4242"));
    assert_table_equal(emulator, &dataset, &db, "orders", "id").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_without_a_key_resynced_ten_times_keeps_its_row_count() {
    let emulator = &*EMULATOR;
    let db = unique("nokey");
    create_shop(&db, 40, 10).await;
    // Exact duplicate rows are real rows: they must stay, once each.
    mysql_exec(&format!(
        "INSERT INTO `{db}`.page_views VALUES (7, '/dup', '2024-05-02 00:00:00'), (7, '/dup', '2024-05-02 00:00:00'), (7, '/dup', '2024-05-02 00:00:00')"
    ))
    .await;
    let dataset = unique("nokey");
    let dir = workdir();
    let mut params = flat_params(std::slice::from_ref(&db), &["page_views"], &dataset, emulator, dir.path());
    // A lookback wider than the data: every incremental run re-reads every row.
    params["lookback_minutes"] = json!(50_000_000);
    params["table_options"] = json!({"page_views": {"cursor_column": "viewed_at"}});
    write_json(&dir.path().join("params.json"), &params);
    let expected = mysql_count(&db, "page_views").await;
    for run in 0..10 {
        let out = sync(dir.path(), &[]).await;
        if run > 0 {
            assert!(out.stdout.contains("INCREMENTAL"), "{}", out.stdout);
        }
        assert_eq!(bq_count(emulator, &dataset, "page_views", &db).await, expected, "after run {run}");
    }
    // New rows, including another copy of the duplicate, arrive exactly once.
    mysql_exec(&format!(
        "INSERT INTO `{db}`.page_views VALUES (7, '/dup', '2024-05-02 00:00:00'), (8, '/new', NOW(6))"
    ))
    .await;
    sync(dir.path(), &[]).await;
    sync(dir.path(), &[]).await;
    assert_eq!(bq_count(emulator, &dataset, "page_views", &db).await, expected + 2);
    assert_table_equal(emulator, &dataset, &db, "page_views", "viewed_at, path, user_id").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_big_full_sync_killed_mid_way_resumes_from_its_last_range() {
    let emulator = &*EMULATOR;
    let db = unique("resume");
    create_shop(&db, 50, 40_000).await;
    // The row estimate makes the full sync split the key space into two segments read side
    // by side (range_readers defaults to 2), each resumed where it stopped.
    mysql_exec(&format!("ANALYZE TABLE `{db}`.orders")).await;
    let dataset = unique("resume");
    let dir = workdir();
    let mut pipeline = general_pipeline(&db, &dataset, &emulator.endpoint(), &emulator.project, dir.path());
    pipeline["batch_size"] = json!(500);
    pipeline["chunk_rows"] = json!(4000);
    write_json(&dir.path().join("params.json"), &pipeline);
    let status_dir = dir.path().join("status");

    let mut child = std::process::Command::new(binary())
        .args(["--pipeline", "params.json", "-q"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once a few ranges are durable in staging.
    let started = Instant::now();
    let resumed_rows = loop {
        let rows = state_as_seen(&status_dir, &db)["tables"]["orders"]["resume"]["rows"].as_u64().unwrap_or(0);
        if rows >= 8000 {
            break rows;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(started.elapsed() < Duration::from_secs(120));
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(bq_count(emulator, &dataset, "orders", &db).await, 0, "nothing visible before the commit");
    // The killed run's last records are in its journal, which the next run folds in first.
    let interrupted = state_as_seen(&status_dir, &db);
    assert_eq!(interrupted["tables"]["orders"]["sync_status"], "FAILED", "an interrupted first sync is not a success");

    // Changes to rows already staged are caught by the next incremental run.
    mysql_exec(&format!("UPDATE `{db}`.orders SET amount = 1, updated_at = NOW(6) WHERE id <= 100")).await;
    let out = sync(dir.path(), &["--report-json", "report.json"]).await;
    let log = std::fs::read_to_string(dir.path().join("sync.log")).unwrap();
    assert!(log.contains("resuming an interrupted full sync"), "the rerun resumed");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap()).unwrap();
    let window = report["outcomes"][0]["window"].as_str().unwrap();
    assert!(window.contains("2 segments read at once, resumed after id = "), "{window}");
    assert!(out.stdout.contains("FULL"), "{}", out.stdout);
    assert_eq!(bq_count(emulator, &dataset, "orders", &db).await, 40_000, "{resumed_rows} rows were resumed");
    let st = state(dir.path(), &db);
    assert!(st["tables"]["orders"].get("resume").is_none(), "the resume point is gone after the commit");
    sync(dir.path(), &[]).await;
    assert_table_equal(emulator, &dataset, &db, "orders", "id").await;
}

/// A target table created anew (dropped by hand here; an expired table or another dataset is
/// the same) is filled in full, not with the lookback window only.
#[tokio::test(flavor = "multi_thread")]
async fn a_target_table_dropped_between_runs_is_filled_in_full_again() {
    let emulator = &*EMULATOR;
    let db = unique("dropped");
    create_shop(&db, 20, 500).await;
    let dataset = unique("dropped");
    let run = TestRun::new();
    run.params(&flat_params(std::slice::from_ref(&db), &["orders"], &dataset, emulator, run.path()));
    run.sync(&[]).await;
    let client = reqwest::Client::new();
    let url =
        format!("{}/bigquery/v2/projects/{}/datasets/{dataset}/tables/orders", emulator.endpoint(), emulator.project);
    assert!(client.delete(url).send().await.unwrap().status().is_success());
    mysql_exec(&format!("UPDATE `{db}`.orders SET amount = 1, updated_at = NOW(6) WHERE id <= 3")).await;
    let out = run.sync(&[]).await;
    assert!(out.stdout.contains("full because the target table is new"), "{}", out.stdout);
    assert_eq!(bq_count(emulator, &dataset, "orders", &db).await, 500);
    assert_table_equal(emulator, &dataset, &db, "orders", "id").await;
}

/// An insert-time cursor is named as such wherever the plan shows; `full_every` gives such a
/// table a full sync on schedule.
#[tokio::test(flavor = "multi_thread")]
async fn an_insert_time_cursor_is_named_and_full_every_resyncs_it() {
    let emulator = &*EMULATOR;
    let db = unique("inserttime");
    mysql_exec(&format!(
        "DROP DATABASE IF EXISTS `{db}`; CREATE DATABASE `{db}`;
         CREATE TABLE `{db}`.events (id INT PRIMARY KEY, v INT, created_at DATETIME(6) NOT NULL);
         INSERT INTO `{db}`.events VALUES (1, 1, '2024-01-01'), (2, 2, '2024-01-02');"
    ))
    .await;
    let dataset = unique("inserttime");
    let run = TestRun::new();
    let mut params = flat_params(std::slice::from_ref(&db), &["events"], &dataset, emulator, run.path());
    run.params(&params);
    let note = "cursor created_at is an insert time: updates of older rows are not seen";
    let dry = run.sync(&["--dry-run"]).await;
    assert!(dry.stdout.contains(note), "{}", dry.stdout);
    let out = run.sync(&[]).await;
    assert!(out.stdout.contains(note), "{}", out.stdout);
    let status = run_cli(&["status", "--pipeline", "params.json"], run.path());
    assert!(status.stdout.contains(note), "{}", status.stdout);

    // An update of an old row: an incremental run cannot see it ...
    mysql_exec(&format!("UPDATE `{db}`.events SET v = 10 WHERE id = 1")).await;
    let out = run.sync(&[]).await;
    assert!(out.stdout.contains("INCREMENTAL"), "{}", out.stdout);
    let v = bq_query(emulator, &format!("SELECT v FROM `{dataset}`.events WHERE id = 1")).await;
    assert_eq!(v[0][0].as_deref(), Some("1"));
    // ... a scheduled full sync does.
    params["table_options"] = json!({"events": {"full_every": "1s"}});
    run.params(&params);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = run.sync(&[]).await;
    assert!(out.stdout.contains("full because full_every 1s is due"), "{}", out.stdout);
    assert_table_equal(emulator, &dataset, &db, "events", "id").await;
}

/// A keyless table whose schema changes is re-read in full, and its rows keep their count (the
/// row hash does not depend on column order or on added NULL columns).
#[tokio::test(flavor = "multi_thread")]
async fn a_keyless_table_whose_schema_changes_keeps_its_row_count() {
    let emulator = &*EMULATOR;
    let db = unique("keylessalter");
    create_shop(&db, 60, 5).await;
    let dataset = unique("keylessalter");
    let run = TestRun::new();
    let mut params = flat_params(std::slice::from_ref(&db), &["page_views"], &dataset, emulator, run.path());
    params["lookback_minutes"] = json!(50_000_000);
    params["table_options"] = json!({"page_views": {"cursor_column": "viewed_at"}});
    run.params(&params);
    run.sync(&[]).await;
    let expected = mysql_count(&db, "page_views").await;
    mysql_exec(&format!("ALTER TABLE `{db}`.page_views ADD COLUMN agent VARCHAR(50) NULL")).await;
    for _ in 0..2 {
        run.sync(&[]).await;
        assert_eq!(bq_count(emulator, &dataset, "page_views", &db).await, expected);
    }
    assert_table_equal(emulator, &dataset, &db, "page_views", "viewed_at, path, user_id").await;
}
