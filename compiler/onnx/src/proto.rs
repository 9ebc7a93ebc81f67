//! Rust types generated at build time from the vendored `proto/onnx.proto`.
#![allow(clippy::all, missing_debug_implementations, unsafe_code)]

include!(concat!(env!("OUT_DIR"), "/onnx_proto/mod.rs"));
