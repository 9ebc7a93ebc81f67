//! `mlc-gpu`: runs mlc's GPU kernels from PTX files on the GPU at hand, checks them against a
//! CPU float64 reference and times them with CUDA events. It needs only `mlc-runtime` (built
//! with `--features cuda`), so a GPU machine without Rust or LLVM can run PTX built elsewhere.
//!
//! `mlc-gpu PTX_DIR [--arch sm_90[,sm_90a]] [--only SUBSTRING] [--quick]`
//!
//! Compiled models (`mlc compile M.onnx --target sm_90 -o M.mlca`):
//! - `mlc-gpu run M.mlca --input NAME=FILE.npy ... [--output-dir DIR] [--expect NAME=FILE.npy ...]`
//!   runs the model once, writes `DIR/<output>.npy`, and with `--expect` prints each output's
//!   range-relative error (max |got - want| / (max(want) - min(want))) against a reference.
//! - `mlc-gpu bench M.mlca --input NAME=FILE.npy ... [--warmup N] [--reps N]` times whole-model
//!   runs with CUDA events (inputs already on the device) and prints the median.
//!
//! PTX_DIR holds `<kernel>.<arch>.ptx` files as `cargo run -p mlc-nvptx --example emit_ptx`
//! writes them; every file is JIT-loaded, and each kernel then runs from the first architecture
//! in `--arch` that has it (so `sm_90,sm_90a` runs the portable kernels as sm_90 and the
//! wgmma ones, which exist only for sm_90a). Kernels with `_bt` take B transposed (N×K). Kernel names encode their launch geometry (see `mlc_nvptx::kernels`), e.g.
//! `mlc_gemm_bf16_mma_128x128x32_w2x4_s3_bf16_bias_relu`. Exit status 1 if any check fails.

use mlc_runtime::cuda::{Arg, CudaError, DeviceBuffer, Gpu, Kernel, Launch, median};
use std::path::PathBuf;
use std::process::ExitCode;

/// Dense bf16 tensor-core peak of an H100 SXM, TFLOP/s.
const H100_BF16_PEAK: f64 = 989.0;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Debug, Clone)]
enum GemmKind {
    Naive,
    Mma {
        bm: u32,
        bn: u32,
        bk: u32,
        threads: u32,
    },
    /// Dynamic shared memory, raised above 48 KiB at load.
    Wgmma {
        bm: u32,
        bn: u32,
        threads: u32,
        smem: u32,
    },
}

#[derive(Debug, Clone)]
struct GemmVariant {
    name: String,
    kind: GemmKind,
    out_bf16: bool,
    bias: bool,
    relu: bool,
    /// B is passed transposed, N×K row-major.
    bt: bool,
}

impl GemmVariant {
    fn parse(name: &str) -> Option<GemmVariant> {
        let rest = name.strip_prefix("mlc_gemm_bf16_")?;
        let bias = rest.contains("_bias");
        let relu = rest.contains("_relu");
        let out_bf16 = rest.contains("_bf16");
        let bt = rest.contains("_bt_");
        let kind = if rest.starts_with("naive_") {
            GemmKind::Naive
        } else if let Some(w) = rest.strip_prefix("wgmma_") {
            let p: Vec<&str> = w.split('_').collect();
            let t: Vec<u32> = p
                .first()?
                .split('x')
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?;
            let wg: u32 = p.get(1)?.strip_prefix("wg")?.parse().ok()?;
            let stages: u32 = p.get(2)?.strip_prefix('s')?.parse().ok()?;
            let smem = stages * (t[0] + t[1]) * t[2] * 2;
            GemmKind::Wgmma {
                bm: t[0],
                bn: t[1],
                threads: 128 * wg,
                smem,
            }
        } else {
            let p: Vec<&str> = rest.strip_prefix("mma_")?.split('_').collect();
            let t: Vec<u32> = p
                .first()?
                .split('x')
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?;
            let w: Vec<u32> = p
                .get(1)?
                .strip_prefix('w')?
                .split('x')
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?;
            GemmKind::Mma {
                bm: t[0],
                bn: t[1],
                bk: t[2],
                threads: 32 * w[0] * w[1],
            }
        };
        Some(GemmVariant {
            name: name.to_string(),
            kind,
            out_bf16,
            bias,
            relu,
            bt,
        })
    }

    /// Whether the kernel handles this shape (tile sizes must divide it).
    fn fits(&self, m: usize, n: usize, k: usize) -> bool {
        match self.kind {
            GemmKind::Naive => n.is_multiple_of(2),
            GemmKind::Mma { bm, bn, bk, .. } => {
                m.is_multiple_of(bm as usize)
                    && n.is_multiple_of(bn as usize)
                    && k.is_multiple_of(bk as usize)
            }
            GemmKind::Wgmma { bm, bn, .. } => {
                m.is_multiple_of(bm as usize)
                    && n.is_multiple_of(bn as usize)
                    && k.is_multiple_of(64)
            }
        }
    }

    fn launch(&self, m: usize, n: usize) -> Launch {
        match self.kind {
            GemmKind::Naive => Launch {
                grid: (n.div_ceil(32) as u32, m.div_ceil(16) as u32, 1),
                block: (16, 16, 1),
                shared_bytes: 0,
            },
            GemmKind::Mma {
                bm, bn, threads, ..
            } => Launch {
                grid: ((n / bn as usize) as u32, (m / bm as usize) as u32, 1),
                block: (threads, 1, 1),
                shared_bytes: 0,
            },
            GemmKind::Wgmma {
                bm,
                bn,
                threads,
                smem,
            } => Launch {
                grid: ((n / bn as usize) as u32, (m / bm as usize) as u32, 1),
                block: (threads, 1, 1),
                shared_bytes: smem,
            },
        }
    }
}

/// xorshift64*: fast, seedable, good enough for test data.
struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        ((r >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}
fn bf16_value(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}
fn bytes_u16(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn bytes_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Random bf16 data in [-1, 1): the bits to upload and the values they stand for.
fn random_bf16(len: usize, seed: u64) -> (Vec<u16>, Vec<f32>) {
    let mut rng = Rng(seed | 1);
    let bits: Vec<u16> = (0..len).map(|_| bf16_bits(rng.uniform())).collect();
    let vals = bits.iter().map(|&h| bf16_value(h)).collect();
    (bits, vals)
}

struct Problem {
    m: usize,
    n: usize,
    k: usize,
    a: Vec<f32>,
    b: Vec<f32>,
    bias: Vec<f32>,
    da: DeviceBuffer,
    db: DeviceBuffer,
    /// B transposed (N×K), for the `_bt` kernels.
    dbt: DeviceBuffer,
    dbias: DeviceBuffer,
}

impl Problem {
    fn new(gpu: &Gpu, m: usize, n: usize, k: usize, seed: u64) -> Res<Problem> {
        let (abits, a) = random_bf16(m * k, seed);
        let (bbits, b) = random_bf16(k * n, seed.wrapping_mul(31).wrapping_add(7));
        let mut rng = Rng(seed ^ 0xb1a5);
        let bias: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
        Ok(Problem {
            m,
            n,
            k,
            da: gpu.upload(&bytes_u16(&abits))?,
            db: gpu.upload(&bytes_u16(&bbits))?,
            dbt: {
                let mut t = vec![0u16; k * n];
                for kk in 0..k {
                    for j in 0..n {
                        t[j * k + kk] = bbits[kk * n + j];
                    }
                }
                gpu.upload(&bytes_u16(&t))?
            },
            dbias: gpu.upload(&bytes_f32(&bias))?,
            a,
            b,
            bias,
        })
    }

    fn reference(&self, v: &GemmVariant, i: usize, j: usize) -> f64 {
        let mut s = 0.0f64;
        for kk in 0..self.k {
            s += self.a[i * self.k + kk] as f64 * self.b[kk * self.n + j] as f64;
        }
        if v.bias {
            s += self.bias[j] as f64;
        }
        if v.relu {
            s = s.max(0.0);
        }
        s
    }

    fn run(
        &self,
        gpu: &Gpu,
        kern: &Kernel,
        v: &GemmVariant,
        out: &DeviceBuffer,
    ) -> Result<(), CudaError> {
        gpu.launch(
            kern,
            v.launch(self.m, self.n),
            &[
                Arg::Buf(&self.da),
                Arg::Buf(if v.bt { &self.dbt } else { &self.db }),
                Arg::Buf(out),
                Arg::Buf(&self.dbias),
                Arg::I32(self.m as i32),
                Arg::I32(self.n as i32),
                Arg::I32(self.k as i32),
            ],
        )
    }
}

fn decode_out(bytes: &[u8], bf16: bool) -> Vec<f32> {
    if bf16 {
        bytes
            .chunks_exact(2)
            .map(|c| bf16_value(u16::from_le_bytes([c[0], c[1]])))
            .collect()
    } else {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

/// Runs `v` once on poisoned output and compares with the f64 reference on every element
/// (`full`) or on 4096 random ones. Returns (relative L2 error, unwritten-or-non-finite count).
fn check(
    gpu: &Gpu,
    kern: &Kernel,
    v: &GemmVariant,
    p: &Problem,
    full: bool,
    seed: u64,
) -> Res<(f64, usize)> {
    let esize = if v.out_bf16 { 2 } else { 4 };
    let out = gpu.alloc_filled(p.m * p.n * esize, 0xff)?;
    p.run(gpu, kern, v, &out)?;
    gpu.synchronize()?;
    let got = decode_out(&gpu.download(&out)?, v.out_bf16);
    let bad = got.iter().filter(|x| !x.is_finite()).count();
    let (mut num, mut den) = (0.0f64, 0.0f64);
    let mut cmp = |i: usize, j: usize| {
        let r = p.reference(v, i, j);
        let d = got[i * p.n + j] as f64 - r;
        num += d * d;
        den += r * r;
    };
    if full {
        for i in 0..p.m {
            for j in 0..p.n {
                cmp(i, j);
            }
        }
    } else {
        let mut rng = Rng(seed);
        for _ in 0..4096 {
            let i = ((rng.uniform() * 0.5 + 0.5) * p.m as f32) as usize % p.m;
            let j = ((rng.uniform() * 0.5 + 0.5) * p.n as f32) as usize % p.n;
            cmp(i, j);
        }
    }
    Ok(((num / den).sqrt(), bad))
}

fn tolerance(v: &GemmVariant) -> f64 {
    // The reference uses the same bf16-rounded inputs, so an f32 result differs only by
    // accumulation order; a bf16 result adds one rounding (relative 2^-9).
    if v.out_bf16 { 1e-2 } else { 1e-4 }
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("mlc-gpu: some checks FAILED");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("mlc-gpu: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Res<bool> {
    let first = std::env::args().nth(1);
    if let Some(cmd @ ("run" | "bench")) = first.as_deref() {
        return artifact_cmd(cmd, std::env::args().skip(2).collect());
    }
    let mut args = std::env::args().skip(1);
    let mut dir: Option<PathBuf> = None;
    let mut arch = "sm_90,sm_90a".to_string();
    let mut quick = false;
    let mut only: Option<String> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--arch" => arch = args.next().ok_or("--arch needs a value")?,
            "--quick" => quick = true,
            "--only" => only = Some(args.next().ok_or("--only needs a value")?),
            _ => dir = Some(PathBuf::from(a)),
        }
    }
    let dir =
        dir.ok_or("usage: mlc-gpu PTX_DIR [--arch sm_90[,sm_90a]] [--only SUBSTRING] [--quick]")?;
    let gpu = Gpu::new(0)?;
    let sms = gpu.sm_count()?;
    println!(
        "device: {} (cc {:?}, {sms} SMs)",
        gpu.name()?,
        gpu.compute_capability()?
    );

    // Every PTX file must JIT for this GPU; the variants for `arch` are then run.
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let archs: Vec<String> = arch.split(',').map(str::to_string).collect();
    // (kernel, loaded function, rank of its architecture in `archs`): the lowest rank wins.
    let mut chosen: Vec<(String, Kernel, usize)> = Vec::new();
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "ptx"))
    {
        let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let (name, karch) = stem
            .rsplit_once('.')
            .ok_or_else(|| format!("{}: expected <kernel>.<arch>.ptx", f.display()))?;
        let ptx = std::fs::read_to_string(f)?;
        let k = gpu.load_ptx(&ptx, name)?;
        println!(
            "jit {:<52} {:<7} regs {:>3}  smem {:>6}  local {}",
            name,
            karch,
            k.num_regs()?,
            k.shared_bytes()?,
            k.local_bytes()?
        );
        if let Some(rank) = archs.iter().position(|a| *a == karch) {
            if let GemmKind::Wgmma { smem, .. } = GemmVariant::parse(name)
                .map(|v| v.kind)
                .unwrap_or(GemmKind::Naive)
            {
                k.set_max_dynamic_shared_bytes(smem)?;
            }
            match chosen.iter_mut().find(|(n, _, _)| n == name) {
                Some(slot) if slot.2 > rank => *slot = (name.to_string(), k, rank),
                Some(_) => {}
                None => chosen.push((name.to_string(), k, rank)),
            }
        }
    }
    let kernels: Vec<(String, Kernel)> = chosen
        .into_iter()
        .filter(|(n, _, _)| only.as_ref().is_none_or(|o| n.contains(o.as_str())))
        .map(|(n, k, _)| (n, k))
        .collect();
    let gemms: Vec<(GemmVariant, &Kernel)> = kernels
        .iter()
        .filter_map(|(n, k)| GemmVariant::parse(n).map(|v| (v, k)))
        .collect();
    let mut ok = true;

    // Correctness: every variant on a small problem against the full f64 reference, with a
    // fresh random problem per variant.
    println!("\n== correctness (relative L2 error vs CPU f64 reference on the same bf16 inputs)");
    for (i, (v, k)) in gemms.iter().enumerate() {
        let (m, n, kk) = (256, 512, 384);
        let p = Problem::new(&gpu, m, n, kk, 1000 + i as u64)?;
        let (err, bad) = check(&gpu, k, v, &p, true, 1)?;
        let pass = bad == 0 && err < tolerance(v);
        ok &= pass;
        println!(
            "{:<52} {m}x{n}x{kk} full  err {err:.2e}  non-finite {bad}  {}",
            v.name,
            if pass { "ok" } else { "FAIL" }
        );
    }

    // Timing at the headline sizes and model-like shapes, each with a sampled check.
    let mut shapes: Vec<(usize, usize, usize, &str)> =
        vec![(4096, 4096, 4096, "square"), (8192, 8192, 8192, "square")];
    if !quick {
        shapes.extend([
            (4096, 3072, 768, "BERT-base FFN up, 32x128 tokens"),
            (4096, 12288, 4096, "Llama-7B QKV, 4096 tokens"),
            (4096, 11008, 4096, "Llama-7B MLP up, 4096 tokens"),
            (4096, 4096, 11008, "Llama-7B MLP down, 4096 tokens"),
        ]);
    }
    println!("\n== timing (CUDA events; 10 warm-up, median of 50)");
    let mut table = Vec::new();
    for (si, &(m, n, kk, what)) in shapes.iter().enumerate() {
        let p = Problem::new(&gpu, m, n, kk, 77 + si as u64)?;
        let flops = 2.0 * m as f64 * n as f64 * kk as f64;
        for (v, k) in &gemms {
            if !v.fits(m, n, kk) {
                continue;
            }
            let naive = matches!(v.kind, GemmKind::Naive);
            // Model shapes: only the default mma.sync tile and the wgmma kernels; the naive kernel
            // only where it is quick.
            let default_tile = v.name.contains("128x128x32_w2x4_s3");
            let wgmma = matches!(v.kind, GemmKind::Wgmma { .. });
            if (si >= 2 && !default_tile && !wgmma) || (naive && m * n * kk > 4096usize.pow(3)) {
                continue;
            }
            let (err, bad) = check(&gpu, k, v, &p, false, 5 + si as u64)?;
            let pass = bad == 0 && err < tolerance(v);
            ok &= pass;
            let out = gpu.alloc_filled(m * n * if v.out_bf16 { 2 } else { 4 }, 0)?;
            let (warm, reps) = if naive { (1, 3) } else { (10, 50) };
            let mut t = gpu.time_ms(warm, reps, || p.run(&gpu, k, v, &out))?;
            let ms = median(&mut t) as f64;
            let tflops = flops / (ms * 1e-3) / 1e12;
            let line = format!(
                "{:<52} {:>5}x{:<5}x{:<5} {:>8.3} ms {:>7.1} TFLOP/s {:>5.1}% peak  err {err:.1e} {}  [{what}]",
                v.name,
                m,
                n,
                kk,
                ms,
                tflops,
                100.0 * tflops / H100_BF16_PEAK,
                if pass { "ok" } else { "FAIL" }
            );
            println!("{line}");
            table.push(line);
        }
    }

    // The memory-bound path: y = relu(x * a + b), f32, 16-byte accesses; and a device copy as
    // the bandwidth ceiling.
    if let Some((_, ek)) = kernels
        .iter()
        .find(|(n, _)| n.starts_with("mlc_affine_relu"))
    {
        println!("\n== elementwise");
        let n = (1usize << 28) + 3;
        let mut rng = Rng(4242);
        let x: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
        let (a, b) = (1.75f32, -0.25f32);
        let dx = gpu.upload(&bytes_f32(&x))?;
        let dy = gpu.alloc_filled(n * 4, 0xff)?;
        let block = 256u32;
        let launch = Launch {
            grid: ((sms as u32) * 16, 1, 1),
            block: (block, 1, 1),
            shared_bytes: 0,
        };
        let args = [
            Arg::Buf(&dx),
            Arg::Buf(&dy),
            Arg::I32(n as i32),
            Arg::F32(a),
            Arg::F32(b),
        ];
        gpu.launch(ek, launch, &args)?;
        gpu.synchronize()?;
        let y = decode_out(&gpu.download(&dy)?, false);
        let wrong = x
            .iter()
            .zip(&y)
            .filter(|(xi, yi)| ((*xi * a + b).max(0.0) - **yi).abs() > 1e-6)
            .count();
        ok &= wrong == 0;
        let mut t = gpu.time_ms(5, 30, || gpu.launch(ek, launch, &args))?;
        let ms = median(&mut t) as f64;
        let gbs = (8 * n) as f64 / (ms * 1e-3) / 1e9;
        let line = format!(
            "mlc_affine_relu_f32_v4  n={n}  {ms:.3} ms  {gbs:.0} GB/s (read+write)  wrong {wrong} {}",
            if wrong == 0 { "ok" } else { "FAIL" }
        );
        println!("{line}");
        table.push(line);
        let mut dst = gpu.alloc_filled(n * 4, 0)?;
        let mut t = gpu.time_ms(3, 20, || gpu.copy(&dx, &mut dst))?;
        let ms = median(&mut t) as f64;
        let line = format!(
            "device-to-device copy  {} MiB  {ms:.3} ms  {:.0} GB/s (read+write)",
            (n * 4) >> 20,
            (8 * n) as f64 / (ms * 1e-3) / 1e9
        );
        println!("{line}");
        table.push(line);
    }

    println!("\n== summary");
    for l in &table {
        println!("{l}");
    }
    Ok(ok)
}

/// `mlc-gpu run|bench ARTIFACT ...`.
fn artifact_cmd(cmd: &str, args: Vec<String>) -> Res<bool> {
    use mlc_runtime::NpyArray;
    use mlc_runtime::artifact::Artifact;
    use mlc_runtime::cuda::Executable;
    let mut it = args.into_iter();
    let mut path: Option<PathBuf> = None;
    let mut inputs: Vec<(String, PathBuf)> = Vec::new();
    let mut expect: Vec<(String, PathBuf)> = Vec::new();
    let mut out_dir: Option<PathBuf> = None;
    let (mut warmup, mut reps) = (10usize, 100usize);
    let pair = |s: Option<String>, flag: &str| -> Res<(String, PathBuf)> {
        let s = s.ok_or(format!("{flag} needs NAME=FILE"))?;
        let (n, f) = s
            .split_once('=')
            .ok_or(format!("{flag}: expected NAME=FILE, got {s:?}"))?;
        Ok((n.to_string(), PathBuf::from(f)))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--input" | "-i" => inputs.push(pair(it.next(), "--input")?),
            "--expect" => expect.push(pair(it.next(), "--expect")?),
            "--output-dir" | "-o" => {
                out_dir = Some(PathBuf::from(it.next().ok_or("--output-dir needs DIR")?))
            }
            "--warmup" => warmup = it.next().ok_or("--warmup needs N")?.parse()?,
            "--reps" => reps = it.next().ok_or("--reps needs N")?.parse()?,
            _ if path.is_none() => path = Some(PathBuf::from(a)),
            other => return Err(format!("unexpected argument {other:?}").into()),
        }
    }
    let path = path.ok_or(format!(
        "usage: mlc-gpu {cmd} ARTIFACT --input NAME=FILE.npy ... [--output-dir DIR] [--expect NAME=FILE.npy] [--warmup N] [--reps N]"
    ))?;
    let art = Artifact::read(&path)?;
    let gpu = Gpu::new(0)?;
    let mut exe = Executable::load(gpu, &art)?;
    let plan = exe.plan().clone();
    let mut arrays = Vec::with_capacity(plan.inputs.len());
    for io in &plan.inputs {
        let (_, f) = inputs
            .iter()
            .find(|(n, _)| *n == io.name)
            .ok_or(format!("missing --input {}=FILE", io.name))?;
        arrays.push(NpyArray::read(f)?);
    }
    for (n, _) in &inputs {
        if !plan.inputs.iter().any(|io| io.name == *n) {
            return Err(format!("the model has no input {n:?}").into());
        }
    }
    if cmd == "bench" {
        exe.set_inputs(&arrays)?;
        let mut ms = exe.gpu().time_ms(warmup, reps, || {
            exe.enqueue().map_err(|e| match e {
                mlc_runtime::cuda::ExecError::Cuda(c) => c,
                other => CudaError::Launch {
                    kernel: "(plan)".into(),
                    why: other.to_string(),
                },
            })
        })?;
        let med = median(&mut ms);
        println!(
            "{}: {} steps, median {:.4} ms, min {:.4} ms over {reps} runs",
            path.display(),
            plan.steps.len(),
            med,
            ms.first().copied().unwrap_or(f32::NAN)
        );
        return Ok(true);
    }
    let outs = exe.run(&arrays)?;
    let mut ok = true;
    for (name, arr) in &outs {
        if let Some(dir) = &out_dir {
            std::fs::create_dir_all(dir)?;
            let file: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "._-".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            std::fs::write(dir.join(format!("{file}.npy")), arr.to_bytes())?;
        }
        if let Some((_, f)) = expect.iter().find(|(n, _)| n == name) {
            let want = NpyArray::read(f)?;
            let (g, w) = (to_f64(arr)?, to_f64(&want)?);
            if g.len() != w.len() {
                println!(
                    "{name}: {} elements, reference has {}: FAIL",
                    g.len(),
                    w.len()
                );
                ok = false;
                continue;
            }
            let (lo, hi) = w
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| {
                    (l.min(x), h.max(x))
                });
            let range = (hi - lo).max(f64::MIN_POSITIVE);
            let mut worst = 0.0f64;
            let mut nan = 0usize;
            for (a, b) in g.iter().zip(&w) {
                if a.is_nan() != b.is_nan() {
                    nan += 1;
                } else if !a.is_nan() {
                    worst = worst.max((a - b).abs());
                }
            }
            let rel = worst / range;
            let pass = nan == 0 && rel < 1e-3;
            ok &= pass;
            println!(
                "{name}: range-relative error {rel:.3e} (max abs {worst:.3e}, range {range:.3e}), {nan} NaN mismatches: {}",
                if pass { "ok" } else { "FAIL" }
            );
        } else {
            println!("{name}: {:?} {}", arr.shape, arr.elem.name());
        }
    }
    Ok(ok)
}

/// An array's elements as f64 (booleans as 0/1).
fn to_f64(a: &mlc_runtime::NpyArray) -> Res<Vec<f64>> {
    use mlc_runtime::{ElemType as E, NpyData};
    let NpyData::Bytes(b) = &a.data else {
        return Err("string arrays cannot be compared".into());
    };
    let size = a.elem.size().ok_or("no element size")?;
    Ok(b.chunks_exact(size)
        .map(|c| match a.elem {
            E::F32 => f32::from_le_bytes(c.try_into().expect("4")) as f64,
            E::F64 => f64::from_le_bytes(c.try_into().expect("8")),
            E::F16 => {
                let h = u16::from_le_bytes(c.try_into().expect("2"));
                f16_to_f64(h)
            }
            E::I8 => c[0] as i8 as f64,
            E::U8 | E::Bool => c[0] as f64,
            E::I16 => i16::from_le_bytes(c.try_into().expect("2")) as f64,
            E::U16 => u16::from_le_bytes(c.try_into().expect("2")) as f64,
            E::I32 => i32::from_le_bytes(c.try_into().expect("4")) as f64,
            E::U32 => u32::from_le_bytes(c.try_into().expect("4")) as f64,
            E::I64 => i64::from_le_bytes(c.try_into().expect("8")) as f64,
            E::U64 => u64::from_le_bytes(c.try_into().expect("8")) as f64,
            E::Str => f64::NAN,
        })
        .collect())
}

fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let e = ((h >> 10) & 0x1f) as i32;
    let m = (h & 0x3ff) as f64;
    sign * match e {
        0 => m * 2f64.powi(-24),
        31 if m == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (1.0 + m / 1024.0) * 2f64.powi(e - 15),
    }
}
