"""The connections one server holds, and who gets a slot when they reach the cap.

Admission happens when a connection is accepted, before it has sent a byte, so it cannot
depend on what the connection will ask for. At the cap a new connection takes the slot
of the member that has been waiting on its client longest: a request head or body still
arriving (before or after its answer), an idle keep-alive, an answer the client does
not read. A slow-header or slow-body attacker's connections are always such members,
and a legitimate client's fresh connection delivers its head within milliseconds, so
under an attack the attacker's oldest connection goes first (a legitimate upload that
has waited on its client longer than the newest attacking connections goes too). Only
when every member is busy with a request is the newcomer admitted to the probe slots
(served for the probe paths only, 503 for anything else), and only when those are all
busy too is it refused.

Pure bookkeeping: no sockets, no event loop; members are closed through `evict()`.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import Counter
from enum import Enum
from typing import Protocol

logger = logging.getLogger("ca.gateway.connections")

#: At most one summary of closed and refused connections per this many seconds.
SUMMARY_INTERVAL_S = 10.0


class Admission(Enum):
    SERVE = "serve"
    PROBES_ONLY = "probes_only"
    REFUSE = "refuse"


class Member(Protocol):
    def evict(self) -> None:
        """Close the connection now; must call `ConnectionTable.remove(self)`."""


class ConnectionTable:
    """Members in two pools: `cap` serving slots and `probe_slots` probe-only ones. Each
    pool keeps its waiting members (waiting on their client) in the order they started
    waiting, so the longest-waiting one is found in O(1)."""

    def __init__(self, cap: int, probe_slots: int) -> None:
        if cap < 1 or probe_slots < 0:
            raise ValueError(f"cap must be >= 1 and probe_slots >= 0, got {cap}, {probe_slots}")
        self.cap = cap
        self.probe_slots = probe_slots
        self._pool: dict[Member, bool] = {}  # member -> admitted to the probe slots
        self._waiting: dict[bool, dict[Member, None]] = {False: {}, True: {}}
        self._sizes = {False: 0, True: 0}
        self.events: Counter[str] = Counter()
        self._summary_at = time.monotonic()

    def __len__(self) -> int:
        return len(self._pool)

    def admit(self, member: Member) -> Admission:
        """Take a slot for `member`, closing the longest-waiting member if need be."""
        for probes_only, limit in ((False, self.cap), (True, self.probe_slots)):
            if self._sizes[probes_only] >= limit and self._waiting[probes_only]:
                oldest = next(iter(self._waiting[probes_only]))
                oldest.evict()
                self.remove(oldest)  # in case evict() did not
                self.count("evicted")
            if self._sizes[probes_only] < limit:
                self._pool[member] = probes_only
                self._sizes[probes_only] += 1
                return Admission.PROBES_ONLY if probes_only else Admission.SERVE
        self.count("refused")
        return Admission.REFUSE

    def waiting(self, member: Member) -> None:
        """`member` now waits on its client; it is the newest such (moves to the end)."""
        probes_only = self._pool.get(member)
        if probes_only is None:
            return
        queue = self._waiting[probes_only]
        queue.pop(member, None)
        queue[member] = None

    def busy(self, member: Member) -> None:
        """`member` is working on a request (not waiting on its client): never evicted."""
        probes_only = self._pool.get(member)
        if probes_only is not None:
            self._waiting[probes_only].pop(member, None)

    def remove(self, member: Member) -> None:
        """Forget `member` (closed, or closing); idempotent."""
        probes_only = self._pool.pop(member, None)
        if probes_only is not None:
            self._sizes[probes_only] -= 1
            self._waiting[probes_only].pop(member, None)

    def count(self, event: str) -> None:
        """Count a closure or refusal; log a summary at most every `SUMMARY_INTERVAL_S`."""
        self.events[event] += 1
        now = time.monotonic()
        if now - self._summary_at >= SUMMARY_INTERVAL_S:
            summary = ", ".join(f"{n} {name}" for name, n in sorted(self.events.items()))
            logger.warning(
                "connections in the last %.0f s: %s (%d open, cap %d + %d probe slots)",
                now - self._summary_at, summary, len(self._pool), self.cap, self.probe_slots,
            )
            self.events.clear()
            self._summary_at = now


_tables: weakref.WeakKeyDictionary[object, ConnectionTable] = weakref.WeakKeyDictionary()


def table_for(server_state: object, cap: int, probe_slots: int) -> ConnectionTable:
    """The table of the server that owns `server_state` (uvicorn's `ServerState`, one per
    server), made on its first connection."""
    table = _tables.get(server_state)
    if table is None:
        table = _tables[server_state] = ConnectionTable(cap, probe_slots)
    return table
