"""The peer most users write first: FastAPI + eager PyTorch, as tutorials show it.

One forward per request, run inline in the `async def` route; preprocessing with PIL inline
(full-size decode, EXIF transpose, RGB, resize shorter side to 256 bilinear, centre crop
224, normalise); the model is a module-level global loaded at import. The network and
weights are the gateway's (`service.model.load_checkpoint` on the same checkpoint); only
the serving around it is "tutorial". It answers `POST /classify` with a raw image body,
so `ca-serve bench` loads it exactly as it loads the gateway.

Start: `CA_PEER_WEIGHTS=benchmarks/results/tmp/weights.pt \
    .venv/bin/uvicorn benchmarks.peers.plain_fastapi:app --port 8001`
(or `benchmarks/peers/start_plain_fastapi.sh PORT`).
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from PIL import Image, ImageOps

from service.model.checkpoint import load_checkpoint
from service.spec import IMAGENET_MEAN, IMAGENET_STD, default_labels_path, load_labels

WEIGHTS = os.environ.get("CA_PEER_WEIGHTS", "benchmarks/results/tmp/weights.pt")

model = load_checkpoint(WEIGHTS).eval()
labels = load_labels(default_labels_path(), expected=1000)
mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

app = FastAPI()


def transform(image: Image.Image) -> torch.Tensor:
    width, height = image.size
    scale = 256 / min(width, height)
    new_w, new_h = int(width * scale), int(height * scale)
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = round((new_w - 224) / 2), round((new_h - 224) / 2)
    image = image.crop((left, top, left + 224, top + 224))
    tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (tensor - mean) / std


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/classify")
async def classify(request: Request, top_k: int = 5) -> dict[str, Any]:
    data = await request.body()
    opened = Image.open(io.BytesIO(data))
    image = (ImageOps.exif_transpose(opened) or opened).convert("RGB")
    batch = transform(image).unsqueeze(0)
    with torch.no_grad():
        probs = torch.softmax(model(batch), dim=1)[0]
    scores, indices = torch.topk(probs, top_k)
    return {"results": [{"predictions": [
        {"label": labels[int(i)], "index": int(i), "score": float(s)}
        for s, i in zip(scores, indices, strict=True)
    ]}]}
