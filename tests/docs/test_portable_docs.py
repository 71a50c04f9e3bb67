"""README.md and docs/*.md name no path or port of the machine they were written on: every
command and address in them works on a fresh clone anywhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]

# The ports a reader's own services listen on by default: the gateway, Triton's gRPC and
# metrics ports, Prometheus and Grafana.
DEFAULT_PORTS = {8000, 8001, 8002, 9090, 3000}
LOOPBACK_ADDRESS = re.compile(r"\b(?:127\.0\.0\.1|localhost|0\.0\.0\.0|\[::1\]):(\d+)")
# Home directories and scratch space of a particular machine.
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|home|root|Users|tmp|private/var|mnt|srv)/")
EPHEMERAL_PORT = re.compile(r"(?:--port[ =]|PORT=)(\d{5})\b")


def _findings(text: str) -> list[str]:
    found = [m.group(0) for m in MACHINE_PATH.finditer(text)]
    found += [m.group(0) for m in LOOPBACK_ADDRESS.finditer(text)
              if int(m.group(1)) not in DEFAULT_PORTS]
    found += [m.group(0) for m in EPHEMERAL_PORT.finditer(text)]
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_machine_specific_path_or_port(doc: Path) -> None:
    lines = doc.read_text(encoding="utf-8").splitlines()
    bad = [f"{doc.name}:{n}: {', '.join(_findings(line))}"
           for n, line in enumerate(lines, 1) if _findings(line)]
    assert bad == [], "\n".join(bad)


@pytest.mark.parametrize(
    "text",
    [
        "CAServeClient(\"http://127.0.0.1:18765\")",
        "--model-repository /tmp/ca_repo",
        "tests at /work/shared/images",
        "ca-serve serve --port 18765",
        "make run PORT=18431",
        "curl http://localhost:52221/v2",
    ],
)
def test_the_check_catches_machine_specific_text(text: str) -> None:
    assert _findings(text)


@pytest.mark.parametrize(
    "text",
    [
        "curl -s http://127.0.0.1:8000/classify",
        "CA_TRITON_URL=127.0.0.1:8001",
        "open http://localhost:3000 (Grafana) and localhost:9090",
        "make run PORT=9000 HOST=0.0.0.0",
        "`ca-serve build-repo --output build/model_repository_cpu`",
        "the pods mount an emptyDir at `/tmp` and /dev/shm",
    ],
)
def test_portable_text_passes(text: str) -> None:
    assert _findings(text) == []
