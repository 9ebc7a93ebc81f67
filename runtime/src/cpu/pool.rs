//! A fixed pool of worker threads for the steps of one model: the caller publishes a job of `n`
//! tasks, workers (and the caller) take task indices from a shared counter, and the caller
//! returns when all are done.
//!
//! Batch-1 latency is made of many short steps (tens of microseconds each), so spawning threads
//! per step (`std::thread::scope`, ~20-50 µs) would cost as much as the work. Workers spin
//! briefly on the job counter after each job (the next step usually follows within
//! microseconds), then sleep on a condition variable.
// Jobs are borrowed closures handed to long-lived threads: the lifetime is erased, and `run`
// does not return before every worker has finished with the closure. See the SAFETY comments.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// How long an idle worker spins before sleeping, in spin-loop iterations (~tens of µs).
const SPIN: u32 = 20_000;

type Task = dyn Fn(usize) + Sync;

struct Shared {
    /// Incremented for every published job; workers wait for it to change.
    epoch: AtomicU64,
    /// The current job: a `&Task` with its lifetime erased, and its task count.
    job: Mutex<Option<(*const Task, usize)>>,
    next: AtomicUsize,
    done: AtomicUsize,
    /// Workers that hold the current job's closure (see `run`).
    active: AtomicUsize,
    /// Workers asleep on `wake` (or about to be: counted under `sleep` before the last look at
    /// `epoch`). `run` only takes the lock and notifies when it is nonzero: a notify is a futex
    /// syscall, and most jobs find their workers still spinning.
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
}

// SAFETY: the raw closure pointer in `job` is only dereferenced while `run` keeps the closure
// alive (it waits for `active` to drop to zero), and the closure is `Sync`.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

/// A pool of `threads - 1` workers plus the calling thread.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serializes jobs: one `run` at a time.
    lock: Mutex<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({} threads)", self.threads())
    }
}

impl Pool {
    /// A pool running jobs on `threads` threads in all (the caller included).
    pub fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: Mutex::new(None),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let workers = (1..threads.max(1))
            .map(|i| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("mlc-worker-{i}"))
                    .spawn(move || worker(&s))
                    .expect("spawning a worker thread")
            })
            .collect();
        Pool {
            shared,
            workers,
            lock: Mutex::new(()),
        }
    }

    /// Threads a job runs on, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(0)`, ..., `f(n - 1)` across the pool and returns when all have returned.
    pub fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n == 0 {
            return;
        }
        if n == 1 || self.workers.is_empty() {
            (0..n).for_each(f);
            return;
        }
        let _one_job = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: the erased-lifetime pointer is only used by workers between here and the
        // wait for `active == 0` below, while `f` is borrowed by this call.
        let erased: *const Task =
            unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const Task>(f) };
        // Counters first: a worker late from the previous job that reads the new one must see
        // them reset.
        s.next.store(0, Ordering::SeqCst);
        s.done.store(0, Ordering::SeqCst);
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some((erased, n));
        s.epoch.fetch_add(1, Ordering::SeqCst);
        // A worker counts itself a sleeper (under `sleep`) before its last look at `epoch`, and
        // both sides use SeqCst: either it sees the new epoch and does not sleep, or this load
        // sees it counted, and taking `sleep` here waits until it is inside `wait`.
        if s.sleepers.load(Ordering::SeqCst) != 0 {
            let _g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        take_tasks(s, f, n);
        while s.done.load(Ordering::Acquire) < n {
            std::hint::spin_loop();
        }
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // A worker may still be between taking the job and finding no task left.
        while s.active.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
    }
}

fn take_tasks(s: &Shared, f: &(dyn Fn(usize) + Sync), n: usize) {
    loop {
        let i = s.next.fetch_add(1, Ordering::AcqRel);
        if i >= n {
            break;
        }
        // A panicking task must not kill the worker or leave the caller waiting forever.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i)));
        s.done.fetch_add(1, Ordering::AcqRel);
    }
}

fn worker(s: &Shared) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        loop {
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            if s.epoch.load(Ordering::Acquire) != seen {
                break;
            }
            if spins < SPIN {
                spins += 1;
                std::hint::spin_loop();
            } else {
                let g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                if s.epoch.load(Ordering::SeqCst) == seen && !s.shutdown.load(Ordering::SeqCst) {
                    drop(s.wake.wait(g).unwrap_or_else(|e| e.into_inner()));
                } else {
                    drop(g);
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        }
        seen = s.epoch.load(Ordering::Acquire);
        s.active.fetch_add(1, Ordering::AcqRel);
        let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((f, n)) = job {
            // SAFETY: `run` keeps the closure alive until `active` is back to zero, and the job
            // was read after `active` was raised, so it is the current job's closure.
            take_tasks(s, unsafe { &*f }, n);
        }
        s.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        {
            let _g = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

thread_local! {
    /// The pool of the CPU executor running on this thread, while it runs its steps (see
    /// [`with_pool`]); kernels called from a step share its workers instead of spawning.
    static CURRENT_POOL: std::cell::Cell<Option<*const Pool>> = const { std::cell::Cell::new(None) };
}

/// Runs `body` with `pool` as the calling thread's pool for [`parallel_for`].
pub fn with_pool<R>(pool: &Pool, body: impl FnOnce() -> R) -> R {
    struct Reset(Option<*const Pool>);
    impl Drop for Reset {
        fn drop(&mut self) {
            CURRENT_POOL.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(CURRENT_POOL.with(|c| c.replace(Some(pool as *const Pool))));
    body()
}

/// Runs `f(0)`, ..., `f(n - 1)` in parallel and returns when all are done: on the pool the
/// calling thread's executor installed ([`with_pool`]), else on scoped threads. Kernels that the
/// executor calls must use its pool: on two cores, a third thread (the pool's worker spinning
/// while a kernel spawns its own) costs more than the parallelism gains.
pub fn parallel_for(n: usize, f: &(dyn Fn(usize) + Sync)) {
    if n <= 1 {
        (0..n).for_each(f);
        return;
    }
    if let Some(p) = CURRENT_POOL.with(|c| c.get()) {
        // SAFETY: `with_pool` set the pointer from a reference that outlives its `body`, and
        // resets it before returning, so while it is set the pool is alive. Only the thread that
        // set it reads it (thread-local), and `Pool::run` serializes jobs.
        let pool = unsafe { &*p };
        pool.run(n, f);
        return;
    }
    std::thread::scope(|s| {
        for t in 1..n {
            s.spawn(move || f(t));
        }
        f(0);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_across_many_jobs() {
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads);
            for n in [0, 1, 2, 5, 64] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                for _ in 0..50 {
                    pool.run(n, &|i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    });
                }
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 50));
            }
        }
    }

    #[test]
    fn parallel_for_uses_the_installed_pool_or_threads() {
        let pool = Pool::new(2);
        for installed in [false, true] {
            let hits: Vec<AtomicUsize> = (0..7).map(|_| AtomicUsize::new(0)).collect();
            let body = || {
                parallel_for(7, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                })
            };
            if installed {
                with_pool(&pool, body);
            } else {
                body();
            }
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn sleeping_workers_wake_up() {
        let pool = Pool::new(2);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let sum = AtomicUsize::new(0);
        pool.run(10, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 45);
    }
}
