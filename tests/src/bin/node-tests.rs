//! `node-tests [FILTER...] [--backend interp|kir|cpu] [--write-manifest FILE] [--quiet]`: runs
//! the ONNX node tests whose names contain any FILTER (all when none) through the interpreter
//! (default), the kernel-IR evaluator after lowering (`kir`) or compiled kernels (`cpu`), and
//! prints PASS/FAIL with the reason and a count.

use mlc_tests::node::{Backend, list_tests, node_tests_dir, run_test_catching_with};

fn main() {
    let mut filters = Vec::new();
    let mut manifest = None;
    let mut quiet = false;
    let mut backend = Backend::Interp;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--write-manifest" => manifest = args.next(),
            "--backend" => {
                let name = args.next().unwrap_or_default();
                backend = Backend::from_name(&name).unwrap_or_else(|| {
                    eprintln!("unknown backend {name:?}: interp, kir or cpu");
                    std::process::exit(2);
                });
            }
            "--quiet" => quiet = true,
            _ => filters.push(a),
        }
    }
    let dir = node_tests_dir();
    let tests: Vec<String> = list_tests(&dir)
        .into_iter()
        .filter(|t| filters.is_empty() || filters.iter().any(|f| t.contains(f.as_str())))
        .collect();
    if tests.is_empty() {
        eprintln!("no node tests match in {}", dir.display());
        std::process::exit(2);
    }
    std::panic::set_hook(Box::new(|_| {}));
    let mut passed = Vec::new();
    for t in &tests {
        match run_test_catching_with(&dir.join(t), backend) {
            Ok(()) => {
                if !quiet {
                    println!("PASS {t}");
                }
                passed.push(t.clone());
            }
            Err(e) => {
                let e: String = e.chars().take(400).collect();
                println!("FAIL {t}: {}", e.replace('\n', " "));
            }
        }
    }
    println!(
        "{} passed, {} failed",
        passed.len(),
        tests.len() - passed.len()
    );
    if let Some(m) = manifest {
        let body: String = passed.iter().map(|t| format!("{t}\n")).collect();
        if let Err(e) = std::fs::write(&m, body) {
            eprintln!("cannot write {m}: {e}");
            std::process::exit(1);
        }
    }
}
