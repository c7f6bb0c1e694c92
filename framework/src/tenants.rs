//! Which databases are the fleet's tenants, and which of them one worker takes.
//!
//! A source's tenant list may hold names (`shop1`), glob patterns (`shop*`, `shop_??`,
//! `shop[0-9]*`) and regular expressions (`re:^shop[0-9]+$`), plus exclusions in the same forms.
//! A list of names only is taken as it is; a list with a pattern is matched against the
//! databases the server has at the start of every run, so tenants that appear are synced and
//! tenants that disappear are noticed ([`TenantChanges`]).
//!
//! [`Shard`] splits the tenants between N workers (`--shard I/N`, or the engines' task index
//! variables) by rendezvous hashing: each tenant goes to the worker whose hash of (tenant,
//! worker) is highest, so the shares are disjoint and together whole, a new tenant moves no
//! other tenant, and changing N moves only the tenants the new or removed worker takes or gave.

use std::collections::BTreeSet;

/// The prefix of a regular-expression entry.
pub const REGEX_PREFIX: &str = "re:";

/// One entry of a tenant list.
#[derive(Debug, Clone)]
pub enum TenantPattern {
    Name(String),
    Glob { text: String, matcher: globset::GlobMatcher },
    Regex { text: String, regex: regex::Regex },
}

impl TenantPattern {
    /// Parses one entry: `re:` starts a regular expression (matched against the whole name),
    /// `*`, `?` or `[` make a glob, anything else is a database name.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        if let Some(expr) = text.strip_prefix(REGEX_PREFIX) {
            let regex = regex::Regex::new(&format!("^(?:{expr})$"))
                .map_err(|e| format!("`{text}` is not a valid regular expression: {e}"))?;
            return Ok(Self::Regex { text: text.to_string(), regex });
        }
        if text.contains(['*', '?', '[']) {
            let glob = globset::GlobBuilder::new(text)
                .literal_separator(false)
                .build()
                .map_err(|e| format!("`{text}` is not a valid pattern: {e}"))?;
            return Ok(Self::Glob { text: text.to_string(), matcher: glob.compile_matcher() });
        }
        Ok(Self::Name(text.to_string()))
    }

    pub fn is_pattern(&self) -> bool {
        !matches!(self, Self::Name(_))
    }

    pub fn matches(&self, database: &str) -> bool {
        match self {
            Self::Name(n) => n == database,
            Self::Glob { matcher, .. } => matcher.is_match(database),
            Self::Regex { regex, .. } => regex.is_match(database),
        }
    }

    pub fn text(&self) -> &str {
        match self {
            Self::Name(t) | Self::Glob { text: t, .. } | Self::Regex { text: t, .. } => t,
        }
    }
}

/// A source's tenants: what to include and what to leave out.
#[derive(Debug, Clone, Default)]
pub struct TenantSelection {
    include: Vec<TenantPattern>,
    exclude: Vec<TenantPattern>,
}

impl TenantSelection {
    /// Parses both lists; the error names the entry that is wrong.
    pub fn parse(include: &[String], exclude: &[String]) -> std::result::Result<Self, String> {
        let parse_all = |list: &[String]| list.iter().map(|t| TenantPattern::parse(t)).collect::<Result<Vec<_>, _>>();
        Ok(Self { include: parse_all(include)?, exclude: parse_all(exclude)? })
    }

    /// Names only, nothing excluded: the tenants are exactly the list, and the server need
    /// not be asked which databases it has.
    pub fn is_static(&self) -> bool {
        self.exclude.is_empty() && !self.include.iter().any(TenantPattern::is_pattern)
    }

    /// Whether `database` is one of the tenants this selection describes.
    pub fn matches(&self, database: &str) -> bool {
        self.include.iter().any(|p| p.matches(database)) && !self.exclude.iter().any(|p| p.matches(database))
    }

    /// The listed names, in order (for a static selection, the tenants).
    pub fn names(&self) -> Vec<String> {
        let names = self.include.iter().filter(|p| !p.is_pattern()).map(|p| p.text().to_string());
        names.filter(|n| self.matches(n)).collect()
    }

    /// The tenants among the databases a server has: a static selection's names in their
    /// order; otherwise every matching database and every listed name (a listed name the
    /// server lacks fails its tables, as in a static list), sorted.
    pub fn select(&self, on_server: &[String]) -> Vec<String> {
        if self.is_static() {
            return self.names();
        }
        let mut found: BTreeSet<String> = on_server.iter().filter(|d| self.matches(d)).cloned().collect();
        found.extend(self.names());
        found.into_iter().collect()
    }

    /// Whether `database` is named literally (not only matched by a pattern): such a tenant is
    /// never taken for gone.
    pub fn is_listed(&self, database: &str) -> bool {
        self.include.iter().any(|p| !p.is_pattern() && p.matches(database))
    }

    /// The entries as written, for messages.
    pub fn describe(&self) -> String {
        let include: Vec<&str> = self.include.iter().map(TenantPattern::text).collect();
        let mut out = include.join(", ");
        if !self.exclude.is_empty() {
            let exclude: Vec<&str> = self.exclude.iter().map(TenantPattern::text).collect();
            out.push_str(&format!(" (excluding {})", exclude.join(", ")));
        }
        out
    }
}

/// One worker's share of the tenants: worker `index` of `count` (0-based, as Kubernetes'
/// `JOB_COMPLETION_INDEX` and Cloud Run's `CLOUD_RUN_TASK_INDEX` count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// The environment variables a worker reads its share from when `--shard` is not given, in
/// order: ours, then Kubernetes Indexed Jobs', then Cloud Run Jobs'.
pub const SHARD_ENV: &[(&str, &str)] = &[
    ("CONNECTOR_SHARD_INDEX", "CONNECTOR_SHARD_COUNT"),
    ("JOB_COMPLETION_INDEX", "CONNECTOR_SHARD_COUNT"),
    ("CLOUD_RUN_TASK_INDEX", "CLOUD_RUN_TASK_COUNT"),
];

impl Shard {
    /// `I/N`, with 0 ≤ I < N.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let (i, n) = text.split_once('/').ok_or_else(|| format!("`{text}` is not I/N (e.g. 0/4)"))?;
        Self::new(i.trim(), n.trim()).map_err(|e| format!("`{text}`: {e}"))
    }

    fn new(index: &str, count: &str) -> std::result::Result<Self, String> {
        let index: u32 = index.parse().map_err(|_| format!("the index `{index}` is not a whole number"))?;
        let count: u32 = count.parse().map_err(|_| format!("the count `{count}` is not a whole number"))?;
        if count == 0 || index >= count {
            return Err(format!(
                "the index must be at least 0 and below the count ({index} of {count}); indexes start at 0"
            ));
        }
        Ok(Self { index, count })
    }

    /// The share the environment names (see [`SHARD_ENV`]); `Ok(None)` when none is set. A
    /// task index without its count is an error that names the variable to set.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> std::result::Result<Option<Self>, String> {
        for (index_var, count_var) in SHARD_ENV {
            let Some(index) = get(index_var) else { continue };
            let Some(count) = get(count_var) else {
                return Err(format!(
                    "{index_var} is set ({index}) but {count_var} is not; set {count_var} to the number of workers \
                     (the job's completions / task count), or pass --shard I/N"
                ));
            };
            // One task of one (Cloud Run sets its variables even then) is the whole fleet.
            return Self::new(index.trim(), count.trim())
                .map(|s| (s.count > 1).then_some(s))
                .map_err(|e| format!("{index_var}/{count_var}: {e}"));
        }
        Ok(None)
    }

    /// Whether this worker takes `tenant` (rendezvous hashing).
    pub fn owns(&self, tenant: &str) -> bool {
        self.count <= 1 || Self::owner(tenant, self.count) == self.index
    }

    /// The worker of `count` that takes `tenant`.
    pub fn owner(tenant: &str, count: u32) -> u32 {
        use md5::{Digest, Md5};
        let score = |worker: u32| {
            let mut h = Md5::new();
            h.update(tenant.as_bytes());
            h.update([0]);
            h.update(worker.to_be_bytes());
            let d = h.finalize();
            u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
        };
        (0..count).max_by_key(|w| (score(*w), *w)).unwrap_or(0)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// How a run's tenants compare with those its state knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TenantChanges {
    /// Tenants without any state yet: synced in full, after the others.
    pub new: Vec<String>,
    /// Tenants with state that are still there.
    pub present: Vec<String>,
    /// Tenants with state that a pattern of the list still matches, but that the server no
    /// longer has. (A tenant taken out of the list keeps its state and is not reported.)
    pub gone: Vec<String>,
    /// Gone tenants whose rows were deleted from the targets (`drop_missing_tenants`), with
    /// the rows deleted per target.
    pub dropped: Vec<DroppedTenant>,
}

/// A gone tenant's rows deleted from one target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DroppedTenant {
    pub tenant: String,
    pub target: String,
    /// Rows deleted, or why nothing was.
    pub outcome: std::result::Result<u64, String>,
}

impl TenantChanges {
    pub fn is_empty(&self) -> bool {
        self.new.is_empty() && self.gone.is_empty() && self.dropped.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn names_globs_and_regexes_select_from_the_server_with_exclusions() {
        let on_server = names(&["shop1", "shop2", "shop10", "shop_test", "mysql", "analytics"]);
        let s = TenantSelection::parse(&names(&["shop*"]), &names(&["*_test"])).unwrap();
        assert!(!s.is_static());
        assert_eq!(s.select(&on_server), names(&["shop1", "shop10", "shop2"]));
        let s = TenantSelection::parse(&names(&["re:shop[0-9]"]), &[]).unwrap();
        assert_eq!(s.select(&on_server), names(&["shop1", "shop2"]), "a regex matches the whole name");
        let s = TenantSelection::parse(&names(&["shop2", "shop1"]), &[]).unwrap();
        assert!(s.is_static());
        assert_eq!(s.select(&on_server), names(&["shop2", "shop1"]), "a static list keeps its order");
        let s = TenantSelection::parse(&names(&["shop2", "shop1"]), &names(&["shop1"])).unwrap();
        assert_eq!(s.select(&on_server), names(&["shop2"]));
        let s = TenantSelection::parse(&names(&["shop99", "shop1*"]), &[]).unwrap();
        assert_eq!(s.select(&on_server), names(&["shop1", "shop10", "shop99"]), "a listed name is kept");
        assert!(s.is_listed("shop99") && !s.is_listed("shop10"));
        assert!(TenantSelection::parse(&names(&["re:shop("]), &[]).unwrap_err().contains("re:shop("));
    }

    #[test]
    fn shards_are_disjoint_whole_and_move_little_when_tenants_or_workers_change() {
        let tenants: Vec<String> = (0..3000).map(|i| format!("shop{i}")).collect();
        for count in [1, 2, 3, 7] {
            let mut taken = vec![0u32; tenants.len()];
            for index in 0..count {
                let shard = Shard { index, count };
                for (i, t) in tenants.iter().enumerate() {
                    if shard.owns(t) {
                        taken[i] += 1;
                    }
                }
            }
            assert!(taken.iter().all(|n| *n == 1), "every tenant taken exactly once with {count} workers");
        }
        let per_worker: Vec<usize> =
            (0..3).map(|w| tenants.iter().filter(|t| Shard::owner(t, 3) == w).count()).collect();
        assert!(per_worker.iter().all(|n| (800..1200).contains(n)), "balanced: {per_worker:?}");
        // A fourth worker takes about a quarter, and only from the others: nothing moves between them.
        let moved = tenants.iter().filter(|t| Shard::owner(t, 3) != Shard::owner(t, 4)).count();
        assert!(tenants.iter().all(|t| Shard::owner(t, 4) == 3 || Shard::owner(t, 4) == Shard::owner(t, 3)));
        assert!((600..900).contains(&moved), "moved {moved} of 3000");
    }

    #[test]
    fn shards_parse_from_the_flag_and_the_engines_variables() {
        assert_eq!(Shard::parse("1/3").unwrap(), Shard { index: 1, count: 3 });
        assert!(Shard::parse("3/3").unwrap_err().contains("start at 0"));
        assert!(Shard::parse("x").is_err());
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        assert_eq!(
            Shard::from_env(env(&[("CLOUD_RUN_TASK_INDEX", "2"), ("CLOUD_RUN_TASK_COUNT", "5")])).unwrap(),
            Some(Shard { index: 2, count: 5 })
        );
        assert_eq!(
            Shard::from_env(env(&[("JOB_COMPLETION_INDEX", "0"), ("CONNECTOR_SHARD_COUNT", "2")])).unwrap(),
            Some(Shard { index: 0, count: 2 })
        );
        assert!(Shard::from_env(env(&[("JOB_COMPLETION_INDEX", "0")])).unwrap_err().contains("CONNECTOR_SHARD_COUNT"));
        assert_eq!(Shard::from_env(env(&[])).unwrap(), None);
        assert_eq!(
            Shard::from_env(env(&[("CLOUD_RUN_TASK_INDEX", "0"), ("CLOUD_RUN_TASK_COUNT", "1")])).unwrap(),
            None,
            "one task is the whole fleet"
        );
    }
}
