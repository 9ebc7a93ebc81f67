//! Contractions: numpy `matmul` with batch broadcasting, `gemm`, and `einsum`.

use super::{Acc, broadcast_to, for_each_index, strides_of, with_acc};
use crate::{EvalError, invalid};
use mlc_ir::Tensor;
use mlc_ir::ops::nn::parse_einsum;

pub(super) fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor, EvalError> {
    if a.dtype() != b.dtype() {
        return Err(invalid(format!(
            "matmul of {} and {}",
            a.dtype(),
            b.dtype()
        )));
    }
    if a.rank() == 0 || b.rank() == 0 {
        return Err(invalid("matmul operands must have rank >= 1"));
    }
    with_acc!(a.dtype(), T => {
        let (av, bv) = (T::read(a), T::read(b));
        let (shape, out) = matmul_nd::<T>(&av, a.shape(), &bv, b.shape())?;
        T::write(out, &shape, a.dtype())
    })
}

/// Batched matmul over row-major data; returns the output shape and data.
fn matmul_nd<T: Acc>(
    a: &[T],
    sa: &[usize],
    b: &[T],
    sb: &[usize],
) -> Result<(Vec<usize>, Vec<T>), EvalError> {
    // A 1-D operand is a row (a) or column (b) vector whose unit dim is dropped at the end.
    let mut sa = sa.to_vec();
    let mut sb = sb.to_vec();
    let (a_vec, b_vec) = (sa.len() == 1, sb.len() == 1);
    if a_vec {
        sa.insert(0, 1);
    }
    if b_vec {
        sb.push(1);
    }
    let (ra, rb) = (sa.len(), sb.len());
    let (m, k, k2, n) = (sa[ra - 2], sa[ra - 1], sb[rb - 2], sb[rb - 1]);
    if k != k2 {
        return Err(invalid(format!(
            "matmul inner dims differ: {sa:?} @ {sb:?}"
        )));
    }
    let (ba, bb) = (&sa[..ra - 2], &sb[..rb - 2]);
    let rank = ba.len().max(bb.len());
    let pad = |s: &[usize]| -> Vec<usize> {
        let mut v = vec![1; rank - s.len()];
        v.extend_from_slice(s);
        v
    };
    let (pa, pb) = (pad(ba), pad(bb));
    let mut batch = Vec::with_capacity(rank);
    for (&x, &y) in pa.iter().zip(&pb) {
        if x != y && x != 1 && y != 1 {
            return Err(invalid(format!(
                "matmul batch dims do not broadcast: {sa:?} @ {sb:?}"
            )));
        }
        batch.push(if x == 1 { y } else { x });
    }
    // Batch strides in units of whole matrices; broadcast dims get stride 0.
    let bstrides = |p: &[usize]| -> Vec<usize> {
        let s = strides_of(p);
        p.iter()
            .zip(s)
            .map(|(&d, s)| if d == 1 { 0 } else { s })
            .collect()
    };
    let (sta, stb) = (bstrides(&pa), bstrides(&pb));
    let mut out = vec![T::default(); batch.iter().product::<usize>() * m * n];
    let mut bi = 0;
    for_each_index(&batch, |idx| {
        let oa: usize = idx.iter().zip(&sta).map(|(i, s)| i * s).sum::<usize>() * m * k;
        let ob: usize = idx.iter().zip(&stb).map(|(i, s)| i * s).sum::<usize>() * k * n;
        let c = &mut out[bi * m * n..(bi + 1) * m * n];
        T::gemm(
            m,
            n,
            k,
            (&a[oa..oa + m * k], k, 1),
            (&b[ob..ob + k * n], n, 1),
            c,
        );
        bi += 1;
    });
    let mut shape = batch;
    if !a_vec {
        shape.push(m);
    }
    if !b_vec {
        shape.push(n);
    }
    Ok((shape, out))
}

pub(super) fn gemm(
    a: &Tensor,
    b: &Tensor,
    c: Option<&Tensor>,
    trans_a: bool,
    trans_b: bool,
    alpha: f32,
    beta: f32,
) -> Result<Tensor, EvalError> {
    if a.rank() != 2 || b.rank() != 2 || a.dtype() != b.dtype() {
        return Err(invalid(format!(
            "gemm needs two 2-D operands of one type, got {a:?} and {b:?}"
        )));
    }
    let (sa, sb) = (a.shape(), b.shape());
    let (m, k) = if trans_a {
        (sa[1], sa[0])
    } else {
        (sa[0], sa[1])
    };
    let (k2, n) = if trans_b {
        (sb[1], sb[0])
    } else {
        (sb[0], sb[1])
    };
    if k != k2 {
        return Err(invalid(format!("gemm inner dims differ: {sa:?} @ {sb:?}")));
    }
    with_acc!(a.dtype(), T => {
        let (av, bv) = (T::read(a), T::read(b));
        // op(a)[i, kk] = a[kk, i] when transposed: swap the strides instead of copying.
        let am = if trans_a { (&av[..], 1, m) } else { (&av[..], k, 1) };
        let bm = if trans_b { (&bv[..], 1, k) } else { (&bv[..], n, 1) };
        let mut out = vec![T::default(); m * n];
        T::gemm(m, n, k, am, bm, &mut out);
        let alpha = T::from_f64(alpha as f64);
        if alpha != T::from_f64(1.0) {
            out.iter_mut().for_each(|v| *v = v.mul(alpha));
        }
        if let Some(c) = c {
            let cv = broadcast_to(&T::read(c), c.shape(), &[m, n])?;
            let beta = T::from_f64(beta as f64);
            for (o, cv) in out.iter_mut().zip(cv) {
                *o = o.add(beta.mul(cv));
            }
        }
        T::write(out, &[m, n], a.dtype())
    })
}

pub(super) fn einsum(equation: &str, inputs: &[&Tensor]) -> Result<Tensor, EvalError> {
    let first = inputs
        .first()
        .ok_or_else(|| invalid("einsum needs at least one input"))?;
    let ranks: Vec<usize> = inputs.iter().map(|t| t.rank()).collect();
    let spec = parse_einsum(equation, &ranks).map_err(invalid)?;
    // The size of every label; broadcast (size-1) dims of the ellipsis stretch.
    let mut sizes = vec![1usize; spec.n_labels];
    let mut seen = vec![false; spec.n_labels];
    for (t, labels) in inputs.iter().zip(&spec.inputs) {
        for (&d, &l) in t.shape().iter().zip(labels) {
            if seen[l] && sizes[l] != d && d != 1 && sizes[l] != 1 {
                return Err(invalid(format!(
                    "einsum label dims {} and {d} differ",
                    sizes[l]
                )));
            }
            if !seen[l] || sizes[l] == 1 {
                sizes[l] = d;
            }
            seen[l] = true;
        }
    }
    if let Some(plan) = contraction_plan(&spec.inputs, &spec.output, inputs, &sizes) {
        return with_acc!(first.dtype(), T => {
            let (a, b) = (T::read(inputs[0]), T::read(inputs[1]));
            let out = contract::<T>(&a, &b, &plan);
            T::write(out, &plan.out_shape, first.dtype())
        });
    }
    // General case, one loop over every label: output labels first, then the summed ones.
    let mut order: Vec<usize> = spec.output.clone();
    for (l, &used) in seen.iter().enumerate() {
        if used && !order.contains(&l) {
            order.push(l);
        }
    }
    let dims: Vec<usize> = order.iter().map(|&l| sizes[l]).collect();
    let n_out = spec.output.len();
    let out_shape: Vec<usize> = dims[..n_out].to_vec();
    // Per input, the stride each loop label moves it by (repeated labels add up: diagonals).
    let strides: Vec<Vec<usize>> = inputs
        .iter()
        .zip(&spec.inputs)
        .map(|(t, labels)| {
            let st = strides_of(t.shape());
            order
                .iter()
                .map(|&l| {
                    labels
                        .iter()
                        .zip(t.shape().iter().zip(&st))
                        .filter(|&(&x, (&d, _))| x == l && d != 1)
                        .map(|(_, (_, &s))| s)
                        .sum()
                })
                .collect()
        })
        .collect();
    let out_strides = strides_of(&out_shape);
    with_acc!(first.dtype(), T => {
        let data: Vec<Vec<T>> = inputs.iter().map(|t| T::read(t)).collect();
        let mut out = vec![T::default(); out_shape.iter().product()];
        for_each_index(&dims, |idx| {
            let mut p = T::from_f64(1.0);
            for (d, st) in data.iter().zip(&strides) {
                let off: usize = idx.iter().zip(st).map(|(i, s)| i * s).sum();
                p = p.mul(d[off]);
            }
            let o: usize = idx[..n_out].iter().zip(&out_strides).map(|(i, s)| i * s).sum();
            out[o] = out[o].add(p);
        });
        T::write(out, &out_shape, first.dtype())
    })
}

/// A two-operand einsum as one batched matmul: `a` permuted to `[batch, m, k]`, `b` to
/// `[batch, k, n]`, the product permuted from `[batch, m, n]` to the output order.
struct Contraction {
    perm_a: Vec<usize>,
    perm_b: Vec<usize>,
    /// Output dim `i` is dim `perm_out[i]` of the `[batch, m, n]` product.
    perm_out: Vec<usize>,
    shape_a: Vec<usize>,
    shape_b: Vec<usize>,
    dims: [usize; 4],
    out_shape: Vec<usize>,
}

/// Plans the matmul form of `a, b -> out` when it exists: no label repeats within a term, no
/// label is summed inside one operand alone, and no dim broadcasts (size 1 against larger).
/// Everything else takes the general loop.
fn contraction_plan(
    terms: &[Vec<usize>],
    out: &[usize],
    inputs: &[&Tensor],
    sizes: &[usize],
) -> Option<Contraction> {
    let [ta, tb] = terms else { return None };
    let distinct = |t: &[usize]| t.iter().enumerate().all(|(i, l)| !t[..i].contains(l));
    if !distinct(ta) || !distinct(tb) || !distinct(out) {
        return None;
    }
    let exact = |t: &[usize], x: &Tensor| t.iter().zip(x.shape()).all(|(&l, &d)| sizes[l] == d);
    if !exact(ta, inputs[0]) || !exact(tb, inputs[1]) {
        return None;
    }
    let (mut batch, mut m, mut n, mut k) = (vec![], vec![], vec![], vec![]);
    for &l in ta {
        match (tb.contains(&l), out.contains(&l)) {
            (true, true) => batch.push(l),
            (false, true) => m.push(l),
            (true, false) => k.push(l),
            (false, false) => return None,
        }
    }
    for &l in tb {
        match (ta.contains(&l), out.contains(&l)) {
            (false, true) => n.push(l),
            (false, false) => return None,
            _ => {}
        }
    }
    let pos = |t: &[usize], l: usize| t.iter().position(|&x| x == l).expect("label in term");
    let perm = |t: &[usize], groups: &[&[usize]]| -> Vec<usize> {
        groups
            .iter()
            .flat_map(|g| g.iter().map(|&l| pos(t, l)))
            .collect()
    };
    let prod = |g: &[usize]| g.iter().map(|&l| sizes[l]).product::<usize>();
    let mid: Vec<usize> = batch.iter().chain(&m).chain(&n).copied().collect();
    Some(Contraction {
        perm_a: perm(ta, &[&batch, &m, &k]),
        perm_b: perm(tb, &[&batch, &k, &n]),
        perm_out: out.iter().map(|&l| pos(&mid, l)).collect(),
        shape_a: inputs[0].shape().to_vec(),
        shape_b: inputs[1].shape().to_vec(),
        dims: [prod(&batch), prod(&m), prod(&k), prod(&n)],
        out_shape: out.iter().map(|&l| sizes[l]).collect(),
    })
}

/// `data` of `shape` with its dims reordered so that result dim `i` is source dim `perm[i]`.
fn permute<T: Copy>(data: &[T], shape: &[usize], perm: &[usize]) -> Vec<T> {
    let st = strides_of(shape);
    let dims: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let pst: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
    let mut out = Vec::with_capacity(data.len());
    for_each_index(&dims, |idx| {
        out.push(data[idx.iter().zip(&pst).map(|(i, s)| i * s).sum::<usize>()]);
    });
    out
}

fn contract<T: Acc>(a: &[T], b: &[T], p: &Contraction) -> Vec<T> {
    let a = permute(a, &p.shape_a, &p.perm_a);
    let b = permute(b, &p.shape_b, &p.perm_b);
    let [bt, m, k, n] = p.dims;
    let mut prod = vec![T::default(); bt * m * n];
    for i in 0..bt {
        let c = &mut prod[i * m * n..(i + 1) * m * n];
        T::gemm(
            m,
            n,
            k,
            (&a[i * m * k..(i + 1) * m * k], k, 1),
            (&b[i * k * n..(i + 1) * k * n], n, 1),
            c,
        );
    }
    // The product's dims in label terms: batch..., m..., n... with their sizes.
    let mid_shape: Vec<usize> = {
        let mut v = vec![0; p.perm_out.len()];
        for (i, &src) in p.perm_out.iter().enumerate() {
            v[src] = p.out_shape[i];
        }
        v
    };
    permute(&prod, &mid_shape, &p.perm_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::from_vec(shape, v).unwrap()
    }

    fn vals(t: &Tensor) -> Vec<f64> {
        t.to_f64_vec().unwrap()
    }

    fn iota(n: usize) -> Vec<f32> {
        (0..n).map(|i| i as f32).collect()
    }

    #[test]
    fn matmul_broadcast_and_vectors() {
        // [2,1,2,3] @ [2,3,1]: batch broadcast to [2,2]; numbers from numpy.
        let a = t(&[2, 1, 2, 3], iota(12));
        let b = t(&[2, 3, 1], iota(6));
        let y = matmul(&a, &b).unwrap();
        assert_eq!(y.shape(), &[2, 2, 2, 1]);
        assert_eq!(vals(&y), vec![5., 14., 14., 50., 23., 32., 86., 122.]);
        // 1-D @ 2-D and 2-D @ 1-D.
        let v = t(&[3], vec![1., 2., 3.]);
        let m = t(&[3, 2], iota(6));
        assert_eq!(vals(&matmul(&v, &m).unwrap()), vec![16., 22.]);
        let m = t(&[2, 3], iota(6));
        let y = matmul(&m, &v).unwrap();
        assert_eq!(y.shape(), &[2]);
        assert_eq!(vals(&y), vec![8., 26.]);
        // Large enough to take the matrixmultiply path.
        let a = t(&[32, 40], iota(1280));
        let b = t(&[40, 8], iota(320));
        let y = vals(&matmul(&a, &b).unwrap());
        let want: f64 = (0..40)
            .map(|k| (31 * 40 + k) as f64 * (k * 8 + 7) as f64)
            .sum();
        assert_eq!(y[32 * 8 - 1], want);
    }

    #[test]
    fn matmul_ints_wrap() {
        let a = Tensor::from_vec(&[1, 2], vec![i32::MAX, 1]).unwrap();
        let b = Tensor::from_vec(&[2, 1], vec![2i32, 3]).unwrap();
        assert_eq!(
            matmul(&a, &b).unwrap().to_i64_vec().unwrap(),
            vec![i32::MAX.wrapping_mul(2).wrapping_add(3) as i64]
        );
    }

    #[test]
    fn gemm_all_attributes() {
        // a^T [2x3]^T -> [3x2]... a is [2,3] transposed to [3,2]; b [4,2] transposed to [2,4].
        let a = t(&[2, 3], iota(6));
        let b = t(&[4, 2], iota(8));
        let c = t(&[4], vec![1., 2., 3., 4.]);
        let y = gemm(&a, &b, Some(&c), true, true, 0.5, 2.0).unwrap();
        assert_eq!(y.shape(), &[3, 4]);
        // numpy: 0.5 * a.T @ b.T + 2 * c
        assert_eq!(
            vals(&y),
            vec![
                3.5, 8.5, 13.5, 18.5, 4.0, 11.0, 18.0, 25.0, 4.5, 13.5, 22.5, 31.5
            ]
        );
    }

    #[test]
    fn einsum_cases() {
        let a = t(&[2, 3], iota(6));
        assert_eq!(
            vals(&einsum("ij->ji", &[&a]).unwrap()),
            vec![0., 3., 1., 4., 2., 5.]
        );
        assert_eq!(vals(&einsum("ij->", &[&a]).unwrap()), vec![15.]);
        let sq = t(&[3, 3], iota(9));
        assert_eq!(vals(&einsum("ii->i", &[&sq]).unwrap()), vec![0., 4., 8.]);
        let b = t(&[3, 2], iota(6));
        assert_eq!(
            vals(&einsum("ij,jk", &[&a, &b]).unwrap()),
            vec![10., 13., 28., 40.]
        );
        // The matmul path: batch, transposed operand, and an output permutation.
        let p = t(&[2, 3, 4], iota(24));
        let q = t(&[2, 5, 4], iota(40));
        let fast = vals(&einsum("bij,bkj->kbi", &[&p, &q]).unwrap());
        // The same contraction with a size-1 broadcast takes the general loop.
        let q1 = t(&[2, 5, 4], iota(40));
        let slow = vals(&einsum("bij,bkj,z->kbi", &[&p, &q1, &t(&[1], vec![1.0])]).unwrap());
        assert_eq!(fast, slow);
        assert_eq!(fast[..3], [14., 38., 62.]);
        let x = t(&[2, 2, 2], iota(8));
        let y = einsum("...ii->...i", &[&x]).unwrap();
        assert_eq!(vals(&y), vec![0., 3., 4., 7.]);
    }
}
