//! Every kernel of every development model compiles to PTX that `ptxas` accepts for sm_90,
//! through the user's path: `mlc compile M.onnx --target sm_90 --emit ptx -o DIR`, then
//! `ptxas -arch=sm_90` on each file, and `mlc compile` to an artifact that parses back.
//!
//! Models come from `$MLC_MODELS_DIR` (as in `dev_models.rs`); inputs with symbolic dims take
//! the shapes of the reference inputs in `$MLC_REFS_DIR` (default `<models dir>/ref`).
//! `ptxas` comes from `$MLC_PTXAS` or the repository's `.venv` (the `nvidia-cuda-nvcc-cu12`
//! wheel); without it the test fails under `CI=true` and is skipped with a note elsewhere.
//! `MLC_DEV_MODELS=a,b` restricts the run.

use mlc_runtime::artifact::Artifact;
use mlc_runtime::plan::Plan;
use mlc_tests::{TempDir, mlc, models_dir, repo_root};
use std::path::{Path, PathBuf};
use std::process::Command;

fn find_ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MLC_PTXAS") {
        return Some(PathBuf::from(p));
    }
    let lib = repo_root().join(".venv/lib");
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(lib)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    pythons.sort();
    pythons
        .into_iter()
        .map(|p| p.join("site-packages/nvidia/cuda_nvcc/bin/ptxas"))
        .find(|p| p.is_file())
}

/// `--shape NAME=DIMS` for every input, from the reference inputs (`meta.json` names them).
fn shape_args(refdir: &Path) -> Vec<String> {
    let Ok(meta) = std::fs::read(refdir.join("meta.json")) else {
        return Vec::new();
    };
    let meta: serde_json::Value = serde_json::from_slice(&meta).expect("meta.json is JSON");
    let mut args = Vec::new();
    for (i, name) in meta["inputs"].as_array().into_iter().flatten().enumerate() {
        let name = name.as_str().expect("input names are strings");
        let file = refdir
            .join("inputs")
            .join(format!("{i}_{}.npy", name.replace('/', "_")));
        let arr = mlc_runtime::npy::NpyArray::read(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let dims: Vec<String> = arr.shape.iter().map(|d| d.to_string()).collect();
        args.push(format!("--shape={name}={}", dims.join("x")));
    }
    args
}

#[test]
fn every_dev_model_kernel_assembles_for_sm_90() {
    let dir = models_dir();
    if !dir.is_dir() {
        println!("note: no development models at {}: skipped", dir.display());
        return;
    }
    let Some(ptxas) = find_ptxas() else {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "ptxas not found (set MLC_PTXAS or install nvidia-cuda-nvcc-cu12 into .venv)"
        );
        println!("note: ptxas not found: skipped");
        return;
    };
    let refs = std::env::var_os("MLC_REFS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("ref"));
    let only: Option<Vec<String>> = std::env::var("MLC_DEV_MODELS")
        .ok()
        .map(|s| s.split(',').map(|m| m.trim().to_string()).collect());
    let mut models: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the models directory is readable")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .collect();
    models.sort();
    let mut failures = Vec::new();
    let mut total = 0;
    for model in models {
        let stem = model
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if only.as_ref().is_some_and(|o| !o.contains(&stem)) {
            continue;
        }
        let out = TempDir::new(&format!("ptx-{stem}"));
        let ptx_dir = out.join("ptx");
        let mut args: Vec<String> = vec![
            "compile".into(),
            model.display().to_string(),
            "--target".into(),
            "sm_90".into(),
            "--emit".into(),
            "ptx".into(),
            "-o".into(),
            ptx_dir.display().to_string(),
        ];
        args.extend(shape_args(&refs.join(&stem)));
        let a: Vec<&dyn AsRef<std::ffi::OsStr>> = args.iter().map(|a| a as _).collect();
        let r = mlc(&a);
        if r.code != Some(0) {
            failures.push(format!("{stem}: mlc compile failed: {}", r.stderr));
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&ptx_dir)
            .expect("ptx dir")
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for f in &files {
            total += 1;
            let o = Command::new(&ptxas)
                .arg("-arch=sm_90")
                .arg(f)
                .arg("-o")
                .arg(out.join("k.cubin"))
                .output()
                .expect("ptxas runs");
            if !o.status.success() {
                failures.push(format!(
                    "{stem}/{}: {}",
                    f.file_name().unwrap_or_default().to_string_lossy(),
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
        }
        // The artifact: parses back, and its plan is consistent with its weights.
        let art_path = out.join("m.mlca");
        args[4..8].clone_from_slice(&[
            "--emit".into(),
            "artifact".into(),
            "-o".into(),
            art_path.display().to_string(),
        ]);
        let a: Vec<&dyn AsRef<std::ffi::OsStr>> = args.iter().map(|a| a as _).collect();
        let r = mlc(&a);
        if r.code != Some(0) {
            failures.push(format!(
                "{stem}: mlc compile (artifact) failed: {}",
                r.stderr
            ));
            continue;
        }
        let art = Artifact::read(&art_path).unwrap_or_else(|e| panic!("{stem}: {e}"));
        let plan: Plan = serde_json::from_value(art.meta.clone()).expect("the header holds a plan");
        let weights = art.section("weights").expect("weights").data.len() as u64;
        plan.check(weights)
            .unwrap_or_else(|e| panic!("{stem}: {e}"));
        assert_eq!(
            art.sections.len(),
            files.len() + 1,
            "{stem}: one section per kernel"
        );
        // Contractions must reach the GPU's parallel GEMM mapping: one launched on a single
        // thread means lowering hid the matmul from it (a 1,500x regression once).
        for st in &plan.steps {
            let name = st
                .kernel
                .split_once('_')
                .map(|(_, n)| n)
                .unwrap_or(&st.kernel);
            let threads: u64 = st.grid.iter().chain(&st.block).map(|&d| d as u64).product();
            let contraction = ["nn_conv", "nn_matmul", "nn_gemm", "quant_matmul"]
                .iter()
                .any(|p| name.starts_with(p));
            if contraction && threads <= 1 {
                failures.push(format!("{stem}: {} runs on a single GPU thread", st.kernel));
            }
        }
        println!("{stem}: {} kernels assemble for sm_90", files.len());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!("{total} kernels checked");
}

/// `mlc compile` on a tiny model: symbolic dims need `--shape`, bad targets and shapes are
/// one-paragraph errors, and the artifact, PTX and kernel-IR outputs are written.
#[test]
fn compile_cli_writes_artifact_ptx_and_errors_cleanly() {
    use mlc_tests::onnx::{self, D, elem};
    let dir = TempDir::new("compile-cli");
    let model = dir.join("relu.onnx");
    let bytes = onnx::model(
        17,
        &[onnx::node("Relu", "relu_0", &["x"], &["y"], &[])],
        &[onnx::value("x", elem::FLOAT, &[D::S("N"), D::N(3)])],
        &[onnx::value("y", elem::FLOAT, &[D::S("N"), D::N(3)])],
        &[],
    );
    std::fs::write(&model, bytes).expect("write model");
    let m = model.display().to_string();
    let art = dir.join("relu.mlca").display().to_string();

    mlc(&[&"compile", &m, &"-o", &art]).assert_error(&["symbolic dims", "--shape x="]);
    mlc(&[&"compile", &m, &"--target", &"sm_75", &"--shape", &"x=2x3"])
        .assert_error(&["sm_75", "sm_90"]);
    mlc(&[&"compile", &m, &"--shape", &"y=2x3"]).assert_error(&["not an input"]);

    mlc(&[&"compile", &m, &"--shape", &"x=2x3", &"-o", &art]).assert_success();
    let a = Artifact::read(Path::new(&art)).expect("the artifact parses");
    assert_eq!(a.target, "nvptx:sm_90");
    let plan: Plan = serde_json::from_value(a.meta.clone()).expect("plan");
    assert_eq!(plan.inputs[0].shape, vec![2, 3]);
    assert_eq!(plan.outputs[0].name, "y");
    plan.check(a.section("weights").expect("weights").data.len() as u64)
        .expect("consistent plan");

    let ptx = dir.join("ptx");
    mlc(&[
        &"compile",
        &m,
        &"--shape",
        &"x=2x3",
        &"--target",
        &"sm_90a",
        &"--emit",
        &"ptx",
        &"-o",
        &ptx,
    ])
    .assert_success();
    let files: Vec<_> = std::fs::read_dir(&ptx)
        .expect("ptx dir")
        .flatten()
        .collect();
    assert_eq!(files.len(), plan.steps.len());
    let text = std::fs::read_to_string(files[0].path()).expect("ptx");
    assert!(
        text.contains(".target sm_90a") && text.contains(".entry"),
        "{text}"
    );
}
