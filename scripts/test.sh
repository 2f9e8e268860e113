#!/usr/bin/env bash
# Runs the whole OsteoServe test suite on a fresh machine: setup (idempotent; it fetches the ONNX
# Runtime library and assembles libtorch from PyPI wheels), formatting, one lint pass over the
# build with every backend and a compile check of the default build, then every test of every crate with all three
# backends (candle, ONNX Runtime, libtorch: unit, integration, backend parity, CLI end-to-end,
# real DICOM parity against pydicom, transcoding with dcmtk/gdcm, dciodvfy validation), then the
# Helm chart and Dockerfile validation (scripts/helm-validate.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
LIBTORCH=$(scripts/fetch-libtorch.sh)
export LIBTORCH
# A one-shot build: no incremental caches, line tables only in test binaries (backtraces keep
# file:line): a fresh run's target/ stays near 4.5 GB and links faster.
export CARGO_INCREMENTAL=0 CARGO_PROFILE_DEV_DEBUG=line-tables-only
cargo fmt --all -- --check
# One lint pass over every crate, target and backend; the build without libtorch (what
# `cargo build` and scripts/run.sh make) is only compiled, its libraries and binaries.
cargo clippy --workspace --all-targets --features tch --locked -- -D warnings
cargo check --locked
cargo test --workspace --features tch --locked
scripts/helm-validate.sh
