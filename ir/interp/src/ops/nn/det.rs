//! `nn.det`: determinants of the square matrices in the last two dims.
//!
//! Gaussian elimination with partial pivoting in f64 whatever the input type (the result is
//! rounded to it once): the product of the pivots, negated once per row swap. A zero column
//! below the diagonal makes the matrix singular, determinant 0.

use crate::{EvalError, invalid};
use mlc_ir::Tensor;

pub fn det(x: &Tensor) -> Result<Tensor, EvalError> {
    let s = x.shape();
    let r = s.len();
    if r < 2 || s[r - 1] != s[r - 2] {
        return Err(invalid(format!(
            "det needs square matrices [*, M, M], found shape {s:?}"
        )));
    }
    let m = s[r - 1];
    let data = x.to_f64_vec()?;
    let out: Vec<f64> = if m == 0 {
        // The empty product: every 0x0 matrix has determinant 1.
        vec![1.0; s[..r - 2].iter().product()]
    } else {
        data.chunks_exact(m * m).map(|a| det_one(a, m)).collect()
    };
    Ok(Tensor::from_vec(&s[..r - 2], out)?.cast(x.dtype())?)
}

fn det_one(a: &[f64], m: usize) -> f64 {
    let mut a = a.to_vec();
    let mut det = 1.0;
    for col in 0..m {
        // The first row of largest magnitude (a fixed choice, so that compiled code agrees).
        let mut pivot = col;
        for row in col + 1..m {
            if a[row * m + col].abs() > a[pivot * m + col].abs() {
                pivot = row;
            }
        }
        if a[pivot * m + col] == 0.0 {
            return 0.0;
        }
        if pivot != col {
            for k in 0..m {
                a.swap(col * m + k, pivot * m + k);
            }
            det = -det;
        }
        let p = a[col * m + col];
        det *= p;
        for row in col + 1..m {
            let f = a[row * m + col] / p;
            for k in col..m {
                a[row * m + k] -= f * a[col * m + k];
            }
        }
    }
    det
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlc_ir::DType;

    fn det_of(shape: &[usize], v: Vec<f64>) -> Vec<f64> {
        det(&Tensor::from_vec(shape, v).unwrap())
            .unwrap()
            .to_f64_vec()
            .unwrap()
    }

    #[test]
    fn small_matrices() {
        assert_eq!(det_of(&[1, 1], vec![-2.5]), vec![-2.5]);
        assert_eq!(det_of(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]), vec![-2.0]);
        // A zero leading entry needs a row swap, which flips the sign.
        assert_eq!(det_of(&[2, 2], vec![0.0, 1.0, 1.0, 0.0]), vec![-1.0]);
        let d = det_of(&[3, 3], vec![2.0, -3.0, 1.0, 2.0, 0.0, -1.0, 1.0, 4.0, 5.0]);
        assert!((d[0] - 49.0).abs() < 1e-12, "{d:?}");
    }

    #[test]
    fn singular_and_batched() {
        let v = vec![
            1.0, 2.0, 2.0, 4.0, // singular
            3.0, 0.0, 0.0, 5.0, // diagonal
            0.0, 0.0, 0.0, 0.0, // zero
        ];
        assert_eq!(det_of(&[3, 2, 2], v), vec![0.0, 15.0, 0.0]);
        let empty = det(&Tensor::from_vec(&[2, 0, 0], Vec::<f64>::new()).unwrap()).unwrap();
        assert_eq!(empty.shape(), &[2]);
        assert_eq!(empty.to_f64_vec().unwrap(), vec![1.0, 1.0]);
    }

    #[test]
    fn keeps_the_input_type() {
        let x = Tensor::from_vec(&[2, 2], vec![1.0, 2.0, 3.0, 4.0])
            .unwrap()
            .cast(DType::F32)
            .unwrap();
        let d = det(&x).unwrap();
        assert_eq!(d.dtype(), DType::F32);
        assert_eq!(d.shape(), &[] as &[usize]);
    }

    #[test]
    fn rejects_non_square() {
        let x = Tensor::from_vec(&[2, 3], vec![0.0; 6]).unwrap();
        assert!(det(&x).is_err());
    }
}
