//! The kernel IR's data types: programs, kernels, statements, scalar expressions.
//!
//! Entities are `u32` newtypes indexing the tables of their owner (buffers of a [`Program`];
//! params and variables of a [`Kernel`]), as in Cranelift.

use mlc_ir::{DType, Tensor};

/// A program-level buffer: one tensor's storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufId(pub u32);

/// A kernel's parameter: the `i`-th buffer passed to a launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub u32);

/// A kernel-local scalar variable: a loop counter, a `let`, or an accumulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VarId(pub u32);

/// Index of a kernel in [`Program::kernels`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KernelId(pub u32);

/// A whole model at kernel level: buffers, the distinct kernels, and the launches in order.
#[derive(Clone, Debug, Default)]
pub struct Program {
    pub buffers: Vec<Buffer>,
    /// Constant data, referenced by [`BufKind::Const`].
    pub consts: Vec<Tensor>,
    /// Distinct kernels; identical kernels are shared by several steps.
    pub kernels: Vec<Kernel>,
    pub steps: Vec<Step>,
    /// The program's inputs, in the graph's order, by name.
    pub inputs: Vec<(String, BufId)>,
    /// The program's outputs, in the graph's order, by name.
    pub outputs: Vec<(String, BufId)>,
    /// Inputs the program was specialized to (`mlc_passes::specialize`): it computes with these
    /// values baked in, so running it with any other value for such an input is an error.
    pub guards: Vec<(String, Tensor)>,
    /// Inputs whose axis 0 is a batch the program computes element by element
    /// (`mlc_passes::batch`): a runtime may run a multiple of it as slices, and every output
    /// then carries the batch on axis 0 too. Empty when that was not shown.
    pub batched: Vec<String>,
    /// The model's names for the inputs' dims before they were bound (`seq` in
    /// `i64[batch,seq]`; `None` for a static or unnamed dim), by input name: what a runtime
    /// shows and matches `--dim NAME=SIZE` against. Empty for inputs with no named dim.
    pub dim_names: Vec<(String, Vec<Option<String>>)>,
}

impl Program {
    /// The guard value of input `name`, if the program was specialized to one.
    pub fn guard(&self, name: &str) -> Option<&Tensor> {
        self.guards.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// The model's names of input `name`'s dims ([`Program::dim_names`]); empty if none.
    pub fn dim_names_of(&self, name: &str) -> Vec<Option<String>> {
        self.dim_names
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.clone())
            .unwrap_or_default()
    }
}

impl Program {
    pub fn add_buffer(&mut self, dtype: DType, shape: Vec<usize>, kind: BufKind) -> BufId {
        self.buffers.push(Buffer { dtype, shape, kind });
        BufId(self.buffers.len() as u32 - 1)
    }

    pub fn buffer(&self, b: BufId) -> &Buffer {
        &self.buffers[b.0 as usize]
    }

    pub fn kernel(&self, k: KernelId) -> &Kernel {
        &self.kernels[k.0 as usize]
    }

    /// Follows aliases to the buffer that owns the storage.
    pub fn storage_of(&self, b: BufId) -> BufId {
        self.location(b).0
    }

    /// Where `b`'s first element lies: the buffer owning the storage and the element offset
    /// in it (aliases followed, their offsets summed).
    pub fn location(&self, mut b: BufId) -> (BufId, usize) {
        let mut at = 0;
        while let BufKind::Alias { of, offset } = self.buffer(b).kind {
            b = of;
            at += offset;
        }
        (b, at)
    }

    /// Adds `kernel` unless an identical one exists, and returns its id. Sharing identical
    /// kernels keeps code size proportional to distinct shapes, not to model depth.
    pub fn intern_kernel(&mut self, kernel: Kernel) -> KernelId {
        if let Some(i) = self.kernels.iter().position(|k| k.same_code(&kernel)) {
            return KernelId(i as u32);
        }
        self.kernels.push(kernel);
        KernelId(self.kernels.len() as u32 - 1)
    }
}

/// One tensor's storage: a flat row-major array of `product(shape)` elements.
#[derive(Clone, Debug, PartialEq)]
pub struct Buffer {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub kind: BufKind,
}

impl Buffer {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a buffer's bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufKind {
    /// The `i`-th program input.
    Input(usize),
    /// `Program::consts[i]`.
    Const(usize),
    /// Written by a step; the memory planner places it.
    Temp,
    /// The same bytes as another buffer under another shape (reshape, squeeze, identity):
    /// `of`'s elements from `offset` on. A nonzero offset places a value inside a larger one
    /// (a concatenation's part: `concat.rs`); such an alias has its target's element type.
    Alias { of: BufId, offset: usize },
}

impl BufKind {
    /// An alias of all of `of`, from its first element.
    pub fn alias(of: BufId) -> BufKind {
        BufKind::Alias { of, offset: 0 }
    }
}

/// A launch: `kernel` runs with `args[i]` bound to its `ParamId(i)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub kernel: KernelId,
    pub args: Vec<BufId>,
    /// The graph node this step came from, for diagnostics and `--explain`.
    pub origin: Option<String>,
}

/// How a kernel uses a parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

/// A kernel parameter: a flat buffer of `len` elements of `dtype`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Param {
    pub dtype: DType,
    pub len: usize,
    pub access: Access,
}

/// A kernel: straight-line statements and loops over its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    pub name: String,
    pub params: Vec<Param>,
    /// The type of every variable; loop counters are `I64`.
    pub vars: Vec<DType>,
    pub body: Vec<Stmt>,
}

impl Kernel {
    pub fn new(name: impl Into<String>) -> Kernel {
        Kernel {
            name: name.into(),
            params: Vec::new(),
            vars: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn param(&mut self, dtype: DType, len: usize, access: Access) -> ParamId {
        self.params.push(Param { dtype, len, access });
        ParamId(self.params.len() as u32 - 1)
    }

    pub fn var(&mut self, ty: DType) -> VarId {
        self.vars.push(ty);
        VarId(self.vars.len() as u32 - 1)
    }

    pub fn var_ty(&self, v: VarId) -> DType {
        self.vars[v.0 as usize]
    }

    /// Two kernels with the same code differ at most in their names.
    pub fn same_code(&self, other: &Kernel) -> bool {
        self.params == other.params && self.vars == other.vars && self.body == other.body
    }

    /// The type of `e` in this kernel. Well-typedness is the verifier's business; this assumes
    /// it.
    pub fn type_of(&self, e: &Expr) -> DType {
        match e {
            Expr::Var(v) => self.var_ty(*v),
            Expr::Lit(l) => l.ty(),
            Expr::Load { param, .. } => self.params[param.0 as usize].dtype,
            Expr::Unary(op, a) => match op {
                UnOp::IsNan | UnOp::IsInf => DType::Bool,
                UnOp::Bitcast(t) => *t,
                _ => self.type_of(a),
            },
            Expr::Binary(op, a, _) => {
                if op.is_comparison() {
                    DType::Bool
                } else {
                    self.type_of(a)
                }
            }
            Expr::Select { then, .. } => self.type_of(then),
            Expr::Cast(ty, _) => *ty,
        }
    }
}

/// How a loop's iterations may be executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LoopKind {
    /// In order.
    Serial,
    /// Iterations are independent and write disjoint elements: CPU threads, the GPU grid.
    Parallel,
    /// Iterations are independent and the loop is innermost: SIMD lanes. A reduction into an
    /// outer variable (`acc = acc ⊕ e`, ⊕ associative and commutative) counts as independent:
    /// a backend may reassociate it (which changes float rounding slightly).
    Vector,
}

/// A statement.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `for var in 0..extent { body }`; `extent` is an `I64` expression evaluated once.
    For {
        var: VarId,
        extent: Expr,
        kind: LoopKind,
        body: Vec<Stmt>,
    },
    /// Defines `var` (of its declared type) for the rest of the enclosing block.
    Let { var: VarId, value: Expr },
    /// Overwrites a variable defined by an enclosing `Let`: accumulators.
    Assign { var: VarId, value: Expr },
    /// `param[index] = value`.
    Store {
        param: ParamId,
        index: Expr,
        value: Expr,
    },
    /// A contraction, executed by a library kernel of the backend.
    Matmul(Box<Matmul>),
    /// A 2-D depthwise convolution, executed by a library kernel of the backend (or expanded
    /// to loops by [`crate::expand_depthwise`] for a backend without one).
    Depthwise(Box<Depthwise>),
    /// A softmax over contiguous `f32` rows, executed by a library kernel of the backend (or
    /// expanded to loops by [`crate::expand_softmax`] for a backend without one).
    Softmax(Box<Softmax>),
}

/// A strided 2-D view of a parameter: element `(r, c)` is at
/// `offset + r * row_stride + c * col_stride`. A zero stride broadcasts.
#[derive(Clone, Debug, PartialEq)]
pub struct MatRef {
    pub param: ParamId,
    pub offset: Expr,
    pub row_stride: i64,
    pub col_stride: i64,
}

impl MatRef {
    /// A view of element 0 of `param` broadcast to every `(r, c)`.
    pub fn scalar(param: ParamId) -> MatRef {
        MatRef {
            param,
            offset: Expr::idx(0),
            row_stride: 0,
            col_stride: 0,
        }
    }
}

/// `C = act(alpha * A·B + beta * C + bias)` with `A: m×k`, `B: k×n`, `C: m×n`, accumulated in
/// f32 (floats) or i32 (integers).
#[derive(Clone, Debug, PartialEq)]
pub struct Matmul {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: MatRef,
    pub b: MatRef,
    pub c: MatRef,
    pub alpha: f32,
    /// 0 overwrites C; C's old value is then never read.
    pub beta: f32,
    /// Added after scaling; broadcast through its strides to `m×n`.
    pub bias: Option<MatRef>,
    pub act: Activation,
    /// Integer requantization of the `i32` result into C (`u8` or `i8`), applied last;
    /// `None` stores the result itself.
    pub requant: Option<Requant>,
    /// An elementwise tail run on every element of C once it is final (see [`TileTail`]);
    /// `None` for a plain contraction.
    pub tail: Option<TileTail>,
    /// `Some`: `B` is not a matrix in memory but the column matrix of a 2-D convolution, read
    /// straight from the image that `b` points to (implicit GEMM, see [`Im2col`]); `b`'s
    /// strides are then unused (zero).
    pub b_im2col: Option<Box<Im2col>>,
}

/// The column matrix (`k×n`) of a 2-D convolution's image, as a contraction's `B`: row
/// `k = (c·kh + ky)·kw + kx`, column `j = oy·ow + ox` is
///
/// ```text
/// iy = oy·stride[0] + ky·dilation[0] - pad[0];  ix = ox·stride[1] + kx·dilation[1] - pad[1]
/// B(k, j) = inside ? image[offset + c·ih·iw + iy·iw + ix] : fill
/// ```
///
/// with `offset` the `b` view's, `inside` meaning `0 ≤ iy < ih` and `0 ≤ ix < iw`, and `fill`
/// zero or element 0 of a parameter. A backend may copy it into a column matrix block by
/// block, or read the image as it packs `B`, instead of materializing all of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Im2col {
    /// Input channels: the matrix has `channels·kernel[0]·kernel[1]` rows.
    pub channels: usize,
    pub in_hw: [usize; 2],
    /// The output map: the matrix has `out_hw[0]·out_hw[1]` columns.
    pub out_hw: [usize; 2],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// Top and left padding.
    pub pad: [usize; 2],
    /// The value of padded taps: `None` zero, `Some(p)` element 0 of `p` (an integer
    /// convolution's input zero point, so that padded taps contribute nothing).
    pub fill: Option<ParamId>,
}

impl Im2col {
    /// Rows and columns of the matrix.
    pub fn dims(&self) -> (usize, usize) {
        (
            self.channels * self.kernel[0] * self.kernel[1],
            self.out_hw[0] * self.out_hw[1],
        )
    }

    /// `channels, ih, iw, oh, ow, kh, kw, sh, sw, dh, dw, pad top, pad left`: the order of
    /// the text form and of the CPU ABI's words.
    pub fn geometry(&self) -> [usize; 13] {
        let [ih, iw] = self.in_hw;
        let [oh, ow] = self.out_hw;
        let [kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        let [dh, dw] = self.dilation;
        let [pt, pl] = self.pad;
        [
            self.channels,
            ih,
            iw,
            oh,
            ow,
            kh,
            kw,
            sh,
            sw,
            dh,
            dw,
            pt,
            pl,
        ]
    }

    /// Elements of the image read past the view's offset: `channels·ih·iw`.
    pub fn image_len(&self) -> usize {
        self.channels * self.in_hw[0] * self.in_hw[1]
    }

    /// The image element (relative to the view's offset) that `B(k, j)` reads, or `None` for
    /// a padded tap. `k` and `j` must be inside [`Im2col::dims`].
    pub fn source(&self, k: usize, j: usize) -> Option<usize> {
        let (kh, kw) = (self.kernel[0], self.kernel[1]);
        let (c, ky, kx) = (k / (kh * kw), (k / kw) % kh, k % kw);
        let (oy, ox) = (j / self.out_hw[1], j % self.out_hw[1]);
        let iy = (oy * self.stride[0] + ky * self.dilation[0]).checked_sub(self.pad[0])?;
        let ix = (ox * self.stride[1] + kx * self.dilation[1]).checked_sub(self.pad[1])?;
        let [ih, iw] = self.in_hw;
        (iy < ih && ix < iw).then_some((c * ih + iy) * iw + ix)
    }
}

/// The elementwise kernel that reads a contraction's result back, fused into it: after C is
/// final, `body` runs once for every element `(row, col)` of the `m×n` result, with the
/// `I64` variables `row` and `col` bound to its coordinates.
///
/// `body` is straight-line (`let`s and stores). It reads C only at the element `(row, col)`
/// and writes each of its outputs only at an index that is injective in `(row, col)`; its
/// other loads read buffers that neither the contraction nor the body writes. So the
/// elements may run in any order, tile by tile while each block of C is still in cache
/// (which is what the CPU backend does), and the evaluator runs them in row-major order.
#[derive(Clone, Debug, PartialEq)]
pub struct TileTail {
    pub row: VarId,
    pub col: VarId,
    pub body: Vec<Stmt>,
}

// ---- Depthwise convolution -------------------------------------------------------------

/// A 2-D depthwise convolution of `f32` NCHW planes with a fused epilogue:
///
/// ```text
/// for n, m (= c·mult + j), oy, ox:
///   acc = bias[m] (or 0.0)
///   for ky, kx (in this order):
///     iy = oy·stride[0] + ky·dilation[0] - pad[0];  ix = ox·stride[1] + kx·dilation[1] - pad[1]
///     acc = acc + (inside ? x[n, m / mult, iy, ix] : 0.0) · w[m, ky, kx]
///   out[n, m, oy, ox] = epilogue(acc)
/// ```
///
/// every operation an `f32` one, padding read as `0.0` and added like any tap. The evaluator
/// rounds each tap's multiply and then its add; a backend may fuse them into one multiply-add
/// (the CPU kernels do), which differs by at most one rounding per tap. The buffers are whole parameters: `x` of
/// `batch·channels·in_hw`, `w` of `channels·mult·kernel`, `bias` of `channels·mult`, `out`
/// of `batch·channels·mult·out_hw` elements.
///
/// Quantized convolutions keep their integers: `x` may be `u8`/`i8`, read as
/// `f32(x) - f32(x_zero[0])` (or `f32(x)` without a zero point), and `out` may be `i32`,
/// `u8` or `i8`, stored as `cast<out>(epilogue(acc))` (saturating, NaN as 0). With 8-bit
/// inputs and integral weights every product and partial sum of up to 258 taps is an integer
/// below 2^24, so a fused multiply-add changes nothing and the result is the integer
/// convolution's; `w`, `bias` and the epilogue stay `f32`.
#[derive(Clone, Debug, PartialEq)]
pub struct Depthwise {
    pub batch: usize,
    /// Input channels.
    pub channels: usize,
    /// Output channels per input channel.
    pub mult: usize,
    pub in_hw: [usize; 2],
    pub out_hw: [usize; 2],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// Top and left pads; the bottom and right ones follow from the sizes.
    pub pad: [usize; 2],
    pub x: ParamId,
    /// The zero point of an 8-bit `x` (element 0, of `x`'s type); `None` for `f32` inputs and
    /// 8-bit ones without one.
    pub x_zero: Option<ParamId>,
    pub w: ParamId,
    pub bias: Option<ParamId>,
    pub out: ParamId,
    pub epilogue: Vec<EpOp>,
}

impl Depthwise {
    /// Whether the convolution reads `p` (an operand or an epilogue scalar).
    pub fn reads_operand(&self, p: ParamId) -> bool {
        self.x == p
            || self.x_zero == Some(p)
            || self.w == p
            || self.bias == Some(p)
            || self.epilogue.iter().any(|op| {
                matches!(op, EpOp::Bin { arg: EpArg::Scalar(q) | EpArg::Channel(q), .. } if *q == p)
                    || matches!(op, EpOp::Table { table, .. } if *table == p)
            })
    }

    /// Element counts of `x`, `w` and `out`.
    pub fn lens(&self) -> (usize, usize, usize) {
        let m = self.channels * self.mult;
        (
            self.batch * self.channels * self.in_hw[0] * self.in_hw[1],
            m * self.kernel[0] * self.kernel[1],
            self.batch * m * self.out_hw[0] * self.out_hw[1],
        )
    }
}

/// One step of a depthwise epilogue: a straight-line program on two `f32` registers, the value
/// `x` and a saved value `s`, both the accumulator at the start; the result is `x`. Operations
/// are `add`, `sub`, `mul`, `div`, `max`, `min` with the semantics of [`BinOp`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EpOp {
    /// `x = x op arg`, or `arg op x` when `arg_first`.
    Bin {
        op: BinOp,
        arg: EpArg,
        arg_first: bool,
    },
    /// `s = x`.
    Save,
    /// `x = x op s`, or `s op x` when `saved_first` (a gate such as `x · clip(x + 3, 0, 6)`).
    Combine { op: BinOp, saved_first: bool },
    /// `x = 1 / (1 + exp(-x))`, as the lowering of `ew.sigmoid` computes it (with `Save` and
    /// `Combine`, swish/SiLU). Backends may approximate `exp` as their vector loops do.
    Sigmoid,
    /// `x = round_half_even(x)` (a quantization's rounding).
    Round,
    /// `x = f32(cast<T>(x))` for `T` one of `u8`, `i8`, `i32`: saturating truncation, NaN as 0
    /// (a quantize-dequantize pair in the tail stores and reloads the integer).
    Narrow(DType),
    /// `x = table[i]`, `i = x` (`x + 128` when `signed`), right after a `Narrow` to `u8`
    /// (`i8`): a function of that byte, 256 `f32`s computed at compile time from the
    /// operations it replaces (a quantized activation such as QDQ SiLU; see
    /// `tabulate_epilogues`).
    Table { table: ParamId, signed: bool },
}

impl EpOp {
    /// The binary operations an epilogue may use.
    pub fn allowed(op: BinOp) -> bool {
        matches!(
            op,
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Max | BinOp::Min
        )
    }
}

/// An epilogue operand.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EpArg {
    /// An `f32` literal.
    Lit(f32),
    /// Element 0 of an `f32`, `u8` or `i8` parameter (a one-element constant such as a
    /// learned scale or a zero point), as `f32`.
    Scalar(ParamId),
    /// Element `m` (the output channel) of an `f32` parameter of `channels·mult` elements: a
    /// per-channel scale or shift.
    Channel(ParamId),
}

// ---- end Depthwise ----------------------------------------------------------------------

// ---- Softmax ---------------------------------------------------------------------------

/// A softmax over the last, contiguous axis of `rows × len` `f32` values, with an optional
/// scalar pre-scale and an additive operand broadcast to every row (attention's mask):
///
/// ```text
/// for r in 0..rows:
///   v[c]  = x[r·len + c] · scale + mask[offset(r) + c]   (each part only when present)
///   mx    = max(-inf, v[0], v[1], …)                       (BinOp::Max: NaN wins)
///   e[c]  = exp(v[c] - mx);  sum = e[0] + e[1] + …         (in this order)
///   out[r·len + c] = e[c] · (1 / sum)
/// ```
///
/// every operation an `f32` one, rounded (`exp` as the evaluator's `UnOp::Exp`), so a library
/// kernel that sums in lanes or uses its own `exp` differs by a few ulp. `x` and `out` are whole
/// parameters of `rows·len` elements. `out` may be read back by the statement's loop form
/// (which stores the exponentials and rescales them), so it is a writable parameter that is
/// neither `x` nor the mask; a library kernel may still run with `out` on `x`'s storage, as
/// each row is read entirely before its first element is written.
#[derive(Clone, Debug, PartialEq)]
pub struct Softmax {
    pub rows: usize,
    pub len: usize,
    pub x: ParamId,
    /// Multiplies `x` first; `None` is 1 (no multiplication).
    pub scale: Option<EpArg>,
    pub mask: Option<SoftmaxMask>,
    pub out: ParamId,
}

/// The additive operand of a [`Softmax`]: row `r`, taken as the mixed-radix number of `dims`'
/// extents (outermost first, their product `rows`), starts at `Σ digit_i · stride_i` in
/// `param`; along a row the operand is contiguous.
#[derive(Clone, Debug, PartialEq)]
pub struct SoftmaxMask {
    pub param: ParamId,
    /// `(extent, stride)` per row dimension, outermost first; a zero stride broadcasts.
    pub dims: Vec<(usize, i64)>,
}

impl SoftmaxMask {
    /// Where row `r`'s operand starts.
    pub fn row_offset(&self, mut r: usize) -> i64 {
        let mut off = 0i64;
        for &(extent, stride) in self.dims.iter().rev() {
            let e = extent.max(1);
            off += (r % e) as i64 * stride;
            r /= e;
        }
        off
    }
}

impl Softmax {
    /// Whether the statement reads `p` (`x`, the mask or a scale parameter).
    pub fn reads_operand(&self, p: ParamId) -> bool {
        self.x == p
            || self.mask.as_ref().is_some_and(|m| m.param == p)
            || self.scale == Some(EpArg::Scalar(p))
    }
}

// ---- end Softmax ------------------------------------------------------------------------

/// One element of a parameter, at `index`.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalarRef {
    pub param: ParamId,
    pub index: Expr,
}

/// The requantization of an integer contraction's `i32` result `acc` into a `u8`/`i8` C,
/// while the tile is in registers:
///
/// ```text
/// C = cast<C>(min(max(round_half_even((f32(acc) · mult[r, c] + shift[r, c]) / scale) + f32(zp), lo), hi))
/// ```
///
/// in `f32`, each operation rounded (the multiplication, the addition, then the division: no
/// fused multiply-add, no reciprocal), `[lo, hi]` C's whole range; NaN becomes 0 (a cast's
/// NaN); without a shift, nothing is added. It is exactly the elementwise tail that a
/// `QuantizeLinear(DequantizeLinear(ConvInteger))` chain lowers to (the shift: a float bias
/// added after dequantization, as PyTorch exports QDQ convolutions), so a backend may fold
/// that tail into the contraction.
#[derive(Clone, Debug, PartialEq)]
pub struct Requant {
    /// `f32` multipliers broadcast through their strides to `m×n` (per row: `(1, 0)`; per
    /// tensor: `(0, 0)`).
    pub mult: MatRef,
    /// `f32` values added after the multiplication, broadcast like `mult`.
    pub shift: Option<MatRef>,
    /// The `f32` divisor: the output scale.
    pub scale: ScalarRef,
    /// The output zero point, of C's type.
    pub zero_point: ScalarRef,
    /// A quantized residual added to the requantized value, the sum quantized again (see
    /// [`RequantAdd`]); `None` stores the requantized value.
    pub residual: Option<Box<RequantAdd>>,
    /// A 256-entry table of C's type applied last: C stores `table[q]` for the value `q`
    /// computed so far (indexed by `q` for `u8`, `q + 128` for `i8`). It is a function of one
    /// byte computed at compile time: a quantized activation after the requantization (QDQ
    /// SiLU: dequantize, sigmoid, multiply, quantize). `None` stores `q`.
    pub table: Option<ParamId>,
}

/// The `Add` of a QDQ residual block, folded into a requantizing contraction: with `q` the
/// value [`Requant`] computes (of C's type), `scale` and `zp` its scale and zero point,
///
/// ```text
/// v = (f32(q) - f32(zp)) · scale + (f32(r[e]) - f32(r_zp)) · r_scale
/// C = cast<C>(min(max(round_half_even(v / out_scale) + f32(out_zp), lo), hi))
/// ```
///
/// in `f32`, each operation rounded, `r[e]` the residual's element at C's own index (C's
/// offset and strides), `[lo, hi]` C's range, NaN becoming 0. It is exactly the elementwise
/// tail `Q(D(Q(D(acc))) + D(r))` of a quantized residual block. An `f32` residual is first
/// quantized with its own scale and zero point (`r[e]` is then
/// `cast<Z>(min(max(round_half_even(x / r_scale) + f32(r_zp), lo_Z), hi_Z))`, `Z` the zero
/// point's type): the block whose other branch arrives dequantized.
#[derive(Clone, Debug, PartialEq)]
pub struct RequantAdd {
    /// The residual, `u8`, `i8` or `f32`, read at C's index.
    pub r: ParamId,
    /// The residual's `f32` scale and zero point (of its type; `u8` or `i8` for an `f32` one).
    pub r_scale: ScalarRef,
    pub r_zp: ScalarRef,
    /// The sum's `f32` scale and zero point (of C's type).
    pub out_scale: ScalarRef,
    pub out_zp: ScalarRef,
}

impl RequantAdd {
    /// C's value for the requantized `q` (with its `scale` and `zp`) and the residual `r`
    /// (with `r_scale`, `r_zp`), as every backend computes it: `out` is `(scale, zp)` of the
    /// sum, `signed` whether C is `i8`.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        q: i64,
        scale: f32,
        zp: f32,
        r: f32,
        r_scale: f32,
        r_zp: f32,
        out: (f32, f32),
        signed: bool,
    ) -> i64 {
        let v = (q as f32 - zp) * scale + (r - r_zp) * r_scale;
        quantize(v / out.0, out.1, signed)
    }

    /// An `f32` residual's quantized value (see the type's docs), for a zero point of `i8`
    /// when `signed`, else `u8`.
    pub fn quantize_residual(x: f32, r_scale: f32, r_zp: f32, signed: bool) -> f32 {
        quantize(x / r_scale, r_zp, signed) as f32
    }
}

/// `cast<C>(min(max(round_half_even(x) + zp, lo), hi))` for a `u8` (`i8` when `signed`) C,
/// NaN becoming 0.
fn quantize(x: f32, zp: f32, signed: bool) -> i64 {
    let (lo, hi) = if signed {
        (-128.0, 127.0)
    } else {
        (0.0, 255.0)
    };
    let v = x.round_ties_even() + zp;
    if v.is_nan() {
        0
    } else {
        v.clamp(lo, hi) as i64
    }
}

impl Requant {
    /// The table's index of the requantized value `q` of a C of `i8` (when `signed`) or `u8`.
    pub fn table_index(q: i64, signed: bool) -> i64 {
        if signed { q + 128 } else { q }
    }

    /// The requantized value of `acc` (as every backend computes it), for a C of `u8` when
    /// `signed` is false, else `i8`.
    pub fn apply(
        acc: i32,
        mult: f32,
        shift: Option<f32>,
        scale: f32,
        zp: f32,
        signed: bool,
    ) -> i64 {
        let v = acc as f32 * mult;
        let v = match shift {
            Some(s) => v + s,
            None => v,
        };
        quantize(v / scale, zp, signed)
    }
}

impl Matmul {
    /// Whether the contraction reads `p` as an operand (A, B, the bias or a requantization
    /// parameter; C's old value aside).
    pub fn reads_operand(&self, p: ParamId) -> bool {
        self.a.param == p
            || self.b.param == p
            || self.bias.as_ref().is_some_and(|b| b.param == p)
            || self.b_im2col.as_ref().is_some_and(|v| v.fill == Some(p))
            || self.requant.as_ref().is_some_and(|rq| {
                rq.mult.param == p
                    || rq.shift.as_ref().is_some_and(|s| s.param == p)
                    || rq.scale.param == p
                    || rq.zero_point.param == p
                    || rq.table == Some(p)
                    || rq.residual.as_ref().is_some_and(|ra| {
                        [
                            ra.r_scale.param,
                            ra.r_zp.param,
                            ra.out_scale.param,
                            ra.out_zp.param,
                            ra.r,
                        ]
                        .contains(&p)
                    })
            })
            || self.tail.as_ref().is_some_and(|t| {
                let mut found = false;
                for_each_stmt_load(&t.body, &mut |q, _| found |= q == p && q != self.c.param);
                found
            })
    }
}

/// Calls `f(param, index)` for every load in the expressions of `body` (not descending into
/// loops' or contractions' bodies).
pub fn for_each_stmt_load(body: &[Stmt], f: &mut dyn FnMut(ParamId, &Expr)) {
    for s in body {
        match s {
            Stmt::Let { value, .. } | Stmt::Assign { value, .. } => value.for_each_load(f),
            Stmt::Store { index, value, .. } => {
                index.for_each_load(f);
                value.for_each_load(f);
            }
            Stmt::For { extent, .. } => extent.for_each_load(f),
            Stmt::Matmul(_) | Stmt::Depthwise(_) | Stmt::Softmax(_) => {}
        }
    }
}

/// An activation applied in a contraction's epilogue, while the tile is in registers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    None,
    Relu,
    Clip {
        min: f32,
        max: f32,
    },
    /// `max(0, min(1, alpha·x + beta))`; NaN stays NaN.
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    /// `x · max(0, min(1, x/6 + 1/2))`; NaN stays NaN.
    HardSwish,
    /// GELU, erf form: `(0.5·x) · (1 + erf(x · (1/√2)))`, in this order, as the lowering of
    /// `ew.gelu` computes it; NaN stays NaN. Backends may approximate `erf` (the CPU runtime's
    /// epilogue is within 1e-6 relative of it, plus 3e-7 absolute; see `mlc_runtime`'s
    /// `kernels::gemm::act`).
    Gelu,
    /// GELU, tanh form: `(0.5·x) · (1 + tanh(√(2/π) · (x + 0.044715·((x·x)·x))))`, in this
    /// order, as the lowering of `ew.gelu(approximate = tanh)` computes it; NaN stays NaN.
    GeluTanh,
    /// Sigmoid: `1 / (1 + exp(-x))`, in this order, as the lowering of `ew.sigmoid` computes
    /// it; NaN stays NaN. Backends may approximate `exp` (the CPU runtime's epilogue uses the
    /// polynomial of its vector loops; see `mlc_runtime`'s `kernels::gemm::act`).
    Sigmoid,
    /// Swish (SiLU for `alpha = 1`): `x · (1 / (1 + exp(-(alpha·x))))`, in this order, as the
    /// lowering of `ew.swish` computes it; NaN stays NaN.
    Swish {
        alpha: f32,
    },
}

impl Activation {
    /// The activation of one value, as every backend computes it (`f64` here).
    pub fn apply(self, v: f64) -> f64 {
        let clamp01 = |e: f64| if e.is_nan() { e } else { e.clamp(0.0, 1.0) };
        match self {
            Activation::None => v,
            Activation::Relu => v.max(0.0),
            Activation::Clip { min, max } => v.max(min as f64).min(max as f64),
            Activation::HardSigmoid { alpha, beta } => clamp01(alpha as f64 * v + beta as f64),
            Activation::HardSwish => v * clamp01(v * (1.0 / 6.0) + 0.5),
            // The constants as the lowering's `f32` literals hold them.
            Activation::Gelu => {
                let s = std::f64::consts::FRAC_1_SQRT_2 as f32 as f64;
                (0.5 * v) * (1.0 + libm::erf(v * s))
            }
            Activation::GeluTanh => {
                let k = (2.0 / std::f64::consts::PI).sqrt() as f32 as f64;
                let c = 0.044715f32 as f64;
                (0.5 * v) * (1.0 + (k * (v + c * (v * v * v))).tanh())
            }
            Activation::Sigmoid => 1.0 / (1.0 + (-v).exp()),
            Activation::Swish { alpha } => v * (1.0 / (1.0 + (-(alpha as f64 * v)).exp())),
        }
    }
}

/// A literal.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Lit {
    /// A float of the given float type; the value is exactly representable in it.
    Float(DType, f64),
    /// An integer of the given integer type, in its range.
    Int(DType, i64),
    Bool(bool),
}

impl Lit {
    pub fn ty(&self) -> DType {
        match self {
            Lit::Float(t, _) | Lit::Int(t, _) => *t,
            Lit::Bool(_) => DType::Bool,
        }
    }
}

/// A scalar expression. Binary arithmetic takes two operands of one type (lowering inserts
/// the casts); index arithmetic is `I64`.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Var(VarId),
    Lit(Lit),
    Load {
        param: ParamId,
        index: Box<Expr>,
    },
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Select {
        cond: Box<Expr>,
        then: Box<Expr>,
        els: Box<Expr>,
    },
    /// Numeric conversion: floats to ints truncate toward zero (saturating at the range,
    /// NaN → 0), ints to narrower ints wrap, anything to bool is `!= 0`.
    Cast(DType, Box<Expr>),
}

/// Unary scalar operations. Transcendentals follow the C library's functions of the same
/// name; backends call them or inline equivalent approximations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnOp {
    Neg,
    Abs,
    /// Logical not for bools, bitwise not for integers.
    Not,
    Sqrt,
    Exp,
    Log,
    Tanh,
    Erf,
    Sin,
    Cos,
    Tan,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Asinh,
    Acosh,
    Atanh,
    Floor,
    Ceil,
    /// Round half to even.
    Round,
    IsNan,
    /// True for ±∞.
    IsInf,
    /// The operand's bits as the given type: `f32` ↔ `i32`/`u32`, `f64` ↔ `i64`/`u64`, and a
    /// storage-only type (float8, float4, 4- and 2-bit ints; values of these types are their
    /// codes) ↔ an integer type (the code zero-extended; back, its low bits). Conversions of
    /// the storage types are integer arithmetic on these bits (`lower/cast.rs`).
    Bitcast(DType),
}

impl UnOp {
    /// The C library function computing this op on `f64` (the `f32` one adds an `f`).
    pub fn libm_name(self) -> Option<&'static str> {
        Some(match self {
            UnOp::Exp => "exp",
            UnOp::Log => "log",
            UnOp::Tanh => "tanh",
            UnOp::Erf => "erf",
            UnOp::Sin => "sin",
            UnOp::Cos => "cos",
            UnOp::Tan => "tan",
            UnOp::Asin => "asin",
            UnOp::Acos => "acos",
            UnOp::Atan => "atan",
            UnOp::Sinh => "sinh",
            UnOp::Cosh => "cosh",
            UnOp::Asinh => "asinh",
            UnOp::Acosh => "acosh",
            UnOp::Atanh => "atanh",
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            UnOp::Neg => "neg",
            UnOp::Abs => "abs",
            UnOp::Not => "not",
            UnOp::Sqrt => "sqrt",
            UnOp::Floor => "floor",
            UnOp::Ceil => "ceil",
            UnOp::Round => "round",
            UnOp::IsNan => "isnan",
            UnOp::IsInf => "isinf",
            UnOp::Bitcast(_) => "bitcast",
            other => other.libm_name().unwrap_or("?"),
        }
    }
}

/// Binary scalar operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    /// Integer division truncates toward zero; division by zero yields 0 for integers.
    Div,
    /// Remainder with the sign of the dividend (C `fmod`, Rust `%`).
    Rem,
    /// NaN if either operand is NaN.
    Max,
    /// NaN if either operand is NaN.
    Min,
    Pow,
    /// Logical for bools, bitwise for integers.
    And,
    Or,
    Xor,
    Shl,
    /// Logical shift for unsigned types, arithmetic for signed ones.
    Shr,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl BinOp {
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            BinOp::Add => "add",
            BinOp::Sub => "sub",
            BinOp::Mul => "mul",
            BinOp::Div => "div",
            BinOp::Rem => "rem",
            BinOp::Max => "max",
            BinOp::Min => "min",
            BinOp::Pow => "pow",
            BinOp::And => "and",
            BinOp::Or => "or",
            BinOp::Xor => "xor",
            BinOp::Shl => "shl",
            BinOp::Shr => "shr",
            BinOp::Eq => "eq",
            BinOp::Ne => "ne",
            BinOp::Lt => "lt",
            BinOp::Le => "le",
            BinOp::Gt => "gt",
            BinOp::Ge => "ge",
        }
    }
}

/// Expression constructors, so lowering code reads like the math it builds.
impl Expr {
    pub fn var(v: VarId) -> Expr {
        Expr::Var(v)
    }

    /// An `I64` index literal.
    pub fn idx(i: i64) -> Expr {
        Expr::Lit(Lit::Int(DType::I64, i))
    }

    /// A float literal of type `ty`.
    pub fn float(ty: DType, v: f64) -> Expr {
        Expr::Lit(Lit::Float(ty, v))
    }

    pub fn load(param: ParamId, index: Expr) -> Expr {
        Expr::Load {
            param,
            index: Box::new(index),
        }
    }

    pub fn un(op: UnOp, a: Expr) -> Expr {
        Expr::Unary(op, Box::new(a))
    }

    pub fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
        Expr::Binary(op, Box::new(a), Box::new(b))
    }

    pub fn select(cond: Expr, then: Expr, els: Expr) -> Expr {
        Expr::Select {
            cond: Box::new(cond),
            then: Box::new(then),
            els: Box::new(els),
        }
    }

    pub fn cast(ty: DType, a: Expr) -> Expr {
        Expr::Cast(ty, Box::new(a))
    }

    /// `a + b` on indices, folding literal zeros so printed kernels stay readable.
    pub fn add_idx(a: Expr, b: Expr) -> Expr {
        match (&a, &b) {
            (Expr::Lit(Lit::Int(_, 0)), _) => b,
            (_, Expr::Lit(Lit::Int(_, 0))) => a,
            (Expr::Lit(Lit::Int(t, x)), Expr::Lit(Lit::Int(_, y))) => {
                Expr::Lit(Lit::Int(*t, x + y))
            }
            _ => Expr::bin(BinOp::Add, a, b),
        }
    }

    /// Calls `f(param, index)` for every load in `self`, outer loads before the loads inside
    /// their index.
    pub fn for_each_load(&self, f: &mut dyn FnMut(ParamId, &Expr)) {
        match self {
            Expr::Var(_) | Expr::Lit(_) => {}
            Expr::Load { param, index } => {
                f(*param, index);
                index.for_each_load(f);
            }
            Expr::Unary(_, a) | Expr::Cast(_, a) => a.for_each_load(f),
            Expr::Binary(_, a, b) => {
                a.for_each_load(f);
                b.for_each_load(f);
            }
            Expr::Select { cond, then, els } => {
                cond.for_each_load(f);
                then.for_each_load(f);
                els.for_each_load(f);
            }
        }
    }

    /// `a * k` on indices, folding multiplications by 0 and 1.
    pub fn mul_idx(a: Expr, k: i64) -> Expr {
        match (k, &a) {
            (0, _) => Expr::idx(0),
            (1, _) => a,
            (_, Expr::Lit(Lit::Int(t, x))) => Expr::Lit(Lit::Int(*t, x * k)),
            _ => Expr::bin(BinOp::Mul, a, Expr::idx(k)),
        }
    }
}
