//! Quantize/dequantize pairs of QDQ models: a round trip through float that changes nothing,
//! and max pooling moved to the integer side of a dequantize.
//!
//! Quantizers write a `quantize → dequantize` pair on every edge, so a tensor that one op
//! produces and the next consumes in 8 bits still crosses float on the way, and ops that
//! commute with the (monotone) dequantization run in float on 4× the bytes:
//!
//! * `qdq-round-trip`: `quantize(dequantize(q, s, z), s, z)` is `q`. The dequantized value is
//!   `(q − z)·s` rounded once to f32; dividing by `s` and rounding to the nearest integer
//!   gives `q − z` back, since `|q − z| ≤ 65535` and each rounding moves the quotient by a
//!   relative 2⁻²⁴ (at most 0.008 in all, far from the ±0.5 that would change the integer);
//!   adding `z` lands in range, so nothing saturates. Scales must be known, finite and normal
//!   (a subnormal or infinite scale breaks the bound), zero points known and equal, both
//!   ends per tensor or along the same axis.
//! * `pool-before-dequantize`: `max_pool(dequantize(q, s, z))` is
//!   `dequantize(max_pool(q), s, z)` for positive scales per tensor or per channel (axis 1,
//!   never pooled over): `x ↦ (x − z)·s` rounded is non-decreasing, so it commutes with max.
//!   Padding is ignored by both pools, so every window must hold one real element: explicit
//!   pads smaller than the kernel, no dilation, no `ceil_mode` (the last window then starts
//!   inside the input; with `ceil_mode`, only when the output's size puts the last window's
//!   start inside the input too). The 8-bit pool reads and writes a quarter of the bytes, and
//!   the `quantize` that usually follows the pool meets its `dequantize` and goes away.
//! * `quantize-concat-parts`: `quantize(concat(xᵢ…), s, z)` is `concat(quantize(xᵢ, s, z)…)`
//!   for per-tensor parameters (quantization is elementwise). Each part's quantization then
//!   meets the part's producer: a `dequantize` with the same parameters goes away
//!   (`qdq-round-trip`), any other joins the producer's fused tail, and the concatenation moves
//!   8-bit values (SqueezeNet's and GoogLeNet's branches: each branch writes its quantized
//!   result into the concatenation instead of a float one quantized again).
//! * `move-before-dequantize`: a reshape, flatten, transpose, squeeze, unsqueeze or slice of
//!   `dequantize(q, s, z)` is the dequantization of the same movement of `q`, for per-tensor
//!   parameters (the movement only rearranges elements that the dequantization maps alike).
//!   ShuffleNet's channel shuffles then move bytes, and the `quantize` after them meets the
//!   `dequantize` (`qdq-round-trip`).

use super::quant::{const_of, dequantized};
use super::{Build, NodeRule, add_op, ops_where, same_as, ty};
use crate::egraph::analysis::MlcEGraph;
use egg::Id;
use mlc_ir::ops::nn::AutoPad;
use mlc_ir::ops::{MovementOp, NnOp, QuantOp};
use mlc_ir::{DType, Op};

pub fn rules() -> Vec<NodeRule> {
    vec![
        NodeRule::rewrite("qdq-round-trip", round_trip),
        NodeRule::rewrite("pool-before-dequantize", pool_before_dequantize),
        NodeRule::rewrite("quantize-concat-parts", quantize_parts),
        NodeRule::rewrite("move-before-dequantize", move_before_dequantize),
    ]
}

/// `movement(dequantize(q, s, z), rest…)` as `dequantize(movement(q, rest…), s, z)` for
/// per-tensor parameters: reshapes, transposes, squeezes and slices only rearrange elements,
/// and a per-tensor dequantization maps every element alike, so the two commute exactly.
fn move_before_dequantize(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let Some(want) = ty(eg, class).cloned() else {
        return vec![];
    };
    let mut out: Vec<Build> = vec![];
    for (op, o, c) in ops_where(eg, class, |o| match o {
        Op::Movement(
            MovementOp::Reshape { .. }
            | MovementOp::Flatten { .. }
            | MovementOp::Transpose { .. }
            | MovementOp::Squeeze { .. }
            | MovementOp::Unsqueeze { .. }
            | MovementOp::Slice { .. },
        ) => Some(o.clone()),
        _ => None,
    }) {
        if o.types.len() != 1 {
            continue;
        }
        let Some((&x, rest)) = c.split_first() else {
            continue;
        };
        for (axis, q, s, z) in dequantized(eg, x) {
            let per_tensor = scale_values(eg, s).is_some_and(|v| v.len() == 1)
                && z.is_none_or(|z| const_of(eg, z).is_some_and(|t| t.len() == 1));
            let Some(qty) = ty(eg, q) else { continue };
            if !per_tensor || !matches!(qty.dtype, DType::U8 | DType::I8) {
                continue;
            }
            let mut moved = want.clone();
            moved.dtype = qty.dtype;
            let (op, want, rest) = (op.clone(), want.clone(), rest.to_vec());
            out.push(Box::new(move |eg, rule| {
                let mut children = vec![q];
                children.extend(&rest);
                let m = add_op(eg, op.clone(), children, vec![], &moved, vec![rule])?;
                let dq = Op::Quant(QuantOp::Dequantize {
                    axis,
                    block_size: 0,
                    to: DType::F32,
                });
                let mut children = vec![m, s];
                children.extend(z);
                add_op(eg, dq, children, vec![], &want, vec![rule])
            }));
        }
    }
    out
}

/// The scale values of a constant f32 scale class.
fn scale_values(eg: &MlcEGraph, class: Id) -> Option<Vec<f64>> {
    let t = const_of(eg, class)?;
    (t.dtype() == DType::F32).then(|| t.to_f64_vec().ok())?
}

/// Zero point values: absent means zeros (one per scale).
fn zero_values(eg: &MlcEGraph, class: Option<Id>, n: usize) -> Option<Vec<f64>> {
    match class {
        None => Some(vec![0.0; n]),
        Some(c) => const_of(eg, c)?.to_f64_vec().ok(),
    }
}

fn round_trip(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let mut out: Vec<Build> = vec![];
    for ((axis, to), _, c) in ops_where(eg, class, |o| match o {
        Op::Quant(QuantOp::Quantize {
            axis,
            block_size: 0,
            to,
            ..
        }) => Some((*axis, *to)),
        _ => None,
    }) {
        if !matches!(to, DType::U8 | DType::I8 | DType::U16 | DType::I16) {
            continue;
        }
        let (Some(&x), Some(&s)) = (c.first(), c.get(1)) else {
            continue;
        };
        let z = c.get(2).copied().filter(|z| !eg[*z].data.types.is_empty());
        let Some(sv) = scale_values(eg, s) else {
            continue;
        };
        if !sv.iter().all(|v| (*v as f32).is_normal()) {
            continue;
        }
        let Some(zv) = zero_values(eg, z, sv.len()) else {
            continue;
        };
        for (d_axis, q, ds, dz) in dequantized(eg, x) {
            if ty(eg, q).is_none_or(|t| t.dtype != to) || ty(eg, q) != ty(eg, class) {
                continue;
            }
            let same_scale = eg.find(ds) == eg.find(s) || scale_values(eg, ds) == Some(sv.clone());
            let same_zero = zero_values(eg, dz, sv.len()) == Some(zv.clone());
            let same_axis = sv.len() == 1 || d_axis == axis;
            if same_scale && same_zero && same_axis {
                out.push(same_as(q));
            }
        }
    }
    out
}

fn quantize_parts(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let Some(want) = ty(eg, class).cloned() else {
        return vec![];
    };
    let mut out: Vec<Build> = vec![];
    for (qop, _, c) in ops_where(eg, class, |o| match o {
        Op::Quant(QuantOp::Quantize {
            block_size: 0,
            to: DType::U8 | DType::I8,
            ..
        }) => Some(o.clone()),
        _ => None,
    }) {
        let (Some(&x), Some(&s)) = (c.first(), c.get(1)) else {
            continue;
        };
        let z = c.get(2).copied().filter(|z| !eg[*z].data.types.is_empty());
        // Per tensor: every part takes the same parameters whatever the axis.
        if scale_values(eg, s).is_none_or(|v| v.len() != 1)
            || z.is_some_and(|z| const_of(eg, z).is_none_or(|t| t.len() != 1))
        {
            continue;
        }
        for (op, _, parts) in ops_where(eg, x, |o| match o {
            Op::Movement(MovementOp::Concat { .. }) => Some(o.clone()),
            _ => None,
        }) {
            let part_types: Option<Vec<_>> = parts
                .iter()
                .map(|&p| {
                    ty(eg, p).cloned().map(|mut t| {
                        t.dtype = want.dtype;
                        t
                    })
                })
                .collect();
            let Some(part_types) = part_types else {
                continue;
            };
            let (parts, want, qop) = (parts.to_vec(), want.clone(), qop.clone());
            out.push(Box::new(move |eg, rule| {
                let mut qs = Vec::with_capacity(parts.len());
                for (&p, t) in parts.iter().zip(&part_types) {
                    let mut children = vec![p, s];
                    children.extend(z);
                    qs.push(add_op(eg, qop.clone(), children, vec![], t, vec![rule])?);
                }
                add_op(eg, op.clone(), qs, vec![], &want, vec![rule])
            }));
        }
    }
    out
}

fn pool_before_dequantize(eg: &MlcEGraph, class: Id) -> Vec<Build> {
    let Some(want) = ty(eg, class).cloned() else {
        return vec![];
    };
    let mut out: Vec<Build> = vec![];
    for (op, o, c) in ops_where(eg, class, |o| match o {
        Op::Nn(NnOp::MaxPool { window, .. }) => Some(window),
        _ => None,
    }) {
        let window = op;
        let k = window.kernel.len();
        let pads_ok =
            window.pads.len() == 2 * k && (0..2 * k).all(|i| window.pads[i] < window.kernel[i % k]);
        // With `ceil_mode`, the last window may start in the end padding: only when the static
        // sizes show it starting inside the input (`(out − 1)·stride − pad < in`).
        let ceil_ok = || {
            let (Some(&x), Some(out)) = (c.first(), want.static_shape()) else {
                return false;
            };
            let Some(ins) = ty(eg, x).and_then(|t| t.static_shape()) else {
                return false;
            };
            let sp = ins.len().saturating_sub(k);
            out.len() == ins.len()
                && window.strides.len() == k
                && (0..k).all(|i| {
                    let (o, n) = (out[sp + i], ins[sp + i]);
                    o == 0 || (o - 1) * window.strides[i] < n + window.pads[i]
                })
        };
        if o.types.len() != 1
            || (window.ceil_mode && !ceil_ok())
            || window.auto_pad != AutoPad::NotSet
            || window.dilations.iter().any(|d| *d != 1)
            || !pads_ok
        {
            continue;
        }
        let Some(&x) = c.first() else { continue };
        for (axis, q, s, z) in dequantized(eg, x) {
            let Some(sv) = scale_values(eg, s) else {
                continue;
            };
            let positive = sv.iter().all(|v| *v > 0.0 && v.is_finite());
            if !positive
                || (sv.len() > 1 && axis != 1)
                || z.is_some_and(|z| const_of(eg, z).is_none())
            {
                continue;
            }
            let Some(qty) = ty(eg, q) else { continue };
            if !matches!(qty.dtype, DType::U8 | DType::I8) {
                continue;
            }
            let mut pooled = want.clone();
            pooled.dtype = qty.dtype;
            let (pool, want) = (o.op.clone(), want.clone());
            out.push(Box::new(move |eg, rule| {
                let p = add_op(eg, pool, vec![q], vec![], &pooled, vec![rule])?;
                let dq = Op::Quant(QuantOp::Dequantize {
                    axis,
                    block_size: 0,
                    to: DType::F32,
                });
                let mut children = vec![p, s];
                children.extend(z);
                add_op(eg, dq, children, vec![], &want, vec![rule])
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{check, check_all};

    /// `quantize → dequantize → quantize` with the same parameters, as quantizers leave
    /// between two quantized ops.
    const ROUND_TRIP: &str = r#"graph (%0: f32[n,3] "x") -> (%6 "y") {
  @c0 = const f32[] [0.0173]
  @c1 = const u8[] [121]
  @c2 = const f32[] [0.0173]
  %1 = constant @c0 : f32[]
  %2 = constant @c1 : u8[]
  %3 = quant.quantize {"axis":1,"block_size":0,"to":"u8"} (%0, %1, %2) : u8[n,3]
  %4 = quant.dequantize {"axis":1,"block_size":0,"to":"f32"} (%3, %1, %2) : f32[n,3]
  %5 = constant @c2 : f32[]
  %6 = quant.quantize {"axis":1,"block_size":0,"to":"u8"} (%4, %5, %2) : u8[n,3]
}
"#;

    #[test]
    fn a_quantize_of_the_same_dequantize_is_its_integers() {
        // 0.0173 over [-2, 2) reaches both ends of u8 (saturation on both sides).
        let shapes: &[&[&[usize]]] = &[&[&[64, 3]], &[&[1, 3]], &[&[333, 3]]];
        for g in check(&["qdq-round-trip"], ROUND_TRIP, shapes) {
            assert_eq!(g.to_string().matches("quant.").count(), 1, "{g}");
        }
    }

    #[test]
    fn every_quantized_value_survives_the_round_trip() {
        // Exhaustive over the integers: every u8 and i8 value, awkward scales and zero points.
        for (dt, lo, hi) in [("u8", 0i32, 255i32), ("i8", -128, 127)] {
            for (scale, zero) in [(0.0173, 3), (3.0e-5, 0), (1.7e4, -1), (0.1, 0)] {
                let zero = if dt == "u8" { zero.max(0) } else { zero };
                let values: Vec<String> = (lo..=hi).map(|v| v.to_string()).collect();
                let n = values.len();
                let src = format!(
                    r#"graph (%0: f32[1] "unused") -> (%5 "y") {{
  @c0 = const {dt}[{n}] [{vals}]
  @c1 = const f32[] [{scale:e}]
  @c2 = const {dt}[] [{zero}]
  %1 = constant @c0 : {dt}[{n}]
  %2 = constant @c1 : f32[]
  %3 = constant @c2 : {dt}[]
  %4 = quant.dequantize {{"axis":0,"block_size":0,"to":"f32"}} (%1, %2, %3) : f32[{n}]
  %5 = quant.quantize {{"axis":0,"block_size":0,"to":"{dt}"}} (%4, %2, %3) : {dt}[{n}]
}}
"#,
                    vals = values.join(", ")
                );
                check(&["qdq-round-trip"], &src, &[&[&[1]]]);
            }
        }
    }

    #[test]
    fn different_parameters_are_not_a_round_trip() {
        for (s2, z2) in [("0.02", "121"), ("0.0173", "120")] {
            let src = format!(
                r#"graph (%0: f32[n,3] "x") -> (%7 "y") {{
  @c0 = const f32[] [0.0173]
  @c1 = const u8[] [121]
  @c2 = const f32[] [{s2}]
  @c3 = const u8[] [{z2}]
  %1 = constant @c0 : f32[]
  %2 = constant @c1 : u8[]
  %3 = quant.quantize {{"axis":1,"block_size":0,"to":"u8"}} (%0, %1, %2) : u8[n,3]
  %4 = quant.dequantize {{"axis":1,"block_size":0,"to":"f32"}} (%3, %1, %2) : f32[n,3]
  %5 = constant @c2 : f32[]
  %6 = constant @c3 : u8[]
  %7 = quant.quantize {{"axis":1,"block_size":0,"to":"u8"}} (%4, %5, %6) : u8[n,3]
}}
"#
            );
            let g = &check_all(&src, &[&[&[64, 3]]])[0];
            assert_eq!(g.to_string().matches("quant.").count(), 3, "{g}");
        }
    }

    /// Conv-free stem of a QDQ ResNet: quantize, dequantize, max pool, quantize.
    const POOL: &str = r#"graph (%0: f32[n,2,h,w] "x") -> (%6 "y") {
  @c0 = const f32[] [0.011]
  @c1 = const u8[] [140]
  %1 = constant @c0 : f32[]
  %2 = constant @c1 : u8[]
  %3 = quant.quantize {"axis":1,"block_size":0,"to":"u8"} (%0, %1, %2) : u8[n,2,h,w]
  %4 = quant.dequantize {"axis":1,"block_size":0,"to":"f32"} (%3, %1, %2) : f32[n,2,h,w]
  %5 = nn.max_pool {"auto_pad":"not_set","ceil_mode":false,"dilations":[1,1],"kernel":[3,3],"pads":[1,1,2,2],"storage_order_col_major":false,"strides":[2,2]} (%4) : f32[n,2,OH,OW]
  %6 = quant.quantize {"axis":1,"block_size":0,"to":"u8"} (%5, %1, %2) : u8[n,2,OH,OW]
}
"#;

    #[test]
    fn max_pool_runs_on_the_integers() {
        let shapes: &[&[&[usize]]] = &[&[&[1, 2, 7, 7]], &[&[2, 2, 4, 9]], &[&[1, 2, 1, 1]]];
        for g in check(&["pool-before-dequantize", "qdq-round-trip"], POOL, shapes) {
            let text = g.to_string();
            let pool = text.lines().find(|l| l.contains("nn.max_pool"));
            assert!(pool.is_some_and(|l| l.contains(": u8[")), "{g}");
            assert_eq!(text.matches("quant.").count(), 1, "{g}");
        }
    }

    #[test]
    fn ceil_mode_pools_whose_windows_all_start_inside_run_on_the_integers() {
        // SqueezeNet's pools: 3×3, stride 2, `ceil_mode`, no pads; 111 → 55 and 9 → 4 (the
        // last window starts at 108 and 6, inside), and with pads 7 → 4 (shape inference
        // drops a last window that would start in the end padding; the rule checks the sizes
        // it is given all the same).
        for (size, out, pads, integer) in [
            (111, 55, "[0,0,0,0]", true),
            (9, 4, "[0,0,0,0]", true),
            (7, 4, "[1,1,2,2]", true),
        ] {
            let src = POOL
                .replace("f32[n,2,h,w]", &format!("f32[1,2,{size},{size}]"))
                .replace("u8[n,2,h,w]", &format!("u8[1,2,{size},{size}]"))
                .replace("f32[n,2,OH,OW]", &format!("f32[1,2,{out},{out}]"))
                .replace("u8[n,2,OH,OW]", &format!("u8[1,2,{out},{out}]"))
                .replace("\"ceil_mode\":false", "\"ceil_mode\":true")
                .replace("\"pads\":[1,1,2,2]", &format!("\"pads\":{pads}"));
            let shapes: &[&[&[usize]]] = &[&[&[1, 2, size, size]]];
            let g = &check(&["pool-before-dequantize", "qdq-round-trip"], &src, shapes)[0];
            let text = g.to_string();
            let pool = text.lines().find(|l| l.contains("nn.max_pool"));
            assert_eq!(
                pool.is_some_and(|l| l.contains(": u8[")),
                integer,
                "{size}: {g}"
            );
        }
    }

    /// Two branches dequantized with their own parameters, concatenated, quantized again (a
    /// QDQ fire module or inception block), and a third part already in float.
    const CONCAT: &str = r#"graph (%0: f32[n,3] "x", %1: f32[n,2] "y", %2: f32[n,4] "w") -> (%12 "out") {
  @c0 = const f32[] [0.0173]
  @c1 = const u8[] [121]
  @c2 = const f32[] [0.031]
  @c3 = const u8[] [7]
  %3 = constant @c0 : f32[]
  %4 = constant @c1 : u8[]
  %5 = constant @c2 : f32[]
  %6 = constant @c3 : u8[]
  %7 = quant.quantize {"axis":1,"block_size":0,"to":"u8"} (%0, %3, %4) : u8[n,3]
  %8 = quant.dequantize {"axis":1,"block_size":0,"to":"f32"} (%7, %3, %4) : f32[n,3]
  %9 = quant.quantize {"axis":1,"block_size":0,"to":"u8"} (%1, %5, %6) : u8[n,2]
  %10 = quant.dequantize {"axis":1,"block_size":0,"to":"f32"} (%9, %5, %6) : f32[n,2]
  %11 = movement.concat {"axis":1} (%8, %10, %2) : f32[n,9]
  %12 = quant.quantize {"axis":1,"block_size":0,"to":"u8"} (%11, %3, %4) : u8[n,9]
}
"#;

    #[test]
    fn a_quantized_concatenation_concatenates_quantized_parts() {
        // The part dequantized with the concatenation's own parameters is its integers again;
        // the others are quantized on their own; the concatenation is of bytes.
        let shapes: &[&[&[usize]]] = &[&[&[5, 3], &[5, 2], &[5, 4]], &[&[1, 3], &[1, 2], &[1, 4]]];
        for g in check(&["quantize-concat-parts", "qdq-round-trip"], CONCAT, shapes) {
            let text = g.to_string();
            let concat = text.lines().find(|l| l.contains("movement.concat"));
            assert!(concat.is_some_and(|l| l.contains(": u8[")), "{g}");
            // x's own quantization, y's and its requantization, w's: one dequantize left.
            assert_eq!(text.matches("quant.quantize").count(), 4, "{g}");
            assert_eq!(text.matches("quant.dequantize").count(), 1, "{g}");
        }
        // Per-channel parameters of the concatenation are not the same for every part: left
        // alone.
        let per_channel = CONCAT
            .replace(
                "@c3 = const u8[] [7]",
                "@c3 = const u8[] [7]\n  @c4 = const f32[9] [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09]\n  @c5 = const u8[9] [1, 2, 3, 4, 5, 6, 7, 8, 9]",
            )
            .replace(
                "%12 = quant.quantize {\"axis\":1,\"block_size\":0,\"to\":\"u8\"} (%11, %3, %4) : u8[n,9]",
                "%12 = constant @c4 : f32[9]\n  %13 = constant @c5 : u8[9]\n  %14 = quant.quantize {\"axis\":1,\"block_size\":0,\"to\":\"u8\"} (%11, %12, %13) : u8[n,9]",
            )
            .replace("-> (%12 \"out\")", "-> (%14 \"out\")");
        let g = &check_all(&per_channel, &[&[&[5, 3], &[5, 2], &[5, 4]]])[0];
        let text = g.to_string();
        let concat = text.lines().find(|l| l.contains("movement.concat"));
        assert!(concat.is_some_and(|l| l.contains(": f32[")), "{g}");
    }

    /// ShuffleNet's channel shuffle between two quantized layers: dequantize, reshape,
    /// transpose, reshape, quantize with the same parameters.
    const SHUFFLE: &str = r#"graph (%0: f32[1,6,h,w] "x") -> (%8 "y") {
  @c0 = const f32[] [0.0173]
  @c1 = const u8[] [121]
  %1 = constant @c0 : f32[]
  %2 = constant @c1 : u8[]
  %3 = quant.quantize {"axis":1,"block_size":0,"to":"u8"} (%0, %1, %2) : u8[1,6,h,w]
  %4 = quant.dequantize {"axis":1,"block_size":0,"to":"f32"} (%3, %1, %2) : f32[1,6,h,w]
  %5 = movement.reshape {"allowzero":false,"shape":[1,2,3,-1]} (%4) : f32[1,2,3,hw]
  %6 = movement.transpose {"perm":[0,2,1,3]} (%5) : f32[1,3,2,hw]
  %7 = movement.reshape {"allowzero":false,"shape":[1,6,-1]} (%6) : f32[1,6,hw]
  %8 = quant.quantize {"axis":1,"block_size":0,"to":"u8"} (%7, %1, %2) : u8[1,6,hw]
}
"#;

    #[test]
    fn movement_runs_on_the_integers() {
        let shapes: &[&[&[usize]]] = &[&[&[1, 6, 4, 5]], &[&[1, 6, 1, 1]]];
        for g in check(
            &["move-before-dequantize", "qdq-round-trip"],
            SHUFFLE,
            shapes,
        ) {
            let text = g.to_string();
            assert!(
                text.lines()
                    .filter(|l| l.contains("movement."))
                    .all(|l| l.contains(": u8[")),
                "{g}"
            );
            assert_eq!(text.matches("quant.").count(), 1, "{g}");
        }
        // Per-channel parameters do not commute with a transpose of the channels: float.
        let per_channel = SHUFFLE
            .replace(
                "@c0 = const f32[] [0.0173]",
                "@c0 = const f32[6] [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]",
            )
            .replace(
                "@c1 = const u8[] [121]",
                "@c1 = const u8[6] [1, 2, 3, 4, 5, 6]",
            )
            .replace("%1 = constant @c0 : f32[]", "%1 = constant @c0 : f32[6]")
            .replace("%2 = constant @c1 : u8[]", "%2 = constant @c1 : u8[6]");
        let g = &check_all(&per_channel, &[&[&[1, 6, 4, 5]]])[0];
        assert!(
            g.to_string()
                .contains("movement.transpose {\"perm\":[0,2,1,3]} (%"),
            "{g}"
        );
        assert!(
            g.to_string()
                .lines()
                .filter(|l| l.contains("movement.transpose"))
                .all(|l| l.contains(": f32[")),
            "{g}"
        );
    }

    #[test]
    fn pools_that_may_see_only_padding_stay_in_float() {
        for (from, to) in [
            ("\"ceil_mode\":false", "\"ceil_mode\":true"),
            ("\"pads\":[1,1,2,2]", "\"pads\":[1,1,3,2]"),
            ("\"dilations\":[1,1]", "\"dilations\":[2,1]"),
        ] {
            let src = POOL.replace(from, to);
            let g = &check_all(&src, &[&[&[1, 2, 7, 7]]])[0];
            assert!(g.to_string().contains(": f32[1,2,"), "{from} -> {to}: {g}");
        }
    }
}
