//! Inference tests of the movement family.

use super::*;

fn sym(s: &str) -> Dim {
    Dim::Sym(s.into())
}

fn infer(
    op: MovementOp,
    inputs: Vec<TensorType>,
    consts: Vec<Option<Tensor>>,
    n_outputs: usize,
) -> Result<Vec<TensorType>, InferError> {
    let inputs: Vec<Option<TensorType>> = inputs.into_iter().map(Some).collect();
    let consts: Vec<Option<&Tensor>> = consts.iter().map(Option::as_ref).collect();
    MovementOp::infer(
        &op,
        &InferCx {
            inputs: &inputs,
            consts: &consts,
            regions: &[],
            n_outputs,
        },
    )
}

#[test]
fn reshape_copies_and_infers_symbolic_dims() {
    let x = [sym("batch"), sym("seq"), Dim::Known(768)];
    let t = [
        SymInt::Int(0),
        SymInt::Int(0),
        SymInt::Int(12),
        SymInt::Int(-1),
    ];
    assert_eq!(
        reshape_shape(&x, &t, false).unwrap(),
        vec![sym("batch"), sym("seq"), Dim::Known(12), Dim::Known(64)]
    );
    let t = [SymInt::Int(-1), SymInt::Int(768)];
    assert_eq!(
        reshape_shape(&x, &t, false).unwrap(),
        vec![Dim::Unknown, Dim::Known(768)]
    );
    let t = [
        SymInt::Sym("batch".into()),
        SymInt::Int(-1),
        SymInt::Int(64),
    ];
    assert_eq!(
        reshape_shape(&x, &t, false).unwrap(),
        vec![sym("batch"), Dim::Unknown, Dim::Known(64)]
    );
    let x = [Dim::Unknown, Dim::Known(4), Dim::Known(6)];
    let t = [SymInt::Int(0), SymInt::Int(-1)];
    assert_eq!(
        reshape_shape(&x, &t, false).unwrap(),
        vec![Dim::Unknown, Dim::Known(24)]
    );
    assert!(reshape_shape(&[Dim::Known(6)], &[SymInt::Int(4)], false).is_err());
}

#[test]
fn reshape_with_dynamic_target_has_known_rank() {
    let out = infer(
        MovementOp::Reshape {
            shape: None,
            allowzero: false,
        },
        vec![
            TensorType::fixed(DType::F32, &[2, 3]),
            TensorType::fixed(DType::I64, &[3]),
        ],
        vec![None, None],
        1,
    )
    .unwrap();
    assert_eq!(out[0].shape, vec![Dim::Unknown; 3]);
    let out = infer(
        MovementOp::Reshape {
            shape: None,
            allowzero: false,
        },
        vec![
            TensorType::fixed(DType::F32, &[2, 3]),
            TensorType::fixed(DType::I64, &[2]),
        ],
        vec![None, Some(Tensor::from_vec(&[2], vec![-1i64, 2]).unwrap())],
        1,
    )
    .unwrap();
    assert_eq!(out[0].shape, vec![Dim::Known(3), Dim::Known(2)]);
}

#[test]
fn slice_ranges_follow_numpy() {
    assert_eq!(slice_range(10, 0, i64::MAX, 1), (0, 10));
    assert_eq!(slice_range(10, -1, i64::MIN, -1), (9, 10));
    assert_eq!(slice_range(10, 20, 1000, 1), (10, 0));
    assert_eq!(slice_range(10, 8, 2, -2), (8, 3));
    assert_eq!(slice_range(4, -1, -5, -1), (3, 4));
}

#[test]
fn split_and_range_lengths() {
    assert_eq!(split_sizes(7, 3), vec![3, 3, 1]);
    assert_eq!(split_sizes(6, 3), vec![2, 2, 2]);
    assert_eq!(
        range_len(&SymInt::Int(10), &SymInt::Int(4), &SymInt::Int(-3)),
        Dim::Known(2)
    );
    assert_eq!(
        range_len(&SymInt::Int(0), &SymInt::Sym("n".into()), &SymInt::Int(1)),
        sym("n")
    );
}

#[test]
fn concat_and_gather_keep_symbols() {
    let a = TensorType::new(DType::F32, vec![sym("b"), Dim::Known(2)]);
    let b = TensorType::new(DType::F32, vec![sym("b"), Dim::Known(3)]);
    let out = infer(
        MovementOp::Concat { axis: 1 },
        vec![a.clone(), b],
        vec![None, None],
        1,
    )
    .unwrap();
    assert_eq!(out[0].shape, vec![sym("b"), Dim::Known(5)]);
    let idx = TensorType::new(DType::I64, vec![sym("n")]);
    let out = infer(
        MovementOp::Gather { axis: 0 },
        vec![a, idx],
        vec![None, None],
        1,
    )
    .unwrap();
    assert_eq!(out[0].shape, vec![sym("n"), Dim::Known(2)]);
}

#[test]
fn ops_print_as_snake_case_json() {
    let op = crate::Op::Movement(MovementOp::GatherNd { batch_dims: 1 });
    assert_eq!(op.name(), "movement.gather_nd");
    let json = serde_json::to_string(&MovementOp::ConstantOfShape {
        shape: Some(vec![2]),
        dtype: DType::F32,
        value: Scalar::Float(1.0),
    })
    .unwrap();
    assert_eq!(
        json,
        r#"{"constant_of_shape":{"shape":[2],"dtype":"f32","value":{"float":1.0}}}"#
    );
}

#[test]
fn slices_keep_symbols_where_the_bounds_allow() {
    let x = [sym("batch"), Dim::Known(512), sym("seq")];
    let int = SymInt::Int;
    // Whole-axis bounds as exporters write them keep the symbol; a prefix up to a symbolic end
    // has that length; anything else on a symbolic dim is unknown.
    let out = slice_shape(
        &x,
        &[int(0), int(0), int(1)],
        &[int(1_000_000_000), SymInt::Sym("seq".into()), int(i64::MAX)],
        &[0, 1, -1],
        &[int(1), int(1), int(1)],
    )
    .unwrap();
    assert_eq!(out, vec![sym("batch"), sym("seq"), Dim::Unknown]);
    let out = slice_shape(&x, &[int(-1)], &[int(i64::MIN)], &[0], &[int(-1)]).unwrap();
    assert_eq!(out[0], sym("batch"));
    assert!(slice_shape(&x, &[int(0)], &[int(1)], &[0], &[int(0)]).is_err());
}

#[test]
fn non_finite_fill_values_round_trip_through_json() {
    for v in [f64::NEG_INFINITY, f64::INFINITY, 1.5] {
        let op = MovementOp::ConstantOfShape {
            shape: None,
            dtype: DType::F32,
            value: Scalar::Float(v),
        };
        let json = serde_json::to_string(&op).unwrap();
        assert_eq!(
            serde_json::from_str::<MovementOp>(&json).unwrap(),
            op,
            "{json}"
        );
    }
    let json = serde_json::to_string(&Scalar::Float(f64::NAN)).unwrap();
    assert_eq!(json, r#"{"float":"nan"}"#);
}
