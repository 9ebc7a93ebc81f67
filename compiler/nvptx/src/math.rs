//! Transcendental functions as plain LLVM IR, for targets without a libm (NVPTX has no
//! libdevice here): each is an internal `double (double)` function built from generic LLVM
//! instructions and intrinsics (`llvm.fma`, `llvm.rint`, `llvm.fabs`, `llvm.copysign`, ...) that
//! both the NVPTX and the host backends support, so the same IR is checked on the CPU.
//!
//! Why double: the kernel IR's float types are f32 and narrower in every model; evaluating the
//! function in f64 to about 1e-15 relative and rounding once gives the f32 result `eval.rs`
//! computes (libm in f64, rounded) except in rare near-halfway cases. For f64 arguments the
//! result is accurate to a few f64 ulps (erf, pow: tens of ulps at worst), not correctly rounded.
//!
//! Method: argument reduction plus Taylor series long enough for f64 (no tabulated minimax
//! coefficients to get wrong): `exp` = 2^n · e^r with |r| ≤ ln2/2 (degree 13); `log` through
//! atanh's series on the mantissa; `erf` by its Taylor series for |x| < 2.5 and the continued
//! fraction of erfc beyond; trig by Cody–Waite reduction by π/2; `atan` by two argument halvings.

use crate::NvptxError;
use inkwell::builder::Builder;
use inkwell::context::Context;
use inkwell::intrinsics::Intrinsic;
use inkwell::module::{Linkage, Module};
use inkwell::types::FloatType;
use inkwell::values::{FloatValue, FunctionValue, IntValue};
use inkwell::{FloatPredicate, IntPredicate};

/// The functions this module provides, by name (`mlc_<name>`), each `double(double)` except
/// `pow`, which takes two.
pub const FUNCTIONS: [&str; 18] = [
    "exp", "expm1", "log", "log1p", "tanh", "erf", "sin", "cos", "tan", "asin", "acos", "atan",
    "sinh", "cosh", "asinh", "acosh", "atanh", "pow",
];

// fdlibm's split constants, as bit patterns: the high parts have trailing zero bits so that
// `n * HI` is exact for the reduction's range of `n`.
const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000);
const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76);
const PIO2_1: f64 = f64::from_bits(0x3FF9_21FB_5440_0000);
const PIO2_2: f64 = f64::from_bits(0x3DD0_B461_1A60_0000);
const PIO2_2T: f64 = f64::from_bits(0x3BA3_198A_2E03_7073);

/// Returns `mlc_<name>` in `module`, building it on first use.
pub fn function<'ctx>(
    ctx: &'ctx Context,
    module: &Module<'ctx>,
    name: &str,
) -> Result<FunctionValue<'ctx>, NvptxError> {
    let full = format!("mlc_{name}");
    if let Some(f) = module.get_function(&full) {
        return Ok(f);
    }
    let f64t = ctx.f64_type();
    let nargs = if name == "pow" { 2 } else { 1 };
    let fn_ty = f64t.fn_type(&vec![f64t.into(); nargs], false);
    let func = module.add_function(&full, fn_ty, Some(Linkage::Internal));
    let entry = ctx.append_basic_block(func, "entry");
    let b = ctx.create_builder();
    b.position_at_end(entry);
    let m = M {
        ctx,
        module,
        b: &b,
        t: f64t,
    };
    let x = func
        .get_nth_param(0)
        .expect("math functions take an argument")
        .into_float_value();
    let r = match name {
        "exp" => m.exp(x)?,
        "expm1" => m.expm1(x)?,
        "log" => m.log(x)?,
        "log1p" => m.log1p(x)?,
        "tanh" => m.tanh(x)?,
        "erf" => m.erf(x)?,
        "sin" => m.sincos(x, false)?,
        "cos" => m.sincos(x, true)?,
        "tan" => {
            let s = m.sincos(x, false)?;
            let c = m.sincos(x, true)?;
            m.div(s, c)?
        }
        "asin" => m.asin(x)?,
        "acos" => m.acos(x)?,
        "atan" => m.atan(x)?,
        "sinh" => m.sinh(x)?,
        "cosh" => m.cosh(x)?,
        "asinh" => m.asinh(x)?,
        "acosh" => m.acosh(x)?,
        "atanh" => m.atanh(x)?,
        "pow" => {
            let y = func
                .get_nth_param(1)
                .expect("pow takes two arguments")
                .into_float_value();
            m.pow(x, y)?
        }
        other => {
            return Err(NvptxError::Unsupported(format!("math function `{other}`")));
        }
    };
    b.build_return(Some(&r))?;
    Ok(func)
}

/// A builder for f64 math in straight-line code (selects, no branches).
struct M<'a, 'ctx> {
    ctx: &'ctx Context,
    module: &'a Module<'ctx>,
    b: &'a Builder<'ctx>,
    t: FloatType<'ctx>,
}

type R<'ctx> = Result<FloatValue<'ctx>, NvptxError>;

impl<'ctx> M<'_, 'ctx> {
    fn c(&self, v: f64) -> FloatValue<'ctx> {
        self.t.const_float(v)
    }
    fn intr(&self, name: &str, args: &[FloatValue<'ctx>]) -> R<'ctx> {
        let decl = Intrinsic::find(name)
            .and_then(|i| i.get_declaration(self.module, &[self.t.into()]))
            .ok_or_else(|| NvptxError::MissingIntrinsic(name.to_string()))?;
        let args: Vec<_> = args.iter().map(|a| (*a).into()).collect();
        let v = self.b.build_call(decl, &args, "")?;
        Ok(v.try_as_basic_value()
            .basic()
            .expect("float intrinsics return a value")
            .into_float_value())
    }
    fn add(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> R<'ctx> {
        Ok(self.b.build_float_add(a, b, "")?)
    }
    fn sub(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> R<'ctx> {
        Ok(self.b.build_float_sub(a, b, "")?)
    }
    fn mul(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> R<'ctx> {
        Ok(self.b.build_float_mul(a, b, "")?)
    }
    fn div(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> R<'ctx> {
        Ok(self.b.build_float_div(a, b, "")?)
    }
    fn fma(&self, a: FloatValue<'ctx>, b: FloatValue<'ctx>, c: FloatValue<'ctx>) -> R<'ctx> {
        self.intr("llvm.fma", &[a, b, c])
    }
    fn abs(&self, a: FloatValue<'ctx>) -> R<'ctx> {
        self.intr("llvm.fabs", &[a])
    }
    fn sqrt(&self, a: FloatValue<'ctx>) -> R<'ctx> {
        self.intr("llvm.sqrt", &[a])
    }
    fn copysign(&self, mag: FloatValue<'ctx>, sign: FloatValue<'ctx>) -> R<'ctx> {
        self.intr("llvm.copysign", &[mag, sign])
    }
    fn cmp(
        &self,
        p: FloatPredicate,
        a: FloatValue<'ctx>,
        b: FloatValue<'ctx>,
    ) -> Result<IntValue<'ctx>, NvptxError> {
        Ok(self.b.build_float_compare(p, a, b, "")?)
    }
    fn sel(&self, c: IntValue<'ctx>, a: FloatValue<'ctx>, b: FloatValue<'ctx>) -> R<'ctx> {
        Ok(self.b.build_select(c, a, b, "")?.into_float_value())
    }
    fn isnan(&self, a: FloatValue<'ctx>) -> Result<IntValue<'ctx>, NvptxError> {
        self.cmp(FloatPredicate::UNO, a, a)
    }
    /// Horner's rule: `sum coeffs[i] * x^i`.
    fn poly(&self, x: FloatValue<'ctx>, coeffs: &[f64]) -> R<'ctx> {
        let mut p = self.c(*coeffs.last().expect("a polynomial has coefficients"));
        for &k in coeffs.iter().rev().skip(1) {
            p = self.fma(p, x, self.c(k))?;
        }
        Ok(p)
    }
    /// `2^n` for an integer-valued `n` in [-1074, 1023]... as two factors, for ±1077.
    fn scale(&self, v: FloatValue<'ctx>, n: FloatValue<'ctx>) -> R<'ctx> {
        let i64t = self.ctx.i64_type();
        let n = self.intr("llvm.minnum", &[n, self.c(1100.0)])?;
        let n = self.intr("llvm.maxnum", &[n, self.c(-1100.0)])?;
        let ni = self.b.build_float_to_signed_int(n, i64t, "")?;
        let h = self
            .b
            .build_right_shift(ni, i64t.const_int(1, false), true, "")?;
        let l = self.b.build_int_sub(ni, h, "")?;
        let pow2 = |e: IntValue<'ctx>| -> R<'ctx> {
            let biased = self.b.build_int_add(e, i64t.const_int(1023, false), "")?;
            let bits = self
                .b
                .build_left_shift(biased, i64t.const_int(52, false), "")?;
            Ok(self.b.build_bit_cast(bits, self.t, "")?.into_float_value())
        };
        let v = self.mul(v, pow2(h)?)?;
        self.mul(v, pow2(l)?)
    }
    /// `e^r` for |r| ≤ ln2/2: Taylor to degree 13 (error < 5e-18).
    fn exp_taylor(&self, r: FloatValue<'ctx>) -> R<'ctx> {
        let mut coeffs = [0.0; 14];
        let mut f = 1.0;
        for (k, c) in coeffs.iter_mut().enumerate() {
            if k > 0 {
                f *= k as f64;
            }
            *c = 1.0 / f;
        }
        self.poly(r, &coeffs)
    }
    fn exp(&self, x: FloatValue<'ctx>) -> R<'ctx> {
        let xc = self.intr("llvm.minnum", &[x, self.c(710.0)])?;
        let xc = self.intr("llvm.maxnum", &[xc, self.c(-746.0)])?;
        let n = self.intr(
            "llvm.rint",
            &[self.mul(xc, self.c(std::f64::consts::LOG2_E))?],
        )?;
        let nn = self.b.build_float_neg(n, "")?;
        let r = self.fma(nn, self.c(LN2_HI), xc)?;
        let r = self.fma(nn, self.c(LN2_LO), r)?;
        let p = self.exp_taylor(r)?;
        let mut v = self.scale(p, n)?;
        let big = self.cmp(FloatPredicate::OGT, x, self.c(709.782_712_893_384))?;
        v = self.sel(big, self.c(f64::INFINITY), v)?;
        let small = self.cmp(FloatPredicate::OLT, x, self.c(-745.133_219_101_941_2))?;
        v = self.sel(small, self.c(0.0), v)?;
        self.sel(self.isnan(x)?, x, v)
    }
    fn expm1(&self, x: FloatValue<'ctx>) -> R<'ctx> {
        // Small |x|: the series without its constant term keeps full relative accuracy.
        let mut coeffs = [0.0; 15];
        let mut f = 1.0;
        for (k, c) in coeffs.iter_mut().enumerate().skip(1) {
            f *= k as f64;
            *c = 1.0 / f;
        }
        let small = self.poly(x, &coeffs)?;
        let big = self.sub(self.exp(x)?, self.c(1.0))?;
        let is_small = self.cmp(
            FloatPredicate::OLT,
            self.abs(x)?,
            self.c(0.346_573_590_279_972_6),
        )?;
        self.sel(is_small, small, big)
    }
    fn log(&self, x: FloatValue<'ctx>) -> R<'ctx> {
        let i64t = self.ctx.i64_type();
        let sub = self.cmp(FloatPredicate::OLT, x, self.c(f64::MIN_POSITIVE))?;
        let xs = self.sel(sub, self.mul(x, self.c(18_014_398_509_481_984.0))?, x)?; // 2^54
        let eadj = self.sel(sub, self.c(-54.0), self.c(0.0))?;
        let bits = self.b.build_bit_cast(xs, i64t, "")?.into_int_value();
        let e = self
            .b
            .build_right_shift(bits, i64t.const_int(52, false), false, "")?;
        let e = self.b.build_and(e, i64t.const_int(0x7ff, false), "")?;
        let e = self.b.build_int_sub(e, i64t.const_int(1023, false), "")?;
        let mbits = self
            .b
            .build_and(bits, i64t.const_int(0x000f_ffff_ffff_ffff, false), "")?;
        let mbits = self
            .b
            .build_or(mbits, i64t.const_int(0x3ff0_0000_0000_0000, false), "")?;
        let m = self.b.build_bit_cast(mbits, self.t, "")?.into_float_value();
        let ef = self.b.build_signed_int_to_float(e, self.t, "")?;
        let ef = self.add(ef, eadj)?;
        let hi = self.cmp(FloatPredicate::OGT, m, self.c(std::f64::consts::SQRT_2))?;
        let m = self.sel(hi, self.mul(m, self.c(0.5))?, m)?;
        let ef = self.sel(hi, self.add(ef, self.c(1.0))?, ef)?;
        let f = self.sub(m, self.c(1.0))?;
        let s = self.div(f, self.add(f, self.c(2.0))?)?;
        let s2 = self.mul(s, s)?;
        let coeffs: Vec<f64> = (0..11).map(|k| 1.0 / (2 * k + 1) as f64).collect();
        let p = self.poly(s2, &coeffs)?;
        let series = self.mul(self.mul(s, self.c(2.0))?, p)?;
        let lo = self.fma(ef, self.c(LN2_LO), series)?;
        let mut v = self.fma(ef, self.c(LN2_HI), lo)?;
        v = self.sel(
            self.cmp(FloatPredicate::OEQ, x, self.c(0.0))?,
            self.c(f64::NEG_INFINITY),
            v,
        )?;
        v = self.sel(
            self.cmp(FloatPredicate::OEQ, x, self.c(f64::INFINITY))?,
            x,
            v,
        )?;
        v = self.sel(
            self.cmp(FloatPredicate::OLT, x, self.c(0.0))?,
            self.c(f64::NAN),
            v,
        )?;
        self.sel(self.isnan(x)?, x, v)
    }
    fn log1p(&self, x: FloatValue<'ctx>) -> R<'ctx> {
        // Goldberg: log(u) * x / (u - 1) with u = 1 + x cancels u's rounding error.
        let u = self.add(self.c(1.0), x)?;
        let corr = self.div(self.mul(self.log(u)?, x)?, self.sub(u, self.c(1.0))?)?;
        let exact = self.cmp(FloatPredicate::OEQ, u, self.c(1.0))?;
        let v = self.sel(exact, x, corr)?;
        let inf = self.cmp(FloatPredicate::OEQ, x, self.c(f64::INFINITY))?;
        let v = self.sel(inf, x, v)?;
        let m1 = self.cmp(FloatPredicate::OEQ, x, self.c(-1.0))?;
        self.sel(m1, self.c(f64::NEG_INFINITY), v)
    }
    fn tanh(&self, x: FloatValue<'ctx>) -> R<'ctx> {
        let a = self.abs(x)?;
        let e = self.expm1(self.mul(a, self.c(2.0))?)?;
        let t = self.div(e, self.add(e, self.c(2.0))?)?;
        let t = self.sel(
            self.cmp(FloatPredicate::OGT, a, self.c(22.0))?,
            self.c(1.0),
            t,
        )?;
        self.copysign(t, x)
    }
    fn erf(&self, x: FloatValue<'ctx>) -> R<'ctx> {
        let a = self.abs(x)?;
        let s = self.mul(a, a)?;
        // Taylor: 2/√π · a · Σ (-1)^n s^n / (n! (2n+1)), 46 terms (|a| < 2.5: < 4e-15 rel).
        let mut coeffs = Vec::with_capacity(46);
        let mut fact = 1.0f64;
        for n in 0..46 {
            if n > 0 {
                fact *= n as f64;
            }
            let sign = if n % 2 == 0 { 1.0 } else { -1.0 };
            coeffs.push(sign / (fact * (2 * n + 1) as f64));
        }
        let p = self.poly(s, &coeffs)?;
        let taylor = self.mul(self.mul(a, p)?, self.c(std::f64::consts::FRAC_2_SQRT_PI))?;
        // erfc's continued fraction, 30 levels (|a| ≥ 2.5: < 2e-14 rel of erfc).
        let mut t = a;
        for k in (1..=30).rev() {
            t = self.add(a, self.div(self.c(k as f64 / 2.0), t)?)?;
        }
        let g = self.exp(self.b.build_float_neg(s, "")?)?;
        let erfc = self.div(g, self.mul(t, self.c(std::f64::consts::PI.sqrt()))?)?;
        let cf = self.sub(self.c(1.0), erfc)?;
        let near = self.cmp(FloatPredicate::OLT, a, self.c(2.5))?;
        let v = self.sel(near, taylor, cf)?;
        self.copysign(v, x)
    }
    /// sin (`cos == false`) or cos, by reduction modulo π/2 (3-part Cody–Waite).
    fn sincos(&self, x: FloatValue<'ctx>, cos: bool) -> R<'ctx> {
        let i64t = self.ctx.i64_type();
        let k = self.intr(
            "llvm.rint",
            &[self.mul(x, self.c(std::f64::consts::FRAC_2_PI))?],
        )?;
        let nk = self.b.build_float_neg(k, "")?;
        let r = self.fma(nk, self.c(PIO2_1), x)?;
        let r = self.fma(nk, self.c(PIO2_2), r)?;
        let r = self.fma(nk, self.c(PIO2_2T), r)?;
        let r2 = self.mul(r, r)?;
        let mut sc = Vec::new();
        let mut cc = Vec::new();
        let mut f = 1.0f64;
        for n in 0..20 {
            if n > 0 {
                f *= n as f64;
            }
            let sign = if (n / 2) % 2 == 0 { 1.0 } else { -1.0 };
            if n % 2 == 0 {
                cc.push(sign / f);
            } else {
                sc.push(sign / f);
            }
        }
        let s = self.mul(r, self.poly(r2, &sc)?)?;
        let c = self.poly(r2, &cc)?;
        let kc = self.intr("llvm.minnum", &[k, self.c(1e15)])?;
        let kc = self.intr("llvm.maxnum", &[kc, self.c(-1e15)])?;
        let ki = self.b.build_float_to_signed_int(kc, i64t, "")?;
        let q = self.b.build_and(ki, i64t.const_int(3, false), "")?;
        let q = if cos {
            self.b.build_int_add(q, i64t.const_int(1, false), "")?
        } else {
            q
        };
        let q = self.b.build_and(q, i64t.const_int(3, false), "")?;
        let odd = self.b.build_and(q, i64t.const_int(1, false), "")?;
        let odd = self
            .b
            .build_int_compare(IntPredicate::NE, odd, i64t.const_zero(), "")?;
        let neg = self.b.build_and(q, i64t.const_int(2, false), "")?;
        let neg = self
            .b
            .build_int_compare(IntPredicate::NE, neg, i64t.const_zero(), "")?;
        let v = self.sel(odd, c, s)?;
        let nv = self.b.build_float_neg(v, "")?;
        let v = self.sel(neg, nv, v)?;
        // ±∞ reduces to NaN through `x - k·π/2`; keep NaN inputs NaN.
        self.sel(self.isnan(x)?, x, v)
    }
    fn atan(&self, x: FloatValue<'ctx>) -> R<'ctx> {
        let a = self.abs(x)?;
        let inv = self.cmp(FloatPredicate::OGT, a, self.c(1.0))?;
        let mut t = self.sel(inv, self.div(self.c(1.0), a)?, a)?;
        // atan(t) = 2 atan(t / (1 + √(1 + t²))), twice: |t| ≤ tan(π/16).
        for _ in 0..2 {
            let q = self.sqrt(self.fma(t, t, self.c(1.0))?)?;
            t = self.div(t, self.add(self.c(1.0), q)?)?;
        }
        let coeffs: Vec<f64> = (0..13)
            .map(|k| if k % 2 == 0 { 1.0 } else { -1.0 } / (2 * k + 1) as f64)
            .collect();
        let p = self.mul(t, self.poly(self.mul(t, t)?, &coeffs)?)?;
        let r = self.mul(p, self.c(4.0))?;
        let r = self.sel(inv, self.sub(self.c(std::f64::consts::FRAC_PI_2), r)?, r)?;
        let r = self.copysign(r, x)?;
        self.sel(self.isnan(x)?, x, r)
    }
    fn asin(&self, x: FloatValue<'ctx>) -> R<'ctx> {
        let d = self.mul(self.sub(self.c(1.0), x)?, self.add(self.c(1.0), x)?)?;
        self.atan(self.div(x, self.sqrt(d)?)?)
    }
    fn acos(&self, x: FloatValue<'ctx>) -> R<'ctx> {
        let q = self.div(self.sub(self.c(1.0), x)?, self.add(self.c(1.0), x)?)?;
        let v = self.mul(self.c(2.0), self.atan(self.sqrt(q)?)?)?;
        // acos(-1) = π: the quotient is ∞ there, and atan(∞) = π/2.
        Ok(v)
    }
    fn sinh(&self, x: FloatValue<'ctx>) -> R<'ctx> {
        let a = self.abs(x)?;
        let e = self.expm1(a)?;
        let v = self.mul(
            self.c(0.5),
            self.add(e, self.div(e, self.add(e, self.c(1.0))?)?)?,
        )?;
        let v = self.sel(
            self.cmp(FloatPredicate::OGT, a, self.c(710.0))?,
            self.c(f64::INFINITY),
            v,
        )?;
        let v = self.copysign(v, x)?;
        self.sel(self.isnan(x)?, x, v)
    }
    fn cosh(&self, x: FloatValue<'ctx>) -> R<'ctx> {
        let e = self.exp(self.abs(x)?)?;
        self.mul(self.c(0.5), self.add(e, self.div(self.c(1.0), e)?)?)
    }
    fn asinh(&self, x: FloatValue<'ctx>) -> R<'ctx> {
        let a = self.abs(x)?;
        let a2 = self.mul(a, a)?;
        let q = self.add(self.c(1.0), self.sqrt(self.add(self.c(1.0), a2)?)?)?;
        let v = self.log1p(self.add(a, self.div(a2, q)?)?)?;
        let big = self.add(self.log(a)?, self.c(std::f64::consts::LN_2))?;
        let v = self.sel(self.cmp(FloatPredicate::OGT, a, self.c(1e150))?, big, v)?;
        let v = self.copysign(v, x)?;
        self.sel(self.isnan(x)?, x, v)
    }
    fn acosh(&self, x: FloatValue<'ctx>) -> R<'ctx> {
        let t = self.sub(x, self.c(1.0))?;
        let v = self.log1p(self.add(t, self.sqrt(self.fma(t, t, self.mul(t, self.c(2.0))?)?)?)?)?;
        let big = self.add(self.log(x)?, self.c(std::f64::consts::LN_2))?;
        let v = self.sel(self.cmp(FloatPredicate::OGT, x, self.c(1e150))?, big, v)?;
        self.sel(
            self.cmp(FloatPredicate::OLT, x, self.c(1.0))?,
            self.c(f64::NAN),
            v,
        )
    }
    fn atanh(&self, x: FloatValue<'ctx>) -> R<'ctx> {
        let a = self.abs(x)?;
        let q = self.div(self.mul(a, self.c(2.0))?, self.sub(self.c(1.0), a)?)?;
        let v = self.mul(self.c(0.5), self.log1p(q)?)?;
        let v = self.sel(
            self.cmp(FloatPredicate::OGT, a, self.c(1.0))?,
            self.c(f64::NAN),
            v,
        )?;
        let v = self.copysign(v, x)?;
        self.sel(self.isnan(x)?, x, v)
    }
    /// C's `pow`: exp(y·log|x|) in f64, with its special cases and exact x², x¹.
    fn pow(&self, x: FloatValue<'ctx>, y: FloatValue<'ctx>) -> R<'ctx> {
        let ax = self.abs(x)?;
        let mut r = self.exp(self.mul(y, self.log(ax)?)?)?;
        let fy = self.intr("llvm.floor", &[y])?;
        let yint = self.cmp(FloatPredicate::OEQ, fy, y)?;
        let half = self.mul(y, self.c(0.5))?;
        let fh = self.intr("llvm.floor", &[half])?;
        let yodd = self.cmp(FloatPredicate::ONE, fh, half)?;
        let yodd = self.b.build_and(yint, yodd, "")?;
        let neg = self.cmp(FloatPredicate::OLT, x, self.c(0.0))?;
        let bad = self.b.build_and(neg, self.b.build_not(yint, "")?, "")?;
        r = self.sel(bad, self.c(f64::NAN), r)?;
        let flip = self.b.build_and(neg, yodd, "")?;
        r = self.sel(flip, self.b.build_float_neg(r, "")?, r)?;
        let one_inf = self.b.build_and(
            self.cmp(FloatPredicate::OEQ, ax, self.c(1.0))?,
            self.cmp(FloatPredicate::OEQ, self.abs(y)?, self.c(f64::INFINITY))?,
            "",
        )?;
        r = self.sel(one_inf, self.c(1.0), r)?;
        r = self.sel(
            self.cmp(FloatPredicate::OEQ, y, self.c(2.0))?,
            self.mul(x, x)?,
            r,
        )?;
        r = self.sel(self.cmp(FloatPredicate::OEQ, y, self.c(1.0))?, x, r)?;
        r = self.sel(
            self.cmp(FloatPredicate::OEQ, x, self.c(1.0))?,
            self.c(1.0),
            r,
        )?;
        self.sel(
            self.cmp(FloatPredicate::OEQ, y, self.c(0.0))?,
            self.c(1.0),
            r,
        )
    }
}
