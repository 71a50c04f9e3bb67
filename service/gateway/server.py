"""Run the gateway under uvicorn: `serve(settings)` is what `ca-serve serve` calls.

uvloop is used when installed; the HTTP protocol is uvicorn's httptools or h11 one with
the gateway's connection deadlines and cap (`connections.py`), sized at start from the
process's descriptor limit (`connection_budget.py`). On SIGTERM uvicorn stops accepting
connections and waits up to `graceful_shutdown_s` for in-flight requests; the app's
lifespan then finishes whatever is still queued before the process exits, with status 0
(1 if the app's shutdown failed).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import tempfile
import threading
from types import FrameType

import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from service.gateway.app import create_app
from service.gateway.connection_budget import ConnectionPlan, plan_connections, raise_fd_limit
from service.gateway.connection_guard import ConnectionPolicy
from service.gateway.connections import GatewayConfig, protocol_class
from service.gateway.logs import configure_logging
from service.gateway.metrics import mark_process_dead
from service.gateway.settings import Settings
from service.gateway.tracing_setup import tracing_from_environment

logger = logging.getLogger("ca.gateway.server")


def app_from_environment() -> FastAPI:
    """App factory for multi-worker mode: each worker reads its own `CA_*` settings."""
    settings = Settings()
    configure_logging(settings.log_level)
    return create_app(
        settings, freeze_startup_objects=True, tracing=tracing_from_environment()
    )


def connection_plan(settings: Settings) -> ConnectionPlan:
    """Raise the soft descriptor limit, size the connection cap from it and log both."""
    raise_fd_limit()
    plan = plan_connections(settings.max_connections, settings.probe_connections)
    logger.info("connections: %s", plan.describe())
    if plan.clamped:
        logger.warning(
            "CA_MAX_CONNECTIONS=%d does not fit the descriptor limit: capped at %d",
            settings.max_connections, plan.cap,
        )
    return plan


def uvicorn_config(settings: Settings, plan: ConnectionPlan | None = None) -> uvicorn.Config:
    if plan is None:
        plan = plan_connections(settings.max_connections, settings.probe_connections)
    policy = ConnectionPolicy(
        header_timeout_s=settings.header_timeout_s,
        keep_alive_timeout_s=settings.keep_alive_timeout_s,
        send_timeout_s=settings.send_timeout_s,
        max_header_bytes=settings.max_header_bytes,
        cap=plan.cap,
        probe_slots=settings.probe_connections,
        retry_after_s=settings.retry_after_s,
    )
    common = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "http": protocol_class(settings.http_implementation),
        "ws": "none",  # no WebSocket routes; an upgraded connection would leave the table
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "backlog": plan.backlog,
        "lifespan": "on",
        "access_log": False,  # the app writes its own structured access log
        "server_header": False,
        "log_config": None,
        "log_level": settings.log_level,
        "timeout_graceful_shutdown": int(settings.graceful_shutdown_s),
    }
    if settings.workers > 1:
        return GatewayConfig(
            "service.gateway.server:app_from_environment",
            factory=True,
            workers=settings.workers,
            connection_policy=policy,
            **common,
        )
    app = create_app(settings, freeze_startup_objects=True, tracing=tracing_from_environment())
    return GatewayConfig(app, connection_policy=policy, **common)


def serve(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; returns after a graceful shutdown."""
    configure_logging(settings.log_level)
    if settings.workers > 1:
        # Several processes need prometheus-client's multiprocess mode to report together.
        os.environ.setdefault(
            "PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="ca-gateway-metrics-")
        )
        # Workers re-read settings from the environment: carry host/port overrides over.
        os.environ["CA_HOST"], os.environ["CA_PORT"] = settings.host, str(settings.port)
    config = uvicorn_config(settings, connection_plan(settings))
    if settings.workers > 1:
        _Supervisor(config, sockets=[config.bind_socket()]).run()
    else:
        _run_until_terminated(uvicorn.Server(config))
    logger.info("gateway stopped")


def _run_until_terminated(server: uvicorn.Server) -> None:
    """Run `server`; after a SIGTERM and a clean graceful shutdown, return normally.

    uvicorn catches SIGTERM, drains, then restores the handler it found and raises the
    signal again for it; with the default handler the process then dies by the signal
    (status -15) although nothing went wrong. The handler installed here only asks the
    server to exit, which once it has stopped is a no-op. Raises `SystemExit(1)` when the
    app's lifespan shutdown failed.
    """
    if threading.current_thread() is not threading.main_thread():
        server.run()  # no signal handling off the main thread (uvicorn's rule too)
        return

    def request_exit(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    previous = signal.signal(signal.SIGTERM, request_exit)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if getattr(getattr(server, "lifespan", None), "shutdown_failed", False):
        raise SystemExit(1)


class _Supervisor(Multiprocess):
    """uvicorn's worker supervisor; a worker that died and was replaced has its live
    gauges dropped from the metrics sum (it never reached its own lifespan end)."""

    def keep_subprocess_alive(self) -> None:
        before = {process.pid for process in self.processes}
        super().keep_subprocess_alive()
        for pid in before - {process.pid for process in self.processes}:
            if pid is not None:
                mark_process_dead(pid)


def main() -> None:  # pragma: no cover - `python -m service.gateway.server`
    serve(Settings())


if __name__ == "__main__":  # pragma: no cover
    main()
