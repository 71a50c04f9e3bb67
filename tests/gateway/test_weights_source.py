"""`weights.source` shows a URL, a file name or a label, never a directory of the machine
that built or serves the model; the sha256 stays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from service.gateway.app import create_app
from service.gateway.settings import Settings
from service.spec import public_source
from tests.gateway.conftest import open_client
from tests.support.gateway import TINY_MODEL, write_tiny_repository


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ("/home/builder/checkpoints/mbv2_ca.pth", "mbv2_ca.pth"),
        ("~/mbv2_ca.pth", "mbv2_ca.pth"),
        ("relative/dir/mbv2_ca.pth", "mbv2_ca.pth"),
        ("C:\\Users\\builder\\mbv2_ca.pth", "mbv2_ca.pth"),
        ("file:///srv/models/mbv2_ca.pth", "mbv2_ca.pth"),
        ("mbv2_ca.pth", "mbv2_ca.pth"),
        ("random-init", "random-init"),
        (
            "https://github.com/houqb/CoordAttention/raw/main/mbv2_ca.pth",
            "https://github.com/houqb/CoordAttention/raw/main/mbv2_ca.pth",
        ),
        # Credentials, signed-URL tokens and fragments are not shown.
        ("https://user:secret@host.example:8443/w.pth?X-Amz-Signature=abc#x",
         "https://host.example:8443/w.pth"),
        ("s3://bucket/models/w.pth", "s3://bucket/models/w.pth"),
    ],
)
def test_public_source(source: str, shown: str) -> None:
    assert public_source(source) == shown


async def test_an_old_weights_json_with_a_server_path_shows_its_base_name(tmp_path: Path) -> None:
    repo = write_tiny_repository(tmp_path)
    digest = "ab" * 32
    (repo / TINY_MODEL / "1" / "weights.json").write_text(json.dumps({
        "source": "/srv/secret/build-42/mbv2_ca.pth", "random_init": False, "sha256": digest,
    }))
    app = create_app(Settings(model_repository=repo, model_name=TINY_MODEL),
                     registry=CollectorRegistry())
    async for client in open_client(app):
        response = await client.get("/v1/model")
        weights = response.json()["weights"]
        assert weights["source"] == "mbv2_ca.pth" and weights["sha256"] == digest
        assert "/srv" not in response.text
