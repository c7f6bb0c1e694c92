//! Checks before a run: how the session is secured (TLS), and what the sync user may do, from
//! `SHOW GRANTS`: this tool needs SELECT only (and, for a change stream, the grants that read the
//! binary log), so anything more is reported.

use connector_framework::{ConnectorError, Preflight, Result};
use mysql_async::prelude::Queryable;

use crate::config::{MySqlSourceConfig, SslMode};
use crate::error::wrap;

/// Privileges that only read.
const READ_ONLY: &[&str] = &["SELECT", "SHOW VIEW", "USAGE", "SHOW DATABASES"];

/// The grants a change stream needs besides SELECT; expected only in that mode.
const CHANGE_STREAM: &[&str] = &[
    "REPLICATION SLAVE",
    "REPLICATION REPLICA",
    "BINLOG MONITOR",
    "REPLICATION CLIENT",
    "SLAVE MONITOR",
    "REPLICA MONITOR",
];

/// One `GRANT … ON scope` line, reduced to what matters here.
#[derive(Debug, PartialEq)]
struct Grant {
    privileges: Vec<String>,
    /// `None`: every database (`*.*`); else the database name or pattern (`shop\_%`).
    database: Option<String>,
    /// The scope as the server wrote it, for messages.
    scope: String,
}

/// The privileges beyond reading that the `SHOW GRANTS` lines give on any of `databases` (or
/// on every database), as `INSERT, UPDATE on `shop1`.*` items; empty for a read-only user.
pub(crate) fn excess(grants: &[String], databases: &[String], change_stream: bool) -> Vec<String> {
    let mut out = Vec::new();
    for grant in grants.iter().filter_map(|g| parse(g)) {
        let applies = match &grant.database {
            None => true,
            Some(pattern) => databases.iter().any(|d| like(pattern, d)),
        };
        if !applies {
            continue;
        }
        let extra: Vec<&str> = grant
            .privileges
            .iter()
            .map(String::as_str)
            .filter(|p| {
                let expected = READ_ONLY.contains(p) || (change_stream && CHANGE_STREAM.contains(p));
                !expected
            })
            .collect();
        if !extra.is_empty() {
            out.push(format!("{} on {}", extra.join(", "), grant.scope));
        }
    }
    out
}

/// `GRANT <privileges> ON <scope> TO … [WITH GRANT OPTION]`; `None` for role grants and
/// anything else.
fn parse(line: &str) -> Option<Grant> {
    let rest = line.trim().strip_prefix("GRANT ")?;
    let on = top_level_find(rest, " ON ")?;
    let (privileges, after) = (&rest[..on], &rest[on + 4..]);
    let to = top_level_find(after, " TO ")?;
    let scope = after[..to].trim().to_string();
    let mut list: Vec<String> = split_top_level(privileges)
        .into_iter()
        // Column privileges: `SELECT (a, b)` is SELECT on some columns.
        .map(|p| p.split('(').next().unwrap_or("").trim().to_ascii_uppercase())
        .filter(|p| !p.is_empty())
        .collect();
    if after[to..].to_ascii_uppercase().contains("WITH GRANT OPTION") {
        list.push("GRANT OPTION".into());
    }
    let database = if scope == "*.*" || scope.starts_with("''") || scope.starts_with('\'') {
        None
    } else {
        Some(unquote(scope.split_once("`.").map_or(scope.as_str(), |(db, _)| db)))
    };
    Some(Grant { privileges: list, database, scope })
}

/// The first `needle` outside backticks, quotes and parentheses.
fn top_level_find(text: &str, needle: &str) -> Option<usize> {
    let (mut depth, mut quote) = (0i32, None::<char>);
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '`' | '\'') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, _) if depth == 0 && text[i..].starts_with(needle) => return Some(i),
            _ => {}
        }
    }
    None
}

fn split_top_level(text: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

fn unquote(name: &str) -> String {
    name.trim().trim_start_matches('`').trim_end_matches('`').replace("``", "`")
}

/// SQL `LIKE` as database grants use it: `%` any run, `_` one character, `\` escapes.
fn like(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('%', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some(('_', rest)) => !n.is_empty() && go(rest, &n[1..]),
            Some(('\\', rest)) if !rest.is_empty() => n.first() == Some(&rest[0]) && go(&rest[1..], &n[1..]),
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// How the connection is secured and what the user may do beyond reading (see
/// `Source::preflight`); refuses under `require_readonly`.
pub(crate) async fn preflight(
    conn: &mut mysql_async::Conn,
    config: &MySqlSourceConfig,
    endpoint: &str,
    change_stream: bool,
) -> Result<Preflight> {
    let mut found = Preflight::default();
    let status: Vec<(String, String)> = conn
        .query("SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')")
        .await
        .map_err(|e| wrap(e, format!("{endpoint}: reading the session's TLS status")))?;
    let value = |name: &str| status.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
    match (value("Ssl_version"), value("Ssl_cipher")) {
        (Some(version), Some(cipher)) => found.notes.push(format!(
            "{endpoint}: connected over TLS ({version}, {cipher}; db_ssl_mode {})",
            config.ssl_mode.as_str()
        )),
        _ if config.ssl_mode == SslMode::Disabled => {
            found.notes.push(format!("{endpoint}: connected unencrypted (db_ssl_mode disabled)"))
        }
        _ => found.warnings.push(format!(
            "{endpoint}: the connection is not encrypted (the server offers no TLS); set up TLS on the server, \
             and db_ssl_mode required or verify_identity to refuse an unencrypted connection"
        )),
    }
    // `SHOW GRANTS` without FOR: the session's active roles count too.
    let grants: Vec<String> =
        conn.query("SHOW GRANTS").await.map_err(|e| wrap(e, format!("{endpoint}: reading the user's grants")))?;
    // With patterns, the grants are checked on the databases they match now.
    let selection = config.tenant_selection();
    let databases = if selection.is_static() {
        config.databases.clone()
    } else {
        selection.select(&crate::schema::list_databases(conn).await?)
    };
    let excess = excess(&grants, &databases, change_stream);
    if !excess.is_empty() {
        let what = format!(
            "the MySQL user `{}` holds more than this tool needs (SELECT{}): {}",
            config.user,
            if change_stream { ", and REPLICATION SLAVE and BINLOG MONITOR for --cdc" } else { " only" },
            excess.join("; ")
        );
        if config.require_readonly {
            return Err(ConnectorError::config(format!(
                "{what}. require_readonly is set, so nothing was read or written: give the sync user SELECT only \
                 (docs/operations.md, \"Least privilege\")"
            )));
        }
        found
            .warnings
            .push(format!("{what}. Give it SELECT only, and set require_readonly: true to refuse such a user"));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_select_only_user_has_nothing_in_excess() {
        let g = lines(&[
            "GRANT USAGE ON *.* TO `reader`@`%` IDENTIFIED BY PASSWORD '*ABC'",
            "GRANT SELECT, SHOW VIEW ON `shop1`.* TO `reader`@`%`",
            "GRANT SELECT (`id`, `name`) ON `shop2`.`users` TO `reader`@`%`",
            "GRANT `readers` TO `reader`@`%`",
        ]);
        assert!(excess(&g, &["shop1".into(), "shop2".into()], false).is_empty());
    }

    #[test]
    fn write_and_admin_privileges_are_named_with_their_scope() {
        let g = lines(&[
            "GRANT PROCESS, SUPER ON *.* TO `u`@`%`",
            "GRANT SELECT, INSERT, UPDATE ON `shop\\_%`.* TO `u`@`%` WITH GRANT OPTION",
            "GRANT DELETE ON `other`.* TO `u`@`%`",
            "GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO `u`@`%`",
        ]);
        let found = excess(&g, &["shop_1".into()], false);
        assert_eq!(
            found,
            [
                "PROCESS, SUPER on *.*",
                "INSERT, UPDATE, GRANT OPTION on `shop\\_%`.*",
                "REPLICATION SLAVE, BINLOG MONITOR on *.*"
            ]
        );
        let cdc = excess(&g, &["shop_1".into()], true);
        assert_eq!(cdc.len(), 2, "the change stream's grants are expected in that mode: {cdc:?}");
        assert!(excess(&lines(&["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost`"]), &[], false)[0].contains("ALL"));
        assert!(!like("shop\\_%", "shopx1") && like("shop\\_%", "shop_1") && like("s%p_1", "shop_1"));
    }
}
