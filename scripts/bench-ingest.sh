#!/usr/bin/env bash
# Ingest benchmark: the whole `osteo dicom inspect` process against pydicom + numpy in-process
# on series derived from a real CT (108 x 256x256 and 300 x 512x512; explicit VR and JPEG 2000
# lossless), interleaved runs. Usage:
#   scripts/bench-ingest.sh [REPETITIONS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
cargo build --release --locked --bin osteo
.cache/venv/bin/python scripts/bench_ingest.py "$@"
