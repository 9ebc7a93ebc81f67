//! Tests of the IR verifier. Graphs are written in the text form, which parses graphs the
//! verifier rejects; each case states the source and the exact list of errors expected.

use mlc_ir::ops::EwOp;
use mlc_ir::verify::VerifyErrorKind;
use mlc_ir::{DType, Graph, Node, Op, Port, TensorType, ValueId, parse_graph, verify};

/// Parses `src` and checks that verification reports exactly `expect` (error displays, in order).
#[track_caller]
fn check(src: &str, expect: &[&str]) {
    let g = parse_graph(src).unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<String> = match verify(&g) {
        Ok(()) => vec![],
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    };
    assert_eq!(got, expect, "\n{g}");
}

#[test]
fn valid_graphs_verify() {
    check(
        r#"graph (%0: f32[batch,3] "x", %1: f32[3] "b") -> (%5 "y", %2 "b_copy") {
  @c0 = const f32[3] [1.0, 2.0, 3.0]
  %2 = ew.relu(%1) : f32[3]
  %3 = constant @c0 : f32[3]
  %4 = ew.add(%0, %3) : f32[batch,3] loc("Add")
  %5 = ew.cast {"to":"f16"} (%4) : f16[batch,3]
}"#,
        &[],
    );
}

#[test]
fn symbolic_and_unknown_dims_are_compatible_with_anything() {
    check(
        r#"graph (%0: f32[n,4] "x", %1: f32[4,?] "z") -> (%2 "a", %3 "b", %4 "c", %5 "d") {
  %2 = ew.relu(%0) : f32[7,4]
  %3 = ew.relu(%0) : f32[?,m]
  %4 = ew.relu(%1) : f32[k,5]
  %5 = ew.add(%0, %0) : f32[n,?]
}"#,
        &[],
    );
}

#[test]
fn use_before_def_and_undefined_values() {
    check(
        r#"graph (%0: f32[2] "x") -> (%2 "y", %4 "z") {
  %4 = undef : f32[2]
  %1 = ew.relu(%2) : f32[2]
  %2 = ew.relu(%0) : f32[2]
  %3 = ew.add(%4, %3) : f32[2]
}"#,
        &[
            "node 0 (ew.relu): input 0 uses %2 before its definition",
            "node 2 (ew.add): input 0 uses %4, which is never defined",
            "node 2 (ew.add): input 1 uses %3 before its definition",
            "graph: output \"z\" is %4, which is never defined",
            "graph: value %4 is never defined",
        ],
    );
}

#[test]
fn values_defined_twice() {
    check(
        r#"graph (%0: f32[2] "x") -> (%1 "y") {
  %1 = ew.relu(%0) : f32[2]
  %1 = ew.relu(%0) : f32[2]
  %0 = ew.relu(%1) : f32[2] loc("again")
}"#,
        &[
            "graph: value %0 is defined 2 times",
            "graph: value %1 is defined 2 times",
        ],
    );
}

#[test]
fn bad_constants() {
    check(
        r#"graph () -> (%0 "a", %1 "b", %2 "c", %3 "d") {
  @c0 = const f32[2] [1.0, 2.0]
  @c1 = const i64[] [7]
  %0 = constant @c0 : f32[3]
  %1 = constant @c1 : i32[]
  %2 = constant @c2 : f32[2]
  %3 = constant @c0 (%0) : f32[2]
  %4 = constant @c1 : i64[1]
}"#,
        &[
            "node 0 (constant): constant @c0 is f32[2], but its node declares f32[3]",
            "node 1 (constant): constant @c1 is i64[], but its node declares i32[]",
            "node 2 (constant): constant @c2 is out of range (the graph has 2 constants)",
            "node 3 (constant): constant nodes take no inputs, have one output and no regions",
            "node 4 (constant): constant @c1 is i64[], but its node declares i64[1]",
        ],
    );
}

#[test]
fn recorded_types_must_match_inference() {
    check(
        r#"graph (%0: f32[2,3] "x", %1: i64[3] "i") -> () {
  %2 = ew.cast {"to":"i64"} (%0) : f32[2,3] loc("Cast_0")
  %3 = ew.relu(%0) : f32[6]
  %4 = ew.relu(%0) : f32[2,4]
  %5 = ew.add(%0, %1) : f32[2,3]
}"#,
        &[
            "node 0 (ew.cast at \"Cast_0\"): output 0 (%2) is recorded as f32[2,3], but inference gives i64[2,3]",
            "node 1 (ew.relu): output 0 (%3) is recorded as f32[6], but inference gives f32[2,3]",
            "node 2 (ew.relu): output 0 (%4) is recorded as f32[2,4], but inference gives f32[2,3]",
            "node 3 (ew.add): inference failed: input 1 has type i64, expected f32",
        ],
    );
}

#[test]
fn inference_failures_are_reported() {
    check(
        r#"graph (%0: f32[2] "x", %1: f32[3] "y") -> () {
  %2 = ew.add(%0) : f32[2]
  %3 = ew.add(%0, %1) : f32[3]
  %4 = ew.add(%0, _) : f32[2]
  %5, %6 = ew.relu(%0) : f32[2], f32[2]
}"#,
        &[
            "node 0 (ew.add): inference failed: expected 2 inputs, found 1",
            "node 1 (ew.add): inference failed: cannot broadcast f32[2] and f32[3]",
            "node 2 (ew.add): inference failed: input 1 is required",
            "node 3 (ew.relu): inference gives 1 outputs, the node has 2",
        ],
    );
}

#[test]
fn regions_are_verified_recursively() {
    // `ew.relu` stands in for a control op: region checks do not depend on the owner.
    check(
        r#"graph (%0: f32[2] "x") -> (%1 "y") {
  %1 = ew.relu(%0) : f32[2] {
    graph (%0: f32[2] "a") -> (%1 "b") {
      %1 = ew.relu(%0) : f32[2]
    }
    graph (%0: f32[2] "a") -> (%2 "b") {
      %1 = ew.cast {"to":"bool"} (%0) : f32[2]
      %2 = ew.relu(%0) : f32[2] {
        graph () -> (%0 "deep") {
          %0 = undef : f32[2]
          %1 = ew.relu(%0) : f32[2]
        }
      }
    }
  }
}"#,
        &[
            "node 0 region 1: node 0 (ew.cast): output 0 (%1) is recorded as f32[2], but inference gives bool[2]",
            "node 0 region 1: node 1 region 0: node 0 (ew.relu): input 0 uses %0, which is never defined",
            "node 0 region 1: node 1 region 0: graph: output \"deep\" is %0, which is never defined",
            "node 0 region 1: node 1 region 0: graph: value %0 is never defined",
        ],
    );
}

#[test]
fn out_of_range_ids_are_reported_not_panicked_on() {
    // The parser cannot produce these graphs (every id it reads gets a type), so build by hand.
    let f = TensorType::fixed(DType::F32, &[2]);
    let mut g = Graph::new();
    let x = g.add_input("x", f.clone());
    g.inputs.push(Port {
        value: ValueId(40),
        name: "ghost".into(),
    });
    g.nodes.push(Node {
        op: Op::Ew(EwOp::Relu),
        inputs: vec![Some(ValueId(9))],
        outputs: vec![ValueId(10)],
        regions: vec![],
        loc: None,
    });
    g.add_node(Op::Ew(EwOp::Relu), vec![Some(x)], vec![f], vec![], None);
    g.nodes.push(Node {
        op: Op::Constant { id: 0 },
        inputs: vec![],
        outputs: vec![ValueId(11)],
        regions: vec![],
        loc: None,
    });
    g.outputs.push(Port {
        value: ValueId(12),
        name: "y".into(),
    });
    let errors = verify(&g).unwrap_err();
    let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        [
            "graph: graph input 1 (\"ghost\") is %40, out of range (the graph has 2 values)",
            "node 0 (ew.relu): input 0 is %9, out of range (the graph has 2 values)",
            "node 0 (ew.relu): output 0 is %10, out of range (the graph has 2 values)",
            "node 2 (constant): output 0 is %11, out of range (the graph has 2 values)",
            "node 2 (constant): constant @c0 is out of range (the graph has 0 constants)",
            "graph: graph output 0 (\"y\") is %12, out of range (the graph has 2 values)",
        ]
    );
    // The errors are data, not just text.
    assert!(matches!(
        errors[1].kind,
        VerifyErrorKind::ValueOutOfRange {
            value: ValueId(9),
            ..
        }
    ));
    assert_eq!(errors[1].at.node.as_ref().map(|n| n.index), Some(0));
}

#[test]
fn snapshot_many_errors() {
    let g = parse_graph(
        r#"graph (%0: f32[2] "x") -> (%3 "y") {
  @c0 = const i64[2] [1, 2]
  %1 = constant @c0 : f32[2]
  %2 = ew.add(%0, %3) : f32[2]
  %3 = ew.cast {"to":"i8"} (%2) : f32[2] loc("Cast")
  %3 = ew.relu(%0) : f32[2]
}"#,
    )
    .unwrap();
    let report: Vec<String> = verify(&g)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    insta::assert_snapshot!(report.join("\n"));
}
