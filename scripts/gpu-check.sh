#!/usr/bin/env bash
# GPU check: on a machine with an NVIDIA GPU, runs the backend parity tests with every
# GPU-capable backend on the GPU (candle `cuda`, ONNX Runtime's CUDA execution provider, libtorch
# with libtorch_cuda.so loaded at run time), each against candle on the CPU at the CPU tolerances,
# then times predict (batch 1 and 32) and Grad-CAM per backend on the GPU and on the CPU, and
# prints one table.
#
#   scripts/gpu-check.sh                 # build (CUDA toolkit and libtorch from PyPI), then check
#   OSTEO_GPU_PREBUILT=DIR scripts/gpu-check.sh
#                                        # use DIR/osteo and DIR/backend_parity built elsewhere with
#                                        # `--features cuda,tch` (a GPU machine without a toolchain)
#   OSTEO_GPU_CHECK_DEVICE=cpu scripts/gpu-check.sh   # the same run on the CPU (script check)
#
# Run-time libraries: libtorch_cuda.so from a PyTorch 2.11 CUDA 13 installation (found through
# `python3 -c 'import torch'` or OSTEO_LIBTORCH_CUDA) and the CUDA libraries of the PyPI nvidia
# wheels next to it; ONNX Runtime's CUDA provider from the onnxruntime-gpu 1.31.1 wheel
# (ORT_GPU_LIB_DIR, or `scripts/fetch-onnxruntime.sh gpu` when PyPI is reachable).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
device=${OSTEO_GPU_CHECK_DEVICE:-cuda:0}
out=${OSTEO_GPU_CHECK_OUT:-$root/out/gpu-check}
mkdir -p "$out"

if [[ $device == cuda* ]]; then
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu-check: no NVIDIA GPU here (nvidia-smi finds none); nothing to check" >&2
    exit 2
  fi
  nvidia-smi -L
  features=cuda,tch
  # PyTorch's CUDA libraries and the nvidia wheels' libraries (cuBLAS, cuDNN, cudart, ...).
  site=$(python3 -c 'import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))' 2>/dev/null || true)
  if [ -n "$site" ]; then
    export OSTEO_LIBTORCH_CUDA=${OSTEO_LIBTORCH_CUDA:-$site/torch/lib/libtorch_cuda.so}
    for d in "$site"/torch/lib "$site"/nvidia/*/lib "$site"/nvidia/cu13/lib; do
      [ -d "$d" ] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
    done
  fi
  # ONNX Runtime with its CUDA execution provider.
  ort_gpu=${ORT_GPU_LIB_DIR:-$(scripts/fetch-onnxruntime.sh gpu)}
  export ORT_DYLIB_PATH=$ort_gpu/libonnxruntime.so
  LD_LIBRARY_PATH="$ort_gpu:${LD_LIBRARY_PATH:-}"
  export LD_LIBRARY_PATH
else
  features=tch
fi

if [ -n "${OSTEO_GPU_PREBUILT:-}" ]; then
  bin=$OSTEO_GPU_PREBUILT/osteo
  parity=$OSTEO_GPU_PREBUILT/backend_parity
else
  [[ $features == *cuda* ]] && eval "$(scripts/cuda-toolkit.sh)"
  LIBTORCH=$(scripts/fetch-libtorch.sh)
  export LIBTORCH
  cargo build --release --locked --features "$features" --bin osteo
  parity=$(cargo test --release --locked --features "$features" --test backend_parity --no-run \
    --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "backend_parity" and m.get("executable"):
        print(m["executable"])')
  bin=target/release/osteo
fi

echo "== parity: every backend on $device against candle on the CPU"
OSTEO_PARITY_DEVICE=$device "$parity" --nocapture --test-threads 1 2>&1 | tee "$out/parity.txt" | grep -E "vs candle|test result|panicked"

echo "== latency: osteo-fused-v1, predict at batch 1 and 32, Grad-CAM"
for d in cpu "$device"; do
  "$bin" bench --model models/osteo-fused-v1 --backends candle,ort,tch --device "$d" \
    --batches 1,32 --iterations 30 --json > "$out/bench-${d/:/}.json"
  [ "$d" = cpu ] && [ "$device" = cpu ] && break
done
python3 - "$out" "$device" <<'PY'
import glob, json, os, sys
out, device = sys.argv[1:3]
rows = {}
for f in sorted(glob.glob(os.path.join(out, "bench-*.json"))):
    b = json.load(open(f))
    for r in b["results"]:
        key = (r["backend"], r["op"], r["batch"])
        rows.setdefault(key, {})[b["device"]] = r["p50_ms"]
devices = ["cpu"] + ([device] if device != "cpu" else [])
print(f"{'backend':<8} {'op':<8} {'batch':>5} " + " ".join(f"{d + ' p50 ms':>14}" for d in devices)
      + (f" {'speed-up':>9}" if len(devices) > 1 else ""))
for (backend, op, batch), t in sorted(rows.items()):
    cells = " ".join(f"{t.get(d, float('nan')):>14.3f}" for d in devices)
    extra = f" {t['cpu'] / t[device]:>8.1f}x" if len(devices) > 1 and device in t else ""
    print(f"{backend:<8} {op:<8} {batch:>5} {cells}{extra}")
PY
