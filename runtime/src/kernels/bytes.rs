//! Typed views of byte buffers, so that callers holding raw bytes (the matmul helper receives
//! each operand as `&[u8]`) can hand slices of numbers to the kernels without copying.
//!
//! A view exists only when the bytes are aligned for the type; otherwise the caller takes a
//! slower path. Every bit pattern is a valid value of these types, so reinterpreting aligned
//! bytes is sound.
#![allow(unsafe_code)]

/// Element types whose every bit pattern is a valid value (plain numbers).
///
/// # Safety
///
/// Implementors must be `Copy` types without padding or invalid bit patterns.
pub unsafe trait Pod: Copy + 'static {}

// SAFETY: plain numbers: no padding, every bit pattern valid.
unsafe impl Pod for f32 {}
// SAFETY: as above.
unsafe impl Pod for i32 {}
// SAFETY: as above.
unsafe impl Pod for u32 {}
// SAFETY: as above.
unsafe impl Pod for i16 {}
// SAFETY: as above.
unsafe impl Pod for u16 {}
// SAFETY: as above.
unsafe impl Pod for i8 {}
// SAFETY: as above.
unsafe impl Pod for u8 {}
// SAFETY: as above.
unsafe impl Pod for u64 {}

/// The bytes as `T`s, or `None` if they do not start on a `T` boundary. Trailing bytes that do
/// not fill a whole `T` are left out.
pub fn cast<T: Pod>(bytes: &[u8]) -> Option<&[T]> {
    // SAFETY: `T: Pod` has no invalid bit patterns; `align_to` only returns a middle part that
    // is aligned and lies inside `bytes`.
    let (head, mid, _) = unsafe { bytes.align_to::<T>() };
    head.is_empty().then_some(mid)
}

/// [`cast`] for a buffer that is written.
pub fn cast_mut<T: Pod>(bytes: &mut [u8]) -> Option<&mut [T]> {
    // SAFETY: as for `cast`; the returned slice borrows `bytes` mutably, and any bit pattern
    // written through it is a valid byte sequence.
    let (head, mid, _) = unsafe { bytes.align_to_mut::<T>() };
    head.is_empty().then_some(mid)
}

/// The bytes of a slice of numbers (always aligned, so no `Option`).
pub fn as_bytes_mut<T: Pod>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: `T: Pod` has no padding, so its bytes are initialized, and any byte sequence
    // written through the view is a valid `T`; the view covers exactly `v`'s memory and
    // borrows it mutably.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn casts_aligned_and_refuses_misaligned() {
        let v: Vec<f32> = vec![1.0, 2.0, 3.0];
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let mut words = vec![0u32; 4];
        // Copy into a 4-aligned buffer, then view it at offset 0 and 1.
        let wb = bytemuck_bytes(&mut words);
        wb[..12].copy_from_slice(&bytes);
        assert_eq!(&cast::<f32>(wb).unwrap()[..3], &v[..]);
        assert!(cast::<f32>(&wb[1..]).is_none());
        assert_eq!(cast::<i8>(&wb[1..]).unwrap().len(), 15);
    }

    fn bytemuck_bytes(w: &mut [u32]) -> &mut [u8] {
        // SAFETY: u32 has no padding; the byte view covers exactly the words' bytes.
        unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr().cast(), w.len() * 4) }
    }
}
