//! The f32 depthwise convolution kernels of `mlc_runtime::kernels::depthwise` on the layers of
//! MobileNet-style models (3×3 and 5×5, stride 1 and 2, maps from 112×112 down to 7×7), with the
//! ReLU6 epilogue those models fuse.
//!
//! `cargo bench -p mlc-benches --bench depthwise`. A table of microseconds per call and GFLOP/s
//! (2·K² flops per output) for every ISA this CPU has, then criterion on the detected ISA.
//! `DW_BENCH_TABLE_ONLY=1` skips the criterion part; `DW_BENCH_FILTER=text` keeps only the
//! shapes whose label contains `text`; `DW_BENCH_MIN=1` reports the fastest call instead of the
//! median (steadier on a shared machine); `DW_BENCH_SILU=1` fuses SiLU (EfficientNet's
//! epilogue, `x·sigmoid(x)`) instead of ReLU6.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mlc_runtime::kernels::Isa;
use mlc_runtime::kernels::depthwise::{BinKind, EpOp, Shape, run};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// `(label, channels, input side, kernel, stride)`: square maps, pad `kernel / 2`.
const SHAPES: &[(&str, usize, usize, usize, usize)] = &[
    ("mv2 32@112 3x3", 32, 112, 3, 1),
    ("mv2 96@112 3x3 s2", 96, 112, 3, 2),
    ("mv2 144@56 3x3", 144, 56, 3, 1),
    ("mv2 144@56 3x3 s2", 144, 56, 3, 2),
    ("mv2 192@28 3x3", 192, 28, 3, 1),
    ("mv2 384@14 3x3", 384, 14, 3, 1),
    ("mv2 576@14 3x3 s2", 576, 14, 3, 2),
    ("mv2 960@7 3x3", 960, 7, 3, 1),
    ("lcnet 16@112 3x3", 16, 112, 3, 1),
    ("lcnet 32@112 3x3 s2", 32, 112, 3, 2),
    ("lcnet 64@56 3x3", 64, 56, 3, 1),
    ("lcnet 64@56 3x3 s2", 64, 56, 3, 2),
    ("lcnet 128@28 3x3", 128, 28, 3, 1),
    ("lcnet 128@28 3x3 s2", 128, 28, 3, 2),
    ("lcnet 256@14 5x5", 256, 14, 5, 1),
    ("lcnet 256@14 5x5 s2", 256, 14, 5, 2),
    ("lcnet 512@7 5x5", 512, 7, 5, 1),
];

struct Case {
    shape: Shape,
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    y: Vec<f32>,
    ep: &'static [EpOp],
    flops: f64,
}

fn case(c: usize, side: usize, k: usize, s: usize) -> Case {
    let o = (side + 2 * (k / 2) - k) / s + 1;
    let shape = Shape::new(
        1,
        c,
        1,
        [side; 2],
        [o; 2],
        [k; 2],
        [s; 2],
        [1; 2],
        [k / 2; 2],
    );
    let x = (0..c * side * side)
        .map(|i| ((i * 7 % 29) as f32 - 14.0) / 9.0)
        .collect();
    let w = (0..c * k * k)
        .map(|i| ((i * 5 % 13) as f32 - 6.0) / 7.0)
        .collect();
    Case {
        shape,
        x,
        w,
        b: (0..c).map(|i| i as f32 / c as f32).collect(),
        y: vec![0.0; c * o * o],
        ep: epilogue(),
        flops: (2 * k * k * c * o * o) as f64,
    }
}

/// ReLU6, as the lowering fuses `Clip(0, 6)`.
const RELU6: [EpOp; 2] = [
    EpOp::Bin {
        op: BinKind::Max,
        arg: 0.0,
        arg_first: false,
    },
    EpOp::Bin {
        op: BinKind::Min,
        arg: 6.0,
        arg_first: false,
    },
];

/// SiLU as the lowering writes it: `x · sigmoid(x)`.
const SILU: [EpOp; 3] = [
    EpOp::Save,
    EpOp::Sigmoid,
    EpOp::Combine {
        op: BinKind::Mul,
        saved_first: true,
    },
];

/// The fused epilogue: ReLU6, or SiLU with `DW_BENCH_SILU`.
fn epilogue() -> &'static [EpOp] {
    if std::env::var_os("DW_BENCH_SILU").is_some() {
        &SILU
    } else {
        &RELU6
    }
}

fn call(cs: &mut Case, isa: Isa) {
    run(
        &cs.shape,
        black_box(&cs.x),
        &cs.w,
        Some(&cs.b),
        &mut cs.y,
        cs.ep,
        1,
        isa,
    )
    .expect("valid shape");
}

/// Median (or, with `DW_BENCH_MIN`, minimum) seconds per call over ~0.2 s.
fn time(cs: &mut Case, isa: Isa) -> f64 {
    for _ in 0..3 {
        call(cs, isa);
    }
    let mut ts = Vec::new();
    let start = Instant::now();
    while ts.len() < 10 || start.elapsed() < Duration::from_millis(200) {
        let t = Instant::now();
        call(cs, isa);
        ts.push(t.elapsed().as_secs_f64());
    }
    ts.sort_by(f64::total_cmp);
    if std::env::var_os("DW_BENCH_MIN").is_some() {
        return ts[0];
    }
    ts[ts.len() / 2]
}

fn selected() -> Vec<(&'static str, usize, usize, usize, usize)> {
    let filter = std::env::var("DW_BENCH_FILTER").unwrap_or_default();
    SHAPES
        .iter()
        .copied()
        .filter(|s| s.0.contains(filter.as_str()))
        .collect()
}

fn table() {
    let isas: Vec<Isa> = Isa::supported().collect();
    let mut head = format!("{:<22}", "depthwise (1 thread)");
    for isa in &isas {
        head.push_str(&format!(" {:>20}", isa.name()));
    }
    println!("{head}");
    for (label, c, side, k, s) in selected() {
        let mut cs = case(c, side, k, s);
        let mut line = format!("{label:<22}");
        for &isa in &isas {
            let t = time(&mut cs, isa);
            line.push_str(&format!(
                " {:>8.1} us {:>5.1} GF",
                t * 1e6,
                cs.flops / t / 1e9
            ));
        }
        println!("{line}");
    }
}

fn bench(c: &mut Criterion) {
    table();
    if std::env::var_os("DW_BENCH_TABLE_ONLY").is_some() {
        return;
    }
    let mut g = c.benchmark_group("depthwise");
    g.sample_size(20);
    for (label, ch, side, k, s) in selected() {
        let mut cs = case(ch, side, k, s);
        g.throughput(Throughput::Elements(cs.flops as u64));
        g.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| call(&mut cs, Isa::detect()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
