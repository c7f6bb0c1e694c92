use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

#[test]
fn list_shows_exactly_the_kinds_enabled_in_plugins_toml() {
    let dir = workdir();
    let out = run_cli(&["list", "--json"], dir.path());
    assert_eq!(out.code, 0, "{}", out.all());
    let listed: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    // A kind may be registered in several roles (bigquery: a sink and a state store).
    let mut kinds: Vec<String> = listed.iter().map(|d| d["kind"].as_str().unwrap().to_string()).collect();
    kinds.sort();
    kinds.dedup();
    let plugins: toml::Table = std::fs::read_to_string(repo_root().join("plugins.toml")).unwrap().parse().unwrap();
    let mut expected: Vec<String> = plugins["plugins"]
        .as_table()
        .unwrap()
        .values()
        .flat_map(|kinds| kinds.as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()))
        .collect();
    expected.sort();
    assert_eq!(kinds, expected);
    let roles: Vec<(&str, &str)> =
        listed.iter().map(|d| (d["kind"].as_str().unwrap(), d["role"].as_str().unwrap())).collect();
    assert!(
        roles.contains(&("mysql", "source"))
            && roles.contains(&("bigquery", "sink"))
            && roles.contains(&("bigquery", "state"))
            && roles.contains(&("json", "state"))
    );

    let text = run_cli(&["list"], dir.path());
    assert!(text.stdout.contains("connector-bigquery") && text.stdout.contains("DESCRIPTION"), "{}", text.stdout);
}

#[test]
fn describe_prints_keys_example_and_type_mapping() {
    let dir = workdir();
    let out = run_cli(&["describe", "mysql"], dir.path());
    assert_eq!(out.code, 0, "{}", out.all());
    for needle in [
        "keys in params.json",
        "keys in the general form",
        "databases",
        "example (general form):",
        "BIGINT UNSIGNED",
        "bigquery: NUMERIC",
        "db_pass_env",
    ] {
        assert!(out.stdout.contains(needle), "missing {needle}: {}", out.stdout);
    }
    let wrong = run_cli(&["describe", "bigqeury"], dir.path());
    assert_eq!(wrong.code, 2);
    assert!(wrong.stderr.contains("did you mean `bigquery`"), "{}", wrong.stderr);
}

#[test]
fn validate_checks_without_network_and_explains_mistakes() {
    let dir = workdir();
    let good = json!({"db_host": "db.invalid", "db_user": "u", "db_pass": "s3cret-pw", "db_list": "shop1,shop2",
                      "bq_project": "p", "bq_dataset": "d", "db_port": "3306"});
    write_json(&dir.path().join("ok.json"), &good);
    let out = run_cli(&["validate", "--pipeline", "ok.json"], dir.path());
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("is valid"), "{}", out.stdout);
    assert!(!out.all().contains("s3cret-pw"), "the password is masked: {}", out.all());

    let mut typo = good.clone();
    typo["lookback_minute"] = json!(5);
    write_json(&dir.path().join("typo.json"), &typo);
    let out = run_cli(&["validate", "--pipeline", "typo.json"], dir.path());
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("`lookback_minute`: unknown key; did you mean `lookback_minutes`?"), "{}", out.stderr);

    let general = json!({"source": {"kind": "mysq", "host": "h", "user": "u", "databases": ["a"]},
                         "sinks": [{"kind": "bigquery", "project": "p", "dataset": "d"}], "state": {"kind": "json"}});
    write_json(&dir.path().join("general.json"), &general);
    let out = run_cli(&["validate", "--pipeline", "general.json"], dir.path());
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("unknown source kind `mysq`") && out.stderr.contains("valid source kinds: mysql"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_wrong_password_fails_clearly_and_never_shows_the_secret() {
    let dir = workdir();
    let (host, port) = mysql_host_port();
    let params = json!({"db_host": host, "db_port": port, "db_user": "connector_no_such_user", "db_pass": "Sup3r-Secret-Value",
                        "db_list": "x", "bq_project": "p", "bq_dataset": "d", "bq_endpoint": "http://127.0.0.1:1",
                        "status_dir": "status", "log_file": "sync.log", "max_retries": 0});
    write_json(&dir.path().join("params.json"), &params);
    let out = run_cli(&["--pipeline", "params.json"], dir.path());
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(out.stderr.contains("Access denied") && out.stderr.contains("check db_user and db_pass"), "{}", out.stderr);
    let log = std::fs::read_to_string(dir.path().join("sync.log")).unwrap_or_default();
    assert!(!out.all().contains("Sup3r-Secret-Value") && !log.contains("Sup3r-Secret-Value"));
}

#[test]
fn a_second_run_on_the_same_status_dir_exits_at_once() {
    let dir = workdir();
    let status = dir.path().join("status");
    std::fs::create_dir_all(&status).unwrap();
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(status.join(".lock")).unwrap();
    lock.try_lock().unwrap();
    let (host, port) = mysql_host_port();
    let params = json!({"db_host": host, "db_port": port, "db_user": "root", "db_list": "mysql", "table_list": "db",
                        "bq_project": "p", "bq_dataset": "d", "bq_endpoint": "http://127.0.0.1:1",
                        "status_dir": "status", "log_file": "sync.log"});
    write_json(&dir.path().join("params.json"), &params);
    let out = run_cli(&["--pipeline", "params.json"], dir.path());
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(out.stderr.contains("another connector-run is already syncing"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_cannot_start_writes_no_state() {
    let emulator = &*EMULATOR;
    let db = unique("nostart");
    create_shop(&db, 5, 5).await;
    let run = TestRun::new();
    run.params(&flat_params(std::slice::from_ref(&db), &["orders"], &unique("nostart"), emulator, run.path()));
    let selection = format!("{db},nosuchdb");
    let out = run.run(&["--databases", &selection]).await;
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(out.stderr.contains("`nosuchdb` is not in the pipeline's databases"), "{}", out.stderr);
    assert!(!run.path().join("status").exists(), "no status folder, no lock file");
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_lock_waits_for_the_other_run_instead_of_failing() {
    let emulator = &*EMULATOR;
    let db = unique("waitlock");
    create_shop(&db, 5, 20).await;
    let dataset = unique("waitlock");
    let run = TestRun::new();
    run.params(&flat_params(std::slice::from_ref(&db), &["orders"], &dataset, emulator, run.path()));
    let status = run.path().join("status");
    std::fs::create_dir_all(&status).unwrap();
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(status.join(".lock")).unwrap();
    lock.try_lock().unwrap();
    let out = run.run(&["--wait-lock", "1s"]).await;
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(out.stderr.contains("waited 1 s (--wait-lock) and it is still running"), "{}", out.stderr);
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(lock);
    });
    let out = run.sync(&["--wait-lock", "60s"]).await;
    release.await.unwrap();
    assert!(out.stdout.contains("total: 1 table, 1 ok"), "{}", out.stdout);
    assert_table_equal(emulator, &dataset, &db, "orders", "id").await;
}

#[test]
fn validate_reports_every_mistake_at_once_naming_each_key() {
    let dir = workdir();
    let params = json!({"db_host": "db.invalid", "db_user": "u", "db_passwd": "x", "db_list": "shop1",
                        "bq_project": "p", "bq_dataset": "d", "db_port": "abc", "lookback_minute": 5,
                        "targets": [{"bq_dataset": "a"}, {"bq_datset": "b"}]});
    write_json(&dir.path().join("params.json"), &params);
    let out = run_cli(&["validate", "--pipeline", "params.json"], dir.path());
    assert_eq!(out.code, 2, "{}", out.all());
    for needle in [
        "4 mistakes",
        "`db_passwd`: unknown key; did you mean `db_pass`?",
        "`lookback_minute`: unknown key; did you mean `lookback_minutes`?",
        "`targets[1].bq_datset`: unknown key; did you mean `bq_dataset`?",
        "`db_port`: expected a whole number from 0 to 65535, got \"abc\"",
    ] {
        assert!(out.stderr.contains(needle), "missing {needle}: {}", out.stderr);
    }
    assert!(!out.stderr.contains("NumOrString") && !out.stderr.contains("u16"), "{}", out.stderr);
}
