#![allow(unsafe_code)]
use mlc_runtime::kernels::gemm::{Epilogue, Gemm, MatRef};
use std::time::Instant;
fn main() {
    if std::env::var_os("PEAK").is_some() {
        for _ in 0..20 {
            let t = Instant::now();
            unsafe { peak24(1_000_000) };
            println!("{:.1}", 1e6 * 24.0 * 32.0 / t.elapsed().as_secs_f64() / 1e9);
        }
        return;
    }
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().unwrap())
        .collect();
    let (m, n, k, pad, threads, packed) = (args[0], args[1], args[2], args[3], args[4], args[5]);
    let a = vec![0.5f32; m * (k + pad)];
    let b = vec![0.25f32; k * (n + pad)];
    let mut c = vec![0.0f32; m * (n + pad)];
    let g = Gemm::new().threads(threads);
    let pb = g.pack_b(k, n, MatRef::row_major(&b, n + pad)).unwrap();
    let ep = Epilogue::new();
    let mut best = f64::INFINITY;
    let mut bestcpu = f64::INFINITY;
    let cpu = || -> f64 {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap()
            / 1e9
    };
    let start = Instant::now();
    let cpu_start = cpu();
    let mut calls = 0.0;
    while start.elapsed().as_secs_f64() < 2.0 {
        let t = Instant::now();
        let c0 = cpu();
        if packed == 1 {
            g.run_packed(m, MatRef::row_major(&a, k + pad), &pb, &mut c, n + pad, &ep)
                .unwrap();
        } else {
            g.run(
                m,
                n,
                k,
                MatRef::row_major(&a, k + pad),
                MatRef::row_major(&b, n + pad),
                &mut c,
                n + pad,
                &ep,
            )
            .unwrap();
        }
        best = best.min(t.elapsed().as_secs_f64());
        bestcpu = bestcpu.min(cpu() - c0);
        calls += 1.0;
    }
    println!(
        "{m}x{n}x{k} pad={pad} T={threads} packed={packed}: {:.1} GFLOP/s; cpu {:.1}",
        2.0 * (m * n * k) as f64 / best / 1e9,
        2.0 * (m * n * k) as f64 * calls / (cpu() - cpu_start) / 1e9
    );
}
#[allow(dead_code)]
#[target_feature(enable = "avx512f")]
fn peak24(iters: u64) {
    use std::arch::x86_64::*;
    let mul = _mm512_set1_ps(0.999_999);
    let add = _mm512_set1_ps(1e-7);
    let mut acc: [__m512; 24] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
    for _ in 0..iters {
        for x in &mut acc {
            *x = _mm512_fmadd_ps(*x, mul, add);
        }
    }
    std::hint::black_box(acc);
}
