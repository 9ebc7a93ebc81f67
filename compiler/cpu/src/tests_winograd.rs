//! Winograd F(2×2, 3×3) convolutions (`mlc_kir`'s `lower/winograd.rs`), compiled: against the
//! kernel-IR evaluator of the same program (tight), and against the graph interpreter's direct
//! convolution (within the transforms' rounding), on odd and even maps, asymmetric pads,
//! channel counts that are not multiples of 16, batches, and bias, ReLU and residual tails.

use crate::tests::{check_inputs, compare};
use mlc_ir::{Tensor, parse_graph};

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32) / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn list(v: &[f32]) -> String {
    v.iter()
        .map(|x| format!("{x:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One case: batch, input channels, output channels, input map, pads (top, left, bottom,
/// right), whether the conv has a bias, and its tail.
#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    c: usize,
    m: usize,
    hw: (usize, usize),
    pads: [usize; 4],
    bias: bool,
    tail: Tail,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Tail {
    None,
    Relu,
    /// `relu(conv + r)` with `r` a second input.
    AddRelu,
}

impl Case {
    fn out(&self) -> (usize, usize) {
        let [t, l, b, r] = self.pads;
        (self.hw.0 + t + b - 2, self.hw.1 + l + r - 2)
    }

    /// The graph text and its inputs.
    fn graph(&self) -> (String, Vec<Tensor>) {
        let Case { n, c, m, hw, .. } = *self;
        let (oh, ow) = self.out();
        let [t, l, b, r] = self.pads;
        let xt = format!("f32[{n},{c},{},{}]", hw.0, hw.1);
        let wt = format!("f32[{m},{c},3,3]");
        let yt = format!("f32[{n},{m},{oh},{ow}]");
        let attrs = format!(
            r#""auto_pad":"not_set","dilations":[1,1],"group":1,"pads":[{t},{l},{b},{r}],"strides":[1,1]"#
        );
        let w = values(m * c * 9, 7 + c as u64);
        let bv = values(m, 11);
        let mut inputs =
            vec![Tensor::from_vec(&[n, c, hw.0, hw.1], values(n * c * hw.0 * hw.1, 3)).unwrap()];
        let bias_arg = if self.bias { "%3" } else { "_" };
        let consts = format!(
            "  @c0 = const {wt} [{}]\n  @c1 = const f32[{m}] [{}]\n  %2 = constant @c0 : {wt}\n  %3 = constant @c1 : f32[{m}]\n",
            list(&w),
            list(&bv)
        );
        let src = match self.tail {
            Tail::None => format!(
                "graph (%0: {xt} \"x\", %1: {yt} \"unused\") -> (%4 \"y\") {{\n{consts}  %4 = nn.conv {{{attrs}}} (%0, %2, {bias_arg}) : {yt}\n}}"
            ),
            Tail::Relu | Tail::AddRelu => {
                let add = self.tail == Tail::AddRelu;
                let (body, last) = if add {
                    (
                        format!(
                            "      %5 = ew.add(%4, %3) : {yt}\n      %6 = ew.relu(%5) : {yt}\n"
                        ),
                        6,
                    )
                } else {
                    (format!("      %5 = ew.relu(%4) : {yt}\n"), 5)
                };
                let bias_in = if self.bias { "%2" } else { "_" };
                format!(
                    "graph (%0: {xt} \"x\", %1: {yt} \"r\") -> (%4 \"y\") {{\n{consts}  %4 = control.composite {{\"kind\":\"conv+tail\"}} (%0, %2, %3, %1) : {yt} {{\n    graph (%0: {xt} \"in0\", %1: {wt} \"in1\", %2: f32[{m}] \"in2\", %3: {yt} \"in3\") -> (%{last} \"out\") {{\n      %4 = nn.conv {{{attrs}}} (%0, %1, {bias_in}) : {yt}\n{body}    }}\n  }}\n}}"
                )
            }
        };
        inputs.push(Tensor::from_vec(&[n, m, oh, ow], values(n * m * oh * ow, 5)).unwrap());
        (src, inputs)
    }
}

/// Runs `case` compiled against the evaluator and against the interpreter; returns the
/// kernel-IR text.
fn run(case: &Case) -> String {
    let (src, inputs) = case.graph();
    // The same program: only the GEMM's summation order differs.
    let text = check_inputs(&src, &inputs, 1e-6);
    // Direct convolution: the transforms round differently.
    let g = parse_graph(&src).unwrap();
    let named: Vec<(String, Tensor)> = g
        .inputs
        .iter()
        .zip(&inputs)
        .map(|(p, t)| (p.name.clone(), t.clone()))
        .collect();
    let want = mlc_interp::run(&g, &named).unwrap();
    let prog = mlc_kir::lower_graph(&g).unwrap();
    let got = crate::CompiledProgram::new(&prog)
        .unwrap()
        .run(&inputs, 2)
        .unwrap();
    if let Err(e) = compare(&want, &got, 1e-5) {
        panic!("{case:?}: {e}");
    }
    text
}

/// `(n, c, m, map, pads, bias, tail)` as a [`Case`].
type Row = (usize, usize, usize, (usize, usize), [usize; 4], bool, Tail);

fn case((n, c, m, hw, pads, bias, tail): Row) -> Case {
    Case {
        n,
        c,
        m,
        hw,
        pads,
        bias,
        tail,
    }
}

#[test]
fn winograd_matches_direct_convolution() {
    use Tail::*;
    let p1 = [1, 1, 1, 1];
    let rows: [Row; 14] = [
        (1, 16, 16, (12, 12), p1, true, None),
        // Odd maps: clipped last tile row and column.
        (1, 16, 16, (13, 11), p1, true, None),
        (1, 16, 16, (11, 12), p1, false, None),
        // No padding, asymmetric padding, and maps one output row or column tall.
        (1, 16, 16, (13, 14), [0, 0, 0, 0], true, None),
        (1, 16, 16, (12, 13), [0, 1, 2, 0], true, None),
        (1, 16, 16, (1, 70), [1, 0, 1, 0], true, None),
        (1, 16, 16, (35, 3), [0, 1, 0, 1], true, None),
        // Channels not multiples of 16, a batch of two.
        (1, 17, 23, (12, 12), p1, true, None),
        (2, 19, 18, (9, 8), p1, true, None),
        (2, 33, 16, (14, 14), p1, false, None),
        // Tails in the output transform's stores, or after it.
        (1, 16, 16, (11, 13), p1, true, Relu),
        (2, 16, 16, (12, 12), p1, false, Relu),
        (1, 16, 16, (9, 13), p1, true, AddRelu),
        (1, 24, 20, (12, 12), p1, false, AddRelu),
    ];
    for row in rows {
        let case = case(row);
        let text = run(&case);
        assert!(text.contains("winograd_output"), "{case:?}:\n{text}");
    }
}

/// Where Winograd does not pay (few channels, few tiles), the convolution stays im2col +
/// GEMM, and is still right.
#[test]
fn small_convolutions_keep_im2col() {
    let p1 = [1, 1, 1, 1];
    let rows: [Row; 4] = [
        (1, 16, 16, (1, 1), p1, true, Tail::None),
        (1, 3, 16, (8, 8), p1, true, Tail::None),
        (1, 16, 4, (8, 8), p1, true, Tail::Relu),
        // 7×7 maps: 16 tiles.
        (1, 16, 16, (7, 7), p1, true, Tail::None),
    ];
    for row in rows {
        let case = case(row);
        let text = run(&case);
        assert!(!text.contains("winograd"), "{case:?}:\n{text}");
    }
}

/// The transforms are SIMD loops: the input's over a row of tiles (stride-2 loads), the
/// output's over a row of whole tiles (stride-2 stores, with a ReLU tail in them).
#[test]
fn transforms_vectorize() {
    for tail in [Tail::None, Tail::Relu] {
        let case = case((1, 16, 16, (12, 13), [1, 1, 1, 1], true, tail));
        let (src, _) = case.graph();
        let prog = mlc_kir::lower_graph(&parse_graph(&src).unwrap()).unwrap();
        let mut loops = vec![];
        for k in prog
            .kernels
            .iter()
            .filter(|k| k.name.starts_with("winograd"))
        {
            let dd = vec![false; k.vars.len()];
            crate::tests_vectorize::walk(k, &k.body, &dd, &mut loops);
        }
        let names: Vec<&str> = loops.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"winograd_input"), "{loops:?}");
        assert!(
            names.iter().any(|n| n.starts_with("winograd_output")),
            "{loops:?}"
        );
        assert!(loops.iter().all(|(_, v)| *v), "{tail:?}: {loops:?}");
    }
}
