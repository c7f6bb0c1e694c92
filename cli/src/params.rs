//! The original tool's flat `params.json`, translated into the general pipeline form.
//!
//! `{"db_host": ..., "db_list": "shop1,shop2", "bq_project": ..., ...}` becomes
//! `{"source": {"kind": "mysql", ...}, "sinks": [{"kind": "bigquery", ...}], "state": {"kind":
//! "json", ...}, ...}`, so both forms go through the same registry parsing and validation. The
//! flat form is MySQL → BigQuery with JSON state only; other connectors use the general form.
//!
//! [`FLAT_KEYS`] is the one table of flat keys: each names where its value goes in the general
//! form. Their documentation comes from the connector or setting they map to, and errors in
//! the general form are reported under the flat key the user wrote.

use connector_framework::config::{self, FieldDoc, Problem};
use connector_framework::pipeline::{GeneralNames, KeyNames, PIPELINE_FIELDS, SETTINGS_FIELDS, Scope};
use connector_framework::registry::{self, ConnectorDescriptor, Role};
use connector_framework::{ConnectorError, Pipeline, Result};
use serde_json::{Map, Value, json};

/// Where a flat key's value goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// A key of the `mysql` source.
    Source(&'static str),
    /// A key of each `bigquery` sink (a `targets` entry may set it too).
    Sink(&'static str),
    /// A key of the `json` state store.
    State(&'static str),
    /// A top-level key of the general form (settings, `tables`, `table_options`).
    Top(&'static str),
}

/// The kinds the flat form assembles: the source by `db_type` (the first is the default).
pub const FLAT_SOURCES: &[&str] = &["mysql", "postgres"];
pub const FLAT_SINK: &str = "bigquery";
pub const FLAT_STATE: &str = "json";

/// Every flat key: the original tool's (`db_*`, `bq_project`, `bq_dataset`, `lookback_minutes`,
/// `batch_size`, `max_retries`, `retry_delay`, `pool_size`, `status_dir`) and ours, with where
/// each goes. `pool_size` sets both the MySQL pool and how many tables run at once.
pub const FLAT_KEYS: &[(&str, &[Dest])] = &[
    ("db_host", &[Dest::Source("host")]),
    ("db_port", &[Dest::Source("port")]),
    ("db_user", &[Dest::Source("user")]),
    ("db_pass", &[Dest::Source("password")]),
    ("db_pass_env", &[Dest::Source("password_env")]),
    ("db_pass_file", &[Dest::Source("password_file")]),
    ("db_ssl_mode", &[Dest::Source("ssl_mode")]),
    ("db_ssl_ca", &[Dest::Source("ssl_ca")]),
    ("db_ssl_cert", &[Dest::Source("ssl_cert")]),
    ("db_ssl_key", &[Dest::Source("ssl_key")]),
    ("require_readonly", &[Dest::Source("require_readonly")]),
    ("db_list", &[Dest::Source("databases")]),
    ("db_exclude", &[Dest::Source("exclude_databases")]),
    ("db_name", &[Dest::Source("database")]),
    ("tenant_by", &[Dest::Source("tenant_by")]),
    ("zero_dates", &[Dest::Source("zero_dates")]),
    ("out_of_range", &[Dest::Source("out_of_range")]),
    ("connect_timeout", &[Dest::Source("connect_timeout")]),
    ("reuse_discovery", &[Dest::Source("reuse_discovery")]),
    ("schema_cache_dir", &[Dest::Source("schema_cache_dir")]),
    ("table_list", &[Dest::Top("tables")]),
    ("bq_project", &[Dest::Sink("project")]),
    ("bq_dataset", &[Dest::Sink("dataset")]),
    ("bq_location", &[Dest::Sink("location")]),
    ("bq_endpoint", &[Dest::Sink("endpoint")]),
    ("bq_credentials", &[Dest::Sink("credentials")]),
    ("staging_dataset", &[Dest::Sink("staging_dataset")]),
    ("upload_chunk_mb", &[Dest::Sink("upload_chunk_mb")]),
    ("staging_memory_mb", &[Dest::Sink("staging_memory_mb")]),
    ("job_timeout", &[Dest::Sink("job_timeout")]),
    ("max_concurrent_jobs", &[Dest::Sink("max_concurrent_jobs")]),
    ("lookback_minutes", &[Dest::Top("lookback_minutes")]),
    ("batch_size", &[Dest::Top("batch_size")]),
    ("max_retries", &[Dest::Top("max_retries")]),
    ("retry_delay", &[Dest::Top("retry_delay")]),
    ("pool_size", &[Dest::Source("pool_size"), Dest::Top("concurrency")]),
    ("status_dir", &[Dest::State("status_dir")]),
    ("log_file", &[Dest::Top("log_file")]),
    ("full_after_failure", &[Dest::Top("full_after_failure")]),
    ("full_every", &[Dest::Top("full_every")]),
    ("chunk_rows", &[Dest::Top("chunk_rows")]),
    ("range_readers", &[Dest::Top("range_readers")]),
    ("null_cursor", &[Dest::Top("null_cursor")]),
    ("cursor_time_zone", &[Dest::Top("cursor_time_zone")]),
    ("cdc_flush_seconds", &[Dest::Top("cdc_flush_seconds")]),
    ("cdc_server_id", &[Dest::Top("cdc_server_id")]),
    ("cdc_deletes", &[Dest::Top("cdc_deletes")]),
    ("repair_max_delete_pct", &[Dest::Top("repair_max_delete_pct")]),
    ("delete_detection", &[Dest::Top("delete_detection")]),
    ("drop_missing_tenants", &[Dest::Top("drop_missing_tenants")]),
    ("freshness_slo_minutes", &[Dest::Top("freshness_slo_minutes")]),
    ("alerts", &[Dest::Top("alerts")]),
    ("system_columns", &[Dest::Top("system_columns")]),
    ("table_options", &[Dest::Top("table_options")]),
];

/// The flat `targets` key: several BigQuery targets, each with its own sink keys.
const TARGETS: FieldDoc = FieldDoc {
    name: "targets",
    ty: "list of objects",
    required: false,
    default: "one target from the bq_* keys",
    doc: "several BigQuery targets fed by one read: [{\"id\": ..., \"bq_dataset\": ..., ...}], each taking any bq_* key (top-level ones are defaults); give each an id",
};

/// The flat `db_type` key: which source reads the `db_*` keys.
const DB_TYPE: FieldDoc = FieldDoc {
    name: "db_type",
    ty: "mysql | postgres",
    required: false,
    default: "mysql",
    doc: "the source: mysql (MySQL and MariaDB) or postgres; postgres also takes db_name and tenant_by (schema: db_list names schemas of db_name)",
};

/// The flat `state_store` key: where the state lives.
const STATE_STORE: FieldDoc = FieldDoc {
    name: "state_store",
    ty: "json | bigquery",
    required: false,
    default: "json",
    doc: "json: files in status_dir; bigquery: rows of _connector_state in bq_dataset (for containers without a lasting disk; docs/deploy.md)",
};

fn descriptor(role: Role, kind: &str) -> Option<&'static ConnectorDescriptor> {
    registry::find(role, kind).ok()
}

/// The documentation of the key a flat key maps to.
fn doc_of(dest: Dest) -> Option<FieldDoc> {
    let (fields, key): (&[FieldDoc], &str) = match dest {
        // The first flat source that has the key documents it.
        Dest::Source(k) => {
            return FLAT_SOURCES
                .iter()
                .filter_map(|kind| descriptor(Role::Source, kind))
                .find_map(|d| d.fields.iter().find(|f| f.name == k).copied());
        }
        Dest::Sink(k) => (descriptor(Role::Sink, FLAT_SINK)?.fields, k),
        Dest::State(k) => (descriptor(Role::State, FLAT_STATE)?.fields, k),
        Dest::Top(k) => {
            return PIPELINE_FIELDS.iter().chain(SETTINGS_FIELDS).find(|f| f.name == k).copied();
        }
    };
    fields.iter().find(|f| f.name == key).copied()
}

/// The flat keys with their documentation (taken from what they map to).
pub fn flat_fields() -> Vec<FieldDoc> {
    let mut out: Vec<FieldDoc> = FLAT_KEYS
        .iter()
        .filter_map(|(flat, dests)| {
            let general = doc_of(dests[0])?;
            Some(FieldDoc { name: flat, ..general })
        })
        .collect();
    out.push(TARGETS);
    out.push(STATE_STORE);
    out.push(DB_TYPE);
    out
}

/// The flat keys that configure connector `d`, for `describe`.
pub fn flat_keys_of(d: &ConnectorDescriptor) -> Vec<FieldDoc> {
    let mine = |dest: &Dest| match (d.role(), dest) {
        (Role::Source, Dest::Source(k)) => FLAT_SOURCES.contains(&d.kind) && d.fields.iter().any(|f| f.name == *k),
        (Role::Sink, Dest::Sink(_)) => d.kind == FLAT_SINK,
        (Role::State, Dest::State(_)) => d.kind == FLAT_STATE,
        _ => false,
    };
    let mut out: Vec<FieldDoc> = flat_fields()
        .into_iter()
        .filter_map(|f| {
            let (_, dests) = FLAT_KEYS.iter().find(|(n, dests)| *n == f.name && dests.iter().any(mine))?;
            // A source's own documentation of the key (its default port, not another source's).
            match dests.iter().find(|d| matches!(d, Dest::Source(_))) {
                Some(Dest::Source(k)) => {
                    d.fields.iter().find(|g| g.name == *k).map(|g| FieldDoc { name: f.name, ..*g })
                }
                _ => Some(f),
            }
        })
        .collect();
    if d.role() == Role::Sink && d.kind == FLAT_SINK {
        out.push(TARGETS);
    }
    if d.role() == Role::State {
        out.push(STATE_STORE);
    }
    if d.role() == Role::Source && FLAT_SOURCES.contains(&d.kind) {
        out.push(DB_TYPE);
    }
    out
}

/// How the flat form names general keys in errors.
struct FlatNames {
    /// The file, for messages.
    document: String,
    /// Positions of sinks that come from `targets` entries (else the top-level bq_* keys).
    from_targets: bool,
}

impl FlatNames {
    /// The flat key whose value goes to the first destination `is` accepts.
    fn flat_name(is: impl Fn(&Dest) -> bool) -> Option<&'static str> {
        FLAT_KEYS.iter().find(|(_, dests)| dests.iter().any(&is)).map(|(n, _)| *n)
    }
}

impl KeyNames for FlatNames {
    fn document(&self) -> String {
        self.document.clone()
    }

    fn key(&self, scope: Scope, key: &str) -> String {
        let (head, rest) = key.split_once('.').map_or((key, None), |(h, r)| (h, Some(r)));
        let dest = match scope {
            Scope::Pipeline => Self::flat_name(|d| matches!(d, Dest::Top(k) if *k == head)),
            Scope::Source => {
                // The schema layout's tenant lists come from db_list / db_exclude too.
                let head = match head {
                    "schemas" => "databases",
                    "exclude_schemas" => "exclude_databases",
                    other => other,
                };
                Self::flat_name(|d| matches!(d, Dest::Source(k) if *k == head))
            }
            Scope::Sink(_) => Self::flat_name(|d| matches!(d, Dest::Sink(k) if *k == head)),
            Scope::State => Self::flat_name(|d| matches!(d, Dest::State(k) if *k == head)),
        };
        let name = match (dest, rest) {
            (Some(n), Some(r)) => format!("{n}.{r}"),
            (Some(n), None) => n.to_string(),
            (None, _) => key.to_string(),
        };
        match scope {
            Scope::Sink(i) if self.from_targets && head != "kind" => format!("targets[{i}].{name}"),
            _ => name,
        }
    }
}

/// The general form's key names, in a file named for messages.
struct GeneralIn(String);

impl KeyNames for GeneralIn {
    fn document(&self) -> String {
        self.0.clone()
    }
    fn key(&self, scope: Scope, key: &str) -> String {
        GeneralNames.key(scope, key)
    }
}

/// Parses either form (the general one has a `source` key) from `document` (named in every
/// message).
pub fn pipeline_from_file_json(value: &Value, document: &str) -> Result<Pipeline> {
    if value.get("source").is_some() || value.get("sinks").is_some() {
        return Pipeline::from_json_named(value, &GeneralIn(document.to_string()));
    }
    let fields = flat_fields();
    let flat =
        value.as_object().ok_or_else(|| ConnectorError::config(format!("{document}: expected a JSON object")))?;
    let has_targets = flat.get("targets").is_some_and(|t| !t.is_null());
    let mut problems = config::unknown_keys(value, &fields);
    problems.extend(
        config::missing_keys(value, &fields)
            .into_iter()
            .filter(|p| !(has_targets && p.key.as_deref().is_some_and(|k| k.starts_with("bq_")))),
    );
    let general = flat_to_general(flat, &mut problems);
    let names = FlatNames { document: document.to_string(), from_targets: has_targets };
    match Pipeline::from_json_named(&general, &names) {
        Ok(p) if problems.is_empty() => Ok(p),
        Ok(_) => Err(ConnectorError::config_problems(document, problems)),
        Err(e) => {
            // Both sets: the flat form's own mistakes, and those found in the values.
            for p in e.problems() {
                if !problems.iter().any(|q| q.key == p.key) {
                    problems.push(p.clone());
                }
            }
            if e.problems().is_empty() {
                problems.push(Problem::general(e.message().to_string()));
            }
            Err(ConnectorError::config_problems(document, problems))
        }
    }
}

fn flat_to_general(flat: &Map<String, Value>, problems: &mut Vec<Problem>) -> Value {
    let mut source = Map::new();
    let mut sink = Map::new();
    let mut state = Map::new();
    let mut general = Map::new();
    for (key, dests) in FLAT_KEYS {
        let Some(v) = flat.get(*key).filter(|v| !v.is_null()) else { continue };
        for dest in *dests {
            let (map, k) = match dest {
                Dest::Source(k) => (&mut source, k),
                Dest::Sink(k) => (&mut sink, k),
                Dest::State(k) => (&mut state, k),
                Dest::Top(k) => (&mut general, k),
            };
            map.insert(k.to_string(), v.clone());
        }
    }
    let kind = match flat.get("db_type").filter(|v| !v.is_null()) {
        None => FLAT_SOURCES[0],
        Some(Value::String(t)) if t == "mysql" || t == "mariadb" => "mysql",
        Some(Value::String(t)) if t == "postgres" || t == "postgresql" => "postgres",
        Some(other) => {
            problems.push(Problem::at("db_type", format!("must be \"mysql\" or \"postgres\", got {other}")));
            FLAT_SOURCES[0]
        }
    };
    // PostgreSQL's schema layout: db_list and db_exclude name schemas.
    if kind == "postgres" && source.get("tenant_by").and_then(Value::as_str) == Some("schema") {
        for (from, to) in [("databases", "schemas"), ("exclude_databases", "exclude_schemas")] {
            if let Some(v) = source.remove(from) {
                source.insert(to.into(), v);
            }
        }
    }
    source.insert("kind".into(), json!(kind));
    sink.insert("kind".into(), json!(FLAT_SINK));
    state.insert("kind".into(), json!(FLAT_STATE));
    match flat.get("state_store").filter(|v| !v.is_null()) {
        None => {}
        Some(Value::String(kind)) if kind == FLAT_STATE => {}
        Some(Value::String(kind)) if kind == "bigquery" => {
            if state.contains_key("status_dir") {
                problems
                    .push(Problem::at("status_dir", "is for state_store json; remove it, or set state_store to json"));
            }
            // The state lives in the (first) target's project and dataset.
            state = Map::new();
            state.insert("kind".into(), json!("bigquery"));
            for key in ["project", "dataset", "location", "endpoint", "credentials"] {
                if let Some(v) = sink.get(key) {
                    state.insert(key.into(), v.clone());
                }
            }
        }
        Some(other) => {
            problems.push(Problem::at("state_store", format!("must be \"json\" or \"bigquery\", got {other}")))
        }
    }
    let sinks: Vec<Value> = match flat.get("targets").filter(|t| !t.is_null()) {
        None => vec![Value::Object(sink)],
        Some(Value::Array(targets)) if !targets.is_empty() => {
            targets.iter().enumerate().map(|(i, t)| target_to_sink(i, t, &sink, problems)).collect()
        }
        Some(_) => {
            problems.push(Problem::at("targets", "must be a non-empty list of objects"));
            vec![Value::Object(sink)]
        }
    };
    general.insert("source".into(), Value::Object(source));
    general.insert("sinks".into(), Value::Array(sinks));
    general.insert("state".into(), Value::Object(state));
    Value::Object(general)
}

/// The keys a flat `targets` entry may have: `id` and every sink key.
fn target_fields() -> Vec<FieldDoc> {
    let mut out = vec![FieldDoc {
        name: "id",
        ty: "string",
        required: false,
        default: "project.dataset",
        doc: "names the target (its state folder)",
    }];
    out.extend(
        flat_fields()
            .into_iter()
            .filter(|f| FLAT_KEYS.iter().any(|(n, d)| *n == f.name && matches!(d[0], Dest::Sink(_))))
            .map(|f| FieldDoc { required: false, ..f }),
    );
    out
}

/// One `targets` entry as a sink config; top-level bq_* keys are its defaults.
fn target_to_sink(i: usize, target: &Value, defaults: &Map<String, Value>, problems: &mut Vec<Problem>) -> Value {
    for p in config::unknown_keys(target, &target_fields()) {
        problems.push(Problem { key: p.key.map(|k| format!("targets[{i}].{k}")), message: p.message });
    }
    let mut sink = defaults.clone();
    for (key, dests) in FLAT_KEYS {
        if let (Some(v), Dest::Sink(k)) = (target.get(*key).filter(|v| !v.is_null()), dests[0]) {
            sink.insert(k.to_string(), v.clone());
        }
    }
    if let Some(id) = target.get("id") {
        sink.insert("id".into(), id.clone());
    }
    Value::Object(sink)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guide_example() -> Value {
        json!({
            "db_host": "your-mysql-host", "db_port": "3306", "db_user": "root", "db_pass": "your_password",
            "db_list": "shop1,shop2,shop3", "table_list": "users,orders,products",
            "bq_project": "your-gcp-project", "bq_dataset": "your_dataset",
            "lookback_minutes": 10, "batch_size": 1000,
            "max_retries": 3, "retry_delay": 5, "pool_size": 5, "status_dir": "sync_status"
        })
    }

    fn error(v: &Value) -> String {
        crate::plugins::force_link();
        pipeline_from_file_json(v, "params.json").unwrap_err().to_string()
    }

    #[test]
    fn the_guides_example_is_valid() {
        crate::plugins::force_link();
        let p = pipeline_from_file_json(&guide_example(), "params.json").unwrap();
        assert_eq!(p.tables, ["users", "orders", "products"]);
        assert_eq!(p.settings.batch_size, 1000);
        assert_eq!(p.settings.concurrency, 5);
        let described = p.describe();
        assert_eq!(described["source"]["config"]["port"], 3306);
        assert_eq!(described["source"]["config"]["databases"], json!(["shop1", "shop2", "shop3"]));
        // The password never shows, and the target's id once.
        assert!(!described.to_string().contains("your_password"));
        assert!(described["sinks"][0]["config"].get("id").is_none());
    }

    #[test]
    fn unknown_keys_suggest_the_closest_one_all_at_once() {
        let mut v = guide_example();
        v["bq_datset"] = json!("x");
        assert!(error(&v).contains("`bq_datset`: unknown key; did you mean `bq_dataset`"), "{}", error(&v));
        let mut v = guide_example();
        v.as_object_mut().unwrap().remove("db_pass");
        v["db_passwd"] = json!("x");
        v["lookback_minute"] = json!(5);
        let e = error(&v);
        assert!(e.contains("2 mistakes") && e.contains("`db_passwd`") && e.contains("`lookback_minute`"), "{e}");
    }

    #[test]
    fn missing_required_keys_are_named() {
        let mut v = guide_example();
        v.as_object_mut().unwrap().remove("db_host");
        assert!(error(&v).contains("`db_host`: is required"), "{}", error(&v));
    }

    #[test]
    fn bad_values_name_the_flat_key_and_no_type_names() {
        for (key, value, expected) in [
            ("db_port", json!("abc"), "`db_port`: expected a whole number from 0 to 65535, got \"abc\""),
            ("db_port", json!(70000), "`db_port`: expected a whole number from 0 to 65535, got 70000"),
            (
                "lookback_minutes",
                json!("ten"),
                "`lookback_minutes`: expected a whole number of at least 0, got \"ten\"",
            ),
            ("pool_size", json!(0), "`pool_size`: between 1 and 256, got 0"),
            ("job_timeout", json!(0), "`job_timeout`: between 1 and 86400 seconds, got 0"),
        ] {
            let mut v = guide_example();
            v[key] = value;
            let e = error(&v);
            assert!(e.contains(expected), "{key}: {e}");
            assert!(!e.contains("NumOrString") && !e.contains("u16") && !e.contains("untagged"), "{e}");
        }
    }

    #[test]
    fn several_targets_inherit_the_top_level_defaults() {
        let mut v = guide_example();
        v.as_object_mut().unwrap().remove("bq_project");
        v["bq_dataset"] = json!("shops");
        v["targets"] =
            json!([{"id": "us", "bq_project": "p-us"}, {"id": "eu", "bq_project": "p-eu", "bq_location": "EU"}]);
        crate::plugins::force_link();
        let p = pipeline_from_file_json(&v, "params.json").unwrap();
        let d = p.describe();
        assert_eq!(d["sinks"][0]["id"], "us");
        assert_eq!(d["sinks"][1]["config"]["project"], "p-eu");
        assert_eq!(d["sinks"][1]["config"]["dataset"], "shops");
        assert_eq!(d["sinks"][1]["config"]["location"], "EU");
        let mut bad = v.clone();
        bad["targets"][0]["bq_projet"] = json!("x");
        assert!(
            error(&bad).contains("`targets[0].bq_projet`: unknown key; did you mean `bq_project`"),
            "{}",
            error(&bad)
        );
        let mut bad = v.clone();
        bad["targets"][1]["bq_dataset"] = json!("no-dashes");
        assert!(error(&bad).contains("`targets[1].bq_dataset`"), "{}", error(&bad));
    }

    #[test]
    fn targets_without_ids_get_stable_ids_from_project_and_dataset() {
        let mut v = guide_example();
        v["targets"] = json!([{"bq_dataset": "a"}, {"bq_dataset": "b"}]);
        crate::plugins::force_link();
        let ids = |v: &Value| -> Vec<String> {
            pipeline_from_file_json(v, "params.json").unwrap().targets.iter().map(|t| t.id.clone()).collect()
        };
        assert_eq!(ids(&v), ["your-gcp-project.a", "your-gcp-project.b"]);
        v["targets"] = json!([{"bq_dataset": "new"}, {"bq_dataset": "a"}]);
        assert_eq!(ids(&v)[1], "your-gcp-project.a", "a target keeps its id (and state) wherever it is listed");
        v["targets"] = json!([{"bq_dataset": "a"}, {"bq_dataset": "a"}]);
        assert!(error(&v).contains("give each target its own id"), "{}", error(&v));
    }

    #[test]
    fn password_from_the_environment() {
        let mut v = guide_example();
        v["db_pass"] = json!("${CONNECTOR_TEST_UNSET_VARIABLE}");
        let e = error(&v);
        assert!(e.contains("CONNECTOR_TEST_UNSET_VARIABLE") && e.contains("not set"), "{e}");
    }

    #[test]
    fn the_docs_and_the_readme_name_every_flat_key() {
        let docs = include_str!("../../docs/configuration.md");
        let readme = include_str!("../../README.md");
        let start = readme.find("Its keys:").expect("the README's key list");
        let list = &readme[start..start + readme[start..].find("Every key is").expect("the end of the key list")];
        let keys: Vec<&str> = FLAT_KEYS.iter().map(|(n, _)| *n).chain(["targets", "state_store", "db_type"]).collect();
        for name in &keys {
            assert!(docs.contains(&format!("`{name}`")), "docs/configuration.md does not document `{name}`");
            assert!(list.contains(&format!("`{name}`")), "README.md's key list does not name `{name}`");
        }
        // And the other way: the list names no key the tool does not accept.
        for named in list.split('`').skip(1).step_by(2).filter(|n| !n.starts_with("${")) {
            assert!(keys.contains(&named), "README.md's key list names `{named}`, which params.json does not take");
        }
    }

    #[test]
    fn every_flat_key_is_documented_by_what_it_maps_to() {
        crate::plugins::force_link();
        let fields = flat_fields();
        for (name, _) in FLAT_KEYS {
            assert!(fields.iter().any(|f| f.name == *name && !f.doc.is_empty()), "{name} has no documentation");
        }
    }
}
