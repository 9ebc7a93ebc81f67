//! Shared helpers for mlc's integration tests (the `all` test binary) and test runners.
//!
//! - [`node`] runs the ONNX backend node tests (the `node-tests` binary).
//! - [`mlc`] runs the built `mlc` binary. Cargo only gives a package's own binaries to its
//!   tests (`CARGO_BIN_EXE_*`), so the binary is found beside this test executable in the same
//!   target directory; build it first with `cargo build -p mlc-cli` (`scripts/test.sh` does) or
//!   point `MLC_BIN` at one. A missing or stale binary fails the test with that instruction.
//! - [`onnx`] writes small ONNX models as protobuf bytes, with no dependency on the importer.
//! - [`tolerance`] is the one place where numeric agreement is defined.
//! - [`TempDir`] is a scratch directory removed on drop.

pub mod node;
pub mod onnx;
pub mod tolerance;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

/// The workspace root.
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .expect("the tests crate sits one level below the workspace root")
        .to_path_buf()
}

/// Where the development corpus lives: `$MLC_MODELS_DIR`, else `models-dev/` in the repo root.
pub fn models_dir() -> PathBuf {
    std::env::var_os("MLC_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("models-dev"))
}

/// The `mlc` binary to test: `$MLC_BIN`, or `mlc` in this test executable's target directory.
pub fn mlc_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MLC_BIN") {
        return PathBuf::from(p);
    }
    // Test executables live in <target>/<profile>/deps/, binaries in <target>/<profile>/.
    let exe = std::env::current_exe().expect("the test executable has a path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in <target>/<profile>/deps");
    let bin = profile_dir.join(format!("mlc{}", std::env::consts::EXE_SUFFIX));
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).unwrap_or_else(|_| {
        panic!("no mlc binary at {}: run `cargo build -p mlc-cli` before the tests (scripts/test.sh does)", bin.display())
    });
    if let Some((newest, path)) = newest_source() {
        assert!(
            newest <= built,
            "the mlc binary at {} is older than {}: run `cargo build -p mlc-cli` before the tests (scripts/test.sh does)",
            bin.display(),
            path.display()
        );
    }
    bin
}

/// The most recently modified Rust source or manifest of the crates `mlc` is built from.
fn newest_source() -> Option<(SystemTime, PathBuf)> {
    fn walk(dir: &Path, best: &mut Option<(SystemTime, PathBuf)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "target" && n != "tests") {
                    walk(&p, best);
                }
            } else if p
                .extension()
                .is_some_and(|x| x == "rs" || x == "toml" || x == "proto")
                // Unit-test modules (`tests.rs`, `tests_*.rs`) are not part of the binary.
                && !p
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .is_some_and(|s| s == "tests" || s.starts_with("tests_"))
                && let Ok(t) = e.metadata().and_then(|m| m.modified())
                && best.as_ref().is_none_or(|(b, _)| t > *b)
            {
                *best = Some((t, p));
            }
        }
    }
    let mut best = None;
    for d in ["ir", "passes", "compiler", "runtime"] {
        walk(&repo_root().join(d), &mut best);
    }
    best
}

/// The result of one `mlc` invocation.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts a clean failure: exit status 1 (not a caught panic, not a crash), one `error:`
    /// paragraph on stderr that contains every one of `needles`, and nothing on stdout.
    pub fn assert_error(&self, needles: &[&str]) {
        assert_eq!(
            self.code,
            Some(1),
            "expected exit status 1; stderr: {}",
            self.stderr
        );
        let err = self.stderr.trim_end();
        assert!(
            err.starts_with("error: "),
            "stderr should start with `error: `: {err}"
        );
        assert!(
            !err.contains('\n'),
            "the error should be one paragraph: {err}"
        );
        assert!(!err.contains("panicked"), "mlc panicked: {err}");
        for n in needles {
            assert!(err.contains(n), "the error should mention {n:?}: {err}");
        }
        assert!(
            self.stdout.is_empty(),
            "nothing on stdout on failure: {}",
            self.stdout
        );
    }

    pub fn assert_success(&self) {
        assert_eq!(self.code, Some(0), "mlc failed: {}", self.stderr);
    }
}

/// Runs `mlc` with `args` in `cwd`.
pub fn mlc_in(cwd: &Path, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Run {
    let out: Output = Command::new(mlc_bin())
        .args(args.iter().map(|a| a.as_ref()))
        .current_dir(cwd)
        .output()
        .expect("the mlc binary starts");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `mlc` with `args` in the workspace root.
pub fn mlc(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Run {
    mlc_in(&repo_root(), args)
}

/// A fresh directory under the system temp dir, removed (with its contents) on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("mlc-test-{tag}-{}-{n}", std::process::id()));
        // A leftover from a crashed run with the same pid is stale: start clean.
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("the temp dir is writable");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.0.join(p)
    }

    /// The names of the entries in the directory, sorted.
    pub fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `.npy` file's elements as f64 (strings are not numbers: `None`), with its shape.
pub fn read_npy_f64(path: &Path) -> Result<(Vec<usize>, Option<Vec<f64>>), String> {
    use mlc_runtime::npy::{NpyArray, NpyData};
    let a = NpyArray::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let NpyData::Bytes(bytes) = &a.data else {
        return Ok((a.shape, None));
    };
    let dtype = mlc_ir::DType::from_name(a.elem.name()).expect("every .npy type is an mlc dtype");
    let t = mlc_ir::Tensor::from_le_bytes(dtype, &a.shape, bytes).map_err(|e| e.to_string())?;
    let values = t.to_f64_vec().map_err(|e| e.to_string())?;
    Ok((a.shape, Some(values)))
}
