"""`ConnectionTable`: the cap, the probe slots, and which connection makes room."""

from __future__ import annotations

import pytest

from service.gateway.connection_table import Admission, ConnectionTable


class Member:
    def __init__(self, table: ConnectionTable, name: str) -> None:
        self.table, self.name, self.evicted = table, name, False

    def evict(self) -> None:
        self.evicted = True
        self.table.remove(self)

    def __repr__(self) -> str:
        return self.name


def admit(table: ConnectionTable, name: str, *, waiting: bool = True) -> tuple[Member, Admission]:
    member = Member(table, name)
    admission = table.admit(member)
    if admission is not Admission.REFUSE:
        (table.waiting if waiting else table.busy)(member)
    return member, admission


def test_admits_up_to_the_cap_then_evicts_the_longest_waiting() -> None:
    table = ConnectionTable(cap=3, probe_slots=1)
    a, b, c = (admit(table, n)[0] for n in "abc")
    table.waiting(a)  # a started waiting again (say, a keep-alive after an answer): newest
    _, admission = admit(table, "d")
    assert admission is Admission.SERVE and b.evicted and not (a.evicted or c.evicted)
    assert len(table) == 3 and table.events["evicted"] == 1


def test_busy_members_are_not_evicted_and_probe_slots_come_next() -> None:
    table = ConnectionTable(cap=2, probe_slots=1)
    busy = [admit(table, n, waiting=False)[0] for n in ("x", "y")]
    probe, admission = admit(table, "probe")
    assert admission is Admission.PROBES_ONLY and not any(m.evicted for m in busy)
    # A waiting probe-slot member makes room for the next newcomer in the probe slots.
    second, admission = admit(table, "probe2")
    assert admission is Admission.PROBES_ONLY and probe.evicted
    table.busy(second)
    _, admission = admit(table, "refused")
    assert admission is Admission.REFUSE and table.events["refused"] == 1


def test_a_removed_member_frees_its_slot_and_is_never_evicted() -> None:
    table = ConnectionTable(cap=1, probe_slots=0)
    first, _ = admit(table, "first")
    table.remove(first)
    table.remove(first)  # idempotent
    second, admission = admit(table, "second")
    assert admission is Admission.SERVE and not first.evicted and len(table) == 1
    table.busy(second)
    assert admit(table, "third")[1] is Admission.REFUSE


def test_rejects_a_cap_below_one() -> None:
    with pytest.raises(ValueError, match="cap"):
        ConnectionTable(cap=0, probe_slots=1)
