//! Logs: human-readable on stderr, and appended to the pipeline's log file (mode 0600). Every
//! line passes through `connector_framework::secrets::redact` first.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

/// The variable that sets what the terminal shows (an `EnvFilter`, e.g. `debug`).
pub const LOG_ENV: &str = "CONNECTOR_LOG";

/// Keeps logging alive for the run.
#[derive(Debug)]
pub struct LogGuard;

/// A writer whose every write has its secrets replaced: a second line of defence behind the
/// errors, which redact themselves.
struct Redacting<W>(W);

impl<W: Write> Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        if connector_framework::secrets::leaks(&text) {
            self.0.write_all(connector_framework::secrets::redact(&text).as_bytes())?;
        } else {
            self.0.write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

struct RedactingStderr;

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = Redacting<std::io::Stderr>;
    fn make_writer(&'a self) -> Self::Writer {
        Redacting(std::io::stderr())
    }
}

/// The log file, appended to (each event is one write of one line).
struct RedactingFile(std::fs::File);

impl<'a> MakeWriter<'a> for RedactingFile {
    type Writer = Redacting<&'a std::fs::File>;
    fn make_writer(&'a self) -> Self::Writer {
        Redacting(&self.0)
    }
}

pub fn init(log_file: Option<&Path>, quiet: bool) -> Result<LogGuard> {
    let default = if quiet { "warn" } else { "info" };
    let terminal_filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new(default));
    // The statistics report is printed on stdout already; keep it out of the terminal log.
    let terminal = fmt::layer()
        .with_writer(RedactingStderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(terminal_filter.add_directive("report=off".parse().context("log filter")?));
    let file_layer = match log_file {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let file = connector_json_state::private_file(OpenOptions::new().create(true).append(true), path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            Some(fmt::layer().with_writer(RedactingFile(file)).with_ansi(false).with_filter(EnvFilter::new("info")))
        }
        None => None,
    };
    tracing_subscriber::registry().with(terminal).with(file_layer).try_init().ok();
    Ok(LogGuard)
}
