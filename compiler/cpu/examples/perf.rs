//! Quick timings (not committed).
use mlc_cpu::{CompiledProgram, Options};
use mlc_ir::{DType, Tensor, parse_graph};
use std::time::Instant;

fn main() {
    let cases = [
        (
            "add",
            r#"graph (%0: f32[256,4096] "a", %1: f32[4096] "b") -> (%2 "y") {
  %2 = ew.add(%0, %1) : f32[256,4096]
}"#,
        ),
        (
            "relu",
            r#"graph (%0: f32[256,4096] "a") -> (%1 "y") {
  %1 = ew.relu(%0) : f32[256,4096]
}"#,
        ),
        (
            "tanh",
            r#"graph (%0: f32[256,4096] "a") -> (%1 "y") {
  %1 = ew.tanh(%0) : f32[256,4096]
}"#,
        ),
        (
            "softmax",
            r#"graph (%0: f32[256,4096] "a") -> (%1 "y") {
  %1 = reduce.softmax {"axis":1} (%0) : f32[256,4096]
}"#,
        ),
        (
            "matmul",
            r#"graph (%0: f32[256,512] "a", %1: f32[512,512] "b") -> (%2 "y") {
  %2 = nn.matmul(%0, %1) : f32[256,512]
}"#,
        ),
    ];
    for (name, src) in cases {
        let g = parse_graph(src).unwrap();
        let inputs: Vec<Tensor> = g
            .inputs
            .iter()
            .map(|p| {
                let s = g.ty(p.value).static_shape().unwrap();
                let n: usize = s.iter().product();
                Tensor::from_vec(
                    &s,
                    (0..n)
                        .map(|i| ((i % 97) as f32) * 0.01 - 0.5)
                        .collect::<Vec<f32>>(),
                )
                .unwrap()
            })
            .collect();
        let _ = DType::F32;
        let prog = mlc_kir::lower_graph(&g).unwrap();
        for simd in [false, true] {
            let c = CompiledProgram::with_options(
                &prog,
                Options {
                    simd,
                    ..Options::default()
                },
            )
            .unwrap();
            for threads in [1, 2] {
                c.run(&inputs, threads).unwrap();
                let t = Instant::now();
                let iters = 10;
                for _ in 0..iters {
                    c.run(&inputs, threads).unwrap();
                }
                println!(
                    "{name:8} simd={simd:5} threads={threads}: {:.3} ms",
                    t.elapsed().as_secs_f64() * 1e3 / iters as f64
                );
            }
        }
    }
}
