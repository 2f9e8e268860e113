#!/usr/bin/env bash
# Ingest benchmark (osteo vs pydicom+numpy on the same real 512x512 series). Usage:
#   scripts/bench-ingest.sh [SLICES] [REPETITIONS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
cargo build --release --locked --bin osteo
.cache/venv/bin/python scripts/bench_ingest.py "$@"
