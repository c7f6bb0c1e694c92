//! The test MariaDB: connection, statements, row reads, unique names, the shop fixture.

use mysql_async::prelude::Queryable;

/// MySQL server for the tests (`MYSQL_URL`, which scripts/test.sh points at its private server;
/// default root on 127.0.0.1:3306).
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
    mysql_exec_at(&mysql_url(), sql).await
}

/// [`mysql_exec`] on the server at `url`.
pub async fn mysql_exec_at(url: &str, sql: &str) {
    let pool = mysql_async::Pool::new(url);
    let mut conn = pool.get_conn().await.expect("connect to the test MariaDB (run scripts/mariadb.sh ensure)");
    conn.query_drop("SET NAMES utf8mb4").await.unwrap();
    conn.query_drop(sql).await.unwrap_or_else(|e| panic!("{e}\n{sql}"));
    drop(conn);
    pool.disconnect().await.unwrap();
}

/// Rows of a query as strings (NULL as None), through the text protocol.
pub async fn mysql_rows(sql: &str) -> Vec<Vec<Option<String>>> {
    mysql_rows_at(&mysql_url(), sql).await
}

/// [`mysql_rows`] on the server at `url`.
pub async fn mysql_rows_at(url: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    let pool = mysql_async::Pool::new(url);
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

pub async fn mysql_count(database: &str, table: &str) -> u64 {
    let rows = mysql_rows(&format!("SELECT COUNT(*) FROM `{database}`.`{table}`")).await;
    rows[0][0].as_ref().unwrap().parse().unwrap()
}

/// Creates one tenant database with the shop schema and `scale`-dependent rows.
pub async fn create_shop(database: &str, users: u32, orders: u32) {
    create_shop_at(&mysql_url(), database, users, orders).await
}

/// [`create_shop`] on the server at `url`.
pub async fn create_shop_at(url: &str, database: &str, users: u32, orders: u32) {
    mysql_exec_at(url, &format!(
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

/// A MariaDB server of one test's own (its own data folder and port, binlog as `--cdc` needs
/// it), for tests that restart the server or purge its binlog. Stopped when dropped.
pub struct PrivateServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    options: Vec<String>,
}

impl PrivateServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server without a binary log (not set up for `--cdc`).
    pub fn start_without_binlog() -> Self {
        Self::start_with(&["--no-binlog"])
    }

    /// A server started with these `scripts/private-mariadb.sh` options (`--no-tls`,
    /// `--tls-name NAME`, …).
    pub fn start_with(options: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let server = Self { dir, port, options: options.iter().map(|o| o.to_string()).collect() };
        server.run("start");
        server
    }

    fn run(&self, command: &str) {
        let out = std::process::Command::new("bash")
            .arg(super::repo_root().join("scripts/private-mariadb.sh"))
            .args([command, "--dir", &self.dir.path().display().to_string(), "--port", &self.port.to_string()])
            .args(if command == "start" { self.options.as_slice() } else { &[] })
            .output()
            .expect("run scripts/private-mariadb.sh");
        assert!(
            out.status.success(),
            "private-mariadb.sh {command}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    /// A file of the server's TLS folder (`ca.pem`, `other-ca.pem`, `client.pem`, …).
    pub fn tls_file(&self, name: &str) -> String {
        self.dir.path().join("tls").join(name).display().to_string()
    }

    pub fn stop(&self) {
        self.run("stop");
    }

    /// Stops it and starts it again with its data, on the same port.
    pub fn restart(&self) {
        self.stop();
        self.run("start");
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(super::repo_root().join("scripts/private-mariadb.sh"))
            .args(["stop", "--dir", &self.dir.path().display().to_string()])
            .output();
    }
}
