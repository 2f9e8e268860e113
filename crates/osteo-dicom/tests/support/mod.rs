//! Shared helpers of the osteo-dicom integration tests: where the real test data and the Python
//! reference decoder live (both installed by `scripts/setup.sh`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The cache of real DICOM files fetched by `scripts/setup.sh`.
pub fn testdata() -> PathBuf {
    let dir = root().join(".cache/testdata");
    assert!(
        dir.join(".complete").exists(),
        "real DICOM test data missing at {}: run scripts/setup.sh",
        dir.display()
    );
    dir
}

/// A file of the pydicom-data wheel.
pub fn data_store(name: &str) -> PathBuf {
    testdata().join("data_store/data").join(name)
}

/// A file of the pydicom wheel's test files.
pub fn pydicom_file(name: &str) -> PathBuf {
    testdata().join("pydicom/data/test_files").join(name)
}

/// Runs the Python reference script with arguments, returning stdout.
pub fn reference(args: &[&str]) -> String {
    let python = root().join(".cache/venv/bin/python");
    assert!(
        python.exists(),
        "Python reference environment missing: run scripts/setup.sh"
    );
    let out = Command::new(python)
        .arg(root().join("scripts/pydicom_reference.py"))
        .args(args)
        .output()
        .expect("run pydicom_reference.py");
    assert!(
        out.status.success(),
        "pydicom_reference.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Reads a little-endian f32 file.
pub fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).expect("read reference");
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Runs an external tool, panicking with its stderr on failure.
pub fn tool(program: &str, args: &[&Path]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} not runnable ({e}): run scripts/setup.sh"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Largest absolute difference and the count of differing values.
pub fn diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    assert_eq!(a.len(), b.len(), "length differs");
    a.iter().zip(b).fold((0f32, 0usize), |(m, n), (x, y)| {
        let d = (x - y).abs();
        (m.max(d), n + usize::from(d != 0.0))
    })
}
