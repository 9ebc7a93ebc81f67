//! Shared setup for mlc's criterion benches: where the example model is, and inputs for it.

use std::path::PathBuf;

/// The example model written by `examples/make_tiny_cnn.py` (run `scripts/example.sh` once).
pub fn example_model() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = root.join("../examples/build/tiny_cnn.onnx");
    assert!(
        model.is_file(),
        "no example model at {}: run scripts/example.sh first",
        model.display()
    );
    model
}

/// `n` deterministic values in [-1, 1), the same on every run, so timings compare.
pub fn pseudo_random(n: usize) -> Vec<f32> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}
