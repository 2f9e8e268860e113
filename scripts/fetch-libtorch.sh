#!/usr/bin/env bash
# Assembles the trimmed CPU libtorch tree the `tch` backend builds and runs against, from PyPI
# wheels (DESIGN §8): torch 2.11.0 (the release tch 0.24 expects; its wheel is a CUDA build,
# about 530 MB, downloaded once) gives include/, libtorch_cpu.so, libc10.so and libgomp.so.1;
# the small nvidia-cuda-runtime and nvidia-cuda-cupti wheels give libcudart.so.13 and
# libcupti.so.13, which libtorch_cpu.so needs even on CPU. libtorch_cuda.so stays out, so the
# build links the CPU library only; lib/libtorch.so is a linker script over the two libraries.
# Every wheel is sha256-checked. Result: .cache/libtorch (git-ignored); prints nothing else.
# Idempotent. Use: LIBTORCH=$(scripts/fetch-libtorch.sh) cargo build --features tch
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${LIBTORCH_DIR:-$root/.cache/libtorch}
release=2.11.0
if [ ! -f "$dest/.complete-$release" ]; then
  echo "fetch-libtorch: assembling libtorch $release (CPU) from PyPI wheels into $dest" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$tmp" "torch==$release" "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cupti==13.0.85" >&2
  (cd "$tmp" && sha256sum -c --quiet) <<'SUMS'
7aa2f9bbc6d4595ba72138026b2074be1233186150e9292865e04b7a63b8c67a  torch-2.11.0-cp311-cp311-manylinux_2_28_x86_64.whl
7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548  nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl
4eb01c08e859bf924d222250d2e8f8b8ff6d3db4721288cf35d14252a4d933c8  nvidia_cuda_cupti-13.0.85-py3-none-manylinux_2_25_x86_64.whl
SUMS
  rm -rf "$dest"
  mkdir -p "$dest/lib"
  python3 - "$tmp" "$dest" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, dest = sys.argv[1:3]
def extract(pattern, pick):
    (whl,) = glob.glob(os.path.join(tmp, pattern))
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            target = pick(info.filename)
            if target is None or info.is_dir():
                continue
            path = os.path.join(dest, target)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with z.open(info) as src, open(path, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
libs = {"libtorch_cpu.so", "libc10.so", "libgomp.so.1"}
def torch_member(name):
    if name.startswith("torch/include/"):
        return name[len("torch/"):]
    if name.startswith("torch/lib/") and name[len("torch/lib/"):] in libs:
        return "lib/" + name[len("torch/lib/"):]
    return None
extract("torch-*.whl", torch_member)
for wheel, lib in [("nvidia_cuda_runtime-*.whl", "libcudart.so.13"),
                   ("nvidia_cuda_cupti-*.whl", "libcupti.so.13")]:
    extract(wheel, lambda n, lib=lib: "lib/" + lib if n == "nvidia/cu13/lib/" + lib else None)
PY
  printf 'INPUT(AS_NEEDED(libtorch_cpu.so libc10.so))\n' > "$dest/lib/libtorch.so"
  ln -sf libgomp.so.1 "$dest/lib/libgomp.so"
  printf '%s' "$release" > "$dest/build-version"
  touch "$dest/.complete-$release"
fi
echo "$dest"
