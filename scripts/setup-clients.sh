#!/usr/bin/env bash
# The Python environments the documentation's client examples use, and nothing else: pip only,
# no root, about 450 MB in .cache/ (scripts/setup.sh runs it too, for the tests).
#   .cache/venv         grpcio + grpcio-tools (stubs generated from proto/ and an independent
#                       gRPC client), pydicom + pylibjpeg (the reference decoder of the tests),
#                       pynetdicom (a second DIMSE implementation against the DICOM node),
#                       highdicom (reads the SRs as a TID 1500 consumer would),
#                       fhir.resources 6.1 (FHIR R4 4.0.1 models: validates the Bundles),
#                       opentelemetry-proto (the telemetry test's OTLP receiver), onnx (the
#                       exported graphs' checker)
#   .cache/triton-venv  Triton's tritonclient (gRPC and HTTP) with numpy, and ONNX Runtime for
#                       Python (the reference the tests compare with)
# Idempotent: an environment that imports what it needs is left as it is.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache="$root/.cache"
mkdir -p "$cache"

venv="$cache/venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import pydicom, numpy, pylibjpeg, openjpeg, libjpeg, rle, grpc, grpc_tools, opentelemetry.proto, onnx, pynetdicom, highdicom, fhir.resources' 2>/dev/null; then
  echo "setup: creating Python reference environment in $venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    "pydicom==3.0.2" "numpy<2.6" "pylibjpeg==2.1.0" "pylibjpeg-libjpeg==2.5.0" \
    "pylibjpeg-openjpeg==2.6.0" "pylibjpeg-rle==2.2.0" \
    "grpcio==1.85.1" "grpcio-tools==1.85.1" "opentelemetry-proto==1.45.2" "onnx==1.23.2" \
    "pynetdicom==3.0.4" "highdicom==0.28.2" "fhir.resources==6.1.0" "pydantic==1.10.27"
fi

# Triton's own client in its own environment: tritonclient pins protobuf, which must not move
# the reference environment's grpcio-tools.
triton="$cache/triton-venv"
if [ ! -x "$triton/bin/python" ] || ! "$triton/bin/python" -c 'import tritonclient.grpc, tritonclient.http, numpy, onnxruntime' 2>/dev/null; then
  echo "setup: creating the Triton client environment in $triton"
  [ -x "$triton/bin/python" ] || python3 -m venv "$triton"
  "$triton/bin/pip" install -q --disable-pip-version-check "tritonclient[grpc,http]==2.73.0" "numpy<2.6" \
    "onnxruntime==1.31.1"
fi
