//! bf16 GEMM templates: `C = A · B (+ bias) (relu)`, with `A` M×K and `B` K×N row-major bf16,
//! f32 accumulation, and C in f32 or bf16 (row-major, M×N).
//!
//! Kernel signature, for every variant: `(a, b, c, bias: ptr, m: i32, n: i32, k: i32)`; `bias`
//! is a per-column f32 vector of length N, read only by variants with `bias`.
//!
//! * [`NaiveGemm`]: one thread per output, FFMA. Correct for every shape; it proved the path and
//!   is the GPU-side cross-check. Block 16×16, each thread two adjacent
//!   columns (N must be even), grid `(ceil(N/32), ceil(M/16))`.
//! * [`MmaGemm`]: the tensor-core kernel. One block computes a `bm × bn` tile of C with
//!   `warps_m × warps_n` warps, each owning a `(bm/warps_m) × (bn/warps_n)` sub-tile made of
//!   `mma.sync.m16n8k16` tiles. K advances `bk` at a time through a `stages`-deep ring of shared
//!   buffers filled by `cp.async` (16 bytes per instruction), so loads of tile `kt + stages - 1`
//!   overlap the MMAs of tile `kt`. Fragments come from shared memory through `ldmatrix` (`.trans`
//!   for B, which is stored K-major but consumed "col"). Shared tiles are XOR-swizzled in
//!   16-byte chunks so that the 8 rows one `ldmatrix` phase reads fall in 8 distinct bank groups.
//!   Requires `M % bm == 0`, `N % bn == 0`, `K % bk == 0` (the launcher checks); grid
//!   `(N/bn, M/bm)`, block `32 * warps_m * warps_n` threads.

use crate::cg::{Cg, Param};
use crate::{GpuArch, KernelSource, NvptxError};
use inkwell::context::Context;
use inkwell::values::BasicValue;
use inkwell::values::{BasicMetadataValueEnum, FloatValue, IntValue, PointerValue};

/// The element type of C.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutType {
    F32,
    Bf16,
}

impl OutType {
    pub(crate) fn name(self) -> &'static str {
        match self {
            OutType::F32 => "f32",
            OutType::Bf16 => "bf16",
        }
    }
}

/// The fused epilogue applied to each accumulator before it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Epilogue {
    /// Add `bias[col]` (f32).
    pub bias: bool,
    /// `max(x, 0)` after the bias.
    pub relu: bool,
}

impl Epilogue {
    pub(crate) fn suffix(self) -> String {
        let mut s = String::new();
        if self.bias {
            s.push_str("_bias");
        }
        if self.relu {
            s.push_str("_relu");
        }
        s
    }
}

pub(crate) fn gemm_params() -> [Param; 7] {
    [
        Param::GlobalPtr,
        Param::GlobalPtr,
        Param::GlobalPtr,
        Param::GlobalPtr,
        Param::I32,
        Param::I32,
        Param::I32,
    ]
}

/// Loads one bf16 from global memory as f32 (bf16 is the top half of an f32).
fn load_bf16<'ctx>(
    cg: &Cg<'ctx>,
    base: PointerValue<'ctx>,
    idx: IntValue<'ctx>,
) -> Result<FloatValue<'ctx>, NvptxError> {
    let i16t = cg.ctx.i16_type();
    let h =
        cg.b.build_load(i16t, cg.gep(i16t, base, idx)?, "")?
            .into_int_value();
    let w = cg.b.build_int_z_extend(h, cg.ctx.i32_type(), "")?;
    let w = cg.b.build_left_shift(w, cg.i32(16), "")?;
    Ok(cg
        .b
        .build_bit_cast(w, cg.ctx.f32_type(), "")?
        .into_float_value())
}

/// Applies the epilogue to the pair at columns `col, col + 1` of `row` and stores it.
pub(crate) fn store_pair<'ctx>(
    cg: &Cg<'ctx>,
    out: OutType,
    epi: Epilogue,
    c: PointerValue<'ctx>,
    bias: PointerValue<'ctx>,
    row: IntValue<'ctx>,
    col: IntValue<'ctx>,
    n: IntValue<'ctx>,
    mut v: [FloatValue<'ctx>; 2],
) -> Result<(), NvptxError> {
    let f32t = cg.ctx.f32_type();
    let v2 = f32t.vec_type(2);
    let colw = cg.wide(col)?;
    if epi.bias {
        let bv = cg.b.build_load(v2, cg.gep(f32t, bias, colw)?, "bias")?;
        bv.as_instruction_value()
            .expect("load")
            .set_alignment(8)
            .map_err(|e| NvptxError::Unsupported(e.to_string()))?;
        let bv = bv.into_vector_value();
        for (l, x) in v.iter_mut().enumerate() {
            let b =
                cg.b.build_extract_element(bv, cg.i32(l as i64), "")?
                    .into_float_value();
            *x = cg.b.build_float_add(*x, b, "")?;
        }
    }
    if epi.relu {
        for x in v.iter_mut() {
            *x = cg.relu(*x)?;
        }
    }
    let idx = cg.add(cg.b.build_int_mul(cg.wide(row)?, cg.wide(n)?, "")?, colw)?;
    match out {
        OutType::F32 => {
            let mut vec = v2.get_undef();
            for (l, x) in v.iter().enumerate() {
                vec = cg.b.build_insert_element(vec, *x, cg.i32(l as i64), "")?;
            }
            let st = cg.b.build_store(cg.gep(f32t, c, idx)?, vec)?;
            st.set_alignment(8)
                .map_err(|e| NvptxError::Unsupported(e.to_string()))?;
        }
        OutType::Bf16 => {
            // `cvt.rn.bf16x2.f32 d, hi, lo` packs two round-to-nearest bf16 into one register.
            let packed = cg
                .asm(
                    "cvt.rn.bf16x2.f32 $0, $1, $2;",
                    "=r,f,f",
                    Some(cg.ctx.i32_type().into()),
                    &[v[1].into(), v[0].into()],
                    false,
                )?
                .expect("asm result")
                .into_int_value();
            let st =
                cg.b.build_store(cg.gep(cg.ctx.i16_type(), c, idx)?, packed)?;
            st.set_alignment(4)
                .map_err(|e| NvptxError::Unsupported(e.to_string()))?;
        }
    }
    Ok(())
}

/// The origin `(m0, n0)` of the C tile this block computes. The grid is `(N/bn, M/bm)`; with
/// `group > 1` the linear block id is remapped (as Triton's "grouped ordering" does) so that
/// consecutive blocks cover a `group`-tall column of tiles before moving right: they then
/// share B strips, and the A strips of a group stay in L2.
pub(crate) fn tile_origin<'ctx>(
    cg: &Cg<'ctx>,
    m: IntValue<'ctx>,
    n: IntValue<'ctx>,
    bm: i64,
    bn: i64,
    group: u32,
) -> Result<(IntValue<'ctx>, IntValue<'ctx>), NvptxError> {
    let (bx, by) = (cg.sreg("ctaid.x")?, cg.sreg("ctaid.y")?);
    if group <= 1 {
        return Ok((cg.mulc(by, bm)?, cg.mulc(bx, bn)?));
    }
    let g = group as i64;
    let tiles_m = cg.udivc(m, bm)?;
    let tiles_n = cg.udivc(n, bn)?;
    let pid = cg.add(cg.mul(by, tiles_n)?, bx)?;
    let per_group = cg.mulc(tiles_n, g)?;
    let group_id = cg.b.build_int_unsigned_div(pid, per_group, "")?;
    let first_m = cg.mulc(group_id, g)?;
    let left = cg.b.build_int_sub(tiles_m, first_m, "")?;
    let small = cg.ult(left, cg.i32(g))?;
    let group_size =
        cg.b.build_select(small, left, cg.i32(g), "")?
            .into_int_value();
    let in_group = cg.b.build_int_unsigned_rem(pid, per_group, "")?;
    let pid_m = cg.add(
        first_m,
        cg.b.build_int_unsigned_rem(in_group, group_size, "")?,
    )?;
    let pid_n = cg.b.build_int_unsigned_div(in_group, group_size, "")?;
    Ok((cg.mulc(pid_m, bm)?, cg.mulc(pid_n, bn)?))
}

/// One thread per output element, f32 FMA over K. The simplest correct GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NaiveGemm {
    pub out: OutType,
    pub epilogue: Epilogue,
}

impl KernelSource for NaiveGemm {
    fn name(&self) -> String {
        format!(
            "mlc_gemm_bf16_naive_{}{}",
            self.out.name(),
            self.epilogue.suffix()
        )
    }

    fn build<'ctx>(&self, ctx: &'ctx Context, _arch: GpuArch) -> Result<Cg<'ctx>, NvptxError> {
        let cg = Cg::kernel(ctx, &self.name(), &gemm_params());
        let (a, b, c, bias) = (
            cg.param_ptr(0),
            cg.param_ptr(1),
            cg.param_ptr(2),
            cg.param_ptr(3),
        );
        let (m, n, k) = (cg.param_int(4), cg.param_int(5), cg.param_int(6));
        let row = cg.add(cg.mulc(cg.sreg("ctaid.y")?, 16)?, cg.sreg("tid.y")?)?;
        // Each thread computes two adjacent columns so the epilogue is shared with the MMA kernel.
        let col = cg.mulc(
            cg.add(cg.mulc(cg.sreg("ctaid.x")?, 16)?, cg.sreg("tid.x")?)?,
            2,
        )?;
        let inside = cg.b.build_and(cg.ult(row, m)?, cg.ult(col, n)?, "")?;
        cg.if_then(inside, |cg| {
            let f32t = cg.ctx.f32_type();
            let acc0 = cg.var(f32t, cg.f32(0.0).into(), "acc0")?;
            let acc1 = cg.var(f32t, cg.f32(0.0).into(), "acc1")?;
            let col1 = cg.addc(col, 1)?;
            let has1 = cg.ult(col1, n)?;
            // Column col+1 is clamped (and its result dropped) when N is odd.
            let col1c = cg.b.build_select(has1, col1, col, "")?.into_int_value();
            cg.for_range(cg.i32(0), k, cg.i32(1), |cg, kk| {
                let ai = cg.add(
                    cg.b.build_int_mul(cg.wide(row)?, cg.wide(k)?, "")?,
                    cg.wide(kk)?,
                )?;
                let av = load_bf16(cg, a, ai)?;
                let brow = cg.b.build_int_mul(cg.wide(kk)?, cg.wide(n)?, "")?;
                let b0 = load_bf16(cg, b, cg.add(brow, cg.wide(col)?)?)?;
                let b1 = load_bf16(cg, b, cg.add(brow, cg.wide(col1c)?)?)?;
                let s0 = cg.b.build_load(f32t, acc0, "")?.into_float_value();
                let s1 = cg.b.build_load(f32t, acc1, "")?.into_float_value();
                cg.b.build_store(acc0, cg.fma(av, b0, s0)?)?;
                cg.b.build_store(acc1, cg.fma(av, b1, s1)?)?;
                Ok(())
            })?;
            let v0 = cg.b.build_load(f32t, acc0, "")?.into_float_value();
            let v1 = cg.b.build_load(f32t, acc1, "")?.into_float_value();
            // N is required to be even (pairs are stored together); the launcher checks.
            store_pair(cg, self.out, self.epilogue, c, bias, row, col, n, [v0, v1])
        })?;
        cg.ret()?;
        Ok(cg)
    }
}

/// The `mma.sync` tensor-core GEMM; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MmaGemm {
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    pub warps_m: u32,
    pub warps_n: u32,
    pub stages: u32,
    /// Blocks walk the C tiles in groups of `group_m` tile rows (column-major within a group)
    /// so that blocks running together share A and B strips in L2; 1 walks row by row.
    pub group_m: u32,
    pub out: OutType,
    pub epilogue: Epilogue,
}

impl MmaGemm {
    /// 128×128×32 tiles, 8 warps (2×4, 64×32 each), 3 stages: 48 KiB of shared memory.
    pub fn default_for(out: OutType, epilogue: Epilogue) -> Self {
        MmaGemm {
            bm: 128,
            bn: 128,
            bk: 32,
            warps_m: 2,
            warps_n: 4,
            stages: 3,
            group_m: 1,
            out,
            epilogue,
        }
    }

    pub fn threads(&self) -> u32 {
        32 * self.warps_m * self.warps_n
    }

    /// Shared memory the kernel declares statically.
    pub fn shared_bytes(&self) -> u32 {
        self.stages * (self.bm * self.bk + self.bk * self.bn) * 2
    }

    fn validate(&self) -> Result<(), NvptxError> {
        let bad = |why: &str| Err(NvptxError::Unsupported(format!("{}: {why}", self.name())));
        let t = self.threads();
        if self.bk != 32 && self.bk != 64 {
            return bad(
                "bk must be 32 or 64 (the A-tile swizzle is written for 4 or 8 chunks a row)",
            );
        }
        if !self.bn.is_multiple_of(64) {
            return bad("bn must be a multiple of 64 (the B-tile swizzle needs 8 chunks a row)");
        }
        if !self.bm.is_multiple_of(16 * self.warps_m) || !self.bn.is_multiple_of(16 * self.warps_n)
        {
            return bad("each warp tile must be a multiple of 16×16");
        }
        let (cpr_a, cpr_b) = (self.bk / 8, self.bn / 8);
        if !t.is_multiple_of(cpr_a)
            || !t.is_multiple_of(cpr_b)
            || !(self.bm * cpr_a).is_multiple_of(t)
            || !(self.bk * cpr_b).is_multiple_of(t)
        {
            return bad("tiles must split into whole 16-byte copies per thread");
        }
        if self.stages < 2 {
            return bad("at least 2 pipeline stages");
        }
        if self.shared_bytes() > 48 * 1024 {
            return bad(
                "more than 48 KiB of static shared memory (dynamic shared memory is not wired up yet)",
            );
        }
        Ok(())
    }
}

impl KernelSource for MmaGemm {
    fn name(&self) -> String {
        format!(
            "mlc_gemm_bf16_mma_{}x{}x{}_w{}x{}_s{}{}_{}{}",
            self.bm,
            self.bn,
            self.bk,
            self.warps_m,
            self.warps_n,
            self.stages,
            if self.group_m > 1 {
                format!("_g{}", self.group_m)
            } else {
                String::new()
            },
            self.out.name(),
            self.epilogue.suffix()
        )
    }

    fn build<'ctx>(&self, ctx: &'ctx Context, _arch: GpuArch) -> Result<Cg<'ctx>, NvptxError> {
        self.validate()?;
        let cfg = *self;
        let cg = Cg::kernel(ctx, &self.name(), &gemm_params());
        let (a, b, c, bias) = (
            cg.param_ptr(0),
            cg.param_ptr(1),
            cg.param_ptr(2),
            cg.param_ptr(3),
        );
        let (m, n, k) = (cg.param_int(4), cg.param_int(5), cg.param_int(6));
        let i16t = ctx.i16_type();
        let f32t = ctx.f32_type();
        let threads = cfg.threads() as i64;
        let (bm, bn, bk) = (cfg.bm as i64, cfg.bn as i64, cfg.bk as i64);
        let (wm, wn) = (bm / cfg.warps_m as i64, bn / cfg.warps_n as i64);
        let (mt_n, nt_n) = (wm / 16, wn / 8);
        let (cpr_a, cpr_b) = (bk / 8, bn / 8);
        let stage_a = bm * bk * 2;
        let stage_b = bk * bn * 2;

        let s_a = cg
            .shared_array("smem_a", (cfg.stages as i64 * stage_a) as u32)
            .as_pointer_value();
        let s_b = cg
            .shared_array("smem_b", (cfg.stages as i64 * stage_b) as u32)
            .as_pointer_value();

        let tid = cg.sreg("tid.x")?;
        let lane = cg.andc(tid, 31)?;
        let warp = cg.lshrc(tid, 5)?;
        let warp_m = cg.uremc(warp, cfg.warps_m as i64)?;
        let warp_n = cg.udivc(warp, cfg.warps_m as i64)?;
        let (m0, n0) = tile_origin(&cg, m, n, bm, bn, cfg.group_m)?;
        let ktiles = cg.udivc(k, bk)?;

        // The swizzled byte offset of 16-byte chunk `chunk` in row `row` of a tile whose rows
        // hold `cpr` chunks: chunk ^ f(row) keeps the 8 rows of one ldmatrix phase in distinct
        // bank groups (rows are 64 bytes apart when cpr = 4, hence the `row >> 1`).
        let swz = |cg: &Cg<'ctx>,
                   row: IntValue<'ctx>,
                   chunk: IntValue<'ctx>,
                   cpr: i64|
         -> Result<IntValue<'ctx>, NvptxError> {
            let f = if cpr == 4 {
                cg.andc(cg.lshrc(row, 1)?, 3)?
            } else {
                cg.andc(row, 7)?
            };
            let phys = cg.xor(chunk, f)?;
            cg.add(cg.mulc(row, cpr * 16)?, cg.mulc(phys, 16)?)
        };

        // Per-thread copy assignment: thread t copies chunk `t % cpr` of rows `t / cpr + j *
        // (threads / cpr)`.
        let a_chunk = cg.uremc(tid, cpr_a)?;
        let a_row0 = cg.udivc(tid, cpr_a)?;
        let b_chunk = cg.uremc(tid, cpr_b)?;
        let b_row0 = cg.udivc(tid, cpr_b)?;
        let a_iters = bm * cpr_a / threads;
        let b_iters = bk * cpr_b / threads;

        let load_tile =
            |cg: &Cg<'ctx>, stage: IntValue<'ctx>, kt: IntValue<'ctx>| -> Result<(), NvptxError> {
                let k0 = cg.mulc(kt, bk)?;
                for j in 0..a_iters {
                    let row = cg.addc(a_row0, j * (threads / cpr_a))?;
                    let g_row = cg.wide(cg.add(m0, row)?)?;
                    let g_col = cg.wide(cg.add(k0, cg.mulc(a_chunk, 8)?)?)?;
                    let gi = cg.add(cg.b.build_int_mul(g_row, cg.wide(k)?, "")?, g_col)?;
                    let src = cg.gep(i16t, a, gi)?;
                    let soff = cg.add(cg.mulc(stage, stage_a)?, swz(cg, row, a_chunk, cpr_a)?)?;
                    let dst = cg.byte_gep(s_a, soff)?;
                    cg.intrinsic(
                        "llvm.nvvm.cp.async.cg.shared.global.16",
                        &[],
                        &[dst.into(), src.into()],
                    )?;
                }
                for j in 0..b_iters {
                    let row = cg.addc(b_row0, j * (threads / cpr_b))?;
                    let g_row = cg.wide(cg.add(k0, row)?)?;
                    let g_col = cg.wide(cg.add(n0, cg.mulc(b_chunk, 8)?)?)?;
                    let gi = cg.add(cg.b.build_int_mul(g_row, cg.wide(n)?, "")?, g_col)?;
                    let src = cg.gep(i16t, b, gi)?;
                    let soff = cg.add(cg.mulc(stage, stage_b)?, swz(cg, row, b_chunk, cpr_b)?)?;
                    let dst = cg.byte_gep(s_b, soff)?;
                    cg.intrinsic(
                        "llvm.nvvm.cp.async.cg.shared.global.16",
                        &[],
                        &[dst.into(), src.into()],
                    )?;
                }
                Ok(())
            };
        let commit = |cg: &Cg<'ctx>| -> Result<(), NvptxError> {
            cg.intrinsic("llvm.nvvm.cp.async.commit.group", &[], &[])?;
            Ok(())
        };

        // Prologue: start the first `stages - 1` tiles (empty groups past the end keep the
        // group count, and so the wait below, uniform).
        for s in 0..cfg.stages as i64 - 1 {
            let cond = cg.ult(cg.i32(s), ktiles)?;
            cg.if_then(cond, |cg| load_tile(cg, cg.i32(s), cg.i32(s)))?;
            commit(&cg)?;
        }

        let acc: Vec<PointerValue<'ctx>> = (0..mt_n * nt_n * 4)
            .map(|i| cg.var(f32t, cg.f32(0.0).into(), &format!("acc{i}")))
            .collect::<Result<_, _>>()?;

        // Lane-dependent parts of the fragment addresses.
        let a_frag_row = cg.add(cg.mulc(warp_m, wm)?, cg.andc(lane, 15)?)?;
        let a_frag_chunk = cg.lshrc(lane, 4)?;
        let b_j = cg.lshrc(lane, 3)?;
        let b_frag_krow = cg.add(cg.mulc(cg.andc(b_j, 1)?, 8)?, cg.andc(lane, 7)?)?;
        let b_frag_chunk = cg.add(cg.mulc(warp_n, wn / 8)?, cg.lshrc(b_j, 1)?)?;

        cg.for_range(cg.i32(0), ktiles, cg.i32(1), |cg, kt| {
            cg.intrinsic(
                "llvm.nvvm.cp.async.wait.group",
                &[],
                &[cg.i32(cfg.stages as i64 - 2).into()],
            )?;
            cg.barrier()?;
            let nk = cg.addc(kt, cfg.stages as i64 - 1)?;
            let in_range = cg.ult(nk, ktiles)?;
            cg.if_then(in_range, |cg| {
                load_tile(cg, cg.uremc(nk, cfg.stages as i64)?, nk)
            })?;
            commit(cg)?;
            let stage = cg.uremc(kt, cfg.stages as i64)?;
            let sa = cg.byte_gep(s_a, cg.mulc(stage, stage_a)?)?;
            let sb = cg.byte_gep(s_b, cg.mulc(stage, stage_b)?)?;
            for kk in 0..bk / 16 {
                let mut af = Vec::new();
                for mt in 0..mt_n {
                    let row = cg.addc(a_frag_row, mt * 16)?;
                    let chunk = cg.addc(a_frag_chunk, kk * 2)?;
                    let p = cg.byte_gep(sa, swz(cg, row, chunk, cpr_a)?)?;
                    let r = cg
                        .intrinsic(
                            "llvm.nvvm.ldmatrix.sync.aligned.m8n8.x4.b16",
                            &[p.get_type().into()],
                            &[p.into()],
                        )?
                        .expect("ldmatrix result")
                        .into_struct_value();
                    let regs: Vec<IntValue<'ctx>> = (0..4)
                        .map(|i| {
                            cg.b.build_extract_value(r, i, "")
                                .map(|v| v.into_int_value())
                        })
                        .collect::<Result<_, _>>()?;
                    af.push(regs);
                }
                let mut bf: Vec<[IntValue<'ctx>; 2]> = Vec::new();
                for np in 0..nt_n / 2 {
                    let row = cg.addc(b_frag_krow, kk * 16)?;
                    let chunk = cg.addc(b_frag_chunk, np * 2)?;
                    let p = cg.byte_gep(sb, swz(cg, row, chunk, cpr_b)?)?;
                    let r = cg
                        .intrinsic(
                            "llvm.nvvm.ldmatrix.sync.aligned.m8n8.x4.trans.b16",
                            &[p.get_type().into()],
                            &[p.into()],
                        )?
                        .expect("ldmatrix result")
                        .into_struct_value();
                    let regs: Vec<IntValue<'ctx>> = (0..4)
                        .map(|i| {
                            cg.b.build_extract_value(r, i, "")
                                .map(|v| v.into_int_value())
                        })
                        .collect::<Result<_, _>>()?;
                    bf.push([regs[0], regs[1]]);
                    bf.push([regs[2], regs[3]]);
                }
                for (mt, a_frag) in af.iter().enumerate() {
                    for (nt, b_frag) in bf.iter().enumerate() {
                        let base = (mt * nt_n as usize + nt) * 4;
                        let mut args: Vec<BasicMetadataValueEnum<'ctx>> = Vec::with_capacity(10);
                        args.extend(a_frag.iter().map(|v| BasicMetadataValueEnum::from(*v)));
                        args.extend(b_frag.iter().map(|v| BasicMetadataValueEnum::from(*v)));
                        for i in 0..4 {
                            args.push(cg.b.build_load(f32t, acc[base + i], "")?.into());
                        }
                        let d = cg
                            .intrinsic("llvm.nvvm.mma.m16n8k16.row.col.bf16", &[], &args)?
                            .expect("mma result")
                            .into_struct_value();
                        for i in 0..4 {
                            let v = cg.b.build_extract_value(d, i as u32, "")?;
                            cg.b.build_store(acc[base + i], v)?;
                        }
                    }
                }
            }
            Ok(())
        })?;
        cg.intrinsic("llvm.nvvm.cp.async.wait.group", &[], &[cg.i32(0).into()])?;

        // Epilogue: the m16n8 accumulator layout gives each thread columns 2*(lane%4) and +1 of
        // rows lane/4 (c0, c1) and lane/4 + 8 (c2, c3).
        let row_base = cg.add(cg.add(m0, cg.mulc(warp_m, wm)?)?, cg.lshrc(lane, 2)?)?;
        let col_base = cg.add(
            cg.add(n0, cg.mulc(warp_n, wn)?)?,
            cg.mulc(cg.andc(lane, 3)?, 2)?,
        )?;
        for mt in 0..mt_n {
            for nt in 0..nt_n {
                let base = ((mt * nt_n + nt) * 4) as usize;
                let v: Vec<FloatValue<'ctx>> = (0..4)
                    .map(|i| {
                        cg.b.build_load(f32t, acc[base + i], "")
                            .map(|v| v.into_float_value())
                    })
                    .collect::<Result<_, _>>()?;
                let row = cg.addc(row_base, mt * 16)?;
                let col = cg.addc(col_base, nt * 8)?;
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
        }
        cg.ret()?;
        Ok(cg)
    }
}
