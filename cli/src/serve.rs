//! `connector-run serve`: the web console (crate connector-console) over the pipeline's state,
//! with its actions run here; with `--every` (or `--cdc`) the same process also runs the syncs,
//! otherwise it shows what cron-driven runs leave. Tables gone stale are alerted from here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use connector_console::{Activity, Console, ConsoleOptions, Operator, ResetRequest, StateSource, SyncRequest};
use connector_framework::{LockScope, Pipeline, RunOptions, VerifyOptions};

use crate::state_cmd::{StateHandle, state_handles};
use crate::{alerts, build_runner, logging, new_run_id, observe};

/// The variable that may hold the console's token (else `--token-file`).
pub const TOKEN_ENV: &str = "CONNECTOR_CONSOLE_TOKEN";

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[arg(long, value_name = "FILE")]
    pipeline: PathBuf,
    /// Where to listen; the default is loopback only.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Also run the syncs, every DURATION (e.g. 15m).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    every: Option<Duration>,
    /// Also stream the binlog into the targets (docs/cdc.md).
    #[arg(long, conflicts_with = "every")]
    cdc: bool,
    /// A file holding the token that actions need (or set CONNECTOR_CONSOLE_TOKEN); without
    /// one the console is read-only.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Only warnings and errors on the terminal.
    #[arg(long, short)]
    quiet: bool,
}

/// The console's token: from the file, else the environment; registered as a secret.
fn token(args: &ServeArgs) -> Result<Option<String>> {
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("--token-file: cannot read {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var(TOKEN_ENV).ok().map(|t| t.trim().to_string()),
    };
    match token {
        Some(t) if t.len() < 16 => Err(anyhow::anyhow!(
            "the console's token is too short ({} characters); use at least 16, e.g. `openssl rand -hex 24`",
            t.len()
        )),
        Some(t) => {
            connector_framework::secrets::register(&t);
            Ok(Some(t))
        }
        None => Ok(None),
    }
}

pub fn serve(args: &ServeArgs) -> Result<ExitCode> {
    let pipeline = crate::load_pipeline(&args.pipeline)?;
    let _log_guard = logging::init(pipeline.settings.log_file.as_deref().map(Path::new), args.quiet)?;
    let token = token(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    runtime.block_on(async move {
        let metrics = observe::Metrics::install(None)?;
        let handles = state_handles(Some(&pipeline), None).await?;
        let refresh = handles.iter().map(|h| h.store.poll_interval()).max().unwrap_or(Duration::from_secs(3));
        let sources: Vec<StateSource> =
            handles.iter().map(|h| StateSource { target: h.target.clone(), store: h.store.clone() }).collect();
        let slo = pipeline
            .settings
            .freshness_slo_minutes
            .unwrap_or_else(|| args.every.map_or(120, |e| (2 * e.as_secs()).div_ceil(60).max(1)));
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::new(tokio::sync::Notify::new());
        crate::spawn_signal_handler(stop.clone(), stopped.clone());
        let alert_configs = pipeline.settings.alerts.clone();
        let operator = Arc::new(CliOperator { pipeline: Arc::new(pipeline), metrics, handles, stop: stop.clone() });
        let options = ConsoleOptions {
            addr: args.addr,
            token,
            freshness_slo_minutes: slo as i64,
            // As often as the slowest store allows (BigQuery rows: a minute; files: 3 s).
            refresh,
            title: "connector-run".into(),
        };
        let console = Console::new(options, sources, operator.clone());
        if let Some(every) = args.every {
            tokio::spawn(scheduled(console.clone(), operator.clone(), every, stop.clone()));
        }
        if args.cdc {
            tokio::spawn(stream(console.clone(), operator.clone()));
        }
        tokio::spawn(watch_staleness(console.clone(), alert_configs, slo));
        let shutdown = async move { stopped.notified().await };
        console.serve(shutdown).await.context("the console's server")?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The syncs `--every` runs, each marking the whole fleet running while it lasts.
async fn scheduled(console: Arc<Console>, operator: Arc<CliOperator>, every: Duration, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let started = tokio::time::Instant::now();
        let guard = console.running(Activity::default());
        console.refresh().await;
        if let Err(e) = operator.sync(SyncRequest::default()).await {
            tracing::error!(error = %e, "the scheduled sync failed");
        }
        drop(guard);
        console.refresh().await;
        tokio::time::sleep_until(started + every).await;
    }
}

/// `--cdc`: the change stream, until the process stops.
async fn stream(console: Arc<Console>, operator: Arc<CliOperator>) {
    let (pipeline, stop) = (operator.pipeline.clone(), operator.stop.clone());
    let outcome = off_thread(move || async move {
        let runner = build_runner(&pipeline, &new_run_id(), false, &[], &stop).await.map_err(|e| e.to_string())?;
        let report = runner.run_cdc(&RunOptions::default(), &connector_framework::CdcOptions { catch_up: false }).await;
        runner.source.close().await;
        report.map(|r| r.render()).map_err(|e| e.to_string())
    })
    .await;
    match outcome {
        Ok(text) => tracing::info!("the change stream stopped:\n{text}"),
        Err(e) => tracing::error!(error = %e, "the change stream failed"),
    }
    console.refresh().await;
}

/// Runs a pipeline future on a thread and runtime of its own. The runner's futures are not
/// `Send` (they borrow across awaits in ways the compiler cannot prove thread-safe), while the
/// console's actions run on its server's tasks.
async fn off_thread<T, F>(work: impl FnOnce() -> F + Send + 'static) -> std::result::Result<T, String>
where
    T: Send + 'static,
    F: std::future::Future<Output = std::result::Result<T, String>>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("console-run".into())
        .spawn(move || {
            let outcome = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start a runtime: {e}"))
                .and_then(|rt| rt.block_on(work()));
            let _ = tx.send(outcome);
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    rx.await.map_err(|_| "the run's thread ended without an answer".to_string())?
}

/// Alerts for tables that breach the freshness SLO, once each until they are fresh again.
async fn watch_staleness(console: Arc<Console>, configs: Vec<connector_framework::alerts::AlertConfig>, slo: u64) {
    if configs.is_empty() {
        return;
    }
    let watch = alerts::StaleWatch::default();
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let fresh = watch.newly_stale(&console.snapshot(), slo);
        alerts::send_all(&configs, &fresh).await;
    }
}

/// Runs the console's actions with this pipeline.
struct CliOperator {
    pipeline: Arc<Pipeline>,
    metrics: observe::Metrics,
    handles: Vec<StateHandle>,
    stop: Arc<AtomicBool>,
}

#[async_trait]
impl Operator for CliOperator {
    async fn check_lock(&self) -> std::result::Result<(), String> {
        for h in &self.handles {
            let lock = h.store.lock(LockScope::Whole, None).await.map_err(|e| e.to_string())?;
            lock.release().await;
        }
        Ok(())
    }

    async fn sync(&self, request: SyncRequest) -> std::result::Result<String, String> {
        let (pipeline, stop, metrics) = (self.pipeline.clone(), self.stop.clone(), self.metrics.clone());
        off_thread(move || async move {
            let runner = build_runner(&pipeline, &new_run_id(), false, &[], &stop).await.map_err(|e| e.to_string())?;
            let prior = alerts::prior_failures(&runner).await;
            let options = RunOptions {
                force_full: request.full,
                databases: request.databases,
                tables: request.tables,
                ..Default::default()
            };
            let report = runner.run(&options).await;
            runner.source.close().await;
            let report = report.map_err(|e| e.to_string())?;
            metrics.record(&report);
            alerts::after_run(&pipeline.settings.alerts, &report, &prior).await;
            let text = report.render();
            for line in text.lines() {
                tracing::info!(target: "report", "{line}");
            }
            Ok(text)
        })
        .await
    }

    async fn reset(&self, request: ResetRequest) -> std::result::Result<String, String> {
        crate::state_cmd::reset(&self.handles, &request.database, request.table.as_deref())
            .await
            .map_err(|e| format!("{e:#}"))
    }

    async fn verify(&self, request: SyncRequest) -> std::result::Result<String, String> {
        let (pipeline, stop, metrics) = (self.pipeline.clone(), self.stop.clone(), self.metrics.clone());
        off_thread(move || async move {
            let runner = build_runner(&pipeline, &new_run_id(), false, &[], &stop).await.map_err(|e| e.to_string())?;
            let options = VerifyOptions { databases: request.databases, tables: request.tables, ..Default::default() };
            let report = runner.verify(&options).await;
            runner.source.close().await;
            let report = report.map_err(|e| e.to_string())?;
            metrics.record_verify(&report);
            Ok(report.render())
        })
        .await
    }

    fn config(&self) -> serde_json::Value {
        let mut config = self.pipeline.describe();
        redact_paths(&mut config);
        config
    }

    fn metrics(&self) -> String {
        self.metrics.render()
    }
}

/// Secrets are `***` already (`Secret`); key files and password files are hidden too.
fn redact_paths(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                let k = key.to_ascii_lowercase();
                if (k.contains("password") || k.contains("credentials") || k.contains("key") || k.contains("token"))
                    && v.is_string()
                    && !v.as_str().is_some_and(str::is_empty)
                {
                    *v = serde_json::json!("[redacted]");
                } else {
                    redact_paths(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_paths),
        _ => {}
    }
}
