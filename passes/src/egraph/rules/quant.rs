//! Integer kernels for quantized models: a float contraction whose operands are dequantized
//! 8-bit integers becomes the integer contraction of the integers, rescaled once.
//!
//! A QDQ model computes `conv(dequantize(xq, sx, zx), dequantize(wq, sw), b)`: every
//! operand is widened to float and the contraction runs in float. Since
//! `Σ (xq - zx)·sx · wq·sw[m] = sx·sw[m] · Σ (xq - zx)·wq`, the same value is
//! `cast_f32(conv_integer(xq, wq, zx)) * (sx·sw) + b`: an 8-bit contraction accumulating
//! exactly in i32, then one multiply per output by a per-channel constant. The rule builds
//! that as one composite (`conv_integer+cast+mul+add`); the fusion phase then adds the
//! activation and the next `quantize` to its epilogue, so an int8 model runs as int8.
//!
//! Conditions, each for a reason:
//!
//! * the activation is dequantized per tensor (one scale and zero point): a per-row scale
//!   would not factor out of the sum;
//! * the weights are a constant dequantized per tensor or per output channel, with zero
//!   points that are all zero (symmetric, as quantizers emit them): a weight zero point would
//!   need a second correction term in the integer kernel;
//! * the bias (`conv`, `gemm`'s `C`) is absent, or a constant, or a dequantized constant:
//!   it is folded to one float constant;
//! * scales are known constants (the rule computes their products).
//!
//! Numerics: the integer sum is exact where the float one rounded at every step, and the
//! scale product `sx·sw` is rounded once to f32; results change by rounding only (and may
//! round to the other neighbour where a `quantize` follows).

use super::{Build, NodeRule, add_const, add_op, ops_where, ty};
use crate::egraph::analysis::MlcEGraph;
use crate::egraph::lang::{MlcNode, OpInfo, OpRef};
use egg::Id;
use mlc_interp::EvalCx;
use mlc_ir::ops::nn::AutoPad;
use mlc_ir::ops::quant::{ConvGeom, ConvPad};
use mlc_ir::ops::{ControlOp, EwOp, NnOp, QuantOp};
use mlc_ir::{DType, Graph, InferCx, Op, Port, Tensor, TensorType};

pub fn rules() -> Vec<NodeRule> {
    vec![
        NodeRule::rewrite("int-conv", int_conv),
        NodeRule::rewrite("int-gemm", int_gemm),
        NodeRule::rewrite("int-matmul", int_matmul),
        NodeRule::rewrite("int-zero-point", int_zero_point),
    ]
}

/// The full value of a class that holds a constant leaf (any size: looked up in the table).
pub(super) fn const_of(eg: &MlcEGraph, class: Id) -> Option<&Tensor> {
    eg[class].nodes.iter().find_map(|n| match n {
        MlcNode::Const(i) => eg.analysis.tables.consts.get(*i as usize),
        _ => None,
    })
}

/// A `dequantize` to f32 in `class`: `(axis, q, scale, zero point)`.
pub(super) fn dequantized(eg: &MlcEGraph, class: Id) -> Vec<(usize, Id, Id, Option<Id>)> {
    ops_where(eg, class, |o| match o {
        Op::Quant(QuantOp::Dequantize {
            axis,
            block_size: 0,
            to: DType::F32,
        }) => Some(*axis),
        _ => None,
    })
    .filter_map(|(axis, _, c)| {
        let zp = c.get(2).copied().filter(|z| !eg[*z].data.types.is_empty());
        Some((axis, *c.first()?, *c.get(1)?, zp))
    })
    .collect()
}

/// The activation side: `dequantize(xq, sx, zx)` per tensor with an 8-bit `xq`: `(xq, sx, zx)`.
fn activation(eg: &MlcEGraph, class: Id) -> Option<(Id, f32, Option<Id>)> {
    dequantized(eg, class).into_iter().find_map(|(_, q, s, z)| {
        let int8 = matches!(ty(eg, q)?.dtype, DType::U8 | DType::I8);
        let s = scalar(eg, s)?;
        let z_ok = z.is_none_or(|z| const_of(eg, z).is_some_and(|t| t.len() == 1));
        (int8 && z_ok).then_some((q, s, z))
    })
}

/// The one value of a one-element f32 constant.
fn scalar(eg: &MlcEGraph, class: Id) -> Option<f32> {
    let t = const_of(eg, class)?;
    if t.len() != 1 || t.dtype() != DType::F32 {
        return None;
    }
    Some(*t.to_f64_vec().ok()?.first()? as f32)
}

/// The weight side: a constant 8-bit `wq` dequantized with zero zero points, per tensor or
/// along `axis`: `(wq tensor, its class, per-element scales)`.
fn weights(eg: &MlcEGraph, class: Id, axis: usize) -> Option<(&Tensor, Id, Vec<f32>)> {
    dequantized(eg, class)
        .into_iter()
        .find_map(|(ax, q, s, z)| {
            let wq = const_of(eg, q)?;
            if !matches!(wq.dtype(), DType::I8 | DType::U8) {
                return None;
            }
            if let Some(z) = z {
                let zv = const_of(eg, z)?.to_f64_vec().ok()?;
                if zv.iter().any(|v| *v != 0.0) {
                    return None;
                }
            }
            let st = const_of(eg, s)?;
            if st.dtype() != DType::F32 {
                return None;
            }
            let sv: Vec<f32> = st.to_f64_vec().ok()?.iter().map(|v| *v as f32).collect();
            let per_axis = sv.len() > 1;
            if per_axis && (ax != axis || wq.shape().get(axis) != Some(&sv.len())) {
                return None;
            }
            Some((wq, q, sv))
        })
}

/// A float bias: absent (`None` inside), a constant, or a dequantized constant (evaluated).
fn bias(eg: &MlcEGraph, class: Option<Id>) -> Option<Option<Tensor>> {
    let Some(class) = class.filter(|c| !eg[*c].data.types.is_empty()) else {
        return Some(None);
    };
    if let Some(t) = const_of(eg, class) {
        return (t.dtype() == DType::F32).then(|| Some(t.clone()));
    }
    for (axis, _, _, _) in dequantized(eg, class) {
        for (_, o, c) in ops_where(eg, class, |o| {
            matches!(o, Op::Quant(QuantOp::Dequantize { axis: a, .. }) if *a == axis).then_some(())
        }) {
            let args: Option<Vec<Option<&Tensor>>> = c
                .iter()
                .map(|k| {
                    if eg[*k].data.types.is_empty() {
                        Some(None)
                    } else {
                        const_of(eg, *k).map(Some)
                    }
                })
                .collect();
            let Some(args) = args else { continue };
            if let Ok(mut out) = mlc_interp::eval_op(
                &o.op,
                &args,
                &EvalCx {
                    regions: &o.regions,
                    output_types: &o.types,
                },
            ) && let Some(t) = out.pop()
            {
                return Some(Some(t));
            }
        }
    }
    None
}

fn f32_tensor(shape: &[usize], v: Vec<f32>) -> Option<Tensor> {
    Tensor::from_vec(shape, v).ok()
}

/// `cast_f32(op(children)) * scale (+ bias)`, the float value of an integer contraction, built
/// directly as one composite kernel (`conv_integer+cast+mul+add`): the rescale is the
/// contraction's epilogue anyway, and pricing it as separate kernels here would make the
/// integer form look dearer than the float one it replaces on launch-bound targets. The
/// fusion phase extends it with what follows (activation, requantization). `scale` and `bias`
/// are shaped to broadcast against the result.
fn rescaled(
    eg: &mut MlcEGraph,
    op: Op,
    children: Vec<Id>,
    scale: Tensor,
    bias: Option<Tensor>,
    want: &TensorType,
    rule: &'static str,
) -> Option<Id> {
    let mut body = Graph::new();
    let mut args = vec![];
    for (i, c) in children.iter().enumerate() {
        args.push(Some(body.add_input(format!("in{i}"), ty(eg, *c)?.clone())));
    }
    let types: Vec<Option<TensorType>> = children.iter().map(|c| ty(eg, *c).cloned()).collect();
    let values: Vec<Option<&Tensor>> = children
        .iter()
        .map(|c| eg[*c].data.value.as_deref())
        .collect();
    let [int_ty] = &op
        .infer(&InferCx {
            inputs: &types,
            consts: &values,
            regions: &[],
            n_outputs: 1,
        })
        .ok()?[..]
    else {
        return None;
    };
    let float_ty = TensorType::new(DType::F32, int_ty.shape.clone());
    let mut kind = vec![op.name().rsplit('.').next().unwrap_or_default().to_string()];
    let int = body.add_node(op, args, vec![int_ty.clone()], vec![], None)[0];
    let f = body.add_node(
        Op::Ew(EwOp::Cast { to: DType::F32 }),
        vec![Some(int)],
        vec![float_ty],
        vec![],
        None,
    )[0];
    let s_in = body.add_input("scale", TensorType::fixed(DType::F32, scale.shape()));
    let mut y = body.add_node(
        Op::Ew(EwOp::Mul),
        vec![Some(f), Some(s_in)],
        vec![want.clone()],
        vec![],
        None,
    )[0];
    kind.extend(["cast".to_string(), "mul".to_string()]);
    let mut inputs = children;
    inputs.push(add_const(eg, scale));
    if let Some(b) = bias {
        let b_in = body.add_input("bias", TensorType::fixed(DType::F32, b.shape()));
        y = body.add_node(
            Op::Ew(EwOp::Add),
            vec![Some(y), Some(b_in)],
            vec![want.clone()],
            vec![],
            None,
        )[0];
        kind.push("add".to_string());
        inputs.push(add_const(eg, b));
    }
    body.outputs.push(Port {
        value: y,
        name: "out".into(),
    });
    // The body's types were given, not inferred: check them as `add_op` would.
    mlc_ir::verify(&body).ok()?;
    let info = OpInfo::new(
        Op::Control(ControlOp::Composite {
            kind: kind.join("+"),
        }),
        vec![body],
        vec![want.clone()],
        None,
        vec![rule],
    );
    Some(eg.add(MlcNode::Op(OpRef::new(info), inputs)))
}

/// Per-output-channel scales `sx * sw[m]` for `m` channels.
fn scales(sx: f32, sw: &[f32], m: usize) -> Vec<f32> {
    (0..m)
        .map(|i| sx * if sw.len() == 1 { sw[0] } else { sw[i] })
        .collect()
}

/// `conv(dq(xq), dq(wq), b)` → `cast(conv_integer(xq, wq, zx)) * (sx·sw) + b`.
fn int_conv(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let Some(want) = ty(eg, class).cloned() else {
        return vec![];
    };
    let mut out: Vec<Build> = vec![];
    for (geom, _, c) in ops_where(eg, class, |o| match o {
        Op::Nn(NnOp::Conv {
            strides,
            dilations,
            pads,
            group,
            auto_pad,
        }) => Some((strides, dilations, pads, *group, *auto_pad)),
        _ => None,
    }) {
        let (strides, dilations, pads, group, auto_pad) = geom;
        let pad = match auto_pad {
            AutoPad::NotSet => ConvPad::Explicit(pads.clone()),
            AutoPad::Valid => ConvPad::Explicit(vec![0; 2 * strides.len()]),
            AutoPad::SameUpper => ConvPad::SameUpper,
            AutoPad::SameLower => ConvPad::SameLower,
        };
        let geom = ConvGeom {
            strides: strides.clone(),
            dilations: dilations.clone(),
            pad,
            group,
        };
        let (Some(&x), Some(&w)) = (c.first(), c.get(1)) else {
            continue;
        };
        let Some((xq, sx, zx)) = activation(eg, x) else {
            continue;
        };
        let Some((wq, wq_class, sw)) = weights(eg, w, 0) else {
            continue;
        };
        let Some(b) = bias(eg, c.get(2).copied()) else {
            continue;
        };
        let m = wq.shape()[0];
        let rank = want.rank();
        if rank < 3 || b.as_ref().is_some_and(|b| b.len() != m) {
            continue;
        }
        // `[M, 1, ...]`: broadcasts along the channel dim of `[N, M, spatial...]`.
        let mut cshape = vec![m];
        cshape.extend(std::iter::repeat_n(1, rank - 2));
        let Some(scale) = f32_tensor(&cshape, scales(sx, &sw, m)) else {
            continue;
        };
        let b = match b {
            Some(b) => match b.to_f64_vec() {
                Ok(v) => f32_tensor(&cshape, v.iter().map(|x| *x as f32).collect()),
                Err(_) => continue,
            },
            None => None,
        };
        let want = want.clone();
        out.push(Box::new(move |eg, rule| {
            let mut children = vec![xq, wq_class];
            children.extend(zx);
            let op = Op::Quant(QuantOp::ConvInteger(geom));
            rescaled(eg, op, children, scale, b, &want, rule)
        }));
    }
    out
}

/// `gemm(dq(xq), dq(wq), c)` (A not transposed) → `cast(matmul_integer(xq, wq')) * (α·sx·sw)
/// + β·c`, with `wq'` the weights as `[K, N]` (transposed at compile time for `trans_b`).
fn int_gemm(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let Some(want) = ty(eg, class).cloned() else {
        return vec![];
    };
    let mut out: Vec<Build> = vec![];
    for ((trans_b, alpha, beta), _, c) in ops_where(eg, class, |o| match o {
        Op::Nn(NnOp::Gemm {
            trans_a: false,
            trans_b,
            alpha,
            beta,
        }) => Some((*trans_b, *alpha, *beta)),
        _ => None,
    }) {
        let (Some(&x), Some(&w)) = (c.first(), c.get(1)) else {
            continue;
        };
        let Some((xq, sx, zx)) = activation(eg, x) else {
            continue;
        };
        // The output column (N) axis of the weights: 0 when transposed.
        let Some((wq, wq_class, sw)) = weights(eg, w, usize::from(!trans_b)) else {
            continue;
        };
        let Some(b) = bias(eg, c.get(2).copied()) else {
            continue;
        };
        let [r, cl] = wq.shape() else { continue };
        let (k, n) = if trans_b { (*cl, *r) } else { (*r, *cl) };
        let sc: Vec<f32> = scales(sx, &sw, n).iter().map(|s| s * alpha).collect();
        let Some(scale) = f32_tensor(&[n], sc) else {
            continue;
        };
        let b = match b {
            Some(b) => match b.to_f64_vec() {
                Ok(v) => f32_tensor(b.shape(), v.iter().map(|x| *x as f32 * beta).collect()),
                Err(_) => continue,
            },
            None => None,
        };
        let want = want.clone();
        out.push(Box::new(move |eg, rule| {
            // The weights as `[K, N]`, transposed here (once) rather than at every search.
            let wq = const_of(eg, wq_class)?;
            let wv = wq.to_f64_vec().ok()?;
            let kn: Vec<f64> = if trans_b {
                (0..k)
                    .flat_map(|i| (0..n).map(move |j| (i, j)))
                    .map(|(i, j)| wv[j * k + i])
                    .collect()
            } else {
                wv
            };
            let wkn = Tensor::from_vec(&[k, n], kn).ok()?.cast(wq.dtype()).ok()?;
            let wc = add_const(eg, wkn);
            let mut children = vec![xq, wc];
            children.extend(zx);
            let op = Op::Quant(QuantOp::MatMulInteger);
            rescaled(eg, op, children, scale, b, &want, rule)
        }));
    }
    out
}

/// `matmul(dq(xq), dq(wq))` with 2-D constant weights → `cast(matmul_integer(xq, wq)) *
/// (sx·sw)`.
fn int_matmul(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let Some(want) = ty(eg, class).cloned() else {
        return vec![];
    };
    let mut out: Vec<Build> = vec![];
    for (_, _, c) in ops_where(eg, class, |o| {
        matches!(o, Op::Nn(NnOp::Matmul)).then_some(())
    }) {
        let [x, w] = *c else { continue };
        let Some((xq, sx, zx)) = activation(eg, x) else {
            continue;
        };
        let Some((wq, wq_class, sw)) = weights(eg, w, 1) else {
            continue;
        };
        let [_, n] = wq.shape() else { continue };
        let n = *n;
        if ty(eg, xq).is_none_or(|t| t.rank() < 2) {
            continue;
        }
        let Some(scale) = f32_tensor(&[n], scales(sx, &sw, n)) else {
            continue;
        };
        let want = want.clone();
        out.push(Box::new(move |eg, rule| {
            let mut children = vec![xq, wq_class];
            children.extend(zx);
            let op = Op::Quant(QuantOp::MatMulInteger);
            rescaled(eg, op, children, scale, None, &want, rule)
        }));
    }
    out
}

/// `matmul_integer(a, b, za, 0)` → `matmul_integer(a, b, za)`, and the same for
/// `conv_integer`: a weight zero point that is all zeros changes nothing, and without one the
/// 8-bit weights go into the integer GEMM as they are (`mlc-kir`'s lowering needs no
/// correction for them). Exact.
fn int_zero_point(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let Some(want) = ty(eg, class).cloned() else {
        return vec![];
    };
    let mut out: Vec<Build> = vec![];
    for (op, _, c) in ops_where(eg, class, |o| {
        matches!(
            o,
            Op::Quant(QuantOp::MatMulInteger | QuantOp::ConvInteger(_))
        )
        .then(|| o.clone())
    }) {
        let [a, b, za, zb] = *c else { continue };
        let zero = const_of(eg, zb)
            .and_then(|t| t.to_f64_vec().ok())
            .is_some_and(|v| v.iter().all(|x| *x == 0.0));
        if !zero {
            continue;
        }
        let want = want.clone();
        out.push(Box::new(move |eg, rule| {
            add_op(eg, op, vec![a, b, za], vec![], &want, vec![rule])
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testkit::check_with_tolerance;

    /// Quantized conv → relu → quantize, as ONNX Runtime's QDQ format writes it.
    const CONV: &str = r#"graph (%0: f32[n,2,h,w] "x") -> (%15 "y") {
  @c0 = const f32[] [0.02]
  @c1 = const u8[] [128]
  @c2 = const i8[3,2,3,3] [1, -2, 3, -4, 5, -6, 7, -8, 9, 10, -11, 12, -13, 14, -15, 16, -17, 18, 19, 20, -21, 22, 23, -24, 25, 26, 27, -28, 29, 30, 31, 32, -33, 34, 35, 36, 37, -38, 39, 40, 41, 42, -43, 44, 45, 46, 47, 48, -49, 50, 51, 52, -53, 54]
  @c3 = const f32[3] [0.01, 0.02, 0.005]
  @c4 = const i8[3] [0, 0, 0]
  @c5 = const i32[3] [100, -200, 300]
  @c6 = const f32[3] [0.0002, 0.0004, 0.0001]
  @c7 = const f32[] [0.05]
  %1 = constant @c0 : f32[]
  %2 = constant @c1 : u8[]
  %3 = quant.quantize {"axis":1,"block_size":0,"to":"u8"} (%0, %1, %2) : u8[n,2,h,w]
  %4 = quant.dequantize {"axis":1,"block_size":0,"to":"f32"} (%3, %1, %2) : f32[n,2,h,w]
  %5 = constant @c2 : i8[3,2,3,3]
  %6 = constant @c3 : f32[3]
  %7 = constant @c4 : i8[3]
  %8 = quant.dequantize {"axis":0,"block_size":0,"to":"f32"} (%5, %6, %7) : f32[3,2,3,3]
  %9 = constant @c5 : i32[3]
  %10 = constant @c6 : f32[3]
  %11 = quant.dequantize {"axis":0,"block_size":0,"to":"f32"} (%9, %10) : f32[3]
  %12 = nn.conv {"strides":[1,1],"dilations":[1,1],"pads":[1,1,1,1],"group":1,"auto_pad":"not_set"} (%4, %8, %11) : f32[n,3,h,w]
  %13 = ew.relu(%12) : f32[n,3,h,w]
  %14 = constant @c7 : f32[]
  %15 = quant.quantize {"axis":1,"block_size":0,"to":"u8"} (%13, %14, %2) : u8[n,3,h,w]
}
"#;

    #[test]
    fn a_qdq_convolution_becomes_an_integer_convolution() {
        let shapes: &[&[&[usize]]] = &[&[&[1, 2, 5, 5]], &[&[2, 2, 4, 7]], &[&[1, 2, 1, 1]]];
        // A requantized output may round to the other neighbour: one quantum.
        for g in check_with_tolerance(&["int-conv"], CONV, shapes, 1.0) {
            let text = g.to_string();
            assert!(text.contains("quant.conv_integer"), "{g}");
            assert!(!text.contains("nn.conv "), "{g}");
        }
    }

    const GEMM: &str = r#"graph (%0: f32[m,4] "x") -> (%10 "y") {
  @c0 = const f32[] [0.03]
  @c1 = const u8[] [100]
  @c2 = const i8[3,4] [12, -7, 33, 5, -90, 64, 1, -2, 127, -128, 50, 9]
  @c3 = const f32[3] [0.01, 0.002, 0.02]
  @c4 = const f32[3] [0.5, -0.25, 1.0]
  %1 = constant @c0 : f32[]
  %2 = constant @c1 : u8[]
  %3 = quant.quantize {"axis":1,"block_size":0,"to":"u8"} (%0, %1, %2) : u8[m,4]
  %4 = quant.dequantize {"axis":1,"block_size":0,"to":"f32"} (%3, %1, %2) : f32[m,4]
  %5 = constant @c2 : i8[3,4]
  %6 = constant @c3 : f32[3]
  %7 = quant.dequantize {"axis":0,"block_size":0,"to":"f32"} (%5, %6) : f32[3,4]
  %8 = constant @c4 : f32[3]
  %9 = nn.gemm {"trans_a":false,"trans_b":true,"alpha":1.5,"beta":2.0} (%4, %7, %8) : f32[m,3]
  %10 = ew.tanh(%9) : f32[m,3]
}
"#;

    #[test]
    fn a_qdq_gemm_becomes_an_integer_matmul() {
        let shapes: &[&[&[usize]]] = &[&[&[1, 4]], &[&[5, 4]]];
        for g in check_with_tolerance(&["int-gemm"], GEMM, shapes, 1e-5) {
            let text = g.to_string();
            assert!(text.contains("quant.matmul_integer"), "{g}");
            assert!(!text.contains("nn.gemm"), "{g}");
        }
    }

    const MATMUL: &str = r#"graph (%0: f32[b,m,3] "x") -> (%8 "y") {
  @c0 = const f32[] [0.04]
  @c1 = const i8[] [-3]
  @c2 = const i8[3,2] [12, -7, 33, 5, -90, 64]
  @c3 = const f32[] [0.01]
  %1 = constant @c0 : f32[]
  %2 = constant @c1 : i8[]
  %3 = quant.quantize {"axis":1,"block_size":0,"to":"i8"} (%0, %1, %2) : i8[b,m,3]
  %4 = quant.dequantize {"axis":1,"block_size":0,"to":"f32"} (%3, %1, %2) : f32[b,m,3]
  %5 = constant @c2 : i8[3,2]
  %6 = constant @c3 : f32[]
  %7 = quant.dequantize {"axis":1,"block_size":0,"to":"f32"} (%5, %6) : f32[3,2]
  %8 = nn.matmul(%4, %7) : f32[b,m,2]
}
"#;

    #[test]
    fn a_qdq_matmul_becomes_an_integer_matmul() {
        let shapes: &[&[&[usize]]] = &[&[&[1, 1, 3]], &[&[2, 5, 3]]];
        for g in check_with_tolerance(&["int-matmul"], MATMUL, shapes, 1e-5) {
            assert!(g.to_string().contains("quant.matmul_integer"), "{g}");
        }
    }

    #[test]
    fn zero_weight_zero_points_are_dropped() {
        let src = r#"graph (%0: f32[m,3] "x") -> (%6 "y") {
  @c0 = const i8[3,2] [12, -7, 33, 5, -90, 64]
  @c1 = const i8[2] [0, 0]
  %1, %2, %3 = quant.dynamic_quantize(%0) : u8[m,3], f32[], u8[]
  %4 = constant @c0 : i8[3,2]
  %5 = constant @c1 : i8[2]
  %6 = quant.matmul_integer(%1, %4, %3, %5) : i32[m,2]
}
"#;
        for g in super::super::testkit::check(&["int-zero-point"], src, &[&[&[4, 3]], &[&[1, 3]]]) {
            let line = g
                .to_string()
                .lines()
                .find(|l| l.contains("quant.matmul_integer("))
                .map(str::to_string)
                .unwrap_or_default();
            assert_eq!(line.matches(", ").count(), 2, "{g}");
        }
    }

    #[test]
    fn weight_zero_points_and_per_row_activations_are_left_alone() {
        // A nonzero weight zero point would need another correction term.
        let src = r#"graph (%0: f32[m,4] "x") -> (%10 "y") {
  @c0 = const f32[] [0.03]
  @c1 = const u8[] [100]
  @c2 = const i8[3,4] [12, -7, 33, 5, -90, 64, 1, -2, 127, -128, 50, 9]
  @c3 = const f32[3] [0.01, 0.002, 0.02]
  @c4 = const i8[3] [0, 1, 0]
  %1 = constant @c0 : f32[]
  %2 = constant @c1 : u8[]
  %3 = quant.quantize {"axis":1,"block_size":0,"to":"u8"} (%0, %1, %2) : u8[m,4]
  %4 = quant.dequantize {"axis":1,"block_size":0,"to":"f32"} (%3, %1, %2) : f32[m,4]
  %5 = constant @c2 : i8[3,4]
  %6 = constant @c3 : f32[3]
  %7 = constant @c4 : i8[3]
  %8 = quant.dequantize {"axis":0,"block_size":0,"to":"f32"} (%5, %6, %7) : f32[3,4]
  %9 = nn.gemm {"trans_a":false,"trans_b":true,"alpha":1.0,"beta":1.0} (%4, %8, _) : f32[m,3]
  %10 = ew.tanh(%9) : f32[m,3]
}
"#;
        let g = &super::super::testkit::check_all(src, &[&[&[2, 4]]])[0];
        assert!(!g.to_string().contains("integer"), "{g}");
    }
}
