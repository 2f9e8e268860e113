#!/usr/bin/env bash
# Fetches the ONNX Runtime shared library the `ort` backend loads at run time: the pinned PyPI
# onnxruntime wheel (sha256-checked; pip only downloads it, nothing is installed) is unpacked
# into the git-ignored .cache/onnxruntime/lib, where `cargo test`, `cargo run` and the built
# binary find it (ORT_DYLIB_PATH overrides). Idempotent. Called by setup.sh and run.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache="$root/.cache"
ort_release=1.31.1
ort_wheel=onnxruntime-$ort_release-cp311-cp311-manylinux_2_28_x86_64.whl
ort_sha256=5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f
ort_lib="$cache/onnxruntime/lib"
if [ ! -f "$ort_lib/.release-$ort_release" ]; then
  echo "fetch-onnxruntime: fetching ONNX Runtime $ort_release from the PyPI onnxruntime wheel"
  tmp=$(mktemp -d)
  python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux_2_28_x86_64 -d "$tmp" "onnxruntime==$ort_release"
  echo "$ort_sha256  $tmp/$ort_wheel" | sha256sum -c --quiet
  rm -rf "$ort_lib"
  mkdir -p "$ort_lib"
  python3 - "$tmp/$ort_wheel" "$ort_lib" "$ort_release" <<'PY'
import shutil, sys, zipfile
whl, out, release = sys.argv[1:4]
with zipfile.ZipFile(whl) as z:
    for member, name in [(f"onnxruntime/capi/libonnxruntime.so.{release}", "libonnxruntime.so"),
                         ("onnxruntime/capi/libonnxruntime_providers_shared.so", "libonnxruntime_providers_shared.so")]:
        with z.open(member) as src, open(f"{out}/{name}", "wb") as dst:
            shutil.copyfileobj(src, dst)
PY
  rm -rf "$tmp"
  touch "$ort_lib/.release-$ort_release"
fi

