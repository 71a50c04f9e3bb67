"""Version directories (`service.versions`): which are versions, which are complete, and a
publish that never shows a half-written one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.versions import (
    fingerprint,
    is_version_name,
    missing_files,
    next_version,
    numbered_versions,
    publish,
    staging_dir,
)


def test_only_positive_numbers_are_versions_ordered_numerically(tmp_path: Path) -> None:
    for name in ("1", "10", "2", ".3.staging", "04", "0", "x", "-5", "٣"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert numbered_versions(tmp_path) == ["1", "2", "10"]
    assert next_version(tmp_path) == "11"
    assert next_version(tmp_path / "absent") == "1" and numbered_versions(tmp_path / "x") == []
    assert not is_version_name("1" * 20) and is_version_name("9" * 19)


def test_a_version_is_complete_with_its_model_and_both_records(tmp_path: Path) -> None:
    assert missing_files(tmp_path / "1", "model.onnx") == [
        "model.onnx", "weights.json", "verification.json"]
    version = tmp_path / "1"
    version.mkdir()
    (version / "model.onnx").write_bytes(b"x")
    (version / "weights.json").write_text("{}")
    assert missing_files(version, "model.onnx") == ["verification.json"]
    (version / "verification.json").write_text("{}")
    assert missing_files(version, "model.onnx") == []


def test_the_fingerprint_changes_when_a_file_is_rewritten(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"abc")
    first = fingerprint(tmp_path, "model.onnx")
    assert first == fingerprint(tmp_path, "model.onnx")
    os.utime(tmp_path / "model.onnx", ns=(1, 1))
    assert fingerprint(tmp_path, "model.onnx") != first
    (tmp_path / "other.txt").write_text("not part of the version's fingerprint")
    assert len(fingerprint(tmp_path, "model.onnx")) == 1


def test_publish_renames_and_replaces_only_when_asked(tmp_path: Path) -> None:
    staging = staging_dir(tmp_path, "2")
    staging.mkdir()
    (staging / "model.onnx").write_text("new")
    publish(staging, tmp_path / "2")
    assert (tmp_path / "2" / "model.onnx").read_text() == "new" and not staging.exists()
    staging.mkdir()
    (staging / "model.onnx").write_text("newer")
    with pytest.raises(FileExistsError):
        publish(staging, tmp_path / "2")
    publish(staging, tmp_path / "2", replace=True)
    assert (tmp_path / "2" / "model.onnx").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2"]
