//! Import tests: opset normalization, and shape chains that fold to constants or keep their
//! symbols.

use crate::cx::{AttrValue, NodeCx, NodeError, Registry, SubgraphImporter};
use mlc_ir::ops::MovementOp as M;
use mlc_ir::{DType, Dim, Graph, Op, Tensor, TensorType, ValueId};
use std::collections::HashMap;

struct NoSubgraphs;

impl SubgraphImporter for NoSubgraphs {
    fn import_subgraph(
        &mut self,
        _: &Graph,
        _: &str,
        _: &[Option<TensorType>],
    ) -> Result<(Graph, Vec<ValueId>), NodeError> {
        Err(NodeError::Unsupported("no subgraphs here".into()))
    }
}

/// Imports one ONNX node into `g`.
fn node(
    g: &mut Graph,
    op_type: &str,
    opset: i64,
    attrs: &[(&str, AttrValue)],
    inputs: &[ValueId],
    n_outputs: usize,
) -> Vec<ValueId> {
    let attrs: HashMap<String, AttrValue> = attrs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let f = Registry::standard().get("", op_type).expect("registered");
    let mut sub = NoSubgraphs;
    let mut cx = NodeCx {
        graph: g,
        op_type,
        domain: "",
        name: "",
        opset,
        attrs: &attrs,
        inputs: inputs.iter().copied().map(Some).collect(),
        n_outputs,
        subgraphs: &mut sub,
    };
    f(&mut cx).expect("imports")
}

fn sym(s: &str) -> Dim {
    Dim::Sym(s.into())
}

fn ints(v: &[i64]) -> Tensor {
    Tensor::from_vec(&[v.len()], v.to_vec()).unwrap()
}

fn producer(g: &Graph, v: ValueId) -> &Op {
    &g.nodes.iter().find(|n| n.outputs.contains(&v)).unwrap().op
}

#[test]
fn symbolic_shape_chain_reaches_reshape() {
    let mut g = Graph::new();
    let x = g.add_input(
        "x",
        TensorType::new(DType::F32, vec![sym("batch"), sym("seq"), 384.into()]),
    );
    let start = |s: i64, e: i64| [("start", AttrValue::Int(s)), ("end", AttrValue::Int(e))];
    let b = node(&mut g, "Shape", 21, &start(0, 1), &[x], 1)[0];
    let s = node(&mut g, "Shape", 21, &start(1, 2), &[x], 1)[0];
    let heads = g.add_constant(ints(&[12, 32]));
    let shape = node(
        &mut g,
        "Concat",
        13,
        &[("axis", AttrValue::Int(0))],
        &[b, s, heads],
        1,
    )[0];
    let y = node(
        &mut g,
        "Reshape",
        14,
        &[("allowzero", AttrValue::Int(1))],
        &[x, shape],
        1,
    )[0];
    assert_eq!(
        g.ty(y).shape,
        vec![sym("batch"), sym("seq"), 12.into(), 32.into()]
    );
    // Range over a symbolic dim has that dim as its length.
    let axes = g.add_constant(ints(&[0]));
    let n = node(&mut g, "Squeeze", 13, &[], &[s, axes], 1)[0];
    let zero = g.add_constant(Tensor::scalar(0i64));
    let one = g.add_constant(Tensor::scalar(1i64));
    let r = node(&mut g, "Range", 11, &[], &[zero, n, one], 1)[0];
    assert_eq!(g.ty(r).shape, vec![sym("seq")]);
    let fill = [(
        "value",
        AttrValue::Tensor(Tensor::from_vec(&[1], vec![f32::NEG_INFINITY]).unwrap()),
    )];
    let mask = node(&mut g, "ConstantOfShape", 9, &fill, &[shape], 1)[0];
    assert_eq!(
        g.ty(mask).shape,
        vec![sym("batch"), sym("seq"), 12.into(), 32.into()]
    );
    assert!(mlc_ir::verify(&g).is_ok());
    // The text form round-trips every attribute, -inf included.
    let text = mlc_ir::print_graph(&g);
    assert_eq!(mlc_ir::parse_graph(&text).unwrap(), g, "{text}");
}

#[test]
fn static_shape_chain_folds_to_attributes() {
    let mut g = Graph::new();
    let x = g.add_input("x", TensorType::fixed(DType::F32, &[2, 3, 4]));
    let shape = node(&mut g, "Shape", 13, &[], &[x], 1)[0];
    assert!(
        g.const_value(shape).is_some(),
        "Shape of a static tensor is a constant"
    );
    let idx = g.add_constant(Tensor::scalar(0i64));
    let d0 = node(&mut g, "Gather", 13, &[], &[shape, idx], 1)[0];
    let axes = g.add_constant(ints(&[0]));
    let d0 = node(&mut g, "Unsqueeze", 13, &[], &[d0, axes], 1)[0];
    let rest = g.add_constant(ints(&[-1]));
    let target = node(
        &mut g,
        "Concat",
        13,
        &[("axis", AttrValue::Int(0))],
        &[d0, rest],
        1,
    )[0];
    let y = node(&mut g, "Reshape", 13, &[], &[x, target], 1)[0];
    assert_eq!(g.ty(y).shape, vec![2.into(), 12.into()]);
    assert_eq!(
        producer(&g, y),
        &Op::Movement(M::Reshape {
            shape: Some(vec![2, -1]),
            allowzero: false
        })
    );
}

#[test]
fn old_opsets_normalize_to_the_same_ops() {
    let mut g = Graph::new();
    let x = g.add_input("x", TensorType::fixed(DType::F32, &[1, 3, 4]));
    let axes = AttrValue::Ints(vec![0]);
    let a = node(&mut g, "Squeeze", 11, &[("axes", axes.clone())], &[x], 1)[0];
    let c = g.add_constant(ints(&[0]));
    let b = node(&mut g, "Squeeze", 13, &[], &[x, c], 1)[0];
    assert_eq!(producer(&g, a), producer(&g, b));
    let slice_attrs = [
        ("starts", AttrValue::Ints(vec![1])),
        ("ends", AttrValue::Ints(vec![i64::MAX])),
        ("axes", AttrValue::Ints(vec![-1])),
    ];
    let s = node(&mut g, "Slice", 9, &slice_attrs, &[a], 1)[0];
    assert_eq!(g.ty(s).shape, vec![3.into(), 3.into()]);
    let pads = AttrValue::Ints(vec![0, 1, 0, 2]);
    let p = node(
        &mut g,
        "Pad",
        2,
        &[("pads", pads), ("mode", AttrValue::Str("edge".into()))],
        &[a],
        1,
    )[0];
    assert_eq!(g.ty(p).shape, vec![3.into(), 7.into()]);
    let parts = node(
        &mut g,
        "Split",
        18,
        &[
            ("num_outputs", AttrValue::Int(3)),
            ("axis", AttrValue::Int(1)),
        ],
        &[p],
        3,
    );
    let widths: Vec<Dim> = parts.iter().map(|v| g.ty(*v).shape[1].clone()).collect();
    assert_eq!(widths, vec![3.into(), 3.into(), 1.into()]);
}
