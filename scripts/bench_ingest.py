#!/usr/bin/env python3
"""Ingest benchmark: `osteo dicom inspect` (release build) versus pydicom + numpy on the same
real 512x512 multi-slice series, same machine, same run.

The series is derived from the real CT slice 693_UNCR.dcm of the pydicom-data wheel (see
pydicom_reference.py make-series) and transcoded to JPEG 2000 lossless with gdcmconv. The pydicom
side does what an ingest must: read every file, decode, apply the rescale, sort along the slice
normal and stack into one float32 volume. Times are medians of repeated runs (wall clock); the
osteo figure includes its process start-up.
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


def timed(fn, reps):
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    work = os.path.join(ROOT, ".cache", "bench", f"series{n}")
    src = os.path.join(ROOT, ".cache", "testdata", "data_store", "data", "693_UNCR.dcm")
    explicit = os.path.join(work, "explicit")
    j2k = os.path.join(work, "j2k")
    if not os.path.isdir(explicit):
        subprocess.run([sys.executable, REF, "make-series", src, explicit, str(n)], check=True)
    if not os.path.isdir(j2k):
        os.makedirs(j2k)
        for name in os.listdir(explicit):
            subprocess.run(["gdcmconv", "--j2k", os.path.join(explicit, name), os.path.join(j2k, name)], check=True)
    osteo = os.path.join(ROOT, "target", "release", "osteo")
    print(f"series: {n} slices of 512x512 (derived from the real CT 693_UNCR.dcm); median of {reps} runs")
    print(f"{'encoding':<22}{'osteo (s)':>12}{'pydicom+numpy (s)':>20}{'ratio':>10}")
    for label, d in [("explicit VR LE", explicit), ("JPEG 2000 lossless", j2k)]:
        ours = timed(lambda: subprocess.run([osteo, "dicom", "inspect", d, "--json"], check=True, stdout=subprocess.DEVNULL), reps)
        ref = timed(lambda: pydicom_ingest(d), reps)
        print(f"{label:<22}{ours:>12.3f}{ref:>20.3f}{ref / ours:>9.1f}x")


if __name__ == "__main__":
    main()
