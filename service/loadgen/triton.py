"""`ca-serve bench --triton HOST:PORT`: drive Triton directly with preprocessed batches.

The images are decoded, resized and cropped once, up front, by the gateway's own
preprocessing (`service.preprocess`) following the model's `ModelSpec`, so the
numbers measure Triton alone; set beside a gateway run they show the gateway's overhead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.loadgen.stats import Outcome
from service.spec import ModelSpec


def preprocessed_batches(
    images: list[bytes], spec: ModelSpec, batch: int, max_image_pixels: int
) -> list[NDArray[np.uint8]]:
    """`len(images)` batches shaped `[batch, *spec.input_shape]`, cycling through the images."""
    from service.preprocess import preprocess

    arrays = [preprocess(data, spec, max_image_pixels=max_image_pixels) for data in images]
    return [
        np.ascontiguousarray(np.stack([arrays[(i + j) % len(arrays)] for j in range(batch)]))
        for i in range(len(arrays))
    ]


class TritonTarget:
    """Sends `[K, H, W, 3]` uint8 batches to one Triton model over gRPC or HTTP (asyncio)."""

    def __init__(
        self,
        address: str,
        *,
        model: str,
        spec: ModelSpec,
        batches: list[NDArray[np.uint8]],
        protocol: str = "grpc",
        top_k: int = 5,
        timeout_s: float = 30.0,
    ) -> None:
        self.address = address.split("://", 1)[-1]
        self.model = model
        self.spec = spec
        self.batches = batches
        self.protocol = protocol
        self.top_k = top_k
        self.timeout_s = timeout_s
        self.images_per_request = int(batches[0].shape[0])
        self._client: Any = None
        self._module: Any = None

    @property
    def description(self) -> str:
        return f"triton {self.protocol}://{self.address}/{self.model}"

    async def start(self) -> None:
        """Connect and check the model is ready; raises RuntimeError with Triton's reason."""
        if self.protocol == "grpc":
            import tritonclient.grpc.aio as module
        else:
            import tritonclient.http.aio as module
        self._module = module
        self._client = module.InferenceServerClient(self.address)
        try:
            ready = await self._client.is_model_ready(self.model)
        except Exception as exc:
            raise RuntimeError(f"cannot reach Triton at {self.address}: {exc}") from exc
        if not ready:
            raise RuntimeError(f"model {self.model!r} is not ready on Triton at {self.address}")

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def send(self, index: int) -> Outcome:
        """One inference."""
        from tritonclient.utils import InferenceServerException

        batch = self.batches[index % len(self.batches)]
        module = self._module
        infer_input = module.InferInput(self.spec.input_name, list(batch.shape), "UINT8")
        infer_input.set_data_from_numpy(batch)
        output = module.InferRequestedOutput(self.spec.output_name, class_count=self.top_k)
        try:
            await self._client.infer(self.model, [infer_input], outputs=[output],
                                     **self._timeout_kwargs())
        except InferenceServerException as exc:
            status = str(exc.status() or "error")
            return Outcome(status, f"triton {status}", self.images_per_request)
        except OSError as exc:
            return Outcome(None, type(exc).__name__, self.images_per_request)
        return Outcome("OK", None, self.images_per_request)

    def _timeout_kwargs(self) -> dict[str, Any]:
        if self.protocol == "grpc":
            return {"client_timeout": self.timeout_s}
        return {}


def load_spec(model_repository: Path, model: str) -> ModelSpec:
    """The served model's spec from the repository Triton serves (`<repo>/<model>/spec.json`)."""
    return ModelSpec.load(model_repository / model)
