"""The CPU model runner of the local runtime: Triton's Python backend executes an ONNX file with ONNX Runtime.

Triton's dynamic batcher hands `execute` several requests at once; we stack them into one batch, run it
once, and split the outputs back, so batching pays off here as it does with TensorRT on a GPU.
Parameters (config.pbtxt `parameters`): `onnx_file` (in the version folder), `intra_op_threads` (0: ORT's default).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np


def _param(config: dict[str, Any], key: str, default: str) -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return str(value) if value not in (None, "") else default


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        model_file = Path(args["model_repository"]) / args["model_version"] / _param(config, "onnx_file", "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(_param(config, "intra_op_threads", "0"))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        first_dim = self.session.get_inputs()[0].shape[0] if self.session.get_inputs()[0].shape else None
        # A model exported with a fixed batch cannot take stacked requests: run those one at a time.
        self.stackable = int(config.get("max_batch_size", 0)) > 0 and not isinstance(first_dim, int)

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        try:
            if self.stackable and len(requests) > 1:
                return self._run_stacked(requests, pb_utils)
            return [self._respond(pb_utils, self._run(self._inputs(r, pb_utils))) for r in requests]
        except Exception as exc:  # every request gets the error instead of the server seeing a crash
            error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]

    def _inputs(self, request: Any, pb_utils: Any) -> dict[str, np.ndarray]:
        return {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.input_names}

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(self.output_names, feeds))

    def _run_stacked(self, requests: list[Any], pb_utils: Any) -> list[Any]:
        per_request = [self._inputs(r, pb_utils) for r in requests]
        sizes = [len(f[self.input_names[0]]) for f in per_request]
        stacked = {n: np.concatenate([f[n] for f in per_request]) for n in self.input_names}
        outputs = self._run(stacked)
        bounds = np.cumsum([0, *sizes])
        return [self._respond(pb_utils, [o[a:b] for o in outputs]) for a, b in itertools.pairwise(bounds)]

    def _respond(self, pb_utils: Any, outputs: list[np.ndarray]) -> Any:
        # A view of a bigger array came back from Triton as an empty tensor: hand it fresh contiguous copies.
        pairs = zip(self.output_names, outputs, strict=True)
        tensors = [pb_utils.Tensor(n, np.array(o, copy=True, order="C")) for n, o in pairs]
        return pb_utils.InferenceResponse(output_tensors=tensors)
