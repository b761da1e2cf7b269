//! Goal: the crates depend on each other only along the arrows ARCHITECTURE.md allows:
//! kvs -> shards, wire, io, perf · shards -> io · perf -> wire; io and wire use none of ours,
//! and shards uses no network crate.
//! Method: read `cargo metadata` and compare each workspace crate's normal dependencies.

use std::collections::BTreeMap;
use std::process::Command;

#[test]
fn crate_dependencies_follow_the_architecture() {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    // Crude but dependency-free: split the JSON per package and collect `"name":"kvs-..."` deps.
    let ours = ["kvs", "kvs-wire", "kvs-io", "kvs-shards", "kvs-perf"];
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pkg in text.split("{\"name\":\"").skip(1) {
        let name = pkg.split('"').next().unwrap().to_string();
        if !ours.contains(&name.as_str()) || deps.contains_key(&name) {
            continue;
        }
        let section = pkg
            .split("\"dependencies\":[")
            .nth(1)
            .map(|s| s.split("],\"targets\"").next().unwrap_or(""));
        let mut ds = Vec::new();
        for d in section.unwrap_or("").split("{\"name\":\"").skip(1) {
            let dn = d.split('"').next().unwrap().to_string();
            let is_dev = d.contains("\"kind\":\"dev\"");
            if !is_dev {
                ds.push(dn);
            }
        }
        deps.insert(name, ds);
    }
    assert_eq!(deps.len(), ours.len(), "found {deps:?}");
    let allowed: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("kvs", &["kvs-wire", "kvs-io", "kvs-shards", "kvs-perf"][..]),
        ("kvs-shards", &["kvs-io"][..]),
        ("kvs-perf", &["kvs-wire"][..]),
        ("kvs-io", &[][..]),
        ("kvs-wire", &[][..]),
    ]);
    for (name, ds) in &deps {
        for d in ds.iter().filter(|d| ours.contains(&d.as_str())) {
            assert!(allowed[name.as_str()].contains(&d.as_str()), "{name} may not depend on {d}");
        }
    }
    let network = ["tokio", "mio", "hyper", "reqwest", "socket2"];
    for d in &deps["kvs-shards"] {
        assert!(!network.contains(&d.as_str()), "kvs-shards may not use the network crate {d}");
    }
    println!("{deps:#?}");
}
