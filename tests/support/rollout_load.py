"""Closed-loop load across version changes, and the checks a rollout must pass under it.

`Load` runs `clients` loops against a running gateway, each sending one photo to
`/classify` and the next as soon as the answer is in, recording every answer (`Seen`).
`Timeline` records each change of version as the test drives it: when it was asked for
and when the gateway was seen serving the new version (`/v1/model`). `check` then holds
every answer to the rollout's promises: status 200; the version it names computed it (its
score is that version's, `Answers`); it is a version that could serve while the request
was in flight (the one serving when it was sent, or one swapped in before its answer);
and once a change was seen complete, only the new version answers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx

from tests.support.versions import Answers


@dataclass(frozen=True)
class Seen:
    sent: float
    answered: float
    status: int
    version: str
    photo: int
    index: int
    score: float
    detail: str = ""


@dataclass
class Change:
    asked: float
    done: float
    old: str
    new: str


@dataclass
class Timeline:
    first: str
    changes: list[Change] = field(default_factory=list)

    def serving_at(self, t: float) -> str:
        version = self.first
        for change in self.changes:
            if change.done <= t:
                version = change.new
        return version

    def allowed(self, sent: float, answered: float) -> set[str]:
        """The versions that may answer a request in flight from `sent` to `answered`."""
        allowed = {self.serving_at(sent)}
        for change in self.changes:
            if change.asked <= answered and change.done >= sent:
                allowed |= {change.old, change.new}
        return allowed


class Load:
    """`clients` closed loops against `url` cycling through `photos` until `stop()`."""

    def __init__(
        self, url: str, photos: list[bytes], clients: int = 3, headers: dict[str, str] | None = None
    ) -> None:
        self.url = url
        self.photos = photos
        self.clients = clients
        self.headers = dict(headers or {})
        self.seen: list[Seen] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._loop(i)) for i in range(self.clients)]

    async def stop(self) -> list[Seen]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.seen

    async def _loop(self, offset: int) -> None:
        headers = {"Content-Type": "image/jpeg", **self.headers}
        async with httpx.AsyncClient(base_url=self.url, timeout=30.0) as client:
            n = offset
            while not self._stop.is_set():
                photo = n % len(self.photos)
                n += 1
                sent = time.monotonic()
                try:
                    response = await client.post(
                        "/classify?top_k=1", content=self.photos[photo], headers=headers
                    )
                except httpx.HTTPError as exc:
                    self.seen.append(Seen(sent, time.monotonic(), 0, "", photo, -1, 0.0, repr(exc)))
                    continue
                answered = time.monotonic()
                if response.status_code != 200:
                    self.seen.append(
                        Seen(sent, answered, response.status_code, "", photo, -1, 0.0,
                             response.text[:300])
                    )
                    continue
                body = response.json()
                best = body["results"][0]["predictions"][0]
                self.seen.append(Seen(sent, answered, 200, body["model"]["version"], photo,
                                      best["index"], best["score"]))


async def wait_serving(
    client: httpx.AsyncClient, version: str, within_s: float, headers: dict[str, str] | None = None
) -> float:
    """When `/v1/model` first names `version` (monotonic time); fails after `within_s`."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        model = await client.get("/v1/model", headers=headers)
        if model.status_code == 200 and model.json()["version"] == version:
            return time.monotonic()
        await asyncio.sleep(0.02)
    raise AssertionError(f"version {version} not serving within {within_s} s")


def check(seen: list[Seen], timeline: Timeline, answers: Answers) -> dict[str, int]:
    """Assert the rollout's promises on every answer; returns answers per version."""
    failures = [s for s in seen if s.status != 200]
    assert not failures, f"{len(failures)} non-200 answers, first: {failures[:3]}"
    per_version: dict[str, int] = {}
    for s in seen:
        assert answers.matches(s.version, s.photo, s.index, s.score), (
            f"photo {s.photo} got ({s.index}, {s.score}) labelled version {s.version}, which "
            f"answers {answers.top.get(s.version, [None] * (s.photo + 1))[s.photo]}"
        )
        allowed = timeline.allowed(s.sent, s.answered)
        assert s.version in allowed, (
            f"version {s.version} answered a request in flight {s.sent:.3f}-{s.answered:.3f} "
            f"when only {sorted(allowed)} could; changes: {timeline.changes}"
        )
        per_version[s.version] = per_version.get(s.version, 0) + 1
    return per_version


def latency_ms(seen: list[Seen], timeline: Timeline) -> dict[str, tuple[int, float, float]]:
    """Answers, p50 and p99 latency (ms) of the requests in flight during a change
    ("changing": from when it was asked until it was seen done) and of the others
    ("steady")."""
    groups: dict[str, list[float]] = {"changing": [], "steady": []}
    for s in seen:
        during = any(c.asked <= s.answered and c.done >= s.sent for c in timeline.changes)
        groups["changing" if during else "steady"].append((s.answered - s.sent) * 1000)
    return {
        name: (len(values), _quantile(values, 0.5), _quantile(values, 0.99))
        for name, values in groups.items() if values
    }


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)
