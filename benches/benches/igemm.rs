//! The exact integer GEMM kernels of `mlc_runtime::kernels::igemm` against this machine's
//! 8-bit multiply-add peak.
//!
//! `cargo bench -p mlc-benches --bench igemm`. The peak is a `std::arch` loop of 12 independent
//! `vpdpbusd` accumulators (zmm, 64 multiply-adds each) and, for the AVX2 kernels, of 12
//! `vpmaddwd` + `vpaddd` pairs (ymm, 16 each; one operand goes through an empty `asm!` each
//! iteration, else LLVM hoists the loop-invariant `vpmaddwd` and times only the adds), on one
//! thread and two; each shape is then timed (best call of many, as the f32 bench does) and
//! printed as GOP/s (one multiply-add = 2 ops) and % of the peak of its ISA times its thread
//! count.
//!
//! The model shapes come in the orientation the models call them: `conv` is an integer
//! convolution of resnet18_int8_qdq (`i8` weights as `A`, `m = Cout`, times the `u8` im2col
//! matrix as `B`, `n = H·W`), `bert` a MatMulInteger of the int8 BERT (`u8` activations as
//! `A` times `i8` weights as `B`). `raw` packs both operands on every call; `packed W` packs
//! the weight once ahead of time (as the executor's constant cache does), so the call packs
//! only the activations; `requant` rows write `u8` through the requantizing epilogue, as the
//! QDQ convs do. `IGEMM_BENCH_FILTER=text` keeps the shapes whose label contains
//! `text`.

#![allow(unsafe_code)]

use mlc_runtime::kernels::Isa;
use mlc_runtime::kernels::igemm::{IBias, IGemm, IOut, IRequant, IntRef, PackedInt, RqMult};
use std::hint::black_box;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
struct Shape {
    name: &'static str,
    m: usize,
    n: usize,
    k: usize,
    threads: usize,
    isa: Option<Isa>,
    /// The operands' types and which is the weight.
    kind: Kind,
    /// The weight packed ahead of time.
    packed: bool,
    /// Cycle through enough copies of the packed weight (64 MiB) that each call reads its
    /// weight from memory, as in a model whose weights exceed the caches.
    cold: bool,
    /// The product requantized to `u8` in the epilogue (per-row multipliers), as the
    /// models' `QLinearConv`s and QDQ convs run, instead of stored as `i32`.
    requant: bool,
}

/// Operand types, and which operand is the constant weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `u8` activations × `i8` weights (`B`), as in the int8 BERT.
    U8xI8,
    /// `i8` weights (`A`) × `u8` activations, as in the int8 convolutions.
    I8xU8,
    /// `i32` operands (8-bit values minus zero points, as the MatMulInteger lowering made
    /// them), weight `B`.
    Widened,
}

impl Shape {
    const fn new(name: &'static str, m: usize, n: usize, k: usize) -> Shape {
        Shape {
            name,
            m,
            n,
            k,
            threads: 1,
            isa: None,
            kind: Kind::U8xI8,
            packed: false,
            cold: false,
            requant: false,
        }
    }
    const fn threads(mut self, t: usize) -> Shape {
        self.threads = t;
        self
    }
    const fn isa(mut self, isa: Isa) -> Shape {
        self.isa = Some(isa);
        self
    }
    const fn widened(mut self) -> Shape {
        self.kind = Kind::Widened;
        self
    }
    const fn conv(name: &'static str, m: usize, n: usize, k: usize) -> Shape {
        let mut s = Shape::new(name, m, n, k);
        s.kind = Kind::I8xU8;
        s
    }
    const fn packed(mut self) -> Shape {
        self.packed = true;
        self
    }
    const fn requant(mut self) -> Shape {
        self.requant = true;
        self
    }
    const fn cold(mut self) -> Shape {
        self.packed = true;
        self.cold = true;
        self
    }
    fn operands(&self) -> &'static str {
        match self.kind {
            Kind::U8xI8 => "u8×i8",
            Kind::I8xU8 => "i8×u8",
            Kind::Widened => "i32 (widened)",
        }
    }
    fn label(&self) -> String {
        format!(
            "{} {}x{}x{} {}T{} {}{}",
            self.name,
            self.m,
            self.n,
            self.k,
            self.threads,
            self.isa.map(|i| format!(" {i}")).unwrap_or_default(),
            self.operands(),
            if self.cold {
                " packed cold"
            } else if self.packed {
                " packed"
            } else {
                " raw"
            },
        ) + if self.requant { " requant" } else { "" }
    }
}

const SHAPES: &[Shape] = &[
    Shape::new("square", 512, 512, 512),
    Shape::new("square", 512, 512, 512).threads(2),
    Shape::new("square", 512, 512, 512).isa(Isa::Avx2),
    Shape::new("square", 512, 512, 512).isa(Isa::Portable),
    Shape::new("square", 1024, 1024, 1024).threads(2),
    Shape::new("bert qkv", 128, 384, 384).threads(2).widened(),
    Shape::new("bert ffn1", 128, 1536, 384).threads(2).widened(),
    Shape::new("bert ffn2", 128, 384, 1536).threads(2).widened(),
    Shape::new("bert qkv", 128, 384, 384),
    Shape::new("bert qkv", 128, 384, 384).packed(),
    Shape::new("bert qkv", 128, 384, 384).threads(2).packed(),
    Shape::new("bert ffn1", 128, 1536, 384),
    Shape::new("bert ffn1", 128, 1536, 384).packed(),
    Shape::new("bert ffn1", 128, 1536, 384).threads(2).packed(),
    Shape::new("bert ffn2", 128, 384, 1536),
    Shape::new("bert ffn2", 128, 384, 1536).packed(),
    Shape::new("bert ffn2", 128, 384, 1536).threads(2).packed(),
    Shape::conv("conv 7x7/2", 64, 12544, 147),
    Shape::conv("conv 7x7/2", 64, 12544, 147).packed(),
    Shape::conv("conv 7x7/2", 64, 12544, 147)
        .threads(2)
        .packed(),
    Shape::conv("conv 3x3", 64, 3136, 576),
    Shape::conv("conv 3x3", 64, 3136, 576).packed(),
    Shape::conv("conv 3x3", 64, 3136, 576).threads(2),
    Shape::conv("conv 3x3", 64, 3136, 576).threads(2).packed(),
    Shape::conv("conv 3x3", 128, 784, 1152),
    Shape::conv("conv 3x3", 128, 784, 1152).packed(),
    Shape::conv("conv 3x3", 128, 784, 1152).threads(2).packed(),
    Shape::conv("conv 3x3", 256, 196, 2304),
    Shape::conv("conv 3x3", 256, 196, 2304).packed(),
    Shape::conv("conv 3x3", 256, 196, 2304).threads(2).packed(),
    Shape::conv("conv 3x3", 512, 49, 4608),
    Shape::conv("conv 3x3", 512, 49, 4608).packed(),
    Shape::conv("conv 3x3", 512, 49, 4608).threads(2).packed(),
    Shape::conv("conv 3x3", 512, 49, 4608).cold(),
    // Pointwise convolutions of a quantized MobileNetV2 (NCHW: C[co, p] = W[co, ci] · X[ci, p]):
    // few input channels (k = 16) or few output channels.
    Shape::conv("mv2 pw expand 112x112", 96, 12544, 16),
    Shape::conv("mv2 pw 56x56", 24, 3136, 96),
    Shape::conv("mv2 pw expand 112x112", 96, 12544, 16).isa(Isa::Avx2),
    Shape::conv("mv2 pw 56x56", 24, 3136, 96).isa(Isa::Avx2),
    Shape::conv("conv 3x3", 256, 196, 2304).cold(),
    Shape::new("bert ffn2", 128, 384, 1536).cold(),
    Shape::conv("conv 1x1/2", 128, 784, 64),
    Shape::conv("conv 1x1/2", 128, 784, 64).packed(),
    Shape::conv("conv 1x1/2", 256, 196, 128),
    Shape::conv("conv 1x1/2", 256, 196, 128).packed(),
    Shape::conv("conv 1x1/2", 512, 49, 256),
    Shape::conv("conv 1x1/2", 512, 49, 256).packed(),
    Shape::conv("conv 7x7/2", 64, 12544, 147).packed().requant(),
    Shape::conv("conv 3x3", 64, 3136, 576).packed().requant(),
    Shape::conv("conv 3x3", 128, 784, 1152).packed().requant(),
    Shape::conv("conv 3x3", 256, 196, 2304).packed().requant(),
    Shape::conv("conv 3x3", 512, 49, 4608).packed().requant(),
];

struct Prepared {
    shape: Shape,
    gemm: IGemm,
    /// `A` as `u8` (or the `i8` weights of a conv, stored as their bytes), and `B` as `i8`
    /// (or the conv's `u8` activations, as bytes).
    a8: Vec<u8>,
    b8: Vec<i8>,
    a32: Vec<i32>,
    b32: Vec<i32>,
    /// The weight, packed ahead of time.
    /// The weight, packed ahead of time (several copies, used in turn, when cold).
    pw: Vec<PackedInt>,
    /// The copy the next call uses.
    turn: usize,
    c: Vec<i32>,
    /// The requantized C.
    c8: Vec<u8>,
}

impl Prepared {
    fn new(shape: Shape) -> Option<Prepared> {
        let gemm = match shape.isa {
            Some(isa) => IGemm::with_isa(isa).ok()?,
            None => IGemm::new(),
        }
        .threads(shape.threads);
        let (m, n, k) = (shape.m, shape.n, shape.k);
        let r = mlc_benches::pseudo_random(m * k + k * n);
        let (ra, rb) = r.split_at(m * k);
        let a8: Vec<u8> = ra.iter().map(|x| ((x + 1.0) * 127.9) as u8).collect();
        let b8: Vec<i8> = rb.iter().map(|x| (x * 127.9) as i8).collect();
        let a32 = a8.iter().map(|&x| i32::from(x) - 128).collect();
        let b32 = b8.iter().map(|&x| i32::from(x)).collect();
        let mut p = Prepared {
            shape,
            gemm,
            a8,
            b8,
            a32,
            b32,
            pw: Vec::new(),
            turn: 0,
            c: vec![0; m * n],
            c8: vec![0; m * n],
        };
        if shape.packed {
            let copies = if shape.cold {
                (64 << 20) / (m * k + k * n).max(1) + 1
            } else {
                1
            };
            for _ in 0..copies {
                p.pw.push(
                    match shape.kind {
                        Kind::U8xI8 => gemm.pack_b(k, n, IntRef::row_major(&p.b8, n)),
                        Kind::I8xU8 => gemm.pack_a(m, k, IntRef::row_major(&p.weights_i8(), k)),
                        Kind::Widened => gemm.pack_b(k, n, IntRef::row_major(&p.b32, n)),
                    }
                    .expect("operands fit"),
                );
            }
        }
        Some(p)
    }

    /// The conv's `i8` weights (the bytes of `a8`).
    fn weights_i8(&self) -> Vec<i8> {
        self.a8.iter().map(|&x| x as i8).collect()
    }

    /// The conv's `u8` activations (the bytes of `b8`).
    fn acts_u8(&self) -> Vec<u8> {
        self.b8.iter().map(|&x| x as u8).collect()
    }

    fn run(&mut self, conv: &ConvData) {
        let s = self.shape;
        let (m, n, k) = (s.m, s.n, s.k);
        let g = self.gemm;
        let c = &mut self.c;
        let pw = self.pw.get(self.turn % self.pw.len().max(1));
        self.turn += 1;
        if let (true, Kind::I8xU8, Some(pw)) = (s.requant, s.kind, pw) {
            let rq = IRequant {
                mult: RqMult::PerRow(&conv.mult),
                shift: None,
                scale: 0.05,
                zero_point: 3,
                add: None,
                table: None,
            };
            g.run_packed_a_into(
                pw,
                n,
                IntRef::row_major(black_box(&conv.x), n),
                IOut::U8(&mut self.c8, rq),
                n,
                IBias::PerRow(&conv.bias),
            )
            .expect("operands fit");
            black_box(&self.c8);
            return;
        }
        let r = match (s.kind, pw) {
            (Kind::U8xI8, None) => g.run(
                m,
                n,
                k,
                IntRef::row_major(black_box(&self.a8), k),
                IntRef::row_major(&self.b8, n),
                c,
                n,
                IBias::None,
            ),
            (Kind::U8xI8, Some(pw)) => g.run_packed_b(
                m,
                IntRef::row_major(black_box(&self.a8), k),
                pw,
                c,
                n,
                IBias::None,
            ),
            (Kind::I8xU8, None) => g.run(
                m,
                n,
                k,
                IntRef::row_major(&conv.w, k),
                IntRef::row_major(black_box(&conv.x), n),
                c,
                n,
                IBias::PerRow(&conv.bias),
            ),
            (Kind::I8xU8, Some(pw)) => g.run_packed_a(
                pw,
                n,
                IntRef::row_major(black_box(&conv.x), n),
                c,
                n,
                IBias::PerRow(&conv.bias),
            ),
            (Kind::Widened, None) => g.run(
                m,
                n,
                k,
                IntRef::row_major(black_box(&self.a32), k),
                IntRef::row_major(&self.b32, n),
                c,
                n,
                IBias::None,
            ),
            (Kind::Widened, Some(pw)) => g.run_packed_b(
                m,
                IntRef::row_major(black_box(&self.a32), k),
                pw,
                c,
                n,
                IBias::None,
            ),
        };
        r.expect("operands fit");
        black_box(&self.c);
    }

    /// Seconds per call: the best of the calls made in `budget` (after a warm-up).
    fn time(&mut self, budget: Duration) -> f64 {
        let conv = ConvData {
            w: self.weights_i8(),
            x: self.acts_u8(),
            bias: (0..self.shape.m as i32).map(|i| 37 * i - 1000).collect(),
            mult: (0..self.shape.m)
                .map(|i| 1e-4 * (1 + i % 7) as f32)
                .collect(),
        };
        let start = Instant::now();
        while start.elapsed() < budget / 5 {
            self.run(&conv);
        }
        let mut best = f64::INFINITY;
        let mut calls = 0;
        let start = Instant::now();
        while start.elapsed() < budget || calls < 5 {
            let t = Instant::now();
            self.run(&conv);
            best = best.min(t.elapsed().as_secs_f64());
            calls += 1;
        }
        best
    }
}

/// A conv's operands in their types: `i8` weights, `u8` activations, an `i32` bias per row.
struct ConvData {
    w: Vec<i8>,
    x: Vec<u8>,
    bias: Vec<i32>,
    /// Requantization multipliers, one per row.
    mult: Vec<f32>,
}

/// Multiply-adds per second of one thread at the peak loop of `isa`, or `None` without it.
fn peak_1t(isa: Isa) -> Option<f64> {
    const ITERS: u64 = 2_000_000;
    let start = Instant::now();
    let macs_per_op = run_peak(isa, ITERS)?;
    Some((ITERS * 12 * macs_per_op) as f64 / start.elapsed().as_secs_f64())
}

fn run_peak(isa: Isa, iters: u64) -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        if isa == Isa::Avx512 && mlc_runtime::kernels::igemm::supported(Isa::Avx512) {
            // SAFETY: the CPU supports AVX-512F/BW/VNNI, checked just above.
            unsafe { vnni_loop(iters) };
            return Some(64);
        }
        if isa == Isa::Avx2 && is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { madd_loop(iters) };
            return Some(16);
        }
    }
    let _ = (isa, iters);
    None
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni_loop(iters: u64) {
    use std::arch::x86_64::*;
    let a = _mm512_set1_epi8(3);
    let b = _mm512_set1_epi8(-5);
    let mut acc: [__m512i; 12] = std::array::from_fn(|i| _mm512_set1_epi32(i as i32));
    for _ in 0..iters {
        for x in &mut acc {
            *x = _mm512_dpbusd_epi32(*x, a, b);
        }
    }
    black_box(acc);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn madd_loop(iters: u64) {
    use std::arch::x86_64::*;
    let mut a = _mm256_set1_epi16(3);
    let b = _mm256_set1_epi16(-5);
    let mut acc: [__m256i; 12] = std::array::from_fn(|i| _mm256_set1_epi32(i as i32));
    for _ in 0..iters {
        // SAFETY: an empty template; it only makes `a` opaque, so that `vpmaddwd(a, b)` is
        // computed every iteration instead of once before the loop.
        unsafe { std::arch::asm!("/* {0} */", inout(ymm_reg) a, options(nomem, nostack)) };
        for x in &mut acc {
            *x = _mm256_add_epi32(*x, _mm256_madd_epi16(a, b));
        }
    }
    black_box(acc);
}

/// The best of many short runs of the peak loop on `threads` threads (multiply-adds/s).
fn peak(threads: usize, isa: Isa) -> Option<f64> {
    (0..30)
        .filter_map(|_| {
            std::thread::scope(|s| {
                let hs: Vec<_> = (0..threads)
                    .map(|_| s.spawn(move || peak_1t(isa)))
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().expect("no panic"))
                    .sum::<Option<f64>>()
            })
        })
        .reduce(f64::max)
}

fn main() {
    let filter = std::env::var("IGEMM_BENCH_FILTER").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average before: {}",
        load.split_whitespace().next().unwrap_or("?")
    );
    let peaks: Vec<(Isa, Option<f64>)> = [Isa::Avx512, Isa::Avx2]
        .into_iter()
        .map(|isa| (isa, peak(1, isa)))
        .collect();
    for (isa, p) in &peaks {
        let two = peak(2, *isa);
        println!(
            "{isa} 8-bit multiply-add peak, GOP/s: 1T {} 2T {}",
            p.map_or("—".into(), |p| format!("{:.0}", 2.0 * p / 1e9)),
            two.map_or("—".into(), |p| format!("{:.0}", 2.0 * p / 1e9)),
        );
    }
    println!();
    println!(
        "| shape (m×n×k) | operands | weight | threads | ISA | GOP/s | % of ISA peak | µs/call |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for shape in SHAPES.iter().filter(|s| s.label().contains(&filter)) {
        let Some(mut p) = Prepared::new(*shape) else {
            continue;
        };
        let secs = p.time(Duration::from_millis(1000));
        let macs = (shape.m * shape.n * shape.k) as f64;
        let gops = 2.0 * macs / secs / 1e9;
        let isa = p.gemm.isa();
        let pct = peaks
            .iter()
            .find(|(i, _)| *i == isa)
            .and_then(|(_, p)| *p)
            .map_or("—".into(), |p| {
                format!("{:.0}%", 100.0 * macs / secs / (p * shape.threads as f64))
            });
        println!(
            "| {} {}×{}×{} | {} | {} | {} | {isa} | {gops:.0} | {pct} | {:.1} |",
            shape.name,
            shape.m,
            shape.n,
            shape.k,
            shape.operands(),
            if shape.cold {
                "packed W, cold"
            } else if shape.packed && shape.requant {
                "packed W, requant u8"
            } else if shape.packed {
                "packed W"
            } else {
                "raw"
            },
            shape.threads,
            secs * 1e6
        );
    }
}
