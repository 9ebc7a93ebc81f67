//! Import of ONNX shape, indexing and data-movement ops into the `movement` family.
//!
//! Every opset's spelling is normalized to one IR form: shape-like operands (reshape targets,
//! axes, slice bounds, pads, repeats) that were attributes in old opsets and inputs in new ones
//! become IR attributes whenever their value is known at import, either as a constant or by
//! symbolic evaluation of the shape chain that computes them (`sym.rs`), and stay IR inputs
//! otherwise. Axes are normalized to non-negative. When a shape operand stays dynamic but its
//! symbolic value is known, the op's output type is refined with the symbols (`batch`, `seq`).
//! Small integer results that turn out fully known (`Shape` of a static tensor and what is
//! computed from it) are folded into constants.

mod sym;

use crate::cx::{NodeCx, NodeError, Registry};
use mlc_ir::ops::MovementOp as M;
use mlc_ir::ops::movement::{
    DepthToSpaceMode, PadMode, Scalar, ScatterReduction, SymInt, constant_of_shape_shape,
    expand_shape, range_len, reshape_shape, slice_shape, tile_shape,
};
use mlc_ir::{DType, Dim, Op, Shape, Tensor, ValueId};

pub fn register(r: &mut Registry) {
    // ONNX Identity is imported by the ew family as an alias of its input (no node); the IR
    // op `movement.identity` exists for passes that need a distinct value.
    r.add("", "Reshape", reshape);
    r.add("", "Flatten", flatten);
    r.add("", "Transpose", transpose);
    r.add("", "Concat", concat);
    r.add("", "Split", split);
    r.add("", "Slice", slice);
    r.add("", "Squeeze", squeeze);
    r.add("", "Unsqueeze", unsqueeze);
    r.add("", "Expand", expand);
    r.add("", "Gather", |cx| {
        gather_like(cx, |axis| M::Gather { axis })
    });
    r.add("", "GatherElements", |cx| {
        gather_like(cx, |axis| M::GatherElements { axis })
    });
    r.add("", "GatherND", gather_nd);
    r.add("", "ScatterElements", scatter_elements);
    r.add("", "Scatter", scatter_elements);
    r.add("", "ScatterND", scatter_nd);
    r.add("", "Shape", shape);
    r.add("", "Size", |cx| unary(cx, M::Size));
    r.add("", "Range", range);
    r.add("", "ConstantOfShape", constant_of_shape);
    r.add("", "Tile", tile);
    r.add("", "Pad", pad);
    r.add("", "DepthToSpace", depth_to_space);
    r.add("", "SpaceToDepth", space_to_depth);
    r.add("", "Trilu", trilu);
    r.add("", "OneHot", one_hot);
    r.add("", "NonZero", |cx| unary(cx, M::NonZero));
    r.add("", "Compress", compress);
    r.add("", "ReverseSequence", reverse_sequence);
    r.add("", "EyeLike", eye_like);
    r.add("", "Unique", unique);
    r.add("", "CenterCropPad", center_crop_pad);
    r.add("", "TensorScatter", tensor_scatter);
}

type Res = Result<Vec<ValueId>, NodeError>;

/// Emits a single-output movement op; absent trailing inputs are dropped. An integer result of
/// at most a few elements whose value is fully known is replaced by a constant.
fn emit(cx: &mut NodeCx, op: M, mut inputs: Vec<Option<ValueId>>) -> Result<ValueId, NodeError> {
    while inputs.len() > 1 && inputs.last() == Some(&None) {
        inputs.pop();
    }
    let out = cx.emit(Op::Movement(op), inputs, 1)?[0];
    if let Some(v) = sym::ints(cx.graph, out) {
        let ty = cx.ty(out).clone();
        if let Some(shape) = ty.static_shape() {
            // The node just emitted is the graph's last and nothing uses it yet: drop it.
            let last = cx.graph.nodes.last().is_some_and(|n| n.outputs == [out]);
            if last && out.0 as usize + 1 == cx.graph.values.len() {
                cx.graph.nodes.pop();
                cx.graph.values.pop();
                let t = Tensor::from_vec(&shape, v)?.cast(ty.dtype)?;
                return Ok(cx.constant(t));
            }
        }
    }
    Ok(out)
}

/// Replaces the dims of `v`'s type by `shape` where that is at least as informative.
fn refine(cx: &mut NodeCx, v: ValueId, shape: Shape) {
    let ty = &mut cx.graph.values[v.0 as usize];
    if ty.shape.len() == shape.len() {
        for (d, s) in ty.shape.iter_mut().zip(shape) {
            if !matches!(d, Dim::Known(_)) && s != Dim::Unknown {
                *d = s;
            }
        }
    }
}

fn unary(cx: &mut NodeCx, op: M) -> Res {
    let x = cx.input(0)?;
    Ok(vec![emit(cx, op, vec![Some(x)])?])
}

fn rank(cx: &NodeCx, i: usize) -> Result<usize, NodeError> {
    Ok(cx.input_type(i)?.rank())
}

/// Normalizes attribute `name`'s axis value against `rank`.
fn norm(name: &str, axis: i64, rank: usize) -> Result<usize, NodeError> {
    mlc_ir::ops::norm_axis(axis, rank).map_err(|e| NodeError::Attr {
        name: name.into(),
        reason: e.to_string(),
    })
}

fn norm_all(name: &str, axes: &[i64], rank: usize) -> Result<Vec<usize>, NodeError> {
    axes.iter().map(|&a| norm(name, a, rank)).collect()
}

/// The integers of input `i` when they are known at import (constant or symbolically).
fn static_ints(cx: &NodeCx, i: usize) -> Option<Vec<i64>> {
    let v = cx.opt_input(i)?;
    match cx.graph.const_value(v) {
        Some(t) => t.to_i64_vec().ok(),
        None => sym::ints(cx.graph, v),
    }
}

/// The symbolic value of input `i`.
fn sym_value(cx: &NodeCx, i: usize) -> Option<Vec<SymInt>> {
    sym::value(cx.graph, cx.opt_input(i)?)
}

fn to_usizes(name: &str, v: Vec<i64>) -> Result<Vec<usize>, NodeError> {
    v.into_iter()
        .map(|d| {
            usize::try_from(d).map_err(|_| NodeError::Attr {
                name: name.into(),
                reason: format!("negative value {d}"),
            })
        })
        .collect()
}

fn reshape(cx: &mut NodeCx) -> Res {
    let x = cx.input(0)?;
    let allowzero = cx.attr_int("allowzero", 0)? != 0;
    if cx.opset < 5 {
        let shape = cx.attr_ints("shape")?.ok_or_else(|| NodeError::Attr {
            name: "shape".into(),
            reason: "required".into(),
        })?;
        return Ok(vec![emit(
            cx,
            M::Reshape {
                shape: Some(shape),
                allowzero,
            },
            vec![Some(x)],
        )?]);
    }
    let s = cx.input(1)?;
    if let Some(shape) = static_ints(cx, 1) {
        return Ok(vec![emit(
            cx,
            M::Reshape {
                shape: Some(shape),
                allowzero,
            },
            vec![Some(x)],
        )?]);
    }
    let target = sym_value(cx, 1);
    let out = emit(
        cx,
        M::Reshape {
            shape: None,
            allowzero,
        },
        vec![Some(x), Some(s)],
    )?;
    if let Some(t) = target
        && let Ok(shape) = reshape_shape(&cx.ty(x).shape.clone(), &t, allowzero)
    {
        refine(cx, out, shape);
    }
    Ok(vec![out])
}

fn flatten(cx: &mut NodeCx) -> Res {
    let r = rank(cx, 0)?;
    let axis = cx.attr_int("axis", 1)?;
    let axis = if axis < 0 { axis + r as i64 } else { axis };
    if axis < 0 || axis > r as i64 {
        return Err(NodeError::Attr {
            name: "axis".into(),
            reason: format!("{axis} out of range for rank {r}"),
        });
    }
    unary(
        cx,
        M::Flatten {
            axis: axis as usize,
        },
    )
}

fn transpose(cx: &mut NodeCx) -> Res {
    let r = rank(cx, 0)?;
    let perm = match cx.attr_ints("perm")? {
        Some(p) if !p.is_empty() => norm_all("perm", &p, r)?,
        _ => (0..r).rev().collect(),
    };
    unary(cx, M::Transpose { perm })
}

fn concat(cx: &mut NodeCx) -> Res {
    let first = cx.input(0)?;
    let r = cx.ty(first).rank();
    let axis = norm("axis", cx.attr_int("axis", 1)?, r)?;
    let inputs = (0..cx.n_inputs())
        .map(|i| cx.input(i).map(Some))
        .collect::<Result<_, _>>()?;
    Ok(vec![emit(cx, M::Concat { axis }, inputs)?])
}

fn split(cx: &mut NodeCx) -> Res {
    let x = cx.input(0)?;
    let axis = norm("axis", cx.attr_int("axis", 0)?, rank(cx, 0)?)?;
    let attr_sizes = if cx.opset < 13 {
        cx.attr_ints("split")?.filter(|s| !s.is_empty())
    } else {
        None
    };
    let (sizes, dynamic) = match attr_sizes.or_else(|| static_ints(cx, 1)) {
        Some(s) => (Some(to_usizes("split", s)?), None),
        None => (None, cx.opt_input(1)),
    };
    let n = cx.n_outputs;
    cx.emit(
        Op::Movement(M::Split { axis, sizes }),
        vec![Some(x), dynamic],
        n,
    )
}

fn slice(cx: &mut NodeCx) -> Res {
    let x = cx.input(0)?;
    if cx.opset < 10 {
        let get = |name: &str| cx.attr_ints(name);
        let (starts, ends, axes) = (
            get("starts")?,
            get("ends")?,
            get("axes")?.filter(|a| !a.is_empty()),
        );
        if starts.is_none() || ends.is_none() {
            return Err(NodeError::Attr {
                name: "starts".into(),
                reason: "starts and ends are required".into(),
            });
        }
        return Ok(vec![emit(
            cx,
            M::Slice {
                starts,
                ends,
                axes,
                steps: None,
            },
            vec![Some(x)],
        )?]);
    }
    // Each operand independently: an attribute when known, else the input.
    let mut attrs = Vec::with_capacity(4);
    let mut inputs = vec![Some(x)];
    for i in 1..=4 {
        match static_ints(cx, i) {
            Some(v) => {
                attrs.push(Some(v));
                inputs.push(None);
            }
            None => {
                attrs.push(None);
                inputs.push(cx.opt_input(i));
            }
        }
    }
    // The operands as far as they are known symbolically, to refine the output type when
    // some stay dynamic (a slice of a position table up to `seq` has length `seq`).
    let syms: Vec<Option<Vec<SymInt>>> = (1..=4).map(|i| sym_value(cx, i)).collect();
    let dynamic = inputs.iter().skip(1).any(Option::is_some);
    let mut it = attrs.into_iter();
    let mut next = || it.next().flatten();
    let op = M::Slice {
        starts: next(),
        ends: next(),
        axes: next(),
        steps: next(),
    };
    let out = emit(cx, op, inputs)?;
    if dynamic && let [Some(s), Some(e), a, st] = syms.as_slice() {
        let axes: Option<Vec<i64>> = match a {
            Some(a) => a.iter().map(SymInt::int).collect(),
            None => Some((0..s.len() as i64).collect()),
        };
        let steps = st.clone().unwrap_or_else(|| vec![SymInt::Int(1); s.len()]);
        if let Some(axes) = axes
            && let Ok(shape) = slice_shape(&cx.ty(x).shape.clone(), s, e, &axes, &steps)
        {
            refine(cx, out, shape);
        }
    }
    Ok(vec![out])
}

/// The axes operand of Squeeze/Unsqueeze: the attribute before opset 13, input 1 after.
fn axes_operand(cx: &NodeCx) -> Result<(Option<Vec<i64>>, Option<ValueId>), NodeError> {
    if cx.opset < 13 {
        return Ok((cx.attr_ints("axes")?, None));
    }
    Ok(match static_ints(cx, 1) {
        Some(a) => (Some(a), None),
        None => (None, cx.opt_input(1)),
    })
}

fn squeeze(cx: &mut NodeCx) -> Res {
    let x = cx.input(0)?;
    let r = rank(cx, 0)?;
    let (axes, dynamic) = axes_operand(cx)?;
    let axes = axes.map(|a| norm_all("axes", &a, r)).transpose()?;
    Ok(vec![emit(cx, M::Squeeze { axes }, vec![Some(x), dynamic])?])
}

fn unsqueeze(cx: &mut NodeCx) -> Res {
    let x = cx.input(0)?;
    let r = rank(cx, 0)?;
    let (axes, dynamic) = axes_operand(cx)?;
    if axes.is_none() && dynamic.is_none() {
        return Err(NodeError::Attr {
            name: "axes".into(),
            reason: "required".into(),
        });
    }
    let axes = axes
        .map(|a| norm_all("axes", &a, r + a.len()))
        .transpose()?;
    Ok(vec![emit(
        cx,
        M::Unsqueeze { axes },
        vec![Some(x), dynamic],
    )?])
}

fn expand(cx: &mut NodeCx) -> Res {
    let x = cx.input(0)?;
    let s = cx.input(1)?;
    if let Some(shape) = static_ints(cx, 1) {
        let shape = to_usizes("shape", shape)?;
        return Ok(vec![emit(
            cx,
            M::Expand { shape: Some(shape) },
            vec![Some(x)],
        )?]);
    }
    let target = sym_value(cx, 1);
    let out = emit(cx, M::Expand { shape: None }, vec![Some(x), Some(s)])?;
    if let Some(t) = target
        && let Ok(shape) = expand_shape(&cx.ty(x).shape.clone(), &t)
    {
        refine(cx, out, shape);
    }
    Ok(vec![out])
}

fn gather_like(cx: &mut NodeCx, op: fn(usize) -> M) -> Res {
    let (x, idx) = (cx.input(0)?, cx.input(1)?);
    let axis = norm("axis", cx.attr_int("axis", 0)?, rank(cx, 0)?)?;
    Ok(vec![emit(cx, op(axis), vec![Some(x), Some(idx)])?])
}

fn gather_nd(cx: &mut NodeCx) -> Res {
    let (x, idx) = (cx.input(0)?, cx.input(1)?);
    let b = cx.attr_int("batch_dims", 0)?;
    let batch_dims = usize::try_from(b).map_err(|_| NodeError::Attr {
        name: "batch_dims".into(),
        reason: format!("{b} is negative"),
    })?;
    Ok(vec![emit(
        cx,
        M::GatherNd { batch_dims },
        vec![Some(x), Some(idx)],
    )?])
}

fn reduction(cx: &NodeCx) -> Result<ScatterReduction, NodeError> {
    Ok(match cx.attr_str("reduction", "none")?.as_str() {
        "none" => ScatterReduction::None,
        "add" => ScatterReduction::Add,
        "mul" => ScatterReduction::Mul,
        "max" => ScatterReduction::Max,
        "min" => ScatterReduction::Min,
        other => {
            return Err(NodeError::Attr {
                name: "reduction".into(),
                reason: format!("unknown reduction {other:?}"),
            });
        }
    })
}

fn scatter_elements(cx: &mut NodeCx) -> Res {
    let ins = [cx.input(0)?, cx.input(1)?, cx.input(2)?];
    let axis = norm("axis", cx.attr_int("axis", 0)?, rank(cx, 0)?)?;
    let reduction = reduction(cx)?;
    Ok(vec![emit(
        cx,
        M::ScatterElements { axis, reduction },
        ins.map(Some).to_vec(),
    )?])
}

fn scatter_nd(cx: &mut NodeCx) -> Res {
    let ins = [cx.input(0)?, cx.input(1)?, cx.input(2)?];
    let reduction = reduction(cx)?;
    Ok(vec![emit(
        cx,
        M::ScatterNd { reduction },
        ins.map(Some).to_vec(),
    )?])
}

fn shape(cx: &mut NodeCx) -> Res {
    let r = rank(cx, 0)? as i64;
    // Out-of-range bounds clamp (opset 15); a start past the end gives an empty shape.
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let start = clamp(cx.attr_int("start", 0)?);
    let end = clamp(cx.attr_int_opt("end")?.unwrap_or(r));
    unary(
        cx,
        M::Shape {
            start,
            end: end.max(start),
        },
    )
}

fn range(cx: &mut NodeCx) -> Res {
    let ins = [cx.input(0)?, cx.input(1)?, cx.input(2)?];
    let syms: Vec<Option<SymInt>> = (0..3)
        .map(|i| sym_value(cx, i).and_then(|v| v.first().cloned()))
        .collect();
    let out = emit(cx, M::Range, ins.map(Some).to_vec())?;
    if let [Some(s), Some(l), Some(d)] = syms.as_slice() {
        refine(cx, out, vec![range_len(s, l, d)]);
    }
    Ok(vec![out])
}

fn constant_of_shape(cx: &mut NodeCx) -> Res {
    let (dtype, value) = match cx.attr_tensor("value")? {
        Some(t) => {
            let v = Scalar::from_tensor(&t).ok_or_else(|| NodeError::Attr {
                name: "value".into(),
                reason: "expected one numeric element".into(),
            })?;
            (t.dtype(), v)
        }
        None => (DType::F32, Scalar::Float(0.0)),
    };
    let s = cx.input(0)?;
    if let Some(shape) = static_ints(cx, 0) {
        let shape = Some(to_usizes("shape", shape)?);
        return Ok(vec![emit(
            cx,
            M::ConstantOfShape {
                shape,
                dtype,
                value,
            },
            vec![],
        )?]);
    }
    let target = sym_value(cx, 0);
    let out = emit(
        cx,
        M::ConstantOfShape {
            shape: None,
            dtype,
            value,
        },
        vec![Some(s)],
    )?;
    if let Some(t) = target {
        refine(cx, out, constant_of_shape_shape(&t));
    }
    Ok(vec![out])
}

fn tile(cx: &mut NodeCx) -> Res {
    let x = cx.input(0)?;
    let reps = cx.input(1)?;
    if let Some(r) = static_ints(cx, 1) {
        let repeats = Some(to_usizes("repeats", r)?);
        return Ok(vec![emit(cx, M::Tile { repeats }, vec![Some(x)])?]);
    }
    let target = sym_value(cx, 1);
    let out = emit(cx, M::Tile { repeats: None }, vec![Some(x), Some(reps)])?;
    if let Some(t) = target
        && let Ok(shape) = tile_shape(&cx.ty(x).shape.clone(), &t)
    {
        refine(cx, out, shape);
    }
    Ok(vec![out])
}

fn pad(cx: &mut NodeCx) -> Res {
    let x = cx.input(0)?;
    let r = rank(cx, 0)?;
    let mode = match cx.attr_str("mode", "constant")?.as_str() {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        "wrap" => PadMode::Wrap,
        other => {
            return Err(NodeError::Attr {
                name: "mode".into(),
                reason: format!("unknown pad mode {other:?}"),
            });
        }
    };
    if cx.opset < 11 {
        let pads = match cx.attr_ints("pads")? {
            Some(p) => p,
            None => cx.attr_ints("paddings")?.ok_or_else(|| NodeError::Attr {
                name: "pads".into(),
                reason: "required".into(),
            })?,
        };
        let value = cx.attr_float("value", 0.0)?;
        let dtype = cx.ty(x).dtype;
        let v = (value != 0.0)
            .then(|| Tensor::scalar(value).cast(dtype))
            .transpose()?
            .map(|t| cx.constant(t));
        return Ok(vec![emit(
            cx,
            M::Pad {
                mode,
                pads: Some(pads),
                axes: None,
            },
            vec![Some(x), None, v],
        )?]);
    }
    let value = cx.opt_input(2);
    let axes = match static_ints(cx, 3) {
        Some(a) => Some(norm_all("axes", &a, r)?),
        None if cx.opt_input(3).is_some() => None,
        None => Some((0..r).collect()),
    };
    let pads = static_ints(cx, 1);
    let op = match (pads, axes) {
        // Fully static: pads over every axis, in one attribute.
        (Some(p), Some(a)) => {
            if p.len() != 2 * a.len() {
                return Err(NodeError::Invalid(format!(
                    "{} pads for {} axes",
                    p.len(),
                    a.len()
                )));
            }
            let mut full = vec![0; 2 * r];
            for (i, &ax) in a.iter().enumerate() {
                full[ax] = p[i];
                full[r + ax] = p[a.len() + i];
            }
            return Ok(vec![emit(
                cx,
                M::Pad {
                    mode,
                    pads: Some(full),
                    axes: None,
                },
                vec![Some(x), None, value],
            )?]);
        }
        (p, a) => {
            let pads_in = if p.is_some() {
                None
            } else {
                Some(cx.input(1)?)
            };
            let axes_in = if a.is_some() { None } else { cx.opt_input(3) };
            (
                M::Pad {
                    mode,
                    pads: p,
                    axes: a,
                },
                vec![Some(x), pads_in, value, axes_in],
            )
        }
    };
    Ok(vec![emit(cx, op.0, op.1)?])
}

fn blocksize(cx: &NodeCx) -> Result<usize, NodeError> {
    let b = cx.attr_int("blocksize", 0)?;
    usize::try_from(b)
        .ok()
        .filter(|&b| b > 0)
        .ok_or_else(|| NodeError::Attr {
            name: "blocksize".into(),
            reason: format!("{b} is not positive"),
        })
}

/// The `mode` attribute of DepthToSpace/SpaceToDepth (SpaceToDepth has it from opset 28).
fn block_mode(cx: &NodeCx) -> Result<DepthToSpaceMode, NodeError> {
    match cx.attr_str("mode", "DCR")?.as_str() {
        "DCR" => Ok(DepthToSpaceMode::Dcr),
        "CRD" => Ok(DepthToSpaceMode::Crd),
        other => Err(NodeError::Attr {
            name: "mode".into(),
            reason: format!("unknown mode {other:?}"),
        }),
    }
}

fn depth_to_space(cx: &mut NodeCx) -> Res {
    let (blocksize, mode) = (blocksize(cx)?, block_mode(cx)?);
    unary(cx, M::DepthToSpace { blocksize, mode })
}

fn space_to_depth(cx: &mut NodeCx) -> Res {
    let (blocksize, mode) = (blocksize(cx)?, block_mode(cx)?);
    unary(cx, M::SpaceToDepth { blocksize, mode })
}

fn trilu(cx: &mut NodeCx) -> Res {
    let x = cx.input(0)?;
    let upper = cx.attr_int("upper", 1)? != 0;
    let (k, dynamic) = match cx.opt_input(1) {
        None => (Some(0), None),
        Some(v) => match static_ints(cx, 1).and_then(|k| k.first().copied()) {
            Some(k) => (Some(k), None),
            None => (None, Some(v)),
        },
    };
    Ok(vec![emit(
        cx,
        M::Trilu { upper, k },
        vec![Some(x), dynamic],
    )?])
}

fn one_hot(cx: &mut NodeCx) -> Res {
    let (idx, depth_v, values) = (cx.input(0)?, cx.input(1)?, cx.input(2)?);
    let axis = norm("axis", cx.attr_int("axis", -1)?, rank(cx, 0)? + 1)?;
    // Depth may be of any numeric type; a fractional depth truncates.
    let depth = cx
        .input_const(1)
        .and_then(|t| t.to_f64_vec().ok())
        .and_then(|v| v.first().copied());
    let (depth, dynamic) = match depth {
        Some(d) if d >= 0.0 => (Some(d as usize), None),
        _ => (None, Some(depth_v)),
    };
    Ok(vec![emit(
        cx,
        M::OneHot { axis, depth },
        vec![Some(idx), dynamic, Some(values)],
    )?])
}

fn compress(cx: &mut NodeCx) -> Res {
    let (x, cond) = (cx.input(0)?, cx.input(1)?);
    let axis = cx
        .attr_int_opt("axis")?
        .map(|a| norm("axis", a, rank(cx, 0)?))
        .transpose()?;
    Ok(vec![emit(
        cx,
        M::Compress { axis },
        vec![Some(x), Some(cond)],
    )?])
}

fn reverse_sequence(cx: &mut NodeCx) -> Res {
    let (x, lens) = (cx.input(0)?, cx.input(1)?);
    let r = rank(cx, 0)?;
    let batch_axis = norm("batch_axis", cx.attr_int("batch_axis", 1)?, r)?;
    let time_axis = norm("time_axis", cx.attr_int("time_axis", 0)?, r)?;
    Ok(vec![emit(
        cx,
        M::ReverseSequence {
            batch_axis,
            time_axis,
        },
        vec![Some(x), Some(lens)],
    )?])
}

/// mlc's element type for an ONNX `TensorProto.DataType` code.
fn onnx_dtype(code: i64) -> Option<DType> {
    Some(match code {
        1 => DType::F32,
        2 => DType::U8,
        3 => DType::I8,
        4 => DType::U16,
        5 => DType::I16,
        6 => DType::I32,
        7 => DType::I64,
        8 => DType::Str,
        9 => DType::Bool,
        10 => DType::F16,
        11 => DType::F64,
        12 => DType::U32,
        13 => DType::U64,
        16 => DType::BF16,
        _ => return None,
    })
}

fn eye_like(cx: &mut NodeCx) -> Res {
    let dtype = match cx.attr_int_opt("dtype")? {
        Some(code) => onnx_dtype(code)
            .ok_or_else(|| NodeError::Unsupported(format!("EyeLike dtype {code}")))?,
        None => cx.input_type(0)?.dtype,
    };
    let k = cx.attr_int("k", 0)?;
    unary(cx, M::EyeLike { dtype, k })
}

fn unique(cx: &mut NodeCx) -> Res {
    let x = cx.input(0)?;
    let axis = cx
        .attr_int_opt("axis")?
        .map(|a| norm("axis", a, rank(cx, 0)?))
        .transpose()?;
    let sorted = cx.attr_int("sorted", 1)? != 0;
    let n = cx.n_outputs.clamp(1, 4);
    cx.emit(Op::Movement(M::Unique { axis, sorted }), vec![Some(x)], n)
}

fn center_crop_pad(cx: &mut NodeCx) -> Res {
    let x = cx.input(0)?;
    let s = cx.input(1)?;
    let r = rank(cx, 0)?;
    let axes = match cx.attr_ints("axes")? {
        Some(a) => norm_all("axes", &a, r)?,
        None => (0..r).collect(),
    };
    match static_ints(cx, 1) {
        Some(shape) => {
            let shape = Some(to_usizes("shape", shape)?);
            Ok(vec![emit(
                cx,
                M::CenterCropPad { shape, axes },
                vec![Some(x)],
            )?])
        }
        None => Ok(vec![emit(
            cx,
            M::CenterCropPad { shape: None, axes },
            vec![Some(x), Some(s)],
        )?]),
    }
}

fn tensor_scatter(cx: &mut NodeCx) -> Res {
    let (past, upd) = (cx.input(0)?, cx.input(1)?);
    let write = cx.opt_input(2);
    let axis = norm("axis", cx.attr_int("axis", -2)?, rank(cx, 0)?)?;
    let circular = match cx.attr_str("mode", "linear")?.as_str() {
        "linear" => false,
        "circular" => true,
        other => {
            return Err(NodeError::Attr {
                name: "mode".into(),
                reason: format!("unknown mode {other:?}"),
            });
        }
    };
    Ok(vec![emit(
        cx,
        M::TensorScatter { axis, circular },
        vec![Some(past), Some(upd), write],
    )?])
}

#[cfg(test)]
mod tests;
