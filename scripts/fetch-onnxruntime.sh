#!/usr/bin/env bash
# Fetches the ONNX Runtime shared library the `ort` backend loads at run time from a pinned PyPI
# wheel (sha256-checked; pip only downloads it, nothing is installed) and prints the directory:
#   scripts/fetch-onnxruntime.sh       onnxruntime 1.31.1 (CPU)  -> .cache/onnxruntime/lib
#   scripts/fetch-onnxruntime.sh gpu   onnxruntime-gpu 1.31.1 (CUDA 13 execution provider, ~250 MB)
#                                      -> .cache/onnxruntime-gpu/lib
# `cargo test`, `cargo run` and the built binary find the CPU library in its default place;
# ORT_DYLIB_PATH=<dir>/libonnxruntime.so selects another (the GPU one). Idempotent. Called by
# setup.sh and run.sh (CPU) and gpu-check.sh (GPU).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
release=1.31.1
case "${1:-cpu}" in
  cpu)
    package=onnxruntime
    wheel=onnxruntime-$release-cp311-cp311-manylinux_2_28_x86_64.whl
    sha256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
    dest=$root/.cache/onnxruntime/lib
    providers="libonnxruntime_providers_shared.so"
    ;;
  gpu)
    package=onnxruntime-gpu
    wheel=onnxruntime_gpu-$release-cp311-cp311-manylinux_2_28_x86_64.whl
    sha256=e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6
    dest=$root/.cache/onnxruntime-gpu/lib
    providers="libonnxruntime_providers_shared.so libonnxruntime_providers_cuda.so"
    ;;
  *)
    echo "usage: $0 [cpu|gpu]" >&2
    exit 2
    ;;
esac
if [ ! -f "$dest/.release-$release" ]; then
  echo "fetch-onnxruntime: fetching $package $release from PyPI into $dest" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 -d "$tmp" "$package==$release" >&2
  echo "$sha256  $tmp/$wheel" | sha256sum -c --quiet
  rm -rf "$dest"
  mkdir -p "$dest"
  python3 - "$tmp/$wheel" "$dest" "$release" $providers <<'PY'
import shutil, sys, zipfile
whl, out, release, *providers = sys.argv[1:]
members = [(f"onnxruntime/capi/libonnxruntime.so.{release}", "libonnxruntime.so")]
members += [(f"onnxruntime/capi/{p}", p) for p in providers]
with zipfile.ZipFile(whl) as z:
    for member, name in members:
        with z.open(member) as src, open(f"{out}/{name}", "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
PY
  touch "$dest/.release-$release"
fi
echo "$dest"
