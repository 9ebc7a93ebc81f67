//! The portable depthwise kernel: one output at a time, the reference order of operations.

use super::{Task, apply_epilogue};

/// Computes the task's rows: `acc = bias`, then `acc += x·w` per tap in (ky, kx) order (a tap
/// outside the input reads 0.0), then the epilogue.
pub(super) fn rows(t: &mut Task) {
    let g = t.g;
    let rows = t.out.len() / g.ow.max(1);
    for r in 0..rows {
        let oy = (t.oy0 + r) as isize;
        for ox in 0..g.ow {
            let mut acc = t.bias;
            for ky in 0..g.kh {
                let iy = oy * g.sh + ky as isize * g.dh - g.pt;
                for kx in 0..g.kw {
                    let ix = ox as isize * g.sw + kx as isize * g.dw - g.pl;
                    let xv = if (0..g.ih).contains(&iy) && (0..g.iw).contains(&ix) {
                        t.x[(iy * g.iw + ix) as usize]
                    } else {
                        0.0
                    };
                    acc += xv * t.w[ky * g.kw + kx];
                }
            }
            t.out[r * g.ow + ox] = apply_epilogue(t.ep, acc);
        }
    }
}
