//! Kernel tests; expected values were computed with numpy.

use super::eval;
use crate::EvalCx;
use mlc_ir::ops::MovementOp as M;
use mlc_ir::ops::movement::{DepthToSpaceMode, PadMode, ScatterReduction};
use mlc_ir::{DType, Tensor, TensorType};

fn t(shape: &[usize], v: &[i64]) -> Tensor {
    Tensor::from_vec(shape, v.to_vec()).unwrap()
}

fn iota(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    t(shape, &(0..n as i64).collect::<Vec<_>>())
}

/// Runs `op` on `inputs` expecting `n` outputs.
fn run_n(op: M, inputs: &[Option<&Tensor>], n: usize) -> Vec<Tensor> {
    let types = vec![TensorType::scalar(DType::F32); n];
    eval(
        &op,
        inputs,
        &EvalCx {
            regions: &[],
            output_types: &types,
        },
    )
    .unwrap()
}

fn run(op: M, inputs: &[&Tensor]) -> Tensor {
    let inputs: Vec<Option<&Tensor>> = inputs.iter().copied().map(Some).collect();
    run_n(op, &inputs, 1).remove(0)
}

fn check(out: &Tensor, shape: &[usize], v: &[i64]) {
    assert_eq!(out.shape(), shape);
    assert_eq!(out.to_i64_vec().unwrap(), v);
}

#[test]
fn reshape_copies_zero_and_infers_minus_one() {
    let x = iota(&[2, 3, 4]);
    let out = run(
        M::Reshape {
            shape: Some(vec![0, -1]),
            allowzero: false,
        },
        &[&x],
    );
    assert_eq!(out.shape(), &[2, 12]);
    let target = t(&[3], &[-1, 0, 2]);
    let out = run(
        M::Reshape {
            shape: None,
            allowzero: false,
        },
        &[&x, &target],
    );
    assert_eq!(out.shape(), &[4, 3, 2]);
    // With allowzero a 0 is a real zero-sized dim.
    let empty = Tensor::from_vec::<f32>(&[0, 3], vec![]).unwrap();
    let out = run(
        M::Reshape {
            shape: Some(vec![3, 0]),
            allowzero: true,
        },
        &[&empty],
    );
    assert_eq!(out.shape(), &[3, 0]);
}

#[test]
fn slice_with_negative_steps() {
    let x = iota(&[2, 3, 4]);
    let op = M::Slice {
        starts: Some(vec![-1, 2, -1]),
        ends: Some(vec![i64::MIN, 0, i64::MIN]),
        axes: Some(vec![0, 1, 2]),
        steps: Some(vec![-1, -1, -2]),
    };
    check(&run(op, &[&x]), &[2, 2, 2], &[23, 21, 19, 17, 11, 9, 7, 5]);
    // Out-of-range bounds clamp.
    let op = M::Slice {
        starts: Some(vec![1]),
        ends: Some(vec![1000]),
        axes: Some(vec![-1]),
        steps: None,
    };
    check(&run(op, &[&t(&[4], &[1, 2, 3, 4])]), &[3], &[2, 3, 4]);
}

#[test]
fn gather_with_negative_indices() {
    let x = iota(&[3, 4]);
    check(
        &run(M::Gather { axis: 1 }, &[&x, &t(&[1, 2], &[-1, 0])]),
        &[3, 1, 2],
        &[3, 0, 7, 4, 11, 8],
    );
    let scalar = Tensor::scalar(-1i64);
    check(
        &run(M::Gather { axis: 0 }, &[&x, &scalar]),
        &[4],
        &[8, 9, 10, 11],
    );
}

#[test]
fn pad_reflect_and_wrap() {
    let x = t(&[2, 3], &[1, 2, 3, 4, 5, 6]);
    let op = M::Pad {
        mode: PadMode::Reflect,
        pads: Some(vec![1, 3, 2, 1]),
        axes: None,
    };
    #[rustfmt::skip]
    check(&run(op, &[&x]), &[5, 7], &[
        5, 6, 5, 4, 5, 6, 5,
        2, 3, 2, 1, 2, 3, 2,
        5, 6, 5, 4, 5, 6, 5,
        2, 3, 2, 1, 2, 3, 2,
        5, 6, 5, 4, 5, 6, 5,
    ]);
    // A reflection wider than the axis bounces back and forth, as numpy does.
    let op = M::Pad {
        mode: PadMode::Reflect,
        pads: Some(vec![5, 0]),
        axes: Some(vec![1]),
    };
    check(
        &run(op, &[&x]),
        &[2, 8],
        &[2, 1, 2, 3, 2, 1, 2, 3, 5, 4, 5, 6, 5, 4, 5, 6],
    );
    let op = M::Pad {
        mode: PadMode::Wrap,
        pads: Some(vec![1, 2, 0, 1]),
        axes: None,
    };
    check(
        &run(op, &[&x]),
        &[3, 6],
        &[5, 6, 4, 5, 6, 4, 2, 3, 1, 2, 3, 1, 5, 6, 4, 5, 6, 4],
    );
    // Constant padding with a value, and negative pads that crop.
    let op = M::Pad {
        mode: PadMode::Constant,
        pads: Some(vec![0, -1, 0, 1]),
        axes: None,
    };
    let v = Tensor::scalar(9i64);
    let out = run_n(op, &[Some(&x), None, Some(&v)], 1).remove(0);
    check(&out, &[2, 3], &[2, 3, 9, 5, 6, 9]);
}

#[test]
fn scatter_reductions_and_duplicates() {
    let data = t(&[1, 5], &[1, 2, 3, 4, 5]);
    let idx = t(&[1, 2], &[1, 1]);
    let upd = t(&[1, 2], &[10, 20]);
    let op = |r| M::ScatterElements {
        axis: 1,
        reduction: r,
    };
    check(
        &run(op(ScatterReduction::None), &[&data, &idx, &upd]),
        &[1, 5],
        &[1, 20, 3, 4, 5],
    );
    check(
        &run(op(ScatterReduction::Add), &[&data, &idx, &upd]),
        &[1, 5],
        &[1, 32, 3, 4, 5],
    );
    check(
        &run(op(ScatterReduction::Mul), &[&data, &idx, &upd]),
        &[1, 5],
        &[1, 400, 3, 4, 5],
    );
    let nd_idx = t(&[2, 1], &[0, -1]);
    let nd_upd = t(&[2, 5], &[0; 10]);
    let data2 = iota(&[3, 5]);
    let out = run(
        M::ScatterNd {
            reduction: ScatterReduction::Max,
        },
        &[&data2, &nd_idx, &nd_upd],
    );
    check(&out, &[3, 5], &(0..15).collect::<Vec<_>>());
}

#[test]
fn strings_move_like_numbers() {
    let x = Tensor::from_vec(
        &[2, 2],
        vec!["a".to_string(), "b".into(), "c".into(), "d".into()],
    )
    .unwrap();
    let out = run(M::Transpose { perm: vec![1, 0] }, &[&x]);
    let v: Vec<String> = out
        .into_array::<String>()
        .unwrap()
        .iter()
        .cloned()
        .collect();
    assert_eq!(v, ["a", "c", "b", "d"]);
}

#[test]
fn unique_sorted_and_in_order_of_appearance() {
    let x = t(&[6], &[2, 1, 1, 3, 4, 3]);
    let out = run_n(
        M::Unique {
            axis: None,
            sorted: true,
        },
        &[Some(&x)],
        4,
    );
    check(&out[0], &[4], &[1, 2, 3, 4]);
    check(&out[1], &[4], &[1, 0, 3, 4]);
    check(&out[2], &[6], &[1, 0, 0, 2, 3, 2]);
    check(&out[3], &[4], &[2, 1, 2, 1]);
    let out = run_n(
        M::Unique {
            axis: None,
            sorted: false,
        },
        &[Some(&x)],
        4,
    );
    check(&out[0], &[4], &[2, 1, 3, 4]);
    check(&out[2], &[6], &[0, 1, 1, 2, 3, 2]);
}

#[test]
fn depth_to_space_round_trips() {
    let x = iota(&[1, 8, 2, 2]);
    for mode in [DepthToSpaceMode::Dcr, DepthToSpaceMode::Crd] {
        let d = run(M::DepthToSpace { blocksize: 2, mode }, &[&x]);
        assert_eq!(d.shape(), &[1, 2, 4, 4]);
        let back = run(M::SpaceToDepth { blocksize: 2, mode }, &[&d]);
        assert_eq!(back, x);
    }
}

#[test]
fn split_equal_parts_leave_the_remainder_last() {
    let x = iota(&[7]);
    let out = run_n(
        M::Split {
            axis: 0,
            sizes: None,
        },
        &[Some(&x)],
        3,
    );
    check(&out[2], &[1], &[6]);
    check(&out[0], &[3], &[0, 1, 2]);
}
