"""Validates OsteoServe's FHIR R4 Bundles with fhir.resources (FHIR 4.0.1 models: required
elements, value sets of codes the models check, no unknown elements) and prints, for each file
named, one JSON object per line with what an EHR would read: the resources, the report's
ImagingStudy identifier and result references, the grade and probability Observations, the
Device's versions and properties, the subject and the notes, and the decision (referral,
prediction set, interpretation, conclusion) and the vertebral attenuation Observations."""

import json
import sys

from fhir.resources import __fhir_version__
from fhir.resources.bundle import Bundle

assert __fhir_version__ == "4.0.1", __fhir_version__

for path in sys.argv[1:]:
    bundle = Bundle.parse_file(path)
    by_url = {e.fullUrl: e.resource for e in bundle.entry}
    resources = [e.resource for e in bundle.entry]
    report = next(r for r in resources if r.resource_type == "DiagnosticReport")
    observations = [by_url[ref.reference] for ref in report.result]
    device_url, device = next(
        (u, r) for u, r in by_url.items() if r.resource_type == "Device"
    )

    def coding(concept):
        c = concept.coding[0]
        return [c.system, c.code, c.display]

    grade = [o for o in observations if o.valueCodeableConcept is not None]
    quantities = [
        o for o in observations if o.valueQuantity is not None and o.valueQuantity.code == "1"
    ]
    attenuation = [
        o for o in observations
        if o.valueQuantity is not None and o.valueQuantity.code == "[hnsf'U]"
    ]
    print(json.dumps({
        "path": path,
        "bundle_type": bundle.type,
        "resources": [r.resource_type for r in resources],
        "report_code": coding(report.code),
        "report_status": report.status,
        "imaging_study": [s.identifier.value for s in report.imagingStudy or []],
        "performer_is_device": report.performer[0].reference == device_url,
        "grade": [coding(o.valueCodeableConcept) for o in grade],
        "grade_concept": [coding(o.code) for o in grade],
        "probabilities": {o.code.coding[0].code: float(o.valueQuantity.value) for o in quantities},
        "units": sorted({o.valueQuantity.code for o in quantities}),
        "observations_by_device": all(o.device.reference == device_url for o in observations),
        "device_name": [n.name for n in device.deviceName],
        "device_versions": {v.type.text: v.value for v in device.version},
        "device_properties": {p.type.text: p.valueCode[0].text for p in device.property},
        "subject": report.subject.identifier.value if report.subject else None,
        "notes": sorted({n.text for o in observations for n in (o.note or [])}),
        "refer": [o.valueBoolean for o in observations if o.valueBoolean is not None],
        "prediction_set": [
            [c.valueCodeableConcept.coding[0].code for c in o.component or []]
            for o in observations if o.valueString is not None
        ],
        "interpretation": [
            i.coding[0].code for o in grade for i in (o.interpretation or [])
        ],
        "conclusion": report.conclusion,
        "vertebrae": [
            [o.bodySite.coding[0].code, o.bodySite.coding[0].display, float(o.valueQuantity.value)]
            for o in attenuation
        ],
    }))
