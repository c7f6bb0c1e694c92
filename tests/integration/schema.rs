use serde_json::{Value, json};

use crate::support::*;

async fn items(db: &str) {
    mysql_exec(&format!(
        "DROP DATABASE IF EXISTS `{db}`; CREATE DATABASE `{db}` CHARACTER SET utf8mb4;
         CREATE TABLE `{db}`.items (id INT PRIMARY KEY, qty INT, label VARCHAR(20), price DECIMAL(10,2),
                                   note VARCHAR(50), created DATETIME, updated_at DATETIME(6));
         CREATE TABLE `{db}`.other (id INT PRIMARY KEY, v VARCHAR(10));
         INSERT INTO `{db}`.other VALUES (1, 'x');
         INSERT INTO `{db}`.items VALUES
           (1, 1, 'one', 1.10, 'n1', '2024-01-01 00:00:00', NOW(6)),
           (2, 2, 'two', 2.20, 'n2', '2024-01-02 00:00:00', NOW(6)),
           (3, 3, 'three', 3.30, 'n3', '2024-01-03 00:00:00', NOW(6));"
    ))
    .await;
}

async fn table_types(emulator: &Emulator, dataset: &str, table: &str) -> Vec<(String, String)> {
    let url =
        format!("{}/bigquery/v2/projects/{}/datasets/{dataset}/tables/{table}", emulator.endpoint(), emulator.project);
    let t: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    t["schema"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["name"].as_str().unwrap().to_string(), f["type"].as_str().unwrap().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn columns_added_dropped_widened_and_changed_across_tenants() {
    let emulator = &*EMULATOR;
    let (a, b) = (unique("schema_a"), unique("schema_b"));
    items(&a).await;
    items(&b).await;
    let dataset = unique("schema");
    let dir = workdir();
    write_json(
        &dir.path().join("params.json"),
        &flat_params(&[a.clone(), b.clone()], &["items", "other"], &dataset, emulator, dir.path()),
    );
    let sync = |extra: Vec<&'static str>| {
        let dir = dir.path().to_path_buf();
        async move {
            let mut args = vec!["--pipeline".to_string(), "params.json".to_string()];
            args.extend(extra.into_iter().map(str::to_string));
            run_cli_async(args, dir).await
        }
    };
    assert_eq!(sync(vec![]).await.code, 0);

    // Tenant a migrates first: a new column. b is still on the old schema.
    mysql_exec(&format!(
        "ALTER TABLE `{a}`.items ADD COLUMN coupon VARCHAR(20) AFTER label;
         UPDATE `{a}`.items SET coupon = CONCAT('C', id), updated_at = NOW(6);"
    ))
    .await;
    let dry = sync(vec!["--dry-run"]).await;
    assert!(dry.stdout.contains("schema changes: add column coupon STRING"), "{}", dry.stdout);
    let out = sync(vec![]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_table_equal(emulator, &dataset, &a, "items", "id").await;
    assert_table_equal(emulator, &dataset, &b, "items", "id").await;
    let coupons =
        bq_query(emulator, &format!("SELECT COUNT(coupon) FROM `{dataset}`.items WHERE tenant_id = '{b}'")).await;
    assert_eq!(coupons[0][0].as_deref(), Some("0"), "a tenant without the column gets NULL");

    // Both widen: INT→BIGINT, longer VARCHAR and larger DECIMAL keep their BigQuery types;
    // INT→BIGINT UNSIGNED needs NUMERIC, which BigQuery widens in place.
    for db in [&a, &b] {
        mysql_exec(&format!(
            "ALTER TABLE `{db}`.items MODIFY qty BIGINT UNSIGNED, MODIFY label VARCHAR(200), MODIFY price DECIMAL(20,4);
             UPDATE `{db}`.items SET qty = 18446744073709551615, label = REPEAT('L', 150), price = 1234567890123456.1234,
                    updated_at = NOW(6) WHERE id = 2;"
        ))
        .await;
    }
    let dry = sync(vec!["--dry-run"]).await;
    assert!(dry.stdout.contains("widen qty INT64 → NUMERIC"), "{}", dry.stdout);
    let out = sync(vec![]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let types = table_types(emulator, &dataset, "items").await;
    assert!(types.contains(&("qty".into(), "NUMERIC".into())), "{types:?}");
    assert!(types.contains(&("price".into(), "NUMERIC".into())), "{types:?}");
    assert_table_equal(emulator, &dataset, &a, "items", "id").await;
    assert_table_equal(emulator, &dataset, &b, "items", "id").await;

    // A dropped column stays in BigQuery and is NULL from then on.
    for db in [&a, &b] {
        mysql_exec(&format!(
            "ALTER TABLE `{db}`.items DROP COLUMN note; UPDATE `{db}`.items SET updated_at = NOW(6) WHERE id = 1;"
        ))
        .await;
    }
    let out = sync(vec![]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(table_types(emulator, &dataset, "items").await.iter().any(|(n, _)| n == "note"));
    let note =
        bq_query(emulator, &format!("SELECT note FROM `{dataset}`.items WHERE tenant_id = '{a}' AND id = 1")).await;
    assert_eq!(note[0][0], None, "rows synced after the drop have NULL there");
    assert_eq!(sync(vec!["--full"]).await.code, 0);
    let notes = bq_query(emulator, &format!("SELECT COUNT(note) FROM `{dataset}`.items")).await;
    assert_eq!(notes[0][0].as_deref(), Some("0"));
    assert_table_equal(emulator, &dataset, &a, "items", "id").await;

    // An incompatible change fails that table with an explanation; the other table continues.
    for db in [&a, &b] {
        mysql_exec(&format!("ALTER TABLE `{db}`.items MODIFY created VARBINARY(30)")).await;
    }
    let out = sync(vec![]).await;
    assert_eq!(out.code, 1, "{}", out.all());
    let failed = out.stdout.lines().find(|l| l.starts_with(&format!("{a}.items "))).unwrap();
    assert!(
        failed.contains("column `created` is DATETIME in BigQuery but the source now maps it to BYTES")
            && failed.contains("--full"),
        "{failed}"
    );
    assert!(out.stdout.lines().any(|l| l.starts_with(&format!("{a}.other ")) && l.ends_with("OK")), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_whose_key_differs_fails_alone_and_the_table_keeps_its_key() {
    let emulator = &*EMULATOR;
    let (a, b, c) = (unique("key_a"), unique("key_b"), unique("key_c"));
    for db in [&a, &b, &c] {
        items(db).await;
    }
    mysql_exec(&format!("ALTER TABLE `{c}`.items DROP PRIMARY KEY, ADD PRIMARY KEY (id, label)")).await;
    let dataset = unique("keys");
    let dir = workdir();
    write_json(
        &dir.path().join("params.json"),
        &flat_params(&[a.clone(), b.clone(), c.clone()], &["items"], &dataset, emulator, dir.path()),
    );
    let out = run_cli_async(vec!["--pipeline".into(), "params.json".into()], dir.path().to_path_buf()).await;
    assert_eq!(out.code, 1, "{}", out.all());
    let line = out.stdout.lines().find(|l| l.starts_with(&format!("{c}.items "))).unwrap();
    assert!(line.contains("has key (id, label) but the other tenants' items has key (id)"), "{line}");
    for db in [&a, &b] {
        assert_table_equal(emulator, &dataset, db, "items", "id").await;
    }
    let url =
        format!("{}/bigquery/v2/projects/{}/datasets/{dataset}/tables/items", emulator.endpoint(), emulator.project);
    let t: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    assert_eq!(t["tableConstraints"]["primaryKey"]["columns"], serde_json::json!(["tenant_id", "id"]));
}

/// A column added with a default (the existing rows get it without their cursor moving) makes
/// that tenant's table sync in full in the same run.
#[tokio::test(flavor = "multi_thread")]
async fn a_column_added_with_a_default_is_filled_for_every_existing_row() {
    let emulator = &*EMULATOR;
    let (a, b) = (unique("default_a"), unique("default_b"));
    create_shop(&a, 300, 5).await;
    create_shop(&b, 300, 5).await;
    let dataset = unique("default");
    let run = TestRun::new();
    run.params(&flat_params(&[a.clone(), b.clone()], &["users"], &dataset, emulator, run.path()));
    run.sync(&[]).await;
    mysql_exec(&format!("ALTER TABLE `{a}`.users ADD COLUMN tier VARCHAR(10) NOT NULL DEFAULT 'basic'")).await;
    let out = run.sync(&[]).await;
    let line = out.stdout.lines().find(|l| l.starts_with(&format!("{a}.users "))).unwrap();
    assert!(line.contains("FULL"), "{}", out.stdout);
    assert!(out.stdout.contains("full because the table's schema changed"), "{}", out.stdout);
    assert!(
        out.stdout.lines().any(|l| l.starts_with(&format!("{b}.users ")) && l.contains("INCREMENTAL")),
        "{}",
        out.stdout
    );
    assert_table_equal(emulator, &dataset, &a, "users", "id").await;
    let tiers = bq_query(
        emulator,
        &format!("SELECT COUNT(*) FROM `{dataset}`.users WHERE tenant_id = '{a}' AND tier = 'basic'"),
    )
    .await;
    assert_eq!(tiers[0][0].as_deref(), Some("300"));
}

/// One tenant's bad data fails that tenant alone: a column whose type disagrees with the
/// other tenants', or a value the MERGE cannot convert.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_with_bad_data_is_quarantined_and_the_others_commit() {
    let emulator = &*EMULATOR;
    let dbs: Vec<String> = (1..=3).map(|i| unique(&format!("quarantine{i}"))).collect();
    for db in &dbs {
        items(db).await;
    }
    let dataset = unique("quarantine");
    let run = TestRun::new();
    let mut params = flat_params(&dbs, &["items"], &dataset, emulator, run.path());
    run.params(&params);
    run.sync(&[]).await;
    // shop2's price becomes text holding 'N/A'; the others change their rows.
    mysql_exec(&format!(
        "ALTER TABLE `{}`.items MODIFY price VARCHAR(10); UPDATE `{}`.items SET price = 'N/A', updated_at = NOW(6)",
        dbs[1], dbs[1]
    ))
    .await;
    for db in [&dbs[0], &dbs[2]] {
        mysql_exec(&format!("UPDATE `{db}`.items SET qty = qty + 10, updated_at = NOW(6)")).await;
    }
    let out = run.run(&[]).await;
    assert_eq!(out.code, 1, "{}", out.all());
    let failed = out.stdout.lines().find(|l| l.starts_with(&format!("{}.items ", dbs[1]))).unwrap();
    assert!(failed.contains("column `price` is varchar(10) here but decimal(10,2) in"), "{failed}");
    for db in [&dbs[0], &dbs[2]] {
        assert_table_equal(emulator, &dataset, db, "items", "id").await;
    }
    // With an explicit STRING target type shop2 takes part again, but its 'N/A' cannot be a
    // NUMERIC: the MERGE fails for it alone.
    params["table_options"] = json!({"items": {"column_types": {"price": "NUMERIC"}}});
    run.params(&params);
    mysql_exec(&format!("UPDATE `{}`.items SET qty = qty + 1, updated_at = NOW(6)", dbs[0])).await;
    let out = run.run(&[]).await;
    assert_eq!(out.code, 1, "{}", out.all());
    let failed: Vec<&str> = out.stdout.lines().filter(|l| l.contains("FAILED")).collect();
    assert_eq!(failed.len(), 1, "{}", out.stdout);
    assert!(failed[0].starts_with(&format!("{}.items ", dbs[1])), "{}", out.stdout);
    assert_table_equal(emulator, &dataset, &dbs[0], "items", "id").await;
}

/// A DECIMAL never goes into an existing FLOAT64 column, where it would be rounded.
#[tokio::test(flavor = "multi_thread")]
async fn an_exact_type_into_an_existing_float_column_fails_with_the_fix() {
    let emulator = &*EMULATOR;
    let db = unique("floatcol");
    mysql_exec(&format!(
        "DROP DATABASE IF EXISTS `{db}`; CREATE DATABASE `{db}`;
         CREATE TABLE `{db}`.prices (id INT PRIMARY KEY, price DOUBLE);
         INSERT INTO `{db}`.prices VALUES (1, 1.5);"
    ))
    .await;
    let dataset = unique("floatcol");
    let run = TestRun::new();
    run.params(&flat_params(std::slice::from_ref(&db), &["prices"], &dataset, emulator, run.path()));
    run.sync(&[]).await;
    mysql_exec(&format!(
        "ALTER TABLE `{db}`.prices MODIFY price DECIMAL(19,4); UPDATE `{db}`.prices SET price = 12345678901234.5678"
    ))
    .await;
    let out = run.run(&[]).await;
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stdout.contains("column `price` is FLOAT64 in BigQuery but the source now maps it to NUMERIC")
            && out.stdout.contains("rename_columns = {\"price\": \"price_numeric\"}"),
        "{}",
        out.stdout
    );
    let v = bq_query(emulator, &format!("SELECT CAST(price AS STRING) FROM `{dataset}`.prices")).await;
    assert_eq!(v[0][0].as_deref(), Some("1.5"), "nothing was rounded into the column");

    // The fix the message offers works: the exact values land in a new column.
    let mut params = flat_params(std::slice::from_ref(&db), &["prices"], &dataset, emulator, run.path());
    params["table_options"] = serde_json::json!({"prices": {"rename_columns": {"price": "price_numeric"}}});
    run.params(&params);
    let out = run.run(&[]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let v = bq_query(emulator, &format!("SELECT CAST(price_numeric AS STRING), price FROM `{dataset}`.prices")).await;
    assert!(v[0][0].as_deref().is_some_and(|p| p.starts_with("12345678901234.5678")), "{v:?}");
}

/// Column names as applications have them: kept in BigQuery under their own names (spaces,
/// dashes, other scripts, reserved words), a clash with a system column resolved by
/// `system_columns`, a column left out never read from MySQL.
#[tokio::test(flavor = "multi_thread")]
async fn column_names_are_kept_system_columns_renamed_and_excluded_columns_never_read() {
    let emulator = &*EMULATOR;
    let db = unique("names");
    let long = format!("c{}", "x".repeat(63));
    mysql_exec(&format!(
        "DROP DATABASE IF EXISTS `{db}`; CREATE DATABASE `{db}` CHARACTER SET utf8mb4;
         CREATE TABLE `{db}`.accounts (id INT PRIMARY KEY, tenant_id VARCHAR(20), sync_mode VARCHAR(10), `group` INT,
           `select` VARCHAR(10), `my col` VARCHAR(10), `a-b` INT, `a_b` INT, `Δ` VARCHAR(10), `{long}` INT,
           password_hash VARCHAR(64), updated_at DATETIME(6) NOT NULL);
         INSERT INTO `{db}`.accounts VALUES
           (1, 'acme', 'live', 1, 'x', 'mine', 1, 2, 'δ', 64, 'secret-hash-1', NOW(6)),
           (2, 'acme', 'test', 2, 'y', NULL, 3, 4, 'ε', 65, 'secret-hash-2', NOW(6));"
    ))
    .await;
    let dataset = unique("names");
    let run = TestRun::new();
    let mut params = flat_params(std::slice::from_ref(&db), &["accounts"], &dataset, emulator, run.path());
    run.params(&params);
    let out = run.run(&[]).await;
    assert_eq!(out.code, 1, "the default configuration cannot hold a column named tenant_id: {}", out.all());
    assert!(
        out.stdout.contains("column `tenant_id` has the name of the system column `tenant_id`")
            && out.stdout.contains("system_columns.tenant_id"),
        "{}",
        out.stdout
    );

    params["system_columns"] = json!({"tenant_id": "_tenant_id", "sync_mode": "_sync_mode"});
    params["table_options"] = json!({"accounts": {"exclude_columns": ["nope"]}});
    run.params(&params);
    let out = run.run(&[]).await;
    assert!(
        out.stdout.contains("exclude_columns names column `nope`, which no tenant's accounts has"),
        "{}",
        out.stdout
    );

    params["table_options"] = json!({"accounts": {"exclude_columns": ["password_hash"]}});
    run.params(&params);
    let dry = run.sync(&["--dry-run"]).await;
    assert!(dry.stdout.contains("never read (exclude_columns): password_hash"), "{}", dry.stdout);
    mysql_exec("SET GLOBAL log_output = 'TABLE'; SET GLOBAL general_log = 1").await;
    run.sync(&[]).await;
    mysql_exec(&format!(
        "UPDATE `{db}`.accounts SET `my col` = 'changed', `Δ` = 'ζ', updated_at = NOW(6) WHERE id = 2"
    ))
    .await;
    run.sync(&[]).await;
    let seen = mysql_rows(&format!(
        "SELECT CONVERT(argument USING utf8mb4) FROM mysql.general_log WHERE argument LIKE '%FROM `{db}`.`accounts`%'"
    ))
    .await;
    mysql_exec("SET GLOBAL general_log = 0").await;
    assert!(!seen.is_empty(), "the server logged the reads");
    for statement in &seen {
        assert!(!statement[0].as_deref().unwrap_or("").contains("password_hash"), "{statement:?}");
    }
    let how = Compared {
        tenant_column: Some("_tenant_id"),
        excluded: &["password_hash"],
        renamed: &[],
        ..Default::default()
    };
    assert_table_equal_as(emulator, &dataset, &db, "accounts", "id", &how).await;
    let table = bq_get(emulator, &format!("datasets/{dataset}/tables/accounts")).await;
    let names: Vec<&str> =
        table["schema"]["fields"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    for name in [
        "_tenant_id",
        "_sync_mode",
        "tenant_id",
        "sync_mode",
        "group",
        "select",
        "my col",
        "a-b",
        "a_b",
        "Δ",
        long.as_str(),
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    assert!(!names.contains(&"password_hash"), "{names:?}");
}

/// Table names as applications have them: kept where BigQuery allows (`my table`), mapped
/// where not (`a$b` → `a_b`); two source tables that would land in one BigQuery table both
/// fail naming each other, and `target_table` tells them apart.
#[tokio::test(flavor = "multi_thread")]
async fn table_names_are_kept_mapped_and_never_share_a_target_table() {
    let emulator = &*EMULATOR;
    let db = unique("tnames");
    mysql_exec(&format!(
        "DROP DATABASE IF EXISTS `{db}`; CREATE DATABASE `{db}` CHARACTER SET utf8mb4;
         CREATE TABLE `{db}`.`a$b` (id INT PRIMARY KEY, v VARCHAR(10));
         CREATE TABLE `{db}`.`a_b` (id INT PRIMARY KEY, v VARCHAR(10));
         CREATE TABLE `{db}`.`my table` (id INT PRIMARY KEY, v VARCHAR(10));
         INSERT INTO `{db}`.`a$b` VALUES (1, 'dollar'), (2, 'dollar2');
         INSERT INTO `{db}`.`a_b` VALUES (1, 'under');
         INSERT INTO `{db}`.`my table` VALUES (1, 'space');"
    ))
    .await;
    let dataset = unique("tnames");
    let run = TestRun::new();
    let mut params = flat_params(std::slice::from_ref(&db), &[], &dataset, emulator, run.path());
    run.params(&params);
    let out = run.run(&[]).await;
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stdout.contains("source tables `a$b` and `a_b` would both be written to table `a_b`")
            && out.stdout.contains("table_options.a$b.target_table"),
        "{}",
        out.stdout
    );
    assert_table_equal(emulator, &dataset, &db, "my table", "id").await;
    assert!(!list_tables(emulator, &dataset).await.contains(&"a_b".to_string()), "nothing was written to `a_b`");

    params["table_options"] = serde_json::json!({"a$b": {"target_table": "a_dollar_b"}});
    run.params(&params);
    run.sync(&[]).await;
    assert_table_equal(emulator, &dataset, &db, "a_b", "id").await;
    let how = Compared { bq_table: Some("a_dollar_b"), ..Default::default() };
    assert_eq!(assert_table_equal_as(emulator, &dataset, &db, "a$b", "id", &how).await, 2);
}

/// Discovery kept by one run is reused by the next while a tenant table's `CREATE_TIME`
/// stands, and asked again for the tenant whose table an ALTER changed (instant or not).
#[tokio::test(flavor = "multi_thread")]
async fn kept_definitions_are_reused_until_an_alter_moves_the_tables_create_time() {
    use connector_framework::{Result, SourceConfig, TableSchema};
    let (a, b, c) = (unique("kept_a"), unique("kept_b"), unique("kept_c"));
    for (db, engine) in [(&a, "InnoDB"), (&b, "InnoDB"), (&c, "Aria")] {
        mysql_exec(&format!(
            "DROP DATABASE IF EXISTS `{db}`; CREATE DATABASE `{db}`;
             CREATE TABLE `{db}`.items (id INT PRIMARY KEY, label VARCHAR(20), doc JSON) ENGINE={engine};"
        ))
        .await;
    }
    let kept = tempfile::tempdir().unwrap();
    let (host, port) = mysql_host_port();
    let source = |reuse: bool| {
        let config: connector_mysql::MySqlSourceConfig = serde_json::from_value(json!({
            "host": host, "port": port, "user": "root", "databases": [a, b, c],
            "reuse_discovery": reuse, "schema_cache_dir": kept.path(),
        }))
        .unwrap();
        async move { config.build(&test_build_context()).await.unwrap() }
    };
    // Each tenant's columns (`name type`) and key.
    let discover = |reuse: bool| {
        let source = source(reuse);
        let databases = [a.clone(), b.clone(), c.clone()];
        async move {
            let source = source.await;
            let found: Vec<Result<TableSchema>> = source.discover_many("items", &databases).await;
            source.close().await;
            found
                .into_iter()
                .map(|s| {
                    let s = s.unwrap();
                    let columns = s.columns.iter().map(|c| format!("{} {:?}", c.name, c.logical)).collect::<Vec<_>>();
                    (columns.join(", "), s.key.join(", "))
                })
                .collect::<Vec<_>>()
        }
    };
    // Definitions are kept once their CREATE_TIME is two whole seconds behind the server's clock.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let first = discover(true).await;
    assert!(first[0] == first[1] && first[1] == first[2], "{first:?}");
    assert!(first[0].0.starts_with("id Int64, label String, doc Json"), "{first:?}");
    assert_eq!(first[0].1, "id");

    // Prove the next run reads the kept file: mark the label column's name in it.
    let files: Vec<_> = files_under(kept.path()).into_iter().filter(|p| p.ends_with("items.json")).collect();
    assert_eq!(files.len(), 1, "one file for the server, user and table name: {files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    std::fs::write(&files[0], text.replace("\"label\"", "\"label_kept\"")).unwrap();
    let reused = discover(true).await;
    assert!(reused[..2].iter().all(|(columns, _)| columns.contains("label_kept String")), "{reused:?}");
    // Aria keeps its CREATE_TIME through a RENAME COLUMN (only the .frm changes): never kept.
    assert!(reused[2].0.contains("label String"), "{reused:?}");
    // reuse_discovery false asks everything.
    assert!(discover(false).await.iter().all(|(columns, _)| columns.contains("label String")));
    mysql_exec(&format!("ALTER TABLE `{c}`.items RENAME COLUMN label TO tag")).await;
    assert!(discover(true).await[2].0.contains("tag String"));

    // An instant ALTER in one tenant: that tenant is asked again, the other still reused.
    mysql_exec(&format!("ALTER TABLE `{b}`.items ADD COLUMN extra BIGINT, ALGORITHM=INSTANT")).await;
    let altered = discover(true).await;
    assert!(altered[0].0.contains("label_kept"), "{altered:?}");
    assert!(altered[1].0.contains("label String") && altered[1].0.contains("extra Int64"), "{altered:?}");

    // A key change (a rebuild) is seen too.
    mysql_exec(&format!(
        "ALTER TABLE `{a}`.items MODIFY label VARCHAR(20) NOT NULL, DROP PRIMARY KEY, ADD UNIQUE KEY by_label (label)"
    ))
    .await;
    let rekeyed = discover(true).await;
    assert_eq!(rekeyed[0].1, "label", "{rekeyed:?}");
    assert!(rekeyed[0].0.contains("label String"), "{rekeyed:?}");
    mysql_exec(&format!("DROP DATABASE `{a}`; DROP DATABASE `{b}`; DROP DATABASE `{c}`;")).await;
}

/// A column's SELECT revoked without an ALTER leaves the kept definition naming it: that run
/// fails the table with the server's reason and forgets it, and the next run reads the table
/// as the user now sees it.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_column_fails_one_run_and_the_next_discovers_again() {
    let db = unique("kept_grants");
    let reader = unique("kept_reader");
    mysql_exec(&format!(
        "DROP DATABASE IF EXISTS `{db}`; CREATE DATABASE `{db}`;
         CREATE TABLE `{db}`.items (id INT PRIMARY KEY, label VARCHAR(20), secret VARCHAR(20));
         INSERT INTO `{db}`.items VALUES (1, 'one', 's1'), (2, 'two', 's2');
         CREATE USER '{reader}'@'%' IDENTIFIED BY 'pw-{reader}';
         GRANT SELECT (id, label, secret) ON `{db}`.items TO '{reader}'@'%';"
    ))
    .await;
    let run = TestRun::new();
    let dataset = unique("kept_grants");
    let mut p = flat_params(std::slice::from_ref(&db), &["items"], &dataset, &EMULATOR, run.path());
    p["db_user"] = json!(reader);
    p["db_pass"] = json!(format!("pw-{reader}"));
    p["schema_cache_dir"] = json!(run.path().join("kept").display().to_string());
    run.params(&p);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    run.sync(&["--full"]).await;

    mysql_exec(&format!("REVOKE SELECT (secret) ON `{db}`.items FROM '{reader}'@'%'")).await;
    let refused = run.run(&["--full"]).await;
    assert_eq!(refused.code, 1, "{}", refused.all());
    assert!(refused.all().contains("secret"), "the refused column is named: {}", refused.all());

    let again = run.sync(&["--full"]).await;
    let report = run.report();
    assert_eq!(report["outcomes"][0]["status"], "SUCCESS", "{}", again.all());
    assert_eq!(report["outcomes"][0]["rows"], 2, "{}", again.all());
    mysql_exec(&format!("DROP DATABASE `{db}`; DROP USER '{reader}'@'%';")).await;
}
