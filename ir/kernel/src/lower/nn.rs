//! Contractions: `MatMul` (batched, broadcast) and `Gemm` become [`Stmt::Matmul`], a call into
//! the backend's tuned library kernel, inside a parallel loop over the batch dims.

use super::{
    Cx, Fail, KernelBuilder, bcast_index, conv, kernel_name, loop_nest, norm, unsupported,
};
use crate::kernel::*;
use mlc_ir::Node;
use mlc_ir::ops::NnOp;

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
        NnOp::MaxPool { window, .. } => conv::pool(cx, node, Some(window), true, false),
        NnOp::AvgPool {
            window,
            count_include_pad,
        } => conv::pool(cx, node, Some(window), false, *count_include_pad),
        NnOp::GlobalMaxPool => conv::pool(cx, node, None, true, true),
        NnOp::GlobalAvgPool => conv::pool(cx, node, None, false, true),
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
        NnOp::LpPool { window, p } => {
            conv::pool_kind(cx, node, Some(window), conv::PoolKind::Lp(*p))
        }
        NnOp::GlobalLpPool { p } => conv::pool_kind(cx, node, None, conv::PoolKind::Lp(*p)),
        NnOp::Resize { .. } => super::resize::resize(cx, node, op),
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
    matmul_bufs(cx, node, (ab, sa), (bb, sb), out)
}

/// Numpy matmul of buffers `a` and `b` (with their shapes) into `out`.
pub(super) fn matmul_bufs(
    cx: &mut Cx,
    node: &Node,
    (ab, mut sa): (BufId, Vec<usize>),
    (bb, mut sb): (BufId, Vec<usize>),
    out: BufId,
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
    let (m, k, n) = (sa[sa.len() - 2], sa[sa.len() - 1], sb[sb.len() - 1]);
    let batch_a = &sa[..sa.len() - 2];
    let batch_b = &sb[..sb.len() - 2];
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
                row_stride: n as i64,
                col_stride: 1,
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
    if c.is_some() && beta != 1.0 {
        return unsupported("gemm with beta other than 0 or 1");
    }
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
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
    let cp = kb.param(&cx.p, out, Access::Write);
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
        beta: 0.0,
        bias,
        act: Activation::None,
    };
    kb.k.body = vec![Stmt::Matmul(Box::new(mm))];
    cx.launch(kb, node);
    Ok(())
}
