//! Filetests of the optimizer: each `tests/opt/NAME.txt` holds a graph in IR text (its leading
//! `#` lines say what it shows); the optimized IR and a summary are pinned in
//! `tests/snapshots/opt__NAME.snap`. Re-bless with `cargo insta review` (or
//! `INSTA_UPDATE=always`).

use mlc_passes::egraph::{Options, optimize};
use std::fmt::Write;
use std::path::Path;

/// The optimized IR of one case and what the optimizer did (times left out: they vary).
fn optimized(src: &str) -> String {
    let g = mlc_ir::parse_graph(src).unwrap_or_else(|e| panic!("{e}"));
    let (opt, r) = optimize(g, &Options::default()).unwrap_or_else(|e| panic!("{e}"));
    let mut out = mlc_ir::print_graph(&opt);
    let stops: Vec<String> = r
        .phases
        .iter()
        .map(|p| format!("{} {}", p.phase, p.stop))
        .collect();
    let _ = writeln!(
        out,
        "# kernels {} -> {}, cost {:.3} us -> {:.3} us, stop: {}",
        r.kernels_before,
        r.kernels_after,
        r.cost_before_us,
        r.cost_after_us,
        stops.join(", ")
    );
    for k in &r.kernels {
        let _ = writeln!(
            out,
            "# node {}: {} by [{}]",
            k.node,
            k.name,
            k.rules.join(", ")
        );
    }
    for n in &r.not_fused {
        let _ = writeln!(
            out,
            "# not fused: node {} -> node {}: {}",
            n.producer, n.consumer, n.reason
        );
    }
    out
}

#[test]
fn opt_filetests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/opt");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/opt exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for path in files {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 name");
        let src = std::fs::read_to_string(&path).expect("readable");
        insta::with_settings!({ description => src.clone(), omit_expression => true }, {
            insta::assert_snapshot!(name.to_string(), optimized(&src));
        });
    }
}
