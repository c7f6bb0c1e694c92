//! Secret values kept out of every text the tool writes.
//!
//! Every non-empty [`crate::config::Secret`] registers its value here when it is made (read
//! from the config, the environment or a file). [`redact`] replaces each registered value by
//! `***`; [`crate::ConnectorError`] applies it to every message it is given, so errors, state
//! files, reports and logs built from errors cannot carry a password even when a driver echoes
//! one (a connection URL in an error, say). The binary applies it to its log and terminal
//! output too, as a second line of defence.
//!
//! Values shorter than [`MIN_LEN`] characters are not registered: replacing every `a` of every
//! message would make the messages unreadable and protect nothing.

use std::sync::{LazyLock, RwLock};

/// The shortest value that is registered.
pub const MIN_LEN: usize = 4;

static SECRETS: LazyLock<RwLock<Vec<String>>> = LazyLock::new(|| RwLock::new(Vec::new()));

/// Registers a secret value (no-op for short or known values).
pub fn register(value: &str) {
    if value.chars().count() < MIN_LEN {
        return;
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|p| p.into_inner());
    if !secrets.iter().any(|s| s == value) {
        secrets.push(value.to_string());
        // Longest first, so a secret that contains another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// `text` with every registered secret replaced by `***`.
pub fn redact(text: &str) -> String {
    let secrets = SECRETS.read().unwrap_or_else(|p| p.into_inner());
    let mut out = text.to_string();
    for s in secrets.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

/// Whether `text` holds a registered secret.
pub fn leaks(text: &str) -> bool {
    let secrets = SECRETS.read().unwrap_or_else(|p| p.into_inner());
    secrets.iter().any(|s| text.contains(s.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_values_are_replaced_longest_first_and_short_ones_ignored() {
        register("hunter2-secret");
        register("hunter2");
        register("abc");
        assert_eq!(redact("mysql://u:hunter2-secret@h and hunter2 and abc"), "mysql://u:***@h and *** and abc");
        assert!(leaks("x hunter2 y") && !leaks("x hunter y"));
    }
}
