//! One error type for every connector, classified so the runner knows what to retry.

use std::fmt;

/// What the caller can do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorClass {
    /// The configuration is wrong; fix it and run again. Never retried.
    Config,
    /// A passing fault (connection lost, deadlock, 5xx, rate limit); retrying may succeed.
    Transient,
    /// Retrying will not help (missing table, bad credentials, incompatible data).
    Permanent,
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorClass::Config => "config",
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
        })
    }
}

/// An error raised by a source, sink, state store or the runner.
///
/// The message must name what failed (database, table, column) and say what to do; it must
/// never contain a secret.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConnectorError {
    class: ErrorClass,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl ConnectorError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self { class, message: message.into(), source: None }
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Config, message)
    }
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Transient, message)
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Permanent, message)
    }
    /// Attach the underlying error (kept for `source()`, not repeated in the message).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }
    /// Prefix the message with where it happened, e.g. `shop1.orders`.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
    pub fn class(&self) -> ErrorClass {
        self.class
    }
    pub fn is_transient(&self) -> bool {
        self.class == ErrorClass::Transient
    }
    pub fn message(&self) -> &str {
        &self.message
    }
}

pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;
