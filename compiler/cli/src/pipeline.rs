//! The compilation pipeline shared by `mlc compile`, `mlc run` and `mlc bench`: import, bind the
//! input shapes, simplify, lower to the kernel IR; and for the CPU, code generation into an
//! artifact loaded in process.

use anyhow::{Context, anyhow, bail};
use mlc_ir::{Dim, Graph, Tensor};
use mlc_passes::egraph::TargetInfo;
use mlc_passes::pipeline::{Level, PipelineReport};
use std::path::Path;
use std::time::Instant;

/// Prints phase times on stderr when on (`--time-passes`).
#[derive(Debug)]
pub struct Phases {
    pub on: bool,
    last: Instant,
}

impl Phases {
    pub fn new(on: bool) -> Phases {
        Phases {
            on,
            last: Instant::now(),
        }
    }

    pub fn done(&mut self, phase: &str) {
        let now = Instant::now();
        if self.on {
            eprintln!(
                "time: {:>10.3} ms  {phase}",
                (now - self.last).as_secs_f64() * 1e3
            );
        }
        self.last = now;
    }
}

/// Parses `NAME=1x3x224x224` (also `NAME=1,3,224,224`; `NAME=` for a scalar).
pub fn parse_shape(s: &str) -> Result<(String, Vec<usize>), String> {
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

/// Reads `--input NAME=FILE` values for compiling: every name must be an input of `graph`.
pub fn read_values(
    graph: &Graph,
    inputs: &[(String, std::path::PathBuf)],
) -> anyhow::Result<Vec<(String, Tensor)>> {
    let mut values = Vec::with_capacity(inputs.len());
    for (i, (name, file)) in inputs.iter().enumerate() {
        if !graph.inputs.iter().any(|p| &p.name == name) {
            let names: Vec<&str> = graph.inputs.iter().map(|p| p.name.as_str()).collect();
            bail!("--input names {name:?}, which is not an input of the model (inputs: {names:?})");
        }
        if inputs[..i].iter().any(|(n, _)| n == name) {
            bail!("input {name:?} is given more than once");
        }
        let t = crate::tensor_io::read_tensor(file).with_context(|| format!("input {name:?}"))?;
        values.push((name.clone(), t));
    }
    Ok(values)
}

/// `shapes` plus the shapes of the given `values` that `shapes` does not name.
pub fn with_value_shapes(
    shapes: &[(String, Vec<usize>)],
    values: &[(String, Tensor)],
) -> Vec<(String, Vec<usize>)> {
    let mut all = shapes.to_vec();
    for (n, t) in values {
        if !all.iter().any(|(m, _)| m == n) {
            all.push((n.clone(), t.shape().to_vec()));
        }
    }
    all
}

/// Every input's concrete shape: given with `--shape`, else its static type. Names an input
/// with symbolic dims and no `--shape`, and a `--shape` naming no input.
pub fn bind_shapes(
    graph: &Graph,
    shapes: &[(String, Vec<usize>)],
) -> anyhow::Result<Vec<(String, Vec<usize>)>> {
    for (name, _) in shapes {
        if !graph.inputs.iter().any(|p| &p.name == name) {
            let names: Vec<&str> = graph.inputs.iter().map(|p| p.name.as_str()).collect();
            bail!("--shape names {name:?}, which is not an input of the model (inputs: {names:?})");
        }
    }
    let mut bindings = Vec::new();
    let mut missing = Vec::new();
    for port in &graph.inputs {
        let ty = graph.ty(port.value);
        match shapes.iter().find(|(n, _)| n == &port.name) {
            Some((_, s)) => bindings.push((port.name.clone(), s.clone())),
            None => match ty.static_shape() {
                Some(s) => bindings.push((port.name.clone(), s)),
                None => missing.push(format!("--shape {}=DIMS ({ty})", port.name)),
            },
        }
    }
    if !missing.is_empty() {
        bail!(
            "the model has inputs with symbolic dims; give their shapes: {}",
            missing.join(", ")
        );
    }
    Ok(bindings)
}

/// Simplifies and (at `level`) optimizes `graph` for the bound shapes and the cost model
/// `target`, then lowers it to the kernel IR. `values` are input values known at compile time:
/// those that determine shapes are baked in, and the program guards them.
pub fn lower(
    graph: &mut Graph,
    bindings: &[(String, Vec<usize>)],
    values: &[(String, Tensor)],
    level: Level,
    target: TargetInfo,
    phases: &mut Phases,
) -> anyhow::Result<(mlc_kir::Program, PipelineReport, BatchVerdict)> {
    // Read before binding: which inputs have a symbolic leading dim.
    let candidates = batch_candidates(graph, bindings);
    let report = crate::optimize::prepare(graph, bindings, values, level, target, phases.on)?;
    phases.done("simplify + optimize");
    let mut program = match mlc_kir::lower_graph(graph) {
        Ok(p) => p,
        Err(e) => {
            let hint = value_hint(graph);
            return Err(
                anyhow::Error::new(e).context(format!("lowering to the kernel IR failed{hint}"))
            );
        }
    };
    program.guards = report.specialized.clone();
    let batch = candidates.and_then(|(flags, unit)| {
        mlc_passes::batch::check(graph, &flags).map_err(|e| e.to_string())?;
        if let Some(p) = graph
            .outputs
            .iter()
            .find(|p| graph.ty(p.value).shape.first().and_then(Dim::known) != Some(unit))
        {
            return Err(format!("output {:?} is not {unit} long on axis 0", p.name));
        }
        Ok((
            graph
                .inputs
                .iter()
                .zip(&flags)
                .filter(|(_, f)| **f)
                .map(|(p, _)| p.name.clone())
                .collect::<Vec<String>>(),
            unit,
        ))
    });
    if let Ok((names, _)) = &batch {
        program.batched = names.clone();
    }
    phases.done("lower");
    Ok((program, report, batch))
}

/// Whether the compiled program runs a multiple of its batch as slices: the batched inputs and
/// the compiled batch size, or why not.
pub type BatchVerdict = Result<(Vec<String>, usize), String>;

/// The inputs whose leading dim is symbolic, one symbol for all of them, bound to one size: the
/// candidates for batch slicing (flags per input, and that size).
fn batch_candidates(
    graph: &Graph,
    bindings: &[(String, Vec<usize>)],
) -> Result<(Vec<bool>, usize), String> {
    let mut symbol: Option<&str> = None;
    let mut flags = vec![false; graph.inputs.len()];
    let mut unit = None;
    for (i, port) in graph.inputs.iter().enumerate() {
        match graph.ty(port.value).shape.first() {
            Some(Dim::Sym(s)) => {
                if symbol.is_some_and(|x| x != s) {
                    return Err("inputs have different symbolic leading dims".into());
                }
                symbol = Some(s);
            }
            Some(Dim::Unknown) => {}
            _ => continue,
        }
        let size = bindings
            .iter()
            .find(|(n, _)| n == &port.name)
            .and_then(|(_, d)| d.first().copied())
            .ok_or("an input's leading dim is not bound")?;
        if unit.is_some_and(|u| u != size) {
            return Err("the inputs' leading dims are bound to different sizes".into());
        }
        unit = Some(size);
        flags[i] = true;
    }
    let unit = unit.ok_or("no input has a symbolic leading dim")?;
    if flags.iter().filter(|f| **f).count() > 1
        && graph
            .inputs
            .iter()
            .any(|p| graph.ty(p.value).shape.first() == Some(&Dim::Unknown))
    {
        return Err("several inputs have unnamed leading dims".into());
    }
    Ok((flags, unit))
}

/// When shapes depend on input values that were not given, says which inputs to give.
pub fn value_hint(graph: &Graph) -> String {
    let names = mlc_passes::specialize::shape_inputs(graph);
    if names.is_empty() {
        return String::new();
    }
    let flags: Vec<String> = names.iter().map(|n| format!("--input {n}=FILE")).collect();
    format!(
        " (shapes depend on the values of {}: give them with {} to compile for those values)",
        names.join(", "),
        flags.join(" ")
    )
}

/// Imports `model` and compiles it for this CPU into an in-memory artifact, specialized to the
/// input `values` that determine shapes.
pub fn compile_cpu(
    model: &Path,
    shapes: &[(String, Vec<usize>)],
    values: &[(String, Tensor)],
    level: Level,
    phases: &mut Phases,
) -> anyhow::Result<mlc_runtime::artifact::Artifact> {
    let mut m = mlc_onnx::load(model)?;
    phases.done("import");
    let bindings = bind_shapes(&m.graph, &with_value_shapes(shapes, values))?;
    let (program, _, _) = lower(
        &mut m.graph,
        &bindings,
        values,
        level,
        TargetInfo::x86_64(),
        phases,
    )?;
    let art = mlc_cpu::compile_artifact(&program, mlc_cpu::Options::default())
        .map_err(|e| anyhow!("compiling {} for the CPU failed: {e}", model.display()))?;
    phases.done("codegen + link");
    Ok(art)
}

/// Whether `path` is an mlc artifact: by its magic, or by its `.mlca` name (so that a damaged
/// artifact gets the artifact loader's error, not an ONNX decoding error).
pub fn is_artifact(path: &Path) -> bool {
    use std::io::Read;
    if path.extension().is_some_and(|e| e == "mlca") {
        return true;
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == mlc_runtime::artifact::MAGIC
}
