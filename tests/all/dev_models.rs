//! The development models, run by `mlc run` (the interpreter, and `--engine cpu`: kernel IR
//! compiled with Cranelift) and compared with ONNX Runtime's outputs.
//!
//! Models come from `$MLC_MODELS_DIR` (default `models-dev/` at the repo root, which
//! `scripts/test.sh` fills with `fetch.sh`), reference inputs and outputs from `$MLC_REFS_DIR`
//! (default `<models dir>/ref`, written by `peers.py --save-ref`). Without the directory the
//! test prints a note and passes, so that `cargo test` works on a bare checkout; CI provides it.
//! `MLC_DEV_MODELS=a,b` restricts the run to those model stems.
//!
//! `tests/dev_models.txt` is the manifest of models that must pass: a listed model that fails
//! fails the test; an unlisted one is run and reported, so the manifest grows as ops land.

use mlc_tests::{TempDir, mlc, models_dir, read_npy_f64, repo_root, tolerance};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn manifest() -> Vec<String> {
    let path = repo_root().join("tests/dev_models.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Runs one model on its reference inputs; the worst range-relative error per output, or why not.
fn check_model(
    model: &Path,
    refdir: &Path,
    stem: &str,
    engine: &str,
) -> Result<Vec<(String, f64)>, String> {
    let meta: serde_json::Value = std::fs::read(refdir.join("meta.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| format!("{}/meta.json: {e}", refdir.display()))?;
    let names = |key: &str| -> Vec<String> {
        meta[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    // peers.py names files `<index>_<name with '/' replaced by '_'>.npy`.
    let ref_file = |kind: &str, i: usize, name: &str| {
        refdir
            .join(kind)
            .join(format!("{i}_{}.npy", name.replace('/', "_")))
    };

    let out = TempDir::new(&format!("dev-{stem}"));
    let mut args: Vec<String> = vec!["run".into(), model.display().to_string()];
    for (i, name) in names("inputs").iter().enumerate() {
        args.push("--input".into());
        args.push(format!("{name}={}", ref_file("inputs", i, name).display()));
    }
    args.push("--engine".into());
    args.push(engine.into());
    args.push("--output-dir".into());
    args.push(out.path().display().to_string());
    let refs: Vec<&dyn AsRef<std::ffi::OsStr>> = args.iter().map(|a| a as _).collect();
    let r = mlc(&refs);
    if r.code != Some(0) {
        return Err(format!(
            "mlc run exited with {:?}: {}",
            r.code,
            r.stderr.trim()
        ));
    }

    let tol = tolerance::for_model(stem);
    let mut errors = Vec::new();
    for (j, name) in names("outputs").iter().enumerate() {
        let (want_shape, want) = read_npy_f64(&ref_file("outputs", j, name))?;
        let got_file = out.join(format!("{}.npy", sanitize(name)));
        let (got_shape, got) =
            read_npy_f64(&got_file).map_err(|e| format!("output {name:?}: {e}"))?;
        if want_shape != got_shape {
            return Err(format!(
                "output {name:?}: shape {got_shape:?}, expected {want_shape:?}"
            ));
        }
        let (Some(want), Some(got)) = (want, got) else {
            return Err(format!("output {name:?}: string outputs are not compared"));
        };
        let e = tolerance::rel_error(&want, &got).map_err(|e| format!("output {name:?}: {e}"))?;
        if e > tol {
            return Err(format!(
                "output {name:?}: range-relative error {e:.2e} > {tol:.0e}"
            ));
        }
        errors.push((name.clone(), e));
    }
    Ok(errors)
}

/// The output file stem `mlc run` uses (see `mlc run --help`).
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[test]
fn dev_models_match_onnx_runtime() {
    let dir = models_dir();
    if !dir.is_dir() {
        println!(
            "note: no development models at {} (set MLC_MODELS_DIR or run scripts/test.sh): skipped",
            dir.display()
        );
        return;
    }
    let refs = std::env::var_os("MLC_REFS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("ref"));
    let only: Option<Vec<String>> = std::env::var("MLC_DEV_MODELS")
        .ok()
        .map(|s| s.split(',').map(|m| m.trim().to_string()).collect());
    let must_pass = manifest();

    let mut models: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the models directory is readable")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .collect();
    models.sort();

    let mut failures = Vec::new();
    for model in models {
        let stem = model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if only.as_ref().is_some_and(|o| !o.contains(&stem)) {
            continue;
        }
        let required = must_pass.contains(&stem);
        let refdir = refs.join(&stem);
        if !refdir.join("meta.json").is_file() {
            println!(
                "{stem:<36} SKIP  no reference outputs in {} (peers.py --save-ref)",
                refdir.display()
            );
            if required {
                failures.push(format!(
                    "{stem}: listed in tests/dev_models.txt but has no reference outputs"
                ));
            }
            continue;
        }
        // The reference interpreter, and the kernel-IR path compiled with Cranelift.
        for engine in ["interp", "cpu"] {
            let t = Instant::now();
            let result = check_model(&model, &refdir, &stem, engine);
            let secs = t.elapsed().as_secs_f64();
            match result {
                Ok(errs) => {
                    let worst = errs.iter().map(|(_, e)| *e).fold(0.0, f64::max);
                    let note = if required {
                        ""
                    } else {
                        "  (passes now: add it to tests/dev_models.txt)"
                    };
                    println!(
                        "{stem:<36} {engine:<6} PASS  max rel err {worst:.1e}  {secs:.1}s{note}"
                    );
                }
                Err(why) => {
                    println!(
                        "{stem:<36} {engine:<6} {}  {why}  {secs:.1}s",
                        if required {
                            "FAIL"
                        } else {
                            "fail (not in manifest)"
                        }
                    );
                    if required {
                        failures.push(format!("{stem} ({engine}): {why}"));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "development models that must pass failed:\n{}",
        failures.join("\n")
    );
}
