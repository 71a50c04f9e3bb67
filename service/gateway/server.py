"""Run the gateway under uvicorn: `serve(settings)` is what `ca-serve serve` calls.

uvloop and httptools are used when installed. On SIGTERM uvicorn stops accepting
connections and waits up to `graceful_shutdown_s` for in-flight requests; the app's
lifespan then finishes whatever is still queued before the process exits.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile

import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from service.gateway.app import create_app
from service.gateway.logs import configure_logging
from service.gateway.settings import Settings

logger = logging.getLogger("ca.gateway.server")


def app_from_environment() -> FastAPI:
    """App factory for multi-worker mode: each worker reads its own `CA_*` settings."""
    settings = Settings()
    configure_logging(settings.log_level)
    return create_app(settings)


def uvicorn_config(settings: Settings) -> uvicorn.Config:
    common = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
        "lifespan": "on",
        "access_log": False,  # the app writes its own structured access log
        "server_header": False,
        "log_config": None,
        "log_level": settings.log_level,
        "timeout_graceful_shutdown": int(settings.graceful_shutdown_s),
    }
    if settings.workers > 1:
        return uvicorn.Config(
            "service.gateway.server:app_from_environment",
            factory=True,
            workers=settings.workers,
            **common,  # type: ignore[arg-type]
        )
    return uvicorn.Config(create_app(settings), **common)  # type: ignore[arg-type]


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
    config = uvicorn_config(settings)
    if settings.workers > 1:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        uvicorn.Server(config).run()
    logger.info("gateway stopped")


def main() -> None:  # pragma: no cover - `python -m service.gateway.server`
    serve(Settings())


if __name__ == "__main__":  # pragma: no cover
    main()
