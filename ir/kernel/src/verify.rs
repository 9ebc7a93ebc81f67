//! The kernel IR verifier. It checks, and lowering tests run it on every kernel:
//! - every parameter and variable referenced exists;
//! - a variable is used only inside the scope that defines it (its loop, or after its `let`
//!   in an enclosing block), and `assign` targets a `let`-defined variable in scope;
//! - loop extents and indices are `i64`; operands of a binary op have one type; a stored
//!   value has the parameter's type; `select` arms agree and its condition is `bool`;
//! - a `read` parameter is never stored to, and a `write` parameter never loaded;
//! - a depthwise convolution's parameters are `f32`, sized as its shape says, its output
//!   written and not an operand, its epilogue of the allowed operations;
//! - a softmax's parameters are `f32`, `x` and `out` of `rows·len` elements, its output written
//!   and not an operand, its mask's row dimensions multiplying to `rows` and every row of it
//!   inside the mask parameter.
//!
//! Errors are all collected, so one run shows every problem.

use crate::kernel::*;
use mlc_ir::DType;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("kernel {kernel}: {message}")]
pub struct VerifyError {
    pub kernel: String,
    pub message: String,
}

/// Checks `k` and returns every problem found.
pub fn verify_kernel(k: &Kernel) -> Result<(), Vec<VerifyError>> {
    let mut v = Verifier {
        k,
        scope: Vec::new(),
        errors: Vec::new(),
        c_readable: None,
    };
    v.block(&k.body);
    if v.errors.is_empty() {
        Ok(())
    } else {
        Err(v.errors)
    }
}

struct Verifier<'a> {
    k: &'a Kernel,
    /// Variables in scope: (var, assignable).
    scope: Vec<(VarId, bool)>,
    errors: Vec<VerifyError>,
    /// Inside a contraction's tail: its C, which the tail reads though the kernel only writes
    /// it (the contraction wrote it first).
    c_readable: Option<ParamId>,
}

impl Verifier<'_> {
    fn err(&mut self, message: String) {
        self.errors.push(VerifyError {
            kernel: self.k.name.clone(),
            message,
        });
    }

    fn block(&mut self, body: &[Stmt]) {
        let mark = self.scope.len();
        for st in body {
            match st {
                Stmt::For {
                    var, extent, body, ..
                } => {
                    self.expect(extent, DType::I64, "loop extent");
                    self.declare(*var);
                    if self.var_ok(*var) && self.k.var_ty(*var) != DType::I64 {
                        self.err(format!("loop counter %v{} is not i64", var.0));
                    }
                    self.scope.push((*var, false));
                    self.block(body);
                    self.scope.pop();
                }
                Stmt::Let { var, value } => {
                    if self.var_ok(*var) {
                        self.declare(*var);
                        let want = self.k.var_ty(*var);
                        self.expect(value, want, &format!("let %v{}", var.0));
                        self.scope.push((*var, true));
                    }
                }
                Stmt::Assign { var, value } => {
                    match self.scope.iter().rev().find(|(v, _)| v == var) {
                        Some((_, true)) => {}
                        Some((_, false)) => {
                            self.err(format!("assignment to loop counter %v{}", var.0))
                        }
                        None => self.err(format!("assignment to %v{} outside its scope", var.0)),
                    }
                    if self.var_ok(*var) {
                        let want = self.k.var_ty(*var);
                        self.expect(value, want, &format!("assign %v{}", var.0));
                    }
                }
                Stmt::Store {
                    param,
                    index,
                    value,
                } => {
                    if let Some((dtype, access)) = self.param(*param).map(|p| (p.dtype, p.access)) {
                        if access == Access::Read {
                            self.err(format!("store to read-only %p{}", param.0));
                        }
                        self.expect(index, DType::I64, "store index");
                        self.expect(value, dtype, &format!("value stored to %p{}", param.0));
                    }
                }
                Stmt::Matmul(mm) => {
                    for (m, what) in [(&mm.a, "a"), (&mm.b, "b"), (&mm.c, "c")] {
                        self.param(m.param);
                        self.expect(&m.offset, DType::I64, &format!("matmul {what} offset"));
                    }
                    if let Some(b) = &mm.bias {
                        self.param(b.param);
                        self.expect(&b.offset, DType::I64, "matmul bias offset");
                    }
                    if let Some(v) = &mm.b_im2col {
                        self.im2col(mm, v);
                    }
                    if let Some(rq) = &mm.requant {
                        self.requant(mm, rq);
                    }
                    if let Some(t) = &mm.tail {
                        self.tail(mm, t);
                    }
                }
                Stmt::Depthwise(dw) => self.depthwise(dw),
                Stmt::Softmax(sm) => self.softmax(sm),
            }
        }
        self.scope.truncate(mark);
    }

    /// An implicit column matrix: its sizes are the contraction's `k×n`, `b`'s strides are
    /// zero, strides and dilations are nonzero, and the fill is a parameter of `b`'s type.
    fn im2col(&mut self, mm: &Matmul, v: &Im2col) {
        if v.dims() != (mm.k, mm.n) {
            self.err(format!(
                "matmul im2col of {:?} for a {}×{} B",
                v.dims(),
                mm.k,
                mm.n
            ));
        }
        if mm.b.row_stride != 0 || mm.b.col_stride != 0 {
            self.err("matmul im2col B with strides".to_string());
        }
        if v.stride.contains(&0) || v.dilation.contains(&0) || v.kernel.contains(&0) {
            self.err("matmul im2col with a zero stride, dilation or kernel size".to_string());
        }
        if let Some(f) = v.fill {
            let want = self.param(mm.b.param).map(|p| p.dtype);
            let got = self.param(f).map(|p| p.dtype);
            if want.is_some() && got != want {
                self.err(format!(
                    "matmul im2col fill %p{} of another type than B",
                    f.0
                ));
            }
        }
    }

    /// A depthwise convolution: `f32` parameters whose lengths match its sizes, read-only
    /// operands, a written output that is none of them, nonzero sizes, epilogue operations
    /// of the allowed kinds.
    fn depthwise(&mut self, dw: &Depthwise) {
        let (lx, lw, ly) = dw.lens();
        let m = dw.channels * dw.mult;
        let eight = [DType::U8, DType::I8];
        let x_ty = self.param(dw.x).map(|p| p.dtype);
        let mut want = vec![
            (dw.x, lx, false, "x"),
            (dw.w, lw, false, "w"),
            (dw.out, ly, true, "out"),
        ];
        if let Some(b) = dw.bias {
            want.push((b, m, false, "bias"));
        }
        if let Some(z) = dw.x_zero {
            want.push((z, 1, false, "x zero point"));
            if x_ty.is_some_and(|t| !eight.contains(&t)) {
                self.err("depthwise: a zero point for an input that is not 8-bit".to_string());
            }
        }
        for (i, e) in dw.epilogue.iter().enumerate() {
            if let EpOp::Table { table, signed } = e {
                let byte = if *signed { DType::I8 } else { DType::U8 };
                if i == 0 || dw.epilogue[i - 1] != EpOp::Narrow(byte) {
                    self.err(format!(
                        "depthwise epilogue: a table must follow a narrowing to {}",
                        byte.name()
                    ));
                }
                want.push((*table, 256, false, "epilogue table"));
            }
            if let EpOp::Bin { op, .. } | EpOp::Combine { op, .. } = e
                && !EpOp::allowed(*op)
            {
                self.err(format!("depthwise epilogue: {} is not allowed", op.name()));
            }
            match e {
                EpOp::Bin {
                    arg: EpArg::Scalar(p),
                    ..
                } => want.push((*p, 1, false, "epilogue scalar")),
                EpOp::Bin {
                    arg: EpArg::Channel(p),
                    ..
                } => want.push((*p, m, false, "epilogue channel operand")),
                EpOp::Narrow(t) if ![DType::U8, DType::I8, DType::I32].contains(t) => {
                    self.err(format!("depthwise epilogue: narrowing to {}", t.name()))
                }
                _ => {}
            }
        }
        for (p, len, written, what) in want {
            let Some(param) = self.param(p).cloned() else {
                continue;
            };
            // 8-bit inputs (and their zero points), integer outputs, 8-bit scalars.
            let types: &[DType] = match what {
                "x" | "x zero point" => &[DType::F32, DType::U8, DType::I8],
                "out" => &[DType::F32, DType::I32, DType::U8, DType::I8],
                "epilogue scalar" => &[DType::F32, DType::U8, DType::I8],
                _ => &[DType::F32],
            };
            if !types.contains(&param.dtype) {
                self.err(format!(
                    "depthwise {what} %p{} is {}",
                    p.0,
                    param.dtype.name()
                ));
            }
            if what == "x zero point" && Some(param.dtype) != x_ty {
                self.err(format!(
                    "depthwise x zero point %p{} is not of x's type",
                    p.0
                ));
            }
            let ok_len = if what == "epilogue scalar" || what == "x zero point" {
                param.len >= 1
            } else {
                param.len == len
            };
            if !ok_len {
                self.err(format!(
                    "depthwise {what} %p{} has {} elements, not {len}",
                    p.0, param.len
                ));
            }
            if written && param.access == Access::Read {
                self.err(format!("depthwise output %p{} is read-only", p.0));
            }
            if written && dw.reads_operand(p) {
                self.err(format!("depthwise output %p{} is also an operand", p.0));
            }
        }
        if dw.mult == 0
            || [dw.kernel, dw.stride, dw.dilation, dw.in_hw]
                .iter()
                .any(|v| v.contains(&0))
        {
            self.err("depthwise: a zero size, stride, dilation or multiplier".to_string());
        }
    }

    /// A softmax: `f32` parameters, `x` and `out` of `rows·len` elements, a written output that
    /// is no operand, a mask whose every row lies inside its parameter.
    fn softmax(&mut self, sm: &Softmax) {
        let n = sm.rows.checked_mul(sm.len);
        let mut want = vec![(sm.x, n, false, "x"), (sm.out, n, true, "out")];
        if let Some(EpArg::Channel(p)) = sm.scale {
            self.err(format!(
                "softmax scale %p{}[m]: a softmax has no channels",
                p.0
            ));
        }
        if let Some(EpArg::Scalar(p)) = sm.scale {
            want.push((p, Some(1), false, "scale"));
        }
        if let Some(m) = &sm.mask {
            // The furthest element any row reads (strides may be zero, never negative).
            let reach = m.dims.iter().try_fold(sm.len, |acc, &(e, st)| {
                let st = usize::try_from(st).ok()?;
                acc.checked_add(e.checked_sub(1)?.checked_mul(st)?)
            });
            let rows = m
                .dims
                .iter()
                .try_fold(1usize, |a, &(e, _)| a.checked_mul(e));
            if rows != Some(sm.rows) {
                self.err(format!(
                    "softmax mask rows {rows:?} are not the {} rows",
                    sm.rows
                ));
            }
            want.push((m.param, reach, false, "mask"));
        }
        for (p, len, written, what) in want {
            let Some(param) = self.param(p).cloned() else {
                continue;
            };
            if param.dtype != DType::F32 {
                self.err(format!("softmax {what} %p{} is not f32", p.0));
            }
            let ok_len = match (what, len) {
                (_, None) => false,
                ("mask" | "scale", Some(l)) => param.len >= l,
                (_, Some(l)) => param.len == l,
            };
            if !ok_len {
                self.err(format!(
                    "softmax {what} %p{} has {} elements, not {len:?}",
                    p.0, param.len
                ));
            }
            if written && param.access == Access::Read {
                self.err(format!("softmax output %p{} is read-only", p.0));
            }
            if written && sm.reads_operand(p) {
                self.err(format!("softmax output %p{} is also an operand", p.0));
            }
        }
        if sm.len == 0 {
            self.err("softmax: rows of length 0".to_string());
        }
    }

    /// A fused tail: `row` and `col` are `i64` counters in scope for a straight-line body
    /// (`let`s and stores); C is the contraction's own result, so the tail and a requantization
    /// exclude each other.
    fn tail(&mut self, mm: &Matmul, t: &TileTail) {
        if mm.requant.is_some() {
            self.err("matmul with both a requantization and a tail".to_string());
        }
        for v in [t.row, t.col] {
            if self.var_ok(v) && self.k.var_ty(v) != DType::I64 {
                self.err(format!("matmul tail coordinate %v{} is not i64", v.0));
            }
        }
        if t.body
            .iter()
            .any(|s| !matches!(s, Stmt::Let { .. } | Stmt::Store { .. }))
        {
            self.err("matmul tail: only lets and stores".to_string());
        }
        let mark = self.scope.len();
        self.scope.push((t.row, false));
        self.scope.push((t.col, false));
        self.c_readable = Some(mm.c.param);
        self.block(&t.body);
        self.c_readable = None;
        self.scope.truncate(mark);
    }

    /// A requantizing matmul: integer operands, an `i32` bias, no scaling, accumulation or
    /// activation, a `u8`/`i8` C, `f32` multipliers and scale, a zero point of C's type.
    fn requant(&mut self, mm: &Matmul, rq: &Requant) {
        let ty = |v: &mut Self, p: ParamId| v.param(p).map(|p| p.dtype);
        let int8 = |t: Option<DType>| matches!(t, Some(DType::U8 | DType::I8 | DType::I32));
        if !int8(ty(self, mm.a.param)) || !int8(ty(self, mm.b.param)) {
            self.err("requantizing matmul: A and B must be u8, i8 or i32".to_string());
        }
        if let Some(b) = &mm.bias
            && ty(self, b.param) != Some(DType::I32)
        {
            self.err("requantizing matmul: the bias must be i32".to_string());
        }
        if mm.alpha != 1.0 || mm.beta != 0.0 || mm.act != Activation::None {
            self.err("requantizing matmul: alpha 1, beta 0 and no activation".to_string());
        }
        let cty = ty(self, mm.c.param);
        if !matches!(cty, Some(DType::U8 | DType::I8)) {
            self.err("requantizing matmul: C must be u8 or i8".to_string());
        }
        for (p, want, what) in [
            (rq.mult.param, Some(DType::F32), "multiplier"),
            (rq.scale.param, Some(DType::F32), "scale"),
            (rq.zero_point.param, cty, "zero point"),
        ] {
            if ty(self, p) != want {
                self.err(format!(
                    "requantizing matmul: the {what} has the wrong type"
                ));
            }
        }
        self.expect(
            &rq.mult.offset,
            DType::I64,
            "matmul requant multiplier offset",
        );
        if let Some(sv) = &rq.shift {
            if ty(self, sv.param) != Some(DType::F32) {
                self.err("requantizing matmul: the shift has the wrong type".to_string());
            }
            self.expect(&sv.offset, DType::I64, "matmul requant shift offset");
        }
        self.expect(&rq.scale.index, DType::I64, "matmul requant scale index");
        self.expect(
            &rq.zero_point.index,
            DType::I64,
            "matmul requant zero point index",
        );
        if let Some(t) = rq.table {
            let len = self.k.params.get(t.0 as usize).map(|q| q.len);
            if ty(self, t) != cty || len != Some(256) {
                self.err("requantizing matmul: the table must be 256 elements of C's type".into());
            }
            if t == mm.c.param {
                self.err("requantizing matmul: the table is C".to_string());
            }
        }
        if let Some(ra) = &rq.residual {
            let rty = ty(self, ra.r);
            if !matches!(rty, Some(DType::U8 | DType::I8 | DType::F32)) {
                self.err("requantizing matmul: the residual must be u8, i8 or f32".to_string());
            }
            // An f32 residual is quantized to its zero point's type first.
            let zty = match rty {
                Some(DType::F32) => {
                    ty(self, ra.r_zp.param).filter(|t| matches!(t, DType::U8 | DType::I8))
                }
                t => t,
            };
            if ra.r == mm.c.param {
                self.err("requantizing matmul: the residual is C".to_string());
            }
            for (r, want, what) in [
                (&ra.r_scale, Some(DType::F32), "residual scale"),
                (&ra.r_zp, zty, "residual zero point"),
                (&ra.out_scale, Some(DType::F32), "sum scale"),
                (&ra.out_zp, cty, "sum zero point"),
            ] {
                if ty(self, r.param) != want {
                    self.err(format!(
                        "requantizing matmul: the {what} has the wrong type"
                    ));
                }
                self.expect(&r.index, DType::I64, "matmul requant residual index");
            }
        }
    }

    fn var_ok(&mut self, v: VarId) -> bool {
        let ok = (v.0 as usize) < self.k.vars.len();
        if !ok {
            self.err(format!("%v{} is not declared", v.0));
        }
        ok
    }

    fn declare(&mut self, v: VarId) {
        if self.scope.iter().any(|(s, _)| *s == v) {
            self.err(format!("%v{} is defined twice in one scope", v.0));
        }
    }

    fn param(&mut self, p: ParamId) -> Option<&Param> {
        let k = self.k;
        let found = k.params.get(p.0 as usize);
        if found.is_none() {
            self.err(format!("%p{} is not a parameter", p.0));
        }
        found
    }

    fn expect(&mut self, e: &Expr, want: DType, what: &str) {
        if let Some(got) = self.expr(e)
            && got != want
        {
            self.err(format!(
                "{what}: expected {}, found {}",
                want.name(),
                got.name()
            ));
        }
    }

    /// The type of `e`, or `None` after reporting an error inside it.
    fn expr(&mut self, e: &Expr) -> Option<DType> {
        match e {
            Expr::Var(v) => {
                if !self.var_ok(*v) {
                    return None;
                }
                if !self.scope.iter().any(|(s, _)| s == v) {
                    self.err(format!("%v{} used outside its scope", v.0));
                    return None;
                }
                Some(self.k.var_ty(*v))
            }
            Expr::Lit(l) => Some(l.ty()),
            Expr::Load { param, index } => {
                self.expect(index, DType::I64, "load index");
                let p = self.param(*param)?;
                let (ty, access) = (p.dtype, p.access);
                if access == Access::Write && self.c_readable != Some(*param) {
                    self.err(format!("load from write-only %p{}", param.0));
                }
                Some(ty)
            }
            Expr::Unary(UnOp::Bitcast(to), a) => {
                let from = self.expr(a)?;
                if !bitcast_ok(from, *to) {
                    self.err(format!("bitcast from {} to {}", from.name(), to.name()));
                    return None;
                }
                Some(*to)
            }
            Expr::Unary(op, a) => {
                let t = self.expr(a)?;
                Some(if matches!(op, UnOp::IsNan | UnOp::IsInf) {
                    DType::Bool
                } else {
                    t
                })
            }
            Expr::Binary(op, a, b) => {
                let (ta, tb) = (self.expr(a)?, self.expr(b)?);
                if ta != tb {
                    self.err(format!(
                        "{}: operand types {} and {}",
                        op.name(),
                        ta.name(),
                        tb.name()
                    ));
                    return None;
                }
                Some(if op.is_comparison() { DType::Bool } else { ta })
            }
            Expr::Select { cond, then, els } => {
                self.expect(cond, DType::Bool, "select condition");
                let (a, b) = (self.expr(then)?, self.expr(els)?);
                if a != b {
                    self.err(format!(
                        "select arms of types {} and {}",
                        a.name(),
                        b.name()
                    ));
                    return None;
                }
                Some(a)
            }
            Expr::Cast(t, a) => {
                self.expr(a)?;
                Some(*t)
            }
        }
    }
}

/// Whether `UnOp::Bitcast` may reinterpret `from` as `to`: `f32`/`f64` and the integers of
/// their width, or a storage-only type and an integer type at least as wide.
pub fn bitcast_ok(from: DType, to: DType) -> bool {
    let float_int = |f: DType, i: DType| {
        matches!(f, DType::F32 | DType::F64) && i.is_int() && f.bits() == i.bits()
    };
    let code_int = |c: DType, i: DType| c.is_storage_only() && i.is_int() && i.bits() >= c.bits();
    float_int(from, to) || float_int(to, from) || code_int(from, to) || code_int(to, from)
}
