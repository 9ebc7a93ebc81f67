//! The CUDA runtime: load PTX (the driver JIT-compiles it for the GPU at hand), allocate device
//! memory, launch kernels on one stream, and time them with CUDA events.
//!
//! The driver library (`libcuda.so`) is loaded at run time through `cudarc`'s dynamic loading,
//! so this module builds and links on machines without CUDA. `cudarc` panics when asked to use
//! a driver library that is absent, so [`Gpu::new`] first checks that the library can be
//! loaded and returns [`CudaError::NoDriver`] instead.
//!
//! Everything is submitted to the context's default stream, in order; buffers are plain byte
//! allocations ([`DeviceBuffer`]) because kernels describe their own element types.
#![allow(unsafe_code)]

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DriverError, LaunchConfig,
    PushKernelArg, sys,
};
use std::sync::Arc;

mod exec;
pub use exec::{ExecError, Executable};

/// What can go wrong talking to a GPU.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No CUDA driver library on this machine (no NVIDIA driver installed).
    #[error(
        "no CUDA driver found (libcuda.so could not be loaded): this machine has no NVIDIA driver; run on a machine with an NVIDIA GPU"
    )]
    NoDriver,
    /// The driver is there but sees no usable GPU.
    #[error("the CUDA driver reports no usable GPU (asked for device {ordinal}): {detail}")]
    NoDevice { ordinal: usize, detail: String },
    /// A driver call failed.
    #[error("CUDA {op} failed: {source}")]
    Driver {
        op: String,
        #[source]
        source: DriverError,
    },
    /// A kernel was launched with arguments that do not fit it.
    #[error("invalid launch of `{kernel}`: {why}")]
    Launch { kernel: String, why: String },
}

fn drv(op: impl Into<String>) -> impl FnOnce(DriverError) -> CudaError {
    let op = op.into();
    move |source| CudaError::Driver { op, source }
}

/// Whether the CUDA driver library can be loaded on this machine.
pub fn driver_present() -> bool {
    // SAFETY: `is_culib_present` only tries `dlopen` on the driver library's usual names and
    // drops the handles; it touches no CUDA state. It is `unsafe` only because loading a shared
    // library runs its initialisers, which for libcuda are well behaved.
    unsafe { sys::is_culib_present() }
}

/// One GPU, its primary context and the stream everything runs on.
#[derive(Debug)]
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
}

/// A device allocation of raw bytes.
#[derive(Debug)]
pub struct DeviceBuffer {
    slice: CudaSlice<u8>,
}

impl DeviceBuffer {
    pub fn len_bytes(&self) -> usize {
        self.slice.len()
    }
}

/// A kernel loaded from PTX.
#[derive(Debug, Clone)]
pub struct Kernel {
    name: String,
    func: CudaFunction,
    _module: Arc<CudaModule>,
}

/// One kernel argument, in the kernel's parameter order.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    Buf(&'a DeviceBuffer),
    I32(i32),
    F32(f32),
}

/// Grid and block shape of a launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
}

impl Kernel {
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Registers per thread, as the driver's JIT allocated them.
    pub fn num_regs(&self) -> Result<i32, CudaError> {
        self.func
            .num_regs()
            .map_err(drv("cuFuncGetAttribute(NUM_REGS)"))
    }
    /// Static shared memory per block, in bytes.
    pub fn shared_bytes(&self) -> Result<i32, CudaError> {
        self.func
            .shared_size_bytes()
            .map_err(drv("cuFuncGetAttribute(SHARED_SIZE_BYTES)"))
    }
    /// Allows launches with up to `bytes` of dynamic shared memory (above the default 48 KiB,
    /// up to the device's opt-in limit, 227 KiB on Hopper).
    pub fn set_max_dynamic_shared_bytes(&self, bytes: u32) -> Result<(), CudaError> {
        self.func
            .set_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
            .map_err(drv(format!(
                "cuFuncSetAttribute(`{}`, MAX_DYNAMIC_SHARED_SIZE_BYTES = {bytes})",
                self.name
            )))
    }
    /// Local (spill) memory per thread, in bytes.
    pub fn local_bytes(&self) -> Result<i32, CudaError> {
        self.func
            .local_size_bytes()
            .map_err(drv("cuFuncGetAttribute(LOCAL_SIZE_BYTES)"))
    }
}

impl Gpu {
    /// Opens device `ordinal`. Fails with [`CudaError::NoDriver`] where no driver is installed
    /// and [`CudaError::NoDevice`] where the driver sees no such GPU; never panics.
    pub fn new(ordinal: usize) -> Result<Gpu, CudaError> {
        if !driver_present() {
            return Err(CudaError::NoDriver);
        }
        let count = CudaContext::device_count().map_err(|e| CudaError::NoDevice {
            ordinal,
            detail: e.to_string(),
        })?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaError::NoDevice {
                ordinal,
                detail: format!("{count} device(s) present"),
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(drv("context creation"))?;
        // SAFETY: this runtime uses a single stream; every allocation, copy and launch is
        // ordered on it, and buffers are freed only after `synchronize` (see `Drop` of
        // `CudaSlice`, which frees asynchronously on the same stream). Cross-stream event
        // tracking is therefore unnecessary, and it would add event records to timed regions.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        Ok(Gpu { ctx, stream })
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> Result<String, CudaError> {
        self.ctx.name().map_err(drv("cuDeviceGetName"))
    }

    /// Compute capability `(major, minor)`.
    pub fn compute_capability(&self) -> Result<(i32, i32), CudaError> {
        self.ctx
            .compute_capability()
            .map_err(drv("cuDeviceGetAttribute"))
    }

    /// Number of streaming multiprocessors.
    pub fn sm_count(&self) -> Result<i32, CudaError> {
        self.ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(drv("cuDeviceGetAttribute(MULTIPROCESSOR_COUNT)"))
    }

    /// Loads PTX text (JIT-compiled by the driver) and looks up `kernel` in it.
    pub fn load_ptx(&self, ptx: &str, kernel: &str) -> Result<Kernel, CudaError> {
        let module = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
            .map_err(drv(format!("loading PTX of `{kernel}` (driver JIT)")))?;
        let func = module
            .load_function(kernel)
            .map_err(drv(format!("cuModuleGetFunction(`{kernel}`)")))?;
        Ok(Kernel {
            name: kernel.to_string(),
            func,
            _module: module,
        })
    }

    /// Copies `bytes` to a new device buffer.
    pub fn upload(&self, bytes: &[u8]) -> Result<DeviceBuffer, CudaError> {
        let slice = self.stream.clone_htod(bytes).map_err(drv("cuMemcpyHtoD"))?;
        Ok(DeviceBuffer { slice })
    }

    /// A new device buffer of `len` bytes, every byte set to `fill` (poison it with 0xff to
    /// catch unwritten outputs: that is a NaN in every float format).
    pub fn alloc_filled(&self, len: usize, fill: u8) -> Result<DeviceBuffer, CudaError> {
        self.upload(&vec![fill; len])
    }

    /// Copies `bytes` into the start of an existing device buffer (which must be at least as
    /// long).
    pub fn write(&self, buf: &mut DeviceBuffer, bytes: &[u8]) -> Result<(), CudaError> {
        if bytes.len() > buf.len_bytes() {
            return Err(CudaError::Launch {
                kernel: "(upload)".into(),
                why: format!(
                    "{} bytes do not fit a {}-byte buffer",
                    bytes.len(),
                    buf.len_bytes()
                ),
            });
        }
        let mut view = buf.slice.slice_mut(..bytes.len());
        self.stream
            .memcpy_htod(bytes, &mut view)
            .map_err(drv("cuMemcpyHtoD"))
    }

    /// Copies a device buffer back.
    pub fn download(&self, buf: &DeviceBuffer) -> Result<Vec<u8>, CudaError> {
        self.stream
            .clone_dtoh(&buf.slice)
            .map_err(drv("cuMemcpyDtoH"))
    }

    /// Device-to-device copy of all of `src` into `dst` (same length).
    pub fn copy(&self, src: &DeviceBuffer, dst: &mut DeviceBuffer) -> Result<(), CudaError> {
        self.stream
            .memcpy_dtod(&src.slice, &mut dst.slice)
            .map_err(drv("cuMemcpyDtoD"))
    }

    /// Enqueues one launch of `kernel`. The caller answers for the arguments matching the
    /// kernel's parameters and for every buffer being large enough for the launch's accesses:
    /// PTX carries no types the driver could check.
    pub fn launch(
        &self,
        kernel: &Kernel,
        launch: Launch,
        args: &[Arg<'_>],
    ) -> Result<(), CudaError> {
        let mut builder = self.stream.launch_builder(&kernel.func);
        for a in args {
            match a {
                Arg::Buf(b) => builder.arg(&b.slice),
                Arg::I32(v) => builder.arg(v),
                Arg::F32(v) => builder.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: launch.grid,
            block_dim: launch.block,
            shared_mem_bytes: launch.shared_bytes,
        };
        // SAFETY: the caller guarantees the arguments match the kernel's PTX signature and that
        // the buffers cover every index the launch touches (see this function's docs); the
        // argument values live in `args`, which outlives this call, and the driver copies
        // them at launch.
        unsafe { builder.launch(cfg) }
            .map_err(drv(format!("cuLaunchKernel(`{}`)", kernel.name)))?;
        Ok(())
    }

    /// Waits for all enqueued work; reports errors from earlier asynchronous launches.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream
            .synchronize()
            .map_err(drv("cuStreamSynchronize"))?;
        self.ctx
            .check_err()
            .map_err(drv("an earlier asynchronous operation"))
    }

    /// Times `f` (which enqueues work on this stream) with CUDA events: `warmup` untimed calls,
    /// then `reps` timed ones. Returns each timed call's milliseconds.
    pub fn time_ms(
        &self,
        warmup: usize,
        reps: usize,
        mut f: impl FnMut() -> Result<(), CudaError>,
    ) -> Result<Vec<f32>, CudaError> {
        for _ in 0..warmup {
            f()?;
        }
        self.synchronize()?;
        let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut events = Vec::with_capacity(reps);
        for _ in 0..reps {
            let start = self.ctx.new_event(flags).map_err(drv("cuEventCreate"))?;
            let end = self.ctx.new_event(flags).map_err(drv("cuEventCreate"))?;
            start.record(&self.stream).map_err(drv("cuEventRecord"))?;
            f()?;
            end.record(&self.stream).map_err(drv("cuEventRecord"))?;
            events.push((start, end));
        }
        self.synchronize()?;
        events
            .iter()
            .map(|(s, e)| s.elapsed_ms(e).map_err(drv("cuEventElapsedTime")))
            .collect()
    }
}

/// The median of `xs` (which it sorts).
pub fn median(xs: &mut [f32]) -> f32 {
    xs.sort_by(f32::total_cmp);
    if xs.is_empty() {
        f32::NAN
    } else {
        xs[xs.len() / 2]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine without a driver the runtime says so with a typed error; with one, it
    /// opens the GPU or reports why not. It never panics either way.
    #[test]
    fn opening_a_gpu_never_panics() {
        match Gpu::new(0) {
            Ok(gpu) => assert!(driver_present() && gpu.name().is_ok()),
            Err(CudaError::NoDriver) => {
                assert!(!driver_present());
                assert!(CudaError::NoDriver.to_string().contains("no CUDA driver"));
            }
            Err(e @ (CudaError::NoDevice { .. } | CudaError::Driver { .. })) => {
                assert!(driver_present(), "{e}");
            }
            Err(e) => panic!("unexpected error opening a GPU: {e}"),
        }
    }

    #[test]
    fn asking_for_a_missing_device_is_an_error() {
        assert!(Gpu::new(1 << 20).is_err());
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(&mut []).is_nan());
    }
}
