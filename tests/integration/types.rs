use serde_json::json;

use crate::support::*;

/// The all-types fixture: a fresh database `db` with table `all_types` (41 columns, every
/// MySQL / MariaDB type family), and with `rows` its four rows of edge values, NULLs and
/// invalid dates. CDC tests insert the rows through the binlog instead.
pub(crate) fn all_types_sql(db: &str, rows: bool) -> String {
    let create = format!(
        r#"DROP DATABASE IF EXISTS `{db}`;
CREATE DATABASE `{db}` CHARACTER SET utf8mb4;
SET SESSION sql_mode = '';
CREATE TABLE `{db}`.all_types (
  id INT PRIMARY KEY,
  ti TINYINT, ti_u TINYINT UNSIGNED, si SMALLINT, mi MEDIUMINT, i INT, i_u INT UNSIGNED,
  bi BIGINT, bi_u BIGINT UNSIGNED,
  flag TINYINT(1), flag_bool TINYINT(1),
  d_small DECIMAL(10,2), d_num DECIMAL(38,9),
  -- BIGNUMERIC: the emulator stores it as DECIMAL(38,18), so at most 18 integer digits here;
  -- real BigQuery holds 38.
  d_big DECIMAL(30,12),
  -- DECIMAL(65,30) is BIGNUMERIC too (35 integer digits fit real BigQuery's 38); its fixture
  -- values stay inside the emulator's 18+18 digits. DECIMAL(65,0) does not fit: STRING.
  d_huge DECIMAL(65,30), d_int DECIMAL(65,0),
  f FLOAT, db DOUBLE,
  dt_date DATE, dt0 DATETIME, dt6 DATETIME(6), ts0 TIMESTAMP NULL, ts6 TIMESTAMP(6) NULL,
  tm TIME, tm6 TIME(6), yr YEAR,
  c CHAR(10), vc VARCHAR(100) CHARACTER SET utf8mb4, vl VARCHAR(100) CHARACTER SET latin1, tx TEXT, ltx LONGTEXT,
  bn BINARY(4), vb VARBINARY(16), bl BLOB,
  en ENUM('a','b','ü'), st SET('x','y','z'),
  b1 BIT(1), b64 BIT(64),
  js JSON,
  geo GEOMETRY, pt POINT
);
"#
    );
    if !rows {
        return create;
    }
    format!("{create}\n{}", all_types_rows(db))
}

/// The four rows of [`all_types_sql`], as an INSERT.
pub(crate) fn all_types_rows(db: &str) -> String {
    format!(
        r#"SET SESSION sql_mode = '';
INSERT INTO `{db}`.all_types VALUES
(1, -128, 0, -32768, -8388608, -2147483648, 0, -9223372036854775808, 0, 0, 0,
 -99999999.99, -99999999999999999999999999999.999999999, -999999999999999999.999999999999,
 -999999999999999999.999999999999999999000000000000, -99999999999999999999999999999999999999999999999999999999999999999,
 -3.40282e38, -1.7976931348623157e308,
 '1000-01-01', '1000-01-01 00:00:00', '1000-01-01 00:00:00.000000', '1970-01-01 00:00:01', '1970-01-01 00:00:01.000000',
 '-838:59:59', '-838:59:59.000000', 1901,
 '', '', '', '', '',
 X'00000000', X'', X'00',
 'a', '', b'0', b'0', '{{}}', ST_GeomFromText('POINT(0 0)'), ST_GeomFromText('POINT(-180 -90)')),
(2, 127, 255, 32767, 8388607, 2147483647, 4294967295, 9223372036854775807, 18446744073709551615, 5, 1,
 99999999.99, 99999999999999999999999999999.999999999, 999999999999999999.999999999999,
 999999999999999999.999999999999999999000000000000, 99999999999999999999999999999999999999999999999999999999999999999,
 3.40282e38, 1.7976931348623157e308,
 '9999-12-31', '9999-12-31 23:59:59', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07', '2038-01-19 03:14:07.999999',
 '838:59:59', '838:59:59.000000', 2155,
 'abcdefghij', '😀 中文 é ñ 𝄞', 'café ÀÉÎ', 'line1\nline2 "quoted" \\ back\tslash', 'x',
 X'FFFFFFFF', X'00FF00FF00', X'0001020300FFFE',
 'ü', 'x,y,z', b'1', b'1111111111111111111111111111111111111111111111111111111111111111',
 '{{"k": [1, 2.5, {{"ü": "😀"}}], "n": null, "s": "a\\"b", "t": true}}',
 ST_GeomFromText('LINESTRING(0 0,1 1,2 0)'), ST_GeomFromText('POINT(180 90)')),
(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
 NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
 NULL, NULL, NULL, NULL, NULL),
(4, 1, 1, 1, 1, 1, 1, 1, 9223372036854775808, 1, 0,
 0.01, 0.000000001, -0.000000000001, 0.000000000000000001, 0,
 1.1, 0.1,
 '0000-00-00', '0000-00-00 00:00:00', '2024-00-10 00:00:00', '0000-00-00 00:00:00', '2024-02-29 12:00:00.000001',
 '00:00:00', '-00:00:00.500000', 0,
 'a', 'tab	and nul-free', 'ß', 'short', 'y',
 X'7F000001', X'00', X'',
 'b', 'y', b'1', b'1000000000000000000000000000000000000000000000000000000000000000',
 '"just a string"', ST_GeomFromText('POLYGON((0 0,1 0,1 1,0 0))'), ST_GeomFromText('POINT(1.5 -2.25)'));"#
    )
}

/// Every MySQL / MariaDB type family with its edge values, synced and read back; each value is
/// compared per type with what MySQL itself prints for it.
#[tokio::test(flavor = "multi_thread")]
async fn every_type_round_trips_with_edge_values() {
    let emulator = &*EMULATOR;
    let db = unique("types");
    mysql_exec(&all_types_sql(&db, true)).await;
    let dataset = unique("types");
    let dir = workdir();
    let mut params = flat_params(std::slice::from_ref(&db), &["all_types"], &dataset, emulator, dir.path());
    // TINYINT(1) can hold 5; it becomes BOOL only when asked.
    params["table_options"] = json!({"all_types": {"column_types": {"flag_bool": "BOOL"}}});
    write_json(&dir.path().join("params.json"), &params);
    let out = run_cli_async(vec!["--pipeline".into(), "params.json".into()], dir.path().to_path_buf()).await;
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("4 invalid dates written as NULL"), "{}", out.stdout);
    assert_eq!(assert_table_equal(emulator, &dataset, &db, "all_types", "id").await, 41);

    let (schema, _) = bq_query_with_schema(emulator, &format!("SELECT * FROM `{dataset}`.all_types LIMIT 0")).await;
    let ty = |name: &str| schema.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone()).unwrap();
    for (column, expected) in [
        ("bi_u", "NUMERIC"),
        ("flag", "INTEGER"),
        ("flag_bool", "BOOLEAN"),
        ("d_num", "NUMERIC"),
        ("d_big", "BIGNUMERIC"),
        ("d_huge", "BIGNUMERIC"),
        ("d_int", "STRING"),
        ("ts6", "TIMESTAMP"),
        ("dt6", "DATETIME"),
        ("tm", "STRING"),
        ("bl", "BYTES"),
        ("js", "JSON"),
        ("b64", "NUMERIC"),
        ("geo", "STRING"),
    ] {
        assert_eq!(ty(column), expected, "type of {column}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn zero_dates_can_fail_the_table_instead() {
    let emulator = &*EMULATOR;
    let db = unique("zerofail");
    mysql_exec(&format!(
        "DROP DATABASE IF EXISTS `{db}`; CREATE DATABASE `{db}`; SET SESSION sql_mode = '';
         CREATE TABLE `{db}`.d (id INT PRIMARY KEY, happened DATE);
         INSERT INTO `{db}`.d VALUES (1, '2024-01-01'), (2, '0000-00-00');"
    ))
    .await;
    let dataset = unique("zerofail");
    let dir = workdir();
    let (host, port) = mysql_host_port();
    let pipeline = json!({
        "source": {"kind": "mysql", "host": host, "port": port, "user": "root", "databases": [db], "zero_dates": "fail"},
        "sinks": [{"kind": "bigquery", "project": emulator.project, "dataset": dataset, "endpoint": emulator.endpoint()}],
        "state": {"kind": "json", "status_dir": dir.path().join("status").display().to_string()},
        "log_file": dir.path().join("sync.log").display().to_string(), "max_retries": 0
    });
    write_json(&dir.path().join("params.json"), &pipeline);
    let out = run_cli_async(vec!["--pipeline".into(), "params.json".into()], dir.path().to_path_buf()).await;
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.stdout.contains(&format!("{db}.d, column `happened` (date): an invalid date")), "{}", out.stdout);
}

/// JSON `null` is a document, not SQL NULL; scalar documents stay what they are.
#[tokio::test(flavor = "multi_thread")]
async fn json_null_scalar_documents_and_sql_null_stay_apart() {
    let emulator = &*EMULATOR;
    let db = unique("jsonnull");
    mysql_exec(&format!(
        r#"DROP DATABASE IF EXISTS `{db}`; CREATE DATABASE `{db}` CHARACTER SET utf8mb4;
           CREATE TABLE `{db}`.docs (id INT PRIMARY KEY, doc JSON NULL);
           INSERT INTO `{db}`.docs VALUES (1, 'null'), (2, '1'), (3, '"x"'), (4, 'true'), (5, '{{"a": null}}'),
             (6, NULL), (7, '[null]'), (8, '  null  ');"#
    ))
    .await;
    let dataset = unique("jsonnull");
    let run = TestRun::new();
    run.params(&flat_params(std::slice::from_ref(&db), &["docs"], &dataset, emulator, run.path()));
    run.sync(&[]).await;
    assert_table_equal(emulator, &dataset, &db, "docs", "id").await;
    let nulls = bq_query(emulator, &format!("SELECT id FROM `{dataset}`.docs WHERE doc IS NULL ORDER BY id")).await;
    assert_eq!(nulls, [[Some("6".to_string())]], "only the SQL NULL is NULL in BigQuery");
    let json_nulls = bq_query(
        emulator,
        &format!("SELECT id FROM `{dataset}`.docs WHERE doc IS NOT NULL AND TO_JSON_STRING(doc) = 'null' ORDER BY id"),
    )
    .await;
    assert_eq!(json_nulls, [[Some("1".to_string())], [Some("8".to_string())]], "JSON null documents are JSON null");
    let scalar = bq_query(emulator, &format!("SELECT TO_JSON_STRING(doc) FROM `{dataset}`.docs WHERE id = 3")).await;
    assert_eq!(scalar[0][0].as_deref(), Some("\"x\""), "a string document stays a JSON string");
}
