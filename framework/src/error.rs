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
    /// The sink's reference to a write whose outcome is unknown (see
    /// [`crate::state::TableState::in_doubt`]).
    in_doubt: Option<String>,
    /// Config errors: each mistake with the key it is about, so the caller can name the key
    /// the way the user wrote it (the flat `params.json` names keys differently).
    problems: Vec<crate::config::Problem>,
    /// A change stream cannot start where asked: the server no longer has that part of its log
    /// (purged), or it is another server. The tables behind the position need a new snapshot.
    position_lost: bool,
}

impl ConnectorError {
    /// An error with this message, any secret in it replaced (see [`crate::secrets`]).
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: crate::secrets::redact(&message.into()),
            source: None,
            in_doubt: None,
            problems: Vec::new(),
            position_lost: false,
        }
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Config, message)
    }
    /// A config error about one key (named as in the general form, e.g. `port`, or a path
    /// such as `table_options.orders.cursor_column`).
    pub fn config_at(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::config_problems("config", vec![crate::config::Problem::at(key, problem)])
    }
    /// A config error listing every mistake found in `what` (e.g. ``source `mysql` ``).
    pub fn config_problems(what: &str, problems: Vec<crate::config::Problem>) -> Self {
        let mut e = Self::new(ErrorClass::Config, crate::config::render_problems(what, &problems));
        e.problems = problems;
        e
    }
    /// The mistakes of a config error, each with its key (empty for other errors).
    pub fn problems(&self) -> &[crate::config::Problem] {
        &self.problems
    }
    /// A change-log position the server cannot stream from any more (see `is_position_lost`).
    pub fn position_lost(message: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorClass::Permanent, message);
        e.position_lost = true;
        e
    }
    pub fn is_position_lost(&self) -> bool {
        self.position_lost
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
    /// Marks the error as leaving a write in doubt: `handle` names it for the sink to resolve
    /// before the table is written again.
    pub fn with_in_doubt(mut self, handle: impl Into<String>) -> Self {
        self.in_doubt = Some(handle.into());
        self
    }
    pub fn in_doubt(&self) -> Option<&str> {
        self.in_doubt.as_deref()
    }
    /// The same error again (errors are not `Clone`: the source chain cannot be copied).
    pub fn duplicate(&self) -> Self {
        Self {
            class: self.class,
            message: self.message.clone(),
            source: None,
            in_doubt: self.in_doubt.clone(),
            problems: self.problems.clone(),
            position_lost: self.position_lost,
        }
    }
    /// Prefix the message with where it happened, e.g. `shop1.orders`.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = crate::secrets::redact(&format!("{context}: {}", self.message));
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
