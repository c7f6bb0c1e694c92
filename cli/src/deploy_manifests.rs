//! The manifests in docs/deploy.md, checked: they parse, their shard settings agree, every
//! variable they set is one the binary reads, and their arguments are ones it accepts.

use std::collections::BTreeSet;

use clap::Parser;
use yaml_rust2::{Yaml, YamlLoader};

const DEPLOY: &str = include_str!("../../docs/deploy.md");

/// The variables the binary reads itself, besides the shard variables and the `${VAR}`s a
/// pipeline names.
const ENVIRONMENT: &[&str] = &[
    crate::logging::LOG_ENV,
    connector_bigquery::config::EMULATOR_ENV,
    // Read by google-cloud-auth for Application Default Credentials.
    "GOOGLE_APPLICATION_CREDENTIALS",
];

/// Every YAML document in the page's ```yaml blocks.
fn documents() -> Vec<Yaml> {
    let mut out = Vec::new();
    let mut rest = DEPLOY;
    while let Some(start) = rest.find("```yaml\n") {
        let body = &rest[start + 8..];
        let end = body.find("```").expect("a closed yaml block");
        out.extend(YamlLoader::load_from_str(&body[..end]).expect("the yaml block parses"));
        rest = &body[end..];
    }
    out
}

/// The `${VAR}`s the page's pipelines name.
fn pipeline_variables() -> BTreeSet<String> {
    DEPLOY.split("${").skip(1).filter_map(|s| s.split_once('}')).map(|(name, _)| name.to_string()).collect()
}

fn containers(pod_spec: &Yaml) -> Vec<&Yaml> {
    pod_spec["containers"].as_vec().expect("containers").iter().collect()
}

fn env_of(container: &Yaml) -> Vec<(String, Option<String>)> {
    container["env"]
        .as_vec()
        .map(|env| {
            env.iter()
                .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].as_str().map(str::to_string)))
                .collect()
        })
        .unwrap_or_default()
}

/// The container's arguments are a run the command line accepts, whose pipeline file is on a
/// mounted volume.
fn check_args(container: &Yaml) {
    let args: Vec<&str> = container["args"].as_vec().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let parsed = crate::Cli::try_parse_from(std::iter::once("connector-run").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let pipeline = parsed.run.pipeline.expect("--pipeline");
    let mounts: Vec<&str> =
        container["volumeMounts"].as_vec().unwrap().iter().map(|m| m["mountPath"].as_str().unwrap()).collect();
    assert!(
        mounts.iter().any(|m| pipeline.starts_with(m)),
        "{} is on no mounted volume {mounts:?}",
        pipeline.display()
    );
}

fn check_variables(container: &Yaml) {
    let read: BTreeSet<String> = ENVIRONMENT
        .iter()
        .map(|s| s.to_string())
        .chain(connector_framework::tenants::SHARD_ENV.iter().flat_map(|(i, c)| [i.to_string(), c.to_string()]))
        .chain(pipeline_variables())
        .collect();
    for (name, _) in env_of(container) {
        assert!(read.contains(&name), "the manifest sets {name}, which the binary does not read");
    }
}

#[test]
fn the_kubernetes_and_cloud_run_manifests_agree_with_the_binary() {
    let docs = documents();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["Secret", "ConfigMap", "ServiceAccount", "CronJob", "Job"]);

    let pipeline = docs[1]["data"]["params.json"].as_str().unwrap().replace("${MYSQL_PASSWORD}", "x");
    let value: serde_json::Value = serde_json::from_str(&pipeline).unwrap();
    let parsed = crate::params::pipeline_from_file_json(&value, "the ConfigMap's params.json").unwrap();
    assert_eq!(parsed.state_kind, "bigquery", "containers keep no disk: the state is in BigQuery");

    let job = &docs[3]["spec"]["jobTemplate"]["spec"];
    assert_eq!(docs[3]["spec"]["concurrencyPolicy"].as_str(), Some("Forbid"));
    assert_eq!(job["completionMode"].as_str(), Some("Indexed"));
    let completions = job["completions"].as_i64().unwrap();
    assert_eq!(job["parallelism"].as_i64(), Some(completions), "every index runs at once");
    let pod = &job["template"]["spec"];
    assert_eq!(pod["serviceAccountName"].as_str(), docs[2]["metadata"]["name"].as_str());
    for c in containers(pod) {
        check_args(c);
        check_variables(c);
        let count = env_of(c).into_iter().find(|(n, _)| n == "CONNECTOR_SHARD_COUNT").and_then(|(_, v)| v);
        assert_eq!(count, Some(completions.to_string()), "CONNECTOR_SHARD_COUNT is the Job's completions");
    }

    let run = &docs[4]["spec"]["template"]["spec"];
    assert_eq!(docs[4]["apiVersion"].as_str(), Some("run.googleapis.com/v1"));
    assert!(run["taskCount"].as_i64().unwrap() > 1);
    for c in containers(&run["template"]["spec"]) {
        check_args(c);
        check_variables(c);
        assert!(env_of(c).iter().all(|(n, _)| !n.starts_with("CLOUD_RUN_TASK")), "Cloud Run sets those itself");
    }
}
