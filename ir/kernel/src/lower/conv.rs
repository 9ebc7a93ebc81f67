//! Convolution and pooling.
//!
//! Convolutions with more than one input channel per group become an im2col copy plus a
//! [`Stmt::Matmul`] per (batch, group): the contraction then runs in the backend's tuned GEMM,
//! which is where a convolution's time goes. A 1×1, stride-1, unpadded convolution skips the
//! copy: its input already is the column matrix. Depthwise convolutions (one channel per
//! group) would waste a GEMM on rows of one, so they, and every pooling window, are direct
//! loops. Padding is handled by clamping the index and selecting zero (or −∞ for max), so no
//! load ever leaves its buffer.
//!
//! `ConvInteger` (8-bit operands, i32 result) is the same im2col + one [`Stmt::Matmul`] whose
//! operands keep their 8-bit types, so the backend's integer GEMM runs it. Its zero points
//! stay out of the contraction: padding reads as the input's zero point (so padded taps add
//! nothing), the weights' zero point is subtracted from the (constant, small) weights, and
//! the input's becomes a per-channel bias `-zx·Σ_k w'[m, k]`, since
//! `Σ_k (x - zx)·w' = Σ_k x·w' - zx·Σ_k w'`.

use super::{Cx, Fail, KernelBuilder, kernel_name, strides, unsupported};
use crate::kernel::*;
use mlc_ir::ops::nn::{AutoPad, Window, window_dim};
use mlc_ir::ops::quant::{ConvGeom, ConvPad};
use mlc_ir::{DType, Node};

/// Per spatial dim: output size, begin pad, kernel size, stride, dilation.
struct Geom {
    out: Vec<usize>,
    pad: Vec<usize>,
    /// End pads; a window reaching past them (ceil mode's overhang) is not padding.
    pad_end: Vec<usize>,
    k: Vec<usize>,
    stride: Vec<usize>,
    dil: Vec<usize>,
}

fn geometry(
    ins: &[usize],
    k: &[usize],
    strides_: &[usize],
    dil: &[usize],
    pads: &[usize],
    auto_pad: AutoPad,
    ceil: bool,
) -> Result<Geom, Fail> {
    let s = ins.len();
    let pick = |v: &[usize], i: usize, d: usize| v.get(i).copied().unwrap_or(d);
    let mut g = Geom {
        out: vec![],
        pad: vec![],
        pad_end: vec![],
        k: k.to_vec(),
        stride: vec![],
        dil: vec![],
    };
    for i in 0..s {
        let (st, dl) = (pick(strides_, i, 1), pick(dil, i, 1));
        let p = (pick(pads, i, 0), pick(pads, s + i, 0));
        let (o, b, e) =
            window_dim(auto_pad, ins[i], k[i], st, dl, p, ceil).map_err(Fail::Unsupported)?;
        g.out.push(o);
        g.pad.push(b);
        g.pad_end.push(e);
        g.stride.push(st);
        g.dil.push(dl);
    }
    Ok(g)
}

/// Opens serial loops over `extents` around the statements `inner` builds from the counters.
fn nest(
    kb: &mut KernelBuilder,
    extents: &[usize],
    kind0: LoopKind,
    inner: impl FnOnce(&mut KernelBuilder, &[VarId]) -> Vec<Stmt>,
) -> Vec<Stmt> {
    let vars: Vec<VarId> = extents.iter().map(|_| kb.var(DType::I64)).collect();
    let body = inner(kb, &vars);
    let first = (0..extents.len()).find(|&d| extents[d] != 1);
    let kinds: Vec<LoopKind> = (0..extents.len())
        .map(|d| {
            if Some(d) == first {
                kind0
            } else {
                LoopKind::Serial
            }
        })
        .collect();
    super::wrap_loops(&vars, extents, &kinds, body)
}

/// The input coordinate `o*stride - pad + k*dil` of one spatial dim, its clamped form and
/// whether it is inside `[0, n)`.
fn tap(o: VarId, k: VarId, g: &Geom, d: usize, n: usize) -> (Expr, Expr) {
    let pos = Expr::add_idx(
        Expr::add_idx(
            Expr::mul_idx(Expr::var(o), g.stride[d] as i64),
            Expr::mul_idx(Expr::var(k), g.dil[d] as i64),
        ),
        Expr::idx(-(g.pad[d] as i64)),
    );
    if g.pad[d] == 0 && (g.out[d] - 1) * g.stride[d] + (g.k[d] - 1) * g.dil[d] < n {
        // Never out of bounds: no clamp, no test.
        return (pos, Expr::Lit(Lit::Bool(true)));
    }
    let inside = Expr::bin(
        BinOp::And,
        Expr::bin(BinOp::Ge, pos.clone(), Expr::idx(0)),
        Expr::bin(BinOp::Lt, pos.clone(), Expr::idx(n as i64)),
    );
    let clamped = Expr::bin(
        BinOp::Max,
        Expr::bin(BinOp::Min, pos, Expr::idx(n as i64 - 1)),
        Expr::idx(0),
    );
    (clamped, inside)
}

fn and(a: Expr, b: Expr) -> Expr {
    match (&a, &b) {
        (Expr::Lit(Lit::Bool(true)), _) => b,
        (_, Expr::Lit(Lit::Bool(true))) => a,
        _ => Expr::bin(BinOp::And, a, b),
    }
}

pub(super) fn conv(
    cx: &mut Cx,
    node: &Node,
    strides_: &[usize],
    dil: &[usize],
    pads: &[usize],
    group: usize,
    auto_pad: AutoPad,
) -> Result<(), Fail> {
    let (Some(x), Some(w)) = (node.input(0), node.input(1)) else {
        return unsupported("missing input");
    };
    let (xs, ws) = (cx.shape(x)?, cx.shape(w)?);
    let ty = cx.dtype(x);
    let half = matches!(ty, DType::F16 | DType::BF16);
    if !matches!(ty, DType::F32 | DType::F64) && !half {
        return unsupported(format!("convolution on {}", ty.name()));
    }
    if xs.len() < 3 || ws.len() != xs.len() || group == 0 || xs[1] % group != 0 {
        return unsupported(format!("convolution of {xs:?} by {ws:?} in {group} groups"));
    }
    let (n, c, m) = (xs[0], xs[1], ws[0]);
    let ins = &xs[2..];
    let kdims = &ws[2..];
    let g = geometry(ins, kdims, strides_, dil, pads, auto_pad, false)?;
    let cg = c / group;
    let mg = m / group;
    let out_v = node.outputs[0];
    let out = cx.new_buffer(out_v, BufKind::Temp)?;
    let bias = node.input(2);
    if half {
        return conv_half(cx, node, (x, w, bias), out, &g, ins, (n, c, m, group));
    }
    let kk: usize = kdims.iter().product();
    let ohw: usize = g.out.iter().product();
    if cg == 1 && ins.len() == 2 {
        return conv_depthwise_2d(cx, node, x, w, bias, out, &g, ins, n, c, m, group);
    }
    if cg == 1 {
        return conv_direct(cx, node, x, w, bias, out, &g, ins, n, c, m, group);
    }
    let wino = super::winograd::WinoConv {
        x,
        w,
        bias,
        out,
        n,
        c,
        m,
        ins: (ins[0], ins.get(1).copied().unwrap_or(1)),
        outs: (g.out[0], g.out.get(1).copied().unwrap_or(1)),
        pad: (g.pad[0], g.pad.get(1).copied().unwrap_or(0)),
    };
    // 3×3, stride 1, dilation 1, one group: Winograd F(2×2, 3×3) where it pays.
    if group == 1
        && kdims == [3, 3]
        && g.stride == [1, 1]
        && g.dil == [1, 1]
        && super::winograd::conv(cx, node, &wino)?
    {
        return Ok(());
    }
    let cols = columns(cx, node, x, &g, (ins, kdims), (group, mg), None)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let wp = kb.param(&cx.p, cx.buf(w)?, Access::Read);
    let cp = cols.params(cx, &mut kb);
    let bp = cx.opt_param(&mut kb, bias, Access::Read)?;
    let op_ = kb.param(&cx.p, out, Access::Write);
    let kdim = cg * kk;
    kb.k.body = grouped_conv_matmuls(
        &mut kb,
        (wp, cp, bp, op_),
        (group, n, m, mg, ohw, kdim),
        &cols,
    );
    cx.launch(kb, node);
    Ok(())
}

/// An f32 column matrix larger than this is read from the image whatever the GEMM does with
/// it: four times the L2 of the CPUs we measure on (1 MiB on Zen 4), so that written out whole
/// it would go to memory and back.
const IMPLICIT_F32_BYTES: usize = 4 << 20;

/// What a convolution's contractions read as `B`: a column matrix, or the image itself.
struct Columns {
    buf: BufId,
    /// The (row, group, batch) strides of the column matrix; for an image `(0, ·, ·)`: its
    /// planes per group and per batch.
    strides: (i64, i64, i64),
    /// `Some` when `buf` is the image, read as its column matrix (implicit GEMM), with the
    /// padding's buffer (`fill` is set per kernel).
    image: Option<(Im2col, Option<BufId>)>,
}

impl Columns {
    /// The kernel parameters for `B`: the buffer, and the image's fill if any.
    fn params(&self, cx: &Cx, kb: &mut KernelBuilder) -> (ParamId, Option<ParamId>) {
        let b = kb.param(&cx.p, self.buf, Access::Read);
        let fill = match &self.image {
            Some((_, Some(f))) => Some(kb.param(&cx.p, *f, Access::Read)),
            _ => None,
        };
        (b, fill)
    }
}

/// The body of a grouped convolution's contraction kernel, float or integer: per (group,
/// batch), `out[g] = W[g] · col[n, g] (+ bias[g])`, weights `[group·mg, kdim]` row-major, the
/// column matrix (or the image read as one) as `cols` says, output `[n, m, ohw]`.
#[allow(clippy::type_complexity)]
fn grouped_conv_matmuls(
    kb: &mut KernelBuilder,
    (wp, (cp, fill), bp, op_): (
        ParamId,
        (ParamId, Option<ParamId>),
        Option<ParamId>,
        ParamId,
    ),
    (group, n, m, mg, ohw, kdim): (usize, usize, usize, usize, usize, usize),
    cols: &Columns,
) -> Vec<Stmt> {
    let (col_rows_stride, col_group_stride, col_batch_stride) = cols.strides;
    let image = cols
        .image
        .as_ref()
        .map(|(v, _)| Box::new(Im2col { fill, ..v.clone() }));
    nest(kb, &[group, n], LoopKind::Parallel, |_, v| {
        let (gv, nv) = (Expr::var(v[0]), Expr::var(v[1]));
        let mm = Matmul {
            m: mg,
            n: ohw,
            k: kdim,
            a: MatRef {
                param: wp,
                offset: Expr::mul_idx(gv.clone(), (mg * kdim) as i64),
                row_stride: kdim as i64,
                col_stride: 1,
            },
            b: MatRef {
                param: cp,
                offset: Expr::add_idx(
                    Expr::mul_idx(nv.clone(), col_batch_stride),
                    Expr::mul_idx(gv.clone(), col_group_stride),
                ),
                row_stride: col_rows_stride,
                col_stride: if image.is_some() { 0 } else { 1 },
            },
            c: MatRef {
                param: op_,
                offset: Expr::add_idx(
                    Expr::mul_idx(nv, (m * ohw) as i64),
                    Expr::mul_idx(gv.clone(), (mg * ohw) as i64),
                ),
                row_stride: ohw as i64,
                col_stride: 1,
            },
            alpha: 1.0,
            beta: 0.0,
            bias: bp.map(|p| MatRef {
                param: p,
                offset: Expr::mul_idx(gv, mg as i64),
                row_stride: 1,
                col_stride: 0,
            }),
            act: Activation::None,
            requant: None,
            tail: None,
            b_im2col: image.clone(),
        };
        vec![Stmt::Matmul(Box::new(mm))]
    })
}

/// The column matrix of a convolution with more than one channel per group: rows (c, k...)
/// of the group, columns the output positions; `(buffer, row stride, group stride, batch
/// stride)`. A pointwise convolution reads its input in place. Padding reads as zero, or as
/// `pad` (a one-element buffer: an integer convolution's input zero point, so that padded
/// taps contribute `zp - zp = 0`).
#[allow(clippy::too_many_arguments)]
fn columns(
    cx: &mut Cx,
    node: &Node,
    x: mlc_ir::ValueId,
    g: &Geom,
    (ins, kdims): (&[usize], &[usize]),
    (group, mg): (usize, usize),
    pad: Option<BufId>,
) -> Result<Columns, Fail> {
    let xs = cx.shape(x)?;
    let ty = cx.dtype(x);
    let (n, c) = (xs[0], xs[1]);
    let cg = c / group;
    let kk: usize = kdims.iter().product();
    let ohw: usize = g.out.iter().product();
    let ihw: usize = ins.iter().product();
    let pointwise = kk == 1 && g.pad.iter().all(|&p| p == 0) && g.stride.iter().all(|&s| s == 1);
    let xb = cx.buf(x)?;
    let matrix = |buf, strides| Columns {
        buf,
        strides,
        image: None,
    };
    if pointwise {
        return Ok(matrix(
            xb,
            (ohw as i64, (cg * ihw) as i64, (c * ihw) as i64),
        ));
    }
    // Where it measured faster on the CPU, the contraction reads the image as its column
    // matrix, which is then never written out whole (implicit GEMM). 8-bit convolutions whose
    // blocks of `B` the integer kernels pack straight from the image: "same" ones of stride 1
    // (one load per step; ResNet-18 QDQ's 3×3 layers 7–10% faster) and windows of at most 3×3
    // at column stride 1 or 2 (a load or two per output row met; its stride-2 3×3 layers
    // 0.37–0.40 → 0.32–0.35 ms; its 7×7 stem, 147 steps of short runs, went 1.01 → 1.07 and
    // keeps the column matrix). f32 ones, copied block by block, where the GEMM reads `B` in
    // place (at most 32 rows: the block copy replaces the column matrix and its padded planes;
    // PP-LCNet's stem 245 → 225 µs), where the image has at most 4 channels and the column
    // stride is 1 or 2 (a network's first layer, which the CPU computes straight from the
    // image: 3→64 3×3 stride 2 at 224×224 0.65 → 0.53 ms; a ViT's 16×16 stride-16 patches
    // would gather every tap, ViT-Tiny 0.18 → 0.42 ms) or the matrix is far past L2 (ResNet-18's stem, 7 MiB:
    // 3.7 → 2.6 ms); elsewhere the GEMM packs the block again and the explicit column matrix
    // measured faster (ResNet-18's 1.8 MB stride-2 layer: 1.22 against 1.34 ms).
    let eight = matches!(ty, DType::U8 | DType::I8);
    let same_s1 = g.stride == [1, 1] && g.out.get(1) == ins.get(1);
    let bytes = cg * kk * ohw * ty.size().unwrap_or(4);
    let few_channels = cg <= 4 && g.stride.get(1).is_some_and(|&s| s <= 2);
    let f32_blocks = ty == DType::F32 && (mg <= 32 || few_channels || bytes > IMPLICIT_F32_BYTES);
    let eight_direct = ins.len() == 2 && (same_s1 || (g.stride[1] <= 2 && kk <= 9));
    if ins.len() == 2 && ((eight && eight_direct) || f32_blocks) {
        let two = |v: &[usize]| [v[0], v[1]];
        let view = Im2col {
            channels: cg,
            in_hw: two(ins),
            out_hw: two(&g.out),
            kernel: two(kdims),
            stride: two(&g.stride),
            dilation: two(&g.dil),
            pad: two(&g.pad),
            fill: None,
        };
        return Ok(Columns {
            buf: xb,
            strides: (0, (cg * ihw) as i64, (c * ihw) as i64),
            image: Some((view, pad)),
        });
    }
    if ins.len() == 2 && (ty.is_float() || matches!(ty, DType::U8 | DType::I8)) {
        let fill = match pad {
            Some(b) => Fill::Buffer(b),
            None => Fill::Value(0.0),
        };
        let (col, rs) = im2col_2d(cx, node, xb, ty, fill, n * c, ins, g);
        return Ok(matrix(
            col,
            (rs as i64, (cg * kk * rs) as i64, (c * kk * rs) as i64),
        ));
    }
    let col =
        cx.p.add_buffer(ty, vec![n, group, cg * kk, ohw], BufKind::Temp);
    let mut kb = KernelBuilder::new("im2col");
    let xp = kb.param(&cx.p, xb, Access::Read);
    let padp = pad.map(|b| kb.param(&cx.p, b, Access::Read));
    let cp = kb.param(&cx.p, col, Access::Write);
    let s = ins.len();
    let ist = strides(ins);
    let ost = strides(&g.out);
    let kst = strides(kdims);
    // for.parallel (n, c) rows, then kernel taps, then output positions.
    let mut ext = vec![n * c];
    ext.extend_from_slice(kdims);
    ext.extend_from_slice(&g.out);
    let body = nest(&mut kb, &ext, LoopKind::Parallel, |_, v| {
        let nc = v[0];
        let (kv, ov) = (&v[1..1 + s], &v[1 + s..]);
        let mut src = Expr::mul_idx(Expr::var(nc), ihw as i64);
        let mut ok = Expr::Lit(Lit::Bool(true));
        let mut krow = Expr::idx(0);
        let mut ocol = Expr::idx(0);
        for d in 0..s {
            let (pos, inside) = tap(ov[d], kv[d], g, d, ins[d]);
            src = Expr::add_idx(src, Expr::mul_idx(pos, ist[d]));
            ok = and(ok, inside);
            krow = Expr::add_idx(krow, Expr::mul_idx(Expr::var(kv[d]), kst[d]));
            ocol = Expr::add_idx(ocol, Expr::mul_idx(Expr::var(ov[d]), ost[d]));
        }
        // Row (n, g, c', k) of the column matrix is row (n*C + c)*kk + k: groups are
        // contiguous channel ranges, so the flat layout needs no group arithmetic.
        let row = Expr::add_idx(Expr::mul_idx(Expr::var(nc), kk as i64), krow);
        let dst = Expr::add_idx(Expr::mul_idx(row, ohw as i64), ocol);
        let outside = match padp {
            Some(p) => Expr::load(p, Expr::idx(0)),
            None if ty.is_float() => Expr::float(ty, 0.0),
            None => Expr::Lit(Lit::Int(ty, 0)),
        };
        let value = match ok {
            Expr::Lit(Lit::Bool(true)) => Expr::load(xp, src),
            ok => Expr::select(ok, Expr::load(xp, src), outside),
        };
        vec![Stmt::Store {
            param: cp,
            index: dst,
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
    Ok(matrix(
        col,
        (ohw as i64, (cg * kk * ohw) as i64, (c * kk * ohw) as i64),
    ))
}

/// Copies `planes` planes of `ih×iw` into planes of `ph×pw` filled with `fill`, at offset
/// `pad` (top, left), with vectorizable loops; returns `xb` itself when nothing would change.
#[allow(clippy::too_many_arguments)]
pub(super) fn pad_planes_with(
    cx: &mut Cx,
    node: &Node,
    xb: BufId,
    ty: DType,
    fill: Fill,
    planes: usize,
    (ih, iw): (usize, usize),
    (pt, pl): (usize, usize),
    (ph, pw): (usize, usize),
) -> BufId {
    if (ph, pw) == (ih, iw) && (pt, pl) == (0, 0) {
        return xb;
    }
    let xpad = cx.p.add_buffer(ty, vec![planes, ph, pw], BufKind::Temp);
    let mut kb = KernelBuilder::new("pad_planes");
    let xp = kb.param(&cx.p, xb, Access::Read);
    let fill = fill.expr(cx, &mut kb, ty);
    let pp = kb.param(&cx.p, xpad, Access::Write);
    let (nc, i, y, xx) = (
        kb.var(DType::I64),
        kb.var(DType::I64),
        kb.var(DType::I64),
        kb.var(DType::I64),
    );
    // Every element is written once: the rows above and below the input as two runs, then
    // per input row its left border, the row itself and its right border.
    let plane = Expr::mul_idx(Expr::var(nc), (ph * pw) as i64);
    let fill_run = |var: VarId, start: Expr, len: usize| -> Vec<Stmt> {
        if len == 0 {
            return vec![];
        }
        lp(
            var,
            len,
            LoopKind::Vector,
            vec![Stmt::Store {
                param: pp,
                index: Expr::add_idx(start, Expr::var(var)),
                value: fill.clone(),
            }],
        )
    };
    let (below, right) = (ph - pt - ih, pw - pl - iw);
    let mut body = fill_run(i, plane.clone(), pt * pw);
    let row_start = Expr::add_idx(
        plane.clone(),
        Expr::mul_idx(Expr::add_idx(Expr::var(y), Expr::idx(pt as i64)), pw as i64),
    );
    let dst = Expr::add_idx(
        row_start.clone(),
        Expr::add_idx(Expr::var(xx), Expr::idx(pl as i64)),
    );
    let from = Expr::add_idx(
        Expr::add_idx(
            Expr::mul_idx(Expr::var(nc), (ih * iw) as i64),
            Expr::mul_idx(Expr::var(y), iw as i64),
        ),
        Expr::var(xx),
    );
    let (l, r, b) = (kb.var(DType::I64), kb.var(DType::I64), kb.var(DType::I64));
    let mut row = fill_run(l, row_start.clone(), pl);
    row.extend(lp(
        xx,
        iw,
        LoopKind::Vector,
        vec![Stmt::Store {
            param: pp,
            index: dst,
            value: Expr::load(xp, from),
        }],
    ));
    row.extend(fill_run(
        r,
        Expr::add_idx(row_start, Expr::idx((pl + iw) as i64)),
        right,
    ));
    body.extend(lp(y, ih, LoopKind::Serial, row));
    body.extend(fill_run(
        b,
        Expr::add_idx(plane, Expr::idx(((pt + ih) * pw) as i64)),
        below * pw,
    ));
    kb.k.body = lp(nc, planes, LoopKind::Parallel, body);
    let id = cx.p.intern_kernel(kb.k);
    cx.p.steps.push(Step {
        kernel: id,
        args: kb.args,
        origin: node.loc.clone(),
    });
    xpad
}

/// The size of a 2-D plane padded so that every tap of every window of `g` lies inside it:
/// the begin pads plus the input, or further where a window reaches (end pads, ceil mode).
fn padded_plane(g: &Geom, (ih, iw): (usize, usize)) -> (usize, usize) {
    let reach = |d: usize| (g.out[d] - 1) * g.stride[d] + (g.k[d] - 1) * g.dil[d] + 1;
    ((ih + g.pad[0]).max(reach(0)), (iw + g.pad[1]).max(reach(1)))
}

/// What padding reads as.
#[derive(Clone, Copy)]
pub(super) enum Fill {
    Value(f64),
    /// Element 0 of a buffer (an integer convolution's input zero point).
    Buffer(BufId),
}

impl Fill {
    /// The fill as a kernel expression of `ty` (a buffer becomes a parameter of `kb`).
    fn expr(self, cx: &Cx, kb: &mut KernelBuilder, ty: DType) -> Expr {
        match self {
            Fill::Buffer(b) => Expr::load(kb.param(&cx.p, b, Access::Read), Expr::idx(0)),
            Fill::Value(v) if ty.is_float() => Expr::float(ty, v),
            Fill::Value(v) => Expr::Lit(Lit::Int(ty, v as i64)),
        }
    }
}

/// [`pad_planes_with`] zeros.
#[allow(clippy::too_many_arguments)]
fn pad_planes(
    cx: &mut Cx,
    node: &Node,
    xb: BufId,
    ty: DType,
    planes: usize,
    ins: (usize, usize),
    pad: (usize, usize),
    padded: (usize, usize),
) -> BufId {
    pad_planes_with(cx, node, xb, ty, Fill::Value(0.0), planes, ins, pad, padded)
}

/// 2-D max or `f32` average pooling, separably and without padded copies of the planes: per
/// output row, the maximum (NaN-propagating) or sum down the window's rows that lie inside the
/// plane, across the whole input row (unit-stride loads), into one scratch row per plane whose
/// ends hold the padding value; then the maximum or sum along that row (loads at the stride).
/// For a maximum, padding is the lowest value of the type (−∞ for floats), which never changes
/// it, so skipping the window rows outside the plane is exact; the rows with all taps inside
/// are one loop, the few edge rows are unrolled with their own taps.
///
/// An average pads with 0.0 and divides each sum by its window's tap count, the product of the
/// counts down and across (two constant tables, exact small integers in `f32`), which are the
/// taps inside the plane, or inside it and its pads under `count_include_pad`. A window with no
/// tap counted is 0/0 = NaN, as in the general form. The sum is taken down the rows first and
/// then across, an order the general form (row-major taps, one scalar loop per output, a
/// division by a running count) does not share: results differ from it by rounding. DenseNet's
/// 2×2 transition on 128@56 took 325 µs in the general form's scalar loop, 54 here.
fn separable_pool_2d(
    cx: &mut Cx,
    node: &Node,
    x: mlc_ir::ValueId,
    g: &Geom,
    xs: &[usize],
    kind: PoolKind,
) -> Result<(), Fail> {
    let ty = cx.dtype(x);
    let (op, fill) = match kind {
        PoolKind::Max if ty.is_float() => (BinOp::Max, f64::NEG_INFINITY),
        // The value no element is below: what padding reads as.
        PoolKind::Max => {
            let Expr::Lit(Lit::Int(_, v)) = super::reduce::min_of(ty) else {
                return unsupported(format!("max pooling on {}", ty.name()));
            };
            (BinOp::Max, v as f64)
        }
        PoolKind::Avg { .. } if ty == DType::F32 => (BinOp::Add, 0.0),
        _ => return unsupported(format!("separable pooling on {}", ty.name())),
    };
    let planes = xs[0] * xs[1];
    let (ih, iw) = (xs[2], xs[3]);
    let (oh, ow) = (g.out[0], g.out[1]);
    let (kh, kw) = (g.k[0], g.k[1]);
    let (_, pw) = padded_plane(g, (ih, iw));
    let (pt, pl) = (g.pad[0], g.pad[1]);
    let src = cx.buf(x)?;
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let cols = cx.p.add_buffer(ty, vec![planes, pw], BufKind::Temp);
    // An average's divisors: the taps counted down, per output row, and across, per column.
    let counts = match kind {
        PoolKind::Avg { count_include_pad } => {
            let count = |d: usize, o: usize, n: usize| {
                (0..g.k[d])
                    .filter(|&k| {
                        // The tap's position in the padded plane.
                        let at = o * g.stride[d] + k * g.dil[d];
                        if count_include_pad {
                            at < g.pad[d] + n + g.pad_end[d]
                        } else {
                            at >= g.pad[d] && at - g.pad[d] < n
                        }
                    })
                    .count() as f64
            };
            let down: Vec<f64> = (0..oh).map(|y| count(0, y, ih)).collect();
            let across: Vec<f64> = (0..ow).map(|x| count(1, x, iw)).collect();
            if down.iter().all(|&c| c == down[0]) && across.iter().all(|&c| c == across[0]) {
                // Every window counts the same taps (no padding, or padding counted): one
                // literal divisor.
                Some(Divisor::Same(down[0] * across[0]))
            } else {
                Some(Divisor::Tables(
                    super::dft::const_f32(cx, 1, oh, down)?,
                    super::dft::const_f32(cx, 1, ow, across)?,
                ))
            }
        }
        _ => None,
    };
    let mut kb = KernelBuilder::new(format!("{}_rows", kernel_name(&node.op)));
    let xp = kb.param(&cx.p, src, Access::Read);
    let cp = kb.param(&cx.p, cols, Access::ReadWrite);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let counts = counts.map(|d| match d {
        Divisor::Same(c) => Divisor::Same(c),
        Divisor::Tables(h, w) => Divisor::Tables(
            kb.param(&cx.p, h, Access::Read),
            kb.param(&cx.p, w, Access::Read),
        ),
    });
    let fill = Fill::Value(fill).expr(cx, &mut kb, ty);
    let pv = kb.var(DType::I64);
    let fold = |mut taps: Vec<Expr>| {
        let mut acc = taps.remove(0);
        for t in taps {
            acc = Expr::bin(op, acc, t);
        }
        acc
    };
    let row = Expr::mul_idx(Expr::var(pv), pw as i64);
    // Input row of window row `ky` for output row `y`, when inside the plane.
    let in_row = |y: usize, ky: usize| {
        (y * g.stride[0] + ky * g.dil[0])
            .checked_sub(pt)
            .filter(|&r| r < ih)
    };
    // Output row `y` (a counter or a literal) with window rows `taps` (input rows `y·s + k`
    // with `k = ky·d − pt`): the maximum or sum down them into the scratch row, then along it
    // (and an average's division).
    let pass = |kb: &mut KernelBuilder, y: Expr, taps: &[i64]| -> Vec<Stmt> {
        let (xi, xo) = (kb.var(DType::I64), kb.var(DType::I64));
        let down = if taps.is_empty() {
            fill.clone()
        } else {
            fold(
                taps.iter()
                    .map(|&k| {
                        let r = Expr::add_idx(
                            Expr::mul_idx(y.clone(), g.stride[0] as i64),
                            Expr::idx(k),
                        );
                        Expr::load(
                            xp,
                            Expr::add_idx(
                                Expr::add_idx(
                                    Expr::mul_idx(Expr::var(pv), (ih * iw) as i64),
                                    Expr::mul_idx(r, iw as i64),
                                ),
                                Expr::var(xi),
                            ),
                        )
                    })
                    .collect(),
            )
        };
        let across = fold(
            (0..kw)
                .map(|kx| {
                    Expr::load(
                        cp,
                        Expr::add_idx(
                            row.clone(),
                            Expr::add_idx(
                                Expr::mul_idx(Expr::var(xo), g.stride[1] as i64),
                                Expr::idx((kx * g.dil[1]) as i64),
                            ),
                        ),
                    )
                })
                .collect(),
        );
        let across = match &counts {
            Some(Divisor::Tables(ch, cw)) => Expr::bin(
                BinOp::Div,
                across,
                Expr::bin(
                    BinOp::Mul,
                    Expr::load(*ch, y.clone()),
                    Expr::load(*cw, Expr::var(xo)),
                ),
            ),
            // Dividing by a power of two is multiplying by its reciprocal, exactly.
            Some(Divisor::Same(c)) if (*c as u64).is_power_of_two() => {
                Expr::bin(BinOp::Mul, across, Expr::float(DType::F32, 1.0 / c))
            }
            Some(Divisor::Same(c)) => Expr::bin(BinOp::Div, across, Expr::float(DType::F32, *c)),
            None => across,
        };
        let dst = Expr::add_idx(
            Expr::add_idx(
                Expr::mul_idx(Expr::var(pv), (oh * ow) as i64),
                Expr::mul_idx(y, ow as i64),
            ),
            Expr::var(xo),
        );
        let mut body = lp(
            xi,
            iw,
            LoopKind::Vector,
            vec![Stmt::Store {
                param: cp,
                index: Expr::add_idx(
                    row.clone(),
                    Expr::add_idx(Expr::var(xi), Expr::idx(pl as i64)),
                ),
                value: down,
            }],
        );
        body.extend(lp(
            xo,
            ow,
            LoopKind::Vector,
            vec![Stmt::Store {
                param: op_,
                index: dst,
                value: across,
            }],
        ));
        body
    };
    // The scratch row's padding ends, once per plane.
    let mut body = vec![];
    for (from, to) in [(0, pl), (pl + iw, pw)] {
        if to > from {
            let i = kb.var(DType::I64);
            body.extend(lp(
                i,
                to - from,
                LoopKind::Vector,
                vec![Stmt::Store {
                    param: cp,
                    index: Expr::add_idx(
                        row.clone(),
                        Expr::add_idx(Expr::var(i), Expr::idx(from as i64)),
                    ),
                    value: fill.clone(),
                }],
            ));
        }
    }
    let interior = |y: usize| (0..kh).all(|ky| in_row(y, ky).is_some());
    let first = (0..oh).find(|&y| interior(y)).unwrap_or(oh);
    let end = (first..oh).find(|&y| !interior(y)).unwrap_or(oh);
    let offsets = |y: usize| -> Vec<i64> {
        (0..kh)
            .filter(|&ky| in_row(y, ky).is_some())
            .map(|ky| (ky * g.dil[0]) as i64 - pt as i64)
            .collect()
    };
    for y in 0..first {
        body.extend(pass(&mut kb, Expr::idx(y as i64), &offsets(y)));
    }
    if end > first {
        let yv = kb.var(DType::I64);
        let y = Expr::add_idx(Expr::var(yv), Expr::idx(first as i64));
        let inner = pass(&mut kb, y, &offsets(first));
        body.extend(lp(yv, end - first, LoopKind::Serial, inner));
    }
    for y in end.max(first)..oh {
        body.extend(pass(&mut kb, Expr::idx(y as i64), &offsets(y)));
    }
    kb.k.body = lp(pv, planes, LoopKind::Parallel, body);
    cx.launch(kb, node);
    Ok(())
}

/// The column matrix of a 2-D convolution, `[planes·kh·kw, oh·ow]` (row `(plane, ky, kx)`,
/// column the output position), copied from zero-padded planes: no bound tests, and the
/// innermost loop over output columns is a SIMD loop (unit stride for stride-1 convolutions).
#[allow(clippy::too_many_arguments)]
fn im2col_2d(
    cx: &mut Cx,
    node: &Node,
    xb: BufId,
    ty: DType,
    fill: Fill,
    planes: usize,
    ins: &[usize],
    g: &Geom,
) -> (BufId, usize) {
    if g.stride == [1, 1] && g.dil == [1, 1] {
        let col = im2col_shifted(cx, node, xb, ty, fill, planes, ins, g);
        return (col, g.out[0] * g.out[1]);
    }
    let (ih, iw) = (ins[0], ins[1]);
    let (oh, ow) = (g.out[0], g.out[1]);
    let (kh, kw) = (g.k[0], g.k[1]);
    let (ph, pw) = padded_plane(g, (ih, iw));
    let src = pad_planes_with(
        cx,
        node,
        xb,
        ty,
        fill,
        planes,
        (ih, iw),
        (g.pad[0], g.pad[1]),
        (ph, pw),
    );
    // Rows an odd number of cache lines apart: the GEMM packs or reads `k` rows at once
    // (ResNet-18's stem: 147 rows of 112·112 floats, 49 KiB apart, fell into 4 L1 sets).
    let rs = super::odd_lines(oh * ow, ty.size().unwrap_or(4));
    let col =
        cx.p.add_buffer(ty, vec![planes * kh * kw, rs], BufKind::Temp);
    let mut kb = KernelBuilder::new("im2col");
    let xp = kb.param(&cx.p, src, Access::Read);
    let cp = kb.param(&cx.p, col, Access::Write);
    let (nc, ky, kx, oy, ox) = (
        kb.var(DType::I64),
        kb.var(DType::I64),
        kb.var(DType::I64),
        kb.var(DType::I64),
        kb.var(DType::I64),
    );
    let row = Expr::add_idx(
        Expr::mul_idx(Expr::var(nc), (kh * kw) as i64),
        Expr::add_idx(Expr::mul_idx(Expr::var(ky), kw as i64), Expr::var(kx)),
    );
    let dst = Expr::add_idx(
        Expr::mul_idx(row, rs as i64),
        Expr::add_idx(Expr::mul_idx(Expr::var(oy), ow as i64), Expr::var(ox)),
    );
    let from = Expr::add_idx(
        Expr::add_idx(
            Expr::mul_idx(Expr::var(nc), (ph * pw) as i64),
            Expr::mul_idx(
                Expr::add_idx(
                    Expr::mul_idx(Expr::var(oy), g.stride[0] as i64),
                    Expr::mul_idx(Expr::var(ky), g.dil[0] as i64),
                ),
                pw as i64,
            ),
        ),
        Expr::add_idx(
            Expr::mul_idx(Expr::var(ox), g.stride[1] as i64),
            Expr::mul_idx(Expr::var(kx), g.dil[1] as i64),
        ),
    );
    let copy = vec![Stmt::Store {
        param: cp,
        index: dst,
        value: Expr::load(xp, from),
    }];
    // One parallel iteration per row of the column matrix, `(plane, ky, kx)`, not per plane: an
    // image has 3 planes, which two threads split 2 : 1 (ResNet-18's stem copies 7 MiB here).
    let r = kb.var(DType::I64);
    let (taps, rv) = ((kh * kw) as i64, Expr::var(r));
    let mut body = vec![
        Stmt::Let {
            var: nc,
            value: Expr::bin(BinOp::Div, rv.clone(), Expr::idx(taps)),
        },
        Stmt::Let {
            var: ky,
            value: Expr::bin(
                BinOp::Div,
                Expr::bin(BinOp::Rem, rv.clone(), Expr::idx(taps)),
                Expr::idx(kw as i64),
            ),
        },
        Stmt::Let {
            var: kx,
            value: Expr::bin(BinOp::Rem, rv, Expr::idx(kw as i64)),
        },
    ];
    body.extend(lp(
        oy,
        oh,
        LoopKind::Serial,
        lp(ox, ow, LoopKind::Vector, copy),
    ));
    kb.k.body = lp(r, planes * kh * kw, LoopKind::Parallel, body);
    cx.launch(kb, node);
    (col, rs)
}

/// [`im2col_2d`] for stride 1 and no dilation, from the unpadded planes: row `(ky, kx)` of a
/// plane's column matrix is the plane shifted by `(ky − pt, kx − pl)`, so (with as many output
/// as input columns, the common "same" case) the rows whose taps are inside the plane are one
/// contiguous run of it, copied at once; the taps that fell off the left or right edge (the
/// run wraps them onto the neighbouring row) and the rows above and below are then written with
/// the fill. Other widths copy the inside of each row. No padded copy of the input is made,
/// and the long runs copy 16 bytes (or four lanes) per step with no per-row overhead.
#[allow(clippy::too_many_arguments)]
fn im2col_shifted(
    cx: &mut Cx,
    node: &Node,
    xb: BufId,
    ty: DType,
    fill: Fill,
    planes: usize,
    ins: &[usize],
    g: &Geom,
) -> BufId {
    let (ih, iw) = (ins[0], ins[1]);
    let (oh, ow) = (g.out[0], g.out[1]);
    let (kh, kw) = (g.k[0], g.k[1]);
    let (pt, pl) = (g.pad[0] as i64, g.pad[1] as i64);
    let col =
        cx.p.add_buffer(ty, vec![planes * kh * kw, oh * ow], BufKind::Temp);
    let mut kb = KernelBuilder::new("im2col");
    let xp = kb.param(&cx.p, xb, Access::Read);
    let cp = kb.param(&cx.p, col, Access::Write);
    let fill = fill.expr(cx, &mut kb, ty);
    let nc = kb.var(DType::I64);
    let plane_in = Expr::mul_idx(Expr::var(nc), (ih * iw) as i64);
    let mut body = vec![];
    for ky in 0..kh {
        for kx in 0..kw {
            let (dy, dx) = (ky as i64 - pt, kx as i64 - pl);
            // Output rows and columns whose tap is inside the plane.
            let ylo = (-dy).clamp(0, oh as i64) as usize;
            let yhi = (ih as i64 - dy).clamp(ylo as i64, oh as i64) as usize;
            let xlo = (-dx).clamp(0, ow as i64) as usize;
            let xhi = (iw as i64 - dx).clamp(xlo as i64, ow as i64) as usize;
            let row = Expr::add_idx(
                Expr::mul_idx(Expr::var(nc), (kh * kw) as i64),
                Expr::idx((ky * kw + kx) as i64),
            );
            let base = Expr::mul_idx(row, (oh * ow) as i64);
            // A run `dst[base + at + i] = value(i)` for `i` in `0..len`.
            let run = |kb: &mut KernelBuilder, at: Expr, len: usize, src: Option<Expr>| {
                if len == 0 {
                    return vec![];
                }
                let i = kb.var(DType::I64);
                let value = match src {
                    Some(from) => Expr::load(xp, Expr::add_idx(from, Expr::var(i))),
                    None => fill.clone(),
                };
                lp(
                    i,
                    len,
                    LoopKind::Vector,
                    vec![Stmt::Store {
                        param: cp,
                        index: Expr::add_idx(Expr::add_idx(base.clone(), at), Expr::var(i)),
                        value,
                    }],
                )
            };
            // Rows above and below the plane.
            body.extend(run(&mut kb, Expr::idx(0), ylo * ow, None));
            body.extend(run(
                &mut kb,
                Expr::idx((yhi * ow) as i64),
                (oh - yhi) * ow,
                None,
            ));
            if yhi == ylo {
                continue;
            }
            let src_of = |oy: Expr, ox: i64| {
                Expr::add_idx(
                    plane_in.clone(),
                    Expr::add_idx(
                        Expr::mul_idx(Expr::add_idx(oy, Expr::idx(dy)), iw as i64),
                        Expr::idx(ox + dx),
                    ),
                )
            };
            let oy = kb.var(DType::I64);
            // The output row: `oy` counts from `ylo`.
            let oyx = Expr::add_idx(Expr::var(oy), Expr::idx(ylo as i64));
            if ow == iw && xhi > xlo {
                // One run from the first inside tap to the last, then the edges it wrapped.
                let start = ylo * ow + xlo;
                let end = (yhi - 1) * ow + xhi;
                let from = src_of(Expr::idx(ylo as i64), xlo as i64);
                body.extend(run(
                    &mut kb,
                    Expr::idx(start as i64),
                    end - start,
                    Some(from),
                ));
                let mut edges = run(&mut kb, Expr::mul_idx(oyx.clone(), ow as i64), xlo, None);
                edges.extend(run(
                    &mut kb,
                    Expr::add_idx(Expr::mul_idx(oyx, ow as i64), Expr::idx(xhi as i64)),
                    ow - xhi,
                    None,
                ));
                if !edges.is_empty() {
                    body.push(for_range(oy, yhi - ylo, edges));
                }
            } else {
                let at = Expr::mul_idx(oyx.clone(), ow as i64);
                let mut rows = run(&mut kb, at.clone(), xlo, None);
                rows.extend(run(
                    &mut kb,
                    Expr::add_idx(at.clone(), Expr::idx(xlo as i64)),
                    xhi - xlo,
                    Some(src_of(oyx, xlo as i64)),
                ));
                rows.extend(run(
                    &mut kb,
                    Expr::add_idx(at, Expr::idx(xhi as i64)),
                    ow - xhi,
                    None,
                ));
                body.push(for_range(oy, yhi - ylo, rows));
            }
        }
    }
    kb.k.body = lp(nc, planes, LoopKind::Parallel, body);
    cx.launch(kb, node);
    col
}

/// `for var in 0..n` (serial; the body adds the range's start to `var` itself).
fn for_range(var: VarId, n: usize, body: Vec<Stmt>) -> Stmt {
    Stmt::For {
        var,
        extent: Expr::idx(n as i64),
        kind: LoopKind::Serial,
        body,
    }
}

/// `for var in 0..extent` (`kind`), or the body with `var` = 0 when the extent is 1.
fn lp(var: VarId, extent: usize, kind: LoopKind, body: Vec<Stmt>) -> Vec<Stmt> {
    super::wrap_loops(&[var], &[extent], &[kind], body)
}

/// A 2-D depthwise convolution (one input channel per group) in two kernels built for SIMD:
/// the input planes are first copied into zero-padded planes (skipped without padding), so the
/// convolution reads no index twice and tests no bound; then each output row starts from the
/// bias and accumulates one kernel tap at a time, `y[ow] += xpad[.., ow·s + kw·d] · w[kh, kw]`,
/// an innermost loop over the row that the backends vectorize (its weight is uniform).
#[allow(clippy::too_many_arguments)]
fn conv_depthwise_2d(
    cx: &mut Cx,
    node: &Node,
    x: mlc_ir::ValueId,
    w: mlc_ir::ValueId,
    bias: Option<mlc_ir::ValueId>,
    out: BufId,
    g: &Geom,
    ins: &[usize],
    n: usize,
    c: usize,
    m: usize,
    group: usize,
) -> Result<(), Fail> {
    let ty = cx.dtype(x);
    if ty == DType::F32 && m.is_multiple_of(c) && m / c == m / group {
        return depthwise_stmt(cx, node, (x, w, bias), out, g, ins, (n, c, m));
    }
    let (ih, iw) = (ins[0], ins[1]);
    let (oh, ow) = (g.out[0], g.out[1]);
    let (kh, kw) = (g.k[0], g.k[1]);
    // The padded plane holds every tap of every window.
    let (ph, pw) = padded_plane(g, (ih, iw));
    let xb = cx.buf(x)?;
    let src = pad_planes(
        cx,
        node,
        xb,
        ty,
        n * c,
        (ih, iw),
        (g.pad[0], g.pad[1]),
        (ph, pw),
    );
    let mut kb = KernelBuilder::new(format!("{}_depthwise", kernel_name(&node.op)));
    let xp = kb.param(&cx.p, src, Access::Read);
    let wp = kb.param(&cx.p, cx.buf(w)?, Access::Read);
    let bp = cx.opt_param(&mut kb, bias, Access::Read)?;
    let mg = m / group;
    if kh * kw <= MAX_UNROLLED_TAPS {
        return depthwise_unrolled(cx, node, kb, (xp, wp, bp), out, g, (n, c, m, mg), (ph, pw));
    }
    // Read too: rows accumulate in place (each row is initialized first).
    let op_ = kb.param(&cx.p, out, Access::ReadWrite);
    let (nv, mv, y, ky, kx, xo, wv) = (
        kb.var(DType::I64),
        kb.var(DType::I64),
        kb.var(DType::I64),
        kb.var(DType::I64),
        kb.var(DType::I64),
        kb.var(DType::I64),
        kb.var(ty),
    );
    let row = Expr::add_idx(
        Expr::mul_idx(
            Expr::add_idx(Expr::mul_idx(Expr::var(nv), m as i64), Expr::var(mv)),
            (oh * ow) as i64,
        ),
        Expr::mul_idx(Expr::var(y), ow as i64),
    );
    let dst = Expr::add_idx(row, Expr::var(xo));
    let init = match bp {
        Some(p) => Expr::load(p, Expr::var(mv)),
        None => Expr::float(ty, 0.0),
    };
    let init_row = lp(
        xo,
        ow,
        LoopKind::Vector,
        vec![Stmt::Store {
            param: op_,
            index: dst.clone(),
            value: init,
        }],
    );
    // Input plane of output channel m: its group's only channel.
    let cin = channel_group(mv, mg);
    let plane = Expr::mul_idx(
        Expr::add_idx(Expr::mul_idx(Expr::var(nv), c as i64), cin),
        (ph * pw) as i64,
    );
    let in_row = Expr::mul_idx(
        Expr::add_idx(
            Expr::mul_idx(Expr::var(y), g.stride[0] as i64),
            Expr::mul_idx(Expr::var(ky), g.dil[0] as i64),
        ),
        pw as i64,
    );
    let in_col = Expr::add_idx(
        Expr::mul_idx(Expr::var(xo), g.stride[1] as i64),
        Expr::mul_idx(Expr::var(kx), g.dil[1] as i64),
    );
    let tap = Expr::load(xp, Expr::add_idx(Expr::add_idx(plane, in_row), in_col));
    let widx = Expr::add_idx(
        Expr::mul_idx(Expr::var(mv), (kh * kw) as i64),
        Expr::add_idx(Expr::mul_idx(Expr::var(ky), kw as i64), Expr::var(kx)),
    );
    let mut per_tap = vec![Stmt::Let {
        var: wv,
        value: Expr::load(wp, widx),
    }];
    per_tap.extend(lp(
        xo,
        ow,
        LoopKind::Vector,
        vec![Stmt::Store {
            param: op_,
            index: dst.clone(),
            value: Expr::bin(
                BinOp::Add,
                Expr::load(op_, dst),
                Expr::bin(BinOp::Mul, tap, Expr::var(wv)),
            ),
        }],
    ));
    let taps = lp(
        ky,
        kh,
        LoopKind::Serial,
        lp(kx, kw, LoopKind::Serial, per_tap),
    );
    let mut row_body = init_row;
    row_body.extend(taps);
    let rows = lp(y, oh, LoopKind::Serial, row_body);
    kb.k.body = nest_vars(&[nv, mv], &[n, m], rows);
    cx.launch(kb, node);
    Ok(())
}

/// An `f32` 2-D depthwise convolution as one [`Stmt::Depthwise`]: the backend's library
/// kernel handles padding implicitly (no padded copy of the input), and an elementwise tail
/// may join its epilogue ([`depthwise_tail`]). The loop form below stays for `f64`, and
/// [`crate::expand_depthwise`] gives the statement's own loop form to backends without a
/// kernel.
#[allow(clippy::type_complexity)]
fn depthwise_stmt(
    cx: &mut Cx,
    node: &Node,
    (x, w, bias): (mlc_ir::ValueId, mlc_ir::ValueId, Option<mlc_ir::ValueId>),
    out: BufId,
    g: &Geom,
    ins: &[usize],
    (n, c, m): (usize, usize, usize),
) -> Result<(), Fail> {
    let mut kb = KernelBuilder::new(format!("{}_depthwise", kernel_name(&node.op)));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let wp = kb.param(&cx.p, cx.buf(w)?, Access::Read);
    let bp = cx.opt_param(&mut kb, bias, Access::Read)?;
    let op_ = kb.param(&cx.p, out, Access::Write);
    kb.k.body = vec![depthwise_of(g, ins, (n, c, m), (xp, wp, bp, op_))];
    cx.launch(kb, node);
    Ok(())
}

/// The [`Stmt::Depthwise`] of 2-D geometry `g` over `ins`-sized planes, `(n, c, m)` images,
/// input and output channels, with no epilogue yet.
fn depthwise_of(
    g: &Geom,
    ins: &[usize],
    (n, c, m): (usize, usize, usize),
    (x, w, bias, out): (ParamId, ParamId, Option<ParamId>, ParamId),
) -> Stmt {
    Stmt::Depthwise(Box::new(Depthwise {
        batch: n,
        channels: c,
        mult: m / c,
        in_hw: [ins[0], ins[1]],
        out_hw: [g.out[0], g.out[1]],
        kernel: [g.k[0], g.k[1]],
        stride: [g.stride[0], g.stride[1]],
        dilation: [g.dil[0], g.dil[1]],
        pad: [g.pad[0], g.pad[1]],
        x,
        x_zero: None,
        w,
        bias,
        out,
        epilogue: vec![],
    }))
}

/// The elementwise tail `region` (its inputs bound by `env_in`: the convolution's value as
/// `None`, one-element values as loads of element 0) as depthwise epilogue operations
/// appended to the [`Stmt::Depthwise`] of `k`; `Ok(false)` (and `k`'s body unchanged) when the
/// tail is not an `f32` chain of `add`/`sub`/`mul`/`div`/`max`/`min` (ReLU's select as
/// `max(·, 0)`) and sigmoids of the value and scalars that [`EpOp`]s express: each operation with at most one operand depending on the value, or
/// `a op b` where one side is a function of the other (a gate such as
/// `x · clip(x + 3, 0, 6)`). The operations are the tail's own, in its order, so results do
/// not change.
pub(super) fn depthwise_tail(
    k: &mut Kernel,
    region: &mlc_ir::Graph,
    env_in: &[(mlc_ir::ValueId, Option<Expr>)],
) -> Result<bool, Fail> {
    let [Stmt::Depthwise(dw)] = k.body.as_slice() else {
        return Ok(false);
    };
    let ty = |p: ParamId| k.params.get(p.0 as usize).map(|q| q.dtype);
    // An i32 output of 8-bit inputs holds the accumulator exactly (see `Depthwise`): the tail
    // may read it back as f32 for free.
    let acc_ty = ty(dw.out);
    let exact_i32 = acc_ty == Some(DType::I32) && matches!(ty(dw.x), Some(DType::U8 | DType::I8));
    let Some(out_ty) = region.outputs.first().map(|o| region.ty(o.value).dtype) else {
        return Ok(false);
    };
    if region.outputs.len() != 1
        || !matches!(out_ty, DType::F32 | DType::U8 | DType::I8)
        || env_in.iter().any(|(v, e)| {
            let t = region.ty(*v).dtype;
            match e {
                None => !(t == DType::F32 || (t == DType::I32 && exact_i32)),
                Some(_) => !matches!(t, DType::F32 | DType::U8 | DType::I8),
            }
        })
    {
        return Ok(false);
    }
    let x = VarId(u32::MAX);
    let mut env: Vec<Option<Expr>> = vec![None; region.values.len()];
    for (v, e) in env_in {
        env[v.0 as usize] = Some(e.clone().unwrap_or(Expr::var(x)));
    }
    // Lets into scratch variables numbered above every real one, then inlined into one tree.
    let mut lets = Vec::new();
    let mut next = u32::MAX - 1;
    let mut fresh = |_t: DType| {
        next -= 1;
        VarId(next)
    };
    match super::ew::body_lets(region, &mut env, &mut fresh, &mut lets) {
        Ok(()) => {}
        Err(Fail::Unsupported(_)) => return Ok(false),
        Err(e) => return Err(e),
    }
    let Some(mut out) = env[region.outputs[0].value.0 as usize].clone() else {
        return Ok(false);
    };
    let mut defs: std::collections::HashMap<VarId, Expr> = Default::default();
    for st in lets {
        if let Stmt::Let { var, value } = st {
            let value = inline(value, &defs);
            defs.insert(var, value);
        }
    }
    out = inline(out, &defs);
    // The integer accumulator read as f32 is the accumulator itself.
    if exact_i32 {
        match strip_acc_cast(out, x) {
            Some(e) => out = e,
            None => return Ok(false),
        }
    }
    // An 8-bit output: the store's conversion is the tail's last cast.
    if out_ty != DType::F32 {
        match out {
            Expr::Cast(t, inner) if t == out_ty => out = *inner,
            _ => return Ok(false),
        }
    }
    let Some(ops) = ep_ops(&out, &Expr::var(x), x, k) else {
        return Ok(false);
    };
    if let [Stmt::Depthwise(dw)] = k.body.as_mut_slice() {
        dw.epilogue.extend(ops);
    }
    Ok(true)
}

/// The variable standing for the output channel in a per-channel epilogue operand's load
/// (`tail.rs` binds such operands as `p[CHANNEL]`).
pub(super) const CHANNEL: VarId = VarId(u32::MAX - 1);

/// `e` with `cast<f32>(x)` (the i32 accumulator `x` read as f32) replaced by `x`; `None`
/// when `x` is used any other way.
fn strip_acc_cast(e: Expr, x: VarId) -> Option<Expr> {
    Some(match e {
        Expr::Cast(DType::F32, a) if *a == Expr::Var(x) => Expr::Var(x),
        Expr::Var(v) if v == x => return None,
        Expr::Unary(op, a) => Expr::un(op, strip_acc_cast(*a, x)?),
        Expr::Binary(op, a, b) => Expr::bin(op, strip_acc_cast(*a, x)?, strip_acc_cast(*b, x)?),
        Expr::Cast(t, a) => Expr::cast(t, strip_acc_cast(*a, x)?),
        Expr::Select { cond, then, els } => Expr::select(
            strip_acc_cast(*cond, x)?,
            strip_acc_cast(*then, x)?,
            strip_acc_cast(*els, x)?,
        ),
        e => e,
    })
}

/// `e` with every variable of `defs` replaced by its definition.
fn inline(e: Expr, defs: &std::collections::HashMap<VarId, Expr>) -> Expr {
    match e {
        Expr::Var(v) => defs.get(&v).cloned().unwrap_or(Expr::Var(v)),
        Expr::Unary(op, a) => Expr::un(op, inline(*a, defs)),
        Expr::Binary(op, a, b) => Expr::bin(op, inline(*a, defs), inline(*b, defs)),
        Expr::Cast(t, a) => Expr::cast(t, inline(*a, defs)),
        Expr::Select { cond, then, els } => {
            Expr::select(inline(*cond, defs), inline(*then, defs), inline(*els, defs))
        }
        e => e,
    }
}

fn depends(e: &Expr, x: VarId) -> bool {
    match e {
        Expr::Var(v) => *v == x,
        Expr::Lit(_) => false,
        Expr::Load { index, .. } => depends(index, x),
        Expr::Unary(_, a) | Expr::Cast(_, a) => depends(a, x),
        Expr::Binary(_, a, b) => depends(a, x) || depends(b, x),
        Expr::Select { cond, then, els } => depends(cond, x) || depends(then, x) || depends(els, x),
    }
}

/// An epilogue operand: an `f32` literal, element 0 of an `f32` parameter or of an 8-bit one
/// read as `f32` (a zero point), or a per-channel `f32` parameter read at [`CHANNEL`].
fn ep_arg(e: &Expr, k: &Kernel) -> Option<EpArg> {
    let dtype = |p: &ParamId| k.params.get(p.0 as usize).map(|p| p.dtype);
    match e {
        Expr::Lit(Lit::Float(DType::F32, v)) => Some(EpArg::Lit(*v as f32)),
        Expr::Load { param, index } if **index == Expr::idx(0) => {
            (dtype(param) == Some(DType::F32)).then_some(EpArg::Scalar(*param))
        }
        Expr::Load { param, index } if **index == Expr::Var(CHANNEL) => {
            (dtype(param) == Some(DType::F32)).then_some(EpArg::Channel(*param))
        }
        Expr::Cast(DType::F32, a) => match &**a {
            Expr::Load { param, index }
                if **index == Expr::idx(0)
                    && matches!(dtype(param), Some(DType::U8 | DType::I8)) =>
            {
                Some(EpArg::Scalar(*param))
            }
            _ => None,
        },
        _ => None,
    }
}

/// The operations computing `e` from `v` (held in the epilogue's `x`), when `e` is one.
fn ep_ops(e: &Expr, v: &Expr, x: VarId, k: &Kernel) -> Option<Vec<EpOp>> {
    if e == v {
        return Some(vec![]);
    }
    // ReLU as `ew.relu` lowers it, `y < 0 ? 0 : y`: `max(y, 0)`, NaN-propagating like the
    // select (only the sign of a zero result may differ).
    if let Expr::Select { cond, then, els } = e
        && let Expr::Binary(BinOp::Lt, y, zero) = &**cond
        && y == els
        && **zero == Expr::float(DType::F32, 0.0)
        && **then == Expr::float(DType::F32, 0.0)
        && k_type(y, k) == Some(DType::F32)
    {
        let mut ops = ep_ops(y, v, x, k)?;
        ops.push(EpOp::Bin {
            op: BinOp::Max,
            arg: EpArg::Lit(0.0),
            arg_first: false,
        });
        return Some(ops);
    }
    // Sigmoid as `ew.sigmoid` lowers it, `1 / (1 + exp(-y))` (swish is a gate of it).
    let one = Expr::float(DType::F32, 1.0);
    if let Expr::Binary(BinOp::Div, n, d) = e
        && **n == one
        && let Expr::Binary(BinOp::Add, n1, ex) = &**d
        && **n1 == one
        && let Expr::Unary(UnOp::Exp, neg) = &**ex
        && let Expr::Unary(UnOp::Neg, y) = &**neg
        && k_type(y, k) == Some(DType::F32)
    {
        let mut ops = ep_ops(y, v, x, k)?;
        ops.push(EpOp::Sigmoid);
        return Some(ops);
    }
    // A quantization's rounding, and an integer stored and read back as f32.
    if let Expr::Unary(UnOp::Round, y) = e
        && k_type(y, k) == Some(DType::F32)
    {
        let mut ops = ep_ops(y, v, x, k)?;
        ops.push(EpOp::Round);
        return Some(ops);
    }
    if let Expr::Cast(DType::F32, n) = e
        && let Expr::Cast(t @ (DType::U8 | DType::I8 | DType::I32), y) = &**n
        && k_type(y, k) == Some(DType::F32)
    {
        let mut ops = ep_ops(y, v, x, k)?;
        ops.push(EpOp::Narrow(*t));
        return Some(ops);
    }
    let Expr::Binary(op, a, b) = e else {
        return None;
    };
    if !EpOp::allowed(*op) || k_type(a, k) != Some(DType::F32) {
        return None;
    }
    let (da, db) = (depends(a, x), depends(b, x));
    let one = |dep: &Expr, arg: &Expr, arg_first: bool| {
        let mut ops = ep_ops(dep, v, x, k)?;
        ops.push(EpOp::Bin {
            op: *op,
            arg: ep_arg(arg, k)?,
            arg_first,
        });
        Some(ops)
    };
    // A gate: `first` is computed from `v`, then `second` from `first`; the saved register
    // keeps `first` while `x` becomes `second`. Nested gates are not expressed. A gate that
    // quantizes inside (EfficientNet's QDQ SiLU, `x · DQ(Q(sigmoid(x)))`) after a narrowing
    // is a function of that byte: the CPU backend makes the run one table
    // (`tabulate_epilogues`; as ~25 separate steps it ran 0.9–1.2 ms per layer, against ~0.6
    // as its own kernel).
    let gate = |first: &Expr, second: &Expr, saved_first: bool| {
        let mut ops = ep_ops(first, v, x, k)?;
        let inner = ep_ops(second, first, x, k)?;
        if inner.iter().any(|o| {
            !matches!(
                o,
                EpOp::Bin { .. } | EpOp::Sigmoid | EpOp::Round | EpOp::Narrow(_)
            )
        }) {
            return None;
        }
        ops.push(EpOp::Save);
        ops.extend(inner);
        ops.push(EpOp::Combine {
            op: *op,
            saved_first,
        });
        Some(ops)
    };
    match (da, db) {
        (true, false) => one(a, b, false),
        (false, true) => one(b, a, true),
        (true, true) => gate(a, b, true).or_else(|| gate(b, a, false)),
        (false, false) => None,
    }
}

/// The type of an epilogue expression, `f32` for the value itself.
fn k_type(e: &Expr, k: &Kernel) -> Option<DType> {
    match e {
        Expr::Var(v) if v.0 as usize >= k.vars.len() => Some(DType::F32),
        Expr::Var(_) => None,
        Expr::Binary(_, a, _) | Expr::Unary(_, a) => k_type(a, k),
        Expr::Cast(t, _) => Some(*t),
        Expr::Lit(l) => Some(l.ty()),
        Expr::Load { param, .. } => k.params.get(param.0 as usize).map(|p| p.dtype),
        _ => None,
    }
}

/// Windows of at most this many taps (5×5) are unrolled into one vector loop over the output
/// row; larger ones accumulate a row per tap (5×5 unrolled measured ~10% faster than per-tap
/// rows on PP-LCNet's 14×14 maps).
const MAX_UNROLLED_TAPS: usize = 25;

/// The depthwise convolution's body for small windows: one vector loop over the output row
/// whose body sums every tap into a register (`acc = bias; acc += x·w` per tap), so each
/// output is stored once.
///
/// The channel's weights and bias are loaded once per channel, before the spatial loops, so
/// the vector loop holds only input loads and multiply-adds. With unit vertical stride and
/// dilation, [`DEPTHWISE_ROWS`] output rows share one vector loop: neighbouring rows read
/// mostly the same input rows, and each input vector is loaded once for all of them (3×3:
/// 12 loads for 18 multiply-adds instead of 18).
#[allow(clippy::too_many_arguments)]
fn depthwise_unrolled(
    cx: &mut Cx,
    node: &Node,
    mut kb: KernelBuilder,
    (xp, wp, bp): (ParamId, ParamId, Option<ParamId>),
    out: BufId,
    g: &Geom,
    (n, c, m, mg): (usize, usize, usize, usize),
    (ph, pw): (usize, usize),
) -> Result<(), Fail> {
    let ty = cx.dtype(
        node.input(0)
            .ok_or(Fail::Unsupported("missing input".into()))?,
    );
    let op_ = kb.param(&cx.p, out, Access::Write);
    let (oh, ow) = (g.out[0], g.out[1]);
    let (kh, kw) = (g.k[0], g.k[1]);
    let (nv, mv) = (kb.var(DType::I64), kb.var(DType::I64));
    // Per channel: the bias and every tap's weight, as scalars the vector loop broadcasts.
    let mut per_channel = Vec::new();
    let bias = bp.map(|p| {
        let v = kb.var(ty);
        per_channel.push(Stmt::Let {
            var: v,
            value: Expr::load(p, Expr::var(mv)),
        });
        v
    });
    let weights: Vec<VarId> = (0..kh * kw)
        .map(|t| {
            let v = kb.var(ty);
            per_channel.push(Stmt::Let {
                var: v,
                value: Expr::load(
                    wp,
                    Expr::add_idx(
                        Expr::mul_idx(Expr::var(mv), (kh * kw) as i64),
                        Expr::idx(t as i64),
                    ),
                ),
            });
            v
        })
        .collect();
    let rows = if g.stride[0] == 1 && g.dil[0] == 1 && oh >= DEPTHWISE_ROWS {
        DEPTHWISE_ROWS
    } else {
        1
    };
    let cin = channel_group(mv, mg);
    let plane = Expr::mul_idx(
        Expr::add_idx(Expr::mul_idx(Expr::var(nv), c as i64), cin),
        (ph * pw) as i64,
    );
    let out_plane = Expr::mul_idx(
        Expr::add_idx(Expr::mul_idx(Expr::var(nv), m as i64), Expr::var(mv)),
        (oh * ow) as i64,
    );
    // One row loop over blocks of `r` output rows starting at row `first`.
    let row_loop = |kb: &mut KernelBuilder, first: usize, count: usize, r: usize| {
        let (y, xo) = (kb.var(DType::I64), kb.var(DType::I64));
        // Output row `i` of the block.
        let out_row = |i: usize| {
            Expr::add_idx(
                Expr::mul_idx(Expr::var(y), r as i64),
                Expr::idx((first + i) as i64),
            )
        };
        let mut body = Vec::new();
        // Each distinct input vector (row offset from the block's first input row, column
        // offset) is loaded once.
        let mut loaded: std::collections::BTreeMap<(usize, usize), VarId> = Default::default();
        let accs: Vec<VarId> = (0..r).map(|_| kb.var(ty)).collect();
        let mut started = vec![false; r];
        for (i, &acc) in accs.iter().enumerate() {
            for ky in 0..kh {
                for kx in 0..kw {
                    let (ro, co) = (i * g.stride[0] + ky * g.dil[0], kx * g.dil[1]);
                    let xv = *loaded.entry((ro, co)).or_insert_with(|| {
                        let v = kb.var(ty);
                        let row = Expr::mul_idx(
                            Expr::add_idx(
                                Expr::mul_idx(out_row(0), g.stride[0] as i64),
                                Expr::idx(ro as i64),
                            ),
                            pw as i64,
                        );
                        let col = Expr::add_idx(
                            Expr::mul_idx(Expr::var(xo), g.stride[1] as i64),
                            Expr::idx(co as i64),
                        );
                        body.push(Stmt::Let {
                            var: v,
                            value: Expr::load(
                                xp,
                                Expr::add_idx(Expr::add_idx(plane.clone(), row), col),
                            ),
                        });
                        v
                    });
                    let prod =
                        Expr::bin(BinOp::Mul, Expr::var(xv), Expr::var(weights[ky * kw + kx]));
                    body.push(if started[i] {
                        Stmt::Assign {
                            var: acc,
                            value: Expr::bin(BinOp::Add, Expr::var(acc), prod),
                        }
                    } else {
                        started[i] = true;
                        // The first tap defines the accumulator (bias + x·w), so it is a
                        // vector from the start.
                        let init = match bias {
                            Some(b) => Expr::var(b),
                            None => Expr::float(ty, 0.0),
                        };
                        Stmt::Let {
                            var: acc,
                            value: Expr::bin(BinOp::Add, init, prod),
                        }
                    });
                }
            }
        }
        // Row `i`'s store is the first row's index plus a literal `i·ow` (kept even when 0),
        // the form in which backends see that the rows' stores never meet.
        let first_row = Expr::add_idx(
            Expr::add_idx(out_plane.clone(), Expr::mul_idx(out_row(0), ow as i64)),
            Expr::var(xo),
        );
        for (i, &acc) in accs.iter().enumerate() {
            let dst = if r == 1 {
                first_row.clone()
            } else {
                Expr::bin(BinOp::Add, first_row.clone(), Expr::idx((i * ow) as i64))
            };
            body.push(Stmt::Store {
                param: op_,
                index: dst,
                value: Expr::var(acc),
            });
        }
        lp(
            y,
            count,
            LoopKind::Serial,
            lp(xo, ow, LoopKind::Vector, body),
        )
    };
    let blocks = oh / rows;
    let mut chan = per_channel;
    chan.extend(row_loop(&mut kb, 0, blocks, rows));
    if blocks * rows < oh {
        chan.extend(row_loop(&mut kb, blocks * rows, oh - blocks * rows, 1));
    }
    kb.k.body = nest_vars(&[nv, mv], &[n, m], chan);
    cx.launch(kb, node);
    Ok(())
}

/// Output rows a unit-stride depthwise vector loop computes together (see
/// [`depthwise_unrolled`]).
const DEPTHWISE_ROWS: usize = 2;

fn nest_vars(vars: &[VarId], extents: &[usize], body: Vec<Stmt>) -> Vec<Stmt> {
    let first = (0..extents.len()).find(|&d| extents[d] != 1);
    let kinds: Vec<LoopKind> = (0..extents.len())
        .map(|d| {
            if Some(d) == first {
                LoopKind::Parallel
            } else {
                LoopKind::Serial
            }
        })
        .collect();
    super::wrap_loops(vars, extents, &kinds, body)
}

/// Depthwise (one input channel per group) convolution as direct loops (any rank).
#[allow(clippy::too_many_arguments)]
fn conv_direct(
    cx: &mut Cx,
    node: &Node,
    x: mlc_ir::ValueId,
    w: mlc_ir::ValueId,
    bias: Option<mlc_ir::ValueId>,
    out: BufId,
    g: &Geom,
    ins: &[usize],
    n: usize,
    c: usize,
    m: usize,
    group: usize,
) -> Result<(), Fail> {
    let ty = cx.dtype(x);
    let mut kb = KernelBuilder::new(format!("{}_direct", kernel_name(&node.op)));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let wp = kb.param(&cx.p, cx.buf(w)?, Access::Read);
    let bp = cx.opt_param(&mut kb, bias, Access::Read)?;
    let op_ = kb.param(&cx.p, out, Access::Write);
    let body = DirectConv {
        g,
        ins,
        dims: (n, c, m, group),
        acc_ty: ty,
        zero: Expr::float(ty, 0.0),
    }
    .body(
        &mut kb,
        |mv| match bp {
            Some(p) => Expr::load(p, Expr::var(mv)),
            None => Expr::float(ty, 0.0),
        },
        |_, src, widx| Expr::bin(BinOp::Mul, Expr::load(xp, src), Expr::load(wp, widx)),
        |acc, _| acc,
        op_,
    );
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// The loop nest every direct convolution shares: parallel over (output channel, image,
/// output position…), serial over (input channel of the group, taps…) — the channel loop
/// omitted when each group has one input channel (depthwise). Taps outside the input add
/// `zero`.
struct DirectConv<'a> {
    g: &'a Geom,
    ins: &'a [usize],
    /// `(n, c, m, group)`.
    dims: (usize, usize, usize, usize),
    acc_ty: DType,
    zero: Expr,
}

impl DirectConv<'_> {
    /// `init(m)` starts output channel `m`'s sum, `term(m, x_index, w_index)` is one tap's
    /// summand and `finish(sum, m)` the value stored.
    fn body(
        &self,
        kb: &mut KernelBuilder,
        init: impl Fn(VarId) -> Expr,
        term: impl Fn(VarId, Expr, Expr) -> Expr,
        finish: impl Fn(Expr, VarId) -> Expr,
        op_: ParamId,
    ) -> Vec<Stmt> {
        let (g, ins) = (self.g, self.ins);
        let (n, c, m, group) = self.dims;
        let s = ins.len();
        let ihw: usize = ins.iter().product();
        let ohw: usize = g.out.iter().product();
        let kk: usize = g.k.iter().product();
        let (ist, ost, kst) = (strides(ins), strides(&g.out), strides(&g.k));
        let (cg, mg) = (c / group, m / group);
        let mut ext = vec![m, n];
        ext.extend_from_slice(&g.out);
        nest(kb, &ext, LoopKind::Parallel, |kb, v| {
            let (mv, nv, ov) = (v[0], v[1], &v[2..]);
            let acc = kb.var(self.acc_ty);
            let mut red = if cg == 1 { vec![] } else { vec![cg] };
            red.extend_from_slice(&g.k);
            let inner = nest(kb, &red, LoopKind::Serial, |_, rv| {
                // The input plane and weight row of this tap's input channel.
                let (mut src, mut widx) = if cg == 1 {
                    (
                        Expr::add_idx(
                            Expr::mul_idx(Expr::var(nv), (c * ihw) as i64),
                            Expr::mul_idx(channel_group(mv, mg), ihw as i64),
                        ),
                        Expr::mul_idx(Expr::var(mv), kk as i64),
                    )
                } else {
                    let c0 = Expr::mul_idx(channel_group(mv, mg), cg as i64);
                    (
                        Expr::add_idx(
                            Expr::mul_idx(Expr::var(nv), (c * ihw) as i64),
                            Expr::mul_idx(Expr::add_idx(c0, Expr::var(rv[0])), ihw as i64),
                        ),
                        Expr::add_idx(
                            Expr::mul_idx(Expr::var(mv), (cg * kk) as i64),
                            Expr::mul_idx(Expr::var(rv[0]), kk as i64),
                        ),
                    )
                };
                let kv = &rv[rv.len() - s..];
                let mut ok = Expr::Lit(Lit::Bool(true));
                for d in 0..s {
                    let (pos, inside) = tap(ov[d], kv[d], g, d, ins[d]);
                    src = Expr::add_idx(src, Expr::mul_idx(pos, ist[d]));
                    ok = and(ok, inside);
                    widx = Expr::add_idx(widx, Expr::mul_idx(Expr::var(kv[d]), kst[d]));
                }
                let prod = term(mv, src, widx);
                let term = match ok {
                    Expr::Lit(Lit::Bool(true)) => prod,
                    ok => Expr::select(ok, prod, self.zero.clone()),
                };
                vec![Stmt::Assign {
                    var: acc,
                    value: Expr::bin(BinOp::Add, Expr::var(acc), term),
                }]
            });
            let mut dst = Expr::add_idx(
                Expr::mul_idx(Expr::var(nv), (m * ohw) as i64),
                Expr::mul_idx(Expr::var(mv), ohw as i64),
            );
            for d in 0..s {
                dst = Expr::add_idx(dst, Expr::mul_idx(Expr::var(ov[d]), ost[d]));
            }
            let mut stmts = vec![Stmt::Let {
                var: acc,
                value: init(mv),
            }];
            stmts.extend(inner);
            stmts.push(Stmt::Store {
                param: op_,
                index: dst,
                value: finish(Expr::var(acc), mv),
            });
            stmts
        })
    }
}

/// A half-precision convolution as direct loops that widen every operand to `f32`, sum the
/// products over `(channel of the group, taps…)` in `f32`, add the bias, and round once to the
/// output type, as the interpreter computes it. Half-precision convolutions are rare enough
/// that they take no GEMM path.
#[allow(clippy::too_many_arguments)]
fn conv_half(
    cx: &mut Cx,
    node: &Node,
    (x, w, bias): (mlc_ir::ValueId, mlc_ir::ValueId, Option<mlc_ir::ValueId>),
    out: BufId,
    g: &Geom,
    ins: &[usize],
    dims: (usize, usize, usize, usize),
) -> Result<(), Fail> {
    let ty = cx.dtype(x);
    let ct = DType::F32;
    let (wty, bty) = (cx.dtype(w), bias.map(|b| cx.dtype(b)));
    let mut kb = KernelBuilder::new(format!("{}_direct", kernel_name(&node.op)));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let wp = kb.param(&cx.p, cx.buf(w)?, Access::Read);
    let bp = cx.opt_param(&mut kb, bias, Access::Read)?;
    let op_ = kb.param(&cx.p, out, Access::Write);
    let widen = |e: Expr, t: DType| if t != ct { Expr::cast(ct, e) } else { e };
    let body = DirectConv {
        g,
        ins,
        dims,
        acc_ty: ct,
        zero: Expr::float(ct, 0.0),
    }
    .body(
        &mut kb,
        |_| Expr::float(ct, 0.0),
        |_, src, widx| {
            Expr::bin(
                BinOp::Mul,
                widen(Expr::load(xp, src), ty),
                widen(Expr::load(wp, widx), wty),
            )
        },
        |acc, mv| {
            let y = match (bp, bty) {
                (Some(p), Some(t)) => {
                    Expr::bin(BinOp::Add, acc, widen(Expr::load(p, Expr::var(mv)), t))
                }
                _ => acc,
            };
            Expr::cast(ty, y)
        },
        op_,
    );
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// One tap of a pooling window over plane `pv`: the input element, whether it lies inside the
/// input, and its (clamped) coordinate in each spatial dim.
fn window_tap(
    pv: VarId,
    ov: &[VarId],
    kv: &[VarId],
    g: &Geom,
    ins: &[usize],
) -> (Expr, Expr, Vec<Expr>) {
    let ihw: usize = ins.iter().product();
    let ist = strides(ins);
    let mut src = Expr::mul_idx(Expr::var(pv), ihw as i64);
    let mut ok = Expr::Lit(Lit::Bool(true));
    let mut at = Vec::with_capacity(ins.len());
    for d in 0..ins.len() {
        let (pos, inside) = tap(ov[d], kv[d], g, d, ins[d]);
        src = Expr::add_idx(src, Expr::mul_idx(pos.clone(), ist[d]));
        ok = and(ok, inside);
        at.push(pos);
    }
    (src, ok, at)
}

/// An average pool's divisors ([`separable_pool_2d`]); the tables are constant buffers, then
/// the kernel's parameters bound to them.
enum Divisor<T> {
    /// The same tap count for every window.
    Same(f64),
    /// The counts down (per output row) and across (per output column).
    Tables(T, T),
}

/// What a pooling window computes.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum PoolKind {
    Max,
    Avg {
        count_include_pad: bool,
    },
    /// `(Σ |x|^p)^(1/p)`; padding contributes nothing.
    Lp(f32),
}

/// Max or average pooling over windows (`global`: one window covering every spatial dim).
pub(super) fn pool(
    cx: &mut Cx,
    node: &Node,
    window: Option<&Window>,
    max: bool,
    count_include_pad: bool,
) -> Result<(), Fail> {
    let kind = if max {
        PoolKind::Max
    } else {
        PoolKind::Avg { count_include_pad }
    };
    pool_kind(cx, node, window, kind)
}

/// Pooling of any [`PoolKind`] over windows (`None`: one window covering every spatial dim).
pub(super) fn pool_kind(
    cx: &mut Cx,
    node: &Node,
    window: Option<&Window>,
    kind: PoolKind,
) -> Result<(), Fail> {
    let max = kind == PoolKind::Max;
    let count_include_pad = matches!(
        kind,
        PoolKind::Avg {
            count_include_pad: true
        }
    );
    let Some(x) = node.input(0) else {
        return unsupported("missing input");
    };
    if node.outputs.len() > 1 {
        return unsupported("max-pool indices output");
    }
    let xs = cx.shape(x)?;
    let ty = cx.dtype(x);
    let int_max = max && ty.is_int() && !ty.is_storage_only();
    if (!ty.is_float() || ty.is_storage_only()) && !int_max {
        return unsupported(format!("pooling on {}", ty.name()));
    }
    let ins = xs[2..].to_vec();
    let s = ins.len();
    let g = match window {
        Some(w) => geometry(
            &ins,
            &w.kernel,
            &w.strides,
            &w.dilations,
            &w.pads,
            w.auto_pad,
            w.ceil_mode,
        )?,
        None => Geom {
            out: vec![1; s],
            pad: vec![0; s],
            pad_end: vec![0; s],
            k: ins.clone(),
            stride: vec![1; s],
            dil: vec![1; s],
        },
    };
    // Row-vectorized over padded planes: f32, and the 8-bit integers of quantized models
    // (whose max pools run on the integers, `pool-before-dequantize`).
    let rows = ty == DType::F32 || matches!(ty, DType::U8 | DType::I8);
    if s == 2
        && window.is_some()
        && ((max && rows)
            || (kind != PoolKind::Max && !matches!(kind, PoolKind::Lp(_)) && ty == DType::F32))
    {
        return separable_pool_2d(cx, node, x, &g, &xs, kind);
    }
    let acc_ty = if matches!(ty, DType::F16 | DType::BF16) {
        DType::F32
    } else {
        ty
    };
    // The tap count (average pooling's divisor) is a float even when max-pooling integers.
    let cnt_ty = if acc_ty.is_float() {
        acc_ty
    } else {
        DType::F32
    };
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let ohw: usize = g.out.iter().product();
    let ost = strides(&g.out);
    let mut ext = vec![xs[0] * xs[1]];
    ext.extend_from_slice(&g.out);
    let body = nest(&mut kb, &ext, LoopKind::Parallel, |kb, v| {
        let (pv, ov) = (v[0], &v[1..]);
        let acc = kb.var(acc_ty);
        let cnt = kb.var(cnt_ty);
        let widen = |e: Expr| {
            if acc_ty != ty {
                Expr::cast(acc_ty, e)
            } else {
                e
            }
        };
        let init = if int_max {
            super::reduce::min_of(ty)
        } else {
            Expr::float(acc_ty, if max { f64::NEG_INFINITY } else { 0.0 })
        };
        let taps = g.k.clone();
        let inner = nest(kb, &taps, LoopKind::Serial, |_, kv| {
            let (src, ok, _) = window_tap(pv, ov, kv, &g, &ins);
            // With count_include_pad, the taps that count: inside the input or its pads.
            let mut in_pads = Expr::Lit(Lit::Bool(true));
            for d in 0..s {
                let limit = (ins[d] + g.pad_end[d]) as i64;
                let last = ((g.out[d] - 1) * g.stride[d] + (g.k[d] - 1) * g.dil[d]) as i64
                    - g.pad[d] as i64;
                if count_include_pad && last >= limit {
                    let raw = Expr::add_idx(
                        Expr::add_idx(
                            Expr::mul_idx(Expr::var(ov[d]), g.stride[d] as i64),
                            Expr::mul_idx(Expr::var(kv[d]), g.dil[d] as i64),
                        ),
                        Expr::idx(-(g.pad[d] as i64)),
                    );
                    in_pads = and(in_pads, Expr::bin(BinOp::Lt, raw, Expr::idx(limit)));
                }
            }
            let xv = widen(Expr::load(xp, src));
            let (a, cv) = (Expr::var(acc), Expr::var(cnt));
            let (upd, cnt_upd) = if max {
                (Expr::bin(BinOp::Max, a.clone(), xv), cv.clone())
            } else if let PoolKind::Lp(p) = kind {
                let t = Expr::bin(
                    BinOp::Pow,
                    Expr::un(UnOp::Abs, xv),
                    Expr::float(acc_ty, p as f64),
                );
                (Expr::bin(BinOp::Add, a.clone(), t), cv.clone())
            } else {
                (
                    Expr::bin(BinOp::Add, a.clone(), xv),
                    Expr::bin(BinOp::Add, cv.clone(), Expr::float(cnt_ty, 1.0)),
                )
            };
            let counts = if count_include_pad {
                in_pads
            } else {
                ok.clone()
            };
            let guarded = |cond: Expr, yes: Expr, no: Expr| match cond {
                Expr::Lit(Lit::Bool(true)) => yes,
                c => Expr::select(c, yes, no),
            };
            vec![
                Stmt::Assign {
                    var: acc,
                    value: guarded(ok, upd, a),
                },
                Stmt::Assign {
                    var: cnt,
                    value: guarded(counts, cnt_upd, cv),
                },
            ]
        });
        let mut dst = Expr::mul_idx(Expr::var(pv), ohw as i64);
        for d in 0..s {
            dst = Expr::add_idx(dst, Expr::mul_idx(Expr::var(ov[d]), ost[d]));
        }
        let result = if max {
            Expr::var(acc)
        } else if let PoolKind::Lp(p) = kind {
            Expr::bin(
                BinOp::Pow,
                Expr::var(acc),
                Expr::float(acc_ty, (1.0 / p as f64) as f32 as f64),
            )
        } else {
            Expr::bin(BinOp::Div, Expr::var(acc), Expr::var(cnt))
        };
        let result = if acc_ty != ty {
            Expr::cast(ty, result)
        } else {
            result
        };
        let mut stmts = vec![
            Stmt::Let {
                var: acc,
                value: init,
            },
            Stmt::Let {
                var: cnt,
                value: Expr::float(cnt_ty, 0.0),
            },
        ];
        stmts.extend(inner);
        stmts.push(Stmt::Store {
            param: op_,
            index: dst,
            value: result,
        });
        stmts
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// Max pooling with its indices output: the first maximum in window order (a later tap must
/// be strictly greater), compared in `f32` (`f64` for `f64` inputs) as the interpreter does.
/// The index is flat over the whole input, `plane · H·W… + position`, the position counted
/// row-major, or column-major over the spatial dims under `storage_order` 1. A window with
/// no tap inside the input yields 0 at the plane's first element.
pub(super) fn max_pool_indices(
    cx: &mut Cx,
    node: &Node,
    w: &Window,
    col_major: bool,
) -> Result<(), Fail> {
    let Some(x) = node.input(0) else {
        return unsupported("missing input");
    };
    let xs = cx.shape(x)?;
    let ty = cx.dtype(x);
    if ty.is_storage_only() || !(ty.is_float() || ty.is_int()) || xs.len() < 3 {
        return unsupported(format!("max pool with indices on {}{xs:?}", ty.name()));
    }
    let ins = xs[2..].to_vec();
    let s = ins.len();
    let g = geometry(
        &ins,
        &w.kernel,
        &w.strides,
        &w.dilations,
        &w.pads,
        w.auto_pad,
        w.ceil_mode,
    )?;
    let ct = if ty == DType::F64 { ty } else { DType::F32 };
    let ity = cx.dtype(node.outputs[1]);
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let iout = cx.new_buffer(node.outputs[1], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let ip = kb.param(&cx.p, iout, Access::Write);
    let ihw: usize = ins.iter().product();
    let ohw: usize = g.out.iter().product();
    let (ist, ost) = (strides(&ins), strides(&g.out));
    let idx_st: Vec<i64> = if col_major {
        let mut st = vec![1i64; s];
        for d in 1..s {
            st[d] = st[d - 1] * ins[d - 1] as i64;
        }
        st
    } else {
        ist.clone()
    };
    let mut ext = vec![xs[0] * xs[1]];
    ext.extend_from_slice(&g.out);
    let body = nest(&mut kb, &ext, LoopKind::Parallel, |kb, v| {
        let (pv, ov) = (v[0], &v[1..]);
        let (acc, best) = (kb.var(ct), kb.var(DType::I64));
        let inner = nest(kb, &g.k.clone(), LoopKind::Serial, |kb, kv| {
            let (src, ok, pos) = window_tap(pv, ov, kv, &g, &ins);
            let mut flat = Expr::idx(0);
            for (p, &st) in pos.into_iter().zip(&idx_st) {
                flat = Expr::add_idx(flat, Expr::mul_idx(p, st));
            }
            let xv = kb.var(ct);
            let load = Expr::load(xp, src);
            let first = Expr::bin(BinOp::Lt, Expr::var(best), Expr::idx(0));
            let greater = Expr::bin(BinOp::Gt, Expr::var(xv), Expr::var(acc));
            // Decided once, before either running value changes.
            let take = kb.var(DType::Bool);
            vec![
                Stmt::Let {
                    var: xv,
                    value: if ct != ty { Expr::cast(ct, load) } else { load },
                },
                Stmt::Let {
                    var: take,
                    value: and(ok, Expr::bin(BinOp::Or, first, greater)),
                },
                Stmt::Assign {
                    var: acc,
                    value: Expr::select(Expr::var(take), Expr::var(xv), Expr::var(acc)),
                },
                Stmt::Assign {
                    var: best,
                    value: Expr::select(Expr::var(take), flat, Expr::var(best)),
                },
            ]
        });
        let mut dst = Expr::mul_idx(Expr::var(pv), ohw as i64);
        for d in 0..s {
            dst = Expr::add_idx(dst, Expr::mul_idx(Expr::var(ov[d]), ost[d]));
        }
        let none = Expr::bin(BinOp::Lt, Expr::var(best), Expr::idx(0));
        let value = Expr::select(none.clone(), Expr::float(ct, 0.0), Expr::var(acc));
        let index = Expr::add_idx(
            Expr::mul_idx(Expr::var(pv), ihw as i64),
            Expr::select(none, Expr::idx(0), Expr::var(best)),
        );
        let mut stmts = vec![
            Stmt::Let {
                var: acc,
                value: Expr::float(ct, 0.0),
            },
            Stmt::Let {
                var: best,
                value: Expr::idx(-1),
            },
        ];
        stmts.extend(inner);
        stmts.push(Stmt::Store {
            param: op_,
            index: dst.clone(),
            value: if ct != ty {
                Expr::cast(ty, value)
            } else {
                value
            },
        });
        stmts.push(Stmt::Store {
            param: ip,
            index: dst,
            value: if ity != DType::I64 {
                Expr::cast(ity, index)
            } else {
                index
            },
        });
        stmts
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// Transposed convolution as direct loops in gather form: output position `o` receives input
/// position `i` through tap `k` when `o + pad = i*stride + k*dilation`, so each output element
/// sums over the channels of its group and the taps whose `i` is integral and inside the input.
/// Pads are signed (a negative end pad extends the output with zeros).
#[allow(clippy::too_many_arguments)]
pub(super) fn conv_transpose(
    cx: &mut Cx,
    node: &Node,
    strides_: &[usize],
    dil: &[usize],
    pads: &[i64],
    output_padding: &[usize],
    group: usize,
    auto_pad: AutoPad,
) -> Result<(), Fail> {
    let (Some(x), Some(w)) = (node.input(0), node.input(1)) else {
        return unsupported("missing input");
    };
    let (xs, ws) = (cx.shape(x)?, cx.shape(w)?);
    let ty = cx.dtype(x);
    if !ty.is_float() || ty.is_storage_only() || xs.len() < 3 || ws.len() != xs.len() {
        return unsupported("transposed convolution needs float [N, C, D...] operands");
    }
    let s = xs.len() - 2;
    let (n, c, mg) = (xs[0], xs[1], ws[1]);
    if group == 0 || c % group != 0 || ws[0] != c {
        return unsupported("transposed convolution shapes that do not fit the groups");
    }
    let (cg, m) = (c / group, mg * group);
    let (ins, ks) = (&xs[2..], &ws[2..]);
    let pick = |v: &[usize], i: usize| v.get(i).copied().unwrap_or(1);
    let mut pb = Vec::with_capacity(s);
    for i in 0..s {
        let p = (
            pads.get(i).copied().unwrap_or(0),
            pads.get(s + i).copied().unwrap_or(0),
        );
        let op = output_padding.get(i).copied().unwrap_or(0);
        let (_, b, _) = window_dim_t(
            ins[i],
            ks[i],
            pick(strides_, i),
            pick(dil, i),
            op,
            p,
            auto_pad,
        )?;
        pb.push(b);
    }
    let outs = cx.shape(node.outputs[0])?[2..].to_vec();
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let wp = kb.param(&cx.p, cx.buf(w)?, Access::Read);
    let bp = match node.input(2) {
        Some(b) => Some(kb.param(&cx.p, cx.buf(b)?, Access::Read)),
        None => None,
    };
    let op_ = kb.param(&cx.p, out, Access::Write);
    let (ihw, ohw, kk) = (
        ins.iter().product::<usize>(),
        outs.iter().product::<usize>(),
        ks.iter().product::<usize>(),
    );
    let (ist, ost, kst) = (strides(ins), strides(&outs), strides(ks));
    let mut ext = vec![n, m];
    ext.extend_from_slice(&outs);
    let body = nest(&mut kb, &ext, LoopKind::Parallel, |kb, v| {
        let (nv, mv, ov) = (v[0], v[1], &v[2..]);
        let acc = kb.var(ty);
        let gi = channel_group(mv, mg);
        let mi = Expr::bin(BinOp::Rem, Expr::var(mv), Expr::idx(mg as i64));
        let mut inner_ext = vec![cg];
        inner_ext.extend_from_slice(ks);
        let inner = nest(kb, &inner_ext, LoopKind::Serial, |_, iv| {
            let (cv, kv) = (iv[0], &iv[1..]);
            let ch = Expr::add_idx(Expr::mul_idx(gi.clone(), cg as i64), Expr::var(cv));
            let mut src = Expr::mul_idx(
                Expr::add_idx(Expr::mul_idx(Expr::var(nv), c as i64), ch.clone()),
                ihw as i64,
            );
            let mut widx = Expr::mul_idx(
                Expr::add_idx(Expr::mul_idx(ch, mg as i64), mi.clone()),
                kk as i64,
            );
            let mut ok = Expr::Lit(Lit::Bool(true));
            for d in 0..s {
                let (st, dl) = (pick(strides_, d) as i64, pick(dil, d) as i64);
                let pos = Expr::add_idx(
                    Expr::add_idx(Expr::var(ov[d]), Expr::idx(pb[d])),
                    Expr::mul_idx(Expr::var(kv[d]), -dl),
                );
                let i = Expr::bin(BinOp::Div, pos.clone(), Expr::idx(st));
                let mut inside = and(
                    Expr::bin(BinOp::Ge, pos.clone(), Expr::idx(0)),
                    Expr::bin(BinOp::Lt, i.clone(), Expr::idx(ins[d] as i64)),
                );
                if st > 1 {
                    let exact = Expr::bin(
                        BinOp::Eq,
                        Expr::bin(BinOp::Rem, pos, Expr::idx(st)),
                        Expr::idx(0),
                    );
                    inside = and(inside, exact);
                }
                ok = and(ok, inside);
                let clamped = Expr::bin(
                    BinOp::Max,
                    Expr::bin(BinOp::Min, i, Expr::idx(ins[d] as i64 - 1)),
                    Expr::idx(0),
                );
                src = Expr::add_idx(src, Expr::mul_idx(clamped, ist[d]));
                widx = Expr::add_idx(widx, Expr::mul_idx(Expr::var(kv[d]), kst[d]));
            }
            let prod = Expr::bin(BinOp::Mul, Expr::load(xp, src), Expr::load(wp, widx));
            vec![Stmt::Assign {
                var: acc,
                value: Expr::bin(
                    BinOp::Add,
                    Expr::var(acc),
                    Expr::select(ok, prod, Expr::float(ty, 0.0)),
                ),
            }]
        });
        let mut dst = Expr::mul_idx(
            Expr::add_idx(Expr::mul_idx(Expr::var(nv), m as i64), Expr::var(mv)),
            ohw as i64,
        );
        for d in 0..s {
            dst = Expr::add_idx(dst, Expr::mul_idx(Expr::var(ov[d]), ost[d]));
        }
        let mut stmts = vec![Stmt::Let {
            var: acc,
            value: Expr::float(ty, 0.0),
        }];
        stmts.extend(inner);
        let y = match bp {
            Some(p) => Expr::bin(BinOp::Add, Expr::var(acc), Expr::load(p, Expr::var(mv))),
            None => Expr::var(acc),
        };
        stmts.push(Stmt::Store {
            param: op_,
            index: dst,
            value: y,
        });
        stmts
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

fn window_dim_t(
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    output_padding: usize,
    pads: (i64, i64),
    auto_pad: AutoPad,
) -> Result<(usize, i64, i64), Fail> {
    mlc_ir::ops::nn::conv_transpose_dim(
        input,
        kernel,
        stride,
        dilation,
        output_padding,
        pads,
        auto_pad,
        None,
    )
    .map_err(Fail::Unsupported)
}

/// `ConvInteger`: `Σ (x - zx)(w - zw)` in i32, as im2col + one integer [`Stmt::Matmul`] per
/// (group, batch) with the zero points folded out (see the module docs); depthwise
/// convolutions as direct i32 loops.
pub(super) fn conv_integer(cx: &mut Cx, node: &Node, geom: &ConvGeom) -> Result<(), Fail> {
    let (Some(x), Some(w)) = (node.input(0), node.input(1)) else {
        return unsupported("missing input");
    };
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let (zx, zw) = (node.input(2), node.input(3));
    conv_integer_into(cx, node, geom, (x, w, zx, zw), out)
}

/// `ConvInteger` of `x` and `w` with their optional zero points into the i32 buffer `out`
/// (also the integer core of `QLinearConv`, whose operands sit at other input positions).
pub(super) fn conv_integer_into(
    cx: &mut Cx,
    node: &Node,
    geom: &ConvGeom,
    (x, w, zx, zw): (
        mlc_ir::ValueId,
        mlc_ir::ValueId,
        Option<mlc_ir::ValueId>,
        Option<mlc_ir::ValueId>,
    ),
    out: BufId,
) -> Result<(), Fail> {
    let (xs, ws) = (cx.shape(x)?, cx.shape(w)?);
    if xs.len() < 3 || ws.len() != xs.len() {
        return unsupported("integer convolution without spatial dims");
    }
    if let Some(z) = zx
        && cx.shape(z)?.iter().product::<usize>() != 1
    {
        return unsupported("integer convolution with a per-channel input zero point");
    }
    let (pads, auto_pad) = match &geom.pad {
        ConvPad::Explicit(p) => (p.clone(), AutoPad::NotSet),
        ConvPad::SameUpper => (vec![], AutoPad::SameUpper),
        ConvPad::SameLower => (vec![], AutoPad::SameLower),
    };
    let (n, c, m) = (xs[0], xs[1], ws[0]);
    let ins = &xs[2..];
    let kdims = &ws[2..];
    let g = geometry(
        ins,
        kdims,
        &geom.strides,
        &geom.dilations,
        &pads,
        auto_pad,
        false,
    )?;
    let group = geom.group.max(1);
    let (cg, mg) = (c / group, m / group);
    if cg == 1
        && ins.len() == 2
        && m.is_multiple_of(c)
        && conv_integer_depthwise(cx, node, (x, w, zx, zw), out, &g, ins, (n, c, m))?
    {
        return Ok(());
    }
    if cg == 1 {
        return conv_integer_direct(cx, node, x, w, zx, zw, out, &g, ins, n, c, m, group);
    }
    let kk: usize = kdims.iter().product();
    let ohw: usize = g.out.iter().product();
    let kdim = cg * kk;
    let wbuf = match zw {
        None => cx.buf(w)?,
        Some(z) => weights_minus_zero_point(cx, node, w, z, m, kdim)?,
    };
    let bias = match zx {
        None => None,
        Some(z) => Some(zero_point_bias(cx, node, wbuf, z, m, kdim)?),
    };
    let pad = match zx {
        Some(z) => Some(cx.buf(z)?),
        None => None,
    };
    let cols = columns(cx, node, x, &g, (ins, kdims), (group, mg), pad)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let wp = kb.param(&cx.p, wbuf, Access::Read);
    let cp = cols.params(cx, &mut kb);
    let bp = bias.map(|b| kb.param(&cx.p, b, Access::Read));
    let op_ = kb.param(&cx.p, out, Access::Write);
    kb.k.body = grouped_conv_matmuls(
        &mut kb,
        (wp, cp, bp, op_),
        (group, n, m, mg, ohw, kdim),
        &cols,
    );
    cx.launch(kb, node);
    Ok(())
}

/// A 2-D 8-bit depthwise `ConvInteger` as a [`Stmt::Depthwise`] reading the 8-bit input and
/// its zero point directly, with `w - zw` as f32 weights, storing i32: every product and
/// partial sum is an integer below 2^24 (at most 255·255 per tap, 258 taps), which f32 holds
/// exactly, so the result is the integer convolution's, computed by the runtime's vector
/// kernel instead of scalar loops (QDQ MobileNets: 13 ms → a fraction of a millisecond per
/// layer), and a requantizing tail joins its epilogue (`tail.rs`). `Ok(false)` (nothing
/// emitted) for other types or larger windows (a per-channel input zero point never reaches
/// it).
fn conv_integer_depthwise(
    cx: &mut Cx,
    node: &Node,
    (x, w, zx, zw): (
        mlc_ir::ValueId,
        mlc_ir::ValueId,
        Option<mlc_ir::ValueId>,
        Option<mlc_ir::ValueId>,
    ),
    out: BufId,
    g: &Geom,
    ins: &[usize],
    (n, c, m): (usize, usize, usize),
) -> Result<bool, Fail> {
    let eight = |t: DType| matches!(t, DType::U8 | DType::I8);
    let kk: usize = g.k.iter().product();
    if !eight(cx.dtype(x)) || !eight(cx.dtype(w)) || kk > 258 {
        return Ok(false);
    }
    if zx.is_some_and(|z| cx.dtype(z) != cx.dtype(x)) {
        return Ok(false);
    }
    let zw_len = match zw {
        Some(z) => cx.shape(z)?.iter().product::<usize>(),
        None => 1,
    };
    if zw_len != 1 && zw_len != m {
        return Ok(false);
    }
    let wf = minus_zero_point(
        cx,
        node,
        (w, zw),
        (m, kk),
        DType::F32,
        "weights_minus_zero_point",
    )?;
    let mut kb = KernelBuilder::new(format!("{}_depthwise", kernel_name(&node.op)));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let zp = match zx {
        Some(z) => Some(kb.param(&cx.p, cx.buf(z)?, Access::Read)),
        None => None,
    };
    let wp = kb.param(&cx.p, wf, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let mut st = depthwise_of(g, ins, (n, c, m), (xp, wp, None, op_));
    if let Stmt::Depthwise(dw) = &mut st {
        dw.x_zero = zp;
    }
    kb.k.body = vec![st];
    cx.launch(kb, node);
    Ok(true)
}

/// An i32 scalar from a loaded integer.
fn wide(e: Expr) -> Expr {
    Expr::cast(DType::I32, e)
}

/// `w - zw` as i32 `[M, kdim]`, `zw` per tensor or per output channel.
fn weights_minus_zero_point(
    cx: &mut Cx,
    node: &Node,
    w: mlc_ir::ValueId,
    zw: mlc_ir::ValueId,
    m: usize,
    kdim: usize,
) -> Result<BufId, Fail> {
    minus_zero_point(
        cx,
        node,
        (w, Some(zw)),
        (m, kdim),
        DType::I32,
        "weights_minus_zero_point",
    )
}

/// `v - z` (widened to i32, then `to`) as a `[rows, per]` buffer, `z` per tensor or per row.
fn minus_zero_point(
    cx: &mut Cx,
    node: &Node,
    (v, z): (mlc_ir::ValueId, Option<mlc_ir::ValueId>),
    (rows, per): (usize, usize),
    to: DType,
    name: &str,
) -> Result<BufId, Fail> {
    let buf = cx.p.add_buffer(to, vec![rows, per], BufKind::Temp);
    let mut kb = KernelBuilder::new(name);
    let vp = kb.param(&cx.p, cx.buf(v)?, Access::Read);
    let zp = match z {
        Some(z) => Some((
            kb.param(&cx.p, cx.buf(z)?, Access::Read),
            cx.shape(z)?.iter().product::<usize>() > 1,
        )),
        None => None,
    };
    let op_ = kb.param(&cx.p, buf, Access::Write);
    let body = super::loop_nest(&mut kb, &[rows, per], |_, v| {
        let idx = Expr::add_idx(Expr::mul_idx(Expr::var(v[0]), per as i64), Expr::var(v[1]));
        let mut e = wide(Expr::load(vp, idx.clone()));
        if let Some((zp, per_row)) = zp {
            let zi = if per_row {
                Expr::var(v[0])
            } else {
                Expr::idx(0)
            };
            e = Expr::bin(BinOp::Sub, e, wide(Expr::load(zp, zi)));
        }
        vec![Stmt::Store {
            param: op_,
            index: idx,
            value: if to == DType::I32 {
                e
            } else {
                Expr::cast(to, e)
            },
        }]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(buf)
}

/// `-zx · Σ_k w[m, k]` as i32 `[M]`: the input zero point's share of every output.
fn zero_point_bias(
    cx: &mut Cx,
    node: &Node,
    w: BufId,
    zx: mlc_ir::ValueId,
    m: usize,
    kdim: usize,
) -> Result<BufId, Fail> {
    let buf = cx.p.add_buffer(DType::I32, vec![m], BufKind::Temp);
    let mut kb = KernelBuilder::new("zero_point_bias");
    let wp = kb.param(&cx.p, w, Access::Read);
    let zp = kb.param(&cx.p, cx.buf(zx)?, Access::Read);
    let op_ = kb.param(&cx.p, buf, Access::Write);
    let (mv, kv, acc) = (kb.var(DType::I64), kb.var(DType::I64), kb.var(DType::I32));
    let row = Expr::mul_idx(Expr::var(mv), kdim as i64);
    kb.k.body = vec![Stmt::For {
        var: mv,
        extent: Expr::idx(m as i64),
        kind: LoopKind::Parallel,
        body: vec![
            Stmt::Let {
                var: acc,
                value: Expr::Lit(Lit::Int(DType::I32, 0)),
            },
            Stmt::For {
                var: kv,
                extent: Expr::idx(kdim as i64),
                kind: LoopKind::Serial,
                body: vec![Stmt::Assign {
                    var: acc,
                    value: Expr::bin(
                        BinOp::Add,
                        Expr::var(acc),
                        wide(Expr::load(wp, Expr::add_idx(row, Expr::var(kv)))),
                    ),
                }],
            },
            Stmt::Store {
                param: op_,
                index: Expr::var(mv),
                value: Expr::bin(
                    BinOp::Mul,
                    Expr::var(acc),
                    Expr::bin(
                        BinOp::Sub,
                        Expr::Lit(Lit::Int(DType::I32, 0)),
                        wide(Expr::load(zp, Expr::idx(0))),
                    ),
                ),
            },
        ],
    }];
    cx.launch(kb, node);
    Ok(buf)
}

/// Depthwise `ConvInteger` as direct i32 loops: `Σ (x - zx)(w - zw)`, padded taps adding 0.
#[allow(clippy::too_many_arguments)]
fn conv_integer_direct(
    cx: &mut Cx,
    node: &Node,
    x: mlc_ir::ValueId,
    w: mlc_ir::ValueId,
    zx: Option<mlc_ir::ValueId>,
    zw: Option<mlc_ir::ValueId>,
    out: BufId,
    g: &Geom,
    ins: &[usize],
    n: usize,
    c: usize,
    m: usize,
    group: usize,
) -> Result<(), Fail> {
    let zw_per_channel = match zw {
        Some(z) => cx.shape(z)?.iter().product::<usize>() > 1,
        None => false,
    };
    let mut kb = KernelBuilder::new(format!("{}_direct", kernel_name(&node.op)));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let wp = kb.param(&cx.p, cx.buf(w)?, Access::Read);
    let zxp = cx.opt_param(&mut kb, zx, Access::Read)?;
    let zwp = cx.opt_param(&mut kb, zw, Access::Read)?;
    let op_ = kb.param(&cx.p, out, Access::Write);
    let zero = || Expr::Lit(Lit::Int(DType::I32, 0));
    let body = DirectConv {
        g,
        ins,
        dims: (n, c, m, group),
        acc_ty: DType::I32,
        zero: zero(),
    }
    .body(
        &mut kb,
        |_| zero(),
        |mv, src, widx| {
            let zxv = zxp.map_or_else(zero, |p| wide(Expr::load(p, Expr::idx(0))));
            let zwv = zwp.map_or_else(zero, |p| {
                let i = if zw_per_channel {
                    Expr::var(mv)
                } else {
                    Expr::idx(0)
                };
                wide(Expr::load(p, i))
            });
            Expr::bin(
                BinOp::Mul,
                Expr::bin(BinOp::Sub, wide(Expr::load(xp, src)), zxv),
                Expr::bin(BinOp::Sub, wide(Expr::load(wp, widx)), zwv),
            )
        },
        |acc, _| acc,
        op_,
    );
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// The input channel (or group) of output channel `mv` with `mg` outputs per input: `mv / mg`,
/// just `mv` for a plain depthwise convolution (so printed kernels and the index arithmetic
/// carry no division by one).
fn channel_group(mv: VarId, mg: usize) -> Expr {
    if mg == 1 {
        Expr::var(mv)
    } else {
        Expr::bin(BinOp::Div, Expr::var(mv), Expr::idx(mg as i64))
    }
}
