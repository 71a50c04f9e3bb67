"""The served model as the Open Inference Protocol sees it: its metadata, which input
tensors it takes, and the outputs it answers with.

Inputs, exactly one per request:

- `IMAGE_BYTES`, BYTES `[N]` or `[N, 1]`: encoded images (JPEG, PNG, ...), decoded and
  preprocessed by the gateway exactly as `/classify` does. As JSON, each element is the
  image in base64 (JSON text cannot carry raw image bytes); as binary data, the raw bytes.
- the spec's input (`IMAGE`), UINT8 `[N, input_size, input_size, 3]`: images already
  preprocessed, as the model itself takes them on Triton.

`N` is at most `max_files`, and the encoded images together at most `max_upload_bytes`,
the limits `/classify` applies. The one output is the spec's (`PROBS`), FP32
`[N, num_classes]`, or with Triton's classification extension (`classification: k`)
BYTES `[N, k]` of `"score:index:label"` (score printed as C's `%f`, k capped at the
number of classes, as Triton does).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.errors import BadRequest, PayloadTooLarge, TooManyFiles
from service.gateway.batch_call import Ranking
from service.gateway.runtime import Upload
from service.gateway.v2.codec import BYTES, InferRequest, Tensor
from service.spec import ModelSpec

ENCODED_INPUT = "IMAGE_BYTES"
PREPROCESSED_DATATYPE = "UINT8"
PROBS_DATATYPE = "FP32"


@dataclass(frozen=True)
class OutputPlan:
    """One output to answer: `k` classes per image as classification strings, or the
    whole probability tensor when `k` is 0."""

    name: str
    k: int
    binary: bool


@dataclass(frozen=True)
class Job:
    """What an inference request asks of the runtime: the images (encoded uploads or
    preprocessed arrays), the classes to rank per image, and the outputs to answer."""

    images: list[Upload] | list[NDArray[np.uint8]]
    k: int
    outputs: list[OutputPlan]


@dataclass(frozen=True)
class V2Model:
    """The model behind `/v2/models/{name}`: `name` and `version` are the only ones the
    routes accept; `platform` names the gateway's backend."""

    name: str
    version: str
    platform: str
    spec: ModelSpec
    labels: tuple[str, ...]

    def metadata(self) -> dict[str, Any]:
        """The `$metadata_model_response` object."""
        size = self.spec.input_size
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [
                _tensor_meta(self.spec.input_name, PREPROCESSED_DATATYPE, [-1, size, size, 3]),
                _tensor_meta(ENCODED_INPUT, BYTES, [-1]),
            ],
            "outputs": [
                _tensor_meta(self.spec.output_name, PROBS_DATATYPE, [-1, self.spec.num_classes]),
            ],
        }

    def prepare(self, request: InferRequest, *, max_images: int, max_bytes: int) -> Job:
        """Check the request against the model and the limits. Raises `BadRequest` for an
        unknown, missing or extra tensor, a wrong datatype or shape, or bad base64;
        `TooManyFiles` past `max_images`; `PayloadTooLarge` when the encoded images add
        up to more than `max_bytes`."""
        if len(request.inputs) != 1:
            names = [tensor.name for tensor in request.inputs]
            raise BadRequest(f"send exactly one input tensor ({self._inputs_hint()}); got {names}")
        tensor = request.inputs[0]
        images: list[Upload] | list[NDArray[np.uint8]]
        if tensor.name == ENCODED_INPUT:
            images = self._encoded(tensor, max_images, max_bytes)
        elif tensor.name == self.spec.input_name:
            images = self._preprocessed(tensor, max_images)
        else:
            raise BadRequest(f"unknown input {tensor.name[:64]!r}: {self._inputs_hint()}")
        outputs = self._plan(request)
        classes = self.spec.num_classes
        k = max(plan.k or classes for plan in outputs)
        return Job(images=images, k=k, outputs=outputs)

    def answer(self, job: Job, rankings: Sequence[Ranking]) -> list[Tensor]:
        """The output tensors for `rankings` (one per image, at least `job.k` classes)."""
        return [self._output(plan, rankings) for plan in job.outputs]

    # -- inputs ---------------------------------------------------------------------------
    def _inputs_hint(self) -> str:
        size = self.spec.input_size
        return (f"{ENCODED_INPUT!r} (BYTES [N], encoded images) or {self.spec.input_name!r} "
                f"(UINT8 [N,{size},{size},3], preprocessed)")

    def _encoded(self, tensor: Tensor, max_images: int, max_bytes: int) -> list[Upload]:
        where = f"input {ENCODED_INPUT!r}"
        if tensor.datatype != BYTES:
            raise BadRequest(f"{where} has datatype {tensor.datatype}; expected BYTES")
        if len(tensor.shape) not in (1, 2) or tensor.shape[1:] not in ((), (1,)):
            raise BadRequest(f"{where} has shape {list(tensor.shape)}; expected [N] or [N,1]")
        count = _batch(tensor, where, max_images)
        assert isinstance(tensor.data, list)  # BYTES, by the codec's contract
        elements = tensor.data if tensor.binary else [
            _from_base64(text, number, where) for number, text in enumerate(tensor.data)
        ]
        total = sum(len(element) for element in elements)
        if total > max_bytes:
            raise PayloadTooLarge(f"{where}: {count} images of {total} bytes together; "
                                  f"the limit is {max_bytes}")
        return [
            Upload(element, f"{ENCODED_INPUT}[{number}]")
            for number, element in enumerate(elements)
        ]

    def _preprocessed(self, tensor: Tensor, max_images: int) -> list[NDArray[np.uint8]]:
        where = f"input {self.spec.input_name!r}"
        if tensor.datatype != PREPROCESSED_DATATYPE:
            raise BadRequest(f"{where} has datatype {tensor.datatype}; expected UINT8 "
                             f"(or send encoded images as {ENCODED_INPUT!r}, BYTES)")
        expected = self.spec.input_shape
        if len(tensor.shape) != 4 or tensor.shape[1:] != expected:
            shown = ",".join(str(d) for d in expected)
            raise BadRequest(f"{where} has shape {list(tensor.shape)}; expected [N,{shown}]")
        _batch(tensor, where, max_images)
        assert not isinstance(tensor.data, list)  # numeric, by the codec's contract
        return list(tensor.data)

    # -- outputs --------------------------------------------------------------------------
    def _plan(self, request: InferRequest) -> list[OutputPlan]:
        name = self.spec.output_name
        if request.outputs is None:
            return [OutputPlan(name, 0, request.binary_output)]
        plans = []
        for output in request.outputs:
            if output.name != name:
                raise BadRequest(
                    f"unknown output {output.name[:64]!r}: this model answers {name!r}"
                )
            binary = request.binary_output if output.binary is None else output.binary
            k = min(output.classification, self.spec.num_classes)
            plans.append(OutputPlan(name, k, binary))
        return plans

    def _output(self, plan: OutputPlan, rankings: Sequence[Ranking]) -> Tensor:
        if plan.k == 0:
            probs = probabilities(rankings, self.spec.num_classes)
            return Tensor(plan.name, PROBS_DATATYPE, probs.shape, probs, plan.binary)
        strings = [
            f"{score:f}:{index}:{self.labels[index]}".encode()
            for ranking in rankings
            for index, score in ranking[: plan.k]
        ]
        return Tensor(plan.name, BYTES, (len(rankings), plan.k), strings, plan.binary)


def probabilities(rankings: Sequence[Ranking], num_classes: int) -> NDArray[np.float32]:
    """`[N, num_classes]` float32 from rankings that each cover every class."""
    probs = np.empty((len(rankings), num_classes), dtype=np.float32)
    for row, ranking in enumerate(rankings):
        if len(ranking) != num_classes:  # pragma: no cover - a bug, not client input
            raise RuntimeError(f"ranking {row} covers {len(ranking)} of {num_classes} classes")
        indices, scores = zip(*ranking, strict=True)
        probs[row, list(indices)] = scores
    return probs


def _batch(tensor: Tensor, where: str, max_images: int) -> int:
    count = tensor.shape[0]
    if count == 0:
        raise BadRequest(f"{where} holds no images")
    if count > max_images:
        raise TooManyFiles(f"{where} holds {count} images; at most {max_images} per request")
    return count


def _from_base64(text: bytes, number: int, where: str) -> bytes:
    try:
        # Line breaks are what `base64` tools insert every 76 characters; nothing else
        # outside the alphabet is allowed.
        return base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(
            f"{where}: element {number} is not base64 (JSON BYTES elements must be the "
            "image in base64; send raw bytes as binary data)"
        ) from None


def _tensor_meta(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape}
