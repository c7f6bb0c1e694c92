//! `connector-run`: the command-line tool that assembles a pipeline from config and runs it.
//!
//! This crate is glue: it parses arguments and `params.json`, builds the registered
//! connectors named there, and hands them to the framework's runner. It is the only crate that
//! depends on every connector (see `plugins.toml`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use connector_framework::{
    BuildContext, CursorStrategy, OutcomeStatus, Pipeline, RunOptions, Runner, Target, registry,
};

mod alerts;
#[cfg(test)]
mod deploy_manifests;
mod logging;
mod observe;
mod params;
mod serve;
mod state_cmd;
mod verify_cmd;
mod plugins {
    /// An enabled connector crate and the kinds it registers.
    #[derive(Debug, serde::Serialize)]
    pub struct Plugin {
        pub crate_name: &'static str,
        pub kinds: &'static [&'static str],
    }
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

/// Rows arrive as many small allocations on one thread and are freed on another; mimalloc
/// handles that pattern at a fraction of glibc malloc's cost (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit codes (also in docs/operations.md).
pub(crate) const EXIT_TABLE_FAILED: u8 = 1;
pub(crate) const EXIT_FATAL: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "connector-run", version, about = "Keep BigQuery in sync with fleets of MySQL databases")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The pipeline: the original tool's params.json, or the general form.
    #[arg(long, value_name = "FILE")]
    pipeline: Option<PathBuf>,
    /// Sync every table in full, whatever its state.
    #[arg(long)]
    full: bool,
    /// Print each table's plan and column mapping; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Only these databases (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "DB,...")]
    databases: Option<Vec<String>>,
    /// Only these tables (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "TABLE,...")]
    tables: Option<Vec<String>>,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    report_json: Option<PathBuf>,
    /// Only warnings and errors on the terminal.
    #[arg(long, short)]
    quiet: bool,
    /// Machine-readable output on stdout: one JSON event per line, then the report as JSON.
    #[arg(long)]
    json: bool,
    /// Run again every DURATION (e.g. 15m, 1h) until SIGTERM or Ctrl-C, which let the tables
    /// already started finish and commit.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    every: Option<std::time::Duration>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464) while running.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Write Prometheus metrics to this file after each run (node_exporter textfile collector).
    #[arg(long, value_name = "FILE")]
    metrics_file: Option<PathBuf>,
    /// When another run holds the lock, wait up to DURATION (e.g. 30m) for it to finish
    /// instead of exiting with code 2.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    wait_lock: Option<std::time::Duration>,
    /// Stream the source's binlog into the targets (docs/cdc.md): tables the stream does not
    /// carry yet are snapshotted, then every insert, update and delete is applied every
    /// cdc_flush_seconds, until SIGTERM or Ctrl-C (which apply what was read first). With
    /// --full, every table is snapshotted anew.
    #[arg(long, conflicts_with_all = ["dry_run", "every"])]
    cdc: bool,
    /// With --cdc: stop once every change committed before the start is applied.
    #[arg(long, requires = "cdc")]
    catch_up: bool,
    /// This worker's share of the tenants, I/N with I from 0 (docs/deploy.md): N workers with
    /// 0/N … N-1/N together sync every tenant once. Without it, the engines' task variables
    /// are read: CONNECTOR_SHARD_INDEX, JOB_COMPLETION_INDEX (Kubernetes Indexed Jobs) or
    /// CLOUD_RUN_TASK_INDEX, with CONNECTOR_SHARD_COUNT or CLOUD_RUN_TASK_COUNT.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    shard: Option<connector_framework::Shard>,
    /// Benchmarks only: read and encode everything, send nothing to the targets; the state is
    /// read but never written.
    #[arg(long, hide = true)]
    bench_discard_uploads: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the registered connectors.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show a connector's description, config keys and an example.
    Describe { kind: String },
    /// Check a pipeline config without touching the network; with --online, also connect:
    /// TLS, the user's privileges, every target answering.
    Validate {
        #[arg(long, value_name = "FILE")]
        pipeline: PathBuf,
        /// Connect to the source and the targets and check what only they can tell.
        #[arg(long)]
        online: bool,
    },
    /// Overview of every database and table: last sync, mode, status, rows, staleness, error.
    /// Exits 1 when any table is failed or any state file is corrupt.
    Status {
        #[command(flatten)]
        location: StateLocation,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Compare every tenant × table of every target with the source (docs/verify.md): exit 0
    /// when all are equal, 1 when any differ, 2 when something could not be verified.
    Verify(verify_cmd::VerifyArgs),
    /// The web console (docs/console.md): every tenant × table's state, the run history,
    /// actions (with a token), /metrics and /healthz; with --every or --cdc it runs the syncs too.
    Serve(serve::ServeArgs),
    /// Maintain the state files.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
}

/// Where the state files are: from a pipeline, or a folder.
#[derive(Debug, clap::Args)]
struct StateLocation {
    /// The pipeline whose status_dir to use.
    #[arg(long, value_name = "FILE")]
    pipeline: Option<PathBuf>,
    /// The status folder (default: the pipeline's, else sync_status).
    #[arg(long, value_name = "DIR")]
    status_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// Convert the older one-file-per-table layout into per-database files (the old files move
    /// to backup_single_table_files/); with --to, copy the pipeline's state into the other
    /// store (json files ↔ bigquery rows), leaving the original as it is.
    Migrate {
        #[command(flatten)]
        location: StateLocation,
        /// Show what would change; change nothing.
        #[arg(long)]
        preview: bool,
        /// Copy the state into this store kind: `bigquery` (the first target's project and
        /// dataset) or `json` (--to-status-dir, default sync_status).
        #[arg(long, value_name = "KIND", requires = "pipeline", value_parser = ["json", "bigquery"])]
        to: Option<String>,
        /// With --to json: the folder to write.
        #[arg(long, value_name = "DIR", requires = "to")]
        to_status_dir: Option<PathBuf>,
    },
    /// Make the next run sync these tables in full.
    Reset {
        #[command(flatten)]
        location: StateLocation,
        #[arg(long)]
        database: String,
        /// One table (default: every table of the database).
        #[arg(long)]
        table: Option<String>,
    },
}

fn state_dirs(location: &StateLocation) -> Result<Vec<(String, PathBuf)>> {
    let pipeline = location.pipeline.as_deref().map(load_pipeline).transpose()?;
    state_cmd::status_dirs(pipeline.as_ref(), location.status_dir.as_deref())
}

/// Runs a state command on every target's store (JSON files or BigQuery rows).
fn with_state<T>(
    location: &StateLocation,
    command: impl AsyncFnOnce(Vec<state_cmd::StateHandle>) -> Result<T>,
) -> Result<T> {
    let pipeline = location.pipeline.as_deref().map(load_pipeline).transpose()?;
    let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
    runtime.block_on(async {
        let handles = state_cmd::state_handles(pipeline.as_ref(), location.status_dir.as_deref()).await?;
        command(handles).await
    })
}

/// For `status --pipeline` with a tenant list of patterns: which tenants the server has now,
/// against the state (new, present, gone). Unreachable, it is a warning, not a failure.
async fn tenant_overview(location: &StateLocation) -> Option<connector_framework::TenantChanges> {
    let pipeline = load_pipeline(location.pipeline.as_deref()?).ok()?;
    if location.status_dir.is_some() {
        return None;
    }
    let runner = match build_runner(&pipeline, &new_run_id(), false, &[], &Arc::default()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warning: cannot compare the tenants with the server: {e}");
            return None;
        }
    };
    if runner.source.tenant_selection().is_static() {
        return None;
    }
    let found = runner.tenant_overview(&RunOptions::default()).await;
    runner.source.close().await;
    found.map_err(|e| eprintln!("warning: cannot compare the tenants with the server: {e}")).ok()
}

/// `state migrate --to KIND`: the pipeline's state copied into the other store.
fn migrate_to(location: &StateLocation, kind: &str, to_dir: Option<&Path>, preview: bool) -> Result<()> {
    let path = location.pipeline.as_deref().context("--to needs --pipeline")?;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let raw: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let other = state_cmd::with_state_kind(&raw, kind, to_dir)?;
    let document = format!("{} (with its state in {kind})", path.display());
    let target = params::pipeline_from_file_json(&other, &document).map_err(|e| anyhow::anyhow!("{e}"))?;
    let current = load_pipeline(path)?;
    if current.state_kind == kind && to_dir.is_none() {
        return Err(anyhow::anyhow!("the pipeline keeps its state in `{kind}` already; nothing to copy"));
    }
    let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
    runtime.block_on(async {
        let from = state_cmd::state_handles(Some(&current), location.status_dir.as_deref()).await?;
        let to = state_cmd::state_handles(Some(&target), None).await?;
        state_cmd::copy_state(&from, &to, preview).await
    })
}

/// Transparent huge pages off for this process. A 2 MiB page is resident whole for the few
/// kilobytes a fleet's small tables touch in it: even under the kernel's `madvise` setting a run
/// held 16 MB of them (the allocator's advice). Off, a fleet run's peak RSS fell by 5–22 MB, and
/// a big table's full sync took 6 % less CPU and 14 MB less (docs/performance.md).
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        // Only memory is at stake: the run goes on.
        eprintln!("connector-run: transparent huge pages stay on ({e})");
    }
}

fn main() -> ExitCode {
    // A panic's message may quote a value; it is printed with secrets replaced.
    std::panic::set_hook(Box::new(|info| {
        let text = connector_framework::secrets::redact(&info.to_string());
        eprintln!("connector-run panicked (a bug; please report it): {text}");
    }));
    no_huge_pages();
    plugins::force_link();
    registry::enable_only(plugins::PLUGINS.iter().map(|p| p.crate_name).collect());
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::List { json }) => list(json).map(|()| ExitCode::SUCCESS),
        Some(Command::Describe { kind }) => describe(&kind).map(|()| ExitCode::SUCCESS),
        Some(Command::Validate { pipeline, online: false }) => validate(&pipeline).map(|()| ExitCode::SUCCESS),
        Some(Command::Validate { pipeline, online: true }) => validate_online(&pipeline),
        Some(Command::Verify(args)) => verify_cmd::verify(&args),
        Some(Command::Serve(args)) => serve::serve(&args),
        Some(Command::Status { location, json }) => with_state(&location, async |handles| {
            let tenants = tenant_overview(&location).await;
            state_cmd::status(&handles, tenants.as_ref(), json).await
        })
        .map(|healthy| if healthy { ExitCode::SUCCESS } else { ExitCode::from(EXIT_TABLE_FAILED) }),
        Some(Command::State {
            command: StateCommand::Migrate { location, preview, to: Some(kind), to_status_dir },
        }) => migrate_to(&location, &kind, to_status_dir.as_deref(), preview).map(|()| ExitCode::SUCCESS),
        Some(Command::State { command: StateCommand::Migrate { location, preview, to: None, .. } }) => {
            state_dirs(&location).and_then(|dirs| state_cmd::migrate(&dirs, preview)).map(|()| ExitCode::SUCCESS)
        }
        Some(Command::State { command: StateCommand::Reset { location, database, table } }) => {
            with_state(&location, async |handles| state_cmd::reset(&handles, &database, table.as_deref()).await).map(
                |text| {
                    out(&text);
                    ExitCode::SUCCESS
                },
            )
        }
        None => match &cli.run.pipeline {
            Some(_) => run(cli.run),
            None => Err(anyhow::anyhow!(
                "give --pipeline FILE to sync, or a subcommand: list, describe, validate, status, state (see --help)"
            )),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", connector_framework::secrets::redact(&format!("{e:#}")));
            ExitCode::from(EXIT_FATAL)
        }
    }
}

fn list(json: bool) -> Result<()> {
    let all = registry::all();
    if json {
        let rows: Vec<_> = all
            .iter()
            .map(|d| {
                serde_json::json!({"kind": d.kind, "role": d.role(), "crate": d.crate_name, "description": d.description})
            })
            .collect();
        out(&format!("{}\n", serde_json::to_string_pretty(&rows)?));
        return Ok(());
    }
    let registered: Vec<&str> = all.iter().map(|d| d.kind).collect();
    for plugin in plugins::PLUGINS {
        for kind in plugin.kinds.iter().filter(|k| !registered.contains(k)) {
            eprintln!("warning: plugins.toml says {} registers `{kind}`, but it does not", plugin.crate_name);
        }
    }
    let kind_w = all.iter().map(|d| d.kind.len()).max().unwrap_or(4).max(4);
    let crate_w = all.iter().map(|d| d.crate_name.len()).max().unwrap_or(5).max(5);
    let mut text = format!("{:kind_w$}  {:6}  {:crate_w$}  DESCRIPTION\n", "KIND", "ROLE", "CRATE");
    for d in all {
        text.push_str(&format!(
            "{:kind_w$}  {:6}  {:crate_w$}  {}\n",
            d.kind,
            d.role().as_str(),
            d.crate_name,
            d.description
        ));
    }
    out(&text);
    Ok(())
}

fn describe(kind: &str) -> Result<()> {
    let mut text = String::new();
    for d in registry::find_any(kind)? {
        text.push_str(&format!("{} ({}, crate {})\n{}\n\n", d.kind, d.role().as_str(), d.crate_name, d.description));
        let flat = params::flat_keys_of(d);
        if !flat.is_empty() {
            text.push_str(&format!(
                "keys in params.json (the flat form, docs/configuration.md):\n{}\n",
                connector_framework::config::render_fields(&flat)
            ));
        }
        text.push_str(&format!(
            "keys in the general form ({{\"{}\": {{\"kind\": \"{}\", ...}}}}, docs/configuration.md):\n{}\n",
            match d.role() {
                registry::Role::Source => "source",
                registry::Role::Sink => "sinks",
                registry::Role::State => "state",
            },
            d.kind,
            connector_framework::config::render_fields(d.fields)
        ));
        let example: serde_json::Value = serde_json::from_str(d.example).context("example config")?;
        text.push_str(&format!("example (general form):\n{}\n\n", serde_json::to_string_pretty(&example)?));
        if !d.details.is_empty() {
            text.push_str(&format!("{}\n\n", d.details));
        }
        text.push_str(&type_table(d));
    }
    out(&text);
    Ok(())
}

/// A connector's type mapping: a source's types through each sink's, or a sink's alone.
fn type_table(d: &registry::ConnectorDescriptor) -> String {
    if d.types.is_empty() {
        return String::new();
    }
    let mut rows: Vec<[String; 4]> = Vec::new();
    match d.role() {
        registry::Role::Source => {
            let sinks: Vec<_> = registry::all()
                .into_iter()
                .filter(|s| s.role() == registry::Role::Sink && !s.types.is_empty())
                .collect();
            for r in d.types {
                let mut targets = Vec::new();
                for s in &sinks {
                    for logical in r.to.split(" / ") {
                        if let Some(t) = s.types.iter().find(|t| t.from == logical) {
                            targets.push(format!("{}: {}", s.kind, t.to));
                        }
                    }
                }
                rows.push([r.from.to_string(), r.to.to_string(), targets.join(", "), r.note.to_string()]);
            }
            render_types(&["source type", "logical type", "target type", "note"], &rows)
        }
        _ => {
            for r in d.types {
                rows.push([r.from.to_string(), r.to.to_string(), String::new(), r.note.to_string()]);
            }
            render_types(&["logical type", "target type", "", "note"], &rows)
        }
    }
}

fn render_types(header: &[&str; 4], rows: &[[String; 4]]) -> String {
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).chain([header[i].len()]).max().unwrap_or(0);
    let (w0, w1, w2) = (width(0), width(1), width(2));
    let mut out = String::from("type mapping:\n");
    let line =
        |a: &str, b: &str, c: &str, d: &str| format!("  {a:w0$}  {b:w1$}  {c:w2$}  {d}\n").replace("    \n", "\n");
    out.push_str(&line(header[0], header[1], header[2], header[3]));
    for r in rows {
        out.push_str(&line(&r[0], &r[1], &r[2], &r[3]));
    }
    out.push('\n');
    out
}

/// Writes command output to stdout, secrets replaced; a reader that went away (`| head`) is
/// not an error.
pub(crate) fn out(text: &str) {
    use std::io::Write;
    let text = connector_framework::secrets::redact(text);
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: cannot write to stdout: {e}");
    }
}

pub(crate) fn load_pipeline(path: &Path) -> Result<Pipeline> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    params::pipeline_from_file_json(&value, &path.display().to_string()).map_err(|e| anyhow::anyhow!("{e}"))
}

fn validate(path: &Path) -> Result<()> {
    let pipeline = load_pipeline(path)?;
    out(&format!("{} is valid:\n{}\n", path.display(), serde_json::to_string_pretty(&pipeline.describe())?));
    Ok(())
}

/// `validate --online`: the offline checks, then the source's preflight (TLS, privileges) and
/// every target's probe. Exit 0 when all is well, 1 with warnings, 2 on an error.
fn validate_online(path: &Path) -> Result<ExitCode> {
    let pipeline = load_pipeline(path)?;
    let _log_guard = logging::init(None, true)?;
    let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
    runtime.block_on(async {
        let ctx = BuildContext {
            run_id: "validate".into(),
            target_id: "default".into(),
            state_subdir: None,
            retry: connector_framework::RetryPolicy { max_retries: 0, ..Default::default() },
            discard_writes: false,
        };
        let mut text = format!("{} is valid offline; online:\n", path.display());
        let source = pipeline.source.build(&ctx).await.map_err(|e| anyhow::anyhow!("source: {e}"))?;
        let checks = source.preflight(false).await;
        source.close().await;
        let found = checks.map_err(|e| anyhow::anyhow!("source: {e}"))?;
        for note in &found.notes {
            text.push_str(&format!("  ok       {note}\n"));
        }
        for warning in &found.warnings {
            text.push_str(&format!("  warning  {warning}\n"));
        }
        let mut failed = false;
        for spec in &pipeline.targets {
            let ctx = BuildContext { target_id: spec.id.clone(), ..ctx.clone() };
            let probe = match spec.config.build(&ctx).await {
                Ok(sink) => sink.probe().await,
                Err(e) => Err(e),
            };
            match probe {
                Ok(()) => text.push_str(&format!("  ok       target `{}` answers\n", spec.id)),
                Err(e) => {
                    failed = true;
                    text.push_str(&format!("  error    target `{}`: {e}\n", spec.id));
                }
            }
        }
        out(&text);
        Ok(if failed {
            ExitCode::from(EXIT_FATAL)
        } else if found.warnings.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_TABLE_FAILED)
        })
    })
}

fn run(args: RunArgs) -> Result<ExitCode> {
    let path = args.pipeline.clone().context("--pipeline")?;
    let pipeline = load_pipeline(&path)?;
    let _log_guard = logging::init(pipeline.settings.log_file.as_deref().map(Path::new), args.quiet || args.json)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    runtime.block_on(run_loop(pipeline, args))
}

/// Runs the pipeline once, or every `--every` until asked to stop.
async fn run_loop(pipeline: Pipeline, args: RunArgs) -> Result<ExitCode> {
    let metrics = match (args.metrics_addr, &args.metrics_file) {
        (None, None) => observe::Metrics::unpublished(),
        (addr, _) => observe::Metrics::install(addr)?,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::new(tokio::sync::Notify::new());
    spawn_signal_handler(stop.clone(), stopped.clone());
    let mut listeners: Vec<Arc<dyn connector_framework::EventListener>> =
        vec![Arc::new(observe::Progress::new(args.quiet))];
    if args.json {
        listeners.push(Arc::new(observe::JsonEvents));
    }
    if args.cdc {
        listeners.push(Arc::new(observe::StreamMetrics));
    }
    loop {
        let started = tokio::time::Instant::now();
        let code = run_once(&pipeline, &args, &listeners, &metrics, &stop).await?;
        let Some(every) = args.every else { return Ok(code) };
        if stop.load(Ordering::SeqCst) {
            return Ok(code);
        }
        tracing::info!(next_in_secs = every.saturating_sub(started.elapsed()).as_secs(), "waiting for the next run");
        tokio::select! {
            () = tokio::time::sleep_until(started + every) => {}
            () = stopped.notified() => return Ok(code),
        }
    }
}

fn spawn_signal_handler(stop: Arc<AtomicBool>, stopped: Arc<tokio::sync::Notify>) {
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::warn!("stop requested: finishing the tables already started, starting no new ones");
        stop.store(true, Ordering::SeqCst);
        stopped.notify_waiters();
    });
}

/// A finished run's report: on stdout (as text, or a JSON line with `--json`), in the log
/// file, and in the `--report-json` file. The text goes out a table at a time and the JSON
/// file is written as it is serialized: a fleet's report is megabytes, and held whole (twice,
/// at the end of a run) it was the run's peak of memory.
fn publish_report<R: serde::Serialize>(
    args: &RunArgs,
    report: &R,
    render: impl FnOnce(&R, &mut dyn FnMut(&str)),
) -> Result<()> {
    if args.json {
        #[derive(serde::Serialize)]
        struct ReportEvent<'a, R> {
            event: &'static str,
            report: &'a R,
        }
        out(&format!("{}\n", serde_json::to_string(&ReportEvent { event: "report", report })?));
    }
    render(report, &mut |piece| {
        if !args.json {
            out(piece);
        }
        for line in piece.lines() {
            tracing::info!(target: "report", "{line}");
        }
    });
    if let Some(path) = &args.report_json {
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
            serde_json::to_writer_pretty(&mut file, report)?;
            file.flush()
        };
        write().with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn parse_shard(text: &str) -> std::result::Result<connector_framework::Shard, String> {
    connector_framework::Shard::parse(text)
}

/// `--shard`, else the share the environment names (see [`connector_framework::tenants::SHARD_ENV`]).
pub(crate) fn shard_of(args: &RunArgs) -> Result<Option<connector_framework::Shard>> {
    if args.shard.is_some() {
        // 0/1 is the whole fleet.
        return Ok(args.shard.filter(|s| s.count > 1));
    }
    let shard = connector_framework::Shard::from_env(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(s) = shard {
        tracing::info!(shard = %s, "this worker's share of the tenants comes from the environment");
    }
    Ok(shard)
}

/// A run's id: its start time and a random suffix (staging tables and jobs are named by it).
pub(crate) fn new_run_id() -> String {
    format!("{}_{}", chrono::Utc::now().format("%Y%m%dT%H%M%S"), &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// The pipeline's components built (connections made) and put together. With `discard`
/// (benchmarks) the targets receive nothing and the state is read, never written.
pub(crate) async fn build_runner(
    pipeline: &Pipeline,
    run_id: &str,
    discard: bool,
    listeners: &[Arc<dyn connector_framework::EventListener>],
    stop: &Arc<AtomicBool>,
) -> Result<Runner> {
    let multi_target = pipeline.targets.len() > 1;
    let base_ctx = BuildContext {
        run_id: run_id.to_string(),
        target_id: "default".into(),
        state_subdir: None,
        retry: pipeline.settings.retry_policy(),
        discard_writes: discard,
    };
    let source = pipeline.source.build(&base_ctx).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut targets = Vec::new();
    for spec in &pipeline.targets {
        let ctx = BuildContext {
            target_id: spec.id.clone(),
            state_subdir: multi_target.then(|| spec.id.clone()),
            ..base_ctx.clone()
        };
        let sink = spec.config.build(&ctx).await.map_err(|e| anyhow::anyhow!("target `{}`: {e}", spec.id))?;
        let mut state = pipeline.state.build(&ctx).await.map_err(|e| anyhow::anyhow!("state: {e}"))?;
        if discard {
            // The targets receive nothing, so their real state must not move (resume points
            // and stream positions included): the run reads it and writes to memory.
            state = Arc::new(connector_framework::ScratchState::over(state));
        }
        targets.push(Target { id: spec.id.clone(), sink, state });
    }
    Ok(Runner {
        source,
        targets,
        strategy: Arc::new(CursorStrategy),
        settings: pipeline.settings.clone(),
        tables: pipeline.tables.clone(),
        table_options: pipeline.table_options.clone(),
        listeners: listeners.to_vec(),
        stop: stop.clone(),
    })
}

/// One run: build the components (fresh connections and run id), run, report.
async fn run_once(
    pipeline: &Pipeline,
    args: &RunArgs,
    listeners: &[Arc<dyn connector_framework::EventListener>],
    metrics: &observe::Metrics,
    stop: &Arc<AtomicBool>,
) -> Result<ExitCode> {
    let run_id = new_run_id();
    tracing::info!(run_id, source = pipeline.source_kind, targets = pipeline.targets.len(), "run starting");
    let runner = build_runner(pipeline, &run_id, args.bench_discard_uploads, listeners, stop).await?;
    let source = runner.source.clone();
    let options = RunOptions {
        force_full: args.full,
        dry_run: args.dry_run,
        databases: args.databases.clone(),
        tables: args.tables.clone(),
        wait_lock: args.wait_lock,
        cdc: None,
        shard: shard_of(args)?,
    };
    if args.cdc {
        let cdc = connector_framework::CdcOptions { catch_up: args.catch_up };
        let report = runner.run_cdc(&options, &cdc).await;
        source.close().await;
        let report = report.map_err(|e| anyhow::anyhow!("{e}"))?;
        publish_report(args, &report, |r, emit| emit(&r.render()))?;
        if let Some(path) = &args.metrics_file {
            metrics.write_file(path)?;
        }
        return Ok(if report.failed() { ExitCode::from(EXIT_TABLE_FAILED) } else { ExitCode::SUCCESS });
    }
    let prior = alerts::prior_failures(&runner).await;
    let report = runner.run(&options).await;
    source.close().await;
    let report = report.map_err(|e| anyhow::anyhow!("{e}"))?;
    publish_report(args, &report, |r, emit| r.render_to(emit))?;
    if !options.dry_run && !args.bench_discard_uploads {
        metrics.record(&report);
        alerts::after_run(&pipeline.settings.alerts, &report, &prior).await;
    }
    if let Some(path) = &args.metrics_file {
        metrics.write_file(path)?;
    }
    let failed = report.outcomes.iter().any(|o| o.status == OutcomeStatus::Failed);
    tracing::info!(run_id, failed, rows = report.total_rows(), "run finished");
    Ok(if failed { ExitCode::from(EXIT_TABLE_FAILED) } else { ExitCode::SUCCESS })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn the_process_asks_for_no_transparent_huge_pages() {
        super::no_huge_pages();
        assert!(nix::sys::prctl::get_thp_disable().expect("PR_GET_THP_DISABLE"));
    }
}
