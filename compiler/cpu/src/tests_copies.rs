//! Copies that code generation elides: concatenations whose parts their producers write in
//! place (`mlc_kir::place_concat_parts`) and contiguous slices read where they lie
//! (`mlc_kir::alias_slices`). Results against the evaluator of the program as lowered (with its
//! copies), through every kind of producer: generated loops, the GEMM, the depthwise kernel,
//! accumulating reductions (which the executor zeroes first: only the part's bytes).

use crate::CompiledProgram;
use crate::tests::check;
use mlc_ir::parse_graph;
use mlc_kir::{BufKind, Program, lower_graph, print_program};

/// [`check`]s `src`, then returns the compiled program (after placement) and its plan's
/// zeroed buffers as `(step, buffer)` pairs.
fn placed(src: &str, tol: f64) -> (Program, Vec<(usize, usize)>) {
    check(src, tol);
    let g = parse_graph(src).expect("test graph");
    let c = CompiledProgram::new(&lower_graph(&g).expect("lowering")).expect("compiles");
    let plan = c.executor().plan();
    let zero = plan
        .steps
        .iter()
        .enumerate()
        .flat_map(|(s, st)| st.zero.iter().map(move |&z| (s, z)))
        .collect();
    (c.program().clone(), zero)
}

/// Steps launching a concatenation's copy kernel.
fn copies(p: &Program) -> usize {
    p.steps
        .iter()
        .filter(|s| p.kernel(s.kernel).name.contains("concat"))
        .count()
}

/// Buffers placed at a nonzero offset inside another.
fn offsets(p: &Program) -> usize {
    p.buffers
        .iter()
        .filter(|b| matches!(b.kind, BufKind::Alias { offset, .. } if offset > 0))
        .count()
}

#[test]
fn convolutions_write_their_channels_of_the_concatenation() {
    // A fire module: a 1×1 squeeze, then 1×1 and 3×3 expansions concatenated on channels,
    // the 3×3 one as an implicit GEMM or Winograd, and a depthwise branch. Parts lie with no
    // slack between them, so a kernel writing past either end of its output would overwrite
    // a neighbour already written: in one order the part after each producer's is written
    // first, in the other the part before it.
    for order in ["%7, %8, %9", "%9, %8, %7"] {
        let (p, _) = placed(
            &format!(
                r#"graph (%0: f32[1,16,9,9] "x", %1: f32[8,16,1,1] "ws", %2: f32[16,8,1,1] "w1", %3: f32[16,8,3,3] "w3", %4: f32[8,1,3,3] "wd", %5: f32[16] "b") -> (%10 "y") {{
  %6 = nn.conv {{"auto_pad":"not_set","dilations":[1,1],"group":1,"pads":[0,0,0,0],"strides":[1,1]}} (%0, %1, _) : f32[1,8,9,9]
  %7 = nn.conv {{"auto_pad":"not_set","dilations":[1,1],"group":1,"pads":[0,0,0,0],"strides":[1,1]}} (%6, %2, %5) : f32[1,16,9,9]
  %8 = nn.conv {{"auto_pad":"not_set","dilations":[1,1],"group":1,"pads":[1,1,1,1],"strides":[1,1]}} (%6, %3, %5) : f32[1,16,9,9]
  %9 = nn.conv {{"auto_pad":"not_set","dilations":[1,1],"group":8,"pads":[1,1,1,1],"strides":[1,1]}} (%6, %4, _) : f32[1,8,9,9]
  %10 = movement.concat {{"axis":1}} ({order}) : f32[1,40,9,9]
}}"#
            ),
            1e-4,
        );
        assert_eq!(copies(&p), 0, "{}", print_program(&p));
        assert_eq!(offsets(&p), 2, "{}", print_program(&p));
    }
}

#[test]
fn accumulating_producers_zero_only_their_part() {
    // Sums over a non-innermost axis accumulate rows in their output, which the executor
    // zeroes first; the second part's zeroing must leave the first part's sums alone.
    let (p, zero) = placed(
        r#"graph (%0: f32[1,2,6,5] "x", %1: f32[1,3,6,5] "z") -> (%4 "y") {
  %2 = reduce.sum {"axes":[2],"keepdims":true} (%0) : f32[1,2,1,5]
  %3 = reduce.sum {"axes":[2],"keepdims":true} (%1) : f32[1,3,1,5]
  %4 = movement.concat {"axis":1} (%2, %3) : f32[1,5,1,5]
}"#,
        1e-5,
    );
    assert_eq!(copies(&p), 0, "{}", print_program(&p));
    assert!(zero.len() >= 2, "{zero:?}\n{}", print_program(&p));
}

#[test]
fn dense_blocks_share_one_buffer() {
    // DenseNet: every layer reads the concatenation of all earlier feature maps, the block's
    // input (a pooling's output) first. Each concatenation is a prefix of the next: all of
    // them live in the last one, and nothing is copied.
    let (p, _) = placed(
        r#"graph (%0: f32[1,4,6,6] "x", %1: f32[2,4,3,3] "w1", %2: f32[2,6,3,3] "w2", %3: f32[2,8,3,3] "w3") -> (%9 "y") {
  %10 = ew.relu(%0) : f32[1,4,6,6]
  %4 = nn.conv {"auto_pad":"not_set","dilations":[1,1],"group":1,"pads":[1,1,1,1],"strides":[1,1]} (%10, %1, _) : f32[1,2,6,6]
  %5 = movement.concat {"axis":1} (%10, %4) : f32[1,6,6,6]
  %6 = nn.conv {"auto_pad":"not_set","dilations":[1,1],"group":1,"pads":[1,1,1,1],"strides":[1,1]} (%5, %2, _) : f32[1,2,6,6]
  %7 = movement.concat {"axis":1} (%10, %4, %6) : f32[1,8,6,6]
  %8 = nn.conv {"auto_pad":"not_set","dilations":[1,1],"group":1,"pads":[1,1,1,1],"strides":[1,1]} (%7, %3, _) : f32[1,2,6,6]
  %9 = movement.concat {"axis":1} (%10, %4, %6, %8) : f32[1,10,6,6]
}"#,
        1e-4,
    );
    assert_eq!(copies(&p), 0, "{}", print_program(&p));
    let last = p.outputs[0].1;
    for (i, b) in p.buffers.iter().enumerate() {
        if b.shape[0] == 1 && !matches!(b.kind, BufKind::Input(_)) && i != last.0 as usize {
            assert!(
                matches!(b.kind, BufKind::Alias { of, .. } if of == last),
                "%b{i}\n{}",
                print_program(&p)
            );
        }
    }
}

#[test]
fn parts_that_are_outputs_too() {
    let (p, _) = placed(
        r#"graph (%0: f32[1,3,4] "x") -> (%1 "a", %3 "y", %2 "b") {
  %1 = ew.relu(%0) : f32[1,3,4]
  %2 = ew.tanh(%0) : f32[1,3,4]
  %3 = movement.concat {"axis":1} (%2, %1) : f32[1,6,4]
}"#,
        1e-6,
    );
    assert_eq!(copies(&p), 0, "{}", print_program(&p));
}

/// Every alias placed by the pass has its target's element type (the plan's offsets are in
/// bytes of it).
#[test]
fn placed_aliases_keep_their_types() {
    let g = parse_graph(
        r#"graph (%0: u8[1,3,4] "x") -> (%3 "y") {
  %1 = ew.max(%0, %0) : u8[1,3,4]
  %2 = ew.min(%0, %0) : u8[1,3,4]
  %3 = movement.concat {"axis":1} (%1, %2) : u8[1,6,4]
}"#,
    )
    .expect("graph");
    let c = CompiledProgram::new(&lower_graph(&g).expect("lowering")).expect("compiles");
    let p = c.program();
    for b in &p.buffers {
        if let BufKind::Alias { of, offset } = b.kind {
            assert!(offset == 0 || p.buffer(of).dtype == b.dtype);
        }
    }
}

#[test]
fn shuffle_units_and_selected_heads() {
    // ShuffleNetV2's unit: split the channels, transform one half, concatenate, shuffle.
    // Then a QKV select as attention takes it: views of the product, read by a matmul.
    let (p, _) = placed(
        r#"graph (%0: f32[1,8,4,4] "x", %1: f32[4,4,1,1] "w", %2: f32[3,2,5,6] "qkv") -> (%9 "y", %12 "s") {
  @c0 = const i64[] [0]
  @c1 = const i64[] [1]
  %3, %4 = movement.split {"axis":1,"sizes":[4,4]} (%0) : f32[1,4,4,4], f32[1,4,4,4]
  %5 = nn.conv {"auto_pad":"not_set","dilations":[1,1],"group":1,"pads":[0,0,0,0],"strides":[1,1]} (%4, %1, _) : f32[1,4,4,4]
  %6 = movement.concat {"axis":1} (%3, %5) : f32[1,8,4,4]
  %7 = movement.reshape {"shape":[1,2,4,16],"allowzero":false} (%6, _) : f32[1,2,4,16]
  %8 = movement.transpose {"perm":[0,2,1,3]} (%7) : f32[1,4,2,16]
  %9 = movement.reshape {"shape":[1,8,4,4],"allowzero":false} (%8, _) : f32[1,8,4,4]
  %13 = ew.relu(%2) : f32[3,2,5,6]
  %14 = constant @c0 : i64[]
  %15 = constant @c1 : i64[]
  %10 = movement.gather {"axis":0} (%13, %14) : f32[2,5,6]
  %11 = movement.gather {"axis":0} (%13, %15) : f32[2,5,6]
  %16 = movement.transpose {"perm":[0,2,1]} (%11) : f32[2,6,5]
  %12 = nn.matmul(%10, %16) : f32[2,5,5]
}"#,
        1e-5,
    );
    let names: Vec<&str> = p
        .steps
        .iter()
        .map(|s| p.kernel(s.kernel).name.as_str())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.contains("split") || n.contains("gather")),
        "{}",
        print_program(&p)
    );
}

#[test]
fn winograd_and_pooling_parts_stay_in_their_slots() {
    // A Winograd 3×3 (16 → 16 channels, 13×13: 49 output tiles, the last row and column of
    // tiles half outside), a max pool and a 1×1 branch, between parts written before them.
    // Winograd transforms the filter at compile time: it must be a constant.
    let w: Vec<String> = (0..16 * 16 * 9)
        .map(|i| format!("{}", ((i * 37) % 19) as f32 / 64.0 - 0.14))
        .collect();
    let w = w.join(",");
    for order in ["%3, %4, %5", "%5, %4, %3"] {
        let (p, _) = placed(
            &format!(
                r#"graph (%0: f32[1,16,13,13] "x", %2: f32[8,16,1,1] "w1") -> (%6 "y") {{
  @c0 = const f32[16,16,3,3] [{w}]
  %1 = constant @c0 : f32[16,16,3,3]
  %3 = nn.conv {{"auto_pad":"not_set","dilations":[1,1],"group":1,"pads":[1,1,1,1],"strides":[1,1]}} (%0, %1, _) : f32[1,16,13,13]
  %4 = nn.max_pool {{"kernel":[3,3],"strides":[1,1],"dilations":[1,1],"pads":[1,1,1,1],"auto_pad":"not_set","ceil_mode":false,"storage_order_col_major":false}} (%0) : f32[1,16,13,13]
  %5 = nn.conv {{"auto_pad":"not_set","dilations":[1,1],"group":1,"pads":[0,0,0,0],"strides":[1,1]}} (%0, %2, _) : f32[1,8,13,13]
  %6 = movement.concat {{"axis":1}} ({order}) : f32[1,40,13,13]
}}"#
            ),
            1e-4,
        );
        assert_eq!(copies(&p), 0, "{}", print_program(&p));
        let names: Vec<&str> = p.kernels.iter().map(|k| k.name.as_str()).collect();
        assert!(names.iter().any(|n| n.contains("winograd")), "{names:?}");
    }
}
