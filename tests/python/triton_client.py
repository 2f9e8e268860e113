"""Triton's own Python client (tritonclient.grpc) against OsteoServe's Open Inference Protocol.

Usage: triton_client.py HOST:PORT DESCRIPTOR_SET INPUT_DIR
DESCRIPTOR_SET is OsteoServe's encoded FileDescriptorSet: every message of its `inference`
package is compared, field by field (name, number, type, label), with the one tritonclient was
built from. INPUT_DIR holds MODEL.INPUT.f32 files (little-endian float32, rows x per-row values)
and MODEL.rows. Prints one JSON object: health, metadata, for each model the probabilities of a
raw-content and of a typed-content infer, the error of a wrong shape, and the descriptor
mismatches.
"""
import json
import os
import sys

import grpc
import numpy as np
import tritonclient.grpc as tc
from google.protobuf import descriptor_pb2
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

MODELS = {
    "osteo-fused-v1": [("images", (2, 128, 128)), ("tabular", (13,))],
    "osteo-image-v1": [("images", (2, 128, 128))],
    "osteo-tabular-v1": [("tabular", (13,))],
}


def field_key(f):
    return (f.name, f.number, f.type, f.label, f.type_name.lstrip("."))


def compare(ours, theirs, path, out):
    """Appends to `out` every difference between message descriptor protos."""
    mine = {f.name: field_key(f) for f in ours.field}
    other = {f.name: field_key(f) for f in theirs.field}
    for name, key in mine.items():
        if name not in other:
            out.append(f"{path}.{name}: not in tritonclient's protocol")
        elif key != other[name]:
            out.append(f"{path}.{name}: ours {key}, tritonclient {other[name]}")
    their_nested = {n.name: n for n in theirs.nested_type}
    for nested in ours.nested_type:
        if nested.options.map_entry:
            continue
        if nested.name not in their_nested:
            out.append(f"{path}.{nested.name}: not in tritonclient's protocol")
        else:
            compare(nested, their_nested[nested.name], f"{path}.{nested.name}", out)


def descriptor_mismatches(fds_path):
    fds = descriptor_pb2.FileDescriptorSet()
    with open(fds_path, "rb") as f:
        fds.ParseFromString(f.read())
    ours = next(f for f in fds.file if f.package == "inference")
    theirs = descriptor_pb2.FileDescriptorProto()
    service_pb2.DESCRIPTOR.CopyToProto(theirs)
    config = descriptor_pb2.FileDescriptorProto()
    model_config_pb2.DESCRIPTOR.CopyToProto(config)
    their_messages = {m.name: m for m in list(theirs.message_type) + list(config.message_type)}
    their_enums = {e.name: e for e in list(theirs.enum_type) + list(config.enum_type)}
    out = []
    for e in ours.enum_type:
        t = their_enums.get(e.name)
        mine = {v.name: v.number for v in e.value}
        other = {v.name: v.number for v in t.value} if t else {}
        for name, number in mine.items():
            if other.get(name) != number:
                out.append(f"enum {e.name}.{name} = {number}: tritonclient has {other.get(name)}")
    for m in ours.message_type:
        if m.name not in their_messages:
            out.append(f"{m.name}: not in tritonclient's protocol")
        else:
            compare(m, their_messages[m.name], m.name, out)
    their_methods = {m.name: m for m in theirs.service[0].method}
    for method in ours.service[0].method:
        t = their_methods.get(method.name)
        if t is None or (t.input_type, t.output_type) != (method.input_type, method.output_type):
            out.append(f"rpc {method.name}: differs from tritonclient's")
    return out


def onnx_probabilities(model, data):
    """Probabilities of ONNX Runtime in Python on the model's model.onnx (OSTEO_MODELS_DIR)."""
    import onnxruntime as ort

    path = os.path.join(os.environ["OSTEO_MODELS_DIR"], model, "model.onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {k: v.astype(np.float32) for k, v in data.items()})
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).ravel().tolist()


def load_inputs(model, input_dir):
    rows = int(open(os.path.join(input_dir, f"{model}.rows")).read())
    return {
        name: np.fromfile(os.path.join(input_dir, f"{model}.{name}.f32"), dtype="<f4").reshape(
            (rows,) + shape
        )
        for name, shape in MODELS[model]
    }


def main():
    _, address, fds_path, input_dir = sys.argv
    client = tc.InferenceServerClient(url=address)
    out = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "server": client.get_server_metadata(as_json=True)["name"],
        "descriptor_mismatches": descriptor_mismatches(fds_path),
        "models": {},
    }
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
    index = client.get_model_repository_index(as_json=True)
    out["repository"] = sorted((m["name"], m.get("state", "")) for m in index.get("models", []))
    for model in MODELS:
        meta = client.get_model_metadata(model, as_json=True)
        data = load_inputs(model, input_dir)
        # Raw contents: what tritonclient sends.
        inputs = []
        for name, array in data.items():
            i = tc.InferInput(name, list(array.shape), "FP32")
            i.set_data_from_numpy(array)
            inputs.append(i)
        outputs = [tc.InferRequestedOutput("probabilities"), tc.InferRequestedOutput("logits")]
        raw = client.infer(model, inputs, outputs=outputs).as_numpy("probabilities")
        # Typed contents through the generated stub.
        req = service_pb2.ModelInferRequest(model_name=model)
        for name, array in data.items():
            t = req.inputs.add(name=name, datatype="FP32", shape=list(array.shape))
            t.contents.fp32_contents.extend(array.ravel().tolist())
        typed_resp = stub.ModelInfer(req)
        typed = next(o for o in typed_resp.outputs if o.name == "probabilities")
        # A wrong shape is refused naming the input.
        name, array = next(iter(data.items()))
        wrong = tc.InferInput(name, [array.shape[0], 7], "FP32")
        wrong.set_data_from_numpy(np.zeros((array.shape[0], 7), dtype=np.float32))
        try:
            client.infer(model, [wrong])
            refused = "accepted"
        except InferenceServerException as e:
            refused = f"{e.status()} {e.message()}"
        # Streaming: two requests on one stream, answered in order.
        answers = []
        client.start_stream(callback=lambda result, error: answers.append((result, error)))
        for _ in range(2):
            client.async_stream_infer(model, inputs, outputs=outputs)
        client.stop_stream()
        streamed = [r.as_numpy("probabilities").ravel().tolist() for r, e in answers if e is None]
        config = client.get_model_config(model, as_json=True)["config"]
        stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        out["models"][model] = {
            "max_batch_size": config.get("max_batch_size"),
            "config_inputs": [[i["name"], i["data_type"], [int(d) for d in i["dims"]]] for i in config["input"]],
            "dynamic_batching": "dynamic_batching" in config,
            "streamed": streamed,
            "stream_errors": [str(e) for r, e in answers if e is not None],
            "inference_count": int(stats.get("inference_count", 0)),
            "execution_count": int(stats.get("execution_count", 0)),
            "success_count": int(stats["inference_stats"]["success"].get("count", 0)),
            "ready": client.is_model_ready(model),
            "versions": meta["versions"],
            "inputs": [[i["name"], i["datatype"], [int(d) for d in i["shape"]]] for i in meta["inputs"]],
            "outputs": [o["name"] for o in meta["outputs"]],
            "raw": raw.ravel().tolist(),
            "onnxruntime": onnx_probabilities(model, data),
            "typed": list(typed.contents.fp32_contents),
            "wrong_shape": refused,
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
