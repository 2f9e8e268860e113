#!/usr/bin/env bash
# Every benchmark of BENCHMARKS.md in one run (not part of CI; takes about 15 minutes on 2 cores):
# the machine, the backend table (scripts/bench_backends.py), Classify against the direct
# backend call and memory per stored study (scripts/bench_serving.py), ingest against pydicom + numpy
# (scripts/bench_ingest.py), end to end against pydicom + numpy + onnxruntime
# (scripts/bench_e2e.py, its environment in .cache/bench-venv), OsteoServe against MLServer with Triton's perf_analyzer
# (scripts/bench-oip.sh), screening from Orthanc (scripts/bench-screen.sh) and, where an NVIDIA
# GPU is present, scripts/gpu-check.sh. The tables go to stdout and to
# target/bench/BENCHMARKS.generated.md; BENCHMARKS.md takes its tables from there.
#
#   scripts/bench.sh [RUNS=5]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
runs=${1:-5}
scripts/setup.sh >/dev/null
cargo build --release --locked --bin osteo >/dev/null 2>&1
# The Python reference pipeline: pydicom + numpy + onnxruntime (the versions the tests use).
if [ ! -x .cache/bench-venv/bin/python ] || ! .cache/bench-venv/bin/python -c 'import pydicom, numpy, onnxruntime' 2>/dev/null; then
  python3 -m venv .cache/bench-venv
  .cache/bench-venv/bin/pip install -q --disable-pip-version-check pydicom==3.0.2 numpy==2.4.6 onnxruntime==1.31.1
fi
out=target/bench/BENCHMARKS.generated.md
mkdir -p "$(dirname "$out")"
{
  echo "# Benchmarks, $(date -u +%Y-%m-%d)"
  echo
  echo "Machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo
  echo "## Backends"
  echo
  .cache/venv/bin/python scripts/bench_backends.py "$runs"
  echo
  echo "## Ingest against pydicom + numpy"
  echo
  echo '```'
  .cache/venv/bin/python scripts/bench_ingest.py "$runs"
  echo '```'
  echo
  echo "## Serving: Classify against the direct backend call, memory"
  echo
  .cache/venv/bin/python scripts/bench_serving.py "$runs"
  echo
  echo "## End to end against pydicom + numpy + onnxruntime"
  echo
  echo '```'
  .cache/bench-venv/bin/python scripts/bench_e2e.py "$runs"
  echo '```'
  echo
  echo "## Open Inference Protocol against MLServer (perf_analyzer)"
  echo
  echo '```'
  scripts/bench-oip.sh 2000 2>&1 | tail -40
  echo '```'
  echo
  echo "## Screening from Orthanc"
  echo
  echo '```'
  scripts/bench-screen.sh 8 1 512 2>&1 | tail -3
  scripts/bench-screen.sh 24 4 192 2>&1 | tail -3
  echo '```'
  echo
  echo "## GPU"
  echo
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    echo '```'
    scripts/gpu-check.sh 2>&1 | tail -40
    echo '```'
  else
    echo "No NVIDIA GPU on this machine: not measured."
  fi
} | tee "$out"
