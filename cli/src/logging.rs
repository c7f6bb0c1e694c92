//! Logs: human-readable on stderr, and appended to the pipeline's log file.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

/// Keeps logging alive for the run.
#[derive(Debug)]
pub struct LogGuard;

pub fn init(log_file: Option<&Path>, quiet: bool) -> Result<LogGuard> {
    let default = if quiet { "warn" } else { "info" };
    let terminal_filter = EnvFilter::try_from_env("CONNECTOR_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // The statistics report is printed on stdout already; keep it out of the terminal log.
    let terminal = fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(terminal_filter.add_directive("report=off".parse().context("log filter")?));
    let file_layer = match log_file {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            Some(fmt::layer().with_writer(Mutex::new(file)).with_ansi(false).with_filter(EnvFilter::new("info")))
        }
        None => None,
    };
    tracing_subscriber::registry().with(terminal).with(file_layer).try_init().ok();
    Ok(LogGuard)
}
