"""TorchServe handler for the CA-MobileNetV2 TorchScript model (runs inside TorchServe's
Python worker, in the peers' venv; imports nothing from this repository).

TorchServe's frontend batches up to `batchSize` requests within `maxBatchDelay` ms and
hands them to `handle` together. Each request body is one image; preprocessing is plain
PIL (full-size decode, EXIF transpose, RGB, shorter side to 256 bilinear, centre crop
224), as TorchServe's own image handlers do, one image after another. The TorchScript
model (the repository's `ca_mobilenetv2/1/model.pt`) takes uint8 NHWC and returns
probabilities; the answer per image is its top 5 as `{label, index, score}`.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from ts.torch_handler.base_handler import BaseHandler


class CAMobileNetV2Handler(BaseHandler):  # type: ignore[misc]
    """Batch of raw image bodies -> one forward -> top-5 per image."""

    def initialize(self, context: Any) -> None:
        torch.set_num_threads(int(os.environ.get("CA_TS_TORCH_THREADS", "1")))
        super().initialize(context)
        model_dir = Path(context.system_properties["model_dir"])
        spec = json.loads((model_dir / "spec.json").read_text())
        self.resize_shorter = int(spec["resize_shorter"])
        self.input_size = int(spec["input_size"])
        self.labels = (model_dir / "labels.txt").read_text().splitlines()
        self.initialized = True

    def _image(self, data: bytes) -> np.ndarray[Any, np.dtype[np.uint8]]:
        opened = Image.open(io.BytesIO(data))
        image = (ImageOps.exif_transpose(opened) or opened).convert("RGB")
        width, height = image.size
        scale = self.resize_shorter / min(width, height)
        new_w, new_h = int(width * scale), int(height * scale)
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        size = self.input_size
        left, top = round((new_w - size) / 2), round((new_h - size) / 2)
        return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)

    def preprocess(self, data: list[dict[str, Any]]) -> torch.Tensor:
        images = []
        for row in data:
            body = row.get("data") or row.get("body")
            if isinstance(body, str):
                body = body.encode()
            if not isinstance(body, bytes | bytearray):
                raise ValueError("each request must carry one image as its body")
            images.append(self._image(bytes(body)))
        return torch.from_numpy(np.stack(images))

    def inference(self, data: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(data)  # type: ignore[no-any-return]

    def postprocess(self, data: torch.Tensor) -> list[dict[str, Any]]:
        scores, indices = torch.topk(data, 5, dim=1)
        return [
            {"predictions": [{"label": self.labels[int(i)], "index": int(i), "score": float(s)}
                             for s, i in zip(row_scores, row_indices, strict=True)]}
            for row_scores, row_indices in zip(scores, indices, strict=True)
        ]
