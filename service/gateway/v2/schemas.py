"""The Open Inference Protocol's bodies, for `/docs` and for checking answers against
their schema. The inference request and response are raw bytes on the wire (JSON, or
JSON then binary tensor data), so they are documented as JSON Schema here and read and
written by `codec`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ServerMetadata(BaseModel):
    name: str = Field(description="The server: 'ca-serve'")
    version: str
    extensions: list[str] = Field(description="Protocol extensions the server supports")


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks a dimension of any size (the batch)")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str = Field(description="'ca-serve_embedded' or 'ca-serve_triton'")
    inputs: list[TensorMetadata] = Field(
        description="The inputs the model takes; a request sends exactly one of them"
    )
    outputs: list[TensorMetadata]


class V2Error(BaseModel):
    error: str = Field(description="What went wrong, for humans")


_DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
              "INT64", "FP16", "FP32", "FP64", "BYTES"]
_PARAMETERS: dict[str, Any] = {"type": "object", "additionalProperties": True}
_SHAPE: dict[str, Any] = {"type": "array", "items": {"type": "integer", "minimum": 0}}

INFER_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {
            "type": "object",
            "properties": {"binary_data_output": {"type": "boolean"}},
            "additionalProperties": True,
        },
        "inputs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype"],
                "properties": {
                    "name": {"type": "string", "examples": ["IMAGE_BYTES", "IMAGE"]},
                    "shape": _SHAPE,
                    "datatype": {"type": "string", "enum": _DATATYPES},
                    "parameters": {
                        "type": "object",
                        "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
                        "additionalProperties": True,
                    },
                    "data": {"type": "array", "description": "Row-major, flat or nested"},
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "examples": ["PROBS"]},
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "binary_data": {"type": "boolean"},
                            "classification": {"type": "integer", "minimum": 0},
                        },
                        "additionalProperties": True,
                    },
                },
            },
        },
    },
}

INFER_RESPONSE: dict[str, Any] = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "datatype", "shape"],
                "properties": {
                    "name": {"type": "string"},
                    "datatype": {"type": "string"},
                    "shape": _SHAPE,
                    "parameters": _PARAMETERS,
                    "data": {"type": "array"},
                },
            },
        },
    },
}
