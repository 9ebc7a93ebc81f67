//! Which outputs of a kernel may be computed in place of one of its inputs: the memory
//! planner then lets the two buffers share bytes when the input dies at that step.
//!
//! `(input, output)` qualifies when both have the same element type and length, the output is
//! written by exactly one store and never read, and every load of the input reads the element
//! that store writes, in the same loop body (the same index expression, syntactically) and
//! before it. Then each iteration reads its input element before writing the same element,
//! and no iteration touches another's: vector lanes, parallel chunks and serial order all read
//! every input element before it is overwritten.

use crate::kernel::*;

/// The `(input, output)` parameter pairs of `k` that may share storage (see the module docs).
/// Each parameter appears in at most one pair.
pub fn inplace_pairs(k: &Kernel) -> Vec<(ParamId, ParamId)> {
    let mut pairs: Vec<(ParamId, ParamId)> = Vec::new();
    let n = k.params.len();
    for o in 0..n {
        let out = ParamId(o as u32);
        let po = &k.params[o];
        if po.access != Access::Write {
            continue;
        }
        let Some((body, pos, index)) = single_store(&k.body, out) else {
            continue;
        };
        for i in 0..n {
            let inp = ParamId(i as u32);
            let pi = &k.params[i];
            if i == o
                || pi.access != Access::Read
                || pi.dtype != po.dtype
                || pi.len != po.len
                || pairs.iter().any(|&(a, _)| a == inp)
            {
                continue;
            }
            if loads_only_at(&k.body, inp, body, pos, index) {
                pairs.push((inp, out));
                break;
            }
        }
    }
    pairs
}

/// The statement list holding the only store to `p`, the store's position in it and its index;
/// `None` if `p` is stored zero or several times, or read, or written by a contraction, or if
/// two iterations of the loops around the store could write one element (a later iteration
/// would then read an element an earlier one already overwrote).
fn single_store(body: &[Stmt], p: ParamId) -> Option<(&[Stmt], usize, &Expr)> {
    let mut found = None;
    let mut ok = true;
    let mut loops = Vec::new();
    visit_loops(body, &mut loops, &mut |list, pos, s, loops| match s {
        Stmt::Store { param, index, .. } if *param == p => {
            if found.is_some() || !injective(index, loops) {
                ok = false;
            }
            found = Some((list, pos, index));
        }
        Stmt::Matmul(m) if m.c.param == p || m.a.param == p || m.b.param == p => ok = false,
        Stmt::Depthwise(d) if d.out == p || d.reads_operand(p) => ok = false,
        Stmt::Softmax(s) if s.out == p || s.reads_operand(p) => ok = false,
        _ => {}
    });
    ok &= !reads_anywhere(body, p);
    if ok { found } else { None }
}

/// Like [`visit`], with the `(counter, extent)` of the loops around each statement.
fn visit_loops<'a>(
    body: &'a [Stmt],
    loops: &mut Vec<(VarId, Option<i64>)>,
    f: &mut dyn FnMut(&'a [Stmt], usize, &'a Stmt, &[(VarId, Option<i64>)]),
) {
    for (i, s) in body.iter().enumerate() {
        f(body, i, s, loops);
        if let Stmt::For {
            var,
            extent,
            body: inner,
            ..
        } = s
        {
            let n = match extent {
                Expr::Lit(Lit::Int(_, n)) => Some(*n),
                _ => None,
            };
            loops.push((*var, n));
            visit_loops(inner, loops, f);
            loops.pop();
        }
    }
}

/// `e` as `Σ cᵥ·v + c₀` over variables, if it is affine with literal coefficients.
pub(crate) fn affine(e: &Expr) -> Option<(Vec<(VarId, i64)>, i64)> {
    fn add(acc: &mut Vec<(VarId, i64)>, v: VarId, c: i64) {
        match acc.iter_mut().find(|(x, _)| *x == v) {
            Some((_, k)) => *k += c,
            None => acc.push((v, c)),
        }
    }
    fn go(e: &Expr, scale: i64, acc: &mut Vec<(VarId, i64)>, c0: &mut i64) -> Option<()> {
        match e {
            Expr::Var(v) => add(acc, *v, scale),
            Expr::Lit(Lit::Int(_, n)) => *c0 = c0.checked_add(n.checked_mul(scale)?)?,
            Expr::Binary(BinOp::Add, a, b) => {
                go(a, scale, acc, c0)?;
                go(b, scale, acc, c0)?;
            }
            Expr::Binary(BinOp::Sub, a, b) => {
                go(a, scale, acc, c0)?;
                go(b, scale.checked_neg()?, acc, c0)?;
            }
            Expr::Binary(BinOp::Mul, a, b) => match (&**a, &**b) {
                (x, Expr::Lit(Lit::Int(_, k))) | (Expr::Lit(Lit::Int(_, k)), x) => {
                    go(x, scale.checked_mul(*k)?, acc, c0)?
                }
                _ => return None,
            },
            _ => return None,
        }
        Some(())
    }
    let (mut acc, mut c0) = (Vec::new(), 0);
    go(e, 1, &mut acc, &mut c0)?;
    acc.retain(|&(_, c)| c != 0);
    Some((acc, c0))
}

/// Whether distinct iterations of `loops` (counters from 0 to extent − 1) give distinct values
/// of `index`: affine, every counter present, and each coefficient larger than the span of
/// all smaller ones (a mixed-radix numbering).
fn injective(index: &Expr, loops: &[(VarId, Option<i64>)]) -> bool {
    let Some((terms, _)) = affine(index) else {
        return false;
    };
    let mut coefs: Vec<(i64, i64)> = Vec::new(); // (|coefficient|, extent)
    for &(v, n) in loops {
        let Some(n) = n else { return false };
        if n <= 1 {
            continue;
        }
        match terms.iter().find(|(x, _)| *x == v) {
            Some(&(_, c)) => coefs.push((c.abs(), n)),
            None => return false,
        }
    }
    // Other variables are fixed during the nest (defined outside it).
    coefs.sort_unstable();
    let mut span: i64 = 0;
    for (c, n) in coefs {
        if c <= span {
            return false;
        }
        span = match c.checked_mul(n - 1).and_then(|x| x.checked_add(span)) {
            Some(s) => s,
            None => return false,
        };
    }
    true
}

/// Calls `f(list, position, statement)` on every statement, depth first.
fn visit<'a>(body: &'a [Stmt], f: &mut dyn FnMut(&'a [Stmt], usize, &'a Stmt)) {
    for (i, s) in body.iter().enumerate() {
        f(body, i, s);
        if let Stmt::For { body: inner, .. } = s {
            visit(inner, f);
        }
    }
}

/// Every expression a statement evaluates itself (not those of nested loop bodies).
fn stmt_exprs(s: &Stmt) -> Vec<&Expr> {
    match s {
        Stmt::Let { value, .. } | Stmt::Assign { value, .. } => vec![value],
        Stmt::Store { index, value, .. } => vec![index, value],
        Stmt::For { extent, .. } => vec![extent],
        Stmt::Matmul(_) | Stmt::Depthwise(_) | Stmt::Softmax(_) => vec![],
    }
}

fn reads_anywhere(body: &[Stmt], p: ParamId) -> bool {
    let mut read = false;
    visit(body, &mut |_, _, s| {
        if let Stmt::Matmul(m) = s
            && m.reads_operand(p)
        {
            read = true;
        }
        if let Stmt::Depthwise(d) = s
            && d.reads_operand(p)
        {
            read = true;
        }
        if let Stmt::Softmax(d) = s
            && d.reads_operand(p)
        {
            read = true;
        }
        for e in stmt_exprs(s) {
            e.for_each_load(&mut |q, _| read |= q == p);
        }
    });
    read
}

/// Whether every read of `p` in `body` is a load at `index` by a statement of `list` before
/// position `pos` (or in the store itself).
fn loads_only_at(body: &[Stmt], p: ParamId, list: &[Stmt], pos: usize, index: &Expr) -> bool {
    let mut ok = true;
    let mut any = false;
    visit(body, &mut |l, i, s| {
        let here = std::ptr::eq(l, list) && i <= pos;
        if let Stmt::Matmul(m) = s
            && m.reads_operand(p)
        {
            ok = false;
        }
        if let Stmt::Depthwise(d) = s
            && d.reads_operand(p)
        {
            ok = false;
        }
        if let Stmt::Softmax(d) = s
            && d.reads_operand(p)
        {
            ok = false;
        }
        for e in stmt_exprs(s) {
            e.for_each_load(&mut |q, at| {
                if q == p {
                    any = true;
                    ok &= here && at == index;
                }
            });
        }
    });
    ok && any
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlc_ir::DType;

    /// `for i in 0..8 { [let x = in[i + a];] out[i + b] = f(x) }` with optional extras.
    fn kernel(load_off: i64, store_off: i64, extra: Option<Stmt>) -> Kernel {
        let mut k = Kernel::new("t");
        let x = k.param(DType::F32, 8, Access::Read);
        let y = k.param(DType::F32, 8, Access::Write);
        let i = k.var(DType::I64);
        let v = k.var(DType::F32);
        let at = |o: i64| Expr::add_idx(Expr::var(i), Expr::idx(o));
        let mut body = vec![
            Stmt::Let {
                var: v,
                value: Expr::load(x, at(load_off)),
            },
            Stmt::Store {
                param: y,
                index: at(store_off),
                value: Expr::bin(BinOp::Mul, Expr::var(v), Expr::float(DType::F32, 2.0)),
            },
        ];
        body.extend(extra);
        k.body = vec![Stmt::For {
            var: i,
            extent: Expr::idx(8),
            kind: LoopKind::Vector,
            body,
        }];
        k
    }

    #[test]
    fn same_element_read_then_written_qualifies() {
        assert_eq!(
            inplace_pairs(&kernel(0, 0, None)),
            vec![(ParamId(0), ParamId(1))]
        );
    }

    #[test]
    fn other_elements_or_later_reads_do_not() {
        // A neighbour is read: writing in place would clobber it first.
        assert!(inplace_pairs(&kernel(1, 0, None)).is_empty());
        // The input is read again after the store.
        let after = Stmt::Let {
            var: VarId(1),
            value: Expr::load(ParamId(0), Expr::var(VarId(0))),
        };
        assert!(inplace_pairs(&kernel(0, 0, Some(after))).is_empty());
        // A second store to the output.
        let again = Stmt::Store {
            param: ParamId(1),
            index: Expr::var(VarId(0)),
            value: Expr::float(DType::F32, 0.0),
        };
        assert!(inplace_pairs(&kernel(0, 0, Some(again))).is_empty());
    }

    #[test]
    fn an_element_written_by_two_iterations_does_not() {
        // `for j in 0..3 { for i in 0..8 { out[i] = in[i] * 2 } }`: the second pass over `i`
        // would read what the first wrote.
        let mut k = kernel(0, 0, None);
        let j = k.var(DType::I64);
        let inner = std::mem::take(&mut k.body);
        k.body = vec![Stmt::For {
            var: j,
            extent: Expr::idx(3),
            kind: LoopKind::Serial,
            body: inner,
        }];
        assert!(inplace_pairs(&k).is_empty());
    }

    #[test]
    fn types_and_lengths_must_match() {
        let mut k = kernel(0, 0, None);
        k.params[0].dtype = DType::I32;
        assert!(inplace_pairs(&k).is_empty());
        let mut k = kernel(0, 0, None);
        k.params[0].len = 16;
        assert!(inplace_pairs(&k).is_empty());
    }
}
