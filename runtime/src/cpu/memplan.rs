//! The static memory plan: places every arena buffer of a [`CpuPlan`] at an offset so that
//! buffers alive at the same time never share bytes, and buffers that are not do.
//!
//! A buffer's lifetime runs from the first step that touches its storage (through any alias)
//! to the last; model inputs are alive from before the first step, outputs until after the last.
//! Placement is greedy, largest buffer first, each at the lowest 64-byte-aligned offset that no
//! placed, overlapping buffer occupies (the usual heuristic; within a few percent of optimal on
//! inference graphs). A step's inputs and outputs are alive in the same step, so they do not
//! share bytes, except that an output the kernel may compute in place of an input that dies
//! there takes exactly that input's offset when nothing else live is in the way
//! ([`plan_memory_in_place`]).
//!
//! It also marks, per step, the arena buffers the step reads before anything wrote them: the
//! executor zeroes those first (kernels may accumulate into a buffer they never initialized).

use super::plan::{CpuBufferKind, CpuPlan};

/// Alignment of every arena buffer: a cache line, and enough for any vector load.
pub const ARENA_ALIGN: u64 = 64;

/// Lifetimes as `[first, last]` in "time": 0 is input copy, step `i` is `i + 1`, and the
/// output read-back is `steps + 1`. `None` for buffers nothing touches.
fn lifetimes(p: &CpuPlan) -> Vec<Option<(usize, usize)>> {
    let mut life: Vec<Option<(usize, usize)>> = vec![None; p.buffers.len()];
    let mut touch = |b: usize, t: usize| {
        let l = &mut life[b];
        *l = Some(match *l {
            None => (t, t),
            Some((a, z)) => (a.min(t), z.max(t)),
        });
    };
    for (b, buf) in p.buffers.iter().enumerate() {
        if let CpuBufferKind::Arena { input: Some(_), .. } = buf.kind {
            touch(b, 0);
        }
    }
    for (si, s) in p.steps.iter().enumerate() {
        for &a in &s.args {
            touch(p.storage_of(a), si + 1);
        }
    }
    for io in &p.outputs {
        touch(p.storage_of(io.buffer), p.steps.len() + 1);
    }
    life
}

/// Assigns arena offsets and `arena_bytes`, and fills each step's `zero` list. Offsets already
/// in the plan are ignored. No buffer is computed in place of another.
pub fn plan_memory(p: &mut CpuPlan) {
    plan_memory_in_place(p, &[]);
}

/// [`plan_memory`], where `in_place[s]` lists the `(input, output)` argument positions of step
/// `s` whose kernel may compute the output in place of the input (each input element read
/// before the same element is written, by one iteration: `mlc_kir::inplace_pairs`). When the
/// input's storage dies at that step and the output's is born there, the two may take the
/// same offset (only exactly the same: a shifted overlap would overwrite unread inputs).
pub fn plan_memory_in_place(p: &mut CpuPlan, in_place: &[Vec<(usize, usize)>]) {
    let life = lifetimes(p);
    // Storage pairs that may share one offset.
    let mut partners: Vec<(usize, usize)> = Vec::new();
    for (si, pairs) in in_place.iter().enumerate() {
        let Some(step) = p.steps.get(si) else { break };
        let t = si + 1;
        for &(i, o) in pairs {
            let (Some(&ai), Some(&ao)) = (step.args.get(i), step.args.get(o)) else {
                continue;
            };
            let (x, y) = (p.storage_of(ai), p.storage_of(ao));
            let arena = |b: usize| matches!(p.buffers[b].kind, CpuBufferKind::Arena { .. });
            // The input's storage must reach the step through this argument only.
            let once = step.args.iter().filter(|&&a| p.storage_of(a) == x).count() == 1;
            if x != y
                && once
                && arena(x)
                && arena(y)
                && p.buffers[x].bytes() == p.buffers[y].bytes()
                && life[x].is_some_and(|(_, z)| z == t)
                && life[y].is_some_and(|(a, _)| a == t)
            {
                partners.push((x, y));
            }
        }
    }
    let partner = |a: usize, b: usize| partners.contains(&(a, b)) || partners.contains(&(b, a));
    let mut order: Vec<usize> = (0..p.buffers.len())
        .filter(|&b| matches!(p.buffers[b].kind, CpuBufferKind::Arena { .. }))
        .collect();
    order.sort_by_key(|&b| (std::cmp::Reverse(p.buffers[b].bytes()), b));
    let align = |n: u64| n.div_ceil(ARENA_ALIGN) * ARENA_ALIGN;
    let mut placed: Vec<(usize, u64, u64, (usize, usize))> = Vec::new(); // (buffer, offset, end, life)
    let mut arena = 0u64;
    for b in order {
        let size = align(p.buffers[b].bytes().max(1));
        // A buffer nothing touches (its producer's stores went to a fused tail's buffer) is
        // never read or written: it sits at offset 0, inside the arena, in nobody's way.
        let Some(l) = life[b] else {
            arena = arena.max(size);
            if let CpuBufferKind::Arena { offset, .. } = &mut p.buffers[b].kind {
                *offset = 0;
            }
            continue;
        };
        let live = |(a, z): (usize, usize)| l.0 <= z && a <= l.1;
        // First choice: exactly where a placed partner is, if nothing else live is there.
        let shared = placed
            .iter()
            .filter(|(c, ..)| partner(b, *c))
            .map(|&(_, o, ..)| o)
            .find(|&o| {
                placed.iter().all(|&(c, po, pe, pl)| {
                    !live(pl) || (partner(b, c) && po == o) || pe <= o || o + size <= po
                })
            });
        let off = match shared {
            Some(o) => o,
            None => {
                let mut busy: Vec<(u64, u64)> = placed
                    .iter()
                    .filter(|&&(.., pl)| live(pl))
                    .map(|&(_, o, e, _)| (o, e))
                    .collect();
                busy.sort_unstable();
                let mut off = 0u64;
                for (o, e) in busy {
                    if off + size <= o {
                        break;
                    }
                    off = off.max(e);
                }
                off
            }
        };
        placed.push((b, off, off + size, l));
        arena = arena.max(off + size);
        if let CpuBufferKind::Arena { offset, .. } = &mut p.buffers[b].kind {
            *offset = off;
        }
    }
    p.arena_bytes = arena;

    // Zeroing: a read of bytes that no earlier step wrote (inputs count as written). Tracked
    // per byte range of each storage, since values placed inside another (a concatenation's
    // parts) are written one by one: zeroing the whole storage for the second part's
    // accumulating kernel would wipe the first. A read overlapping anything written counts
    // as initialized, as it did when all ranges were whole storages.
    let mut written: Vec<Vec<(u64, u64)>> = p
        .buffers
        .iter()
        .map(|b| match b.kind {
            CpuBufferKind::Arena { input: Some(_), .. } => vec![(0, b.bytes())],
            _ => Vec::new(),
        })
        .collect();
    let range = |p: &CpuPlan, a: usize| {
        let (s, at) = p.location(a);
        (s, at, at + p.buffers[a].bytes())
    };
    for si in 0..p.steps.len() {
        let k = p.steps[si].kernel;
        let mut zero: Vec<usize> = Vec::new();
        for (j, &a) in p.steps[si].args.iter().enumerate() {
            let (s, lo, hi) = range(p, a);
            let arena = matches!(p.buffers[s].kind, CpuBufferKind::Arena { .. });
            let reads = p
                .kernels
                .get(k)
                .and_then(|k| k.params.get(j))
                .is_some_and(|q| q.reads);
            let overlaps = |r: &[(u64, u64)]| r.iter().any(|&(a, b)| a < hi && lo < b);
            let queued = zero.iter().any(|&z| {
                let (zs, zl, zh) = range(p, z);
                zs == s && zl < hi && lo < zh
            });
            if arena && reads && !overlaps(&written[s]) && !queued {
                // The storage itself when the argument is all of it (version 1 plans' form).
                let whole = lo == 0 && hi == p.buffers[s].bytes();
                zero.push(if whole { s } else { a });
            }
        }
        for (j, &a) in p.steps[si].args.iter().enumerate() {
            if p.kernels
                .get(k)
                .and_then(|k| k.params.get(j))
                .is_some_and(|q| q.writes)
            {
                let (s, lo, hi) = range(p, a);
                written[s].push((lo, hi));
            }
        }
        p.steps[si].zero = zero;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::plan::*;
    use crate::plan::PlanIo;

    fn arena(len: usize, input: Option<usize>) -> CpuBuffer {
        CpuBuffer {
            dtype: "f32".into(),
            len,
            kind: CpuBufferKind::Arena { offset: 0, input },
        }
    }

    /// x -> a -> b -> c -> y in a chain of unary kernels: a and c can share, b cannot share
    /// with either neighbour.
    fn chain() -> CpuPlan {
        let param = |writes| CpuParam {
            dtype: "f32".into(),
            len: 100,
            writes,
            reads: !writes,
        };
        let io = |name: &str, buffer| PlanIo {
            name: name.into(),
            buffer,
            dtype: "f32".into(),
            shape: vec![100],
            value: None,
            batch: false,
            dims: Vec::new(),
        };
        CpuPlan {
            version: CPU_PLAN_VERSION,
            abi: crate::cpu::abi::ABI_VERSION,
            helpers: vec![],
            features: vec![],
            kernels: vec![CpuKernel {
                name: "k".into(),
                symbol: "k".into(),
                params: vec![param(true), param(false)],
                split: None,
                work: 1,
            }],
            buffers: vec![
                arena(100, Some(0)),
                arena(100, None),
                arena(100, None),
                arena(100, None),
                arena(100, None),
            ],
            steps: (0..4)
                .map(|i| CpuStep {
                    kernel: 0,
                    args: vec![i + 1, i],
                    zero: vec![],
                    origin: None,
                })
                .collect(),
            inputs: vec![io("x", 0)],
            outputs: vec![io("y", 4)],
            arena_bytes: 0,
        }
    }

    fn offset(p: &CpuPlan, b: usize) -> u64 {
        match p.buffers[b].kind {
            CpuBufferKind::Arena { offset, .. } => offset,
            _ => unreachable!(),
        }
    }

    #[test]
    fn chain_reuses_two_slots_and_checks() {
        let mut p = chain();
        plan_memory(&mut p);
        p.check(0).unwrap();
        // 400 bytes each, aligned to 448; x,a,b,c,y: live pairs never share.
        assert_eq!(p.arena_bytes, 2 * 448, "{p:#?}");
        for s in &p.steps {
            let (o, i) = (offset(&p, s.args[0]), offset(&p, s.args[1]));
            assert_ne!(o, i, "a step's output shares its input's bytes");
        }
        assert!(p.steps.iter().all(|s| s.zero.is_empty()));
    }

    #[test]
    fn in_place_steps_share_one_slot() {
        // Every step may compute its output over its input: the whole chain fits in one slot.
        let mut p = chain();
        plan_memory_in_place(&mut p, &vec![vec![(1, 0)]; 4]);
        p.check(0).unwrap();
        assert_eq!(p.arena_bytes, 448, "{p:#?}");
        // Only where the input dies: with `a` also an output, step 1 (a -> b) cannot.
        let mut p = chain();
        p.outputs.push(PlanIo {
            name: "a".into(),
            buffer: 1,
            dtype: "f32".into(),
            shape: vec![100],
            value: None,
            batch: false,
            dims: Vec::new(),
        });
        plan_memory_in_place(&mut p, &vec![vec![(1, 0)]; 4]);
        assert_ne!(offset(&p, 1), offset(&p, 2));
        // Sizes must match.
        let mut p = chain();
        p.buffers[2].len = 50;
        plan_memory_in_place(&mut p, &vec![vec![(1, 0)]; 4]);
        assert_ne!(offset(&p, 1), offset(&p, 2));
        assert_ne!(offset(&p, 2), offset(&p, 3));
    }

    #[test]
    fn read_before_write_is_zeroed() {
        let mut p = chain();
        // Step 0 now reads buffer 1 (its output) first: accumulate into it.
        p.kernels[0].params[0].reads = true;
        plan_memory(&mut p);
        assert_eq!(p.steps[0].zero, vec![1]);
        // Buffer 2 was written by step 0 before step 1 reads-and-writes it... no: step 1
        // reads-writes buffer 2 before any write to it.
        assert_eq!(p.steps[1].zero, vec![2]);
    }

    #[test]
    fn outputs_and_inputs_stay_alive() {
        let mut p = chain();
        p.outputs.push(PlanIo {
            name: "a".into(),
            buffer: 1,
            dtype: "f32".into(),
            shape: vec![100],
            value: None,
            batch: false,
            dims: Vec::new(),
        });
        plan_memory(&mut p);
        let offs: Vec<u64> = (0..5).map(|b| offset(&p, b)).collect();
        // a (an output) is alive to the end, so nothing after it reuses its bytes.
        for b in [2, 3, 4] {
            assert_ne!(offs[b], offs[1]);
        }
    }

    #[test]
    fn parts_of_one_storage_are_zeroed_apart() {
        // Steps 0 and 1 accumulate into the two halves of buffer 5 (aliases 1 and 2 at byte
        // offsets 0 and 200): each zeroes its own half, so step 1 keeps step 0's results.
        let mut p = chain();
        p.kernels[0].params[0].reads = true;
        p.kernels[0].params[0].len = 50;
        p.kernels[0].params[1].len = 50;
        p.buffers.push(arena(100, None));
        for (b, offset) in [(1, 0), (2, 200)] {
            p.buffers[b] = CpuBuffer {
                dtype: "f32".into(),
                len: 50,
                kind: CpuBufferKind::Alias { of: 5, offset },
            };
        }
        p.steps.truncate(2);
        p.steps[1].args = vec![2, 0];
        p.outputs[0].buffer = 5;
        plan_memory(&mut p);
        p.check(0).unwrap();
        assert_eq!(
            (p.steps[0].zero.clone(), p.steps[1].zero.clone()),
            (vec![1], vec![2])
        );
        // An alias reaching past its storage is refused.
        p.buffers[2].kind = CpuBufferKind::Alias { of: 5, offset: 204 };
        assert!(p.check(0).is_err());
    }
}
