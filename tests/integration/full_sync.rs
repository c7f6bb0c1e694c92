use serde_json::{Value, json};

use crate::support::*;

const TABLES: [&str; 3] = ["users", "orders", "page_views"];

async fn three_shops(prefix: &str) -> Vec<String> {
    let dbs: Vec<String> = (1..=3).map(|i| unique(&format!("{prefix}shop{i}"))).collect();
    create_shop(&dbs[0], 120, 700).await;
    create_shop(&dbs[1], 80, 450).await;
    create_shop(&dbs[2], 40, 0).await;
    dbs
}

/// Rows over the staging memory budget wait on disk in their chunk: the table's load job stays
/// whole (one here, where the budget used to send a smaller chunk early each time it was
/// full), and every row arrives as it was, read back from disk.
#[tokio::test(flavor = "multi_thread")]
async fn rows_over_the_staging_memory_budget_wait_on_disk_and_arrive_whole_in_one_load_job() {
    let emulator = &*EMULATOR;
    let dbs: Vec<String> = (1..=3).map(|i| unique(&format!("spill{i}"))).collect();
    for db in &dbs {
        create_shop(db, 20, 12_000).await;
    }
    let dataset = unique("spill");
    let dir = workdir();
    let mut params = flat_params(&dbs, &["orders"], &dataset, emulator, dir.path());
    params["upload_chunk_mb"] = json!(64);
    params["staging_memory_mb"] = json!(2);
    write_json(&dir.path().join("params.json"), &params);

    let args = ["--pipeline", "params.json", "--report-json", "report.json"].map(String::from).to_vec();
    let out = run_cli_async(args, dir.path().to_path_buf()).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap()).unwrap();
    let staged: u64 = report["outcomes"].as_array().unwrap().iter().map(|o| o["bytes"].as_u64().unwrap()).sum();
    assert!(staged > 3 << 20, "the rows are more than the 2 MiB budget: {staged} bytes");
    for db in &dbs {
        assert_table_equal(emulator, &dataset, db, "orders", "id").await;
    }
    assert_eq!(bq_job_counts(emulator, &dataset).await, (1, 1), "one load job and one MERGE");
}

#[tokio::test(flavor = "multi_thread")]
async fn three_tenants_sync_with_every_value_equal_and_state_in_the_guides_format() {
    let emulator = &*EMULATOR;
    let dbs = three_shops("fs").await;
    let dataset = unique("full");
    let dir = workdir();
    let params = flat_params(&dbs, &TABLES, &dataset, emulator, dir.path());
    write_json(&dir.path().join("params.json"), &params);

    let out = run_cli_async(vec!["--pipeline".into(), "params.json".into()], dir.path().to_path_buf()).await;
    assert_eq!(out.code, 0, "{}", out.all());
    for db in &dbs {
        assert_table_equal(emulator, &dataset, db, "users", "id").await;
        assert_table_equal(emulator, &dataset, db, "orders", "id").await;
        assert_table_equal(emulator, &dataset, db, "page_views", "viewed_at, path").await;
    }
    // BigQuery jobs follow target tables, not tenants x tables: the tenants of a table share one
    // staging table and, at this size, one load job; one MERGE per table applies them all.
    // (The tenant without orders stages none; page_views has rows in every tenant.)
    let (loads, queries) = bq_job_counts(emulator, &dataset).await;
    assert_eq!((loads, queries), (TABLES.len(), TABLES.len()), "load and query jobs for 3 tenants x 3 tables");

    // The empty tenant table exists in MySQL and has no rows in BigQuery.
    assert_eq!(mysql_count(&dbs[2], "orders").await, 0);
    assert_eq!(bq_count(emulator, &dataset, "orders", &dbs[2]).await, 0);

    // Report: one line per database and table, with totals.
    for db in &dbs {
        for t in TABLES {
            assert!(
                out.stdout
                    .lines()
                    .any(|l| l.starts_with(&format!("{db}.{t} ")) && l.contains("FULL") && l.ends_with("OK")),
                "{}",
                out.stdout
            );
        }
    }
    assert!(out.stdout.contains("total: 9 tables, 9 ok, 0 failed"), "{}", out.stdout);
    let log = std::fs::read_to_string(dir.path().join("sync.log")).unwrap();
    assert!(log.contains("Sync statistics report"), "the report also goes to the log file");

    // State: the guide's per-database file and fields.
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("status").join(format!("{}.json", dbs[0]))).unwrap(),
    )
    .unwrap();
    assert_eq!(state["database_info"]["tenant_id"], dbs[0].as_str());
    assert_eq!(state["database_info"]["total_tables"], 3);
    let orders = &state["tables"]["orders"];
    for key in
        ["table_name", "last_sync_time", "sync_status", "sync_mode", "records_synced", "error_message", "updated_at"]
    {
        assert!(orders.get(key).is_some(), "state lacks {key}: {orders}");
    }
    assert_eq!(orders["sync_status"], "SUCCESS");
    assert_eq!(orders["sync_mode"], "FULL");
    assert_eq!(orders["records_synced"], 700);
    assert_eq!(orders["error_message"], Value::Null);
    // The cursor's watermark is kept at full precision for the next incremental run.
    assert_eq!(orders["watermark"]["column"], "updated_at");
    assert_eq!(orders["watermark"]["value"], "2024-03-01 11:40:00.002100");

    // The target table carries the system fields, partitioning, clustering and the key.
    let table = bq_get(emulator, &format!("datasets/{dataset}/tables/orders")).await;
    let fields: Vec<&str> =
        table["schema"]["fields"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(&fields[..4], ["tenant_id", "sync_timestamp", "sync_mode", "id"]);
    assert_eq!(table["timePartitioning"]["field"], "sync_timestamp");
    assert_eq!(table["clustering"]["fields"], json!(["tenant_id"]));
    assert_eq!(table["tableConstraints"]["primaryKey"]["columns"], json!(["tenant_id", "id"]));
    let page_views = bq_get(emulator, &format!("datasets/{dataset}/tables/page_views")).await;
    assert!(page_views.get("tableConstraints").is_none_or(|c| c.get("primaryKey").is_none()), "no key, no constraint");

    // Staging tables are dropped after the commit.
    let names = list_tables(emulator, &dataset).await;
    assert_eq!(names.len(), 3, "only the target tables remain: {names:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_resync_of_one_tenant_replaces_exactly_its_rows() {
    let emulator = &*EMULATOR;
    let dbs = three_shops("rs").await;
    let dataset = unique("resync");
    let dir = workdir();
    write_json(&dir.path().join("params.json"), &flat_params(&dbs, &["orders"], &dataset, emulator, dir.path()));
    let out = run_cli_async(vec!["--pipeline".into(), "params.json".into()], dir.path().to_path_buf()).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let before_shop1 = bq_query(
        emulator,
        &format!(
            "SELECT id, amount, sync_timestamp FROM `{dataset}`.orders WHERE tenant_id = '{}' ORDER BY id",
            dbs[0]
        ),
    )
    .await;

    // Change both tenants in MySQL; re-sync only the second.
    for db in &dbs[..2] {
        mysql_exec(&format!(
            "DELETE FROM `{db}`.orders WHERE id <= 10;
             UPDATE `{db}`.orders SET amount = amount + 1, updated_at = NOW(6) WHERE id BETWEEN 11 AND 20;
             INSERT INTO `{db}`.orders (user_id, amount, status, created_at, updated_at) VALUES (1, 5, 'new', NOW(6), NOW(6));"
        ))
        .await;
    }
    let args = vec!["--pipeline".into(), "params.json".into(), "--full".into(), "--databases".into(), dbs[1].clone()];
    let out = run_cli_async(args, dir.path().to_path_buf()).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(!out.stdout.contains(&format!("{}.orders", dbs[0])), "only the selected database runs: {}", out.stdout);

    // shop2 equals MySQL again, with no duplicates; shop1 is untouched, to the sync timestamp.
    assert_table_equal(emulator, &dataset, &dbs[1], "orders", "id").await;
    assert_eq!(bq_count(emulator, &dataset, "orders", &dbs[1]).await, mysql_count(&dbs[1], "orders").await);
    let after_shop1 = bq_query(
        emulator,
        &format!(
            "SELECT id, amount, sync_timestamp FROM `{dataset}`.orders WHERE tenant_id = '{}' ORDER BY id",
            dbs[0]
        ),
    )
    .await;
    assert_eq!(before_shop1, after_shop1);
    assert_eq!(bq_count(emulator, &dataset, "orders", &dbs[2]).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_table_is_reported_while_the_others_succeed() {
    let emulator = &*EMULATOR;
    let dbs = three_shops("ft").await;
    let dataset = unique("fail");
    let dir = workdir();
    // shop2 lacks the table, as if it had been dropped.
    mysql_exec(&format!("DROP TABLE `{}`.users", dbs[1])).await;
    write_json(
        &dir.path().join("params.json"),
        &flat_params(&dbs, &["users", "orders"], &dataset, emulator, dir.path()),
    );
    let out = run_cli_async(vec!["--pipeline".into(), "params.json".into()], dir.path().to_path_buf()).await;
    assert_eq!(out.code, 1, "a failed table makes the exit code 1: {}", out.all());
    let failed_line =
        out.stdout.lines().find(|l| l.starts_with(&format!("{}.users ", dbs[1]))).expect("failed table reported");
    assert!(failed_line.contains("FAILED") && failed_line.contains(&format!("{}.users", dbs[1])), "{failed_line}");
    assert!(out.stdout.contains("total: 6 tables, 5 ok, 1 failed"), "{}", out.stdout);
    for db in [&dbs[0], &dbs[2]] {
        assert_table_equal(emulator, &dataset, db, "users", "id").await;
    }
    for db in &dbs {
        assert_table_equal(emulator, &dataset, db, "orders", "id").await;
    }
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("status").join(format!("{}.json", dbs[1]))).unwrap(),
    )
    .unwrap();
    assert_eq!(state["tables"]["users"]["sync_status"], "FAILED");
    assert!(state["tables"]["users"]["error_message"].as_str().unwrap().contains("does not exist"));
    assert_eq!(state["tables"]["orders"]["sync_status"], "SUCCESS");
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_prints_the_plan_and_writes_nothing() {
    let emulator = &*EMULATOR;
    let dbs = three_shops("dr").await;
    let dataset = unique("dry");
    let dir = workdir();
    write_json(
        &dir.path().join("params.json"),
        &flat_params(&dbs, &["orders", "page_views"], &dataset, emulator, dir.path()),
    );
    let out =
        run_cli_async(vec!["--pipeline".into(), "params.json".into(), "--dry-run".into()], dir.path().to_path_buf())
            .await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("dry run: nothing written"), "{}", out.stdout);
    assert!(out.stdout.contains("first sync"), "{}", out.stdout);
    assert!(out.stdout.contains("big_amount BIGNUMERIC") && out.stdout.contains("wait_time STRING"), "{}", out.stdout);
    assert!(out.stdout.contains("key: none"), "page_views has no key: {}", out.stdout);
    let client = reqwest::Client::new();
    let status = client
        .get(format!("{}/bigquery/v2/projects/{}/datasets/{dataset}", emulator.endpoint(), emulator.project))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 404, "a dry run creates no dataset");
    assert!(!dir.path().join("status").join(format!("{}.json", dbs[0])).exists(), "a dry run writes no state");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_general_form_with_small_upload_chunks_loads_every_row() {
    let emulator = &*EMULATOR;
    let db = unique("chunk");
    create_shop(&db, 50, 6000).await;
    let dataset = unique("chunks");
    let dir = workdir();
    // 6000 orders are about 3 MB of NDJSON: several 1 MiB load jobs into one staging table.
    let mut pipeline = general_pipeline(&db, &dataset, &emulator.endpoint(), &emulator.project, dir.path());
    pipeline["batch_size"] = json!(500);
    write_json(&dir.path().join("pipeline.json"), &pipeline);
    let out = run_cli_async(vec!["--pipeline".into(), "pipeline.json".into()], dir.path().to_path_buf()).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(assert_table_equal(emulator, &dataset, &db, "orders", "id").await, 11);
    assert_eq!(bq_count(emulator, &dataset, "orders", &db).await, 6000);
}

/// The MySQL source honours the `ReadRange` contract the runner relies on, checked by the same
/// conformance kit every source runs: full reads, `Since` with NULL cursors (returned only
/// when asked, counted when not, the bound inclusive), key ranges (exclusive bound, last key).
#[tokio::test(flavor = "multi_thread")]
async fn the_mysql_source_passes_the_source_conformance_checks() {
    use connector_framework::SourceConfig;
    let db = unique("conform");
    mysql_exec(&format!(
        "DROP DATABASE IF EXISTS `{db}`; CREATE DATABASE `{db}`;
         CREATE TABLE `{db}`.items (id BIGINT PRIMARY KEY, name VARCHAR(20), updated_at DATETIME(6) NULL);
         INSERT INTO `{db}`.items VALUES (1, 'a', '2025-01-01 00:00:01'), (2, 'b', NULL),
           (3, 'c', '2025-01-01 00:00:02.5'), (4, 'd', '2025-01-01 00:00:02.5'), (5, 'e', NULL),
           (7, 'f', '2025-01-02 00:00:00'), (9, 'g', '2025-01-03 00:00:00');"
    ))
    .await;
    let (host, port) = mysql_host_port();
    let config: connector_mysql::MySqlSourceConfig =
        serde_json::from_value(json!({"host": host, "port": port, "user": "root", "databases": [db]})).unwrap();
    let source = config.build(&test_build_context()).await.unwrap();
    let table = connector_framework::TableRef::new(&db, "items");
    let checks = connector_framework::testkit::source_conformance(source.as_ref(), &table).await.unwrap();
    assert_eq!(checks, ["full", "since", "key ranges", "key bounds"]);
    source.close().await;
}
