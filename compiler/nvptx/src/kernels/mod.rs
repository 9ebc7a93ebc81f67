//! Hand-built kernel templates. Each is a [`crate::KernelSource`]; [`catalog`] lists the
//! variants mlc ships and tests, with the architectures each is built for.

pub mod elementwise;
pub mod gemm;
pub mod wgmma;

use crate::{GpuArch, KernelSource};
use gemm::{Epilogue, MmaGemm, NaiveGemm, OutType};
use wgmma::WgmmaGemm;

/// Every kernel variant with the architectures its PTX is emitted and ptxas-checked for.
pub fn catalog() -> Vec<(Box<dyn KernelSource>, Vec<GpuArch>)> {
    let all = GpuArch::ALL.to_vec();
    let plain = Epilogue::default();
    let fused = Epilogue {
        bias: true,
        relu: true,
    };
    vec![
        (Box::new(elementwise::AffineRelu), all.clone()),
        (
            Box::new(NaiveGemm {
                out: OutType::F32,
                epilogue: plain,
            }),
            all.clone(),
        ),
        (
            Box::new(MmaGemm::default_for(OutType::F32, plain)),
            all.clone(),
        ),
        (
            Box::new(MmaGemm::default_for(OutType::Bf16, plain)),
            all.clone(),
        ),
        (
            Box::new(MmaGemm::default_for(OutType::Bf16, fused)),
            all.clone(),
        ),
        (
            Box::new(MmaGemm::default_for(OutType::F32, fused)),
            all.clone(),
        ),
        (
            Box::new(MmaGemm {
                bm: 128,
                bn: 256,
                bk: 32,
                warps_m: 2,
                warps_n: 4,
                stages: 2,
                group_m: 1,
                out: OutType::Bf16,
                epilogue: plain,
            }),
            all.clone(),
        ),
        (
            Box::new(MmaGemm {
                bm: 64,
                bn: 128,
                bk: 64,
                warps_m: 2,
                warps_n: 2,
                stages: 2,
                group_m: 1,
                out: OutType::Bf16,
                epilogue: plain,
            }),
            all.clone(),
        ),
        // Grouped block order (8 tile rows per group) for L2 reuse.
        (
            Box::new(MmaGemm {
                group_m: 8,
                ..MmaGemm::default_for(OutType::Bf16, plain)
            }),
            all.clone(),
        ),
        (
            Box::new(MmaGemm {
                bm: 128,
                bn: 256,
                bk: 32,
                warps_m: 2,
                warps_n: 4,
                stages: 2,
                group_m: 8,
                out: OutType::Bf16,
                epilogue: plain,
            }),
            all,
        ),
        // Hopper only: wgmma from shared memory, B given transposed (N×K).
        (
            Box::new(WgmmaGemm {
                warpgroups: 2,
                bn: 128,
                stages: 4,
                group_m: 8,
                in_flight: 0,
                out: OutType::Bf16,
                epilogue: plain,
            }),
            vec![GpuArch::Sm90a],
        ),
        (
            Box::new(WgmmaGemm {
                warpgroups: 2,
                bn: 256,
                stages: 3,
                group_m: 8,
                in_flight: 0,
                out: OutType::Bf16,
                epilogue: plain,
            }),
            vec![GpuArch::Sm90a],
        ),
        (
            Box::new(WgmmaGemm {
                warpgroups: 2,
                bn: 128,
                stages: 4,
                group_m: 8,
                in_flight: 1,
                out: OutType::Bf16,
                epilogue: plain,
            }),
            vec![GpuArch::Sm90a],
        ),
        (
            Box::new(WgmmaGemm {
                warpgroups: 2,
                bn: 256,
                stages: 4,
                group_m: 8,
                in_flight: 1,
                out: OutType::Bf16,
                epilogue: plain,
            }),
            vec![GpuArch::Sm90a],
        ),
        (
            Box::new(WgmmaGemm {
                warpgroups: 2,
                bn: 256,
                stages: 4,
                group_m: 8,
                in_flight: 1,
                out: OutType::Bf16,
                epilogue: fused,
            }),
            vec![GpuArch::Sm90a],
        ),
        (
            Box::new(WgmmaGemm {
                warpgroups: 4,
                bn: 128,
                stages: 4,
                group_m: 8,
                in_flight: 1,
                out: OutType::Bf16,
                epilogue: plain,
            }),
            vec![GpuArch::Sm90a],
        ),
        (
            Box::new(WgmmaGemm {
                warpgroups: 4,
                bn: 128,
                stages: 4,
                group_m: 8,
                in_flight: 1,
                out: OutType::Bf16,
                epilogue: fused,
            }),
            vec![GpuArch::Sm90a],
        ),
        (
            Box::new(WgmmaGemm {
                warpgroups: 2,
                bn: 256,
                stages: 4,
                group_m: 1,
                in_flight: 1,
                out: OutType::Bf16,
                epilogue: plain,
            }),
            vec![GpuArch::Sm90a],
        ),
    ]
}
