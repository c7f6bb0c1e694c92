//! Generates `plugins.rs` from the workspace's `plugins.toml`: the list of enabled connector
//! crates and a function that references each one, so that their `inventory` registrations are
//! linked in (an unreferenced crate's registrations silently vanish).

use std::fmt::Write;
use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let plugins_path = manifest_dir.join("../plugins.toml");
    println!("cargo:rerun-if-changed={}", plugins_path.display());
    println!("cargo:rerun-if-changed=Cargo.toml");
    let text = std::fs::read_to_string(&plugins_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", plugins_path.display()));
    let doc: toml::Table = text.parse().unwrap_or_else(|e| panic!("plugins.toml is not valid TOML: {e}"));
    let manifest: toml::Table = std::fs::read_to_string(manifest_dir.join("Cargo.toml"))
        .expect("cli/Cargo.toml")
        .parse()
        .expect("cli/Cargo.toml is valid TOML");
    let deps = manifest.get("dependencies").and_then(|d| d.as_table()).cloned().unwrap_or_default();

    let mut list = String::new();
    let mut calls = String::new();
    let plugins = doc.get("plugins").and_then(|p| p.as_table()).cloned().unwrap_or_default();
    for (name, kinds) in &plugins {
        let kinds: Vec<String> = kinds
            .as_array()
            .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        assert!(
            deps.contains_key(name),
            "plugins.toml enables `{name}`, but cli/Cargo.toml does not depend on it; add `{name}` to [dependencies]"
        );
        let ident = name.replace('-', "_");
        writeln!(list, "    Plugin {{ crate_name: {name:?}, kinds: &{kinds:?} }},").expect("write to String");
        writeln!(calls, "    {ident}::link();").expect("write to String");
    }
    let out = format!(
        "/// The connector crates enabled in plugins.toml.\npub const PLUGINS: &[Plugin] = &[\n{list}];\n\n\
         /// References every enabled connector crate so its registrations are linked.\n\
         pub fn force_link() {{\n{calls}}}\n"
    );
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out_dir.join("plugins.rs"), out).expect("write plugins.rs");
}
