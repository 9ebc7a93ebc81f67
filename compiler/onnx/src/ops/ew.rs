//! Import of elementwise ONNX ops into the `ew` family.

use crate::cx::{NodeCx, NodeError, Registry};
use mlc_ir::ops::EwOp;
use mlc_ir::{Op, ValueId};

pub fn register(r: &mut Registry) {
    r.add("", "Add", |cx| binary(cx, EwOp::Add));
    r.add("", "Relu", |cx| unary(cx, EwOp::Relu));
}

fn unary(cx: &mut NodeCx, op: EwOp) -> Result<Vec<ValueId>, NodeError> {
    let x = cx.input(0)?;
    Ok(vec![cx.emit1(Op::Ew(op), vec![x])?])
}

fn binary(cx: &mut NodeCx, op: EwOp) -> Result<Vec<ValueId>, NodeError> {
    let (a, b) = (cx.input(0)?, cx.input(1)?);
    Ok(vec![cx.emit1(Op::Ew(op), vec![a, b])?])
}
