//! The BigQuery emulator: starting and stopping emulators on free ports, queries and REST
//! reads.

use std::path::PathBuf;
use std::process::Command;
use std::sync::LazyLock;

use serde_json::{Value, json};

/// One running emulator (the tests' own, on free ports; `scripts/test.sh` stops them all).
pub struct Emulator {
    pub port: u16,
    pub grpc_port: u16,
    pub project: String,
}

impl Emulator {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A new emulator with no data, on free ports.
    pub fn fresh(project: &str) -> Self {
        start_emulator(free_port(), free_port(), project, true)
    }

    pub fn stop(&self) {
        stop_emulator(self.port);
    }

    /// SIGKILL: the jobs it runs are lost (they stay RUNNING after a restart).
    pub fn kill(&self) {
        let _ = Command::new("bash").arg(emulator_script()).args(["kill", "--port", &self.port.to_string()]).output();
    }

    /// Starts it again on the same ports, with its data.
    pub fn restart(&self) {
        start_emulator(self.port, self.grpc_port, &self.project, false);
    }
}

/// A TCP port nothing listens on now, outside the kernel's ephemeral range (the kernel hands
/// those to outgoing connections, so one free now may be bound before a server asks for it), and
/// never the same twice in this process (tests run in parallel).
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut bounds = range.split_whitespace().filter_map(|v| v.parse::<u16>().ok());
    let (low, high) = (bounds.next().unwrap_or(32768), bounds.next().unwrap_or(60999));
    let (from, to) = if low > 12_000 { (10_000, low - 1) } else { (high.saturating_add(1), 65_000) };
    // As scripts/lib.sh's free_port: a range that leaves no room below or above falls back.
    let (from, to) = if to > from { (from, to) } else { (20_000, 32_767) };
    let mut given = GIVEN.lock().unwrap();
    for _ in 0..500 {
        let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let port = from + (random % u64::from(to - from)) as u16;
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free TCP port between {from} and {to}")
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn emulator_script() -> PathBuf {
    std::env::var("BQ_EMULATOR_SCRIPT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("scripts/bq-emulator.sh"))
}

/// Starts (or reuses) an emulator on these ports.
pub fn start_emulator(port: u16, grpc_port: u16, project: &str, fresh: bool) -> Emulator {
    let mut cmd = Command::new("bash");
    cmd.arg(emulator_script()).args(["start", "--port", &port.to_string(), "--grpc-port", &grpc_port.to_string()]);
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
    Emulator { port, grpc_port, project: project.to_string() }
}

pub fn stop_emulator(port: u16) {
    let _ = Command::new("bash").arg(emulator_script()).args(["stop", "--port", &port.to_string()]).output();
}

/// The emulator the tests of this process share (each test uses its own dataset).
pub static EMULATOR: LazyLock<Emulator> = LazyLock::new(|| Emulator::fresh("test-project"));

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

/// A REST resource of the emulator, e.g. `datasets/ds/tables/orders` (as JSON; errors too).
pub async fn bq_get(emulator: &Emulator, path: &str) -> Value {
    let url = format!("{}/bigquery/v2/projects/{}/{path}", emulator.endpoint(), emulator.project);
    reqwest::get(url).await.unwrap().json().await.unwrap()
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
