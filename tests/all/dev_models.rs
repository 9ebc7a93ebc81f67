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

/// Development models whose batch is separable, compiled for batch 1, run a batch of 2 as
/// slices with the outputs of the model compiled for batch 2 (within f32 rounding: the kernels
/// may block a 2-row product differently).
#[test]
fn separable_dev_models_run_a_bigger_batch_without_recompiling() {
    let dir = models_dir();
    if !dir.is_dir() {
        println!("note: no development models at {}: skipped", dir.display());
        return;
    }
    // (model, input, dims after the batch, integer inputs' exclusive upper bound)
    let cases: [(&str, &str, &[usize], Option<u32>); 2] = [
        ("mlp_784_512_512_10", "input", &[1, 28, 28], None),
        ("magika_standard_v3_3", "bytes", &[2048], Some(257)),
    ];
    for (stem, input, rest, int_bound) in cases {
        let model = dir.join(format!("{stem}.onnx"));
        if !model.is_file() {
            println!("{stem}: not in {}: skipped", dir.display());
            continue;
        }
        let out = TempDir::new(&format!("batch-{stem}"));
        let art = out.join("m.mlca");
        let one: Vec<String> = std::iter::once("1".to_string())
            .chain(rest.iter().map(|d| d.to_string()))
            .collect();
        let shape = format!("{input}={}", one.join("x"));
        mlc(&[
            &"compile",
            &model,
            &"--target",
            &"x86_64",
            &"--shape",
            &shape,
            &"-o",
            &art,
        ])
        .assert_success();
        let dims: Vec<usize> = std::iter::once(2).chain(rest.iter().copied()).collect();
        let n: usize = dims.iter().product();
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s >> 40
        };
        let arr = match int_bound {
            None => {
                let v: Vec<u8> = (0..n)
                    .flat_map(|_| ((next() as f32 / (1u64 << 24) as f32) * 2.0 - 1.0).to_le_bytes())
                    .collect();
                mlc_runtime::npy::NpyArray::from_le_bytes(mlc_runtime::npy::ElemType::F32, dims, v)
            }
            Some(b) => {
                let v: Vec<u8> = (0..n)
                    .flat_map(|_| ((next() % b as u64) as i32).to_le_bytes())
                    .collect();
                mlc_runtime::npy::NpyArray::from_le_bytes(mlc_runtime::npy::ElemType::I32, dims, v)
            }
        }
        .expect("data fills the shape");
        let x = out.join("x.npy");
        std::fs::write(&x, arr.to_bytes()).expect("writable");
        let given = format!("{input}={}", x.display());
        let (sliced, whole) = (out.join("sliced"), out.join("whole"));
        mlc(&[&"run", &art, &"--input", &given, &"--output-dir", &sliced]).assert_success();
        mlc(&[
            &"run",
            &model,
            &"--engine",
            &"cpu",
            &"--input",
            &given,
            &"--output-dir",
            &whole,
        ])
        .assert_success();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&whole)
            .expect("outputs written")
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{stem}: no outputs");
        for f in files {
            let name = f.file_name().expect("a file name");
            let (ws, w) = read_npy_f64(&f).expect("valid .npy");
            let (ss, got) = read_npy_f64(&sliced.join(name)).expect("valid .npy");
            assert_eq!(ws, ss, "{stem}: output shapes");
            assert_eq!(ws.first(), Some(&2), "{stem}: the batch of 2");
            let e = tolerance::rel_error(&w.expect("numbers"), &got.expect("numbers"))
                .expect("comparable");
            assert!(e <= 1e-5, "{stem}: sliced batch differs by {e:.2e}");
            println!("{stem}: batch of 2 as slices, max rel err {e:.1e}");
        }
    }
}
