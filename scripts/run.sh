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
# The examples' gRPC client (a few MB), so the first grpcurl call works after this script.
scripts/fetch-grpcurl.sh >/dev/null
cargo build --release --locked --bin osteo
bin=target/release/osteo
demo=out/demo
if [ ! -f "$demo/cohort.csv" ]; then
  "$bin" synth --patients 1 --seed 2026 --out "$demo" --dicom >/dev/null
fi
row=$(sed -n 2p "$demo/cohort.csv")
study="$demo/studies/${row%%,*}"
IFS=, read -r _ age sex height weight _ _ _ _ tscore grade _ <<<"$row"
cat <<TXT
--- OsteoServe: a synthetic demo study is in $study
(age $age, sex $sex, $height cm, $weight kg, DXA T-score $tscore: $grade; --clinical-from-dicom
reads these values from the study's header)
Classify it from another shell:
  $bin classify --server http://127.0.0.1:50051 --dicom $study --clinical-from-dicom --json
  $bin compare  --server http://127.0.0.1:50051 --dicom $study --clinical-from-dicom --backends candle,ort
  $bin explain  --server http://127.0.0.1:50051 --dicom $study --clinical-from-dicom --out $demo/overlay.png
  .cache/bin/grpcurl -plaintext 127.0.0.1:50051 osteo.v1.OsteoService/ListModels
Metrics: curl -s http://127.0.0.1:9464/metrics | grep ^osteo_
---
TXT
exec "$bin" serve "$@"
