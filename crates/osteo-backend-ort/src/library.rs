//! Finding and loading the ONNX Runtime shared library (the `load-dynamic` build links nothing at
//! build time) and the one ORT environment of the process.

use osteo_core::BackendError;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The ONNX Runtime release this backend is built and tested against (`scripts/setup.sh`
/// fetches it from the PyPI `onnxruntime` wheel).
pub const ORT_RELEASE: &str = "1.31.1";
/// Environment variable naming the library file; it overrides every default location.
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";
/// File name of the library.
pub const DYLIB_NAME: &str = "libonnxruntime.so";

/// Where `scripts/setup.sh` puts the library, resolved at build time from this crate's path.
fn project_default() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.cache/onnxruntime/lib"
    ))
    .join(DYLIB_NAME)
}

/// The library path: `ORT_DYLIB_PATH` when set, else the first existing of `<exe dir>/lib/`,
/// `<exe dir>/` and the project's `.cache/onnxruntime/lib/`.
pub fn library_path() -> Result<PathBuf, BackendError> {
    find_library().map_err(BackendError::Load)
}

fn find_library() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(DYLIB_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "{DYLIB_ENV}={} does not name a file; point it at {DYLIB_NAME} (ONNX Runtime {ORT_RELEASE})",
                p.display()
            ))
        };
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(PathBuf::from))
    {
        candidates.push(dir.join("lib").join(DYLIB_NAME));
        candidates.push(dir.join(DYLIB_NAME));
    }
    candidates.push(project_default());
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            format!(
                "the ONNX Runtime library ({DYLIB_NAME} {ORT_RELEASE}) was not found; run \
             scripts/fetch-onnxruntime.sh (it fetches it from the PyPI onnxruntime wheel) or set \
             {DYLIB_ENV}; looked in {}",
                looked.join(", ")
            )
        })
}

static ENVIRONMENT: OnceLock<Result<(ort::environment::Environment, String), String>> =
    OnceLock::new();

/// The process's ORT environment (loaded on first use) and the library's version string.
pub fn environment() -> Result<(&'static ort::environment::Environment, &'static str), BackendError>
{
    let loaded = ENVIRONMENT.get_or_init(|| {
        let path = find_library()?;
        let env = ort::init_from(&path)
            .map_err(|e| format!("cannot load {}: {e}", path.display()))?
            .with_name("osteoserve")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("cannot create the ONNX Runtime environment: {e}"))?;
        let version = format!("onnxruntime {}", release(ort::info()));
        Ok((env, version))
    });
    match loaded {
        Ok((env, version)) => Ok((env, version.as_str())),
        Err(e) => Err(BackendError::Load(e.clone())),
    }
}

/// The release named in ONNX Runtime's build-info string (`git-branch=rel-1.31.1, ...`).
fn release(info: &str) -> &str {
    info.split([',', ' '])
        .find_map(|part| part.trim().strip_prefix("git-branch=rel-"))
        .unwrap_or(ORT_RELEASE)
}
