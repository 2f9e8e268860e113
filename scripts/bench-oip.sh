#!/usr/bin/env bash
# Triton's perf_analyzer against OsteoServe and MLServer serving the same model.onnx files over
# the Open Inference Protocol, in one run: the tabular and fused models at concurrency 1 and 8
# (batch 1), for each server over REST with JSON tensors (the form both servers take; MLServer
# has neither Triton's binary tensor extension nor the gRPC ModelConfig that perf_analyzer needs)
# and for OsteoServe also over gRPC and REST with binary tensors. OsteoServe answers with ONNX
# Runtime (1 intra-op thread), as does the MLServer runtime (bench/mlserver/runtime.py), so the
# servers differ only in what surrounds the model. Inputs are zeros (perf_analyzer's random FP32
# bytes include NaN patterns, which are not JSON). Prints a Markdown table.
#
# Usage: scripts/bench-oip.sh [MEASUREMENT_MS]   (default 3000; needs scripts/setup.sh first)
# Environment: MLSERVER_PARALLEL_WORKERS (MLServer's default when unset).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
window=${1:-3000}
cache="$root/.cache"
perf="$cache/perf-analyzer"
[ -x "$perf/perf_analyzer" ] || { echo "run scripts/setup.sh first" >&2; exit 2; }

venv="$cache/mlserver-venv"
if [ ! -x "$venv/bin/mlserver" ]; then
  echo "bench-oip: installing MLServer into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    "mlserver==1.7.1" "onnxruntime==1.31.1" "uvloop==0.21.0" "numpy<2.6"
fi
cargo build --release --locked --bin osteo >&2
scripts/fetch-onnxruntime.sh >/dev/null

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

models=(osteo-tabular-v1 osteo-fused-v1)
{
  printf '[server]\nlisten = "127.0.0.1:18001"\nhttp_listen = "127.0.0.1:18000"\nmetrics_listen = ""\n'
  printf 'default_model = "osteo-fused-v1"\n[backends.ort]\nintra_threads = 1\n'
  for m in "${models[@]}"; do
    printf '[[models]]\npath = "%s/models/%s"\nbackends = ["ort"]\n' "$root" "$m"
  done
} > "$work/osteo.toml"
target/release/osteo serve --config "$work/osteo.toml" > "$work/osteo.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -sf localhost:18000/v2/health/ready >/dev/null && break
  sleep 0.2
done

# MLServer: the same model.onnx files, their metadata and Triton configuration taken from
# OsteoServe (so perf_analyzer sends both the same tensors).
mkdir -p "$work/mlmodels" "$work/metrics"
# Its Prometheus files go to the work directory, not to bench/mlserver (its working directory).
printf '{"http_port": 18100, "grpc_port": 18101, "metrics_port": 18102, "metrics_dir": "%s"}\n' \
  "$work/metrics" > "$work/mlmodels/settings.json"
configs="{}"
for m in "${models[@]}"; do
  mkdir -p "$work/mlmodels/$m"
  python3 - "$m" "$root/models/$m/model.onnx" > "$work/mlmodels/$m/model-settings.json" <<'PY'
import json, sys, urllib.request
name, uri = sys.argv[1], sys.argv[2]
meta = json.load(urllib.request.urlopen(f"http://127.0.0.1:18000/v2/models/{name}"))
print(json.dumps({"name": name, "implementation": "runtime.OnnxModel",
                  "parameters": {"uri": uri}, "inputs": meta["inputs"], "outputs": meta["outputs"]}))
PY
  configs=$(python3 - "$configs" "$m" <<'PY'
import json, sys, urllib.request
configs, name = json.loads(sys.argv[1]), sys.argv[2]
configs[name] = json.load(urllib.request.urlopen(f"http://127.0.0.1:18000/v2/models/{name}/config"))
print(json.dumps(configs))
PY
)
done
(cd bench/mlserver && OSTEO_BENCH_CONFIGS="$configs" PYTHONPATH=. \
  "$venv/bin/mlserver" start "$work/mlmodels" > "$work/mlserver.log" 2>&1) &
pids+=($!)
for _ in $(seq 150); do
  curl -sf localhost:18100/v2/health/ready >/dev/null && break
  sleep 0.2
done

# One perf_analyzer measurement: prints "throughput p50_ms p99_ms".
measure() {
  local model=$1 url=$2 protocol=$3 concurrency=$4; shift 4
  local csv="$work/pa.csv"
  LD_LIBRARY_PATH="$perf/lib" "$perf/perf_analyzer" -m "$model" -u "$url" -i "$protocol" -b 1 \
    --concurrency-range "$concurrency" -p "$window" -r 10 -s 50 --input-data zero -f "$csv" "$@" > "$work/pa.out" 2>&1 \
    || { echo "failed: $(tail -1 "$work/pa.out")"; return; }
  python3 - "$csv" <<'PY'
import csv, sys
row = next(csv.DictReader(open(sys.argv[1])))
lat = lambda k: float(row[k]) / 1000
print(f"{float(row['Inferences/Second']):.0f} {lat('p50 latency'):.2f} {lat('p99 latency'):.2f}")
PY
}

echo "| model | server, protocol | concurrency | requests/s | p50 ms | p99 ms |"
echo "|---|---|---|---|---|---|"
json=(--input-tensor-format=json --output-tensor-format=json)
for m in "${models[@]}"; do
  for c in 1 8; do
    for run in "OsteoServe, REST JSON|localhost:18000|http|${json[*]}" \
               "MLServer 1.7.1, REST JSON|localhost:18100|http|${json[*]}" \
               "OsteoServe, REST binary|localhost:18000|http|" \
               "OsteoServe, gRPC|localhost:18001|grpc|"; do
      IFS='|' read -r label url protocol extra <<< "$run"
      # shellcheck disable=SC2086
      read -r rps p50 p99 <<< "$(measure "$m" "$url" "$protocol" "$c" $extra)"
      echo "| $m | $label | $c | $rps | $p50 | $p99 |"
    done
  done
done
