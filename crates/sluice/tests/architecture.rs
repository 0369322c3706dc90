//! The README's architecture table is the rule for which Sluice crate may depend on which:
//! this checks it against every member's manifest, so the table and `cargo tree` cannot
//! drift apart (a new dependency between crates is a decision, made in the table first).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// The table's rows: crate -> the Sluice crates it may depend on (short names).
fn table() -> BTreeMap<String, BTreeSet<String>> {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).expect("README");
    let section = readme
        .split("## Architecture")
        .nth(1)
        .expect("an Architecture section")
        .split("\n## ")
        .next()
        .unwrap_or_default();
    section
        .lines()
        .filter(|l| l.starts_with("| `sluice"))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let name = cells[1]
                .split('`')
                .nth(1)
                .expect("a crate name in backticks")
                .to_owned();
            let deps = cells[3]
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty() && *d != "—")
                .map(|d| format!("sluice-{d}"))
                .collect();
            (name, deps)
        })
        .collect()
}

/// Every workspace member's Sluice `[dependencies]`.
fn manifests() -> BTreeMap<String, BTreeSet<String>> {
    let mut dirs: Vec<_> = std::fs::read_dir(Path::new(ROOT).join("crates"))
        .expect("crates/")
        .map(|e| e.expect("entry").path())
        .collect();
    dirs.push(Path::new(ROOT).join("benches"));
    dirs.into_iter()
        .filter(|d| d.join("Cargo.toml").is_file())
        .map(|dir| {
            let text = std::fs::read_to_string(dir.join("Cargo.toml")).expect("manifest");
            let manifest: toml::Table = text.parse().expect("a TOML manifest");
            let name = manifest["package"]["name"]
                .as_str()
                .expect("package name")
                .to_owned();
            let deps = manifest
                .get("dependencies")
                .and_then(toml::Value::as_table)
                .map(|t| {
                    t.keys()
                        .filter(|k| k.starts_with("sluice"))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            (name, deps)
        })
        .collect()
}

#[test]
fn every_crate_depends_on_what_the_readme_table_allows() {
    let table = table();
    let manifests = manifests();
    assert_eq!(
        table.keys().collect::<Vec<_>>(),
        manifests.keys().collect::<Vec<_>>(),
        "every workspace crate has one row"
    );
    for (name, deps) in &manifests {
        assert_eq!(
            deps, &table[name],
            "{name}'s [dependencies] against its README row"
        );
    }
    // The sans-IO crates stay free of the runtime.
    for sans_io in ["sluice-media", "sluice-rtmp", "sluice-relay"] {
        let text = std::fs::read_to_string(
            Path::new(ROOT)
                .join("crates")
                .join(sans_io)
                .join("Cargo.toml"),
        )
        .expect("manifest");
        assert!(
            !text.contains("tokio"),
            "{sans_io} must not depend on tokio"
        );
    }
}
