//! `mlc bench`: latency of a compiled model (an artifact, or an `.onnx` compiled on the fly into
//! the same in-memory artifact) on this CPU: warm-up runs, then timed runs; prints median, p90,
//! min and mean latency and memory (arena, weights, peak resident set), or JSON with `--json`.
//!
//! Inputs come from files (`--input NAME=FILE`), or are generated with shapes from the model
//! or `--shape NAME=DIMS`: floats uniform in [-1, 1) from a fixed seed, integers 1 (a valid
//! index for any gather on a dim of 2 or more), bools true. Timing covers `run` only: inputs in,
//! outputs out, as an application calls it.

use crate::pipeline::{self, Phases};
use crate::tensor_io;
use anyhow::{Context, bail};
use mlc_runtime::cpu::CpuModel;
use mlc_runtime::npy::{ElemType, NpyArray};
use mlc_runtime::plan::PlanIo;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// An ONNX model (compiled for this CPU first) or a CPU artifact (.mlca).
    pub model: PathBuf,
    /// Threads per run (default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Timed runs.
    #[arg(long, value_name = "K", default_value_t = 50)]
    pub iters: usize,
    /// Keep timing runs until at least this many seconds have passed (and at least --iters
    /// runs): a sub-millisecond model needs thousands of runs for a stable median, the
    /// protocol `../shared/models/peers.py` uses for ONNX Runtime and tract.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    pub min_time: f64,
    /// Untimed runs first.
    #[arg(long, value_name = "W", default_value_t = 5)]
    pub warmup: usize,
    /// An input's value from a .npy or .pb file (instead of generated data).
    #[arg(short, long = "input", value_name = "NAME=FILE", value_parser = crate::run::parse_input)]
    pub inputs: Vec<(String, PathBuf)>,
    /// The shape of an input with symbolic dims, as NAME=1x3x224x224 (.onnx models).
    #[arg(long = "shape", value_name = "NAME=DIMS", value_parser = pipeline::parse_shape)]
    pub shapes: Vec<(String, Vec<usize>)>,
    /// The size of a named symbolic dim in every input that has it, as NAME=SIZE (.onnx
    /// models; see `mlc compile --dim`).
    #[arg(long = "dim", value_name = "NAME=SIZE", value_parser = pipeline::parse_dim)]
    pub dims: Vec<(String, Vec<usize>)>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Print compile phase times on stderr.
    #[arg(long)]
    pub time_passes: bool,
    /// Also time every step and print the N most expensive kernels (by total time over the
    /// timed runs) on stderr.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "20")]
    pub profile: Option<usize>,
    #[command(flatten)]
    pub opt: crate::optimize::OptFlags,
}

#[derive(Debug, Serialize)]
struct Report {
    model: String,
    threads: usize,
    iters: usize,
    median_ms: f64,
    p90_ms: f64,
    min_ms: f64,
    mean_ms: f64,
    arena_bytes: u64,
    weights_bytes: u64,
    peak_rss_bytes: Option<u64>,
    compile_ms: Option<f64>,
    /// The shapes the runs took, by input name (for an artifact of several variants: which
    /// one ran).
    input_shapes: std::collections::BTreeMap<String, Vec<usize>>,
}

/// The process's peak resident set (`VmHWM`), in bytes, where /proc has it.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Generated input data for `io` (see the module docs); an input the artifact was specialized
/// to gets its one accepted value.
fn generated(io: &mlc_runtime::plan::PlanIo) -> anyhow::Result<NpyArray> {
    let elem = ElemType::from_name(&io.dtype).with_context(|| {
        format!(
            "input {:?} has type {}, which bench cannot generate",
            io.name, io.dtype
        )
    })?;
    if let Some(v) = &io.value {
        return Ok(NpyArray::from_le_bytes(elem, io.shape.clone(), v.clone())?);
    }
    let n: usize = io.shape.iter().product();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 40) as f64 / (1u64 << 24) as f64) * 2.0 - 1.0
    };
    let mut bytes = Vec::with_capacity(n * elem.size().unwrap_or(1));
    for _ in 0..n {
        match elem {
            ElemType::F32 => bytes.extend_from_slice(&(next() as f32).to_le_bytes()),
            ElemType::F64 => bytes.extend_from_slice(&next().to_le_bytes()),
            ElemType::F16 => bytes.extend_from_slice(&half_bits(next() as f32).to_le_bytes()),
            ElemType::Bool | ElemType::I8 | ElemType::U8 => bytes.push(1),
            ElemType::I16 | ElemType::U16 => bytes.extend_from_slice(&1u16.to_le_bytes()),
            ElemType::I32 | ElemType::U32 => bytes.extend_from_slice(&1u32.to_le_bytes()),
            ElemType::I64 | ElemType::U64 => bytes.extend_from_slice(&1u64.to_le_bytes()),
            ElemType::Str => bail!("input {:?} is a string tensor", io.name),
        }
    }
    Ok(NpyArray::from_le_bytes(elem, io.shape.clone(), bytes)?)
}

/// An f16 close to `x` in [-1, 1) (truncating the mantissa is fine for benchmark data).
fn half_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    if exp <= 0 {
        return sign;
    }
    sign | ((exp as u16) << 10) | ((b >> 13) & 0x3ff) as u16
}

pub fn main(args: &Args) -> anyhow::Result<()> {
    let path = args.model.display().to_string();
    let mut phases = Phases::new(args.time_passes).with_progress(pipeline::progress_wanted(false));
    let t0 = Instant::now();
    let is_artifact = pipeline::is_artifact(&args.model);
    let (art, compile_ms) = if is_artifact {
        // An artifact takes --shape only for a multiple of a batch it runs as slices (checked
        // against the model below).
        (mlc_runtime::artifact::Artifact::read(&args.model)?, None)
    } else {
        if !args.json {
            eprintln!("compiling {path} for this CPU ...");
        }
        let level = args.opt.level(mlc_passes::pipeline::Level::O1);
        // Given values specialize the inputs that determine shapes (as `mlc run` does).
        let mut values = Vec::with_capacity(args.inputs.len());
        for (name, file) in &args.inputs {
            let t = tensor_io::read_tensor(file).with_context(|| format!("input {name:?}"))?;
            values.push((name.clone(), t));
        }
        if let Some((n, _)) = args.dims.iter().find(|(_, v)| v.len() != 1) {
            bail!("--dim {n}: a benchmark runs one size; give one");
        }
        let art = pipeline::compile_cpu(
            &args.model,
            (&args.shapes, &args.dims),
            &values,
            level,
            &mut phases,
        )?;
        (art, Some(t0.elapsed().as_secs_f64() * 1e3))
    };
    let model = CpuModel::from_artifact(&art).with_context(|| format!("cannot load {path}"))?;
    let weights_bytes = art
        .section(mlc_runtime::cpu::model::WEIGHTS_SECTION)
        .map(|s| s.data.len() as u64)
        .unwrap_or(0);
    drop(art);
    // An artifact's --dim picks the variant whose named dims have those sizes.
    if is_artifact
        && let Some((n, _)) = args.dims.iter().find(|(n, v)| {
            v.len() != 1
                || !model
                    .inputs()
                    .iter()
                    .any(|io| io.dims.iter().flatten().any(|d| d == n))
        })
    {
        bail!("--dim {n}: give one size of a dim that {path}'s inputs name (see mlc inspect)");
    }
    for (name, _) in args.inputs.iter().map(|(n, _)| (n, ())).chain(
        args.shapes
            .iter()
            .filter(|_| is_artifact)
            .map(|(n, _)| (n, ())),
    ) {
        if !model.inputs().iter().any(|io| &io.name == name) {
            bail!("{path} has no input named {name:?}");
        }
    }
    // An artifact of several variants: the first whose inputs take the --shape sizes.
    let ports =
        model
            .variants()
            .iter()
            .map(|e| &e.plan().inputs)
            .find(|ports| {
                !is_artifact
                    || (args.shapes.iter().all(|(n, shape)| {
                        ports.iter().any(|io| &io.name == n && io.accepts(shape))
                    }) && args.dims.iter().all(|(n, v)| {
                        ports
                            .iter()
                            .all(|io| io.dim(n).is_none_or(|size| v.first() == Some(&size)))
                    }))
            });
    let ports = match ports {
        Some(p) => p,
        None if is_artifact && !args.dims.is_empty() => {
            let variants: Vec<String> = model
                .variants()
                .iter()
                .map(|e| {
                    let p: Vec<String> = e.plan().inputs.iter().map(PlanIo::describe).collect();
                    p.join(" ")
                })
                .collect();
            bail!(
                "{path} has no variant with those --dim sizes; it has: {}",
                variants.join("; ")
            );
        }
        None => &model.plan().inputs,
    };
    let mut inputs = Vec::with_capacity(ports.len());
    for io in ports {
        let arr = match args.inputs.iter().find(|(n, _)| n == &io.name) {
            Some((_, file)) => {
                let t =
                    tensor_io::read_tensor(file).with_context(|| format!("input {:?}", io.name))?;
                tensor_io::tensor_to_npy(&t)?.0
            }
            None => match args.shapes.iter().find(|(n, _)| n == &io.name) {
                Some((_, shape)) if is_artifact => {
                    if !io.accepts(shape) {
                        let compiled: Vec<String> = model
                            .input_ports(&io.name)
                            .map(|p| format!("{:?}", p.shape))
                            .collect();
                        bail!(
                            "--shape {}: {path} is compiled for {}{}",
                            io.name,
                            compiled.join(" or "),
                            if io.batch {
                                " (or a multiple of it along axis 0)"
                            } else {
                                ""
                            }
                        );
                    }
                    let mut io = io.clone();
                    io.shape = shape.clone();
                    generated(&io)?
                }
                _ => generated(io)?,
            },
        };
        inputs.push(arr);
    }
    let threads = args
        .threads
        .unwrap_or_else(crate::run::default_threads)
        .max(1);
    for _ in 0..args.warmup {
        model
            .run(&inputs, threads)
            .with_context(|| format!("running {path} failed"))?;
    }
    let want = args.iters.max(1);
    let mut times = Vec::with_capacity(want);
    let start = Instant::now();
    while times.len() < want || start.elapsed().as_secs_f64() < args.min_time {
        let t = Instant::now();
        let out = model
            .run(&inputs, threads)
            .with_context(|| format!("running {path} failed"))?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        drop(out);
    }
    let iters = times.len();
    if let Some(top) = args.profile {
        print_profile(&model, &inputs, threads, iters, top)?;
    }
    times.sort_by(f64::total_cmp);
    let pick = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    let r = Report {
        model: path.clone(),
        threads,
        iters,
        median_ms: pick(0.5),
        p90_ms: pick(0.9),
        min_ms: times[0],
        mean_ms: times.iter().sum::<f64>() / times.len() as f64,
        arena_bytes: model.select(&inputs)?.arena_bytes(),
        weights_bytes,
        peak_rss_bytes: peak_rss(),
        compile_ms,
        input_shapes: ports
            .iter()
            .zip(&inputs)
            .map(|(io, x)| (io.name.clone(), x.shape.clone()))
            .collect(),
    };
    if args.json {
        return crate::print_stdout(&format!("{}\n", serde_json::to_string(&r)?));
    }
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    let mut s = format!(
        "{path}: {threads} thread{}, {iters} runs after {} warm-up\n  latency  median {:.3} ms  p90 {:.3} ms  min {:.3} ms  mean {:.3} ms\n  memory   arena {:.1} MiB  weights {:.1} MiB",
        if threads == 1 { "" } else { "s" },
        args.warmup,
        r.median_ms,
        r.p90_ms,
        r.min_ms,
        r.mean_ms,
        mb(r.arena_bytes),
        mb(r.weights_bytes),
    );
    if let Some(p) = r.peak_rss_bytes {
        s.push_str(&format!("  peak RSS {:.1} MiB", mb(p)));
    }
    if let Some(c) = compile_ms {
        s.push_str(&format!("\n  compile  {c:.0} ms"));
    }
    if model.variants().len() > 1 {
        s.push_str(&format!(
            "\n  variant  {} (of {} in the artifact)",
            pipeline::shapes_text(&r.input_shapes),
            model.variants().len()
        ));
    }
    s.push('\n');
    crate::print_stdout(&s)
}

/// Times every step over `iters` more runs and prints the `top` most expensive steps.
fn print_profile(
    model: &CpuModel,
    inputs: &[NpyArray],
    threads: usize,
    iters: usize,
    top: usize,
) -> anyhow::Result<()> {
    let bytes: Vec<&[u8]> = inputs
        .iter()
        .map(|x| match &x.data {
            mlc_runtime::npy::NpyData::Bytes(b) => Ok(b.as_slice()),
            _ => Err(anyhow::anyhow!("string inputs cannot be profiled")),
        })
        .collect::<anyhow::Result<_>>()?;
    let mut prof = Vec::new();
    let exec = model.select(inputs)?;
    for _ in 0..iters {
        exec.run_bytes_profiled(&bytes, threads, Some(&mut prof))?;
    }
    let plan = exec.plan();
    let total: f64 = prof.iter().sum();
    let mut order: Vec<usize> = (0..prof.len()).collect();
    order.sort_by(|&a, &b| prof[b].total_cmp(&prof[a]));
    let mut s = format!(
        "profile: {} steps, {:.3} ms per run in steps\n",
        prof.len(),
        total * 1e3 / iters as f64
    );
    for &i in order.iter().take(top) {
        let st = &plan.steps[i];
        let k = &plan.kernels[st.kernel];
        s.push_str(&format!(
            "  {:>8.3} ms {:>5.1}%  step {i:>3} {}{}\n",
            prof[i] * 1e3 / iters as f64,
            100.0 * prof[i] / total.max(1e-12),
            k.name,
            st.origin
                .as_ref()
                .map(|o| format!("  ({o})"))
                .unwrap_or_default()
        ));
    }
    eprint!("{s}");
    Ok(())
}
