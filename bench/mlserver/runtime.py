"""A small MLServer runtime serving an OsteoServe model.onnx with onnxruntime: the peer that
scripts/bench-oip.sh measures OsteoServe against (same model file, same inputs and outputs)."""
import json
import os

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.handlers import custom_handler
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

# MLServer has no Triton model configuration endpoint, which perf_analyzer reads first; the
# runtime serves one (Triton's JSON form) per model from OSTEO_BENCH_CONFIGS, a JSON object of
# model name -> configuration.
CONFIGS = json.loads(os.environ.get("OSTEO_BENCH_CONFIGS", "{}"))


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(
            self.settings.parameters.uri, options, providers=["CPUExecutionProvider"]
        )
        return True

    @custom_handler(rest_path="/v2/models/{model_name}/config", rest_method="GET")
    async def config(self, model_name: str) -> dict:
        return CONFIGS.get(model_name, {})

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i).astype(np.float32) for i in payload.inputs}
        (logits,) = self._session.run(["logits"], feeds)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = e / e.sum(axis=1, keepdims=True)
        # Outputs without MLServer's content-type parameters: perf_analyzer's HTTP client reads
        # any output "parameters" object as Triton's binary data parameters.
        def output(name, array):
            return ResponseOutput(
                name=name, shape=list(array.shape), datatype="FP32", data=array.ravel().tolist()
            )

        return InferenceResponse(
            model_name=self.name,
            outputs=[output("logits", logits), output("probabilities", probabilities)],
        )
