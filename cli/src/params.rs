//! The original tool's flat `params.json`, translated into the general pipeline form.
//!
//! `{"db_host": ..., "db_list": "shop1,shop2", "bq_project": ..., ...}` becomes
//! `{"source": {"kind": "mysql", ...}, "sinks": [{"kind": "bigquery", ...}], "state": {"kind":
//! "json", ...}, ...}`, so both forms go through the same registry parsing and validation.

use connector_framework::config::{self, FieldDoc};
use connector_framework::pipeline::{PIPELINE_FIELDS, SETTINGS_FIELDS};
use connector_framework::{ConnectorError, Pipeline, Result};
use serde_json::{Map, Value, json};

/// The flat keys: the guide's, plus ours.
pub const FLAT_FIELDS: &[FieldDoc] = &[
    FieldDoc { name: "db_host", ty: "string", required: true, default: "", doc: "MySQL host" },
    FieldDoc { name: "db_port", ty: "integer", required: false, default: "3306", doc: "MySQL port" },
    FieldDoc {
        name: "db_user",
        ty: "string",
        required: true,
        default: "",
        doc: "MySQL user (SELECT privilege is enough)",
    },
    FieldDoc { name: "db_pass", ty: "string", required: false, default: "empty", doc: "password, or ${ENV_VAR}" },
    FieldDoc {
        name: "db_pass_env",
        ty: "string",
        required: false,
        default: "none",
        doc: "environment variable holding the password",
    },
    FieldDoc { name: "db_list", ty: "comma-separated string", required: true, default: "", doc: "databases (tenants)" },
    FieldDoc {
        name: "table_list",
        ty: "comma-separated string",
        required: false,
        default: "every base table",
        doc: "tables to sync",
    },
    FieldDoc {
        name: "bq_project",
        ty: "string",
        required: true,
        default: "",
        doc: "BigQuery project id (unless `targets` is given)",
    },
    FieldDoc {
        name: "bq_dataset",
        ty: "string",
        required: true,
        default: "",
        doc: "BigQuery dataset (unless `targets` is given)",
    },
    FieldDoc {
        name: "targets",
        ty: "list of objects",
        required: false,
        default: "one target from bq_*",
        doc: "several BigQuery targets: [{id, bq_project, bq_dataset, bq_location, bq_endpoint, bq_credentials}]",
    },
    FieldDoc { name: "bq_location", ty: "string", required: false, default: "the dataset's", doc: "BigQuery location" },
    FieldDoc {
        name: "bq_endpoint",
        ty: "URL",
        required: false,
        default: "$BIGQUERY_EMULATOR_HOST, else Google",
        doc: "an emulator's URL",
    },
    FieldDoc {
        name: "bq_credentials",
        ty: "path",
        required: false,
        default: "Application Default Credentials",
        doc: "service-account key file",
    },
    FieldDoc {
        name: "lookback_minutes",
        ty: "integer",
        required: false,
        default: "10",
        doc: "incremental safety window",
    },
    FieldDoc { name: "batch_size", ty: "integer", required: false, default: "1000", doc: "rows per batch" },
    FieldDoc {
        name: "max_retries",
        ty: "integer",
        required: false,
        default: "3",
        doc: "retries of a transient failure",
    },
    FieldDoc {
        name: "retry_delay",
        ty: "seconds",
        required: false,
        default: "5",
        doc: "first retry wait (doubles, jittered)",
    },
    FieldDoc {
        name: "pool_size",
        ty: "integer",
        required: false,
        default: "5",
        doc: "MySQL connections and tables read at once",
    },
    FieldDoc { name: "status_dir", ty: "path", required: false, default: "sync_status", doc: "state files folder" },
    FieldDoc { name: "log_file", ty: "path", required: false, default: "sync_incremental.log", doc: "log file" },
    FieldDoc {
        name: "full_after_failure",
        ty: "boolean",
        required: false,
        default: "false",
        doc: "a failed table syncs in full next time",
    },
    FieldDoc {
        name: "chunk_rows",
        ty: "integer",
        required: false,
        default: "1000000",
        doc: "rows per key range of a resumable full sync; 0 reads in one pass",
    },
    FieldDoc {
        name: "null_cursor",
        ty: "include | report",
        required: false,
        default: "include",
        doc: "rows whose cursor is NULL in incremental runs",
    },
    FieldDoc {
        name: "table_options",
        ty: "object",
        required: false,
        default: "{}",
        doc: "per-table cursor_column, primary_key, partition_by, cluster_by",
    },
];

/// Parses either form: the general one has a `source` key.
pub fn pipeline_from_json(value: &Value) -> Result<Pipeline> {
    if value.get("source").is_some() || value.get("sinks").is_some() {
        return Pipeline::from_general_json(value);
    }
    Pipeline::from_general_json(&flat_to_general(value)?)
}

fn flat_to_general(value: &Value) -> Result<Value> {
    config::check_keys("params.json", value, FLAT_FIELDS)?;
    let flat = value.as_object().ok_or_else(|| ConnectorError::config("params.json: expected a JSON object"))?;
    let has_targets = flat.get("targets").is_some_and(|t| !t.is_null());
    for f in FLAT_FIELDS.iter().filter(|f| f.required && !(has_targets && f.name.starts_with("bq_"))) {
        if flat.get(f.name).is_none_or(|v| v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty())) {
            return Err(ConnectorError::config(format!("params.json: `{}` is required ({})", f.name, f.doc)));
        }
    }
    let pick = |pairs: &[(&str, &str)]| {
        let mut m = Map::new();
        for (flat_key, key) in pairs {
            if let Some(v) = flat.get(*flat_key).filter(|v| !v.is_null()) {
                m.insert(key.to_string(), v.clone());
            }
        }
        m
    };
    let mut source = pick(&[
        ("db_host", "host"),
        ("db_port", "port"),
        ("db_user", "user"),
        ("db_pass", "password"),
        ("db_pass_env", "password_env"),
        ("db_list", "databases"),
        ("pool_size", "pool_size"),
    ]);
    source.insert("kind".into(), json!("mysql"));
    const SINK_KEYS: [(&str, &str); 5] = [
        ("bq_project", "project"),
        ("bq_dataset", "dataset"),
        ("bq_location", "location"),
        ("bq_endpoint", "endpoint"),
        ("bq_credentials", "credentials"),
    ];
    let mut defaults = pick(&SINK_KEYS);
    defaults.insert("kind".into(), json!("bigquery"));
    let sinks: Vec<Value> = match flat.get("targets").filter(|t| !t.is_null()) {
        None => vec![Value::Object(defaults)],
        Some(Value::Array(targets)) if !targets.is_empty() => targets
            .iter()
            .enumerate()
            .map(|(i, t)| target_to_sink(i, t, &defaults, &SINK_KEYS))
            .collect::<Result<_>>()?,
        Some(_) => return Err(ConnectorError::config("params.json: `targets` must be a non-empty list of objects")),
    };
    let mut state = pick(&[("status_dir", "status_dir")]);
    state.insert("kind".into(), json!("json"));
    let mut general = pick(&[
        ("table_list", "tables"),
        ("table_options", "table_options"),
        ("batch_size", "batch_size"),
        ("max_retries", "max_retries"),
        ("retry_delay", "retry_delay"),
        ("pool_size", "concurrency"),
        ("lookback_minutes", "lookback_minutes"),
        ("full_after_failure", "full_after_failure"),
        ("null_cursor", "null_cursor"),
        ("chunk_rows", "chunk_rows"),
        ("log_file", "log_file"),
    ]);
    general.insert("source".into(), Value::Object(source));
    general.insert("sinks".into(), Value::Array(sinks));
    general.insert("state".into(), Value::Object(state));
    debug_assert!(general.keys().all(|k| PIPELINE_FIELDS.iter().chain(SETTINGS_FIELDS).any(|f| f.name == k)));
    Ok(Value::Object(general))
}

/// The keys a flat `targets` entry may have.
const TARGET_FIELDS: &[FieldDoc] = &[
    FieldDoc { name: "id", ty: "string", required: false, default: "target<N>", doc: "names the target" },
    FieldDoc { name: "bq_project", ty: "string", required: true, default: "", doc: "" },
    FieldDoc { name: "bq_dataset", ty: "string", required: true, default: "", doc: "" },
    FieldDoc { name: "bq_location", ty: "string", required: false, default: "", doc: "" },
    FieldDoc { name: "bq_endpoint", ty: "URL", required: false, default: "", doc: "" },
    FieldDoc { name: "bq_credentials", ty: "path", required: false, default: "", doc: "" },
];

/// One `targets` entry as a sink config; top-level bq_* keys are its defaults.
fn target_to_sink(i: usize, target: &Value, defaults: &Map<String, Value>, keys: &[(&str, &str)]) -> Result<Value> {
    let what = format!("params.json: targets[{i}]");
    config::check_keys(&what, target, TARGET_FIELDS)?;
    let mut sink = defaults.clone();
    for (flat_key, key) in keys {
        if let Some(v) = target.get(*flat_key).filter(|v| !v.is_null()) {
            sink.insert(key.to_string(), v.clone());
        }
    }
    if let Some(id) = target.get("id") {
        sink.insert("id".into(), id.clone());
    }
    for required in ["project", "dataset"] {
        if !sink.contains_key(required) {
            return Err(ConnectorError::config(format!("{what}: `bq_{required}` is required")));
        }
    }
    Ok(Value::Object(sink))
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

    #[test]
    fn the_guides_example_is_valid() {
        crate::plugins::force_link();
        let p = pipeline_from_json(&guide_example()).unwrap();
        assert_eq!(p.tables, ["users", "orders", "products"]);
        assert_eq!(p.settings.batch_size, 1000);
        assert_eq!(p.settings.concurrency, 5);
        let described = p.describe();
        assert_eq!(described["source"]["config"]["port"], 3306);
        assert_eq!(described["source"]["config"]["databases"], json!(["shop1", "shop2", "shop3"]));
        // The password never shows.
        assert!(!described.to_string().contains("your_password"));
    }

    #[test]
    fn unknown_keys_suggest_the_closest_one() {
        let mut v = guide_example();
        v["bq_datset"] = json!("x");
        let e = pipeline_from_json(&v).unwrap_err();
        assert!(e.to_string().contains("did you mean `bq_dataset`"), "{e}");
    }

    #[test]
    fn missing_required_keys_are_named() {
        let mut v = guide_example();
        v.as_object_mut().unwrap().remove("db_host");
        assert!(pipeline_from_json(&v).unwrap_err().to_string().contains("`db_host` is required"));
    }

    #[test]
    fn bad_numbers_name_the_key() {
        let mut v = guide_example();
        v["db_port"] = json!("33o6");
        let e = pipeline_from_json(&v).unwrap_err().to_string();
        assert!(e.contains("33o6"), "{e}");
    }

    #[test]
    fn several_targets_inherit_the_top_level_defaults() {
        let mut v = guide_example();
        v.as_object_mut().unwrap().remove("bq_project");
        v["bq_dataset"] = json!("shops");
        v["targets"] =
            json!([{"id": "us", "bq_project": "p-us"}, {"id": "eu", "bq_project": "p-eu", "bq_location": "EU"}]);
        let p = pipeline_from_json(&v).unwrap();
        let d = p.describe();
        assert_eq!(d["sinks"][0]["id"], "us");
        assert_eq!(d["sinks"][1]["config"]["project"], "p-eu");
        assert_eq!(d["sinks"][1]["config"]["dataset"], "shops");
        assert_eq!(d["sinks"][1]["config"]["location"], "EU");
        v["targets"][0]["bq_projet"] = json!("x");
        assert!(pipeline_from_json(&v).unwrap_err().to_string().contains("did you mean `bq_project`"));
    }

    #[test]
    fn password_from_the_environment() {
        let mut v = guide_example();
        v["db_pass"] = json!("${CONNECTOR_TEST_UNSET_VARIABLE}");
        let e = pipeline_from_json(&v).unwrap_err().to_string();
        assert!(e.contains("CONNECTOR_TEST_UNSET_VARIABLE") && e.contains("not set"), "{e}");
    }
}
