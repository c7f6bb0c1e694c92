//! Classification of MySQL errors into transient (retry) and permanent.

use connector_framework::{ConnectorError, ErrorClass};

/// Server error codes worth retrying: the connection or the transaction was lost, not the
/// request wrong.
const TRANSIENT_CODES: &[u16] = &[
    1040, // too many connections
    1053, // server shutdown in progress
    1205, // lock wait timeout
    1213, // deadlock
    1317, // query interrupted (KILL QUERY)
    1927, // connection killed (MariaDB)
    2006, // server has gone away
    2013, // lost connection during query
    3024, // max execution time exceeded
];

pub(crate) fn classify(e: &mysql_async::Error) -> ErrorClass {
    use mysql_async::{DriverError, Error};
    match e {
        Error::Io(_) => ErrorClass::Transient,
        Error::Server(s) if TRANSIENT_CODES.contains(&s.code) => ErrorClass::Transient,
        Error::Server(_) => ErrorClass::Permanent,
        Error::Driver(
            DriverError::ConnectionClosed | DriverError::PoolDisconnected | DriverError::UnexpectedPacket { .. },
        ) => ErrorClass::Transient,
        Error::Url(_) => ErrorClass::Config,
        _ => ErrorClass::Permanent,
    }
}

/// Wraps a driver error with where it happened and, for common permanent causes, what to do.
pub(crate) fn wrap(e: mysql_async::Error, context: impl std::fmt::Display) -> ConnectorError {
    let class = classify(&e);
    let hint = match &e {
        mysql_async::Error::Server(s) if s.code == 1045 || s.code == 1044 => {
            "; check db_user and db_pass (the password is never logged)"
        }
        mysql_async::Error::Server(s) if s.code == 1142 => "; grant SELECT on the database to the sync user",
        mysql_async::Error::Server(s) if s.code == 1146 => "; the table does not exist (dropped or misspelled?)",
        mysql_async::Error::Server(s) if s.code == 1049 => "; the database does not exist: check db_list",
        mysql_async::Error::Io(_) => "; is the server reachable at db_host:db_port?",
        _ => "",
    };
    ConnectorError::new(class, format!("{context}: {e}{hint}"))
}
