//! The one tolerance policy: how close mlc's outputs must be to a reference to agree.
//!
//! ONNX node tests (`node_test`) compare element-wise, `|got - want| <= atol + rtol * |want|`,
//! with ONNX's own backend-runner tolerances: their expected outputs come from the exact
//! reference implementation, so only rounding differs.
//!
//! Development models (`for_model`, `rel_error`) are compared with ONNX Runtime. Error is measured relative to the reference's range, `max|got - want| / max|want|`, as
//! `peers.py --check` reports it: element-wise relative error is meaningless near zero, and the
//! range is what a consumer of the output sees. fp32 models agree with ONNX Runtime to about
//! 1e-4 (different summation orders); int8 models to about 1e-2 (a requantization step can
//! round the other way and move a value by one quantum).

/// `(rtol, atol)` for a node-test float output: rtol 1e-3, atol 1e-7 as in ONNX's backend test
/// runner; f16 and bf16 (`half_precision`) get rtol 1e-2, atol 1e-3 for their 11 and 8 bits.
pub fn node_test(half_precision: bool) -> (f64, f64) {
    if half_precision {
        (1e-2, 1e-3)
    } else {
        (1e-3, 1e-7)
    }
}

/// Allowed range-relative error for a development model, by its file stem.
pub fn for_model(stem: &str) -> f64 {
    if stem.contains("int8") { 1e-2 } else { 1e-4 }
}

/// The range-relative error of `got` against `want`, or why they cannot be compared.
///
/// NaN agrees with NaN in the same position and with nothing else; infinities must match.
pub fn rel_error(want: &[f64], got: &[f64]) -> Result<f64, String> {
    if want.len() != got.len() {
        return Err(format!("{} elements, expected {}", got.len(), want.len()));
    }
    let mut worst_abs = 0.0f64;
    let mut range = 0.0f64;
    for (i, (&w, &g)) in want.iter().zip(got).enumerate() {
        if w.is_nan() || g.is_nan() || w.is_infinite() || g.is_infinite() {
            let same = (w.is_nan() && g.is_nan()) || w == g;
            if !same {
                return Err(format!("element {i} is {g}, expected {w}"));
            }
            continue;
        }
        worst_abs = worst_abs.max((g - w).abs());
        range = range.max(w.abs());
    }
    Ok(if worst_abs == 0.0 {
        0.0
    } else {
        worst_abs / range.max(f64::MIN_POSITIVE)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_to_range() {
        assert_eq!(rel_error(&[1.0, -4.0], &[1.0, -4.0]), Ok(0.0));
        assert_eq!(rel_error(&[0.0, 2.0], &[0.5, 2.0]), Ok(0.25));
        assert_eq!(rel_error(&[f64::NAN], &[f64::NAN]), Ok(0.0));
        assert!(rel_error(&[f64::NAN], &[0.0]).is_err());
        assert!(rel_error(&[f64::INFINITY], &[1e300]).is_err());
        assert!(rel_error(&[1.0], &[1.0, 2.0]).is_err());
        assert!(
            rel_error(&[0.0], &[1e-9]).unwrap() > 1.0,
            "any error on an all-zero reference fails"
        );
        assert_eq!(for_model("resnet18_int8_qdq"), 1e-2);
        assert_eq!(for_model("resnet18"), 1e-4);
    }
}
