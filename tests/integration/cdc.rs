//! Binlog CDC (`--cdc`) against the binlog-enabled MariaDB the tests run (and servers of their
//! own where a test restarts one or purges its log): snapshots under writers, every kind of
//! change, DDL, crashes, purged logs, restarts, new tenants, and the refusal of a server that
//! is not set up for it. Every test ends with BigQuery equal to MySQL value by value.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

/// A replica id no other stream of this test process uses (two streams with one id would
/// make the server drop the older one).
fn server_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    3_000_000_000 + (std::process::id() % 100_000) * 100 + NEXT.fetch_add(1, Ordering::SeqCst)
}

/// A flat params.json for `--cdc`, applying every second.
fn cdc_params(dbs: &[String], tables: &[&str], dataset: &str, run: &TestRun) -> Value {
    let mut p = flat_params(dbs, tables, dataset, &EMULATOR, run.path());
    p["cdc_flush_seconds"] = json!(1);
    p["cdc_server_id"] = json!(server_id());
    p
}

async fn catch_up(run: &TestRun) -> RunOutput {
    let out = run.run(&["--cdc", "--catch-up"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    out
}

/// Every tenant's `orders`, `users` and `page_views` equal in BigQuery and MySQL.
async fn assert_shops_equal(dataset: &str, dbs: &[String], url: Option<&str>) {
    let how = Compared { mysql_url: url, ..Default::default() };
    for db in dbs {
        assert_table_equal_as(&EMULATOR, dataset, db, "orders", "id", &how).await;
        assert_table_equal_as(&EMULATOR, dataset, db, "users", "id", &how).await;
        assert_table_equal_as(&EMULATOR, dataset, db, "page_views", "user_id, path, viewed_at", &how).await;
    }
}

/// Changes of every kind in transactions until `stop`: inserts, updates, deletes, key
/// changes, and identical rows added and removed in a table without a key. Returns the
/// number of transactions.
async fn churn(url: String, db: String, stop: Arc<AtomicBool>, seed: u64) -> u32 {
    use mysql_async::prelude::Queryable;
    let pool = mysql_async::Pool::new(url.as_str());
    let mut conn = pool.get_conn().await.unwrap();
    conn.query_drop("SET NAMES utf8mb4").await.unwrap();
    let mut x = seed;
    let mut next = move |n: u64| {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) % n
    };
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let (a, b, c) = (next(400) + 1, next(400) + 1, next(60) + 1);
        let sql = match next(6) {
            0 => format!(
                "INSERT INTO `{db}`.orders (user_id, amount, status, attributes, created_at, updated_at) \
                 VALUES ({c}, {a}.25, 'new', JSON_OBJECT('n', {n}), NOW(6), NOW(6))"
            ),
            1 => format!(
                "UPDATE `{db}`.orders SET amount = amount + 1, status = 'paid', updated_at = NOW(6) WHERE id = {a}"
            ),
            2 => format!("DELETE FROM `{db}`.orders WHERE id = {b}"),
            // A key change: the row moves to a new id (negative ids are never generated).
            3 => format!("UPDATE `{db}`.orders SET id = -id WHERE id = {a}"),
            4 => format!(
                "INSERT INTO `{db}`.page_views (user_id, path, viewed_at) VALUES ({c}, '/dup', '2024-01-01 00:00:00'), \
                 ({c}, '/dup', '2024-01-01 00:00:00'); DELETE FROM `{db}`.page_views WHERE user_id = {c} AND path = '/dup' LIMIT 1"
            ),
            _ => format!("UPDATE `{db}`.users SET balance = balance - 1, nickname = '改 {n}' WHERE id = {c}"),
        };
        conn.query_drop(format!("START TRANSACTION; {sql}; COMMIT")).await.unwrap();
        // A few hundred transactions a second: every snapshot still falls between writes, and
        // the writers leave the shared server and emulator to the other tests.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    drop(conn);
    pool.disconnect().await.unwrap();
    n
}

fn start_churn(url: &str, dbs: &[String]) -> (Arc<AtomicBool>, Vec<tokio::task::JoinHandle<u32>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let writers = dbs
        .iter()
        .enumerate()
        .map(|(i, db)| tokio::spawn(churn(url.to_string(), db.clone(), stop.clone(), 7 + i as u64)))
        .collect();
    (stop, writers)
}

async fn stop_churn((stop, writers): (Arc<AtomicBool>, Vec<tokio::task::JoinHandle<u32>>)) {
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        assert!(w.await.unwrap() > 5, "the writer made changes");
    }
}

fn signal(child: &std::process::Child, sig: &str) {
    std::process::Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap();
}

/// Waits until the stream's state, saved after this call, says it applied a position at or
/// past the log's head now.
async fn wait_applied(run: &TestRun, url: &str) {
    let since = chrono::Utc::now().naive_utc();
    // A change in a database no pipeline reads moves the log's head: the stream passes it and
    // saves its position, even when the pipeline's own tables did not change.
    mysql_exec_at(url, "CREATE DATABASE IF NOT EXISTS cdc_tick; CREATE TABLE IF NOT EXISTS cdc_tick.t (n INT); INSERT INTO cdc_tick.t VALUES (1)")
        .await;
    let head = mysql_rows_at(url, "SHOW MASTER STATUS").await;
    let (file, pos) = (head[0][0].clone().unwrap(), head[0][1].clone().unwrap().parse::<u64>().unwrap());
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(text) = std::fs::read_to_string(run.path().join("status/cdc/stream.json")) {
            let state: Value = serde_json::from_str(&text).unwrap();
            let saved = state["updated_at"].as_str().and_then(|t| t.parse::<chrono::NaiveDateTime>().ok());
            if let Some(at) = state["applied"]["coordinates"].as_str().filter(|_| saved.is_some_and(|t| t >= since)) {
                let (f, p) = at.rsplit_once(':').unwrap();
                if f > file.as_str() || (f == file && p.parse::<u64>().unwrap() >= pos) {
                    return;
                }
            }
        }
        assert!(Instant::now() < deadline, "the stream did not reach {file}:{pos} in 90 s:\n{}", run.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_under_concurrent_writers_then_every_change_streams_to_equality() {
    let dbs: Vec<String> = (1..=2).map(|i| unique(&format!("cdc_w{i}"))).collect();
    for db in &dbs {
        create_shop(db, 60, 400).await;
    }
    let dataset = unique("cdc_writers");
    let run = TestRun::new();
    run.params(&cdc_params(&dbs, &["orders", "users", "page_views"], &dataset, &run));
    // The snapshot is taken while the writers run: its position must split their changes
    // exactly into "in the snapshot" and "streamed".
    let writers = start_churn(&mysql_url(), &dbs);
    let first = catch_up(&run).await;
    assert!(first.stdout.contains("6 snapshots"), "{}", first.stdout);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = catch_up(&run).await;
    assert!(second.stdout.contains("0 snapshots"), "the stream carries every table now:\n{}", second.stdout);
    stop_churn(writers).await;
    catch_up(&run).await;
    assert_shops_equal(&dataset, &dbs, None).await;
    // Deleted rows are gone, moved keys moved, and the table without a key kept its copies.
    let moved = mysql_rows(&format!("SELECT COUNT(*) FROM `{}`.orders WHERE id < 0", dbs[0])).await;
    assert_ne!(moved[0][0].as_deref(), Some("0"), "some keys changed");

    let status =
        run_cli_async(vec!["status".into(), "--pipeline".into(), "params.json".into()], run.path().into()).await;
    assert_eq!(status.code, 0, "{}", status.all());
    assert!(
        status.stdout.contains(&format!("{}.orders", dbs[0])) && status.stdout.contains(" CDC "),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("change stream: stopped, applied up to mariadb-bin."), "{}", status.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_type_streams_exactly_through_inserts_key_moves_and_deletes() {
    let db = unique("cdc_types");
    mysql_exec(&crate::types::all_types_sql(&db, false)).await;
    let dataset = unique("cdc_types");
    let run = TestRun::new();
    let mut params = cdc_params(std::slice::from_ref(&db), &["all_types"], &dataset, &run);
    params["table_options"] = json!({"all_types": {"column_types": {"flag_bool": "BOOL"}}});
    run.params(&params);
    catch_up(&run).await;
    // Every edge value arrives through the binlog, not the snapshot.
    mysql_exec(&crate::types::all_types_rows(&db)).await;
    let out = catch_up(&run).await;
    assert!(out.stdout.contains("4 upserts"), "{}", out.stdout);
    assert_eq!(assert_table_equal(&EMULATOR, &dataset, &db, "all_types", "id").await, 41);
    mysql_exec(&format!(
        "UPDATE `{db}`.all_types SET id = id + 10 WHERE id <= 2; UPDATE `{db}`.all_types SET vc = 'changed', f = 2.5 WHERE id = 4;
         DELETE FROM `{db}`.all_types WHERE id = 3"
    ))
    .await;
    catch_up(&run).await;
    assert_eq!(assert_table_equal(&EMULATOR, &dataset, &db, "all_types", "id").await, 41);
}

#[tokio::test(flavor = "multi_thread")]
async fn deletes_key_changes_and_identical_rows_apply_exactly_with_soft_deletes_too() {
    for deletes in ["delete", "soft"] {
        let db = unique("cdc_del");
        create_shop(&db, 10, 20).await;
        let dataset = unique("cdc_del");
        let run = TestRun::new();
        let mut params = cdc_params(std::slice::from_ref(&db), &["orders", "users", "page_views"], &dataset, &run);
        params["cdc_deletes"] = json!(deletes);
        run.params(&params);
        catch_up(&run).await;
        mysql_exec(&format!(
            "DELETE FROM `{db}`.orders WHERE id IN (1, 2, 3);
             UPDATE `{db}`.orders SET id = 500 WHERE id = 4;
             UPDATE `{db}`.orders SET id = 4 WHERE id = 5;
             INSERT INTO `{db}`.orders (id, user_id, amount, status, created_at, updated_at) VALUES (1, 1, 9.5, 'new', NOW(6), NOW(6));
             DELETE FROM `{db}`.page_views;
             INSERT INTO `{db}`.page_views VALUES (1, '/same', '2024-01-01'), (1, '/same', '2024-01-01'), (1, '/same', '2024-01-01');
             DELETE FROM `{db}`.page_views LIMIT 1;
             UPDATE `{db}`.page_views SET path = '/moved' LIMIT 1;"
        ))
        .await;
        catch_up(&run).await;
        // A second pass over the same changes (a crash before the position was saved) changes nothing.
        let state_file = run.path().join("status/cdc/stream.json");
        let saved = std::fs::read_to_string(&state_file).unwrap();
        let mut replay: Value = serde_json::from_str(&saved).unwrap();
        let earlier = run.state(&db)["tables"]["orders"]["cdc"]["snapshot"].clone();
        replay["applied"] = earlier;
        write_json(&state_file, &replay);
        catch_up(&run).await;
        let live = if deletes == "soft" { Some("`_deleted_at` IS NULL") } else { None };
        let how = Compared { bq_filter: live, ..Default::default() };
        assert_table_equal_as(&EMULATOR, &dataset, &db, "orders", "id", &how).await;
        assert_table_equal_as(&EMULATOR, &dataset, &db, "users", "id", &how).await;
        assert_table_equal(&EMULATOR, &dataset, &db, "page_views", "user_id, path, viewed_at").await;
        if deletes == "soft" {
            let kept = bq_query(
                &EMULATOR,
                &format!(
                    "SELECT COUNT(*) FROM `{dataset}`.orders WHERE tenant_id = '{db}' AND `_deleted_at` IS NOT NULL"
                ),
            )
            .await;
            // Rows 2 and 3 (deleted) and 5 (moved to 4) stay, marked; 1 and 4 were written again.
            assert_eq!(kept[0][0].as_deref(), Some("3"), "soft-deleted rows are kept");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn add_column_truncate_and_drop_mid_stream_then_sigterm_applies_and_exits_zero() {
    let dbs: Vec<String> = (1..=2).map(|i| unique(&format!("cdc_ddl{i}"))).collect();
    for db in &dbs {
        create_shop(db, 10, 30).await;
    }
    let dataset = unique("cdc_ddl");
    let run = TestRun::new();
    run.params(&cdc_params(&dbs, &["orders", "users", "page_views"], &dataset, &run));
    let child = run.spawn(&["--cdc", "--metrics-file", "cdc.prom"]);
    let (a, b) = (&dbs[0], &dbs[1]);
    wait_applied(&run, &mysql_url()).await;
    mysql_exec(&format!(
        "ALTER TABLE `{a}`.orders ADD COLUMN channel VARCHAR(10) NOT NULL DEFAULT 'web';
         INSERT INTO `{a}`.orders (user_id, amount, status, channel, created_at, updated_at) VALUES (1, 1, 'new', 'app', NOW(6), NOW(6));
         UPDATE `{a}`.orders SET amount = 77 WHERE id = 3;
         TRUNCATE `{b}`.page_views;
         INSERT INTO `{b}`.page_views VALUES (5, '/after-truncate', '2024-05-05');
         UPDATE `{b}`.users SET name = 'après' WHERE id = 2;"
    ))
    .await;
    wait_applied(&run, &mysql_url()).await;
    signal(&child, "-TERM");
    let out = wait(child).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("1 truncates"), "{}", out.stdout);
    assert_shops_equal(&dataset, &dbs, None).await;
    let metrics = std::fs::read_to_string(run.path().join("cdc.prom")).unwrap_or_default();
    let value = |name: &str, labels: &[&str]| -> Option<f64> {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let upserts = value("connector_cdc_rows_applied_total", &["op=\"upsert\"", "table=\"users\""]);
    assert!(upserts.is_some_and(|n| n >= 1.0), "rows applied by operation:\n{metrics}");
    assert!(value("connector_cdc_events_total", &["target=\"default\""]).is_some_and(|n| n > 0.0), "{metrics}");
    assert!(value("connector_cdc_lag_seconds", &["target=\"default\""]).is_some(), "{metrics}");
    let filled = bq_query(
        &EMULATOR,
        &format!("SELECT COUNT(*) FROM `{dataset}`.orders WHERE tenant_id = '{a}' AND channel = 'web'"),
    )
    .await;
    assert_eq!(filled[0][0].as_deref(), Some("30"), "existing rows carry the new column's default");

    // A table dropped or renamed while streaming is reported and stops; a dropped column goes
    // through schema evolution; the others go on.
    let child = run.spawn(&["--cdc"]);
    wait_applied(&run, &mysql_url()).await;
    mysql_exec(&format!(
        "DROP TABLE `{b}`.users; RENAME TABLE `{b}`.page_views TO `{b}`.page_views_old;
         UPDATE `{a}`.users SET balance = 1 WHERE id = 1;
         ALTER TABLE `{a}`.orders DROP COLUMN channel; UPDATE `{a}`.orders SET amount = 88 WHERE id = 4;"
    ))
    .await;
    wait_applied(&run, &mysql_url()).await;
    signal(&child, "-TERM");
    let out = wait(child).await;
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stdout.contains(&format!("{b}.users stopped streaming")) && out.stdout.contains("dropped"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains(&format!("{b}.page_views stopped streaming")), "{}", out.stdout);
    assert_table_equal(&EMULATOR, &dataset, a, "users", "id").await;
    assert_table_equal(&EMULATOR, &dataset, a, "orders", "id").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_at_random_moments_while_streaming_loses_and_doubles_nothing() {
    let dbs: Vec<String> = (1..=2).map(|i| unique(&format!("cdc_kill{i}"))).collect();
    for db in &dbs {
        create_shop(db, 40, 200).await;
    }
    let dataset = unique("cdc_kill");
    let run = TestRun::new();
    run.params(&cdc_params(&dbs, &["orders", "users", "page_views"], &dataset, &run));
    let writers = start_churn(&mysql_url(), &dbs);
    let mut x = 12345u64;
    for round in 0..4 {
        let child = run.spawn(&["--cdc"]);
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        // Somewhere in snapshotting (round 0), staging, applying or saving.
        let ms = 1500 + (x >> 33) % 4000;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        signal(&child, "-KILL");
        let out = wait(child).await;
        assert_ne!(out.code, 0, "round {round}: the run was killed, not finished:\n{}", out.all());
    }
    stop_churn(writers).await;
    catch_up(&run).await;
    assert_shops_equal(&dataset, &dbs, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_created_while_streaming_is_snapshotted_and_joins_without_losing_changes() {
    let first = unique("cdc_join_a");
    let late = unique("cdc_join_b");
    create_shop(&first, 10, 20).await;
    mysql_exec(&format!("DROP DATABASE IF EXISTS `{late}`")).await;
    let dataset = unique("cdc_join");
    let run = TestRun::new();
    let dbs = vec![first.clone(), late.clone()];
    run.params(&cdc_params(&dbs, &["orders", "users", "page_views"], &dataset, &run));
    let child = run.spawn(&["--cdc"]);
    wait_applied(&run, &mysql_url()).await;
    // The tenant appears, and its rows change right after it does.
    create_shop(&late, 15, 40).await;
    mysql_exec(&format!(
        "UPDATE `{late}`.orders SET amount = 1 WHERE id <= 10; DELETE FROM `{late}`.orders WHERE id = 20;
         INSERT INTO `{late}`.page_views VALUES (9, '/new', '2024-09-09');
         UPDATE `{first}`.orders SET amount = 2 WHERE id = 1;"
    ))
    .await;
    wait_applied(&run, &mysql_url()).await;
    mysql_exec(&format!("UPDATE `{late}`.orders SET amount = 3 WHERE id = 11")).await;
    wait_applied(&run, &mysql_url()).await;
    signal(&child, "-TERM");
    let out = wait(child).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_shops_equal(&dataset, &dbs, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purged_binlog_resnapshots_only_the_tables_behind_it() {
    let server = PrivateServer::start();
    let url = server.url();
    let db = unique("cdc_purge");
    create_shop_at(&url, &db, 10, 30).await;
    let dataset = unique("cdc_purge");
    let run = TestRun::new();
    let mut params = cdc_params(std::slice::from_ref(&db), &["orders", "users", "page_views"], &dataset, &run);
    params["db_port"] = json!(server.port.to_string());
    run.params(&params);
    catch_up(&run).await;
    // While connector-run is stopped, changes are made and their binlog is purged.
    mysql_exec_at(
        &url,
        &format!("UPDATE `{db}`.orders SET amount = 5 WHERE id < 10; DELETE FROM `{db}`.users WHERE id = 3"),
    )
    .await;
    let before = mysql_rows_at(&url, "SHOW BINARY LOGS").await[0][0].clone();
    // MariaDB skips a log a dump thread still reads (the last run's, closing): until it is gone.
    for attempt in 0.. {
        mysql_exec_at(&url, "FLUSH BINARY LOGS").await;
        let head = mysql_rows_at(&url, "SHOW MASTER STATUS").await;
        mysql_exec_at(&url, &format!("PURGE BINARY LOGS TO '{}'", head[0][0].clone().unwrap())).await;
        if mysql_rows_at(&url, "SHOW BINARY LOGS").await[0][0] != before {
            break;
        }
        assert!(attempt < 40, "the binlog could not be purged");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let out = catch_up(&run).await;
    assert!(out.stdout.contains("3 snapshots"), "{}", out.stdout);
    let report = run.report();
    let reasons = report.to_string();
    assert!(reasons.contains("purged"), "the report says why: {reasons}");
    assert_shops_equal(&dataset, std::slice::from_ref(&db), Some(&url)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_connection_and_a_server_restart_while_streaming_are_ridden_out() {
    let server = PrivateServer::start();
    let url = server.url();
    let db = unique("cdc_restart");
    create_shop_at(&url, &db, 10, 30).await;
    let dataset = unique("cdc_restart");
    let run = TestRun::new();
    let mut params = cdc_params(std::slice::from_ref(&db), &["orders", "users", "page_views"], &dataset, &run);
    params["db_port"] = json!(server.port.to_string());
    params["retry_delay"] = json!(0.5);
    run.params(&params);
    let child = run.spawn(&["--cdc"]);
    wait_applied(&run, &url).await;
    // The stream's connection killed on the server, then the server restarted.
    let dumps =
        mysql_rows_at(&url, "SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'").await;
    assert!(!dumps.is_empty(), "the stream has a dump connection");
    for d in dumps {
        mysql_exec_at(&url, &format!("KILL {}", d[0].as_deref().unwrap_or("0"))).await;
    }
    mysql_exec_at(&url, &format!("UPDATE `{db}`.orders SET amount = 6 WHERE id < 5")).await;
    wait_applied(&run, &url).await;
    server.restart();
    mysql_exec_at(
        &url,
        &format!(
            "DELETE FROM `{db}`.orders WHERE id = 7; INSERT INTO `{db}`.page_views VALUES (1, '/r', '2024-01-01')"
        ),
    )
    .await;
    wait_applied(&run, &url).await;
    signal(&child, "-TERM");
    let out = wait(child).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(run.log().contains("opening it again"), "the stream reconnected:\n{}", run.log());
    assert_shops_equal(&dataset, std::slice::from_ref(&db), Some(&url)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_binlog_or_grants_is_refused_with_every_fix_listed() {
    // A server that keeps no binary log (MariaDB's defaults otherwise); the check refuses
    // before any table is read, so the database need not exist.
    let plain = PrivateServer::start_without_binlog();
    let db = unique("cdc_refused");
    let run = TestRun::new();
    let mut params = cdc_params(std::slice::from_ref(&db), &[], &unique("cdc_refused"), &run);
    params["db_port"] = json!(plain.port.to_string());
    run.params(&params);
    let out = run.run(&["--cdc"]).await;
    assert_eq!(out.code, 2, "{}", out.all());
    for needed in ["log_bin is OFF", "binlog_format is", "binlog_row_metadata is", "docs/cdc.md"] {
        assert!(out.stderr.contains(needed), "{needed}:\n{}", out.stderr);
    }
    assert!(!run.path().join("status").exists(), "a refused run writes no state");
    drop(plain);

    // A user with SELECT only, on a server that is set up.
    let user = unique("cdc_reader");
    mysql_exec(&format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'pw-{user}'; GRANT SELECT ON *.* TO '{user}'@'%'"))
        .await;
    let mut params = cdc_params(&[unique("x")], &[], &unique("cdc_refused"), &run);
    params["db_user"] = json!(user);
    params["db_pass"] = json!(format!("pw-{user}"));
    run.params(&params);
    let out = run.run(&["--cdc"]).await;
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr.contains("lacks REPLICATION SLAVE") && out.stderr.contains("lacks BINLOG MONITOR"),
        "{}",
        out.stderr
    );
    assert!(!out.all().contains(&format!("pw-{user}")), "no secret in the output");
    mysql_exec(&format!("DROP USER '{user}'@'%'")).await;

    // The same grants through a default role are enough.
    let (user, role) = (unique("cdc_roled"), unique("cdc_role"));
    let db = unique("cdc_roledb");
    create_shop(&db, 3, 3).await;
    mysql_exec(&format!(
        "CREATE ROLE '{role}'; GRANT SELECT, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO '{role}';
         CREATE USER '{user}'@'%' IDENTIFIED BY 'pw-{user}'; GRANT '{role}' TO '{user}'@'%';
         SET DEFAULT ROLE '{role}' FOR '{user}'@'%';"
    ))
    .await;
    let mut params = cdc_params(std::slice::from_ref(&db), &["orders"], &unique("cdc_roled"), &run);
    params["db_user"] = json!(user);
    params["db_pass"] = json!(format!("pw-{user}"));
    run.params(&params);
    let out = run.run(&["--cdc", "--catch-up"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_table_equal(&EMULATOR, params["bq_dataset"].as_str().unwrap(), &db, "orders", "id").await;
    mysql_exec(&format!("DROP USER '{user}'@'%'; DROP ROLE '{role}'")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_targets_stream_on_their_own_and_one_that_was_down_catches_up() {
    let db = unique("cdc_two");
    create_shop(&db, 10, 30).await;
    let other = Emulator::fresh("two-project");
    let (d1, d2) = (unique("cdc_two_a"), unique("cdc_two_b"));
    let run = TestRun::new();
    let mut params = cdc_params(std::slice::from_ref(&db), &["orders", "users", "page_views"], &d1, &run);
    params["targets"] = json!([
        {"id": "main", "bq_dataset": d1},
        {"id": "copy", "bq_dataset": d2, "bq_project": other.project, "bq_endpoint": other.endpoint()}
    ]);
    params["max_retries"] = json!(1);
    run.params(&params);
    catch_up(&run).await;
    other.stop();
    mysql_exec(&format!("UPDATE `{db}`.orders SET amount = 8 WHERE id < 8; DELETE FROM `{db}`.orders WHERE id = 9"))
        .await;
    let out = run.run(&["--cdc", "--catch-up"]).await;
    assert_eq!(out.code, 1, "the down target is reported:\n{}", out.all());
    assert_shops_equal(&d1, std::slice::from_ref(&db), None).await;
    other.restart();
    catch_up(&run).await;
    let how = Compared::default();
    for (table, order) in [("orders", "id"), ("users", "id"), ("page_views", "user_id, path, viewed_at")] {
        assert_table_equal_as(&other, &d2, &db, table, order, &how).await;
    }
    other.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn switching_from_cursor_syncs_to_cdc_and_back_leaves_no_gap() {
    let db = unique("cdc_switch");
    create_shop(&db, 10, 30).await;
    let dataset = unique("cdc_switch");
    let run = TestRun::new();
    run.params(&cdc_params(std::slice::from_ref(&db), &["orders", "users", "page_views"], &dataset, &run));
    run.sync(&[]).await;
    mysql_exec(&format!("UPDATE `{db}`.orders SET amount = 1 WHERE id = 1")).await;
    let out = catch_up(&run).await;
    assert!(out.stdout.contains("3 snapshots"), "cursor state is not a stream position:\n{}", out.stdout);
    mysql_exec(&format!("DELETE FROM `{db}`.orders WHERE id = 2; UPDATE `{db}`.users SET balance = 0")).await;
    catch_up(&run).await;
    assert_shops_equal(&dataset, std::slice::from_ref(&db), None).await;
    // Back to cursor syncs: the first one after the stream reads the tables in full.
    mysql_exec(&format!("DELETE FROM `{db}`.orders WHERE id = 3")).await;
    let out = run.sync(&[]).await;
    assert!(out.stdout.contains("FULL"), "{}", out.stdout);
    assert_shops_equal(&dataset, std::slice::from_ref(&db), None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_of_a_hundred_thousand_rows_streams_through() {
    let db = unique("cdc_big");
    create_shop(&db, 5, 5).await;
    let dataset = unique("cdc_big");
    let run = TestRun::new();
    let mut params = cdc_params(std::slice::from_ref(&db), &["orders", "users", "page_views"], &dataset, &run);
    params["batch_size"] = json!(1000);
    run.params(&params);
    catch_up(&run).await;
    mysql_exec(&format!(
        "SET SESSION max_recursive_iterations = 1000000; START TRANSACTION;
         INSERT INTO `{db}`.page_views (user_id, path, viewed_at)
         WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < 100000)
         SELECT n % 100, CONCAT('/p/', n % 1000), TIMESTAMP('2024-01-01') + INTERVAL n SECOND FROM seq;
         UPDATE `{db}`.orders SET amount = 0; COMMIT;"
    ))
    .await;
    let out = catch_up(&run).await;
    assert!(out.stdout.contains("100005 upserts"), "{}", out.stdout);
    assert_eq!(bq_count(&EMULATOR, &dataset, "page_views", &db).await, mysql_count(&db, "page_views").await);
    assert_shops_equal(&dataset, std::slice::from_ref(&db), None).await;
}

/// A run that streams only some tenants (`--databases`) moves the stream's position past the
/// changes of the others; those are not lost: a table the stream did not carry streams again
/// from its own position.
#[tokio::test(flavor = "multi_thread")]
async fn tenants_left_out_of_one_stream_run_keep_their_changes_for_the_next() {
    let dbs: Vec<String> = (1..=2).map(|i| unique(&format!("cdc_sel{i}"))).collect();
    for db in &dbs {
        create_shop(db, 10, 30).await;
    }
    let dataset = unique("cdc_sel");
    let run = TestRun::new();
    run.params(&cdc_params(&dbs, &["orders", "users", "page_views"], &dataset, &run));
    catch_up(&run).await;
    let (a, b) = (&dbs[0], &dbs[1]);
    let changed_at = std::time::Instant::now();
    mysql_exec(&format!(
        "UPDATE `{b}`.orders SET amount = 4242 WHERE id <= 5; DELETE FROM `{b}`.users WHERE id = 2;
         UPDATE `{a}`.orders SET amount = 1 WHERE id = 1;"
    ))
    .await;
    let out = run.run(&["--cdc", "--catch-up", "--databases", a]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_table_equal(&EMULATOR, &dataset, a, "orders", "id").await;
    let out = catch_up(&run).await;
    assert!(out.stdout.contains("0 snapshots"), "streamed, not snapshotted again:\n{}", out.stdout);
    assert_shops_equal(&dataset, &dbs, None).await;

    // `status` names the position with its GTID, the log's head and the lag.
    let status =
        run_cli_async(vec!["status".into(), "--pipeline".into(), "params.json".into()], run.path().into()).await;
    assert_eq!(status.code, 0, "{}", status.all());
    let line = status.stdout.lines().find(|l| l.starts_with("change stream")).unwrap_or_default().to_string();
    let part = |from: &str, to: &str| line.split_once(from).and_then(|(_, r)| r.split_once(to)).map(|(p, _)| p);
    let (applied, head) = (part("applied up to ", " (GTID 0-"), part("log head ", " (GTID 0-"));
    let lag: Option<f64> = part(", lag ", " s").and_then(|l| l.parse().ok());
    assert!(
        applied.is_some_and(|p| p.starts_with("mariadb-bin.")) && head.is_some_and(|h| h.starts_with("mariadb-bin.")),
        "{}",
        status.stdout
    );
    let lag = lag.unwrap_or_else(|| panic!("no lag in seconds:\n{}", status.stdout));
    // Other tests write to the same server, so the log's head may have moved on since the run
    // ended. At the head there is no lag; behind it, the lag counts from a commit no older than
    // this test's own changes, which the run applied. (Binlog times are whole seconds, and an
    // autocommit statement of another test is stamped when it started, not when it committed.)
    if applied == head {
        assert_eq!(lag, 0.0, "{}", status.stdout);
    }
    assert!(lag <= changed_at.elapsed().as_secs_f64() + 5.0, "{}", status.stdout);
}

/// The binlog purged past one tenant's position but not another's: only the tenant behind is
/// snapshotted again; the other streams on.
#[tokio::test(flavor = "multi_thread")]
async fn a_purge_past_one_tenant_resnapshots_that_tenant_only() {
    let server = PrivateServer::start();
    let url = server.url();
    let (ahead, behind) = (unique("cdc_ahead"), unique("cdc_behind"));
    for db in [&ahead, &behind] {
        create_shop_at(&url, db, 10, 30).await;
    }
    let dbs = vec![ahead.clone(), behind.clone()];
    let dataset = unique("cdc_purge2");
    let run = TestRun::new();
    let mut params = cdc_params(&dbs, &["orders", "users", "page_views"], &dataset, &run);
    params["db_port"] = json!(server.port.to_string());
    run.params(&params);
    catch_up(&run).await;
    mysql_exec_at(
        &url,
        &format!(
            "UPDATE `{behind}`.orders SET amount = 9 WHERE id < 5; UPDATE `{ahead}`.orders SET amount = 8 WHERE id < 5"
        ),
    )
    .await;
    // Only `ahead` streams past those changes, into the next log file.
    mysql_exec_at(&url, "FLUSH BINARY LOGS").await;
    mysql_exec_at(&url, &format!("UPDATE `{ahead}`.users SET balance = 3 WHERE id = 1")).await;
    let out = run.run(&["--cdc", "--catch-up", "--databases", &ahead]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let current = mysql_rows_at(&url, "SHOW MASTER STATUS").await[0][0].clone().unwrap();
    for attempt in 0.. {
        mysql_exec_at(&url, &format!("PURGE BINARY LOGS TO '{current}'")).await;
        if mysql_rows_at(&url, "SHOW BINARY LOGS").await[0][0].as_deref() == Some(current.as_str()) {
            break;
        }
        assert!(attempt < 40, "the binlog could not be purged");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let out = catch_up(&run).await;
    assert!(out.stdout.contains("3 snapshots"), "the behind tenant's three tables only:\n{}", out.stdout);
    let report = run.report().to_string();
    assert!(report.contains(&behind) && report.contains("purged"), "{report}");
    assert_shops_equal(&dataset, &dbs, Some(&url)).await;
}

/// `RESET MASTER` empties the log and starts it again from its first file: a recorded position
/// there points into another log. It is detected (missing file, or the GTID at the position
/// differs) and the tables are snapshotted again.
#[tokio::test(flavor = "multi_thread")]
async fn a_reset_log_is_detected_and_the_tables_are_snapshotted_again() {
    let server = PrivateServer::start();
    let url = server.url();
    let db = unique("cdc_reset");
    create_shop_at(&url, &db, 10, 30).await;
    let dataset = unique("cdc_reset");
    let run = TestRun::new();
    let mut params = cdc_params(std::slice::from_ref(&db), &["orders", "users", "page_views"], &dataset, &run);
    params["db_port"] = json!(server.port.to_string());
    run.params(&params);
    catch_up(&run).await;
    mysql_exec_at(&url, &format!("UPDATE `{db}`.orders SET amount = 5 WHERE id < 10")).await;
    mysql_exec_at(&url, "RESET MASTER").await;
    // The new log grows past the recorded offset, so the coordinates exist again.
    create_shop_at(&url, &unique("cdc_filler"), 200, 2000).await;
    mysql_exec_at(&url, &format!("DELETE FROM `{db}`.users WHERE id = 2")).await;
    let out = catch_up(&run).await;
    assert!(out.stdout.contains("3 snapshots"), "{}", out.stdout);
    assert_shops_equal(&dataset, std::slice::from_ref(&db), Some(&url)).await;
}

/// An event the stream cannot read exactly (here MariaDB's compressed row events, switched on
/// while it streams) stops the stream with an error that names it: nothing is skipped.
#[tokio::test(flavor = "multi_thread")]
async fn a_compressed_event_stops_the_stream_naming_it() {
    let server = PrivateServer::start();
    let url = server.url();
    let db = unique("cdc_compress");
    create_shop_at(&url, &db, 10, 30).await;
    let dataset = unique("cdc_compress");
    let run = TestRun::new();
    let mut params = cdc_params(std::slice::from_ref(&db), &["users"], &dataset, &run);
    params["db_port"] = json!(server.port.to_string());
    run.params(&params);
    let child = run.spawn(&["--cdc"]);
    wait_applied(&run, &url).await;
    mysql_exec_at(
        &url,
        &format!(
            "SET GLOBAL log_bin_compress = ON; SET GLOBAL log_bin_compress_min_len = 10;
             UPDATE `{db}`.users SET nickname = REPEAT('compress me ', 8) WHERE id < 5"
        ),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run.log().contains("a compressed event") {
        assert!(Instant::now() < deadline, "no error named the compressed event:\n{}", run.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    signal(&child, "-TERM");
    let out = wait(child).await;
    assert_ne!(out.code, 0, "a stream that stopped on an event is a failure:\n{}", out.all());
    assert!(out.stdout.contains("log_bin_compress = OFF"), "the report says what to do:\n{}", out.stdout);
    let before =
        bq_query(&EMULATOR, &format!("SELECT COUNT(*) FROM `{dataset}`.users WHERE nickname LIKE 'compress me%'"))
            .await;
    assert_eq!(before[0][0].as_deref(), Some("0"), "the compressed changes were not applied as something else");
}
