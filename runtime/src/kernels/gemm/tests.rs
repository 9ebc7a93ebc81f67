//! GEMM against a naive f64 reference: every ISA the CPU has, odd shapes, strides, transposes,
//! every epilogue, pre-packed B and threads.
//!
//! Tolerance: a float dot product of length k accumulated in f32 errs by at most about
//! `k·ε·Σ|a||b|` (ε = f32::EPSILON); the epilogue adds a few roundings of terms bounded by their
//! magnitudes. So each element must satisfy `|got − ref| ≤ (k + 4)·ε·S` with
//! `S = |α|·Σₚ|aᵢₚ||bₚⱼ| + |β||c⁰ᵢⱼ| + |biasᵢⱼ| + |rᵢⱼ|` (all activations here are 1-Lipschitz).

use super::*;

const SIZES: [usize; 13] = [1, 2, 3, 7, 8, 15, 16, 17, 31, 33, 64, 100, 257];

/// Deterministic values in [-1, 1).
fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// How operands are stored and what the epilogue does; shapes come separately.
#[derive(Clone, Copy, Debug)]
struct Layout {
    trans_a: bool,
    trans_b: bool,
    /// Extra elements per row (or column) beyond the tight leading dimension.
    pad: usize,
}

const TIGHT: Layout = Layout {
    trans_a: false,
    trans_b: false,
    pad: 0,
};

/// Everything one case needs: operands, the initial C (with sentinels in the padding), and
/// the f64 reference with its error scale.
struct Case {
    m: usize,
    n: usize,
    k: usize,
    a: Vec<f32>,
    lda: usize,
    b: Vec<f32>,
    ldb: usize,
    layout: Layout,
    c0: Vec<f32>,
    ldc: usize,
}

const SENTINEL: f32 = 1234.5;

impl Case {
    fn new(m: usize, n: usize, k: usize, layout: Layout) -> Case {
        let (ar, ac) = if layout.trans_a { (k, m) } else { (m, k) };
        let (br, bc) = if layout.trans_b { (n, k) } else { (k, n) };
        let (lda, ldb, ldc) = (ac + layout.pad, bc + layout.pad, n + layout.pad);
        let a = data(ar * lda, (m * 31 + k) as u64);
        let b = data(br * ldb, (n * 17 + k * 5) as u64);
        let mut c0 = vec![SENTINEL; m * ldc];
        for (i, row) in c0.chunks_mut(ldc.max(1)).enumerate() {
            for (j, x) in row[..n].iter_mut().enumerate() {
                *x = ((i * 7 + j * 3) % 11) as f32 / 4.0 - 1.0;
            }
        }
        Case {
            m,
            n,
            k,
            a,
            lda,
            b,
            ldb,
            layout,
            c0,
            ldc,
        }
    }

    fn a(&self) -> MatRef<'_> {
        if self.layout.trans_a {
            MatRef::col_major(&self.a, self.lda)
        } else {
            MatRef::row_major(&self.a, self.lda)
        }
    }

    fn b(&self) -> MatRef<'_> {
        if self.layout.trans_b {
            MatRef::col_major(&self.b, self.ldb)
        } else {
            MatRef::row_major(&self.b, self.ldb)
        }
    }

    /// `(reference, error scale)` per element of C, row-major `m×n`.
    fn reference(&self, ep: &Epilogue<'_>) -> Vec<(f64, f64)> {
        let (a, b) = (self.a(), self.b());
        let at = |x: &MatRef<'_>, i: usize, j: usize| f64::from(x.data[i * x.rs + j * x.cs]);
        let mut out = Vec::with_capacity(self.m * self.n);
        for i in 0..self.m {
            for j in 0..self.n {
                let (mut dot, mut abs) = (0.0f64, 0.0f64);
                for p in 0..self.k {
                    let t = at(&a, i, p) * at(&b, p, j);
                    dot += t;
                    abs += t.abs();
                }
                let alpha = f64::from(ep.alpha);
                let mut v = alpha * dot;
                let mut s = alpha.abs() * abs;
                let mut add = |x: f64| {
                    v += x;
                    s += x.abs();
                };
                if ep.beta != 0.0 {
                    add(f64::from(ep.beta) * f64::from(self.c0[i * self.ldc + j]));
                }
                match ep.bias {
                    Bias::None => {}
                    Bias::Scalar(x) => add(f64::from(x)),
                    Bias::PerRow(r) => add(f64::from(r[i])),
                    Bias::PerCol(c) => add(f64::from(c[j])),
                }
                if let Some(r) = &ep.residual {
                    add(f64::from(r.data[i * r.ld + j]));
                }
                let v = match ep.activation {
                    Activation::None => v,
                    Activation::Relu => v.max(0.0),
                    Activation::Clip { min, max } => v.clamp(f64::from(min), f64::from(max)),
                    Activation::LeakyRelu { alpha } => {
                        if v < 0.0 {
                            f64::from(alpha) * v
                        } else {
                            v
                        }
                    }
                    Activation::HardSigmoid { alpha, beta } => {
                        (f64::from(alpha) * v + f64::from(beta)).clamp(0.0, 1.0)
                    }
                    Activation::HardSwish => v * (v / 6.0 + 0.5).clamp(0.0, 1.0),
                    Activation::Gelu | Activation::GeluTanh => {
                        // GELU is 1.13-Lipschitz and approximated within `GELU_ERR·|v|`
                        // (see `act`): widen the error scale by both.
                        let tol_k = (self.k + 4) as f64 * f64::from(f32::EPSILON);
                        s *= 1.13 + GELU_ERR / tol_k;
                        gelu_f64(ep.activation, v)
                    }
                    Activation::Sigmoid | Activation::Swish { .. } => {
                        // Both are at most 1.1-Lipschitz (times `alpha`), and `exp` is within a
                        // few ulp: widen like GELU's.
                        let alpha = match ep.activation {
                            Activation::Swish { alpha } => f64::from(alpha).abs().max(1.0),
                            _ => 1.0,
                        };
                        let tol_k = (self.k + 4) as f64 * f64::from(f32::EPSILON);
                        s *= 1.1 * alpha + GELU_ERR / tol_k;
                        let sig = |u: f64| 1.0 / (1.0 + (-u).exp());
                        match ep.activation {
                            Activation::Swish { alpha } => v * sig(f64::from(alpha) * v),
                            _ => sig(v),
                        }
                    }
                };
                out.push((v, s));
            }
        }
        out
    }

    /// Compares `c` (as the kernel left it) with the reference, padding sentinels included.
    fn verify(&self, c: &[f32], reference: &[(f64, f64)], what: &str) {
        let tol_k = (self.k + 4) as f64 * f64::from(f32::EPSILON);
        for i in 0..self.m {
            for j in 0..self.ldc {
                let got = c[i * self.ldc + j];
                if j >= self.n {
                    assert_eq!(got, SENTINEL, "{what}: padding ({i}, {j}) was written");
                    continue;
                }
                let (want, scale) = reference[i * self.n + j];
                let err = (f64::from(got) - want).abs();
                assert!(
                    err <= tol_k * scale + 1e-30,
                    "{what}: C[{i}, {j}] = {got}, want {want} (err {err:e}, tol {:e})",
                    tol_k * scale
                );
            }
        }
    }

    fn name(&self, isa: Isa, extra: &str) -> String {
        format!(
            "{isa} m={} n={} k={} {:?} {extra}",
            self.m, self.n, self.k, self.layout
        )
    }

    /// Runs the case on `gemm` (strided B, then pre-packed B) and checks both.
    fn check(&self, gemm: Gemm, ep: &Epilogue<'_>, reference: &[(f64, f64)], extra: &str) {
        let what = self.name(gemm.isa(), extra);
        let mut c = self.c0.clone();
        gemm.run(
            self.m,
            self.n,
            self.k,
            self.a(),
            self.b(),
            &mut c,
            self.ldc,
            ep,
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        self.verify(&c, reference, &what);

        let packed = gemm.pack_b(self.k, self.n, self.b()).unwrap();
        let mut c = self.c0.clone();
        gemm.run_packed(self.m, self.a(), &packed, &mut c, self.ldc, ep)
            .unwrap_or_else(|e| panic!("{what} packed: {e}"));
        self.verify(&c, reference, &format!("{what} packed"));
    }
}

fn isas() -> Vec<Gemm> {
    Isa::supported()
        .map(|isa| Gemm::with_isa(isa).unwrap())
        .collect()
}

#[test]
fn detected_isa_is_supported_and_widest() {
    let isa = Isa::detect();
    assert!(isa.is_supported());
    assert_eq!(Isa::supported().last(), Some(isa));
}

#[test]
fn every_shape_every_isa() {
    let ep = Epilogue::new();
    for &m in &SIZES {
        for &n in &SIZES {
            for &k in &SIZES {
                let case = Case::new(m, n, k, TIGHT);
                let reference = case.reference(&ep);
                for gemm in isas() {
                    let what = case.name(gemm.isa(), "");
                    let mut c = case.c0.clone();
                    gemm.run(m, n, k, case.a(), case.b(), &mut c, case.ldc, &ep)
                        .unwrap();
                    case.verify(&c, &reference, &what);
                }
            }
        }
    }
}

#[test]
fn every_row_and_column_count() {
    // Every tile height up to two tiles of the tallest kernel (12 rows), and every tile width
    // up to two tiles of the widest (32 columns), both with A in place and packed.
    let ep = Epilogue::new().bias(Bias::Scalar(0.5));
    for trans_a in [false, true] {
        let layout = Layout { trans_a, ..TIGHT };
        let shapes = (1..=25)
            .map(|m| (m, 33, 19))
            .chain((1..=65).map(|n| (13, n, 11)));
        for (m, n, k) in shapes {
            let case = Case::new(m, n, k, layout);
            let reference = case.reference(&ep);
            for gemm in isas() {
                case.check(gemm, &ep, &reference, "");
            }
        }
    }
}

/// A smaller set of shapes that still crosses every edge: below, at and above MR, NR and KC.
const EDGE_SHAPES: [(usize, usize, usize); 10] = [
    (1, 1, 1),
    (1, 768, 33),
    (3, 17, 7),
    (7, 33, 16),
    (8, 32, 257),
    (9, 31, 64),
    (15, 100, 17),
    (17, 16, 300),
    (33, 65, 2),
    (100, 7, 513),
];

#[test]
fn strides_and_transposes() {
    for &(m, n, k) in &EDGE_SHAPES {
        for trans_a in [false, true] {
            for trans_b in [false, true] {
                for pad in [0, 3] {
                    let case = Case::new(
                        m,
                        n,
                        k,
                        Layout {
                            trans_a,
                            trans_b,
                            pad,
                        },
                    );
                    let ep = Epilogue::new();
                    let reference = case.reference(&ep);
                    for gemm in isas() {
                        case.check(gemm, &ep, &reference, "");
                    }
                }
            }
        }
    }
}

#[test]
fn every_epilogue() {
    for &(m, n, k) in &EDGE_SHAPES {
        let layout = Layout { pad: 2, ..TIGHT };
        let case = Case::new(m, n, k, layout);
        let row_bias = data(m, 3);
        let col_bias = data(n, 4);
        let res_ld = n + 5;
        let res = data(m * res_ld, 5);
        let epilogues = [
            (
                "gelu",
                Epilogue::new()
                    .bias(Bias::PerCol(&col_bias))
                    .activation(Activation::Gelu),
            ),
            (
                "gelu tanh",
                Epilogue::new()
                    .alpha(2.0)
                    .bias(Bias::PerRow(&row_bias))
                    .activation(Activation::GeluTanh),
            ),
            (
                "sigmoid",
                Epilogue::new()
                    .bias(Bias::PerCol(&col_bias))
                    .activation(Activation::Sigmoid),
            ),
            (
                "swish",
                Epilogue::new()
                    .bias(Bias::PerRow(&row_bias))
                    .activation(Activation::Swish { alpha: 1.5 }),
            ),
            ("alpha", Epilogue::new().alpha(-0.75)),
            ("beta=1", Epilogue::new().beta(1.0)),
            ("beta=0.5", Epilogue::new().beta(0.5).alpha(2.0)),
            ("scalar bias", Epilogue::new().bias(Bias::Scalar(0.25))),
            ("row bias", Epilogue::new().bias(Bias::PerRow(&row_bias))),
            ("col bias", Epilogue::new().bias(Bias::PerCol(&col_bias))),
            ("residual", Epilogue::new().residual(&res, res_ld)),
            ("broadcast residual", Epilogue::new().residual(&res, 0)),
            ("relu", Epilogue::new().activation(Activation::Relu)),
            (
                "clip",
                Epilogue::new().activation(Activation::Clip {
                    min: -0.5,
                    max: 0.75,
                }),
            ),
            (
                "leaky",
                Epilogue::new().activation(Activation::LeakyRelu { alpha: 0.1 }),
            ),
            (
                "hard sigmoid",
                Epilogue::new()
                    .bias(Bias::PerRow(&row_bias))
                    .activation(Activation::HardSigmoid {
                        alpha: 0.2,
                        beta: 0.5,
                    }),
            ),
            (
                "hard swish",
                Epilogue::new()
                    .bias(Bias::PerCol(&col_bias))
                    .activation(Activation::HardSwish),
            ),
            (
                "everything",
                Epilogue::new()
                    .alpha(0.5)
                    .beta(-1.0)
                    .bias(Bias::PerCol(&col_bias))
                    .residual(&res, res_ld)
                    .activation(Activation::Relu),
            ),
            (
                "conv",
                Epilogue::new()
                    .bias(Bias::PerRow(&row_bias))
                    .residual(&res, res_ld)
                    .activation(Activation::Clip { min: 0.0, max: 6.0 }),
            ),
        ];
        for (name, ep) in &epilogues {
            let reference = case.reference(ep);
            for gemm in isas() {
                case.check(gemm, ep, &reference, name);
            }
        }
    }
}

#[test]
fn beta_zero_never_reads_c() {
    let (m, n, k) = (9, 40, 20);
    let case = Case::new(m, n, k, TIGHT);
    let ep = Epilogue::new();
    let reference = case.reference(&ep);
    for gemm in isas() {
        let mut c = vec![f32::NAN; m * n];
        gemm.run(m, n, k, case.a(), case.b(), &mut c, n, &ep)
            .unwrap();
        case.verify(&c, &reference, &case.name(gemm.isa(), "NaN C"));
    }
}

#[test]
fn empty_dimensions() {
    for gemm in isas() {
        // k = 0: the product is zero, the epilogue still applies.
        let (m, n) = (5, 19);
        let bias = data(n, 9);
        let ep = Epilogue::new()
            .beta(2.0)
            .bias(Bias::PerCol(&bias))
            .activation(Activation::Relu);
        let case = Case::new(m, n, 0, TIGHT);
        let reference = case.reference(&ep);
        case.check(gemm, &ep, &reference, "k=0");
        // m = 0 or n = 0: nothing to do, even with empty slices.
        let mut c: Vec<f32> = vec![];
        let ep = Epilogue::new();
        gemm.run(
            0,
            4,
            3,
            MatRef::row_major(&[], 3),
            MatRef::row_major(&[0.0; 12], 4),
            &mut c,
            4,
            &ep,
        )
        .unwrap();
        gemm.run(
            4,
            0,
            3,
            MatRef::row_major(&[0.0; 12], 3),
            MatRef::row_major(&[], 0),
            &mut c,
            0,
            &ep,
        )
        .unwrap();
        // Packing an empty B, and using it.
        for (k, n) in [(0, 5), (5, 0), (0, 0)] {
            let b = vec![0.0; k * n];
            let packed = gemm.pack_b(k, n, MatRef::row_major(&b, n)).unwrap();
            let a = vec![1.0; 3 * k];
            let mut c = vec![7.0; 3 * n];
            gemm.run_packed(3, MatRef::row_major(&a, k), &packed, &mut c, n, &ep)
                .unwrap();
            assert!(c.iter().all(|&x| x == 0.0), "k={k} n={n}: {c:?}");
        }
    }
}

#[test]
fn large_n_crosses_nc() {
    let case = Case::new(9, 1100, 300, TIGHT);
    let bias = data(1100, 2);
    let ep = Epilogue::new().beta(1.0).bias(Bias::PerCol(&bias));
    let reference = case.reference(&ep);
    for gemm in isas() {
        case.check(gemm, &ep, &reference, "");
    }
}

#[test]
fn threads_split_m_and_n() {
    // Tall (split along M), wide (split along N), and odd tile counts; A in place and packed.
    for &(m, n, k) in &[
        (300, 40, 70),
        (20, 700, 90),
        (131, 129, 257),
        (1, 1000, 1100),
    ] {
        for trans_a in [false, true] {
            let case = Case::new(
                m,
                n,
                k,
                Layout {
                    trans_a,
                    pad: 1,
                    ..TIGHT
                },
            );
            let res = data(m * n, 8);
            let ep = Epilogue::new()
                .beta(0.5)
                .residual(&res, n)
                .activation(Activation::Relu);
            let reference = case.reference(&ep);
            for gemm in isas() {
                for threads in [2, 3, 7] {
                    let what = format!("{threads} threads");
                    case.check(gemm.threads(threads), &ep, &reference, &what);
                }
            }
        }
    }
}

#[test]
fn free_functions_match_the_reference() {
    let (m, n, k) = (33, 70, 45);
    let case = Case::new(m, n, k, TIGHT);
    let ep = Epilogue::new().activation(Activation::Relu);
    let reference = case.reference(&ep);
    let mut c = case.c0.clone();
    sgemm(m, n, k, &case.a, k, &case.b, n, &mut c, n, &ep).unwrap();
    case.verify(&c, &reference, "sgemm");
    let mut c = case.c0.clone();
    sgemm_parallel(m, n, k, &case.a, k, &case.b, n, &mut c, n, &ep, 2).unwrap();
    case.verify(&c, &reference, "sgemm_parallel");
    let packed = PackedB::new(k, n, &case.b, n).unwrap();
    assert_eq!(
        (packed.k(), packed.n(), packed.isa()),
        (k, n, Isa::detect())
    );
    let mut c = case.c0.clone();
    sgemm_packed(m, &case.a, k, &packed, &mut c, n, &ep).unwrap();
    case.verify(&c, &reference, "sgemm_packed");
}

#[test]
fn caller_errors() {
    let a = [0.0; 6];
    let b = [0.0; 6];
    let mut c = [0.0; 4];
    let ep = Epilogue::new();
    let short = sgemm(2, 2, 3, &a[..5], 3, &b, 2, &mut c, 2, &ep);
    assert_eq!(
        short,
        Err(GemmError::TooShort {
            operand: "A",
            needed: 6,
            len: 5
        })
    );
    let overlap = sgemm(2, 2, 3, &a, 3, &b, 2, &mut c, 1, &ep);
    assert_eq!(
        overlap,
        Err(GemmError::Overlap {
            operand: "C",
            ld: 1,
            n: 2
        })
    );
    let bias = sgemm(
        2,
        2,
        3,
        &a,
        3,
        &b,
        2,
        &mut c,
        2,
        &ep.bias(Bias::PerRow(&[1.0])),
    );
    assert!(matches!(
        bias,
        Err(GemmError::TooShort {
            operand: "bias",
            ..
        })
    ));
    let res = sgemm(2, 2, 3, &a, 3, &b, 2, &mut c, 2, &ep.residual(&[0.0; 3], 2));
    assert!(matches!(
        res,
        Err(GemmError::TooShort {
            operand: "residual",
            ..
        })
    ));
    let huge = Gemm::new().run(
        2,
        2,
        3,
        MatRef::new(&a, usize::MAX, 1),
        MatRef::row_major(&b, 2),
        &mut c,
        2,
        &ep,
    );
    assert_eq!(huge, Err(GemmError::Overflow { operand: "A" }));
    // A packing is only valid for the ISA it was made for.
    let packed = Gemm::with_isa(Isa::Portable)
        .unwrap()
        .pack_b(3, 2, MatRef::row_major(&b, 2))
        .unwrap();
    for gemm in isas().into_iter().filter(|g| g.isa() != Isa::Portable) {
        let r = gemm.run_packed(2, MatRef::row_major(&a, 3), &packed, &mut c, 2, &ep);
        assert!(matches!(r, Err(GemmError::PackedMismatch { .. })));
    }
    for isa in Isa::ALL.into_iter().filter(|i| !i.is_supported()) {
        assert_eq!(
            Gemm::with_isa(isa).unwrap_err(),
            GemmError::Unsupported(isa)
        );
    }
}

#[test]
fn random_cases() {
    // Deterministic pseudo-random shapes, layouts, epilogues and thread counts, to reach
    // combinations the tables above do not list.
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut next = |bound: usize| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s % bound as u64) as usize
    };
    for _ in 0..150 {
        let (m, n, k) = (next(90), next(90), next(600));
        let layout = Layout {
            trans_a: next(2) == 1,
            trans_b: next(2) == 1,
            pad: next(3),
        };
        let case = Case::new(m, n, k, layout);
        let row_bias = data(m, 1);
        let col_bias = data(n, 2);
        let res = data(m * n, 3);
        let bias = match next(4) {
            0 => Bias::None,
            1 => Bias::Scalar(-0.25),
            2 => Bias::PerRow(&row_bias),
            _ => Bias::PerCol(&col_bias),
        };
        let activation = match next(4) {
            0 => Activation::None,
            1 => Activation::Relu,
            2 => Activation::Clip {
                min: -1.0,
                max: 0.5,
            },
            _ => Activation::LeakyRelu { alpha: 0.25 },
        };
        let mut ep = Epilogue::new()
            .alpha([1.0, -2.0][next(2)])
            .beta([0.0, 1.0, 0.75][next(3)])
            .bias(bias)
            .activation(activation);
        if next(2) == 1 {
            ep = ep.residual(&res, n);
        }
        let reference = case.reference(&ep);
        let threads = 1 + next(3);
        for gemm in isas() {
            case.check(
                gemm.threads(threads),
                &ep,
                &reference,
                &format!("{ep:?} {threads}T"),
            );
        }
    }
}

#[test]
fn matrix_vector_products() {
    // One row of C with B stored transposed (the Linear layer), one column of C with A
    // row-major: both go to the dot-product path; big enough to be split across threads too.
    for &(m, n, k) in &[
        (1, 1, 1),
        (1, 9, 15),
        (1, 100, 17),
        (1, 512, 784),
        (1, 1100, 1000),
        (7, 1, 33),
        (1000, 1, 1100),
    ] {
        for pad in [0, 2] {
            for trans_b in [false, true] {
                let layout = Layout {
                    trans_b,
                    pad,
                    ..TIGHT
                };
                let case = Case::new(m, n, k, layout);
                let row_bias = data(m, 3);
                let col_bias = data(n, 4);
                let res = data(m * n, 5);
                for ep in [
                    Epilogue::new(),
                    Epilogue::new()
                        .alpha(0.5)
                        .beta(0.25)
                        .bias(Bias::PerCol(&col_bias))
                        .residual(&res, n)
                        .activation(Activation::Relu),
                    Epilogue::new()
                        .beta(1.0)
                        .bias(Bias::PerRow(&row_bias))
                        .activation(Activation::Clip {
                            min: -0.5,
                            max: 0.5,
                        }),
                    Epilogue::new().bias(Bias::Scalar(2.0)),
                ] {
                    let reference = case.reference(&ep);
                    for gemm in isas() {
                        case.check(gemm.threads(2), &ep, &reference, "gemv");
                    }
                }
            }
        }
    }
}

#[test]
fn nan_through_activations() {
    // A NaN product: ReLU makes it 0, Clip makes it `min`, the others keep it, on every path (tiles of each ISA, the matrix-vector path), as `Activation::apply`.
    let (k, n) = (3, 40);
    let mut a = vec![1.0f32; 13 * k];
    a[k] = f32::NAN; // row 1
    let b = vec![1.0f32; k * n];
    let acts = [
        Activation::None,
        Activation::Relu,
        Activation::Clip {
            min: -0.5,
            max: 0.5,
        },
        Activation::LeakyRelu { alpha: 0.1 },
        Activation::HardSigmoid {
            alpha: 0.2,
            beta: 0.5,
        },
        Activation::HardSwish,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Sigmoid,
        Activation::Swish { alpha: 1.0 },
    ];
    for act in acts {
        let want = act.apply(f32::NAN);
        assert_eq!(
            want.is_nan(),
            !matches!(act, Activation::Relu | Activation::Clip { .. })
        );
        let ep = Epilogue::new().activation(act);
        for gemm in isas() {
            for m in [13, 2] {
                let mut c = vec![0.0; m * n];
                gemm.run(
                    m,
                    n,
                    k,
                    MatRef::row_major(&a, k),
                    MatRef::row_major(&b, n),
                    &mut c,
                    n,
                    &ep,
                )
                .unwrap();
                for (j, &got) in c[n..2 * n].iter().enumerate() {
                    assert!(
                        got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                        "{} {act:?} m={m}: C[1, {j}] = {got}, want {want}",
                        gemm.isa()
                    );
                }
            }
            // The matrix-vector path: row 1 of A against one column.
            let mut c = vec![0.0; 13];
            gemm.run(
                13,
                1,
                k,
                MatRef::row_major(&a, k),
                MatRef::row_major(&b, n),
                &mut c,
                1,
                &ep,
            )
            .unwrap();
            assert!(c[1].to_bits() == want.to_bits() || (c[1].is_nan() && want.is_nan()));
        }
    }
}

/// The vector sigmoid against the scalar definition at the edges of its range: where
/// `exp(-x)` overflows (`1/(1 + ∞)`), where `1 + exp(-x)` is finite but its reciprocal
/// subnormal, where it saturates, and around 0; through the tiles' epilogue and the
/// matrix-vector path, as Sigmoid and as Swish. Within 4 ulp, or 1e-35 where the result is
/// subnormal (an implementation that flushes those to 0 is as good).
#[test]
fn sigmoid_at_the_edges_of_its_range() {
    let xs = [
        f32::NEG_INFINITY,
        -1e30,
        -150.0,
        -104.0,
        -88.8,
        -88.5,
        -87.0,
        -30.0,
        -17.0,
        -1.0,
        -1e-3,
        -0.0,
        0.0,
        1e-3,
        0.5,
        1.0,
        9.0,
        17.0,
        30.0,
        88.0,
        89.0,
        1e30,
        f32::INFINITY,
    ];
    let n = xs.len();
    for act in [Activation::Sigmoid, Activation::Swish { alpha: 1.0 }] {
        for gemm in isas() {
            // C (1×n) = act(1 · B), and C (n×1) = act(A · 1): the tile and dot-product paths.
            let mut row = vec![0.0f32; n];
            let ep = Epilogue::new().activation(act);
            let one = [1.0f32];
            gemm.run(
                1,
                n,
                1,
                MatRef::row_major(&one, 1),
                MatRef::row_major(&xs, n),
                &mut row,
                n,
                &ep,
            )
            .unwrap();
            let mut col = vec![0.0f32; n];
            gemm.run(
                n,
                1,
                1,
                MatRef::row_major(&xs, 1),
                MatRef::row_major(&one, 1),
                &mut col,
                1,
                &ep,
            )
            .unwrap();
            for (i, &x) in xs.iter().enumerate() {
                let want = act.apply(x);
                for got in [row[i], col[i]] {
                    let ok = (got.is_nan() && want.is_nan())
                        || got == want
                        || (got - want).abs() <= 4.0 * f32::EPSILON * want.abs() + 1e-35;
                    assert!(ok, "{} {act:?}({x}) = {got}, want {want}", gemm.isa());
                }
            }
        }
    }
}

/// The bound on GELU's error relative to `|x|`, with `x` its argument (see `act`'s docs: `1e-6`
/// relative to the result plus `2e-7·|x|`, and `|gelu(x)| ≤ |x|`).
const GELU_ERR: f64 = 1.2e-6;

/// GELU's definition in `f64` (libm's `erf`, std's `tanh`), the constants as `f32`.
fn gelu_f64(act: Activation, x: f64) -> f64 {
    match act {
        Activation::Gelu => {
            0.5 * x * (1.0 + libm::erf(x * f64::from(std::f32::consts::FRAC_1_SQRT_2)))
        }
        _ => {
            let k = f64::from(act::SQRT_2_OVER_PI);
            let c = f64::from(act::GELU_CUBIC);
            0.5 * x * (1.0 + (k * (x + c * x * x * x)).tanh())
        }
    }
}

/// Arguments for the transcendental sweeps: a dense grid over [-12, 12], the branch boundaries
/// of `erf`, `tanh` and `exp` and their neighbours, tiny and huge values, ±0 and ±inf.
fn sweep() -> Vec<f32> {
    let mut xs: Vec<f32> = (-12_000..=12_000).map(|i| i as f32 * 1e-3).collect();
    let edges = [
        act::ERF_SMALL,
        act::TANH_SMALL,
        act::ERF_SMALL * std::f32::consts::SQRT_2,
        act::EXP_HI / 2.0,
        act::EXP_LO / 2.0,
        1e-30,
        1e-10,
        1e-5,
        f32::MIN_POSITIVE,
        20.0,
        100.0,
        1e10,
        f32::MAX,
    ];
    for e in edges {
        for x in [
            e,
            f32::from_bits(e.to_bits() + 1),
            f32::from_bits(e.to_bits() - 1),
        ] {
            xs.extend([x, -x]);
        }
    }
    xs.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY]);
    xs
}

#[test]
fn scalar_math_within_bounds() {
    // erf and tanh within 1e-6 relative of libm (f64), exp within 2e-7 relative.
    for x in sweep() {
        let xd = f64::from(x);
        let (e, t) = (act::erf(x), act::tanh(x));
        let (we, wt) = (libm::erf(xd), xd.tanh());
        assert!(
            (f64::from(e) - we).abs() <= 1e-6 * we.abs() + 1e-45,
            "erf({x}) = {e}, want {we}"
        );
        assert!(
            (f64::from(t) - wt).abs() <= 1e-6 * wt.abs() + 1e-45,
            "tanh({x}) = {t}, want {wt}"
        );
        let x = x / 8.0;
        let (got, want) = (act::exp(x), f64::from(x).exp());
        if want < f64::from(f32::MIN_POSITIVE) || want > f64::from(f32::MAX) {
            continue;
        }
        assert!(
            (f64::from(got) - want).abs() <= 2e-7 * want,
            "exp({x}) = {got}, want {want}"
        );
    }
    assert!(act::erf(f32::NAN).is_nan() && act::tanh(f32::NAN).is_nan());
    assert_eq!(act::exp(200.0), f32::INFINITY);
    assert_eq!(act::exp(-200.0), 0.0);
}

#[test]
fn gelu_epilogue_sweep() {
    // C = x·s exactly (k = 1, s a power of two), so the epilogue sees every sweep value; each
    // ISA's tiles (and the portable scalar definition) must be within the documented bound of
    // the f64 definition, and within a few roundings of the scalar definition.
    let xs = sweep();
    let scales: Vec<f32> = [1.0, -1.0, 0.5, -2.0, 0.25, 4.0, -0.125]
        .into_iter()
        .cycle()
        .take(19)
        .collect();
    let (m, n) = (xs.len(), scales.len());
    for act in [Activation::Gelu, Activation::GeluTanh] {
        let ep = Epilogue::new().activation(act);
        for gemm in isas() {
            let mut c = vec![0.0f32; m * n];
            gemm.run(
                m,
                n,
                1,
                MatRef::row_major(&xs, 1),
                MatRef::row_major(&scales, n),
                &mut c,
                n,
                &ep,
            )
            .unwrap();
            for (i, &x0) in xs.iter().enumerate() {
                for (j, &s) in scales.iter().enumerate() {
                    let x = x0 * s;
                    let got = c[i * n + j];
                    let what = format!("{} {act:?}({x})", gemm.isa());
                    let scalar = act.apply(x);
                    let want = gelu_f64(act, f64::from(x));
                    if want.is_nan() || scalar.is_nan() {
                        assert!(got.is_nan() && scalar.is_nan(), "{what} = {got}, want NaN");
                        continue;
                    }
                    if want.is_infinite() {
                        assert_eq!(f64::from(got), want, "{what}");
                        continue;
                    }
                    let bound = 1e-6 * want.abs() + 2e-7 * f64::from(x).abs() + 1e-45;
                    let err = (f64::from(got) - want).abs();
                    assert!(err <= bound, "{what} = {got}, want {want} (err {err:e})");
                    let err = (got - scalar).abs();
                    assert!(
                        err <= 4.0 * f32::EPSILON * (scalar.abs() + 0.5 * x.abs()) + 1e-45,
                        "{what} = {got}, scalar {scalar} (err {err:e})"
                    );
                }
            }
        }
    }
}

#[test]
fn transposed_products_land_in_c() {
    // C = act(A·B + per-row bias) computed as Cᵀ = Bᵀ·Aᵀ: odd shapes, a padded C, threads;
    // the tile hook must see every element of C once, in C's coordinates, after it is final.
    for &(m, n, k) in &[
        (1, 1, 1),
        (33, 7, 5),
        (64, 49, 70),
        (100, 17, 257),
        (37, 300, 64),
        (600, 7, 600),
    ] {
        let case = Case::new(m, n, k, Layout { pad: 3, ..TIGHT });
        let bias = data(m, 77);
        let act = Activation::HardSwish;
        let reference = case.reference(&Epilogue::new().bias(Bias::PerRow(&bias)).activation(act));
        for gemm in isas() {
            for threads in [1, 2, 5] {
                let gemm = gemm.threads(threads);
                let what = case.name(gemm.isa(), &format!("transposed, {threads} threads"));
                let at = gemm.pack_b(k, m, case.a().t()).unwrap();
                let mut c = case.c0.clone();
                let seen = std::sync::Mutex::new(vec![0u32; m * n]);
                let cp = CPtr(c.as_mut_ptr());
                let tol_k = (k + 4) as f64 * f64::from(f32::EPSILON);
                let hook = |r0: usize, rows: usize, c0: usize, cols: usize| {
                    let mut seen = seen.lock().unwrap();
                    for i in r0..r0 + rows {
                        for j in c0..c0 + cols {
                            seen[i * n + j] += 1;
                            // SAFETY: (i, j) lies in C, and this block is final.
                            let got = unsafe { *cp.ptr().add(i * case.ldc + j) };
                            let (want, scale) = reference[i * n + j];
                            assert!((f64::from(got) - want).abs() <= tol_k * scale + 1e-30);
                        }
                    }
                };
                let ep = Epilogue::new()
                    .bias(Bias::PerCol(&bias))
                    .activation(act)
                    .tile_hook(TileHook(&hook));
                gemm.run_packed_transposed(n, case.b().t(), &at, &mut c, case.ldc, &ep)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                case.verify(&c, &reference, &what);
                assert!(seen.into_inner().unwrap().iter().all(|&s| s == 1), "{what}");
            }
        }
    }
    let gemm = Gemm::new();
    let at = gemm.pack_b(2, 3, MatRef::row_major(&[0.0; 6], 3)).unwrap();
    let mut c = [0.0; 6];
    let b = [0.0; 4];
    for ep in [
        Epilogue::new().beta(1.0),
        Epilogue::new().residual(&[0.0; 6], 2),
    ] {
        let err = gemm.run_packed_transposed(2, MatRef::row_major(&b, 2), &at, &mut c, 2, &ep);
        assert_eq!(err, Err(GemmError::Transposed));
    }
}

/// `activate_slice` is `Activation::apply` on every element (within the vector kernels' own
/// rounding: 1e-6 relative plus 3e-7), for every activation and ISA, on lengths that leave
/// every remainder of the 16- and 8-lane loops (NaN and infinities in).
#[test]
fn activate_slice_is_apply_on_each_element() {
    let acts = [
        Activation::Relu,
        Activation::Clip {
            min: -0.5,
            max: 2.0,
        },
        Activation::HardSwish,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Sigmoid,
        Activation::Swish { alpha: 1.7 },
    ];
    for isa in Isa::supported() {
        for act in acts {
            for len in 0..40 {
                let mut x: Vec<f32> = data(len, len as u64).iter().map(|v| v * 9.0).collect();
                for (i, special) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY]
                    .into_iter()
                    .enumerate()
                {
                    if let Some(v) = x.get_mut(3 * i + 1) {
                        *v = special;
                    }
                }
                let want: Vec<f32> = x.iter().map(|&v| act.apply(v)).collect();
                activate_slice(act, &mut x, isa);
                for (g, w) in x.iter().zip(&want) {
                    let ok = (g.is_nan() && w.is_nan())
                        || g == w
                        || (g - w).abs() <= 1e-6 * w.abs() + 3e-7;
                    assert!(ok, "{isa:?} {act:?} {len}: {x:?} vs {want:?}");
                }
            }
        }
    }
}
