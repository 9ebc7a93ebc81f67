//! CPU artifacts end to end: compile, link, serialize, load through the runtime alone, run, and
//! compare with the JIT; determinism; and the bad-artifact errors (wrong target, CPU, ABI,
//! corrupt or truncated file).

use crate::{CompiledProgram, Options, compile_artifact};
use mlc_ir::{DType, Tensor, parse_graph};
use mlc_kir::lower_graph;
use mlc_runtime::artifact::{Artifact, ArtifactError};
use mlc_runtime::cpu::{CpuModel, ModelError};

/// A program with a matmul (the helper table's matmul), a transcendental (a libm helper), a
/// reduction and a reshape alias.
fn program() -> mlc_kir::Program {
    let g = parse_graph(
        r#"graph (%0: f32[4,8] "x", %1: f32[8,3] "w") -> (%4 "y", %5 "s") {
  %2 = nn.matmul(%0, %1) : f32[4,3]
  %3 = ew.tanh(%2) : f32[4,3]
  %4 = movement.reshape {"shape":[12],"allowzero":false} (%3, _) : f32[12]
  %5 = reduce.sum {"axes":[1],"keepdims":false,"noop_with_empty_axes":false} (%0, _) : f32[4]
}"#,
    )
    .expect("graph");
    lower_graph(&g).expect("lowering")
}

fn inputs() -> Vec<Tensor> {
    let x: Vec<f32> = (0..32).map(|i| (i as f32 * 0.37).sin()).collect();
    let w: Vec<f32> = (0..24).map(|i| (i as f32 * 0.11).cos()).collect();
    vec![
        Tensor::from_vec(&[4, 8], x).expect("x"),
        Tensor::from_vec(&[8, 3], w).expect("w"),
    ]
}

fn artifact_bytes() -> Vec<u8> {
    compile_artifact(&program(), Options::default())
        .expect("compiles")
        .to_bytes()
        .expect("serializes")
}

#[test]
fn artifact_runs_like_the_jit_and_is_deterministic() {
    let bytes = artifact_bytes();
    assert_eq!(bytes, artifact_bytes(), "same program, same artifact bytes");
    let model =
        CpuModel::from_artifact(&Artifact::from_bytes(&bytes).expect("reads")).expect("loads");
    assert_eq!(model.inputs().len(), 2);
    assert_eq!(model.outputs()[0].shape, vec![12]);
    let jit = CompiledProgram::new(&program()).expect("jit");
    let want = jit.run(&inputs(), 1).expect("jit runs");
    let ins: Vec<Vec<u8>> = inputs()
        .iter()
        .map(|t| t.to_le_bytes().expect("bytes"))
        .collect();
    let refs: Vec<&[u8]> = ins.iter().map(Vec::as_slice).collect();
    for threads in [1, 2] {
        let got = model.run_bytes(&refs, threads).expect("runs");
        for (w, g) in want.iter().zip(&got) {
            assert_eq!(
                &w.to_le_bytes().expect("bytes"),
                g,
                "artifact and JIT differ"
            );
        }
    }
    // Two models loaded from the same bytes are independent (each has its own helper table).
    let again =
        CpuModel::from_artifact(&Artifact::from_bytes(&bytes).expect("reads")).expect("loads");
    drop(model);
    assert!(again.run_bytes(&refs, 1).is_ok());
}

#[test]
fn bad_artifacts_are_clear_errors() {
    let bytes = artifact_bytes();
    let good = Artifact::from_bytes(&bytes).expect("reads");
    // Truncated and corrupted files fail in the container.
    assert!(matches!(
        Artifact::from_bytes(&bytes[..bytes.len() / 2]),
        Err(ArtifactError::Truncated { .. })
    ));
    let mut flipped = bytes.clone();
    let last = flipped.len() - 100;
    flipped[last] ^= 0x40;
    assert!(Artifact::from_bytes(&flipped).is_err());
    // A GPU artifact, or one for another ABI or CPU.
    let mut a = good.clone();
    a.target = "nvptx:sm_90".into();
    assert!(matches!(
        CpuModel::from_artifact(&a),
        Err(ModelError::Target { .. })
    ));
    let mut a = good.clone();
    a.meta["features"] = serde_json::json!(["sse4.2", "avx1024"]);
    let e = CpuModel::from_artifact(&a).expect_err("no such CPU");
    assert!(
        matches!(&e, ModelError::CpuFeatures { missing, .. } if missing == &["avx1024"]),
        "{e}"
    );
    let mut a = good.clone();
    a.meta["abi"] = serde_json::json!(999);
    assert!(matches!(
        CpuModel::from_artifact(&a),
        Err(ModelError::Abi { found: 999 })
    ));
    // A plan that points outside its memory never reaches the code.
    let mut a = good.clone();
    a.meta["arena_bytes"] = serde_json::json!(8);
    assert!(matches!(
        CpuModel::from_artifact(&a),
        Err(ModelError::Plan(_))
    ));
    // Inputs of the wrong size are run errors.
    let model = CpuModel::from_artifact(&good).expect("loads");
    assert!(model.run_bytes(&[&[0u8; 4], &[0u8; 96]], 1).is_err());
    let _ = DType::F32;
}

/// `y = tanh(x · w) + b` for an `n×8` input, with the weight and bias as constants.
fn program_rows(n: usize) -> mlc_kir::Program {
    let w: Vec<String> = (0..24)
        .map(|i| format!("{:?}", (i as f32 * 0.11).cos()))
        .collect();
    let g = parse_graph(&format!(
        r#"graph (%0: f32[{n},8] "x") -> (%5 "y") {{
  @c0 = const f32[8,3] [{}]
  @c1 = const f32[3] [0.5, -0.25, 2.0]
  %1 = constant @c0 : f32[8,3]
  %2 = constant @c1 : f32[3]
  %3 = nn.matmul(%0, %1) : f32[{n},3]
  %4 = ew.tanh(%3) : f32[{n},3]
  %5 = ew.add(%4, %2) : f32[{n},3]
}}"#,
        w.join(", ")
    ))
    .expect("graph");
    lower_graph(&g).expect("lowering")
}

fn rows(n: usize) -> Tensor {
    let x: Vec<f32> = (0..n * 8).map(|i| (i as f32 * 0.37).sin()).collect();
    Tensor::from_vec(&[n, 8], x).expect("x")
}

#[test]
fn variants_share_weights_and_run_by_shape() {
    use crate::compile_variants;
    use mlc_runtime::cpu::RunError;
    use mlc_runtime::cpu::model::WEIGHTS_SECTION;
    use mlc_runtime::npy::{ElemType, NpyArray};
    let sizes = [4usize, 6, 9];
    let programs: Vec<mlc_kir::Program> = sizes.iter().map(|&n| program_rows(n)).collect();
    let art = compile_variants(&programs, Options::default()).expect("compiles");
    let bytes = art.to_bytes().expect("serializes");
    let again = compile_variants(&programs, Options::default()).expect("compiles");
    assert_eq!(
        bytes,
        again.to_bytes().expect("serializes"),
        "deterministic"
    );
    let single = compile_artifact(&programs[0], Options::default()).expect("compiles");
    assert_eq!(
        art.section(WEIGHTS_SECTION).expect("weights").data.len(),
        single.section(WEIGHTS_SECTION).expect("weights").data.len(),
        "each constant is stored once for all variants"
    );
    // One variant is the plain artifact.
    assert_eq!(
        compile_variants(&programs[..1], Options::default())
            .expect("compiles")
            .to_bytes()
            .expect("serializes"),
        single.to_bytes().expect("serializes")
    );
    let model =
        CpuModel::from_artifact(&Artifact::from_bytes(&bytes).expect("reads")).expect("loads");
    assert_eq!(model.variants().len(), sizes.len());
    // Every variant runs its own code (the loader must not hand back another variant's
    // library) and agrees with the JIT of its program, whichever order they run in.
    for &i in &[2usize, 0, 1, 2] {
        let n = sizes[i];
        let x = rows(n);
        let want = CompiledProgram::new(&programs[i])
            .expect("jit")
            .run(std::slice::from_ref(&x), 1)
            .expect("jit runs");
        let arr = NpyArray::from_le_bytes(ElemType::F32, vec![n, 8], x.to_le_bytes().expect("b"))
            .expect("npy");
        for threads in [1, 2] {
            let got = model
                .run(std::slice::from_ref(&arr), threads)
                .expect("runs");
            assert_eq!(got[0].1.shape, vec![n, 3]);
            assert_eq!(
                got[0].1.to_bytes(),
                NpyArray::from_le_bytes(
                    ElemType::F32,
                    vec![n, 3],
                    want[0].to_le_bytes().expect("b")
                )
                .expect("npy")
                .to_bytes(),
                "variant {n}×8 differs from its JIT"
            );
        }
    }
    let odd =
        NpyArray::from_le_bytes(ElemType::F32, vec![5, 8], vec![0u8; 5 * 8 * 4]).expect("npy");
    match model.run(&[odd], 1) {
        Err(RunError::NoVariant { compiled, .. }) => {
            assert_eq!(compiled.len(), sizes.len(), "{compiled:?}")
        }
        other => panic!("expected NoVariant, got {other:?}"),
    }
}
