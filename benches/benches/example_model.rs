//! Import and reference interpretation of the example model (examples/make_tiny_cnn.py).
//!
//! `cargo bench -p mlc-benches` after `scripts/example.sh` has written the model. The
//! interpreter is the exact oracle, not the fast path: this bench tracks that it stays usable
//! for tests and catches accidental slowdowns in import.

use criterion::{Criterion, criterion_group, criterion_main};
use mlc_ir::{DType, Dim, Tensor};
use std::hint::black_box;

/// Inputs for every graph input: symbolic dims become 1; floats get pseudo-random values.
fn inputs(graph: &mlc_ir::Graph) -> Vec<(String, Tensor)> {
    graph
        .inputs
        .iter()
        .map(|p| {
            let ty = graph.ty(p.value);
            let shape: Vec<usize> = ty
                .shape
                .iter()
                .map(|d| if let Dim::Known(n) = d { *n } else { 1 })
                .collect();
            let n = shape.iter().product();
            let data =
                Tensor::from_vec(&shape, mlc_benches::pseudo_random(n)).expect("n fills the shape");
            let t = if ty.dtype == DType::F32 {
                data
            } else {
                Tensor::zeros(ty.dtype, &shape)
            };
            (p.name.clone(), t)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let path = mlc_benches::example_model();
    let model = mlc_onnx::load(&path).expect("the example model imports");
    let feeds = inputs(&model.graph);
    let mut g = c.benchmark_group("tiny_cnn");
    g.bench_function("import", |b| {
        b.iter(|| mlc_onnx::load(black_box(&path)).expect("imports"))
    });
    g.bench_function("interpret", |b| {
        b.iter(|| mlc_interp::run(black_box(&model.graph), black_box(&feeds)).expect("runs"))
    });
    g.bench_function("import+interpret", |b| {
        b.iter(|| {
            let m = mlc_onnx::load(black_box(&path)).expect("imports");
            mlc_interp::run(&m.graph, black_box(&feeds)).expect("runs")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
