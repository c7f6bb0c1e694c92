//! `verify`: equal tables verify equal on every type; every kind of planted difference is
//! reported with exactly its keys; `--repair` fixes exactly those and nothing else.

use serde_json::{Value, json};

use crate::support::*;
use crate::types::all_types_sql;

async fn verify(run: &TestRun, args: &[&str]) -> (RunOutput, Value) {
    let mut all =
        vec!["verify".to_string(), "--pipeline".into(), run.file.clone(), "--report-json".into(), "verify.json".into()];
    all.extend(args.iter().map(|a| a.to_string()));
    let out = run_cli_async(all, run.path().to_path_buf()).await;
    let report = std::fs::read_to_string(run.path().join("verify.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    (out, report)
}

/// The verdict on `db`.`table` in a verify report.
fn verdict<'a>(report: &'a Value, db: &str, table: &str) -> &'a Value {
    report["tables"]
        .as_array()
        .and_then(|t| t.iter().find(|v| v["database"] == db && v["table"] == table))
        .unwrap_or_else(|| panic!("no verdict for {db}.{table} in {report}"))
}

fn keys(v: &Value, kind: &str) -> Vec<String> {
    v["differences"][kind]
        .as_array()
        .map(|a| a.iter().map(|k| k.as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_type_verifies_equal_after_a_sync() {
    let emulator = &*EMULATOR;
    let db = unique("vtypes");
    mysql_exec(&all_types_sql(&db, true)).await;
    let run = TestRun::new();
    let mut params = flat_params(std::slice::from_ref(&db), &["all_types"], &unique("vtypes"), emulator, run.path());
    params["table_options"] = json!({"all_types": {"column_types": {"flag_bool": "BOOL"}}});
    run.params(&params);
    run.sync(&[]).await;
    let (out, report) = verify(&run, &[]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    let v = verdict(&report, &db, "all_types");
    assert_eq!((v["status"].as_str(), v["source_rows"].as_u64()), (Some("equal"), Some(4)), "{v}");
    assert!(out.stdout.contains(&format!("EQUAL      {db}.all_types: 4 rows")), "{}", out.stdout);
}

/// Every kind of difference, planted in some tenants, is reported with exactly its keys; a
/// recent change is in flight, not a difference; `--repair` leaves BigQuery equal to MySQL
/// and every untouched tenant byte for byte as it was.
#[tokio::test(flavor = "multi_thread")]
async fn each_planted_difference_is_found_by_key_and_repaired_alone() {
    let emulator = &*EMULATOR;
    let dbs: Vec<String> = (1..=3).map(|i| unique(&format!("vdiff{i}"))).collect();
    for db in &dbs {
        create_shop(db, 20, 40).await;
    }
    let (a, b, c) = (&dbs[0], &dbs[1], &dbs[2]);
    let dataset = unique("vdiff");
    let run = TestRun::new();
    run.params(&flat_params(&dbs, &["orders", "users", "page_views"], &dataset, emulator, run.path()));
    run.sync(&[]).await;
    let (out, _) = verify(&run, &[]).await;
    assert_eq!(out.code, 0, "a fresh sync verifies equal:\n{}", out.all());

    let t = |table: &str| format!("`{dataset}`.{table}");
    // In BigQuery, tenant a: a cell changed, a row deleted, a row that never existed, a row doubled.
    for sql in [
        format!("UPDATE {} SET status = 'tampered' WHERE tenant_id = '{a}' AND id = 3", t("orders")),
        // (The emulator cannot SET a JSON column: the row is copied with its new document.)
        format!(
            "INSERT INTO {o} SELECT * REPLACE (-10 AS id, PARSE_JSON('{{\"n\": 0}}') AS attributes) FROM {o} \
             WHERE tenant_id = '{a}' AND id = 10",
            o = t("orders")
        ),
        format!("DELETE FROM {} WHERE tenant_id = '{a}' AND id = 10", t("orders")),
        format!("UPDATE {} SET id = 10 WHERE tenant_id = '{a}' AND id = -10", t("orders")),
        format!("DELETE FROM {} WHERE tenant_id = '{a}' AND id = 4", t("orders")),
        format!(
            "INSERT INTO {o} SELECT * REPLACE (9999 AS id) FROM {o} WHERE tenant_id = '{a}' AND id = 1",
            o = t("orders")
        ),
        format!("INSERT INTO {o} SELECT * FROM {o} WHERE tenant_id = '{a}' AND id = 5", o = t("orders")),
        format!("DELETE FROM {} WHERE tenant_id = '{a}' AND path = '/p/2' AND user_id = 2", t("page_views")),
    ] {
        bq_query(emulator, &sql).await;
    }
    // In MySQL, tenant b: a hard delete, an update that keeps updated_at, a recent change, and
    // a new copy of a row in the table without a key.
    mysql_exec(&format!(
        "DELETE FROM `{b}`.orders WHERE id = 6;
         UPDATE `{b}`.orders SET amount = 1.5, updated_at = updated_at WHERE id = 7;
         UPDATE `{b}`.orders SET attributes = JSON_OBJECT('changed', TRUE), updated_at = updated_at WHERE id = 9;
         UPDATE `{b}`.orders SET amount = 2.5, updated_at = NOW(6) WHERE id = 8;
         INSERT INTO `{b}`.page_views SELECT * FROM `{b}`.page_views WHERE path = '/p/3' LIMIT 1;"
    ))
    .await;
    let untouched = bq_query(
        emulator,
        &format!("SELECT TO_JSON_STRING(t) FROM {} t WHERE tenant_id = '{c}' ORDER BY id", t("orders")),
    )
    .await;

    let (out, report) = verify(&run, &[]).await;
    assert_eq!(out.code, 1, "{}", out.all());
    let va = verdict(&report, a, "orders");
    assert_eq!(keys(va, "different"), ["3", "10"], "a cell and a JSON document changed in BigQuery: {va}");
    assert_eq!(keys(va, "missing"), ["4"], "{va}");
    assert_eq!(keys(va, "extra"), ["9999"], "{va}");
    assert_eq!(keys(va, "duplicated"), ["5"], "{va}");
    let vb = verdict(&report, b, "orders");
    assert_eq!(keys(vb, "extra"), ["6"], "{vb}");
    assert_eq!(keys(vb, "different"), ["7", "9"], "updates that kept updated_at, a JSON one too: {vb}");
    assert_eq!(keys(vb, "in_flight"), ["8"], "a change the next sync reads is no difference: {vb}");
    assert_eq!(keys(verdict(&report, a, "page_views"), "missing").len(), 1, "{report}");
    assert_eq!(keys(verdict(&report, b, "page_views"), "missing").len(), 1, "{report}");
    for (db, table) in [(c, "orders"), (a, "users"), (b, "users"), (c, "page_views")] {
        assert_eq!(verdict(&report, db, table)["status"], "equal", "{db}.{table}: {report}");
    }
    assert!(
        out.stdout.contains(&format!("DIFFERENT  {a}.orders")) && out.stdout.contains("missing in the target: 4"),
        "{}",
        out.stdout
    );

    let (out, report) = verify(&run, &["--repair"]).await;
    assert_eq!(out.code, 0, "repaired:\n{}", out.all());
    assert_eq!(verdict(&report, a, "orders")["repaired"]["equal_after"], true, "{report}");
    let after = bq_query(
        emulator,
        &format!("SELECT TO_JSON_STRING(t) FROM {} t WHERE tenant_id = '{c}' ORDER BY id", t("orders")),
    )
    .await;
    assert!(untouched == after, "the other tenant's rows, sync_timestamp included, are untouched by the repair");
    let repaired =
        bq_query(emulator, &format!("SELECT sync_mode FROM {} WHERE tenant_id = '{a}' AND id = 3", t("orders"))).await;
    assert_eq!(repaired[0][0].as_deref(), Some("REPAIR"), "repaired rows say so");
    run.sync(&[]).await;
    let (out, _) = verify(&run, &[]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    for db in &dbs {
        assert_table_equal(emulator, &dataset, db, "orders", "id").await;
        assert_table_equal(emulator, &dataset, db, "page_views", "user_id, path, viewed_at").await;
    }
}

/// `--keys-only` finds rows deleted in the source (and not content changes); a repair that
/// would delete a large share of a tenant's rows is refused unless forced; with
/// `delete_detection: verify` every sync removes the rows deleted in the source.
#[tokio::test(flavor = "multi_thread")]
async fn keys_only_finds_deletes_the_guard_holds_and_syncs_can_remove_deletes() {
    let emulator = &*EMULATOR;
    let dbs: Vec<String> = (1..=2).map(|i| unique(&format!("vkeys{i}"))).collect();
    for db in &dbs {
        create_shop(db, 20, 40).await;
    }
    let (a, b) = (&dbs[0], &dbs[1]);
    let dataset = unique("vkeys");
    let run = TestRun::new();
    let mut params = flat_params(&dbs, &["orders", "users"], &dataset, emulator, run.path());
    run.params(&params);
    run.sync(&[]).await;
    mysql_exec(&format!(
        "DELETE FROM `{a}`.orders WHERE id IN (2, 3);
         UPDATE `{a}`.orders SET amount = 1, updated_at = updated_at WHERE id = 5;
         DELETE FROM `{b}`.users WHERE id <= 10;"
    ))
    .await;
    let (out, report) = verify(&run, &["--keys-only"]).await;
    assert_eq!(out.code, 1, "{}", out.all());
    assert_eq!(keys(verdict(&report, a, "orders"), "extra"), ["2", "3"], "{report}");
    assert!(keys(verdict(&report, a, "orders"), "different").is_empty(), "keys only: {report}");
    assert_eq!(keys(verdict(&report, b, "users"), "extra").len(), 10, "{report}");

    // Half of tenant b's users gone at once looks like a partial read: refused without --force.
    let (out, report) = verify(&run, &["--keys-only", "--repair"]).await;
    assert_eq!(out.code, 1, "{}", out.all());
    let refused = &verdict(&report, b, "users")["repaired"]["refused"];
    assert!(refused.as_str().is_some_and(|r| r.contains("repair_max_delete_pct")), "{report}");
    assert_eq!(verdict(&report, a, "orders")["repaired"]["equal_after"], true, "{report}");
    assert_eq!(bq_count(emulator, &dataset, "users", b).await, 20, "nothing deleted for the refused tenant");
    let (out, _) = verify(&run, &["--keys-only", "--repair", "--force"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(bq_count(emulator, &dataset, "users", b).await, 10);

    // Deletes found by every sync.
    params["delete_detection"] = json!("verify");
    run.params(&params);
    mysql_exec(&format!("DELETE FROM `{a}`.orders WHERE id = 7")).await;
    let out = run.sync(&[]).await;
    assert!(
        out.stdout.contains(&format!("delete detection: {a}.orders → default: 1 row deleted in the source removed")),
        "{}",
        out.stdout
    );
    let (out, _) = verify(&run, &["--keys-only"]).await;
    assert_eq!(out.code, 0, "every key matches again:\n{}", out.all());
}

/// A JSON column stored as text (`column_types` STRING) is compared as that text, and a column
/// the source gained since the last sync compares as the NULL every target row holds there:
/// both verify equal, and a value changed in either is found and repaired.
#[tokio::test(flavor = "multi_thread")]
async fn json_kept_as_text_and_a_column_not_synced_yet_are_compared_by_value() {
    let emulator = &*EMULATOR;
    let db = unique("vtext");
    create_shop(&db, 5, 40).await;
    let dataset = unique("vtext");
    let run = TestRun::new();
    let mut params = flat_params(std::slice::from_ref(&db), &["orders"], &dataset, emulator, run.path());
    params["table_options"] = json!({"orders": {"column_types": {"attributes": "STRING"}}});
    run.params(&params);
    run.sync(&[]).await;
    let (out, _) = verify(&run, &[]).await;
    assert_eq!(out.code, 0, "{}", out.all());

    mysql_exec(&format!("ALTER TABLE `{db}`.orders ADD COLUMN note VARCHAR(20) NULL")).await;
    let (out, _) = verify(&run, &[]).await;
    assert_eq!(out.code, 0, "a column NULL on every row matches the target's absent column:\n{}", out.all());

    // Neither change moves the cursor, so no sync would carry them.
    mysql_exec(&format!(
        "UPDATE `{db}`.orders SET attributes = '{{\"x\": [1, 2]}}', updated_at = updated_at WHERE id = 4;
         UPDATE `{db}`.orders SET note = 'hi', updated_at = updated_at WHERE id = 6;"
    ))
    .await;
    let (out, report) = verify(&run, &[]).await;
    assert_eq!(out.code, 1, "{}", out.all());
    assert_eq!(keys(verdict(&report, &db, "orders"), "different"), ["4", "6"], "{report}");

    let (out, report) = verify(&run, &["--repair"]).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(verdict(&report, &db, "orders")["repaired"]["equal_after"], true, "{report}");
    let rows = bq_query(
        emulator,
        &format!(
            "SELECT id, attributes, note FROM `{dataset}`.orders WHERE tenant_id = '{db}' AND id IN (4, 6) ORDER BY id"
        ),
    )
    .await;
    assert_eq!(rows[0][..2], [Some("4".to_string()), Some("{\"x\": [1, 2]}".to_string())], "{rows:?}");
    assert_eq!(rows[1][2].as_deref(), Some("hi"), "{rows:?}");
}
