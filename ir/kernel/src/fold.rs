//! Constant steps: a step whose every input is a constant is run once, at compile time, by the
//! evaluator, and its outputs become constants. Lowering emits such steps where a kernel
//! prepares data from weights alone (the zero-point correction of an integer contraction, a
//! transposed or reshaped weight), and running them on every inference would be waste.
//!
//! A step folds when every buffer it reads is a constant, every buffer it writes is a
//! temporary that no other step writes, written only (not read-modify-written), and its work is
//! small enough for the evaluator ([`MAX_FOLD_WORK`] innermost iterations).

use crate::eval::{eval_kernel, from_vals, to_vals};
use crate::kernel::*;
use mlc_ir::Tensor;

/// Above this many innermost iterations a step is left to run (the evaluator is slow).
pub const MAX_FOLD_WORK: u64 = 1 << 22;

/// Innermost iterations of `body` (matmuls count `m·n·k`); non-literal extents count 1.
fn work(body: &[Stmt]) -> u64 {
    body.iter()
        .map(|st| match st {
            Stmt::For { extent, body, .. } => {
                let n = match extent {
                    Expr::Lit(Lit::Int(_, n)) => (*n).max(0) as u64,
                    _ => 1,
                };
                n.saturating_mul(work(body).max(1))
            }
            Stmt::Matmul(mm) => (mm.m as u64) * (mm.n as u64) * (mm.k as u64),
            Stmt::Depthwise(d) => (d.lens().2 as u64) * (d.kernel[0] * d.kernel[1]) as u64,
            Stmt::Softmax(s) => (s.rows as u64) * (s.len as u64) * 3,
            _ => 1,
        })
        .fold(0u64, u64::saturating_add)
}

/// Folds every constant step of `p` (see the module docs); returns how many folded.
pub fn fold_constant_steps(p: &mut Program) -> usize {
    let mut folded = 0;
    let mut si = 0;
    while si < p.steps.len() {
        if try_fold(p, si) {
            p.steps.remove(si);
            folded += 1;
        } else {
            si += 1;
        }
    }
    folded
}

fn try_fold(p: &mut Program, si: usize) -> bool {
    let st = &p.steps[si];
    let k = p.kernel(st.kernel);
    if work(&k.body) > MAX_FOLD_WORK || st.args.len() != k.params.len() {
        return false;
    }
    let storage: Vec<BufId> = st.args.iter().map(|&b| p.storage_of(b)).collect();
    for (prm, &s) in k.params.iter().zip(&storage) {
        let kind = &p.buffer(s).kind;
        let ok = match prm.access {
            Access::Read => matches!(kind, BufKind::Const(_)),
            Access::Write => {
                matches!(kind, BufKind::Temp)
                    && p.steps.iter().enumerate().all(|(j, o)| {
                        j == si
                            || !o
                                .args
                                .iter()
                                .zip(&p.kernel(o.kernel).params)
                                .any(|(&b, q)| q.access != Access::Read && p.storage_of(b) == s)
                    })
            }
            Access::ReadWrite => false,
        };
        if !ok {
            return false;
        }
    }
    // Evaluate with one store per distinct storage.
    let mut uniq: Vec<BufId> = Vec::new();
    let map: Vec<usize> = storage
        .iter()
        .map(|s| match uniq.iter().position(|u| u == s) {
            Some(i) => i,
            None => {
                uniq.push(*s);
                uniq.len() - 1
            }
        })
        .collect();
    let mut store = Vec::with_capacity(uniq.len());
    for &s in &uniq {
        let b = p.buffer(s);
        let t = match b.kind {
            BufKind::Const(c) => p.consts.get(c).cloned(),
            _ => Some(Tensor::zeros(b.dtype, &b.shape)),
        };
        match t.as_ref().map(to_vals) {
            Some(Ok(v)) => store.push(v),
            _ => return false,
        }
    }
    if eval_kernel(p.kernel(p.steps[si].kernel), &mut store, &map).is_err() {
        return false;
    }
    let mut made = Vec::new();
    for (i, &s) in uniq.iter().enumerate() {
        let b = p.buffer(s);
        if matches!(b.kind, BufKind::Temp) {
            match from_vals(b.dtype, &b.shape, &store[i]) {
                Ok(t) => made.push((s, t)),
                Err(_) => return false,
            }
        }
    }
    for (s, t) in made {
        p.consts.push(t);
        p.buffers[s.0 as usize].kind = BufKind::Const(p.consts.len() - 1);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{lower_graph, lower_graph_unfolded, run_program};

    #[test]
    fn folding_keeps_results() {
        use mlc_ir::ops::{EwOp, MovementOp};
        use mlc_ir::{DType, Graph, Op, TensorType};
        // y = x + t·t with t = transpose(w), w a constant: the transpose and the square run
        // at compile time; the add on the input stays.
        let mut g = Graph::new();
        let f32_ = |s: &[usize]| TensorType::fixed(DType::F32, s);
        let x = g.add_input("x", f32_(&[3, 2]));
        let w = Tensor::from_vec(&[2, 3], vec![1f32, -2., 3., 4., 5., -6.]).expect("w");
        let wv = g.add_constant(w);
        let t = g.add_node(
            Op::Movement(MovementOp::Transpose { perm: vec![1, 0] }),
            vec![Some(wv)],
            vec![f32_(&[3, 2])],
            vec![],
            None,
        )[0];
        let sq = g.add_node(
            Op::Ew(EwOp::Mul),
            vec![Some(t), Some(t)],
            vec![f32_(&[3, 2])],
            vec![],
            None,
        )[0];
        let y = g.add_node(
            Op::Ew(EwOp::Add),
            vec![Some(x), Some(sq)],
            vec![f32_(&[3, 2])],
            vec![],
            None,
        )[0];
        g.outputs.push(mlc_ir::Port {
            value: y,
            name: "y".into(),
        });
        let prog = lower_graph_unfolded(&g).expect("lowers");
        let xin = Tensor::from_vec(&[3, 2], vec![0.5f32, 1., 1.5, 2., 2.5, 3.]).expect("x");
        let want = run_program(&prog, std::slice::from_ref(&xin)).expect("runs");
        let mut folded = prog.clone();
        let n = fold_constant_steps(&mut folded);
        assert!(
            n >= 1,
            "the constant steps fold:\n{}",
            crate::print_program(&prog)
        );
        assert_eq!(folded.steps.len(), 1, "only the add on the input is left");
        let got = run_program(&folded, &[xin]).expect("runs folded");
        assert_eq!(want[0].to_f64_vec().ok(), got[0].to_f64_vec().ok());
        // Nothing that reads an input folds; `lower_graph` folds the same way.
        let mut again = folded.clone();
        assert_eq!(fold_constant_steps(&mut again), 0);
        assert_eq!(lower_graph(&g).expect("lowers").steps.len(), 1);
    }
}
