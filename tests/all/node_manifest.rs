//! The ONNX backend node tests: every test named in `tests/node_manifest.txt` must pass through
//! import + the reference interpreter. The manifest grows as ops land; regenerate it with
//! `cargo run -p mlc-tests --bin node-tests -- --quiet --write-manifest tests/node_manifest.txt`
//! (then review the diff: a test leaving the manifest is a regression).

use mlc_tests::node::{Backend, list_tests, node_tests_dir, run_test_catching_with};
use std::sync::Mutex;

#[test]
fn node_tests_in_manifest_pass() {
    check_manifest("tests/node_manifest.txt", Backend::Interp);
}

/// The second column: the tests that also pass lowered to kernel IR and compiled by the
/// Cranelift backend (`mlc-cpu`). Regenerate with
/// `cargo run -p mlc-tests --bin node-tests -- --quiet --backend cpu --write-manifest tests/node_manifest_cpu.txt`.
#[test]
fn node_tests_in_cpu_manifest_pass_compiled() {
    check_manifest("tests/node_manifest_cpu.txt", Backend::Cpu);
}

fn check_manifest(file: &str, backend: Backend) {
    let dir = node_tests_dir();
    let available = list_tests(&dir);
    assert!(
        !available.is_empty(),
        "no ONNX node tests under {}: scripts/test.sh generates them (set MLC_NODE_TESTS to use another directory)",
        dir.display()
    );
    let manifest_path = mlc_tests::repo_root().join(file);
    let manifest = std::fs::read_to_string(&manifest_path)
        .unwrap_or_else(|e| panic!("{file} is committed: {e}"));
    let listed: Vec<&str> = manifest
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let missing: Vec<&&str> = listed
        .iter()
        .filter(|t| !available.iter().any(|a| a == *t))
        .collect();
    assert!(
        missing.is_empty(),
        "manifest names tests that do not exist: {missing:?}"
    );

    let failures = Mutex::new(Vec::new());
    let next = Mutex::new(0usize);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = {
                        let mut n = next
                            .lock()
                            .expect("no poisoning: workers do not panic while holding it");
                        let i = *n;
                        *n += 1;
                        i
                    };
                    let Some(t) = listed.get(i) else { break };
                    if let Err(e) = run_test_catching_with(&dir.join(t), backend) {
                        failures
                            .lock()
                            .expect("not poisoned")
                            .push(format!("{t}: {e}"));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().expect("not poisoned");
    println!(
        "node tests ({backend:?}): {} in manifest, {} passed, {} failed (of {} available)",
        listed.len(),
        listed.len() - failures.len(),
        failures.len(),
        available.len()
    );
    assert!(
        failures.is_empty(),
        "{} manifest tests failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
