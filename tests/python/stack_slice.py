"""Writes a CT series made of one real slice repeated: N files in OUT, each with its own SOP
Instance UID and ImagePositionPatient SPACING mm further along z, everything else (patient,
study, pixel data as encoded) as the source states it. The quality gate accepts such a stack of
a real abdominal slice, so the tests can write results on real CT attributes.

    stack_slice.py SOURCE OUT N SPACING
"""

import sys
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

source, out, n, spacing = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
out.mkdir(parents=True, exist_ok=True)
series = generate_uid()
for i in range(n):
    ds = pydicom.dcmread(source)
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x, y, round(z + i * spacing, 3)]
    ds.SliceThickness = spacing
    ds.InstanceNumber = i + 1
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(out / f"{i:03d}.dcm", enforce_file_format=True)
