//! A contraction whose `B` is a 2-D convolution's column matrix read from the image (the
//! kernel IR's `Im2col`, implicit GEMM).
//!
//! * 8-bit images go to the integer kernels whole ([`IGemm::run_packed_a_image_into`]), which
//!   pack each column block of `B` straight from the image (stride-1 "same" convolutions; with
//!   AVX-512 VBMI any column stride 1 or 2) or from a copy of the block.
//! * f32 images of at most 4 channels, or with at most 32 output channels, go to the direct
//!   kernels ([`direct_conv`]) on AVX-512 CPUs: each tap's vector formed from the image in
//!   registers, no column matrix at all.
//! * Anything else is copied a block of columns at a time ([`crate::kernels::im2col`]) into a
//!   per-thread scratch that stays in L2, and each block multiplied as an ordinary row-major
//!   `B` into its columns of `C`. Materializing the whole column matrix instead writes it to
//!   memory and reads it back: ResNet-18's stem is 147 rows of 112·112 floats, 7 MiB.
//!
//! [`IGemm::run_packed_a_image_into`]: crate::kernels::igemm::IGemm::run_packed_a_image_into

use super::{
    BOperand, F32Bias, Gemm, OutOfBounds, Requant, TileHook, View, check, f32_operand, int_kernels,
    run_requant, run_then,
};
use crate::cpu::abi::DType;
use crate::kernels::bytes;
use crate::kernels::direct_conv;
pub use crate::kernels::im2col::Im2col;
use crate::kernels::im2col::{copy_block, with_scratch};

/// The bytes of one block of the column matrix: half the L2 of the CPUs we measure on (1 MiB
/// on Zen 4), with room for the kernels' packed panels of it (ResNet-18's stem: 3.0, 2.9 and
/// 3.0 ms at 192 KiB, 512 KiB and 2 MiB).
const BLOCK_BYTES: usize = 512 * 1024;

/// `B` as an image: the buffer's bytes, its type, the offset of the first channel's plane,
/// the geometry and the fill (one element of the image's type, little-endian bytes).
#[derive(Clone, Copy, Debug)]
pub struct Image<'a> {
    pub bytes: &'a [u8],
    pub dtype: DType,
    pub offset: i64,
    pub geom: Im2col,
    pub fill: [u8; 8],
}

/// [`run_then`] (or, with `rq`, [`run_requant`]) with `B` read from `img`. Refused like them
/// when an element lies outside its buffer, and when the geometry is not `k×n` or has a zero
/// stride, dilation or kernel size.
#[allow(clippy::too_many_arguments)]
pub fn run_image(
    g: &Gemm,
    a: View,
    img: Image,
    c_bytes: &mut [u8],
    c: (DType, i64, i64, i64),
    bias: Option<View>,
    tail: Option<TileHook>,
    rq: Option<&Requant>,
) -> Result<(), OutOfBounds> {
    run_image_in(g, a, img, c_bytes, c, (bias, tail, rq), BLOCK_BYTES)
}

/// [`run_image`] with blocks of at most `block_bytes` (tests make them small).
pub(super) fn run_image_in(
    g: &Gemm,
    a: View,
    img: Image,
    c_bytes: &mut [u8],
    c: (DType, i64, i64, i64),
    (bias, tail, rq): (Option<View>, Option<TileHook>, Option<&Requant>),
    block_bytes: usize,
) -> Result<(), OutOfBounds> {
    let geo = img.geom;
    let esize = img.dtype.size();
    let zero = [geo.sh, geo.sw, geo.dh, geo.dw, geo.kh, geo.kw].contains(&0);
    if geo.dims() != (g.k, g.n) || zero || !matches!(esize, 1 | 2 | 4 | 8) {
        return Err(OutOfBounds);
    }
    if g.m == 0 || g.n == 0 {
        return Ok(());
    }
    // The image's planes, then the views the blocks' calls check again.
    let len = img.bytes.len() / esize;
    check(img.offset, 0, 1, 1, geo.image_len().max(1), len)?;
    let (cty, coff, crs, ccs) = c;
    check(coff, crs, ccs, g.m, g.n, c_bytes.len() / cty.size())?;
    check(a.offset, a.row_stride, a.col_stride, g.m, g.k, a.len())?;
    if let Some(bv) = &bias {
        check(bv.offset, bv.row_stride, bv.col_stride, g.m, g.n, bv.len())?;
    }
    if let Some(rq) = rq {
        let mv = &rq.mult;
        check(mv.offset, mv.row_stride, mv.col_stride, g.m, g.n, mv.len())?;
        if let Some((r, p)) = &rq.add {
            check(coff, crs, ccs, g.m, g.n, r.len() / p.r_size())?;
        }
    }
    // 8-bit images: the integer kernels pack each column block of B straight from the image.
    if matches!(img.dtype, DType::U8 | DType::I8)
        && int_kernels(
            g,
            &a,
            BOperand::Image(&img),
            c_bytes,
            c,
            bias.as_ref(),
            rq,
            tail,
        )
        .is_some()
    {
        return Ok(());
    }
    let start = img.offset as usize * esize;
    let planes = &img.bytes[start..start + geo.image_len() * esize];
    if rq.is_none() && direct(g, &a, planes, &img, c_bytes, c, bias.as_ref(), tail).is_some() {
        return Ok(());
    }
    let k = g.k;
    let nb = block_columns(k, g.n, esize, block_bytes);
    let words = (k * nb * esize).div_ceil(8);
    with_scratch(words, 0u64, |scratch| {
        let block = bytes::as_bytes_mut(scratch);
        let mut j0 = 0;
        while j0 < g.n {
            let cols = nb.min(g.n - j0);
            let dst = &mut block[..k * cols * esize];
            copy_bytes(planes, esize, &img.fill, &geo, (j0, cols), dst, g.threads);
            let bv = View {
                bytes: dst,
                dtype: img.dtype,
                offset: 0,
                row_stride: cols as i64,
                col_stride: 1,
            };
            fn shift<'v>(v: &View<'v>, j0: usize) -> View<'v> {
                View {
                    offset: v.offset + j0 as i64 * v.col_stride,
                    ..*v
                }
            }
            let gb = Gemm { n: cols, ..*g };
            let cb = (cty, coff + j0 as i64 * ccs, crs, ccs);
            let biasb = bias.as_ref().map(|v| shift(v, j0));
            let moved = move |r0: usize, rows: usize, c0: usize, n: usize| {
                if let Some(h) = tail {
                    (h.0)(r0, rows, c0 + j0, n);
                }
            };
            match rq {
                Some(rq) => {
                    let rqb = Requant {
                        mult: shift(&rq.mult, j0),
                        shift: rq.shift.as_ref().map(|v| shift(v, j0)),
                        ..*rq
                    };
                    run_requant(&gb, a, bv, c_bytes, cb, biasb, &rqb)?
                }
                None => run_then(
                    &gb,
                    a,
                    bv,
                    c_bytes,
                    cb,
                    biasb,
                    tail.map(|_| TileHook(&moved)),
                )?,
            }
            j0 += cols;
        }
        Ok(())
    })
}

/// An all-`f32` convolution on the direct kernels ([`direct_conv`]) where they pay; `None`
/// when not taken (nothing was written then).
#[allow(clippy::too_many_arguments)]
fn direct(
    g: &Gemm,
    a: &View,
    planes: &[u8],
    img: &Image,
    c_bytes: &mut [u8],
    (cty, coff, crs, ccs): (DType, i64, i64, i64),
    bias: Option<&View>,
    tail: Option<TileHook>,
) -> Option<()> {
    let f32s = [a.dtype, img.dtype, cty].iter().all(|&t| t == DType::F32)
        && bias.is_none_or(|v| v.dtype == DType::F32);
    if !f32s || (g.n > 1 && ccs != 1) || crs < 0 || !direct_conv::pays(&img.geom, g.m) {
        return None;
    }
    let image = bytes::cast::<f32>(planes)?;
    let out = bytes::cast_mut::<f32>(c_bytes)?.get_mut(coff as usize..)?;
    let (wd, wrs, wcs) = f32_operand(a, g.m, g.k);
    let bias = F32Bias::new(
        bias,
        (g.m, g.n),
        bias.map_or((0, 0), |v| (v.row_stride, v.col_stride)),
        |x| x as f32,
    );
    let mut ep = bias.epilogue(g);
    if let Some(h) = tail {
        ep = ep.tile_hook(h);
    }
    let fill = f32::from_le_bytes([img.fill[0], img.fill[1], img.fill[2], img.fill[3]]);
    let w = direct_conv::Weights {
        data: &wd,
        rs: wrs,
        cs: wcs,
    };
    direct_conv::run(
        &img.geom,
        g.m,
        w,
        image,
        fill,
        out,
        crs as usize,
        &ep,
        g.threads,
    )
    .ok()
}

/// Columns per block: all of them when the matrix fits `budget` bytes, else a multiple of 64
/// (whole microkernel tiles) that fits. 8-bit matrices are one block: the integer kernels
/// pack all of `B` before multiplying, so smaller blocks would only repeat their per-call
/// work (measured: ResNet-18 QDQ's 3×3 layers 10–25% slower in blocks of 192 KiB).
fn block_columns(k: usize, n: usize, esize: usize, budget: usize) -> usize {
    if esize == 1 {
        return n;
    }
    let fit = budget / (k * esize).max(1);
    if fit >= n {
        return n;
    }
    (fit / 64 * 64).max(64).min(n)
}

/// [`copy_block`] on the bytes of elements of `esize` bytes (1, 2, 4 or 8), the fill's first
/// `esize` bytes its value. Buffers misaligned for the type (which the executor never makes)
/// are left as they are.
fn copy_bytes(
    planes: &[u8],
    esize: usize,
    fill: &[u8; 8],
    geo: &Im2col,
    (j0, cols): (usize, usize),
    dst: &mut [u8],
    threads: usize,
) {
    fn typed<T: bytes::Pod + Send + Sync>(
        planes: &[u8],
        fill: T,
        geo: &Im2col,
        (j0, cols): (usize, usize),
        dst: &mut [u8],
        threads: usize,
    ) {
        if let (Some(p), Some(d)) = (bytes::cast::<T>(planes), bytes::cast_mut::<T>(dst)) {
            copy_block(p, fill, geo, j0, cols, d, threads);
        }
    }
    let f = |n: usize| {
        let mut w = [0u8; 8];
        w[..n].copy_from_slice(&fill[..n]);
        u64::from_le_bytes(w)
    };
    let at = (j0, cols);
    match esize {
        1 => typed::<u8>(planes, fill[0], geo, at, dst, threads),
        2 => typed::<u16>(planes, f(2) as u16, geo, at, dst, threads),
        4 => typed::<u32>(planes, f(4) as u32, geo, at, dst, threads),
        _ => typed::<u64>(planes, f(8), geo, at, dst, threads),
    }
}
