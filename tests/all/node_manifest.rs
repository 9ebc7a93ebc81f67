//! The ONNX backend node tests: every test named in `tests/node_manifest.txt` must pass through
//! import + the reference interpreter. The manifest grows as ops land; regenerate it with
//! `cargo run -p mlc-tests --bin node-tests -- --quiet --write-manifest tests/node_manifest.txt`
//! (then review the diff: a test leaving the manifest is a regression).

use mlc_tests::node::{list_tests, node_tests_dir, run_test_catching};
use std::sync::Mutex;

#[test]
fn node_tests_in_manifest_pass() {
    let dir = node_tests_dir();
    let available = list_tests(&dir);
    assert!(
        !available.is_empty(),
        "no ONNX node tests under {}: scripts/test.sh generates them (set MLC_NODE_TESTS to use another directory)",
        dir.display()
    );
    let manifest_path = mlc_tests::repo_root().join("tests/node_manifest.txt");
    let manifest =
        std::fs::read_to_string(&manifest_path).expect("tests/node_manifest.txt is committed");
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
                    if let Err(e) = run_test_catching(&dir.join(t)) {
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
        "node tests: {} in manifest, {} passed, {} failed (of {} available)",
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
