//! Integer GEMM against a naive `i64` reference, exactly: every ISA this CPU runs, 8-bit and
//! wider element types (offsets in play), odd shapes crossing the tile and cache-block edges,
//! strides, every bias, threads; and the refusals (ranges too wide, possible overflow).

use super::*;

/// A deterministic xorshift stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in `[lo, hi]`.
    fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
}

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
            let mut c = vec![-7i32; m * ldc];
            g.threads(threads)
                .run(m, n, k, a.view(), b.view(), &mut c, ldc, bias)
                .unwrap_or_else(|e| panic!("{what} {} {threads}T: {e}", g.isa()));
            for (idx, (&got, &w)) in c.iter().zip(&want).enumerate() {
                assert_eq!(
                    got as i64,
                    w,
                    "{what} {}: {m}x{n}x{k} {threads}T at ({}, {})",
                    g.isa(),
                    idx / ldc,
                    idx % ldc
                );
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
