//! The kernel IR's text form, for `--emit kernel-ir`, snapshots and debugging.
//!
//! ```text
//! kernel @add_f32(%p0: f32[64] read, %p1: f32[64] read, %p2: f32[64] write) {
//!   for.parallel %v0 in 0..64 {
//!     %p2[%v0] = add(%p0[%v0], %p1[%v0])
//!   }
//! }
//! ```
//! Index arithmetic (`i64`) prints infix; everything else as `op(args)`. The output is a pure
//! function of the IR, so snapshots are stable.

use crate::kernel::*;
use mlc_ir::DType;
use std::fmt::Write;

/// Prints a whole program: buffers, kernels, then the steps and outputs.
pub fn print_program(p: &Program) -> String {
    let mut s = String::new();
    for (i, b) in p.buffers.iter().enumerate() {
        let dims: Vec<String> = b.shape.iter().map(|d| d.to_string()).collect();
        let _ = write!(s, "buffer %b{i}: {}[{}] ", b.dtype.name(), dims.join(","));
        let _ = match b.kind {
            BufKind::Input(n) => writeln!(s, "input {n} {:?}", input_name(p, n)),
            BufKind::Const(c) => writeln!(s, "const {c}"),
            BufKind::Temp => writeln!(s, "temp"),
            BufKind::Alias { of, offset: 0 } => writeln!(s, "alias %b{}", of.0),
            BufKind::Alias { of, offset } => writeln!(s, "alias %b{} at {offset}", of.0),
        };
    }
    for (i, k) in p.kernels.iter().enumerate() {
        let _ = write!(s, "\n; k{i}\n{}", print_kernel(k));
    }
    s.push('\n');
    for st in &p.steps {
        let args: Vec<String> = st.args.iter().map(|b| format!("%b{}", b.0)).collect();
        let _ = write!(s, "step k{}({})", st.kernel.0, args.join(", "));
        if let Some(o) = &st.origin {
            let _ = write!(s, "  ; {o}");
        }
        s.push('\n');
    }
    for (name, b) in &p.outputs {
        let _ = writeln!(s, "output {name:?} = %b{}", b.0);
    }
    s
}

fn input_name(p: &Program, n: usize) -> &str {
    p.inputs
        .get(n)
        .map(|(name, _)| name.as_str())
        .unwrap_or("?")
}

/// Prints one kernel.
pub fn print_kernel(k: &Kernel) -> String {
    let params: Vec<String> = k
        .params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let access = match p.access {
                Access::Read => "read",
                Access::Write => "write",
                Access::ReadWrite => "readwrite",
            };
            format!("%p{i}: {}[{}] {access}", p.dtype.name(), p.len)
        })
        .collect();
    let mut s = format!("kernel @{}({}) {{\n", k.name, params.join(", "));
    block(k, &k.body, 1, &mut s);
    s.push_str("}\n");
    s
}

fn block(k: &Kernel, body: &[Stmt], depth: usize, s: &mut String) {
    let pad = "  ".repeat(depth);
    for st in body {
        match st {
            Stmt::For {
                var,
                extent,
                kind,
                body,
            } => {
                let kind = match kind {
                    LoopKind::Serial => "for",
                    LoopKind::Parallel => "for.parallel",
                    LoopKind::Vector => "for.vector",
                };
                let _ = writeln!(s, "{pad}{kind} %v{} in 0..{} {{", var.0, expr(k, extent));
                block(k, body, depth + 1, s);
                let _ = writeln!(s, "{pad}}}");
            }
            Stmt::Let { var, value } => {
                let _ = writeln!(
                    s,
                    "{pad}let %v{}: {} = {}",
                    var.0,
                    k.var_ty(*var).name(),
                    expr(k, value)
                );
            }
            Stmt::Assign { var, value } => {
                let _ = writeln!(s, "{pad}%v{} = {}", var.0, expr(k, value));
            }
            Stmt::Store {
                param,
                index,
                value,
            } => {
                let _ = writeln!(
                    s,
                    "{pad}%p{}[{}] = {}",
                    param.0,
                    expr(k, index),
                    expr(k, value)
                );
            }
            Stmt::Matmul(mm) => {
                let _ = write!(
                    s,
                    "{pad}matmul m={} n={} k={} a={} b={} c={} alpha={:?} beta={:?}",
                    mm.m,
                    mm.n,
                    mm.k,
                    mat(k, &mm.a),
                    mat(k, &mm.b),
                    mat(k, &mm.c),
                    mm.alpha,
                    mm.beta
                );
                if let Some(v) = &mm.b_im2col {
                    let [c, ih, iw, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl] = v.geometry();
                    let _ = write!(
                        s,
                        " b_im2col(c={c} in={ih}x{iw} out={oh}x{ow} kernel={kh}x{kw} \
                         stride={sh}x{sw} dilation={dh}x{dw} pad={pt}x{pl}"
                    );
                    if let Some(f) = v.fill {
                        let _ = write!(s, " fill=%p{}[0]", f.0);
                    }
                    s.push(')');
                }
                if let Some(b) = &mm.bias {
                    let _ = write!(s, " bias={}", mat(k, b));
                }
                if let Some(rq) = &mm.requant {
                    let shift = match &rq.shift {
                        Some(sv) => format!(", shift={}", mat(k, sv)),
                        None => String::new(),
                    };
                    let _ = write!(
                        s,
                        " requant(mult={}{shift}, scale=%p{}[{}], zp=%p{}[{}])",
                        mat(k, &rq.mult),
                        rq.scale.param.0,
                        expr(k, &rq.scale.index),
                        rq.zero_point.param.0,
                        expr(k, &rq.zero_point.index)
                    );
                    if let Some(ra) = &rq.residual {
                        let sc = |r: &ScalarRef| format!("%p{}[{}]", r.param.0, expr(k, &r.index));
                        let _ = write!(
                            s,
                            " add(r=%p{}, r_scale={}, r_zp={}, scale={}, zp={})",
                            ra.r.0,
                            sc(&ra.r_scale),
                            sc(&ra.r_zp),
                            sc(&ra.out_scale),
                            sc(&ra.out_zp)
                        );
                    }
                    if let Some(t) = rq.table {
                        let _ = write!(s, " table=%p{}", t.0);
                    }
                }
                let _ = match mm.act {
                    Activation::None => write!(s, ""),
                    Activation::Relu => write!(s, " act=relu"),
                    Activation::Clip { min, max } => write!(s, " act=clip({min:?}, {max:?})"),
                    Activation::HardSigmoid { alpha, beta } => {
                        write!(s, " act=hard_sigmoid({alpha:?}, {beta:?})")
                    }
                    Activation::HardSwish => write!(s, " act=hard_swish"),
                    Activation::Gelu => write!(s, " act=gelu"),
                    Activation::GeluTanh => write!(s, " act=gelu_tanh"),
                    Activation::Sigmoid => write!(s, " act=sigmoid"),
                    Activation::Swish { alpha } => write!(s, " act=swish({alpha})"),
                };
                match &mm.tail {
                    None => {
                        let _ = writeln!(s);
                    }
                    Some(t) => {
                        let _ = writeln!(s, " tail(%v{}, %v{}) {{", t.row.0, t.col.0);
                        block(k, &t.body, depth + 1, s);
                        let _ = writeln!(s, "{pad}}}");
                    }
                }
            }
            Stmt::Depthwise(dw) => depthwise(dw, &pad, s),
            Stmt::Softmax(sm) => softmax(sm, &pad, s),
        }
    }
}

/// `depthwise n=1 c=16 mult=1 in=48x320 out=24x160 k=3x3 s=2x2 d=1x1 pad=1x1 x=%p0 w=%p1
/// bias=%p2 out=%p3 ep=[mul(%p4[0], x), save, add(x, 3.0), mul(s, x)]`.
fn depthwise(dw: &Depthwise, pad: &str, s: &mut String) {
    let hw = |v: [usize; 2]| format!("{}x{}", v[0], v[1]);
    let _ = write!(
        s,
        "{pad}depthwise n={} c={} mult={} in={} out={} k={} s={} d={} pad={} x=%p{} w=%p{}",
        dw.batch,
        dw.channels,
        dw.mult,
        hw(dw.in_hw),
        hw(dw.out_hw),
        hw(dw.kernel),
        hw(dw.stride),
        hw(dw.dilation),
        hw(dw.pad),
        dw.x.0,
        dw.w.0
    );
    if let Some(z) = dw.x_zero {
        let _ = write!(s, " x_zero=%p{}[0]", z.0);
    }
    if let Some(b) = dw.bias {
        let _ = write!(s, " bias=%p{}", b.0);
    }
    let _ = write!(s, " out=%p{}", dw.out.0);
    if !dw.epilogue.is_empty() {
        let ops: Vec<String> = dw
            .epilogue
            .iter()
            .map(|e| match e {
                EpOp::Bin { op, arg, arg_first } => {
                    let a = match arg {
                        EpArg::Lit(v) => format!("{v:?}"),
                        EpArg::Scalar(p) => format!("%p{}[0]", p.0),
                        EpArg::Channel(p) => format!("%p{}[m]", p.0),
                    };
                    if *arg_first {
                        format!("{}({a}, x)", op.name())
                    } else {
                        format!("{}(x, {a})", op.name())
                    }
                }
                EpOp::Save => "save".to_string(),
                EpOp::Sigmoid => "sigmoid(x)".to_string(),
                EpOp::Combine {
                    op,
                    saved_first: true,
                } => format!("{}(s, x)", op.name()),
                EpOp::Combine { op, .. } => format!("{}(x, s)", op.name()),
                EpOp::Round => "round(x)".to_string(),
                EpOp::Narrow(t) => format!("narrow<{}>(x)", t.name()),
                EpOp::Table { table, signed } => {
                    format!("%p{}[x{}]", table.0, if *signed { " + 128" } else { "" })
                }
            })
            .collect();
        let _ = write!(s, " ep=[{}]", ops.join(", "));
    }
    let _ = writeln!(s);
}

fn mat(k: &Kernel, m: &MatRef) -> String {
    format!(
        "%p{}[{}; {}, {}]",
        m.param.0,
        expr(k, &m.offset),
        m.row_stride,
        m.col_stride
    )
}

/// Prints an expression in the context of its kernel (for types).
pub fn expr(k: &Kernel, e: &Expr) -> String {
    match e {
        Expr::Var(v) => format!("%v{}", v.0),
        Expr::Lit(Lit::Int(DType::I64, i)) => i.to_string(),
        Expr::Lit(Lit::Int(t, i)) => format!("{i}:{}", t.name()),
        Expr::Lit(Lit::Float(t, f)) => format!("{f:?}:{}", t.name()),
        Expr::Lit(Lit::Bool(b)) => b.to_string(),
        Expr::Load { param, index } => format!("%p{}[{}]", param.0, expr(k, index)),
        Expr::Unary(UnOp::Bitcast(t), a) => format!("bitcast<{}>({})", t.name(), expr(k, a)),
        Expr::Unary(op, a) => format!("{}({})", op.name(), expr(k, a)),
        Expr::Binary(op, a, b) => {
            let infix = match op {
                BinOp::Add => Some("+"),
                BinOp::Sub => Some("-"),
                BinOp::Mul => Some("*"),
                BinOp::Div => Some("/"),
                BinOp::Rem => Some("%"),
                _ => None,
            };
            match infix {
                Some(sym) if k.type_of(a) == DType::I64 => {
                    format!("({} {sym} {})", expr(k, a), expr(k, b))
                }
                _ => format!("{}({}, {})", op.name(), expr(k, a), expr(k, b)),
            }
        }
        Expr::Select { cond, then, els } => {
            format!(
                "select({}, {}, {})",
                expr(k, cond),
                expr(k, then),
                expr(k, els)
            )
        }
        Expr::Cast(t, a) => format!("cast<{}>({})", t.name(), expr(k, a)),
    }
}

// ---- Softmax ---------------------------------------------------------------------------

/// `softmax rows=1536 len=128 x=%p0 scale=%p2[0] mask=%p1[12x0,128x0] out=%p3`: the mask's
/// row dimensions as `extent x stride`.
fn softmax(sm: &Softmax, pad: &str, s: &mut String) {
    let _ = write!(
        s,
        "{pad}softmax rows={} len={} x=%p{}",
        sm.rows, sm.len, sm.x.0
    );
    match sm.scale {
        Some(EpArg::Lit(v)) => {
            let _ = write!(s, " scale={v:?}");
        }
        Some(EpArg::Scalar(p)) => {
            let _ = write!(s, " scale=%p{}[0]", p.0);
        }
        Some(EpArg::Channel(p)) => {
            let _ = write!(s, " scale=%p{}[m]", p.0);
        }
        None => {}
    }
    if let Some(m) = &sm.mask {
        let dims: Vec<String> = m.dims.iter().map(|(e, st)| format!("{e}x{st}")).collect();
        let _ = write!(s, " mask=%p{}[{}]", m.param.0, dims.join(","));
    }
    let _ = writeln!(s, " out=%p{}", sm.out.0);
}
