//! Casts from and to the storage-only types (float8, float4, 4- and 2-bit integers) and bit
//! casts, as kernel-IR expression trees of integer operations on the values' bits.
//!
//! A value of a storage type is its code; `UnOp::Bitcast` turns it into an integer and back,
//! and an `f32`/`f64` into its bits and back, so every conversion below is plain integer
//! arithmetic, compares and selects: every backend that has those gets the storage types for
//! free, and the evaluator checks them like any other kernel. The conversions reproduce
//! `mlc_ir::Tensor::cast_with` (the interpreter's `lowbit` module) bit for bit: a storage value
//! widens exactly to `f32` (small floats) or `i8`/`u8` (small ints) and converts from there;
//! a value narrows to a small float from its exact `f64` (round to nearest, ties to even, on
//! the `f64` bits), to f8e8m0 from its `f32` bits, to a small int through a truncating `i32`.

use super::{Cx, Fail, KernelBuilder, kernel_name, loop_nest, strides, unsupported};
use crate::kernel::*;
use mlc_ir::ops::EwOp;
use mlc_ir::{CastMode, DType, Node, RoundMode};

/// Whether `op` (from `from` to `to`) is a conversion this module lowers: a bit cast, or a
/// cast with a storage type on either side.
pub(super) fn handles(op: &EwOp, from: DType, to: DType) -> bool {
    match op {
        EwOp::BitCast { .. } | EwOp::CastF8 { .. } => true,
        EwOp::Cast { .. } => from.is_storage_only() || to.is_storage_only(),
        _ => false,
    }
}

/// The conversion `op` of `x` (of type `from`) to `to`; intermediate values become `let`s
/// appended to `stmts`, their variables made by `var`.
pub(super) fn lower(
    op: &EwOp,
    x: Expr,
    from: DType,
    to: DType,
    var: &mut dyn FnMut(DType) -> VarId,
    stmts: &mut Vec<Stmt>,
) -> Result<Expr, Fail> {
    let mut b = Lets { var, stmts };
    match op {
        EwOp::BitCast { .. } => bitcast(x, from, to),
        EwOp::Cast { .. } => convert(&mut b, x, from, to, CastMode::default()),
        EwOp::CastF8 {
            saturate, round, ..
        } => {
            let mode = CastMode {
                saturate: *saturate,
                round: *round,
            };
            convert(&mut b, x, from, to, mode)
        }
        _ => unsupported(format!("{op:?} is not a cast")),
    }
}

/// Appends `let`s for shared subexpressions, so trees stay linear in size.
struct Lets<'a> {
    var: &'a mut dyn FnMut(DType) -> VarId,
    stmts: &'a mut Vec<Stmt>,
}

impl Lets<'_> {
    fn bind(&mut self, ty: DType, e: Expr) -> Expr {
        let v = (self.var)(ty);
        self.stmts.push(Stmt::Let { var: v, value: e });
        Expr::var(v)
    }
}

fn int(ty: DType, v: i64) -> Expr {
    Expr::Lit(Lit::Int(ty, v))
}

fn i64_(v: i64) -> Expr {
    int(DType::I64, v)
}

fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
    Expr::bin(op, a, b)
}

fn bits(ty: DType, e: Expr) -> Expr {
    Expr::un(UnOp::Bitcast(ty), e)
}

/// `ONNX BitCast`: the same bytes read as another type of the same size.
fn bitcast(x: Expr, from: DType, to: DType) -> Result<Expr, Fail> {
    if from == to {
        return Ok(x);
    }
    let half = |t: DType| matches!(t, DType::F16 | DType::BF16);
    if half(from) || half(to) || from.size() != to.size() || from.size().is_none() {
        return unsupported(format!("bit cast from {} to {}", from.name(), to.name()));
    }
    // Everything else goes through the unsigned integer of the width.
    let carrier = match from.size() {
        Some(1) => DType::U8,
        Some(2) => DType::U16,
        Some(4) => DType::U32,
        _ => DType::U64,
    };
    // Floats and codes reinterpret; integers and bools of one size convert (wrapping, `!= 0`).
    let reinterpret = |t: DType| matches!(t, DType::F32 | DType::F64) || t.is_storage_only();
    let to_carrier = if reinterpret(from) {
        bits(carrier, x)
    } else {
        Expr::cast(carrier, x)
    };
    Ok(if reinterpret(to) {
        bits(to, to_carrier)
    } else {
        Expr::cast(to, to_carrier)
    })
}

/// `Cast` with ONNX's semantics and `mode` from `from` to `to`, one side a storage type.
fn convert(b: &mut Lets, x: Expr, from: DType, to: DType, mode: CastMode) -> Result<Expr, Fail> {
    if from == to {
        return Ok(x);
    }
    if from == DType::Str || to == DType::Str {
        return unsupported("casts of strings");
    }
    // A storage value first widens exactly, as the interpreter's `lowbit::widen` does.
    let (x, from) = if from.is_storage_only() {
        let w = widen(b, x, from)?;
        if w.1 == to {
            return Ok(w.0);
        }
        w
    } else {
        (x, from)
    };
    if !to.is_storage_only() {
        return Ok(Expr::cast(to, x));
    }
    narrow(b, x, from, to, mode)
}

/// A small float's format: sign, exponent, `man` mantissa bits in `bits` in all.
#[derive(Clone, Copy)]
struct Fmt {
    bits: u32,
    man: u32,
    bias: i64,
    special: Special,
    /// The code of the largest finite magnitude.
    max_code: i64,
}

/// Which codes of a small float format are special (as `mlc_ir::lowbit` defines them).
#[derive(Clone, Copy, PartialEq)]
enum Special {
    /// The all-ones exponent holds infinities (mantissa 0) and NaNs.
    Ieee,
    /// No infinities; the all-ones magnitude is NaN (both signs).
    Fn,
    /// No infinities, no negative zero; `1000…0` is the one NaN.
    Fnuz,
    /// No infinities, no NaNs (float4).
    Finite,
}

fn fmt(t: DType) -> Option<Fmt> {
    let f = |bits, man, bias, special, max_code| Fmt {
        bits,
        man,
        bias,
        special,
        max_code,
    };
    Some(match t {
        DType::F8E4M3FN => f(8, 3, 7, Special::Fn, 0x7e),
        DType::F8E4M3FNUZ => f(8, 3, 8, Special::Fnuz, 0x7f),
        DType::F8E5M2 => f(8, 2, 15, Special::Ieee, 0x7b),
        DType::F8E5M2FNUZ => f(8, 2, 16, Special::Fnuz, 0x7f),
        DType::F4E2M1 => f(4, 1, 1, Special::Finite, 0x7),
        _ => return None,
    })
}

impl Fmt {
    fn sign_bit(self) -> i64 {
        1 << (self.bits - 1)
    }

    fn min_exp(self) -> i64 {
        1 - self.bias
    }

    fn exp_all_ones(self) -> i64 {
        (1 << (self.bits - 1 - self.man)) - 1
    }
}

/// A storage value as the ordinary type that holds it exactly: `f32` for the small floats,
/// `i8`/`u8` for the small ints.
fn widen(b: &mut Lets, x: Expr, from: DType) -> Result<(Expr, DType), Fail> {
    let i32_ = |v: i64| int(DType::I32, v);
    if from.is_small_int() {
        let w = from.bits().unwrap_or(8) as i64;
        let c = b.bind(DType::I32, bits(DType::I32, x));
        return Ok(match from {
            DType::I4 | DType::I2 => {
                let v = Expr::select(
                    bin(BinOp::Ge, c.clone(), i32_(1 << (w - 1))),
                    bin(BinOp::Sub, c.clone(), i32_(1 << w)),
                    c,
                );
                (Expr::cast(DType::I8, v), DType::I8)
            }
            _ => (Expr::cast(DType::U8, c), DType::U8),
        });
    }
    let nan = Expr::float(DType::F32, f64::NAN);
    let c = b.bind(DType::I32, bits(DType::I32, x));
    if from == DType::F8E8M0 {
        // 2^(c - 127): the f32 whose exponent field is c, but 2^-127 is an f32 subnormal.
        let f = Expr::select(
            bin(BinOp::Eq, c.clone(), i32_(0)),
            i32_(0x40_0000),
            bin(BinOp::Shl, c.clone(), i32_(23)),
        );
        let v = Expr::select(bin(BinOp::Eq, c, i32_(0xff)), nan, bits(DType::F32, f));
        return Ok((v, DType::F32));
    }
    let Some(f) = fmt(from) else {
        return unsupported(format!("cast from {}", from.name()));
    };
    let sb = f.sign_bit();
    let man = f.man as i64;
    let mag = b.bind(DType::I32, bin(BinOp::And, c.clone(), i32_(sb - 1)));
    let e = b.bind(DType::I32, bin(BinOp::Shr, mag.clone(), i32_(man)));
    let m = b.bind(
        DType::I32,
        bin(BinOp::And, mag.clone(), i32_((1 << man) - 1)),
    );
    let normal = bin(
        BinOp::Or,
        bin(
            BinOp::Shl,
            bin(BinOp::Add, e.clone(), i32_(127 - f.bias)),
            i32_(23),
        ),
        bin(BinOp::Shl, m.clone(), i32_(23 - man)),
    );
    // Subnormals: m units of 2^(min_exp - man), exact in f32.
    let unit = 2f64.powi((f.min_exp() - man) as i32);
    let sub = bin(
        BinOp::Mul,
        Expr::cast(DType::F32, m.clone()),
        Expr::float(DType::F32, unit),
    );
    let mut magf = Expr::select(
        bin(BinOp::Eq, e.clone(), i32_(0)),
        sub,
        bits(DType::F32, normal),
    );
    match f.special {
        Special::Ieee => {
            let special = Expr::select(
                bin(BinOp::Eq, m, i32_(0)),
                Expr::float(DType::F32, f64::INFINITY),
                nan.clone(),
            );
            magf = Expr::select(bin(BinOp::Eq, e, i32_(f.exp_all_ones())), special, magf);
        }
        Special::Fn => {
            magf = Expr::select(bin(BinOp::Eq, mag, i32_(sb - 1)), nan.clone(), magf);
        }
        Special::Fnuz | Special::Finite => {}
    }
    let magf = b.bind(DType::F32, magf);
    let neg = bin(BinOp::Ne, bin(BinOp::And, c.clone(), i32_(sb)), i32_(0));
    let mut v = Expr::select(neg, Expr::un(UnOp::Neg, magf.clone()), magf);
    if f.special == Special::Fnuz {
        v = Expr::select(bin(BinOp::Eq, c, i32_(sb)), nan, v);
    }
    Ok((v, DType::F32))
}

/// A value of an ordinary type (numeric or bool) as the storage type `to`.
fn narrow(b: &mut Lets, x: Expr, from: DType, to: DType, mode: CastMode) -> Result<Expr, Fail> {
    let to_f64 = |x: Expr| {
        if from == DType::F64 {
            x
        } else {
            Expr::cast(DType::F64, x)
        }
    };
    if to.is_small_int() {
        // Floats truncate through i32, where NaN and out-of-range values give i32::MIN, whose
        // low bits are 0; integers keep their low bits.
        let v = if from.is_float() {
            let x = b.bind(DType::F64, to_f64(x));
            let inside = bin(
                BinOp::And,
                bin(BinOp::Gt, x.clone(), Expr::float(DType::F64, -2147483649.0)),
                bin(BinOp::Lt, x.clone(), Expr::float(DType::F64, 2147483648.0)),
            );
            Expr::select(inside, Expr::cast(DType::I64, x), i64_(0))
        } else {
            Expr::cast(DType::I64, x)
        };
        return Ok(bits(to, v));
    }
    if to == DType::F8E8M0 {
        let x32 = Expr::cast(DType::F32, to_f64(x));
        return Ok(bits(to, e8m0_encode(b, x32, mode)));
    }
    let Some(f) = fmt(to) else {
        return unsupported(format!("cast to {}", to.name()));
    };
    // float4 always saturates (ONNX has no option for it).
    let saturate = mode.saturate || to == DType::F4E2M1;
    let x = to_f64(x);
    Ok(bits(to, encode(b, x, f, saturate)))
}

/// The code (as `i64`) of the `f64` value `x` in format `f`: round to nearest, ties to even,
/// on the bits of `x`; NaN, overflow and zero as `lowbit::Minifloat::encode` gives them.
fn encode(b: &mut Lets, x: Expr, f: Fmt, saturate: bool) -> Expr {
    let (man, sb) = (f.man as i64, f.sign_bit());
    let u = b.bind(DType::I64, bits(DType::I64, x));
    let a = b.bind(
        DType::I64,
        bin(BinOp::And, u.clone(), i64_(0x7fff_ffff_ffff_ffff)),
    );
    let s = b.bind(
        DType::I64,
        Expr::select(bin(BinOp::Lt, u, i64_(0)), i64_(sb), i64_(0)),
    );
    // Unbiased exponent; f64 subnormals take -1023 (far below every format: they give 0).
    let e = b.bind(
        DType::I64,
        bin(BinOp::Sub, bin(BinOp::Shr, a.clone(), i64_(52)), i64_(1023)),
    );
    let sig = b.bind(
        DType::I64,
        bin(
            BinOp::Or,
            bin(BinOp::And, a.clone(), i64_((1 << 52) - 1)),
            i64_(1 << 52),
        ),
    );
    // Below the smallest normal exponent the format's unit is fixed (subnormals).
    let sub = b.bind(DType::Bool, bin(BinOp::Lt, e.clone(), i64_(f.min_exp())));
    let shift = b.bind(
        DType::I64,
        bin(
            BinOp::Min,
            Expr::select(
                sub.clone(),
                bin(BinOp::Sub, i64_(52 - man + f.min_exp()), e.clone()),
                i64_(52 - man),
            ),
            i64_(63),
        ),
    );
    let m = b.bind(DType::I64, bin(BinOp::Shr, sig.clone(), shift.clone()));
    let rest = b.bind(
        DType::I64,
        bin(
            BinOp::And,
            sig,
            bin(BinOp::Sub, bin(BinOp::Shl, i64_(1), shift.clone()), i64_(1)),
        ),
    );
    let half = b.bind(
        DType::I64,
        bin(BinOp::Shl, i64_(1), bin(BinOp::Sub, shift, i64_(1))),
    );
    let up = bin(
        BinOp::Or,
        bin(BinOp::Gt, rest.clone(), half.clone()),
        bin(
            BinOp::And,
            bin(BinOp::Eq, rest, half),
            bin(BinOp::Eq, bin(BinOp::And, m.clone(), i64_(1)), i64_(1)),
        ),
    );
    // A normal's code is ((e + bias) << man) + m - (1 << man), m holding the implicit bit;
    // a carry out of the mantissa moves into the exponent by itself.
    let base = Expr::select(
        sub,
        i64_(0),
        bin(BinOp::Shl, bin(BinOp::Add, e, i64_(f.bias - 1)), i64_(man)),
    );
    let code = b.bind(
        DType::I64,
        bin(
            BinOp::Add,
            bin(BinOp::Add, base, m),
            Expr::cast(DType::I64, up),
        ),
    );
    let inf = f.exp_all_ones() << man;
    let or_s = |v: i64| bin(BinOp::Or, s.clone(), i64_(v));
    let nan = match f.special {
        Special::Fn => or_s(sb - 1),
        Special::Ieee => or_s(inf | (1 << (man - 1))),
        Special::Fnuz => i64_(sb),
        // float4 has no NaN; ml_dtypes gives the zero of the other sign.
        Special::Finite => bin(BinOp::Xor, s.clone(), i64_(sb)),
    };
    let overflow = if saturate || f.special == Special::Finite {
        or_s(f.max_code)
    } else {
        match f.special {
            Special::Fn => or_s(sb - 1),
            Special::Ieee => or_s(inf),
            Special::Fnuz | Special::Finite => i64_(sb),
        }
    };
    let zero = if f.special == Special::Fnuz {
        i64_(0)
    } else {
        s.clone()
    };
    let is_nan = bin(BinOp::Gt, a, i64_(0x7ff0_0000_0000_0000));
    Expr::select(
        is_nan,
        nan,
        Expr::select(
            bin(BinOp::Gt, code.clone(), i64_(f.max_code)),
            overflow,
            Expr::select(
                bin(BinOp::Eq, code.clone(), i64_(0)),
                zero,
                bin(BinOp::Or, s, code),
            ),
        ),
    )
}

/// ONNX's f8e8m0 code (as `i64`) of the `f32` value `x`: its exponent field, rounded by
/// `mode.round` on the mantissa; NaN and infinities give NaN (0xff).
fn e8m0_encode(b: &mut Lets, x: Expr, mode: CastMode) -> Expr {
    let u = b.bind(DType::I64, Expr::cast(DType::I64, bits(DType::U32, x)));
    let exp = b.bind(
        DType::I64,
        bin(BinOp::And, bin(BinOp::Shr, u.clone(), i64_(23)), i64_(0xff)),
    );
    let nz = |mask: i64| bin(BinOp::Ne, bin(BinOp::And, u.clone(), i64_(mask)), i64_(0));
    let mut up = match mode.round {
        RoundMode::Up => nz(0x7f_ffff),
        RoundMode::Down => Expr::Lit(Lit::Bool(false)),
        RoundMode::Nearest => bin(
            BinOp::And,
            nz(0x40_0000),
            bin(
                BinOp::Or,
                bin(BinOp::Or, nz(0x20_0000), nz(0x1f_ffff)),
                bin(BinOp::Gt, exp.clone(), i64_(0)),
            ),
        ),
    };
    if mode.saturate {
        up = bin(BinOp::And, up, bin(BinOp::Ne, exp.clone(), i64_(0xfe)));
    }
    Expr::select(
        bin(BinOp::Eq, exp.clone(), i64_(0xff)),
        i64_(0xff),
        bin(BinOp::Add, exp, Expr::cast(DType::I64, up)),
    )
}

/// `QuantizeLinear` to a storage type and `DequantizeLinear` from one, per tensor or per
/// channel of `axis` (not blocked), with the interpreter's precision: the quotient in the
/// promoted type of `x / scale`, then a cast (small floats, `saturate` as given; f4e2m1 adds
/// its zero point first) or rounding, zero point and clamping (small ints); dequantization in
/// `f32` (`f64` for an `f64` scale), the zero point of the small floats ignored.
pub(super) fn qdq(
    cx: &mut Cx,
    node: &Node,
    axis: usize,
    to: DType,
    saturate: bool,
    quantize: bool,
    block: usize,
) -> Result<(), Fail> {
    let (Some(x), Some(s)) = (node.input(0), node.input(1)) else {
        return unsupported("missing input");
    };
    let zp = node.input(2);
    let xs = cx.shape(x)?;
    let (xt, st) = (cx.dtype(x), cx.dtype(s));
    let zt = zp.map(|z| cx.dtype(z));
    let ps = cx.shape(s)?;
    let per_axis = ps.iter().product::<usize>() > 1;
    let storage = if quantize { to } else { xt };
    let blocked = block > 0 && ps.len() == xs.len() && axis < xs.len();
    let ok_type = storage.is_storage_only() || (blocked && int_range(storage).is_some());
    if !ok_type || (per_axis && axis >= xs.len()) || (block > 0 && !blocked) {
        return unsupported("quantization of this type");
    }
    let pst = strides(&ps);
    let out = cx.new_buffer(node.outputs[0], BufKind::Temp)?;
    let mut kb = KernelBuilder::new(kernel_name(&node.op));
    let xp = kb.param(&cx.p, cx.buf(x)?, Access::Read);
    let sp = kb.param(&cx.p, cx.buf(s)?, Access::Read);
    let zpp = cx.opt_param(&mut kb, zp, Access::Read)?;
    let op_ = kb.param(&cx.p, out, Access::Write);
    let xst = strides(&xs);
    let mut failure = None;
    let body = loop_nest(&mut kb, &xs, |kb, v| {
        let mut idx = Expr::idx(0);
        for (d, s) in xst.iter().enumerate() {
            idx = Expr::add_idx(idx, Expr::mul_idx(Expr::var(v[d]), *s));
        }
        let pidx = if blocked {
            // Blocks of `block` elements along `axis` share a parameter.
            let mut i = Expr::idx(0);
            for (d, st) in pst.iter().enumerate() {
                let c = Expr::var(v[d]);
                let c = if d == axis {
                    bin(BinOp::Div, c, Expr::idx(block as i64))
                } else {
                    c
                };
                i = Expr::add_idx(i, Expr::mul_idx(c, *st));
            }
            i
        } else if per_axis {
            Expr::var(v[axis])
        } else {
            Expr::idx(0)
        };
        let mut stmts = Vec::new();
        let mut b = Lets {
            var: &mut |t| kb.var(t),
            stmts: &mut stmts,
        };
        let value = (|| -> Result<Expr, Fail> {
            let mode = CastMode {
                saturate,
                round: RoundMode::Up,
            };
            // A value of type `t` as type `want` (storage values widened exactly first).
            let as_ty = |b: &mut Lets, e: Expr, t: DType, want: DType| -> Result<Expr, Fail> {
                convert(b, e, t, want, mode)
            };
            let xv = Expr::load(xp, idx.clone());
            let sv = Expr::load(sp, pidx.clone());
            let zv = zpp.zip(zt).map(|(p, t)| (Expr::load(p, pidx.clone()), t));
            if !quantize {
                let prec = if st == DType::F64 {
                    DType::F64
                } else {
                    DType::F32
                };
                let mut d = as_ty(&mut b, xv, xt, prec)?;
                if let (Some((z, t)), true) = (zv, xt.is_small_int() || xt.is_int()) {
                    d = bin(BinOp::Sub, d, as_ty(&mut b, z, t, prec)?);
                }
                let y = bin(BinOp::Mul, d, as_ty(&mut b, sv, st, prec)?);
                return as_ty(&mut b, y, prec, to);
            }
            let prec = match (xt, st) {
                _ if xt == st => xt,
                (DType::F64, _) | (_, DType::F64) => DType::F64,
                _ if !xt.is_float() || !st.is_float() => DType::F64,
                _ => DType::F32,
            };
            let q = bin(
                BinOp::Div,
                as_ty(&mut b, xv, xt, prec)?,
                as_ty(&mut b, sv, st, prec)?,
            );
            if to.is_small_float() {
                let q = match zv {
                    Some((z, t)) if to == DType::F4E2M1 => {
                        bin(BinOp::Add, q, as_ty(&mut b, z, t, prec)?)
                    }
                    _ => q,
                };
                return as_ty(&mut b, q, prec, to);
            }
            let (lo, hi) = int_range(to).unwrap_or((0, 0));
            let r = as_ty(&mut b, Expr::un(UnOp::Round, q), prec, DType::F64)?;
            let r = match zv {
                Some((z, t)) => bin(BinOp::Add, r, as_ty(&mut b, z, t, DType::F64)?),
                None => r,
            };
            let c = bin(
                BinOp::Min,
                bin(BinOp::Max, r, Expr::float(DType::F64, lo as f64)),
                Expr::float(DType::F64, hi as f64),
            );
            let c = Expr::cast(DType::I64, c);
            Ok(if to.is_storage_only() {
                bits(to, c)
            } else {
                Expr::cast(to, c)
            })
        })();
        match value {
            Ok(value) => stmts.push(Stmt::Store {
                param: op_,
                index: idx,
                value,
            }),
            Err(f) => failure = Some(f),
        }
        stmts
    });
    if let Some(f) = failure {
        return Err(f);
    }
    kb.k.body = body;
    cx.launch(kb, node);
    Ok(())
}

/// The range of an integer quantization type (ordinary or 4/2-bit).
fn int_range(t: DType) -> Option<(i64, i64)> {
    let w = t.bits()? as i64;
    match t {
        DType::I8 | DType::I16 | DType::I32 | DType::I4 | DType::I2 => {
            Some((-(1i64 << (w - 1)), (1i64 << (w - 1)) - 1))
        }
        DType::U8 | DType::U16 | DType::U4 | DType::U2 => Some((0, (1i64 << w) - 1)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    //! Every conversion against the interpreter, bit for bit, on every code of each storage
    //! type and on values around every rounding boundary of each target.

    use crate::{lower_graph_unfolded, print_program, run_program};
    use mlc_ir::{DType, Tensor, parse_graph};

    const STORAGE: [DType; 10] = [
        DType::F8E4M3FN,
        DType::F8E4M3FNUZ,
        DType::F8E5M2,
        DType::F8E5M2FNUZ,
        DType::F8E8M0,
        DType::F4E2M1,
        DType::I4,
        DType::U4,
        DType::I2,
        DType::U2,
    ];

    const ORDINARY: [DType; 12] = [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I8,
        DType::U8,
        DType::I16,
        DType::I32,
        DType::U32,
        DType::I64,
        DType::U64,
        DType::Bool,
    ];

    /// Every code of a storage type.
    fn all_codes(t: DType) -> Tensor {
        let bits = t.bits().expect("fixed width");
        let n = 1usize << bits;
        let per = 8 / bits;
        let mut bytes = vec![0u8; n.div_ceil(per)];
        for c in 0..n {
            bytes[c / per] |= (c as u8) << ((c % per) * bits);
        }
        Tensor::from_le_bytes(t, &[n], &bytes).expect("codes")
    }

    /// f64 values around every value of every storage float (the values, the midpoints
    /// between neighbours and the f32/f64 next to them), plus specials and far values.
    fn probe_values() -> Vec<f64> {
        let mut grid: Vec<f64> = Vec::new();
        for t in STORAGE {
            let v = all_codes(t).to_f64_vec().expect("values");
            grid.extend(v.iter().filter(|x| x.is_finite()));
        }
        grid.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        grid.dedup();
        let mut out = Vec::new();
        for w in grid.windows(2) {
            for x in [w[0], (w[0] + w[1]) / 2.0] {
                let f = x as f32;
                out.extend([
                    x,
                    f64::from(f32::from_bits(f.to_bits().wrapping_add(1))),
                    f64::from(f32::from_bits(f.to_bits().wrapping_sub(1))),
                    f64::from_bits(x.to_bits() + 1),
                    f64::from_bits(x.to_bits().saturating_sub(1)),
                ]);
            }
        }
        out.extend([
            0.0,
            -0.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            -f64::NAN,
            1e300,
            -1e300,
            1e-300,
            5e-324,
            3e38,
            1e39,
            65504.0,
            2.5,
            -3.5,
            1e10,
            -1e10,
            2147483647.5,
            -2147483648.5,
            -2147483649.0,
        ]);
        // Powers of two and their neighbours, for f8e8m0 and exponent edges.
        for e in -140..130 {
            let p = 2f64.powi(e);
            out.extend([p, p * 1.25, p * 1.5, p * 1.75, -p * 1.5]);
        }
        out
    }

    /// `x` cast by the interpreter and by the lowered kernel; panics on the first difference.
    fn check(op: &str, x: &Tensor, to: DType) {
        let from = x.dtype();
        let n = x.len();
        let src = format!(
            "graph (%0: {}[{n}] \"x\") -> (%1 \"y\") {{\n  %1 = {op} (%0) : {}[{n}]\n}}",
            from.name(),
            to.name()
        );
        let g = parse_graph(&src).unwrap_or_else(|e| panic!("bad graph {src}: {e}"));
        let want = mlc_interp::run(&g, &[("x".to_string(), x.clone())])
            .unwrap_or_else(|e| panic!("interpreter on {src}: {e}"));
        let prog = lower_graph_unfolded(&g).unwrap_or_else(|e| panic!("lowering {src}: {e}"));
        for k in &prog.kernels {
            crate::verify_kernel(k).unwrap_or_else(|e| panic!("{src}: {e:?}"));
        }
        let got = run_program(&prog, std::slice::from_ref(x))
            .unwrap_or_else(|e| panic!("evaluation of {src}: {e}"));
        let (w, g_) = (
            want[0].to_le_bytes().unwrap(),
            got[0].to_le_bytes().unwrap(),
        );
        // The evaluator holds f32 values in f64s, which may quiet a signalling NaN: floats
        // compare as values there, every NaN equal.
        let same = if to.is_float() {
            let (a, b) = (want[0].to_f64_vec().unwrap(), got[0].to_f64_vec().unwrap());
            a.iter()
                .zip(&b)
                .all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()))
        } else {
            w == g_
        };
        if !same {
            let xs = x.to_f64_vec().unwrap_or_default();
            let (wv, gv) = (want[0].to_f64_vec().unwrap(), got[0].to_f64_vec().unwrap());
            let i = (0..n)
                .find(|&i| wv[i].to_bits() != gv[i].to_bits())
                .unwrap_or(0);
            panic!(
                "{src}\nelement {i}: x = {:?}, interpreter {:?}, kernel {:?}\n{}",
                xs.get(i),
                wv[i],
                gv[i],
                print_program(&prog)
            );
        }
    }

    /// The serde spelling of a dtype in op attributes (`bf16` is `b_f16` there).
    fn attr(t: DType) -> &'static str {
        if t == DType::BF16 { "b_f16" } else { t.name() }
    }

    fn cast(to: DType) -> String {
        format!("ew.cast {{\"to\":\"{}\"}}", attr(to))
    }

    #[test]
    fn storage_to_every_type() {
        for from in STORAGE {
            let x = all_codes(from);
            for to in ORDINARY.into_iter().chain(STORAGE) {
                check(&cast(to), &x, to);
            }
        }
    }

    #[test]
    fn floats_to_storage_in_every_mode() {
        let v = probe_values();
        for from in [DType::F32, DType::F64, DType::F16, DType::BF16] {
            let x = Tensor::from_vec(&[v.len()], v.clone())
                .and_then(|t| t.cast(from))
                .expect("probe");
            for to in STORAGE {
                check(&cast(to), &x, to);
            }
            for to in STORAGE.into_iter().filter(|t| t.is_small_float()) {
                if to == DType::F4E2M1 {
                    continue;
                }
                for sat in [false, true] {
                    for round in ["up", "down", "nearest"] {
                        let op = format!(
                            "ew.cast_f8 {{\"to\":\"{}\",\"saturate\":{sat},\"round\":\"{round}\"}}",
                            to.name()
                        );
                        check(&op, &x, to);
                    }
                }
            }
        }
    }

    #[test]
    fn half_bit_patterns_to_storage() {
        // Every 7th pattern, and the specials: NaNs, infinities, subnormals, ties.
        let pats: Vec<u16> = (0..=u16::MAX)
            .step_by(7)
            .chain([0x7c00, 0xfc00, 0x7e00, 0x0001, 0x8001, 0x7f80, 0xff80])
            .collect();
        let bytes: Vec<u8> = pats.iter().flat_map(|p| p.to_le_bytes()).collect();
        for from in [DType::F16, DType::BF16] {
            let x = Tensor::from_le_bytes(from, &[pats.len()], &bytes).expect("halves");
            for to in STORAGE {
                check(&cast(to), &x, to);
            }
        }
    }

    #[test]
    fn ints_to_storage() {
        let v: Vec<i64> = (-300..300)
            .chain([i64::MIN, i64::MAX, i32::MIN as i64, u32::MAX as i64])
            .collect();
        for from in [
            DType::I8,
            DType::U8,
            DType::I32,
            DType::U32,
            DType::I64,
            DType::U64,
            DType::Bool,
        ] {
            let x = Tensor::from_vec(&[v.len()], v.clone())
                .and_then(|t| t.cast(from))
                .expect("ints");
            for to in STORAGE {
                check(&cast(to), &x, to);
            }
        }
    }

    /// Runs `src` (inputs `xs`) through the interpreter and the lowered kernels; the outputs
    /// must match bit for bit (NaNs of any payload equal).
    fn check_graph(src: &str, xs: &[Tensor]) {
        let g = parse_graph(src).unwrap_or_else(|e| panic!("bad graph {src}: {e}"));
        let named: Vec<(String, Tensor)> = g
            .inputs
            .iter()
            .zip(xs)
            .map(|(p, t)| (p.name.clone(), t.clone()))
            .collect();
        let want = mlc_interp::run(&g, &named).unwrap_or_else(|e| panic!("{src}: {e}"));
        let prog = lower_graph_unfolded(&g).unwrap_or_else(|e| panic!("lowering {src}: {e}"));
        let got = run_program(&prog, xs).unwrap_or_else(|e| panic!("evaluating {src}: {e}"));
        let (a, b) = (want[0].to_f64_vec().unwrap(), got[0].to_f64_vec().unwrap());
        let same = want[0].to_le_bytes().ok() == got[0].to_le_bytes().ok()
            || (want[0].dtype().is_float()
                && a.iter()
                    .zip(&b)
                    .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())));
        assert!(same, "{src}\n{a:?}\n{b:?}\n{}", print_program(&prog));
    }

    #[test]
    fn quantize_and_dequantize_storage_types() {
        let v = probe_values();
        let n = v.len() / 3 * 3;
        let x = Tensor::from_vec(&[n / 3, 3], v[..n].to_vec()).expect("x");
        let scale = Tensor::from_vec(&[3], vec![0.5f32, 3.0, 0.0625]).expect("scale");
        let s1 = Tensor::from_vec(&[], vec![0.75f32]).expect("scale");
        for to in STORAGE {
            let zp = Tensor::from_vec(&[3], vec![1i64, 0, -1])
                .and_then(|t| t.cast(DType::F32))
                .and_then(|t| t.cast(to))
                .expect("zp");
            for xt in [DType::F32, DType::F16] {
                let xq = x.cast(xt).expect("x");
                let (t, r) = (to.name(), n / 3);
                let sat = if to == DType::F4E2M1 || !to.is_small_float() {
                    ""
                } else {
                    ",\"saturate\":false"
                };
                let src = format!(
                    "graph (%0: {}[{r},3] \"x\", %1: f32[3] \"s\", %2: {t}[3] \"z\") -> (%3 \"y\") {{\n  %3 = quant.quantize {{\"axis\":1,\"block_size\":0,\"to\":\"{t}\"{sat}}} (%0, %1, %2) : {t}[{r},3]\n}}",
                    xt.name()
                );
                check_graph(&src, &[xq.clone(), scale.clone(), zp.clone()]);
                let src = format!(
                    "graph (%0: {}[{r},3] \"x\", %1: f32[] \"s\") -> (%2 \"y\") {{\n  %2 = quant.quantize {{\"axis\":1,\"block_size\":0,\"to\":\"{t}\"}} (%0, %1) : {t}[{r},3]\n}}",
                    xt.name()
                );
                check_graph(&src, &[xq, s1.clone()]);
            }
            let q = all_codes(to);
            let m = q.len();
            let zp = if to.is_small_float() {
                Tensor::from_vec(&[], vec![0.0f32]).and_then(|t| t.cast(to))
            } else {
                Tensor::from_vec(&[], vec![1i64]).and_then(|t| t.cast(to))
            }
            .expect("zp");
            let t = to.name();
            let src = format!(
                "graph (%0: {t}[{m}] \"x\", %1: f32[] \"s\", %2: {t}[] \"z\") -> (%3 \"y\") {{\n  %3 = quant.dequantize {{\"axis\":0,\"block_size\":0,\"to\":\"f32\"}} (%0, %1, %2) : f32[{m}]\n}}"
            );
            if to == DType::F8E8M0 {
                // No zero point: f8e8m0 has no zero.
                let src = format!(
                    "graph (%0: {t}[{m}] \"x\", %1: f32[] \"s\") -> (%2 \"y\") {{\n  %2 = quant.dequantize {{\"axis\":0,\"block_size\":0,\"to\":\"f32\"}} (%0, %1) : f32[{m}]\n}}"
                );
                check_graph(&src, &[q, s1.clone()]);
            } else {
                check_graph(&src, &[q, s1.clone(), zp]);
            }
        }
    }

    #[test]
    fn blocked_quantization() {
        let v = probe_values();
        let x = Tensor::from_vec(&[4, 6], v[100..124].to_vec())
            .and_then(|t| t.cast(DType::F32))
            .expect("x");
        let sv: Vec<f32> = vec![0.5, 3.0, 0.0625, 2.0, 1.5, 0.25, 8.0, 0.75];
        let s = Tensor::from_vec(&[4, 2], sv).expect("scale");
        for to in [DType::U8, DType::I8, DType::I4, DType::F8E4M3FN, DType::U16] {
            let zp = Tensor::from_vec(&[4, 2], vec![1i64, 0, 3, 2, 0, 1, 2, 0])
                .and_then(|t| t.cast(DType::F32))
                .and_then(|t| t.cast(to))
                .expect("zp");
            let t = to.name();
            let src = format!(
                "graph (%0: f32[4,6] \"x\", %1: f32[4,2] \"s\", %2: {t}[4,2] \"z\") -> (%3 \"y\") {{\n  %3 = quant.quantize {{\"axis\":1,\"block_size\":4,\"to\":\"{t}\"}} (%0, %1, %2) : {t}[4,6]\n}}"
            );
            check_graph(&src, &[x.clone(), s.clone(), zp.clone()]);
            let q = x.cast(to).expect("q");
            let src = format!(
                "graph (%0: {t}[4,6] \"x\", %1: f32[4,2] \"s\", %2: {t}[4,2] \"z\") -> (%3 \"y\") {{\n  %3 = quant.dequantize {{\"axis\":1,\"block_size\":4,\"to\":\"f32\"}} (%0, %1, %2) : f32[4,6]\n}}"
            );
            // A float8 zero point must be zero in dequantization.
            let zp = if to.is_small_float() {
                Tensor::zeros(DType::F32, &[4, 2]).cast(to).expect("zp")
            } else {
                zp
            };
            check_graph(&src, &[q, s.clone(), zp]);
        }
    }

    #[test]
    fn bit_casts() {
        let v = probe_values();
        let x = Tensor::from_vec(&[v.len()], v).expect("probe");
        for (from, to) in [
            (DType::F64, DType::I64),
            (DType::F64, DType::U64),
            (DType::F32, DType::I32),
            (DType::F32, DType::U32),
        ] {
            let xf = x.cast(from).expect("probe");
            let op = |t: DType| format!("ew.bit_cast {{\"to\":\"{}\"}}", attr(t));
            check(&op(to), &xf, to);
            let back = xf.cast(to).expect("ints");
            check(&op(from), &back, from);
        }
        for from in STORAGE.into_iter().filter(|t| t.size() == Some(1)) {
            let x = all_codes(from);
            for to in [DType::U8, DType::I8, DType::F8E5M2, DType::F8E8M0] {
                check(&format!("ew.bit_cast {{\"to\":\"{}\"}}", to.name()), &x, to);
            }
        }
    }
}
