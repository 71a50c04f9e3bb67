"""Python clients for the ca-serve gateway: `CAServeClient` (sync) and `AsyncCAServeClient`.

    with CAServeClient("http://127.0.0.1:8000") as client:
        result = client.classify("cat.jpg")            # one image  -> Classification
        print(result.top.label, result.top.score)
        results = client.classify(["a.jpg", b"..."])   # a list     -> list[Classification]

One image goes as the raw request body, several as `multipart/form-data` `file` parts
(docs/architecture.md, HTTP contract). Errors raise `clients.errors` types; 503 and
connection failures are retried per `RetryPolicy`, 4xx never.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from types import TracebackType
from typing import Any, Self, overload

import httpx

from clients.errors import APIError, CAServeError, RequestTimedOut, ServerUnreachable
from clients.inputs import ImageInput, Upload, to_uploads
from clients.results import (
    Classification,
    ModelInfo,
    parse_classify,
    parse_model_info,
)
from clients.retry import RETRYABLE_TRANSPORT_ERRORS, RetryPolicy, parse_retry_after

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TOP_K = 5
USER_AGENT = "ca-serve-client/0.1"

ImagesArg = ImageInput | list[ImageInput] | tuple[ImageInput, ...]


def error_from_response(response: httpx.Response) -> APIError:
    """An `APIError` from an error answer, reading `{"error": {"code", "message"}}` if present."""
    code, message = f"http_{response.status_code}", response.reason_phrase or "error"
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = str(body["error"].get("code", code))
        message = str(body["error"].get("message", message))
    elif response.text.strip():
        message = response.text.strip()[:200]
    return APIError(
        response.status_code,
        code,
        message,
        request_id=response.headers.get("x-request-id"),
        retry_after_s=parse_retry_after(response.headers.get("retry-after")),
    )


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise APIError(response.status_code, "bad_response", "answer is not JSON") from exc


class _Base:
    """What the sync and async clients share: settings, request building, retry decisions."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        retry: RetryPolicy | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.retry = retry if retry is not None else RetryPolicy()
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._headers = {"User-Agent": USER_AGENT, **(headers or {})}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    @staticmethod
    def _classify_request(uploads: list[Upload], single: bool, top_k: int) -> dict[str, Any]:
        """httpx keyword arguments for `POST /classify`."""
        request: dict[str, Any] = {"params": {"top_k": top_k}}
        if single:
            upload = uploads[0]
            request["content"] = upload.data
            request["headers"] = {"Content-Type": upload.content_type}
        else:
            request["files"] = [
                ("file", (upload.filename, upload.data, upload.content_type))
                for upload in uploads
            ]
        return request

    def _retry_delay(self, attempt: int, failure: Exception) -> float | None:
        """Seconds to wait before trying again after `failure`, or None to give up."""
        if attempt >= self.retry.max_retries:
            return None
        if isinstance(failure, APIError):
            if not self.retry.retries_status(failure.status):
                return None
            if self.retry.gives_up_on(failure.retry_after_s):
                return None
            return self.retry.delay_s(attempt, failure.retry_after_s)
        if isinstance(failure, RETRYABLE_TRANSPORT_ERRORS):
            return self.retry.delay_s(attempt)
        return None

    def _final_error(self, failure: Exception) -> CAServeError:
        if isinstance(failure, CAServeError):
            return failure
        if isinstance(failure, httpx.TimeoutException) and not isinstance(
            failure, httpx.ConnectTimeout
        ):
            return RequestTimedOut(self.url, self.timeout_s)
        reason = str(failure) or type(failure).__name__
        return ServerUnreachable(self.url, reason)

    @staticmethod
    def _outcome(response: httpx.Response) -> Exception | None:
        return error_from_response(response) if response.status_code >= 400 else None

    @staticmethod
    def _new_request_id() -> str:
        return uuid.uuid4().hex

    @staticmethod
    def _results(
        response: httpx.Response, single: bool, latency_s: float
    ) -> Classification | list[Classification]:
        results = parse_classify(
            _json(response),
            request_id=response.headers.get("x-request-id"),
            latency_s=latency_s,
        )
        if single:
            if len(results) != 1:
                raise APIError(200, "bad_response", f"{len(results)} results for one image")
            return results[0]
        return results


class CAServeClient(_Base):
    """Blocking client; a context manager (or call `close()`). Thread-safe like `httpx.Client`.

    `url`: the gateway's base URL. `api_key`: sent as `Authorization: Bearer <key>`.
    `timeout_s`: per attempt, for the whole answer; `connect_timeout_s`: for connecting.
    `retry`: `RetryPolicy()` by default; `clients.retry.NO_RETRY` to fail fast.
    """

    def __init__(self, url: str = DEFAULT_URL, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._http = httpx.Client(base_url=self.url, timeout=self._timeout, headers=self._headers)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **request: Any) -> tuple[httpx.Response, float]:
        """Send with retries; the successful response and its round-trip seconds."""
        headers = {"X-Request-ID": self._new_request_id(), **request.pop("headers", {})}
        attempt = 0
        while True:
            started = time.perf_counter()
            failure: Exception | None
            try:
                response = self._http.request(method, path, headers=headers, **request)
                failure = self._outcome(response)
            except httpx.TransportError as exc:
                failure = exc
            if failure is None:
                return response, time.perf_counter() - started
            delay = self._retry_delay(attempt, failure)
            if delay is None:
                raise self._final_error(failure) from (
                    None if isinstance(failure, CAServeError) else failure
                )
            time.sleep(delay)
            attempt += 1

    @overload
    def classify(self, images: ImageInput, *, top_k: int = ...) -> Classification: ...
    @overload
    def classify(
        self, images: list[ImageInput] | tuple[ImageInput, ...], *, top_k: int = ...
    ) -> list[Classification]: ...

    def classify(
        self, images: ImagesArg, *, top_k: int = DEFAULT_TOP_K
    ) -> Classification | list[Classification]:
        """Classify one image (-> `Classification`) or a list (-> one per image, in order).

        Raises `APIError` (4xx/5xx answers), `ServerUnreachable`, `RequestTimedOut`;
        `FileNotFoundError`/`TypeError` for inputs that cannot be read.
        """
        uploads, single = to_uploads(images)
        request = self._classify_request(uploads, single, top_k)
        response, latency_s = self._send("POST", "/classify", **request)
        return self._results(response, single, latency_s)

    def model_info(self) -> ModelInfo:
        """`GET /v1/model`: name, version, classes, input size, weights source."""
        response, _ = self._send("GET", "/v1/model")
        return parse_model_info(_json(response))

    def ready(self) -> bool:
        """True when the gateway answers `/readyz` with 200; False otherwise, never raises."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_until_ready(self, timeout_s: float = 30.0, poll_s: float = 0.2) -> None:
        """Block until `ready()`; raises `ServerUnreachable` after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if time.monotonic() > deadline:
                raise ServerUnreachable(self.url, f"not ready after {timeout_s:g} s")
            time.sleep(poll_s)


class AsyncCAServeClient(_Base):
    """The asyncio twin of `CAServeClient` (same arguments, same results, `await` each call).

    Reading and encoding images runs in a worker thread, off the event loop.
    """

    def __init__(self, url: str = DEFAULT_URL, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=self._timeout, headers=self._headers
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, **request: Any) -> tuple[httpx.Response, float]:
        headers = {"X-Request-ID": self._new_request_id(), **request.pop("headers", {})}
        attempt = 0
        while True:
            started = time.perf_counter()
            failure: Exception | None
            try:
                response = await self._http.request(method, path, headers=headers, **request)
                failure = self._outcome(response)
            except httpx.TransportError as exc:
                failure = exc
            if failure is None:
                return response, time.perf_counter() - started
            delay = self._retry_delay(attempt, failure)
            if delay is None:
                raise self._final_error(failure) from (
                    None if isinstance(failure, CAServeError) else failure
                )
            await asyncio.sleep(delay)
            attempt += 1

    @overload
    async def classify(self, images: ImageInput, *, top_k: int = ...) -> Classification: ...
    @overload
    async def classify(
        self, images: list[ImageInput] | tuple[ImageInput, ...], *, top_k: int = ...
    ) -> list[Classification]: ...

    async def classify(
        self, images: ImagesArg, *, top_k: int = DEFAULT_TOP_K
    ) -> Classification | list[Classification]:
        """See `CAServeClient.classify`."""
        uploads, single = await asyncio.to_thread(to_uploads, images)
        request = self._classify_request(uploads, single, top_k)
        response, latency_s = await self._send("POST", "/classify", **request)
        return self._results(response, single, latency_s)

    async def model_info(self) -> ModelInfo:
        response, _ = await self._send("GET", "/v1/model")
        return parse_model_info(_json(response))

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def wait_until_ready(self, timeout_s: float = 30.0, poll_s: float = 0.2) -> None:
        deadline = time.monotonic() + timeout_s
        while not await self.ready():
            if time.monotonic() > deadline:
                raise ServerUnreachable(self.url, f"not ready after {timeout_s:g} s")
            await asyncio.sleep(poll_s)


