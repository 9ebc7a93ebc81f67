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
use mlc_ir::{DType, Node, ValueId};

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
    // The image's shape is the output's. The block's is known, or read by the kernel: its
    // size is the input's channels over the output's.
    let image = shape_of(cx, image_shape, node.input(1))
        .unwrap_or_else(|| os.get(2..).unwrap_or_default().to_vec());
    let n = image.len();
    let block = match shape_of(cx, block_shape, node.input(2)) {
        Some(b) => Block::Known(b),
        None => match node.input(2) {
            Some(bv) if cx.shape(bv)? == [n] && matches!(cx.dtype(bv), DType::I64 | DType::I32) => {
                Block::Data(bv)
            }
            _ => return unsupported("col2im block shape of the wrong form"),
        },
    };
    let or = |v: &[usize], len: usize, d: usize| -> Vec<usize> {
        if v.is_empty() {
            vec![d; len]
        } else {
            v.to_vec()
        }
    };
    let (dil, pads, strides) = (or(dilations, n, 1), or(pads, 2 * n, 0), or(strides, n, 1));
    let bl: usize = match &block {
        Block::Known(b) => b.iter().product(),
        Block::Data(_) if os.len() == n + 2 && os[1] > 0 && xs.len() == 3 => xs[1] / os[1],
        Block::Data(_) => 0,
    };
    if xs.len() != 3
        || matches!(&block, Block::Known(b) if b.len() != n)
        || bl == 0
        || !xs[1].is_multiple_of(bl)
        || dil.len() != n
        || pads.len() != 2 * n
        || strides.len() != n
        || strides.contains(&0)
        || os.len() != n + 2
        || os[2..] != image
    {
        return unsupported(format!(
            "col2im input {xs:?} does not fit blocks {block_shape:?} and image {image:?}"
        ));
    }
    // The number of block positions along each axis, when the block is known.
    let mut cols = Vec::with_capacity(n);
    if let Block::Known(block) = &block {
        for i in 0..n {
            let span = dil[i] * (block[i].max(1) - 1) + 1;
            let padded = image[i] + pads[i] + pads[n + i];
            if padded < span {
                return unsupported("col2im blocks do not fit the image");
            }
            cols.push((padded - span) / strides[i] + 1);
        }
        if xs[2] != cols.iter().product::<usize>() {
            return unsupported(format!(
                "col2im input {xs:?} has the wrong number of blocks"
            ));
        }
    }
    let l = xs[2];
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let nc = xs[0] * (xs[1] / bl);
    let mut shape = vec![nc];
    shape.extend_from_slice(&image);
    if shape.contains(&0) {
        return Ok(());
    }
    let xlen = (xs[0] * xs[1] * xs[2]) as i64;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let bp = match &block {
        Block::Data(bv) => Some(kb.param(&cx.p, cx.buf(*bv)?, Access::Read)),
        Block::Known(_) => None,
    };
    let op_ = kb.param(&cx.p, out, Access::Write);
    let body = par_nest(&mut kb, &shape, |kb, v| {
        let mut s = Vec::new();
        // The block's extents and the block positions per axis, as index expressions.
        let (bext, cext): (Vec<Expr>, Vec<Expr>) = match (&block, bp) {
            (Block::Known(b), _) => (
                b.iter().map(|&d| idx(d as i64)).collect(),
                cols.iter().map(|&d| idx(d as i64)).collect(),
            ),
            (Block::Data(_), Some(bp)) => (0..n)
                .map(|i| {
                    let b = to_i64(kb, Expr::load(bp, idx(i as i64)));
                    let b = let_(kb, &mut s, DType::I64, b);
                    // (image + pads - span) / stride + 1, span = dil·(max(b, 1) - 1) + 1.
                    let span = Expr::add_idx(
                        Expr::mul_idx(
                            Expr::bin(BinOp::Sub, Expr::bin(BinOp::Max, b.clone(), idx(1)), idx(1)),
                            dil[i] as i64,
                        ),
                        idx(1),
                    );
                    let padded = (image[i] + pads[i] + pads[n + i]) as i64;
                    let c = Expr::add_idx(
                        Expr::bin(
                            BinOp::Div,
                            Expr::bin(BinOp::Sub, idx(padded), span),
                            idx(strides[i] as i64),
                        ),
                        idx(1),
                    );
                    (b, let_(kb, &mut s, DType::I64, c))
                })
                .unzip(),
            (Block::Data(_), None) => (Vec::new(), Vec::new()),
        };
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
                cmp(BinOp::Lt, c.clone(), cext[i].clone()),
            );
            if let Some(e) = exact {
                here = and(here, e);
            }
            ok = Some(match ok {
                None => here,
                Some(prev) => and(prev, here),
            });
            col.push(c);
        }
        let k = flat_dyn(
            &bext,
            &offs.iter().map(|&o| Expr::var(o)).collect::<Vec<_>>(),
        );
        let j = flat_dyn(&cext, &col);
        let at = Expr::add_idx(
            Expr::mul_idx(
                Expr::add_idx(Expr::mul_idx(Expr::var(v[0]), bl as i64), k),
                l as i64,
            ),
            j,
        );
        // Out-of-place positions are not added; their load only has to stay in bounds.
        let xval = to_f64(kb, Expr::load(xp, clamp_idx(at, 0, xlen - 1)));
        inner.push(add_if(acc, ok.unwrap_or(Expr::Lit(Lit::Bool(true))), xval));
        for i in (0..n).rev() {
            inner = vec![Stmt::For {
                var: offs[i],
                extent: bext[i].clone(),
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

/// Col2im's block shape: known at compile time, or the value of an input.
enum Block {
    Known(Vec<usize>),
    Data(ValueId),
}

/// The row-major flat index of `vars` in a shape whose extents are index expressions.
fn flat_dyn(shape: &[Expr], vars: &[Expr]) -> Expr {
    let mut e = Expr::idx(0);
    for (v, n) in vars.iter().zip(shape) {
        e = match (&e, n) {
            (Expr::Lit(Lit::Int(_, 0)), _) => v.clone(),
            (_, Expr::Lit(Lit::Int(_, k))) => Expr::add_idx(Expr::mul_idx(e, *k), v.clone()),
            _ => Expr::add_idx(Expr::bin(BinOp::Mul, e, n.clone()), v.clone()),
        };
    }
    e
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
