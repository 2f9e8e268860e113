#!/usr/bin/env python3
"""End-to-end benchmark: `osteo predict` (release build, the whole process: read, decode, quality
gate, coronal_slab view, image model on ONNX Runtime) against a Python pipeline doing the same
job in-process: pydicom + numpy read, decode, rescale, sort and stack; the same view in numpy;
onnxruntime on the same model.onnx. The Python probabilities are checked equal to osteo's
(1e-4) before anything is timed. Series derived from the real abdominal CT slice
explicit_VR-UN.dcm of pydicom-data (JPEG 2000 in the source, decompressed), stacked to N slices
2.5 mm apart, stored explicit VR little endian. Medians of interleaved runs.

    bench_e2e.py [REPETITIONS=5]   (run with .cache/bench-venv/bin/python: scripts/bench.sh)
"""
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import onnxruntime
import pydicom

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF = os.path.join(ROOT, "scripts", "pydicom_reference.py")
MODEL = os.path.join(ROOT, "models", "osteo-image-v1")
BODY_MIN_HU = -300.0


def view_spec():
    import tomllib
    with open(os.path.join(MODEL, "model.toml"), "rb") as f:
        return tomllib.load(f)["view"]


def ingest(d):
    """HU volume [z, y, x] sorted along the slice normal, with origin, spacing and direction."""
    frames = []
    for name in os.listdir(d):
        ds = pydicom.dcmread(os.path.join(d, name))
        hu = ds.pixel_array.astype(np.float32) * np.float32(ds.RescaleSlope) + np.float32(ds.RescaleIntercept)
        o = np.array(ds.ImageOrientationPatient, dtype=float)
        normal = np.cross(o[:3], o[3:])
        pos = np.array(ds.ImagePositionPatient, dtype=float)
        frames.append((float(pos @ normal), pos, hu, o, normal, [float(v) for v in ds.PixelSpacing]))
    frames.sort(key=lambda f: f[0])
    vol = np.stack([f[2] for f in frames])
    keys = [f[0] for f in frames]
    dz = float(np.median(np.diff(keys))) if len(keys) > 1 else 1.0
    o, normal, ps = frames[0][3], frames[0][4], frames[0][5]
    return vol, frames[0][1], (dz, ps[0], ps[1]), (o[:3], o[3:], normal)


def coronal_slab(vol, origin, spacing, direction, spec):
    """The coronal_slab view, as crates/osteo-dicom/src/view.rs builds it."""
    nz, ny, nx = vol.shape
    sx, sy, sz = np.sign(direction[0][0]), np.sign(direction[1][1]), np.sign(direction[2][2])
    x_of = lambda ix: origin[0] + sx * ix * spacing[2]
    y_of = lambda iy: origin[1] + sy * iy * spacing[1]
    z_step = max(nz // 64, 1)
    sub = vol[::z_step, ::2, :]
    body = sub > BODY_MIN_HU
    count = int(body.sum())
    xs_mm = x_of(np.arange(nx))
    centre_x = float((body.sum(axis=(0, 1)) * xs_mm).sum() / count) if count else (x_of(0) + x_of(nx - 1)) / 2
    band = np.nonzero(np.abs(xs_mm - centre_x) <= spec["spine_band_mm"] / 2)[0]
    bone = (vol[::z_step][:, :, band] > spec["bone_threshold_hu"]).sum(axis=(0, 2))
    ys = np.repeat(y_of(np.arange(ny)), bone)
    spine_y = float(np.partition(ys, len(ys) // 2)[len(ys) // 2]) if len(ys) else y_of(ny // 2)
    z_first = origin[2]
    z_last = z_first + sz * (nz - 1) * spacing[0]
    centre_z = (z_first + z_last) / 2
    h, w, p = spec["height"], spec["width"], spec["pixel_mm"]
    top = [centre_x - (w - 1) / 2 * p, spine_y, centre_z + (h - 1) / 2 * p]
    y_index = lambda mm: (mm - origin[1]) * sy / spacing[1]
    ya, yb = y_index(spine_y - spec["slab_mm"] / 2), y_index(spine_y + spec["slab_mm"] / 2)
    y0 = int(max(np.ceil(min(ya, yb)), 0))
    y1 = min(int(np.floor(max(ya, yb))), ny - 1)
    rows = np.arange(y0, y1 + 1)
    lo, hi = spec["window_hu"]

    def frac(mm, org, sign, sp, n, half):
        if n == 1:
            return (0, 0, 0.0) if abs(mm - org) <= half else None
        f = (mm - org) * sign / sp
        if f < -0.5 or f > n - 0.5:
            return None
        f = min(max(f, 0.0), n - 1)
        i = min(int(np.floor(f)), n - 2)
        return i, i + 1, np.float32(f - i)

    xs = [frac(top[0] + c * p, origin[0], sx, spacing[2], nx, spacing[2] / 2) for c in range(w)]
    zs = [frac(top[2] - r * p, z_first, sz, spacing[0], nz, max(spacing[0], p) / 2) for r in range(h)]
    out = np.zeros((2, h, w), dtype=np.float32)
    cols = [c for c in range(w) if xs[c] is not None]
    x0 = np.array([xs[c][0] for c in cols]); x1 = np.array([xs[c][1] for c in cols])
    tx = np.array([xs[c][2] for c in cols], dtype=np.float32)
    if len(rows) == 0 or not cols:
        return out
    for r, zf in enumerate(zs):
        if zf is None:
            continue
        z0, z1, tz = zf
        one = np.float32(1)
        a = vol[z0][rows][:, x0] * (one - tx) + vol[z0][rows][:, x1] * tx
        b = vol[z1][rows][:, x0] * (one - tx) + vol[z1][rows][:, x1] * tx
        val = np.clip((a * (one - tz) + b * tz - np.float32(lo)) / np.float32(hi - lo), 0, 1)
        out[0, r, cols] = val.sum(axis=0) / np.float32(len(rows))
        out[1, r, cols] = val.max(axis=0)
    return out


def python_pipeline(d, spec):
    vol, origin, spacing, direction = ingest(d)
    view = coronal_slab(vol, origin, spacing, direction, spec)
    session = onnxruntime.InferenceSession(os.path.join(MODEL, "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"images": view[None]})[0][0]
    e = np.exp(logits - logits.max())
    return e / e.sum()


def osteo_pipeline(osteo, d):
    out = subprocess.run([osteo, "predict", "--model", MODEL, "--dicom", d, "--backend", "ort", "--json",
                          # The image model reads no clinical variable; the CLI asks for them.
                          "--age", "70", "--sex", "F", "--height-cm", "160", "--weight-kg", "60"],
                         check=True, capture_output=True, text=True).stdout
    p = json.loads(out)["probabilities"]
    return np.array([p["normal"], p["osteopenia"], p["osteoporosis"]])


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    osteo = os.path.join(ROOT, "target", "release", "osteo")
    src = os.path.join(ROOT, ".cache", "testdata", "data_store", "data", "explicit_VR-UN.dcm")
    spec = view_spec()
    print(f"median of {reps} interleaved runs; series derived from the real abdominal CT explicit_VR-UN.dcm")
    print(f"{'series':<16}{'osteo predict (s)':>18}{'python (s)':>12}{'ratio':>8}  max |p difference|")
    for n, step in [(108, 2), (300, 1)]:
        d = os.path.join(ROOT, ".cache", "bench", f"abdomen{n}-{512 // step}")
        if not os.path.isdir(d):
            # The reference environment decodes the JPEG 2000 source (pylibjpeg).
            venv = os.path.join(ROOT, ".cache", "venv", "bin", "python")
            subprocess.run([venv, REF, "make-series", src, d, str(n), str(step), "0"], check=True)
        diff = float(np.abs(python_pipeline(d, spec) - osteo_pipeline(osteo, d)).max())
        if diff > 1e-4:
            sys.exit(f"{n} slices: the Python pipeline's probabilities differ from osteo's by {diff:.2e}")
        times = [[], []]
        for _ in range(reps):
            for t, fn in zip(times, [lambda: osteo_pipeline(osteo, d), lambda: python_pipeline(d, spec)]):
                start = time.perf_counter()
                fn()
                t.append(time.perf_counter() - start)
        ours, ref = (statistics.median(t) for t in times)
        size = 512 // step
        print(f"{f'{n} x {size}x{size}':<16}{ours:>18.3f}{ref:>12.3f}{ref / ours:>7.1f}x  {diff:.1e}")


if __name__ == "__main__":
    main()
