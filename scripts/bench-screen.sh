#!/usr/bin/env bash
# Measures `osteo screen` throughput against a real PACS on this machine (not part of CI):
# starts a throw-away Orthanc with its DICOMweb plugin and an `osteo serve` with the shipped
# models on loopback ports, loads N phantom studies (osteo synth: MATRIX x MATRIX, about 130 slices)
# into Orthanc through its REST API, screens them with `osteo screen --query
# ModalitiesInStudy=CT`, and prints studies per hour, where the time went (the stage totals
# `osteo screen` reports) and the server's busy share (ingest, preprocessing and inference
# seconds from /metrics over the wall time).
#
#   scripts/bench-screen.sh [STUDIES=24] [CONCURRENCY=4] [MATRIX=192]   (512: clinical-size slices)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
studies=${1:-24}
concurrency=${2:-4}
matrix=${3:-192}
scripts/setup.sh >/dev/null
cargo build --release --locked >/dev/null
osteo=target/release/osteo
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http=$(port); dicom=$(port); grpc=$(port); metrics=$(port)
cat > "$work/orthanc.json" <<JSON
{"Name": "bench", "StorageDirectory": "$work/db", "IndexDirectory": "$work/db",
 "HttpPort": $http, "DicomPort": $dicom, "RemoteAccessAllowed": false,
 "AuthenticationEnabled": false,
 "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
 "DicomWeb": {"Enable": true, "Root": "/dicom-web/"}}
JSON
/usr/sbin/Orthanc "$work/orthanc.json" >/dev/null 2>&1 & pids+=($!)
OSTEO__SERVER__HTTP_LISTEN="" "$osteo" serve --listen "127.0.0.1:$grpc" \
  --metrics-listen "127.0.0.1:$metrics" >"$work/serve.log" 2>&1 & pids+=($!)
until curl -sf "http://127.0.0.1:$http/system" >/dev/null; do sleep 0.2; done
until grep -q SERVING "$work/serve.log"; do sleep 0.2; done
"$osteo" synth --patients "$studies" --seed 77 --dicom --matrix "$matrix" --out "$work/cohort" >/dev/null
for f in "$work"/cohort/studies/*/*.dcm; do
  curl -sf -X POST "http://127.0.0.1:$http/instances" --data-binary @"$f" >/dev/null
done
bytes=$(du -sb "$work/cohort/studies" | cut -f1)
start=$(date +%s.%N)
"$osteo" screen --dicomweb "http://127.0.0.1:$http/dicom-web" --server "http://127.0.0.1:$grpc" \
  --query ModalitiesInStudy=CT --results "$work/results.csv" --concurrency "$concurrency" \
  2>"$work/screen.err" || true
end=$(date +%s.%N)
grep -v '^\s*$' "$work/screen.err" | tail -8
scrape=$(curl -s "http://127.0.0.1:$metrics/metrics")
python3 - "$start" "$end" "$studies" "$bytes" "$work/results.csv" <<'PY' "$scrape"
import csv, sys, collections
start, end, n, nbytes, results = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
scrape = sys.argv[6]
wall = end - start
status = collections.Counter(r["status"] for r in csv.DictReader(open(results)))
def total(name):
    return sum(float(l.split()[-1]) for l in scrape.splitlines() if l.startswith(name + "_sum"))
ingest = total("osteo_ingest_seconds")
model = total("osteo_inference_seconds") + total("osteo_preprocess_seconds")
busy = ingest + model
print(f"{n} studies ({nbytes / n / 1e6:.1f} MB each) in {wall:.1f} s: {n / wall * 3600:.0f} studies/hour; {dict(status)}")
print(f"server busy: ingest (decode + gate) {ingest:.2f} s + preprocess + inference {model:.2f} s = {busy:.2f} s = {100 * busy / wall:.1f}% of the wall time")
PY
