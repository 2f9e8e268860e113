#!/usr/bin/env bash
# Assembles a CUDA 13.0 toolkit (nvcc, headers, runtime, cuBLAS, cuRAND, NVRTC) from PyPI wheels
# into .cache/cuda, for building the `cuda` cargo features on a machine without CUDA installed
# (DESIGN §8). Stay on 13.0: the GPU machines' driver cannot load newer PTX. Prints the
# environment to export. Idempotent.
#
#   eval "$(scripts/cuda-toolkit.sh)"
#   cargo build --release -p osteo-backend-candle --features cuda
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${CUDA_TOOLKIT_DIR:-$root/.cache/cuda}
if [ ! -f "$dest/.complete" ]; then
  echo "cuda-toolkit: assembling CUDA 13.0 from PyPI wheels into $dest" >&2
  python=${PYTHON:-python3}
  wheels=$(mktemp -d)
  "$python" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$wheels" \
    "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-crt==13.0.88" "nvidia-nvvm==13.0.88" \
    "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cccl==13.0.85" "nvidia-cublas==13.0.2.14" \
    "nvidia-curand==10.4.0.35" "nvidia-cuda-nvrtc==13.0.88" >&2
  rm -rf "$dest" && mkdir -p "$dest"
  for whl in "$wheels"/*.whl; do
    "$python" - "$whl" "$dest" <<'PY'
import os, sys, zipfile
whl, dest = sys.argv[1], sys.argv[2]
prefix = "nvidia/cu13/"
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        target = os.path.join(dest, info.filename[len(prefix):])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(info) as src, open(target, "wb") as out:
            out.write(src.read())
        mode = (info.external_attr >> 16) & 0o777
        os.chmod(target, mode or 0o644)
PY
  done
  chmod +x "$dest"/bin/* "$dest"/nvvm/bin/* 2>/dev/null || true
  # No wheel ships the driver library; the link needs a stub with its soname.
  mkdir -p "$dest/lib/stubs"
  echo 'void cuInit(void) {}' > "$wheels/stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$dest/lib/stubs/libcuda.so" "$wheels/stub.c"
  for lib in "$dest"/lib/lib*.so.*; do
    base=$(basename "$lib"); link="$dest/lib/${base%%.so.*}.so"
    [ -e "$link" ] || ln -s "$base" "$link"
  done
  rm -rf "$wheels"
  touch "$dest/.complete"
fi
cat <<ENV
export CUDA_HOME="$dest"
export CUDA_PATH="$dest"
export PATH="$dest/bin:\$PATH"
export LIBRARY_PATH="$dest/lib:$dest/lib/stubs:\${LIBRARY_PATH:-}"
export CUDA_COMPUTE_CAP=90
ENV
