//! The column (im2col) matrix of a 2-D convolution as a view of the image: the GEMM packers
//! read `B` panels through it, so the `k×n` matrix is never written to memory.
//!
//! `B[(ci·kh + ky)·kw + kx][oy·ow + ox] = x[ci, oy·sy + ky·dy − pt, ox·sx + kx·dx − pl]`, and a
//! tap outside the `h×w` plane reads as the pad value (0.0, or an integer convolution's input
//! zero point). A 1-D convolution is one with `h = 1`.

/// The geometry of a convolution window (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Channels, rows and columns of the image (`c` planes of `h×w`, contiguous).
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Kernel rows and columns.
    pub kh: usize,
    pub kw: usize,
    /// Strides, dilations and begin pads, `(rows, columns)`.
    pub stride: (usize, usize),
    pub dilation: (usize, usize),
    pub pad: (usize, usize),
    /// Output rows and columns.
    pub out: (usize, usize),
}

/// Why a window is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// A zero stride, dilation or kernel size.
    #[error("a convolution window with a zero stride, dilation or kernel size")]
    Degenerate,
    /// The image slice is shorter than `c·h·w`.
    #[error("the image needs {needed} elements but has {len}")]
    TooShort { needed: usize, len: usize },
    /// The sizes overflow `usize`.
    #[error("the window's sizes overflow the address space")]
    Overflow,
}

impl Window {
    /// Rows of the column matrix, `c·kh·kw`.
    pub fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Columns of the column matrix, `oh·ow`.
    pub fn n(&self) -> usize {
        self.out.0 * self.out.1
    }

    /// Elements of the image, `c·h·w`, or `None` on overflow.
    pub fn image_len(&self) -> Option<usize> {
        self.c.checked_mul(self.h)?.checked_mul(self.w)
    }

    /// Checks the geometry against an image of `len` elements.
    pub fn check(&self, len: usize) -> Result<(), WindowError> {
        let steps = [
            self.kh,
            self.kw,
            self.stride.0,
            self.stride.1,
            self.dilation.0,
            self.dilation.1,
        ];
        if steps.contains(&0) {
            return Err(WindowError::Degenerate);
        }
        let needed = self.image_len().ok_or(WindowError::Overflow)?;
        // The coordinates the packers compute stay far from overflow.
        let reach = |o: usize, s: usize, k: usize, d: usize| {
            o.checked_mul(s)?.checked_add(k.checked_mul(d)?)
        };
        if reach(self.out.0, self.stride.0, self.kh, self.dilation.0).is_none()
            || reach(self.out.1, self.stride.1, self.kw, self.dilation.1).is_none()
            || self.k().checked_mul(self.n()).is_none()
        {
            return Err(WindowError::Overflow);
        }
        if needed > len {
            return Err(WindowError::TooShort { needed, len });
        }
        Ok(())
    }

    /// Element `(r, col)` of the column matrix: the image index it reads, or `None` for
    /// padding.
    pub fn tap(&self, r: usize, col: usize) -> Option<usize> {
        let (ci, t) = (r / (self.kh * self.kw), r % (self.kh * self.kw));
        let (ky, kx) = (t / self.kw, t % self.kw);
        let (oy, ox) = (col / self.out.1, col % self.out.1);
        let iy = (oy * self.stride.0 + ky * self.dilation.0).checked_sub(self.pad.0)?;
        let ix = (ox * self.stride.1 + kx * self.dilation.1).checked_sub(self.pad.1)?;
        (iy < self.h && ix < self.w).then_some((ci * self.h + iy) * self.w + ix)
    }
}

/// A window over an image: `data` starts at the image's first element (checked to hold
/// `c·h·w` of them), `pad` is what padding reads as.
#[derive(Clone, Copy, Debug)]
pub struct WinRef<'a, T> {
    pub data: &'a [T],
    pub pad: T,
    pub win: Window,
}

impl<'a, T: Copy> WinRef<'a, T> {
    /// The view, if `data` holds the image and the geometry is sound.
    pub fn new(data: &'a [T], pad: T, win: Window) -> Result<Self, WindowError> {
        win.check(data.len())?;
        Ok(WinRef { data, pad, win })
    }

    /// Element `(r, col)` of the column matrix.
    pub fn at(&self, r: usize, col: usize) -> T {
        self.win.tap(r, col).map_or(self.pad, |i| self.data[i])
    }

    /// Writes columns `j0..j0 + dst.len()` of row `r` of the column matrix into `dst`: per
    /// output row, a run of the image row (contiguous for stride 1, every `sx`-th element
    /// otherwise) between runs of padding. `r < k`, `j0 + dst.len() ≤ n`.
    pub fn row(&self, r: usize, j0: usize, dst: &mut [T]) {
        let w = &self.win;
        let (ci, t) = (r / (w.kh * w.kw), r % (w.kh * w.kw));
        let (ky, kx) = (t / w.kw, t % w.kw);
        let plane = &self.data[ci * w.h * w.w..(ci + 1) * w.h * w.w];
        let (sy, sx) = w.stride;
        let ow = w.out.1;
        // Column `o` of an output row reads image column `o·sx + base`: the taps inside the
        // image are `o ∈ [lo, hi)`.
        let base = (kx * w.dilation.1) as isize - w.pad.1 as isize;
        let lo = if base >= 0 {
            0
        } else {
            base.unsigned_abs().div_ceil(sx)
        };
        let hi = if w.w as isize - base <= 0 {
            0
        } else {
            (w.w as isize - base) as usize
        }
        .div_ceil(sx);
        let (mut oy, mut ox) = (j0 / ow, j0 % ow);
        let mut d = 0;
        while d < dst.len() {
            let run = (ow - ox).min(dst.len() - d);
            let out = &mut dst[d..d + run];
            let iy = (oy * sy + ky * w.dilation.0) as isize - w.pad.0 as isize;
            if iy < 0 || iy >= w.h as isize {
                out.fill(self.pad);
            } else {
                let src = &plane[iy as usize * w.w..(iy as usize + 1) * w.w];
                let a = lo.clamp(ox, ox + run);
                let b = hi.clamp(a, ox + run);
                out[..a - ox].fill(self.pad);
                out[b - ox..].fill(self.pad);
                let first = (a as isize * sx as isize + base) as usize;
                let mid = &mut out[a - ox..b - ox];
                if mid.is_empty() {
                    // No tap inside the image (and `first` may be negative).
                } else if sx == 1 {
                    mid.copy_from_slice(&src[first..first + mid.len()]);
                } else {
                    for (i, o) in mid.iter_mut().enumerate() {
                        *o = src[first + i * sx];
                    }
                }
            }
            d += run;
            ox = 0;
            oy += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `row` against `at` (the definition) on every row and many column ranges.
    #[test]
    fn rows_match_taps() {
        let geoms = [
            (3, 7, 6, 3, 3, (2, 2), (1, 1), (1, 1)),
            (2, 5, 5, 2, 2, (1, 1), (2, 1), (0, 1)),
            (1, 1, 9, 1, 4, (1, 2), (1, 1), (0, 2)),
            (2, 6, 9, 3, 3, (1, 1), (1, 1), (1, 1)),
            (2, 4, 4, 5, 5, (1, 1), (1, 1), (3, 3)),
            (1, 8, 7, 3, 2, (3, 2), (2, 3), (2, 0)),
        ];
        for (c, h, w, kh, kw, stride, dilation, pad) in geoms {
            let out = |i: usize, k: usize, s: usize, d: usize, p: usize| {
                (i + 2 * p - d * (k - 1) - 1) / s + 1
            };
            let win = Window {
                c,
                h,
                w,
                kh,
                kw,
                stride,
                dilation,
                pad,
                out: (
                    out(h, kh, stride.0, dilation.0, pad.0),
                    out(w, kw, stride.1, dilation.1, pad.1),
                ),
            };
            let data: Vec<i32> = (0..(c * h * w) as i32).map(|v| v + 1).collect();
            let v = WinRef::new(&data, -7, win).unwrap();
            let n = win.n();
            for r in 0..win.k() {
                for j0 in 0..n {
                    for len in [1, 3, n - j0] {
                        let len = len.min(n - j0);
                        let mut got = vec![0; len];
                        v.row(r, j0, &mut got);
                        let want: Vec<i32> = (j0..j0 + len).map(|j| v.at(r, j)).collect();
                        assert_eq!(got, want, "{win:?} row {r} from {j0}");
                    }
                }
            }
        }
    }

    #[test]
    fn short_images_and_zero_steps_are_refused() {
        let win = Window {
            c: 2,
            h: 3,
            w: 3,
            kh: 1,
            kw: 1,
            stride: (1, 1),
            dilation: (1, 1),
            pad: (0, 0),
            out: (3, 3),
        };
        assert!(WinRef::new(&[0u8; 17], 0, win).is_err());
        assert!(WinRef::new(&[0u8; 18], 0, win).is_ok());
        let zero = Window {
            stride: (0, 1),
            ..win
        };
        assert_eq!(
            WinRef::new(&[0u8; 18], 0, zero).unwrap_err(),
            WindowError::Degenerate
        );
    }
}
