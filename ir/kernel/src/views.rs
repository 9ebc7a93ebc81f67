//! Contiguous slices without copies: a statement that copies a contiguous range of one buffer
//! into all of another (a `Slice`, `Split` or constant-index `Gather` along an axis with only
//! size-1 dims before it: Q, K and V taken out of one projection, a class token, ShuffleNet's
//! channel halves) is replaced by making the destination an alias of that range.
//!
//! Why this is sound: the destination `o` (a temporary's whole storage) becomes the bytes of
//! the source range in storage `r`. Results change only if one of them is written while the
//! other is read as a different value. No step but the copy writes `o` and none touches it
//! before, so `o`'s bytes are never written as `o`; no step from the copy on writes `r`, so
//! the range holds the copied values for as long as `o` is read. The memory planner sees one
//! storage, live until `o`'s last read.

use crate::concat::{dense_copy, keep_only, tidy, touched};
use crate::kernel::*;

/// Replaces every whole-destination copy of `p` that may be a view by an alias (see the module
/// docs); returns how many. Steps left with nothing to do are removed.
pub fn alias_slices(p: &mut Program) -> usize {
    let mut done = 0;
    let mut si = 0;
    while si < p.steps.len() {
        let st = &p.steps[si];
        let k = p.kernel(st.kernel);
        // Only kernels made of copies, each destination written by one statement.
        let copies: Option<Vec<_>> = k.body.iter().map(|s| dense_copy(s, k)).collect();
        let Some(copies) = copies.filter(|c| {
            k.params.iter().enumerate().all(|(i, q)| {
                let writes = c.iter().filter(|c| c.dst.0 as usize == i).count();
                match q.access {
                    Access::Read => writes == 0,
                    Access::Write => writes == 1,
                    Access::ReadWrite => false,
                }
            })
        }) else {
            si += 1;
            continue;
        };
        // Decided on the program as it is, then applied: a destination made a view of `r`
        // would count as this step writing `r` for the next.
        let views: Vec<Option<(BufId, BufKind)>> = copies.iter().map(|c| view(p, si, c)).collect();
        let mut keep = Vec::new();
        for (i, v) in views.into_iter().enumerate() {
            match v {
                Some((o, kind)) => p.buffers[o.0 as usize].kind = kind,
                None => keep.push(i),
            }
        }
        if keep.len() == copies.len() {
            si += 1;
            continue;
        }
        done += copies.len() - keep.len();
        if keep_only(p, si, &keep) {
            si += 1;
        }
    }
    tidy(p);
    done
}

/// The destination storage of copy `c` of step `si` and its kind as a view, if it may be one.
fn view(p: &Program, si: usize, c: &crate::concat::DenseCopy) -> Option<(BufId, BufKind)> {
    let st = &p.steps[si];
    let (dst, src) = (st.args[c.dst.0 as usize], st.args[c.src.0 as usize]);
    let (o, o_at) = p.location(dst);
    let (r, r_at) = p.location(src);
    let ob = p.buffer(o);
    let whole = o_at == 0 && c.dst_base == 0 && c.len == ob.len();
    if !whole
        || !matches!(ob.kind, BufKind::Temp)
        || r == o
        || ob.dtype != p.buffer(r).dtype
        || p.buffer(dst).dtype != ob.dtype
        // `o` is written by this statement alone and touched by nothing before.
        || touched(p, o, |j, _| j < si)
        || touched(p, o, |j, a| j > si && a != Access::Read)
        || st.args.iter().filter(|&&b| p.storage_of(b) == o).count() != 1
        // `r` holds its values from here on.
        || touched(p, r, |j, a| j >= si && a != Access::Read)
    {
        return None;
    }
    let kind = BufKind::Alias {
        of: r,
        offset: r_at + c.src_base,
    };
    Some((o, kind))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{before_after, plus, times, unary};
    use crate::{print_program, run_program};
    use mlc_ir::Tensor;

    /// [`before_after`] with [`alias_slices`].
    fn viewed(src: &str) -> (usize, Program) {
        before_after(src, alias_slices)
    }

    #[test]
    fn contiguous_slices_splits_and_selects_are_views() {
        // Q, K, V selected out of one tensor; a split into channel halves; a slice of rows.
        let (n, p) = viewed(
            r#"graph (%0: f32[3,2,4] "qkv", %1: f32[1,6,2] "x") -> (%5 "q", %6 "k", %7 "a", %8 "b", %9 "s") {
  @c0 = const i64[] [0]
  @c1 = const i64[] [-2]
  %2 = ew.relu(%0) : f32[3,2,4]
  %3 = constant @c0 : i64[]
  %4 = constant @c1 : i64[]
  %5 = movement.gather {"axis":0} (%2, %3) : f32[2,4]
  %6 = movement.gather {"axis":0} (%2, %4) : f32[2,4]
  %7, %8 = movement.split {"axis":1,"sizes":[3,3]} (%1) : f32[1,3,2], f32[1,3,2]
  %9 = movement.slice {"starts":[2],"ends":[5],"axes":[1],"steps":[1]} (%1, _, _, _, _) : f32[1,3,2]
}"#,
        );
        assert_eq!(n, 5, "{}", print_program(&p));
        assert!(
            p.steps
                .iter()
                .all(|s| p.kernel(s.kernel).name.contains("relu")),
            "{}",
            print_program(&p)
        );
    }

    #[test]
    fn strided_or_partial_copies_stay() {
        // A slice on an inner axis is strided; a gather by a run-time index is not a copy.
        let (n, _) = viewed(
            r#"graph (%0: f32[2,6] "x", %1: i64[] "i") -> (%2 "s", %3 "g") {
  %2 = movement.slice {"starts":[1],"ends":[4],"axes":[1],"steps":[1]} (%0, _, _, _, _) : f32[2,3]
  %3 = movement.gather {"axis":0} (%0, %1) : f32[6]
}"#,
        );
        assert_eq!(n, 0);
    }

    /// Hand-written: `o = t[4..8]` with `t = 2x`; a later write to `t`, or to `o`, must keep
    /// them apart.
    #[test]
    fn storage_written_after_the_slice_stays_apart() {
        use mlc_ir::DType::{F32, I64};
        let mut p = Program::default();
        let x = p.add_buffer(F32, vec![8], BufKind::Input(0));
        p.inputs.push(("x".into(), x));
        let t = p.add_buffer(F32, vec![8], BufKind::Temp);
        let o = p.add_buffer(F32, vec![4], BufKind::Temp);
        let twice = unary(8, &times(2.0), Access::Write);
        let bump8 = unary(8, &plus(1.0), Access::ReadWrite);
        let bump4 = unary(4, &plus(1.0), Access::ReadWrite);
        let mut slice = Kernel::new("slice");
        let so = slice.param(F32, 4, Access::Write);
        let st = slice.param(F32, 8, Access::Read);
        let i = slice.var(I64);
        slice.body.push(Stmt::For {
            var: i,
            extent: Expr::idx(4),
            kind: LoopKind::Parallel,
            body: vec![Stmt::Store {
                param: so,
                index: Expr::var(i),
                value: Expr::load(st, Expr::add_idx(Expr::idx(4), Expr::var(i))),
            }],
        });
        let ks: Vec<KernelId> = [twice, slice, bump8, bump4]
            .into_iter()
            .map(|k| p.intern_kernel(k))
            .collect();
        let step = |kernel, args: Vec<BufId>| Step {
            kernel,
            args,
            origin: None,
        };
        p.outputs = vec![("o".into(), o), ("t".into(), t)];
        let x_val = [Tensor::from_vec(&[8], (0..8).map(|v| v as f32).collect()).expect("x")];
        let base = vec![step(ks[0], vec![x, t]), step(ks[1], vec![o, t])];
        for (later, expect) in [
            (None, 1),
            (Some(step(ks[2], vec![x, t])), 0),
            (Some(step(ks[3], vec![x, o])), 0),
        ] {
            let mut q = p.clone();
            q.steps = base.clone();
            q.steps.extend(later);
            let want = run_program(&q, &x_val).expect("before");
            let before = q.clone();
            assert_eq!(alias_slices(&mut q), expect, "{}", print_program(&before));
            assert_eq!(run_program(&q, &x_val).expect("after"), want);
        }
    }
}
