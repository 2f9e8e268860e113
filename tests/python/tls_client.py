"""Python grpcio over TLS: the osteo.v1 contract with a bearer token and a client certificate.

Usage: tls_client.py STUBS_DIR HOST:PORT CA_PEM TOKEN CLIENT_CERT_PEM CLIENT_KEY_PEM
Connects with the CA as the only trusted root (server name "localhost" for a 127.0.0.1
address), calls ListModels without credentials, with a wrong token, with the token and with the
client certificate, classifies from clinical variables with the token, and prints one JSON
object with what it saw.
"""
import json
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from osteo.v1 import osteo_pb2 as pb  # noqa: E402
from osteo.v1 import osteo_pb2_grpc as rpc  # noqa: E402


def read(path):
    with open(path, "rb") as f:
        return f.read()


def main():
    _, _, address, ca, token, cert, key = sys.argv
    options = [("grpc.ssl_target_name_override", "localhost")]
    plain_tls = grpc.ssl_channel_credentials(root_certificates=read(ca))
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert)
    )
    out = {}

    def list_models(creds, metadata):
        with grpc.secure_channel(address, creds, options=options) as channel:
            stub = rpc.OsteoServiceStub(channel)
            try:
                r = stub.ListModels(pb.ListModelsRequest(), metadata=metadata, timeout=30)
                return "OK", r.default_model
            except grpc.RpcError as e:
                return e.code().name, e.details()

    out["no_credentials"] = list_models(plain_tls, [])[0]
    out["wrong_token"] = list_models(plain_tls, [("authorization", "Bearer ost_wrong")])[0]
    out["token"] = list_models(plain_tls, [("authorization", f"Bearer {token}")])
    out["certificate"] = list_models(with_cert, [])
    with grpc.secure_channel(address, plain_tls, options=options) as channel:
        stub = rpc.OsteoServiceStub(channel)
        r = stub.Classify(
            pb.ClassifyRequest(
                clinical=pb.ClinicalVariables(
                    age_years=71, sex=pb.SEX_FEMALE, height_cm=158, weight_kg=52
                )
            ),
            metadata=[("authorization", f"Bearer {token}")],
            timeout=60,
        )
        out["grade"] = pb.Grade.Name(r.grade)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
