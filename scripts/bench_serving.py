#!/usr/bin/env python3
"""Serving benchmark against a release `osteo serve` with the shipped models (fused model, a
phantom study stored once):

1. Classify against the direct backend call, per backend (ONNX Runtime, candle), at 1 and 8
   clients (`osteo loadgen --direct`): p50 latencies, their ratio, and the 8-client throughput
   against the backend's own batched throughput (`osteo bench`, best of batch 8 and 32).
2. Memory: the server's resident set before and after storing 16 studies (per study, against
   the store's own `osteo_store_bytes`), and its peak resident set (VmHWM) after the load runs.

Medians of RUNS interleaved runs. Run with .cache/venv/bin/python (grpcio for the uploads).

    bench_serving.py [RUNS=5] [REQUESTS=400]
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


def port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # MiB
    return float("nan")


def metric(url, name):
    text = urllib.request.urlopen(url).read().decode()
    return sum(float(l.split()[-1]) for l in text.splitlines() if re.match(name + r"(\{| )", l))


def loadgen(server, study, backend, clients, requests):
    out = subprocess.run(
        [OSTEO, "loadgen", "--server", server, "--dicom", study, *CLINICAL, "--clients", str(clients),
         "--requests", str(requests), "--direct", MODEL, "--backend", backend, "--json"],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def batched_throughput(backend):
    out = subprocess.run([OSTEO, "bench", "--model", MODEL, "--backends", backend, "--batches", "8,32",
                          "--iterations", "20", "--json"], check=True, capture_output=True, text=True).stdout
    return max(r["samples_per_s"] for r in json.loads(out)["results"] if r["op"] == "predict")


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    requests = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    work = tempfile.mkdtemp()
    subprocess.run([OSTEO, "synth", "--patients", "1", "--seed", "7", "--dicom", "--out", work],
                   check=True, capture_output=True)
    studies = os.path.join(work, "studies")
    study = os.path.join(studies, sorted(os.listdir(studies))[0])
    grpc_port, metrics_port = port(), port()
    env = dict(os.environ, OSTEO__SERVER__HTTP_LISTEN="")
    log = open(os.path.join(work, "serve.log"), "w")
    server = subprocess.Popen([OSTEO, "serve", "--listen", f"127.0.0.1:{grpc_port}",
                               "--metrics-listen", f"127.0.0.1:{metrics_port}"],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        while "SERVING" not in open(log.name).read():
            if server.poll() is not None:
                sys.exit("osteo serve exited at start: " + open(log.name).read()[-2000:])
            time.sleep(0.1)
        url = f"http://127.0.0.1:{grpc_port}"
        metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        cells = {}
        for _ in range(runs):
            for backend in ["ort", "candle"]:
                for clients in [1, 8]:
                    r = loadgen(url, study, backend, clients, requests)
                    if r["ok"] != r["requests"]:
                        sys.exit(f"loadgen: {r['codes']}")
                    cells.setdefault((backend, clients), []).append(r)
        med = lambda rs, f: statistics.median(f(r) for r in rs)
        print(f"Classify of a stored phantom study, fused model, {requests} requests per run, median of {runs} interleaved runs:\n")
        print("| backend | clients | Classify p50 ms | direct call p50 ms | ratio | requests/s | backend batched samples/s | throughput / batched |")
        print("|---|---|---|---|---|---|---|---|")
        for backend in ["ort", "candle"]:
            batched = batched_throughput(backend)
            for clients in [1, 8]:
                rs = cells[(backend, clients)]
                p50 = med(rs, lambda r: r["classify_ms"]["p50"])
                direct = med(rs, lambda r: r["direct_backend_ms"]["p50"])
                rps = med(rs, lambda r: r["throughput_rps"])
                print(f"| {backend} | {clients} | {p50:.2f} | {direct:.2f} | {p50 / direct:.1f}x | {rps:.0f} | "
                      f"{batched:.0f} | {rps / batched:.2f} |")
        peak = status(server.pid, "VmHWM")

        # Memory per stored study: 16 uploads kept in the store.
        sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
        stubs = os.path.join(work, "stubs")
        os.makedirs(stubs)
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", os.path.join(ROOT, "proto"),
                        f"--python_out={stubs}", f"--grpc_python_out={stubs}",
                        os.path.join(ROOT, "proto", "osteo", "v1", "osteo.proto")], check=True)
        sys.argv = [sys.argv[0], stubs]
        import grpc
        import osteo_client
        files = [open(os.path.join(study, n), "rb").read() for n in sorted(os.listdir(study))]
        before = status(server.pid, "VmRSS")
        store_before = metric(metrics, "osteo_store_bytes")
        k = 16
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = osteo_client.rpc.OsteoServiceStub(channel)
            for _ in range(k):
                stub.UploadStudy(osteo_client.upload_messages(files))
        time.sleep(0.5)
        after = status(server.pid, "VmRSS")
        store = (metric(metrics, "osteo_store_bytes") - store_before) / k / 2**20
        size = sum(len(f) for f in files) / 2**20
        print(f"\nMemory (one run): {k} stored studies of {size:.1f} MiB of DICOM each: resident set "
              f"{before:.0f} -> {after:.0f} MiB, {(after - before) / k:.1f} MiB per study "
              f"(the store counts {store:.1f} MiB of voxels per study); peak resident set after the load "
              f"runs {peak:.0f} MiB.")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
