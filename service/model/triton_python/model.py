"""Triton Python-backend model: the repository's ONNX graph on ONNX Runtime (CPU).

Copied by `ca-serve build-repo --target cpu` next to `model.onnx`, for Triton builds that
carry no ONNX Runtime or GPU backend (such as the one bundled in nvidia-pytriton). Tensor
names, dtypes and batching come from the model's config.pbtxt, so they match the GPU models.
"""

from __future__ import annotations

import json
import os
import site
from typing import Any

# The backend stub starts its interpreter isolated from the environment, so PYTHONPATH is
# not on sys.path by itself: honour it here so the server's packages (numpy, onnxruntime)
# are found.
for _entry in filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    site.addsitedir(_entry)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        filename = parameters.get("onnx_model_filename", "model.onnx")
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        options = ort.SessionOptions()
        threads = int(parameters.get("intra_op_threads", "0"))
        if threads > 0:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests: list[Any]) -> list[Any]:
        # The dynamic batcher hands over several requests: run them as one batch, then
        # give each request back exactly its own rows.
        try:
            images = [
                pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
                for request in requests
            ]
            sizes = [len(batch) for batch in images]
            probs = self.session.run(
                [self.output_name], {self.input_name: np.ascontiguousarray(np.concatenate(images))}
            )[0]
        except Exception as exc:  # one failure answers every request of the batch with an error
            error = pb_utils.TritonError(f"inference failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        start = 0
        for size in sizes:
            rows = probs[start : start + size]
            start += size
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, rows)])
            )
        return responses

    def finalize(self) -> None:
        self.session = None
