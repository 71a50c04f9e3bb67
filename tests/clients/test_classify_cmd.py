"""`ca-serve classify` against a running gateway, and its behaviour when there is none."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest

from clients.classify_cmd import expand, main
from service.cli import main as ca_serve
from tests.support.gateway import GatewayServer
from tests.support.triton import free_port


def _raw(url: str, photo: Path, top_k: int) -> list[dict[str, object]]:
    answer = httpx.post(f"{url}/classify", params={"top_k": top_k},
                        content=photo.read_bytes(), headers={"Content-Type": "image/jpeg"})
    predictions: list[dict[str, object]] = answer.json()["results"][0]["predictions"]
    return predictions


def test_json_output_equals_the_raw_http_answers(
    gateway: GatewayServer, photos: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--url", gateway.url, "--json", "--top-k", "3", "--batch", "2",
                 *map(str, photos)])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [entry["image"] for entry in out["results"]] == [str(p) for p in photos]
    for entry, photo in zip(out["results"], photos, strict=True):
        assert entry["predictions"] == _raw(gateway.url, photo, 3)
        assert entry["model"] == "ca_mobilenetv2_onnx"


def test_table_through_ca_serve_with_a_directory_and_a_glob(
    gateway: GatewayServer, photos: list[Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in photos[:2]:
        shutil.copy(photo, folder / photo.name)
    (folder / "notes.txt").write_text("not an image, and not picked up from a directory")
    code = ca_serve(["classify", "--url", gateway.url, str(folder),
                     str(photos[2].parent / f"{photos[2].stem}.*")])
    table = capsys.readouterr().out
    assert code == 0
    for photo in photos[:3]:
        assert photo.name in table
        top = _raw(gateway.url, photo, 5)[0]
        assert f"{float(str(top['score'])) * 100:6.2f}%" in table
        assert str(top["label"])[:20] in table
    assert "notes.txt" not in table
    assert "3 of 3 images classified by ca_mobilenetv2_onnx v1" in table


def test_a_refused_file_is_reported_and_the_rest_still_classified(
    gateway: GatewayServer, photos: list[Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = tmp_path / "readme.txt"
    text.write_text("hello")
    code = main(["--url", gateway.url, "--json", str(photos[0]), str(text), str(photos[1])])
    results = json.loads(capsys.readouterr().out)["results"]
    assert code == 1
    assert [("error" in r, "predictions" in r) for r in results] == [
        (False, True), (True, False), (False, True)]
    assert results[1]["error"]["status"] == 415
    assert results[1]["error"]["code"] == "unsupported_media_type"


def test_server_down_is_one_clear_line_and_exit_2(
    photos: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code = main(["--url", url, str(photos[0])])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"ca-serve classify: cannot reach ca-serve at {url}")


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "missing.jpg")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main([str(tmp_path / "*.png")]) == 2
    assert "no files match" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--top-k", "0", "x.jpg"])
    assert info.value.code == 2


def test_expand_keeps_order_and_drops_duplicates(tmp_path: Path) -> None:
    for name in ("b.jpg", "a.PNG", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    a, b = str(tmp_path / "a.PNG"), str(tmp_path / "b.jpg")
    assert expand([str(tmp_path)]) == [a, b]
    assert expand([b, str(tmp_path / "*.jpg"), str(tmp_path)]) == [b, a]
