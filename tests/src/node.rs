//! Runs ONNX backend node tests (`model.onnx` + `test_data_set_*/{input,output}_*.pb`) through
//! import and a [`Backend`] (the reference interpreter by default), and compares with the
//! expected outputs.
//!
//! Floats compare element-wise within `crate::tolerance::node_test`; NaN matches NaN; integers,
//! bools and strings compare exactly; shapes exactly.

use mlc_ir::{DType, Tensor};
use std::path::{Path, PathBuf};

/// The node-test directory: `$MLC_NODE_TESTS`, else `<models>/onnx_node_tests/node`.
pub fn node_tests_dir() -> PathBuf {
    std::env::var_os("MLC_NODE_TESTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::models_dir().join("onnx_node_tests").join("node"))
}

/// All test names in `dir`, sorted.
pub fn list_tests(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join("model.onnx").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn numbered(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for i in 0.. {
        let p = dir.join(format!("{prefix}_{i}.pb"));
        if !p.exists() {
            break;
        }
        v.push(p);
    }
    v
}

/// What executes the imported graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The graph interpreter (`mlc-interp`).
    Interp,
    /// Shapes bound and simplified, lowered to kernel IR, run by its evaluator.
    Kir,
    /// As `Kir`, but the kernels compiled by the Cranelift backend (`mlc-cpu`).
    Cpu,
}

impl Backend {
    pub fn from_name(s: &str) -> Option<Backend> {
        match s {
            "interp" => Some(Backend::Interp),
            "kir" => Some(Backend::Kir),
            "cpu" => Some(Backend::Cpu),
            _ => None,
        }
    }
}

/// Runs `g` on `named` inputs through `backend`.
pub fn run_graph(
    g: &mlc_ir::Graph,
    named: &[(String, Tensor)],
    backend: Backend,
) -> Result<Vec<Tensor>, String> {
    if backend == Backend::Interp {
        return mlc_interp::run(g, named).map_err(|e| format!("run: {e}"));
    }
    let mut g = g.clone();
    let bindings: Vec<(String, Vec<usize>)> = named
        .iter()
        .map(|(n, t)| (n.clone(), t.shape().to_vec()))
        .collect();
    mlc_passes::simplify(&mut g, &bindings).map_err(|e| format!("simplify: {e}"))?;
    // Compiled for these inputs: values that determine shapes are baked in, and guarded.
    let guards = mlc_passes::specialize(&mut g, named).map_err(|e| format!("specialize: {e}"))?;
    let mut prog = mlc_kir::lower_graph(&g).map_err(|e| format!("lower: {e}"))?;
    prog.guards = guards;
    let mut inputs = Vec::with_capacity(prog.inputs.len());
    for (name, _) in &prog.inputs {
        let t = named
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| format!("no input named {name}"))?;
        inputs.push(t.1.clone());
    }
    match backend {
        Backend::Kir => mlc_kir::run_program(&prog, &inputs).map_err(|e| format!("kir: {e}")),
        _ => {
            let c = mlc_cpu::CompiledProgram::new(&prog).map_err(|e| format!("codegen: {e}"))?;
            c.run(&inputs, 2).map_err(|e| format!("cpu: {e}"))
        }
    }
}

/// Runs one node test through the interpreter; `Err` carries the reason it failed.
pub fn run_test(test_dir: &Path) -> Result<(), String> {
    run_test_with(test_dir, Backend::Interp)
}

/// Runs one node test through `backend`.
pub fn run_test_with(test_dir: &Path, backend: Backend) -> Result<(), String> {
    let model = mlc_onnx::load(&test_dir.join("model.onnx")).map_err(|e| format!("import: {e}"))?;
    let g = &model.graph;
    let mut sets: Vec<PathBuf> = std::fs::read_dir(test_dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("test_data_set_"))
        })
        .collect();
    sets.sort();
    if sets.is_empty() {
        return Err("no test data".into());
    }
    for set in sets {
        let inputs = numbered(&set, "input");
        let expected = numbered(&set, "output");
        if inputs.len() != g.inputs.len() {
            return Err(format!(
                "test gives {} inputs, graph has {}",
                inputs.len(),
                g.inputs.len()
            ));
        }
        let mut named = Vec::new();
        for (p, port) in inputs.iter().zip(&g.inputs) {
            named.push((
                port.name.clone(),
                mlc_onnx::read_tensor_pb(p).map_err(|e| e.to_string())?,
            ));
        }
        let got = run_graph(g, &named, backend)?;
        if got.len() != expected.len() {
            return Err(format!(
                "{} outputs, expected {}",
                got.len(),
                expected.len()
            ));
        }
        for (i, (t, p)) in got.iter().zip(&expected).enumerate() {
            let e = mlc_onnx::read_tensor_pb(p).map_err(|e| e.to_string())?;
            compare(t, &e).map_err(|m| format!("output {i}: {m}"))?;
        }
    }
    Ok(())
}

/// Compares a result with an expected tensor under the policy above.
pub fn compare(got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.dtype() != want.dtype() {
        return Err(format!(
            "dtype {} != expected {}",
            got.dtype(),
            want.dtype()
        ));
    }
    if got.shape() != want.shape() {
        return Err(format!(
            "shape {:?} != expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    let d = got.dtype();
    if d.is_float() {
        let (rtol, atol) = crate::tolerance::node_test(matches!(d, DType::F16 | DType::BF16));
        let a = got.to_f64_vec().map_err(|e| e.to_string())?;
        let b = want.to_f64_vec().map_err(|e| e.to_string())?;
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let ok = (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= atol + rtol * y.abs();
            if !ok {
                return Err(format!("element {i}: {x} != expected {y}"));
            }
        }
        Ok(())
    } else if got == want {
        Ok(())
    } else {
        Err(format!("values differ: got {got:?}, expected {want:?}"))
    }
}

/// Runs one test, turning a panic into a failure so that one bad kernel cannot stop a run.
pub fn run_test_catching(test_dir: &Path) -> Result<(), String> {
    run_test_catching_with(test_dir, Backend::Interp)
}

/// [`run_test_catching`] through `backend`.
pub fn run_test_catching_with(test_dir: &Path, backend: Backend) -> Result<(), String> {
    match std::panic::catch_unwind(|| run_test_with(test_dir, backend)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("PANIC: {msg}"))
        }
    }
}
