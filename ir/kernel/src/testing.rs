//! Test support for the program passes (`concat.rs`, `views.rs`): a pass is checked by
//! evaluating the program before and after it, bit for bit.

use crate::kernel::*;
use crate::{lower_graph, print_program, run_program};
use mlc_ir::{DType, Tensor, parse_graph};

/// Lowers `src`, applies `pass` to a copy, and checks that the evaluator gives bit-identical
/// outputs both ways on pseudo-random inputs (cast to each input's type). Returns what `pass`
/// returned and the program after.
pub(crate) fn before_after<T>(src: &str, pass: impl FnOnce(&mut Program) -> T) -> (T, Program) {
    let g = parse_graph(src).unwrap_or_else(|e| panic!("bad test graph: {e}"));
    let before = lower_graph(&g).expect("lowering");
    let inputs: Vec<Tensor> = g
        .inputs
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let ty = g.ty(port.value);
            let shape = ty.static_shape().expect("static");
            let n: usize = shape.iter().product();
            let v = (0..n)
                .map(|j| ((j * 7919 + i * 104_729) % 1000) as f32 / 250.0 - 2.0)
                .collect();
            let t = Tensor::from_vec(&shape, v).expect("input");
            t.cast(ty.dtype).expect("input type")
        })
        .collect();
    let mut after = before.clone();
    let done = pass(&mut after);
    let want = run_program(&before, &inputs).expect("evaluation before");
    let got = run_program(&after, &inputs)
        .unwrap_or_else(|e| panic!("evaluation after: {e}\n{}", print_program(&after)));
    assert_eq!(want.len(), got.len());
    for (w, g) in want.iter().zip(&got) {
        assert!(
            w.to_le_bytes().ok() == g.to_le_bytes().ok(),
            "outputs differ\n{}",
            print_program(&after)
        );
    }
    for b in &after.buffers {
        if let BufKind::Alias { of, .. } = b.kind {
            assert!(!matches!(after.buffer(of).kind, BufKind::Alias { .. }));
        }
    }
    (done, after)
}

/// A kernel over `n` `f32`s: `b[i] = f(a[i])`, or `b[i] = f(b[i])` when `access` is
/// read-write (`a` then unused).
pub(crate) fn unary(n: usize, f: &dyn Fn(Expr) -> Expr, access: Access) -> Kernel {
    let mut k = Kernel::new("unary");
    let a = k.param(DType::F32, n, Access::Read);
    let b = k.param(DType::F32, n, access);
    let i = k.var(DType::I64);
    let src = if access == Access::ReadWrite { b } else { a };
    k.body = vec![Stmt::For {
        var: i,
        extent: Expr::idx(n as i64),
        kind: LoopKind::Serial,
        body: vec![Stmt::Store {
            param: b,
            index: Expr::var(i),
            value: f(Expr::load(src, Expr::var(i))),
        }],
    }];
    k
}

/// `x · c`, `x + c` for the hand-written programs.
pub(crate) fn times(c: f64) -> impl Fn(Expr) -> Expr {
    move |e| Expr::bin(BinOp::Mul, e, Expr::float(DType::F32, c))
}

pub(crate) fn plus(c: f64) -> impl Fn(Expr) -> Expr {
    move |e| Expr::bin(BinOp::Add, e, Expr::float(DType::F32, c))
}
