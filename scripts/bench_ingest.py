#!/usr/bin/env python3
"""Ingest benchmark: `osteo dicom inspect` (release build) versus pydicom + numpy on the same
real multi-slice series (108 x 256x256 and 300 x 512x512), same machine, same run.

The series are derived from the real CT slice 693_UNCR.dcm of the pydicom-data wheel (see
pydicom_reference.py make-series) and transcoded to JPEG 2000 lossless with gdcmconv. The pydicom
side does what an ingest must: read every file, decode, apply the rescale, sort along the slice
normal and stack into one float32 volume. Times are medians of interleaved runs (wall clock);
the osteo figure includes its process start-up.

    bench_ingest.py [REPETITIONS]
"""
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import pydicom

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REF = os.path.join(ROOT, "scripts", "pydicom_reference.py")


def pydicom_ingest(d):
    frames = []
    for name in os.listdir(d):
        ds = pydicom.dcmread(os.path.join(d, name))
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        o = np.array(ds.ImageOrientationPatient, dtype=float)
        key = float(np.dot(np.array(ds.ImagePositionPatient, dtype=float), np.cross(o[:3], o[3:])))
        frames.append((key, hu))
    frames.sort(key=lambda kv: kv[0])
    return np.stack([f for _, f in frames])


def interleaved(fns, reps):
    """Median wall time of each function, the runs interleaved (a, b, a, b, ...)."""
    times = [[] for _ in fns]
    for _ in range(reps):
        for t, fn in zip(times, fns):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def series(n, step):
    """The explicit-VR and JPEG 2000 copies of an n-slice series (512 / step pixels square)."""
    work = os.path.join(ROOT, ".cache", "bench", f"series{n}" + (f"-{512 // step}" if step > 1 else ""))
    src = os.path.join(ROOT, ".cache", "testdata", "data_store", "data", "693_UNCR.dcm")
    explicit = os.path.join(work, "explicit")
    j2k = os.path.join(work, "j2k")
    if not os.path.isdir(explicit):
        subprocess.run([sys.executable, REF, "make-series", src, explicit, str(n), str(step)], check=True)
    if not os.path.isdir(j2k):
        os.makedirs(j2k)
        for name in os.listdir(explicit):
            subprocess.run(["gdcmconv", "--j2k", os.path.join(explicit, name), os.path.join(j2k, name)], check=True)
    return explicit, j2k


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    osteo = os.path.join(ROOT, "target", "release", "osteo")
    print(f"median of {reps} interleaved runs; series derived from the real CT 693_UNCR.dcm")
    print(f"{'series':<16}{'encoding':<22}{'osteo (s)':>12}{'pydicom+numpy (s)':>20}{'ratio':>10}")
    for n, step in [(108, 2), (300, 1)]:
        explicit, j2k = series(n, step)
        for label, d in [("explicit VR LE", explicit), ("JPEG 2000 lossless", j2k)]:
            ours, ref = interleaved([
                lambda: subprocess.run([osteo, "dicom", "inspect", d, "--json"], check=True, stdout=subprocess.DEVNULL),
                lambda: pydicom_ingest(d),
            ], reps)
            size = 512 // step
            print(f"{f'{n} x {size}x{size}':<16}{label:<22}{ours:>12.3f}{ref:>20.3f}{ref / ours:>9.1f}x")


if __name__ == "__main__":
    main()
