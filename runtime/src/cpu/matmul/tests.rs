//! `run` against its own generic path (the definition): random shapes, every view layout the
//! kernels take in place and the ones they must copy or route through a temporary, every bias
//! broadcast, alpha/beta/activations and thread counts. Floats agree within the accumulation
//! error bound; integers exactly.

use super::*;
use std::cell::Cell;

/// Which path the last `run` on this thread took.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Path {
    F32,
    Int,
    /// The `i32` product on the integer kernels, then the requantization separately.
    IntThenRequant,
    Generic,
}

thread_local! {
    pub(super) static PATH: Cell<Path> = const { Cell::new(Path::Generic) };
}

use crate::testing::Rng;

/// How a `rows×cols` view sits in its buffer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    /// Rows contiguous, `pad` elements between them.
    RowMajor { pad: usize },
    /// Columns contiguous.
    ColMajor { pad: usize },
    /// Row-major with rows in reverse order (negative row stride).
    Reversed,
    /// Columns twice as far apart as elements (neither stride 1).
    Spread,
    /// One row repeated (row stride 0); only for operands that are read.
    RowBroadcast,
    /// One column repeated (column stride 0).
    ColBroadcast,
    /// One value everywhere.
    Scalar,
}

const READ_LAYOUTS: [Layout; 9] = [
    Layout::RowMajor { pad: 0 },
    Layout::RowMajor { pad: 3 },
    Layout::ColMajor { pad: 0 },
    Layout::ColMajor { pad: 2 },
    Layout::Reversed,
    Layout::Spread,
    Layout::RowBroadcast,
    Layout::ColBroadcast,
    Layout::Scalar,
];

const C_LAYOUTS: [Layout; 6] = [
    Layout::RowMajor { pad: 0 },
    Layout::RowMajor { pad: 5 },
    Layout::ColMajor { pad: 0 },
    Layout::ColMajor { pad: 1 },
    Layout::Reversed,
    Layout::Spread,
];

/// `(offset, row stride, col stride, elements needed)` for a view, `lead` elements in.
fn place(l: Layout, rows: usize, cols: usize, lead: usize) -> (i64, i64, i64, usize) {
    let (r, c) = (rows as i64, cols as i64);
    let lead_i = lead as i64;
    match l {
        Layout::RowMajor { pad } => (lead_i, c + pad as i64, 1, lead + rows * (cols + pad)),
        Layout::ColMajor { pad } => (lead_i, 1, r + pad as i64, lead + cols * (rows + pad)),
        Layout::Reversed => (lead_i + (r - 1).max(0) * c, -c, 1, lead + rows * cols),
        Layout::Spread => (lead_i, 2 * c, 2, lead + 2 * rows * cols),
        Layout::RowBroadcast => (lead_i, 0, 1, lead + cols),
        Layout::ColBroadcast => (lead_i, 1, 0, lead + rows),
        Layout::Scalar => (lead_i, 0, 0, lead + 1),
    }
}

/// A buffer of `dtype` values: `len` elements, starting `shift` bytes past an 8-byte boundary
/// (a non-zero shift misaligns it for 4-byte types).
struct Buf {
    store: Vec<u8>,
    start: usize,
    len: usize,
    dtype: DType,
}

impl Buf {
    fn new(dtype: DType, len: usize, shift: usize, mut fill: impl FnMut(usize) -> f64) -> Buf {
        let store = vec![0u8; len * dtype.size() + 16];
        let start = store.as_ptr().align_offset(8) + shift;
        let mut b = Buf {
            store,
            start,
            len,
            dtype,
        };
        for i in 0..len {
            let v = fill(i);
            write(b.bytes_mut(), dtype, i, v);
        }
        b
    }
    fn bytes(&self) -> &[u8] {
        &self.store[self.start..self.start + self.len * self.dtype.size()]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        let n = self.len * self.dtype.size();
        &mut self.store[self.start..self.start + n]
    }
    fn view(&self, (offset, row_stride, col_stride): (i64, i64, i64)) -> View<'_> {
        View {
            bytes: self.bytes(),
            dtype: self.dtype,
            offset,
            row_stride,
            col_stride,
        }
    }
}

/// One problem: operands, C's initial buffer, and how to call `run`.
struct Case {
    g: Gemm,
    a: Buf,
    av: (i64, i64, i64),
    b: Buf,
    bv: (i64, i64, i64),
    c: Buf,
    cv: (i64, i64, i64),
    bias: Option<(Buf, (i64, i64, i64))>,
    what: String,
    /// The path `run` took, once run.
    path: Cell<Path>,
}

impl Case {
    /// Runs `run` and the generic path on copies of C; returns both C buffers (as f64s).
    fn results(&self) -> (Vec<f64>, Vec<f64>) {
        let c = |cb: &[u8]| {
            (0..self.c.len)
                .map(|i| read(cb, self.c.dtype, i))
                .collect::<Vec<f64>>()
        };
        let bias = self.bias.as_ref().map(|(b, v)| b.view(*v));
        let mut fast = self.c.store.clone();
        let range = self.c.start..self.c.start + self.c.len * self.c.dtype.size();
        let cdesc = (self.c.dtype, self.cv.0, self.cv.1, self.cv.2);
        run(
            &self.g,
            self.a.view(self.av),
            self.b.view(self.bv),
            &mut fast[range.clone()],
            cdesc,
            bias,
        )
        .unwrap_or_else(|_| panic!("{}: out of bounds", self.what));
        self.path.set(PATH.get());
        let mut slow = self.c.store.clone();
        generic(
            &self.g,
            &self.a.view(self.av),
            &self.b.view(self.bv),
            &mut slow[range.clone()],
            cdesc,
            bias.as_ref(),
        );
        (c(&fast[range.clone()]), c(&slow[range]))
    }

    /// The error scale of element `(r, col)`: `|α|·Σ|a||b| + |β||c| + |bias|`.
    fn scale(&self, r: usize, col: usize) -> f64 {
        let (a, b) = (self.a.view(self.av), self.b.view(self.bv));
        let mut s = 0.0;
        for kk in 0..self.g.k {
            s += (a.get(a.index(r, kk)) * b.get(b.index(kk, col))).abs();
        }
        s *= self.g.alpha.abs();
        let ci = (self.cv.0 + r as i64 * self.cv.1 + col as i64 * self.cv.2) as usize;
        s += self.g.beta.abs() * read(self.c.bytes(), self.c.dtype, ci).abs();
        if let Some((bb, v)) = &self.bias {
            let bv = bb.view(*v);
            s += bv.get(bv.index(r, col)).abs();
        }
        s
    }

    /// Floats: within `(k + 4)·ε·scale` (f32 accumulation); integers: equal.
    fn verify(&self) {
        let (fast, slow) = self.results();
        let tol = (self.g.k + 4) as f64 * f64::from(f32::EPSILON);
        let float = matches!(self.c.dtype, DType::F32 | DType::F64);
        let mut in_view = vec![None; self.c.len];
        for r in 0..self.g.m {
            for col in 0..self.g.n {
                let ci = (self.cv.0 + r as i64 * self.cv.1 + col as i64 * self.cv.2) as usize;
                in_view[ci] = Some((r, col));
            }
        }
        for (i, (&f, &s)) in fast.iter().zip(&slow).enumerate() {
            let ok = match in_view[i] {
                Some((r, col)) if float => {
                    f == s
                        || (f.is_nan() && s.is_nan())
                        || (f - s).abs() <= tol * self.scale(r, col) + 1e-30
                }
                _ => f == s || (f.is_nan() && s.is_nan()),
            };
            assert!(
                ok,
                "{}: C element {i} {:?} = {f}, generic {s}",
                self.what, in_view[i]
            );
        }
    }
}

/// A random f32 problem with the given layouts.
#[allow(clippy::too_many_arguments)]
fn f32_case(
    rng: &mut Rng,
    (m, n, k): (usize, usize, usize),
    (la, lb, lc): (Layout, Layout, Layout),
    bias: Option<Layout>,
    shift: usize,
    threads: usize,
) -> Case {
    let lead = rng.below(4);
    let (ao, ars, acs, alen) = place(la, m, k, lead);
    let (bo, brs, bcs, blen) = place(lb, k, n, lead);
    let (co, crs, ccs, clen) = place(lc, m, n, lead);
    let mut uni = |_| rng.unit();
    let a = Buf::new(DType::F32, alen, shift, &mut uni);
    let b = Buf::new(DType::F32, blen, 0, &mut uni);
    let c = Buf::new(DType::F32, clen, 0, &mut uni);
    let bias = bias.map(|l| {
        let (o, rs, cs, len) = place(l, m, n, lead);
        (Buf::new(DType::F32, len, shift, &mut uni), (o, rs, cs))
    });
    let alpha = [1.0, -0.5, 2.0][rng.below(3)];
    let beta = [0.0, 0.0, 1.0, 0.75][rng.below(4)];
    let act = match rng.below(3) {
        0 => Activation::None,
        1 => Activation::Relu,
        _ => Activation::Clip {
            min: -0.25,
            max: 0.5,
        },
    };
    let g = Gemm {
        m,
        n,
        k,
        alpha,
        beta,
        act,
        threads,
    };
    let what = format!(
        "f32 {m}x{n}x{k} A {la:?} B {lb:?} C {lc:?} bias {bias_l:?} shift {shift} {threads}T \
         alpha {alpha} beta {beta} {act:?}",
        bias_l = bias.as_ref().map(|(_, v)| *v),
    );
    Case {
        g,
        a,
        av: (ao, ars, acs),
        b,
        bv: (bo, brs, bcs),
        c,
        cv: (co, crs, ccs),
        bias,
        what,
        path: Cell::new(Path::Generic),
    }
}

const DIMS: [usize; 9] = [1, 2, 7, 13, 16, 33, 64, 100, 129];

#[test]
fn f32_every_layout() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let shapes = [
        (1, 1, 1),
        (1, 37, 19),
        (23, 1, 40),
        (13, 33, 7),
        (40, 70, 129),
    ];
    for &shape in &shapes {
        for &la in &READ_LAYOUTS {
            for &lb in &READ_LAYOUTS {
                let lc = C_LAYOUTS[rng.below(C_LAYOUTS.len())];
                let bias = [None, Some(READ_LAYOUTS[rng.below(READ_LAYOUTS.len())])][rng.below(2)];
                let case = f32_case(&mut rng, shape, (la, lb, lc), bias, 0, 1);
                case.verify();
                assert_eq!(case.path.get(), Path::F32, "{}", case.what);
            }
        }
        for &lc in &C_LAYOUTS {
            for &bl in &READ_LAYOUTS {
                let l = (Layout::RowMajor { pad: 0 }, Layout::ColMajor { pad: 1 }, lc);
                f32_case(&mut rng, shape, l, Some(bl), 0, 2).verify();
            }
        }
    }
}

#[test]
fn f32_random_shapes_threads_and_misaligned_bytes() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for i in 0..200 {
        let shape = (
            DIMS[rng.below(DIMS.len())],
            DIMS[rng.below(DIMS.len())],
            DIMS[rng.below(DIMS.len())],
        );
        let la = READ_LAYOUTS[rng.below(4)];
        let lb = READ_LAYOUTS[rng.below(4)];
        let lc = C_LAYOUTS[rng.below(C_LAYOUTS.len())];
        let bias = [None, Some(READ_LAYOUTS[rng.below(READ_LAYOUTS.len())])][rng.below(2)];
        let shift = if i % 7 == 0 { 1 } else { 0 };
        let threads = 1 + rng.below(3);
        f32_case(&mut rng, shape, (la, lb, lc), bias, shift, threads).verify();
    }
    // Big enough for the kernels to split across threads.
    for &shape in &[(1, 1500, 800), (300, 200, 100), (64, 3136, 72)] {
        for lb in [Layout::RowMajor { pad: 0 }, Layout::ColMajor { pad: 0 }] {
            let l = (Layout::RowMajor { pad: 0 }, lb, Layout::RowMajor { pad: 0 });
            f32_case(&mut rng, shape, l, Some(Layout::ColBroadcast), 0, 2).verify();
        }
    }
}

#[test]
fn f32_nan_through_activations() {
    // NaN products meet ReLU and Clip exactly as the generic path (and the evaluator) has it.
    let mut rng = Rng(7);
    for act in [
        Activation::Relu,
        Activation::Clip {
            min: -0.5,
            max: 0.5,
        },
        Activation::None,
    ] {
        for shape in [(5, 40, 3), (1, 40, 3), (5, 1, 3)] {
            let l = Layout::RowMajor { pad: 0 };
            let mut case = f32_case(&mut rng, shape, (l, l, l), None, 0, 1);
            case.g.act = act;
            case.what = format!("{} as {act:?}", case.what);
            let a0 = case.av.0 as usize;
            write(case.a.bytes_mut(), DType::F32, a0, f64::NAN);
            case.verify();
            let (fast, _) = case.results();
            let got = fast[case.cv.0 as usize];
            let want = activate(act, f64::NAN);
            assert!(
                got == want || (got.is_nan() && want.is_nan()),
                "{act:?}: {got}"
            );
        }
    }
}

/// A random integer problem: A and B of the given types with values from `va`/`vb`, C `i32`.
#[allow(clippy::too_many_arguments)]
fn int_case(
    rng: &mut Rng,
    (m, n, k): (usize, usize, usize),
    (ta, tb): (DType, DType),
    (va, vb): ((i64, i64), (i64, i64)),
    (la, lb, lc): (Layout, Layout, Layout),
    bias: Option<Layout>,
    threads: usize,
) -> Case {
    let lead = rng.below(4);
    let (ao, ars, acs, alen) = place(la, m, k, lead);
    let (bo, brs, bcs, blen) = place(lb, k, n, lead);
    let (co, crs, ccs, clen) = place(lc, m, n, lead);
    let mut int = |(lo, hi): (i64, i64)| (lo + rng.below((hi - lo + 1) as usize) as i64) as f64;
    let a = Buf::new(ta, alen, 0, |_| int(va));
    let b = Buf::new(tb, blen, 0, |_| int(vb));
    let c = Buf::new(DType::I32, clen, 0, |_| int((-5, 5)));
    let bias = bias.map(|l| {
        let (o, rs, cs, len) = place(l, m, n, lead);
        (
            Buf::new(DType::I32, len, 0, |_| int((-3000, 3000))),
            (o, rs, cs),
        )
    });
    let g = Gemm {
        m,
        n,
        k,
        alpha: 1.0,
        beta: 0.0,
        act: Activation::None,
        threads,
    };
    let what = format!(
        "{}x{} {m}x{n}x{k} A {la:?} {va:?} B {lb:?} {vb:?} C {lc:?} bias {:?} {threads}T",
        ta.name(),
        tb.name(),
        bias.as_ref().map(|(_, v)| *v)
    );
    Case {
        g,
        a,
        av: (ao, ars, acs),
        b,
        bv: (bo, brs, bcs),
        c,
        cv: (co, crs, ccs),
        bias,
        what,
        path: Cell::new(Path::Generic),
    }
}

#[test]
fn int_matches_generic_exactly() {
    let mut rng = Rng(0xdead_beef_1234_5678);
    let types = [
        ((DType::U8, DType::I8), ((0, 255), (-128, 127))),
        ((DType::I8, DType::I8), ((-128, 127), (-128, 127))),
        ((DType::U8, DType::U8), ((0, 255), (0, 255))),
        // Widened operands minus zero points, as the MatMulInteger lowering makes them.
        ((DType::I32, DType::I32), ((-128, 127), (-128, 127))),
        ((DType::I32, DType::I32), ((-200, 55), (-130, 125))),
        ((DType::I32, DType::I8), ((0, 255), (-128, 127))),
        // Too wide for 8 bits, and types the kernels do not take: the generic path.
        ((DType::I32, DType::I32), ((-300, 300), (-5, 5))),
        ((DType::I16, DType::I8), ((-300, 300), (-5, 5))),
    ];
    for (i, &(tys, vals)) in types.iter().enumerate() {
        // Operands too wide for 8 bits may still hold a narrow sample (a broadcast, one
        // element), so only the types the kernels never take pin the generic path.
        let want = match i {
            0..6 => Some(Path::Int),
            6 => None,
            _ => Some(Path::Generic),
        };
        for _ in 0..25 {
            let shape = (
                DIMS[rng.below(DIMS.len())],
                DIMS[rng.below(DIMS.len())],
                DIMS[rng.below(DIMS.len())],
            );
            let la = READ_LAYOUTS[rng.below(READ_LAYOUTS.len())];
            let lb = READ_LAYOUTS[rng.below(READ_LAYOUTS.len())];
            let lc = C_LAYOUTS[rng.below(C_LAYOUTS.len())];
            let bias = [None, Some(READ_LAYOUTS[rng.below(READ_LAYOUTS.len())])][rng.below(2)];
            let threads = 1 + rng.below(2);
            let case = int_case(&mut rng, shape, tys, vals, (la, lb, lc), bias, threads);
            case.verify();
            // Negative strides are not taken in place by the integer kernels.
            if let Some(want) = want
                && ![la, lb].contains(&Layout::Reversed)
            {
                assert_eq!(case.path.get(), want, "{}", case.what);
            }
        }
    }
    // Model-sized products, split across threads.
    for &shape in &[(128, 384, 384), (128, 1536, 384), (49, 256, 1152)] {
        let l = (
            Layout::RowMajor { pad: 0 },
            Layout::RowMajor { pad: 0 },
            Layout::RowMajor { pad: 0 },
        );
        let tys = (DType::I32, DType::I32);
        let vals = ((-100, 155), (-128, 127));
        let case = int_case(&mut rng, shape, tys, vals, l, None, 2);
        case.verify();
        assert_eq!(case.path.get(), Path::Int, "{}", case.what);
    }
}

#[test]
fn int_weights_packed_once_and_reused() {
    // The executor's constant cache: a weight operand (A as in the int8 convolutions, B as in
    // the int8 BERT) is packed on the first call and reused on the next, with results equal
    // to the definition both times, whichever way C is laid out (row-major C runs A·B,
    // column-major Cᵀ = Bᵀ·Aᵀ, which moves the weight to the other slot).
    use crate::cpu::exec::{ConstCache, with_consts};
    let mut rng = Rng(0x5eed_0001);
    let row = Layout::RowMajor { pad: 0 };
    let kinds = [
        // (weight is A, types, value ranges)
        (true, (DType::I8, DType::U8), ((-128, 127), (0, 255))),
        (false, (DType::U8, DType::I8), ((0, 255), (-128, 127))),
        (false, (DType::I32, DType::I32), ((-128, 127), (-100, 155))),
    ];
    for (weight_is_a, tys, vals) in kinds {
        for &shape in &[(64, 49, 147), (13, 100, 36), (40, 7, 64), (1, 33, 5)] {
            for (lw, lc) in [
                (row, row),
                (Layout::ColMajor { pad: 1 }, row),
                (row, Layout::ColMajor { pad: 0 }),
                (Layout::RowMajor { pad: 2 }, Layout::Spread),
            ] {
                let (la, lb) = if weight_is_a { (lw, row) } else { (row, lw) };
                let bias =
                    [None, Some(Layout::ColBroadcast), Some(Layout::RowBroadcast)][rng.below(3)];
                let threads = 1 + rng.below(2);
                let case = int_case(&mut rng, shape, tys, vals, (la, lb, lc), bias, threads);
                let w = if weight_is_a { &case.a } else { &case.b };
                let range = w.bytes().as_ptr_range();
                let cache = ConstCache::for_range(range.start as usize, range.end as usize);
                with_consts(&cache, || {
                    case.verify();
                    case.verify();
                });
                assert_eq!(case.path.get(), Path::Int, "{}", case.what);
                assert_eq!(cache.packed_int_count(), (1, 0), "{}", case.what);
            }
        }
    }
    // A weight too wide for 8 bits: refused once, remembered, and the generic path answers.
    let tys = (DType::I32, DType::I32);
    let case = int_case(
        &mut rng,
        (9, 10, 11),
        tys,
        ((-1000, 1000), (0, 3)),
        (row, row, row),
        None,
        1,
    );
    let range = case.a.bytes().as_ptr_range();
    let cache = ConstCache::for_range(range.start as usize, range.end as usize);
    with_consts(&cache, || {
        case.verify();
        case.verify();
    });
    assert_eq!(case.path.get(), Path::Generic, "{}", case.what);
    assert_eq!(cache.packed_int_count(), (1, 1), "{}", case.what);
}

#[test]
fn f32_weights_packed_once_and_reused() {
    // A weight `B` is packed on the first call and reused on the next, whatever the number of
    // rows (a few dozen, as GPT-2's lm_head has, or more) and whether its rows or its columns
    // are contiguous, with results equal to the definition both times; a matrix-vector product
    // keeps its dot products and packs nothing.
    use crate::cpu::exec::{ConstCache, with_consts};
    let mut rng = Rng(0x5eed_00f3);
    let row = Layout::RowMajor { pad: 0 };
    let col = Layout::ColMajor { pad: 1 };
    for (shape, lb, packed) in [
        ((32, 300, 40), row, 1),
        ((32, 300, 40), col, 1),
        ((7, 33, 64), row, 1),
        ((1, 50, 20), row, 1),
        ((100, 70, 33), col, 1),
        ((1, 37, 19), Layout::ColMajor { pad: 0 }, 0),
        ((23, 1, 40), row, 0),
    ] {
        for threads in [1, 2] {
            let bias = [None, Some(Layout::ColBroadcast)][rng.below(2)];
            let case = f32_case(&mut rng, shape, (row, lb, row), bias, 0, threads);
            let range = case.b.bytes().as_ptr_range();
            let cache = ConstCache::for_range(range.start as usize, range.end as usize);
            with_consts(&cache, || {
                case.verify();
                case.verify();
            });
            assert_eq!(case.path.get(), Path::F32, "{}", case.what);
            assert_eq!(cache.packed_count(), packed, "{}", case.what);
        }
    }
}

#[test]
fn f32_weight_on_the_left_goes_transposed() {
    // `C = W·X` with a weight `W` and few columns (a convolution on a small map) runs as
    // `Cᵀ = Xᵀ·Wᵀ` with `Wᵀ` packed once, transposed back block by block; results equal the
    // definition on both calls, C padded or not, any bias broadcast.
    use crate::cpu::exec::{ConstCache, with_consts};
    let mut rng = Rng(0x5eed_0a7e);
    let row = Layout::RowMajor { pad: 0 };
    for shape in [(64, 49, 70), (48, 7, 300), (40, 2, 300), (67, 20, 300)] {
        for (lc, threads) in [(row, 1), (Layout::RowMajor { pad: 3 }, 2), (row, 3)] {
            let bias = [
                None,
                Some(Layout::ColBroadcast),
                Some(Layout::RowBroadcast),
                Some(Layout::Scalar),
            ][rng.below(4)];
            let mut case = f32_case(&mut rng, shape, (row, row, lc), bias, 0, threads);
            case.g.beta = 0.0;
            let range = case.a.bytes().as_ptr_range();
            let cache = ConstCache::for_range(range.start as usize, range.end as usize);
            with_consts(&cache, || {
                case.verify();
                case.verify();
            });
            assert_eq!(case.path.get(), Path::F32, "{}", case.what);
            assert_eq!(cache.packed_count(), 1, "{}", case.what);
        }
    }
}

/// `run_requant` on `case`'s operands into a fresh `u8`/`i8` C laid out as `lc`, against the
/// definition (the generic `i32` product, then [`IRequant::value`] element by element); the
/// multiplier laid out as `lm`. Returns the path taken.
fn requant_case(case: &Case, rng: &mut Rng, signed: bool, lc: Layout, lm: Layout) -> Path {
    let (m, n) = (case.g.m, case.g.n);
    let cty = if signed { DType::I8 } else { DType::U8 };
    let (co, crs, ccs, clen) = place(lc, m, n, 1);
    let (mo, mrs, mcs, mlen) = place(lm, m, n, 2);
    let mult = Buf::new(DType::F32, mlen, 0, |_| (1 + rng.below(3000)) as f64 * 1e-5);
    // Every few cases a scale of 2 and a multiplier of 1: exact .5 ties.
    let ties = rng.below(3) == 0;
    let mult = if ties {
        Buf::new(DType::F32, mlen, 0, |_| 1.0)
    } else {
        mult
    };
    let scale = if ties {
        2.0
    } else {
        0.05 + rng.unit().abs() as f32
    };
    let zp = if signed {
        rng.below(256) as i32 - 128
    } else {
        rng.below(256) as i32
    };
    // Every other case a float bias added after the multiplication, laid out as the multiplier.
    let shift = (rng.below(2) == 0).then(|| {
        Buf::new(DType::F32, mlen, 0, |_| {
            (rng.below(6000) as f64 - 3000.0) * 1e-3
        })
    });
    // Every other case a byte table applied last.
    let table: Option<[u8; 256]> =
        (rng.below(2) == 0).then(|| std::array::from_fn(|_| rng.below(256) as u8));
    let rq = Requant {
        mult: mult.view((mo, mrs, mcs)),
        shift: shift.as_ref().map(|s| s.view((mo, mrs, mcs))),
        scale,
        zero_point: zp,
        add: None,
        table: table.as_ref(),
    };
    let bias = case.bias.as_ref().map(|(b, v)| b.view(*v));
    let mut exact = vec![0u8; m * n * 4];
    generic(
        &case.g,
        &case.a.view(case.av),
        &case.b.view(case.bv),
        &mut exact,
        (DType::I32, 0, n as i64, 1),
        bias.as_ref(),
    );
    let mut c = vec![0x5au8; clen];
    run_requant(
        &case.g,
        case.a.view(case.av),
        case.b.view(case.bv),
        &mut c,
        (cty, co, crs, ccs),
        bias,
        &rq,
    )
    .unwrap_or_else(|_| panic!("{}: refused", case.what));
    let path = PATH.get();
    let mut want = vec![0x5au8; clen];
    for r in 0..m {
        for col in 0..n {
            let acc = read(&exact, DType::I32, r * n + col) as i32;
            let mv = rq.mult.get(rq.mult.index(r, col)) as f32;
            let sv = rq.shift.as_ref().map(|s| s.get(s.index(r, col)) as f32);
            let q = IRequant::value(acc, mv, sv, scale, zp as f32, signed);
            let q = match &table {
                Some(t) => t[(q + if signed { 128 } else { 0 }) as usize],
                None => q as u8,
            };
            want[(co + r as i64 * crs + col as i64 * ccs) as usize] = q;
        }
    }
    assert_eq!(
        c,
        want,
        "{} requantized to {} C {lc:?} mult {lm:?} ties {ties} ({path:?})",
        case.what,
        cty.name()
    );
    path
}

#[test]
fn requantized_matches_definition() {
    let mut rng = Rng(0x7e9a_0001);
    let row = Layout::RowMajor { pad: 0 };
    // (multiplier layout, whether the kernels requantize it in their epilogue)
    let mults = [
        (Layout::Scalar, true),
        (Layout::ColBroadcast, true),
        (Layout::RowBroadcast, true),
        (Layout::RowMajor { pad: 1 }, false),
    ];
    let types = [
        ((DType::I8, DType::U8), ((-128, 127), (0, 255))),
        ((DType::U8, DType::I8), ((0, 255), (-128, 127))),
        ((DType::I32, DType::I32), ((-100, 155), (-128, 127))),
    ];
    for _ in 0..60 {
        let shape = (
            DIMS[rng.below(DIMS.len())],
            DIMS[rng.below(DIMS.len())],
            DIMS[rng.below(DIMS.len())],
        );
        let (tys, vals) = types[rng.below(types.len())];
        let la = [row, Layout::ColMajor { pad: 1 }][rng.below(2)];
        let bias = [None, Some(Layout::ColBroadcast), Some(Layout::Scalar)][rng.below(3)];
        let threads = 1 + rng.below(2);
        let case = int_case(&mut rng, shape, tys, vals, (la, row, row), bias, threads);
        let (lm, fused) = mults[rng.below(mults.len())];
        let lc = C_LAYOUTS[rng.below(C_LAYOUTS.len())];
        let signed = rng.below(2) == 0;
        let path = requant_case(&case, &mut rng, signed, lc, lm);
        let in_place = matches!(lc, Layout::RowMajor { .. } | Layout::ColMajor { .. });
        if fused && in_place {
            assert_eq!(path, Path::Int, "{}", case.what);
        } else if shape.0 > 1 && shape.1 > 1 {
            // (A single row or column is in place, and its multipliers a vector, whatever
            // the layouts.)
            assert_ne!(path, Path::Int, "{}", case.what);
        }
    }
    // The first conv of resnet18's int8 model, with its weight packed once and reused.
    use crate::cpu::exec::{ConstCache, with_consts};
    let tys = (DType::I8, DType::U8);
    let vals = ((-128, 127), (0, 255));
    let l = (row, row, row);
    let case = int_case(
        &mut rng,
        (64, 300, 147),
        tys,
        vals,
        l,
        Some(Layout::ColBroadcast),
        2,
    );
    let range = case.a.bytes().as_ptr_range();
    let cache = ConstCache::for_range(range.start as usize, range.end as usize);
    with_consts(&cache, || {
        for signed in [false, true] {
            let p = requant_case(&case, &mut rng, signed, row, Layout::ColBroadcast);
            assert_eq!(p, Path::Int);
        }
    });
    assert_eq!(cache.packed_int_count(), (1, 0));
}

/// `run_then`'s tail hook covers every element of C exactly once, with blocks inside C, on
/// every path (f32 and integer kernels in both orientations, matrix-vector products, the
/// dense temporary, the generic path) and thread count; C itself is what `run` computes.
#[test]
fn tail_hook_visits_every_element_once() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let mut rng = Rng(0x51ed_2701);
    let shapes = [
        (1, 37, 5),
        (29, 1, 7),
        (13, 50, 9),
        (70, 90, 40),
        (5, 300, 3),
    ];
    let layouts = [
        Layout::RowMajor { pad: 0 },
        Layout::ColMajor { pad: 0 },
        Layout::Spread,
    ];
    for &(m, n, k) in &shapes {
        for lc in layouts {
            for threads in [1, 2, 3] {
                for int in [false, true] {
                    let (ta, tb, tc) = if int {
                        (DType::U8, DType::I8, DType::I32)
                    } else {
                        (DType::F32, DType::F32, DType::F32)
                    };
                    let (ao, ars, acs, alen) = place(Layout::RowMajor { pad: 0 }, m, k, 0);
                    let (bo, brs, bcs, blen) = place(Layout::RowMajor { pad: 0 }, k, n, 0);
                    let (co, crs, ccs, clen) = place(lc, m, n, 0);
                    let mut val =
                        |lo: i64, hi: i64| (lo + rng.below((hi - lo) as usize) as i64) as f64;
                    let a = Buf::new(ta, alen, 0, |_| val(0, 9));
                    let b = Buf::new(tb, blen, 0, |_| val(-9, 9));
                    let mut c1 = Buf::new(tc, clen, 0, |_| 0.0);
                    let mut c2 = Buf::new(tc, clen, 0, |_| 0.0);
                    let g = Gemm {
                        m,
                        n,
                        k,
                        alpha: 1.0,
                        beta: 0.0,
                        act: Activation::None,
                        threads,
                    };
                    let seen: Vec<AtomicU32> = (0..m * n).map(|_| AtomicU32::new(0)).collect();
                    let bad = AtomicU32::new(0);
                    let hook = |r0: usize, rows: usize, c0: usize, cols: usize| {
                        if r0 + rows > m || c0 + cols > n {
                            bad.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        for r in r0..r0 + rows {
                            for c in c0..c0 + cols {
                                seen[r * n + c].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    };
                    let what = format!("{m}x{n}x{k} C {lc:?} int {int} {threads}T");
                    run_then(
                        &g,
                        a.view((ao, ars, acs)),
                        b.view((bo, brs, bcs)),
                        c1.bytes_mut(),
                        (tc, co, crs, ccs),
                        None,
                        Some(TileHook(&hook)),
                    )
                    .unwrap();
                    run(
                        &g,
                        a.view((ao, ars, acs)),
                        b.view((bo, brs, bcs)),
                        c2.bytes_mut(),
                        (tc, co, crs, ccs),
                        None,
                    )
                    .unwrap();
                    assert_eq!(bad.load(Ordering::Relaxed), 0, "{what}: block outside C");
                    assert!(
                        seen.iter().all(|s| s.load(Ordering::Relaxed) == 1),
                        "{what}: not every element once"
                    );
                    assert_eq!(c1.bytes(), c2.bytes(), "{what}: C differs");
                }
            }
        }
    }
}

#[test]
fn transposing_pays_on_small_maps_only() {
    // PP-LCNet's pointwise convolutions with AVX-512's 32-column tile, whose last tile costs
    // 16 columns when at most 16 are left: the 7×7 maps go transposed (49 = 32 + 17 columns
    // cost 64), the 14×14 ones (196 = 192 + 4 cost 208) only when deep enough to pay for the
    // transpose; the wide maps, the stem and the 1×1 head (dot products) do not. Without the
    // narrow last tile 196 costs 224. SqueezeNet's head (169 = 160 + 9 columns) stays as it
    // is.
    for ((m, n, k), last, want) in [
        ((512, 49, 512), 16, true),
        ((512, 49, 256), 16, true),
        ((256, 196, 256), 16, true),
        ((256, 196, 128), 16, false),
        ((256, 196, 128), 32, true),
        ((64, 3136, 64), 16, false),
        ((16, 12544, 27), 16, false),
        ((1280, 1, 512), 16, false),
        ((1000, 169, 512), 16, false),
    ] {
        assert_eq!(
            transposed_pays((32, last), m, n, k),
            want,
            "{m}×{n}×{k}, last {last}"
        );
    }
}

mod image;
