//! Tests of the IR text form: exact round trips of hand-built graphs, parse errors, snapshots.

use half::{bf16, f16};
use mlc_ir::ops::EwOp;
use mlc_ir::text::ParseErrorKind;
use mlc_ir::{
    DType, Dim, Graph, Node, Op, PrintOptions, QuantParams, Tensor, TensorType, ValueId,
    parse_graph, print_graph, print_graph_with,
};

// ---- helpers ----

fn sym(s: &str) -> Dim {
    Dim::Sym(s.into())
}

fn ty(dtype: DType, dims: &[Dim]) -> TensorType {
    TensorType::new(dtype, dims.to_vec())
}

/// Compares graphs with constants compared bit for bit, since `Tensor`'s `==` is false for NaN.
fn assert_same(a: &Graph, b: &Graph) {
    assert_eq!(a.consts.len(), b.consts.len(), "constant counts");
    for (x, y) in a.consts.iter().zip(&b.consts) {
        assert_eq!((x.dtype(), x.shape()), (y.dtype(), y.shape()));
        match (x, y) {
            (Tensor::Str(p), Tensor::Str(q)) => assert_eq!(p, q),
            _ => assert_eq!(
                x.to_le_bytes().unwrap(),
                y.to_le_bytes().unwrap(),
                "{x:?} vs {y:?}"
            ),
        }
    }
    assert_eq!(a.nodes.len(), b.nodes.len(), "node counts");
    for (m, n) in a.nodes.iter().zip(&b.nodes) {
        assert_eq!(m.regions.len(), n.regions.len());
        for (r, s) in m.regions.iter().zip(&n.regions) {
            assert_same(r, s);
        }
        let strip = |n: &Node| Node {
            regions: vec![],
            ..n.clone()
        };
        assert_eq!(strip(m), strip(n));
    }
    assert_eq!(
        (&a.values, &a.inputs, &a.outputs),
        (&b.values, &b.inputs, &b.outputs)
    );
}

/// Prints, parses, and checks the parsed graph is the original and prints identically.
fn round_trip(g: &Graph) -> String {
    let text = print_graph(g);
    let back = parse_graph(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_same(g, &back);
    assert_eq!(print_graph(&back), text);
    text
}

fn add() -> Op {
    Op::Ew(EwOp::Add)
}

fn relu() -> Op {
    Op::Ew(EwOp::Relu)
}

/// A small model-like graph: symbolic batch, a constant, loc, a cast.
fn small_graph() -> Graph {
    let mut g = Graph::new();
    let x = g.add_input("input", ty(DType::F32, &[sym("batch"), 3.into(), 2.into()]));
    let w = g
        .add_constant(Tensor::from_vec(&[3, 2], vec![1.0f32, -2.5, 0.0, 0.1, 1e-7, 3e20]).unwrap());
    let t = ty(DType::F32, &[sym("batch"), 3.into(), 2.into()]);
    let s = g.add_node(
        add(),
        vec![Some(x), Some(w)],
        vec![t.clone()],
        vec![],
        Some("Add_1".into()),
    )[0];
    let r = g.add_node(relu(), vec![Some(s)], vec![t], vec![], None)[0];
    let c = g.add_node(
        Op::Ew(EwOp::Cast { to: DType::I64 }),
        vec![Some(r)],
        vec![ty(DType::I64, &[sym("batch"), 3.into(), 2.into()])],
        vec![],
        Some("Cast_2".into()),
    )[0];
    g.outputs.push(mlc_ir::Port {
        value: c,
        name: "output".into(),
    });
    g
}

// ---- round trips ----

#[test]
fn small_graph_round_trips() {
    round_trip(&small_graph());
}

#[test]
fn every_dtype_in_constants_round_trips() {
    let mut g = Graph::new();
    let f32_nan_neg = f32::from_bits(0xffc0_0000);
    let f32_nan_payload = f32::from_bits(0x7fc0_0001);
    g.add_constant(
        Tensor::from_vec(
            &[2, 6],
            vec![
                0.1f32,
                -0.0,
                f32::NAN,
                f32_nan_neg,
                f32_nan_payload,
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::MAX,
                f32::MIN_POSITIVE,
                f32::from_bits(1), // smallest subnormal
                1e-7,
                16777217.0,
            ],
        )
        .unwrap(),
    );
    g.add_constant(
        Tensor::from_vec(
            &[8],
            vec![
                0.1f64,
                -0.0,
                f64::NAN,
                -f64::NAN,
                f64::INFINITY,
                f64::MIN,
                f64::from_bits(1),
                std::f64::consts::PI,
            ],
        )
        .unwrap(),
    );
    let halves = [0.1f32, -0.0, 65504.0, 6e-8, 1.0 / 3.0, -7.25];
    let mut f16s: Vec<f16> = halves.iter().map(|&x| f16::from_f32(x)).collect();
    f16s.extend([
        f16::NAN,
        -f16::NAN,
        f16::INFINITY,
        f16::NEG_INFINITY,
        f16::from_bits(1),
        f16::MIN,
    ]);
    g.add_constant(Tensor::from_vec(&[12], f16s).unwrap());
    let mut bf16s: Vec<bf16> = halves.iter().map(|&x| bf16::from_f32(x)).collect();
    bf16s.extend([
        bf16::NAN,
        -bf16::NAN,
        bf16::INFINITY,
        bf16::MAX,
        bf16::from_bits(1),
        bf16::MIN,
    ]);
    g.add_constant(Tensor::from_vec(&[12], bf16s).unwrap());
    g.add_constant(Tensor::from_vec(&[3], vec![i8::MIN, 0, i8::MAX]).unwrap());
    g.add_constant(Tensor::from_vec(&[2], vec![0u8, u8::MAX]).unwrap());
    g.add_constant(Tensor::from_vec(&[2], vec![i16::MIN, i16::MAX]).unwrap());
    g.add_constant(Tensor::from_vec(&[2], vec![0u16, u16::MAX]).unwrap());
    g.add_constant(Tensor::from_vec(&[2], vec![i32::MIN, i32::MAX]).unwrap());
    g.add_constant(Tensor::from_vec(&[2], vec![0u32, u32::MAX]).unwrap());
    g.add_constant(Tensor::from_vec(&[3], vec![i64::MIN, -1, i64::MAX]).unwrap());
    g.add_constant(Tensor::from_vec(&[2], vec![0u64, u64::MAX]).unwrap());
    g.add_constant(Tensor::from_vec(&[2, 1], vec![true, false]).unwrap());
    let strs = [
        "",
        "plain",
        "quote \" backslash \\",
        "line\nbreak\ttab",
        "ünïcödé ✓",
        "\u{0}\u{1f}",
    ];
    g.add_constant(Tensor::from_vec(&[6], strs.iter().map(|s| s.to_string()).collect()).unwrap());
    // Scalars and empty tensors.
    g.add_constant(Tensor::scalar(2.5f32));
    g.add_constant(Tensor::scalar(String::from("s")));
    g.add_constant(Tensor::from_vec::<i64>(&[0, 3], vec![]).unwrap());
    g.add_constant(Tensor::from_vec::<String>(&[0], vec![]).unwrap());
    for dt in DType::ALL {
        g.add_constant(Tensor::zeros(dt, &[1, 2]));
    }
    g.outputs.push(mlc_ir::Port {
        value: ValueId(0),
        name: "o".into(),
    });
    let text = round_trip(&g);
    assert!(
        text.contains("[0.1, -0.0, nan, nan:0xffc00000, nan:0x7fc00001, inf, -inf,"),
        "{text}"
    );
    assert!(
        text.contains(
            "@c2 = const f16[12] [0.1, -0.0, 65500.0, 6e-8, 0.3333, -7.25, nan, nan:0xfe00,"
        ),
        "{text}"
    );
}

#[test]
fn symbolic_dims_and_quant_params_round_trip() {
    let mut g = Graph::new();
    let q = QuantParams {
        scale: vec![0.5, 0.25],
        zero_point: vec![0, -3],
        axis: Some(1),
    };
    let qt = TensorType {
        quant: Some(q),
        ..ty(DType::I8, &[sym("n"), 2.into()])
    };
    let x = g.add_input("x", qt.clone());
    let odd = ty(
        DType::F32,
        &[
            sym("past_sequence_length + 1"),
            sym(""),
            sym("?"),
            sym("3"),
            sym("a\"b"),
            Dim::Unknown,
            sym("_s9"),
        ],
    );
    let y = g.add_input("y y", odd.clone());
    let pq = QuantParams {
        scale: vec![0.1],
        zero_point: vec![7],
        axis: None,
    };
    let pt = TensorType {
        quant: Some(pq),
        ..ty(DType::U8, &[])
    };
    let a = g.add_node(relu(), vec![Some(x)], vec![qt], vec![], None)[0];
    let b = g.add_node(relu(), vec![Some(y)], vec![odd], vec![], None)[0];
    let c = g.add_node(relu(), vec![Some(a)], vec![pt], vec![], None)[0];
    g.outputs = [(a, "a"), (b, "b"), (c, "")]
        .iter()
        .map(|&(value, name)| mlc_ir::Port {
            value,
            name: name.into(),
        })
        .collect();
    let text = round_trip(&g);
    assert!(
        text.contains(r#"f32["past_sequence_length + 1","","?","3","a\"b",?,_s9]"#),
        "{text}"
    );
}

#[test]
fn optional_inputs_multi_outputs_and_odd_nodes_round_trip() {
    let mut g = Graph::new();
    let x = g.add_input("x", ty(DType::F32, &[4.into()]));
    let t = ty(DType::F32, &[4.into()]);
    // A multi-output node with absent optional inputs (the op's semantics do not matter here).
    let outs = g.add_node(
        add(),
        vec![Some(x), None, Some(x), None],
        vec![t.clone(), t.clone(), t.clone()],
        vec![],
        None,
    );
    // Zero inputs; zero outputs.
    g.add_node(relu(), vec![], vec![t.clone()], vec![], None);
    g.add_node(
        relu(),
        vec![Some(outs[2])],
        vec![],
        vec![],
        Some("sink".into()),
    );
    // A value nothing defines (a dangling one, declared `undef` in the text), used by a node.
    let dangling = g.add_value(ty(DType::Bool, &[]));
    g.add_node(
        relu(),
        vec![Some(dangling)],
        vec![t],
        vec![],
        Some("with \"quotes\"\n".into()),
    );
    // A use before definition: the text keeps the ids and order, the verifier would object.
    let later = ValueId(g.values.len() as u32);
    g.add_node(
        relu(),
        vec![Some(later)],
        vec![ty(DType::F32, &[])],
        vec![],
        None,
    );
    g.add_node(
        relu(),
        vec![Some(x)],
        vec![ty(DType::F32, &[4.into()])],
        vec![],
        None,
    );
    // A constant node whose id is out of range, with an input (malformed, but printable).
    g.nodes.push(Node {
        op: Op::Constant { id: 7 },
        inputs: vec![Some(x)],
        outputs: vec![g.values.len() as u32]
            .into_iter()
            .map(ValueId)
            .collect(),
        regions: vec![],
        loc: Some("c".into()),
    });
    g.add_value(ty(DType::F32, &[4.into()]));
    g.outputs.push(mlc_ir::Port {
        value: outs[1],
        name: "second".into(),
    });
    g.outputs.push(mlc_ir::Port {
        value: outs[1],
        name: "second again".into(),
    });
    let text = round_trip(&g);
    assert!(
        text.contains("%1, %2, %3 = ew.add(%0, _, %0, _) : f32[4], f32[4], f32[4]\n"),
        "{text}"
    );
    assert!(text.contains("%5 = undef : bool[]\n"), "{text}");
    assert!(text.contains("  ew.relu(%3) loc(\"sink\")\n"), "{text}");
}

/// A graph with two regions on one node, one region nesting another, each with its own
/// constants and numbering.
fn graph_with_regions() -> Graph {
    let mut inner = Graph::new();
    let a = inner.add_input("a", ty(DType::I64, &[]));
    let k = inner.add_constant(Tensor::scalar(1i64));
    let s = inner.add_node(
        add(),
        vec![Some(a), Some(k)],
        vec![ty(DType::I64, &[])],
        vec![],
        Some("inner".into()),
    )[0];
    inner.outputs.push(mlc_ir::Port {
        value: s,
        name: "a_plus_1".into(),
    });

    let mut then_g = Graph::new();
    let x = then_g.add_input("x", ty(DType::F32, &[sym("n")]));
    let n = then_g.add_input("n", ty(DType::I64, &[]));
    let y = then_g.add_node(
        relu(),
        vec![Some(x)],
        vec![ty(DType::F32, &[sym("n")])],
        vec![],
        None,
    )[0];
    let m = then_g.add_node(
        relu(),
        vec![Some(n)],
        vec![ty(DType::I64, &[])],
        vec![inner],
        None,
    )[0];
    then_g.outputs = vec![
        mlc_ir::Port {
            value: y,
            name: "y".into(),
        },
        mlc_ir::Port {
            value: m,
            name: "m".into(),
        },
    ];

    let mut else_g = Graph::new();
    let x = else_g.add_input("x", ty(DType::F32, &[sym("n")]));
    else_g.add_input("n", ty(DType::I64, &[]));
    let c = else_g.add_constant(Tensor::from_vec(&[2], vec![1.5f32, 2.5]).unwrap());
    else_g.outputs = vec![
        mlc_ir::Port {
            value: x,
            name: "y".into(),
        },
        mlc_ir::Port {
            value: c,
            name: "m".into(),
        },
    ];

    let mut g = Graph::new();
    let cond = g.add_input("cond", ty(DType::Bool, &[]));
    let x = g.add_input("x", ty(DType::F32, &[sym("n")]));
    let n = g.add_constant(Tensor::scalar(3i64));
    let outs = g.add_node(
        relu(), // Stands in for a control op: the text form does not care which op owns regions.
        vec![Some(cond), Some(x), Some(n)],
        vec![ty(DType::F32, &[Dim::Unknown]), ty(DType::I64, &[])],
        vec![then_g, else_g],
        Some("If_0".into()),
    );
    g.outputs = vec![mlc_ir::Port {
        value: outs[0],
        name: "out".into(),
    }];
    g
}

#[test]
fn regions_round_trip() {
    round_trip(&graph_with_regions());
}

#[test]
fn display_is_the_printer() {
    let g = small_graph();
    assert_eq!(g.to_string(), print_graph(&g));
}

#[test]
fn whitespace_and_comments_are_free() {
    let src = "# a comment\ngraph(%0:f32[2]\"x\")->(%1\"y\"){%1=ew.relu(%0):f32[2]loc(\"r\") # trailing\n}\n# end";
    let g = parse_graph(src).unwrap();
    assert_eq!(g.nodes[0].loc.as_deref(), Some("r"));
    assert_eq!(parse_graph(&print_graph(&g)).unwrap(), g);
}

#[test]
fn ops_parse_from_their_serde_form() {
    let src = r#"graph (%0: f32[2] "x") -> (%1 "y") {
  %1 = ew.cast { "to" : "f16" } (%0) : f16[2]
}"#;
    let g = parse_graph(src).unwrap();
    assert_eq!(g.nodes[0].op, Op::Ew(EwOp::Cast { to: DType::F16 }));
    assert!(print_graph(&g).contains(r#"%1 = ew.cast {"to":"f16"} (%0) : f16[2]"#));
}

// ---- elision ----

#[test]
fn elided_constants_print_but_do_not_parse() {
    let mut g = Graph::new();
    let big = g.add_constant(Tensor::zeros(DType::F32, &[64, 3, 7, 7]));
    let small = g.add_constant(Tensor::from_vec(&[2], vec![1i64, 2]).unwrap());
    g.outputs = vec![
        mlc_ir::Port {
            value: big,
            name: "w".into(),
        },
        mlc_ir::Port {
            value: small,
            name: "s".into(),
        },
    ];
    let text = print_graph_with(&g, &PrintOptions::elide_consts_over(16));
    assert!(
        text.contains("@c0 = const f32[64,3,7,7] [... 9408 elements]\n"),
        "{text}"
    );
    assert!(text.contains("@c1 = const i64[2] [1, 2]\n"), "{text}");
    let err = parse_graph(&text).unwrap_err();
    assert_eq!(err.kind, ParseErrorKind::ElidedConstant);
    assert_eq!((err.line, err.col), (2, 29));
}

// ---- parse errors ----

/// Parses `src`, expecting an error whose display is `expect` (`line:col: message`).
#[track_caller]
fn check_err(src: &str, expect: &str) {
    match parse_graph(src) {
        Ok(g) => panic!("parsed, expected error {expect}:\n{g}"),
        Err(e) => assert_eq!(e.to_string(), expect),
    }
}

/// Like `check_err`, for messages whose tail lists every op of a family (which grows).
fn check_err_prefix(src: &str, expect: &str) {
    match parse_graph(src) {
        Ok(g) => panic!("parsed, expected error {expect}:\n{g}"),
        Err(e) => assert!(
            e.to_string().starts_with(expect),
            "{e} does not start with {expect}"
        ),
    }
}

const HEAD: &str = "graph (%0: f32[2] \"x\") -> (%1 \"y\") {\n";

#[test]
fn parse_errors_point_at_the_problem() {
    check_err("", "1:1: expected `graph`, found end of input");
    check_err("grph ()", "1:1: expected `graph`, found `grph`");
    check_err("graph (%0: f33[2] \"x\")", "1:12: unknown dtype `f33`");
    check_err(
        "graph (%0: f32[2,] \"x\")",
        "1:18: expected a dimension (number, symbol or `?`), found `]`",
    );
    check_err("graph (%0: f32[2] x)", "1:19: expected a string, found `x`");
    check_err(
        "graph (%x: f32[2] \"x\")",
        "1:9: expected a value number, found `x`",
    );
    check_err(
        &format!("{HEAD}  %1 = ew.relu(%0) : f32[2]\n"),
        "3:1: expected `}`, found end of input",
    );
    check_err(
        &format!("{HEAD}  %1 = ew.relu(%0 : f32[2]\n}}"),
        "2:19: expected `)`, found `:`",
    );
    check_err_prefix(
        &format!("{HEAD}  %1 = ew.frobnicate(%0) : f32[2]\n}}"),
        "2:8: invalid op `ew.frobnicate`: unknown variant `frobnicate`, expected one of ",
    );
    check_err(
        &format!("{HEAD}  %1 = ew.cast {{\"to\": 3}} (%0) : f32[2]\n}}"),
        "2:8: invalid op `ew.cast`: invalid type: integer `3`, expected string or map",
    );
    check_err(
        &format!("{HEAD}  %1 = ew.cast {{\"to\": }} (%0) : f32[2]\n}}"),
        "2:23: invalid JSON: expected value",
    );
    check_err(
        &format!("{HEAD}  %1, %2 = ew.relu(%0) : f32[2]\n}}"),
        "2:24: 2 values but 1 types",
    );
    check_err(
        &format!("{HEAD}  %1 = ew.relu(%0)\n}}"),
        "3:1: 1 values but 0 types",
    );
    check_err(
        &format!("{HEAD}  %1 = ew.relu(%0) : f32[2]\n  %0 = ew.relu(%1) : f32[3]\n}}"),
        "3:3: value %0 is given type f32[2] and type f32[3]",
    );
    check_err(
        &format!("{HEAD}  %1 = ew.relu(%2) : f32[2]\n}}"),
        "2:16: value %2 has no type: define it, or declare it with `%2 = undef : <type>`",
    );
    check_err(
        "graph () -> (%1 \"y\") {\n  %1 = ew.relu(%0) : f32[2]\n}",
        "2:16: value %0 has no type: define it, or declare it with `%0 = undef : <type>`",
    );
    check_err(
        &format!("{HEAD}  @c0 = const i8[2] [1, 128]\n}}"),
        "2:25: invalid i8 element `128`",
    );
    check_err(
        &format!("{HEAD}  @c0 = const f32[2] [1.0, NaN]\n}}"),
        "2:28: invalid f32 element `NaN`",
    );
    check_err(
        &format!("{HEAD}  @c0 = const f32[3] [1.0, 2.0]\n}}"),
        "2:22: constant has 2 elements, its type f32[3] needs 3",
    );
    check_err(
        &format!("{HEAD}  @c0 = const f32[n] []\n}}"),
        "2:15: constant types must have a static shape and no quantization parameters, found f32[n]",
    );
    check_err(
        &format!("{HEAD}  @c0 = const bool[1] [true]\n  @c0 = const bool[1] [true]\n}}"),
        "3:3: constant @c0 is defined twice",
    );
    check_err(
        "graph () -> () {\n  @c1 = const bool[1] [true]\n}",
        "3:1: constant @c0 is missing: constant ids must be 0, 1, 2, ... without gaps",
    );
    check_err(
        &format!("{HEAD}  @c0 = const str[1] [\"a\\q\"]\n}}"),
        "2:26: invalid JSON: invalid escape",
    );
    check_err(
        &format!("{HEAD}  %1 = undef(%0) : f32[2]\n}}"),
        "2:13: 1 values but 0 types",
    );
    check_err(
        &format!("{HEAD}  %1 = undef : f32[2] loc(\"x\")\n}}"),
        "2:8: `undef` takes no attributes, inputs, location or regions",
    );
    check_err(
        &format!("{HEAD}  %1 = ew.relu(%0) : f32[2]\n}}\ngraph"),
        "4:1: expected end of input, found `graph`",
    );
    check_err(
        &format!("{HEAD}  %1 = ew.relu(%99999999999) : f32[2]\n}}"),
        "2:17: number `99999999999` is out of range",
    );
}

// ---- snapshots ----

#[test]
fn snapshot_small_graph() {
    insta::assert_snapshot!(print_graph(&small_graph()));
}

#[test]
fn snapshot_regions() {
    insta::assert_snapshot!(print_graph(&graph_with_regions()));
}

#[test]
fn snapshot_elided_dump() {
    let mut g = small_graph();
    let w = g.add_constant(Tensor::zeros(DType::F16, &[64, 3, 7, 7]));
    g.outputs.push(mlc_ir::Port {
        value: w,
        name: "weight".into(),
    });
    insta::assert_snapshot!(print_graph_with(&g, &PrintOptions::elide_consts_over(8)));
}

#[test]
fn storage_type_constants_round_trip() {
    use mlc_ir::lowbit::{F4E2M1, F8E4M3FN, F8E5M2FNUZ, F8E8M0, I2, I4, U4};
    let mut g = Graph::new();
    let codes = vec![
        F8E4M3FN(0x00),
        F8E4M3FN(0x80),
        F8E4M3FN(0x7f),
        F8E4M3FN(0x3c),
    ];
    g.add_constant(Tensor::from_vec(&[4], codes).unwrap());
    g.add_constant(Tensor::from_vec(&[2], vec![F8E5M2FNUZ(0x80), F8E5M2FNUZ(0x01)]).unwrap());
    g.add_constant(Tensor::scalar(F8E8M0(0xff)));
    g.add_constant(Tensor::from_vec(&[3], vec![F4E2M1(0xf), F4E2M1(0x8), F4E2M1(0x1)]).unwrap());
    g.add_constant(Tensor::from_vec(&[3], vec![I4(-8), I4(7), I4(0)]).unwrap());
    g.add_constant(Tensor::from_vec(&[1], vec![U4(15)]).unwrap());
    g.add_constant(Tensor::from_vec(&[2], vec![I2(-2), I2(1)]).unwrap());
    let text = round_trip(&g);
    assert!(
        text.contains("const f8e4m3fn[4] [0x00, 0x80, 0x7f, 0x3c]"),
        "{text}"
    );
    assert!(text.contains("const i4[3] [-8, 7, 0]"), "{text}");
    let src = |c: &str| format!("graph () -> () {{\n  @c0 = {c}\n}}");
    parse_graph(&src("const f4e2m1[1] [0xf]")).unwrap();
    for bad in [
        "const f4e2m1[1] [0x10]",
        "const i4[1] [8]",
        "const u2[1] [-1]",
        "const f8e5m2[1] [1.0]",
    ] {
        assert!(parse_graph(&src(bad)).is_err(), "{bad} parsed");
    }
}
