"""How many connections one gateway process may hold, derived from its descriptor limit.

Every connection costs a file descriptor. A process that has none left cannot accept:
the event loop logs EMFILE and drops or delays every new connection, probes and
legitimate clients alike, until something closes. The cap keeps the connections the
gateway admits below the limit by a reserve for everything else that needs one:

- the descriptors open at start (event loop, logs, libraries) plus a fixed headroom for
  what the app opens later (the model file, thread pools, multi-worker metrics files);
- the listen backlog: the event loop accepts whatever is queued in one go before the
  protocol sees the first of those connections (uvloop until the queue is empty, asyncio
  up to the backlog per wake-up), so a backlog's worth of descriptors are taken before
  any of them can be refused;
- the probe connections, admitted beyond the cap for `/healthz`, `/readyz` and `/metrics`.

The soft limit is first raised towards the hard one (containers often start with a soft
limit of 1,024 and a hard one of 500k or more), to at most `FD_LIMIT_TARGET`: each idle
connection also costs ~4-6 KiB of memory, so the limit is not raised without bound.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass, replace

#: The soft descriptor limit is raised to this (or the hard limit, if lower) at start.
FD_LIMIT_TARGET = 32_768
#: Descriptors kept for what the app opens after start-up (model file, thread pools...).
APP_HEADROOM_FDS = 64
MIN_BACKLOG = 16
MAX_BACKLOG = 2048  # uvicorn's default


@dataclass(frozen=True)
class ConnectionPlan:
    """The descriptor budget of one process. `cap` is what the connection table admits
    before it starts closing idle connections; `probe_connections` more are admitted for
    the probe paths only."""

    fd_limit: int
    open_at_start: int
    backlog: int
    probe_connections: int
    cap: int
    requested_cap: int  # the `max_connections` setting; 0 means derived

    @property
    def reserve(self) -> int:
        """Descriptors the derived cap leaves free: start-up, headroom, backlog, probes."""
        return self.open_at_start + APP_HEADROOM_FDS + self.backlog + self.probe_connections

    @property
    def derived_cap(self) -> int:
        return self.fd_limit - self.reserve

    @property
    def clamped(self) -> bool:
        """The requested cap did not fit the descriptor budget and was lowered."""
        return self.requested_cap > self.derived_cap

    def describe(self) -> str:
        source = f"CA_MAX_CONNECTIONS={self.requested_cap}" if self.requested_cap else "derived"
        return (
            f"descriptor limit {self.fd_limit}; connection cap {self.cap} ({source}), "
            f"+{self.probe_connections} for probes; reserve {self.reserve} "
            f"({self.open_at_start} open at start, {APP_HEADROOM_FDS} headroom, "
            f"backlog {self.backlog}, {self.probe_connections} probes)"
        )


def raise_fd_limit(target: int = FD_LIMIT_TARGET) -> int:
    """Raise the soft RLIMIT_NOFILE to min(hard, `target`) if it is lower; the soft limit
    now in force. Never lowers it; an unprivileged process may do this up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = target if hard == resource.RLIM_INFINITY else min(hard, target)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
            soft = ceiling
        except (ValueError, OSError):  # pragma: no cover - a sandbox that forbids it
            pass
    return target if soft == resource.RLIM_INFINITY else int(soft)


def open_fds() -> int:
    """Descriptors this process has open (0 where the OS does not list them)."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(directory))
        except OSError:
            continue
    return 0  # pragma: no cover


def plan_connections(
    max_connections: int,
    probe_connections: int,
    *,
    fd_limit: int | None = None,
    open_now: int | None = None,
) -> ConnectionPlan:
    """The budget for a process whose soft descriptor limit is `fd_limit` (default: the
    current one) with `open_now` descriptors open (default: counted). `max_connections`
    0 derives the cap; a larger request than the budget allows is lowered to it (see
    `ConnectionPlan.clamped`). Raises `ValueError` when the limit leaves no descriptor
    for connections."""
    if fd_limit is None:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        fd_limit = FD_LIMIT_TARGET if soft == resource.RLIM_INFINITY else int(soft)
    if open_now is None:
        open_now = open_fds()
    backlog = max(MIN_BACKLOG, min(MAX_BACKLOG, fd_limit // 8))
    plan = ConnectionPlan(
        fd_limit=fd_limit,
        open_at_start=open_now,
        backlog=backlog,
        probe_connections=probe_connections,
        cap=0,
        requested_cap=max_connections,
    )
    derived = plan.derived_cap
    if derived < 1:
        raise ValueError(
            f"a file-descriptor limit of {fd_limit} leaves none for connections (the "
            f"reserve is {plan.reserve}); raise it (ulimit -n)"
        )
    return replace(plan, cap=min(max_connections, derived) if max_connections else derived)
