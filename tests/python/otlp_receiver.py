"""A minimal OTLP/gRPC trace receiver on loopback for the telemetry test.

Prints `PORT <n>` once listening, then one JSON line per received span:
{"service": ..., "name": ..., "attributes": {...}, "trace": hex, "id": hex, "parent": hex}.
"""
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as ts
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as ts_grpc


def value(v):
    kind = v.WhichOneof("value")
    return str(getattr(v, kind)) if kind else ""


class Receiver(ts_grpc.TraceServiceServicer):
    def Export(self, request, context):
        for rs in request.resource_spans:
            service = {a.key: value(a.value) for a in rs.resource.attributes}.get(
                "service.name", ""
            )
            for ss in rs.scope_spans:
                for span in ss.spans:
                    attributes = {a.key: value(a.value) for a in span.attributes}
                    print(
                        json.dumps(
                            {
                                "service": service,
                                "name": span.name,
                                "attributes": attributes,
                                "trace": span.trace_id.hex(),
                                "id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                            }
                        ),
                        flush=True,
                    )
        return ts.ExportTraceServiceResponse()


def main():
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    ts_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(main())
