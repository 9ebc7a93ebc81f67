//! Architecture invariants, checked on the real dependency graph from `cargo metadata`.
//!
//! Dependencies point one way (`compiler -> passes -> ir`), and the runtime ships without the
//! compiler: these tests fail the moment a `Cargo.toml` change breaks that, transitively.
//! ARCHITECTURE.md states the same invariants in prose; keep the two in step.

use mlc_tests::repo_root;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::process::Command;

/// `(crate, forbidden dependency)`: a forbidden name matches a package whose name equals it or
/// starts with it followed by `-` (so `cranelift` covers `cranelift-codegen` and friends).
const INVARIANTS: &[(&str, &[&str])] = &[
    // The IR knows nothing of ONNX, protobuf, LLVM, MLIR, Cranelift or egg.
    (
        "mlc-ir",
        &[
            "mlc-interp",
            "mlc-passes",
            "mlc-onnx",
            "mlc-runtime",
            "protobuf",
            "prost",
            "onnx",
            "llvm-sys",
            "inkwell",
            "melior",
            "mlir-sys",
            "cranelift",
            "egg",
        ],
    ),
    // The interpreter is the oracle: it sees only the IR.
    (
        "mlc-interp",
        &[
            "mlc-passes",
            "mlc-onnx",
            "protobuf",
            "llvm-sys",
            "inkwell",
            "melior",
            "cranelift",
            "egg",
        ],
    ),
    // The kernel IR is shared by every backend, so it depends on none of them, nor on ONNX.
    (
        "mlc-kir",
        &[
            "mlc-passes",
            "mlc-onnx",
            "mlc-runtime",
            "protobuf",
            "llvm-sys",
            "inkwell",
            "melior",
            "cranelift",
            "egg",
        ],
    ),
    // Passes work on the IR, never on ONNX.
    ("mlc-passes", &["mlc-onnx", "protobuf"]),
    // The NVIDIA backend turns kernel IR into PTX; it knows nothing of ONNX. It depends on
    // `mlc-runtime` only for the plan and artifact formats (with default features: the CUDA
    // driver is the runtime's business; `cargo metadata --all-features` cannot tell features
    // apart, so cudarc is not listed here).
    ("mlc-nvptx", &["mlc-onnx", "protobuf", "mlc-passes"]),
    // The runtime ships small: no compiler crate and no code generator.
    (
        "mlc-runtime",
        &[
            "mlc-ir",
            "mlc-interp",
            "mlc-passes",
            "mlc-onnx",
            "mlc-nvptx",
            "mlc-kir",
            "mlc-cpu",
            "egg",
            "cranelift-codegen",
            "cranelift-frontend",
            "inkwell",
            "llvm-sys",
            "melior",
            "mlir-sys",
            "protobuf",
        ],
    ),
];

/// The normal and build dependencies of every package, by package name (dev-dependencies do not
/// ship, so they do not count).
fn dependency_graph() -> HashMap<String, Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Restrict to the host platform so that metadata needs no crates for other targets.
    let host = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        });
    let mut cmd = Command::new(cargo);
    // All features: the runtime's optional `cuda` dependencies must obey the invariants too.
    cmd.args(["metadata", "--format-version", "1", "--all-features"])
        .current_dir(repo_root());
    if let Some(h) = &host {
        cmd.args(["--filter-platform", h]);
    }
    let out = cmd.output().expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");

    let names: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().expect("id"),
                p["name"].as_str().expect("name"),
            )
        })
        .collect();
    let mut graph: HashMap<String, Vec<String>> = HashMap::new();
    for node in meta["resolve"]["nodes"].as_array().expect("resolve.nodes") {
        let name = names[node["id"].as_str().expect("id")].to_string();
        let deps = node["deps"]
            .as_array()
            .expect("deps")
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .is_some_and(|kinds| kinds.iter().any(|k| k["kind"].as_str() != Some("dev")))
            })
            .map(|d| names[d["pkg"].as_str().expect("pkg")].to_string())
            .collect();
        graph.entry(name).or_default().extend::<Vec<String>>(deps);
    }
    graph
}

fn transitive(graph: &HashMap<String, Vec<String>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![root.to_string()];
    while let Some(p) = stack.pop() {
        for d in graph.get(&p).into_iter().flatten() {
            if seen.insert(d.clone()) {
                stack.push(d.clone());
            }
        }
    }
    seen
}

fn matches(package: &str, forbidden: &str) -> bool {
    package == forbidden
        || package
            .strip_prefix(forbidden)
            .is_some_and(|rest| rest.starts_with('-'))
}

#[test]
fn dependencies_point_one_way() {
    let graph = dependency_graph();
    let mut violations = Vec::new();
    for (krate, forbidden) in INVARIANTS {
        assert!(
            graph.contains_key(*krate),
            "crate {krate} is not in the workspace: update INVARIANTS and ARCHITECTURE.md"
        );
        for dep in transitive(&graph, krate) {
            if let Some(f) = forbidden.iter().find(|f| matches(&dep, f)) {
                violations.push(format!("{krate} depends on {dep} (forbidden: {f})"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "architecture invariants broken:\n{}",
        violations.join("\n")
    );
}

#[test]
fn forbidden_names_match_families() {
    assert!(matches("cranelift-codegen", "cranelift"));
    assert!(matches("egg", "egg"));
    assert!(!matches("eggs", "egg"));
    assert!(!matches("mlc-ir", "mlc-interp"));
}

/// `runtime/examples/` programs build from `mlc-runtime`'s normal and dev dependencies: the
/// latter must not bring a compiler crate in, so an example shows what an app linking the
/// runtime alone gets.
#[test]
fn runtime_examples_need_only_the_runtime() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(repo_root())
        .output()
        .expect("cargo metadata runs");
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let rt = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == "mlc-runtime")
        .expect("mlc-runtime is in the workspace");
    let forbidden = INVARIANTS
        .iter()
        .find(|(k, _)| *k == "mlc-runtime")
        .expect("mlc-runtime has invariants")
        .1;
    let dev: Vec<&str> = rt["dependencies"]
        .as_array()
        .expect("dependencies")
        .iter()
        .filter(|d| d["kind"] == "dev")
        .filter_map(|d| d["name"].as_str())
        .filter(|n| forbidden.iter().any(|f| matches(n, f)))
        .collect();
    assert!(dev.is_empty(), "mlc-runtime dev-depends on {dev:?}");
    let examples: Vec<&str> = rt["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "example"))
        })
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(examples.contains(&"run_artifact"), "examples: {examples:?}");
}
