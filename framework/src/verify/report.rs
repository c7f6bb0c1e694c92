//! What `verify` found, per tenant × table × target, for people and for scripts.

use serde::{Serialize, Serializer};

use crate::digest::display_key;
use crate::error::ConnectorError;

/// The verdict on one tenant's table in one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictStatus {
    Equal,
    Different,
    /// Not verified: the error says why.
    Failed,
}

/// The keys that differ, by kind (key strings; shown as `42` or `(a, b)`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Differences {
    /// In the source, not in the target.
    #[serde(serialize_with = "keys")]
    pub missing: Vec<String>,
    /// In the target, no longer in the source (deleted there).
    #[serde(serialize_with = "keys")]
    pub extra: Vec<String>,
    /// In both, with other content (an update the sync did not see).
    #[serde(serialize_with = "keys")]
    pub different: Vec<String>,
    /// More than once in the target.
    #[serde(serialize_with = "keys")]
    pub duplicated: Vec<String>,
    /// Changed so recently that the next sync reads them anyway (cursor within its window):
    /// not differences.
    #[serde(serialize_with = "keys")]
    pub in_flight: Vec<String>,
    /// How many copies differ, where more than one: the copies of a duplicated key in the
    /// target, or of a row of a table without a key on either side.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub copies: std::collections::BTreeMap<String, u64>,
}

fn keys<S: Serializer>(keys: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(keys.iter().map(|k| display_key(k)))
}

impl Differences {
    /// Differences that are not in flight.
    pub fn count(&self) -> usize {
        self.missing.len() + self.extra.len() + self.different.len() + self.duplicated.len()
    }

    /// The target rows a repair deletes without writing them back: every copy of every extra
    /// key, and the surplus copies of duplicated ones.
    pub fn rows_removed(&self) -> u64 {
        let copies = |k: &String| self.copies.get(k).copied().unwrap_or(1);
        let extra: u64 = self.extra.iter().map(copies).sum();
        let surplus: u64 =
            self.duplicated.iter().filter(|k| !self.extra.contains(k)).map(|k| copies(k).saturating_sub(1)).sum();
        extra + surplus
    }

    /// A key as the report shows it, with its copies.
    pub fn shown(&self, key: &str) -> String {
        match self.copies.get(key) {
            Some(n) => format!("{} x{n}", display_key(key)),
            None => display_key(key),
        }
    }
}

/// What `--repair` did for one tenant's table.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Repaired {
    /// Keys written again.
    pub keys: usize,
    pub rows_deleted: Option<u64>,
    pub rows_inserted: Option<u64>,
    /// The tenant's table verified equal afterwards.
    pub equal_after: bool,
    /// Why nothing was repaired (the delete guard, a streamed or soft-delete table), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One tenant's table in one target.
#[derive(Debug, Clone, Serialize)]
pub struct TableVerdict {
    pub database: String,
    pub table: String,
    pub target: String,
    pub status: VerdictStatus,
    pub source_rows: u64,
    pub target_rows: u64,
    pub buckets: usize,
    pub buckets_differing: usize,
    pub differences: Differences,
    /// Columns not compared, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repaired: Option<Repaired>,
}

impl TableVerdict {
    pub(super) fn new(database: &str, table: &str, target: &str) -> Self {
        Self {
            database: database.to_string(),
            table: table.to_string(),
            target: target.to_string(),
            status: VerdictStatus::Equal,
            source_rows: 0,
            target_rows: 0,
            buckets: 0,
            buckets_differing: 0,
            differences: Differences::default(),
            notes: Vec::new(),
            error: None,
            repaired: None,
        }
    }

    pub(super) fn failed(database: &str, table: &str, target: &str, error: &ConnectorError) -> Self {
        Self { status: VerdictStatus::Failed, error: Some(error.to_string()), ..Self::new(database, table, target) }
    }

    /// The status from the differences found (a failure stays a failure).
    pub(super) fn settle(&mut self) {
        if self.status == VerdictStatus::Failed {
            return;
        }
        for list in [
            &mut self.differences.missing,
            &mut self.differences.extra,
            &mut self.differences.different,
            &mut self.differences.duplicated,
            &mut self.differences.in_flight,
        ] {
            list.sort();
            list.dedup();
        }
        self.status = if self.differences.count() == 0 { VerdictStatus::Equal } else { VerdictStatus::Different };
    }

    /// Keys whose JSON documents differ (rows otherwise equal, or already different), and
    /// those among them changed within the next sync's window.
    pub(super) fn add_json_differences(
        &mut self,
        keys: impl IntoIterator<Item = String>,
        recent: impl IntoIterator<Item = String>,
    ) {
        let d = &mut self.differences;
        for key in recent {
            if !d.in_flight.contains(&key) && !d.missing.contains(&key) && !d.extra.contains(&key) {
                d.in_flight.push(key);
            }
        }
        for key in keys {
            let known = d.missing.contains(&key)
                || d.extra.contains(&key)
                || d.different.contains(&key)
                || d.in_flight.contains(&key);
            if !known {
                d.different.push(key);
            }
        }
    }
}

/// Every verdict of one `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub tables: Vec<TableVerdict>,
    pub elapsed_seconds: f64,
    pub keys_only: bool,
    /// Per target, the bytes its queries billed (where the target reports them).
    pub bytes_billed: std::collections::BTreeMap<String, u64>,
}

/// How many keys of each kind the screen shows (the JSON report has all).
const SHOWN: usize = 5;

impl VerifyReport {
    /// Some tenant's table could not be verified.
    pub fn failed(&self) -> bool {
        self.tables.iter().any(|t| t.status == VerdictStatus::Failed)
    }

    /// Some tenant's table differs (after any repair).
    pub fn differs(&self) -> bool {
        self.tables
            .iter()
            .any(|t| t.status == VerdictStatus::Different && !t.repaired.as_ref().is_some_and(|r| r.equal_after))
    }

    /// The report for people: a line per tenant × table, the keys that differ under it.
    pub fn render(&self) -> String {
        let multi = self.tables.iter().any(|t| t.target != "default");
        let mut out = format!(
            "=== Verify report ({}) ===\n",
            if self.keys_only { "keys only: missing, extra and duplicated rows" } else { "keys and content" }
        );
        for t in &self.tables {
            let name =
                format!("{}.{}{}", t.database, t.table, if multi { format!(" → {}", t.target) } else { String::new() });
            let line = match t.status {
                VerdictStatus::Equal => format!("EQUAL      {name}: {} rows", t.source_rows),
                VerdictStatus::Failed => {
                    format!("FAILED     {name}: {}", t.error.as_deref().unwrap_or("not verified"))
                }
                VerdictStatus::Different => {
                    let d = &t.differences;
                    let kinds: Vec<String> = [
                        ("missing", d.missing.len()),
                        ("extra", d.extra.len()),
                        ("different", d.different.len()),
                        ("duplicated", d.duplicated.len()),
                    ]
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(k, n)| format!("{n} {k}"))
                    .collect();
                    format!(
                        "DIFFERENT  {name}: {} rows in the source, {} in the target; {}",
                        t.source_rows,
                        t.target_rows,
                        kinds.join(", ")
                    )
                }
            };
            out.push_str(&line);
            if !t.differences.in_flight.is_empty() {
                out.push_str(&format!(" ({} in flight: the next sync reads them)", t.differences.in_flight.len()));
            }
            out.push('\n');
            let d = &t.differences;
            for (kind, list) in [
                ("missing in the target", &d.missing),
                ("extra in the target (deleted in the source)", &d.extra),
                ("different", &d.different),
                ("duplicated in the target", &d.duplicated),
            ] {
                if list.is_empty() {
                    continue;
                }
                let shown: Vec<String> = list.iter().take(SHOWN).map(|k| d.shown(k)).collect();
                let more = if list.len() > SHOWN { format!(" and {} more", list.len() - SHOWN) } else { String::new() };
                out.push_str(&format!("    {kind}: {}{more}\n", shown.join(", ")));
            }
            for note in &t.notes {
                out.push_str(&format!("    note: {note}\n"));
            }
            if let Some(r) = &t.repaired {
                match (&r.refused, &r.error) {
                    (Some(why), _) => out.push_str(&format!("    not repaired: {why}\n")),
                    (_, Some(e)) => out.push_str(&format!("    repair failed: {e}\n")),
                    _ => out.push_str(&format!(
                        "    repaired: {} keys written again ({} rows deleted, {} inserted); {}\n",
                        r.keys,
                        r.rows_deleted.map_or("?".into(), |n| n.to_string()),
                        r.rows_inserted.map_or("?".into(), |n| n.to_string()),
                        if r.equal_after { "equal now" } else { "STILL DIFFERENT" }
                    )),
                }
            }
        }
        for (target, bytes) in &self.bytes_billed {
            out.push_str(&format!("bytes billed by target `{target}`: {:.1} MB\n", *bytes as f64 / 1e6));
        }
        let count = |s: VerdictStatus| self.tables.iter().filter(|t| t.status == s).count();
        out.push_str(&format!(
            "total: {}, {} equal, {} different, {} not verified, in {:.1} s\n",
            crate::report::plural(self.tables.len(), "table", "tables"),
            count(VerdictStatus::Equal),
            count(VerdictStatus::Different),
            count(VerdictStatus::Failed),
            self.elapsed_seconds
        ));
        out
    }
}
