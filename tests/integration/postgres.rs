use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

/// The shop tables of one tenant in `db`.`schema`: `orders` (a key, a timestamptz cursor, an
/// array) with `n` rows, and `events` (no key, a timestamp cursor).
fn shop_sql(schema: &str, n: u32) -> String {
    format!(
        r#"CREATE SCHEMA IF NOT EXISTS "{schema}";
CREATE TABLE "{schema}".orders (id bigserial PRIMARY KEY, customer text NOT NULL, amount numeric(12,2),
  tags text[], updated_at timestamptz NOT NULL DEFAULT clock_timestamp());
INSERT INTO "{schema}".orders (customer, amount, tags, updated_at)
  SELECT 'c' || g, g * 1.25, ARRAY['t' || (g % 3)], '2025-01-01 00:00:00+00'::timestamptz + g * interval '1 second'
  FROM generate_series(1, {n}) g;
CREATE TABLE "{schema}".events (kind text, at timestamp, note text);
INSERT INTO "{schema}".events SELECT 'view', '2025-02-01 00:00:00'::timestamp + (g % 50) * interval '1 minute', NULL
  FROM generate_series(1, {n}) g;"#
    )
}

/// A pipeline from `source` into `dataset` of the shared emulator, state and log in `dir`.
fn pipeline(source: Value, dataset: &str, dir: &std::path::Path) -> Value {
    let emulator = &*EMULATOR;
    json!({
        "source": source,
        "sinks": [{"kind": "bigquery", "project": emulator.project, "dataset": dataset, "endpoint": emulator.endpoint()}],
        "state": {"kind": "json", "status_dir": dir.join("status").display().to_string()},
        "tables": ["orders", "events"], "batch_size": 200, "max_retries": 2, "retry_delay": 0.2,
        "table_options": {"events": {"cursor_column": "at"}},
        "log_file": dir.join("sync.log").display().to_string()
    })
}

/// Inserts and updates orders and appends events in `(db, schema)` until `stop`.
fn writer(
    db: String,
    schema: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let mut i = 0u32;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            i += 1;
            pg_exec(
                &db,
                &format!(
                    r#"INSERT INTO "{schema}".orders (customer, amount, tags) VALUES ('live{i}', {i}.5, ARRAY['live']);
                       UPDATE "{schema}".orders SET amount = amount + 1, updated_at = clock_timestamp() WHERE id = {};
                       INSERT INTO "{schema}".events VALUES ('live', localtimestamp, 'w{i}');"#,
                    1 + (i * 37) % 300
                ),
            )
            .await;
        }
        i
    })
}

/// Full and incremental syncs of three tenants, in both fleet layouts, while writers insert
/// and update in every tenant: in the end BigQuery equals PostgreSQL, row by row and column by
/// column, with no row lost or doubled.
#[tokio::test(flavor = "multi_thread")]
async fn both_layouts_sync_in_full_then_incrementally_under_writers() {
    let emulator = &*EMULATOR;
    // A database per tenant.
    let dbs: Vec<String> = (1..=3).map(|i| unique(&format!("pgd{i}"))).collect();
    for db in &dbs {
        pg_fresh_database(db).await;
        pg_exec(db, &shop_sql("public", 300)).await;
    }
    // A schema per tenant in one database.
    let home = unique("pgs");
    pg_fresh_database(&home).await;
    let schemas: Vec<String> = (1..=3).map(|i| format!("shop{i}")).collect();
    for s in &schemas {
        pg_exec(&home, &shop_sql(s, 300)).await;
    }
    let layouts = [
        ("database", TestRun::new(), unique("pglayd"), dbs.clone()),
        ("schema", TestRun::new(), unique("pglays"), schemas.clone()),
    ];
    for (layout, run, dataset, tenants) in &layouts {
        run.params(&pipeline(pg_source(layout, tenants, &home), dataset, run.path()));
        let out = run.sync(&[]).await;
        assert!(out.stdout.contains("FULL"), "{}", out.stdout);
    }

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers: Vec<_> = dbs.iter().map(|db| writer(db.clone(), "public".into(), stop.clone())).collect();
    writers.extend(schemas.iter().map(|s| writer(home.clone(), s.clone(), stop.clone())));
    for _ in 0..2 {
        for (_, run, _, _) in &layouts {
            let out = run.sync(&[]).await;
            assert!(out.stdout.contains("INCREMENTAL"), "{}", out.stdout);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in writers {
        assert!(w.await.unwrap() > 0, "the writer made changes");
    }
    for (layout, run, dataset, tenants) in &layouts {
        run.sync(&[]).await;
        for tenant in tenants {
            let (db, schema) =
                if *layout == "database" { (tenant.as_str(), "public") } else { (home.as_str(), tenant.as_str()) };
            assert_eq!(assert_pg_table_equal(emulator, dataset, tenant, (db, schema, "orders"), "id").await, 5);
            assert_pg_table_equal(emulator, dataset, tenant, (db, schema, "events"), "at, kind, note").await;
        }
        let state = run.state(&tenants[0]);
        assert_eq!(state["tables"]["orders"]["sync_status"], "SUCCESS", "{state}");
    }
    for db in &dbs {
        pg_exec("postgres", &format!("DROP DATABASE \"{db}\" WITH (FORCE)")).await;
    }
    pg_exec("postgres", &format!("DROP DATABASE \"{home}\" WITH (FORCE)")).await;
}

/// A big full sync read in key ranges, SIGKILLed once some ranges are durable, resumes after
/// its last range: every row arrives once.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_sync_killed_mid_key_ranges_resumes_after_its_last_range() {
    let emulator = &*EMULATOR;
    let db = unique("pgresume");
    pg_fresh_database(&db).await;
    pg_exec(&db, &shop_sql("public", 40_000)).await;
    let dataset = unique("pgresume");
    let run = TestRun::new();
    let mut p = pipeline(pg_source("database", std::slice::from_ref(&db), ""), &dataset, run.path());
    p["tables"] = json!(["orders"]);
    p["batch_size"] = json!(500);
    p["chunk_rows"] = json!(4000);
    run.params(&p);
    let mut child = run.spawn(&[]);
    let started = Instant::now();
    let status_dir = run.path().join("status");
    loop {
        let rows = state_as_seen(&status_dir, &db)["tables"]["orders"]["resume"]["rows"].as_u64().unwrap_or(0);
        if rows >= 8000 {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(started.elapsed() < Duration::from_secs(120));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(bq_count(emulator, &dataset, "orders", &db).await, 0, "nothing visible before the commit");
    pg_exec(&db, "UPDATE orders SET amount = 1, updated_at = clock_timestamp() WHERE id <= 100").await;
    run.sync(&[]).await;
    assert!(run.log().contains("resuming an interrupted full sync"), "the rerun resumed");
    let window = run.report()["outcomes"][0]["window"].as_str().unwrap().to_string();
    assert!(window.contains("resumed after id = "), "{window}");
    assert_eq!(bq_count(emulator, &dataset, "orders", &db).await, 40_000);
    run.sync(&[]).await;
    assert_pg_table_equal(emulator, &dataset, &db, (&db, "public", "orders"), "id").await;
    pg_exec("postgres", &format!("DROP DATABASE \"{db}\" WITH (FORCE)")).await;
}

/// Every PostgreSQL type family with edge values arrives exactly (compared value by value with
/// PostgreSQL's own text of each); what BigQuery cannot hold is NULL and counted, or fails the
/// table with `out_of_range: fail`; JSON null stays apart from SQL NULL.
#[tokio::test(flavor = "multi_thread")]
async fn every_type_arrives_exactly_and_what_bigquery_cannot_hold_is_counted() {
    let emulator = &*EMULATOR;
    let db = unique("pgtypes");
    pg_fresh_database(&db).await;
    pg_exec(
        &db,
        r#"CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN price AS numeric(10,2);
CREATE DOMAIN price2 AS price;
CREATE TABLE all_types (
  id int PRIMARY KEY, i2 smallint, i4 integer, i8 bigint,
  n_small numeric(10,2), n_wide numeric(38,9), n_huge numeric(60,0), n_free numeric,
  r real, d double precision, b boolean,
  tx text, vc varchar(10), ch char(5), nm name,
  by bytea, dt date, ts timestamp, ts3 timestamp(3), tz timestamptz, tm time, ttz timetz, iv interval,
  u uuid, j json, jb jsonb, a_int int[], a_text text[][], a_num numeric[], a_ts timestamptz[],
  m mood, ip inet, net cidr, mac macaddr, mo money, bits bit(4), vb varbit, x xml, p price, p2 price2
);
INSERT INTO all_types VALUES
(1, -32768, -2147483648, -9223372036854775808, -99999999.99, -99999999999999999999999999999.999999999,
 -999999999999999999999999999999999999999999999999999999999999, -123456789012345678.123456789012345678,
 -3.4028235e38, -1.7976931348623157e308, false,
 '', '', '', 'n', '\x', '0001-01-01', '0001-01-01 00:00:00', '2000-01-01 00:00:00.001', '0001-01-01 00:00:00+00',
 '00:00:00', '00:00:00+00', '-178000000 years', '00000000-0000-0000-0000-000000000000',
 '{}', '[]', '{}', '{}', '{}', '{}', 'sad', '0.0.0.0', '0.0.0.0/0', '00:00:00:00:00:00', -92233720368547758.08,
 B'0000', B'', '<a/>', -99999999.99, 0),
(2, 32767, 2147483647, 9223372036854775807, 99999999.99, 99999999999999999999999999999.999999999,
 999999999999999999999999999999999999999999999999999999999999, 0.000000000000000001,
 'NaN', 'Infinity', true,
 E'tab\there\nnewline \\ back ''quote'' ü 😀', 'ten chars!', 'ab', 'name',
 '\x00ff10', '9999-12-31', '9999-12-31 23:59:59.999999', '2024-02-29 23:59:59.999', '2024-01-01 12:00:00.123456+02',
 '24:00:00', '12:34:56.789+05:30', '1 year 2 mons 3 days 04:05:06.5',
 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'null', '{"a": [1, 2.50, null], "b": {"c": "ü"}}',
 '{1,NULL,3}', '{{"a","b"},{"c",NULL}}', '{1.50,NaN}', '{"2024-01-01 00:00:00+00"}',
 'happy', '2001:db8::1', '10.1.0.0/16', '08:00:2b:01:02:03', 92233720368547758.07,
 B'1010', B'101', '<a x="1">ü</a>', 99999999.99, 12.5),
(3, 0, 0, 0, 0, 0, 0, 0, '-0', '-0', NULL,
 NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'null'::jsonb,
 '{NULL}', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
(4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 1.5e-45, 4.9e-324, NULL,
 NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
 NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
CREATE TABLE edges (id int PRIMARY KEY, dt date, ts timestamp, tz timestamptz, n_free numeric, n_fixed numeric(10,2));
INSERT INTO edges VALUES
(1, '0044-03-15 BC', '0001-12-31 23:00:00 BC', '-infinity', 'NaN', 'NaN'),
(2, 'infinity', 'infinity', 'infinity', 'Infinity', 1.5),
(3, '10000-01-01', '10000-01-01 00:00:00', '10000-01-01 00:00:00+00', 1234567890123456789012345678901234567890, 2.5),
(4, '2024-01-01', '2024-01-01 00:00:00', '2024-01-01 00:00:00+00', 0.1, 3.5);"#,
    )
    .await;
    let dataset = unique("pgtypes");
    let run = TestRun::new();
    let mut p = pipeline(pg_source("database", std::slice::from_ref(&db), ""), &dataset, run.path());
    p["tables"] = json!(["all_types", "edges"]);
    p["table_options"] = json!({});
    run.params(&p);
    let out = run.sync(&[]).await;
    assert!(out.stdout.contains("3 numeric NaN or Infinity written as NULL"), "{}", out.stdout);

    // Every column of every row, against PostgreSQL's own text of each value.
    assert_eq!(assert_pg_table_equal(emulator, &dataset, &db, (&db, "public", "all_types"), "id").await, 40);
    // JSON null is a JSON value; SQL NULL is none.
    let nulls = bq_query(
        emulator,
        &format!("SELECT id, TO_JSON_STRING(jb), jb IS NULL FROM `{dataset}`.all_types ORDER BY id"),
    )
    .await;
    assert_eq!(nulls[0][1].as_deref(), Some("[]"));
    assert_eq!((nulls[2][1].as_deref(), nulls[2][2].as_deref()), (Some("null"), Some("false")), "row 3: the JSON null");
    assert_eq!(nulls[3][2].as_deref(), Some("true"), "row 4 holds SQL NULL");
    // The BigQuery types chosen.
    let (schema, _) = bq_query_with_schema(emulator, &format!("SELECT * FROM `{dataset}`.all_types LIMIT 0")).await;
    let ty = |c: &str| schema.iter().find(|(n, _)| n == c).map(|(_, t)| t.clone()).unwrap();
    for (column, expected) in [
        ("i8", "INTEGER"),
        ("n_small", "NUMERIC"),
        ("n_wide", "NUMERIC"),
        ("n_huge", "STRING"),
        ("n_free", "BIGNUMERIC"),
        ("r", "FLOAT"),
        ("b", "BOOLEAN"),
        ("by", "BYTES"),
        ("dt", "DATE"),
        ("ts", "DATETIME"),
        ("tz", "TIMESTAMP"),
        ("tm", "STRING"),
        ("iv", "STRING"),
        ("jb", "JSON"),
        ("a_int", "JSON"),
        ("m", "STRING"),
        ("mo", "NUMERIC"),
        ("p2", "NUMERIC"),
    ] {
        assert_eq!(ty(column), expected, "column {column}");
    }

    // What BigQuery cannot hold: NULL, and counted by kind.
    let edges = bq_query(
        emulator,
        &format!("SELECT id, CAST(dt AS STRING), CAST(ts AS STRING), tz, CAST(n_free AS STRING), CAST(n_fixed AS STRING) FROM `{dataset}`.edges ORDER BY id"),
    )
    .await;
    for row in &edges[..3] {
        assert_eq!(&row[1..4], &[None, None, None], "row {:?}: dates BigQuery cannot hold are NULL", row[0]);
        assert_eq!(row[4], None, "row {:?}: NaN, Infinity, 40 digits are NULL", row[0]);
    }
    assert_eq!(edges[0][5], None, "numeric(10,2) NaN is NULL");
    assert_eq!(edges[1][5].as_deref().map(|v| v.trim_end_matches('0')), Some("1.5"));
    assert_eq!(edges[3][1].as_deref(), Some("2024-01-01"));
    assert_eq!(edges[3][4].as_deref().map(|v| v.trim_end_matches('0')), Some("0.1"));
    let report = run.report();
    let edge = report["outcomes"].as_array().unwrap().iter().find(|o| o["table"] == "edges").unwrap().clone();
    let nulled = &edge["nulled_values"];
    assert_eq!(nulled["dates outside 0001-01-01..9999-12-31 (BC, infinity, year > 9999)"], json!(9), "{edge}");
    assert_eq!(nulled["numeric NaN or Infinity"], json!(3), "{edge}");
    assert_eq!(nulled["numeric beyond BIGNUMERIC (more than 38 integer or fractional digits)"], json!(1), "{edge}");

    // out_of_range: fail fails the table, naming the column and the value, and writes nothing.
    let strict = TestRun::new();
    let strict_dataset = unique("pgstrict");
    let mut p = pipeline(pg_source("database", std::slice::from_ref(&db), ""), &strict_dataset, strict.path());
    p["tables"] = json!(["edges"]);
    p["table_options"] = json!({});
    p["source"]["out_of_range"] = json!("fail");
    strict.params(&p);
    let out = strict.run(&[]).await;
    assert_ne!(out.code, 0, "{}", out.all());
    assert!(out.all().contains("column `dt` (date) holds '0044-03-15 BC'"), "{}", out.all());
    assert!(
        !list_tables(emulator, &strict_dataset).await.contains(&"edges".to_string())
            || bq_count(emulator, &strict_dataset, "edges", &db).await == 0
    );
    pg_exec("postgres", &format!("DROP DATABASE \"{db}\" WITH (FORCE)")).await;
}

/// A table without a key, re-read in full by every run (a lookback wider than its data), keeps
/// its row count through ten runs, exact duplicate rows included; new rows arrive once.
#[tokio::test(flavor = "multi_thread")]
async fn a_keyless_table_reread_ten_times_keeps_its_row_count() {
    let emulator = &*EMULATOR;
    let db = unique("pgnokey");
    pg_fresh_database(&db).await;
    pg_exec(&db, &shop_sql("public", 40)).await;
    pg_exec(
        &db,
        "INSERT INTO events VALUES ('dup', '2025-02-02', 'x'), ('dup', '2025-02-02', 'x'), ('dup', '2025-02-02', 'x')",
    )
    .await;
    let dataset = unique("pgnokey");
    let run = TestRun::new();
    let mut p = pipeline(pg_source("database", std::slice::from_ref(&db), ""), &dataset, run.path());
    p["tables"] = json!(["events"]);
    p["lookback_minutes"] = json!(50_000_000);
    run.params(&p);
    for i in 0..10 {
        let out = run.sync(&[]).await;
        if i > 0 {
            assert!(out.stdout.contains("INCREMENTAL"), "{}", out.stdout);
        }
        assert_eq!(bq_count(emulator, &dataset, "events", &db).await, 43, "after run {i}");
    }
    pg_exec(&db, "INSERT INTO events VALUES ('dup', '2025-02-02', 'x'), ('new', localtimestamp, 'y')").await;
    run.sync(&[]).await;
    run.sync(&[]).await;
    assert_eq!(bq_count(emulator, &dataset, "events", &db).await, 45);
    assert_pg_table_equal(emulator, &dataset, &db, (&db, "public", "events"), "at, kind, note").await;
    pg_exec("postgres", &format!("DROP DATABASE \"{db}\" WITH (FORCE)")).await;
}

/// The PostgreSQL source honours the `ReadRange` contract, checked by the same conformance
/// kit as every source.
#[tokio::test(flavor = "multi_thread")]
async fn the_postgres_source_passes_the_source_conformance_checks() {
    use connector_framework::SourceConfig;
    let db = unique("pgconform");
    pg_fresh_database(&db).await;
    pg_exec(
        &db,
        "CREATE TABLE items (id bigint PRIMARY KEY, name varchar(20), updated_at timestamp(6) NULL);
         INSERT INTO items VALUES (1, 'a', '2025-01-01 00:00:01'), (2, 'b', NULL),
           (3, 'c', '2025-01-01 00:00:02.5'), (4, 'd', '2025-01-01 00:00:02.5'), (5, 'e', NULL),
           (7, 'f', '2025-01-02 00:00:00'), (9, 'g', '2025-01-03 00:00:00');",
    )
    .await;
    let config: connector_postgres::PostgresSourceConfig =
        serde_json::from_value(pg_source("database", std::slice::from_ref(&db), "")).unwrap();
    let source = config.build(&test_build_context()).await.unwrap();
    let table = connector_framework::TableRef::new(&db, "items");
    let checks = connector_framework::testkit::source_conformance(source.as_ref(), &table).await.unwrap();
    assert_eq!(checks, ["full", "since", "key ranges", "key bounds"]);
    source.close().await;
    pg_exec("postgres", &format!("DROP DATABASE \"{db}\" WITH (FORCE)")).await;
}

/// TLS and privileges: verify-full against the server's CA with a password role works and the
/// password appears nowhere; a wrong CA is refused with the reason; a role with CONNECT, USAGE
/// and SELECT only suffices, even with require_readonly, which refuses the superuser.
#[tokio::test(flavor = "multi_thread")]
async fn tls_modes_a_select_only_role_and_require_readonly() {
    let emulator = &*EMULATOR;
    let db = unique("pgsec");
    pg_fresh_database(&db).await;
    pg_exec(&db, &shop_sql("public", 20)).await;
    pg_exec(
        &db,
        &format!(
            "GRANT CONNECT ON DATABASE \"{db}\" TO connector_pw; GRANT USAGE ON SCHEMA public TO connector_pw;
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO connector_pw;"
        ),
    )
    .await;
    let tls = pg_tls_dir();
    let dataset = unique("pgsec");
    let run = TestRun::new();
    let mut p = pipeline(pg_source("database", std::slice::from_ref(&db), ""), &dataset, run.path());
    p["tables"] = json!(["orders"]);
    p["source"]["user"] = json!("connector_pw");
    p["source"]["password"] = json!("${PG_TEST_PASSWORD}");
    p["source"]["ssl_mode"] = json!("verify-full");
    p["source"]["ssl_ca"] = json!(tls.join("ca.pem").display().to_string());
    p["source"]["host"] = json!("localhost");
    p["source"]["require_readonly"] = json!(true);
    run.params(&p);
    let out = tokio::task::spawn_blocking({
        let dir = run.path().to_path_buf();
        move || {
            std::process::Command::new(binary())
                .args(["--pipeline", "params.json"])
                .current_dir(dir)
                .env("PG_TEST_PASSWORD", "pw-s3cret-9")
                .env("CONNECTOR_LOG", "info")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let out = RunOutput::from(out);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.all().contains("connected over TLS"), "{}", out.all());
    assert!(!out.all().contains("holds more than"), "a SELECT-only role is not warned about: {}", out.all());
    assert_eq!(bq_count(emulator, &dataset, "orders", &db).await, 20);
    for file in files_under(run.path()) {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(!text.contains("pw-s3cret-9"), "the password is in {}", file.display());
    }
    assert!(!out.all().contains("pw-s3cret-9"));

    // A CA that did not sign the server's certificate.
    let mut wrong = p.clone();
    wrong["source"]["password"] = json!("pw-s3cret-9");
    wrong["source"]["ssl_ca"] = json!(tls.join("other-ca.pem").display().to_string());
    run.params(&wrong);
    let out = run.run(&[]).await;
    assert_ne!(out.code, 0);
    assert!(out.all().contains("does not chain to ssl_ca"), "{}", out.all());
    assert!(!out.all().contains("pw-s3cret-9"), "{}", out.all());

    // The superuser with require_readonly: refused before anything is read.
    let mut superuser = pipeline(pg_source("database", std::slice::from_ref(&db), ""), &unique("pgsu"), run.path());
    superuser["tables"] = json!(["orders"]);
    superuser["source"]["require_readonly"] = json!(true);
    run.params(&superuser);
    let out = run.run(&[]).await;
    assert_ne!(out.code, 0);
    assert!(out.all().contains("SUPERUSER") && out.all().contains("require_readonly is set"), "{}", out.all());
    pg_exec("postgres", &format!("DROP DATABASE \"{db}\" WITH (FORCE); ")).await;
}

/// The flat params.json with `db_type: postgres`: the schema layout, tenants by pattern,
/// `describe postgres`, and `list`.
#[tokio::test(flavor = "multi_thread")]
async fn flat_params_with_db_type_postgres_sync_a_schema_fleet_by_pattern() {
    let emulator = &*EMULATOR;
    let home = unique("pgflat");
    pg_fresh_database(&home).await;
    for s in ["shop_a", "shop_b", "other"] {
        pg_exec(&home, &shop_sql(s, 30)).await;
    }
    // Schema drift across tenants: one tenant has a column the others lack.
    pg_exec(
        &home,
        "ALTER TABLE shop_b.orders ADD COLUMN coupon text; UPDATE shop_b.orders SET coupon = 'X' || id WHERE id < 5",
    )
    .await;
    let dataset = unique("pgflat");
    let run = TestRun::new();
    run.params(&json!({
        "db_type": "postgres", "db_host": "127.0.0.1", "db_port": pg_port(), "db_user": "postgres", "db_pass": "",
        "db_name": home, "tenant_by": "schema", "db_list": "shop_*", "table_list": "orders",
        "db_ssl_mode": "disable",
        "bq_project": emulator.project, "bq_dataset": dataset, "bq_endpoint": emulator.endpoint(),
        "status_dir": run.path().join("status").display().to_string(),
        "log_file": run.path().join("sync.log").display().to_string(),
    }));
    let plan = run.sync(&["--dry-run"]).await;
    assert!(plan.stdout.contains("amount numeric(12,2)") && plan.stdout.contains("tags text[]"), "{}", plan.stdout);
    assert!(plan.stdout.contains("amount decimal(12,2)") || plan.stdout.contains("amount NUMERIC"), "{}", plan.stdout);
    let out = run.sync(&[]).await;
    assert!(out.stdout.contains("shop_a.orders") && out.stdout.contains("shop_b.orders"), "{}", out.stdout);
    assert!(!out.stdout.contains("other.orders"), "{}", out.stdout);
    assert_eq!(assert_pg_table_equal(emulator, &dataset, "shop_a", (&home, "shop_a", "orders"), "id").await, 5);
    assert_eq!(assert_pg_table_equal(emulator, &dataset, "shop_b", (&home, "shop_b", "orders"), "id").await, 6);
    let coupons =
        bq_query(emulator, &format!("SELECT COUNT(coupon) FROM `{dataset}`.orders WHERE tenant_id = 'shop_a'")).await;
    assert_eq!(coupons[0][0].as_deref(), Some("0"), "shop_a has no coupon column: NULL there");
    // A key of the other source is named as written.
    let mut bad =
        serde_json::from_str::<Value>(&std::fs::read_to_string(run.path().join("params.json")).unwrap()).unwrap();
    bad["zero_dates"] = json!("fail");
    run.params(&bad);
    let out = run_cli(&["validate", "--pipeline", "params.json"], run.path());
    assert_ne!(out.code, 0);
    assert!(out.all().contains("zero_dates"), "{}", out.all());

    let describe = run_cli(&["describe", "postgres"], run.path());
    assert_eq!(describe.code, 0, "{}", describe.all());
    for needle in ["tenant_by", "db_name", "numeric (no precision)", "BIGNUMERIC", "jsonb"] {
        assert!(describe.stdout.contains(needle), "describe lacks {needle}: {}", describe.stdout);
    }
    let flat_port = describe.stdout.lines().find(|l| l.trim_start().starts_with("db_port")).unwrap_or_default();
    assert!(flat_port.contains("5432"), "the flat db_port documents PostgreSQL's default: {flat_port}");
    let list = run_cli(&["list"], run.path());
    assert!(list.stdout.contains("postgres"), "{}", list.stdout);
    pg_exec("postgres", &format!("DROP DATABASE \"{home}\" WITH (FORCE)")).await;
}

/// A `date` cursor: the watermark stays a date, and incremental runs read from it (inclusive,
/// within the lookback); a row dated before year 1 counts as a NULL cursor and is read each time.
#[tokio::test(flavor = "multi_thread")]
async fn a_date_cursor_syncs_incrementally() {
    let emulator = &*EMULATOR;
    let db = unique("pgdate");
    pg_fresh_database(&db).await;
    pg_exec(
        &db,
        "CREATE TABLE daily (id int PRIMARY KEY, day date, v int);
         INSERT INTO daily SELECT g, DATE '2025-01-01' + g, g FROM generate_series(1, 50) g;
         INSERT INTO daily VALUES (100, '-infinity', 0), (101, NULL, 0);",
    )
    .await;
    let dataset = unique("pgdate");
    let run = TestRun::new();
    let mut p = pipeline(pg_source("database", std::slice::from_ref(&db), ""), &dataset, run.path());
    p["tables"] = json!(["daily"]);
    p["table_options"] = json!({"daily": {"cursor_column": "day"}});
    run.params(&p);
    run.sync(&[]).await;
    let watermark = run.state(&db)["tables"]["daily"]["watermark"].clone();
    assert_eq!(watermark["value"].as_str().map(str::len), Some(10), "a date watermark: {watermark}");
    pg_exec(
        &db,
        "INSERT INTO daily VALUES (51, current_date, 51);
         UPDATE daily SET v = -1, day = current_date WHERE id = 3;
         UPDATE daily SET v = 7 WHERE id = 100;",
    )
    .await;
    let out = run.sync(&[]).await;
    assert!(out.stdout.contains("INCREMENTAL"), "{}", out.stdout);
    assert_eq!(bq_count(emulator, &dataset, "daily", &db).await, 53);
    // Row 100's day (-infinity) is NULL in BigQuery by the out_of_range rule: compared apart.
    let rows =
        bq_query(emulator, &format!("SELECT id, CAST(day AS STRING), v FROM `{dataset}`.daily ORDER BY id")).await;
    let expected = pg_rows(
        &db,
        "SELECT id::text, CASE WHEN day = '-infinity' THEN NULL ELSE day::text END, v::text FROM daily ORDER BY daily.id",
    )
    .await;
    assert_eq!(rows, expected);
    let v = bq_query(emulator, &format!("SELECT v FROM `{dataset}`.daily WHERE id = 100")).await;
    assert_eq!(v[0][0].as_deref(), Some("7"), "the row dated -infinity is read again");
    pg_exec("postgres", &format!("DROP DATABASE \"{db}\" WITH (FORCE)")).await;
}
