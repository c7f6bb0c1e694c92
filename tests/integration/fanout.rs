use serde_json::{Value, json};

use crate::support::*;

fn state(dir: &std::path::Path, target: &str, db: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("status").join(target).join(format!("{db}.json"))).unwrap())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_targets_from_one_read_and_a_stopped_target_catches_up_later() {
    let a = &*EMULATOR;
    let b = Emulator::fresh("test-project-b");
    let dbs: Vec<String> = (1..=2).map(|i| unique(&format!("fan{i}"))).collect();
    for db in &dbs {
        create_shop(db, 30, 120).await;
    }
    let dataset = unique("fanout");
    let dir = workdir();
    let mut params = flat_params(&dbs, &["orders", "users"], &dataset, a, dir.path());
    params.as_object_mut().unwrap().remove("bq_project");
    params["max_retries"] = json!(1);
    params["targets"] = json!([
        {"id": "primary", "bq_project": a.project, "bq_endpoint": a.endpoint()},
        {"id": "backup", "bq_project": b.project, "bq_endpoint": b.endpoint()},
    ]);
    write_json(&dir.path().join("params.json"), &params);
    let run = || run_cli_async(vec!["--pipeline".into(), "params.json".into()], dir.path().to_path_buf());

    let out = run().await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains(&format!("{}.orders → backup", dbs[0])), "{}", out.stdout);
    for db in &dbs {
        for emulator in [a, &b] {
            assert_table_equal(emulator, &dataset, db, "orders", "id").await;
        }
    }
    // Each target keeps its own state.
    assert_eq!(state(dir.path(), "primary", &dbs[0])["tables"]["orders"]["sync_status"], "SUCCESS");
    let backup_watermark = state(dir.path(), "backup", &dbs[0])["tables"]["orders"]["watermark"].clone();

    // The backup target goes down: the primary still syncs, the backup's state keeps its watermark.
    b.stop();
    for db in &dbs {
        mysql_exec(&format!("UPDATE `{db}`.orders SET amount = amount + 5, updated_at = NOW(6) WHERE id % 4 = 0"))
            .await;
    }
    let out = run().await;
    assert_eq!(out.code, 1, "{}", out.all());
    for db in &dbs {
        assert!(
            out.stdout.lines().any(|l| l.starts_with(&format!("{db}.orders → primary")) && l.ends_with("OK")),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout.lines().any(|l| l.starts_with(&format!("{db}.orders → backup")) && l.contains("FAILED")),
            "{}",
            out.stdout
        );
        assert_table_equal(a, &dataset, db, "orders", "id").await;
    }
    let backup = state(dir.path(), "backup", &dbs[0]);
    assert_eq!(backup["tables"]["orders"]["sync_status"], "FAILED");
    assert_eq!(backup["tables"]["orders"]["watermark"], backup_watermark, "a failure keeps the last good watermark");

    // Back up (its data kept): the next run catches it up from its own watermark.
    b.restart();
    for db in &dbs {
        mysql_exec(&format!("UPDATE `{db}`.orders SET status = 'shipped', updated_at = NOW(6) WHERE id % 5 = 0")).await;
    }
    let out = run().await;
    assert_eq!(out.code, 0, "{}", out.all());
    for db in &dbs {
        for emulator in [a, &b] {
            assert_table_equal(emulator, &dataset, db, "orders", "id").await;
            assert_table_equal(emulator, &dataset, db, "users", "id").await;
        }
    }
    b.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_connector_crate_works_in_a_pipeline_beside_bigquery() {
    let emulator = &*EMULATOR;
    let db = unique("ndjson");
    create_shop(&db, 25, 60).await;
    let dataset = unique("ndjson");
    let dir = workdir();
    let (host, port) = mysql_host_port();
    let files = dir.path().join("files");
    let pipeline = json!({
        "source": {"kind": "mysql", "host": host, "port": port, "user": "root", "databases": [db]},
        "sinks": [
            {"kind": "bigquery", "id": "warehouse", "project": emulator.project, "dataset": dataset, "endpoint": emulator.endpoint()},
            {"kind": "ndjson", "id": "files", "path": files.display().to_string()}
        ],
        "state": {"kind": "json", "status_dir": dir.path().join("status").display().to_string()},
        "tables": ["orders", "users"],
        "log_file": dir.path().join("sync.log").display().to_string()
    });
    write_json(&dir.path().join("pipeline.json"), &pipeline);
    let run = || run_cli_async(vec!["--pipeline".into(), "pipeline.json".into()], dir.path().to_path_buf());
    let out = run().await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_table_equal(emulator, &dataset, &db, "orders", "id").await;
    let lines = |table: &str| -> Vec<Value> {
        std::fs::read_to_string(files.join(table).join(format!("{db}.ndjson")))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    assert_eq!(lines("orders").len() as u64, mysql_count(&db, "orders").await);
    assert_eq!(lines("users").len() as u64, mysql_count(&db, "users").await);

    // An incremental run merges changes into the file by key.
    mysql_exec(&format!("UPDATE `{db}`.orders SET status = 'shipped', updated_at = NOW(6) WHERE id = 7")).await;
    let out = run().await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("INCREMENTAL"), "{}", out.stdout);
    let orders = lines("orders");
    assert_eq!(orders.len() as u64, mysql_count(&db, "orders").await);
    let row7 = orders.iter().find(|r| r["id"] == 7).unwrap();
    assert_eq!(row7["status"], "shipped");
    assert_eq!(row7["tenant_id"], db.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_targets_in_one_project_each_get_every_row() {
    let emulator = &*EMULATOR;
    let db = unique("sameproj");
    create_shop(&db, 20, 80).await;
    let (one, two) = (unique("target_one"), unique("target_two"));
    let dir = workdir();
    let mut params = flat_params(std::slice::from_ref(&db), &["orders", "page_views"], &one, emulator, dir.path());
    params["targets"] = json!([{"id": "one", "bq_dataset": one}, {"id": "two", "bq_dataset": two}]);
    write_json(&dir.path().join("params.json"), &params);
    for round in 0..2 {
        mysql_exec(&format!(
            "UPDATE `{db}`.orders SET amount = amount + 1, updated_at = NOW(6) WHERE id % 3 = {round}"
        ))
        .await;
        let out = run_cli_async(vec!["--pipeline".into(), "params.json".into()], dir.path().to_path_buf()).await;
        assert_eq!(out.code, 0, "{}", out.all());
        for dataset in [&one, &two] {
            assert_table_equal(emulator, dataset, &db, "orders", "id").await;
            assert_table_equal(emulator, dataset, &db, "page_views", "viewed_at, path, user_id").await;
        }
    }
}

/// Targets without ids keep their state when the list changes: the id comes from project and
/// dataset, not from the position.
#[tokio::test(flavor = "multi_thread")]
async fn adding_a_target_at_the_top_hands_no_state_to_another_target() {
    let emulator = &*EMULATOR;
    let db = unique("order");
    create_shop(&db, 20, 400).await;
    let (a, b, new) = (unique("order_a"), unique("order_b"), unique("order_new"));
    let run = TestRun::new();
    let mut params = flat_params(std::slice::from_ref(&db), &["orders"], &a, emulator, run.path());
    params["targets"] = json!([{"bq_dataset": a}, {"bq_dataset": b}]);
    run.params(&params);
    run.sync(&[]).await;
    mysql_exec(&format!("UPDATE `{db}`.orders SET amount = amount + 1, updated_at = NOW(6) WHERE id % 7 = 0")).await;
    params["targets"] = json!([{"bq_dataset": new}, {"bq_dataset": a}]);
    run.params(&params);
    let out = run.sync(&[]).await;
    let line = |dataset: &str| {
        out.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{db}.orders → {}.{dataset}", emulator.project)))
            .unwrap_or_else(|| panic!("no line for {dataset}: {}", out.stdout))
            .to_string()
    };
    assert!(line(&new).contains("FULL"), "the new target syncs in full: {}", out.stdout);
    assert!(line(&a).contains("INCREMENTAL"), "the existing target keeps its own state: {}", out.stdout);
    assert_table_equal(emulator, &new, &db, "orders", "id").await;
    assert_table_equal(emulator, &a, &db, "orders", "id").await;
}

/// Once a target is found unreachable, the rest of the run skips it at once: the healthy
/// target is not held up table after table by retries against the dead one.
#[tokio::test(flavor = "multi_thread")]
async fn a_target_found_down_is_skipped_for_the_rest_of_the_run() {
    let emulator = &*EMULATOR;
    let dbs: Vec<String> = (1..=2).map(|i| unique(&format!("down{i}"))).collect();
    for db in &dbs {
        create_shop(db, 10, 30).await;
    }
    let dataset = unique("down");
    let run = TestRun::new();
    // The default retries (3, from 5 s): were the dead target retried table after table, this
    // run would wait minutes on it.
    let mut params = flat_params(&dbs, &["orders", "users", "page_views"], &dataset, emulator, run.path());
    params.as_object_mut().unwrap().remove("max_retries");
    params.as_object_mut().unwrap().remove("retry_delay");
    let dead = format!("http://127.0.0.1:{}", free_port());
    params["targets"] =
        json!([{"id": "up", "bq_dataset": dataset}, {"id": "dead", "bq_dataset": dataset, "bq_endpoint": dead}]);
    run.params(&params);
    let out = run.run(&[]).await;
    assert_eq!(out.code, 1, "{}", out.all());
    let report = run.report();
    let dead_outcomes: Vec<&serde_json::Value> =
        report["outcomes"].as_array().unwrap().iter().filter(|o| o["target"] == "dead").collect();
    assert_eq!(dead_outcomes.len(), 6);
    let skipped = dead_outcomes
        .iter()
        .filter(|o| o["error"].as_str().unwrap().contains("was unreachable earlier in this run"))
        .count();
    assert_eq!(skipped, 6, "the dead target is found at the start and skipped for every table: {report}");
    assert!(
        !run.log().contains("BigQuery call failed; retrying"),
        "no table waited on the dead target's retries: {}",
        run.log()
    );
    for db in &dbs {
        for table in ["orders", "users"] {
            assert_table_equal(emulator, &dataset, db, table, "id").await;
        }
    }
}

/// An endpoint taken from BIGQUERY_EMULATOR_HOST is logged and recorded in state; state written
/// against one endpoint is not used for another.
#[tokio::test(flavor = "multi_thread")]
async fn state_written_for_one_endpoint_is_not_used_for_another() {
    let first = &*EMULATOR;
    let second = Emulator::fresh(&first.project);
    let db = unique("endpoint");
    create_shop(&db, 10, 200).await;
    let dataset = unique("endpoint");
    let run = TestRun::new();
    let mut params = flat_params(std::slice::from_ref(&db), &["orders"], &dataset, first, run.path());
    params.as_object_mut().unwrap().remove("bq_endpoint");
    run.params(&params);
    let with_host = |host: String| {
        let dir = run.path().to_path_buf();
        async move {
            tokio::task::spawn_blocking(move || -> RunOutput {
                std::process::Command::new(binary())
                    .args(["--pipeline", "params.json"])
                    .current_dir(dir)
                    .env("BIGQUERY_EMULATOR_HOST", host)
                    .output()
                    .unwrap()
                    .into()
            })
            .await
            .unwrap()
        }
    };
    let out = with_host(format!("127.0.0.1:{}", first.port)).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stderr.contains("the BigQuery endpoint comes from BIGQUERY_EMULATOR_HOST"), "{}", out.stderr);
    let destination = run.state(&db)["tables"]["orders"]["target"]["destination"].as_str().unwrap().to_string();
    assert!(destination.contains(&format!("127.0.0.1:{}", first.port)), "{destination}");
    let out = with_host(format!("127.0.0.1:{}", second.port)).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("full because the state was written for another target"), "{}", out.stdout);
    assert_table_equal(&second, &dataset, &db, "orders", "id").await;
    second.stop();
}
