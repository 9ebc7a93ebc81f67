//! Generates Rust types for the vendored `onnx.proto` with protobuf-codegen's pure-Rust parser,
//! so that building mlc needs no `protoc`.

fn main() {
    protobuf_codegen::Codegen::new()
        .pure()
        .includes(["proto"])
        .input("proto/onnx.proto")
        .cargo_out_dir("onnx_proto")
        .run_from_script();
    println!("cargo::rerun-if-changed=proto/onnx.proto");
}
