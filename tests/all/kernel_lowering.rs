//! Every development model lowers to the kernel IR, and the smallest ones evaluate at kernel
//! level to ONNX Runtime's outputs. (The kernel-IR evaluator is an oracle, slow by design: the
//! larger models are checked through the backends instead; `ir/kernel`'s own tests check
//! lowering op by op against the interpreter.)

use mlc_ir::{DType, Tensor};
use mlc_tests::{models_dir, read_npy_f64, tolerance};
use std::path::PathBuf;

/// Models small enough to evaluate with the kernel-IR evaluator in a debug build.
const EVALUATED: &[&str] = &["mlp_784_512_512_10"];

#[test]
fn dev_models_lower_to_kernel_ir() {
    let dir = models_dir();
    if !dir.is_dir() {
        println!("note: no development models at {}: skipped", dir.display());
        return;
    }
    let refs = std::env::var_os("MLC_REFS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("ref"));
    let mut failures = Vec::new();
    let manifest = std::fs::read_to_string(mlc_tests::repo_root().join("tests/dev_models.txt"))
        .expect("manifest");
    for stem in manifest
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
    {
        let model = dir.join(format!("{stem}.onnx"));
        let refdir = refs.join(stem);
        if !model.is_file() || !refdir.is_dir() {
            println!("{stem:<36} SKIP  model or reference outputs missing");
            continue;
        }
        match check(&model, &refdir, EVALUATED.contains(&stem)) {
            Ok(summary) => println!("{stem:<36} OK    {summary}"),
            Err(why) => {
                println!("{stem:<36} FAIL  {why}");
                failures.push(format!("{stem}: {why}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "kernel lowering failed:\n{}",
        failures.join("\n")
    );
}

fn check(
    model: &std::path::Path,
    refdir: &std::path::Path,
    evaluate: bool,
) -> Result<String, String> {
    let mut m = mlc_onnx::load(model).map_err(|e| e.to_string())?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(refdir.join("inputs"))
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let mut inputs = Vec::new();
    let mut bindings = Vec::new();
    for (port, f) in m.graph.inputs.iter().zip(&files) {
        let (shape, data) = read_npy_f64(f)?;
        let data = data.ok_or("string input")?;
        let dtype = m.graph.ty(port.value).dtype;
        let t = Tensor::from_vec(&shape, data)
            .and_then(|t| t.cast(dtype))
            .map_err(|e| e.to_string())?;
        bindings.push((port.name.clone(), shape));
        inputs.push(t);
    }
    mlc_passes::simplify(&mut m.graph, &bindings).map_err(|e| e.to_string())?;
    let nodes = m.graph.nodes.len();
    let p = mlc_kir::lower_graph(&m.graph).map_err(|e| e.to_string())?;
    let mut summary = format!(
        "{nodes} nodes -> {} launches of {} distinct kernels",
        p.steps.len(),
        p.kernels.len()
    );
    if evaluate {
        let outs = mlc_kir::run_program(&p, &inputs).map_err(|e| e.to_string())?;
        let mut outfiles: Vec<PathBuf> = std::fs::read_dir(refdir.join("outputs"))
            .map_err(|e| e.to_string())?
            .flatten()
            .map(|e| e.path())
            .collect();
        outfiles.sort();
        let mut worst = 0f64;
        for (o, f) in outs.iter().zip(&outfiles) {
            let (_, want) = read_npy_f64(f)?;
            let want = want.ok_or("string output")?;
            let got = o
                .cast(DType::F64)
                .and_then(|t| t.to_f64_vec())
                .map_err(|e| e.to_string())?;
            worst = worst.max(tolerance::rel_error(&want, &got)?);
        }
        let stem = model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if worst > tolerance::for_model(&stem) {
            return Err(format!(
                "kernel-IR evaluation differs from ONNX Runtime: {worst:.2e}"
            ));
        }
        summary += &format!(", evaluated: range-relative error {worst:.1e}");
    }
    Ok(summary)
}
