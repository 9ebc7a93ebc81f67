//! Hand-written compute kernels that compiled models call at run time, chosen by the CPU's ISA.
//!
//! Generated code (Cranelift, 128-bit SIMD) handles element-wise loops; contractions, where
//! register blocking and cache blocking decide the speed, call these kernels instead. Each
//! kernel family has a portable Rust version and `std::arch` versions for x86-64 levels; the
//! level is detected once per process ([`Isa::detect`]) and can be forced for tests and benches.

pub mod bytes;
pub mod depthwise;
pub mod direct_conv;
pub mod gemm;
pub mod igemm;
pub mod im2col;
pub mod softmax;
pub mod transpose;

use std::fmt;
use std::sync::OnceLock;

/// The AVX2 lane mask (for `vmaskmov*` loads and stores) of lanes `[0, n)` of 8, `n ≤ 8`: the
/// partial last vector of a row (softmax, the GEMM epilogues).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn tail_mask8(n: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes)
}

/// An instruction-set level that kernels are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust, auto-vectorized for the build target's baseline; runs everywhere.
    Portable,
    /// x86-64 AVX2 with FMA (256-bit vectors, 16 registers).
    Avx2,
    /// x86-64 AVX-512 Foundation (512-bit vectors, 32 registers, lane masks).
    Avx512,
}

impl Isa {
    /// Every level, from the most portable to the widest.
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512];

    /// The widest level this CPU supports, detected on the first call and cached for the
    /// process (the only global state of the kernels, and it never changes once set).
    pub fn detect() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            Isa::ALL
                .into_iter()
                .rev()
                .find(|isa| isa.is_supported())
                .unwrap_or(Isa::Portable)
        })
    }

    /// Whether this CPU can run kernels of this level.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2 | Isa::Avx512 => false,
        }
    }

    /// The levels this CPU supports, from the most portable to the widest.
    pub fn supported() -> impl Iterator<Item = Isa> {
        Isa::ALL.into_iter().filter(|isa| isa.is_supported())
    }

    /// A short lower-case name (`portable`, `avx2`, `avx512`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

pub use crate::cpu::pool::parallel_for;

/// An output pointer that the tasks of a parallel kernel share, each writing only its own
/// disjoint rows of it (the depthwise and softmax kernels).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);

impl SendPtr {
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: the kernels only use the pointer to form disjoint per-task slices, all of them
// ending before the kernel returns (`parallel_for` joins its tasks).
#[allow(unsafe_code)]
unsafe impl Send for SendPtr {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for SendPtr {}
