//! Inputs placed against inaccessible pages, so that a compiled kernel reading an input past
//! either end faults instead of reading a neighbour's bytes. The executor hands kernels the
//! caller's input bytes directly when no kernel writes them (`mlc_runtime::cpu::exec`), so
//! every kernel must read exactly its parameters' elements: [`super::tests::check_inputs`] runs
//! every compiled test case this way too.
// Mapping pages and protecting them is the point of this module.
#![allow(unsafe_code)]

use crate::CompiledProgram;
use mlc_ir::Tensor;

/// A copy of some bytes in their own mapping, with a `PROT_NONE` page on each side and the
/// bytes pushed against one of them.
pub(crate) struct Guarded {
    base: *mut libc::c_void,
    len: usize,
    at: usize,
    n: usize,
}

impl Guarded {
    /// `bytes` ending where the trailing guard page starts (`against_end`) or starting where the
    /// leading one ends. Element alignment holds both ways: pages are aligned and `bytes`
    /// holds whole elements.
    pub(crate) fn new(bytes: &[u8], against_end: bool) -> Guarded {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).expect("page");
        let body = bytes.len().div_ceil(page).max(1) * page;
        let len = body + 2 * page;
        // SAFETY: a fresh private anonymous mapping; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "mmap");
        let at = if against_end {
            page + body - bytes.len()
        } else {
            page
        };
        // SAFETY: both guard pages and the copy's range lie inside the mapping of `len` bytes.
        unsafe {
            assert_eq!(libc::mprotect(base, page, libc::PROT_NONE), 0);
            assert_eq!(
                libc::mprotect(
                    base.cast::<u8>().add(page + body).cast(),
                    page,
                    libc::PROT_NONE
                ),
                0
            );
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.cast::<u8>().add(at), bytes.len());
        }
        Guarded {
            base,
            len,
            at,
            n: bytes.len(),
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `n` readable bytes at `at`, written in `new`, alive until `drop`.
        unsafe { std::slice::from_raw_parts(self.base.cast::<u8>().add(self.at), self.n) }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Runs `c` on `inputs`, each copied against a guard page (after it when `against_end`, else
/// before it), and returns the outputs as tensors.
pub(crate) fn run_guarded(
    c: &CompiledProgram,
    inputs: &[Tensor],
    threads: usize,
    against_end: bool,
) -> Vec<Tensor> {
    let guarded: Vec<Guarded> = inputs
        .iter()
        .map(|t| Guarded::new(&crate::plan::mem_bytes(t).expect("bytes"), against_end))
        .collect();
    let refs: Vec<&[u8]> = guarded.iter().map(Guarded::bytes).collect();
    let outs = c.executor().run_bytes(&refs, threads).expect("guarded run");
    c.executor()
        .plan()
        .outputs
        .iter()
        .zip(outs)
        .map(|(io, b)| {
            let buf = c.program().buffer(mlc_kir::BufId(io.buffer as u32));
            crate::plan::from_mem_bytes(buf.dtype, &buf.shape, &b).expect("output")
        })
        .collect()
}

/// Whether the kernel can read the byte at `p`: a one-byte `write` from it into a pipe copies
/// it (the kernel reports `EFAULT` for an inaccessible page instead of faulting this process).
fn readable(p: *const u8) -> bool {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors; both are closed below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: `write` only reads through the pointer, and fails cleanly where it cannot.
    let n = unsafe { libc::write(fds[1], p.cast(), 1) };
    // SAFETY: descriptors made above.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    n == 1
}

#[test]
fn the_guard_pages_are_unreadable() {
    for against_end in [true, false] {
        let g = Guarded::new(&[7; 12], against_end);
        assert_eq!(g.bytes(), &[7; 12]);
        let (first, last) = (g.bytes().as_ptr(), g.bytes().as_ptr().wrapping_add(11));
        assert!(readable(first) && readable(last));
        let outside = if against_end {
            last.wrapping_add(1)
        } else {
            first.wrapping_sub(1)
        };
        assert!(
            !readable(outside),
            "the guard page after/before the bytes is readable"
        );
    }
}
