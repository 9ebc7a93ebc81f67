//! `vision.col2im` and `vision.max_unpool`: the two scatters of the family.
//!
//! Col2im sums overlapping blocks into the image; here each image element gathers the column
//! entries that land on it, one per block offset, in the interpreter's order (block offsets
//! ascending). Max unpooling writes each input element at its index; the indices are data,
//! so it stays a scatter: a zeroing loop, then a serial loop over the inputs, so that a later
//! duplicate index wins as in the interpreter.

use super::{
    Cx, Fail, KernelBuilder, add_if, and, clamp_idx, cmp, f64_, flat, float_ok, idx, kernel_name,
    let_, par_nest, round_to, shape_of, to_f64, to_i64, unravel, unsupported,
};
use crate::kernel::*;
use crate::lower::{loop_nest, serial_nest};
use mlc_ir::ops::VisionOp;
use mlc_ir::{DType, Node};

pub(super) fn col2im(cx: &mut Cx, node: &Node, op: &VisionOp) -> Result<(), Fail> {
    let VisionOp::Col2Im {
        image_shape,
        block_shape,
        dilations,
        pads,
        strides,
    } = op
    else {
        return unsupported("not col2im");
    };
    let Some(x) = node.input(0) else {
        return unsupported("missing input");
    };
    let (xs, os) = (cx.shape(x)?, cx.shape(node.outputs[0])?);
    let ty = cx.dtype(x);
    if !float_ok(ty) {
        return unsupported(format!("col2im of {}", ty.name()));
    }
    // The image's shape is the output's; the block's must be known.
    let image = shape_of(cx, image_shape, node.input(1))
        .unwrap_or_else(|| os.get(2..).unwrap_or_default().to_vec());
    let Some(block) = shape_of(cx, block_shape, node.input(2)) else {
        return unsupported("col2im block shape given at run time");
    };
    let n = image.len();
    let or = |v: &[usize], len: usize, d: usize| -> Vec<usize> {
        if v.is_empty() {
            vec![d; len]
        } else {
            v.to_vec()
        }
    };
    let (dil, pads, strides) = (or(dilations, n, 1), or(pads, 2 * n, 0), or(strides, n, 1));
    let bl: usize = block.iter().product();
    if xs.len() != 3
        || block.len() != n
        || bl == 0
        || !xs[1].is_multiple_of(bl)
        || dil.len() != n
        || pads.len() != 2 * n
        || strides.len() != n
        || os.len() != n + 2
        || os[2..] != image
    {
        return unsupported(format!(
            "col2im input {xs:?} does not fit blocks {block:?} and image {image:?}"
        ));
    }
    let mut cols = Vec::with_capacity(n);
    for i in 0..n {
        let span = dil[i] * (block[i].max(1) - 1) + 1;
        let padded = image[i] + pads[i] + pads[n + i];
        if padded < span || strides[i] == 0 {
            return unsupported("col2im blocks do not fit the image");
        }
        cols.push((padded - span) / strides[i] + 1);
    }
    let l: usize = cols.iter().product();
    if xs[2] != l {
        return unsupported(format!(
            "col2im input {xs:?} has the wrong number of blocks"
        ));
    }
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let nc = xs[0] * (xs[1] / bl);
    let mut shape = vec![nc];
    shape.extend_from_slice(&image);
    if shape.contains(&0) {
        return Ok(());
    }
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let body = par_nest(&mut kb, &shape, |kb, v| {
        let mut s = Vec::new();
        let acc = kb.var(DType::F64);
        s.push(Stmt::Let {
            var: acc,
            value: f64_(0.0),
        });
        // One serial loop per block axis, the first outermost: block offsets ascending.
        let offs: Vec<VarId> = (0..n).map(|_| kb.var(DType::I64)).collect();
        let mut inner = Vec::new();
        let mut ok: Option<Expr> = None;
        let mut col = Vec::with_capacity(n);
        for i in 0..n {
            // The block position whose offset `off` lands on pixel `p`:
            // `p + pad - off·dil = col·stride`.
            let t = Expr::bin(
                BinOp::Sub,
                Expr::add_idx(Expr::var(v[i + 1]), idx(pads[i] as i64)),
                Expr::mul_idx(Expr::var(offs[i]), dil[i] as i64),
            );
            let t = let_(kb, &mut inner, DType::I64, t);
            let st = strides[i] as i64;
            let (c, exact) = if st == 1 {
                (t.clone(), None)
            } else {
                (
                    Expr::bin(BinOp::Div, t.clone(), idx(st)),
                    Some(cmp(
                        BinOp::Eq,
                        Expr::bin(BinOp::Rem, t.clone(), idx(st)),
                        idx(0),
                    )),
                )
            };
            let c = let_(kb, &mut inner, DType::I64, c);
            let mut here = and(
                cmp(BinOp::Ge, t, idx(0)),
                cmp(BinOp::Lt, c.clone(), idx(cols[i] as i64)),
            );
            if let Some(e) = exact {
                here = and(here, e);
            }
            ok = Some(match ok {
                None => here,
                Some(prev) => and(prev, here),
            });
            col.push(clamp_idx(c, 0, cols[i] as i64 - 1));
        }
        let k = flat(
            &block,
            &offs.iter().map(|&o| Expr::var(o)).collect::<Vec<_>>(),
        );
        let j = flat(&cols, &col);
        let at = Expr::add_idx(
            Expr::mul_idx(
                Expr::add_idx(Expr::mul_idx(Expr::var(v[0]), bl as i64), k),
                l as i64,
            ),
            j,
        );
        let xval = to_f64(kb, Expr::load(xp, at));
        inner.push(add_if(acc, ok.unwrap_or(Expr::Lit(Lit::Bool(true))), xval));
        for i in (0..n).rev() {
            inner = vec![Stmt::For {
                var: offs[i],
                extent: idx(block[i] as i64),
                kind: LoopKind::Serial,
                body: inner,
            }];
        }
        s.extend(inner);
        s.push(Stmt::Store {
            param: op_,
            index: flat(&shape, &v.iter().map(|&x| Expr::var(x)).collect::<Vec<_>>()),
            value: round_to(ty, Expr::var(acc)),
        });
        s
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

pub(super) fn max_unpool(cx: &mut Cx, node: &Node, op: &VisionOp) -> Result<(), Fail> {
    let VisionOp::MaxUnpool {
        kernel_shape,
        strides,
        pads,
        ..
    } = op
    else {
        return unsupported("not max_unpool");
    };
    let (Some(x), Some(iv)) = (node.input(0), node.input(1)) else {
        return unsupported("missing input");
    };
    let (xs, is, os) = (cx.shape(x)?, cx.shape(iv)?, cx.shape(node.outputs[0])?);
    let (ty, ity) = (cx.dtype(x), cx.dtype(iv));
    let n = kernel_shape.len();
    if xs.len() != n + 2 || is != xs || strides.len() != n || pads.len() != 2 * n {
        return unsupported(format!(
            "max_unpool input {xs:?} and indices {is:?} do not fit"
        ));
    }
    if !float_ok(ty) || !matches!(ity, DType::I64 | DType::I32) {
        return unsupported("max_unpool types");
    }
    // The default unpooled shape, into which the indices are flat offsets.
    let mut inner = xs[..2].to_vec();
    for i in 0..n {
        let full = xs[i + 2].saturating_sub(1) * strides[i] + kernel_shape[i];
        match full.checked_sub(pads[i] + pads[n + i]) {
            Some(d) => inner.push(d),
            None => return unsupported("max_unpool pads exceed the output"),
        }
    }
    if os.len() != inner.len() || os.iter().zip(&inner).any(|(o, i)| o < i) {
        return unsupported(format!(
            "max_unpool output shape {os:?} is smaller than {inner:?}"
        ));
    }
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let total: usize = inner.iter().product();
    let len: usize = xs.iter().product();
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let ip = kb.param(&cx.p, cx.buf(iv)?, Access::Read);
    let op_ = kb.param(&cx.p, out, Access::Write);
    let zero = f64_(0.0);
    let zero = round_to(ty, zero);
    let olen: usize = os.iter().product();
    let mut body = loop_nest(&mut kb, &[olen], |_, v| {
        vec![Stmt::Store {
            param: op_,
            index: Expr::var(v[0]),
            value: zero,
        }]
    });
    if total > 0 && len > 0 {
        body.extend(serial_nest(&mut kb, &[len], |kb, v| {
            let mut s = Vec::new();
            let i = Expr::var(v[0]);
            let slot = to_i64(kb, Expr::load(ip, i.clone()));
            // An index out of range is an error in the interpreter; here it is only kept in
            // bounds.
            let slot = let_(kb, &mut s, DType::I64, clamp_idx(slot, 0, total as i64 - 1));
            let dst = if os == inner {
                slot
            } else {
                flat(&os, &unravel(slot, &inner))
            };
            s.push(Stmt::Store {
                param: op_,
                index: dst,
                value: Expr::load(xp, i),
            });
            s
        }));
    }
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}
