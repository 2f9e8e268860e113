#!/usr/bin/env python3
"""Shadow traffic's cost to the primary (not part of CI): two release `osteo serve` processes
with the shipped fused model on ONNX Runtime and candle, one of them shadowing every ONNX Runtime
answer on candle ([[shadow]] fraction 1.0), loaded in turn by `osteo loadgen` (a phantom study
stored once, Classify by handle):

1. one client: Classify p50 and p90 on each server, median of RUNS interleaved runs, and the
   shadow's own counts (compared, dropped) from the shadowed server's /metrics;
2. overload: 8 clients on the shadowed server: every primary request must succeed while the
   shadow drops what it cannot keep up with;
3. the shadowed server's `osteo ab report`.

    bench_shadow.py [RUNS=5] [REQUESTS=400]
"""
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OSTEO = os.path.join(ROOT, "target", "release", "osteo")
MODEL = os.path.join(ROOT, "models", "osteo-fused-v1")
CLINICAL = ["--age", "70", "--sex", "F", "--height-cm", "160", "--weight-kg", "60"]
SHADOW = """
[[shadow]]
model = "osteo-fused-v1"
backend = "ort"
target_backend = "candle"
fraction = 1.0
"""


def port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def metric(url, name, label):
    text = urllib.request.urlopen(url).read().decode()
    return sum(float(l.split()[-1]) for l in text.splitlines()
               if re.match(name + r"(\{| )", l) and label in l)


def serve(work, name, extra):
    grpc, metrics = port(), port()
    config = os.path.join(work, f"{name}.toml")
    with open(config, "w") as f:
        f.write(f"[server]\nlisten = \"127.0.0.1:{grpc}\"\nmetrics_listen = \"127.0.0.1:{metrics}\"\n"
                f"http_listen = \"\"\n[[models]]\npath = \"{MODEL}\"\nbackends = [\"ort\", \"candle\"]\n"
                f"{extra}")
    log = open(os.path.join(work, f"{name}.log"), "w")
    p = subprocess.Popen([OSTEO, "serve", "--config", config], stdout=log, stderr=subprocess.STDOUT)
    while "SERVING" not in open(log.name).read():
        if p.poll() is not None:
            sys.exit(f"osteo serve ({name}) exited at start: " + open(log.name).read()[-2000:])
        time.sleep(0.1)
    return p, f"http://127.0.0.1:{grpc}", f"http://127.0.0.1:{metrics}/metrics"


def loadgen(server, study, clients, requests):
    out = subprocess.run(
        [OSTEO, "loadgen", "--server", server, "--dicom", study, *CLINICAL, "--clients", str(clients),
         "--requests", str(requests), "--backend", "ort", "--json"],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    requests = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    work = tempfile.mkdtemp()
    subprocess.run([OSTEO, "synth", "--patients", "1", "--seed", "7", "--dicom", "--out", work],
                   check=True, capture_output=True)
    studies = os.path.join(work, "studies")
    study = os.path.join(studies, sorted(os.listdir(studies))[0])
    plain, plain_url, _ = serve(work, "plain", "")
    shadowed, shadow_url, shadow_metrics = serve(work, "shadowed", SHADOW)
    try:
        cells = {"plain": [], "shadowed": []}
        for _ in range(runs):
            for name, url in [("plain", plain_url), ("shadowed", shadow_url)]:
                r = loadgen(url, study, 1, requests)
                if r["ok"] != r["requests"]:
                    sys.exit(f"loadgen ({name}): {r['codes']}")
                cells[name].append(r)
        time.sleep(2)  # let the shadow finish its queue
        count = lambda outcome: metric(shadow_metrics, "osteo_shadow_requests_total", f'outcome="{outcome}"')
        compared, dropped = count("compared"), count("dropped")
        med = lambda rs, f: statistics.median(f(r) for r in rs)
        print(f"One client, Classify of a stored phantom study on ONNX Runtime (fused model), {requests} "
              f"requests per run, median of {runs} interleaved runs:\n")
        print("| server | Classify p50 ms | p90 ms | requests/s |")
        print("|---|---|---|---|")
        p50 = {}
        for name in ["plain", "shadowed"]:
            rs = cells[name]
            p50[name] = med(rs, lambda r: r["classify_ms"]["p50"])
            p90 = med(rs, lambda r: r["classify_ms"]["p90"])
            rps = med(rs, lambda r: r["throughput_rps"])
            label = "no shadow" if name == "plain" else "shadow on candle, fraction 1.0"
            print(f"| {label} | {p50[name]:.3f} | {p90:.3f} | {rps:.0f} |")
        print(f"\np50 with the shadow / without: {p50['shadowed'] / p50['plain']:.3f}; "
              f"shadow requests compared {compared:.0f}, dropped {dropped:.0f} "
              f"({dropped / max(compared + dropped, 1):.0%})\n")

        r = loadgen(shadow_url, study, 8, requests * 2)
        time.sleep(2)
        compared8, dropped8 = count("compared") - compared, count("dropped") - dropped
        print(f"Overload, 8 clients on the shadowed server: {r['ok']} of {r['requests']} primary requests "
              f"succeeded (codes {r['codes']}), {r['throughput_rps']:.0f} requests/s, p50 "
              f"{r['classify_ms']['p50']:.2f} ms; the shadow compared {compared8:.0f} and dropped "
              f"{dropped8:.0f} ({dropped8 / max(compared8 + dropped8, 1):.0%})\n")
        report = subprocess.run([OSTEO, "ab", "report", "--server", shadow_url], check=True,
                                capture_output=True, text=True).stdout
        print("```text\n$ osteo ab report --server URL\n" + report + "```")
    finally:
        for p in (plain, shadowed):
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()
