//! `mlc run`: run a model (an `.onnx`, compiled on the fly, or an artifact from `mlc compile
//! --target x86_64`) on inputs from files and write one `.npy` file per output. `--reference`
//! runs mlc's reference interpreter instead of compiled code.
//!
//! Everything that can be checked before running is checked first (unknown, duplicate and
//! missing inputs; input dtypes and shapes, including symbolic dims shared between inputs), and
//! outputs are written only after all of them are computed, atomically, so a failed run leaves
//! the output directory as it was.

use crate::pipeline::Phases;
use crate::tensor_io;
use anyhow::{Context, anyhow, bail};
use mlc_ir::{Dim, Graph, Tensor, TensorType};
use mlc_runtime::plan::PlanIo;
use std::collections::HashMap;
use std::fmt::Write;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model (.onnx; external data is read from beside it), or a CPU artifact
    /// (.mlca from `mlc compile --target x86_64`).
    pub model: PathBuf,
    /// A graph input and the file holding its value: a NumPy .npy file or an ONNX TensorProto
    /// .pb file. Give one per graph input; the name ends at the first '='.
    #[arg(short, long = "input", value_name = "NAME=FILE", value_parser = parse_input)]
    pub inputs: Vec<(String, PathBuf)>,
    /// Where to write <output>.npy for every graph output: the output's name with each character
    /// outside [A-Za-z0-9._-] replaced by '_' (and _2, _3, ... appended should two names then
    /// collide). Created if missing.
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    pub output_dir: PathBuf,
    /// Print how long each phase took (import, simplify, interpret, write) on stderr.
    #[arg(long)]
    pub time_passes: bool,
    /// What executes the model: compiled machine code (`cpu`), the graph lowered to kernel IR
    /// and run by its evaluator (`kir`), the reference interpreter (`interp`), or `auto`
    /// (default): compiled code, or the interpreter (with a note on stderr) when the model uses
    /// an op the compiler does not support yet.
    #[arg(long, value_enum, default_value_t = Engine::Auto)]
    pub engine: Engine,
    /// Run mlc's reference interpreter (exact, slow): the same as `--engine interp`.
    #[arg(long, conflicts_with = "engine")]
    pub reference: bool,
    /// Threads for `--engine cpu` (default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Print a compilation stage of the model (after binding the inputs' shapes) on stdout
    /// instead of running it.
    #[arg(long, value_enum, value_name = "STAGE")]
    pub emit: Option<Emit>,
    #[command(flatten)]
    pub opt: crate::optimize::OptFlags,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Auto,
    Cpu,
    Kir,
    Interp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    /// The graph IR after simplification.
    Ir,
    /// The kernel IR program.
    KernelIr,
    /// The Cranelift IR of every kernel.
    Clif,
}

pub(crate) fn parse_input(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => {
            Ok((name.to_string(), PathBuf::from(file)))
        }
        _ => Err(format!("expected NAME=FILE, got {s:?}")),
    }
}

pub fn main(args: &Args) -> anyhow::Result<()> {
    let mut timer = Phases::new(args.time_passes);
    tensor_io::check_output_dir(&args.output_dir)?;
    check_duplicates(&args.inputs)?;
    if crate::pipeline::is_artifact(&args.model) {
        return run_artifact(args, &mut timer);
    }
    let engine = if args.reference {
        Engine::Interp
    } else {
        args.engine
    };

    let mut model = mlc_onnx::load(&args.model)?;
    timer.done("import");
    let graph = &mut model.graph;
    let model_name = args.model.display().to_string();

    check_names(graph, &args.inputs, &model_name)?;
    // The first unreadable file stops the run: inputs can be big, and the error names it.
    let mut inputs: Vec<(String, Tensor)> = Vec::with_capacity(args.inputs.len());
    for (name, file) in &args.inputs {
        let t = tensor_io::read_tensor(file).with_context(|| format!("input {name:?}"))?;
        inputs.push((name.clone(), t));
    }
    check_fit(graph, &inputs, &args.inputs)?;
    timer.done("read inputs");

    let bindings: Vec<(String, Vec<usize>)> = inputs
        .iter()
        .map(|(n, t)| (n.clone(), t.shape().to_vec()))
        .collect();
    // The interpreter is the reference: it runs the graph as imported unless asked otherwise.
    let level = args.opt.level(match engine {
        Engine::Interp => mlc_passes::pipeline::Level::O0,
        _ => mlc_passes::pipeline::Level::O1,
    });
    // The interpreter, the reference, gets no values baked in.
    let values: &[(String, Tensor)] = match engine {
        Engine::Interp => &[],
        _ => &inputs,
    };
    let guards = simplify(graph, &bindings, values, level, &mut timer)?;

    if let Some(stage) = args.emit {
        return emit(graph, stage);
    }
    let outputs = match engine {
        Engine::Interp => {
            let out = mlc_interp::run(graph, &inputs)
                .map_err(|e| anyhow!("running {model_name} failed: {e}"))?;
            timer.done("interpret");
            out
        }
        Engine::Auto => match mlc_kir::lower_graph(graph) {
            Ok(_) => run_lowered(
                graph,
                &inputs,
                &guards,
                Engine::Cpu,
                args.threads,
                &mut timer,
            )
            .with_context(|| format!("running {model_name} failed"))?,
            Err(e) => {
                eprintln!(
                    "note: {model_name} cannot be compiled yet ({e}{}); running the reference interpreter",
                    crate::pipeline::value_hint(graph)
                );
                let out = mlc_interp::run(graph, &inputs)
                    .map_err(|e| anyhow!("running {model_name} failed: {e}"))?;
                timer.done("interpret");
                out
            }
        },
        engine => run_lowered(graph, &inputs, &guards, engine, args.threads, &mut timer)
            .with_context(|| format!("running {model_name} failed"))?,
    };
    if outputs.len() != graph.outputs.len() {
        bail!(
            "the interpreter returned {} outputs for {} graph outputs",
            outputs.len(),
            graph.outputs.len()
        );
    }

    let names: Vec<&str> = graph.outputs.iter().map(|p| p.name.as_str()).collect();
    let files = tensor_io::output_file_names(&names);
    let mut contents = Vec::with_capacity(outputs.len());
    let mut summary = String::new();
    for ((name, file), t) in names.iter().zip(&files).zip(&outputs) {
        let (arr, note) =
            tensor_io::tensor_to_npy(t).with_context(|| format!("output {name:?}"))?;
        let shape = TensorType::fixed(t.dtype(), t.shape());
        let _ = write!(
            summary,
            "{name}: {shape} -> {}",
            args.output_dir.join(file).display()
        );
        if let Some(note) = note {
            let _ = write!(summary, " ({note})");
        }
        summary.push('\n');
        contents.push((file.clone(), arr.to_bytes()));
    }
    tensor_io::write_all_atomically(&args.output_dir, &contents)?;
    timer.done("write outputs");
    crate::print_stdout(&summary)
}

/// Runs a CPU artifact: inputs are matched by name to the artifact's and must have its
/// compiled shapes.
fn run_artifact(args: &Args, timer: &mut Phases) -> anyhow::Result<()> {
    let path = args.model.display().to_string();
    if args.emit.is_some() {
        bail!("--emit needs an .onnx model; {path} is already compiled");
    }
    if args.reference || !matches!(args.engine, Engine::Auto | Engine::Cpu) {
        bail!("{path} is a compiled artifact: it runs only compiled code (no --reference)");
    }
    let art = mlc_runtime::artifact::Artifact::read(&args.model)?;
    if art.target != mlc_runtime::cpu::model::TARGET {
        bail!(
            "{path} is compiled for {}; run GPU artifacts with mlc-gpu run",
            art.target
        );
    }
    let model = mlc_runtime::cpu::CpuModel::from_artifact(&art)
        .with_context(|| format!("cannot load {path}"))?;
    timer.done("load");
    let declared = || {
        model
            .inputs()
            .iter()
            .map(|io| format!("{:?} ({}{:?})", io.name, io.dtype, io.shape))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (name, _) in &args.inputs {
        if !model.inputs().iter().any(|io| &io.name == name) {
            bail!(
                "{path} has no input named {name:?}; its inputs are: {}",
                declared()
            );
        }
    }
    let mut ordered = Vec::with_capacity(model.inputs().len());
    for io in model.inputs() {
        let Some((_, file)) = args.inputs.iter().find(|(n, _)| n == &io.name) else {
            bail!(
                "missing input {:?} for {path}: give each input with --input NAME=FILE; its inputs are: {}",
                io.name,
                declared()
            );
        };
        let t = tensor_io::read_tensor(file).with_context(|| format!("input {:?}", io.name))?;
        // A batch input takes any multiple of its compiled batch (run as slices); an
        // artifact of several variants, the shapes of any of them.
        let compiled: Vec<&PlanIo> = model.input_ports(&io.name).collect();
        if !compiled
            .iter()
            .any(|p| t.dtype().name() == p.dtype && p.accepts(t.shape()))
        {
            bail!(
                "input {:?} does not fit {path}: it was compiled for {}, given {} from {} (recompile with --shape {}=... or --dim NAME=SIZE)",
                io.name,
                compiled
                    .iter()
                    .map(|p| p.describe())
                    .collect::<Vec<_>>()
                    .join(" or "),
                TensorType::fixed(t.dtype(), t.shape()),
                file.display(),
                io.name
            );
        }
        ordered.push(tensor_io::tensor_to_npy(&t)?.0);
    }
    timer.done("read inputs");
    let threads = args.threads.unwrap_or_else(default_threads);
    let outputs = model
        .run(&ordered, threads)
        .with_context(|| format!("running {path} failed"))?;
    timer.done("execute");
    let names: Vec<&str> = outputs.iter().map(|(n, _)| n.as_str()).collect();
    let files = tensor_io::output_file_names(&names);
    let mut contents = Vec::with_capacity(outputs.len());
    let mut summary = String::new();
    for ((name, arr), file) in outputs.iter().zip(&files) {
        let _ = writeln!(
            summary,
            "{name}: {}{:?} -> {}",
            arr.elem.name(),
            arr.shape,
            args.output_dir.join(file).display()
        );
        contents.push((file.clone(), arr.to_bytes()));
    }
    tensor_io::write_all_atomically(&args.output_dir, &contents)?;
    timer.done("write outputs");
    crate::print_stdout(&summary)
}

/// All cores.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Prints a compilation stage of `graph` on stdout.
fn emit(graph: &Graph, stage: Emit) -> anyhow::Result<()> {
    let text = match stage {
        Emit::Ir => mlc_ir::print_graph(graph),
        Emit::KernelIr => mlc_kir::print_program(&mlc_kir::lower_graph(graph)?),
        Emit::Clif => {
            let prog = mlc_kir::lower_graph(graph)?;
            mlc_cpu::program_clif(&prog, mlc_cpu::Options::default())?
        }
    };
    crate::print_stdout(&text)
}

/// Lowers `graph` to kernel IR and runs it with the kernel-IR evaluator or compiled kernels.
fn run_lowered(
    graph: &Graph,
    inputs: &[(String, Tensor)],
    guards: &[(String, Tensor)],
    engine: Engine,
    threads: Option<usize>,
    timer: &mut Phases,
) -> anyhow::Result<Vec<Tensor>> {
    let mut prog = mlc_kir::lower_graph(graph)
        .with_context(|| format!("cannot compile{}", crate::pipeline::value_hint(graph)))?;
    prog.guards = guards.to_vec();
    timer.done("lower");
    let mut ordered = Vec::with_capacity(prog.inputs.len());
    for (name, _) in &prog.inputs {
        let t = inputs
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| anyhow!("no value for input {name:?}"))?;
        ordered.push(t.1.clone());
    }
    if engine == Engine::Kir {
        let out = mlc_kir::run_program(&prog, &ordered)?;
        timer.done("evaluate kernel IR");
        return Ok(out);
    }
    let compiled = mlc_cpu::CompiledProgram::new(&prog)?;
    timer.done("compile");
    let threads = threads.unwrap_or_else(default_threads);
    let out = compiled.run(&ordered, threads)?;
    timer.done("execute");
    Ok(out)
}

/// Binds the input shapes and simplifies the graph (constant folding, shape propagation, dead
/// code), so the interpreter does not recompute in-graph shape arithmetic, and at `level` 1
/// optimizes it for the CPU (`crate::optimize`). Simplification only removes work; optimization
/// changes results by rounding only. Its report goes to stderr under `--time-passes`.
/// Returns the inputs specialized to their `values` (those that determine shapes).
fn simplify(
    graph: &mut Graph,
    bindings: &[(String, Vec<usize>)],
    values: &[(String, Tensor)],
    level: mlc_passes::pipeline::Level,
    timer: &mut Phases,
) -> anyhow::Result<Vec<(String, Tensor)>> {
    let target = mlc_passes::egraph::TargetInfo::x86_64();
    let report = crate::optimize::prepare(graph, bindings, values, level, target, timer.on)?;
    timer.done("simplify + optimize");
    Ok(report.specialized)
}

fn check_duplicates(given: &[(String, PathBuf)]) -> anyhow::Result<()> {
    for (i, (name, _)) in given.iter().enumerate() {
        if given[..i].iter().any(|(n, _)| n == name) {
            bail!("input {name:?} is given more than once");
        }
    }
    Ok(())
}

/// Every given name must be a graph input, and every graph input must be given.
fn check_names(graph: &Graph, given: &[(String, PathBuf)], model: &str) -> anyhow::Result<()> {
    let declared = || {
        graph
            .inputs
            .iter()
            .map(|p| format!("{:?} ({})", p.name, graph.ty(p.value)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let unknown: Vec<String> = given
        .iter()
        .filter(|(n, _)| !graph.inputs.iter().any(|p| &p.name == n))
        .map(|(n, _)| format!("{n:?}"))
        .collect();
    if !unknown.is_empty() {
        bail!(
            "{model} has no input named {}; its inputs are: {}",
            unknown.join(", "),
            declared()
        );
    }
    let missing: Vec<String> = graph
        .inputs
        .iter()
        .filter(|p| !given.iter().any(|(n, _)| n == &p.name))
        .map(|p| format!("{:?} ({})", p.name, graph.ty(p.value)))
        .collect();
    if !missing.is_empty() {
        let s = if missing.len() == 1 { "" } else { "s" };
        bail!(
            "missing input{s} {} for {model}: give each graph input with --input NAME=FILE (.npy or .pb)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Each input's dtype, rank and known dims must match its declared type, and a symbolic dim
/// (`batch`) must have one size across all inputs.
fn check_fit(
    graph: &Graph,
    inputs: &[(String, Tensor)],
    files: &[(String, PathBuf)],
) -> anyhow::Result<()> {
    let mut symbols: HashMap<&str, (usize, &str)> = HashMap::new();
    for ((name, t), (_, file)) in inputs.iter().zip(files) {
        let port = graph
            .inputs
            .iter()
            .find(|p| &p.name == name)
            .context("input names were checked")?;
        let ty = graph.ty(port.value);
        let mismatch = |why: String| {
            anyhow!(
                "input {name:?} does not fit the model: expected {ty}, given {} from {} ({why})",
                TensorType::fixed(t.dtype(), t.shape()),
                file.display()
            )
        };
        if t.dtype() != ty.dtype {
            return Err(mismatch(format!("dtype {} is not {}", t.dtype(), ty.dtype)));
        }
        if t.rank() != ty.rank() {
            return Err(mismatch(format!("rank {} is not {}", t.rank(), ty.rank())));
        }
        for (axis, (d, &n)) in ty.shape.iter().zip(t.shape()).enumerate() {
            match d {
                Dim::Known(k) if *k != n => {
                    return Err(mismatch(format!("dimension {axis} is {n}, not {k}")));
                }
                Dim::Sym(s) => match symbols.get(s.as_str()) {
                    Some(&(m, other)) if m != n => {
                        return Err(mismatch(format!(
                            "dimension {axis} is {s} = {n}, but input {other:?} has {s} = {m}"
                        )));
                    }
                    Some(_) => {}
                    None => {
                        symbols.insert(s, (n, name));
                    }
                },
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlc_ir::DType;

    fn graph() -> Graph {
        let mut g = Graph::new();
        let sym = |s: &str| Dim::Sym(s.into());
        g.add_input(
            "a",
            TensorType::new(DType::F32, vec![sym("batch"), Dim::Known(3)]),
        );
        g.add_input("b", TensorType::new(DType::I64, vec![sym("batch")]));
        g
    }

    fn given(names: &[&str]) -> Vec<(String, PathBuf)> {
        names
            .iter()
            .map(|n| (n.to_string(), PathBuf::from(format!("{n}.npy"))))
            .collect()
    }

    #[test]
    fn parses_input_bindings() {
        assert_eq!(
            parse_input("x=a=b.npy").unwrap(),
            ("x".to_string(), PathBuf::from("a=b.npy"))
        );
        assert!(parse_input("x").is_err());
        assert!(parse_input("=f.npy").is_err());
        assert!(parse_input("x=").is_err());
    }

    #[test]
    fn names_are_checked() {
        let g = graph();
        let err = check_names(&g, &given(&["a"]), "m.onnx")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing input \"b\" (i64[batch])"), "{err}");
        let err = check_names(&g, &given(&["a", "b", "c"]), "m.onnx")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no input named \"c\""), "{err}");
        assert!(check_names(&g, &given(&["b", "a"]), "m.onnx").is_ok());
        assert!(check_duplicates(&given(&["a", "a"])).is_err());
    }

    #[test]
    fn fit_is_checked() {
        let g = graph();
        let files = given(&["a", "b"]);
        let a = |n: usize| Tensor::zeros(DType::F32, &[n, 3]);
        let b = |n: usize| Tensor::zeros(DType::I64, &[n]);
        let fit = |x: Tensor, y: Tensor| {
            check_fit(&g, &[("a".into(), x), ("b".into(), y)], &files).map_err(|e| e.to_string())
        };
        assert!(fit(a(2), b(2)).is_ok());
        let err = fit(a(2), b(3)).unwrap_err();
        assert!(
            err.contains("input \"b\" does not fit the model: expected i64[batch], given i64[3]"),
            "{err}"
        );
        assert!(err.contains("input \"a\" has batch = 2"), "{err}");
        let err = fit(Tensor::zeros(DType::F64, &[2, 3]), b(2)).unwrap_err();
        assert!(
            err.contains("expected f32[batch,3], given f64[2,3] from a.npy (dtype f64 is not f32)"),
            "{err}"
        );
        let err = fit(Tensor::zeros(DType::F32, &[2, 4]), b(2)).unwrap_err();
        assert!(err.contains("dimension 1 is 4, not 3"), "{err}");
        let err = fit(Tensor::zeros(DType::F32, &[2]), b(2)).unwrap_err();
        assert!(err.contains("rank 1 is not 2"), "{err}");
    }
}
