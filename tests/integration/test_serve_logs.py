"""`ca-serve serve`'s log lines name who wrote them: the gateway's own under `ca.gateway...`,
uvicorn's under `uvicorn` (never `uvicorn.error` on an info line)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from service.gateway.settings import Settings
from tests.support.gateway import TINY_MODEL, GatewayServer, write_tiny_repository


def test_each_line_names_its_real_logger(tmp_path: Path) -> None:
    repository = write_tiny_repository(tmp_path)
    settings = Settings(model_repository=repository, model_name=TINY_MODEL)
    with GatewayServer(settings) as server:
        assert httpx.get(server.url + "/healthz").status_code == 200
        server.terminate()
        assert server.wait() == 0
        entries = [json.loads(line) for line in server.log_text().splitlines() if line]

    by_message = {entry["message"]: entry["logger"] for entry in entries}
    assert by_message[f"serving {TINY_MODEL} v1 with the embedded backend"] == "ca.gateway"
    assert by_message["GET /healthz 200"] == "ca.gateway.access"
    assert by_message["gateway stopped"] == "ca.gateway.server"
    started = [m for m in by_message if m.startswith("Started server process")]
    assert started and by_message[started[0]] == "uvicorn"
    assert all(entry["logger"] != "uvicorn.error" for entry in entries), entries
    assert {entry["logger"].split(".")[0] for entry in entries} == {"ca", "uvicorn"}
