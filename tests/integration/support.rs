//! Test helpers: MySQL fixtures, the shared emulator, running the binary, and an independent
//! row-by-row comparison of MySQL and BigQuery.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::LazyLock;

use mysql_async::prelude::Queryable;
use serde_json::{Value, json};

/// MySQL server for the tests (`MYSQL_URL`, default root on 127.0.0.1:3306).
pub fn mysql_url() -> String {
    std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

pub fn mysql_host_port() -> (String, u16) {
    let url = mysql_url();
    let rest = url.trim_start_matches("mysql://");
    let host_port = rest.rsplit('@').next().unwrap_or(rest).split('/').next().unwrap_or("127.0.0.1:3306");
    let (host, port) = host_port.split_once(':').unwrap_or((host_port, "3306"));
    (host.to_string(), port.parse().unwrap_or(3306))
}

/// Runs SQL statements (separated by `;` at line ends) on the test server.
pub async fn mysql_exec(sql: &str) {
    let pool = mysql_async::Pool::new(mysql_url().as_str());
    let mut conn = pool.get_conn().await.expect("connect to the test MariaDB (run scripts/mariadb.sh ensure)");
    conn.query_drop("SET NAMES utf8mb4").await.unwrap();
    conn.query_drop(sql).await.unwrap_or_else(|e| panic!("{e}\n{sql}"));
    drop(conn);
    pool.disconnect().await.unwrap();
}

/// Rows of a query as strings (NULL as None), through the text protocol.
pub async fn mysql_rows(sql: &str) -> Vec<Vec<Option<String>>> {
    let pool = mysql_async::Pool::new(mysql_url().as_str());
    let mut conn = pool.get_conn().await.unwrap();
    conn.query_drop("SET NAMES utf8mb4, time_zone = '+00:00'").await.unwrap();
    let rows: Vec<mysql_async::Row> = conn.query(sql).await.unwrap_or_else(|e| panic!("{e}\n{sql}"));
    drop(conn);
    pool.disconnect().await.unwrap();
    rows.into_iter()
        .map(|r| {
            r.unwrap()
                .into_iter()
                .map(|v| match v {
                    mysql_async::Value::NULL => None,
                    mysql_async::Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                    other => Some(other.as_sql(true).trim_matches('\'').to_string()),
                })
                .collect()
        })
        .collect()
}

/// A unique, short name for this test run's fixtures.
pub fn unique(prefix: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{prefix}_{}_{n}", std::process::id() % 100_000)
}

/// The emulator every test of this process shares (each test uses its own dataset).
pub struct Emulator {
    pub port: u16,
    pub project: String,
}

impl Emulator {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn emulator_script() -> PathBuf {
    std::env::var("BQ_EMULATOR_SCRIPT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("scripts/bq-emulator.sh"))
}

/// Starts (or reuses) an emulator on `port`.
pub fn start_emulator(port: u16, project: &str, fresh: bool) -> Emulator {
    let mut cmd = Command::new("bash");
    cmd.arg(emulator_script()).args(["start", "--port", &port.to_string(), "--grpc-port", &(port + 1).to_string()]);
    cmd.args(["--project", project]);
    if fresh {
        cmd.arg("--fresh");
    }
    let out = cmd.output().expect("run scripts/bq-emulator.sh");
    assert!(
        out.status.success(),
        "emulator did not start:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Emulator { port, project: project.to_string() }
}

pub fn stop_emulator(port: u16) {
    let _ = Command::new("bash").arg(emulator_script()).args(["stop", "--port", &port.to_string()]).output();
}

pub static EMULATOR: LazyLock<Emulator> = LazyLock::new(|| {
    let port = std::env::var("BQ_TEST_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(19050);
    start_emulator(port, "test-project", false)
});

/// Runs a query on the emulator; rows as strings (NULL as None), timestamps as epoch micros.
pub async fn bq_query(emulator: &Emulator, sql: &str) -> Vec<Vec<Option<String>>> {
    let (_, rows) = bq_query_with_schema(emulator, sql).await;
    rows
}

/// The same, with the result's (name, type) columns.
pub async fn bq_query_with_schema(emulator: &Emulator, sql: &str) -> (Vec<(String, String)>, Vec<Vec<Option<String>>>) {
    let client = reqwest::Client::new();
    let base = format!("{}/bigquery/v2/projects/{}/queries", emulator.endpoint(), emulator.project);
    let body = json!({"query": sql, "useLegacySql": false, "maxResults": 100000,
                      "formatOptions": {"useInt64Timestamp": true}, "timeoutMs": 60000});
    let mut resp: Value = client.post(&base).json(&body).send().await.unwrap().json().await.unwrap();
    assert!(resp.get("error").is_none(), "query failed: {resp}\n{sql}");
    let schema: Vec<(String, String)> = resp["schema"]["fields"]
        .as_array()
        .map(|f| {
            f.iter()
                .map(|c| (c["name"].as_str().unwrap().to_string(), c["type"].as_str().unwrap().to_string()))
                .collect()
        })
        .unwrap_or_default();
    let mut rows = Vec::new();
    loop {
        for row in resp["rows"].as_array().cloned().unwrap_or_default() {
            rows.push(row["f"].as_array().unwrap().iter().map(|c| c["v"].as_str().map(str::to_string)).collect());
        }
        let Some(token) = resp["pageToken"].as_str().map(str::to_string) else { break };
        let job = resp["jobReference"]["jobId"].as_str().unwrap().to_string();
        let url = format!("{base}/{job}?pageToken={token}&formatOptions.useInt64Timestamp=true");
        resp = client.get(&url).send().await.unwrap().json().await.unwrap();
    }
    (schema, rows)
}

/// The result of one `connector-run` invocation.
pub struct RunOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl From<Output> for RunOutput {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_connector-run")
}

/// Runs `connector-run` with these arguments (blocking; call from `spawn_blocking` or plain tests).
pub fn run_cli(args: &[&str], dir: &Path) -> RunOutput {
    Command::new(binary())
        .args(args)
        .current_dir(dir)
        .env("CONNECTOR_LOG", "warn")
        .env_remove("BIGQUERY_EMULATOR_HOST")
        .output()
        .expect("run connector-run")
        .into()
}

pub async fn run_cli_async(args: Vec<String>, dir: PathBuf) -> RunOutput {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&args, &dir)
    })
    .await
    .unwrap()
}

/// A flat params.json in the original tool's format for these databases and tables.
pub fn flat_params(databases: &[String], tables: &[&str], dataset: &str, emulator: &Emulator, dir: &Path) -> Value {
    let (host, port) = mysql_host_port();
    json!({
        "db_host": host, "db_port": port.to_string(), "db_user": "root", "db_pass": "",
        "db_list": databases.join(","), "table_list": tables.join(","),
        "bq_project": emulator.project, "bq_dataset": dataset, "bq_endpoint": emulator.endpoint(),
        "lookback_minutes": 10, "batch_size": 100, "max_retries": 2, "retry_delay": 0.2, "pool_size": 3,
        "status_dir": dir.join("status").display().to_string(),
        "log_file": dir.join("sync.log").display().to_string(),
    })
}

pub fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
}

/// Canonical text of a MySQL value fetched by [`mysql_expression`], for comparison.
fn canonical_mysql(data_type: &str, v: Option<String>) -> Option<String> {
    let v = v?;
    Some(match data_type {
        "date" | "datetime" if v.starts_with("0000-00-00") || v.contains("-00-") => return None,
        // The lowest valid TIMESTAMP is second 1; 0 is MySQL's zero date.
        "timestamp" if v == "0" => return None,
        "decimal" | "bigint_unsigned" => trim_decimal(&v),
        "double" => v.parse::<f64>().map(|f| f.to_string()).unwrap_or(v),
        // FLOAT is single precision: compare the float the value rounds to.
        "float" => v.parse::<f64>().map(|f| (f as f32).to_string()).unwrap_or(v),
        "binary" => v.replace(['\n', '\r'], ""),
        "json" => serde_json::from_str::<Value>(&v).map(|j| j.to_string()).unwrap_or(v),
        _ => v,
    })
}

/// Canonical text of a BigQuery value of type `bq_type`, as the emulator returned it.
fn canonical_bq(bq_type: &str, v: Option<String>) -> Option<String> {
    let v = v?;
    Some(match bq_type {
        "NUMERIC" | "BIGNUMERIC" => trim_decimal(&v),
        "FLOAT" | "FLOAT64" => v.parse::<f64>().map(|f| f.to_string()).unwrap_or(v),
        "DATETIME" => {
            let v = v.replace('T', " ");
            if v.contains('.') { v } else { format!("{v}.000000") }
        }
        "JSON" => serde_json::from_str::<Value>(&v).map(|j| j.to_string()).unwrap_or(v),
        _ => v,
    })
}

fn trim_decimal(v: &str) -> String {
    if !v.contains('.') {
        return v.to_string();
    }
    let t = v.trim_end_matches('0').trim_end_matches('.');
    if t == "-0" { "0".into() } else { t.to_string() }
}

/// The SQL expression that renders a MySQL column the way the comparison expects.
async fn mysql_expression(database: &str, table: &str) -> Vec<(String, String, String)> {
    let cols = mysql_rows(&format!(
        "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = '{database}' AND TABLE_NAME = '{table}' ORDER BY ORDINAL_POSITION"
    ))
    .await;
    cols.into_iter()
        .map(|r| {
            let name = r[0].clone().unwrap();
            let dt = r[1].clone().unwrap().to_lowercase();
            let ct = r[2].clone().unwrap().to_lowercase();
            let q = format!("`{name}`");
            let (kind, expr) = match dt.as_str() {
                "datetime" => ("datetime", format!("DATE_FORMAT({q}, '%Y-%m-%d %H:%i:%s.%f')")),
                "timestamp" => ("timestamp", format!("CAST(UNIX_TIMESTAMP({q}) * 1000000 AS DECIMAL(30,0))")),
                "date" => ("date", format!("DATE_FORMAT({q}, '%Y-%m-%d')")),
                "decimal" => ("decimal", format!("CAST({q} AS CHAR)")),
                "bigint" if ct.contains("unsigned") => ("bigint_unsigned", format!("CAST({q} AS CHAR)")),
                "double" | "real" => ("double", format!("CAST({q} AS CHAR)")),
                "float" => ("float", format!("CAST({q} AS DOUBLE)")),
                "bit" => ("text", format!("CAST({q} AS UNSIGNED)")),
                "year" => ("text", format!("CAST({q} AS SIGNED)")),
                "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring" | "multipolygon"
                | "geometrycollection" => ("text", format!("ST_AsText({q})")),
                "binary" | "varbinary" | "blob" | "tinyblob" | "mediumblob" | "longblob" => {
                    ("binary", format!("TO_BASE64({q})"))
                }
                "json" => ("json", q.clone()),
                "longtext" if ct == "longtext" => ("json_or_text", q.clone()),
                _ => ("text", format!("CAST({q} AS CHAR)")),
            };
            (name, kind.to_string(), expr)
        })
        .collect()
}

/// Asserts that BigQuery's rows for `database` in `dataset.table` equal MySQL's `database.table`,
/// row by row (ordered by `order_by`), for every source column. Returns the row count.
pub async fn assert_table_equal(
    emulator: &Emulator,
    dataset: &str,
    database: &str,
    table: &str,
    order_by: &str,
) -> usize {
    let columns = mysql_expression(database, table).await;
    let exprs: Vec<&str> = columns.iter().map(|c| c.2.as_str()).collect();
    let mysql =
        mysql_rows(&format!("SELECT {} FROM `{database}`.`{table}` ORDER BY {order_by}", exprs.join(", "))).await;
    let names: Vec<String> = columns.iter().map(|c| format!("`{}`", c.0)).collect();
    let (schema, bq) = bq_query_with_schema(
        emulator,
        &format!(
            "SELECT {} FROM `{dataset}`.`{table}` WHERE tenant_id = '{database}' ORDER BY {order_by}",
            names.join(", ")
        ),
    )
    .await;
    assert_eq!(mysql.len(), bq.len(), "{database}.{table}: {} rows in MySQL, {} in BigQuery", mysql.len(), bq.len());
    for (i, (m, b)) in mysql.into_iter().zip(bq).enumerate() {
        for (j, ((name, kind, _), (mv, bv))) in columns.iter().zip(m.into_iter().zip(b)).enumerate() {
            let bq_type = schema[j].1.as_str();
            let kind = if kind == "json_or_text" && bq_type == "JSON" { "json" } else { kind.as_str() };
            let mut expected = canonical_mysql(kind, mv.clone());
            let mut got = canonical_bq(bq_type, bv.clone());
            match (kind, bq_type) {
                // Decimals too wide for BIGNUMERIC are kept as text.
                ("decimal", "STRING") => got = got.map(|g| trim_decimal(&g)),
                ("float", _) => got = got.map(|g| g.parse::<f64>().map(|f| (f as f32).to_string()).unwrap_or(g)),
                // An integer stored as BOOL (column_types override): nonzero is true.
                (_, "BOOL" | "BOOLEAN") => expected = expected.map(|e| (e != "0").to_string()),
                _ => {}
            }
            assert_eq!(
                expected, got,
                "{database}.{table} row {i} column `{name}` ({bq_type}): MySQL {mv:?} vs BigQuery {bv:?}"
            );
        }
    }
    columns.len()
}

/// A REST resource of the emulator, e.g. `datasets/ds/tables/orders` (as JSON; errors too).
pub async fn bq_get(emulator: &Emulator, path: &str) -> Value {
    let url = format!("{}/bigquery/v2/projects/{}/{path}", emulator.endpoint(), emulator.project);
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// The general pipeline form: one MySQL database, `orders` only, into `dataset` through
/// `endpoint`, with 1 MiB load chunks (several load jobs per table).
pub fn general_pipeline(db: &str, dataset: &str, endpoint: &str, project: &str, dir: &Path) -> Value {
    let (host, port) = mysql_host_port();
    json!({
        "source": {"kind": "mysql", "host": host, "port": port, "user": "root", "databases": [db]},
        "sinks": [{"kind": "bigquery", "project": project, "dataset": dataset, "endpoint": endpoint, "upload_chunk_mb": 1}],
        "state": {"kind": "json", "status_dir": dir.join("status").display().to_string()},
        "tables": ["orders"], "batch_size": 100,
        "log_file": dir.join("sync.log").display().to_string()
    })
}

/// The jobs that loaded into `dataset` and the MERGE / DELETE statements on its tables:
/// (load jobs, DML jobs).
pub async fn bq_job_counts(emulator: &Emulator, dataset: &str) -> (usize, usize) {
    let (mut loads, mut queries) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    let mut page: Option<String> = None;
    loop {
        let token = page.as_ref().map(|p| format!("&pageToken={p}")).unwrap_or_default();
        let resp = bq_get(emulator, &format!("jobs?maxResults=1000{token}")).await;
        for job in resp["jobs"].as_array().into_iter().flatten() {
            let id = job["id"].as_str().unwrap_or_default().to_string();
            let config = &job["configuration"];
            if config["load"]["destinationTable"]["datasetId"] == dataset {
                loads.insert(id);
            } else if config["query"]["query"].as_str().is_some_and(|q| {
                (q.starts_with("MERGE") || q.starts_with("DELETE")) && q.contains(&format!(".{dataset}."))
            }) {
                queries.insert(id);
            }
        }
        match resp["nextPageToken"].as_str() {
            Some(next) => page = Some(next.to_string()),
            None => return (loads.len(), queries.len()),
        }
    }
}

/// The table ids of a dataset.
pub async fn list_tables(emulator: &Emulator, dataset: &str) -> Vec<String> {
    let resp = bq_get(emulator, &format!("datasets/{dataset}/tables")).await;
    resp["tables"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t["tableReference"]["tableId"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Number of BigQuery rows per tenant.
pub async fn bq_count(emulator: &Emulator, dataset: &str, table: &str, tenant: &str) -> u64 {
    let rows =
        bq_query(emulator, &format!("SELECT COUNT(*) FROM `{dataset}`.`{table}` WHERE tenant_id = '{tenant}'")).await;
    rows[0][0].as_ref().unwrap().parse().unwrap()
}

pub async fn mysql_count(database: &str, table: &str) -> u64 {
    let rows = mysql_rows(&format!("SELECT COUNT(*) FROM `{database}`.`{table}`")).await;
    rows[0][0].as_ref().unwrap().parse().unwrap()
}

/// Creates one tenant database with the shop schema and `scale`-dependent rows.
pub async fn create_shop(database: &str, users: u32, orders: u32) {
    mysql_exec(&format!(
        "DROP DATABASE IF EXISTS `{database}`;
CREATE DATABASE `{database}` CHARACTER SET utf8mb4;
CREATE TABLE `{database}`.users (
  id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY,
  email VARCHAR(190) NOT NULL,
  name VARCHAR(100) CHARACTER SET latin1 NULL,
  nickname VARCHAR(100) NULL,
  balance DECIMAL(12,2) NOT NULL,
  is_active TINYINT(1) NOT NULL,
  avatar BLOB NULL,
  created_at DATETIME(3) NOT NULL,
  updated_at TIMESTAMP(6) NULL
);
CREATE TABLE `{database}`.orders (
  id BIGINT AUTO_INCREMENT PRIMARY KEY,
  user_id BIGINT UNSIGNED NOT NULL,
  amount DECIMAL(14,4) NOT NULL,
  -- BIGNUMERIC (scale > 9). The emulator stores BIGNUMERIC as DECIMAL(38,18), so the fixture
  -- keeps to 18 integer digits; real BigQuery takes up to 38.
  big_amount DECIMAL(30,12) NULL,
  ratio DOUBLE NULL,
  status ENUM('new','paid','shipped') NOT NULL,
  attributes JSON NULL,
  ordered_on DATE NULL,
  wait_time TIME(3) NULL,
  created_at DATETIME(6) NOT NULL,
  updated_at DATETIME(6) NOT NULL
);
CREATE TABLE `{database}`.page_views (
  user_id BIGINT NULL,
  path VARCHAR(255) NOT NULL,
  viewed_at DATETIME(6) NOT NULL
);
SET SESSION max_recursive_iterations = 1000000, sql_mode = '';
INSERT INTO `{database}`.users (email, name, nickname, balance, is_active, avatar, created_at, updated_at)
WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {users})
SELECT CONCAT('user', n, '@{database}.example'),
       IF(n % 7 = 0, NULL, CONCAT('Jos', CHAR(233), ' ', n)),
       CASE n % 4 WHEN 0 THEN CONCAT('😀 ', n) WHEN 1 THEN '中文名' WHEN 2 THEN '' ELSE NULL END,
       (n * 37 % 10000) / 100 - 20,
       n % 2,
       IF(n % 5 = 0, UNHEX(CONCAT('00FF', LPAD(HEX(n), 4, '0'), '00')), NULL),
       TIMESTAMP('2024-01-01 00:00:00') + INTERVAL n * 3601 SECOND + INTERVAL n MICROSECOND * 1000,
       IF(n % 9 = 0, NULL, TIMESTAMP('2024-06-01 00:00:00') + INTERVAL n * 61 SECOND + INTERVAL n MICROSECOND)
FROM seq WHERE n <= {users};
INSERT INTO `{database}`.orders (user_id, amount, big_amount, ratio, status, attributes, ordered_on, wait_time, created_at, updated_at)
WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {orders})
SELECT n % {users} + 1,
       (n * 7919 % 1000000) / 10000,
       IF(n % 3 = 0, NULL, CONCAT(IF(n % 2 = 0, '-', ''), '123456789012345678.', LPAD(n, 12, '0'))),
       IF(n % 11 = 0, NULL, n / 7),
       ELT(n % 3 + 1, 'new', 'paid', 'shipped'),
       IF(n % 4 = 0, NULL, JSON_OBJECT('n', n, 'tags', JSON_ARRAY('a', 'ü', n % 5), 'nested', JSON_OBJECT('x', n / 2))),
       IF(n % 13 = 0, '0000-00-00', DATE('2024-01-01') + INTERVAL n % 365 DAY),
       IF(n % 6 = 0, '-838:59:59', SEC_TO_TIME(n * 17.125)),
       TIMESTAMP('2024-02-01 00:00:00') + INTERVAL n MINUTE + INTERVAL n MICROSECOND,
       TIMESTAMP('2024-03-01 00:00:00') + INTERVAL n MINUTE + INTERVAL n * 3 MICROSECOND
FROM seq WHERE n <= {orders};
INSERT INTO `{database}`.page_views (user_id, path, viewed_at)
WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {users})
SELECT IF(n % 10 = 0, NULL, n), CONCAT('/p/', n % 17), TIMESTAMP('2024-05-01') + INTERVAL n SECOND FROM seq WHERE n <= {users};"
    ))
    .await;
}

/// A temporary working folder for one run.
pub fn workdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// An HTTP proxy in front of the emulator that answers the first requests with injected
/// errors (503, then 429 rate limits), then forwards everything. For faults no real server
/// produces on demand.
pub struct FaultProxy {
    pub port: u16,
    pub faults_served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FaultProxy {
    pub async fn start(target: String, faults: Vec<u16>) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let faults = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(faults)));
        let client = reqwest::Client::new();
        let counter = served.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let (client, target, faults, counter) =
                    (client.clone(), target.clone(), faults.clone(), counter.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 65536];
                    let header_end = loop {
                        let Ok(n) = sock.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
                    let mut lines = head.split("\r\n");
                    let request_line = lines.next().unwrap_or_default().to_string();
                    let mut parts = request_line.split(' ');
                    let (method, path) =
                        (parts.next().unwrap_or("GET").to_string(), parts.next().unwrap_or("/").to_string());
                    let headers: Vec<(String, String)> = lines
                        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
                        .collect();
                    let length: usize = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < header_end + length {
                        let Ok(n) = sock.read(&mut chunk).await else { return };
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body = buf[header_end..].to_vec();
                    let fault = faults.lock().unwrap().pop_front();
                    let (status, content_type, payload) = if let Some(code) = fault {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let reason = if code == 429 { "rateLimitExceeded" } else { "backendError" };
                        let body = format!(
                            r#"{{"error":{{"code":{code},"message":"injected","errors":[{{"reason":"{reason}","message":"injected"}}]}}}}"#
                        );
                        (code, "application/json".to_string(), body.into_bytes())
                    } else {
                        let mut req = client.request(method.parse().unwrap(), format!("{target}{path}"));
                        for (k, v) in &headers {
                            if !["host", "content-length", "connection", "transfer-encoding"]
                                .contains(&k.to_ascii_lowercase().as_str())
                            {
                                req = req.header(k, v);
                            }
                        }
                        match req.body(body).send().await {
                            Ok(resp) => {
                                let status = resp.status().as_u16();
                                let ct = resp
                                    .headers()
                                    .get("content-type")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("application/json")
                                    .to_string();
                                (status, ct, resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default())
                            }
                            Err(_) => (502, "text/plain".into(), b"bad gateway".to_vec()),
                        }
                    };
                    let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        payload.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(&payload).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Self { port, faults_served: served }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
