"""Triton's own Python client (tritonclient.http) against OsteoServe's Open Inference Protocol
over HTTP/REST.

Usage: triton_http_client.py HOST:PORT INPUT_DIR [TOKEN]
INPUT_DIR is as for triton_client.py. With TOKEN, every call but health sends
`Authorization: Bearer TOKEN`, and a call without it is expected to be refused. Prints one JSON
object: health, metadata, and for each model the probabilities of a binary-data infer and of a
JSON infer, its configuration and statistics, and the errors of a wrong shape and an unknown
input.
"""
import json
import sys

import numpy as np
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from triton_client import MODELS, load_inputs, onnx_probabilities


def refusal(call):
    try:
        call()
        return "accepted"
    except InferenceServerException as e:
        return f"{e.status()} {e.message()}"


def main():
    address, input_dir = sys.argv[1], sys.argv[2]
    token = sys.argv[3] if len(sys.argv) > 3 else None

    def headers():
        # A new dict per call: tritonclient writes Inference-Header-Content-Length into it.
        return {"Authorization": f"Bearer {token}"} if token else None

    client = th.InferenceServerClient(url=address)
    out = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "server": client.get_server_metadata(headers=headers()),
        "repository": sorted(
            (m["name"], m.get("state", "")) for m in client.get_model_repository_index(headers=headers())
        ),
        "models": {},
    }
    if token:
        out["without_token"] = refusal(lambda: client.get_server_metadata())
    for model in MODELS:
        meta = client.get_model_metadata(model, headers=headers())
        data = load_inputs(model, input_dir)
        results = {}
        for form, binary in (("binary", True), ("json", False)):
            inputs = []
            for name, array in data.items():
                i = th.InferInput(name, list(array.shape), "FP32")
                i.set_data_from_numpy(array, binary_data=binary)
                inputs.append(i)
            outputs = [
                th.InferRequestedOutput("probabilities", binary_data=binary),
                th.InferRequestedOutput("logits", binary_data=not binary),
            ]
            r = client.infer(model, inputs, outputs=outputs, headers=headers(), request_id="r-1")
            results[form] = r.as_numpy("probabilities").ravel().tolist()
            results[form + "_logits_shape"] = list(r.as_numpy("logits").shape)
            results[form + "_id"] = r.get_response()["id"]
        name, array = next(iter(data.items()))
        wrong = th.InferInput(name, [array.shape[0], 7], "FP32")
        wrong.set_data_from_numpy(np.zeros((array.shape[0], 7), dtype=np.float32))
        unknown = th.InferInput("height", [1, 1], "FP32")
        unknown.set_data_from_numpy(np.zeros((1, 1), dtype=np.float32))
        config = client.get_model_config(model, headers=headers())
        stats = client.get_inference_statistics(model, headers=headers())["model_stats"][0]
        out["models"][model] = {
            **results,
            "onnxruntime": onnx_probabilities(model, data),
            "ready": client.is_model_ready(model, headers=headers()),
            "versioned_ready": client.is_model_ready(model, "1", headers=headers()),
            "versions": meta["versions"],
            "inputs": [[i["name"], i["datatype"], i["shape"]] for i in meta["inputs"]],
            "max_batch_size": config["max_batch_size"],
            "config_inputs": [[i["name"], i["data_type"], i["dims"]] for i in config["input"]],
            "success_count": stats["inference_stats"]["success"]["count"],
            "wrong_shape": refusal(lambda: client.infer(model, [wrong], headers=headers())),
            "unknown_input": refusal(lambda: client.infer(model, [unknown], headers=headers())),
        }
    out["unknown_model"] = refusal(lambda: client.get_model_metadata("nope", headers=headers()))
    out["unknown_version"] = refusal(
        lambda: client.get_model_metadata("osteo-tabular-v1", "9", headers=headers())
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
