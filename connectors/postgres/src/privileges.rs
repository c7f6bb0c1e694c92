//! Checks before a run: how the session is secured (TLS, from `pg_stat_ssl`), and what the
//! sync role may do: this tool needs CONNECT, USAGE and SELECT only, so a superuser, or write
//! privileges on a synced table, are reported (and refused with `require_readonly`).

use connector_framework::{ConnectorError, Preflight, Result};

use crate::config::{PostgresSourceConfig, SslMode};
use crate::error::wrap;
use crate::pool::Conn;

/// Tables of `schemas` in the connected database that the role may
/// change, as `schema.table (INSERT, DELETE)`, at most 5, and how many there are.
const WRITABLE_SQL: &str = "
SELECT n.nspname || '.' || c.relname || ' (' || concat_ws(', ',
         CASE WHEN has_table_privilege(c.oid, 'INSERT') THEN 'INSERT' END,
         CASE WHEN has_table_privilege(c.oid, 'UPDATE') THEN 'UPDATE' END,
         CASE WHEN has_table_privilege(c.oid, 'DELETE') THEN 'DELETE' END,
         CASE WHEN has_table_privilege(c.oid, 'TRUNCATE') THEN 'TRUNCATE' END) || ')',
       count(*) OVER ()
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
  AND n.nspname = ANY($1)
  AND (has_table_privilege(c.oid, 'INSERT') OR has_table_privilege(c.oid, 'UPDATE')
       OR has_table_privilege(c.oid, 'DELETE') OR has_table_privilege(c.oid, 'TRUNCATE'))
ORDER BY 1 LIMIT 5";

/// `conn` is to a database with tenants' tables: the schema layout's `database`, or one
/// tenant database (the first listed by name) in the database layout. `schemas`: the synced
/// schemas there.
pub(crate) async fn preflight(
    conn: &Conn,
    config: &PostgresSourceConfig,
    endpoint: &str,
    schemas: &[String],
) -> Result<Preflight> {
    let mut found = Preflight::default();
    let row = conn
        .query_one(
            "SELECT r.rolsuper, s.ssl, s.version, s.cipher FROM pg_roles r \
             LEFT JOIN pg_stat_ssl s ON s.pid = pg_backend_pid() WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| wrap(e, format!("{endpoint}: reading the role and the session's TLS status")))?;
    let (superuser, ssl): (bool, Option<bool>) = (row.get(0), row.get(1));
    let (version, cipher): (Option<String>, Option<String>) = (row.get(2), row.get(3));
    match (ssl, version, cipher) {
        (Some(true), Some(version), Some(cipher)) => found.notes.push(format!(
            "{endpoint}: connected over TLS ({version}, {cipher}; ssl_mode {})",
            config.ssl_mode.as_str()
        )),
        _ if config.ssl_mode == SslMode::Disable => {
            found.notes.push(format!("{endpoint}: connected unencrypted (ssl_mode disable)"))
        }
        _ => found.warnings.push(format!(
            "{endpoint}: the connection is not encrypted (the server offers no TLS); set up ssl on the server, and \
             ssl_mode require or verify-full to refuse an unencrypted connection"
        )),
    }
    let mut excess = Vec::new();
    if superuser {
        excess.push("SUPERUSER".to_string());
    }
    let writable = conn
        .query(WRITABLE_SQL, &[&schemas])
        .await
        .map_err(|e| wrap(e, format!("{endpoint}: reading the role's table privileges")))?;
    if let Some(first) = writable.first() {
        let total: i64 = first.get(1);
        let shown: Vec<String> = writable.iter().map(|r| r.get(0)).collect();
        let more = if total > shown.len() as i64 {
            format!(" and {} more", total - shown.len() as i64)
        } else {
            String::new()
        };
        excess.push(format!(
            "write privileges on {total} tables of database `{}`: {}{more}",
            conn.database(),
            shown.join(", ")
        ));
    }
    if !excess.is_empty() {
        let what = format!(
            "the PostgreSQL role `{}` holds more than this tool needs (CONNECT, USAGE and SELECT only): {}",
            config.user,
            excess.join("; ")
        );
        if config.require_readonly {
            return Err(ConnectorError::config(format!(
                "{what}. require_readonly is set, so nothing was read or written: give the sync role SELECT only \
                 (docs/operations.md, \"Least privilege\")"
            )));
        }
        found.warnings.push(format!(
            "{what}. Every read runs in a READ ONLY transaction regardless; give the role SELECT only, and set \
             require_readonly: true to refuse such a role"
        ));
    }
    Ok(found)
}
