//! Winograd F(2×2, 3×3) convolutions for `f32`: a 3×3, stride-1 convolution computed with 16
//! multiplies per 2×2 output tile instead of 36, so its contraction does 2.25× fewer flops.
//!
//! With `d` a 4×4 input tile, `g` a 3×3 filter and `Bᵀ`, `G`, `Aᵀ` the F(2, 3) matrices below,
//! the 2×2 output tile is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`. Summed over input channels, the
//! element-wise product becomes 16 independent matrix products, one per tile element `ξ`:
//! `M[ξ] = U[ξ] · V[ξ]` with `U[ξ]` the `[Cout, Cin]` transformed filters and `V[ξ]` the
//! `[Cin, tiles]` transformed inputs. The lowering is four steps:
//!
//! 1. the filters are transformed at compile time into a constant `U: [16, Cout, Cin]`, so run
//!    time pays nothing for them;
//! 2. the input planes are copied into zero-padded planes covering every tile
//!    ([`super::conv`]'s `pad_planes_with`), then a kernel computes `V: [16, Cin, N·T]`
//!    (`T` tiles per image) with its innermost loop over tiles, which the CPU vectorizes;
//! 3. one kernel holds the 16 [`Stmt::Matmul`]s in a parallel loop (the runtime GEMM; each
//!    covers all batch images at once: `N·T` columns);
//! 4. a kernel computes `Y = Aᵀ M A` per tile, adds the bias and stores the 2×2 outputs
//!    (clipped at odd edges). It only stores its output, so a composite's elementwise tail
//!    goes into its stores (`tail.rs`).
//!
//! The transforms add and subtract, which rounds differently from the direct sum: results
//! agree with direct convolution to a few ulps of the sum's magnitude.
//!
//! Every step is a plain loop kernel or [`Stmt::Matmul`], so other backends (NVPTX) take it
//! as they take im2col + GEMM; nothing here is CPU-specific but the size gate, measured on
//! the CPU.

use super::{Cx, Fail, KernelBuilder, kernel_name};
use crate::kernel::*;
use mlc_ir::{DType, Node, Tensor, ValueId};

/// `G` of F(2, 3): the filter transform `U = G g Gᵀ`.
const G: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];

/// A convolution's operands and sizes as the Winograd lowering needs them.
pub(super) struct WinoConv {
    pub x: ValueId,
    pub w: ValueId,
    pub bias: Option<ValueId>,
    pub out: BufId,
    /// Batch, input channels, output channels.
    pub n: usize,
    pub c: usize,
    pub m: usize,
    pub ins: (usize, usize),
    pub outs: (usize, usize),
    /// Begin pads (top, left).
    pub pad: (usize, usize),
}

/// Below this many tiles (all batch images together: the GEMMs' columns), the transformed filters are read for too little work:
/// on ResNet-18 at one thread, 7×7 maps at 512 channels (16 tiles) measured no gain, 14×14
/// (49 tiles) and larger did.
const MIN_TILES: usize = 32;

/// Whether the Winograd form is expected to beat im2col + GEMM for these sizes.
///
/// Few channels leave the transforms (memory passes) dominating the saved flops; a tiny map
/// has few tiles per filter, so the 16 transformed filters (16/9 of the filter bytes) are read
/// for little work.
fn pays(c: &WinoConv) -> bool {
    let tiles = c.outs.0.div_ceil(2) * c.outs.1.div_ceil(2) * c.n;
    c.c >= 16 && c.m >= 16 && tiles >= MIN_TILES
}

/// The constant `U: [16, m, c]` (`ξ = 4a + b`) of a filter `g: [m, c, 3, 3]`.
fn transform_filters(g: &[f64], m: usize, c: usize) -> Vec<f32> {
    let mut u = vec![0f32; 16 * m * c];
    for mo in 0..m {
        for ci in 0..c {
            let f = &g[(mo * c + ci) * 9..][..9];
            // t = G g: 4×3.
            let mut t = [[0f64; 3]; 4];
            for (a, row) in t.iter_mut().enumerate() {
                for (s, v) in row.iter_mut().enumerate() {
                    *v = (0..3).map(|r| G[a][r] * f[r * 3 + s]).sum();
                }
            }
            for a in 0..4 {
                for b in 0..4 {
                    let v: f64 = (0..3).map(|s| t[a][s] * G[b][s]).sum();
                    u[((a * 4 + b) * m + mo) * c + ci] = v as f32;
                }
            }
        }
    }
    u
}

/// Lowers the convolution `conv` of `node` as Winograd F(2×2, 3×3) when its filter is a
/// constant and the sizes pay; `Ok(false)`, with nothing launched, otherwise.
pub(super) fn conv(cx: &mut Cx, node: &Node, conv: &WinoConv) -> Result<bool, Fail> {
    if !pays(conv) || cx.dtype(conv.x) != DType::F32 || cx.dtype(conv.w) != DType::F32 {
        return Ok(false);
    }
    let wbuf = cx.p.storage_of(cx.buf(conv.w)?);
    let BufKind::Const(ci) = cx.p.buffer(wbuf).kind else {
        return Ok(false);
    };
    let Ok(g) = cx.p.consts[ci].to_f64_vec() else {
        return Ok(false);
    };
    let WinoConv { n, c, m, .. } = *conv;
    if g.len() != m * c * 9 {
        return Ok(false);
    }
    let (ih, iw) = conv.ins;
    let (oh, ow) = conv.outs;
    let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
    // Padded planes cover every tile; the window geometry guarantees they hold the input.
    let (ph, pw) = (2 * th + 2, 2 * tw + 2);
    if ph < conv.pad.0 + ih || pw < conv.pad.1 + iw {
        return Ok(false);
    }
    let t = th * tw;
    let nt = n * t;

    let u = Tensor::from_vec(&[16, m, c], transform_filters(&g, m, c))
        .map_err(|e| Fail::Unsupported(e.to_string()))?;
    let uc = cx.p.consts.len();
    cx.p.consts.push(u);
    let ubuf =
        cx.p.add_buffer(DType::F32, vec![16, m, c], BufKind::Const(uc));

    let xb = cx.buf(conv.x)?;
    let xpad = super::conv::pad_planes_with(
        cx,
        node,
        xb,
        DType::F32,
        super::conv::Fill::Value(0.0),
        n * c,
        (ih, iw),
        conv.pad,
        (ph, pw),
    );
    let bias = match conv.bias {
        Some(b) => Some(cx.buf(b)?),
        None => None,
    };
    let geo = Geo {
        n,
        c,
        m,
        th,
        tw,
        pw,
        ph,
        outs: conv.outs,
    };
    let (vs, ms) = (spread(c * nt), spread(m * nt));
    let v = cx.p.add_buffer(DType::F32, vec![16, vs], BufKind::Temp);
    input_transform(cx, node, xpad, v, vs, &geo);

    let mbuf = cx.p.add_buffer(DType::F32, vec![16, ms], BufKind::Temp);
    let mut kb = KernelBuilder::new(format!("{}_winograd", kernel_name(&node.op)));
    let up = kb.param(&cx.p, ubuf, Access::Read);
    let vp = kb.param(&cx.p, v, Access::Read);
    let mp = kb.param(&cx.p, mbuf, Access::Write);
    let xi = kb.var(DType::I64);
    let mm = products(
        up,
        (vp, Expr::idx(0), vs),
        (mp, Expr::idx(0), ms),
        Expr::var(xi),
        m,
        c,
        nt,
    );
    kb.k.body = vec![Stmt::For {
        var: xi,
        extent: Expr::idx(16),
        kind: LoopKind::Parallel,
        body: vec![Stmt::Matmul(Box::new(mm))],
    }];
    cx.launch(kb, node);
    output_transform(cx, node, mbuf, ms, bias, conv.out, &geo);
    Ok(true)
}

/// The sizes every step shares: batch, input and output channels, tile rows and columns, the
/// padded planes' rows and row length, and the output map.
struct Geo {
    n: usize,
    c: usize,
    m: usize,
    th: usize,
    tw: usize,
    ph: usize,
    pw: usize,
    outs: (usize, usize),
}

/// The elements between consecutive `ξ` slices of `V` or `M` holding `len` each
/// ([`super::odd_lines`]). The transforms read or write all 16 slices at once; at a multiple of
/// 4 KiB apart (ResNet-18's 56×56 maps: 64·784 floats) the 16 streams fall into the same L1
/// sets, which hold 12 lines each, and evict one another.
fn spread(len: usize) -> usize {
    super::odd_lines(len, 4)
}

/// The contraction for tile element `xi`: `M[xi] = U[xi] · V[xi]`, `[m, c] × [c, cols]`, with
/// `V` and `M` given as (parameter, base offset, elements between `ξ` slices).
fn products(
    up: ParamId,
    (vp, v_base, vs): (ParamId, Expr, usize),
    (mp, m_base, ms): (ParamId, Expr, usize),
    xi: Expr,
    m: usize,
    c: usize,
    cols: usize,
) -> Matmul {
    let at = |p: ParamId, base: Expr, xs: usize| MatRef {
        param: p,
        offset: Expr::add_idx(base, Expr::mul_idx(xi.clone(), xs as i64)),
        row_stride: cols as i64,
        col_stride: 1,
    };
    Matmul {
        m,
        n: cols,
        k: c,
        a: MatRef {
            param: up,
            offset: Expr::mul_idx(xi.clone(), (m * c) as i64),
            row_stride: c as i64,
            col_stride: 1,
        },
        b: at(vp, v_base, vs),
        c: at(mp, m_base, ms),
        alpha: 1.0,
        beta: 0.0,
        bias: None,
        act: Activation::None,
        requant: None,
        tail: None,
        b_im2col: None,
    }
}

/// One tile's input transform `(Bᵀ d B)`: loads the 4×4 tile `d` at `load_base` of a padded
/// plane (rows `pw` apart) and stores element `ξ` at `store_base + ξ·xi_stride`.
fn input_tile(
    kb: &mut KernelBuilder,
    xp: ParamId,
    vp: ParamId,
    pw: usize,
    load_base: Expr,
    store_base: Expr,
    xi_stride: i64,
) -> Vec<Stmt> {
    let mut body = vec![];
    let mut d = [[VarId(0); 4]; 4];
    for (i, row) in d.iter_mut().enumerate() {
        for (j, dv) in row.iter_mut().enumerate() {
            *dv = kb.var(DType::F32);
            body.push(Stmt::Let {
                var: *dv,
                value: Expr::load(
                    xp,
                    Expr::add_idx(load_base.clone(), Expr::idx((i * pw + j) as i64)),
                ),
            });
        }
    }
    // Bᵀ d: rows (d0 − d2, d1 + d2, d2 − d1, d1 − d3); then the same on the columns.
    let combine = |e: [Expr; 4]| -> [Expr; 4] {
        let [e0, e1, e2, e3] = e;
        [
            Expr::bin(BinOp::Sub, e0, e2.clone()),
            Expr::bin(BinOp::Add, e1.clone(), e2.clone()),
            Expr::bin(BinOp::Sub, e2, e1.clone()),
            Expr::bin(BinOp::Sub, e1, e3),
        ]
    };
    let mut t = [[VarId(0); 4]; 4];
    for j in 0..4 {
        let rows = combine(std::array::from_fn(|i| Expr::var(d[i][j])));
        for (i, e) in rows.into_iter().enumerate() {
            t[i][j] = kb.var(DType::F32);
            body.push(Stmt::Let {
                var: t[i][j],
                value: e,
            });
        }
    }
    for (i, trow) in t.iter().enumerate() {
        let cols = combine(std::array::from_fn(|j| Expr::var(trow[j])));
        for (j, e) in cols.into_iter().enumerate() {
            // One base plus a literal per `ξ`: the form the CPU vectorizer proves disjoint.
            let xi = (i * 4 + j) as i64;
            body.push(Stmt::Store {
                param: vp,
                index: Expr::add_idx(store_base.clone(), Expr::idx(xi * xi_stride)),
                value: e,
            });
        }
    }
    body
}

/// `V[ξ, ci, b·T + t] = (Bᵀ d B)[ξ]` for every 4×4 tile `d` of the padded planes, the tiles of a
/// plane in rows; the innermost loop runs over a row of tiles.
fn input_transform(cx: &mut Cx, node: &Node, xpad: BufId, v: BufId, vs: usize, geo: &Geo) {
    let &Geo {
        n,
        c,
        th,
        tw,
        ph,
        pw,
        ..
    } = geo;
    let nt = (n * th * tw) as i64;
    let mut kb = KernelBuilder::new("winograd_input");
    let xp = kb.param(&cx.p, xpad, Access::Read);
    let vp = kb.param(&cx.p, v, Access::Write);
    let (bv, cv, ty, tx) = (
        kb.var(DType::I64),
        kb.var(DType::I64),
        kb.var(DType::I64),
        kb.var(DType::I64),
    );
    let base = Expr::add_idx(
        Expr::add_idx(
            Expr::mul_idx(
                Expr::add_idx(Expr::mul_idx(Expr::var(bv), c as i64), Expr::var(cv)),
                (ph * pw) as i64,
            ),
            Expr::mul_idx(Expr::var(ty), (2 * pw) as i64),
        ),
        Expr::mul_idx(Expr::var(tx), 2),
    );
    let tile = Expr::add_idx(
        Expr::add_idx(
            Expr::mul_idx(Expr::var(bv), (th * tw) as i64),
            Expr::mul_idx(Expr::var(ty), tw as i64),
        ),
        Expr::var(tx),
    );
    let store_base = Expr::add_idx(Expr::mul_idx(Expr::var(cv), nt), tile);
    let body = input_tile(&mut kb, xp, vp, pw, base, store_base, vs as i64);
    let mut kinds = outer_parallel(&[n, c, th]);
    kinds.push(LoopKind::Vector);
    kb.k.body = super::wrap_loops(&[bv, cv, ty, tx], &[n, c, th, tw], &kinds, body);
    cx.launch(kb, node);
}

/// One tile's output transform `Aᵀ M A (+ bias)`: loads element `ξ` of the tile's products at
/// `m_base + ξ·xi_stride` and stores the first `rows × cols` of its 2×2 outputs at `out_base`
/// (output rows `ow` apart).
#[allow(clippy::too_many_arguments)]
fn output_tile(
    kb: &mut KernelBuilder,
    mp: ParamId,
    bias: Option<(ParamId, Expr)>,
    op_: ParamId,
    m_base: Expr,
    xi_stride: i64,
    out_base: Expr,
    ow: usize,
    (rows, cols): (usize, usize),
) -> Vec<Stmt> {
    let mut body = vec![];
    let mut mm = [[VarId(0); 4]; 4];
    for (a, row) in mm.iter_mut().enumerate() {
        for (b, x) in row.iter_mut().enumerate() {
            *x = kb.var(DType::F32);
            let xi = (a * 4 + b) as i64;
            body.push(Stmt::Let {
                var: *x,
                value: Expr::load(mp, Expr::add_idx(m_base.clone(), Expr::idx(xi * xi_stride))),
            });
        }
    }
    // Aᵀ e = (e0 + e1 + e2, e1 − e2 − e3), on the rows and then the columns.
    let reduce = |e: [Expr; 4]| -> [Expr; 2] {
        let [e0, e1, e2, e3] = e;
        [
            Expr::bin(
                BinOp::Add,
                Expr::bin(BinOp::Add, e0, e1.clone()),
                e2.clone(),
            ),
            Expr::bin(BinOp::Sub, Expr::bin(BinOp::Sub, e1, e2), e3),
        ]
    };
    let mut r = [[VarId(0); 4]; 2];
    for b in 0..4 {
        let two = reduce(std::array::from_fn(|a| Expr::var(mm[a][b])));
        for (i, e) in two.into_iter().enumerate().take(rows) {
            r[i][b] = kb.var(DType::F32);
            body.push(Stmt::Let {
                var: r[i][b],
                value: e,
            });
        }
    }
    let bias_v = bias.map(|(p, i)| Expr::load(p, i));
    for (i, rrow) in r.iter().enumerate().take(rows) {
        let two = reduce(std::array::from_fn(|b| Expr::var(rrow[b])));
        for (j, e) in two.into_iter().enumerate().take(cols) {
            let value = match &bias_v {
                Some(bv) => Expr::bin(BinOp::Add, e, bv.clone()),
                None => e,
            };
            // One base plus a literal per output: the form the CPU vectorizer proves
            // disjoint.
            body.push(Stmt::Store {
                param: op_,
                index: Expr::add_idx(out_base.clone(), Expr::idx((i * ow + j) as i64)),
                value,
            });
        }
    }
    body
}

/// `out = Aᵀ M A (+ bias)` per tile, the 2×2 outputs stored where they fall inside the map.
/// The loop over a row of whole tiles is a vector loop: its loads are unit-stride, its stores
/// at stride 2 (the CPU stores them lane by lane).
fn output_transform(
    cx: &mut Cx,
    node: &Node,
    mbuf: BufId,
    ms: usize,
    bias: Option<BufId>,
    out: BufId,
    geo: &Geo,
) {
    let &Geo {
        n,
        m,
        th,
        tw,
        outs: (oh, ow),
        ..
    } = geo;
    let nt = (n * th * tw) as i64;
    let mut kb = KernelBuilder::new("winograd_output");
    let mp = kb.param(&cx.p, mbuf, Access::Read);
    let bp = bias.map(|b| kb.param(&cx.p, b, Access::Read));
    let op_ = kb.param(&cx.p, out, Access::Write);
    let (bv, mv) = (kb.var(DType::I64), kb.var(DType::I64));
    // One tile at tile row `ty`, column `tx`, storing `rows × cols` of its outputs.
    let mut tile = |kb: &mut KernelBuilder, ty: Expr, tx: Expr, rows: usize, cols: usize| {
        let col = Expr::add_idx(
            Expr::add_idx(
                Expr::mul_idx(Expr::var(bv), (th * tw) as i64),
                Expr::mul_idx(ty.clone(), tw as i64),
            ),
            tx.clone(),
        );
        let m_base = Expr::add_idx(Expr::mul_idx(Expr::var(mv), nt), col);
        let plane = Expr::mul_idx(
            Expr::add_idx(Expr::mul_idx(Expr::var(bv), m as i64), Expr::var(mv)),
            (oh * ow) as i64,
        );
        let out_base = Expr::add_idx(
            Expr::add_idx(plane, Expr::mul_idx(ty, (2 * ow) as i64)),
            Expr::mul_idx(tx, 2),
        );
        let bias_at = bp.map(|p| (p, Expr::var(mv)));
        output_tile(
            kb,
            mp,
            bias_at,
            op_,
            m_base,
            ms as i64,
            out_base,
            ow,
            (rows, cols),
        )
    };
    // Full tiles, then the clipped last column and last row of an odd-sized map.
    let (fh, fw) = (oh / 2, ow / 2);
    let row_of =
        |kb: &mut KernelBuilder,
         tile: &mut dyn FnMut(&mut KernelBuilder, Expr, Expr, usize, usize) -> Vec<Stmt>,
         ty: Expr,
         rows: usize| {
            let mut s = vec![];
            if fw > 0 {
                let tx = kb.var(DType::I64);
                let b = tile(kb, ty.clone(), Expr::var(tx), rows, 2);
                s.extend(super::wrap_loops(&[tx], &[fw], &[LoopKind::Vector], b));
            }
            if ow % 2 == 1 {
                s.extend(tile(kb, ty, Expr::idx(fw as i64), rows, 1));
            }
            s
        };
    let mut body = vec![];
    if fh > 0 {
        let ty = kb.var(DType::I64);
        let b = row_of(&mut kb, &mut tile, Expr::var(ty), 2);
        body.extend(super::wrap_loops(&[ty], &[fh], &[LoopKind::Serial], b));
    }
    if oh % 2 == 1 {
        body.extend(row_of(&mut kb, &mut tile, Expr::idx(fh as i64), 1));
    }
    let kinds = outer_parallel(&[n, m]);
    kb.k.body = super::wrap_loops(&[bv, mv], &[n, m], &kinds, body);
    cx.launch(kb, node);
}

/// Loop kinds for `extents`: the first loop that iterates is `Parallel`, the others `Serial`.
fn outer_parallel(extents: &[usize]) -> Vec<LoopKind> {
    let first = extents.iter().position(|&e| e != 1);
    (0..extents.len())
        .map(|d| {
            if Some(d) == first {
                LoopKind::Parallel
            } else {
                LoopKind::Serial
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn slices_are_an_odd_number_of_cache_lines_apart() {
        // ResNet-18's 56×56 maps: 64 channels × 784 tiles, 49 × 4 KiB apart unpadded.
        for len in [1, 15, 16, 17, 64 * 784, 128 * 196, 256 * 49, 512 * 16, 4096] {
            let s = spread(len);
            assert!(
                s >= len && s.is_multiple_of(16) && !(s / 16).is_multiple_of(2),
                "{len} -> {s}"
            );
            assert!(s - len < 32, "{len} -> {s}");
        }
    }
}
