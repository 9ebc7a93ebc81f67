//! A Rust program that depends on `mlc-runtime` alone and runs a CPU artifact: what an
//! application embedding a model compiled by `mlc compile --target x86_64` looks like.
//!
//! ```text
//! mlc compile model.onnx --target x86_64 -o model.mlca
//! cargo run --release -p mlc-runtime --example run_artifact -- model.mlca [INPUT.npy ...]
//! ```
//!
//! Inputs are `.npy` files in the model's input order; without them, zeros of the compiled
//! shapes are used. Outputs are written as `<name>.npy` in the current directory.

use mlc_runtime::cpu::CpuModel;
use mlc_runtime::npy::{ElemType, NpyArray};
use std::path::Path;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        return Err("usage: run_artifact MODEL.mlca [INPUT.npy ...]".into());
    };
    let model = CpuModel::load(Path::new(path))?;
    let mut inputs = Vec::new();
    for (i, io) in model.inputs().iter().enumerate() {
        println!("input  {} {} {:?}", io.name, io.dtype, io.shape);
        let x = match args.get(i + 1) {
            Some(file) => NpyArray::read(Path::new(file))?,
            None => {
                let elem = ElemType::from_name(&io.dtype).ok_or("input type without .npy form")?;
                let bytes = io.shape.iter().product::<usize>() * elem.size().unwrap_or(1);
                NpyArray::from_le_bytes(elem, io.shape.clone(), vec![0; bytes])?
            }
        };
        inputs.push(x);
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let t = Instant::now();
    let outputs = model.run(&inputs, threads)?;
    println!(
        "ran in {:.3} ms on {threads} threads",
        t.elapsed().as_secs_f64() * 1e3
    );
    for (name, arr) in outputs {
        let file: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        std::fs::write(format!("{file}.npy"), arr.to_bytes())?;
        println!(
            "output {name} {} {:?} -> {file}.npy",
            arr.elem.name(),
            arr.shape
        );
    }
    Ok(())
}
