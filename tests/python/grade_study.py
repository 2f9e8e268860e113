"""GradeStudy from Python grpcio (stubs generated from proto/ at test time): one call uploads a
study and grades it; nothing stays on the server, so it works behind any balancer.

Usage: grade_study.py STUBS_DIR HOST:PORT STUDY_DIR CALLS
Prints one JSON object: the grade, probabilities and quality gate of each call.
"""
import json
import os
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from osteo.v1 import osteo_pb2 as pb  # noqa: E402
from osteo.v1 import osteo_pb2_grpc as rpc  # noqa: E402

CHUNK = 1 << 20


def grade_messages(files, action):
    """The header (what to do, and the upload header), then each file in chunks."""
    yield pb.GradeStudyRequest(
        header=pb.GradeStudyHeader(
            action=action,
            upload=pb.UploadHeader(
                expected_files=len(files), expected_bytes=sum(len(f) for f in files)
            ),
        )
    )
    for index, data in enumerate(files):
        pieces = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
        for k, piece in enumerate(pieces):
            yield pb.GradeStudyRequest(
                chunk=pb.FileChunk(file_index=index, data=piece, last=k == len(pieces) - 1)
            )


def main():
    _, _, address, study_dir, calls = sys.argv
    names = sorted(os.listdir(study_dir))
    files = [open(os.path.join(study_dir, n), "rb").read() for n in names]
    action = pb.GradeAction(classify=pb.ClassifyRequest(clinical_from_dicom=True))
    results = []
    with grpc.insecure_channel(address) as channel:
        stub = rpc.OsteoServiceStub(channel)
        for _ in range(int(calls)):
            r = stub.GradeStudy(grade_messages(files, action))
            c = r.classification
            results.append(
                {
                    "grade": pb.Grade.Name(c.grade),
                    "probabilities": [
                        c.probabilities.normal,
                        c.probabilities.osteopenia,
                        c.probabilities.osteoporosis,
                    ],
                    "slices": r.summary.geometry.slices,
                    "gate_passed": [q.passed for q in r.summary.quality],
                    "stored_bytes": r.summary.stored_bytes,
                }
            )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
