//! Snapshots of the IR that import produces for a few small ONNX models (node tests chosen to
//! cover a convolution, a biased GEMM, a decomposed softmax, `If` and `Loop` regions with
//! captured values). A change in import shows up as a snapshot diff (`cargo insta review`).
//! The printed text must also parse back to the same graph and pass the verifier.

use mlc_tests::node::node_tests_dir;

const MODELS: &[&str] = &[
    "test_conv_with_strides_padding",
    "test_gemm_default_matrix_bias",
    "test_softmax_axis_0_expanded",
    "test_if",
    "test_loop11",
    "test_range_float_type_positive_delta_expanded",
];

#[test]
fn imported_ir_snapshots() {
    let dir = node_tests_dir();
    assert!(
        dir.exists(),
        "no ONNX node tests under {}: scripts/test.sh generates them",
        dir.display()
    );
    for name in MODELS {
        let model =
            mlc_onnx::load(&dir.join(name).join("model.onnx")).unwrap_or_else(|e| panic!("{e}"));
        let g = &model.graph;
        if let Err(errors) = mlc_ir::verify(g) {
            panic!("{name}: imported graph fails the verifier: {errors:?}");
        }
        let full = mlc_ir::print_graph(g);
        let back = mlc_ir::parse_graph(&full).unwrap_or_else(|e| panic!("{name}: {e}\n{full}"));
        assert_eq!(
            mlc_ir::print_graph(&back),
            full,
            "{name}: text form does not round-trip"
        );
        let shown = mlc_ir::print_graph_with(g, &mlc_ir::PrintOptions::elide_consts_over(16));
        insta::assert_snapshot!(*name, shown);
    }
}
