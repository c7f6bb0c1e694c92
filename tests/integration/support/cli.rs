//! Running `connector-run`: one invocation, the pipeline files, and the [`TestRun`] helper.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

use super::{Emulator, mysql_host_port};

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

/// The binary under test: this build's, or `CONNECTOR_RUN_BIN` (e.g. an older build, to check
/// that a new test fails without its fix).
pub fn binary() -> &'static str {
    static BIN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        std::env::var("CONNECTOR_RUN_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_connector-run").to_string())
    });
    &BIN
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

/// A database's state as `status` and the next run see it: its file with the journal of a run
/// under way (or killed) over it (`{"tables": {...}}`; `Null` when there is none). A run's
/// records reach the file itself only when it ends.
pub fn state_as_seen(status_dir: &Path, db: &str) -> Value {
    connector_json_state::tools::overview(status_dir)
        .unwrap_or_default()
        .into_iter()
        .find(|(name, _)| name == db)
        .and_then(|(_, state)| state.ok())
        .map(|state| serde_json::json!({"tables": serde_json::to_value(&state.tables).unwrap()}))
        .unwrap_or(Value::Null)
}

pub fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(value).unwrap()).unwrap();
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

/// A temporary working folder for one run.
pub fn workdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// One test's working folder and the runs made in it, ripgrep's `TestCommand` style:
/// `TestRun::new()`, `.params(&json)`, then `.sync(&[])` (asserts success) or `.run(&[])`, and
/// `.state(db)`, `.report()`, `.log()` to look at what a run left.
pub struct TestRun {
    pub dir: tempfile::TempDir,
    /// The pipeline file runs use (`params.json`).
    pub file: String,
}

impl Default for TestRun {
    fn default() -> Self {
        Self::new()
    }
}

impl TestRun {
    pub fn new() -> Self {
        Self { dir: workdir(), file: "params.json".into() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes the pipeline file.
    pub fn params(&self, value: &Value) -> &Self {
        write_json(&self.dir.path().join(&self.file), value);
        self
    }

    /// Runs `connector-run --pipeline <file> ARGS` (with `--report-json report.json`).
    pub async fn run(&self, args: &[&str]) -> RunOutput {
        let mut all = vec!["--pipeline".to_string(), self.file.clone(), "--report-json".into(), "report.json".into()];
        all.extend(args.iter().map(|s| s.to_string()));
        run_cli_async(all, self.dir.path().to_path_buf()).await
    }

    /// Like [`TestRun::run`], and asserts that every table synced.
    pub async fn sync(&self, args: &[&str]) -> RunOutput {
        let out = self.run(args).await;
        assert_eq!(out.code, 0, "{}", out.all());
        out
    }

    /// Starts a run in the background (`-q`, stdout and stderr captured).
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        Command::new(binary())
            .args(["--pipeline", &self.file, "--report-json", "report.json", "-q"])
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("BIGQUERY_EMULATOR_HOST")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start connector-run")
    }

    /// A database's state file (`status/<db>.json`, or `status/<target>/<db>.json`).
    pub fn state(&self, db: &str) -> Value {
        self.read_json(&format!("status/{db}.json"))
    }

    pub fn target_state(&self, target: &str, db: &str) -> Value {
        self.read_json(&format!("status/{target}/{db}.json"))
    }

    /// The last run's JSON report.
    pub fn report(&self) -> Value {
        self.read_json("report.json")
    }

    /// The log file (`sync.log`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sync.log")).unwrap_or_default()
    }

    fn read_json(&self, rel: &str) -> Value {
        let path = self.dir.path().join(rel);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap()
    }
}

/// Waits for a background run.
pub async fn wait(child: std::process::Child) -> RunOutput {
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap().into()).await.unwrap()
}

/// The build context a test builds a component with outside a run (the conformance checks).
pub fn test_build_context() -> connector_framework::BuildContext {
    connector_framework::BuildContext {
        run_id: "conformance".into(),
        target_id: "default".into(),
        state_subdir: None,
        retry: Default::default(),
        discard_writes: false,
    }
}

/// Every file under `dir`, in its sub-folders too (a missing folder has none).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() { folders.push(path) } else { files.push(path) }
        }
    }
    files
}
