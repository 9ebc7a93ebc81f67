//! `mlc compile`: import a model, bind its input shapes, simplify, lower to the kernel IR and
//! compile for an NVIDIA GPU: an artifact (`.mlca`: plan, weights, PTX), or with `--emit` the
//! PTX or LLVM IR of every kernel, or the kernel IR program's text.

use anyhow::{Context, anyhow, bail};
use mlc_nvptx::GpuArch;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    /// The artifact file (default).
    Artifact,
    /// DIR/<kernel>.ptx for every kernel.
    Ptx,
    /// DIR/<kernel>.ll: each kernel's LLVM IR before optimization.
    Llvm,
    /// The kernel IR program as text, to stdout or -o FILE.
    Kir,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model.
    pub model: PathBuf,
    /// The GPU architecture: sm_80, sm_90 (portable Hopper) or sm_90a.
    #[arg(long, default_value = "sm_90")]
    pub target: String,
    /// The output: the artifact file (default: <model stem>.mlca in the current directory), or
    /// the directory for --emit ptx|llvm.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// What to write.
    #[arg(long, value_enum, default_value = "artifact")]
    pub emit: Emit,
    /// The shape of an input with symbolic dims, as NAME=1x3x224x224. Inputs with static shapes
    /// need none.
    #[arg(long = "shape", value_name = "NAME=DIMS", value_parser = parse_shape)]
    pub shapes: Vec<(String, Vec<usize>)>,
    /// Print how long each phase took on stderr.
    #[arg(long)]
    pub time_passes: bool,
    #[command(flatten)]
    pub opt: crate::optimize::OptFlags,
    #[command(flatten)]
    pub explain: crate::optimize::ExplainFlags,
}

fn parse_shape(s: &str) -> Result<(String, Vec<usize>), String> {
    let (name, dims) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=DIMS, got {s:?}"))?;
    let dims: Result<Vec<usize>, _> = if dims.is_empty() {
        Ok(Vec::new())
    } else {
        dims.split(['x', ',']).map(str::parse).collect()
    };
    match dims {
        Ok(d) if !name.is_empty() => Ok((name.to_string(), d)),
        _ => Err(format!(
            "expected NAME=DIMS such as x=1x3x224x224, got {s:?}"
        )),
    }
}

pub fn main(args: &Args) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let phase = |name: &str, since: &mut Instant| {
        if args.time_passes {
            eprintln!("{name}: {:.1} ms", since.elapsed().as_secs_f64() * 1e3);
        }
        *since = Instant::now();
    };
    let mut since = t0;
    let arch: GpuArch = args.target.parse()?;
    let mut model = mlc_onnx::load(&args.model)?;
    phase("import", &mut since);
    let graph = &mut model.graph;
    for (name, _) in &args.shapes {
        if !graph.inputs.iter().any(|p| &p.name == name) {
            let names: Vec<&str> = graph.inputs.iter().map(|p| p.name.as_str()).collect();
            bail!("--shape names {name:?}, which is not an input of the model (inputs: {names:?})");
        }
    }
    let mut bindings = Vec::new();
    for port in &graph.inputs {
        let ty = graph.ty(port.value);
        let shape = match args.shapes.iter().find(|(n, _)| n == &port.name) {
            Some((_, s)) => s.clone(),
            None => ty.static_shape().ok_or_else(|| {
                anyhow!(
                    "input {:?} has symbolic dims ({ty}); give its shape with --shape {}=DIMS",
                    port.name,
                    port.name
                )
            })?,
        };
        bindings.push((port.name.clone(), shape));
    }
    let level = args.opt.level(mlc_passes::pipeline::Level::O1);
    let target = crate::optimize::gpu_target(&args.target);
    let report = crate::optimize::prepare(graph, &bindings, level, target, args.time_passes)?;
    phase("simplify + optimize", &mut since);
    let program = mlc_kir::lower_graph(graph).context("lowering to the kernel IR failed")?;
    phase("lower", &mut since);
    if args.explain.explain {
        let text = crate::optimize::explain(&report, &program, args.explain.json)?;
        return crate::print_stdout(&text);
    }
    let stem = args
        .model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    match args.emit {
        Emit::Kir => {
            let text = mlc_kir::print_program(&program);
            match &args.output {
                Some(p) => write(p, text.as_bytes())?,
                None => crate::print_stdout(&text)?,
            }
        }
        Emit::Llvm => {
            let dir = out_dir(args, &stem, "llvm")?;
            for (name, ir) in mlc_nvptx::emit_program_llvm(&program, arch)? {
                write(&dir.join(format!("{name}.ll")), ir.as_bytes())?;
            }
        }
        Emit::Ptx => {
            let dir = out_dir(args, &stem, "ptx")?;
            let compiled = mlc_nvptx::compile_program(&program, arch)?;
            phase("codegen", &mut since);
            for (name, ptx) in &compiled.kernels {
                write(&dir.join(format!("{name}.ptx")), ptx.as_bytes())?;
            }
        }
        Emit::Artifact => {
            let compiled = mlc_nvptx::compile_program(&program, arch)?;
            phase("codegen", &mut since);
            let out = args
                .output
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{stem}.mlca")));
            let bytes = compiled.artifact()?.to_bytes()?;
            write(&out, &bytes)?;
            crate::print_stdout(&format!(
                "{}: {} kernels, {} steps, {} bytes of weights, {} -> {}\n",
                args.model.display(),
                compiled.kernels.len(),
                compiled.plan.steps.len(),
                compiled.weights.len(),
                arch,
                out.display()
            ))?;
        }
    }
    phase("write", &mut since);
    Ok(())
}

fn out_dir(args: &Args, stem: &str, what: &str) -> anyhow::Result<PathBuf> {
    let dir = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{stem}-{what}")));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}
