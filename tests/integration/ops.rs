use std::time::Duration;

use serde_json::Value;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn every_runs_repeatedly_serves_metrics_and_stops_cleanly_on_sigterm() {
    let emulator = &*EMULATOR;
    let db = unique("every");
    create_shop(&db, 20, 50).await;
    let dataset = unique("every");
    let dir = workdir();
    write_json(
        &dir.path().join("params.json"),
        &flat_params(std::slice::from_ref(&db), &["orders"], &dataset, emulator, dir.path()),
    );
    let metrics_port = free_port();
    let child = std::process::Command::new(binary())
        .args(["--pipeline", "params.json", "--every", "1s", "-q", "--metrics-file", "connector.prom"])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Wait for at least two finished runs.
    let mut served = String::new();
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(resp) = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics")).await {
            served = resp.text().await.unwrap_or_default();
            if served.lines().any(|l| l.starts_with("connector_runs_total{result=\"success\"} ") && !l.ends_with(" 1"))
            {
                break;
            }
        }
    }
    assert!(
        served
            .contains(&format!("connector_rows_synced_total{{database=\"{db}\",table=\"orders\",target=\"default\"}}")),
        "{served}"
    );
    assert!(served.contains("connector_last_success_timestamp_seconds"), "{served}");
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    let out: RunOutput = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap().into()).await.unwrap();
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.matches("Sync statistics report").count() >= 2, "{}", out.stdout);
    let file = std::fs::read_to_string(dir.path().join("connector.prom")).unwrap();
    assert!(file.contains("connector_runs_total"), "{file}");
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reset_and_migrate_work_on_a_real_status_folder() {
    let emulator = &*EMULATOR;
    let db = unique("status");
    create_shop(&db, 20, 50).await;
    let dataset = unique("status");
    let dir = workdir();
    write_json(
        &dir.path().join("params.json"),
        &flat_params(std::slice::from_ref(&db), &["orders", "users"], &dataset, emulator, dir.path()),
    );
    let run = |args: Vec<&str>| {
        let dir = dir.path().to_path_buf();
        let args: Vec<String> = args.into_iter().map(str::to_string).collect();
        run_cli_async(args, dir)
    };
    assert_eq!(run(vec!["--pipeline", "params.json"]).await.code, 0);
    let out = run(vec!["status", "--pipeline", "params.json"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains(&format!("{db}.orders")) && out.stdout.contains("SUCCESS"), "{}", out.stdout);
    let json: Vec<Value> =
        serde_json::from_str(&run(vec!["status", "--pipeline", "params.json", "--json"]).await.stdout).unwrap();
    assert_eq!(json.len(), 2);
    assert!(json.iter().all(|r| r["stale_seconds"].as_i64().unwrap() < 600));

    // The next run would be incremental; a reset makes it full.
    let out = run(vec!["state", "reset", "--pipeline", "params.json", "--database", &db, "--table", "orders"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let out = run(vec!["--pipeline", "params.json"]).await;
    let orders = out.stdout.lines().find(|l| l.starts_with(&format!("{db}.orders "))).unwrap();
    let users = out.stdout.lines().find(|l| l.starts_with(&format!("{db}.users "))).unwrap();
    assert!(orders.contains("FULL") && users.contains("INCREMENTAL"), "{}", out.stdout);

    // The original tool's older per-table files are folded in; a corrupt one stays and shows.
    let status = dir.path().join("status");
    std::fs::write(
        status.join("legacy_db_users.json"),
        r#"{"table_name": "users", "last_sync_time": "2025-09-28T15:30:00", "sync_status": "SUCCESS",
            "sync_mode": "FULL", "records_synced": 9, "error_message": null, "updated_at": "2025-09-28T15:30:05"}"#,
    )
    .unwrap();
    std::fs::write(status.join("broken.json"), "{ nope").unwrap();
    let preview = run(vec!["state", "migrate", "--pipeline", "params.json", "--preview"]).await;
    assert!(preview.stdout.contains("legacy_db_users.json → legacy_db.json"), "{}", preview.stdout);
    assert!(!status.join("legacy_db.json").exists());
    let done = run(vec!["state", "migrate", "--pipeline", "params.json"]).await;
    assert_eq!(done.code, 0, "{}", done.all());
    assert!(
        status.join("legacy_db.json").exists()
            && status.join("backup_single_table_files/legacy_db_users.json").exists()
    );
    assert!(status.join("broken.json").exists());
    let out = run(vec!["status", "--pipeline", "params.json"]).await;
    assert_eq!(out.code, 1, "a corrupt state file makes status unhealthy: {}", out.stdout);
    assert!(out.stdout.contains("CORRUPT") && out.stdout.contains("legacy_db.users"), "{}", out.stdout);
}

/// `--bench-discard-uploads` sends nothing to BigQuery, so it must leave no state behind on
/// any path: outcomes, the resume points of a full sync read in key ranges, a change
/// stream's positions.
#[tokio::test(flavor = "multi_thread")]
async fn a_benchmark_run_reads_state_but_never_writes_it() {
    let emulator = &*EMULATOR;
    let db = unique("benchnostate");
    create_shop(&db, 20, 600).await;
    mysql_exec(&format!("ANALYZE TABLE `{db}`.orders")).await;
    let run = TestRun::new();
    let mut params = flat_params(std::slice::from_ref(&db), &["orders"], "bench_nostate", emulator, run.path());
    params["chunk_rows"] = serde_json::json!(100);
    run.params(&params);
    let state_files = || {
        let mut found = files_under(&run.path().join("status"));
        found.retain(|p| p.extension().is_some_and(|x| x == "json"));
        found
    };

    let out = run.run(&["--bench-discard-uploads", "--full"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("600"), "every row was read: {}", out.stdout);
    assert!(state_files().is_empty(), "a key-range benchmark wrote state: {:?}", state_files());

    let out = run.run(&["--bench-discard-uploads", "--cdc", "--catch-up"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(state_files().is_empty(), "a --cdc benchmark wrote state: {:?}", state_files());
}
