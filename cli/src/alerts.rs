//! Sends alerts (docs/console.md): after every run, its failure and recovery transitions; from
//! `serve`, tables gone stale. Each message goes to every `alerts` entry that wants its event,
//! retried with backoff and bounded in time: an alert never fails a sync, and never holds one
//! up for long. A webhook's URL is never logged.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use connector_framework::alerts::{Alert, AlertConfig, AlertEvent, transitions};
use connector_framework::{RunReport, Runner};

/// Tries per message.
const ATTEMPTS: u32 = 3;
/// The longest a batch of alerts may take.
const BATCH_LIMIT: Duration = Duration::from_secs(30);

/// Each table's consecutive failures before a run: (database, table, target) → count.
pub type Prior = HashMap<(String, String, String), u32>;

/// The state's failure counts, read before a run (only when alerts are configured).
pub async fn prior_failures(runner: &Runner) -> Prior {
    let mut out = Prior::new();
    if runner.settings.alerts.is_empty() {
        return out;
    }
    for target in &runner.targets {
        match target.state.load_all().await {
            Ok(all) => {
                for (database, state) in all {
                    for (table, t) in state.map(|s| s.tables).unwrap_or_default() {
                        out.insert((database.clone(), table, target.id.clone()), t.consecutive_failures);
                    }
                }
            }
            Err(e) => tracing::warn!(target = %target.id, error = %e, "alerts: cannot read the state before the run"),
        }
    }
    out
}

/// The run's transitions, sent.
pub async fn after_run(configs: &[AlertConfig], report: &RunReport, prior: &Prior) {
    if configs.is_empty() || report.dry_run {
        return;
    }
    let now = chrono::Utc::now().naive_utc();
    let alerts = transitions(
        report,
        |d, t, target| prior.get(&(d.to_string(), t.to_string(), target.to_string())).copied(),
        now,
    );
    send_all(configs, &alerts).await;
}

/// Sends every alert to every entry that wants it, all at once, within [`BATCH_LIMIT`].
pub async fn send_all(configs: &[AlertConfig], alerts: &[Alert]) {
    if alerts.is_empty() {
        return;
    }
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
    let sends = alerts.iter().flat_map(|alert| {
        configs.iter().filter(|c| c.wants(alert.event)).map({
            let client = client.clone();
            move |config| send(client.clone(), config, alert)
        })
    });
    if tokio::time::timeout(BATCH_LIMIT, futures::future::join_all(sends)).await.is_err() {
        tracing::warn!(limit_secs = BATCH_LIMIT.as_secs(), "alerts: some were not delivered in time; given up");
    }
}

async fn send(client: reqwest::Client, config: &AlertConfig, alert: &Alert) {
    let what = format!("{:?} alert for {}.{} → {}", alert.event, alert.database, alert.table, alert.target);
    for attempt in 1..=ATTEMPTS {
        let result = match config {
            AlertConfig::Webhook { url, .. } => webhook(&client, url.expose(), alert).await,
            AlertConfig::Command { run, .. } => command(run, alert).await,
        };
        match result {
            Ok(()) => {
                tracing::info!(to = %config.describe(), "{what} sent");
                return;
            }
            Err(e) if attempt < ATTEMPTS => {
                tracing::warn!(to = %config.describe(), attempt, error = %e, "{what} not delivered; retrying");
                tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
            }
            Err(e) => tracing::error!(to = %config.describe(), error = %e, "{what} not delivered; given up"),
        }
    }
}

async fn webhook(client: &reqwest::Client, url: &str, alert: &Alert) -> Result<(), String> {
    // reqwest's errors can quote the URL: only the kind of failure is kept.
    let answer = client.post(url).json(alert).send().await.map_err(|e| {
        if e.is_timeout() {
            "timed out".to_string()
        } else if e.is_connect() {
            "cannot connect".to_string()
        } else {
            "request failed".to_string()
        }
    })?;
    if answer.status().is_success() { Ok(()) } else { Err(format!("answered HTTP {}", answer.status().as_u16())) }
}

async fn command(run: &[String], alert: &Alert) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let (program, args) = run.split_first().ok_or("no program")?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let payload = serde_json::to_vec(alert).map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&payload).await.map_err(|e| format!("{program}: {e}"))?;
    }
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .map_err(|_| format!("{program} did not finish in 20 s"))?
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{program} exited with {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Tables gone stale, each alerted once until it is fresh again (kept by `serve` in memory).
#[derive(Debug, Default)]
pub struct StaleWatch {
    alerted: Mutex<BTreeSet<(String, String, String)>>,
}

impl StaleWatch {
    /// The cells newly stale in `snapshot` (and forgets those fresh again).
    pub fn newly_stale(&self, snapshot: &connector_console::Snapshot, slo_minutes: u64) -> Vec<Alert> {
        let now = chrono::Utc::now().naive_utc();
        // Forgotten only once fresh again: a run marking a table `running` does not make it fresh.
        let fresh: BTreeSet<(String, String, String)> = snapshot
            .cells
            .iter()
            .filter(|c| matches!(c.status, connector_console::Status::Ok | connector_console::Status::Cdc))
            .map(|c| (c.database.clone(), c.table.clone(), c.target.clone()))
            .collect();
        let mut alerted = self.alerted.lock().unwrap_or_else(|p| p.into_inner());
        alerted.retain(|k| !fresh.contains(k));
        let mut out = Vec::new();
        for cell in snapshot.cells.iter().filter(|c| c.status == connector_console::Status::Stale) {
            if alerted.insert((cell.database.clone(), cell.table.clone(), cell.target.clone())) {
                out.push(Alert {
                    event: AlertEvent::Stale,
                    target: cell.target.clone(),
                    database: cell.database.clone(),
                    table: cell.table.clone(),
                    error: cell.error.clone(),
                    consecutive_failures: cell.consecutive_failures,
                    last_success_at: cell.last_success,
                    stale_minutes: cell.stale_minutes,
                    freshness_slo_minutes: Some(slo_minutes),
                    at: now,
                });
            }
        }
        out
    }
}
