#!/usr/bin/env bash
# Runs the whole OsteoServe test suite on a fresh machine: setup (idempotent), formatting and
# lint checks, then every test of every crate (unit, integration, CLI end-to-end, real DICOM
# parity against pydicom, transcoding with dcmtk/gdcm, dciodvfy validation), then the Helm chart
# and Dockerfile validation (scripts/helm-validate.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
scripts/helm-validate.sh
