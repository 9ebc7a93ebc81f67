//! Quantization ops as plain arithmetic: quantize and dequantize per tensor or per axis,
//! dynamic quantization (range, then scale and zero point, then quantize; large inputs in
//! parallel chunks),
//! `MatMulInteger` as one 8-bit [`Stmt::Matmul`] into i32 with the zero point as a bias (or,
//! in general, zero-point removal into `i32` operands plus an `i32` matmul), and `ConvInteger`
//! (`conv.rs`). `QLinearConv` is that `ConvInteger` into i32, then one requantizing pass
//! (bias, per-channel multiplier, output zero point).
//!
//! These are the *unfused* forms, correct for any graph. The optimizer folds QDQ pairs into
//! integer kernels; what it leaves over lands here.

use super::{Cx, Fail, KernelBuilder, flat_index, kernel_name, loop_nest, strides, unsupported};
use crate::kernel::*;
use mlc_ir::ops::QuantOp;
use mlc_ir::{DType, Node, ValueId};

pub(super) fn lower(cx: &mut Cx, node: &Node, op: &QuantOp) -> Result<(), Fail> {
    match op {
        QuantOp::Quantize {
            axis,
            block_size: 0,
            to,
            ..
        } if int_range(*to).is_some() => qdq(cx, node, *axis, *to, true),
        QuantOp::Dequantize {
            axis,
            block_size: 0,
            to,
        } if int_range(cx.dtype(first(node)?)).is_some() => qdq(cx, node, *axis, *to, false),
        QuantOp::Quantize {
            axis,
            block_size: 0,
            to,
            saturate,
        } if to.is_storage_only() => super::cast::qdq(cx, node, *axis, *to, *saturate, true, 0),
        QuantOp::Dequantize {
            axis,
            block_size: 0,
            to,
        } if cx.dtype(first(node)?).is_storage_only() => {
            super::cast::qdq(cx, node, *axis, *to, true, false, 0)
        }
        QuantOp::Quantize {
            axis,
            block_size,
            to,
            saturate,
        } => super::cast::qdq(cx, node, *axis, *to, *saturate, true, *block_size),
        QuantOp::Dequantize {
            axis,
            block_size,
            to,
        } => super::cast::qdq(cx, node, *axis, *to, true, false, *block_size),
        QuantOp::DynamicQuantize => dynamic(cx, node),
        QuantOp::MatMulInteger => matmul_integer(cx, node),
        QuantOp::ConvInteger(geom) => super::conv::conv_integer(cx, node, geom),
        QuantOp::QLinearMatMul => qlinear_matmul(cx, node),
        QuantOp::QLinearConv(geom) => qlinear_conv(cx, node, geom),
    }
}

fn first(node: &Node) -> Result<ValueId, Fail> {
    node.input(0)
        .ok_or_else(|| Fail::Unsupported("missing input".into()))
}

fn int_range(t: DType) -> Option<(i64, i64)> {
    Some(match t {
        DType::I8 => (-128, 127),
        DType::U8 => (0, 255),
        DType::I16 => (-32768, 32767),
        DType::U16 => (0, 65535),
        DType::I32 => (i32::MIN as i64, i32::MAX as i64),
        _ => return None,
    })
}

fn to_f32(e: Expr, t: DType) -> Expr {
    if t == DType::F32 {
        e
    } else {
        Expr::cast(DType::F32, e)
    }
}

/// `quantize`: `sat(round(x / s) + zp)`; `dequantize`: `(q - zp) * s`, with `s` and `zp`
/// per tensor or per channel of `axis`.
fn qdq(cx: &mut Cx, node: &Node, axis: usize, to: DType, quantize: bool) -> Result<(), Fail> {
    let (Some(x), Some(s)) = (node.input(0), node.input(1)) else {
        return unsupported("missing input");
    };
    let zp = node.input(2);
    let xs = cx.shape(x)?;
    let (xt, st) = (cx.dtype(x), cx.dtype(s));
    let zt = zp.map(|z| cx.dtype(z));
    let per_axis = cx.shape(s)?.iter().product::<usize>() > 1;
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let sp = kb.param(&cx.p, cx.buf(s)?, Access::Read);
    let zpp = cx.opt_param(&mut kb, zp, Access::Read)?;
    let op_ = kb.param(&cx.p, out, Access::Write);
    let xst = strides(&xs);
    let body = loop_nest(&mut kb, &xs, |_, v| {
        let mut idx = Expr::idx(0);
        for (d, s) in xst.iter().enumerate() {
            idx = Expr::add_idx(idx, Expr::mul_idx(Expr::var(v[d]), *s));
        }
        let pidx = if per_axis {
            Expr::var(v[axis])
        } else {
            Expr::idx(0)
        };
        let scale = to_f32(Expr::load(sp, pidx.clone()), st);
        let z = match (zpp, zt) {
            (Some(p), Some(t)) => to_f32(Expr::load(p, pidx), t),
            _ => Expr::float(DType::F32, 0.0),
        };
        let xv = to_f32(Expr::load(xp, idx.clone()), xt);
        let value = if quantize {
            let (lo, hi) = int_range(to).unwrap_or((0, 0));
            let q = Expr::bin(
                BinOp::Add,
                Expr::un(UnOp::Round, Expr::bin(BinOp::Div, xv, scale)),
                z,
            );
            let q = Expr::bin(
                BinOp::Min,
                Expr::bin(BinOp::Max, q, Expr::float(DType::F32, lo as f64)),
                Expr::float(DType::F32, hi as f64),
            );
            Expr::cast(to, q)
        } else {
            let y = Expr::bin(BinOp::Mul, Expr::bin(BinOp::Sub, xv, z), scale);
            if to == DType::F32 {
                y
            } else {
                Expr::cast(to, y)
            }
        };
        vec![Stmt::Store {
            param: op_,
            index: idx,
            value,
        }]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// Below this many elements per chunk, dynamic quantization stays one serial kernel: a chunk
/// must be worth a thread's start.
const DYNAMIC_CHUNK: usize = 4096;
/// At most this many chunks (the pool spreads them over its threads).
const DYNAMIC_MAX_CHUNKS: usize = 64;

/// ONNX `DynamicQuantizeLinear`: u8 with `scale = (max(0, max x) - min(0, min x)) / 255`.
///
/// Large inputs take three kernels so that both passes over `x` run on every thread: partial
/// ranges per chunk (parallel), their combination into scale and zero point (serial, with
/// the elements left over after the last whole chunk), then quantization per chunk
/// (parallel). min and max are exact in any order, so this equals the serial scan.
fn dynamic(cx: &mut Cx, node: &Node) -> Result<(), Fail> {
    let x = first(node)?;
    if node.outputs.len() != 3 || cx.dtype(x) != DType::F32 {
        return unsupported("dynamic quantization of non-f32 input");
    }
    let n: usize = cx.shape(x)?.iter().product();
    let outs: Vec<BufId> = node
        .outputs
        .iter()
        .map(|&o| cx.new_buffer(o, BufKind::Temp))
        .collect::<Result<_, _>>()?;
    let xb = cx.buf(x)?;
    let chunks = (n / DYNAMIC_CHUNK).min(DYNAMIC_MAX_CHUNKS);
    if chunks < 2 {
        let mut kb = KernelBuilder::new(kernel_name(&node.op));
        let xp = kb.param(&cx.p, xb, Access::Read);
        let yp = kb.param(&cx.p, outs[0], Access::Write);
        let sp = kb.param(&cx.p, outs[1], Access::Write);
        let zp = kb.param(&cx.p, outs[2], Access::Write);
        let (lo, hi) = (kb.var(DType::F32), kb.var(DType::F32));
        let i = kb.var(DType::I64);
        let mut body = range_init(lo, hi);
        body.push(range_scan(xp, Expr::idx(0), n, i, lo, hi));
        body.extend(scale_and_zero(&mut kb, (lo, hi), (sp, zp), |s, z| {
            vec![quantize_loop(xp, yp, Expr::idx(0), n, i, s, z)]
        }));
        kb.k.body = body;
        cx.launch(kb, node);
        return Ok(());
    }
    let ch = n / chunks;
    let tail = chunks * ch;
    let parts = cx.p.add_buffer(DType::F32, vec![chunks, 2], BufKind::Temp);

    // 1. Partial ranges, one chunk per parallel iteration.
    let mut kb = KernelBuilder::new(format!("{}_range", kernel_name(&node.op)));
    let xp = kb.param(&cx.p, xb, Access::Read);
    let pp = kb.param(&cx.p, parts, Access::Write);
    let (lo, hi) = (kb.var(DType::F32), kb.var(DType::F32));
    let (c, i) = (kb.var(DType::I64), kb.var(DType::I64));
    let start = Expr::bin(BinOp::Mul, Expr::var(c), Expr::idx(ch as i64));
    let mut body = range_init(lo, hi);
    body.push(range_scan(xp, start, ch, i, lo, hi));
    let at = |u: i64| {
        Expr::bin(
            BinOp::Add,
            Expr::bin(BinOp::Mul, Expr::var(c), Expr::idx(2)),
            Expr::idx(u),
        )
    };
    body.push(Stmt::Store {
        param: pp,
        index: at(0),
        value: Expr::var(lo),
    });
    body.push(Stmt::Store {
        param: pp,
        index: at(1),
        value: Expr::var(hi),
    });
    kb.k.body = vec![Stmt::For {
        var: c,
        extent: Expr::idx(chunks as i64),
        kind: LoopKind::Parallel,
        body,
    }];
    cx.launch(kb, node);

    // 2. The whole range, scale and zero point; the left-over tail is scanned and quantized
    // here too.
    let mut kb = KernelBuilder::new(format!("{}_scale", kernel_name(&node.op)));
    let pp = kb.param(&cx.p, parts, Access::Read);
    let xp = kb.param(&cx.p, xb, Access::Read);
    let yp = kb.param(&cx.p, outs[0], Access::Write);
    let sp = kb.param(&cx.p, outs[1], Access::Write);
    let zp = kb.param(&cx.p, outs[2], Access::Write);
    let (lo, hi) = (kb.var(DType::F32), kb.var(DType::F32));
    let (c, i) = (kb.var(DType::I64), kb.var(DType::I64));
    let mut body = range_init(lo, hi);
    body.push(range_scan(pp, Expr::idx(0), 2 * chunks, c, lo, hi));
    if n > tail {
        body.push(range_scan(xp, Expr::idx(tail as i64), n - tail, i, lo, hi));
    }
    body.extend(scale_and_zero(&mut kb, (lo, hi), (sp, zp), |s, z| {
        if n > tail {
            vec![quantize_loop(
                xp,
                yp,
                Expr::idx(tail as i64),
                n - tail,
                i,
                s,
                z,
            )]
        } else {
            vec![]
        }
    }));
    kb.k.body = body;
    cx.launch(kb, node);

    // 3. Quantization, one chunk per parallel iteration, from the stored scale and zero
    // point (the zero point is an integer in [0, 255], so u8 → f32 gives it back exactly).
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, xb, Access::Read);
    let yp = kb.param(&cx.p, outs[0], Access::Write);
    let sp = kb.param(&cx.p, outs[1], Access::Read);
    let zp = kb.param(&cx.p, outs[2], Access::Read);
    let (c, i) = (kb.var(DType::I64), kb.var(DType::I64));
    let (s, z) = (kb.var(DType::F32), kb.var(DType::F32));
    let start = Expr::bin(BinOp::Mul, Expr::var(c), Expr::idx(ch as i64));
    kb.k.body = vec![Stmt::For {
        var: c,
        extent: Expr::idx(chunks as i64),
        kind: LoopKind::Parallel,
        body: vec![
            Stmt::Let {
                var: s,
                value: Expr::load(sp, Expr::idx(0)),
            },
            Stmt::Let {
                var: z,
                value: Expr::cast(DType::F32, Expr::load(zp, Expr::idx(0))),
            },
            quantize_loop(xp, yp, start, ch, i, s, z),
        ],
    }];
    cx.launch(kb, node);
    Ok(())
}

fn f32c(v: f64) -> Expr {
    Expr::float(DType::F32, v)
}

/// Saturation to u8's range, in f32.
fn sat_u8(e: Expr) -> Expr {
    Expr::bin(BinOp::Min, Expr::bin(BinOp::Max, e, f32c(0.0)), f32c(255.0))
}

/// `lo = hi = 0`: the range always holds zero.
fn range_init(lo: VarId, hi: VarId) -> Vec<Stmt> {
    vec![
        Stmt::Let {
            var: lo,
            value: f32c(0.0),
        },
        Stmt::Let {
            var: hi,
            value: f32c(0.0),
        },
    ]
}

/// `lo`/`hi` take in `len` elements of `src` from `start`: a SIMD loop (min and max
/// reassociate exactly).
fn range_scan(src: ParamId, start: Expr, len: usize, i: VarId, lo: VarId, hi: VarId) -> Stmt {
    let at = || Expr::load(src, Expr::bin(BinOp::Add, start.clone(), Expr::var(i)));
    Stmt::For {
        var: i,
        extent: Expr::idx(len as i64),
        kind: LoopKind::Vector,
        body: vec![
            Stmt::Assign {
                var: lo,
                value: Expr::bin(BinOp::Min, Expr::var(lo), at()),
            },
            Stmt::Assign {
                var: hi,
                value: Expr::bin(BinOp::Max, Expr::var(hi), at()),
            },
        ],
    }
}

/// Scale and zero point from the range, stored; then `rest(scale, zero)`.
fn scale_and_zero(
    kb: &mut KernelBuilder,
    (lo, hi): (VarId, VarId),
    (sp, zp): (ParamId, ParamId),
    rest: impl FnOnce(VarId, VarId) -> Vec<Stmt>,
) -> Vec<Stmt> {
    let (scale, zero) = (kb.var(DType::F32), kb.var(DType::F32));
    let mut body = vec![
        Stmt::Let {
            var: scale,
            value: Expr::bin(
                BinOp::Div,
                Expr::bin(BinOp::Sub, Expr::var(hi), Expr::var(lo)),
                f32c(255.0),
            ),
        },
        Stmt::Let {
            var: zero,
            value: sat_u8(Expr::un(
                UnOp::Round,
                Expr::bin(
                    BinOp::Sub,
                    f32c(0.0),
                    Expr::bin(BinOp::Div, Expr::var(lo), Expr::var(scale)),
                ),
            )),
        },
        Stmt::Store {
            param: sp,
            index: Expr::idx(0),
            value: Expr::var(scale),
        },
        Stmt::Store {
            param: zp,
            index: Expr::idx(0),
            value: Expr::cast(DType::U8, Expr::var(zero)),
        },
    ];
    body.extend(rest(scale, zero));
    body
}

/// `y[start + i] = saturate(round(x[start + i] / scale) + zero)` for `i < len`.
fn quantize_loop(
    xp: ParamId,
    yp: ParamId,
    start: Expr,
    len: usize,
    i: VarId,
    scale: VarId,
    zero: VarId,
) -> Stmt {
    let at = Expr::bin(BinOp::Add, start, Expr::var(i));
    Stmt::For {
        var: i,
        extent: Expr::idx(len as i64),
        kind: LoopKind::Vector,
        body: vec![Stmt::Store {
            param: yp,
            index: at.clone(),
            value: Expr::cast(
                DType::U8,
                sat_u8(Expr::bin(
                    BinOp::Add,
                    Expr::un(
                        UnOp::Round,
                        Expr::bin(BinOp::Div, Expr::load(xp, at), Expr::var(scale)),
                    ),
                    Expr::var(zero),
                )),
            ),
        }],
    }
}

/// `MatMulInteger`. With no `b` zero point, a per-tensor `a` zero point and a 2-D `b` (the
/// weights of a quantized model), the 8-bit operands go straight into one integer
/// [`Stmt::Matmul`] (which the backend runs as an 8-bit GEMM accumulating in i32), and `a`'s
/// zero point becomes a bias: `Σ_k (a - za)·b = Σ_k a·b - za·Σ_k b[k, n]`. Otherwise both
/// operands are widened to `i32` minus their zero points (per tensor, per row of `a` or per
/// column of `b`), then multiplied in `i32`.
fn matmul_integer(cx: &mut Cx, node: &Node) -> Result<(), Fail> {
    let (Some(a), Some(b)) = (node.input(0), node.input(1)) else {
        return unsupported("missing input");
    };
    let (za, zb) = (node.input(2), node.input(3));
    let bs = cx.shape(b)?;
    let za_per_tensor = match za {
        Some(z) => cx.shape(z)?.iter().product::<usize>() == 1,
        None => true,
    };
    if zb.is_none() && za_per_tensor && bs.len() == 2 {
        let bias = match za {
            Some(z) => Some(column_bias(cx, node, b, z, bs[0], bs[1])?),
            None => None,
        };
        let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
        let sa = cx.shape(a)?;
        let (ab, bb) = (cx.buf(a)?, cx.buf(b)?);
        super::nn::matmul_bufs(cx, node, (ab, sa), (bb, bs), out)?;
        if let Some(bias) = bias {
            add_column_bias(cx, bias)?;
        }
        return Ok(());
    }
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let wa = widen(cx, node, a, za, true)?;
    let wb = widen(cx, node, b, zb, false)?;
    super::nn::matmul_bufs(cx, node, wa, wb, out)
}

/// `-za · Σ_k b[k, n]` as i32 `[N]`, for a `[K, N]` `b`, in two steps: the column sums of
/// `b` (a weight: constant, so [`crate::fold`] computes them at compile time), then their
/// product with the zero point, which dynamic quantization only knows at run time.
fn column_bias(
    cx: &mut Cx,
    node: &Node,
    b: ValueId,
    za: ValueId,
    k: usize,
    n: usize,
) -> Result<BufId, Fail> {
    let sums = cx.p.add_buffer(DType::I32, vec![n], BufKind::Temp);
    let mut kb = KernelBuilder::new("column_sums");
    let bp = kb.param(&cx.p, cx.buf(b)?, Access::Read);
    let sp = kb.param(&cx.p, sums, Access::Write);
    let (nv, kv, acc) = (kb.var(DType::I64), kb.var(DType::I64), kb.var(DType::I32));
    let zero = Expr::Lit(Lit::Int(DType::I32, 0));
    kb.k.body = vec![Stmt::For {
        var: nv,
        extent: Expr::idx(n as i64),
        kind: LoopKind::Parallel,
        body: vec![
            Stmt::Let {
                var: acc,
                value: zero.clone(),
            },
            Stmt::For {
                var: kv,
                extent: Expr::idx(k as i64),
                kind: LoopKind::Serial,
                body: vec![Stmt::Assign {
                    var: acc,
                    value: Expr::bin(
                        BinOp::Add,
                        Expr::var(acc),
                        Expr::cast(
                            DType::I32,
                            Expr::load(
                                bp,
                                Expr::add_idx(
                                    Expr::mul_idx(Expr::var(kv), n as i64),
                                    Expr::var(nv),
                                ),
                            ),
                        ),
                    ),
                }],
            },
            Stmt::Store {
                param: sp,
                index: Expr::var(nv),
                value: Expr::var(acc),
            },
        ],
    }];
    cx.launch(kb, node);
    let buf = cx.p.add_buffer(DType::I32, vec![n], BufKind::Temp);
    let mut kb = KernelBuilder::new("zero_point_bias");
    let sp = kb.param(&cx.p, sums, Access::Read);
    let zp = kb.param(&cx.p, cx.buf(za)?, Access::Read);
    let op_ = kb.param(&cx.p, buf, Access::Write);
    let nv = kb.var(DType::I64);
    kb.k.body = vec![Stmt::For {
        var: nv,
        extent: Expr::idx(n as i64),
        kind: LoopKind::Parallel,
        body: vec![Stmt::Store {
            param: op_,
            index: Expr::var(nv),
            value: Expr::bin(
                BinOp::Mul,
                Expr::load(sp, Expr::var(nv)),
                Expr::bin(
                    BinOp::Sub,
                    zero,
                    Expr::cast(DType::I32, Expr::load(zp, Expr::idx(0))),
                ),
            ),
        }],
    }];
    cx.launch(kb, node);
    Ok(buf)
}

/// Gives the matmul of the last step a bias varying along its columns, read from `bias`.
fn add_column_bias(cx: &mut Cx, bias: BufId) -> Result<(), Fail> {
    let Some(step) = cx.p.steps.last().cloned() else {
        return unsupported("no matmul to add a bias to");
    };
    let mut k = cx.p.kernel(step.kernel).clone();
    let mut args = step.args.clone();
    let bb = cx.p.buffer(bias);
    let param = k.param(bb.dtype, bb.len(), Access::Read);
    args.push(bias);
    fn visit(body: &mut [Stmt], param: ParamId) {
        for s in body {
            match s {
                Stmt::Matmul(m) => {
                    m.bias = Some(MatRef {
                        param,
                        offset: Expr::idx(0),
                        row_stride: 0,
                        col_stride: 1,
                    })
                }
                Stmt::For { body, .. } => visit(body, param),
                _ => {}
            }
        }
    }
    visit(&mut k.body, param);
    let id = cx.p.intern_kernel(k);
    if let Some(last) = cx.p.steps.last_mut() {
        *last = Step {
            kernel: id,
            args,
            origin: step.origin,
        };
    }
    Ok(())
}

/// An `i32` copy of `x` minus its zero point; `rows`: the zero point indexes dim −2 (per row
/// of `a`), else dim −1 (per column of `b`).
fn widen(
    cx: &mut Cx,
    node: &Node,
    x: ValueId,
    zp: Option<ValueId>,
    rows: bool,
) -> Result<(BufId, Vec<usize>), Fail> {
    let xs = cx.shape(x)?;
    let wide = cx.p.add_buffer(DType::I32, xs.clone(), BufKind::Temp);
    let mut kb = KernelBuilder::new("widen_i32");
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let zpp = match zp {
        Some(z) => Some((
            kb.param(&cx.p, cx.buf(z)?, Access::Read),
            cx.dtype(z),
            cx.shape(z)?.iter().product::<usize>(),
        )),
        None => None,
    };
    let wp = kb.param(&cx.p, wide, Access::Write);
    let st = strides(&xs);
    let rank = xs.len();
    let body = loop_nest(&mut kb, &xs, |_, v| {
        let mut idx = Expr::idx(0);
        for (d, s) in st.iter().enumerate() {
            idx = Expr::add_idx(idx, Expr::mul_idx(Expr::var(v[d]), *s));
        }
        let mut value = Expr::cast(DType::I32, Expr::load(xp, idx.clone()));
        if let Some((p, t, len)) = zpp {
            let zi = if len == 1 {
                Expr::idx(0)
            } else if rows && rank >= 2 {
                Expr::var(v[rank - 2])
            } else {
                Expr::var(v[rank - 1])
            };
            let z = Expr::load(p, zi);
            let z = if t == DType::I32 {
                z
            } else {
                Expr::cast(DType::I32, z)
            };
            value = Expr::bin(BinOp::Sub, value, z);
        }
        vec![Stmt::Store {
            param: wp,
            index: idx,
            value,
        }]
    });
    kb.k.body = body;
    let id = cx.p.intern_kernel(kb.k);
    cx.p.steps.push(Step {
        kernel: id,
        args: kb.args,
        origin: node.loc.clone(),
    });
    Ok((wide, xs))
}

/// The requantizing tail of `QLinearMatMul` and `QLinearConv`: per element
/// `sat(round(acc · (s_a·s_b / s_y) + z_y))`, the multiplier rounded to the scales' promoted
/// precision after each step, as the interpreter (numpy) computes it.
struct Requant {
    sa: ParamId,
    sb: ParamId,
    sy: ParamId,
    zy: Option<(ParamId, DType)>,
    tys: [DType; 3],
    prec: DType,
    range: (i64, i64),
    out_ty: DType,
}

impl Requant {
    /// Binds the three scales and the optional output zero point as parameters of `kb`, in that
    /// order (after whatever the caller bound before).
    fn bind(
        cx: &Cx,
        kb: &mut KernelBuilder,
        [sa, sb, sy]: [ValueId; 3],
        zy: Option<ValueId>,
        out_ty: DType,
    ) -> Result<Self, Fail> {
        let Some(range) = int_range(out_ty) else {
            return unsupported(format!("requantizing to {}", out_ty.name()));
        };
        let tys = [cx.dtype(sa), cx.dtype(sb), cx.dtype(sy)];
        // The interpreter's promotion of the scale types: numpy's, pairwise.
        let prec = if tys.iter().all(|&t| t == tys[0]) {
            tys[0]
        } else if tys.contains(&DType::F64) || tys.iter().any(|t| !t.is_float()) {
            DType::F64
        } else {
            DType::F32
        };
        Ok(Requant {
            sa: kb.param(&cx.p, cx.buf(sa)?, Access::Read),
            sb: kb.param(&cx.p, cx.buf(sb)?, Access::Read),
            sy: kb.param(&cx.p, cx.buf(sy)?, Access::Read),
            zy: match zy {
                Some(z) => Some((kb.param(&cx.p, cx.buf(z)?, Access::Read), cx.dtype(z))),
                None => None,
            },
            tys,
            prec,
            range,
            out_ty,
        })
    }

    /// The quantized value of accumulator `acc` (an `i32` expression), with `a_at`/`b_at` the
    /// elements of the two input scales that apply to it.
    fn value(&self, acc: Expr, a_at: Expr, b_at: Expr) -> Expr {
        let f64_ = |e: Expr, t: DType| {
            if t == DType::F64 {
                e
            } else {
                Expr::cast(DType::F64, e)
            }
        };
        // Rounds to the scales' precision; f64 and (spec-excluded) integer scales stay exact.
        let rd = |e: Expr| {
            if self.prec == DType::F64 || !self.prec.is_float() {
                e
            } else {
                Expr::cast(DType::F64, Expr::cast(self.prec, e))
            }
        };
        let prod = rd(Expr::bin(
            BinOp::Mul,
            f64_(Expr::load(self.sa, a_at), self.tys[0]),
            f64_(Expr::load(self.sb, b_at), self.tys[1]),
        ));
        let mult = rd(Expr::bin(
            BinOp::Div,
            prod,
            f64_(Expr::load(self.sy, Expr::idx(0)), self.tys[2]),
        ));
        let z = match self.zy {
            Some((p, t)) => f64_(Expr::load(p, Expr::idx(0)), t),
            None => Expr::float(DType::F64, 0.0),
        };
        let d = Expr::bin(
            BinOp::Add,
            Expr::bin(BinOp::Mul, Expr::cast(DType::F64, acc), mult),
            z,
        );
        let (lo, hi) = self.range;
        let q = Expr::bin(
            BinOp::Min,
            Expr::bin(
                BinOp::Max,
                Expr::un(UnOp::Round, d),
                Expr::float(DType::F64, lo as f64),
            ),
            Expr::float(DType::F64, hi as f64),
        );
        Expr::cast(self.out_ty, q)
    }
}

/// `QLinearMatMul`: the `i32` product of the zero-point-free operands (as `MatMulInteger`),
/// then requantized ([`Requant`]).
fn qlinear_matmul(cx: &mut Cx, node: &Node) -> Result<(), Fail> {
    let ins: Vec<Option<ValueId>> = (0..8).map(|i| node.input(i)).collect();
    let [Some(a), Some(sa), _, Some(b), Some(sb), _, Some(sy), yzp] = ins[..] else {
        return unsupported("missing input");
    };
    let out_v = node.outputs[0];
    let out_ty = cx.dtype(out_v);
    if int_range(out_ty).is_none() {
        return unsupported(format!("requantizing to {}", out_ty.name()));
    }
    let os = cx.shape(out_v)?;
    let (ra, rb) = (cx.shape(a)?.len(), cx.shape(b)?.len());
    let acc = cx.p.add_buffer(DType::I32, os.clone(), BufKind::Temp);
    let wa = widen(cx, node, a, node.input(2), true)?;
    let wb = widen(cx, node, b, node.input(5), false)?;
    super::nn::matmul_bufs(cx, node, wa, wb, acc)?;
    let len = |v: ValueId| -> Result<usize, Fail> { Ok(cx.shape(v)?.iter().product()) };
    let (la, lb) = (len(sa)?, len(sb)?);
    let out = cx.new_buffer(out_v, BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let cp = kb.param(&cx.p, acc, Access::Read);
    let rq = Requant::bind(cx, &mut kb, [sa, sb, sy], yzp, out_ty)?;
    let op_ = kb.param(&cx.p, out, Access::Write);
    let st = strides(&os);
    let r = os.len();
    let body = loop_nest(&mut kb, &os, |_, v| {
        let idx = flat_index(&st, v);
        let row = if la > 1 && ra >= 2 && r >= 2 {
            Expr::var(v[r - 2])
        } else {
            Expr::idx(0)
        };
        let col = if lb > 1 && rb >= 2 && r >= 1 {
            Expr::var(v[r - 1])
        } else {
            Expr::idx(0)
        };
        vec![Stmt::Store {
            param: op_,
            index: idx.clone(),
            value: rq.value(Expr::load(cp, idx), row, col),
        }]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// `QLinearConv`: the integer convolution of `x - zx` and `w - zw` into i32 (`ConvInteger`),
/// then per element `acc + bias[m]` requantized ([`Requant`]) with `w`'s scale of channel `m`.
fn qlinear_conv(cx: &mut Cx, node: &Node, geom: &mlc_ir::ops::quant::ConvGeom) -> Result<(), Fail> {
    let ins: Vec<Option<ValueId>> = (0..9).map(|i| node.input(i)).collect();
    let [
        Some(x),
        Some(sx),
        zx,
        Some(w),
        Some(sw),
        zw,
        Some(sy),
        yzp,
        bias,
    ] = ins[..]
    else {
        return unsupported("missing input");
    };
    let out_v = node.outputs[0];
    let out_ty = cx.dtype(out_v);
    if int_range(out_ty).is_none() {
        return unsupported(format!("requantizing to {}", out_ty.name()));
    }
    let os = cx.shape(out_v)?;
    if os.len() < 2 {
        return unsupported("qlinear_conv output without channels");
    }
    let m = os[1];
    let plane: usize = os[2..].iter().product();
    let len = |v: ValueId| -> Result<usize, Fail> { Ok(cx.shape(v)?.iter().product()) };
    let lw = len(sw)?;
    if lw != 1 && lw != m {
        return unsupported(format!("w_scale of {lw} elements for {m} output channels"));
    }
    if let Some(b) = bias
        && (len(b)? != m || cx.dtype(b) != DType::I32)
    {
        return unsupported("qlinear_conv bias that is not i32 [M]");
    }
    let acc = cx.p.add_buffer(DType::I32, os.clone(), BufKind::Temp);
    super::conv::conv_integer_into(cx, node, geom, (x, w, zx, zw), acc)?;
    let out = cx.new_buffer(out_v, BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let cp = kb.param(&cx.p, acc, Access::Read);
    let rq = Requant::bind(cx, &mut kb, [sx, sw, sy], yzp, out_ty)?;
    let bp = cx.opt_param(&mut kb, bias, Access::Read)?;
    let op_ = kb.param(&cx.p, out, Access::Write);
    let batch = os[0];
    let body = loop_nest(&mut kb, &[batch, m, plane], |_, v| {
        let ch = Expr::var(v[1]);
        let idx = Expr::add_idx(
            Expr::mul_idx(
                Expr::add_idx(Expr::mul_idx(Expr::var(v[0]), m as i64), ch.clone()),
                plane as i64,
            ),
            Expr::var(v[2]),
        );
        let wi = if lw == 1 { Expr::idx(0) } else { ch.clone() };
        let mut a = Expr::load(cp, idx.clone());
        if let Some(b) = bp {
            a = Expr::bin(BinOp::Add, a, Expr::load(b, ch));
        }
        vec![Stmt::Store {
            param: op_,
            index: idx,
            value: rq.value(a, Expr::idx(0), wi),
        }]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}
