"""Reads OsteoServe SRs with highdicom as a TID 1500 consumer would and prints, for each file
named, what it found as one JSON object per line: the report type, the measurement group's
finding, the probabilities, the grade as a qualitative evaluation, the algorithm identification,
the source images, and each vertebral body's group (finding site, HU)."""

import json
import sys

import highdicom as hd
from highdicom.sr.utils import find_content_items
from pydicom.sr.coding import Code


def code(c):
    return [c.value, c.scheme_designator, c.meaning]


def text_of(root, value, scheme):
    items = find_content_items(root, name=Code(value, scheme, ""), recursive=True)
    return [i.value for i in items]


for path in sys.argv[1:]:
    sr = hd.sr.srread(path)
    report = sr.content
    groups = report.get_image_measurement_groups()
    group = groups[0]
    grade = find_content_items(
        report[0], name=Code("BMD-GRADE", "99OSTEO", ""), recursive=True
    )
    print(json.dumps({
        "path": path,
        "report": type(report).__name__,
        "groups": len(groups),
        "finding": code(group.finding_type),
        "probabilities": {m.name.meaning: float(m.value) for m in group.get_measurements()},
        "grade": [code(g.value) for g in grade],
        "algorithm_name": text_of(group[0], "111001", "DCM"),
        "algorithm_version": text_of(group[0], "111003", "DCM"),
        "algorithm_parameters": text_of(group[0], "111002", "DCM"),
        "source_images": sorted(
            i.referenced_sop_instance_uid for i in group.source_images
        ),
        "statement": text_of(report[0], "121106", "DCM"),
        "vertebrae": [
            [
                code(g.finding_sites[0].value),
                [float(m.value) for m in g.get_measurements()],
                [m.unit.value for m in g.get_measurements()],
            ]
            for g in groups[1:]
        ],
    }))
