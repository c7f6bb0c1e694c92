//! Alerts: what to send where (`alerts` in the pipeline), and which transitions a run made.
//!
//! One message per transition, never one per run:
//! - `failure`: a table that was fine (or new) failed. Its state's `consecutive_failures` is
//!   then 1; later failing runs send nothing.
//! - `recovery`: a table that had failed synced again.
//! - `stale`: a table's last success became older than `freshness_slo_minutes`. Sent once, when
//!   the staleness is first seen; it can be sent again after the table has been fresh.
//!
//! The sending (HTTP, commands, retries) is the command line's; this module only decides.

use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::report::{OutcomeStatus, RunReport};

/// A transition worth a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertEvent {
    Failure,
    Recovery,
    Stale,
}

fn every_event() -> Vec<AlertEvent> {
    vec![AlertEvent::Failure, AlertEvent::Recovery, AlertEvent::Stale]
}

/// One entry of `alerts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AlertConfig {
    /// POSTs the alert as JSON. The URL is a secret (webhook URLs carry tokens): `${VAR}` reads
    /// it from the environment, and it is never shown.
    Webhook {
        url: Secret,
        #[serde(default = "every_event")]
        on: Vec<AlertEvent>,
    },
    /// Runs a program (no shell) with the alert as JSON on its standard input.
    Command {
        run: Vec<String>,
        #[serde(default = "every_event")]
        on: Vec<AlertEvent>,
    },
}

impl AlertConfig {
    pub fn wants(&self, event: AlertEvent) -> bool {
        match self {
            Self::Webhook { on, .. } | Self::Command { on, .. } => on.contains(&event),
        }
    }

    /// What is wrong with it, if anything (for the `alerts` key).
    pub fn problem(&self) -> Option<String> {
        match self {
            Self::Webhook { url, .. } => {
                let u = url.expose();
                (!(u.starts_with("http://") || u.starts_with("https://")))
                    .then(|| "a webhook's url must start with http:// or https://".to_string())
            }
            Self::Command { run, .. } => {
                run.first().is_none_or(|p| p.trim().is_empty()).then(|| "a command's run must name a program".into())
            }
        }
    }

    /// For logs: the kind and, for commands, the program (never a webhook's URL).
    pub fn describe(&self) -> String {
        match self {
            Self::Webhook { .. } => "webhook".into(),
            Self::Command { run, .. } => format!("command {}", run.first().map_or("", String::as_str)),
        }
    }
}

/// One alert: the documented payload (docs/console.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub event: AlertEvent,
    pub target: String,
    pub database: String,
    pub table: String,
    /// The error, for failures.
    pub error: Option<String>,
    pub consecutive_failures: u32,
    pub last_success_at: Option<NaiveDateTime>,
    /// For `stale`: minutes since the last success, and the SLO.
    pub stale_minutes: Option<i64>,
    pub freshness_slo_minutes: Option<u64>,
    pub at: NaiveDateTime,
}

/// The failure and recovery transitions of a finished run, read from its outcomes and the
/// state each table had before it (`prior_failures`: the table's consecutive failures before
/// the run, by database, table and target).
pub fn transitions(
    report: &RunReport,
    prior_failures: impl Fn(&str, &str, &str) -> Option<u32>,
    now: NaiveDateTime,
) -> Vec<Alert> {
    let mut out = Vec::new();
    for o in &report.outcomes {
        let before = prior_failures(&o.database, &o.table, &o.target).unwrap_or(0);
        let event = match o.status {
            OutcomeStatus::Failed if before == 0 => AlertEvent::Failure,
            OutcomeStatus::Success if before > 0 => AlertEvent::Recovery,
            _ => continue,
        };
        out.push(Alert {
            event,
            target: o.target.clone(),
            database: o.database.clone(),
            table: o.table.clone(),
            error: o.error.clone(),
            consecutive_failures: if event == AlertEvent::Failure { 1 } else { 0 },
            last_success_at: None,
            stale_minutes: None,
            freshness_slo_minutes: None,
            at: now,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_parse_with_every_event_by_default_and_hide_the_url() {
        let parsed: Vec<AlertConfig> = serde_json::from_value(serde_json::json!([
            {"kind": "webhook", "url": "https://hooks.example/T0K3N"},
            {"kind": "command", "run": ["/usr/local/bin/page", "--team", "data"], "on": ["failure"]},
        ]))
        .unwrap();
        assert!(parsed[0].wants(AlertEvent::Stale) && parsed[0].problem().is_none());
        assert!(parsed[1].wants(AlertEvent::Failure) && !parsed[1].wants(AlertEvent::Recovery));
        let shown = serde_json::to_string(&parsed).unwrap();
        assert!(!shown.contains("T0K3N"), "{shown}");
        let bad: Result<Vec<AlertConfig>, _> = serde_json::from_value(serde_json::json!([{"kind": "pager"}]));
        assert!(bad.is_err());
        let bad: AlertConfig = serde_json::from_value(serde_json::json!({"kind": "webhook", "url": "hooks"})).unwrap();
        assert!(bad.problem().unwrap().contains("http"));
    }
}
