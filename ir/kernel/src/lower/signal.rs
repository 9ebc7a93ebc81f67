//! Signal ops. Window generators depend only on their length, which the static output shape
//! fixes, so they become constants computed here (in `f64`, then cast, as the interpreter
//! does) and cost nothing at run time.

use super::{Cx, Fail, unsupported};
use crate::kernel::*;
use mlc_ir::ops::SignalOp;
use mlc_ir::{Node, Tensor};
use std::f64::consts::PI;

pub(super) fn lower(cx: &mut Cx, node: &Node, op: &SignalOp) -> Result<(), Fail> {
    let f: fn(f64, f64) -> f64 = match op {
        SignalOp::HannWindow(_) => |n, d| (PI * n / d).sin().powi(2),
        SignalOp::HammingWindow(_) => |n, d| {
            let alpha = 25.0 / 46.0;
            alpha - (1.0 - alpha) * (2.0 * PI * n / d).cos()
        },
        SignalOp::BlackmanWindow(_) => {
            |n, d| 0.42 - 0.5 * (2.0 * PI * n / d).cos() + 0.08 * (4.0 * PI * n / d).cos()
        }
        SignalOp::Dft {
            axis,
            length,
            inverse,
            onesided,
        } => return super::dft::dft(cx, node, *axis, *length, *inverse, *onesided),
        SignalOp::Stft {
            frame_step,
            frame_length,
            onesided,
        } => return super::dft::stft(cx, node, *frame_step, *frame_length, *onesided),
        _ => return unsupported("not lowered to kernels yet"),
    };
    let Some(a) = op.window() else {
        return unsupported("not a window");
    };
    let out = node.outputs[0];
    let size = cx.shape(out)?.iter().product::<usize>();
    let denom = if a.periodic {
        size as f64
    } else {
        size as f64 - 1.0
    };
    let v: Vec<f64> = (0..size).map(|n| f(n as f64, denom)).collect();
    let t = Tensor::from_vec(&[size], v)
        .and_then(|t| t.cast(cx.dtype(out)))
        .map_err(|e| Fail::Unsupported(e.to_string()))?;
    let c = cx.p.consts.len();
    cx.p.consts.push(t);
    cx.new_buffer(out, BufKind::Const(c))?;
    Ok(())
}
