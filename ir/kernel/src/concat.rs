//! Concatenations without copies: a value that a concatenation copies whole into a contiguous
//! range of its output is instead written there by its producer, and the copy goes.
//!
//! A *copy step* is a launch whose kernel only copies: every top-level statement is a loop
//! nest whose one store writes `out[base + j] = src[j]` for every `j` of its source once
//! (a dense, row-major enumeration), all into one written parameter, into disjoint ranges.
//! Lowering writes a `Concat` along an axis with only size-1 dims before it (NCHW channels at
//! batch 1, the usual case) this way. For such a step, each source whose storage is a
//! temporary is *placed*: its storage becomes an alias of the output's at the part's offset
//! ([`BufKind::Alias`] with an offset), so the step that produced it writes it where the
//! concatenation wants it, and the statement copying it is dropped (the step with it, when
//! none is left).
//!
//! Why this is sound: placing storage `r` inside the output storage `o` changes results only if
//! some step writes bytes that another reads as a different value. Those bytes are `r`'s
//! elements, which (1) only steps before the concatenation write (`r` is complete when it is
//! copied, and nothing after writes it), (2) the concatenation itself would have written with
//! the same values, and (3) nothing else writes afterwards, since no step but the
//! concatenation writes `o`. Before the concatenation, no step touches `o`, so `r`'s bytes
//! there belong to `r` alone. The memory planner sees one storage, live from `r`'s first
//! write to `o`'s last read. A storage placed as a whole must be exactly the parts it holds
//! (the parts with that storage cover it and sit at one consistent offset), so that nothing
//! else in it lands on a neighbouring part: a concatenation's output that is itself a prefix
//! of a later concatenation (DenseNet's growing feature stacks) is placed whole that way.
//! Inputs, constants and storage written after the concatenation are copied as before.

use crate::kernel::*;

/// What [`place_concat_parts`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Placed {
    /// Sources now written in place inside their concatenation's output.
    pub parts: usize,
    /// Copy steps left with nothing to copy, removed.
    pub steps: usize,
}

/// One copy statement of a copy step: top-level statement `stmt` copies all of parameter
/// `src` (`len` elements) to `out[base..base + len]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Part {
    stmt: usize,
    src: ParamId,
    base: usize,
    len: usize,
}

/// Places the sources of every copy step of `p` inside its output where that is sound (see
/// the module docs), then points every alias at the storage owner directly.
pub fn place_concat_parts(p: &mut Program) -> Placed {
    let mut done = Placed::default();
    let mut si = 0;
    while si < p.steps.len() {
        let st = &p.steps[si];
        let k = p.kernel(st.kernel);
        let Some((out, parts)) = copy_parts(k) else {
            si += 1;
            continue;
        };
        let placed = place_step(p, si, out, &parts);
        if placed.is_empty() {
            si += 1;
            continue;
        }
        done.parts += placed.len();
        let keep: Vec<usize> = parts
            .iter()
            .filter(|q| !placed.contains(&q.src))
            .map(|q| q.stmt)
            .collect();
        if keep_only(p, si, &keep) {
            si += 1;
        } else {
            done.steps += 1;
        }
    }
    tidy(p);
    done
}

/// Keeps only the top-level statements `keep` (copies) of step `si`'s kernel, or removes the
/// step when there are none; whether the step is still there.
pub(crate) fn keep_only(p: &mut Program, si: usize, keep: &[usize]) -> bool {
    if keep.is_empty() {
        p.steps.remove(si);
        return false;
    }
    let st = &p.steps[si];
    let (kernel, args) = rebuilt(p.kernel(st.kernel), &st.args, keep);
    let id = p.intern_kernel(kernel);
    p.steps[si].kernel = id;
    p.steps[si].args = args;
    true
}

/// After a pass: every alias pointing at its storage's owner, no kernel left unlaunched.
pub(crate) fn tidy(p: &mut Program) {
    flatten_aliases(p);
    drop_unused_kernels(p);
}

/// Removes the kernels no step launches any more (the copies replaced or removed above),
/// renumbering the rest in order.
fn drop_unused_kernels(p: &mut Program) {
    let mut used = vec![false; p.kernels.len()];
    for st in &p.steps {
        used[st.kernel.0 as usize] = true;
    }
    if used.iter().all(|&u| u) {
        return;
    }
    let mut remap = vec![0u32; p.kernels.len()];
    let mut kept = Vec::with_capacity(p.kernels.len());
    for (i, k) in std::mem::take(&mut p.kernels).into_iter().enumerate() {
        if used[i] {
            remap[i] = kept.len() as u32;
            kept.push(k);
        }
    }
    p.kernels = kept;
    for st in &mut p.steps {
        st.kernel = KernelId(remap[st.kernel.0 as usize]);
    }
}

/// The parameters of step `si`'s copies whose storage it placed inside the output.
fn place_step(p: &mut Program, si: usize, out: ParamId, parts: &[Part]) -> Vec<ParamId> {
    let st = &p.steps[si];
    let out_buf = st.args[out.0 as usize];
    let (o, o_at) = p.location(out_buf);
    let dtype = p.buffer(out_buf).dtype;
    if !matches!(p.buffer(o).kind, BufKind::Temp)
        || touched(p, o, |j, _| j < si)
        || touched(p, o, |j, a| j != si && a != Access::Read)
    {
        return Vec::new();
    }
    // The parts by the storage holding them: (storage, [(part, offset in that storage)]).
    let mut by_storage: Vec<(BufId, Vec<(Part, usize)>)> = Vec::new();
    for q in parts {
        let (r, at) = p.location(st.args[q.src.0 as usize]);
        match by_storage.iter_mut().find(|(s, _)| *s == r) {
            Some((_, v)) => v.push((*q, at)),
            None => by_storage.push((r, vec![(*q, at)])),
        }
    }
    let mut placed = Vec::new();
    for (r, held) in by_storage {
        let rb = p.buffer(r);
        if r == o
            || !matches!(rb.kind, BufKind::Temp)
            || rb.dtype != dtype
            || held
                .iter()
                .any(|(q, _)| p.buffer(st.args[q.src.0 as usize]).dtype != dtype)
            || touched(p, r, |j, a| j >= si && a != Access::Read)
        {
            continue;
        }
        // One offset of `r` in `o` for every part it holds, and the parts cover `r` exactly.
        let Some(delta) = (o_at + held[0].0.base).checked_sub(held[0].1) else {
            continue;
        };
        if held.iter().any(|(q, at)| o_at + q.base != delta + at) {
            continue;
        }
        let mut spans: Vec<(usize, usize)> = held.iter().map(|(q, at)| (*at, q.len)).collect();
        spans.sort_unstable();
        let mut end = 0;
        let exact = spans.iter().all(|&(at, len)| {
            let ok = at == end;
            end = at + len;
            ok
        }) && end == rb.len();
        if !exact {
            continue;
        }
        p.buffers[r.0 as usize].kind = BufKind::Alias {
            of: o,
            offset: delta,
        };
        placed.extend(held.iter().map(|(q, _)| q.src));
    }
    placed
}

/// Whether a step `j` with `pick(j, access)` passes storage `s` (through any alias) to a
/// kernel parameter of that access.
pub(crate) fn touched(p: &Program, s: BufId, pick: impl Fn(usize, Access) -> bool) -> bool {
    p.steps.iter().enumerate().any(|(j, st)| {
        let params = &p.kernel(st.kernel).params;
        st.args
            .iter()
            .zip(params)
            .any(|(&b, q)| pick(j, q.access) && p.storage_of(b) == s)
    })
}

/// The written parameter and the copies of `k`, if `k` is a copy kernel (module docs).
fn copy_parts(k: &Kernel) -> Option<(ParamId, Vec<Part>)> {
    let mut writes = k
        .params
        .iter()
        .enumerate()
        .filter(|(_, q)| q.access != Access::Read);
    let (o, op) = writes.next()?;
    if writes.next().is_some() || op.access != Access::Write || k.body.is_empty() {
        return None;
    }
    let out = ParamId(o as u32);
    let mut parts = Vec::with_capacity(k.body.len());
    for (stmt, s) in k.body.iter().enumerate() {
        let c = dense_copy(s, k)?;
        let whole = c.src_base == 0 && c.len == k.params[c.src.0 as usize].len;
        if c.dst != out || !whole || parts.iter().any(|q: &Part| q.src == c.src) {
            return None;
        }
        parts.push(Part {
            stmt,
            src: c.src,
            base: c.dst_base,
            len: c.len,
        });
    }
    let mut spans: Vec<(usize, usize)> = parts.iter().map(|q| (q.base, q.len)).collect();
    spans.sort_unstable();
    if spans.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0) {
        return None;
    }
    Some((out, parts))
}

/// A statement storing `dst[dst_base + j] = src[src_base + j]` for every `j` in `0..len`,
/// each once ([`dense_copy`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DenseCopy {
    pub dst: ParamId,
    pub dst_base: usize,
    pub src: ParamId,
    pub src_base: usize,
    pub len: usize,
}

/// `s` as a [`DenseCopy`], if it is a nest of loops with literal extents, each holding only
/// the next, around one store of a load, both indices affine in the counters with the same
/// coefficients, which number `0..len` densely (row-major), and both ranges in bounds.
pub(crate) fn dense_copy(s: &Stmt, k: &Kernel) -> Option<DenseCopy> {
    let mut loops: Vec<(VarId, i64)> = Vec::new();
    let mut s = s;
    let (dst, index, value) = loop {
        match s {
            Stmt::For {
                var, extent, body, ..
            } => {
                let Expr::Lit(Lit::Int(_, n)) = extent else {
                    return None;
                };
                let [inner] = body.as_slice() else {
                    return None;
                };
                loops.push((*var, *n));
                s = inner;
            }
            Stmt::Store {
                param,
                index,
                value,
            } => break (*param, index, value),
            _ => return None,
        }
    };
    let Expr::Load {
        param: src,
        index: from,
    } = value
    else {
        return None;
    };
    let (sp, dp) = (&k.params[src.0 as usize], &k.params[dst.0 as usize]);
    if src == &dst || sp.access != Access::Read || sp.dtype != dp.dtype {
        return None;
    }
    if loops.iter().any(|&(_, n)| n <= 0) {
        return None;
    }
    // Counters that take one value contribute nothing; the rest must number the elements
    // densely, with the same coefficients on both sides.
    let live = |terms: Vec<(VarId, i64)>| -> Option<Vec<(VarId, i64)>> {
        let mut t = Vec::new();
        for (v, c) in terms {
            let &(_, n) = loops.iter().find(|(x, _)| *x == v)?;
            if n > 1 {
                t.push((v, c));
            }
        }
        t.sort_unstable();
        Some(t)
    };
    let (to, dst_base) = crate::inplace::affine(index)?;
    let (fr, src_base) = crate::inplace::affine(from)?;
    let (to, fr) = (live(to)?, live(fr)?);
    if to != fr || dst_base < 0 || src_base < 0 {
        return None;
    }
    let mut coefs: Vec<(i64, i64)> = Vec::new();
    for &(v, n) in loops.iter().filter(|(_, n)| *n > 1) {
        let &(_, c) = to.iter().find(|(x, _)| *x == v)?;
        coefs.push((c, n));
    }
    coefs.sort_unstable();
    let mut len: i64 = 1;
    for (c, n) in coefs {
        if c != len {
            return None;
        }
        len = len.checked_mul(n)?;
    }
    let (len, dst_base, src_base) = (len as usize, dst_base as usize, src_base as usize);
    if dst_base.checked_add(len)? > dp.len || src_base.checked_add(len)? > sp.len {
        return None;
    }
    Some(DenseCopy {
        dst,
        dst_base,
        src: *src,
        src_base,
        len,
    })
}

/// `k` with only its top-level statements `keep` (copies: [`dense_copy`]'s shape), and only
/// the parameters they use, in order of first use, with `args` to match.
fn rebuilt(k: &Kernel, args: &[BufId], keep: &[usize]) -> (Kernel, Vec<BufId>) {
    let mut nk = Kernel::new(k.name.clone());
    nk.vars = k.vars.clone();
    let mut map: Vec<Option<ParamId>> = vec![None; k.params.len()];
    let mut new_args = Vec::new();
    let mut param = |nk: &mut Kernel, p: ParamId| {
        *map[p.0 as usize].get_or_insert_with(|| {
            let q = &k.params[p.0 as usize];
            new_args.push(args[p.0 as usize]);
            nk.param(q.dtype, q.len, q.access)
        })
    };
    for &i in keep {
        if let Some(c) = dense_copy(&k.body[i], k) {
            let (dst, src) = (param(&mut nk, c.dst), param(&mut nk, c.src));
            nk.body.push(reparam(&k.body[i], dst, src));
        }
    }
    (nk, new_args)
}

/// A copy statement ([`dense_copy`]'s shape) storing to `dst` and loading from `src`.
fn reparam(s: &Stmt, dst: ParamId, src: ParamId) -> Stmt {
    match s {
        Stmt::For {
            var,
            extent,
            kind,
            body,
        } => Stmt::For {
            var: *var,
            extent: extent.clone(),
            kind: *kind,
            body: body.iter().map(|b| reparam(b, dst, src)).collect(),
        },
        Stmt::Store { index, value, .. } => Stmt::Store {
            param: dst,
            index: index.clone(),
            value: match value {
                Expr::Load { index, .. } => Expr::Load {
                    param: src,
                    index: index.clone(),
                },
                v => v.clone(),
            },
        },
        s => s.clone(),
    }
}

/// Points every alias at the buffer owning its storage, with the summed offset: the form
/// lowering leaves (one hop), which backends' plans expect.
fn flatten_aliases(p: &mut Program) {
    for i in 0..p.buffers.len() {
        if let BufKind::Alias { .. } = p.buffers[i].kind {
            let (of, offset) = p.location(BufId(i as u32));
            p.buffers[i].kind = BufKind::Alias { of, offset };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{before_after, plus, times, unary};
    use crate::{print_program, run_program};
    use mlc_ir::Tensor;

    /// [`before_after`] with [`place_concat_parts`].
    fn placed(src: &str) -> (Placed, Program) {
        before_after(src, place_concat_parts)
    }

    fn concat_steps(p: &Program) -> usize {
        let n = p
            .steps
            .iter()
            .filter(|s| p.kernel(s.kernel).name.contains("concat"))
            .count();
        // Kernels no step launches are gone.
        let kernels = p
            .kernels
            .iter()
            .filter(|k| k.name.contains("concat"))
            .count();
        assert_eq!(kernels, n.min(kernels), "{}", print_program(p));
        assert!(n > 0 || kernels == 0, "{}", print_program(p));
        n
    }

    #[test]
    fn parts_written_by_their_producers_leave_no_copy() {
        // A fire module's shape: two producers of one input, concatenated on channels.
        let (done, p) = placed(
            r#"graph (%0: f32[1,3,4,5] "x") -> (%3 "y") {
  %1 = ew.relu(%0) : f32[1,3,4,5]
  %2 = ew.abs(%0) : f32[1,3,4,5]
  %3 = movement.concat {"axis":1} (%1, %2) : f32[1,6,4,5]
}"#,
        );
        assert_eq!(done, Placed { parts: 2, steps: 1 });
        assert_eq!(concat_steps(&p), 0);
        let text = print_program(&p);
        assert!(text.contains(" at 60\n"), "{text}");
    }

    #[test]
    fn inputs_and_constants_are_still_copied() {
        let (done, p) = placed(
            r#"graph (%0: f32[1,3,4] "x") -> (%3 "y") {
  @c0 = const f32[1,2,4] [1,2,3,4,5,6,7,8]
  %1 = ew.relu(%0) : f32[1,3,4]
  %2 = constant @c0 : f32[1,2,4]
  %3 = movement.concat {"axis":1} (%0, %1, %2) : f32[1,8,4]
}"#,
        );
        assert_eq!(done, Placed { parts: 1, steps: 0 });
        assert_eq!(concat_steps(&p), 1);
        let k = p
            .steps
            .iter()
            .find(|s| p.kernel(s.kernel).name.contains("concat"));
        assert_eq!(k.map(|s| s.args.len()), Some(3), "{}", print_program(&p));
    }

    #[test]
    fn a_concatenation_that_prefixes_the_next_is_placed_whole() {
        // DenseNet: each layer concatenates every earlier feature map; %3 is %6's prefix.
        let (done, p) = placed(
            r#"graph (%0: f32[1,2,3] "x") -> (%4 "a", %6 "y") {
  %1 = ew.relu(%0) : f32[1,2,3]
  %2 = ew.abs(%0) : f32[1,2,3]
  %3 = movement.concat {"axis":1} (%1, %2) : f32[1,4,3]
  %4 = ew.tanh(%3) : f32[1,4,3]
  %5 = ew.relu(%4) : f32[1,4,3]
  %6 = movement.concat {"axis":1} (%1, %2, %5) : f32[1,8,3]
}"#,
        );
        // Both of the first's parts, the first itself (its two parts again), and %5.
        assert_eq!(done, Placed { parts: 5, steps: 2 });
        assert_eq!(concat_steps(&p), 0, "{}", print_program(&p));
    }

    #[test]
    fn a_value_in_two_concatenations_is_placed_once() {
        let (done, p) = placed(
            r#"graph (%0: f32[1,2,3] "x") -> (%3 "a", %4 "b") {
  %1 = ew.relu(%0) : f32[1,2,3]
  %2 = ew.abs(%0) : f32[1,2,3]
  %3 = movement.concat {"axis":1} (%1, %2) : f32[1,4,3]
  %4 = movement.concat {"axis":1} (%2, %1) : f32[1,4,3]
}"#,
        );
        assert_eq!(done, Placed { parts: 2, steps: 1 });
        assert_eq!(concat_steps(&p), 1);
    }

    #[test]
    fn the_same_value_twice_is_copied() {
        let (done, _) = placed(
            r#"graph (%0: f32[1,2,3] "x") -> (%2 "y") {
  %1 = ew.relu(%0) : f32[1,2,3]
  %2 = movement.concat {"axis":1} (%1, %1) : f32[1,4,3]
}"#,
        );
        assert_eq!(done, Placed::default());
    }

    #[test]
    fn strided_parts_are_not_copies() {
        // Concatenated on an inner axis, each part is strided in the output.
        let (done, _) = placed(
            r#"graph (%0: f32[2,2,3] "x") -> (%3 "y") {
  %1 = ew.relu(%0) : f32[2,2,3]
  %2 = ew.abs(%0) : f32[2,2,3]
  %3 = movement.concat {"axis":1} (%1, %2) : f32[2,4,3]
}"#,
        );
        assert_eq!(done, Placed::default());
    }

    /// Hand-written programs: `t = 2x` is copied into `o = [x, t]`; a later write to `t`, or
    /// to `o`, must keep `t` apart.
    #[test]
    fn storage_written_after_the_copy_stays_apart() {
        use mlc_ir::DType::{F32, I64};
        let mut p = Program::default();
        let x = p.add_buffer(F32, vec![4], BufKind::Input(0));
        p.inputs.push(("x".into(), x));
        let t = p.add_buffer(F32, vec![4], BufKind::Temp);
        let o = p.add_buffer(F32, vec![8], BufKind::Temp);
        let o_hi = p.add_buffer(F32, vec![4], BufKind::Alias { of: o, offset: 4 });
        let twice = unary(4, &times(2.0), Access::Write);
        let bump = unary(4, &plus(1.0), Access::ReadWrite);
        let mut cat = Kernel::new("concat");
        let co = cat.param(F32, 8, Access::Write);
        let ca = cat.param(F32, 4, Access::Read);
        let cb = cat.param(F32, 4, Access::Read);
        for (src, base) in [(ca, 0), (cb, 4)] {
            let i = cat.var(I64);
            cat.body.push(Stmt::For {
                var: i,
                extent: Expr::idx(4),
                kind: LoopKind::Parallel,
                body: vec![Stmt::Store {
                    param: co,
                    index: Expr::add_idx(Expr::idx(base), Expr::var(i)),
                    value: Expr::load(src, Expr::var(i)),
                }],
            });
        }
        let (k0, k1, k2) = (
            p.intern_kernel(twice),
            p.intern_kernel(cat),
            p.intern_kernel(bump),
        );
        let step = |kernel, args: Vec<BufId>| Step {
            kernel,
            args,
            origin: None,
        };
        p.outputs = vec![("o".into(), o), ("t".into(), t)];
        let x_val = [Tensor::from_vec(&[4], vec![1f32, 2., 3., 4.]).expect("x")];
        let base = vec![step(k0, vec![x, t]), step(k1, vec![o, x, t])];
        for (later, expect) in [
            (None, Placed { parts: 1, steps: 0 }),
            (Some(t), Placed::default()),
            (Some(o_hi), Placed::default()),
        ] {
            let mut q = p.clone();
            q.steps = base.clone();
            q.steps.extend(later.map(|b| step(k2, vec![x, b])));
            let want = run_program(&q, &x_val).expect("before");
            let before = q.clone();
            assert_eq!(
                place_concat_parts(&mut q),
                expect,
                "{}",
                print_program(&before)
            );
            assert_eq!(run_program(&q, &x_val).expect("after"), want);
        }
    }
}
