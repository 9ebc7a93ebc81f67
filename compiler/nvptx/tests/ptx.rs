//! PTX checks that need no GPU: every catalogued kernel assembles with `ptxas` for each of its
//! targets, the PTX of a few kernels is pinned by snapshots, and the tensor-core kernels contain
//! the instructions they are meant to.
//!
//! `ptxas` comes from `MLC_PTXAS` or the repository's `.venv` (`scripts/test.sh` installs the
//! `nvidia-cuda-nvcc-cu12` wheel there). Without it the assembly test fails under `CI=true` and
//! says so loudly elsewhere.

use mlc_nvptx::kernels::elementwise::AffineRelu;
use mlc_nvptx::kernels::gemm::{Epilogue, MmaGemm, NaiveGemm, OutType};
use mlc_nvptx::kernels::wgmma::WgmmaGemm;
use mlc_nvptx::{GpuArch, KernelSource, NvptxError, emit_ptx, kernels, ptxas};
use std::path::Path;

fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn every_kernel_assembles_with_ptxas() {
    let Some(ptxas_bin) = ptxas::find_ptxas(repo_root()) else {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "{}", NvptxError::PtxasNotFound);
        eprintln!("SKIPPED (not under CI): {}", NvptxError::PtxasNotFound);
        return;
    };
    let mut checked = 0;
    for (k, archs) in kernels::catalog() {
        for arch in archs {
            let ptx = emit_ptx(k.as_ref(), arch).unwrap_or_else(|e| panic!("{}: {e}", k.name()));
            assert!(
                ptx.contains(&format!(".target {}", arch.name())),
                "{}",
                k.name()
            );
            assert!(ptx.contains(".version 8.0"), "{}", k.name());
            let report = ptxas::assemble(&ptxas_bin, &ptx, arch, &k.name())
                .unwrap_or_else(|e| panic!("{e}"));
            // Spilling accumulators to local memory would make the tensor-core kernels useless.
            assert!(
                report.info.contains("0 bytes spill stores"),
                "{} spills on {arch}:\n{}",
                k.name(),
                report.info
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} kernels checked");
}

#[test]
fn tensor_core_kernel_uses_mma_ldmatrix_and_cp_async() {
    let k = MmaGemm::default_for(
        OutType::Bf16,
        Epilogue {
            bias: true,
            relu: true,
        },
    );
    let ptx = emit_ptx(&k, GpuArch::Sm90).unwrap();
    // 4 m16 tiles × 4 n8 tiles per warp, two k16 steps per 32-wide K tile.
    assert_eq!(
        ptx.matches("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32")
            .count(),
        32
    );
    assert!(ptx.contains("ldmatrix.sync.aligned.m8n8.x4.shared.b16"));
    assert!(ptx.contains("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16"));
    assert!(ptx.contains("cp.async.cg.shared.global"));
    assert!(ptx.contains("cp.async.wait_group 1"));
    assert!(ptx.contains("cvt.rn.bf16x2.f32"));
    assert!(!ptx.contains(".local"), "accumulators went to local memory");
}

#[test]
fn hopper_kernel_uses_wgmma_from_shared_memory() {
    let k = WgmmaGemm {
        warpgroups: 2,
        bn: 256,
        stages: 3,
        group_m: 8,
        in_flight: 0,
        out: OutType::Bf16,
        epilogue: Epilogue::default(),
    };
    let ptx = emit_ptx(&k, GpuArch::Sm90a).unwrap();
    assert!(ptx.contains(".target sm_90a"));
    // Four k16 steps per 64-wide K tile.
    assert_eq!(
        ptx.matches("wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16")
            .count(),
        4
    );
    assert!(ptx.contains("wgmma.fence.sync.aligned"));
    assert!(ptx.contains("wgmma.commit_group.sync.aligned"));
    assert!(ptx.contains("wgmma.wait_group.sync.aligned 0"));
    assert!(ptx.contains("fence.proxy.async.shared::cta"));
    assert!(ptx.contains(".extern .shared .align 1024 .b8 smem[]"));
    // wgmma does not exist on plain sm_90 (nor sm_80): asking is a typed error, not bad PTX.
    assert!(matches!(
        emit_ptx(&k, GpuArch::Sm90),
        Err(NvptxError::Unsupported(_))
    ));
}

#[test]
fn elementwise_kernel_uses_16_byte_accesses() {
    let ptx = emit_ptx(&AffineRelu, GpuArch::Sm90).unwrap();
    // `.nc` (read-only path) because the pointer parameters are `noalias`.
    assert!(ptx.contains("ld.global.nc.v4.f32"));
    assert!(ptx.contains("st.global.v4.f32"));
}

#[test]
fn unsupported_configurations_are_typed_errors() {
    let mut k = MmaGemm::default_for(OutType::F32, Epilogue::default());
    k.stages = 4;
    let err = emit_ptx(&k, GpuArch::Sm90).unwrap_err();
    assert!(matches!(err, NvptxError::Unsupported(_)), "{err}");
    k.stages = 3;
    k.bk = 16;
    assert!(matches!(
        emit_ptx(&k, GpuArch::Sm90),
        Err(NvptxError::Unsupported(_))
    ));
    assert!(matches!(
        "sm_70".parse::<GpuArch>(),
        Err(NvptxError::Unsupported(_))
    ));
    assert_eq!("sm_90a".parse::<GpuArch>().unwrap(), GpuArch::Sm90a);
}

#[test]
fn ptx_snapshots() {
    let cases: [(&dyn KernelSource, GpuArch); 3] = [
        (&AffineRelu, GpuArch::Sm90),
        (
            &NaiveGemm {
                out: OutType::F32,
                epilogue: Epilogue::default(),
            },
            GpuArch::Sm80,
        ),
        (
            &MmaGemm::default_for(
                OutType::Bf16,
                Epilogue {
                    bias: true,
                    relu: true,
                },
            ),
            GpuArch::Sm90,
        ),
    ];
    for (k, arch) in cases {
        let ptx = emit_ptx(k, arch).unwrap();
        insta::assert_snapshot!(format!("{}.{}", k.name(), arch), ptx);
    }
}
