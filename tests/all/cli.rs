//! The `mlc` binary end to end: a good run, then every kind of bad input.
//!
//! Each bad case asserts a clean failure (exit status 1, one `error:` paragraph naming the
//! problem, no panic) and that the output directory got no file.

use mlc_runtime::npy::{ElemType, NpyArray};
use mlc_tests::onnx::{self, Attr, D, elem};
use mlc_tests::{TempDir, mlc, read_npy_f64};
use std::path::{Path, PathBuf};

/// `y = Relu(x)` for `x: f32[N,3]`, with an output name that needs sanitizing.
fn relu_model() -> Vec<u8> {
    onnx::model(
        17,
        &[onnx::node("Relu", "relu_0", &["x"], &["out/0:y"], &[])],
        &[onnx::value("x", elem::FLOAT, &[D::S("N"), D::N(3)])],
        &[onnx::value("out/0:y", elem::FLOAT, &[D::S("N"), D::N(3)])],
        &[],
    )
}

/// `s = x + z` for two `f32[2]` inputs.
fn add_model() -> Vec<u8> {
    onnx::model(
        17,
        &[onnx::node("Add", "add_0", &["x", "z"], &["s"], &[])],
        &[
            onnx::value("x", elem::FLOAT, &[D::N(2)]),
            onnx::value("z", elem::FLOAT, &[D::N(2)]),
        ],
        &[onnx::value("s", elem::FLOAT, &[D::N(2)])],
        &[],
    )
}

/// `y = Tanh(Relu(x) + z)` for `f32[4]` inputs: two elementwise ops after a first, one fused
/// kernel when optimized.
fn chain_model() -> Vec<u8> {
    onnx::model(
        17,
        &[
            onnx::node("Relu", "relu_0", &["x"], &["r"], &[]),
            onnx::node("Add", "add_0", &["r", "z"], &["s"], &[]),
            onnx::node("Tanh", "tanh_0", &["s"], &["y"], &[]),
        ],
        &[
            onnx::value("x", elem::FLOAT, &[D::N(4)]),
            onnx::value("z", elem::FLOAT, &[D::N(4)]),
        ],
        &[onnx::value("y", elem::FLOAT, &[D::N(4)])],
        &[],
    )
}

/// One Transpose node with the given attributes, on `x: f32[2,3]`.
fn transpose_model(attrs: &[Attr]) -> Vec<u8> {
    onnx::model(
        17,
        &[onnx::node(
            "Transpose",
            "bad_transpose",
            &["x"],
            &["y"],
            attrs,
        )],
        &[onnx::value("x", elem::FLOAT, &[D::N(2), D::N(3)])],
        &[onnx::value("y", elem::FLOAT, &[D::N(3), D::N(2)])],
        &[],
    )
}

fn npy_f32(shape: &[usize], v: &[f32]) -> Vec<u8> {
    let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    NpyArray::from_le_bytes(ElemType::F32, shape.to_vec(), bytes)
        .expect("data fills the shape")
        .to_bytes()
}

/// A scratch directory holding the given files, and an `out` directory path that does not exist.
struct Case {
    dir: TempDir,
}

impl Case {
    fn new(tag: &str, files: &[(&str, &[u8])]) -> Case {
        let dir = TempDir::new(tag);
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).expect("temp files are writable");
        }
        Case { dir }
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn out(&self) -> PathBuf {
        self.dir.join("out")
    }

    /// `mlc run MODEL --input ... --output-dir out`, from inside the case directory.
    fn run(&self, model: &str, inputs: &[&str]) -> mlc_tests::Run {
        let mut args: Vec<String> = vec!["run".into(), self.p(model).display().to_string()];
        for i in inputs {
            args.push("--input".into());
            let (name, file) = i.split_once('=').expect("NAME=FILE");
            args.push(format!("{name}={}", self.p(file).display()));
        }
        args.push("--output-dir".into());
        args.push(self.out().display().to_string());
        let refs: Vec<&dyn AsRef<std::ffi::OsStr>> = args.iter().map(|a| a as _).collect();
        mlc(&refs)
    }

    fn inspect(&self, model: &str, json: bool) -> mlc_tests::Run {
        let m = self.p(model);
        if json {
            mlc(&[&"inspect", &m, &"--json"])
        } else {
            mlc(&[&"inspect", &m])
        }
    }

    fn assert_no_outputs(&self) {
        let out = self.out();
        let left: Vec<_> = std::fs::read_dir(&out)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "a failed run left files in {}: {left:?}",
            out.display()
        );
    }
}

fn xorshift_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

#[test]
fn run_writes_sanitized_outputs() {
    let c = Case::new(
        "run-ok",
        &[
            ("m.onnx", &relu_model()),
            ("x.npy", &npy_f32(&[2, 3], &[-1., 2., -3., 4., 0., 6.])),
        ],
    );
    let r = c.run("m.onnx", &["x=x.npy"]);
    r.assert_success();
    assert!(
        r.stdout.contains("out/0:y"),
        "the summary names the output: {}",
        r.stdout
    );
    let files: Vec<_> = std::fs::read_dir(c.out())
        .expect("out exists")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        files,
        ["out_0_y.npy"],
        "exactly one output file, sanitized, no temporary left"
    );
    let (shape, v) = read_npy_f64(&c.out().join("out_0_y.npy")).expect("mlc writes valid .npy");
    assert_eq!(shape, [2, 3]);
    assert_eq!(v, Some(vec![0., 2., 0., 4., 0., 6.]));
}

/// `--engine kir` and `--engine cpu` (lowered to kernel IR; evaluated, or compiled with
/// Cranelift) give the interpreter's results; `--emit` prints a stage instead of running.
#[test]
fn run_with_lowered_engines_and_emit() {
    let c = Case::new(
        "run-engines",
        &[
            ("m.onnx", &add_model()),
            ("x.npy", &npy_f32(&[2], &[1.5, -2.0])),
            ("z.npy", &npy_f32(&[2], &[0.25, 4.0])),
        ],
    );
    for engine in ["interp", "kir", "cpu"] {
        let m = c.p("m.onnx");
        let (x, z, out) = (
            format!("x={}", c.p("x.npy").display()),
            format!("z={}", c.p("z.npy").display()),
            c.p(&format!("out-{engine}")),
        );
        let r = mlc(&[
            &"run",
            &m,
            &"-i",
            &x,
            &"-i",
            &z,
            &"-o",
            &out,
            &"--engine",
            &engine,
        ]);
        r.assert_success();
        let (shape, v) = read_npy_f64(&out.join("s.npy")).expect("valid .npy");
        assert_eq!(shape, [2], "{engine}");
        assert_eq!(v, Some(vec![1.75, 2.0]), "{engine}");
    }
    for (stage, needle) in [
        ("kernel-ir", "kernel @ew_add"),
        ("clif", "function %mlc_k0_ew_add"),
    ] {
        let m = c.p("m.onnx");
        let (x, z) = (
            format!("x={}", c.p("x.npy").display()),
            format!("z={}", c.p("z.npy").display()),
        );
        let r = mlc(&[&"run", &m, &"-i", &x, &"-i", &z, &"--emit", &stage]);
        r.assert_success();
        assert!(r.stdout.contains(needle), "{stage}: {}", r.stdout);
    }
}

#[test]
fn run_reads_tensorproto_inputs_and_defaults_to_cwd() {
    let raw: Vec<u8> = [1f32, 2., 3., -4., 5., -6.]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let pb = onnx::tensor_raw("x", elem::FLOAT, &[2, 3], &raw).0;
    let c = Case::new("run-pb", &[("m.onnx", &relu_model()), ("x.pb", &pb)]);
    let r = mlc_tests::mlc_in(c.dir.path(), &[&"run", &"m.onnx", &"--input", &"x=x.pb"]);
    r.assert_success();
    let (_, v) = read_npy_f64(&c.p("out_0_y.npy")).expect("output in the current directory");
    assert_eq!(v, Some(vec![1., 2., 3., 0., 5., 0.]));
}

#[test]
fn inspect_describes_the_model() {
    let c = Case::new("inspect", &[("m.onnx", &relu_model())]);
    let r = c.inspect("m.onnx", false);
    r.assert_success();
    for needle in ["Relu", "x", "out/0:y", "f32", "unsupported ops: none"] {
        assert!(
            r.stdout.contains(needle),
            "inspect should mention {needle:?}:\n{}",
            r.stdout
        );
    }
    let r = c.inspect("m.onnx", true);
    r.assert_success();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("--json prints JSON");
    assert_eq!(v["inputs"][0]["name"], "x", "{v}");
    assert_eq!(v["inputs"][0]["dtype"], "f32", "{v}");
    assert_eq!(
        v["inputs"][0]["shape"],
        serde_json::json!(["N", "3"]),
        "{v}"
    );
    assert_eq!(v["outputs"][0]["name"], "out/0:y", "{v}");
    assert_eq!(v["ops"]["Relu"], 1, "{v}");
    assert_eq!(v["unsupported"], serde_json::json!([]), "{v}");
}

#[test]
fn unsupported_ops_are_all_listed_with_their_nodes() {
    let m = onnx::model(
        17,
        &[
            onnx::node("NoSuchOp", "mystery_1", &["x"], &["a"], &[]),
            onnx::node("NoSuchOp", "mystery_2", &["a"], &["b"], &[]),
            onnx::node("AlsoMissing", "mystery_3", &["b"], &["y"], &[]),
        ],
        &[onnx::value("x", elem::FLOAT, &[D::N(2)])],
        &[onnx::value("y", elem::FLOAT, &[D::N(2)])],
        &[],
    );
    let c = Case::new(
        "unsupported",
        &[("m.onnx", &m), ("x.npy", &npy_f32(&[2], &[1., 2.]))],
    );
    let needles = [
        "NoSuchOp",
        "mystery_1",
        "mystery_2",
        "AlsoMissing",
        "mystery_3",
    ];
    // inspect succeeds and lists them; run fails and names them all at once.
    let r = c.inspect("m.onnx", false);
    r.assert_success();
    for n in needles {
        assert!(
            r.stdout.contains(n),
            "inspect should list {n}:\n{}",
            r.stdout
        );
    }
    let v: serde_json::Value =
        serde_json::from_str(&c.inspect("m.onnx", true).stdout).expect("JSON");
    let listed: Vec<(String, Vec<String>)> = v["unsupported"]
        .as_array()
        .expect("an array of unsupported ops")
        .iter()
        .map(|u| {
            let nodes = u["nodes"].as_array().into_iter().flatten();
            (
                u["op"].as_str().unwrap_or("").to_string(),
                nodes
                    .map(|n| n.as_str().unwrap_or("").to_string())
                    .collect(),
            )
        })
        .collect();
    assert!(
        listed.contains(&(
            "NoSuchOp".into(),
            vec!["mystery_1".into(), "mystery_2".into()]
        )),
        "{v}"
    );
    assert!(
        listed.contains(&("AlsoMissing".into(), vec!["mystery_3".into()])),
        "{v}"
    );
    c.run("m.onnx", &["x=x.npy"]).assert_error(&needles);
    c.assert_no_outputs();
}

#[test]
fn truncated_and_random_models_fail_cleanly() {
    let good = relu_model();
    let x = npy_f32(&[2, 3], &[0.; 6]);
    let mut cases: Vec<Vec<u8>> = vec![good[..good.len() / 2].to_vec(), good[..7].to_vec(), vec![]];
    cases.extend((1..=4).map(|seed| xorshift_bytes(seed, 64 << seed)));
    for (i, bytes) in cases.iter().enumerate() {
        let c = Case::new("bad-model", &[("bad.onnx", bytes), ("x.npy", &x)]);
        c.run("bad.onnx", &["x=x.npy"]).assert_error(&["bad.onnx"]);
        c.assert_no_outputs();
        let r = c.inspect("bad.onnx", false);
        assert_ne!(
            r.code,
            Some(0),
            "case {i}: inspect of a broken model must fail"
        );
        r.assert_error(&["bad.onnx"]);
    }
    let c = Case::new("no-model", &[]);
    let r = c.run("absent.onnx", &[]);
    r.assert_error(&["absent.onnx"]);
    // The I/O error once, not again as its own cause.
    assert_eq!(r.stderr.matches("os error").count(), 1, "{}", r.stderr);
}

#[test]
fn bad_attributes_name_the_node() {
    let x = npy_f32(&[2, 3], &[0.; 6]);
    for attrs in [
        vec![Attr::Ints("perm", vec![0, 0])],
        vec![Attr::Str("perm", "1,0")],
    ] {
        let c = Case::new(
            "bad-attr",
            &[("m.onnx", &transpose_model(&attrs)), ("x.npy", &x)],
        );
        c.run("m.onnx", &["x=x.npy"])
            .assert_error(&["bad_transpose", "perm"]);
        c.assert_no_outputs();
    }
}

#[test]
fn input_errors_name_the_input() {
    let x = npy_f32(&[2], &[1., 2.]);
    let f64_bytes: Vec<u8> = [1f64, 2.].iter().flat_map(|v| v.to_le_bytes()).collect();
    let x64 = NpyArray::from_le_bytes(ElemType::F64, vec![2], f64_bytes)
        .expect("fills")
        .to_bytes();
    let x3 = npy_f32(&[3], &[1., 2., 3.]);
    let c = Case::new(
        "bad-input",
        &[
            ("m.onnx", &add_model()),
            ("x.npy", &x),
            ("x64.npy", &x64),
            ("x3.npy", &x3),
            ("trunc.npy", &x[..x.len() - 3]),
            ("random.npy", &xorshift_bytes(7, 300)),
            ("random.pb", &xorshift_bytes(9, 300)),
        ],
    );
    let cases: &[(&[&str], &[&str])] = &[
        (&["x=x.npy"], &["missing input", "\"z\""]),
        (
            &["x=x.npy", "z=x.npy", "q=x.npy"],
            &["no input named \"q\"", "\"z\""],
        ),
        (
            &["x=x.npy", "x=x.npy", "z=x.npy"],
            &["\"x\"", "more than once"],
        ),
        (
            &["x=x.npy", "z=x64.npy"],
            &["input \"z\"", "expected f32[2]", "given f64[2]", "x64.npy"],
        ),
        (
            &["x=x3.npy", "z=x.npy"],
            &["input \"x\"", "expected f32[2]", "given f32[3]", "x3.npy"],
        ),
        (
            &["x=x.npy", "z=trunc.npy"],
            &["input \"z\"", "trunc.npy", ".npy"],
        ),
        (
            &["x=random.npy", "z=x.npy"],
            &["input \"x\"", "random.npy", "not a .npy file"],
        ),
        (&["x=x.npy", "z=random.pb"], &["input \"z\"", "random.pb"]),
        (&["x=x.npy", "z=absent.npy"], &["input \"z\"", "absent.npy"]),
    ];
    for (inputs, needles) in cases {
        c.run("m.onnx", inputs).assert_error(needles);
        c.assert_no_outputs();
    }
    // The good case works, so the failures above are the inputs' fault.
    c.run("m.onnx", &["x=x.npy", "z=x.npy"]).assert_success();
}

#[test]
fn output_dir_that_is_a_file_is_refused() {
    let c = Case::new(
        "out-file",
        &[
            ("m.onnx", &relu_model()),
            ("x.npy", &npy_f32(&[1, 3], &[1., 2., 3.])),
        ],
    );
    std::fs::write(c.out(), b"not a dir").expect("writable");
    c.run("m.onnx", &["x=x.npy"])
        .assert_error(&["not a directory"]);
}

#[test]
fn usage_errors_exit_with_2() {
    let r = mlc(&[&"run"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    let r = mlc(&[&"run", &Path::new("m.onnx"), &"--input", &"no-equals-sign"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("NAME=FILE"), "{}", r.stderr);
    let r = mlc(&[&"--help"]);
    assert_eq!(r.code, Some(0));
    assert!(
        r.stdout.contains("inspect") && r.stdout.contains("run"),
        "{}",
        r.stdout
    );
}

/// `mlc opt`: the optimized IR is deterministic, `--explain --json` reports the kernels, an
/// ONNX model is imported and bound with `--shape`, and a bad file is one clean error.
#[test]
fn opt_optimizes_and_explains() {
    let ir = r#"graph (%0: f32[2,3] "x") -> (%3 "y") {
  @c0 = const f32[] [4.0]
  %1 = constant @c0 : f32[]
  %2 = ew.div(%0, %1) : f32[2,3]
  %3 = ew.tanh(%2) : f32[2,3]
}
"#;
    let c = Case::new(
        "opt",
        &[
            ("g.mlir", ir.as_bytes()),
            ("bad.mlir", b"graph (%0: f31[2] \"x\") -> () {}"),
            ("m.onnx", &relu_model()),
        ],
    );
    let g = c.p("g.mlir");
    let first = mlc(&[&"opt", &g]);
    first.assert_success();
    assert!(
        first
            .stdout
            .contains(r#"control.composite {"kind":"mul+tanh"}"#),
        "{}",
        first.stdout
    );
    assert_eq!(mlc(&[&"opt", &g]).stdout, first.stdout, "deterministic");

    let r = mlc(&[&"opt", &g, &"--explain", &"--json", &"--target", &"sm_90"]);
    r.assert_success();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("--json prints JSON");
    assert_eq!(v["target"], "sm_90", "{v}");
    assert_eq!(
        (v["kernels_before"].as_u64(), v["kernels_after"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(v["kernels"][0]["name"], "mul+tanh", "{v}");
    assert_eq!(v["phases"][0]["stop"], "saturated", "{v}");

    let r = mlc(&[&"opt", &c.p("m.onnx"), &"--shape", &"x=2,3", &"--explain"]);
    r.assert_success();
    assert!(r.stdout.contains("kernels: 1 -> 1"), "{}", r.stdout);

    mlc(&[&"opt", &c.p("bad.mlir")]).assert_error(&["bad.mlir", "unknown dtype"]);
}

#[test]
fn cpu_artifacts_compile_run_bench_and_fail_cleanly() {
    let c = Case::new(
        "cpu-artifact",
        &[
            ("m.onnx", &add_model()),
            ("x.npy", &npy_f32(&[2], &[1.5, -2.0])),
            ("z.npy", &npy_f32(&[2], &[0.25, 4.0])),
            ("z3.npy", &npy_f32(&[3], &[0.25, 4.0, 1.0])),
        ],
    );
    let (m, art) = (c.p("m.onnx"), c.p("m.mlca"));
    let r = mlc(&[&"compile", &m, &"--target", &"x86_64", &"-o", &art]);
    r.assert_success();
    assert!(r.stdout.contains("x86_64"), "{}", r.stdout);
    let first = std::fs::read(&art).expect("artifact written");
    // Deterministic: the same model and flags give the same bytes.
    mlc(&[&"compile", &m, &"--target", &"native", &"-o", &art]).assert_success();
    assert_eq!(
        first,
        std::fs::read(&art).expect("artifact"),
        "artifact bytes differ"
    );
    // `mlc inspect` describes the artifact: target, needs, ports, kernels.
    let r = mlc(&[&"inspect", &art]);
    r.assert_success();
    for needle in ["x86_64-linux", "ABI", "CPU features", "f32[2]", "kernels:"] {
        assert!(r.stdout.contains(needle), "{needle}: {}", r.stdout);
    }
    let r = mlc(&[&"inspect", &art, &"--json"]);
    r.assert_success();
    let j: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(j["target"], "x86_64-linux", "{j}");
    assert_eq!(j["inputs"].as_array().map(Vec::len), Some(2), "{j}");
    assert!(j["kernels"].as_u64().is_some_and(|k| k >= 1), "{j}");
    assert_eq!(
        j["cpu"]["missing_features"].as_array().map(Vec::len),
        Some(0),
        "{j}"
    );
    // `mlc run` executes the artifact; outputs as for the model.
    let r = c.run("m.mlca", &["x=x.npy", "z=z.npy"]);
    r.assert_success();
    let (shape, v) = read_npy_f64(&c.out().join("s.npy")).expect("valid .npy");
    assert_eq!((shape, v), (vec![2], Some(vec![1.75, 2.0])));
    // Inputs must fit the compiled shapes; every input must be given.
    c.run("m.mlca", &["x=x.npy", "z=z3.npy"])
        .assert_error(&["input \"z\" does not fit", "f32[2]"]);
    c.run("m.mlca", &["x=x.npy"])
        .assert_error(&["missing input \"z\""]);
    // `mlc bench --json` on the artifact and on the model.
    for target in [&art, &m] {
        let r = mlc(&[
            &"bench",
            target,
            &"--iters",
            &"3",
            &"--threads",
            &"1",
            &"--json",
        ]);
        r.assert_success();
        let j: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
        assert!(j["median_ms"].as_f64().is_some_and(|t| t >= 0.0), "{j}");
        assert!(j["p90_ms"].as_f64().is_some(), "{j}");
    }
    // A truncated artifact and one for a GPU are clear errors.
    std::fs::write(c.p("cut.mlca"), &first[..first.len() / 2]).expect("write");
    c.run("cut.mlca", &["x=x.npy", "z=z.npy"])
        .assert_error(&["cut.mlca", "truncated"]);
    // Random bytes named like an artifact are a bad artifact, not a bad ONNX file; a missing
    // one says so once.
    std::fs::write(c.p("noise.mlca"), xorshift_bytes(7, 300)).expect("write");
    c.run("noise.mlca", &["x=x.npy"])
        .assert_error(&["noise.mlca", "not an mlc artifact"]);
    mlc(&[&"inspect", &c.p("noise.mlca")]).assert_error(&["noise.mlca", "not an mlc artifact"]);
    let r = c.run("absent.mlca", &[]);
    r.assert_error(&["absent.mlca"]);
    assert_eq!(r.stderr.matches("os error").count(), 1, "{}", r.stderr);
}

/// `mlc compile --explain [--json]` reports the optimizer's work without compiling; `-O0`
/// leaves the graph unfused, `-O1` (the default) fuses the chain into one kernel, and both
/// compile to artifacts that compute the same outputs.
#[test]
fn compile_explains_and_opt_levels_agree() {
    let c = Case::new(
        "compile-explain",
        &[
            ("m.onnx", &chain_model()),
            ("x.npy", &npy_f32(&[4], &[-1.0, 0.5, 2.0, -0.25])),
            ("z.npy", &npy_f32(&[4], &[0.25, 0.5, -3.0, 1.0])),
        ],
    );
    let m = c.p("m.onnx");
    let r = mlc(&[
        &"compile",
        &m,
        &"--target",
        &"x86_64",
        &"--explain",
        &"--json",
    ]);
    r.assert_success();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("--json prints JSON");
    let opt = &v["optimize"];
    assert_eq!(opt["target"], "x86_64", "{v}");
    assert_eq!(
        (
            opt["kernels_before"].as_u64(),
            opt["kernels_after"].as_u64()
        ),
        (Some(3), Some(1)),
        "{v}"
    );
    assert_eq!(opt["kernels"][0]["name"], "relu+add+tanh", "{v}");
    assert_eq!(opt["phases"][0]["stop"], "saturated", "{v}");
    assert_eq!(v["kir_launches"].as_u64(), Some(1), "{v}");
    // The CPU backend's epilogue fusions are in the JSON too (none here: no contraction).
    assert_eq!(v["cpu_epilogues"]["tails"].as_u64(), Some(0), "{v}");
    assert_eq!(
        v["cpu_epilogues"]["requant_tables"].as_u64(),
        Some(0),
        "{v}"
    );
    assert_eq!(v["cpu_epilogues"]["requant_split"].as_u64(), Some(0), "{v}");
    assert_eq!(
        v["cpu_copies"]["concat_steps_removed"].as_u64(),
        Some(0),
        "{v}"
    );
    // -O0 explains an unoptimized graph: three kernels.
    let r = mlc(&[&"compile", &m, &"-O0", &"--explain", &"--json"]);
    r.assert_success();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("--json prints JSON");
    assert_eq!(v["kir_launches"].as_u64(), Some(3), "{v}");
    // A binding of the wrong rank is one error, said once.
    let r = mlc(&[&"compile", &m, &"--shape", &"x=2x2", &"--explain"]);
    r.assert_error(&["the binding gives 2 dims"]);
    assert_eq!(
        r.stderr.matches("the binding gives").count(),
        1,
        "{}",
        r.stderr
    );
    let text = mlc(&[&"compile", &m, &"--explain"]);
    text.assert_success();
    assert!(text.stdout.contains("kernels: 3 -> 1"), "{}", text.stdout);

    let ir = |level: &str| {
        let r = mlc(&[&"compile", &m, &level, &"--emit", &"ir"]);
        r.assert_success();
        r.stdout
    };
    let (o0, o1) = (ir("-O0"), ir("-O1"));
    assert!(!o0.contains("control.composite"), "{o0}");
    assert!(o1.contains("control.composite"), "{o1}");

    let want = [(-1.0f64, 0.25f64), (0.5, 0.5), (2.0, -3.0), (-0.25, 1.0)]
        .map(|(x, z)| (x.max(0.0) + z).tanh());
    for level in ["-O0", "-O1"] {
        let art = c.p(&format!("m{level}.mlca"));
        mlc(&[&"compile", &m, &level, &"--target", &"x86_64", &"-o", &art]).assert_success();
        let r = c.run(&format!("m{level}.mlca"), &["x=x.npy", "z=z.npy"]);
        r.assert_success();
        let (shape, got) = read_npy_f64(&c.out().join("y.npy")).expect("valid .npy");
        let got = got.expect("f32 output");
        assert_eq!(shape, vec![4]);
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{level}: {got:?} vs {want:?}");
        }
    }
}

/// `y = Reshape(x, shape)` with the target shape a run-time input: no static shape exists until
/// its value is known, so compiling needs it (`--input`), and the artifact is specialized to it.
#[test]
fn inputs_that_determine_shapes_are_specialized_and_guarded() {
    let model = onnx::model(
        17,
        &[onnx::node(
            "Reshape",
            "reshape_0",
            &["x", "shape"],
            &["y"],
            &[],
        )],
        &[
            onnx::value("x", elem::FLOAT, &[D::N(6)]),
            onnx::value("shape", elem::INT64, &[D::N(2)]),
        ],
        &[onnx::value("y", elem::FLOAT, &[D::S("r"), D::S("c")])],
        &[],
    );
    let npy_i64 = |v: &[i64]| {
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        NpyArray::from_le_bytes(ElemType::I64, vec![v.len()], bytes)
            .expect("data fills the shape")
            .to_bytes()
    };
    let c = Case::new(
        "specialize",
        &[
            ("m.onnx", &model),
            ("x.npy", &npy_f32(&[6], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0])),
            ("s23.npy", &npy_i64(&[2, 3])),
            ("s32.npy", &npy_i64(&[3, -1])),
        ],
    );
    let (m, art) = (c.p("m.onnx"), c.p("m.mlca"));
    // Without the value: a clear error saying which input to give.
    mlc(&[&"compile", &m, &"--target", &"x86_64", &"-o", &art])
        .assert_error(&["--input shape=FILE"]);
    assert!(!art.exists(), "a failed compile wrote {}", art.display());
    // With it: an artifact for [2,3] that refuses [3,-1].
    let s23 = format!("shape={}", c.p("s23.npy").display());
    mlc(&[
        &"compile",
        &m,
        &"--target",
        &"x86_64",
        &"--input",
        &s23,
        &"-o",
        &art,
    ])
    .assert_success();
    c.run("m.mlca", &["x=x.npy", "shape=s23.npy"])
        .assert_success();
    let (shape, v) = read_npy_f64(&c.out().join("y.npy")).expect("valid .npy");
    assert_eq!(shape, vec![2, 3]);
    assert_eq!(v, Some(vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]));
    c.run("m.mlca", &["x=x.npy", "shape=s32.npy"])
        .assert_error(&["input shape", "compiled for one value"]);
    // bench feeds the specialized input its value.
    mlc(&[
        &"bench",
        &art,
        &"--iters",
        &"2",
        &"--threads",
        &"1",
        &"--json",
    ])
    .assert_success();
    // `mlc run` on the model compiles for the values it is given.
    let r = mlc(&[
        &"run",
        &m,
        &"--engine",
        &"cpu",
        &"--input",
        &format!("x={}", c.p("x.npy").display()),
        &"--input",
        &format!("shape={}", c.p("s32.npy").display()),
        &"--output-dir",
        &c.out(),
    ]);
    r.assert_success();
    let (shape, _) = read_npy_f64(&c.out().join("y.npy")).expect("valid .npy");
    assert_eq!(shape, vec![3, 2]);
}

/// `y = Softmax(x·W + b)` over `x: f32[N,3,4]` (`axis` of the softmax given): separable along
/// `N` unless the softmax runs over it.
fn batch_model(softmax_axis: i64) -> Vec<u8> {
    let w: Vec<f32> = (0..20).map(|i| (i as f32 - 9.5) / 7.0).collect();
    let b: Vec<f32> = (0..5).map(|i| i as f32 / 10.0).collect();
    onnx::model(
        17,
        &[
            onnx::node("MatMul", "mm", &["x", "w"], &["p"], &[]),
            onnx::node("Add", "bias", &["p", "b"], &["s"], &[]),
            onnx::node(
                "Softmax",
                "softmax",
                &["s"],
                &["y"],
                &[Attr::Int("axis", softmax_axis)],
            ),
        ],
        &[onnx::value(
            "x",
            elem::FLOAT,
            &[D::S("N"), D::N(3), D::N(4)],
        )],
        &[onnx::value(
            "y",
            elem::FLOAT,
            &[D::S("N"), D::N(3), D::N(5)],
        )],
        &[
            onnx::tensor_f32("w", &[4, 5], &w),
            onnx::tensor_f32("b", &[5], &b),
        ],
    )
}

/// An artifact compiled for batch 1 runs a batch of 3 as slices, with the outputs of a model
/// compiled for batch 3; a model that normalizes over the batch stays at its compiled shape.
#[test]
fn batch_separable_artifacts_run_any_multiple_of_their_batch() {
    let x3: Vec<f32> = (0..36).map(|i| ((i * 7 % 13) as f32 - 6.0) / 3.0).collect();
    let c = Case::new(
        "batch",
        &[
            ("m.onnx", &batch_model(-1)),
            ("mixed.onnx", &batch_model(0)),
            ("x3.npy", &npy_f32(&[3, 3, 4], &x3)),
        ],
    );
    let (m, art) = (c.p("m.onnx"), c.p("m.mlca"));
    let r = mlc(&[
        &"compile",
        &m,
        &"--target",
        &"x86_64",
        &"--shape",
        &"x=1x3x4",
        &"--explain",
    ]);
    r.assert_success();
    assert!(
        r.stdout
            .contains("batch: any multiple of 1 along axis 0 of x"),
        "{}",
        r.stdout
    );
    mlc(&[
        &"compile",
        &m,
        &"--target",
        &"x86_64",
        &"--shape",
        &"x=1x3x4",
        &"-o",
        &art,
    ])
    .assert_success();
    c.run("m.mlca", &["x=x3.npy"]).assert_success();
    let (shape, sliced) = read_npy_f64(&c.out().join("y.npy")).expect("valid .npy");
    assert_eq!(shape, vec![3, 3, 5]);
    // The same model compiled for batch 3.
    let whole = c.dir.join("whole");
    mlc(&[
        &"run",
        &m,
        &"--engine",
        &"cpu",
        &"--input",
        &format!("x={}", c.p("x3.npy").display()),
        &"--output-dir",
        &whole,
    ])
    .assert_success();
    let (_, want) = read_npy_f64(&whole.join("y.npy")).expect("valid .npy");
    let (sliced, want) = (sliced.expect("numbers"), want.expect("numbers"));
    assert_eq!(sliced.len(), want.len());
    for (a, b) in sliced.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
    }
    // bench takes the bigger batch as a shape.
    mlc(&[
        &"bench", &art, &"--shape", &"x=4x3x4", &"--iters", &"2", &"--json",
    ])
    .assert_success();
    mlc(&[
        &"bench", &art, &"--shape", &"x=4x3x5", &"--iters", &"2", &"--json",
    ])
    .assert_error(&["--shape x", "multiple"]);

    // Softmax over axis 0 mixes the batch: fixed shapes, and the reason is shown.
    let (mixed, mixed_art) = (c.p("mixed.onnx"), c.p("mixed.mlca"));
    let r = mlc(&[
        &"compile",
        &mixed,
        &"--target",
        &"x86_64",
        &"--shape",
        &"x=1x3x4",
        &"--explain",
    ]);
    r.assert_success();
    assert!(
        r.stdout.contains("batch: fixed") && r.stdout.contains("softmax"),
        "{}",
        r.stdout
    );
    mlc(&[
        &"compile",
        &mixed,
        &"--target",
        &"x86_64",
        &"--shape",
        &"x=1x3x4",
        &"-o",
        &mixed_art,
    ])
    .assert_success();
    c.run("mixed.mlca", &["x=x3.npy"])
        .assert_error(&["input \"x\" does not fit", "f32[N=1,3,4]"]);
}

/// `y = Softmax(x·W, axis=1)` over `x: f32[B,S,4]`: the softmax mixes the sequence axis `S`,
/// so each sequence length needs its own code.
fn seq_model() -> Vec<u8> {
    let w: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) / 4.0).collect();
    onnx::model(
        17,
        &[
            onnx::node("MatMul", "mm", &["x", "w"], &["p"], &[]),
            onnx::node(
                "Softmax",
                "softmax",
                &["p"],
                &["y"],
                &[Attr::Int("axis", 1)],
            ),
        ],
        &[onnx::value(
            "x",
            elem::FLOAT,
            &[D::S("B"), D::S("S"), D::N(4)],
        )],
        &[onnx::value(
            "y",
            elem::FLOAT,
            &[D::S("B"), D::S("S"), D::N(3)],
        )],
        &[onnx::tensor_f32("w", &[4, 3], &w)],
    )
}

/// `--dim S=2,5,7` compiles one artifact that runs all three sequence lengths (and batches of
/// them as slices) with the results of a model compiled for each shape; other lengths, unknown
/// dims and GPU targets are clear errors.
#[test]
fn one_artifact_runs_several_sequence_lengths() {
    let x = |b: usize, s: usize| -> Vec<u8> {
        let v: Vec<f32> = (0..b * s * 4)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0)
            .collect();
        npy_f32(&[b, s, 4], &v)
    };
    let c = Case::new(
        "seqdims",
        &[
            ("m.onnx", &seq_model()),
            ("x5.npy", &x(1, 5)),
            ("x7.npy", &x(1, 7)),
            ("x2b5.npy", &x(2, 5)),
            ("x3.npy", &x(1, 3)),
        ],
    );
    let (m, art) = (c.p("m.onnx"), c.p("m.mlca"));
    let compile: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"compile",
        &m,
        &"--target",
        &"x86_64",
        &"--dim",
        &"B=1",
        &"--dim",
        &"S=2,5,7",
        &"-o",
        &art,
    ];
    let r = mlc(&compile);
    r.assert_success();
    assert!(r.stdout.contains("3 variants"), "{}", r.stdout);
    // No progress on a stderr that is not a terminal, unless asked for.
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    let r = mlc(&[compile.as_slice(), &[&"--progress"]].concat());
    r.assert_success();
    for line in [
        "mlc: importing",
        "mlc: optimizing [variant 2 of 3: x=1x5x4]",
        "mlc: lowering to the kernel IR [variant 3 of 3: x=1x7x4]",
        "mlc: generating code and linking 3 variants",
        "mlc: writing",
    ] {
        assert!(r.stderr.contains(line), "{line:?} not in {}", r.stderr);
    }
    let shown = c.inspect("m.mlca", false);
    shown.assert_success();
    assert!(
        shown.stdout.contains("variants (3)") && shown.stdout.contains("x f32[B=1,S=7,4]"),
        "{}",
        shown.stdout
    );
    let shown = c.inspect("m.mlca", true);
    assert!(shown.stdout.contains(r#""dims": ["#), "{}", shown.stdout);
    // `bench ART FLAG VALUE --json` runs, and reports the input shape `want`.
    let bench_json = |flag: &str, value: &str, want: &str| {
        let r = mlc(&[&"bench", &art, &flag, &value, &"--iters", &"2", &"--json"]);
        r.assert_success();
        let shapes = format!(r#""input_shapes":{{"x":{want}}}"#);
        assert!(r.stdout.contains(&shapes), "{}", r.stdout);
    };
    // bench picks a variant by the model's dim names, and names the sizes it lacks.
    bench_json("--dim", "S=5", "[1,5,4]");
    mlc(&[&"bench", &art, &"--dim", &"S=6", &"--iters", &"2"])
        .assert_error(&["no variant", "f32[B=1,S=5,4]"]);
    mlc(&[&"bench", &art, &"--dim", &"Q=5", &"--iters", &"2"]).assert_error(&["--dim Q"]);
    for file in ["x5.npy", "x7.npy", "x2b5.npy"] {
        let out = c.dir.join(format!("out-{file}"));
        mlc(&[
            &"run",
            &art,
            &"--input",
            &format!("x={}", c.p(file).display()),
            &"--output-dir",
            &out,
        ])
        .assert_success();
        let want_dir = c.dir.join(format!("want-{file}"));
        mlc(&[
            &"run",
            &m,
            &"--engine",
            &"cpu",
            &"--input",
            &format!("x={}", c.p(file).display()),
            &"--output-dir",
            &want_dir,
        ])
        .assert_success();
        let (shape, got) = read_npy_f64(&out.join("y.npy")).expect("valid .npy");
        let (want_shape, want) = read_npy_f64(&want_dir.join("y.npy")).expect("valid .npy");
        assert_eq!(shape, want_shape);
        let (got, want) = (got.expect("numbers"), want.expect("numbers"));
        assert_eq!(got.len(), want.len());
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-6, "{file}: {a} vs {b}");
        }
    }
    c.run("m.mlca", &["x=x3.npy"]).assert_error(&[
        "input \"x\" does not fit",
        "f32[B=1,S=2,4]",
        "f32[B=1,S=7,4]",
    ]);
    c.assert_no_outputs();
    bench_json("--shape", "x=1x7x4", "[1,7,4]");
    let r = mlc(&[&"bench", &art, &"--shape", &"x=1x5x4", &"--iters", &"2"]);
    r.assert_success();
    assert!(r.stdout.contains("variant  x=1x5x4 (of 3"), "{}", r.stdout);
    mlc(&[
        &"compile",
        &m,
        &"--target",
        &"x86_64",
        &"--dim",
        &"B=1",
        &"--dim",
        &"Q=3",
        &"-o",
        &art,
    ])
    .assert_error(&["--dim names \"Q\"", "B, S"]);
    mlc(&[
        &"compile",
        &m,
        &"--target",
        &"sm_90",
        &"--dim",
        &"B=1",
        &"--dim",
        &"S=2,5",
        &"-o",
        &art,
    ])
    .assert_error(&["CPU targets"]);
    let r = mlc(&[&"compile", &m, &"--target", &"x86_64", &"--dim", &"S=x"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("NAME=SIZE"), "{}", r.stderr);
}
