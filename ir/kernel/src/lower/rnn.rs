//! The recurrent layers (RNN, GRU, LSTM) as one kernel each: every (direction, batch row)
//! pair is an independent recurrence, so those pairs are the parallel loop; inside, a serial
//! loop walks the row's steps (its `sequence_lens` entry, ONNX Runtime's semantics: forward
//! steps `0..len`, reverse `len-1..=0`; `Y` is zero past `len`; `Y_h`/`Y_c` hold the state after
//! the last step taken), and each step computes its gates' pre-activations as dot products
//! (SIMD reductions over the input and the hidden state) into a scratch buffer, then updates
//! the state elementwise. The running state lives in the `Y_h` (and `Y_c`) outputs themselves.
//!
//! Everything runs in f32; the interpreter, the oracle, runs in f64, so results agree to
//! rounding.

use super::attn::{f64_of, rd};
use super::{Cx, Fail, KernelBuilder, ew, kernel_name, loop_nest, unsupported};
use crate::kernel::*;
use mlc_ir::ops::RnnOp;
use mlc_ir::ops::ew::EwOp;
use mlc_ir::ops::rnn::{Activation as Act, Direction};
use mlc_ir::{DType, Node};

pub(super) fn lower(cx: &mut Cx, node: &Node, op: &RnnOp) -> Result<(), Fail> {
    let Some((a, slots)) = op.recurrent() else {
        let RnnOp::CausalConvWithState { silu } = op else {
            return unsupported("not a recurrence");
        };
        return causal_conv(cx, node, *silu);
    };
    let is_lstm = matches!(op, RnnOp::Lstm { .. });
    let x = node.input(0).ok_or(Fail::Unsupported("missing X".into()))?;
    if cx.dtype(x) != DType::F32 {
        return unsupported(format!("{} recurrence", cx.dtype(x).name()));
    }
    let xs = cx.shape(x)?;
    let &[d0, d1, ni] = xs.as_slice() else {
        return unsupported("X of rank other than 3");
    };
    let (seq, batch) = if a.batch_major { (d1, d0) } else { (d0, d1) };
    let (n, g, dirs) = (a.hidden_size, op.gates(), a.direction.count());
    if a.activations.len() != slots * dirs || n == 0 {
        return unsupported("recurrence attributes");
    }
    let gn = g * n;
    let (Some(w), Some(r)) = (node.input(1), node.input(2)) else {
        return unsupported("missing W or R");
    };
    let f32_in = |cx: &Cx, i: usize, len: usize| -> Result<Option<mlc_ir::ValueId>, Fail> {
        match node.input(i) {
            None => Ok(None),
            Some(v)
                if cx.dtype(v) == DType::F32 && cx.shape(v)?.iter().product::<usize>() == len =>
            {
                Ok(Some(v))
            }
            Some(_) => unsupported(format!("input {i} of unexpected type or size")),
        }
    };
    f32_in(cx, 1, dirs * gn * ni)?;
    f32_in(cx, 2, dirs * gn * n)?;
    let bias = f32_in(cx, 3, dirs * 2 * gn)?;
    let lens = match node.input(4) {
        Some(v) if matches!(cx.dtype(v), DType::I32 | DType::I64) => Some(v),
        Some(_) => return unsupported("sequence_lens type"),
        None => None,
    };
    let h0 = f32_in(cx, 5, dirs * batch * n)?;
    let c0 = if is_lstm {
        f32_in(cx, 6, dirs * batch * n)?
    } else {
        None
    };
    let peep = if is_lstm {
        f32_in(cx, 7, dirs * 3 * n)?
    } else {
        None
    };

    // Outputs: Y, Y_h (and Y_c); absent ones get scratch buffers of their own.
    let out_shapes = [seq * dirs * batch * n, dirs * batch * n, dirs * batch * n];
    let mut outs = Vec::new();
    for (i, &len) in out_shapes
        .iter()
        .enumerate()
        .take(if is_lstm { 3 } else { 2 })
    {
        outs.push(match node.outputs.get(i) {
            Some(&v) => cx.new_buffer(v, BufKind::Temp)?,
            None => cx.p.add_buffer(DType::F32, vec![len], BufKind::Temp),
        });
    }
    let gates =
        cx.p.add_buffer(DType::F32, vec![dirs * batch, gn], BufKind::Temp);
    // GRU: the recurrent part of the candidate (kept apart from the input part) and r ⊙ h.
    let extra =
        cx.p.add_buffer(DType::F32, vec![dirs * batch, 2 * n], BufKind::Temp);

    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let wp = kb.param(&cx.p, cx.buf(w)?, Access::Read);
    let rp = kb.param(&cx.p, cx.buf(r)?, Access::Read);
    // Optional inputs become parameters when present.
    let bp = cx.opt_param(&mut kb, bias, Access::Read)?;
    let lp = cx.opt_param(&mut kb, lens, Access::Read)?;
    let h0p = cx.opt_param(&mut kb, h0, Access::Read)?;
    let c0p = cx.opt_param(&mut kb, c0, Access::Read)?;
    let pp = cx.opt_param(&mut kb, peep, Access::Read)?;
    let yp = kb.param(&cx.p, outs[0], Access::Write);
    let hp = kb.param(&cx.p, outs[1], Access::ReadWrite);
    let cp = if is_lstm {
        Some(kb.param(&cx.p, outs[2], Access::ReadWrite))
    } else {
        None
    };
    let gp = kb.param(&cx.p, gates, Access::ReadWrite);
    let ep = kb.param(&cx.p, extra, Access::ReadWrite);

    let idx = |v: i64| Expr::idx(v);
    let var = Expr::var;
    let add = Expr::add_idx;
    let mul = Expr::mul_idx;
    let f = |v: f64| Expr::float(DType::F32, v);
    let fadd = |a: Expr, b: Expr| Expr::bin(BinOp::Add, a, b);
    let fmul = |a: Expr, b: Expr| Expr::bin(BinOp::Mul, a, b);
    let let_ = |var: VarId, value: Expr| Stmt::Let { var, value };
    let store = |param: ParamId, index: Expr, value: Expr| Stmt::Store {
        param,
        index,
        value,
    };
    let lp_ = |var: VarId, extent: Expr, kind: LoopKind, body: Vec<Stmt>| Stmt::For {
        var,
        extent,
        kind,
        body,
    };

    let db = kb.var(DType::I64);
    let (d, bi, len) = (kb.var(DType::I64), kb.var(DType::I64), kb.var(DType::I64));
    let mut body = vec![
        let_(d, Expr::bin(BinOp::Div, var(db), idx(batch as i64))),
        let_(bi, Expr::bin(BinOp::Rem, var(db), idx(batch as i64))),
        let_(
            len,
            match lp {
                Some(p) => Expr::bin(
                    BinOp::Min,
                    Expr::bin(
                        BinOp::Max,
                        Expr::cast(DType::I64, Expr::load(p, var(bi))),
                        idx(0),
                    ),
                    idx(seq as i64),
                ),
                None => idx(seq as i64),
            },
        ),
    ];
    // Flat offsets in the op's layouts.
    let s_at = || {
        if a.batch_major {
            mul(add(mul(var(bi), dirs as i64), var(d)), n as i64)
        } else {
            mul(add(mul(var(d), batch as i64), var(bi)), n as i64)
        }
    };
    let x_at = |t: Expr| {
        if a.batch_major {
            mul(add(mul(var(bi), seq as i64), t), ni as i64)
        } else {
            mul(add(mul(t, batch as i64), var(bi)), ni as i64)
        }
    };
    let y_at = |t: Expr| {
        if a.batch_major {
            mul(
                add(mul(add(mul(var(bi), seq as i64), t), dirs as i64), var(d)),
                n as i64,
            )
        } else {
            mul(
                add(mul(add(mul(t, dirs as i64), var(d)), batch as i64), var(bi)),
                n as i64,
            )
        }
    };
    let sbase = kb.var(DType::I64);
    body.push(let_(sbase, s_at()));

    // The initial state, and Y zeroed (the steps overwrite rows t < len).
    let j = kb.var(DType::I64);
    let init = |p: Option<ParamId>| match p {
        Some(p) => Expr::load(p, add(var(sbase), var(j))),
        None => f(0.0),
    };
    let mut init_body = vec![store(hp, add(var(sbase), var(j)), init(h0p))];
    if let Some(cp) = cp {
        init_body.push(store(cp, add(var(sbase), var(j)), init(c0p)));
    }
    body.push(lp_(j, idx(n as i64), LoopKind::Vector, init_body));
    let (t0, j0) = (kb.var(DType::I64), kb.var(DType::I64));
    body.push(lp_(
        t0,
        idx(seq as i64),
        LoopKind::Serial,
        vec![lp_(
            j0,
            idx(n as i64),
            LoopKind::Vector,
            vec![store(yp, add(y_at(var(t0)), var(j0)), f(0.0))],
        )],
    ));

    // The steps.
    let (k, t, xbase, gbase, ebase) = (
        kb.var(DType::I64),
        kb.var(DType::I64),
        kb.var(DType::I64),
        kb.var(DType::I64),
        kb.var(DType::I64),
    );
    // Reverse for `direction = reverse`, and for the second direction of a bidirectional one.
    let rev = match a.direction {
        Direction::Reverse => idx(1),
        _ => var(d),
    };
    let mut step = vec![
        // t = rev ? len - 1 - k : k
        let_(
            t,
            Expr::bin(
                BinOp::Add,
                var(k),
                Expr::bin(
                    BinOp::Mul,
                    rev,
                    Expr::bin(
                        BinOp::Sub,
                        Expr::bin(BinOp::Sub, var(len), idx(1)),
                        mul(var(k), 2),
                    ),
                ),
            ),
        ),
        let_(xbase, x_at(var(t))),
        let_(gbase, mul(var(db), gn as i64)),
        let_(ebase, mul(var(db), 2 * n as i64)),
    ];
    // Gate rows `rows` (within a direction's `g·n`): `W x + Wb` plus, into `gates` too or, if
    // `split`, into `extra[0..n]`, `R src + Rb` with `src` the hidden state (`hp` at `sbase`)
    // or `r ⊙ h` (`ep` at `ebase + n`).
    let gate_rows = |kb: &mut KernelBuilder,
                     rows: std::ops::Range<usize>,
                     src: (ParamId, VarId, i64),
                     split: bool|
     -> Stmt {
        let (row, kk, kh, acc, acc2) = (
            kb.var(DType::I64),
            kb.var(DType::I64),
            kb.var(DType::I64),
            kb.var(DType::F32),
            kb.var(DType::F32),
        );
        let wrow = add(
            mul(var(d), gn as i64),
            add(var(row), idx(rows.start as i64)),
        );
        let b_at = |o: usize| match bp {
            Some(p) => Expr::load(
                p,
                add(
                    mul(var(d), 2 * gn as i64),
                    add(var(row), idx((rows.start + o) as i64)),
                ),
            ),
            None => f(0.0),
        };
        let wx = lp_(
            kk,
            idx(ni as i64),
            LoopKind::Vector,
            vec![Stmt::Assign {
                var: acc,
                value: fadd(
                    var(acc),
                    fmul(
                        Expr::load(wp, add(mul(wrow.clone(), ni as i64), var(kk))),
                        Expr::load(xp, add(var(xbase), var(kk))),
                    ),
                ),
            }],
        );
        let rh_acc = if split { acc2 } else { acc };
        let rh = lp_(
            kh,
            idx(n as i64),
            LoopKind::Vector,
            vec![Stmt::Assign {
                var: rh_acc,
                value: fadd(
                    var(rh_acc),
                    fmul(
                        Expr::load(rp, add(mul(wrow.clone(), n as i64), var(kh))),
                        Expr::load(src.0, add(add(var(src.1), idx(src.2)), var(kh))),
                    ),
                ),
            }],
        );
        let mut inner = if split {
            vec![let_(acc, b_at(0)), let_(acc2, b_at(gn)), wx, rh]
        } else {
            vec![let_(acc, fadd(b_at(0), b_at(gn))), wx, rh]
        };
        inner.push(store(
            gp,
            add(var(gbase), add(var(row), idx(rows.start as i64))),
            var(acc),
        ));
        if split {
            inner.push(store(ep, add(var(ebase), var(row)), var(acc2)));
        }
        lp_(row, idx(rows.len() as i64), LoopKind::Serial, inner)
    };

    // The activation of slot `s` of this direction, on `v`; gate pre-activations are clipped
    // first (not the cell state an LSTM's output activation takes, as ONNX Runtime does).
    let acts = |s: usize| (a.activations[s], a.activations[slots * (dirs - 1) + s]);
    let mut lets: Vec<Stmt> = Vec::new();
    let act =
        |kb: &mut KernelBuilder, lets: &mut Vec<Stmt>, s: usize, v: Expr| -> Result<Expr, Fail> {
            let xv = kb.var(DType::F32);
            let clipped = match a.clip {
                Some(c) if !(is_lstm && s == 2) => Expr::bin(
                    BinOp::Min,
                    Expr::bin(BinOp::Max, v, f(-f64::from(c))),
                    f(f64::from(c)),
                ),
                _ => v,
            };
            lets.push(let_(xv, clipped));
            let (first, second) = acts(s);
            let e0 = activation(first, var(xv))?;
            Ok(if first == second {
                e0
            } else {
                Expr::select(
                    Expr::bin(BinOp::Eq, var(d), idx(0)),
                    e0,
                    activation(second, var(xv))?,
                )
            })
        };
    let gate =
        |gi: usize, jv: VarId| Expr::load(gp, add(var(gbase), add(var(jv), idx((gi * n) as i64))));
    let h_at = |jv: VarId| add(var(sbase), var(jv));
    let jj = kb.var(DType::I64);
    match op {
        RnnOp::Rnn(_) => {
            step.push(gate_rows(&mut kb, 0..n, (hp, sbase, 0), false));
            let v = act(&mut kb, &mut lets, 0, gate(0, jj))?;
            lets.push(store(hp, h_at(jj), v));
        }
        RnnOp::Gru {
            linear_before_reset,
            ..
        } => {
            // z and r, then r ⊙ h, then the candidate rows.
            step.push(gate_rows(&mut kb, 0..2 * n, (hp, sbase, 0), false));
            let (jr, rv) = (kb.var(DType::I64), kb.var(DType::F32));
            let mut rh_lets = Vec::new();
            let r_act = act(&mut kb, &mut rh_lets, 0, gate(1, jr))?;
            rh_lets.push(let_(rv, r_act));
            rh_lets.push(store(
                ep,
                add(add(var(ebase), idx(n as i64)), var(jr)),
                fmul(var(rv), Expr::load(hp, h_at(jr))),
            ));
            step.push(lp_(jr, idx(n as i64), LoopKind::Serial, rh_lets));
            let src = if *linear_before_reset {
                (hp, sbase, 0)
            } else {
                (ep, ebase, n as i64)
            };
            step.push(gate_rows(&mut kb, 2 * n..3 * n, src, true));
            let (zv, rv2) = (kb.var(DType::F32), kb.var(DType::F32));
            let z = act(&mut kb, &mut lets, 0, gate(0, jj))?;
            lets.push(let_(zv, z));
            let wx = gate(2, jj);
            let rh = Expr::load(ep, add(var(ebase), var(jj)));
            let cand = if *linear_before_reset {
                let r_again = act(&mut kb, &mut lets, 0, gate(1, jj))?;
                lets.push(let_(rv2, r_again));
                fadd(wx, fmul(var(rv2), rh))
            } else {
                fadd(wx, rh)
            };
            let hh = act(&mut kb, &mut lets, 1, cand)?;
            let new = fadd(
                fmul(Expr::bin(BinOp::Sub, f(1.0), var(zv)), hh),
                fmul(var(zv), Expr::load(hp, h_at(jj))),
            );
            lets.push(store(hp, h_at(jj), new));
        }
        RnnOp::Lstm { input_forget, .. } => {
            let Some(cp) = cp else {
                return unsupported("LSTM without a cell state");
            };
            step.push(gate_rows(&mut kb, 0..4 * n, (hp, sbase, 0), false));
            let peep_at = |o: usize| match pp {
                Some(p) => Expr::load(
                    p,
                    add(mul(var(d), 3 * n as i64), add(var(jj), idx((o * n) as i64))),
                ),
                None => f(0.0),
            };
            let (cv, iv, fv, cell) = (
                kb.var(DType::F32),
                kb.var(DType::F32),
                kb.var(DType::F32),
                kb.var(DType::F32),
            );
            lets.push(let_(cv, Expr::load(cp, h_at(jj))));
            let i = act(
                &mut kb,
                &mut lets,
                0,
                fadd(gate(0, jj), fmul(peep_at(0), var(cv))),
            )?;
            lets.push(let_(iv, i));
            let fg = if *input_forget {
                Expr::bin(BinOp::Sub, f(1.0), var(iv))
            } else {
                act(
                    &mut kb,
                    &mut lets,
                    0,
                    fadd(gate(2, jj), fmul(peep_at(2), var(cv))),
                )?
            };
            lets.push(let_(fv, fg));
            let cand = act(&mut kb, &mut lets, 1, gate(3, jj))?;
            lets.push(let_(
                cell,
                fadd(fmul(var(fv), var(cv)), fmul(var(iv), cand)),
            ));
            let o = act(
                &mut kb,
                &mut lets,
                0,
                fadd(gate(1, jj), fmul(peep_at(1), var(cell))),
            )?;
            let hc = act(&mut kb, &mut lets, 2, var(cell))?;
            lets.push(store(cp, h_at(jj), var(cell)));
            lets.push(store(hp, h_at(jj), fmul(o, hc)));
        }
        RnnOp::CausalConvWithState { .. } => return unsupported("not a recurrence"),
    }
    step.push(lp_(jj, idx(n as i64), LoopKind::Serial, lets));
    let jy = kb.var(DType::I64);
    step.push(lp_(
        jy,
        idx(n as i64),
        LoopKind::Vector,
        vec![store(
            yp,
            add(y_at(var(t)), var(jy)),
            Expr::load(hp, h_at(jy)),
        )],
    ));
    body.push(lp_(k, var(len), LoopKind::Serial, step));
    kb.k.body = vec![lp_(
        db,
        idx((dirs * batch) as i64),
        LoopKind::Parallel,
        body,
    )];
    cx.launch(kb, node);
    Ok(())
}

/// An ONNX recurrent activation on `x` (a variable: used more than once).
fn activation(a: Act, x: Expr) -> Result<Expr, Fail> {
    let f = |v: f32| Expr::float(DType::F32, f64::from(v));
    let ew = |op: EwOp| ew::scalar(&op, &[Some(x.clone())], DType::F32, DType::F32);
    Ok(match a {
        Act::Relu => ew(EwOp::Relu)?,
        Act::Tanh => ew(EwOp::Tanh)?,
        Act::Sigmoid => ew(EwOp::Sigmoid)?,
        Act::Affine { alpha, beta } => {
            Expr::bin(BinOp::Add, Expr::bin(BinOp::Mul, f(alpha), x), f(beta))
        }
        Act::LeakyRelu { alpha } => ew(EwOp::LeakyRelu { alpha })?,
        Act::ThresholdedRelu { alpha } => ew(EwOp::ThresholdedRelu { alpha })?,
        Act::ScaledTanh { alpha, beta } => Expr::bin(
            BinOp::Mul,
            f(alpha),
            Expr::un(UnOp::Tanh, Expr::bin(BinOp::Mul, f(beta), x)),
        ),
        Act::HardSigmoid { alpha, beta } => ew(EwOp::HardSigmoid { alpha, beta })?,
        Act::Elu { alpha } => ew(EwOp::Elu { alpha })?,
        Act::Softsign => ew(EwOp::Softsign)?,
        Act::Softplus => ew(EwOp::Softplus)?,
    })
}

/// The causal depthwise convolution with a carried state (`rnn.causal_conv_with_state`): each
/// channel row is `past_state ++ x` (the state zeros when absent), convolved with the row's `k`
/// taps. Two loop kernels: one computes every output position independently (a serial tap loop
/// inside), the other copies the last `k - 1` positions of the padded row into the next state.
///
/// Like the interpreter, the taps accumulate in `f64`, the bias is added to the sum, and the
/// result is rounded to the element type once; SiLU, when asked for, applies to that rounded
/// value and is rounded again.
fn causal_conv(cx: &mut Cx, node: &Node, silu: bool) -> Result<(), Fail> {
    let (Some(xv), Some(wv)) = (node.input(0), node.input(1)) else {
        return unsupported("missing input or weight");
    };
    let dt = cx.dtype(xv);
    if !matches!(dt, DType::F16 | DType::BF16 | DType::F32 | DType::F64) {
        return unsupported(format!("{} causal convolution", dt.name()));
    }
    let xs = cx.shape(xv)?;
    let &[nb, nc, len] = xs.as_slice() else {
        return unsupported("input of rank other than 3");
    };
    let k = match cx.shape(wv)?.as_slice() {
        &[c, 1, k] if c == nc && k > 0 => k,
        _ => return unsupported("weight not shaped [channels, 1, k]"),
    };
    let bias = node.input(2);
    if let Some(b) = bias
        && cx.shape(b)?.iter().product::<usize>() != nc
    {
        return unsupported("bias not of one value per channel");
    }
    let past = node.input(3);
    if let Some(p) = past
        && cx.shape(p)? != [nb, nc, k - 1]
    {
        return unsupported("past_state not shaped [batch, channels, k - 1]");
    }
    for v in [Some(wv), bias, past].into_iter().flatten() {
        if !cx.dtype(v).is_float() {
            return unsupported("non-float weight, bias or state");
        }
    }
    let y = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let (wt, bt, pt) = (
        cx.dtype(wv),
        bias.map(|b| cx.dtype(b)),
        past.map(|p| cx.dtype(p)),
    );
    let km1 = (k - 1) as i64;
    let f = |v: f64| Expr::float(DType::F64, v);
    // Element `pos` of channel row `row` of `past_state ++ x`, as f64; both loads are clamped
    // into their buffers, so neither branch of the select reads out of bounds.
    let padded = |xp: ParamId, pp: Option<ParamId>, row: Expr, pos: Expr| -> Expr {
        let from_x = f64_of(
            Expr::load(
                xp,
                Expr::add_idx(
                    Expr::mul_idx(row.clone(), len as i64),
                    Expr::bin(
                        BinOp::Max,
                        Expr::bin(BinOp::Sub, pos.clone(), Expr::idx(km1)),
                        Expr::idx(0),
                    ),
                ),
            ),
            dt,
        );
        if km1 == 0 {
            return from_x;
        }
        let from_past = match (pp, pt) {
            (Some(pp), Some(pt)) => f64_of(
                Expr::load(
                    pp,
                    Expr::add_idx(
                        Expr::mul_idx(row, km1),
                        Expr::bin(BinOp::Min, pos.clone(), Expr::idx(km1 - 1)),
                    ),
                ),
                pt,
            ),
            _ => f(0.0),
        };
        Expr::select(Expr::bin(BinOp::Lt, pos, Expr::idx(km1)), from_past, from_x)
    };

    // The convolution.
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(xv)?, Access::Read);
    let wp = kb.param(&cx.p, cx.buf(wv)?, Access::Read);
    let bp = cx.opt_param(&mut kb, bias, Access::Read)?;
    let pp = cx.opt_param(&mut kb, past, Access::Read)?;
    let yp = kb.param(&cx.p, y, Access::Write);
    let (acc, j, out) = (kb.var(DType::F64), kb.var(DType::I64), kb.var(DType::F64));
    let body = loop_nest(&mut kb, &[nb, nc, len], |_, v| {
        let (b, c, t) = (Expr::var(v[0]), Expr::var(v[1]), Expr::var(v[2]));
        let row = Expr::add_idx(Expr::mul_idx(b, nc as i64), c.clone());
        let tap = f64_of(
            Expr::load(
                wp,
                Expr::add_idx(Expr::mul_idx(c.clone(), k as i64), Expr::var(j)),
            ),
            wt,
        );
        let sample = padded(xp, pp, row.clone(), Expr::add_idx(t.clone(), Expr::var(j)));
        let mut sum = Expr::var(acc);
        if let (Some(bp), Some(bt)) = (bp, bt) {
            sum = Expr::bin(BinOp::Add, f64_of(Expr::load(bp, c), bt), sum);
        }
        let mut s = vec![
            Stmt::Let {
                var: acc,
                value: f(0.0),
            },
            Stmt::For {
                var: j,
                extent: Expr::idx(k as i64),
                kind: LoopKind::Serial,
                body: vec![Stmt::Assign {
                    var: acc,
                    value: Expr::bin(
                        BinOp::Add,
                        Expr::var(acc),
                        Expr::bin(BinOp::Mul, tap, sample),
                    ),
                }],
            },
            Stmt::Let {
                var: out,
                value: rd(dt, sum),
            },
        ];
        let value = if silu {
            // v / (1 + e^-v) on the rounded convolution.
            Expr::bin(
                BinOp::Div,
                Expr::var(out),
                Expr::bin(
                    BinOp::Add,
                    f(1.0),
                    Expr::un(UnOp::Exp, Expr::un(UnOp::Neg, Expr::var(out))),
                ),
            )
        } else {
            Expr::var(out)
        };
        s.push(Stmt::Store {
            param: yp,
            index: Expr::add_idx(Expr::mul_idx(row, len as i64), t),
            value: Expr::cast(dt, value),
        });
        s
    });
    kb.k.body = body;
    cx.launch(kb, node);

    // The next state: the last k - 1 positions of the padded row.
    let st = match node.outputs.get(1) {
        Some(&o) => cx.new_buffer(o, BufKind::Temp)?,
        None => return Ok(()),
    };
    if km1 == 0 || nb * nc == 0 {
        return Ok(());
    }
    let mut kb = KernelBuilder::new("rnn_causal_conv_state");
    let xp = kb.param(&cx.p, cx.buf(xv)?, Access::Read);
    let pp = cx.opt_param(&mut kb, past, Access::Read)?;
    let sp = kb.param(&cx.p, st, Access::Write);
    let body = loop_nest(&mut kb, &[nb, nc, k - 1], |_, v| {
        let (b, c, s) = (Expr::var(v[0]), Expr::var(v[1]), Expr::var(v[2]));
        let row = Expr::add_idx(Expr::mul_idx(b, nc as i64), c);
        let value = padded(
            xp,
            pp,
            row.clone(),
            Expr::add_idx(s.clone(), Expr::idx(len as i64)),
        );
        vec![Stmt::Store {
            param: sp,
            index: Expr::add_idx(Expr::mul_idx(row, km1), s),
            value: Expr::cast(dt, value),
        }]
    });
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}
