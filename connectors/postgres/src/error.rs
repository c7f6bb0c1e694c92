//! Classification of PostgreSQL errors into config, transient (retry) and permanent.

use connector_framework::{ConnectorError, ErrorClass};
use tokio_postgres::error::SqlState;

/// Whether an error is worth retrying: the connection or the transaction was lost, not the
/// request wrong.
pub(crate) fn classify(e: &tokio_postgres::Error) -> ErrorClass {
    let Some(code) = e.code() else {
        // No SQLSTATE: a closed connection or an I/O error (a timeout, a reset) passes; a TLS
        // certificate refused, a missing password or an unsupported authentication does not.
        let io = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>());
        let tls = io.and_then(|io| io.get_ref()).is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
        return match (e.is_closed(), io, tls) {
            (true, _, _) => ErrorClass::Transient,
            (_, Some(_), false) => ErrorClass::Transient,
            (_, Some(_), true) => ErrorClass::Config,
            _ => ErrorClass::Permanent,
        };
    };
    let transient = [
        // Also what a hot standby says when it cancels a read that conflicts with replay.
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::TOO_MANY_CONNECTIONS,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::QUERY_CANCELED,
        SqlState::LOCK_NOT_AVAILABLE,
        // Resources the server runs short of for a while.
        SqlState::DISK_FULL,
        SqlState::OUT_OF_MEMORY,
        SqlState::IO_ERROR,
    ];
    if transient.contains(code) || code.code().starts_with("08") {
        return ErrorClass::Transient;
    }
    if [SqlState::INVALID_PASSWORD, SqlState::INVALID_AUTHORIZATION_SPECIFICATION, SqlState::INVALID_CATALOG_NAME]
        .contains(code)
    {
        return ErrorClass::Config;
    }
    ErrorClass::Permanent
}

/// Wraps a driver error with where it happened and, for common causes, what to do.
pub(crate) fn wrap(e: tokio_postgres::Error, context: impl std::fmt::Display) -> ConnectorError {
    let class = classify(&e);
    let code = e.code().cloned();
    let hint = match code {
        Some(c) if c == SqlState::INVALID_PASSWORD || c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => {
            "; check db_user and db_pass, and pg_hba.conf (the password is never logged)"
        }
        Some(c) if c == SqlState::INSUFFICIENT_PRIVILEGE => {
            "; grant the sync role USAGE on the schema and SELECT on the tables"
        }
        Some(c) if c == SqlState::UNDEFINED_TABLE => "; the table does not exist (dropped or misspelled?)",
        Some(c) if c == SqlState::INVALID_CATALOG_NAME => "; the database does not exist: check db_list / database",
        None if class == ErrorClass::Transient => "; is the server reachable at db_host:db_port?",
        _ => "",
    };
    // The driver's Display says "db error" and hides the server's message in the source.
    let detail = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut text = e.to_string();
            if let Some(source) = std::error::Error::source(&e) {
                text = format!("{text}: {source}");
            }
            text
        }
    };
    ConnectorError::new(class, format!("{context}: {detail}{hint}"))
}
