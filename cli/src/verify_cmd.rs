//! `connector-run verify`: the command line of `connector_framework::verify`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use connector_framework::VerifyOptions;

use crate::{EXIT_FATAL, EXIT_TABLE_FAILED, build_runner, load_pipeline, logging, new_run_id, out};

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The pipeline (params.json or the general form).
    #[arg(long, value_name = "FILE")]
    pipeline: PathBuf,
    /// Only these databases (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "DB,...")]
    databases: Option<Vec<String>>,
    /// Only these tables (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "TABLE,...")]
    tables: Option<Vec<String>>,
    /// Compare keys only: rows missing, extra (deleted in the source) and duplicated; cheap
    /// enough to run daily.
    #[arg(long)]
    keys_only: bool,
    /// Write the differing keys again from the source (one transaction per tenant and
    /// table; watermarks stay), then verify them again.
    #[arg(long)]
    repair: bool,
    /// With --repair: repair even when it deletes more than repair_max_delete_pct of a
    /// tenant's rows.
    #[arg(long, requires = "repair")]
    force: bool,
    /// The report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Also write the report as JSON to this file (every differing key).
    #[arg(long, value_name = "FILE")]
    report_json: Option<PathBuf>,
    /// Write the result as Prometheus gauges to this file (node_exporter textfile collector).
    #[arg(long, value_name = "FILE")]
    metrics_file: Option<PathBuf>,
    /// Only warnings and errors on the terminal.
    #[arg(long, short)]
    quiet: bool,
}

pub fn verify(args: &VerifyArgs) -> Result<ExitCode> {
    let pipeline = load_pipeline(&args.pipeline)?;
    let _log_guard =
        logging::init(pipeline.settings.log_file.as_deref().map(std::path::Path::new), args.quiet || args.json)?;
    let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
    runtime.block_on(async {
        let run_id = new_run_id();
        let runner = build_runner(&pipeline, &run_id, false, &[], &Arc::default()).await?;
        let options = VerifyOptions {
            databases: args.databases.clone(),
            tables: args.tables.clone(),
            keys_only: args.keys_only,
            repair: args.repair,
            force: args.force,
            repair_extra_only: false,
            repair_only: None,
        };
        let report = runner.verify(&options).await;
        runner.source.close().await;
        let report = report.map_err(|e| anyhow::anyhow!("{e}"))?;
        let text = report.render();
        if args.json {
            out(&format!("{}\n", serde_json::to_string(&report)?));
        } else {
            out(&text);
        }
        for line in text.lines() {
            tracing::info!(target: "report", "{line}");
        }
        if let Some(path) = &args.report_json {
            std::fs::write(path, serde_json::to_vec_pretty(&report)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        if let Some(path) = &args.metrics_file {
            let metrics = crate::observe::Metrics::install(None)?;
            metrics.record_verify(&report);
            metrics.write_file(path)?;
        }
        Ok(if report.failed() {
            ExitCode::from(EXIT_FATAL)
        } else if report.differs() {
            ExitCode::from(EXIT_TABLE_FAILED)
        } else {
            ExitCode::SUCCESS
        })
    })
}
