"""An independent client of the osteo.v1 contract: Python grpcio with stubs generated from
proto/ at test time (a second implementation of the protocol next to the Rust client).

Usage: osteo_client.py STUBS_DIR HOST:PORT STUDY_DIR
Uploads the study in chunks, calls every RPC and prints one JSON object with what it saw.
"""
import json
import os
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from osteo.v1 import osteo_pb2 as pb  # noqa: E402
from osteo.v1 import osteo_pb2_grpc as rpc  # noqa: E402

CHUNK = 16 * 1024


def upload_messages(files):
    yield pb.UploadStudyRequest(
        header=pb.UploadHeader(
            expected_files=len(files), expected_bytes=sum(len(f) for f in files)
        )
    )
    for index, data in enumerate(files):
        pieces = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
        for k, piece in enumerate(pieces):
            yield pb.UploadStudyRequest(
                chunk=pb.FileChunk(
                    file_index=index, data=piece, last=k == len(pieces) - 1
                )
            )


def code_of(call):
    try:
        call()
    except grpc.RpcError as e:
        return e.code().name
    return "OK"


def main():
    _, _, address, study_dir = sys.argv
    names = sorted(os.listdir(study_dir))
    files = [open(os.path.join(study_dir, n), "rb").read() for n in names]
    with grpc.insecure_channel(address) as channel:
        stub = rpc.OsteoServiceStub(channel)
        summary = stub.UploadStudy(upload_messages(files)).summary
        study = pb.StudyRef(study=summary.study)
        clinical = pb.ClinicalVariables(
            age_years=71, sex=pb.SEX_FEMALE, height_cm=158, weight_kg=52, smoker=True
        )
        c = stub.Classify(pb.ClassifyRequest(study=study, clinical=clinical))
        e = stub.Explain(pb.ExplainRequest(study=study, clinical=clinical))
        cmp = stub.CompareBackends(
            pb.CompareBackendsRequest(study=study, clinical=clinical)
        )
        models = stub.ListModels(pb.ListModelsRequest())
        got = stub.GetStudy(pb.GetStudyRequest(study=summary.study))
        freed = stub.DeleteStudy(pb.DeleteStudyRequest(study=summary.study))
        shadows = stub.GetShadowReport(pb.GetShadowReportRequest())
        no_sex = pb.ClinicalVariables(age_years=71, height_cm=158, weight_kg=52)
        print(
            json.dumps(
                {
                    "handle": summary.study,
                    "slices": summary.geometry.slices,
                    "grade": pb.Grade.Name(c.grade),
                    "probabilities": [
                        c.probabilities.normal,
                        c.probabilities.osteopenia,
                        c.probabilities.osteoporosis,
                    ],
                    "model": c.model.name,
                    "backend": c.backend.name,
                    "gradcam_values": len(e.gradcam.values),
                    "overlay_is_png": e.gradcam.overlay_png[:4] == b"\x89PNG",
                    "compare_backends": [r.backend.name for r in cmp.results],
                    "grades_agree": cmp.grades_agree,
                    "models": [m.name for m in models.models],
                    "get_study": got.summary.study,
                    "freed_bytes": freed.freed_bytes,
                    "shadow_pairs": len(shadows.pairs),
                    "shadow_resamples": shadows.resamples,
                    "stored_bytes": summary.stored_bytes,
                    "after_delete": code_of(
                        lambda: stub.GetStudy(pb.GetStudyRequest(study=summary.study))
                    ),
                    "without_sex": code_of(
                        lambda: stub.Classify(
                            pb.ClassifyRequest(
                                clinical=no_sex, model="osteo-tabular-v1"
                            )
                        )
                    ),
                }
            )
        )


if __name__ == "__main__":
    main()
