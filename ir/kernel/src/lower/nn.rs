//! Contractions: `MatMul` (batched, broadcast) and `Gemm` become [`Stmt::Matmul`], a call into
//! the backend's tuned library kernel, inside a parallel loop over the batch dims.

use super::{
    Cx, Fail, KernelBuilder, bcast_index, conv, flat_index, kernel_name, loop_nest, norm,
    serial_nest, strides, unsupported,
};
use crate::kernel::*;
use mlc_ir::ops::NnOp;
use mlc_ir::ops::nn::parse_einsum;
use mlc_ir::{DType, Node, ValueId};

pub(super) fn lower(cx: &mut Cx, node: &Node, op: &NnOp) -> Result<(), Fail> {
    match op {
        NnOp::Matmul => matmul(cx, node),
        NnOp::Gemm {
            trans_a,
            trans_b,
            alpha,
            beta,
        } => gemm(cx, node, *trans_a, *trans_b, *alpha, *beta),
        NnOp::Conv {
            strides,
            dilations,
            pads,
            group,
            auto_pad,
        } => conv::conv(cx, node, strides, dilations, pads, *group, *auto_pad),
        NnOp::MaxPool {
            window,
            storage_order_col_major,
        } if node.outputs.len() > 1 => {
            conv::max_pool_indices(cx, node, window, *storage_order_col_major)
        }
        NnOp::MaxPool { window, .. } => conv::pool(cx, node, Some(window), true, false),
        NnOp::AvgPool {
            window,
            count_include_pad,
        } => conv::pool(cx, node, Some(window), false, *count_include_pad),
        NnOp::GlobalMaxPool => match super::reduce::global_pool(cx, node, true)? {
            true => Ok(()),
            false => conv::pool(cx, node, None, true, true),
        },
        NnOp::GlobalAvgPool => match super::reduce::global_pool(cx, node, false)? {
            true => Ok(()),
            false => conv::pool(cx, node, None, false, true),
        },
        NnOp::BatchNorm { epsilon } => norm::batch_norm(cx, node, *epsilon),
        NnOp::LayerNorm { axis, epsilon, .. } => norm::layer_norm(cx, node, *axis, *epsilon, false),
        NnOp::RmsNorm { axis, epsilon } => norm::layer_norm(cx, node, *axis, *epsilon, true),
        NnOp::ConvTranspose {
            strides,
            dilations,
            pads,
            output_padding,
            group,
            auto_pad,
            output_shape: None,
        } => conv::conv_transpose(
            cx,
            node,
            strides,
            dilations,
            pads,
            output_padding,
            *group,
            *auto_pad,
        ),
        NnOp::InstanceNorm { epsilon } => norm::grouped_norm(cx, node, None, *epsilon),
        NnOp::GroupNorm {
            num_groups,
            epsilon,
        } => norm::grouped_norm(cx, node, Some(*num_groups), *epsilon),
        NnOp::Lrn {
            size,
            alpha,
            beta,
            bias,
        } => norm::lrn(cx, node, *size, *alpha, *beta, *bias),
        NnOp::MeanVarianceNorm { axes } => norm::mean_variance_norm(cx, node, axes),
        NnOp::LpPool { window, p } => {
            conv::pool_kind(cx, node, Some(window), conv::PoolKind::Lp(*p))
        }
        NnOp::GlobalLpPool { p } => conv::pool_kind(cx, node, None, conv::PoolKind::Lp(*p)),
        NnOp::Einsum { equation } => einsum(cx, node, equation),
        NnOp::Det => super::det::det(cx, node),
        NnOp::Resize { .. } => super::resize::resize(cx, node, op),
        NnOp::GridSample { .. } => super::vision::grid_sample(cx, node, op),
        _ => unsupported("not lowered to kernels yet"),
    }
}

fn matmul(cx: &mut Cx, node: &Node) -> Result<(), Fail> {
    let (Some(a), Some(b)) = (node.input(0), node.input(1)) else {
        return unsupported("missing input");
    };
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let (ab, bb) = (cx.buf(a)?, cx.buf(b)?);
    let (sa, sb) = (cx.shape(a)?, cx.shape(b)?);
    if let Some(twin) = transposed_twin(cx, b, &sb) {
        return matmul_views(cx, node, (ab, sa), (twin, sb), out, true);
    }
    matmul_bufs(cx, node, (ab, sa), (bb, sb), out)
}

/// The buffer of another constant of the graph, `[n, k]`, whose transpose is the constant `b`
/// (`[k, n]`, `f32`) bit for bit. A weight tied to an embedding table (GPT-2's lm_head
/// multiplies by `wteᵀ`) reaches lowering as two constants once the transpose is folded; the
/// product reads the table itself, column-major, and the folded copy is dropped as unused
/// (`drop_unused_consts`), so the artifact holds the table once. The runtime packs a weight
/// either way, so the product costs the same.
fn transposed_twin(cx: &Cx, b: ValueId, sb: &[usize]) -> Option<BufId> {
    let &[k, n] = sb else { return None };
    let t = cx.g.const_value(b)?;
    if t.dtype() != DType::F32 {
        return None;
    }
    let bt = t.view::<f32>().ok()?.t();
    cx.g.nodes.iter().find_map(|other| {
        let mlc_ir::Op::Constant { id } = other.op else {
            return None;
        };
        let &v = other.outputs.first()?;
        let w = cx.g.consts.get(id as usize)?;
        if v == b || w.dtype() != DType::F32 || w.shape() != [n, k] {
            return None;
        }
        let w = w.view::<f32>().ok()?;
        let same = bt
            .iter()
            .zip(w.iter())
            .all(|(x, y)| x.to_bits() == y.to_bits());
        same.then(|| cx.buf(v).ok()).flatten()
    })
}

/// Numpy matmul of buffers `a` and `b` (with their shapes) into `out`.
pub(super) fn matmul_bufs(
    cx: &mut Cx,
    node: &Node,
    a: (BufId, Vec<usize>),
    b: (BufId, Vec<usize>),
    out: BufId,
) -> Result<(), Fail> {
    matmul_views(cx, node, a, b, out, false)
}

/// [`matmul_bufs`], with a 2-D `b` of shape `[k, n]` read from a buffer holding its transpose
/// (`[n, k]`, row-major) when `b_transposed`.
fn matmul_views(
    cx: &mut Cx,
    node: &Node,
    (ab, mut sa): (BufId, Vec<usize>),
    (bb, mut sb): (BufId, Vec<usize>),
    out: BufId,
    b_transposed: bool,
) -> Result<(), Fail> {
    if sa.is_empty() || sb.is_empty() {
        return unsupported("matmul of a scalar");
    }
    // Numpy's 1-D rules: a vector on the left is a row, on the right a column.
    if sa.len() == 1 {
        sa.insert(0, 1);
    }
    if sb.len() == 1 {
        sb.push(1);
    }
    let (mut m, k, n) = (sa[sa.len() - 2], sa[sa.len() - 1], sb[sb.len() - 1]);
    let mut batch_a = &sa[..sa.len() - 2];
    let mut batch_b = &sb[..sb.len() - 2];
    // B shared by every batch element (a weight, as in `[L, 1, E] · [E, 3E]`): the batch is
    // more rows of one product, contiguous in A and C, so the library runs one GEMM that
    // reads B once instead of one product (of `m = 1`, with ViT's sequence-first attention)
    // per element.
    if batch_b.iter().all(|&d| d == 1) && !batch_a.is_empty() {
        m *= batch_a.iter().product::<usize>();
        batch_a = &[];
        batch_b = &[];
    }
    let nb = batch_a.len().max(batch_b.len());
    let mut batch = vec![1usize; nb];
    for (i, d) in batch.iter_mut().enumerate() {
        let da = if i + batch_a.len() >= nb {
            batch_a[i + batch_a.len() - nb]
        } else {
            1
        };
        let db = if i + batch_b.len() >= nb {
            batch_b[i + batch_b.len() - nb]
        } else {
            1
        };
        *d = da.max(db);
    }
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let ap = kb.param(&cx.p, ab, Access::Read);
    let bp = kb.param(&cx.p, bb, Access::Read);
    let cp = kb.param(&cx.p, out, Access::Write);
    let (batch_a, batch_b) = (batch_a.to_vec(), batch_b.to_vec());
    let body = loop_nest(&mut kb, &batch, |_, vars| {
        let off = |bshape: &[usize], size: usize| {
            Expr::mul_idx(bcast_index(bshape, &batch, vars), size as i64)
        };
        let mm = Matmul {
            m,
            n,
            k,
            a: MatRef {
                param: ap,
                offset: off(&batch_a, m * k),
                row_stride: k as i64,
                col_stride: 1,
            },
            b: MatRef {
                param: bp,
                offset: off(&batch_b, k * n),
                row_stride: if b_transposed { 1 } else { n as i64 },
                col_stride: if b_transposed { k as i64 } else { 1 },
            },
            c: MatRef {
                param: cp,
                offset: off(&batch, m * n),
                row_stride: n as i64,
                col_stride: 1,
            },
            alpha: 1.0,
            beta: 0.0,
            bias: None,
            act: Activation::None,
            requant: None,
            tail: None,
            b_im2col: None,
        };
        vec![Stmt::Matmul(Box::new(mm))]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

fn gemm(cx: &mut Cx, node: &Node, ta: bool, tb: bool, alpha: f32, beta: f32) -> Result<(), Fail> {
    let (Some(a), Some(b)) = (node.input(0), node.input(1)) else {
        return unsupported("missing input");
    };
    let (sa, sb) = (cx.shape(a)?, cx.shape(b)?);
    if sa.len() != 2 || sb.len() != 2 {
        return unsupported("gemm operands must be 2-D");
    }
    let (m, k) = if ta { (sa[1], sa[0]) } else { (sa[0], sa[1]) };
    let n = if tb { sb[0] } else { sb[1] };
    let c = node.input(2).filter(|_| beta != 0.0);
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    // Any other beta: the output is first filled with `beta * C`, which the contraction then
    // accumulates into (its own beta of 1), instead of reading C as a bias.
    let scaled_c = match c {
        Some(cv) if beta != 1.0 => {
            scale_into(cx, node, cv, out, &[m, n], beta)?;
            true
        }
        _ => false,
    };
    let c = c.filter(|_| !scaled_c);
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let ap = kb.param(&cx.p, cx.buf(a)?, Access::Read);
    let bp = kb.param(&cx.p, cx.buf(b)?, Access::Read);
    let bias = match c {
        Some(c) => {
            let sc = cx.shape(c)?;
            // Right-aligned broadcast of C to [m, n] through zero strides.
            let (rows, cols) = match sc.as_slice() {
                [] => (1, 1),
                [x] => (1, *x),
                [r, x] => (*r, *x),
                _ => return unsupported("gemm C of rank above 2"),
            };
            let p = kb.param(&cx.p, cx.buf(c)?, Access::Read);
            Some(MatRef {
                param: p,
                offset: Expr::idx(0),
                row_stride: if rows == 1 { 0 } else { cols as i64 },
                col_stride: if cols == 1 { 0 } else { 1 },
            })
        }
        None => None,
    };
    let cp = kb.param(
        &cx.p,
        out,
        if scaled_c {
            Access::ReadWrite
        } else {
            Access::Write
        },
    );
    let ar = if ta {
        MatRef {
            param: ap,
            offset: Expr::idx(0),
            row_stride: 1,
            col_stride: m as i64,
        }
    } else {
        MatRef {
            param: ap,
            offset: Expr::idx(0),
            row_stride: k as i64,
            col_stride: 1,
        }
    };
    let br = if tb {
        MatRef {
            param: bp,
            offset: Expr::idx(0),
            row_stride: 1,
            col_stride: k as i64,
        }
    } else {
        MatRef {
            param: bp,
            offset: Expr::idx(0),
            row_stride: n as i64,
            col_stride: 1,
        }
    };
    let mm = Matmul {
        m,
        n,
        k,
        a: ar,
        b: br,
        c: MatRef {
            param: cp,
            offset: Expr::idx(0),
            row_stride: n as i64,
            col_stride: 1,
        },
        alpha,
        beta: if scaled_c { 1.0 } else { 0.0 },
        bias,
        act: Activation::None,
        requant: None,
        tail: None,
        b_im2col: None,
    };
    kb.k.body = vec![Stmt::Matmul(Box::new(mm))];
    cx.launch(kb, node);
    Ok(())
}

/// `Einsum` as one loop per label: a parallel nest over the output labels and a serial nest
/// over the summed ones, multiplying one element of each operand (a label repeated within an
/// operand walks its diagonal; size-1 dims of the ellipsis broadcast). Accumulates in `f32`
/// for floats below `f64` and `i64` for integers, as the interpreter does.
fn einsum(cx: &mut Cx, node: &Node, equation: &str) -> Result<(), Fail> {
    let ins: Vec<ValueId> = node.inputs.iter().flatten().copied().collect();
    let shapes: Vec<Vec<usize>> = ins.iter().map(|&v| cx.shape(v)).collect::<Result<_, _>>()?;
    let ranks: Vec<usize> = shapes.iter().map(Vec::len).collect();
    let spec = parse_einsum(equation, &ranks).map_err(Fail::Unsupported)?;
    let Some(&first) = ins.first() else {
        return unsupported("einsum without operands");
    };
    let ty = cx.dtype(first);
    if !ty.is_numeric() || ty.is_storage_only() || ty == DType::Bool {
        return unsupported(format!("einsum on {}", ty.name()));
    }
    let acc_ty = match ty {
        DType::F64 => DType::F64,
        t if t.is_float() => DType::F32,
        _ => DType::I64,
    };
    let mut sizes = vec![1usize; spec.n_labels];
    let mut seen = vec![false; spec.n_labels];
    for (s, labels) in shapes.iter().zip(&spec.inputs) {
        for (&d, &l) in s.iter().zip(labels) {
            if !seen[l] || sizes[l] == 1 {
                sizes[l] = d;
            }
            seen[l] = true;
        }
    }
    let mut order = spec.output.clone();
    order.extend((0..spec.n_labels).filter(|l| seen[*l] && !spec.output.contains(l)));
    let n_out = spec.output.len();
    let out_shape: Vec<usize> = order[..n_out].iter().map(|&l| sizes[l]).collect();
    let red_shape: Vec<usize> = order[n_out..].iter().map(|&l| sizes[l]).collect();
    // Per operand, the stride each loop label moves it by.
    let label_strides: Vec<Vec<i64>> = shapes
        .iter()
        .zip(&spec.inputs)
        .map(|(s, labels)| {
            let st = strides(s);
            order
                .iter()
                .map(|&l| {
                    (0..s.len())
                        .filter(|&d| labels[d] == l && s[d] != 1)
                        .map(|d| st[d])
                        .sum()
                })
                .collect()
        })
        .collect();
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let params: Vec<(ParamId, DType)> = ins
        .iter()
        .map(|&v| Ok((kb.param(&cx.p, cx.buf(v)?, Access::Read), cx.dtype(v))))
        .collect::<Result<_, Fail>>()?;
    let op_ = kb.param(&cx.p, out, Access::Write);
    let widen = |e: Expr, t: DType| {
        if t == acc_ty {
            e
        } else {
            Expr::cast(acc_ty, e)
        }
    };
    let zero = if acc_ty.is_float() {
        Expr::float(acc_ty, 0.0)
    } else {
        Expr::Lit(Lit::Int(acc_ty, 0))
    };
    let out_st = strides(&out_shape);
    let body = loop_nest(&mut kb, &out_shape, |kb, ov| {
        let acc = kb.var(acc_ty);
        let ov = ov.to_vec();
        let inner = serial_nest(kb, &red_shape, |_, rv| {
            let vars: Vec<VarId> = ov.iter().chain(rv).copied().collect();
            let mut prod: Option<Expr> = None;
            for ((p, t), st) in params.iter().zip(&label_strides) {
                let e = widen(Expr::load(*p, flat_index(st, &vars)), *t);
                prod = Some(match prod {
                    None => e,
                    Some(q) => Expr::bin(BinOp::Mul, q, e),
                });
            }
            let prod = prod.unwrap_or_else(|| zero.clone());
            vec![Stmt::Assign {
                var: acc,
                value: Expr::bin(BinOp::Add, Expr::var(acc), prod),
            }]
        });
        let mut stmts = vec![Stmt::Let {
            var: acc,
            value: zero.clone(),
        }];
        stmts.extend(inner);
        stmts.push(Stmt::Store {
            param: op_,
            index: flat_index(&out_st, &ov),
            value: if acc_ty == ty {
                Expr::var(acc)
            } else {
                Expr::cast(ty, Expr::var(acc))
            },
        });
        stmts
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// `out = beta * c`, `c` broadcast to `shape`.
fn scale_into(
    cx: &mut Cx,
    node: &Node,
    c: ValueId,
    out: BufId,
    shape: &[usize],
    beta: f32,
) -> Result<(), Fail> {
    let cs = cx.shape(c)?;
    let ty = cx.dtype(c);
    if cs.len() > shape.len() || !matches!(ty, DType::F32 | DType::F64) {
        return unsupported("gemm C that does not broadcast to the output");
    }
    let mut kb = KernelBuilder::new("gemm_beta_c");
    let cp = kb.param(&cx.p, cx.buf(c)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let st = strides(shape);
    let body = loop_nest(&mut kb, shape, |_, v| {
        vec![Stmt::Store {
            param: op_,
            index: flat_index(&st, v),
            value: Expr::bin(
                BinOp::Mul,
                Expr::float(ty, beta as f64),
                Expr::load(cp, bcast_index(&cs, shape, v)),
            ),
        }]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}
