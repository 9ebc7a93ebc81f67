//! `mlc_runtime::cpu::matmul::run` — what compiled models call for every `Stmt::Matmul` — on
//! the shapes and layouts the development models produce, per call.
//!
//! `cargo bench -p mlc-benches --bench matmul`. Each case builds the views the kernel-IR
//! lowering builds (`ir/kernel/src/lower/{nn,conv,quant}.rs`): a Linear layer from ONNX `Gemm`
//! with `transB = 1` (B column-major), `MatMul` with a row-major weight, an im2col convolution
//! as `W (out×k) · cols (k×pixels)` with a per-row bias, and `MatMulInteger` as an `i32`
//! product of widened operands. It prints µs per call (the best of many) and GFLOP/s (GOP/s
//! for integers; one multiply-add = 2). `MATMUL_BENCH_FILTER=text` keeps matching labels.

#![allow(unsafe_code)]

use mlc_runtime::cpu::abi::{Activation, DType};
use mlc_runtime::cpu::matmul::{Gemm, View, run};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// How B is stored.
#[derive(Clone, Copy, Debug, PartialEq)]
enum BLayout {
    RowMajor,
    ColMajor,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    name: &'static str,
    m: usize,
    n: usize,
    k: usize,
    b: BLayout,
    /// `i32` operands and result (MatMulInteger as lowered today), else f32.
    int: bool,
    /// Bias: per column (Linear), per row (conv), none.
    bias: Option<bool>,
    threads: usize,
}

const fn f32c(name: &'static str, (m, n, k): (usize, usize, usize), b: BLayout) -> Case {
    Case {
        name,
        m,
        n,
        k,
        b,
        int: false,
        bias: None,
        threads: 1,
    }
}

impl Case {
    const fn col_bias(mut self) -> Case {
        self.bias = Some(false);
        self
    }
    const fn row_bias(mut self) -> Case {
        self.bias = Some(true);
        self
    }
    const fn int(mut self) -> Case {
        self.int = true;
        self
    }
    const fn t2(mut self) -> Case {
        self.threads = 2;
        self
    }
    fn label(&self) -> String {
        format!(
            "{} {}x{}x{} {:?} {}T",
            self.name, self.m, self.n, self.k, self.b, self.threads
        )
    }
}

use BLayout::{ColMajor, RowMajor};

const CASES: &[Case] = &[
    f32c("mlp fc1 (Gemm transB)", (1, 512, 784), ColMajor).col_bias(),
    f32c("mlp fc1 (Gemm transB)", (1, 512, 784), ColMajor)
        .col_bias()
        .t2(),
    f32c("mlp fc1 (MatMul)", (1, 512, 784), RowMajor).col_bias(),
    f32c("mlp fc3", (1, 10, 512), ColMajor).col_bias(),
    f32c("bert qkv", (128, 384, 384), RowMajor).col_bias(),
    f32c("bert qkv", (128, 384, 384), RowMajor).col_bias().t2(),
    f32c("bert ffn1", (128, 1536, 384), RowMajor)
        .col_bias()
        .t2(),
    f32c("bert ffn2", (128, 384, 1536), RowMajor)
        .col_bias()
        .t2(),
    f32c("bert scores (Q·Kᵀ)", (128, 128, 32), ColMajor),
    f32c("resnet conv1 im2col", (64, 12544, 147), RowMajor)
        .row_bias()
        .t2(),
    f32c("resnet layer1 3x3", (64, 3136, 576), RowMajor).row_bias(),
    f32c("resnet layer1 3x3", (64, 3136, 576), RowMajor)
        .row_bias()
        .t2(),
    f32c("resnet layer4 3x3", (512, 49, 4608), RowMajor)
        .row_bias()
        .t2(),
    f32c("lcnet pw 16->32", (32, 12544, 16), RowMajor).row_bias(),
    f32c("lcnet pw 32->64", (64, 3136, 32), RowMajor).row_bias(),
    f32c("lcnet pw 64->128", (128, 784, 64), RowMajor).row_bias(),
    f32c("lcnet pw 128->256", (256, 196, 128), RowMajor).row_bias(),
    f32c("lcnet pw 256->256", (256, 196, 256), RowMajor).row_bias(),
    f32c("lcnet pw 512->512", (512, 49, 512), RowMajor).row_bias(),
    f32c("lcnet head 512->1280 (1x1 plane)", (1280, 1, 512), RowMajor).row_bias(),
    f32c("mv2 project 32->16 112x112", (16, 12544, 32), RowMajor).row_bias(),
    f32c("mv2 project 96->24 56x56", (24, 3136, 96), RowMajor).row_bias(),
    f32c("mv2 project 144->24 56x56", (24, 3136, 144), RowMajor).row_bias(),
    f32c("mv2 expand 16->96 112x112", (96, 12544, 16), RowMajor).row_bias(),
    f32c("convnext s4 mlp1", (49, 3072, 768), RowMajor).col_bias(),
    f32c("convnext s1 mlp1", (3136, 384, 96), RowMajor).col_bias(),
    f32c("bert int8 qkv", (128, 384, 384), RowMajor).int(),
    f32c("bert int8 qkv", (128, 384, 384), RowMajor).int().t2(),
    f32c("bert int8 ffn1", (128, 1536, 384), RowMajor)
        .int()
        .t2(),
    f32c("bert int8 ffn2", (128, 384, 1536), RowMajor)
        .int()
        .t2(),
];

/// A buffer of 4-byte elements seen as bytes.
fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    assert_eq!(std::mem::size_of::<T>(), 4);
    // SAFETY: f32/i32 have no padding; the byte view covers exactly the elements' bytes and
    // lives as long as the borrow of `v`.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

fn as_bytes_mut<T: Copy>(v: &mut [T]) -> &mut [u8] {
    assert_eq!(std::mem::size_of::<T>(), 4);
    // SAFETY: as above; any bytes written are valid f32/i32 bit patterns.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), std::mem::size_of_val(v)) }
}

struct Prepared {
    case: Case,
    a: Vec<u32>,
    b: Vec<u32>,
    bias: Vec<u32>,
    c: Vec<u32>,
}

impl Prepared {
    fn new(case: Case) -> Prepared {
        let (m, n, k) = (case.m, case.n, case.k);
        let bits = |v: Vec<f32>, int_range: Option<(i32, i32)>| -> Vec<u32> {
            v.into_iter()
                .map(|x| match int_range {
                    None => x.to_bits(),
                    // Values in [lo, hi]: 8-bit data minus a zero point.
                    Some((lo, hi)) => {
                        (lo + ((x + 1.0) / 2.0 * (hi - lo) as f32) as i32).clamp(lo, hi) as u32
                    }
                })
                .collect()
        };
        let (ra, rb) = if case.int {
            (Some((-128, 127)), Some((-127, 127)))
        } else {
            (None, None)
        };
        let r = mlc_benches::pseudo_random(m * k + k * n + m.max(n));
        Prepared {
            case,
            a: bits(r[..m * k].to_vec(), ra),
            b: bits(r[m * k..m * k + k * n].to_vec(), rb),
            bias: bits(r[m * k + k * n..].to_vec(), ra),
            c: vec![0; m * n],
        }
    }

    fn run(&mut self) {
        let c = self.case;
        let dt = if c.int { DType::I32 } else { DType::F32 };
        let (brs, bcs) = match c.b {
            RowMajor => (c.n as i64, 1),
            ColMajor => (1, c.k as i64),
        };
        let view = |bytes, rs, cs| View {
            bytes,
            dtype: dt,
            offset: 0,
            row_stride: rs,
            col_stride: cs,
        };
        let bias = c.bias.map(|per_row| {
            if per_row {
                view(as_bytes(&self.bias), 1, 0)
            } else {
                view(as_bytes(&self.bias), 0, 1)
            }
        });
        let g = Gemm {
            m: c.m,
            n: c.n,
            k: c.k,
            alpha: 1.0,
            beta: 0.0,
            act: Activation::None,
            threads: c.threads,
        };
        run(
            &g,
            view(as_bytes(black_box(&self.a)), c.k as i64, 1),
            view(as_bytes(&self.b), brs, bcs),
            as_bytes_mut(&mut self.c),
            (dt, 0, c.n as i64, 1),
            bias,
        )
        .expect("views fit");
        black_box(&self.c);
    }

    fn time(&mut self, budget: Duration) -> f64 {
        let start = Instant::now();
        while start.elapsed() < budget / 5 {
            self.run();
        }
        let mut best = f64::INFINITY;
        let mut calls = 0;
        let start = Instant::now();
        while start.elapsed() < budget || calls < 5 {
            let t = Instant::now();
            self.run();
            best = best.min(t.elapsed().as_secs_f64());
            calls += 1;
        }
        best
    }
}

fn main() {
    let filter = std::env::var("MATMUL_BENCH_FILTER").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average before: {}",
        load.split_whitespace().next().unwrap_or("?")
    );
    println!();
    println!("| case | m×n×k | B | threads | dtype | µs/call | G(FL)OP/s |");
    println!("|---|---|---|---|---|---|---|");
    for case in CASES.iter().filter(|c| c.label().contains(&filter)) {
        let mut p = Prepared::new(*case);
        let secs = p.time(Duration::from_millis(700));
        let ops = 2.0 * (case.m * case.n * case.k) as f64;
        println!(
            "| {}{} | {}×{}×{} | {:?} | {} | {} | {:.1} | {:.1} |",
            case.name,
            match case.bias {
                Some(true) => " +row bias",
                Some(false) => " +col bias",
                None => "",
            },
            case.m,
            case.n,
            case.k,
            case.b,
            case.threads,
            if case.int { "i32" } else { "f32" },
            secs * 1e6,
            ops / secs / 1e9
        );
    }
}
