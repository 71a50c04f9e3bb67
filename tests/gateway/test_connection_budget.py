"""`plan_connections`: the cap is the descriptor limit minus a reserve for everything else."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from service.gateway.connection_budget import (
    APP_HEADROOM_FDS,
    MAX_BACKLOG,
    ConnectionPlan,
    plan_connections,
)


def test_derived_cap_leaves_the_reserve() -> None:
    plan = plan_connections(0, 16, fd_limit=20_000, open_now=30)
    assert plan.backlog == MAX_BACKLOG
    assert plan.reserve == 30 + APP_HEADROOM_FDS + MAX_BACKLOG + 16
    assert plan.cap == 20_000 - plan.reserve and not plan.clamped
    assert "descriptor limit 20000; connection cap 17842 (derived)" in plan.describe()


def test_a_small_limit_gets_a_small_backlog() -> None:
    plan = plan_connections(100, 16, fd_limit=256, open_now=4)
    assert plan.backlog == 32 and plan.cap == 100
    assert plan.cap + plan.reserve <= 256


def test_a_requested_cap_above_the_budget_is_lowered() -> None:
    plan = plan_connections(50_000, 16, fd_limit=4096, open_now=10)
    assert plan.clamped and plan.cap == plan.derived_cap < 4096


def test_a_limit_too_small_for_any_connection_is_an_error() -> None:
    with pytest.raises(ValueError, match="leaves none for connections"):
        plan_connections(0, 16, fd_limit=100, open_now=10)


def test_the_soft_limit_is_raised_towards_the_hard_one() -> None:
    code = (
        "import resource; from service.gateway.connection_budget import raise_fd_limit; "
        "print(raise_fd_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 1024))

    out = subprocess.run([sys.executable, "-c", code], preexec_fn=lower, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["1024", "1024"]


def test_plan_is_a_value() -> None:
    plan = plan_connections(0, 8, fd_limit=1024, open_now=5)
    assert isinstance(plan, ConnectionPlan) and plan == plan_connections(
        0, 8, fd_limit=1024, open_now=5
    )
