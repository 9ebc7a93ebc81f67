//! A fused, memory-bound elementwise kernel: `y = relu(x * a + b)` over f32, with scalar `a`
//! and `b`. It shows the bandwidth path: one read and one write per element, 16-byte vector
//! accesses (`ld.global.v4.f32`), and a grid-stride loop so any grid size covers any `n`.
//!
//! Signature: `(x: *const f32, y: *mut f32, n: i32, a: f32, b: f32)`; `x` and `y` must be
//! 16-byte aligned. The `n % 4` tail is handled by the first threads with scalar accesses.

use crate::cg::{Cg, Param};
use crate::{GpuArch, KernelSource, NvptxError};
use inkwell::context::Context;
use inkwell::values::BasicValue;

/// `y = relu(x * a + b)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AffineRelu;

impl KernelSource for AffineRelu {
    fn name(&self) -> String {
        "mlc_affine_relu_f32_v4".into()
    }

    fn build<'ctx>(&self, ctx: &'ctx Context, _arch: GpuArch) -> Result<Cg<'ctx>, NvptxError> {
        let name = self.name();
        let cg = Cg::kernel(
            ctx,
            &name,
            &[
                Param::GlobalPtr,
                Param::GlobalPtr,
                Param::I32,
                Param::F32,
                Param::F32,
            ],
        );
        let (x, y, n, a, bb) = (
            cg.param_ptr(0),
            cg.param_ptr(1),
            cg.param_int(2),
            cg.param_float(3),
            cg.param_float(4),
        );
        let f32t = ctx.f32_type();
        let v4 = f32t.vec_type(4);
        let tid = cg.sreg("tid.x")?;
        let ntid = cg.sreg("ntid.x")?;
        let ctaid = cg.sreg("ctaid.x")?;
        let nctaid = cg.sreg("nctaid.x")?;
        let gid = cg.add(cg.mul(ctaid, ntid)?, tid)?;
        let stride = cg.mul(nctaid, ntid)?;
        let nvec = cg.lshrc(n, 2)?;
        let splat = |s: inkwell::values::FloatValue<'ctx>| -> Result<_, NvptxError> {
            let mut v = v4.get_undef();
            for l in 0..4 {
                v = cg.b.build_insert_element(v, s, cg.i32(l), "")?;
            }
            Ok(v)
        };
        let av = splat(a)?;
        let bv = splat(bb)?;
        let zero = v4.const_zero();
        cg.for_range(gid, nvec, stride, |cg, i| {
            let iw = cg.wide(i)?;
            let px = cg.gep(v4, x, iw)?;
            let py = cg.gep(v4, y, iw)?;
            let xv = cg.b.build_load(v4, px, "x")?.into_vector_value();
            let xl = xv.as_instruction_value().expect("load is an instruction");
            xl.set_alignment(16)
                .map_err(|e| NvptxError::Unsupported(e.to_string()))?;
            let t = cg.b.build_float_mul(xv, av, "")?;
            let t = cg.b.build_float_add(t, bv, "")?;
            let gt =
                cg.b.build_float_compare(inkwell::FloatPredicate::OGT, t, zero, "")?;
            let r = cg.b.build_select(gt, t, zero, "")?;
            let st = cg.b.build_store(py, r)?;
            st.set_alignment(16)
                .map_err(|e| NvptxError::Unsupported(e.to_string()))?;
            Ok(())
        })?;
        // The scalar tail: elements 4*nvec .. n, one per thread of the first threads.
        let tail0 = cg.mulc(nvec, 4)?;
        let idx = cg.add(tail0, gid)?;
        let in_tail = cg.ult(idx, n)?;
        cg.if_then(in_tail, |cg| {
            let iw = cg.wide(idx)?;
            let xv =
                cg.b.build_load(f32t, cg.gep(f32t, x, iw)?, "")?
                    .into_float_value();
            let t = cg.fma(xv, a, bb)?;
            let r = cg.relu(t)?;
            cg.b.build_store(cg.gep(f32t, y, iw)?, r)?;
            Ok(())
        })?;
        cg.ret()?;
        Ok(cg)
    }
}
