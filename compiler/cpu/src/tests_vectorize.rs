//! Which lowered loops the vectorizer takes: the shapes of kernel IR that must stay SIMD.

use mlc_ir::parse_graph;
use mlc_kir::*;

/// `(vectorizable, extent)` of every innermost `Vector` loop of every kernel of `src`.
fn innermost_vector_loops(src: &str) -> Vec<(String, bool)> {
    let g = parse_graph(src).expect("test graph");
    let prog = lower_graph(&g).expect("lowering");
    let mut out = Vec::new();
    for k in &prog.kernels {
        // No variable here feeds an index from loaded data.
        let data_dep = vec![false; k.vars.len()];
        walk(k, &k.body, &data_dep, &mut out);
    }
    out
}

/// Every innermost `Vector` loop of `body` (kernel `k`) with whether the vectorizer takes it;
/// `dd` marks the variables that feed indices from loaded data.
pub(crate) fn walk(k: &Kernel, body: &[Stmt], dd: &[bool], out: &mut Vec<(String, bool)>) {
    for st in body {
        if let Stmt::For {
            var,
            extent,
            kind,
            body,
        } = st
        {
            let inner = body.iter().any(|s| matches!(s, Stmt::For { .. }));
            if *kind == LoopKind::Vector && !inner {
                let n = match extent {
                    Expr::Lit(Lit::Int(_, n)) => Some(*n),
                    _ => None,
                };
                out.push((
                    k.name.clone(),
                    crate::simd::vectorizable(k, *var, n, body, dd),
                ));
            }
            walk(k, body, dd, out);
        }
    }
}

#[test]
fn depthwise_is_a_library_call_without_a_padded_copy() {
    // An f32 depthwise convolution is one `Stmt::Depthwise` (the runtime's SIMD kernel pads
    // implicitly): no loop of it is left to vectorize, and no padded planes are copied.
    let src = r#"graph (%0: f32[1,3,9,8] "x", %1: f32[3,1,3,3] "w", %2: f32[3] "b") -> (%3 "y") {
  %3 = nn.conv {"auto_pad":"not_set","dilations":[1,1],"group":3,"pads":[1,1,1,1],"strides":[1,1]} (%0, %1, %2) : f32[1,3,9,8]
}"#;
    let loops = innermost_vector_loops(src);
    assert!(loops.is_empty(), "{loops:?}");
    let prog = lower_graph(&parse_graph(src).expect("test graph")).expect("lowering");
    assert_eq!(prog.kernels.len(), 1, "{}", print_program(&prog));
    assert!(matches!(
        prog.kernels[0].body.as_slice(),
        [Stmt::Depthwise(_)]
    ));
}

#[test]
fn stores_to_one_buffer_must_not_meet() {
    // y[i + a] = x[i]; y[i + b] = x[i] over 0..8: vectorizable only when |a − b| ≥ 8 (with
    // overlap, the scalar order decides which value an element keeps).
    for (d, ok) in [(8, true), (9, true), (1, false), (7, false)] {
        let mut k = Kernel::new("two_stores");
        let x = k.param(mlc_ir::DType::F32, 16, Access::Read);
        let y = k.param(mlc_ir::DType::F32, 24, Access::Write);
        let i = k.var(mlc_ir::DType::I64);
        let at = |off: i64| Expr::bin(BinOp::Add, Expr::var(i), Expr::idx(off));
        let body = vec![
            Stmt::Store {
                param: y,
                index: at(0),
                value: Expr::load(x, Expr::var(i)),
            },
            Stmt::Store {
                param: y,
                index: at(d),
                value: Expr::load(x, Expr::var(i)),
            },
        ];
        let dd = vec![false; k.vars.len()];
        assert_eq!(
            crate::simd::vectorizable(&k, i, Some(8), &body, &dd),
            ok,
            "offsets 0 and {d}"
        );
        // Without a known trip count nothing is proven.
        assert!(!crate::simd::vectorizable(&k, i, None, &body, &dd));
    }
}

#[test]
fn byte_copies_and_fills_run_sixteen_at_a_time_and_stay_exact() {
    // Padding with the zero point (a fill, rows of 19 copied) and im2col rows of 18 and 19
    // u8 elements (16 at a time, then an overlapping last block), and a short 9-wide row
    // (lanes); the evaluator is the reference, SIMD off and on, 1 and 2 threads.
    let text = crate::tests::check(
        r#"graph (%0: u8[1,2,20,19] "x", %1: i8[3,2,3,3] "w", %2: u8[] "zx") -> (%3 "y", %4 "z") {
  %3 = quant.conv_integer {"strides":[1,1],"dilations":[1,1],"pad":{"explicit":[1,1,1,1]},"group":1} (%0, %1, %2) : i32[1,3,20,19]
  %4 = quant.conv_integer {"strides":[1,1],"dilations":[1,1],"pad":{"explicit":[0,0,0,0]},"group":1} (%0, %1, %2) : i32[1,3,18,17]
}"#,
        0.0,
    );
    // (Stride 1 reads the unpadded planes: the zero point fills the edges in `im2col`.)
    assert!(text.contains("im2col"), "{text}");
    crate::tests::check(
        r#"graph (%0: u8[3,9] "a", %1: u8[3,40] "b") -> (%2 "c") {
  %2 = movement.concat {"axis":1} (%0, %1) : u8[3,49]
}"#,
        0.0,
    );
}

#[test]
fn byte_max_pools_run_in_byte_lanes_and_stay_exact() {
    // 8-bit max pooling (quantized models pool the integers): rows of 19 and 40 outputs (16
    // bytes at a time, then an overlapping block), rows of 8 to 15 (two overlapping 8-byte
    // blocks), 4 to 7 (two 4-byte blocks) and fewer (one at a time), stride 1 and 2 (the even
    // bytes of two loads), u8 and i8 (unsigned and signed maxima), pads below the kernel; the
    // evaluator is the reference. Bytes over the whole range (signed and unsigned maxima
    // differ above 127).
    let bytes = |shape: &[usize], dt: mlc_ir::DType, salt: i64| {
        let n: usize = shape.iter().product();
        let v: Vec<i64> = (0..n as i64)
            .map(|i| (i * 37 + salt * 101 + (i * i) % 13) % 256)
            .collect();
        let v: Vec<i64> = match dt {
            mlc_ir::DType::I8 => v.iter().map(|x| x - 128).collect(),
            _ => v,
        };
        mlc_ir::Tensor::from_vec(shape, v)
            .and_then(|t| t.cast(dt))
            .expect("bytes")
    };
    let inputs = [
        bytes(&[1, 3, 9, 40], mlc_ir::DType::U8, 1),
        bytes(&[2, 2, 11, 81], mlc_ir::DType::I8, 2),
        bytes(&[1, 2, 5, 14], mlc_ir::DType::U8, 3),
        bytes(&[1, 3, 6, 14], mlc_ir::DType::U8, 4),
        bytes(&[1, 2, 7, 7], mlc_ir::DType::I8, 5),
        bytes(&[1, 2, 9, 17], mlc_ir::DType::U8, 6),
        bytes(&[1, 2, 5, 11], mlc_ir::DType::I8, 7),
        bytes(&[1, 1, 4, 5], mlc_ir::DType::U8, 8),
    ];
    let pool = |k: usize, s: usize, p: [usize; 4]| {
        format!(
            r#"{{"auto_pad":"not_set","ceil_mode":false,"dilations":[1,1],"kernel":[{k},{k}],"pads":[{},{},{},{}],"storage_order_col_major":false,"strides":[{s},{s}]}}"#,
            p[0], p[1], p[2], p[3]
        )
    };
    let src = format!(
        r#"graph (%0: u8[1,3,9,40] "a", %1: i8[2,2,11,81] "b", %2: u8[1,2,5,14] "c", %3: u8[1,3,6,14] "d", %4: i8[1,2,7,7] "e", %5: u8[1,2,9,17] "f", %6: i8[1,2,5,11] "g", %7: u8[1,1,4,5] "h") -> (%8 "y", %9 "z", %10 "w", %11 "v", %12 "u", %13 "t", %14 "s", %15 "r") {{
  %8 = nn.max_pool {} (%0) : u8[1,3,9,40]
  %9 = nn.max_pool {} (%1) : i8[2,2,5,40]
  %10 = nn.max_pool {} (%2) : u8[1,2,2,7]
  %11 = nn.max_pool {} (%3) : u8[1,3,6,14]
  %12 = nn.max_pool {} (%4) : i8[1,2,7,7]
  %13 = nn.max_pool {} (%5) : u8[1,2,5,9]
  %14 = nn.max_pool {} (%6) : i8[1,2,3,7]
  %15 = nn.max_pool {} (%7) : u8[1,1,2,3]
}}"#,
        pool(3, 1, [1, 1, 1, 1]),
        pool(3, 2, [1, 1, 0, 0]),
        pool(2, 2, [0, 0, 0, 0]),
        pool(3, 1, [1, 1, 1, 1]),
        pool(3, 1, [1, 1, 1, 1]),
        pool(3, 2, [1, 1, 1, 1]),
        pool(3, 2, [1, 2, 1, 2]),
        pool(3, 1, [0, 0, 0, 0]),
    );
    let text = crate::tests::check_inputs(&src, &inputs, 0.0);
    assert!(text.contains("max_pool_rows"), "{text}");
}

#[test]
fn integer_comparisons_vectorize_exactly() {
    // A one-hot encoding (i32 ids against a row of classes) and u8/i8 comparisons, each
    // fused with its cast to f32 as the optimizer leaves them: vector loops, equal to the
    // evaluator.
    let src = r#"graph (%0: i32[6,1] "ids", %1: i32[37] "classes", %2: u8[3,19] "a", %3: u8[3,19] "b", %4: i8[3,19] "c", %5: i8[3,19] "d") -> (%6 "onehot", %7 "lt", %8 "ge") {
  %6 = control.composite {"kind":"equal+cast"} (%0, %1) : f32[6,37] {
    graph (%0: i32[6,1] "in0", %1: i32[37] "in1") -> (%3 "out") {
      %2 = ew.equal(%0, %1) : bool[6,37]
      %3 = ew.cast {"to":"f32"} (%2) : f32[6,37]
    }
  }
  %7 = control.composite {"kind":"less+cast"} (%2, %3) : f32[3,19] {
    graph (%0: u8[3,19] "in0", %1: u8[3,19] "in1") -> (%3 "out") {
      %2 = ew.less(%0, %1) : bool[3,19]
      %3 = ew.cast {"to":"f32"} (%2) : f32[3,19]
    }
  }
  %8 = control.composite {"kind":"ge+cast"} (%4, %5) : f32[3,19] {
    graph (%0: i8[3,19] "in0", %1: i8[3,19] "in1") -> (%3 "out") {
      %2 = ew.greater_or_equal(%0, %1) : bool[3,19]
      %3 = ew.cast {"to":"f32"} (%2) : f32[3,19]
    }
  }
}"#;
    // Ids that hit the classes (and one that does not), bytes with ties.
    let t = |shape: &[usize], v: Vec<i64>, ty: mlc_ir::DType| {
        mlc_ir::Tensor::from_vec(shape, v)
            .and_then(|t| t.cast(ty))
            .expect("test tensor")
    };
    let bytes =
        |seed: i64, lo: i64| -> Vec<i64> { (0..57).map(|i| lo + (i * 7 + seed) % 9).collect() };
    let inputs = [
        t(&[6, 1], vec![0, 5, 36, 17, 40, 5], mlc_ir::DType::I32),
        t(&[37], (0..37).collect(), mlc_ir::DType::I32),
        t(&[3, 19], bytes(1, 250), mlc_ir::DType::U8),
        t(&[3, 19], bytes(4, 250), mlc_ir::DType::U8),
        t(&[3, 19], bytes(2, -4), mlc_ir::DType::I8),
        t(&[3, 19], bytes(5, -4), mlc_ir::DType::I8),
    ];
    let text = crate::tests::check_inputs(src, &inputs, 0.0);
    assert!(text.contains("fused_"), "{text}");
    let loops = innermost_vector_loops(src);
    assert_eq!(loops.len(), 3, "{loops:?}");
    assert!(loops.iter().all(|(_, v)| *v), "{loops:?}");
}

#[test]
fn stride_two_loads_of_every_lane_type() {
    // Stride-2 rows: u8, i8, i32 and f32 strided slices (the 8-bit ones were an im2col's
    // before 2-D convolutions read their image in the contraction); exact against the
    // evaluator, and the copies stay vector loops.
    let src = r#"graph (%0: u8[3,45] "x", %1: i8[3,45] "xi", %2: i32[3,41] "n", %3: f32[3,41] "f") -> (%4 "y", %5 "yi", %6 "s", %7 "t") {
  %4 = movement.slice {"starts":[0,0],"ends":[3,45],"axes":[0,1],"steps":[1,2]} (%0, _, _, _, _) : u8[3,23]
  %5 = movement.slice {"starts":[0,1],"ends":[3,45],"axes":[0,1],"steps":[1,2]} (%1, _, _, _, _) : i8[3,22]
  %6 = movement.slice {"starts":[0,1],"ends":[3,41],"axes":[0,1],"steps":[1,2]} (%2, _, _, _, _) : i32[3,20]
  %7 = movement.slice {"starts":[0,0],"ends":[3,41],"axes":[0,1],"steps":[1,2]} (%3, _, _, _, _) : f32[3,21]
}"#;
    crate::tests::check(src, 0.0);
    let loops = innermost_vector_loops(src);
    let strided: Vec<_> = loops.iter().filter(|(n, _)| n.contains("slice")).collect();
    assert!(
        strided.len() >= 4 && strided.iter().all(|(_, v)| *v),
        "{loops:?}"
    );
}

#[test]
fn quantized_activations_are_vector_table_loads() {
    // QDQ SiLU (dequantize, sigmoid, multiply, requantize, dequantize) of bytes becomes a
    // 256-entry table (`mlc_kir::tabulate_byte_chains`); the compiled loop stays SIMD, its
    // lanes loading from the table, and gives the evaluator's results exactly (the table is
    // the evaluator's).
    for (ty, zp) in [("u8", 128), ("i8", -3)] {
        let src = format!(
            r#"graph (%0: {ty}[1,3,5,7] "x") -> (%1 "y") {{
  %1 = control.composite {{"kind":"qdq_silu"}} (%0) : f32[1,3,5,7] {{
    graph (%0: {ty}[1,3,5,7] "x") -> (%8 "y") {{
      @c0 = const f32[] [0.0625]
      @c1 = const {ty}[] [{zp}]
      @c2 = const f32[] [0.03125]
      %1 = constant @c0 : f32[]
      %2 = constant @c1 : {ty}[]
      %3 = constant @c2 : f32[]
      %4 = quant.dequantize {{"axis":1,"block_size":0,"to":"f32"}} (%0, %1, %2) : f32[1,3,5,7]
      %5 = ew.sigmoid(%4) : f32[1,3,5,7]
      %6 = ew.mul(%4, %5) : f32[1,3,5,7]
      %7 = quant.quantize {{"axis":1,"block_size":0,"to":"{ty}"}} (%6, %3, %2) : {ty}[1,3,5,7]
      %8 = quant.dequantize {{"axis":1,"block_size":0,"to":"f32"}} (%7, %3, %2) : f32[1,3,5,7]
    }}
  }}
}}"#
        );
        // Every byte value, in a pseudo-random order.
        let n = 105;
        let bytes: Vec<i64> = (0..n).map(|i| (i * 149 + 31) % 256).collect();
        let x = mlc_ir::Tensor::from_vec(&[1, 3, 5, 7], bytes)
            .and_then(|t| {
                t.cast(if ty == "u8" {
                    mlc_ir::DType::U8
                } else {
                    mlc_ir::DType::I8
                })
            })
            .expect("input");
        crate::tests::check_inputs(&src, &[x], 0.0);
        let mut p = lower_graph(&parse_graph(&src).expect("graph")).expect("lowering");
        assert_eq!(tabulate_byte_chains(&mut p), 1, "{}", print_program(&p));
        let mut loops = Vec::new();
        for k in &p.kernels {
            walk(k, &k.body, &vec![false; k.vars.len()], &mut loops);
        }
        assert!(loops.iter().all(|(_, v)| *v), "{loops:?}");
    }
}
