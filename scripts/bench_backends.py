#!/usr/bin/env python3
"""Backend table: `osteo bench` (release build) on every shipped model, candle and ONNX Runtime,
batch 1 and 32 and Explain; RUNS runs interleaved over the models, the median of the runs' p50
per cell, printed as a Markdown table.

    bench_backends.py [RUNS=5] [ITERATIONS=30]
"""
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ["osteo-fused-v1", "osteo-image-v1", "osteo-tabular-v1"]


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    iterations = sys.argv[2] if len(sys.argv) > 2 else "30"
    osteo = os.path.join(ROOT, "target", "release", "osteo")
    cells = {}
    for _ in range(runs):
        for model in MODELS:
            out = subprocess.run(
                [osteo, "bench", "--model", os.path.join(ROOT, "models", model), "--backends", "candle,ort",
                 "--batches", "1,32", "--iterations", iterations, "--json"],
                check=True, capture_output=True, text=True).stdout
            for r in json.loads(out)["results"]:
                cells.setdefault((model, r["backend"], r["op"], r["batch"]), []).append(r["p50_ms"])
    cell = lambda *k: f"{statistics.median(cells[k]):.3g}" if k in cells else "-"
    print(f"`osteo bench --backends candle,ort --batches 1,32 --iterations {iterations}`, median of {runs} interleaved runs' p50 (ms):\n")
    print("| model | candle batch 1 | ORT batch 1 | candle batch 32 | ORT batch 32 | candle Explain | ORT Explain |")
    print("|---|---|---|---|---|---|---|")
    for m in MODELS:
        print(f"| {m} | {cell(m, 'candle', 'predict', 1)} | {cell(m, 'ort', 'predict', 1)} | "
              f"{cell(m, 'candle', 'predict', 32)} | {cell(m, 'ort', 'predict', 32)} | "
              f"{cell(m, 'candle', 'explain', 1)} | {cell(m, 'ort', 'explain', 1)} |")


if __name__ == "__main__":
    main()
