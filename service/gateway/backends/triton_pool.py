"""The Triton endpoints a target resolves to, and which one takes the next call.

Balancing is per call: the ready endpoint with the fewest calls in flight from this
gateway, ties going round robin. Under an even load that is plain round robin; an endpoint
that answers slowly (a pod still warming, a GPU shared with another job) collects calls
and gets fewer new ones, where round robin would keep feeding it its share.

Addresses that resolution no longer returns leave rotation at once and are closed once
their last call has come back, so a pod scaled away costs no call.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Collection, Iterable

from service.gateway.backends.triton_endpoint import Endpoint


class EndpointPool:
    """Endpoints by address, each made by `factory(address)` when first seen."""

    def __init__(self, factory: Callable[[str], Endpoint]) -> None:
        self._factory = factory
        self._endpoints: dict[str, Endpoint] = {}
        self._retired: list[Endpoint] = []
        self._turn = itertools.count()

    @property
    def endpoints(self) -> list[Endpoint]:
        """Every endpoint in rotation (ready or not), by address."""
        return [self._endpoints[address] for address in sorted(self._endpoints)]

    @property
    def addresses(self) -> list[str]:
        return sorted(self._endpoints)

    def ready(self) -> list[Endpoint]:
        return [endpoint for endpoint in self.endpoints if endpoint.ready]

    def update(self, addresses: Iterable[str]) -> tuple[list[Endpoint], list[Endpoint]]:
        """Make the pool hold exactly `addresses`: endpoints are made for new ones (not
        ready until probed) and retired for those gone. Returns (added, retired)."""
        wanted = set(addresses)
        added = [self._factory(address) for address in sorted(wanted - set(self._endpoints))]
        gone = [self._endpoints.pop(address) for address in sorted(set(self._endpoints) - wanted)]
        for endpoint in added:
            self._endpoints[endpoint.address] = endpoint
        for endpoint in gone:
            endpoint.ready = False
            endpoint.state = "no longer resolved"
        self._retired.extend(gone)
        return added, gone

    def pick(self, exclude: Collection[Endpoint] = ()) -> Endpoint | None:
        """The ready endpoint, not in `exclude`, with the fewest calls in flight; ties go
        round robin. None when there is none."""
        candidates = [e for e in self.endpoints if e.ready and e not in exclude]
        if not candidates:
            return None
        start = next(self._turn) % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        return min(rotated, key=lambda endpoint: endpoint.inflight)  # the first of the least

    async def close_drained(self) -> None:
        """Close the retired endpoints whose last call has come back."""
        drained = [endpoint for endpoint in self._retired if endpoint.inflight == 0]
        self._retired = [endpoint for endpoint in self._retired if endpoint.inflight > 0]
        for endpoint in drained:
            await endpoint.close()

    async def close(self) -> None:
        for endpoint in [*self._endpoints.values(), *self._retired]:
            with contextlib.suppress(Exception):
                await endpoint.close()
        self._endpoints.clear()
        self._retired.clear()
