//! Writes the PTX of every catalogued kernel into a directory, one `<kernel>.<arch>.ptx` each,
//! and checks each with ptxas when it is found (`MLC_PTXAS` or the repository's `.venv`).
//!
//! `cargo run -p mlc-nvptx --example emit_ptx -- OUT_DIR [ARCH]`

use mlc_nvptx::{GpuArch, emit_ptx, kernels, ptxas};
use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().ok_or("usage: emit_ptx OUT_DIR [ARCH]")?);
    let only: Option<GpuArch> = args.next().map(|a| a.parse()).transpose()?;
    std::fs::create_dir_all(&out)?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let ptxas_bin = ptxas::find_ptxas(&root);
    for (k, archs) in kernels::catalog() {
        for arch in archs {
            if only.is_some_and(|o| o != arch) {
                continue;
            }
            let ptx = emit_ptx(k.as_ref(), arch)?;
            let file = out.join(format!("{}.{}.ptx", k.name(), arch));
            std::fs::write(&file, &ptx)?;
            let status = match &ptxas_bin {
                Some(p) => {
                    let r = ptxas::assemble(p, &ptx, arch, &k.name())?;
                    r.info
                        .lines()
                        .filter(|l| l.contains("registers") || l.contains("spill"))
                        .map(|l| l.trim().trim_start_matches("ptxas info    : ").to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                }
                None => "ptxas not found".into(),
            };
            println!("{}: {status}", file.display());
        }
    }
    Ok(())
}
