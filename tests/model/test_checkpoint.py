"""`load_checkpoint`: every accepted layout round-trips; every mismatch is named."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from service.model import CheckpointError, ca_mobilenet_v2, load_checkpoint
from service.model import checkpoint as checkpoint_module
from tests.support.triton import free_port


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    torch.manual_seed(3)
    model = ca_mobilenet_v2(num_classes=10).eval()
    torch.nn.init.normal_(model.classifier[1].weight, 0, 0.5)
    return model


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(0)
    with torch.no_grad():
        return model(torch.randn(2, 3, 96, 96))  # any size works; small keeps it fast


def _flat_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace("classifier.1.", "classifier."): v for k, v in state.items()}


LAYOUTS = {
    "plain": lambda s: s,
    "state_dict": lambda s: {"state_dict": s, "epoch": 90},
    "model": lambda s: {"model": s, "optimizer": {}},
    "module_prefix": lambda s: {f"module.{k}": v for k, v in s.items()},
    "flat_head": _flat_head,
    "wrapped_prefixed_flat": lambda s: {
        "state_dict": {f"module.{k}": v for k, v in _flat_head(s).items()}
    },
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_accepted_layout_round_trips(
    network: torch.nn.Module, tmp_path: Path, layout: str
) -> None:
    path = tmp_path / f"{layout}.pth"
    torch.save(LAYOUTS[layout](network.state_dict()), path)
    loaded = load_checkpoint(path)
    assert loaded.num_classes == 10  # inferred from the classifier, not assumed
    assert not loaded.training
    assert torch.equal(_outputs(loaded), _outputs(network))


def test_unexpected_key_is_named(network: torch.nn.Module, tmp_path: Path) -> None:
    state = dict(network.state_dict())
    state["features.99.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys: features\.99\.weight"):
        load_checkpoint(tmp_path / "c.pth")


def test_missing_key_is_named(network: torch.nn.Module, tmp_path: Path) -> None:
    state = dict(network.state_dict())
    del state["features.3.conv.6.conv2.bias"]
    torch.save(state, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: features\.3\.conv\.6\.conv2\.bias"):
        load_checkpoint(tmp_path / "c.pth")


def test_wrong_shape_is_named_with_both_shapes(network: torch.nn.Module, tmp_path: Path) -> None:
    state = dict(network.state_dict())
    state["features.0.0.weight"] = torch.zeros(16, 3, 3, 3)
    torch.save(state, tmp_path / "c.pth")
    with pytest.raises(
        CheckpointError,
        match=r"features\.0\.0\.weight: checkpoint \(16, 3, 3, 3\) vs model \(32, 3, 3, 3\)",
    ):
        load_checkpoint(tmp_path / "c.pth")


def test_checkpoint_without_classifier_is_refused(network: torch.nn.Module, tmp_path: Path) -> None:
    state = {k: v for k, v in network.state_dict().items() if not k.startswith("classifier")}
    torch.save(state, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match="no classifier"):
        load_checkpoint(tmp_path / "c.pth")


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "garbage.pth")
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_checkpoint(tmp_path / "absent.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a state_dict"):
        load_checkpoint(tmp_path / "list.pth")


@pytest.fixture()
def served_directory(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server on loopback serving tmp_path; yields (base URL, request log)."""
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def test_url_is_downloaded_once_into_the_cache(
    network: torch.nn.Module,
    tmp_path: Path,
    served_directory: tuple[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base, requests = served_directory
    torch.save(network.state_dict(), tmp_path / "remote.pth")
    monkeypatch.setenv("CA_CACHE_DIR", str(tmp_path / "cache"))
    first = load_checkpoint(f"{base}/remote.pth")
    second = load_checkpoint(f"{base}/remote.pth")
    assert torch.equal(_outputs(first), _outputs(second))
    assert requests.count("/remote.pth") == 1
    assert len(list((tmp_path / "cache").glob("*remote.pth"))) == 1


def test_unreachable_url_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CA_CACHE_DIR", str(tmp_path / "cache"))
    url = f"http://127.0.0.1:{free_port()}/mbv2_ca.pth"
    with pytest.raises(CheckpointError, match=r"could not download .*--weights PATH"):
        checkpoint_module.download(url)
    assert not any((tmp_path / "cache").glob("*"))  # no half-written file left behind
