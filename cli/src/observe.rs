//! What a run shows while it works: live progress on a terminal (indicatif), periodic log lines
//! otherwise, JSON event lines with `--json`, and Prometheus metrics.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use connector_framework::{Event, EventListener, OutcomeStatus, RunReport};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Live per-table progress: a spinner per table on a terminal, a log line every 10 s otherwise.
#[derive(Debug)]
pub struct Progress {
    bars: Option<MultiProgress>,
    tables: Mutex<HashMap<String, (Option<ProgressBar>, Instant)>>,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        let terminal = std::io::stderr().is_terminal() && !quiet;
        Self { bars: terminal.then(MultiProgress::new), tables: Mutex::new(HashMap::new()) }
    }
}

impl EventListener for Progress {
    fn on_event(&self, event: &Event) {
        let mut tables = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::ReadProgressed { table, rows, bytes, elapsed } => {
                let key = table.to_string();
                let rate = *rows as f64 / elapsed.as_secs_f64().max(0.001);
                let message = format!(
                    "{key}: {rows} rows, {:.1} MB, {rate:.0} rows/s, {:.0} s",
                    *bytes as f64 / 1e6,
                    elapsed.as_secs_f64()
                );
                let entry = tables.entry(key.clone()).or_insert_with(|| {
                    let bar = self.bars.as_ref().map(|m| {
                        let bar = m.add(ProgressBar::new_spinner());
                        bar.set_style(
                            ProgressStyle::with_template("{spinner} {msg}")
                                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                        );
                        bar.enable_steady_tick(Duration::from_millis(200));
                        bar
                    });
                    (bar, Instant::now() - Duration::from_secs(60))
                });
                match &entry.0 {
                    Some(bar) => bar.set_message(message),
                    None if entry.1.elapsed() >= Duration::from_secs(10) => {
                        entry.1 = Instant::now();
                        tracing::info!("progress {message}");
                    }
                    None => {}
                }
            }
            Event::RowsRead { table, .. } => {
                if let Some((Some(bar), _)) = tables.remove(&table.to_string()) {
                    bar.finish_and_clear();
                }
            }
            _ => {}
        }
    }
}

/// Change-stream metrics, as the stream works (a `--cdc` run has no end to record them at).
#[derive(Debug)]
pub struct StreamMetrics;

impl EventListener for StreamMetrics {
    fn on_event(&self, event: &Event) {
        match event {
            Event::ChangesApplied { table, target, upserts, deletes, elapsed, .. } => {
                for (op, n) in [("upsert", upserts), ("delete", deletes)] {
                    let labels = [("table", table.clone()), ("target", target.clone()), ("op", op.to_string())];
                    metrics::counter!("connector_cdc_rows_applied_total", &labels).increment(*n);
                }
                let labels = [("table", table.clone()), ("target", target.clone())];
                metrics::histogram!("connector_cdc_apply_seconds", &labels).record(elapsed.as_secs_f64());
            }
            Event::StreamCheckpointed { target, events, lag_seconds, .. } => {
                let labels = [("target", target.clone())];
                metrics::counter!("connector_cdc_events_total", &labels).increment(*events);
                metrics::gauge!("connector_cdc_lag_seconds", &labels).set(*lag_seconds);
                metrics::gauge!("connector_cdc_last_checkpoint_timestamp_seconds", &labels)
                    .set(chrono::Utc::now().timestamp() as f64);
            }
            Event::StreamTableStopped { table, target, .. } => {
                let labels =
                    [("database", table.database.clone()), ("table", table.table.clone()), ("target", target.clone())];
                metrics::counter!("connector_cdc_tables_stopped_total", &labels).increment(1);
            }
            _ => {}
        }
    }
}

/// Every event as one JSON line on stdout (`--json`).
#[derive(Debug)]
pub struct JsonEvents;

impl EventListener for JsonEvents {
    fn on_event(&self, event: &Event) {
        if let Ok(line) = serde_json::to_string(event) {
            crate::out(&format!("{line}\n"));
        }
    }
}

/// Prometheus metrics, served on `--metrics-addr` and written to `--metrics-file`.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// `None` when the metrics go nowhere: no recorder is installed, so a run builds no series
    /// (a fleet's run has one per tenant × table and metric, 36 MB for 1,000 × 20).
    handle: Option<PrometheusHandle>,
}

impl Metrics {
    /// Installs the recorder; with an address, serves `/metrics` there (inside the runtime).
    pub fn install(addr: Option<SocketAddr>) -> Result<Self> {
        let Some(addr) = addr else {
            // No listener at all: the builder's default one (0.0.0.0:9000) would be bound by
            // `build`, and a second process on the machine (a sharded worker) would fail on it.
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).context("metrics recorder")?;
            return Ok(Self { handle: Some(handle) });
        };
        let (recorder, exporter) = PrometheusBuilder::new().with_http_listener(addr).build().context("metrics")?;
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).context("metrics recorder")?;
        tokio::spawn(async move {
            if let Err(e) = exporter.await {
                tracing::error!(error = ?e, "metrics server stopped");
            }
        });
        Ok(Self { handle: Some(handle) })
    }

    /// Metrics that nothing publishes: recording them costs nothing.
    pub fn unpublished() -> Self {
        Self { handle: None }
    }

    /// Records a finished run.
    pub fn record(&self, report: &RunReport) {
        if self.handle.is_none() {
            return;
        }
        let now = chrono::Utc::now().timestamp() as f64;
        for o in &report.outcomes {
            let labels = [("database", o.database.clone()), ("table", o.table.clone()), ("target", o.target.clone())];
            match o.status {
                OutcomeStatus::Success => {
                    metrics::counter!("connector_rows_synced_total", &labels).increment(o.rows);
                    metrics::gauge!("connector_last_success_timestamp_seconds", &labels).set(now);
                    metrics::gauge!("connector_table_duration_seconds", &labels).set(o.seconds);
                    metrics::gauge!("connector_last_rows", &labels).set(o.rows as f64);
                }
                OutcomeStatus::Failed => metrics::counter!("connector_table_failures_total", &labels).increment(1),
                OutcomeStatus::Planned => {}
            }
            metrics::counter!("connector_retries_total", &labels).increment(u64::from(o.retries));
            for (what, n) in &o.nulled_values {
                let mut labels = labels.to_vec();
                labels.push(("what", what.clone()));
                metrics::counter!("connector_values_nulled_total", &labels).increment(*n);
            }
        }
        let result = if report.failed() > 0 { "failed" } else { "success" };
        metrics::counter!("connector_runs_total", "result" => result).increment(1);
        metrics::gauge!("connector_run_duration_seconds").set(report.elapsed.as_secs_f64());
        metrics::gauge!("connector_last_run_timestamp_seconds").set(now);
    }

    /// Records a finished `verify`: per tenant × table × target the differences by kind (0
    /// when equal), whether it could be verified, and when.
    pub fn record_verify(&self, report: &connector_framework::VerifyReport) {
        if self.handle.is_none() {
            return;
        }
        let now = chrono::Utc::now().timestamp() as f64;
        for t in &report.tables {
            let labels = [("database", t.database.clone()), ("table", t.table.clone()), ("target", t.target.clone())];
            let d = &t.differences;
            for (kind, n) in [
                ("missing", d.missing.len()),
                ("extra", d.extra.len()),
                ("different", d.different.len()),
                ("duplicated", d.duplicated.len()),
            ] {
                let mut labels = labels.to_vec();
                labels.push(("kind", kind.to_string()));
                metrics::gauge!("connector_verify_differences", &labels).set(n as f64);
            }
            let verified = t.status != connector_framework::verify::VerdictStatus::Failed;
            metrics::gauge!("connector_verify_verified", &labels).set(if verified { 1.0 } else { 0.0 });
        }
        metrics::gauge!("connector_verify_last_timestamp_seconds").set(now);
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        self.handle.as_ref().map(PrometheusHandle::render).unwrap_or_default()
    }

    /// Writes the metrics in Prometheus text format, atomically (node_exporter's textfile
    /// collector reads `*.prom` files).
    pub fn write_file(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("prom.tmp");
        std::fs::write(&tmp, self.render()).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
    }
}
