use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

fn total_retries(report: &Value) -> u64 {
    report["outcomes"].as_array().unwrap().iter().map(|o| o["retries"].as_u64().unwrap()).sum()
}

fn general(db: &str, dataset: &str, endpoint: &str, project: &str, dir: &std::path::Path) -> Value {
    let mut pipeline = general_pipeline(db, dataset, endpoint, project, dir);
    pipeline["max_retries"] = json!(6);
    pipeline["retry_delay"] = json!(0.3);
    pipeline
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readers_connection_killed_mid_table_is_retried_to_equality() {
    let emulator = &*EMULATOR;
    let db = unique("killconn");
    // Enough rows that the read outlasts the poll below: reads are quick since they overlap
    // staging and encoding.
    create_shop(&db, 30, 60_000).await;
    let dataset = unique("killconn");
    let run = TestRun::new();
    run.params(&general(&db, &dataset, &emulator.endpoint(), &emulator.project, run.path()));
    let child = run.spawn(&[]);
    let started = Instant::now();
    let mut killed = false;
    while started.elapsed() < Duration::from_secs(60) {
        let rows = mysql_rows(&format!(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT %FROM `{db}`.`orders`%' \
             AND ID <> CONNECTION_ID() AND INFO NOT LIKE '%PROCESSLIST%'"
        ))
        .await;
        if let Some(id) = rows.first().and_then(|r| r[0].clone()) {
            mysql_exec(&format!("KILL CONNECTION {id}")).await;
            killed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(killed, "the reader's query was never seen running");
    let out = wait(child).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(total_retries(&run.report()) >= 1, "the lost connection was retried");
    assert_table_equal(emulator, &dataset, &db, "orders", "id").await;
    assert_eq!(bq_count(emulator, &dataset, "orders", &db).await, 60_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn bigquery_answering_503_and_429_for_a_while_is_retried_to_equality() {
    let emulator = &*EMULATOR;
    let db = unique("proxy");
    create_shop(&db, 30, 3_000).await;
    let dataset = unique("proxy");
    let run = TestRun::new();
    let proxy = FaultProxy::start(emulator.endpoint(), vec![503, 503, 429, 503, 429, 429]).await;
    run.params(&general(&db, &dataset, &proxy.endpoint(), &emulator.project, run.path()));
    let out = wait(run.spawn(&[])).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(proxy.faults_served.load(std::sync::atomic::Ordering::SeqCst), 6);
    assert_table_equal(emulator, &dataset, &db, "orders", "id").await;
    assert_eq!(bq_count(emulator, &dataset, "orders", &db).await, 3_000);

    // A second run through a proxy that keeps failing ends with a clear error and no changes.
    mysql_exec(&format!("UPDATE `{db}`.orders SET amount = 0, updated_at = NOW(6) WHERE id <= 10")).await;
    let broken = FaultProxy::start(emulator.endpoint(), vec![503; 1000]).await;
    let mut params = general(&db, &dataset, &broken.endpoint(), &emulator.project, run.path());
    params["max_retries"] = json!(2);
    run.params(&params);
    let out = wait(run.spawn(&[])).await;
    assert_eq!(out.code, 1, "{}", out.all());
    let state = run.state(&db);
    assert_eq!(state["tables"]["orders"]["sync_status"], "FAILED");
    assert!(state["tables"]["orders"]["error_message"].as_str().unwrap().contains("503"), "{state}");
    assert!(state["tables"]["orders"]["watermark"].is_object(), "the last good watermark is kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_emulator_stopped_and_restarted_during_a_run_ends_equal() {
    let emulator = Emulator::fresh("test-project-c");
    let db = unique("restart");
    create_shop(&db, 30, 20_000).await;
    let dataset = unique("restart");
    let run = TestRun::new();
    run.params(&general(&db, &dataset, &emulator.endpoint(), &emulator.project, run.path()));
    let child = run.spawn(&[]);
    // Wait until staging has started, then take BigQuery away for a few seconds.
    let started = Instant::now();
    loop {
        if list_tables(&emulator, &dataset).await.iter().any(|t| t.starts_with("_stage_")) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "staging never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    emulator.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    emulator.restart();
    let out = wait(child).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_table_equal(&emulator, &dataset, &db, "orders", "id").await;
    assert_eq!(bq_count(&emulator, &dataset, "orders", &db).await, 20_000);
    emulator.stop();
}

/// BigQuery going away while jobs run: the emulator loses jobs that were running when it
/// stopped (they stay RUNNING for ever). Every wait is bounded by `job_timeout` and logged; the
/// table fails naming the job, and the next run, with BigQuery healthy, ends equal.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_lost_by_bigquery_fails_its_table_at_job_timeout_and_the_next_run_ends_equal() {
    let emulator = Emulator::fresh("test-project-lost");
    let db = unique("lostjob");
    create_shop(&db, 30, 60_000).await;
    let dataset = unique("lostjob");
    let run = TestRun::new();
    let mut pipeline = general(&db, &dataset, &emulator.endpoint(), &emulator.project, run.path());
    pipeline["sinks"][0]["job_timeout"] = json!(35);
    run.params(&pipeline);
    let child = run.spawn(&["--full"]);
    // Kill the emulator the moment a load job runs: that job is lost.
    let started = Instant::now();
    loop {
        let jobs = bq_get(&emulator, "jobs?maxResults=1000&stateFilter=running").await;
        let loading = jobs["jobs"].as_array().is_some_and(|j| j.iter().any(|j| j["configuration"]["load"].is_object()));
        if loading {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no load job was seen running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    emulator.kill();
    tokio::time::sleep(Duration::from_secs(5)).await;
    emulator.restart();
    let out = wait(child).await;
    assert_eq!(out.code, 1, "the table fails, the run ends: {}", out.all());
    let report = run.report();
    let error = report["outcomes"][0]["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("still running after job_timeout 35 s") && error.contains("BigQuery job load_"), "{error}");
    assert!(run.log().contains("waiting for a BigQuery job"), "every wait says what it waits for");
    run.sync(&[]).await;
    assert_table_equal(&emulator, &dataset, &db, "orders", "id").await;
    emulator.stop();
}

/// A MERGE whose outcome is unknown (BigQuery answers "running" past `job_timeout`) is left in
/// doubt: the next run cancels it and waits for it to end before it writes the table again, so
/// an old MERGE can never land after a newer one.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_in_doubt_is_resolved_before_the_table_is_written_again() {
    let emulator = &*EMULATOR;
    let db = unique("indoubt");
    create_shop(&db, 20, 300).await;
    let dataset = unique("indoubt");
    let run = TestRun::new();
    let hang = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let cancels = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (h, c) = (hang.clone(), cancels.clone());
    let rule: Rule = std::sync::Arc::new(move |method: &str, path: &str| {
        let commit = path.contains("/jobs/commit_");
        if commit && method == "POST" && path.contains("/cancel") {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        (commit && h.load(std::sync::atomic::Ordering::SeqCst))
            .then(|| (200, r#"{"jobReference": {"jobId": "x"}, "status": {"state": "RUNNING"}}"#.to_string()))
    });
    let proxy = FaultProxy::start_with(emulator.endpoint(), Vec::new(), rule).await;
    let mut pipeline = general(&db, &dataset, &proxy.endpoint(), &emulator.project, run.path());
    pipeline["sinks"][0]["job_timeout"] = json!(3);
    run.params(&pipeline);

    let out = run.run(&[]).await;
    assert_eq!(out.code, 1, "{}", out.all());
    let state = run.state(&db);
    let handle = state["tables"]["orders"]["in_doubt"].as_str().expect("the commit is recorded in doubt").to_string();
    assert!(handle.starts_with("commit_"), "{handle}");

    // Still "running": cancelled, waited for, and the table is not written.
    let merges_before = bq_job_counts(emulator, &dataset).await.1;
    let out = run.run(&[]).await;
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.stdout.contains("still running after it was cancelled"), "{}", out.stdout);
    assert!(cancels.load(std::sync::atomic::Ordering::SeqCst) >= 1, "the job in doubt was cancelled");
    assert_eq!(bq_job_counts(emulator, &dataset).await.1, merges_before, "no new MERGE while one is in doubt");

    // It has ended: the table is written again, and nothing is in doubt any more.
    hang.store(false, std::sync::atomic::Ordering::SeqCst);
    mysql_exec(&format!("UPDATE `{db}`.orders SET amount = 5, updated_at = NOW(6) WHERE id < 10")).await;
    run.sync(&[]).await;
    assert!(run.state(&db)["tables"]["orders"].get("in_doubt").is_none());
    assert_table_equal(emulator, &dataset, &db, "orders", "id").await;
}
