//! The portable softmax kernel: one element at a time, the definition's order of operations
//! (`exp` from the platform's libm in `f32`).

use super::Row;

/// One row: `v = x·scale + mask` into the output and its maximum, then the exponentials
/// stored and summed in order, then the rescale.
pub(super) fn row(t: &mut Row, scale: Option<f32>) {
    let mut mx = f32::NEG_INFINITY;
    for (c, (o, &x)) in t.out.iter_mut().zip(t.x).enumerate() {
        let mut v = x;
        if let Some(s) = scale {
            v *= s;
        }
        if let Some(m) = t.mask {
            v += m[c];
        }
        *o = v;
        // NaN wins, as the definition's `max`.
        mx = if mx.is_nan() || v.is_nan() {
            f32::NAN
        } else {
            mx.max(v)
        };
    }
    let mut sum = 0.0f32;
    for o in t.out.iter_mut() {
        *o = (*o - mx).exp();
        sum += *o;
    }
    let inv = 1.0 / sum;
    for o in t.out.iter_mut() {
        *o *= inv;
    }
}
