#!/usr/bin/env bash
# The main job: the OsteoServe gRPC server with the shipped models on the ONNX Runtime and
# candle backends (ONNX Runtime answers by default), on 127.0.0.1:50051 with Prometheus
# metrics on 127.0.0.1:9464. Fetches the ONNX Runtime library once (scripts/fetch-onnxruntime.sh),
# builds the release binary, writes a synthetic demo study to classify, prints how to call the
# server, then serves in the foreground until Ctrl-C (in-flight requests finish first).
# Extra arguments go to `osteo serve` (for example --config osteo.toml or --listen 0.0.0.0:50051).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/fetch-onnxruntime.sh >/dev/null
cargo build --release --locked --bin osteo
bin=target/release/osteo
demo=out/demo
if [ ! -f "$demo/cohort.csv" ]; then
  "$bin" synth --patients 1 --seed 2026 --out "$demo" --dicom >/dev/null
fi
study="$demo/studies/$(sed -n 2p "$demo/cohort.csv" | cut -d, -f1)"
cat <<TXT
--- OsteoServe: a synthetic demo study is in $study
Classify it from another shell:
  $bin classify --server http://127.0.0.1:50051 --dicom $study --age 71 --sex F --height-cm 158 --weight-kg 52 --json
  $bin compare  --server http://127.0.0.1:50051 --dicom $study --age 71 --sex F --height-cm 158 --weight-kg 52 --backends candle,ort
  $bin explain  --server http://127.0.0.1:50051 --dicom $study --age 71 --sex F --height-cm 158 --weight-kg 52 --out overlay.png
  .cache/bin/grpcurl -plaintext 127.0.0.1:50051 osteo.v1.OsteoService/ListModels   # grpcurl: scripts/setup.sh
Metrics: curl -s http://127.0.0.1:9464/metrics | grep ^osteo_
---
TXT
exec "$bin" serve "$@"
