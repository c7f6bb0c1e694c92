use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

fn report(dir: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

fn total_retries(report: &Value) -> u64 {
    report["outcomes"].as_array().unwrap().iter().map(|o| o["retries"].as_u64().unwrap()).sum()
}

fn general(db: &str, dataset: &str, endpoint: &str, project: &str, dir: &std::path::Path) -> Value {
    let mut pipeline = general_pipeline(db, dataset, endpoint, project, dir);
    pipeline["max_retries"] = json!(6);
    pipeline["retry_delay"] = json!(0.3);
    pipeline
}

fn spawn_run(dir: &std::path::Path) -> std::process::Child {
    std::process::Command::new(binary())
        .args(["--pipeline", "params.json", "--report-json", "report.json", "-q"])
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

async fn wait(child: std::process::Child) -> RunOutput {
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap().into()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readers_connection_killed_mid_table_is_retried_to_equality() {
    let emulator = &*EMULATOR;
    let db = unique("killconn");
    // Enough rows that the read outlasts the poll below: reads are quick since they overlap
    // staging and encoding.
    create_shop(&db, 30, 60_000).await;
    let dataset = unique("killconn");
    let dir = workdir();
    write_json(
        &dir.path().join("params.json"),
        &general(&db, &dataset, &emulator.endpoint(), &emulator.project, dir.path()),
    );
    let child = spawn_run(dir.path());
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
    assert!(total_retries(&report(dir.path())) >= 1, "the lost connection was retried");
    assert_table_equal(emulator, &dataset, &db, "orders", "id").await;
    assert_eq!(bq_count(emulator, &dataset, "orders", &db).await, 60_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn bigquery_answering_503_and_429_for_a_while_is_retried_to_equality() {
    let emulator = &*EMULATOR;
    let db = unique("proxy");
    create_shop(&db, 30, 3_000).await;
    let dataset = unique("proxy");
    let dir = workdir();
    let proxy = FaultProxy::start(emulator.endpoint(), vec![503, 503, 429, 503, 429, 429]).await;
    write_json(
        &dir.path().join("params.json"),
        &general(&db, &dataset, &proxy.endpoint(), &emulator.project, dir.path()),
    );
    let out = wait(spawn_run(dir.path())).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(proxy.faults_served.load(std::sync::atomic::Ordering::SeqCst), 6);
    assert_table_equal(emulator, &dataset, &db, "orders", "id").await;
    assert_eq!(bq_count(emulator, &dataset, "orders", &db).await, 3_000);

    // A second run through a proxy that keeps failing ends with a clear error and no changes.
    mysql_exec(&format!("UPDATE `{db}`.orders SET amount = 0, updated_at = NOW(6) WHERE id <= 10")).await;
    let broken = FaultProxy::start(emulator.endpoint(), vec![503; 1000]).await;
    let mut params = general(&db, &dataset, &broken.endpoint(), &emulator.project, dir.path());
    params["max_retries"] = json!(2);
    write_json(&dir.path().join("params.json"), &params);
    let out = wait(spawn_run(dir.path())).await;
    assert_eq!(out.code, 1, "{}", out.all());
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("status").join(format!("{db}.json"))).unwrap())
            .unwrap();
    assert_eq!(state["tables"]["orders"]["sync_status"], "FAILED");
    assert!(state["tables"]["orders"]["error_message"].as_str().unwrap().contains("503"), "{state}");
    assert!(state["tables"]["orders"]["watermark"].is_object(), "the last good watermark is kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_emulator_stopped_and_restarted_during_a_run_ends_equal() {
    let port = std::env::var("BQ_TEST_PORT_C").ok().and_then(|p| p.parse().ok()).unwrap_or(19090);
    let emulator = start_emulator(port, "test-project-c", true);
    let db = unique("restart");
    create_shop(&db, 30, 20_000).await;
    let dataset = unique("restart");
    let dir = workdir();
    write_json(
        &dir.path().join("params.json"),
        &general(&db, &dataset, &emulator.endpoint(), &emulator.project, dir.path()),
    );
    let child = spawn_run(dir.path());
    // Wait until staging has started, then take BigQuery away for a few seconds.
    let started = Instant::now();
    loop {
        if list_tables(&emulator, &dataset).await.iter().any(|t| t.starts_with("_stage_")) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "staging never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_emulator(port);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let emulator = start_emulator(port, "test-project-c", false);
    let out = wait(child).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_table_equal(&emulator, &dataset, &db, "orders", "id").await;
    assert_eq!(bq_count(&emulator, &dataset, "orders", &db).await, 20_000);
    stop_emulator(port);
}
