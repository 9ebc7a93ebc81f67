//! Integer GEMM against a naive `i64` reference, exactly: every ISA this CPU runs, 8-bit and
//! wider element types (offsets in play), odd shapes crossing the tile and cache-block edges,
//! strides, every bias, threads; and the refusals (ranges too wide, possible overflow).

use super::*;

use crate::testing::Rng;

fn isas() -> Vec<IGemm> {
    Isa::ALL
        .into_iter()
        .filter(|&i| supported(i))
        .map(|i| IGemm::with_isa(i).unwrap())
        .collect()
}

/// An operand stored `rows×cols`, row- or column-major with `pad` extra per line.
struct Mat<T> {
    data: Vec<T>,
    rs: usize,
    cs: usize,
}

impl<T: IntElem> Mat<T> {
    fn new(
        rows: usize,
        cols: usize,
        col_major: bool,
        pad: usize,
        mut f: impl FnMut() -> T,
    ) -> Self {
        let (lines, len) = if col_major {
            (cols, rows)
        } else {
            (rows, cols)
        };
        let ld = len + pad;
        let data = (0..lines * ld).map(|_| f()).collect();
        let (rs, cs) = if col_major { (1, ld) } else { (ld, 1) };
        Mat { data, rs, cs }
    }
    fn view(&self) -> IntRef<'_, T> {
        IntRef::new(&self.data, self.rs, self.cs)
    }
    fn at(&self, i: usize, j: usize) -> i64 {
        self.data[i * self.rs + j * self.cs].widen()
    }
}

/// Runs one product on every ISA and thread count and compares with the reference.
#[allow(clippy::too_many_arguments)]
fn check<TA: IntElem, TB: IntElem>(
    (m, n, k): (usize, usize, usize),
    a: &Mat<TA>,
    b: &Mat<TB>,
    bias: IBias<'_>,
    what: &str,
) {
    let ldc = n + 3;
    let mut want = vec![-7i64; m * ldc];
    for i in 0..m {
        for j in 0..n {
            let mut s: i64 = (0..k).map(|p| a.at(i, p) * b.at(p, j)).sum();
            s += match bias {
                IBias::None => 0,
                IBias::Scalar(x) => x as i64,
                IBias::PerRow(v) => v[i] as i64,
                IBias::PerCol(v) => v[j] as i64,
                IBias::Full(v, ld) => v[i * ld + j] as i64,
            };
            want[i * ldc + j] = s;
        }
    }
    for g in isas() {
        for threads in [1, 2, 3] {
            let g = g.threads(threads);
            // Both operands packed on the call, then each packed ahead of time (packing on
            // one thread or several must not change the panels).
            let pa = g.pack_a(m, k, a.view()).unwrap();
            let pb = g.pack_b(k, n, b.view()).unwrap();
            assert_eq!((pa.rows(), pa.k(), pa.slot()), (m, k, Slot::A));
            assert_eq!((pb.rows(), pb.k(), pb.slot()), (n, k, Slot::B));
            for how in ["raw", "packed A", "packed B"] {
                let mut c = vec![-7i32; m * ldc];
                match how {
                    "raw" => g.run(m, n, k, a.view(), b.view(), &mut c, ldc, bias),
                    "packed A" => g.run_packed_a(&pa, n, b.view(), &mut c, ldc, bias),
                    _ => g.run_packed_b(m, a.view(), &pb, &mut c, ldc, bias),
                }
                .unwrap_or_else(|e| panic!("{what} {} {threads}T {how}: {e}", g.isa()));
                for (idx, (&got, &w)) in c.iter().zip(&want).enumerate() {
                    assert_eq!(
                        got as i64,
                        w,
                        "{what} {} {how}: {m}x{n}x{k} {threads}T at ({}, {})",
                        g.isa(),
                        idx / ldc,
                        idx % ldc
                    );
                }
            }
        }
    }
}

const DIMS: [usize; 6] = [1, 7, 13, 33, 64, 100];

#[test]
fn u8_times_i8_every_shape() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for &m in &DIMS {
        for &n in &DIMS {
            for &k in &[1, 3, 4, 13, 100] {
                let a = Mat::new(m, k, false, 0, || rng.int(0, 255) as u8);
                let b = Mat::new(k, n, false, 0, || rng.int(-128, 127) as i8);
                check((m, n, k), &a, &b, IBias::None, "u8 x i8");
            }
        }
    }
}

#[test]
fn extremes_and_deep_k() {
    // All-extreme values (where a saturating 8-bit multiply-add would go wrong), and `k`
    // across the cache blocks (KC = 1024 for VNNI, 512 for the others).
    for &k in &[1, 2, 511, 512, 513, 1023, 1024, 1030, 2100] {
        let (m, n) = (13, 35);
        let a = Mat::new(m, k, false, 0, || 255u8);
        let b = Mat::new(k, n, false, 0, || -128i8);
        check((m, n, k), &a, &b, IBias::None, "255 x -128");
        let b = Mat::new(k, n, false, 0, || 127i8);
        check((m, n, k), &a, &b, IBias::None, "255 x 127");
        let mut rng = Rng(k as u64 + 1);
        let a = Mat::new(m, k, true, 1, || rng.int(0, 255) as u8);
        let b = Mat::new(k, n, true, 2, || rng.int(-128, 127) as i8);
        check((m, n, k), &a, &b, IBias::Scalar(-5), "random deep");
    }
    // `k` is cut into KC blocks only when a column block of B (up to NC = 256 columns, all of
    // `k`) would not fit half of L2: wide and deep.
    for &(m, n, k) in &[(13, 300, 2100), (7, 260, 4100)] {
        let mut rng = Rng(k as u64 + n as u64);
        let a = Mat::new(m, k, false, 0, || rng.int(0, 255) as u8);
        let b = Mat::new(k, n, false, 0, || rng.int(-128, 127) as i8);
        check((m, n, k), &a, &b, IBias::Scalar(9), "wide and deep");
    }
}

#[test]
fn element_types_and_offsets() {
    let mut rng = Rng(99);
    let (m, n, k) = (17, 45, 70);
    // i8 × i8 (A shifted by 128), u8 × u8 (B shifted by 128).
    let a = Mat::new(m, k, false, 0, || rng.int(-128, 127) as i8);
    let b = Mat::new(k, n, false, 0, || rng.int(-128, 127) as i8);
    check((m, n, k), &a, &b, IBias::None, "i8 x i8");
    let a = Mat::new(m, k, false, 0, || rng.int(0, 255) as u8);
    let b = Mat::new(k, n, false, 0, || rng.int(0, 255) as u8);
    check((m, n, k), &a, &b, IBias::None, "u8 x u8");
    // i32 operands that are u8 minus a zero point, and i8 minus one (what the lowering of
    // MatMulInteger makes), including ones at the window's edges.
    for (za, zb) in [(0, 0), (128, 0), (255, 3), (17, -128), (0, 127)] {
        let a = Mat::new(m, k, false, 0, || (rng.int(0, 255) - za) as i32);
        let b = Mat::new(k, n, true, 0, || (rng.int(-128, 127) - zb) as i32);
        check(
            (m, n, k),
            &a,
            &b,
            IBias::None,
            &format!("i32 za={za} zb={zb}"),
        );
    }
    // Narrow ranges anywhere, and wider types.
    let a = Mat::new(m, k, false, 0, || rng.int(1000, 1100) as i32);
    let b = Mat::new(k, n, false, 0, || rng.int(-3000, -2900) as i16);
    check((m, n, k), &a, &b, IBias::None, "shifted windows");
    let a = Mat::new(m, k, false, 0, || rng.int(3, 200) as u16);
    let b = Mat::new(k, n, false, 0, || rng.int(7, 7 + 255) as u32);
    check((m, n, k), &a, &b, IBias::None, "u16 x u32");
}

#[test]
fn every_bias_and_layout() {
    let mut rng = Rng(7);
    for &(m, n, k) in &[(1, 1, 1), (12, 32, 8), (25, 65, 37), (100, 7, 129)] {
        let row: Vec<i32> = (0..m).map(|_| rng.int(-1000, 1000) as i32).collect();
        let col: Vec<i32> = (0..n).map(|_| rng.int(-1000, 1000) as i32).collect();
        let full: Vec<i32> = (0..m * (n + 1))
            .map(|_| rng.int(-1000, 1000) as i32)
            .collect();
        let biases = [
            IBias::None,
            IBias::Scalar(123),
            IBias::PerRow(&row),
            IBias::PerCol(&col),
            IBias::Full(&full, n + 1),
            IBias::Full(&full, 0),
        ];
        for (ta, tb, pad) in [
            (false, false, 0),
            (true, false, 2),
            (false, true, 1),
            (true, true, 0),
        ] {
            let a = Mat::new(m, k, ta, pad, || rng.int(0, 255) as u8);
            let b = Mat::new(k, n, tb, pad, || rng.int(-128, 127) as i8);
            for bias in biases {
                check(
                    (m, n, k),
                    &a,
                    &b,
                    bias,
                    &format!("{bias:?} ta={ta} tb={tb}"),
                );
            }
        }
    }
}

#[test]
fn big_products_split_across_threads() {
    let mut rng = Rng(3);
    for &(m, n, k) in &[(128, 384, 384), (300, 50, 200), (20, 700, 160)] {
        let a = Mat::new(m, k, false, 0, || (rng.int(0, 255) - 128) as i32);
        let b = Mat::new(k, n, false, 0, || rng.int(-128, 127) as i32);
        check((m, n, k), &a, &b, IBias::None, "big");
    }
}

#[test]
fn column_tails() {
    // Tiles cut short by the last columns of C take narrower kernels (VNNI: one vector per
    // row up to 16 columns, the transposed column kernel below as many columns as rows, 16 +
    // columns between 17 and 31): every such tail against every row tail, `k` not a
    // multiple of 4, `k` cut into blocks (a column kernel adding to C), and a full bias.
    let mut rng = Rng(0x7a11);
    let ns = [
        1, 2, 3, 4, 5, 11, 12, 15, 16, 17, 18, 20, 27, 28, 31, 49, 196,
    ];
    for &m in &[1, 3, 4, 11, 12, 13, 64] {
        for &n in &ns {
            for &k in &[3, 4, 9, 147] {
                let a = Mat::new(m, k, false, 0, || rng.int(-128, 127) as i8);
                let b = Mat::new(k, n, false, 0, || rng.int(0, 255) as u8);
                let row: Vec<i32> = (0..m).map(|_| rng.int(-5000, 5000) as i32).collect();
                check((m, n, k), &a, &b, IBias::PerRow(&row), "column tail");
            }
        }
    }
    for &(m, n, k) in &[(12, 290, 2100), (13, 305, 2103), (24, 49, 4608)] {
        let a = Mat::new(m, k, false, 0, || rng.int(0, 255) as u8);
        let b = Mat::new(k, n, false, 0, || rng.int(-128, 127) as i8);
        let full: Vec<i32> = (0..m * n).map(|_| rng.int(-1000, 1000) as i32).collect();
        check(
            (m, n, k),
            &a,
            &b,
            IBias::Full(&full, n),
            "column tail, deep",
        );
    }
}

#[test]
fn refusals() {
    let g = IGemm::new();
    let mut c = vec![0i32; 4];
    let a = [0i32, 300, 0, 0];
    let b = [1i8; 4];
    let r = g.run(
        2,
        2,
        2,
        IntRef::row_major(&a, 2),
        IntRef::row_major(&b, 2),
        &mut c,
        2,
        IBias::None,
    );
    assert_eq!(
        r,
        Err(IGemmError::Range {
            operand: "A",
            lo: 0,
            hi: 300
        })
    );
    // Values that fit, but a result that could leave i32: k·255·128 ≥ 2³¹ needs k > 65793.
    let k = 70_000;
    let a = vec![255u8; k];
    let b = vec![-128i8; k];
    let mut c1 = [0i32];
    let r = g.run(
        1,
        1,
        k,
        IntRef::row_major(&a, k),
        IntRef::row_major(&b, 1),
        &mut c1,
        1,
        IBias::None,
    );
    assert!(matches!(r, Err(IGemmError::MayOverflow { .. })), "{r:?}");
    let r = g.run(
        2,
        2,
        2,
        IntRef::row_major(&b[..3], 2),
        IntRef::row_major(&b, 2),
        &mut c,
        2,
        IBias::None,
    );
    assert!(matches!(r, Err(IGemmError::TooShort { operand: "A", .. })));
    assert_eq!(c, [0; 4], "nothing written");
    for isa in Isa::ALL.into_iter().filter(|&i| !supported(i)) {
        assert_eq!(
            IGemm::with_isa(isa).unwrap_err(),
            IGemmError::Unsupported(isa)
        );
    }
}

#[test]
fn model_orientations_odd_edges() {
    // The two ways the models call the kernels, on shapes that cut panels and groups short:
    // conv (i8 weights as A, u8 im2col activations as B, per-row bias) and BERT (u8
    // activations as A, i8 weights as B, per-column bias).
    let mut rng = Rng(0xfeed);
    for &(m, n, k) in &[
        (64, 49, 147),
        (13, 196, 36),
        (24, 33, 9),
        (5, 100, 70),
        (40, 17, 3),
    ] {
        let w = Mat::new(m, k, false, 0, || rng.int(-128, 127) as i8);
        let x = Mat::new(k, n, false, 0, || rng.int(0, 255) as u8);
        let row: Vec<i32> = (0..m).map(|_| rng.int(-5000, 5000) as i32).collect();
        check((m, n, k), &w, &x, IBias::PerRow(&row), "conv i8 x u8");
        let a = Mat::new(m, k, false, 0, || rng.int(0, 255) as u8);
        let w = Mat::new(k, n, false, 0, || rng.int(-128, 127) as i8);
        let col: Vec<i32> = (0..n).map(|_| rng.int(-5000, 5000) as i32).collect();
        check((m, n, k), &a, &w, IBias::PerCol(&col), "bert u8 x i8");
        // Both 8-bit types in both slots, with leading dimensions past the row.
        let a = Mat::new(m, k, false, 5, || rng.int(-128, 127) as i8);
        let b = Mat::new(k, n, false, 3, || rng.int(0, 255) as u8);
        check((m, n, k), &a, &b, IBias::None, "i8 x u8 padded");
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn fast_packing_matches_generic() {
    if !supported(Isa::Avx512) {
        return;
    }
    // The SIMD packers against the byte loops, panel for panel and sum for sum, for both
    // 8-bit source types into both 8-bit packed types, both layouts, every edge.
    let mut rng = Rng(0xabcdef);
    for &(rows, k) in &[
        (1, 1),
        (5, 3),
        (12, 16),
        (13, 17),
        (32, 4),
        (33, 147),
        (70, 64),
        (100, 33),
        (64, 5),
        (96, 147),
        (200, 9),
        (230, 12),
    ] {
        for &p in &[12usize, 32] {
            for col_major in [false, true] {
                let m: Mat<u8> = Mat::new(rows, k, col_major, 3, || rng.int(0, 255) as u8);
                let s: Vec<i8> = m.data.iter().map(|&x| x as i8).collect();
                let si = IntRef::new(&s[..], m.rs, m.cs);
                // The offsets that make the values fit the packed type, as `offset` chooses
                // them: (u8 source, i8 packed, offset).
                for (unsigned_src, signed, off) in [
                    (true, false, 0),
                    (true, true, 128),
                    (false, true, 0),
                    (false, false, -128),
                ] {
                    for threads in [1, 2] {
                        let tiles = rows.div_ceil(p);
                        let len = tiles * p * k.next_multiple_of(4);
                        let run = |fast: bool, signed: bool, unsigned_src: bool| {
                            let mut d = pack::AlignedVec::<u8>::new(len);
                            let mut sums = vec![0; tiles * p];
                            let parts = pack::split(
                                d.as_mut_slice(),
                                &mut sums,
                                len / tiles,
                                p,
                                tiles,
                                threads,
                            );
                            for (t, (dst, sm)) in parts.into_iter().enumerate() {
                                let part = (t, threads);
                                let done = fast && {
                                    let v = if unsigned_src {
                                        m.view()
                                    } else {
                                        IntRef::new(bytes_of(&s), m.rs, m.cs)
                                    };
                                    pack_x86::pack8(&v, rows, k, off, p, part, dst, sm, signed)
                                };
                                // Both layouts the SIMD packers take must be taken.
                                assert!(!fast || done || (col_major && p != 32), "not packed");
                                if !done {
                                    match (unsigned_src, signed) {
                                        (true, false) => pack::pack_generic(
                                            &m.view(),
                                            rows,
                                            k,
                                            off,
                                            p,
                                            4,
                                            part,
                                            dst,
                                            sm,
                                        ),
                                        (false, false) => pack::pack_generic(
                                            &si, rows, k, off, p, 4, part, dst, sm,
                                        ),
                                        (true, true) => pack::pack_generic(
                                            &m.view(),
                                            rows,
                                            k,
                                            off,
                                            p,
                                            4,
                                            part,
                                            as_i8(dst),
                                            sm,
                                        ),
                                        (false, true) => pack::pack_generic(
                                            &si,
                                            rows,
                                            k,
                                            off,
                                            p,
                                            4,
                                            part,
                                            as_i8(dst),
                                            sm,
                                        ),
                                    }
                                }
                            }
                            // SAFETY: every element was written by the packing.
                            let bytes: Vec<u8> = d
                                .as_mut_slice()
                                .iter()
                                .map(|x| unsafe { x.assume_init() })
                                .collect();
                            (bytes, sums)
                        };
                        assert_eq!(
                            run(true, signed, unsigned_src),
                            run(false, signed, unsigned_src),
                            "{rows}x{k} p={p} col_major={col_major} off={off} {threads}T signed={signed} u8 src={unsigned_src}"
                        );
                    }
                }
            }
        }
    }
}

fn bytes_of(s: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size and every bit pattern.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast(), s.len()) }
}

fn as_i8(d: &mut [std::mem::MaybeUninit<u8>]) -> &mut [std::mem::MaybeUninit<i8>] {
    // SAFETY: as above.
    unsafe { std::slice::from_raw_parts_mut(d.as_mut_ptr().cast(), d.len()) }
}

#[test]
fn both_threads_get_work_on_model_shapes() {
    // The conv and BERT shapes: with two threads allowed, both must get tiles of C.
    for isa in Isa::ALL {
        let (mr, nr) = match isa {
            Isa::Avx512 => (12, 32),
            Isa::Avx2 => (6, 16),
            Isa::Portable => (4, 16),
        };
        for &(m, n, k) in &[
            (64usize, 12544usize, 147usize),
            (64, 3136, 576),
            (128, 784, 1152),
            (256, 196, 2304),
            (512, 49, 4608),
            (128, 784, 64),
            (256, 196, 128),
            (512, 49, 256),
            (128, 384, 384),
            (128, 1536, 384),
            (128, 384, 1536),
        ] {
            let (mt, nt) = (m.div_ceil(mr), n.div_ceil(nr));
            let threads = threads_for(m, n, k, mt, nt, 2);
            assert_eq!(threads, 2, "{isa} {m}x{n}x{k}");
            let mut covered = 0;
            for t in 0..threads {
                let ((m0, m1), (n0, n1)) = band_of(t, threads, mt, nt);
                assert!(m1 > m0 && n1 > n0, "{isa} {m}x{n}x{k}: thread {t} idle");
                covered += (m1 - m0) * (n1 - n0);
            }
            assert_eq!(covered, mt * nt, "{isa} {m}x{n}x{k}");
        }
    }
}

#[test]
fn packed_operand_in_the_wrong_place() {
    let g = IGemm::new();
    let w = [1i8; 12];
    let pa = g.pack_a(3, 4, IntRef::row_major(&w, 4)).unwrap();
    let mut c = [0i32; 9];
    let r = g.run_packed_b(3, IntRef::row_major(&w, 4), &pa, &mut c, 3, IBias::None);
    assert!(matches!(r, Err(IGemmError::WrongPacking { .. })), "{r:?}");
    for isa in Isa::ALL
        .into_iter()
        .filter(|&i| supported(i) && i != g.isa())
    {
        let other = IGemm::with_isa(isa).unwrap();
        let r = other.run_packed_a(&pa, 3, IntRef::row_major(&w, 3), &mut c, 3, IBias::None);
        assert!(matches!(r, Err(IGemmError::WrongPacking { .. })), "{r:?}");
    }
    assert_eq!(c, [0; 9], "nothing written");
    // Packing refuses what running refuses.
    let wide = [0i32, 300];
    let r = g.pack_b(1, 2, IntRef::row_major(&wide, 2));
    assert!(
        matches!(r, Err(IGemmError::Range { operand: "B", .. })),
        "{r:?}"
    );
    let r = g.pack_a(2, 2, IntRef::row_major(&w[..3], 2));
    assert!(
        matches!(r, Err(IGemmError::TooShort { operand: "A", .. })),
        "{r:?}"
    );
    // A product whose packed operand makes the bound too large.
    let k = 70_000;
    let big = vec![-128i8; k];
    let pb = g.pack_b(k, 1, IntRef::row_major(&big, 1)).unwrap();
    let a = vec![255u8; k];
    let mut c1 = [0i32];
    let r = g.run_packed_b(1, IntRef::row_major(&a, k), &pb, &mut c1, 1, IBias::None);
    assert!(matches!(r, Err(IGemmError::MayOverflow { .. })), "{r:?}");
}

/// The requantizing epilogue against the two-step computation (the exact `i32` product, then
/// [`IRequant::value`] element by element): every ISA, thread count and packing, u8 and i8
/// outputs, scalar, per-row and per-column multipliers, odd shapes, `k` cut into cache
/// blocks, values past both saturation bounds, exact .5 ties (a scale of 2 on odd integers)
/// and NaN (a zero scale on a zero product).
#[test]
fn requantized_output_matches_two_steps() {
    let mut rng = Rng(0x0dd_5eed_cafe);
    let shapes = [
        (1, 1, 1),
        (7, 13, 3),
        (13, 33, 100),
        (12, 32, 4),
        (25, 70, 147),
        (13, 300, 2100),
    ];
    for (si, &(m, n, k)) in shapes.iter().enumerate() {
        let a = Mat::new(m, k, false, 0, || rng.int(0, 255) as u8);
        // Small weights for the tie cases keep the products small enough to tie exactly.
        let b = Mat::new(k, n, si % 2 == 1, 1, || rng.int(-128, 127) as i8);
        let bias: Vec<i32> = (0..m).map(|_| rng.int(-5000, 5000) as i32).collect();
        let ldc = n + 2;
        let mut exact = vec![0i32; m * ldc];
        IGemm::new()
            .run(
                m,
                n,
                k,
                a.view(),
                b.view(),
                &mut exact,
                ldc,
                IBias::PerRow(&bias),
            )
            .unwrap();
        let rows: Vec<f32> = (0..m).map(|_| rng.int(1, 4000) as f32 * 1e-5).collect();
        let cols: Vec<f32> = (0..n).map(|_| rng.int(1, 4000) as f32 * 1e-5).collect();
        let big = exact
            .iter()
            .map(|x| x.unsigned_abs())
            .max()
            .unwrap_or(1)
            .max(1) as f32;
        let cases: [(RqMult, f32, i32); 6] = [
            (RqMult::PerRow(&rows), 0.37, 3),
            (RqMult::PerCol(&cols), 0.9, -7),
            (RqMult::Scalar(0.011), 1.3, 128),
            // Ties: f32(acc) · 1 / 2 is an exact half for every odd acc.
            (RqMult::Scalar(1.0), 2.0, 0),
            // Saturation at both ends: values spread far past the range.
            (RqMult::Scalar(600.0 / big), 1.0, 10),
            // NaN (0 / 0) and ±∞.
            (RqMult::Scalar(1.0), 0.0, 5),
        ];
        // A residual laid out as C (for the quantized residual add), and its scalars.
        let res: Vec<u8> = (0..m * ldc).map(|_| rng.int(0, 255) as u8).collect();
        // An f32 residual (quantized in the epilogue), as bytes; some values far out of range.
        let res_f: Vec<u8> = (0..m * ldc)
            .flat_map(|_| (rng.int(-9000, 9000) as f32 * 1e-3).to_le_bytes())
            .collect();
        // Shifts added after the multiplication (a float bias), per row, column or tensor.
        let row_shift: Vec<f32> = (0..m).map(|_| rng.int(-3000, 3000) as f32 * 1e-3).collect();
        let col_shift: Vec<f32> = (0..n).map(|_| rng.int(-3000, 3000) as f32 * 1e-3).collect();
        // A byte table applied last (a quantized activation).
        let table: [u8; 256] = std::array::from_fn(|_| rng.int(0, 255) as u8);
        for (ci, &(mult, scale, zp)) in cases.iter().enumerate() {
            for (signed, with_add, shifted, tabled) in [
                (false, false, false, false),
                (true, false, false, false),
                (false, true, false, false),
                (true, true, false, false),
                (false, false, true, false),
                (true, true, true, false),
                (false, false, false, true),
                (true, true, true, true),
            ] {
                let shift = shifted.then(|| match ci % 3 {
                    0 => RqMult::PerCol(&col_shift),
                    1 => RqMult::PerRow(&row_shift),
                    _ => RqMult::Scalar(0.75),
                });
                let zp = if signed {
                    zp.clamp(-128, 127)
                } else {
                    zp.clamp(0, 255)
                };
                let r_f32 = ci % 3 == 2;
                let add = with_add.then(|| IAdd {
                    r: if r_f32 { &res_f } else { &res },
                    p: AddParams {
                        r_f32,
                        r_signed: ci % 2 == 1,
                        r_scale: 0.05,
                        r_zp: if ci % 2 == 1 { -3.0 } else { 7.0 },
                        out_scale: if ci == 3 { 0.5 } else { 0.07 },
                        out_zp: if signed { -9.0 } else { 9.0 },
                    },
                });
                let rq = IRequant {
                    mult,
                    shift,
                    scale,
                    zero_point: zp,
                    add,
                    table: tabled.then_some(&table),
                };
                let want: Vec<i32> = (0..m * ldc)
                    .map(|idx| {
                        let (i, j) = (idx / ldc, idx % ldc);
                        if j >= n {
                            return 0x55;
                        }
                        let mv = match mult {
                            RqMult::Scalar(s) => s,
                            RqMult::PerRow(v) => v[i],
                            RqMult::PerCol(v) => v[j],
                        };
                        let sv = shift.map(|s| match s {
                            RqMult::Scalar(s) => s,
                            RqMult::PerRow(v) => v[i],
                            RqMult::PerCol(v) => v[j],
                        });
                        let q = IRequant::value(exact[idx], mv, sv, scale, zp as f32, signed);
                        let q = match &add {
                            Some(a) => {
                                let rb = res[idx];
                                let r = if a.p.r_f32 {
                                    let b = &res_f[4 * idx..4 * idx + 4];
                                    a.p.quantize_r(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                                } else if a.p.r_signed {
                                    rb as i8 as f32
                                } else {
                                    rb as f32
                                };
                                a.p.value(q, scale, zp as f32, r, signed)
                            }
                            None => q,
                        };
                        // The table's entry, read as C's type.
                        match tabled {
                            true if signed => table[(q + 128) as usize] as i8 as i32,
                            true => table[q as usize] as i32,
                            false => q,
                        }
                    })
                    .collect();
                let (mut lo, mut hi) = (false, false);
                for (idx, &w) in want.iter().enumerate() {
                    if idx % ldc < n {
                        lo |= w == if signed { -128 } else { 0 };
                        hi |= w == if signed { 127 } else { 255 };
                    }
                }
                if ci == 4 && m * n > 100 && !with_add && !tabled {
                    assert!(lo && hi, "case {ci} must saturate at both ends");
                }
                for g in isas() {
                    let pa = g.pack_a(m, k, a.view()).unwrap();
                    let pb = g.pack_b(k, n, b.view()).unwrap();
                    for threads in [1, 2, 3] {
                        let g = g.threads(threads);
                        for how in ["raw", "packed A", "packed B"] {
                            let mut cu = vec![0x55u8; m * ldc];
                            let mut ci8 = vec![0x55i8; m * ldc];
                            let out = if signed {
                                IOut::I8(&mut ci8, rq)
                            } else {
                                IOut::U8(&mut cu, rq)
                            };
                            let bias = IBias::PerRow(&bias);
                            match how {
                                "raw" => g.run_into(m, n, k, a.view(), b.view(), out, ldc, bias),
                                "packed A" => g.run_packed_a_into(&pa, n, b.view(), out, ldc, bias),
                                _ => g.run_packed_b_into(m, a.view(), &pb, out, ldc, bias),
                            }
                            .unwrap();
                            for idx in 0..m * ldc {
                                let got = if signed {
                                    ci8[idx] as i32
                                } else {
                                    cu[idx] as i32
                                };
                                assert_eq!(
                                    got,
                                    want[idx],
                                    "{} {threads}T {how} {m}x{n}x{k} case {ci} signed {signed} add {with_add} \
                                     at ({}, {}), acc {}",
                                    g.isa(),
                                    idx / ldc,
                                    idx % ldc,
                                    exact[idx]
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn requant_value_definition() {
    // Ties to even, both bounds, NaN to 0.
    assert_eq!(IRequant::value(5, 1.0, None, 2.0, 0.0, false), 2);
    assert_eq!(IRequant::value(7, 1.0, None, 2.0, 0.0, false), 4);
    assert_eq!(IRequant::value(-5, 1.0, None, 2.0, 0.0, true), -2);
    assert_eq!(IRequant::value(1000, 1.0, None, 1.0, 0.0, false), 255);
    assert_eq!(IRequant::value(-1000, 1.0, None, 1.0, 0.0, true), -128);
    assert_eq!(IRequant::value(0, 1.0, None, 0.0, 3.0, true), 0);
    assert_eq!(IRequant::value(1, 1.0, None, 0.0, 3.0, true), 127);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn quantize16_is_the_definition() {
    use std::arch::x86_64::*;
    if !Isa::Avx512.is_supported() {
        return;
    }
    let xs = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.5,
        1.5,
        2.5,
        -0.5,
        -1.5,
        -0.0,
        0.499_999_97,
        127.5,
        128.5,
        -128.5,
        -127.5,
        255.5,
        254.5,
        300.0,
        -300.0,
        1e9,
        -1e9,
        3e38,
        16_777_217.0,
        -2_147_483_648.0,
        5.000_001,
    ];
    for (zp, lo, hi) in [
        (0.0, 0.0, 255.0),
        (3.0, 0.0, 255.0),
        (128.0, 0.0, 255.0),
        (255.0, 0.0, 255.0),
        (0.0, -128.0, 127.0),
        (-5.0, -128.0, 127.0),
        (100.0, -128.0, 127.0),
        (-128.0, -128.0, 127.0),
        (7.0, 0.0, 127.0),
        (2.0, 6.0, 90.0),
    ] {
        for chunk in xs.chunks(16) {
            let mut lanes = [0f32; 16];
            lanes[..chunk.len()].copy_from_slice(chunk);
            let mut got = [0i32; 16];
            // SAFETY: the CPU has AVX-512F (checked above); both arrays hold 16 lanes.
            unsafe {
                let q = quantize16(_mm512_loadu_ps(lanes.as_ptr()), zp, lo, hi);
                _mm512_storeu_si512(got.as_mut_ptr().cast(), q);
            }
            for (x, g) in lanes.iter().zip(got) {
                let want = if x.is_nan() {
                    0
                } else {
                    (x.round_ties_even() + zp).clamp(lo, hi) as i32
                };
                assert_eq!(g, want, "x {x} zp {zp} range [{lo}, {hi}]");
            }
        }
    }
}
