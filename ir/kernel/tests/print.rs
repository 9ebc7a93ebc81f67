//! Snapshots of the kernel IR that lowering produces for a few representative graphs: the
//! text form is the contract backends read, so changes to it should be seen in review.
//! Re-bless with `cargo insta review`.

use mlc_ir::parse_graph;
use mlc_kir::{lower_graph, print_program};

fn lowered(src: &str) -> String {
    let g = parse_graph(src).unwrap_or_else(|e| panic!("bad test graph: {e}"));
    let p = lower_graph(&g).unwrap_or_else(|e| panic!("lowering failed: {e}"));
    print_program(&p)
}

#[test]
fn softmax_rows() {
    insta::assert_snapshot!(lowered(
        r#"graph (%0: f32[2,3,8] "x") -> (%1 "y") {
  %1 = reduce.softmax {"axis":2} (%0) : f32[2,3,8]
}"#
    ));
}

#[test]
fn conv_as_im2col_and_matmul() {
    insta::assert_snapshot!(lowered(
        r#"graph (%0: f32[1,8,8,8] "x", %1: f32[40,8,3,3] "w", %2: f32[40] "b") -> (%3 "y") {
  %3 = nn.conv {"auto_pad":"not_set","dilations":[1,1],"group":1,"pads":[1,1,1,1],"strides":[2,2]} (%0, %1, %2) : f32[1,40,4,4]
}"#
    ));
}

#[test]
fn integer_conv_as_implicit_gemm() {
    insta::assert_snapshot!(lowered(
        r#"graph (%0: u8[1,3,6,6] "x", %1: i8[4,3,3,3] "w", %2: u8[] "zx") -> (%3 "y") {
  %3 = quant.conv_integer {"strides":[1,1],"dilations":[1,1],"pad":{"explicit":[1,1,1,1]},"group":1} (%0, %1, %2) : i32[1,4,6,6]
}"#
    ));
}

#[test]
fn batched_matmul_with_broadcast_and_reshape_alias() {
    insta::assert_snapshot!(lowered(
        r#"graph (%0: f32[2,4,3,8] "q", %1: f32[4,8,5] "k") -> (%3 "y") {
  %2 = nn.matmul(%0, %1) : f32[2,4,3,5]
  %3 = movement.reshape {"shape":[8,15],"allowzero":false} (%2, _) : f32[8,15]
}"#
    ));
}

#[test]
fn layer_norm_rows() {
    insta::assert_snapshot!(lowered(
        r#"graph (%0: f32[4,16] "x", %1: f32[16] "s", %2: f32[16] "b") -> (%3 "y") {
  %3 = nn.layer_norm {"axis":1,"epsilon":1e-5,"stat_dtype":"f32"} (%0, %1, %2) : f32[4,16]
}"#
    ));
}
