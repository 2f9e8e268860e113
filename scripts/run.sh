#!/usr/bin/env bash
# The main job, for now: synthesise a phantom patient as a DICOM CT series, inspect it and render
# the model's input view. (The gRPC server arrives with a later issue and will replace this.)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${1:-out/demo}
cargo build --release --locked --bin osteo
bin=target/release/osteo
"$bin" synth --patients 1 --seed 2026 --out "$out" --dicom
study="$out/studies/$(sed -n 2p "$out/cohort.csv" | cut -d, -f1)"
echo "--- cohort.csv"
cat "$out/cohort.csv"
echo "--- osteo dicom inspect $study"
"$bin" dicom inspect "$study"
"$bin" dicom view "$study" --out "$out/view.png"
echo "--- view: $out/view.png (slab mean left, slab maximum right)"
