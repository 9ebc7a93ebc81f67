//! The Hopper (`sm_90a`) tensor-core GEMM: warpgroup MMA (`wgmma.mma_async`, inline PTX, as
//! no LLVM 19 intrinsic exists) reading both operands straight from shared memory through
//! matrix descriptors.
//!
//! `C = A · Bᵀᵀ`: A is M×K row-major and **B is passed transposed, N×K row-major** (`_bt` in
//! the name), the layout of `nn.Linear`/ONNX `Gemm(transB=1)` weights. Both operands are then
//! K-major, so one shared layout serves both: 64-element (128-byte) rows, XOR-swizzled in 16-byte
//! chunks (chunk `c` of row `r` at `c ^ (r % 8)`), 8-row atoms 1024 bytes apart: the canonical
//! 128-byte-swizzle K-major layout that descriptors with swizzle mode 1, SBO = 1024 describe.
//!
//! One block: `warpgroups` × 128 threads; warpgroup `g` computes rows `64g .. 64g + 64` of the
//! `bm × bn` tile with `m64n{bn}k16` instructions (`bn / 2` f32 accumulators per thread). K
//! advances 64 at a time through a `stages`-deep ring in dynamic shared memory filled by
//! `cp.async`; each K tile is 4 wgmmas, then `commit_group` and `wait_group in_flight`: with 0,
//! loads of later tiles overlap the MMAs but MMAs of consecutive tiles do not; with 1, they do.
//! `cp.async` writes through the generic proxy and wgmma reads through the async proxy, hence
//! `fence.proxy.async.shared::cta` before the barrier that publishes a stage.
//!
//! Signature as the other GEMMs: `(a, bt, c, bias, m, n, k)`; requires `M % bm == 0`,
//! `N % bn == 0`, `K % 64 == 0`; grid `(N/bn, M/bm)`, block `128 * warpgroups`, dynamic shared
//! memory [`WgmmaGemm::shared_bytes`] (the launcher raises the function's limit).

use super::gemm::{Epilogue, OutType, gemm_params, store_pair, tile_origin};
use crate::cg::Cg;
use crate::{GpuArch, KernelSource, NvptxError};
use inkwell::context::Context;
use inkwell::types::BasicTypeEnum;
use inkwell::values::{BasicMetadataValueEnum, FloatValue, IntValue, PointerValue};

const BK: i64 = 64;

/// The wgmma GEMM; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WgmmaGemm {
    /// 1 to 4; `bm = 64 * warpgroups`.
    pub warpgroups: u32,
    /// The N of the instruction and the tile: 64, 128 or 256.
    pub bn: u32,
    pub stages: u32,
    pub group_m: u32,
    /// wgmma batches left in flight at the end of a K tile: 0 waits for each tile's MMAs before
    /// the next (simplest); 1 lets tile `kt`'s MMAs overlap tile `kt + 1`'s issue, and so
    /// prefetches one tile less (`stages - 2` ahead) to keep the in-flight stage untouched.
    pub in_flight: u32,
    pub out: OutType,
    pub epilogue: Epilogue,
}

impl WgmmaGemm {
    pub fn bm(&self) -> u32 {
        64 * self.warpgroups
    }
    pub fn threads(&self) -> u32 {
        128 * self.warpgroups
    }
    /// Dynamic shared memory per block: `stages` × (A tile + B tile), bf16.
    pub fn shared_bytes(&self) -> u32 {
        self.stages * (self.bm() + self.bn) * BK as u32 * 2
    }

    fn validate(&self) -> Result<(), NvptxError> {
        let bad = |why: &str| Err(NvptxError::Unsupported(format!("{}: {why}", self.name())));
        if !(1..=4).contains(&self.warpgroups) {
            return bad("1 to 4 warpgroups");
        }
        if ![64, 128, 256].contains(&self.bn) {
            return bad("bn must be 64, 128 or 256");
        }
        if self.in_flight > 1 {
            return bad("at most one wgmma batch in flight");
        }
        if self.stages < 2 + self.in_flight {
            return bad("at least 2 stages, plus one per batch in flight");
        }
        if self.shared_bytes() > 227 * 1024 {
            return bad("more than 227 KiB of shared memory");
        }
        Ok(())
    }
}

impl KernelSource for WgmmaGemm {
    fn name(&self) -> String {
        format!(
            "mlc_gemm_bf16_wgmma_{}x{}x{}_wg{}_s{}{}{}_bt_{}{}",
            self.bm(),
            self.bn,
            BK,
            self.warpgroups,
            self.stages,
            if self.group_m > 1 {
                format!("_g{}", self.group_m)
            } else {
                String::new()
            },
            if self.in_flight > 0 {
                format!("_f{}", self.in_flight)
            } else {
                String::new()
            },
            self.out.name(),
            self.epilogue.suffix()
        )
    }

    fn build<'ctx>(&self, ctx: &'ctx Context, arch: GpuArch) -> Result<Cg<'ctx>, NvptxError> {
        self.validate()?;
        if arch != GpuArch::Sm90a {
            return Err(NvptxError::Unsupported(format!(
                "{}: wgmma exists only on sm_90a, not {arch}",
                self.name()
            )));
        }
        let cfg = *self;
        let cg = Cg::kernel(ctx, &self.name(), &gemm_params());
        cg.max_threads(cfg.threads())?;
        let (a, bt, c, bias) = (
            cg.param_ptr(0),
            cg.param_ptr(1),
            cg.param_ptr(2),
            cg.param_ptr(3),
        );
        let (m, n, k) = (cg.param_int(4), cg.param_int(5), cg.param_int(6));
        let i16t = ctx.i16_type();
        let i64t = ctx.i64_type();
        let f32t = ctx.f32_type();
        let threads = cfg.threads() as i64;
        let (bm, bn) = (cfg.bm() as i64, cfg.bn as i64);
        let stage_a = bm * BK * 2;
        let stage_b = bn * BK * 2;
        let n_acc = (bn / 2) as usize;

        let smem = cg.dynamic_shared("smem").as_pointer_value();
        let s_a = smem;
        let s_b = cg.byte_gep(smem, cg.i32(cfg.stages as i64 * stage_a))?;

        let tid = cg.sreg("tid.x")?;
        let lane = cg.andc(tid, 31)?;
        let wg = cg.lshrc(tid, 7)?;
        let warp_in_wg = cg.andc(cg.lshrc(tid, 5)?, 3)?;
        let (m0, n0) = tile_origin(&cg, m, n, bm, bn, cfg.group_m)?;
        let ktiles = cg.udivc(k, BK)?;

        // Thread t copies chunk t % 8 of rows t / 8 + j * threads / 8, for A and for Bᵀ.
        let chunk = cg.andc(tid, 7)?;
        let row0 = cg.lshrc(tid, 3)?;
        let rows_per_pass = threads / 8;
        let swz = |cg: &Cg<'ctx>, row: IntValue<'ctx>| -> Result<IntValue<'ctx>, NvptxError> {
            let phys = cg.xor(chunk, cg.andc(row, 7)?)?;
            cg.add(cg.mulc(row, 128)?, cg.mulc(phys, 16)?)
        };
        let load_tile =
            |cg: &Cg<'ctx>, stage: IntValue<'ctx>, kt: IntValue<'ctx>| -> Result<(), NvptxError> {
                let kcol = cg.wide(cg.add(cg.mulc(kt, BK)?, cg.mulc(chunk, 8)?)?)?;
                for (src, dst_base, rows, origin, stage_bytes) in
                    [(a, s_a, bm, m0, stage_a), (bt, s_b, bn, n0, stage_b)]
                {
                    for j in 0..rows / rows_per_pass {
                        let row = cg.addc(row0, j * rows_per_pass)?;
                        let g_row = cg.wide(cg.add(origin, row)?)?;
                        let gi = cg.add(cg.b.build_int_mul(g_row, cg.wide(k)?, "")?, kcol)?;
                        let sp = cg.gep(i16t, src, gi)?;
                        let soff = cg.add(cg.mulc(stage, stage_bytes)?, swz(cg, row)?)?;
                        let dp = cg.byte_gep(dst_base, soff)?;
                        cg.intrinsic(
                            "llvm.nvvm.cp.async.cg.shared.global.16",
                            &[],
                            &[dp.into(), sp.into()],
                        )?;
                    }
                }
                Ok(())
            };
        let commit = |cg: &Cg<'ctx>| -> Result<(), NvptxError> {
            cg.intrinsic("llvm.nvvm.cp.async.commit.group", &[], &[])?;
            Ok(())
        };

        // Tiles are prefetched `ahead` K tiles in advance.
        let ahead = cfg.stages as i64 - 1 - cfg.in_flight as i64;
        for s in 0..ahead {
            let cond = cg.ult(cg.i32(s), ktiles)?;
            cg.if_then(cond, |cg| load_tile(cg, cg.i32(s), cg.i32(s)))?;
            commit(&cg)?;
        }

        let acc: Vec<PointerValue<'ctx>> = (0..n_acc)
            .map(|i| cg.var(f32t, cg.f32(0.0).into(), &format!("acc{i}")))
            .collect::<Result<_, _>>()?;
        let acc_ty: BasicTypeEnum<'ctx> = ctx.struct_type(&vec![f32t.into(); n_acc], false).into();
        let tied: String = {
            let outs = vec!["=f"; n_acc].join(",");
            let ins = (0..n_acc)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",");
            format!("{outs},{ins}")
        };
        // Runs `text` with every accumulator as an in/out operand, so LLVM keeps accumulator
        // moves out of the window between a wgmma and the wait that completes it.
        let acc_asm = |cg: &Cg<'ctx>,
                       text: &str,
                       extra: &[BasicMetadataValueEnum<'ctx>],
                       extra_cons: &str|
         -> Result<(), NvptxError> {
            let mut args: Vec<BasicMetadataValueEnum<'ctx>> =
                Vec::with_capacity(n_acc + extra.len());
            for p in &acc {
                args.push(cg.b.build_load(f32t, *p, "")?.into());
            }
            args.extend_from_slice(extra);
            let cons = format!("{tied}{extra_cons},~{{memory}}");
            let r = cg
                .asm(text, &cons, Some(acc_ty), &args, true)?
                .expect("asm result")
                .into_struct_value();
            for (i, p) in acc.iter().enumerate() {
                let v = cg.b.build_extract_value(r, i as u32, "")?;
                cg.b.build_store(*p, v)?;
            }
            Ok(())
        };
        let d_list = (0..n_acc)
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mma_text = format!(
            "{{\n.reg .pred p;\nsetp.ne.b32 p, ${scale}, 0;\nwgmma.mma_async.sync.aligned.m64n{bn}k16.f32.bf16.bf16 {{{d_list}}}, ${da}, ${db}, p, 1, 1, 0, 0;\n}}",
            scale = 2 * n_acc + 2,
            da = 2 * n_acc,
            db = 2 * n_acc + 1,
        );

        // Descriptor: start address >> 4 (bits 0-13), LBO >> 4 (16-29; unused for swizzled
        // K-major, 1 by convention), SBO >> 4 (32-45) = 1024 B between 8-row atoms, swizzle
        // mode 1 = 128-byte (bits 62-63). Stage bases are 1024-aligned, so base offset is 0.
        let desc_hi = (1u64 << 16) | ((1024u64 >> 4) << 32) | (1u64 << 62);
        let desc = |cg: &Cg<'ctx>, p: PointerValue<'ctx>| -> Result<IntValue<'ctx>, NvptxError> {
            let addr = cg.b.build_ptr_to_int(p, i64t, "")?;
            let addr = cg.b.build_and(addr, i64t.const_int(0x3ffff, false), "")?;
            let addr =
                cg.b.build_right_shift(addr, i64t.const_int(4, false), false, "")?;
            Ok(cg.b.build_or(addr, i64t.const_int(desc_hi, false), "")?)
        };

        cg.for_range(cg.i32(0), ktiles, cg.i32(1), |cg, kt| {
            cg.intrinsic(
                "llvm.nvvm.cp.async.wait.group",
                &[],
                &[cg.i32(ahead - 1).into()],
            )?;
            cg.asm(
                "fence.proxy.async.shared::cta;",
                "~{memory}",
                None,
                &[],
                true,
            )?;
            cg.barrier()?;
            let nk = cg.addc(kt, ahead)?;
            let in_range = cg.ult(nk, ktiles)?;
            cg.if_then(in_range, |cg| {
                load_tile(cg, cg.uremc(nk, cfg.stages as i64)?, nk)
            })?;
            commit(cg)?;
            let stage = cg.uremc(kt, cfg.stages as i64)?;
            let sa = cg.byte_gep(
                s_a,
                cg.add(cg.mulc(stage, stage_a)?, cg.mulc(wg, 64 * 128)?)?,
            )?;
            let sb = cg.byte_gep(s_b, cg.mulc(stage, stage_b)?)?;
            acc_asm(cg, "wgmma.fence.sync.aligned;", &[], "")?;
            for kk in 0..BK / 16 {
                let da = desc(cg, cg.byte_gep(sa, cg.i32(kk * 32))?)?;
                let db = desc(cg, cg.byte_gep(sb, cg.i32(kk * 32))?)?;
                acc_asm(
                    cg,
                    &mma_text,
                    &[da.into(), db.into(), cg.i32(1).into()],
                    ",l,l,r",
                )?;
            }
            cg.asm(
                "wgmma.commit_group.sync.aligned;",
                "~{memory}",
                None,
                &[],
                true,
            )?;
            let wait = format!("wgmma.wait_group.sync.aligned {};", cfg.in_flight);
            acc_asm(cg, &wait, &[], "")?;
            Ok(())
        })?;
        acc_asm(&cg, "wgmma.wait_group.sync.aligned 0;", &[], "")?;
        cg.intrinsic("llvm.nvvm.cp.async.wait.group", &[], &[cg.i32(0).into()])?;

        // Epilogue: in each warp of a warpgroup, the m64nN accumulator layout repeats mma.sync's
        // m16n8 layout over N/8 column blocks: d[4j..4j+2] at row lane/4, d[4j+2..4j+4] at +8.
        let row = cg.add(
            cg.add(m0, cg.mulc(wg, 64)?)?,
            cg.add(cg.mulc(warp_in_wg, 16)?, cg.lshrc(lane, 2)?)?,
        )?;
        let col0 = cg.add(n0, cg.mulc(cg.andc(lane, 3)?, 2)?)?;
        for j in 0..(bn / 8) as usize {
            let v: Vec<FloatValue<'ctx>> = (0..4)
                .map(|i| {
                    cg.b.build_load(f32t, acc[4 * j + i], "")
                        .map(|v| v.into_float_value())
                })
                .collect::<Result<_, _>>()?;
            let col = cg.addc(col0, 8 * j as i64)?;
            store_pair(
                &cg,
                cfg.out,
                cfg.epilogue,
                c,
                bias,
                row,
                col,
                n,
                [v[0], v[1]],
            )?;
            store_pair(
                &cg,
                cfg.out,
                cfg.epilogue,
                c,
                bias,
                cg.addc(row, 8)?,
                col,
                n,
                [v[2], v[3]],
            )?;
        }
        cg.ret()?;
        Ok(cg)
    }
}
