//! The compilation pipeline shared by `mlc compile`, `mlc run` and `mlc bench`: import, bind the
//! input shapes, simplify, lower to the kernel IR; and for the CPU, code generation into an
//! artifact loaded in process.

use anyhow::{Context, anyhow, bail};
use mlc_ir::{Dim, Graph, Tensor};
use mlc_passes::egraph::TargetInfo;
use mlc_passes::pipeline::{Level, PipelineReport};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// Prints phase times on stderr when on (`--time-passes`), and with `progress` a line per
/// phase as it starts, so that a long compile shows where it is.
#[derive(Debug)]
pub struct Phases {
    pub on: bool,
    last: Instant,
    progress: bool,
    /// Which of several compilations the phases belong to (`variant 2 of 4 (seq=64)`).
    context: String,
}

impl Phases {
    pub fn new(on: bool) -> Phases {
        Phases {
            on,
            last: Instant::now(),
            progress: false,
            context: String::new(),
        }
    }

    /// With a progress line per phase on stderr (see [`begin`](Self::begin)).
    pub fn with_progress(mut self, progress: bool) -> Phases {
        self.progress = progress;
        self
    }

    /// Names the compilation that the next phases belong to (empty: the only one).
    pub fn set_context(&mut self, context: String) {
        self.context = context;
    }

    /// Announces a phase about to start, on stderr, when progress is on.
    pub fn begin(&self, what: &str) {
        if self.progress {
            let mut line = format!("mlc: {what}");
            if !self.context.is_empty() {
                line.push_str(&format!(" [{}]", self.context));
            }
            // Progress is best-effort: a closed stderr must not fail the compile.
            let _ = writeln!(std::io::stderr(), "{line}");
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

/// Whether to show progress: `--progress`, or by default when stderr is a terminal (scripts
/// reading stderr see none).
pub fn progress_wanted(flag: bool) -> bool {
    use std::io::IsTerminal;
    flag || std::io::stderr().is_terminal()
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

/// `variant 2 of 4 (x=1x64)`: which compilation of several the phases belong to.
pub fn variant_label(i: usize, n: usize, shapes: &[(String, Vec<usize>)]) -> String {
    let text = shapes_text(shapes.iter().map(|(name, d)| (name, d)));
    format!("variant {} of {n}: {text}", i + 1)
}

/// Parses `NAME=SIZE[,SIZE...]` (`--dim`): sizes for the symbolic dim `NAME`.
pub fn parse_dim(s: &str) -> Result<(String, Vec<usize>), String> {
    let bad = || format!("expected NAME=SIZE[,SIZE...] such as seq=32,64,128, got {s:?}");
    let (name, sizes) = s.split_once('=').ok_or_else(bad)?;
    let sizes: Vec<usize> = sizes
        .split(',')
        .map(|v| v.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    if name.is_empty() || sizes.is_empty() {
        return Err(bad());
    }
    Ok((name.to_string(), sizes))
}

/// The most variants one `mlc compile` makes (the product of the `--dim` size lists).
pub const MAX_VARIANTS: usize = 16;

/// The input shapes of every variant to compile: those `--shape` gives, and for every other
/// input, its type with the symbolic dims that `--dim` names bound. A `--dim` with several
/// sizes gives one variant per size (several such: every combination, the first `--dim`
/// varying slowest). Inputs left with unbound dims get `bind_shapes`'s error. Names a `--dim`
/// that no input has, listing the dims the inputs do have.
pub fn variant_shapes(
    graph: &Graph,
    shapes: &[(String, Vec<usize>)],
    dims: &[(String, Vec<usize>)],
) -> anyhow::Result<Vec<Vec<(String, Vec<usize>)>>> {
    if dims.is_empty() {
        return Ok(vec![shapes.to_vec()]);
    }
    let mut names: Vec<&str> = Vec::new();
    for port in &graph.inputs {
        for d in &graph.ty(port.value).shape {
            if let Dim::Sym(s) = d
                && !names.contains(&s.as_str())
            {
                names.push(s);
            }
        }
    }
    for (i, (name, sizes)) in dims.iter().enumerate() {
        if dims[..i].iter().any(|(n, _)| n == name) {
            bail!("--dim {name} is given more than once (list its sizes in one: --dim {name}=A,B)");
        }
        if !names.contains(&name.as_str()) {
            bail!(
                "--dim names {name:?}, which no input's shape has (the inputs' symbolic dims: {})",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            );
        }
        if sizes[..]
            .iter()
            .enumerate()
            .any(|(j, v)| sizes[..j].contains(v))
        {
            bail!("--dim {name} lists a size twice");
        }
    }
    let count = dims
        .iter()
        .try_fold(1usize, |n, (_, v)| n.checked_mul(v.len()))
        .unwrap_or(usize::MAX);
    if count > MAX_VARIANTS {
        bail!(
            "--dim sizes make {count} variants; one artifact holds at most {MAX_VARIANTS} (list fewer sizes)"
        );
    }
    let mut variants = Vec::with_capacity(count);
    for v in 0..count {
        // Mixed radix: the last --dim varies fastest.
        let mut rest = v;
        let mut pick = vec![0usize; dims.len()];
        for (i, (_, sizes)) in dims.iter().enumerate().rev() {
            pick[i] = sizes[rest % sizes.len()];
            rest /= sizes.len();
        }
        let mut bound = shapes.to_vec();
        for port in &graph.inputs {
            if bound.iter().any(|(n, _)| n == &port.name) {
                continue;
            }
            let shape: Option<Vec<usize>> = graph
                .ty(port.value)
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Known(n) => Some(*n),
                    Dim::Sym(s) => dims.iter().position(|(n, _)| n == s).map(|i| pick[i]),
                    Dim::Unknown => None,
                })
                .collect();
            if let Some(shape) = shape {
                bound.push((port.name.clone(), shape));
            }
        }
        variants.push(bound);
    }
    Ok(variants)
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
            "the model has inputs with symbolic dims; give their shapes: {} (or the sizes of named dims with --dim NAME=SIZE)",
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
    // Read before binding: which inputs have a symbolic leading dim, and the dims' names.
    let candidates = batch_candidates(graph, bindings);
    let dim_names: Vec<(String, Vec<Option<String>>)> = graph
        .inputs
        .iter()
        .filter_map(|port| {
            let dims: Vec<Option<String>> = graph
                .ty(port.value)
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Sym(s) => Some(s.clone()),
                    _ => None,
                })
                .collect();
            dims.iter()
                .any(Option::is_some)
                .then(|| (port.name.clone(), dims))
        })
        .collect();
    phases.begin("optimizing");
    let report = crate::optimize::prepare(graph, bindings, values, level, target, phases.on)?;
    phases.done("simplify + optimize");
    phases.begin("lowering to the kernel IR");
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
    program.dim_names = dim_names;
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

/// Lowers `graph` for the CPU once per set of input shapes in `variants` ([`variant_shapes`]);
/// with several, the phases and a lowering error name the variant.
pub fn lower_variants(
    graph: &Graph,
    variants: &[Vec<(String, Vec<usize>)>],
    values: &[(String, Tensor)],
    level: Level,
    phases: &mut Phases,
) -> anyhow::Result<Vec<mlc_kir::Program>> {
    let mut programs = Vec::with_capacity(variants.len());
    for (i, shapes) in variants.iter().enumerate() {
        let label = (variants.len() > 1).then(|| variant_label(i, variants.len(), shapes));
        phases.set_context(label.clone().unwrap_or_default());
        let mut graph = graph.clone();
        let bindings = bind_shapes(&graph, &with_value_shapes(shapes, values))?;
        let lowered = lower(
            &mut graph,
            &bindings,
            values,
            level,
            TargetInfo::x86_64(),
            phases,
        );
        let (program, _, _) = match label {
            Some(label) => lowered.context(label)?,
            None => lowered?,
        };
        programs.push(program);
    }
    phases.set_context(String::new());
    Ok(programs)
}

/// `x=1x64 mask=1x64`: input shapes as `mlc` prints them.
pub fn shapes_text<'a>(shapes: impl IntoIterator<Item = (&'a String, &'a Vec<usize>)>) -> String {
    shapes
        .into_iter()
        .map(|(name, d)| {
            let d: Vec<String> = d.iter().map(usize::to_string).collect();
            format!("{name}={}", d.join("x"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Imports `model` and compiles it for this CPU into an in-memory artifact, specialized to the
/// input `values` that determine shapes: one variant per set of input shapes that `--shape`
/// and `--dim` give ([`variant_shapes`]).
pub fn compile_cpu(
    model: &Path,
    (shapes, dims): (&[(String, Vec<usize>)], &[(String, Vec<usize>)]),
    values: &[(String, Tensor)],
    level: Level,
    phases: &mut Phases,
) -> anyhow::Result<mlc_runtime::artifact::Artifact> {
    phases.begin(&format!("importing {}", model.display()));
    let m = mlc_onnx::load(model)?;
    phases.done("import");
    let variants = variant_shapes(&m.graph, shapes, dims)?;
    let programs = lower_variants(&m.graph, &variants, values, level, phases)?;
    phases.begin("generating code and linking");
    let art = mlc_cpu::compile_variants(&programs, mlc_cpu::Options::default())
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
