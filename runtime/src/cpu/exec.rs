//! The CPU executor: runs a checked [`CpuPlan`] with compiled kernels. Shared by code the
//! compiler JIT-compiles (`mlc run --engine cpu`) and code loaded from an artifact.
//!
//! Per run: the inputs are copied into their arena slots (or, when no step writes them, read
//! where the caller keeps them), every step's kernel is called on its
//! buffers (split across the thread pool when its body is one parallel loop with enough work),
//! and the outputs are copied out. Arenas are reused across runs (one per concurrent run), so a
//! steady-state run allocates nothing but its outputs.
// Kernels are called through raw function pointers on raw buffer pointers; the plan is checked
// first so that every pointer handed over is inside memory this executor owns.
#![allow(unsafe_code)]

use super::abi::KernelFn;
use super::plan::{CpuBufferKind, CpuPlan, CpuPlanError};
use super::pool::Pool;
use crate::kernels::igemm::{PackedInt, Slot};
use crate::npy::{ElemType, NpyArray, NpyData};
use crate::plan::dtype_size;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

/// Below this estimate of a step's work (see `CpuKernel::work`) it runs on one thread.
/// Tasks per pool thread a split step is cut into (see the executor's step loop).
const TASKS_PER_THREAD: i64 = 4;

const MIN_PARALLEL_WORK: u64 = 1 << 15;

/// What a new arena holds. Debug builds (the tests) fill it with all-ones bytes (NaN, -1) so
/// that a kernel reading memory nothing wrote (and the memory plan did not zero) gives wrong
/// results at once, instead of only once arenas are reused.
const FRESH_ARENA: u64 = if cfg!(debug_assertions) { u64::MAX } else { 0 };

/// Why a run failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum RunError {
    #[error("the model expects {expected} inputs, got {got}")]
    InputCount { expected: usize, got: usize },
    #[error("input {index} ({name}): expected {expected}, got {got}")]
    InputType {
        index: usize,
        name: String,
        expected: String,
        got: String,
    },
    /// The artifact was compiled with this input's value baked in (it feeds a shape) and was
    /// given another value.
    #[error(
        "input {name}: this artifact was compiled for one value of this input (it determines a shape) and was given another; compile again with `--input {name}=FILE`"
    )]
    Specialized { name: String },
    #[error("step {step} (kernel {kernel}{}): an index read from data is out of bounds", origin.as_ref().map(|o| format!(", node {o}")).unwrap_or_default())]
    OutOfBounds {
        step: usize,
        kernel: String,
        origin: Option<String>,
    },
    #[error("output {name}: {message}")]
    Output { name: String, message: String },
    /// An artifact compiled for several shapes was given inputs of none of them.
    #[error(
        "the inputs ({given}) have none of the shapes the artifact was compiled for: {}; compile again with those sizes (--dim / --shape)",
        compiled.join("; ")
    )]
    NoVariant {
        given: String,
        compiled: Vec<String>,
    },
}

/// What kernels may cache about the executor's constants while it runs: the weights' address
/// range (bytes there never change while the executor lives), weights pre-packed for the
/// GEMM kernels, by (address, k, n, row stride, column stride), and integer weights
/// pre-packed for the integer kernels (see [`packed_int_weight`]), and other values kernels
/// derive from weights (see [`derived_weight`]).
#[derive(Debug, Default)]
pub struct ConstCache {
    range: (usize, usize),
    packed: Mutex<
        std::collections::HashMap<
            (usize, usize, usize, usize, usize),
            std::sync::Arc<crate::kernels::gemm::PackedB>,
        >,
    >,
    packed_int: Mutex<std::collections::HashMap<IntKey, Option<std::sync::Arc<PackedInt>>>>,
    derived: Mutex<std::collections::HashMap<DerivedKey, Option<Derived>>>,
}

/// A derived value's identity: its type, the weight's address, and the kernel's own key.
type DerivedKey = (std::any::TypeId, usize, Vec<u64>);
type Derived = std::sync::Arc<dyn std::any::Any + Send + Sync>;

/// An integer weight's identity: address, element size, slot, rows, columns, row and column
/// stride.
type IntKey = (usize, usize, Slot, usize, usize, usize, usize);

#[cfg(test)]
impl ConstCache {
    /// A cache for weights at addresses `lo..hi` (tests of the kernels that use it).
    pub(crate) fn for_range(lo: usize, hi: usize) -> ConstCache {
        ConstCache {
            range: (lo, hi),
            ..ConstCache::default()
        }
    }

    /// The f32 weights packed so far.
    pub(crate) fn packed_count(&self) -> usize {
        self.packed.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The integer weights packed so far, and how many of them the kernels refused.
    pub(crate) fn packed_int_count(&self) -> (usize, usize) {
        let map = self.packed_int.lock().unwrap_or_else(|e| e.into_inner());
        (map.len(), map.values().filter(|p| p.is_none()).count())
    }
}

thread_local! {
    static CONSTS: std::cell::Cell<Option<*const ConstCache>> = const { std::cell::Cell::new(None) };
}

/// Runs `body` with `cache` as the calling thread's constant cache (see [`packed_weight`]).
pub(crate) fn with_consts<R>(cache: &ConstCache, body: impl FnOnce() -> R) -> R {
    struct Reset(Option<*const ConstCache>);
    impl Drop for Reset {
        fn drop(&mut self) {
            CONSTS.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(CONSTS.with(|c| c.replace(Some(cache as *const ConstCache))));
    body()
}

/// When the `k×n` matrix at `data` (strides `rs`, `cs`) lies in the weights of the executor
/// running on this thread, its packed form, made by `pack` once per executor and reused by
/// every later call; `None` otherwise (not a weight, no executor, or `pack` failed).
pub fn packed_weight(
    data: &[f32],
    k: usize,
    n: usize,
    rs: usize,
    cs: usize,
    pack: impl FnOnce() -> Option<crate::kernels::gemm::PackedB>,
) -> Option<std::sync::Arc<crate::kernels::gemm::PackedB>> {
    with_weights_cache(data, |cache| {
        let key = (data.as_ptr() as usize, k, n, rs, cs);
        let mut map = cache.packed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pb) = map.get(&key) {
            return Some(pb.clone());
        }
        let pb = std::sync::Arc::new(pack()?);
        map.insert(key, pb.clone());
        Some(pb)
    })?
}

/// `f` on the constant cache of the executor running on this thread, if `data` lies in its
/// weights; `None` otherwise.
fn with_weights_cache<T, R>(data: &[T], f: impl FnOnce(&ConstCache) -> R) -> Option<R> {
    let p = CONSTS.with(|c| c.get())?;
    // SAFETY: `with_consts` set the pointer from a reference that outlives its `body` and
    // resets it before returning; only this thread reads it, within this call.
    let cache = unsafe { &*p };
    let (lo, hi) = cache.range;
    let start = data.as_ptr() as usize;
    if start < lo || start + std::mem::size_of_val(data) > hi {
        return None;
    }
    Some(f(cache))
}

/// [`packed_weight`] for the integer kernels: when the `rows×cols` operand at `data` (strides
/// `rs`, `cs`; `A` or `B` as `slot` says) lies in the weights of the executor running on
/// this thread, its packed form, made by `pack` once per executor; `None` otherwise, and
/// also, without asking `pack` again, when `pack` failed for it before (an operand the
/// kernels refuse stays refused).
pub fn packed_int_weight<T>(
    data: &[T],
    slot: Slot,
    (rows, cols): (usize, usize),
    (rs, cs): (usize, usize),
    pack: impl FnOnce() -> Option<PackedInt>,
) -> Option<std::sync::Arc<PackedInt>> {
    with_weights_cache(data, |cache| {
        let key = (
            data.as_ptr() as usize,
            std::mem::size_of::<T>(),
            slot,
            rows,
            cols,
            rs,
            cs,
        );
        let mut map = cache.packed_int.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key)
            .or_insert_with(|| pack().map(std::sync::Arc::new))
            .clone()
    })?
}

/// Whether `data` lies in the weights of the executor running on this thread (its bytes never
/// change while the executor lives).
pub fn is_weight<T>(data: &[T]) -> bool {
    with_weights_cache(data, |_| ()).is_some()
}

/// When `data` lies in the weights of the executor running on this thread, the value `make`
/// derives from it (and whatever `key` says), made once per executor: `Some(None)` when `make`
/// gave nothing (not asked again). `None` when `data` is not a weight (or no executor runs).
pub fn derived_weight<T, D: std::any::Any + Send + Sync>(
    data: &[T],
    key: &[u64],
    make: impl FnOnce() -> Option<D>,
) -> Option<Option<std::sync::Arc<D>>> {
    with_weights_cache(data, |cache| {
        let id = (
            std::any::TypeId::of::<D>(),
            data.as_ptr() as usize,
            key.to_vec(),
        );
        let mut map = cache.derived.lock().unwrap_or_else(|e| e.into_inner());
        let v = map
            .entry(id)
            .or_insert_with(|| make().map(|d| std::sync::Arc::new(d) as Derived));
        v.clone().and_then(|d| d.downcast::<D>().ok())
    })
}

/// An artifact's constants, 8-byte aligned, and what the kernels cache about them (weights
/// packed for the GEMM kernels). Executors of one artifact's variants share one.
#[derive(Debug)]
pub struct Weights {
    words: Vec<u64>,
    /// Length in bytes (the plan's constants must lie within).
    bytes: u64,
    cache: ConstCache,
}

impl Weights {
    /// Copies `bytes` (a weights section) into aligned memory.
    pub fn new(bytes: &[u8]) -> std::sync::Arc<Weights> {
        let mut words = vec![0u64; self::words(bytes.len() as u64)];
        for (dst, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            *dst = u64::from_le_bytes(b);
        }
        let range = (
            words.as_ptr() as usize,
            words.as_ptr() as usize + std::mem::size_of_val(words.as_slice()),
        );
        std::sync::Arc::new(Weights {
            words,
            bytes: bytes.len() as u64,
            cache: ConstCache {
                range,
                ..ConstCache::default()
            },
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }
}

/// A plan bound to its code and weights, ready to run many times (from several threads too:
/// concurrent runs take separate arenas and share the thread pool one job at a time).
pub struct Executor {
    plan: CpuPlan,
    entries: Vec<KernelFn>,
    /// Owns the code `entries` point into.
    _code: Box<dyn std::any::Any + Send + Sync>,
    weights: std::sync::Arc<Weights>,
    arenas: Mutex<Vec<Vec<u64>>>,
    pool: Mutex<Option<std::sync::Arc<Pool>>>,
    /// Per plan input: `Some(alignment)` when the kernels may read it where the caller keeps
    /// it, given a pointer with that alignment ([`read_in_place`]), instead of from a copy in
    /// the arena.
    in_place: Vec<Option<usize>>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Executor({} kernels, {} steps, arena {} bytes)",
            self.plan.kernels.len(),
            self.plan.steps.len(),
            self.plan.arena_bytes
        )
    }
}

/// The pointers handed to a kernel; threads of a split step share them (they write disjoint
/// elements: the parallel loop's contract).
struct Params(Vec<*mut u8>);
// SAFETY: the pointers refer to the arena, the weights and the input bytes of a run, alive until
// the step returns.
unsafe impl Send for Params {}
// SAFETY: as above; kernels only read the array itself.
unsafe impl Sync for Params {}

/// Per input of a checked plan: when every step only reads its storage (no parameter on it
/// has `writes`, no step zeroes it), the alignment a caller's pointer needs for the kernels to
/// read the caller's bytes directly, skipping the copy into the arena: the element size, since
/// kernels assume nothing more (vector loads are unaligned, edges masked or overlapped,
/// nothing is read past a parameter's length). [`Executor::run_in`] checks it per run.
fn read_in_place(plan: &CpuPlan) -> Vec<Option<usize>> {
    plan.inputs
        .iter()
        .map(|io| {
            let s = plan.storage_of(io.buffer);
            let written = plan.steps.iter().any(|st| {
                let writes = st
                    .args
                    .iter()
                    .zip(&plan.kernels[st.kernel].params)
                    .any(|(&a, p)| p.writes && plan.storage_of(a) == s);
                writes || st.zero.iter().any(|&z| plan.storage_of(z) == s)
            });
            (!written).then(|| dtype_size(&io.dtype).unwrap_or(1))
        })
        .collect()
}

fn words(bytes: u64) -> usize {
    (bytes as usize).div_ceil(8).max(1)
}

impl Executor {
    /// Binds `plan` to kernel entry points and weights after checking the plan.
    ///
    /// # Safety
    /// `entries[i]` must be the code of `plan.kernels[i]`, compiled for this ABI
    /// ([`super::abi`]) with its helper table already filled, and must stay valid while
    /// `code` lives. The plan's checks then guarantee that kernels only touch memory the
    /// executor owns (and read the run's input bytes), provided the kernels respect their
    /// parameter lengths and `writes` flags (generated code does: data-dependent indices are
    /// checked, others are proven by lowering).
    pub unsafe fn new(
        plan: CpuPlan,
        entries: Vec<KernelFn>,
        code: Box<dyn std::any::Any + Send + Sync>,
        weights: &[u8],
    ) -> Result<Executor, CpuPlanError> {
        // SAFETY: the caller's contract, forwarded.
        unsafe { Executor::with_weights(plan, entries, code, Weights::new(weights)) }
    }

    /// [`Executor::new`] on weights shared with other executors (the variants of one
    /// artifact): they also share the weights packed for the kernels.
    ///
    /// # Safety
    /// As for [`Executor::new`].
    pub unsafe fn with_weights(
        plan: CpuPlan,
        entries: Vec<KernelFn>,
        code: Box<dyn std::any::Any + Send + Sync>,
        weights: std::sync::Arc<Weights>,
    ) -> Result<Executor, CpuPlanError> {
        plan.check(weights.bytes)?;
        if entries.len() != plan.kernels.len() {
            return Err(CpuPlanError::Invalid(format!(
                "{} entry points for {} kernels",
                entries.len(),
                plan.kernels.len()
            )));
        }
        let in_place = read_in_place(&plan);
        Ok(Executor {
            plan,
            entries,
            _code: code,
            weights,
            arenas: Mutex::new(Vec::new()),
            pool: Mutex::new(None),
            in_place,
        })
    }

    pub fn plan(&self) -> &CpuPlan {
        &self.plan
    }

    /// Bytes of working memory a run needs (the arena), besides inputs, outputs and weights.
    pub fn arena_bytes(&self) -> u64 {
        self.plan.arena_bytes
    }

    fn pool(&self, threads: usize) -> std::sync::Arc<Pool> {
        let mut p = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        match &*p {
            Some(pool) if pool.threads() == threads => pool.clone(),
            _ => {
                let pool = std::sync::Arc::new(Pool::new(threads));
                *p = Some(pool.clone());
                pool
            }
        }
    }

    /// Runs on little-endian input bytes (in the plan's input order, each exactly its
    /// buffer's size) with up to `threads` threads; returns every output's bytes in order.
    pub fn run_bytes(&self, inputs: &[&[u8]], threads: usize) -> Result<Vec<Vec<u8>>, RunError> {
        self.run_bytes_profiled(inputs, threads, None)
    }

    /// [`run_bytes`](Self::run_bytes), adding each step's wall time (seconds) to
    /// `profile[step]` when given (resized to the step count).
    pub fn run_bytes_profiled(
        &self,
        inputs: &[&[u8]],
        threads: usize,
        profile: Option<&mut Vec<f64>>,
    ) -> Result<Vec<Vec<u8>>, RunError> {
        let p = &self.plan;
        if inputs.len() != p.inputs.len() {
            return Err(RunError::InputCount {
                expected: p.inputs.len(),
                got: inputs.len(),
            });
        }
        for (i, (io, x)) in p.inputs.iter().zip(inputs).enumerate() {
            let want = p.buffers[io.buffer].bytes();
            if x.len() as u64 != want {
                return Err(RunError::InputType {
                    index: i,
                    name: io.name.clone(),
                    expected: format!("{want} bytes ({} {:?})", io.dtype, io.shape),
                    got: format!("{} bytes", x.len()),
                });
            }
            if io.value.as_deref().is_some_and(|v| v != *x) {
                return Err(RunError::Specialized {
                    name: io.name.clone(),
                });
            }
        }
        let threads = threads.max(1);
        let mut arena = self
            .arenas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_else(|| vec![FRESH_ARENA; words(p.arena_bytes)]);
        let result = with_consts(&self.weights.cache, || {
            if threads > 1 {
                let pool = self.pool(threads);
                super::pool::with_pool(&pool, || self.run_in(&mut arena, inputs, threads, profile))
            } else {
                self.run_in(&mut arena, inputs, threads, profile)
            }
        });
        self.arenas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(arena);
        result
    }

    fn run_in(
        &self,
        arena: &mut [u64],
        inputs: &[&[u8]],
        threads: usize,
        mut profile: Option<&mut Vec<f64>>,
    ) -> Result<Vec<Vec<u8>>, RunError> {
        let p = &self.plan;
        if let Some(prof) = profile.as_deref_mut() {
            prof.resize(p.steps.len(), 0.0);
        }
        let abase = arena.as_mut_ptr() as *mut u8;
        let wbase = self.weights.words.as_ptr() as *mut u8;
        // Base pointers of every buffer: arena and weights first, then the inputs (which may
        // stay where the caller keeps them), then aliases (the plan allows one hop).
        let mut ptrs: Vec<*mut u8> = p
            .buffers
            .iter()
            .map(|b| match b.kind {
                // SAFETY (both adds): `check` proved the ranges lie in the arena / weights.
                CpuBufferKind::Arena { offset, .. } => unsafe { abase.add(offset as usize) },
                CpuBufferKind::Const { offset, .. } => unsafe { wbase.add(offset as usize) },
                CpuBufferKind::Alias { .. } => std::ptr::null_mut(),
            })
            .collect();
        for ((io, x), &in_place) in p.inputs.iter().zip(inputs).zip(&self.in_place) {
            if in_place.is_some_and(|align| (x.as_ptr() as usize).is_multiple_of(align)) {
                // No kernel writes this input's storage (`read_in_place`), so handing the
                // kernels the caller's bytes, borrowed for the whole run, is sound.
                ptrs[io.buffer] = x.as_ptr() as *mut u8;
            } else {
                // SAFETY: the input's arena range holds exactly `x.len()` bytes (checked in
                // `run_bytes` against the buffer size, and by `check` against the arena).
                unsafe { std::ptr::copy_nonoverlapping(x.as_ptr(), ptrs[io.buffer], x.len()) };
            }
        }
        for (i, b) in p.buffers.iter().enumerate() {
            if let CpuBufferKind::Alias { of, offset } = b.kind {
                // `check` proved `offset` plus the alias's bytes lie inside `of`; an input
                // handed in place has its buffer's size (`run_bytes`), so the same holds there.
                ptrs[i] = ptrs[of].wrapping_add(offset as usize);
            }
        }
        let pool = (threads > 1).then(|| self.pool(threads));
        let ctl = [
            AtomicI64::new(0),
            AtomicI64::new(threads as i64),
            AtomicI64::new(0),
        ];
        for (si, st) in p.steps.iter().enumerate() {
            let started = profile.is_some().then(std::time::Instant::now);
            let k = &p.kernels[st.kernel];
            for &z in &st.zero {
                let n = p.buffers[z].bytes() as usize;
                // SAFETY: an arena buffer (checked), `n` bytes inside the arena.
                unsafe { std::ptr::write_bytes(ptrs[z], 0, n) };
            }
            let mut params: Vec<*mut u8> = st.args.iter().map(|&a| ptrs[a]).collect();
            params.push(ctl[0].as_ptr() as *mut u8);
            let params = Params(params);
            let entry = self.entries[st.kernel];
            let split = match (k.split, &pool) {
                (Some(n), Some(pool)) if n > 1 && k.work >= MIN_PARALLEL_WORK => Some((n, pool)),
                _ => None,
            };
            // A split step keeps its library calls (matmul) on their own thread.
            ctl[1].store(
                if split.is_some() { 1 } else { threads as i64 },
                Ordering::SeqCst,
            );
            match split {
                Some((n, pool)) => {
                    // More tasks than threads, taken from the pool's shared counter: a thread
                    // the OS preempts (another process on the core) holds up one small task,
                    // not a whole share of the step, while the others take the rest.
                    let t = (pool.threads() as i64 * TASKS_PER_THREAD).min(n);
                    let chunk = (n + t - 1) / t;
                    let params = &params;
                    pool.run(t as usize, &|c| {
                        let (lo, hi) = (c as i64 * chunk, ((c as i64 + 1) * chunk).min(n));
                        if lo < hi {
                            entry(params.0.as_ptr(), lo, hi);
                        }
                    });
                }
                None => entry(params.0.as_ptr(), 0, k.split.unwrap_or(1)),
            }
            if let (Some(prof), Some(t)) = (profile.as_deref_mut(), started) {
                prof[si] += t.elapsed().as_secs_f64();
            }
            if ctl[0].load(Ordering::SeqCst) != 0 {
                return Err(RunError::OutOfBounds {
                    step: si,
                    kernel: k.name.clone(),
                    origin: st.origin.clone(),
                });
            }
        }
        Ok(p.outputs
            .iter()
            .map(|io| {
                let n = p.buffers[io.buffer].bytes() as usize;
                let mut out = vec![0u8; n];
                // SAFETY: the output buffer's storage holds at least `n` bytes (checked).
                unsafe { std::ptr::copy_nonoverlapping(ptrs[io.buffer], out.as_mut_ptr(), n) };
                out
            })
            .collect())
    }

    /// `Some(k)` when `inputs` are a batch of `k > 1` times the compiled one along axis 0 of the
    /// plan's batch inputs (and exactly the compiled shapes elsewhere), for a plan whose batch
    /// may be sliced ([`PlanIo::batch`]).
    pub fn batch_multiple(&self, inputs: &[NpyArray]) -> Option<usize> {
        let p = &self.plan;
        let mut k = None;
        for (io, x) in p.inputs.iter().zip(inputs) {
            if x.elem.name() != io.dtype || !matches!(x.data, NpyData::Bytes(_)) {
                return None;
            }
            if !io.batch {
                if x.shape != io.shape {
                    return None;
                }
                continue;
            }
            if !io.accepts(&x.shape) || io.value.is_some() {
                return None;
            }
            let (&unit, &given) = (io.shape.first()?, x.shape.first()?);
            if k.is_some_and(|k| k != given / unit) {
                return None;
            }
            k = Some(given / unit);
        }
        k.filter(|&k| k > 1 && inputs.len() == p.inputs.len() && p.outputs.iter().all(|o| o.batch))
    }

    /// Runs a batch of `k` times the compiled one as `k` slices along axis 0 (see
    /// [`Self::batch_multiple`]) and concatenates the outputs.
    fn run_sliced(
        &self,
        inputs: &[NpyArray],
        k: usize,
        threads: usize,
    ) -> Result<Vec<(String, NpyArray)>, RunError> {
        let p = &self.plan;
        let mut slices: Vec<Vec<&[u8]>> = vec![Vec::with_capacity(inputs.len()); k];
        for (index, (io, x)) in p.inputs.iter().zip(inputs).enumerate() {
            let NpyData::Bytes(b) = &x.data else {
                return Err(RunError::InputType {
                    index,
                    name: io.name.clone(),
                    expected: io.dtype.clone(),
                    got: "strings".into(),
                });
            };
            let part = b.len() / k;
            for (i, s) in slices.iter_mut().enumerate() {
                s.push(if io.batch {
                    &b[i * part..(i + 1) * part]
                } else {
                    b.as_slice()
                });
            }
        }
        // Slices are independent runs: with threads to spare, several run at once (each on its
        // own arena, with its share of the threads) rather than one after another.
        let workers = threads.clamp(1, k);
        let per = (threads / workers).max(1);
        let results: Vec<Result<Vec<Vec<u8>>, RunError>> = if workers == 1 {
            slices.iter().map(|s| self.run_bytes(s, threads)).collect()
        } else {
            let mut done: Vec<Option<Result<Vec<Vec<u8>>, RunError>>> = vec![None; k];
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..workers)
                    .map(|w| {
                        let slices = &slices;
                        scope.spawn(move || {
                            (w..k)
                                .step_by(workers)
                                .map(|i| (i, self.run_bytes(&slices[i], per)))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                for h in handles {
                    // A worker that panicked lost its slices; they are reported below.
                    if let Ok(list) = h.join() {
                        for (i, r) in list {
                            done[i] = Some(r);
                        }
                    }
                }
            });
            done.into_iter()
                .map(|r| {
                    r.unwrap_or_else(|| {
                        Err(RunError::Output {
                            name: String::new(),
                            message: "a batch slice's worker thread panicked".into(),
                        })
                    })
                })
                .collect()
        };
        let mut outs: Vec<Vec<u8>> = vec![Vec::new(); p.outputs.len()];
        for r in results {
            for (o, b) in outs.iter_mut().zip(r?) {
                o.extend_from_slice(&b);
            }
        }
        self.npy_outputs(outs, k)
    }

    /// Runs on `.npy`-style arrays (checked against the plan's input types and shapes). A plan
    /// whose batch may be sliced also takes any multiple of the compiled batch.
    pub fn run(
        &self,
        inputs: &[NpyArray],
        threads: usize,
    ) -> Result<Vec<(String, NpyArray)>, RunError> {
        let p = &self.plan;
        if inputs.len() != p.inputs.len() {
            return Err(RunError::InputCount {
                expected: p.inputs.len(),
                got: inputs.len(),
            });
        }
        if let Some(k) = self.batch_multiple(inputs) {
            return self.run_sliced(inputs, k, threads);
        }
        let mut bytes = Vec::with_capacity(inputs.len());
        for (i, (io, x)) in p.inputs.iter().zip(inputs).enumerate() {
            let ok = x.elem.name() == io.dtype && x.shape == io.shape;
            match (&x.data, ok) {
                (NpyData::Bytes(b), true) => bytes.push(b.as_slice()),
                _ => {
                    return Err(RunError::InputType {
                        index: i,
                        name: io.name.clone(),
                        expected: format!("{}{:?}", io.dtype, io.shape),
                        got: format!("{}{:?}", x.elem.name(), x.shape),
                    });
                }
            }
        }
        let outs = self.run_bytes(&bytes, threads)?;
        self.npy_outputs(outs, 1)
    }

    /// The outputs' bytes as arrays of their planned shapes, the leading dim times `k` (the
    /// number of batch slices).
    fn npy_outputs(
        &self,
        outs: Vec<Vec<u8>>,
        k: usize,
    ) -> Result<Vec<(String, NpyArray)>, RunError> {
        self.plan
            .outputs
            .iter()
            .zip(outs)
            .map(|(io, b)| {
                let err = |message: String| RunError::Output {
                    name: io.name.clone(),
                    message,
                };
                let elem = ElemType::from_name(&io.dtype)
                    .ok_or_else(|| err(format!("type {} has no .npy form", io.dtype)))?;
                let mut shape = io.shape.clone();
                if let Some(d) = shape.first_mut() {
                    *d *= k;
                }
                let a = NpyArray::from_le_bytes(elem, shape, b).map_err(|e| err(e.to_string()))?;
                Ok((io.name.clone(), a))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::plan::*;
    use crate::plan::PlanIo;

    /// Kernel: `out[0] = address of its parameter 0` (then `x[0] += 1` when it writes `x`), so a
    /// test sees which bytes it was handed.
    extern "C" fn where_is_x(params: *const *mut u8, _: i64, _: i64) {
        // SAFETY: the plans below give it an f32 `x` of 4 elements and a u64 `out`.
        unsafe {
            let (x, out) = (*params, *params.add(1));
            out.cast::<u64>().write(x as u64);
        }
    }

    extern "C" fn where_is_x_and_bump(params: *const *mut u8, lo: i64, hi: i64) {
        where_is_x(params, lo, hi);
        // SAFETY: as above; this kernel's plan declares that it writes `x`.
        unsafe {
            let x = (*params).cast::<f32>();
            x.write_unaligned(x.read_unaligned() + 1.0);
        }
    }

    fn plan(writes_x: bool) -> CpuPlan {
        let param = |dtype: &str, len, writes| CpuParam {
            dtype: dtype.into(),
            len,
            writes,
            reads: true,
        };
        let io = |name: &str, buffer, dtype: &str, len| PlanIo {
            name: name.into(),
            buffer,
            dtype: dtype.into(),
            shape: vec![len],
            value: None,
            batch: false,
            dims: Vec::new(),
        };
        let buf = |dtype: &str, len, offset, input| CpuBuffer {
            dtype: dtype.into(),
            len,
            kind: CpuBufferKind::Arena { offset, input },
        };
        CpuPlan {
            version: CPU_PLAN_VERSION,
            abi: crate::cpu::abi::ABI_VERSION,
            helpers: vec![],
            features: vec![],
            kernels: vec![CpuKernel {
                name: "k".into(),
                symbol: "k".into(),
                params: vec![param("f32", 4, writes_x), param("u64", 1, true)],
                split: None,
                work: 1,
            }],
            buffers: vec![
                buf("f32", 4, 0, Some(0)),
                buf("u64", 1, 64, None),
                // `x` seen through a reshape: the kernel takes the alias.
                CpuBuffer {
                    dtype: "f32".into(),
                    len: 4,
                    kind: CpuBufferKind::Alias { of: 0, offset: 0 },
                },
            ],
            steps: vec![CpuStep {
                kernel: 0,
                args: vec![2, 1],
                zero: vec![],
                origin: None,
            }],
            inputs: vec![io("x", 0, "f32", 4)],
            outputs: vec![io("out", 1, "u64", 1)],
            arena_bytes: 128,
        }
    }

    fn executor(writes_x: bool) -> Executor {
        let k: KernelFn = if writes_x {
            where_is_x_and_bump
        } else {
            where_is_x
        };
        // SAFETY: the kernels respect the plans' parameter lengths.
        unsafe { Executor::new(plan(writes_x), vec![k], Box::new(()), &[]) }.expect("plan")
    }

    fn seen(e: &Executor, x: &[u8]) -> usize {
        let out = e.run_bytes(&[x], 1).expect("runs");
        u64::from_le_bytes(out[0].as_slice().try_into().expect("8 bytes")) as usize
    }

    #[test]
    fn inputs_no_kernel_writes_are_read_where_the_caller_keeps_them() {
        let e = executor(false);
        assert_eq!(e.in_place, vec![Some(4)]);
        // Word-aligned caller bytes, and the same bytes one byte off an f32 boundary.
        let words = [0u32; 5];
        // SAFETY: the 20 bytes of `words`.
        let all: &[u8] = unsafe { std::slice::from_raw_parts(words.as_ptr().cast(), 20) };
        let (aligned, odd) = (&all[..16], &all[1..17]);
        assert_eq!(
            seen(&e, aligned),
            aligned.as_ptr() as usize,
            "aliases follow the input"
        );
        let copied = seen(&e, odd);
        assert_ne!(
            copied,
            odd.as_ptr() as usize,
            "a misaligned input must be copied"
        );
        assert!(copied.is_multiple_of(4));
    }

    #[test]
    fn inputs_a_kernel_writes_are_copied_into_the_arena() {
        let e = executor(true);
        assert_eq!(e.in_place, vec![None]);
        let x = 5f32.to_le_bytes().repeat(4);
        assert_ne!(seen(&e, &x), x.as_ptr() as usize);
        assert_eq!(
            x,
            5f32.to_le_bytes().repeat(4),
            "the caller's bytes are untouched"
        );
    }

    #[test]
    fn inputs_a_step_zeroes_are_copied_into_the_arena() {
        let mut p = plan(false);
        p.steps[0].zero = vec![0];
        assert_eq!(read_in_place(&p), vec![None]);
    }
}
