//! The f32 GEMM kernels of `mlc_runtime::kernels::gemm` against this machine's FMA peak.
//!
//! `cargo bench -p mlc-benches --bench gemm`. First the peak is measured with a `std::arch`
//! loop of 12 independent FMA accumulators (zmm and ymm), on one thread and on two; then each
//! GEMM shape is timed and a "GFLOP/s (x% of peak)" table is printed, and finally criterion
//! measures the same shapes with throughput in flops. Percentages are of the widest 1-thread
//! peak times the thread count; "B as given" means a row-major slice that the kernel packs or
//! (for few rows) reads in place on every call. `GEMM_BENCH_TABLE_ONLY=1` skips the criterion
//! part; `GEMM_BENCH_FILTER=text` keeps only the shapes whose label contains `text`. Results
//! and how to read them on a shared machine: `docs/benchmarks.md`.

// The peak loop is `std::arch` FMA code; the kernels themselves live in mlc-runtime.
#![allow(unsafe_code)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mlc_runtime::kernels::Isa;
use mlc_runtime::kernels::gemm::{Activation, Bias, Epilogue, Gemm, MatRef, PackedB};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// One benchmarked product.
#[derive(Clone, Copy, Debug)]
struct Shape {
    name: &'static str,
    m: usize,
    n: usize,
    k: usize,
    threads: usize,
    /// B pre-packed (a constant weight), or passed as a row-major slice on every call.
    packed: bool,
    /// Forced ISA, or the detected one.
    isa: Option<Isa>,
    /// A fused per-column bias and ReLU, or a bare product.
    fused: bool,
}

impl Shape {
    const fn new(name: &'static str, m: usize, n: usize, k: usize) -> Shape {
        Shape {
            name,
            m,
            n,
            k,
            threads: 1,
            packed: false,
            isa: None,
            fused: false,
        }
    }
    const fn fused(mut self) -> Shape {
        self.fused = true;
        self
    }
    const fn threads(mut self, t: usize) -> Shape {
        self.threads = t;
        self
    }
    const fn packed(mut self) -> Shape {
        self.packed = true;
        self
    }
    const fn isa(mut self, isa: Isa) -> Shape {
        self.isa = Some(isa);
        self
    }
    fn flops(&self) -> u64 {
        2 * (self.m * self.n * self.k) as u64
    }
    fn label(&self) -> String {
        format!(
            "{} {}x{}x{} {}T{}{}{}",
            self.name,
            self.m,
            self.n,
            self.k,
            self.threads,
            if self.packed { " packedB" } else { "" },
            self.isa.map(|i| format!(" {i}")).unwrap_or_default(),
            if self.fused { " +bias+relu" } else { "" }
        )
    }
}

const SHAPES: &[Shape] = &[
    Shape::new("square", 512, 512, 512),
    Shape::new("square", 512, 512, 512).packed(),
    Shape::new("square", 512, 512, 512).threads(2),
    Shape::new("square", 512, 512, 512).threads(2).packed(),
    Shape::new("square", 512, 512, 512).isa(Isa::Avx2),
    Shape::new("square", 1024, 1024, 1024),
    Shape::new("square", 1024, 1024, 1024).threads(2),
    Shape::new("bert b1", 1, 768, 768).packed(),
    Shape::new("bert b1", 1, 768, 768),
    Shape::new("bert s128", 128, 768, 768).packed(),
    Shape::new("conv 3x3", 196, 64, 576).packed(),
    Shape::new("conv 3x3", 196, 64, 576).packed().fused(),
    Shape::new("im2col stem 7x7", 64, 12544, 147),
    Shape::new("lm head s32", 32, 5000, 256),
    Shape::new("bert b8", 8, 768, 768),
    Shape::new("vit mlp 7x7", 49, 3072, 768),
    Shape::new("vit mlp 7x7", 49, 3072, 768).packed(),
    Shape::new("conv 1x1", 3136, 64, 64).packed(),
    Shape::new("conv 1x1", 3136, 64, 64).threads(2).packed(),
    // PP-LCNet's pointwise convolutions, NCHW: C[co, p] = W[co, ci] · X[ci, p].
    Shape::new("lcnet pw 14x14", 256, 196, 256),
    Shape::new("lcnet pw 14x14", 256, 196, 256).isa(Isa::Avx2),
    Shape::new("lcnet pw 7x7", 512, 49, 512),
    Shape::new("lcnet pw 56x56", 64, 3136, 64),
    Shape::new("lcnet head gemv", 1280, 1, 512),
    // MobileNetV2's stem (im2col, k = 27) and pointwise convolutions with few output
    // channels (projections to 16 and 24) or few input channels (expansion from 16).
    Shape::new("mv2 stem 3x3", 32, 12544, 27),
    Shape::new("mv2 pw 112x112", 16, 12544, 32),
    Shape::new("mv2 pw 56x56", 24, 3136, 96),
    Shape::new("mv2 pw expand 112x112", 96, 12544, 16),
    Shape::new("mv2 pw expand 112x112", 96, 12544, 16).fused(),
    Shape::new("mv2 pw expand 112x112", 96, 12544, 16)
        .fused()
        .isa(Isa::Avx2),
    // The same products transposed, Cᵀ = Xᵀ · Wᵀ, the weight packed once.
    Shape::new("lcnet pwT 14x14", 196, 256, 256).packed(),
    Shape::new("lcnet pwT 7x7", 49, 512, 512).packed(),
    // SqueezeNet's classifier, a 1×1 convolution 512 → 1000 on a 13×13 map, both ways.
    Shape::new("squeeze head pw 13x13", 1000, 169, 512),
    Shape::new("squeeze head pwT 13x13", 169, 1000, 512).packed(),
    // EfficientNet-B0's 672 → 112 projection on 14×14: 112 = 96 + 16 channels and 196 = 192 + 4
    // pixels, a last column tile of one vector either way.
    Shape::new("effnet pw 14x14", 112, 196, 672),
    Shape::new("effnet pwT 14x14", 196, 112, 672).packed(),
];

/// The shapes whose label contains `GEMM_BENCH_FILTER` (all without it).
fn shapes() -> impl Iterator<Item = Shape> {
    let filter = std::env::var("GEMM_BENCH_FILTER").unwrap_or_default();
    SHAPES
        .iter()
        .copied()
        .filter(move |s| s.label().contains(&filter))
}

/// A ready-to-run product: operands allocated once, B packed if asked.
struct Prepared {
    shape: Shape,
    gemm: Gemm,
    a: Vec<f32>,
    b: Vec<f32>,
    packed: Option<PackedB>,
    c: Vec<f32>,
    bias: Vec<f32>,
}

impl Prepared {
    fn new(shape: Shape) -> Option<Prepared> {
        let gemm = match shape.isa {
            Some(isa) => Gemm::with_isa(isa).ok()?,
            None => Gemm::new(),
        }
        .threads(shape.threads);
        let a = mlc_benches::pseudo_random(shape.m * shape.k);
        let b = mlc_benches::pseudo_random(shape.k * shape.n);
        let packed = shape.packed.then(|| {
            gemm.pack_b(shape.k, shape.n, MatRef::row_major(&b, shape.n))
                .expect("B fits")
        });
        let c = vec![0.0; shape.m * shape.n];
        let bias = mlc_benches::pseudo_random(shape.n);
        Some(Prepared {
            shape,
            gemm,
            a,
            b,
            packed,
            c,
            bias,
        })
    }

    fn run(&mut self) {
        let s = self.shape;
        let ep = if s.fused {
            Epilogue::new()
                .bias(Bias::PerCol(&self.bias))
                .activation(Activation::Relu)
        } else {
            Epilogue::new()
        };
        let a = MatRef::row_major(black_box(&self.a), s.k);
        match &self.packed {
            Some(p) => self.gemm.run_packed(s.m, a, p, &mut self.c, s.n, &ep),
            None => self.gemm.run(
                s.m,
                s.n,
                s.k,
                a,
                MatRef::row_major(&self.b, s.n),
                &mut self.c,
                s.n,
                &ep,
            ),
        }
        .expect("shapes are consistent");
        black_box(&self.c);
    }

    /// Seconds per call: the best call over about `budget` of calls (after a warm-up). The best,
    /// not the median, because on a shared machine other processes only ever add time; the
    /// peak is measured the same way, so the ratio stays fair. Also returns the mean seconds
    /// of CPU time this thread spent per call (on Linux), which time slices taken by other
    /// processes do not inflate; it is only meaningful on one thread.
    fn time(&mut self, budget: Duration) -> (f64, Option<f64>) {
        let start = Instant::now();
        while start.elapsed() < budget / 5 {
            self.run();
        }
        let mut best = f64::INFINITY;
        let mut calls = 0u32;
        let cpu0 = thread_cpu_secs();
        let start = Instant::now();
        while start.elapsed() < budget || calls < 5 {
            let t = Instant::now();
            self.run();
            best = best.min(t.elapsed().as_secs_f64());
            calls += 1;
        }
        let cpu = match (cpu0, thread_cpu_secs()) {
            (Some(a), Some(b)) if b > a => Some((b - a) / f64::from(calls)),
            _ => None,
        };
        (best, cpu)
    }
}

/// CPU time of the calling thread so far, from the scheduler's statistics (Linux only). Its
/// resolution is coarse, so it is only used summed over many calls.
fn thread_cpu_secs() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}

/// The 1-minute load average, to record how busy the (shared) machine was.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// Vector width of the peak loop.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Width {
    Zmm,
    Ymm,
}

/// FMA peak of one thread in GFLOP/s: 12 independent accumulators, so that the FMA latency
/// (4 cycles) never stalls the FMA pipes. `None` if the CPU lacks that width.
fn fma_peak_1t(width: Width) -> Option<f64> {
    const ITERS: u64 = 2_000_000;
    let start = Instant::now();
    let lanes = fma_loop(ITERS, width)?;
    let secs = start.elapsed().as_secs_f64();
    Some((ITERS * 12 * lanes * 2) as f64 / secs / 1e9)
}

/// Runs the FMA loop and returns the number of f32 lanes per FMA it used.
fn fma_loop(iters: u64, width: Width) -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        if width == Width::Zmm && is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            unsafe { fma_zmm(iters) };
            return Some(16);
        }
        if width == Width::Ymm
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            unsafe { fma_ymm(iters) };
            return Some(8);
        }
    }
    let _ = (iters, width);
    None
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_zmm(iters: u64) {
    use std::arch::x86_64::*;
    let mul = _mm512_set1_ps(0.999_999);
    let add = _mm512_set1_ps(1e-7);
    let mut acc: [__m512; 12] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
    for _ in 0..iters {
        for x in &mut acc {
            *x = _mm512_fmadd_ps(*x, mul, add);
        }
    }
    black_box(acc);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_ymm(iters: u64) {
    use std::arch::x86_64::*;
    let mul = _mm256_set1_ps(0.999_999);
    let add = _mm256_set1_ps(1e-7);
    let mut acc: [__m256; 12] = std::array::from_fn(|i| _mm256_set1_ps(i as f32));
    for _ in 0..iters {
        for x in &mut acc {
            *x = _mm256_fmadd_ps(*x, mul, add);
        }
    }
    black_box(acc);
}

/// The best of many short runs of the peak loop: a loop like this is only ever slowed down (by
/// other processes on a shared machine), and a few milliseconds fit between interruptions.
fn fma_peak(threads: usize, width: Width) -> Option<f64> {
    let runs = (0..40).map(|_| {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|_| s.spawn(move || fma_peak_1t(width)))
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("no panic"))
                .sum::<Option<f64>>()
        })
    });
    runs.fold(None, |best, r| match (best, r) {
        (Some(b), Some(r)) => Some(f64::max(b, r)),
        (b, r) => b.or(r),
    })
}

fn table(peak1: f64) {
    println!();
    println!("| shape (m×n×k) | threads | B | ISA | GFLOP/s | % of peak | GFLOP/s per CPU-s |");
    println!("|---|---|---|---|---|---|---|");
    for shape in shapes() {
        let Some(mut p) = Prepared::new(shape) else {
            continue;
        };
        let (secs, cpu) = p.time(Duration::from_millis(1500));
        let gflops = shape.flops() as f64 / secs / 1e9;
        let pct = 100.0 * gflops / (peak1 * shape.threads as f64);
        let per_cpu = match cpu {
            Some(cpu) if shape.threads == 1 => format!("{:.1}", shape.flops() as f64 / cpu / 1e9),
            _ => "—".into(),
        };
        println!(
            "| {}{} {}×{}×{} | {} | {} | {} | {:.1} | {:.0}% | {per_cpu} |",
            shape.name,
            if shape.fused { " +bias+relu" } else { "" },
            shape.m,
            shape.n,
            shape.k,
            shape.threads,
            if shape.packed {
                "pre-packed"
            } else {
                "as given"
            },
            p.gemm.isa(),
            gflops,
            pct,
        );
    }
    println!();
}

fn bench(c: &mut Criterion) {
    println!("load average (1 min) before: {}", loadavg());
    let fmt = |p: Option<f64>| p.map_or("—".into(), |p| format!("{p:.1}"));
    let zmm = (fma_peak(1, Width::Zmm), fma_peak(2, Width::Zmm));
    let ymm = (fma_peak(1, Width::Ymm), fma_peak(2, Width::Ymm));
    println!(
        "FMA peak, GFLOP/s (12 independent accumulators): zmm 1T {} 2T {}; ymm 1T {} 2T {}",
        fmt(zmm.0),
        fmt(zmm.1),
        fmt(ymm.0),
        fmt(ymm.1)
    );
    let Some(peak1) = zmm.0.or(ymm.0) else {
        println!("no SIMD FMA on this CPU: no peak to compare with");
        return;
    };
    table(peak1);
    println!("load average (1 min) after: {}", loadavg());
    if std::env::var_os("GEMM_BENCH_TABLE_ONLY").is_some() {
        return;
    }
    let mut g = c.benchmark_group("sgemm");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for shape in shapes() {
        let Some(mut p) = Prepared::new(shape) else {
            continue;
        };
        g.throughput(Throughput::Elements(shape.flops()));
        g.bench_function(BenchmarkId::from_parameter(shape.label()), |b| {
            b.iter(|| p.run())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
