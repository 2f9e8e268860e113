#!/usr/bin/env bash
# Measures `osteo receive` against dcmtk's storescp on this machine (not part of CI): one phantom
# study (osteo synth, MATRIX x MATRIX slices) sent by dcmtk's storescu in one association over
# loopback, first to storescp (writing into a folder, TCP_NODELAY=1 as dcmtk needs to avoid a
# delayed-ACK stall per instance), then to the node; RUNS interleaved runs. Then, from the node's
# log, the time from the study's last instance to its SR stored in the destination, by stage:
# the idle wait (--study-idle-s), grading (one GradeStudy call) and sending (C-STORE).
#
#   scripts/bench-node.sh [RUNS=5] [MATRIX=512]
#
# NODE_ARGS adds arguments to `osteo receive` (e.g. NODE_ARGS="--journal-mib 0" for the spool
# without its journal, every instance's file synced).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
runs=${1:-5}
matrix=${2:-512}
cargo build --release --locked --bin osteo >/dev/null
osteo=target/release/osteo
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
"$osteo" synth --patients 1 --seed 11 --dicom --matrix "$matrix" --out "$work/synth" >/dev/null
study=$(ls -d "$work"/synth/studies/*/)
count=$(ls "$study" | wc -l)
bytes=$(du -sb "$study" | cut -f1)
grpc=$(port); scp=$(port); node=$(port); pacs=$(port)
OSTEO__SERVER__HTTP_LISTEN= OSTEO__SERVER__METRICS_LISTEN= "$osteo" serve --listen "127.0.0.1:$grpc" >"$work/serve.log" 2>&1 &
pids+=($!)
mkdir -p "$work/scp" "$work/pacs"
TCP_NODELAY=1 storescp -aet SCP -od "$work/scp" "$scp" >/dev/null 2>&1 &
pids+=($!)
TCP_NODELAY=1 storescp -aet PACS -od "$work/pacs" "$pacs" >/dev/null 2>&1 &
pids+=($!)
until grep -q SERVING "$work/serve.log"; do sleep 0.2; done
"$osteo" receive --ae-title OSTEO --listen "127.0.0.1:$node" --server "http://127.0.0.1:$grpc" \
  --spool "$work/spool" --results "$work/results.csv" --send-to "PACS@127.0.0.1:$pacs" \
  --study-idle-s 2 ${NODE_ARGS:-} >"$work/node.log" 2>&1 &
pids+=($!)
sleep 1
calc() { python3 -c "print($1)"; }
send() { # AE PORT -> seconds
  local start end
  start=$(date +%s.%N)
  TCP_NODELAY=1 storescu +sd -aec "$1" -aet BENCH 127.0.0.1 "$2" "$study" >/dev/null 2>&1
  end=$(date +%s.%N)
  calc "$end - $start"
}
scp_s=(); node_s=()
for _ in $(seq "$runs"); do
  scp_s+=("$(send SCP "$scp")")
  node_s+=("$(send OSTEO "$node")")
  sleep 4 # the study completes (2 s idle), is graded and sent before the next run
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ms=$(median "${scp_s[@]}"); mn=$(median "${node_s[@]}")
echo "Study: $count instances of ${matrix}x${matrix}, $((bytes / 1000000)) MB; one storescu association, loopback; median of $runs interleaved runs"
echo
echo "| receiver | seconds | instances/s | MB/s |"
echo "|---|---|---|---|"
printf '| dcmtk storescp (TCP_NODELAY=1) | %.3f | %.0f | %.0f |\n' "$ms" "$(calc "$count / $ms")" "$(calc "$bytes / 1000000 / $ms")"
printf '| osteo receive (synced spool) | %.3f | %.0f | %.0f |\n' "$mn" "$(calc "$count / $mn")" "$(calc "$bytes / 1000000 / $mn")"
printf '\nosteo receive / storescp instances per second: %.2f\n\n' "$(calc "$ms / $mn")"
echo "From the last instance to the SR stored, per study (node log; the idle wait is --study-idle-s 2):"
grep -E "study graded|results sent" "$work/node.log" | sed -E 's/.*(study graded|results sent).* ms=([0-9.]+).*/\1 \2/' |
  awk '/graded/ {g[++n]=$3} /sent/ {s[++m]=$3} END {for (i=1;i<=n;i++) printf "  study %d: grading %.0f ms, sending %.0f ms\n", i, g[i], s[i]}'
