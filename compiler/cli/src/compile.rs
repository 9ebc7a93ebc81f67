//! `mlc compile`: import a model, bind its input shapes, simplify, lower to the kernel IR and
//! compile for the CPU (`--target x86_64|native`: an artifact holding the plan, the weights and
//! a shared object) or an NVIDIA GPU (`--target sm_80|sm_90|sm_90a`: plan, weights, PTX); with
//! `--emit` a stage instead: the graph IR, the kernel IR, the CLIF, PTX or LLVM IR.

use anyhow::{Context, anyhow, bail};
use mlc_nvptx::GpuArch;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    /// The artifact file (default).
    Artifact,
    /// The graph IR after simplification, to stdout or -o FILE.
    Ir,
    /// The Cranelift IR of every kernel (CPU targets), to stdout or -o FILE.
    Clif,
    /// DIR/<kernel>.ptx for every kernel.
    Ptx,
    /// DIR/<kernel>.ll: each kernel's LLVM IR before optimization.
    Llvm,
    /// The kernel IR program as text, to stdout or -o FILE.
    #[value(alias = "kernel-ir")]
    Kir,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model.
    pub model: PathBuf,
    /// What to compile for: x86_64 (any x86-64 CPU with SSE4.2, AVX and FMA; contractions dispatch
    /// to AVX-512/AVX2 kernels at run time), native (this machine; today the same code as
    /// x86_64), or an NVIDIA GPU: sm_80, sm_90 (portable Hopper) or sm_90a.
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
    /// The size of a named symbolic dim (as in the model's input types, e.g. seq) in every
    /// input that has it, as NAME=SIZE. Several sizes, NAME=32,64,128, compile one variant
    /// per size into the same artifact (CPU targets), which then runs inputs of any of those
    /// sizes without recompiling.
    #[arg(long = "dim", value_name = "NAME=SIZES", value_parser = crate::pipeline::parse_dim)]
    pub dims: Vec<(String, Vec<usize>)>,
    /// The value of an input that determines a shape (a Reshape target, Resize scales, a Range
    /// bound, ...), from a .npy or .pb file: the artifact is compiled for this value and refuses
    /// any other. Inputs that determine no shape are not affected.
    #[arg(short, long = "input", value_name = "NAME=FILE", value_parser = crate::run::parse_input)]
    pub inputs: Vec<(String, PathBuf)>,
    /// Print how long each phase took on stderr.
    #[arg(long)]
    pub time_passes: bool,
    /// Print a line on stderr as each phase starts (default: when stderr is a terminal).
    #[arg(long)]
    pub progress: bool,
    #[command(flatten)]
    pub opt: crate::optimize::OptFlags,
    #[command(flatten)]
    pub explain: crate::optimize::ExplainFlags,
}

fn parse_shape(s: &str) -> Result<(String, Vec<usize>), String> {
    crate::pipeline::parse_shape(s)
}

/// Says whether the artifact runs bigger batches without recompiling.
fn batch_line(batch: &crate::pipeline::BatchVerdict) -> String {
    match batch {
        Ok((inputs, unit)) => format!(
            "batch: any multiple of {unit} along axis 0 of {} runs as slices, without recompiling\n",
            inputs.join(", ")
        ),
        Err(why) => format!("batch: fixed at the compiled shapes ({why})\n"),
    }
}

/// What `--target` names.
enum Target {
    Cpu,
    Gpu(GpuArch),
}

fn target(name: &str) -> anyhow::Result<Target> {
    Ok(match name {
        "x86_64" | "x86-64" | "native" => Target::Cpu,
        _ => Target::Gpu(
            name.parse()
                .map_err(|e| anyhow!("{e}; CPU targets are x86_64 and native"))?,
        ),
    })
}

pub fn main(args: &Args) -> anyhow::Result<()> {
    let mut phases = crate::pipeline::Phases::new(args.time_passes)
        .with_progress(crate::pipeline::progress_wanted(args.progress));
    let target = target(&args.target)?;
    phases.begin(&format!("importing {}", args.model.display()));
    let mut model = mlc_onnx::load(&args.model)?;
    phases.done("import");
    let values = crate::pipeline::read_values(&model.graph, &args.inputs)?;
    let variants = crate::pipeline::variant_shapes(&model.graph, &args.shapes, &args.dims)?;
    if variants.len() > 1 {
        return compile_variants(args, &model.graph, &variants, &values, &target, phases);
    }
    let graph = &mut model.graph;
    let bindings = crate::pipeline::bind_shapes(
        graph,
        &crate::pipeline::with_value_shapes(&variants[0], &values),
    )?;
    let level = args.opt.level(mlc_passes::pipeline::Level::O1);
    let cost_model = match &target {
        Target::Cpu => mlc_passes::egraph::TargetInfo::x86_64(),
        Target::Gpu(_) => crate::optimize::gpu_target(&args.target),
    };
    let (program, report, batch) =
        crate::pipeline::lower(graph, &bindings, &values, level, cost_model, &mut phases)?;
    if args.explain.explain {
        let mut text = crate::optimize::explain(&report, &program, args.explain.json)?;
        if matches!(target, Target::Cpu) {
            // The CPU backend's own kernel-IR passes, run before code generation.
            let (_, done) = mlc_cpu::prepare(&program, mlc_cpu::Options::default());
            let (f, tables, views, placed) = (done.epilogues, done.tables, done.views, done.concat);
            if args.explain.json {
                let mut v: serde_json::Value =
                    serde_json::from_str(&text).context("cannot read back the explanation")?;
                if let Some(o) = v.as_object_mut() {
                    o.insert(
                        "cpu_epilogues".into(),
                        serde_json::json!({
                            "requant": f.requant,
                            "requant_tables": f.requant_tables,
                            "requant_split": f.requant_split,
                            "tails": f.tails,
                            "activations": f.gelu,
                            "tail_activations": f.tail_activations
                        }),
                    );
                    o.insert("cpu_byte_tables".into(), serde_json::json!(tables));
                    o.insert(
                        "cpu_copies".into(),
                        serde_json::json!({
                            "slice_views": views,
                            "concat_parts_in_place": placed.parts,
                            "concat_steps_removed": placed.steps,
                        }),
                    );
                    o.insert(
                        "batch".into(),
                        match &batch {
                            Ok((inputs, unit)) => {
                                serde_json::json!({"sliced": true, "inputs": inputs, "unit": unit})
                            }
                            Err(why) => serde_json::json!({"sliced": false, "reason": why}),
                        },
                    );
                }
                text =
                    serde_json::to_string_pretty(&v).context("cannot serialize the explanation")?;
                text.push('\n');
            } else {
                text.push_str(&format!(
                    "CPU epilogues: {} requantizing ({} with an activation table, {} split at the byte) \
                     and {} elementwise tails fused into contractions ({} of them the contraction's \
                     activation, {} ending in an activation the runtime applies)\n",
                    f.requant,
                    f.requant_tables,
                    f.requant_split,
                    f.tails,
                    f.gelu,
                    f.tail_activations
                ));
                text.push_str(&format!(
                    "CPU byte tables: {tables} functions of one byte (quantized activations) computed as 256-entry tables\n"
                ));
                text.push_str(&format!(
                    "CPU copies elided: {views} contiguous slices made views of their source; \
                     {} concatenation parts written in place by their producers ({} copy steps removed)\n",
                    placed.parts, placed.steps
                ));
                text.push_str(&batch_line(&batch));
            }
        }
        return crate::print_stdout(&text);
    }
    let stem = stem(args);
    let text_out = |text: String| -> anyhow::Result<()> {
        match &args.output {
            Some(p) => write(p, text.as_bytes()),
            None => crate::print_stdout(&text),
        }
    };
    let arch = match (&target, args.emit) {
        (_, Emit::Kir) => return text_out(mlc_kir::print_program(&program)),
        (_, Emit::Ir) => return text_out(mlc_ir::print_graph(graph)),
        (Target::Cpu, Emit::Clif) => {
            return text_out(mlc_cpu::program_clif(
                &program,
                mlc_cpu::Options::default(),
            )?);
        }
        (Target::Cpu, Emit::Artifact) => {
            phases.begin("generating code and linking");
            let art = mlc_cpu::compile_artifact(&program, mlc_cpu::Options::default())?;
            phases.done("codegen + link");
            let out = write_artifact(args, &stem, &art, &mut phases)?;
            return crate::print_stdout(&format!(
                "{}: {} kernels, {} steps, {} bytes of weights, {} bytes of code, x86_64 -> {}\n",
                args.model.display(),
                program.kernels.len(),
                program.steps.len(),
                art.section(mlc_runtime::cpu::model::WEIGHTS_SECTION)?
                    .data
                    .len(),
                art.section(mlc_runtime::cpu::model::CODE_SECTION)?
                    .data
                    .len(),
                out.display()
            ));
        }
        (Target::Cpu, e) => bail!(
            "--emit {} is for GPU targets; a CPU target emits artifact, ir, kir or clif",
            format!("{e:?}").to_lowercase()
        ),
        (Target::Gpu(_), Emit::Clif) => {
            bail!("--emit clif is for CPU targets (--target x86_64)")
        }
        (Target::Gpu(a), _) => *a,
    };
    match args.emit {
        Emit::Kir | Emit::Ir | Emit::Clif => unreachable!("handled above"),
        Emit::Llvm => {
            let dir = out_dir(args, &stem, "llvm")?;
            for (name, ir) in mlc_nvptx::emit_program_llvm(&program, arch)? {
                write(&dir.join(format!("{name}.ll")), ir.as_bytes())?;
            }
        }
        Emit::Ptx => {
            let dir = out_dir(args, &stem, "ptx")?;
            phases.begin("generating PTX");
            let compiled = mlc_nvptx::compile_program(&program, arch)?;
            phases.done("codegen");
            for (name, ptx) in &compiled.kernels {
                write(&dir.join(format!("{name}.ptx")), ptx.as_bytes())?;
            }
        }
        Emit::Artifact => {
            phases.begin("generating PTX");
            let compiled = mlc_nvptx::compile_program(&program, arch)?;
            phases.done("codegen");
            let out = args
                .output
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{stem}.mlca")));
            let bytes = compiled.artifact()?.to_bytes()?;
            write_atomically(&out, &bytes)?;
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
    phases.done("write");
    Ok(())
}

/// `mlc compile` for several input shapes: one CPU artifact holding a variant per shape set.
fn compile_variants(
    args: &Args,
    graph: &mlc_ir::Graph,
    variants: &[Vec<(String, Vec<usize>)>],
    values: &[(String, mlc_ir::Tensor)],
    target: &Target,
    mut phases: crate::pipeline::Phases,
) -> anyhow::Result<()> {
    if !matches!(target, Target::Cpu) {
        bail!(
            "several sizes of a --dim make an artifact of several variants, which only CPU targets have; give one size for --target {}",
            args.target
        );
    }
    if args.emit != Emit::Artifact || args.explain.explain {
        bail!("--emit and --explain show one compilation: give each --dim one size");
    }
    let level = args.opt.level(mlc_passes::pipeline::Level::O1);
    let programs = crate::pipeline::lower_variants(graph, variants, values, level, &mut phases)?;
    phases.begin(&format!(
        "generating code and linking {} variants",
        programs.len()
    ));
    let art = mlc_cpu::compile_variants(&programs, mlc_cpu::Options::default())?;
    phases.done("codegen + link");
    let out = write_artifact(args, &stem(args), &art, &mut phases)?;
    let code: usize = art
        .sections
        .iter()
        .filter(|s| s.kind == "shared-object")
        .map(|s| s.data.len())
        .sum();
    crate::print_stdout(&format!(
        "{}: {} variants ({}), {} bytes of weights (shared), {} bytes of code, x86_64 -> {}\n",
        args.model.display(),
        programs.len(),
        args.dims
            .iter()
            .map(|(n, v)| format!(
                "{n}={}",
                v.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
            ))
            .collect::<Vec<_>>()
            .join(" "),
        art.section(mlc_runtime::cpu::model::WEIGHTS_SECTION)?
            .data
            .len(),
        code,
        out.display()
    ))
}

/// The model file's name without its extension: the default name of what is written.
fn stem(args: &Args) -> String {
    args.model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}

/// Writes a CPU artifact to `-o` (default `<stem>.mlca`) and returns the path.
fn write_artifact(
    args: &Args,
    stem: &str,
    art: &mlc_runtime::artifact::Artifact,
    phases: &mut crate::pipeline::Phases,
) -> anyhow::Result<PathBuf> {
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{stem}.mlca")));
    phases.begin(&format!("writing {}", out.display()));
    write_atomically(&out, &art.to_bytes()?)?;
    phases.done("write");
    Ok(out)
}

fn out_dir(args: &Args, stem: &str, what: &str) -> anyhow::Result<PathBuf> {
    let dir = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{stem}-{what}")));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Writes through a temporary file beside `path` and renames it, so a failure never leaves a
/// half-written artifact.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "artifact".into());
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow!("cannot write {}: {e}", path.display())
    })
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}
