//! CUDA devices for libtorch. The build links the CPU library only; on a GPU machine
//! `libtorch_cuda.so` (from a PyTorch 2.11 CUDA installation) is loaded at run time, before the
//! first CUDA call, from `OSTEO_LIBTORCH_CUDA` (a file path) or the dynamic loader's search path
//! (`LD_LIBRARY_PATH`).

use osteo_core::{BackendError, Device};
use std::sync::OnceLock;

/// Environment variable naming `libtorch_cuda.so`.
pub const CUDA_LIBRARY_ENV: &str = "OSTEO_LIBTORCH_CUDA";

static LOADED: OnceLock<Result<(), String>> = OnceLock::new();

/// Loads `libtorch_cuda.so` once per process, globally (its CUDA kernels register themselves
/// with libtorch on load).
#[allow(unsafe_code)] // dlopen and dlerror (SAFETY comments below)
fn load_cuda_library() -> Result<(), String> {
    LOADED
        .get_or_init(|| {
            let name = std::env::var(CUDA_LIBRARY_ENV)
                .ok()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "libtorch_cuda.so".into());
            let c_name = std::ffi::CString::new(name.clone())
                .map_err(|_| format!("{CUDA_LIBRARY_ENV} contains a NUL byte"))?;
            // SAFETY: dlopen with a valid C string; the handle is kept for the process lifetime
            // (never closed), as libtorch's registrations point into the library.
            let handle =
                unsafe { libc::dlopen(c_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if handle.is_null() {
                // SAFETY: dlerror returns a thread-local C string or null.
                let why = unsafe {
                    let e = libc::dlerror();
                    if e.is_null() {
                        "unknown error".to_string()
                    } else {
                        std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
                    }
                };
                return Err(format!(
                    "cannot load {name} ({why}); install PyPI torch {} with CUDA and set \
                     {CUDA_LIBRARY_ENV} to its torch/lib/libtorch_cuda.so (or put that directory \
                     on LD_LIBRARY_PATH)",
                    crate::LIBTORCH_RELEASE
                ));
            }
            Ok(())
        })
        .clone()
}

/// The libtorch device of an OsteoServe device; CUDA devices must exist.
pub fn torch_device(device: Device) -> Result<tch::Device, BackendError> {
    match device {
        Device::Cpu => Ok(tch::Device::Cpu),
        Device::Cuda(i) => {
            load_cuda_library().map_err(|e| BackendError::Device(format!("cuda:{i}: {e}")))?;
            let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
            if i >= count {
                return Err(BackendError::Device(format!(
                    "cuda:{i} requested but libtorch sees {count} CUDA device(s)"
                )));
            }
            Ok(tch::Device::Cuda(i))
        }
    }
}
