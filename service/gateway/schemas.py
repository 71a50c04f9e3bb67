"""Response bodies, as pydantic models so `/docs` documents them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Prediction(BaseModel):
    label: str = Field(description="Class name")
    index: int = Field(description="Class index in the model's output")
    score: float = Field(description="Probability (softmax output), 0..1")


class ImageResult(BaseModel):
    filename: str | None = Field(
        None,
        description="The multipart part's file name, cleaned: base name only, no control "
        "characters, at most 255 characters; null when there is none",
    )
    predictions: list[Prediction] = Field(description="Best first, `top_k` entries")


class ModelRef(BaseModel):
    name: str = Field(description="The model that answered (on Triton, as Triton names it)")
    version: str = Field(
        description="Its version, as the answering server reports it (empty while unknown)"
    )


class ClassifyResponse(BaseModel):
    model: ModelRef
    results: list[ImageResult] = Field(description="One per image, in the order sent")


class WeightsSource(BaseModel):
    source: str = Field(description="Where the weights came from (file, URL or 'random')")
    random_init: bool = Field(description="True when the weights are random: answers are noise")
    sha256: str | None = None
    warning: str | None = None


class ModelDescription(BaseModel):
    name: str
    version: str
    backend: str = Field(description="The inference backend serving: 'embedded' or 'triton'")
    engine: str | None = Field(
        None, description="The embedded backend's engine: 'openvino' or 'onnxruntime' "
        "(null for Triton)",
    )
    architecture: str
    num_classes: int
    input_size: int = Field(description="Side of the square crop the model sees, pixels")
    resize_shorter: int = Field(description="Shorter side after resize, before the crop")
    layout: str
    dtype: str
    color: str
    weights: WeightsSource
    labels: list[str] = Field(description="Class names by index")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    backend: str = Field(description="The inference backend: 'embedded' or 'triton'")
    model: ModelRef | None = Field(
        None, description="The model serving now (the latest to answer); absent while starting"
    )
    engine: str | None = Field(
        None, description="The embedded backend's engine once loaded: 'openvino' or "
        "'onnxruntime' (absent otherwise)",
    )
    detail: str


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. 'image_too_large'")
    message: str = Field(description="What went wrong, for humans")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class VersionChange(BaseModel):
    """What a model admin call did."""

    result: Literal["loaded", "unchanged"] = Field(
        description="loaded: the version was verified and serves now; unchanged: it already "
        "served (a refused version is a 409 `version_refused` error instead)"
    )
    model: str = Field(description="The served model's name")
    version: str = Field(description="The version serving now")
    previous: str = Field(description="The version that served before the call")
    pinned: str = Field(
        description="The version the gateway now stays on; empty while it follows the "
        "newest (CA_MODEL_VERSION empty, after a reload)"
    )
    detail: str = Field(description="What was checked, for people")
