"""Clients for ca-serve: the Python API and `ca-serve classify`."""

from clients.client import DEFAULT_URL, AsyncCAServeClient, CAServeClient
from clients.errors import APIError, CAServeError, RequestTimedOut, ServerUnreachable
from clients.inputs import ImageInput
from clients.results import Classification, ModelInfo, Prediction
from clients.retry import NO_RETRY, RetryPolicy

__all__ = [
    "DEFAULT_URL",
    "NO_RETRY",
    "APIError",
    "AsyncCAServeClient",
    "CAServeClient",
    "CAServeError",
    "Classification",
    "ImageInput",
    "ModelInfo",
    "Prediction",
    "RequestTimedOut",
    "RetryPolicy",
    "ServerUnreachable",
]
