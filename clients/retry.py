"""When to try a request again, and how long to wait first.

Retried: 503 (the gateway sheds load or its backend is down) and failures to connect or
to read an answer (the request never ran, or running it again is harmless: classifying is
idempotent). Never retried: any 4xx (the same request fails the same way) and timeouts
(the gateway may still be working on it; piling on makes that worse).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

# Transport failures where the request can be sent again. Timeouts are left out on purpose,
# except ConnectTimeout (nothing was sent). ConnectTimeout subclasses TimeoutException, so
# it must be tested before the timeout branch.
RETRYABLE_TRANSPORT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, honouring `Retry-After`.

    Attempt `n` (0-based) waits a random time in `[b/2, b]` with
    `b = min(backoff_max_s, backoff_base_s * 2**n)`. A `Retry-After` from the server is a
    floor: the wait is at least that long, plus up to 10 % so that clients told the same
    value do not come back in lockstep. A `Retry-After` above `max_retry_after_s` is not
    waited out: the error is raised to the caller at once.
    """

    max_retries: int = 3
    backoff_base_s: float = 0.25
    backoff_max_s: float = 8.0
    max_retry_after_s: float = 30.0
    retry_statuses: frozenset[int] = frozenset({503})
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0:
            raise ValueError("backoff times must be >= 0")

    def retries_status(self, status: int) -> bool:
        return status in self.retry_statuses

    def delay_s(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to sleep before retry number `attempt + 1`."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2.0**attempt)
        delay = self.rng.uniform(ceiling / 2.0, ceiling)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s * (1.0 + 0.1 * self.rng.random()))
        return delay

    def gives_up_on(self, retry_after_s: float | None) -> bool:
        """True when the server asks for a longer wait than this policy accepts."""
        return retry_after_s is not None and retry_after_s > self.max_retry_after_s


NO_RETRY = RetryPolicy(max_retries=0)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date); None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds)
