#!/usr/bin/env python3
"""Independent reference decoder for the DICOM tests: pydicom (+ pylibjpeg) HU after rescale.

Usage:
  pydicom_reference.py list ROOT           print every CT file under ROOT that has pixel data
  pydicom_reference.py dump OUT FILE...    write OUT/<i>.f32 (HU as little-endian float32,
                                           frames sorted along the slice normal) and
                                           OUT/manifest.json with shapes and transfer syntaxes
  pydicom_reference.py series OUT FILE...  like dump, but the files form one series: writes
                                           OUT/series.f32 with slices sorted along the normal
  pydicom_reference.py make-series SRC OUT N [STEP [ROLL]]
                                           derive an N-slice series from one real CT slice: each
                                           slice's pixels are the source's rolled by 7 columns per
                                           slice (so slices differ), IPP 2.5 mm apart, files named
                                           in shuffled order; STEP > 1 keeps every STEP-th
                                           row and column (512 -> 256 with 2); ROLL columns
                                           per slice instead of 7 (0: identical slices)

Rescale follows DICOM: RescaleSlope/Intercept at the top level, else the per-frame or shared
PixelValueTransformationSequence (Enhanced CT). Frames are sorted by the projection of
ImagePositionPatient on the normal of ImageOrientationPatient, as the spec of osteo-dicom says.
"""
import json
import os
import sys

import numpy as np
import pydicom


def frame_attr(ds, frame, seq, attr):
    for group in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        if group not in ds:
            continue
        items = ds[group].value
        item = items[frame] if group.startswith("PerFrame") else items[0]
        if seq in item and len(item[seq].value) and attr in item[seq].value[0]:
            return item[seq].value[0][attr].value
    return None


def rescale(ds, frame):
    slope = ds.get("RescaleSlope")
    icpt = ds.get("RescaleIntercept")
    if slope is None:
        slope = frame_attr(ds, frame, "PixelValueTransformationSequence", "RescaleSlope")
    if icpt is None:
        icpt = frame_attr(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept")
    return float(slope if slope is not None else 1.0), float(icpt if icpt is not None else 0.0)


def geometry(ds, frame):
    pos = ds.get("ImagePositionPatient") or frame_attr(ds, frame, "PlanePositionSequence", "ImagePositionPatient")
    ori = ds.get("ImageOrientationPatient") or frame_attr(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
    return pos, ori


def hu_frames(ds):
    arr = ds.pixel_array
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if n == 1:
        arr = arr[np.newaxis]
    out = []
    for f in range(n):
        slope, icpt = rescale(ds, f)
        hu = arr[f].astype(np.float64) * slope + icpt
        pos, ori = geometry(ds, f)
        key = 0.0
        if pos is not None and ori is not None:
            r = np.array(ori[:3], dtype=float)
            c = np.array(ori[3:], dtype=float)
            key = float(np.dot(np.array(pos, dtype=float), np.cross(r, c)))
        out.append((key, hu.astype(np.float32)))
    return out


def make_series(src, out, n, step=1, roll=7):
    from pydicom.uid import generate_uid
    import random
    os.makedirs(out, exist_ok=True)
    base = pydicom.dcmread(src)
    base.decompress() if base.file_meta.TransferSyntaxUID.is_compressed else None
    pixels = base.pixel_array[::step, ::step]
    series_uid = generate_uid(entropy_srcs=[src, "series", str(n)])
    order = list(range(n))
    random.Random(n).shuffle(order)
    for k in range(n):
        ds = pydicom.dcmread(src)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        ds.PixelData = np.roll(pixels, roll * k, axis=1).astype(pixels.dtype).tobytes()
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelSpacing = [float(v) * step for v in ds.PixelSpacing]
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[src, str(n), str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-120.0, -120.0, -100.0 + 2.5 * k]
        ds.ImageOrientationPatient = ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])
        ds.SliceThickness = 2.5
        ds.save_as(os.path.join(out, f"slice_{order[k]:04d}.dcm"), enforce_file_format=True)


def main():
    cmd = sys.argv[1]
    if cmd == "list":
        root = sys.argv[2]
        for dirpath, _, names in sorted(os.walk(root)):
            for name in sorted(names):
                path = os.path.join(dirpath, name)
                try:
                    ds = pydicom.dcmread(path, stop_before_pixels=False)
                except Exception:
                    continue
                if ds.get("Modality") == "CT" and "PixelData" in ds:
                    print(path)
        return
    if cmd == "make-series":
        make_series(sys.argv[2], sys.argv[3], int(sys.argv[4]),
                    int(sys.argv[5]) if len(sys.argv) > 5 else 1,
                    int(sys.argv[6]) if len(sys.argv) > 6 else 7)
        return
    out = sys.argv[2]
    files = sys.argv[3:]
    os.makedirs(out, exist_ok=True)
    if cmd == "dump":
        manifest = []
        for i, path in enumerate(files):
            ds = pydicom.dcmread(path)
            frames = sorted(hu_frames(ds), key=lambda kv: kv[0])
            vol = np.stack([f for _, f in frames])
            vol.astype("<f4").tofile(os.path.join(out, f"{i}.f32"))
            manifest.append({"file": path, "shape": list(vol.shape),
                             "transfer_syntax": str(ds.file_meta.TransferSyntaxUID)})
        with open(os.path.join(out, "manifest.json"), "w") as fh:
            json.dump(manifest, fh)
    elif cmd == "series":
        frames = []
        for path in files:
            frames.extend(hu_frames(pydicom.dcmread(path)))
        frames.sort(key=lambda kv: kv[0])
        vol = np.stack([f for _, f in frames])
        vol.astype("<f4").tofile(os.path.join(out, "series.f32"))
        with open(os.path.join(out, "manifest.json"), "w") as fh:
            json.dump({"shape": list(vol.shape)}, fh)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
