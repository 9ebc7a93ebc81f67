//! The `mlc` command: inspect ONNX models, run them with the reference interpreter, and
//! optimize graphs by equality saturation.
//!
//! This is the edge where typed library errors become `anyhow` errors. Every failure prints one
//! paragraph on stderr and exits non-zero; a panic (always a bug in mlc) is caught and reported
//! the same way, so that scripts never see a backtrace or a half-written output.

mod bench;
mod compile;
mod inspect;
mod inspect_artifact;
mod opt;
mod optimize;
mod pipeline;
mod run;
mod tensor_io;

use clap::{Parser, Subcommand};
use std::io::Write;
use std::process::ExitCode;
use std::sync::Mutex;

/// Exit status for errors in the user's model, inputs or files.
const EXIT_ERROR: u8 = 1;
/// Exit status for a caught panic: a bug in mlc (sysexits' EX_SOFTWARE).
const EXIT_BUG: u8 = 70;

#[derive(Debug, Parser)]
#[command(
    name = "mlc",
    version,
    about = "mlc, an ML model compiler: inspect, compile, run and benchmark ONNX models",
    long_about = "mlc, an ML model compiler.\n\n\
        `mlc inspect` describes an ONNX model and lists every op mlc cannot import yet; \
        `mlc compile` compiles a model for the CPU or an NVIDIA GPU into an artifact; \
        `mlc run` executes a model or a CPU artifact (compiled code; --reference for mlc's exact \
        interpreter) on inputs from .npy or ONNX TensorProto (.pb) files and writes one .npy file \
        per output; `mlc bench` measures latency; \
        `mlc opt` optimizes a graph by equality saturation and explains what it did.",
    after_help = "Exit status: 0 on success, 1 on an error in the model, the inputs or the files \
        (one paragraph on stderr), 2 on a usage error, 70 on an internal error (a bug in mlc)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Describe a model: inputs and outputs with dtypes and shapes, opsets, op histogram,
    /// parameter count, and every unsupported op with the nodes that use it; or an artifact
    /// (.mlca): target, ABI, CPU features, inputs, outputs, kernels.
    Inspect(inspect::Args),
    /// Run a model (.onnx, compiled on the fly) or a CPU artifact (.mlca); write
    /// DIR/<output>.npy for every output. --reference runs the reference interpreter.
    Run(run::Args),
    /// Optimize a graph (IR text or .onnx) by equality saturation; print the optimized IR, or
    /// with --explain the kernels, the rules that built them and their costs.
    Opt(opt::Args),
    /// Compile a model for the CPU (--target x86_64: an artifact that `mlc run` and
    /// `mlc-runtime` execute) or an NVIDIA GPU (--target sm_90: an artifact that `mlc-gpu run`
    /// executes), or with --emit a stage: graph IR, kernel IR, CLIF, PTX, LLVM IR.
    Compile(compile::Args),
    /// Measure a model's latency on this CPU (median, p90; memory): an artifact, or an .onnx
    /// compiled first.
    Bench(bench::Args),
}

/// The message of the last panic, recorded by the hook so `main` can report it as an error.
static PANIC_MESSAGE: Mutex<Option<String>> = Mutex::new(None);

fn main() -> ExitCode {
    // Usage errors and --help/--version are clap's to print; it exits with 2 or 0.
    let cli = Cli::parse();
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        if let Ok(mut slot) = PANIC_MESSAGE.lock() {
            *slot = Some(format!("{msg}{at}"));
        }
    }));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &cli.command {
        Command::Inspect(args) => inspect::main(args),
        Command::Run(args) => run::main(args),
        Command::Opt(args) => opt::main(args),
        Command::Compile(args) => compile::main(args),
        Command::Bench(args) => bench::main(args),
    }));
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            report(&format!("error: {}", one_paragraph(&format!("{e:#}"))));
            ExitCode::from(EXIT_ERROR)
        }
        Err(_) => {
            let msg = PANIC_MESSAGE
                .lock()
                .ok()
                .and_then(|mut m| m.take())
                .unwrap_or_default();
            report(&format!(
                "error: internal error in mlc (this is a bug, please report it with the model): {}",
                one_paragraph(&msg)
            ));
            ExitCode::from(EXIT_BUG)
        }
    }
}

/// Joins the lines of a message into one paragraph, so every error is a single block of text.
fn one_paragraph(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn report(msg: &str) {
    // Nothing useful can be done if stderr is gone.
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

/// Writes `text` to stdout; a closed pipe (`mlc inspect m.onnx | head`) is not an error.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn errors_are_one_paragraph() {
        assert_eq!(one_paragraph("a: b\n  c\n\nd"), "a: b c d");
    }
}
